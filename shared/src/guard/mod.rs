//! Prompt-injection screening of text that reaches a model as data, not instructions: retrieved
//! chunks now; user input and tool results are to follow, with per-source policies choosing
//! which rules block, flag or pass. Rules are named so that policies and logs can refer to them.

pub mod injection;
mod json_schema;
pub mod pii;
pub mod schema;

pub use crate::config::{EffectiveGuard, GuardSettings, InjectionPolicy, PiiPolicy};

use serde::Serialize;

/// One rule that matched, and the text it matched on (normalised, shortened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// One of [`injection::RULES`].
    pub rule: &'static str,
    pub excerpt: String,
}

/// Scans text that is data, not instructions (retrieved chunks, tool results, user input).
/// Ordinary prose passes; at most one finding per rule, in the order of [`injection::RULES`].
pub fn scan_untrusted(text: &str) -> Vec<Finding> {
    injection::scan(text)
}
