//! Structured output policy: when `response_format` carries a JSON schema, an answer that does not
//! match it never reaches the client. A complete answer that fails is asked for once more, with
//! the validation error, and both calls are billed; if that one fails too, the client gets an
//! error naming where. A stream is checked at its end (the relay calls [`check`]); it cannot be
//! taken back, so a failing one ends with an error event instead of `[DONE]`. An invalid answer
//! is never cached.

use std::sync::Arc;

use serde_json::Value;

use super::settlement::Settlement;
use crate::api::{ChatCompletion, ChatRequest, Content, JsonObject, Message, Role, Usage};
use crate::error::{ApiError, ErrorKind};
use crate::guard::schema::{OutputSchema, Violation};
use crate::keys::KeyRecord;
use crate::routing::{self, Deployment, Outcome, ServedModel};
use crate::state::Gateway;
use crate::telemetry::{EMF, Emf, METRICS, Metrics};

/// `code` of an answer that failed its schema.
pub(crate) const OUTPUT_VALIDATION_FAILED: &str = "output_validation_failed";

/// The schema the request's `response_format` asks the answer to match, compiled (before any
/// provider is called); `None` when it asks for none. A `json_schema` format without a `schema`
/// still asks for JSON.
pub(crate) fn requested_schema(
    request: &ChatRequest,
) -> Result<Option<Arc<OutputSchema>>, ApiError> {
    let Some(format) = &request.response_format else {
        return Ok(None);
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Ok(None);
    }
    let invalid = |why: String| {
        ApiError::bad_request(format!("`response_format.json_schema` {why}"))
            .with_param("response_format")
    };
    let Some(spec) = format.get("json_schema").and_then(Value::as_object) else {
        return Err(invalid("must be an object with the `schema`".to_owned()));
    };
    let any_json = Value::Bool(true);
    let schema = spec.get("schema").unwrap_or(&any_json);
    OutputSchema::compile(schema)
        .map(|compiled| Some(Arc::new(compiled)))
        .map_err(|why| invalid(format!("has an unusable `schema`: {why}")))
}

/// The first choice whose content does not match, with its text. A choice that calls a tool
/// instead of answering has nothing to check.
pub(crate) struct Failed {
    pub(crate) answer: String,
    pub(crate) violation: Violation,
}

/// Checks every choice of a complete answer.
pub(crate) fn check(schema: &OutputSchema, completion: &ChatCompletion) -> Result<(), Failed> {
    let several = completion.choices.len() > 1;
    for choice in &completion.choices {
        let answer = match &choice.message.content {
            Some(text) => text,
            None if choice.message.tool_calls.is_some() => continue,
            None => "",
        };
        if let Err(Violation(why)) = schema.check(answer) {
            let why = if several {
                format!("choice {}: {why}", choice.index)
            } else {
                why
            };
            return Err(Failed {
                answer: answer.to_owned(),
                violation: Violation(why),
            });
        }
    }
    Ok(())
}

/// Counts one checked answer: `valid`, `retried_valid` or `invalid`.
pub(crate) fn count(model: &str, result: &'static str) {
    if let Some(emf) = EMF.as_ref() {
        Emf::write(&emf.output_validation_line(model, result));
    }
    Metrics::count(
        &METRICS.output_validation,
        &[("model", model), ("result", result)],
    );
}

/// The error a client gets instead of an answer that did not match.
pub(crate) fn failure(violation: &Violation, retried: bool) -> ApiError {
    let again = if retried {
        ", also when asked again"
    } else {
        ""
    };
    ApiError::new(
        ErrorKind::BadGateway,
        format!(
            "The model's answer did not match the JSON schema of `response_format`{again}: {violation}"
        ),
    )
    .with_code(OUTPUT_VALIDATION_FAILED)
    .with_param("response_format")
}

/// The request again, with the failed answer and what was wrong with it.
fn retry_request(request: &ChatRequest, failed: &Failed) -> ChatRequest {
    let message = |role, text: String| Message {
        role,
        content: Some(Content::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: JsonObject::new(),
    };
    let mut retry = request.clone();
    retry
        .messages
        .push(message(Role::Assistant, failed.answer.clone()));
    retry.messages.push(message(
        Role::User,
        format!(
            "Your previous answer did not match the JSON schema: {}. Answer again with JSON only.",
            failed.violation
        ),
    ));
    retry
}

/// A complete answer, who gave it, and what the call that gave it used (billed at that model's
/// price; earlier calls are billed already).
pub(crate) struct Checked<'g> {
    pub(crate) completion: ChatCompletion,
    pub(crate) usage: Usage,
    pub(crate) model: &'g ServedModel,
    pub(crate) deployment: &'g Deployment,
}

/// What the retry needs from the request's phases: who asks, for what, by when.
pub(crate) struct Retry<'a, 'g> {
    pub(crate) gateway: &'g Gateway,
    pub(crate) key: &'a KeyRecord,
    pub(crate) route: &'g ServedModel,
    pub(crate) preferred: Option<usize>,
    pub(crate) request: &'a ChatRequest,
    pub(crate) deadline: tokio::time::Instant,
}

