//! Helpers shared by the integration tests: the mock provider lives in `src/bin/mock_provider.rs`.
