//! Converse answers as OpenAI completions.

use aws_sdk_bedrockruntime::operation::converse::ConverseOutput as ConverseResponse;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConverseOutput as ConverseResult, ReasoningContentBlock, StopReason, TokenUsage,
};
use aws_smithy_types::{Document, Number};
use base64::Engine;
use serde_json::Value;

use crate::api::{ChatCompletion, Usage};
use crate::providers::messages::{self, FinishReason, Reply};
use crate::providers::{ProviderError, ProviderErrorKind};

/// A document as JSON; object keys are sorted, since the SDK keeps them in a `HashMap`, so the
/// same tool input always gives the same arguments string.
pub(super) fn document_to_json(document: &Document) -> Value {
    match document {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(document_to_json).collect()),
        Document::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), document_to_json(v)))
                    .collect(),
            )
        }
    }
}

fn tokens(n: i32) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn usage(usage: &TokenUsage) -> Usage {
    messages::usage(
        tokens(usage.input_tokens),
        usage.cache_read_input_tokens.map_or(0, tokens),
        usage.cache_write_input_tokens.map_or(0, tokens),
        tokens(usage.output_tokens),
    )
}

/// Redacted reasoning bytes as the base64 `data` of Anthropic's `redacted_thinking` block.
pub(super) fn redacted_data(bytes: &aws_smithy_types::Blob) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes.as_ref())
}

pub(super) fn finish_reason(reason: &StopReason) -> FinishReason {
    match reason {
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => FinishReason::Length,
        StopReason::ToolUse => FinishReason::ToolCalls,
        StopReason::GuardrailIntervened | StopReason::ContentFiltered => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Stop,
    }
}

pub(super) fn from_converse_response(
    response: ConverseResponse,
    id: String,
    model: &str,
) -> Result<ChatCompletion, ProviderError> {
    let Some(ConverseResult::Message(message)) = response.output else {
        return Err(ProviderError::new(
            ProviderErrorKind::Protocol,
            "Converse response has no message",
        ));
    };
    let mut reply = Reply::default();
    for block in message.content {
        match block {
            ContentBlock::Text(text) => reply.push_text(&text),
            ContentBlock::ToolUse(tool) => {
                reply.push_tool_use(tool.tool_use_id, tool.name, &document_to_json(&tool.input));
            }
            ContentBlock::ReasoningContent(ReasoningContentBlock::ReasoningText(reasoning)) => {
                reply.push_thinking(&reasoning.text, reasoning.signature().unwrap_or_default());
            }
            ContentBlock::ReasoningContent(ReasoningContentBlock::RedactedContent(bytes)) => {
                reply.push_redacted_thinking(&redacted_data(&bytes));
            }
            _ => {}
        }
    }
    Ok(reply.into_completion(
        id,
        model.to_owned(),
        finish_reason(&response.stop_reason),
        response.usage.as_ref().map(usage),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_bedrockruntime::types::{
        ConversationRole, Message as BedrockMessage, ToolUseBlock,
    };
    use serde_json::json;

    use crate::providers::bedrock::request::json_to_document;

    #[test]
    fn stop_reasons_map_to_openai_finish_reasons() {
        for (reason, expected) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("something_new", "stop"),
        ] {
            assert_eq!(
                finish_reason(&StopReason::from(reason)).as_str(),
                expected,
                "{reason}"
            );
        }
    }

    #[test]
    fn responses_map_text_tool_use_stop_reason_and_usage() {
        let message = BedrockMessage::builder()
            .role(ConversationRole::Assistant)
            .content(ContentBlock::Text("Checking.".into()))
            .content(ContentBlock::ToolUse(
                ToolUseBlock::builder()
                    .tool_use_id("tooluse_1")
                    .name("get_weather")
                    .input(json_to_document(&json!({"city": "Paris", "days": 2})))
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap();
        let response = ConverseResponse::builder()
            .output(ConverseResult::Message(message))
            .stop_reason(StopReason::ToolUse)
            .usage(
                TokenUsage::builder()
                    .input_tokens(10)
                    .output_tokens(5)
                    .total_tokens(20)
                    .cache_read_input_tokens(2)
                    .cache_write_input_tokens(3)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let completion =
            from_converse_response(response, "chatcmpl-1".into(), "anthropic.claude").unwrap();
        assert_eq!(
            (completion.id.as_str(), completion.model.as_str()),
            ("chatcmpl-1", "anthropic.claude")
        );
        let choice = &completion.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(choice.message.content.as_deref(), Some("Checking."));
        let calls = choice.message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].id, "tooluse_1");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris","days":2}"#);
        assert_eq!(completion.usage, Some(Usage::new(15, 5).with_cache(2, 3)));
    }
}

#[cfg(test)]
pub(super) mod properties {
    use aws_sdk_bedrockruntime::types::{
        ContentBlock, ConversationRole, ConverseOutput as ConverseResult,
        Message as BedrockMessage, StopReason, TokenUsage, ToolUseBlock,
    };
    use proptest::prelude::*;

    use super::{ConverseResponse, from_converse_response};
    use crate::providers::bedrock::request::json_to_document;
    use crate::providers::translation_properties::{
        GeneratedReply, ReplyBlock, check_completion, reply,
    };

    /// Bedrock's stop reasons and the finish reasons they must become.
    pub(in crate::providers::bedrock) const STOP_REASONS: [(&str, &str); 7] = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ];

    pub(in crate::providers::bedrock) fn token_usage(reply: &GeneratedReply) -> TokenUsage {
        let tokens = |n: u32| i32::try_from(n).unwrap();
        TokenUsage::builder()
            .input_tokens(tokens(reply.input_tokens))
            .output_tokens(tokens(reply.output_tokens))
            .total_tokens(tokens(reply.input_tokens + reply.output_tokens))
            .cache_read_input_tokens(tokens(reply.cache_read_tokens))
            .cache_write_input_tokens(tokens(reply.cache_write_tokens))
            .build()
            .unwrap()
    }

    proptest! {
        #[test]
        fn answers_keep_text_tool_calls_and_usage(
            reply in reply(),
            (stop_reason, finish_reason) in prop::sample::select(STOP_REASONS.to_vec()),
        ) {
            let content: Vec<ContentBlock> = reply
                .blocks
                .iter()
                .map(|block| match block {
                    ReplyBlock::Text(pieces) => ContentBlock::Text(pieces.concat()),
                    ReplyBlock::ToolUse { id, name, input, .. } => ContentBlock::ToolUse(
                        ToolUseBlock::builder()
                            .tool_use_id(id)
                            .name(name)
                            .input(json_to_document(input))
                            .build()
                            .unwrap(),
                    ),
                })
                .collect();
            let message = BedrockMessage::builder()
                .role(ConversationRole::Assistant)
                .set_content(Some(content))
                .build()
                .unwrap();
            let response = ConverseResponse::builder()
                .output(ConverseResult::Message(message))
                .stop_reason(StopReason::from(stop_reason))
                .usage(token_usage(&reply))
                .build()
                .unwrap();
            let completion = from_converse_response(response, "chatcmpl-1".into(), "m").unwrap();
            check_completion(&completion, &reply, finish_reason)?;
        }
    }
}
