//! Bodies kept in DynamoDB items (cached responses, stored Responses API objects): deflated when
//! that makes a large body smaller, since an item is at most 400 KB.

use std::collections::HashMap;
use std::io::{Read, Write};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use bytes::Bytes;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;

use crate::error::StoreError;
use crate::storage::dynamo::{s, string_attr};

/// The attribute holding the body.
const BODY: &str = "body";
/// The attribute naming the body's encoding, absent for a plain body.
const ENCODING: &str = "enc";
const DEFLATE: &str = "deflate";

/// Bodies up to this size are stored as they are. DynamoDB bills a write per KB of item, and a
/// cache item's key and attributes take about 100 B: a body past this would cost a second unit,
/// which deflating (tens of microseconds at this size) usually saves, as a typical chat answer
/// of about 2 KB shrinks to well under 1 KB.
const COMPRESS_OVER: usize = 900;

/// A body as stored: deflated when that makes a large body smaller.
#[derive(Debug, PartialEq)]
pub(crate) enum StoredBody {
    Plain(Bytes),
    Deflated(Vec<u8>),
}

impl StoredBody {
    pub(crate) fn encode(body: &Bytes) -> std::io::Result<Self> {
        if body.len() <= COMPRESS_OVER {
            return Ok(Self::Plain(body.clone()));
        }
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(body)?;
        let deflated = encoder.finish()?;
        Ok(if deflated.len() < body.len() {
            Self::Deflated(deflated)
        } else {
            Self::Plain(body.clone())
        })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Plain(body) => body.len(),
            Self::Deflated(body) => body.len(),
        }
    }

    /// The item attributes that hold it, read back by [`take_body`].
    pub(crate) fn into_attributes(self) -> Vec<(&'static str, AttributeValue)> {
        match self {
            Self::Plain(body) => vec![(BODY, AttributeValue::B(Blob::new(body)))],
            Self::Deflated(body) => vec![
                (BODY, AttributeValue::B(Blob::new(body))),
                (ENCODING, s(DEFLATE)),
            ],
        }
    }
}

/// The body of an item written with [`StoredBody::into_attributes`]; `what` names the item in
/// the error.
pub(crate) fn take_body(
    item: &mut HashMap<String, AttributeValue>,
    what: &str,
) -> Result<Bytes, StoreError> {
    let encoding = string_attr(item, ENCODING);
    let Some(AttributeValue::B(body)) = item.remove(BODY) else {
        return Err(StoreError::Backend(format!(
            "{what} without a binary `{BODY}`"
        )));
    };
    decode_body(body.into_inner(), encoding.as_deref())
}

fn decode_body(stored: Vec<u8>, encoding: Option<&str>) -> Result<Bytes, StoreError> {
    match encoding {
        None => Ok(Bytes::from(stored)),
        Some(DEFLATE) => {
            let mut body = Vec::with_capacity(stored.len() * 4);
            DeflateDecoder::new(stored.as_slice())
                .read_to_end(&mut body)
                .map_err(|e| StoreError::Backend(format!("corrupt stored body: {e}")))?;
            Ok(Bytes::from(body))
        }
        Some(other) => Err(StoreError::Backend(format!(
            "stored body in an unknown encoding `{other}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_are_deflated_and_restored() {
        let small = Bytes::from_static(b"{\"id\":\"x\"}");
        assert_eq!(
            StoredBody::encode(&small).unwrap(),
            StoredBody::Plain(small)
        );

        let large = Bytes::from("{\"content\":\"hello world\"}".repeat(1_000));
        let StoredBody::Deflated(deflated) = StoredBody::encode(&large).unwrap() else {
            panic!("a repetitive 25 KB body should be deflated");
        };
        assert!(deflated.len() < large.len() / 10);
        assert_eq!(decode_body(deflated, Some(DEFLATE)).unwrap(), large);
        assert!(decode_body(vec![1, 2, 3], Some("zstd")).is_err());
    }

    #[test]
    fn a_typical_chat_answer_fits_one_write_unit() {
        let content = "Caching works best for prompts that repeat exactly: classification, extraction and templated questions. Set a temperature of zero, keep the system prompt stable, and put the variable part of the request at the end so that identical questions map to identical keys. Streams are cached as their assembled answer and replayed as events with the same shape. Keys that must never share answers belong to different tenants, and each tenant's entries are kept apart in the store. When a provider fails, the gateway retries with jittered backoff, then falls back to the next deployment in the route, and the circuit breaker stops sending to one that keeps failing until a probe succeeds. Budgets are checked before the request runs, against the estimate of its cost, and settled afterwards against what the provider billed. Usage is recorded per key, day and model, so an operator can see spend as a table or CSV. Embeddings are cached by model and input, so ingesting a document again costs nothing for the chunks that did not change. Batch jobs read their input file from the bucket, run each line through the same pipeline as a live request, and write results in the order of the input.";
        let answer = format!(
            "{{\"id\":\"chatcmpl-9f2c1e7a4b\",\"object\":\"chat.completion\",\"created\":\
             1796200000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\
             \"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\
             \"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":500,\
             \"completion_tokens\":200,\"total_tokens\":700}}}}"
        );
        // Stored as it is, the item would take two write units.
        assert!(answer.len() + 100 > 1024, "{}", answer.len());
        let stored = StoredBody::encode(&Bytes::from(answer)).unwrap();
        assert!(matches!(stored, StoredBody::Deflated(_)));
        assert!(stored.len() + 100 <= 1024, "{} B", stored.len());
    }

    #[test]
    fn incompressible_bodies_are_stored_plain() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..8_192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        assert_eq!(
            StoredBody::encode(&noise).unwrap(),
            StoredBody::Plain(noise)
        );
    }
}
