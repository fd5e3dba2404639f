//! How a request reaches a provider: the model registry, model selection (`auto` aliases, the
//! key's scope, context budgets), load balancing across deployments and circuit breaking, and the
//! attempt loop (retries with backoff, fallbacks by error class, first-token hold for streams).

pub mod attempt;
pub mod health;
pub mod registry;
pub mod select;

pub use attempt::{Answer, Attempt, ChatAttempt, EmbeddingAttempt, Outcome, execute};
pub use health::{DeploymentHealth, choose};
pub use registry::{AliasModel, Deployment, Deployments, Model, Registry, ServedModel};
pub use select::{Selection, select, select_embedding, trim_to_fit};
