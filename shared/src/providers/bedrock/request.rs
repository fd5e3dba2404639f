//! An OpenAI chat request as the parts of a Converse request, in the SDK's types.

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, AutoToolChoice, CachePointBlock, CachePointType, ContentBlock, ConversationRole,
    DocumentBlock, DocumentFormat, DocumentSource, ImageBlock, ImageFormat, ImageSource,
    InferenceConfiguration, Message as BedrockMessage, ReasoningContentBlock, ReasoningTextBlock,
    S3Location, SpecificToolChoice, SystemContentBlock, Tool as BedrockTool,
    ToolChoice as BedrockToolChoice, ToolConfiguration, ToolInputSchema, ToolResultBlock,
    ToolResultContentBlock, ToolSpecification, ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use base64::Engine;
use serde_json::{Value, json};

use crate::api::{ChatRequest, JsonObject};
use crate::providers::ProviderError;
use crate::providers::messages::{
    Block, Conversation, Image, Sampling, Speaker, ToolChoice, bad_request,
};

/// A Converse request's parts, in the SDK's types.
#[derive(Debug)]
pub(super) struct ConverseParts {
    pub system: Option<Vec<SystemContentBlock>>,
    pub messages: Vec<BedrockMessage>,
    pub inference: Option<InferenceConfiguration>,
    pub tools: Option<ToolConfiguration>,
    /// Anthropic's own fields Converse has no parameter for (`thinking`, `top_k`), which Bedrock
    /// passes to the model.
    pub additional: Option<Document>,
}

fn build_error(e: impl std::fmt::Display) -> ProviderError {
    bad_request(format!("cannot build the Bedrock request: {e}"))
}

fn image_format(media_type: &str) -> Option<ImageFormat> {
    match media_type.to_ascii_lowercase().as_str() {
        "png" | "image/png" => Some(ImageFormat::Png),
        "jpeg" | "jpg" | "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "gif" | "image/gif" => Some(ImageFormat::Gif),
        "webp" | "image/webp" => Some(ImageFormat::Webp),
        _ => None,
    }
}

/// An image as a Bedrock image block: data URLs become bytes, `s3://` URIs an S3 location.
/// Bedrock cannot fetch http(s) URLs.
fn image_block(image: Image<'_>) -> Result<ContentBlock, ProviderError> {
    let unsupported = |what: &str| {
        bad_request(format!(
            "Bedrock models accept images as base64 data URLs or s3:// URIs of PNG, JPEG, GIF \
             or WebP files, not {what}"
        ))
    };
    let (format, source) = match image {
        Image::Base64 { media_type, data } => {
            let format = image_format(media_type).ok_or_else(|| unsupported(media_type))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| bad_request(format!("image data URL is not valid base64: {e}")))?;
            (format, ImageSource::Bytes(Blob::new(bytes)))
        }
        Image::Url(url) if url.starts_with("s3://") => {
            let extension = url.rsplit_once('.').map_or("", |(_, ext)| ext);
            let format = image_format(extension).ok_or_else(|| unsupported("this file type"))?;
            let location = S3Location::builder()
                .uri(url)
                .build()
                .map_err(build_error)?;
            (format, ImageSource::S3Location(location))
        }
        Image::Url(_) => return Err(unsupported("http(s) URLs")),
    };
    ImageBlock::builder()
        .format(format)
        .source(source)
        .build()
        .map(ContentBlock::Image)
        .map_err(build_error)
}

fn cache_point() -> Result<CachePointBlock, ProviderError> {
    CachePointBlock::builder()
        .r#type(CachePointType::Default)
        .build()
        .map_err(build_error)
}

fn decode_base64(data: &str, what: &str) -> Result<Blob, ProviderError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(Blob::new)
        .map_err(|e| bad_request(format!("{what} is not valid base64: {e}")))
}

