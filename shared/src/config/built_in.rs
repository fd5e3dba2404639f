//! The config used when none is given.

use super::Config;

/// The config used when none is given: the built-in mock models, plus OpenAI and Anthropic
/// models when their keys are in the environment.
const BUILT_IN: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
context_window = 128000
price = { input_per_mtok = 0.1, output_per_mtok = 0.4 }

[models.mock-embed]
kind = "embedding"
deployments = [{ provider = "mock", model = "mock-embed" }]
price = { input_per_mtok = 0.02 }
max_dimensions = 1536
"#;

const BUILT_IN_OPENAI: &str = r#"
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[models.gpt-4o-mini]
deployments = [{ provider = "openai", model = "gpt-4o-mini" }]
context_window = 128000
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[models.gpt-4o]
deployments = [{ provider = "openai", model = "gpt-4o" }]
context_window = 128000
price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }

[models.text-embedding-3-small]
kind = "embedding"
deployments = [{ provider = "openai", model = "text-embedding-3-small" }]
price = { input_per_mtok = 0.02 }
"#;

const BUILT_IN_ANTHROPIC: &str = r#"
[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"

[models.claude-haiku]
deployments = [{ provider = "anthropic", model = "claude-haiku-4-5" }]
context_window = 200000
price = { input_per_mtok = 1.00, output_per_mtok = 5.00 }

[models.claude-sonnet]
deployments = [{ provider = "anthropic", model = "claude-sonnet-4-5" }]
context_window = 200000
price = { input_per_mtok = 3.00, output_per_mtok = 15.00 }
"#;

impl Config {
    /// The built-in config for a first run: no keys needed.
    pub fn built_in(env: impl Fn(&str) -> Option<String>) -> Self {
        let mut text = BUILT_IN.to_owned();
        if env("OPENAI_API_KEY").is_some_and(|v| !v.is_empty()) {
            text.push_str(BUILT_IN_OPENAI);
        }
        if env("ANTHROPIC_API_KEY").is_some_and(|v| !v.is_empty()) {
            text.push_str(BUILT_IN_ANTHROPIC);
        }
        match Self::from_toml(&text) {
            Ok(config) => config,
            // The built-in text is a constant checked by a unit test; this cannot fail.
            Err(e) => unreachable!("built-in config is invalid: {e}"),
        }
    }
}
