//! The guard around a chat request: the operator's system prompts go first, and the client's
//! user messages and tool results are screened for prompt injection under the key's and the
//! model's policy (`off`, `flag`: answer with an `x-gateway-guard` header, `block`: refuse).
//! Runs before retrieval and before the cache lookup, so a blocked request is never answered,
//! not even from the cache, and cache entries differ by system prompt.

use axum::response::Response;

use super::{X_GATEWAY_GUARD, set_header};
use crate::api::{ChatRequest, Content, JsonObject, Message, Role};
use crate::error::ApiError;
use crate::guard::{EffectiveGuard, InjectionPolicy, scan_untrusted};
use crate::telemetry::{METRICS, Metrics};

/// What the screening of one request found, for its answer's header.
#[derive(Debug, Default)]
pub(crate) struct Screening {
    /// The policy for retrieved context too.
    pub(crate) injection: InjectionPolicy,
    /// Rules that tripped, once each, in the order found.
    rules: Vec<&'static str>,
}

impl Screening {
    /// Adds rules found elsewhere (retrieved chunks dropped).
    pub(crate) fn note(&mut self, rule: &'static str) {
        if !self.rules.contains(&rule) {
            self.rules.push(rule);
        }
    }

    /// `x-gateway-guard: rule[,rule]` when anything tripped.
    pub(crate) fn mark(&self, response: &mut Response) {
        if !self.rules.is_empty() {
            set_header(response, &X_GATEWAY_GUARD, &self.rules.join(","));
        }
    }
}

/// Who wrote a screened message, for the error, the logs and the metric.
fn source(role: Role) -> Option<&'static str> {
    match role {
        Role::User => Some("user"),
        Role::Tool | Role::Function => Some("tool"),
        Role::System | Role::Developer | Role::Assistant => None,
    }
}

/// Screens the client's user messages and tool results, then puts the operator's system prompts
/// before everything the client sent.
pub(crate) fn screen_chat(
    guard: &EffectiveGuard<'_>,
    request: &mut ChatRequest,
) -> Result<Screening, ApiError> {
    let mut screening = Screening {
        injection: guard.injection,
        rules: Vec::new(),
    };
    if guard.injection != InjectionPolicy::Off {
        for (index, message) in request.messages.iter().enumerate() {
            let (Some(source), Some(content)) = (source(message.role), &message.content) else {
                continue;
            };
            for finding in scan_untrusted(&content.text()) {
                let action = match guard.injection {
                    InjectionPolicy::Block => "block",
                    InjectionPolicy::Flag | InjectionPolicy::Off => "flag",
                };
                Metrics::count(
                    &METRICS.guard_findings,
                    &[
                        ("source", source),
                        ("rule", finding.rule),
                        ("action", action),
                    ],
                );
                tracing::warn!(
                    message = index + 1,
                    source,
                    rule = finding.rule,
                    action,
                    "prompt injection rule tripped"
                );
                if guard.injection == InjectionPolicy::Block {
                    return Err(ApiError::bad_request(format!(
                        "Message {} ({source}) trips the `{}` rule.",
                        index + 1,
                        finding.rule
                    ))
                    .with_code("prompt_injection_detected")
                    .with_param("messages"));
                }
                screening.note(finding.rule);
            }
        }
    }
    let operator = guard.system_prompts.iter().map(|prompt| Message {
        role: Role::System,
        content: Some(Content::Text((*prompt).to_owned())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: JsonObject::new(),
    });
    request.messages.splice(0..0, operator);
    Ok(screening)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: Role, text: &str) -> Message {
        Message {
            role,
            content: Some(Content::Text(text.to_owned())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: JsonObject::new(),
        }
    }

    #[test]
    fn only_user_and_tool_messages_are_screened() {
        assert_eq!(source(Role::User), Some("user"));
        assert_eq!(source(Role::Tool), Some("tool"));
        assert_eq!(source(Role::Function), Some("tool"));
        assert_eq!(source(Role::System), None);
        assert_eq!(source(Role::Assistant), None);
    }

    #[test]
    fn rules_are_noted_once_and_marked_in_order() {
        let mut screening = Screening::default();
        screening.note("role_marker");
        screening.note("instruction_override");
        screening.note("role_marker");
        let mut response = Response::new(axum::body::Body::empty());
        screening.mark(&mut response);
        assert_eq!(
            response.headers().get(&X_GATEWAY_GUARD).unwrap(),
            "role_marker,instruction_override"
        );
        let mut clean = Response::new(axum::body::Body::empty());
        Screening::default().mark(&mut clean);
        assert!(clean.headers().get(&X_GATEWAY_GUARD).is_none());
        assert_eq!(message(Role::User, "x").role, Role::User);
    }
}