/// Anthropic's `document` block (base64 PDF or plain text source) as a Converse document.
fn document_block(fields: &JsonObject) -> Result<ContentBlock, ProviderError> {
    let source = fields.get("source").unwrap_or(&Value::Null);
    let text = |key: &str| source.get(key).and_then(Value::as_str);
    let (format, source) = match (text("type"), text("media_type")) {
        (Some("base64"), Some("application/pdf")) => (
            DocumentFormat::Pdf,
            DocumentSource::Bytes(decode_base64(
                text("data").unwrap_or_default(),
                "a document",
            )?),
        ),
        (Some("text"), _) => (
            DocumentFormat::Txt,
            DocumentSource::Text(text("data").unwrap_or_default().to_owned()),
        ),
        _ => {
            return Err(bad_request(
                "Bedrock models accept `document` blocks with a base64 PDF or a text source",
            )
            .with_param("messages"));
        }
    };
    // Bedrock requires a name, and allows only letters, digits, spaces and a few marks in it.
    let name: String = fields
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("document")
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '(' | ')' | '[' | ']'))
        .take(200)
        .collect();
    DocumentBlock::builder()
        .format(format)
        .name(if name.trim().is_empty() {
            "document".to_owned()
        } else {
            name
        })
        .source(source)
        .set_context(
            fields
                .get("context")
                .and_then(Value::as_str)
                .map(str::to_owned),
        )
        .build()
        .map(ContentBlock::Document)
        .map_err(build_error)
}

fn content_block(block: &Block<'_>) -> Result<ContentBlock, ProviderError> {
    Ok(match block {
        Block::Text(text) => ContentBlock::Text((*text).to_owned()),
        Block::Image(image) => image_block(*image)?,
        Block::ToolUse { id, name, input } => ContentBlock::ToolUse(
            ToolUseBlock::builder()
                .tool_use_id(*id)
                .name(*name)
                .input(json_to_document(input))
                .build()
                .map_err(build_error)?,
        ),
        Block::ToolResult {
            tool_use_id,
            text,
            images,
        } => {
            // Bedrock rejects blank text blocks; an empty result is an empty content list.
            let mut content = Vec::with_capacity(images.len() + 1);
            if !text.is_empty() {
                content.push(ToolResultContentBlock::Text(text.clone()));
            }
            for image in images {
                if let ContentBlock::Image(image) = image_block(*image)? {
                    content.push(ToolResultContentBlock::Image(image));
                }
            }
            ContentBlock::ToolResult(
                ToolResultBlock::builder()
                    .tool_use_id(*tool_use_id)
                    .set_content(Some(content))
                    .build()
                    .map_err(build_error)?,
            )
        }
        Block::Thinking {
            thinking,
            signature,
        } => ContentBlock::ReasoningContent(ReasoningContentBlock::ReasoningText(
            ReasoningTextBlock::builder()
                .text(*thinking)
                .signature(*signature)
                .build()
                .map_err(build_error)?,
        )),
        // The gateway hands Bedrock's redacted reasoning bytes to clients as base64 `data`.
        Block::RedactedThinking { data } => ContentBlock::ReasoningContent(
            ReasoningContentBlock::RedactedContent(decode_base64(data, "redacted thinking")?),
        ),
        Block::Document(fields) => document_block(fields)?,
        Block::CachePoint(_) => ContentBlock::CachePoint(cache_point()?),
    })
}

/// Converse has no `none`: the caller leaves the tools out instead.
fn tool_choice(choice: ToolChoice<'_>) -> Result<Option<BedrockToolChoice>, ProviderError> {
    Ok(match choice {
        ToolChoice::Auto => Some(BedrockToolChoice::Auto(AutoToolChoice::builder().build())),
        ToolChoice::Required => Some(BedrockToolChoice::Any(AnyToolChoice::builder().build())),
        ToolChoice::Function(name) => Some(BedrockToolChoice::Tool(
            SpecificToolChoice::builder()
                .name(name)
                .build()
                .map_err(build_error)?,
        )),
        ToolChoice::None => None,
    })
}

fn tool_configuration(
    conversation: &Conversation<'_>,
) -> Result<Option<ToolConfiguration>, ProviderError> {
    let choice_none = conversation.tool_choice == Some(ToolChoice::None);
    // A conversation that already holds tool calls cannot be sent without its tools, so with
    // `none` there they stay and the model decides.
    if conversation.tools.is_empty() || (choice_none && !conversation.has_tool_blocks) {
        return Ok(None);
    }
    let mut specs = Vec::with_capacity(conversation.tools.len());
    for spec in &conversation.tools {
        specs.push(
            ToolSpecification::builder()
                .name(spec.name)
                .set_description(spec.description.map(str::to_owned))
                .input_schema(ToolInputSchema::Json(json_to_document(&spec.schema)))
                .build()
                .map(BedrockTool::ToolSpec)
                .map_err(build_error)?,
        );
        if spec.cache_control.is_some() {
            specs.push(BedrockTool::CachePoint(cache_point()?));
        }
    }
    let choice = match conversation.tool_choice {
        Some(choice) => tool_choice(choice)?,
        None => None,
    };
    ToolConfiguration::builder()
        .set_tools(Some(specs))
        .set_tool_choice(choice)
        .build()
        .map(Some)
        .map_err(build_error)
}

