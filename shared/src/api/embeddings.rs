//! Embeddings: the request with its bounds, and vectors as floats or base64.

use serde::{Deserialize, Serialize};

use super::JsonObject;
use super::tokenizer::cl100k;
use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    #[schema(schema_with = input_schema)]
    pub input: EmbeddingInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

/// `input`'s schema with the bounds `EmbeddingRequest::validate` checks: a non-empty text or
/// token array, or 1 to `MAX_EMBEDDING_INPUTS` of them.
fn input_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let token = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(u32::MAX))
    };
    let tokens = || ArrayBuilder::new().items(token());
    let bounded = |array: ArrayBuilder| {
        array
            .min_items(Some(1))
            .max_items(Some(MAX_EMBEDDING_INPUTS))
    };
    OneOfBuilder::new()
        .item(text().min_length(Some(1)))
        .item(bounded(
            ArrayBuilder::new().items(text().min_length(Some(1))),
        ))
        .item(tokens().min_items(Some(1)))
        .item(bounded(
            ArrayBuilder::new().items(tokens().min_items(Some(1))),
        ))
        .into()
}

/// Most inputs in one embeddings request, as OpenAI allows.
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// Most tokens (estimated) in one embeddings request, all inputs together, as OpenAI allows.
pub const MAX_EMBEDDING_REQUEST_TOKENS: u64 = 300_000;