/// Returns `first` if it matches; else asks once more and returns that answer if it matches (its
/// completion's `usage` covering both calls, `Checked::usage` the retry's own), or an error.
/// `settlement` bills every call as it completes at its model's price, so a failed retry still
/// bills the first.
pub(crate) async fn ensure_valid<'g>(
    schema: &OutputSchema,
    first: Checked<'g>,
    retry: Retry<'_, 'g>,
    settlement: &mut Settlement,
) -> Result<Checked<'g>, ApiError> {
    let Err(failed) = check(schema, &first.completion) else {
        count(&first.model.name, "valid");
        return Ok(first);
    };
    settlement.bank(first.usage, first.model.price, &first.model.name);
    let mut request = retry_request(retry.request, &failed);
    let retry_estimate = request.estimate_prompt_tokens();
    let mut attempt = routing::ChatAttempt {
        request: &mut request,
        stream: false,
    };
    let answer = routing::execute(
        &retry.gateway.models,
        &retry.gateway.routing,
        retry.key,
        retry.route,
        retry.preferred,
        &mut attempt,
        retry.deadline,
    )
    .await?;
    let Outcome::Complete(mut completion) = answer.outcome else {
        return Err(ApiError::internal(
            "a call without streaming answered with a stream",
        ));
    };
    let second = completion
        .usage
        .unwrap_or_else(|| Usage::new(retry_estimate, 0));
    // The retry is billed at the price of the model that answered it, which a fallback may
    // have changed.
    settlement.bill_to(answer.model.price, &answer.model.name);
    settlement.observed = second;
    if let Err(failed) = check(schema, &completion) {
        count(&answer.model.name, "invalid");
        return Err(failure(&failed.violation, true));
    }
    count(&answer.model.name, "retried_valid");
    completion.usage = Some(Usage::new(
        first.usage.prompt_tokens + second.prompt_tokens,
        first.usage.completion_tokens + second.completion_tokens,
    ));
    Ok(Checked {
        completion: *completion,
        usage: second,
        model: answer.model,
        deployment: answer.deployment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(format: Value) -> ChatRequest {
        serde_json::from_value(json!({"model": "m", "response_format": format,
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap()
    }

    fn completion(contents: &[Option<&str>]) -> ChatCompletion {
        let choices: Vec<Value> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"index": i, "message": {"role": "assistant", "content": c}}))
            .collect();
        serde_json::from_value(json!({"id": "c", "model": "m", "choices": choices})).unwrap()
    }

    #[test]
    fn only_a_json_schema_format_asks_for_validation() {
        assert!(
            requested_schema(&request(json!({"type": "json_object"})))
                .unwrap()
                .is_none()
        );
        assert!(
            requested_schema(&request(json!({"type": "text"})))
                .unwrap()
                .is_none()
        );
        let schema = requested_schema(&request(json!({"type": "json_schema",
            "json_schema": {"name": "n", "strict": true, "schema": {"type": "integer"}}})))
        .unwrap()
        .unwrap();
        assert!(check(&schema, &completion(&[Some("3")])).is_ok());
        // Without a schema, any JSON.
        let any = requested_schema(&request(json!({"type": "json_schema",
            "json_schema": {"name": "n"}})))
        .unwrap()
        .unwrap();
        assert!(check(&any, &completion(&[Some("[1]")])).is_ok());
        assert!(check(&any, &completion(&[Some("nope")])).is_err());
    }

    #[test]
    fn an_unusable_schema_is_a_400_on_response_format() {
        for format in [
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"$ref": "https://example.com/s.json"}}}),
        ] {
            let error = requested_schema(&request(format)).err().unwrap();
            assert_eq!(error.status().as_u16(), 400);
            assert_eq!(error.param.as_deref(), Some("response_format"));
        }
    }

    #[test]
    fn every_choice_is_checked_and_the_failing_one_named() {
        let schema = OutputSchema::compile(&json!({"type": "integer"})).unwrap();
        let failed = check(&schema, &completion(&[Some("1"), Some("\"two\"")]))
            .err()
            .unwrap();
        assert_eq!(failed.answer, "\"two\"");
        assert!(
            failed.violation.0.starts_with("choice 1: at `/`"),
            "{}",
            failed.violation
        );
        assert!(check(&schema, &completion(&[None])).is_err());
    }

    #[test]
    fn the_retry_carries_the_answer_and_the_error() {
        let original = request(json!({"type": "json_schema", "json_schema": {"name": "n"}}));
        let retry = retry_request(
            &original,
            &Failed {
                answer: "nope".to_owned(),
                violation: Violation("the answer is not JSON".to_owned()),
            },
        );
        assert_eq!(retry.messages.len(), 3);
        assert_eq!(retry.messages[1].role, Role::Assistant);
        assert_eq!(retry.messages[1].content.as_ref().unwrap().text(), "nope");
        assert_eq!(
            retry.messages[2].content.as_ref().unwrap().text(),
            "Your previous answer did not match the JSON schema: the answer is not JSON. \
             Answer again with JSON only."
        );
    }
}