fn inference_configuration(sampling: Sampling) -> Option<InferenceConfiguration> {
    let Sampling {
        max_tokens,
        temperature,
        top_p,
        stop,
    } = sampling;
    (max_tokens.is_some() || temperature.is_some() || top_p.is_some() || stop.is_some()).then(
        || {
            InferenceConfiguration::builder()
                .set_max_tokens(max_tokens.map(|t| i32::try_from(t).unwrap_or(i32::MAX)))
                .set_temperature(temperature.map(|t| t as f32))
                .set_top_p(top_p.map(|p| p as f32))
                .set_stop_sequences(stop)
                .build()
        },
    )
}

pub(super) fn to_converse_parts(request: &ChatRequest) -> Result<ConverseParts, ProviderError> {
    let conversation = Conversation::from_request(request, "Bedrock")?;
    let mut system = Vec::with_capacity(conversation.system.len());
    for (index, text) in conversation.system.iter().enumerate() {
        if !text.is_empty() {
            system.push(SystemContentBlock::Text(text.clone()));
        }
        if conversation.system_cache.iter().any(|(i, _)| *i == index) {
            system.push(SystemContentBlock::CachePoint(cache_point()?));
        }
    }
    let messages = conversation
        .turns
        .iter()
        .map(|turn| {
            let content = turn
                .blocks
                .iter()
                .map(content_block)
                .collect::<Result<Vec<_>, _>>()?;
            BedrockMessage::builder()
                .role(match turn.speaker {
                    Speaker::User => ConversationRole::User,
                    Speaker::Assistant => ConversationRole::Assistant,
                })
                .set_content(Some(content))
                .build()
                .map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tools = tool_configuration(&conversation)?;
    let mut additional = JsonObject::new();
    if let Some(extras) = &request.anthropic {
        if let Some(thinking) = &extras.thinking {
            additional.insert("thinking".to_owned(), thinking.clone());
        }
        if let Some(top_k) = extras.top_k {
            additional.insert("top_k".to_owned(), json!(top_k));
        }
    }
    Ok(ConverseParts {
        additional: (!additional.is_empty()).then(|| json_to_document(&Value::Object(additional))),
        system: (!system.is_empty()).then_some(system),
        messages,
        inference: inference_configuration(conversation.sampling),
        tools,
    })
}

pub(super) fn json_to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(json_to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_document(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::providers::ProviderErrorKind;
    use crate::providers::bedrock::response::document_to_json;
    use serde_json::json;

    pub(in crate::providers) fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    pub(in crate::providers) fn weather_request() -> Value {
        json!({
            "model": "anthropic.claude-3-haiku",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Use metric units."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "t2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "t2", "content": "snow"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "stop": "END",
            "max_tokens": 100,
            "temperature": 1.7,
            "top_p": 0.5
        })
    }

    #[test]
    fn system_prompts_images_tools_and_tool_results_are_translated() {
        let parts = to_converse_parts(&request(weather_request())).unwrap();
        assert_eq!(
            parts.system,
            Some(vec![
                SystemContentBlock::Text("Be brief.".into()),
                SystemContentBlock::Text("Use metric units.".into())
            ])
        );
        let roles: Vec<_> = parts.messages.iter().map(|m| m.role.clone()).collect();
        assert_eq!(
            roles,
            [
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User
            ]
        );
        let ContentBlock::Image(image) = &parts.messages[0].content[1] else {
            panic!("expected an image: {:?}", parts.messages[0].content);
        };
        assert_eq!(image.format, ImageFormat::Png);
        assert_eq!(
            image.source,
            Some(ImageSource::Bytes(Blob::new(vec![0x89, 0x50, 0x4e, 0x47])))
        );
        let ContentBlock::ToolUse(call) = &parts.messages[1].content[0] else {
            panic!("expected a tool use: {:?}", parts.messages[1].content);
        };
        assert_eq!(
            (call.tool_use_id.as_str(), call.name.as_str()),
            ("t1", "get_weather")
        );
        assert_eq!(document_to_json(&call.input), json!({"city": "Paris"}));
        // Both tool results and the next user text are one user turn.
        let last = &parts.messages[2].content;
        assert_eq!(last.len(), 3);
        let ContentBlock::ToolResult(result) = &last[1] else {
            panic!("expected a tool result: {last:?}");
        };
        assert_eq!(result.tool_use_id, "t2");
        assert_eq!(
            result.content,
            [ToolResultContentBlock::Text("snow".into())]
        );
        assert_eq!(last[2], ContentBlock::Text("And tomorrow?".into()));

        let tools = parts.tools.unwrap();
        let BedrockTool::ToolSpec(spec) = &tools.tools[0] else {
            panic!("expected a tool spec");
        };
        assert_eq!(spec.name, "get_weather");
        assert_eq!(spec.description.as_deref(), Some("d"));
        let Some(ToolInputSchema::Json(schema)) = &spec.input_schema else {
            panic!("expected a JSON schema");
        };
        assert_eq!(
            document_to_json(schema)["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(
            tools.tool_choice,
            Some(BedrockToolChoice::Any(AnyToolChoice::builder().build()))
        );
        let inference = parts.inference.unwrap();
        assert_eq!(inference.max_tokens, Some(100));
        assert_eq!(inference.temperature, Some(1.0));
        assert_eq!(inference.top_p, Some(0.5));
        assert_eq!(inference.stop_sequences, Some(vec!["END".to_owned()]));
    }

    #[test]
    fn tool_choice_maps_to_auto_any_tool_or_no_tools() {
        let with_choice = |choice: Value, messages: Value| {
            to_converse_parts(&request(json!({
                "model": "m",
                "messages": messages,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": choice
            })))
            .unwrap()
            .tools
        };
        let plain = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            with_choice(json!("auto"), plain.clone())
                .unwrap()
                .tool_choice,
            Some(BedrockToolChoice::Auto(AutoToolChoice::builder().build()))
        );
        assert_eq!(
            with_choice(
                json!({"type": "function", "function": {"name": "f"}}),
                plain.clone()
            )
            .unwrap()
            .tool_choice,
            Some(BedrockToolChoice::Tool(
                SpecificToolChoice::builder().name("f").build().unwrap()
            ))
        );
        assert_eq!(with_choice(json!("none"), plain), None);
        // With tool calls in the history Bedrock requires the tools: they stay, with no choice.
        let history = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c", "content": ""}
        ]);
        let kept = with_choice(json!("none"), history).unwrap();
        assert_eq!(kept.tools.len(), 1);
        assert_eq!(kept.tool_choice, None);
    }

    #[test]
    fn a_plain_request_has_no_inference_config_or_tools() {
        let parts = to_converse_parts(&request(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ))
        .unwrap();
        assert!(parts.system.is_none() && parts.inference.is_none() && parts.tools.is_none());
        assert_eq!(parts.messages[0].content, [ContentBlock::Text("hi".into())]);
    }

    #[test]
    fn unsupported_inputs_are_bad_requests_naming_the_problem() {
        let fails = |body: Value| to_converse_parts(&request(body)).unwrap_err();
        let n =
            fails(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(
            (n.kind, n.param.as_deref()),
            (ProviderErrorKind::BadRequest, Some("n"))
        );
        let image = |url: &str| {
            fails(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}
                ]}]}),
            )
        };
        assert!(image("https://x/cat.png").message.contains("http(s) URLs"));
        assert!(
            image("data:image/tiff;base64,AAAA")
                .message
                .contains("image/tiff")
        );
        assert!(
            image("data:image/png;base64,@@@")
                .message
                .contains("base64")
        );
        let arguments = fails(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]}));
        assert!(arguments.message.contains("c1"), "{arguments}");
    }

    #[test]
    fn s3_images_keep_their_location_and_format() {
        let block = image_block(Image::Url("s3://bucket/cat.JPG")).unwrap();
        let ContentBlock::Image(image) = block else {
            panic!("expected an image");
        };
        assert_eq!(image.format, ImageFormat::Jpeg);
        assert_eq!(
            image.source,
            Some(ImageSource::S3Location(
                S3Location::builder()
                    .uri("s3://bucket/cat.JPG")
                    .build()
                    .unwrap()
            ))
        );
    }

    #[test]
    fn documents_convert_to_json_and_back() {
        let value = json!({"b": [1, -2, 2.5, "s", null, true], "a": {"nested": {}}});
        let back = document_to_json(&json_to_document(&value));
        assert_eq!(back, value);
        // Keys come out sorted whatever order the SDK's map holds them in.
        assert_eq!(
            back.to_string(),
            r#"{"a":{"nested":{}},"b":[1,-2,2.5,"s",null,true]}"#
        );
    }
}