impl EmbeddingInput {
    /// The inputs as texts. Token arrays are cl100k ids, the tokenizer of every OpenAI embedding
    /// model, which clients such as LangChain send instead of text: they become the text they
    /// encode, so every provider, the cache and the estimates see what the client meant.
    pub fn texts(&self) -> Result<Vec<String>, ApiError> {
        match self {
            EmbeddingInput::One(s) => Ok(vec![s.clone()]),
            EmbeddingInput::Many(v) => Ok(v.clone()),
            EmbeddingInput::Tokens(t) => Ok(vec![tokens_text(t)?]),
            EmbeddingInput::ManyTokens(v) => v.iter().map(|t| tokens_text(t)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::One(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Many(v) => v.len(),
            EmbeddingInput::ManyTokens(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            EmbeddingInput::One(s) => s.is_empty(),
            EmbeddingInput::Tokens(t) => t.is_empty(),
            EmbeddingInput::Many(v) => v.is_empty(),
            EmbeddingInput::ManyTokens(v) => v.is_empty(),
        }
    }

    /// The index of the first empty text or token array in a list of them (OpenAI refuses
    /// those, and an embedding of nothing is of no use).
    fn first_empty_entry(&self) -> Option<usize> {
        match self {
            EmbeddingInput::One(_) | EmbeddingInput::Tokens(_) => None,
            EmbeddingInput::Many(v) => v.iter().position(String::is_empty),
            EmbeddingInput::ManyTokens(v) => v.iter().position(Vec::is_empty),
        }
    }

    pub fn estimate_tokens(&self) -> u64 {
        match self {
            EmbeddingInput::One(s) => (s.len() as u64).div_ceil(4),
            EmbeddingInput::Many(v) => v.iter().map(|s| (s.len() as u64).div_ceil(4)).sum(),
            EmbeddingInput::Tokens(t) => t.len() as u64,
            EmbeddingInput::ManyTokens(v) => v.iter().map(|t| t.len() as u64).sum(),
        }
    }
}

/// The text that cl100k token ids encode. A client that cuts a long text into pieces of so many
/// tokens may cut inside a character: its bytes become U+FFFD, as in OpenAI's own decoders.
fn tokens_text(tokens: &[u32]) -> Result<String, ApiError> {
    let bpe = cl100k().ok_or_else(|| {
        ApiError::unavailable("Token-id input cannot be read right now; send text.")
    })?;
    let bytes = bpe.decode_bytes(tokens).map_err(|error| {
        ApiError::bad_request(format!(
            "`input` has token id {}, which is not a cl100k_base token",
            error.token
        ))
        .with_param("input")
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl EmbeddingRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.input.is_empty() {
            return Err(ApiError::bad_request("`input` must not be empty").with_param("input"));
        }
        if let Some(index) = self.input.first_empty_entry() {
            return Err(ApiError::bad_request(format!(
                "`input[{index}]` is empty; every input must have at least one character or token"
            ))
            .with_param(format!("input[{index}]")));
        }
        if self.input.len() > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::bad_request(format!(
                "`input` has {} entries; at most {MAX_EMBEDDING_INPUTS} are accepted",
                self.input.len()
            ))
            .with_param("input"));
        }
        if self.dimensions == Some(0) {
            return Err(
                ApiError::bad_request("`dimensions` must be at least 1").with_param("dimensions")
            );
        }
        let tokens = self.input.estimate_tokens();
        if tokens > MAX_EMBEDDING_REQUEST_TOKENS {
            return Err(ApiError::bad_request(format!(
                "`input` is about {tokens} tokens; at most {MAX_EMBEDDING_REQUEST_TOKENS} are accepted per request"
            ))
            .with_param("input"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingResponse {
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    #[serde(default)]
    pub usage: EmbeddingUsage,
}

fn list_object() -> String {
    "list".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Embedding {
    #[serde(default = "embedding_object")]
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

fn embedding_object() -> String {
    "embedding".to_owned()
}

/// A vector as floats or as OpenAI's base64 of little-endian f32s: both official SDKs ask for
/// base64 by default and decode it, so the format the client asked for is the one it gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    pub fn into_format(self, format: EncodingFormat) -> Result<Self, ApiError> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        match (self, format) {
            (EmbeddingVector::Float(v), EncodingFormat::Base64) => {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Ok(EmbeddingVector::Base64(STANDARD.encode(bytes)))
            }
            (EmbeddingVector::Base64(s), EncodingFormat::Float) => {
                let bytes = STANDARD.decode(s.as_bytes()).map_err(|e| {
                    ApiError::new(
                        crate::error::ErrorKind::BadGateway,
                        format!("upstream sent an invalid base64 embedding: {e}"),
                    )
                })?;
                Ok(EmbeddingVector::Float(
                    bytes
                        .chunks_exact(4)
                        .filter_map(|c| c.try_into().ok().map(f32::from_le_bytes))
                        .collect(),
                ))
            }
            (same, _) => Ok(same),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl100k_ids(text: &str) -> Vec<u32> {
        tiktoken_rs::cl100k_base().unwrap().encode_ordinary(text)
    }

    fn parsed_input(json: &str) -> EmbeddingInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn token_id_arrays_and_lists_of_them_become_the_texts_they_encode() {
        let fox = cl100k_ids("the quick brown fox");
        let dog = cl100k_ids("jumps over the lazy dog, naïvely");
        let one = parsed_input(&serde_json::to_string(&fox).unwrap());
        assert!(matches!(one, EmbeddingInput::Tokens(_)));
        assert_eq!(one.texts().unwrap(), ["the quick brown fox"]);

        let many = parsed_input(&serde_json::to_string(&[&fox, &dog]).unwrap());
        assert!(matches!(many, EmbeddingInput::ManyTokens(_)));
        assert_eq!(many.len(), 2);
        assert_eq!(
            many.texts().unwrap(),
            ["the quick brown fox", "jumps over the lazy dog, naïvely"]
        );
    }

    #[test]
    fn token_ids_cut_inside_a_character_keep_the_rest_of_the_text() {
        // "🦀" is four UTF-8 bytes over three cl100k tokens: a piece that ends inside it (as a
        // client's cut into fixed-size pieces may) still decodes.
        let ids = cl100k_ids("ab 🦀");
        assert_eq!(ids.len(), 4, "{ids:?}");
        let cut = EmbeddingInput::Tokens(ids.get(..3).unwrap().to_vec());
        assert_eq!(cut.texts().unwrap(), ["ab \u{FFFD}"]);
    }

    #[test]
    fn an_empty_entry_in_a_list_of_inputs_is_a_bad_request_naming_it() {
        let request = |input: &str| EmbeddingRequest {
            model: "m".to_owned(),
            input: parsed_input(input),
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: JsonObject::new(),
        };
        for (input, param) in [
            (r#"["a", "", "b"]"#, "input[1]"),
            (r#"[""]"#, "input[0]"),
            ("[[1, 2], []]", "input[1]"),
            ("\"\"", "input"),
            ("[]", "input"),
        ] {
            let error = request(input).validate().unwrap_err();
            assert_eq!(error.kind, crate::error::ErrorKind::BadRequest, "{input}");
            assert_eq!(error.param.as_deref(), Some(param), "{input}");
        }
        assert!(request(r#"["a", "b"]"#).validate().is_ok());
        assert!(request("[[1], [2, 3]]").validate().is_ok());
    }

    #[test]
    fn a_token_id_outside_cl100k_is_a_bad_request_naming_it() {
        let input = EmbeddingInput::ManyTokens(vec![vec![1, 2], vec![3, 4_000_000]]);
        let error = input.texts().unwrap_err();
        assert_eq!(error.kind, crate::error::ErrorKind::BadRequest);
        assert_eq!(error.param.as_deref(), Some("input"));
        assert!(error.message.contains("4000000"), "{}", error.message);
    }

    #[test]
    fn token_id_requests_are_bounded_in_inputs_and_tokens_before_decoding() {
        let request = |input| EmbeddingRequest {
            model: "m".to_owned(),
            input,
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: JsonObject::new(),
        };
        let too_many_inputs = vec![vec![1]; MAX_EMBEDDING_INPUTS + 1];
        let error = request(EmbeddingInput::ManyTokens(too_many_inputs))
            .validate()
            .unwrap_err();
        assert!(error.message.contains("entries"), "{}", error.message);
        let too_many_tokens = vec![vec![1; 150_001], vec![1; 150_000]];
        let error = request(EmbeddingInput::ManyTokens(too_many_tokens))
            .validate()
            .unwrap_err();
        assert!(error.message.contains("tokens"), "{}", error.message);
        assert!(
            request(EmbeddingInput::ManyTokens(vec![vec![1; 150_000]; 2]))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn embeddings_convert_between_float_and_base64() {
        let v = EmbeddingVector::Float(vec![1.0, -0.5]);
        let b = v.clone().into_format(EncodingFormat::Base64).unwrap();
        assert_eq!(b, EmbeddingVector::Base64("AACAPwAAAL8=".to_owned()));
        assert_eq!(b.into_format(EncodingFormat::Float).unwrap(), v);
    }
}
