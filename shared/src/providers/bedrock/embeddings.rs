//! Embeddings on Bedrock through `InvokeModel`: Amazon Titan Text Embeddings v2 (one text per
//! call, `dimensions` 256, 512 or 1024, normalized) and Cohere Embed v3 (up to 96 texts per call,
//! 1024 dimensions, `input_type` "search_document" unless the request names another), each in its
//! model's own JSON body.

use std::time::Duration;

use aws_smithy_types::Blob;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::BedrockProvider;
use super::errors::call_error;
use crate::api::{Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector};
use crate::config::MAX_EMBEDDING_DIMENSIONS;
use crate::providers::{ProviderError, ProviderErrorKind};

/// Cohere Embed's limit on texts per call.
const COHERE_MAX_TEXTS: usize = 96;
/// The sizes Titan Text Embeddings v2 offers.
const TITAN_DIMENSIONS: [u32; 3] = [256, 512, 1024];
/// Cohere Embed v3's one size.
const COHERE_DIMENSIONS: u32 = 1024;
/// Titan calls in flight at once when one request carries several texts.
const TITAN_CONCURRENCY: usize = 4;
/// Cohere's input types (what the vector is for).
const COHERE_INPUT_TYPES: [&str; 4] = [
    "search_document",
    "search_query",
    "classification",
    "clustering",
];

/// The model family behind a Bedrock model id (or inference profile id such as
/// `us.cohere.embed-english-v3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Titan,
    Cohere,
}

impl Family {
    pub(super) fn of(model_id: &str) -> Option<Self> {
        if model_id.contains("amazon.titan-embed") {
            Some(Family::Titan)
        } else if model_id.contains("cohere.embed") {
            Some(Family::Cohere)
        } else {
            None
        }
    }
}

/// The most texts one call to `model_id` may carry: one for Titan (and for a model this
/// gateway does not know, which it refuses anyway).
pub fn max_embedding_inputs(model_id: &str) -> usize {
    match Family::of(model_id) {
        Some(Family::Cohere) => COHERE_MAX_TEXTS,
        Some(Family::Titan) | None => 1,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanAnswer {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: u64,
}

#[derive(Deserialize)]
struct CohereAnswer {
    embeddings: Vec<Vec<f32>>,
}

fn bad_request(message: String) -> ProviderError {
    ProviderError::new(ProviderErrorKind::BadRequest, message)
}

fn protocol(message: String) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Protocol, message)
}

/// A Titan request body, or why the request cannot be one.
pub(super) fn titan_body(text: &str, dimensions: Option<u32>) -> Result<Value, ProviderError> {
    match dimensions {
        None => Ok(json!({"inputText": text, "normalize": true})),
        Some(size) if TITAN_DIMENSIONS.contains(&size) => {
            Ok(json!({"inputText": text, "dimensions": size, "normalize": true}))
        }
        Some(size) => Err(bad_request(format!(
            "Titan Text Embeddings supports `dimensions` 256, 512 or 1024, not {size}"
        ))),
    }
}

/// A Cohere request body, or why the request cannot be one.
pub(super) fn cohere_body(
    texts: &[String],
    dimensions: Option<u32>,
    input_type: Option<&Value>,
) -> Result<Value, ProviderError> {
    if texts.len() > COHERE_MAX_TEXTS {
        return Err(bad_request(format!(
            "Cohere Embed takes at most {COHERE_MAX_TEXTS} texts per call, not {}",
            texts.len()
        )));
    }
    if let Some(size) = dimensions.filter(|&d| d != COHERE_DIMENSIONS) {
        return Err(bad_request(format!(
            "Cohere Embed answers {COHERE_DIMENSIONS} dimensions; `dimensions` {size} is not offered"
        )));
    }
    let input_type = match input_type {
        None => "search_document",
        Some(Value::String(kind)) if COHERE_INPUT_TYPES.contains(&kind.as_str()) => kind,
        Some(other) => {
            return Err(bad_request(format!(
                "`input_type` must be one of {}, not {other}",
                COHERE_INPUT_TYPES.join(", ")
            )));
        }
    };
    Ok(json!({"texts": texts, "input_type": input_type, "truncate": "END"}))
}