#[cfg(test)]
mod properties {
    use aws_sdk_bedrockruntime::types::{
        AnyToolChoice, AutoToolChoice, ContentBlock, ConversationRole, ImageSource,
        SpecificToolChoice, SystemContentBlock, Tool as BedrockTool,
        ToolChoice as BedrockToolChoice, ToolResultContentBlock,
    };
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::{ConverseParts, to_converse_parts};
    use crate::providers::bedrock::response::document_to_json;
    use crate::providers::messages::Speaker;
    use crate::providers::translation_properties::{
        Flat, TOOL_NAMES, chat_request, check_turns, expected,
    };

    fn read_back(parts: &ConverseParts) -> Vec<(Speaker, Vec<Flat>)> {
        parts
            .messages
            .iter()
            .map(|message| {
                let speaker = match message.role {
                    ConversationRole::User => Speaker::User,
                    ConversationRole::Assistant => Speaker::Assistant,
                    ref other => panic!("unexpected role {other:?}"),
                };
                let blocks = message
                    .content
                    .iter()
                    .map(|block| match block {
                        ContentBlock::Text(text) => Flat::Text(text.clone()),
                        ContentBlock::Image(image) => {
                            let Some(ImageSource::Bytes(bytes)) = &image.source else {
                                panic!("expected bytes: {image:?}");
                            };
                            Flat::Image {
                                media_type: format!("image/{}", image.format.as_str()),
                                data: base64::engine::general_purpose::STANDARD
                                    .encode(bytes.as_ref()),
                            }
                        }
                        ContentBlock::ToolUse(tool) => Flat::ToolUse {
                            id: tool.tool_use_id.clone(),
                            name: tool.name.clone(),
                            input: document_to_json(&tool.input),
                        },
                        ContentBlock::ToolResult(result) => Flat::ToolResult {
                            id: result.tool_use_id.clone(),
                            text: result
                                .content
                                .iter()
                                .map(|c| match c {
                                    ToolResultContentBlock::Text(text) => text.clone(),
                                    other => panic!("unexpected result content {other:?}"),
                                })
                                .collect(),
                        },
                        other => panic!("unexpected block {other:?}"),
                    })
                    .collect();
                (speaker, blocks)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn requests_keep_every_block_in_alternating_turns(request in chat_request()) {
            let parts = to_converse_parts(&request).unwrap();
            let expected = expected(&request);
            check_turns(&read_back(&parts), &expected)?;
            let system: Vec<SystemContentBlock> = expected
                .system
                .iter()
                .filter(|text| !text.is_empty())
                .map(|text| SystemContentBlock::Text(text.clone()))
                .collect();
            prop_assert_eq!(parts.system.unwrap_or_default(), system);

            let none = matches!(&request.tool_choice, Some(Value::String(s)) if s == "none");
            let has_tool_blocks = expected
                .blocks
                .iter()
                .any(|(_, b)| matches!(b, Flat::ToolUse { .. } | Flat::ToolResult { .. }));
            // Converse has no `none`: the tools go, unless the history needs them.
            prop_assert_eq!(parts.tools.is_none(), none && !has_tool_blocks);
            if let Some(tools) = parts.tools {
                let names: Vec<&str> = tools
                    .tools
                    .iter()
                    .map(|t| match t {
                        BedrockTool::ToolSpec(spec) => spec.name.as_str(),
                        other => panic!("unexpected tool {other:?}"),
                    })
                    .collect();
                prop_assert_eq!(names, TOOL_NAMES.to_vec());
                let choice = match &request.tool_choice {
                    Some(Value::String(s)) if s == "auto" => {
                        Some(BedrockToolChoice::Auto(AutoToolChoice::builder().build()))
                    }
                    Some(Value::String(s)) if s == "required" => {
                        Some(BedrockToolChoice::Any(AnyToolChoice::builder().build()))
                    }
                    Some(Value::Object(_)) => Some(BedrockToolChoice::Tool(
                        SpecificToolChoice::builder().name("search").build().unwrap(),
                    )),
                    _ => None,
                };
                prop_assert_eq!(tools.tool_choice, choice);
            }
        }
    }
}
