//! Model selection: routing aliases (cheapest capable candidate, or the strong one), the key's
//! scope, and context budgets (reroute to a larger window, or trim the oldest turns).

use super::registry::{AliasModel, Model, Registry, ServedModel};
use crate::api::{ChatRequest, Message, Role, prompt_tokens};
use crate::config::RouteConfig;
use crate::error::ApiError;
use crate::keys::{ContextPolicy, KeyRecord};

/// What the request needs from a model, for routing aliases.
struct Needs {
    tools: bool,
    images: bool,
    json: bool,
    tokens: u64,
}

fn needs(request: &ChatRequest, prompt_tokens: u64) -> Needs {
    Needs {
        tools: request.tools.as_ref().is_some_and(|t| !t.is_empty()),
        images: request.has_images(),
        json: request.wants_json(),
        tokens: prompt_tokens,
    }
}

fn can_serve(route: &ServedModel, needs: &Needs) -> bool {
    let caps = &route.capabilities;
    (!needs.tools || caps.tools)
        && (!needs.images || caps.images)
        && (!needs.json || caps.json)
        && route.context_window.is_none_or(|w| needs.tokens <= w)
}

/// The rule-based classifier: does this request need the strong model?
fn needs_strong_model(
    alias: &RouteConfig,
    request: &ChatRequest,
    prompt_tokens: u64,
) -> Option<&'static str> {
    let rules = &alias.escalate;
    if prompt_tokens >= rules.min_prompt_tokens {
        return Some("long_prompt");
    }
    if request
        .tools
        .as_ref()
        .is_some_and(|t| t.len() >= rules.min_tools)
    {
        return Some("many_tools");
    }
    let last_user = request.last_user_text().to_lowercase();
    if rules
        .keywords
        .iter()
        .any(|k| last_user.contains(&k.to_lowercase()))
    {
        return Some("keyword");
    }
    if last_user.contains("```") {
        return Some("code");
    }
    None
}

fn unit_price(route: &ServedModel) -> f64 {
    route.price.input_per_mtok + route.price.output_per_mtok
}

/// The model that will serve the request and what the gateway did to fit it.
pub struct Selection<'g> {
    pub model: &'g ServedModel,
    /// Set when an alias chose the model: `cheapest` or `strong:<reason>`.
    pub routed: Option<String>,
    /// Set when the conversation did not fit: `rerouted:<model>` or `trimmed:<n>`.
    pub context: Option<String>,
}

/// An alias's candidates that the key may use, by name.
fn alias_candidates<'g>(
    registry: &'g Registry,
    key: &KeyRecord,
    alias: &'g AliasModel,
) -> impl Iterator<Item = &'g ServedModel> {
    alias
        .route
        .candidates
        .iter()
        .filter(|name| key.allows_model(name))
        .filter_map(|name| registry.served(name))
}

/// The model an embeddings request is served by: the model itself, or the cheapest candidate of
/// an alias that the key may use.
pub fn select_embedding<'g>(
    registry: &'g Registry,
    key: &KeyRecord,
    requested: &'g Model,
) -> Result<&'g ServedModel, ApiError> {
    match requested {
        Model::Served(model) => Ok(&**model),
        Model::Alias(alias) => alias_candidates(registry, key, alias)
            .min_by(|a, b| unit_price(a).total_cmp(&unit_price(b)))
            .ok_or_else(|| no_candidate(&alias.name)),
    }
}

fn no_candidate(alias: &str) -> ApiError {
    ApiError::forbidden(format!(
        "No model behind `{alias}` is allowed for this API key."
    ))
    .with_code("model_not_allowed")
    .with_param("model")
}

