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

/// Bodies up to this size are stored as they are: compressing them saves little.
const COMPRESS_OVER: usize = 4 * 1024;

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