/// A vector of an answer, checked against the size asked for.
fn checked(vector: Vec<f32>, dimensions: Option<u32>) -> Result<Vec<f32>, ProviderError> {
    let size = u32::try_from(vector.len()).unwrap_or(u32::MAX);
    if size == 0 || size > MAX_EMBEDDING_DIMENSIONS || dimensions.is_some_and(|d| d != size) {
        return Err(protocol(format!(
            "Bedrock returned an embedding of {size} dimensions"
        )));
    }
    Ok(vector)
}

fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

impl BedrockProvider {
    /// One InvokeModel call with a JSON body, bounded like a non-streamed Converse call.
    async fn invoke(&self, model_id: &str, body: &Value) -> Result<Vec<u8>, ProviderError> {
        let client = self.client().await?;
        let bytes = serde_json::to_vec(body)
            .map_err(|e| protocol(format!("cannot encode an InvokeModel body: {e}")))?;
        let call = client
            .invoke_model()
            .model_id(model_id)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(bytes))
            .send();
        let limit = self.timeouts.first_byte_ms + self.timeouts.idle_ms;
        let output = tokio::time::timeout(Duration::from_millis(limit), call)
            .await
            .map_err(|_| {
                ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("no InvokeModel response within {limit} ms"),
                )
            })?
            .map_err(call_error)?;
        Ok(output.body.into_inner())
    }

    async fn titan_embedding(
        &self,
        model_id: &str,
        text: &str,
        dimensions: Option<u32>,
    ) -> Result<(Vec<f32>, u64), ProviderError> {
        let answer = self
            .invoke(model_id, &titan_body(text, dimensions)?)
            .await?;
        let answer: TitanAnswer = serde_json::from_slice(&answer)
            .map_err(|e| protocol(format!("unreadable Titan embeddings answer: {e}")))?;
        let tokens = if answer.input_text_token_count > 0 {
            answer.input_text_token_count
        } else {
            estimate_tokens(text)
        };
        Ok((checked(answer.embedding, dimensions)?, tokens))
    }

    pub(super) async fn embed_invoke(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let model_id = request.model.as_str();
        let texts = request
            .input
            .texts()
            .map_err(|e| ProviderError::new(ProviderErrorKind::BadRequest, e.message))?;
        let (vectors, prompt_tokens) = match Family::of(model_id) {
            Some(Family::Titan) => {
                let mut calls = Vec::with_capacity(texts.len());
                for text in &texts {
                    calls.push(self.titan_embedding(model_id, text, request.dimensions));
                }
                let answers: Vec<Result<(Vec<f32>, u64), ProviderError>> =
                    futures_util::stream::iter(calls)
                        .buffered(TITAN_CONCURRENCY)
                        .collect()
                        .await;
                let mut vectors = Vec::with_capacity(answers.len());
                let mut tokens = 0;
                for answer in answers {
                    let (vector, count) = answer?;
                    vectors.push(vector);
                    tokens += count;
                }
                (vectors, tokens)
            }
            Some(Family::Cohere) => {
                let body =
                    cohere_body(&texts, request.dimensions, request.extra.get("input_type"))?;
                let answer = self.invoke(model_id, &body).await?;
                let answer: CohereAnswer = serde_json::from_slice(&answer)
                    .map_err(|e| protocol(format!("unreadable Cohere embeddings answer: {e}")))?;
                if answer.embeddings.len() != texts.len() {
                    return Err(protocol(format!(
                        "Cohere returned {} embeddings for {} texts",
                        answer.embeddings.len(),
                        texts.len()
                    )));
                }
                let vectors = answer
                    .embeddings
                    .into_iter()
                    .map(|v| checked(v, request.dimensions))
                    .collect::<Result<Vec<_>, _>>()?;
                // Cohere on Bedrock reports its token count only in a response header the SDK
                // does not expose: estimated.
                (vectors, texts.iter().map(|t| estimate_tokens(t)).sum())
            }
            // A deployment configured with a model of another kind: tried elsewhere first.
            None => {
                return Err(ProviderError::new(
                    ProviderErrorKind::NotFound,
                    format!(
                        "Bedrock model `{model_id}` is not an embedding model this gateway knows: \
                     use Titan Text Embeddings v2 (amazon.titan-embed-text-v2:0) or Cohere Embed \
                     (cohere.embed-english-v3, cohere.embed-multilingual-v3)"
                    ),
                ));
            }
        };
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| Embedding {
                object: "embedding".to_owned(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                embedding: EmbeddingVector::Float(vector),
            })
            .collect();
        Ok(EmbeddingResponse {
            object: "list".to_owned(),
            data,
            model: request.model.clone(),
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{error_response, provider_over, replay};
    use crate::api::{EmbeddingRequest, EmbeddingVector};
    use crate::providers::{ChatProvider, ProviderErrorKind};

    const TITAN: &str = "amazon.titan-embed-text-v2:0";
    const COHERE: &str = "cohere.embed-english-v3";

    fn request(body: Value) -> EmbeddingRequest {
        serde_json::from_value(body).unwrap()
    }

    fn floats(vector: &EmbeddingVector) -> &[f32] {
        match vector {
            EmbeddingVector::Float(v) => v,
            EmbeddingVector::Base64(_) => panic!("floats expected"),
        }
    }

    fn json_answer(body: Value) -> aws_smithy_http_client::test_util::StaticReplayClient {
        replay(
            200,
            &[("content-type", "application/json")],
            body.to_string(),
        )
    }

    #[tokio::test]
    async fn titan_gets_one_text_with_its_dimensions_and_answers_floats_and_tokens() {
        let vector: Vec<f32> = (0..256).map(|i| i as f32 / 256.0).collect();
        let http = json_answer(json!({"embedding": vector, "inputTextTokenCount": 3}));
        let response = provider_over(http.clone())
            .embed(&request(
                json!({"model": TITAN, "input": "hello there", "dimensions": 256}),
            ))
            .await
            .unwrap();
        let sent: Vec<_> = http.actual_requests().collect();
        assert_eq!(sent.len(), 1);
        assert!(
            sent[0]
                .uri()
                .ends_with("/model/amazon.titan-embed-text-v2%3A0/invoke"),
            "{}",
            sent[0].uri()
        );
        let body: Value = serde_json::from_slice(sent[0].body().bytes().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"inputText": "hello there", "dimensions": 256, "normalize": true})
        );
        assert_eq!(response.data.len(), 1);
        assert_eq!(response.data[0].index, 0);
        assert_eq!(floats(&response.data[0].embedding), &vector[..]);
        assert_eq!(response.usage.prompt_tokens, 3);
        assert_eq!(response.model, TITAN);
    }

    #[tokio::test]
    async fn titan_refuses_a_size_it_does_not_offer_without_calling() {
        let http = json_answer(json!({"embedding": [1.0]}));
        let error = provider_over(http.clone())
            .embed(&request(
                json!({"model": TITAN, "input": "x", "dimensions": 300}),
            ))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::BadRequest, "{error}");
        assert_eq!(http.actual_requests().count(), 0);
    }

    #[tokio::test]
    async fn titan_answers_of_another_size_than_asked_are_a_protocol_error() {
        let http = json_answer(json!({"embedding": vec![0.5_f32; 512], "inputTextTokenCount": 1}));
        let error = provider_over(http)
            .embed(&request(
                json!({"model": TITAN, "input": "x", "dimensions": 256}),
            ))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Protocol, "{error}");
    }

    #[tokio::test]
    async fn cohere_gets_every_text_as_search_documents_and_answers_in_order() {
        let first = vec![0.25_f32; 1024];
        let second = vec![-0.5_f32; 1024];
        let http = json_answer(json!({
            "id": "emb-1",
            "embeddings": [first, second],
            "texts": ["first text", "second"],
            "response_type": "embeddings_floats"
        }));
        let response = provider_over(http.clone())
            .embed(&request(
                json!({"model": COHERE, "input": ["first text", "second"]}),
            ))
            .await
            .unwrap();
        let sent = http.actual_requests().next().unwrap();
        assert!(
            sent.uri()
                .ends_with("/model/cohere.embed-english-v3/invoke"),
            "{}",
            sent.uri()
        );
        let body: Value = serde_json::from_slice(sent.body().bytes().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"texts": ["first text", "second"], "input_type": "search_document", "truncate": "END"})
        );
        assert_eq!(floats(&response.data[0].embedding), &first[..]);
        assert_eq!(floats(&response.data[1].embedding), &second[..]);
        assert_eq!(response.data[1].index, 1);
        // Estimated from the texts' length: Cohere's count is only in a header.
        assert_eq!(response.usage.prompt_tokens, 3 + 2);
    }

    #[tokio::test]
    async fn cohere_takes_a_query_input_type_and_refuses_unknown_ones() {
        let http = json_answer(json!({"embeddings": [vec![1.0_f32; 1024]]}));
        provider_over(http.clone())
            .embed(&request(
                json!({"model": COHERE, "input": "q", "input_type": "search_query"}),
            ))
            .await
            .unwrap();
        let sent = http.actual_requests().next().unwrap();
        let body: Value = serde_json::from_slice(sent.body().bytes().unwrap()).unwrap();
        assert_eq!(body["input_type"], "search_query");

        let http = json_answer(json!({"embeddings": [vec![1.0_f32; 1024]]}));
        let error = provider_over(http)
            .embed(&request(
                json!({"model": COHERE, "input": "q", "input_type": "poetry"}),
            ))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::BadRequest);
    }

    #[tokio::test]
    async fn cohere_answers_missing_a_text_are_a_protocol_error() {
        let http = json_answer(json!({"embeddings": [vec![1.0_f32; 1024]]}));
        let error = provider_over(http)
            .embed(&request(json!({"model": COHERE, "input": ["a", "b"]})))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Protocol, "{error}");
    }

    #[tokio::test]
    async fn invoke_model_errors_are_classified_like_converse() {
        let http = error_response(429, "ThrottlingException", "Too many requests.");
        let error = provider_over(http.clone())
            .embed(&request(json!({"model": TITAN, "input": "x"})))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::RateLimited, "{error}");
        assert_eq!(error.status, Some(429));
        assert_eq!(http.actual_requests().count(), 1, "the SDK does not retry");

        let http = error_response(400, "ValidationException", "Malformed input request.");
        let error = provider_over(http)
            .embed(&request(json!({"model": COHERE, "input": "x"})))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::BadRequest, "{error}");
    }

    #[tokio::test]
    async fn a_model_of_no_known_embedding_family_is_not_found_here() {
        let http = json_answer(json!({}));
        let error = provider_over(http.clone())
            .embed(&request(
                json!({"model": "anthropic.claude-3-haiku", "input": "x"}),
            ))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::NotFound);
        assert_eq!(http.actual_requests().count(), 0);
    }

    #[test]
    fn calls_carry_one_titan_text_or_up_to_96_cohere_texts() {
        assert_eq!(super::max_embedding_inputs(TITAN), 1);
        assert_eq!(super::max_embedding_inputs(COHERE), 96);
        assert_eq!(
            super::max_embedding_inputs("us.cohere.embed-multilingual-v3"),
            96
        );
    }
}