/// Resolves aliases (among the candidates the key may use), then makes the conversation fit the
/// chosen model's context window: a larger-context fallback or candidate the key may use if there
/// is one, else (when the key allows) dropping the oldest turns, never the system prompt or the
/// last user turn.
pub fn select<'g>(
    registry: &'g Registry,
    requested: &'g Model,
    key: &KeyRecord,
    request: &mut ChatRequest,
) -> Result<Selection<'g>, ApiError> {
    let prompt_tokens = request.estimate_prompt_tokens();
    let mut routed = None;
    let (model, alias) = match requested {
        Model::Served(model) => (&**model, None),
        Model::Alias(alias) => {
            let need = needs(request, prompt_tokens);
            let allowed: Vec<&ServedModel> = alias_candidates(registry, key, alias).collect();
            if allowed.is_empty() {
                return Err(no_candidate(&alias.name));
            }
            let mut candidates: Vec<&ServedModel> = allowed
                .iter()
                .copied()
                .filter(|m| can_serve(m, &need))
                .collect();
            candidates.sort_by(|a, b| unit_price(a).total_cmp(&unit_price(b)));
            let strong = match needs_strong_model(&alias.route, request, prompt_tokens) {
                None => None,
                Some(reason) => {
                    let preferred = alias
                        .route
                        .strong
                        .as_ref()
                        .filter(|n| key.allows_model(n))
                        .and_then(|n| registry.served(n))
                        .filter(|m| can_serve(m, &need));
                    preferred
                        .or_else(|| candidates.last().copied())
                        .map(|m| (m, reason))
                }
            };
            let chosen = match (strong, candidates.first()) {
                (Some((model, reason)), _) => (model, format!("strong:{reason}")),
                (None, Some(cheapest)) => (*cheapest, "cheapest".to_owned()),
                (None, None) => {
                    return Err(ApiError::bad_request(format!(
                        "No model behind `{}` can serve this request (tools: {}, images: {}, JSON: {}, about {} prompt tokens).",
                        alias.name, need.tools, need.images, need.json, prompt_tokens
                    ))
                    .with_param("model"));
                }
            };
            routed = Some(chosen.1);
            (chosen.0, Some(alias))
        }
    };
    let Some(window) = model.context_window.filter(|w| prompt_tokens > *w) else {
        return Ok(Selection {
            model,
            routed,
            context: None,
        });
    };
    let larger = model
        .fallbacks
        .iter()
        .chain(alias.iter().flat_map(|a| a.route.candidates.iter()))
        .filter(|name| key.allows_model(name))
        .filter_map(|name| registry.served(name))
        .find(|m| m.context_window.is_none_or(|w| w >= prompt_tokens));
    if let Some(bigger) = larger {
        return Ok(Selection {
            model: bigger,
            routed,
            context: Some(format!("rerouted:{}", bigger.name)),
        });
    }
    if key.context_policy == ContextPolicy::Trim {
        let dropped = trim_to_fit(request, window);
        if request.estimate_prompt_tokens() <= window {
            return Ok(Selection {
                model,
                routed,
                context: Some(format!("trimmed:{dropped}")),
            });
        }
    }
    Err(ApiError::bad_request(format!(
        "This model's maximum context length is {window} tokens; the messages are about {prompt_tokens} tokens."
    ))
    .with_code("context_length_exceeded")
    .with_param("messages"))
}

/// Drops the oldest turns until the prompt fits `window`, keeping every system/developer message
/// and everything from the last user turn on; a tool result never outlives its tool call.
/// Returns how many messages were dropped.
pub fn trim_to_fit(request: &mut ChatRequest, window: u64) -> usize {
    let Some(last_user) = request.messages.iter().rposition(|m| m.role == Role::User) else {
        return 0;
    };
    // The estimate is kept as running totals, so trimming stays linear in the message count.
    let mut chars: usize = request
        .messages
        .iter()
        .map(Message::estimate_chars)
        .sum::<usize>()
        + request.tool_chars();
    let mut count = request.messages.len();
    let mut keep = vec![true; request.messages.len()];
    let mut dropped = 0;
    let mut dropping_tool_results = false;
    for (message, keep) in request.messages.iter().zip(keep.iter_mut()).take(last_user) {
        let is_tool_result = message.role == Role::Tool;
        let drop = if dropping_tool_results && is_tool_result {
            // Tool results answering a dropped assistant turn go with it.
            true
        } else {
            dropping_tool_results = false;
            prompt_tokens(chars, count) > window
                && !matches!(message.role, Role::System | Role::Developer)
        };
        if drop {
            *keep = false;
            dropped += 1;
            chars -= message.estimate_chars();
            count -= 1;
            dropping_tool_results = true;
        }
    }
    let messages = std::mem::take(&mut request.messages);
    request.messages = messages
        .into_iter()
        .zip(keep)
        .filter_map(|(m, k)| k.then_some(m))
        .collect();
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A conversation from a list of turn kinds: 0 user, 1 assistant, 2 assistant calling a tool
    /// followed by its result, 3 system; each `size` words long.
    fn conversation(turns: &[(u8, usize)]) -> ChatRequest {
        let mut messages = vec![json!({"role": "system", "content": "You are helpful."})];
        for (i, (kind, size)) in turns.iter().enumerate() {
            let text = "word ".repeat(*size);
            match kind {
                0 => messages.push(json!({"role": "user", "content": text})),
                1 => messages.push(json!({"role": "assistant", "content": text})),
                2 => {
                    let id = format!("call_{i}");
                    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ]}));
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                }
                _ => messages.push(json!({"role": "system", "content": text})),
            }
        }
        messages.push(json!({"role": "user", "content": "the last question"}));
        serde_json::from_value(json!({"model": "m", "messages": messages})).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn trimming_never_drops_system_prompts_the_last_user_turn_or_a_call_of_a_kept_result(
            turns in proptest::collection::vec((0u8..4, 0usize..60), 0..30),
            window in 20u64..800,
        ) {
            let mut request = conversation(&turns);
            let before = request.messages.clone();
            let dropped = trim_to_fit(&mut request, window);
            let after = &request.messages;
            proptest::prop_assert_eq!(before.len() - after.len(), dropped);
            let systems = |m: &[crate::api::Message]| {
                m.iter().filter(|m| m.role == Role::System).count()
            };
            proptest::prop_assert_eq!(systems(after), systems(&before));
            let last = after.last().and_then(|m| m.content.as_ref()).map(|c| c.text());
            proptest::prop_assert_eq!(last.as_deref(), Some("the last question"));
            for (i, message) in after.iter().enumerate() {
                if message.role == Role::Tool {
                    let id = message.tool_call_id.clone();
                    let called = after[..i].iter().any(|m| {
                        m.tool_calls.as_ref().is_some_and(|calls| calls.iter().any(|c| Some(&c.id) == id.as_ref()))
                    });
                    proptest::prop_assert!(called, "tool result {:?} kept without its call", id);
                }
            }
            // Nothing was dropped while the prompt fitted already.
            let original = ChatRequest { messages: before.clone(), ..request.clone() };
            if original.estimate_prompt_tokens() <= window {
                proptest::prop_assert_eq!(dropped, 0);
            }
        }
    }

    #[test]
    fn trimming_keeps_the_system_prompt_and_the_last_user_turn() {
        let long = "word ".repeat(200);
        let mut request: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": long},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": long},
                {"role": "assistant", "content": long},
                {"role": "user", "content": "And now?"}
            ]
        }))
        .unwrap();
        let dropped = trim_to_fit(&mut request, 300);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles.first(), Some(&Role::System));
        assert_eq!(roles.last(), Some(&Role::User));
        assert_eq!(
            request
                .messages
                .last()
                .unwrap()
                .content
                .as_ref()
                .unwrap()
                .text(),
            "And now?"
        );
        assert!(
            !roles.contains(&Role::Tool),
            "no orphaned tool result: {roles:?}"
        );
        assert!(dropped >= 3);
        assert!(request.estimate_prompt_tokens() <= 300);
    }
}
