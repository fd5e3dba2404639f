//! The vector store on AWS: one Amazon S3 Vectors index for every tenant and collection.
//!
//! A namespace is the digest of its tenant and collection (`Namespace::digest`): keys are stored
//! as `<digest>:<key>` (so two collections' keys never collide), the digest is also filterable
//! metadata `ns`, and every query is the `$and` of `ns` and the client's filter, so a query
//! never sees another namespace. The chunk text goes in `text`, which the index declares
//! non-filterable (infra/template.yaml). Writes go in batches within the API's limits.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3vectors::Client;
use aws_sdk_s3vectors::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3vectors::types::{DistanceMetric, PutInputVector, VectorData};
use aws_smithy_types::{Document, Number as DocumentNumber};
use serde_json::{Map, Number, Value, json};

use crate::error::StoreError;
use crate::vectors::{
    MAX_DIMENSIONS, MetadataFilter, Namespace, VectorHit, VectorRecord, VectorStore, check_key,
    prepared, query_vector,
};

/// PutVectors and DeleteVectors take at most 500 vectors or keys a call.
pub const MAX_BATCH: usize = 500;
/// A request may carry 20 MiB; a PutVectors batch stops short of that by its estimated size.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// The most a float takes in a JSON request (`-1.17549435e-38,`).
const FLOAT_JSON_BYTES: usize = 16;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 Vectors client over an AWS config the process already loaded, with bounded calls.
pub fn client(sdk_config: &aws_config::SdkConfig) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    Client::from_conf(
        aws_sdk_s3vectors::config::Builder::from(sdk_config)
            .timeout_config(timeouts)
            .build(),
    )
}

/// Vectors in one S3 Vectors index.
pub struct S3VectorStore {
    client: Client,
    bucket: String,
    index: String,
    dimensions: u32,
}

impl S3VectorStore {
    pub fn new(client: Client, bucket: String, index: String, dimensions: u32) -> Self {
        Self {
            client,
            bucket,
            index,
            dimensions,
        }
    }

    /// The store the stack names: `GATEWAY_VECTOR_BUCKET` (the vector bucket's name),
    /// `GATEWAY_VECTOR_INDEX` and `GATEWAY_VECTOR_DIMENSION` (the index's dimension, set from
    /// the same template parameter as the index). `None` when neither bucket nor index is set.
    pub fn from_lookup(
        sdk_config: &aws_config::SdkConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let (bucket, index) = match (get("GATEWAY_VECTOR_BUCKET"), get("GATEWAY_VECTOR_INDEX")) {
            (None, None) => return Ok(None),
            (Some(bucket), Some(index)) => (bucket, index),
            _ => {
                return Err(
                    "the vector store needs both GATEWAY_VECTOR_BUCKET and GATEWAY_VECTOR_INDEX"
                        .into(),
                );
            }
        };
        let dimensions = match get("GATEWAY_VECTOR_DIMENSION") {
            None => {
                return Err(
                    "GATEWAY_VECTOR_DIMENSION must be set to the dimension of the vector index"
                        .into(),
                );
            }
            Some(value) => value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|d| (1..=MAX_DIMENSIONS as u32).contains(d))
                .ok_or_else(|| {
                    format!("GATEWAY_VECTOR_DIMENSION is `{value}`; expected 1 to {MAX_DIMENSIONS}")
                })?,
        };
        Ok(Some(Self::new(
            client(sdk_config),
            bucket,
            index,
            dimensions,
        )))
    }

    fn dimensions(&self) -> usize {
        usize::try_from(self.dimensions).unwrap_or(0)
    }
}

/// What a failed call reports: the index's refusal of the data as the client's fault, anything
/// else as a storage failure named by operation and error code, never by endpoint.
fn store_error<E: ProvideErrorMetadata, R>(operation: &str, error: &SdkError<E, R>) -> StoreError {
    match error {
        SdkError::ServiceError(service) => {
            let error = service.err();
            let message = error.message().unwrap_or("no message");
            match error.code() {
                Some("ValidationException") => {
                    StoreError::Invalid(format!("the vector index refused the data: {message}"))
                }
                code => StoreError::Backend(format!(
                    "S3 Vectors {operation} failed: {}: {message}",
                    code.unwrap_or("unknown error")
                )),
            }
        }
        SdkError::TimeoutError(_) => {
            StoreError::Backend(format!("S3 Vectors {operation} timed out"))
        }
        SdkError::DispatchFailure(failure) => StoreError::Backend(format!(
            "S3 Vectors {operation} could not be sent ({})",
            if failure.is_timeout() {
                "connection timed out"
            } else if failure.is_io() {
                "connection failed"
            } else {
                "no connection or credentials"
            }
        )),
        SdkError::ResponseError(_) => StoreError::Backend(format!(
            "S3 Vectors {operation} answered with a response that could not be read"
        )),
        _ => StoreError::Backend(format!("S3 Vectors {operation} could not be made")),
    }
}

fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            DocumentNumber::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            DocumentNumber::NegInt(i)
        } else {
            DocumentNumber::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(entries) => Document::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect(),
        ),
    }
}

fn from_document(document: &Document) -> Value {
    match document {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(DocumentNumber::PosInt(u)) => Value::Number((*u).into()),
        Document::Number(DocumentNumber::NegInt(i)) => Value::Number((*i).into()),
        Document::Number(DocumentNumber::Float(f)) => {
            Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(from_document).collect()),
        Document::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), from_document(v)))
                .collect(),
        ),
    }
}

/// The similarity of a distance between unit vectors: cosine distance is `1 - cos`, and a
/// euclidean distance `d` between unit vectors has `d² = 2 - 2 cos`.
fn similarity(metric: Option<&DistanceMetric>, distance: f32) -> f32 {
    match metric {
        Some(DistanceMetric::Euclidean) => 1.0 - distance * distance / 2.0,
        _ => 1.0 - distance,
    }
}

fn stored_key(prefix: &str, key: &str) -> String {
    format!("{prefix}{key}")
}

fn prefix_of(namespace: &Namespace) -> (String, String) {
    let digest = namespace.digest();
    (format!("{digest}:"), digest)
}

/// The bytes a record adds to a PutVectors request, over-estimated.
fn estimated_bytes(record: &VectorRecord) -> usize {
    let metadata: usize = record
        .metadata
        .iter()
        .map(|(k, v)| k.len() + v.to_string().len() + 4)
        .sum();
    record.vector.len() * FLOAT_JSON_BYTES
        + record.text.len() * 2
        + record.key.len()
        + metadata
        + 160
}

/// Records cut into PutVectors batches: at most `MAX_BATCH` each, and within `MAX_BATCH_BYTES`.
fn batches(records: Vec<VectorRecord>) -> Vec<Vec<VectorRecord>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = estimated_bytes(&record);
        if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(record);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

#[async_trait]
impl VectorStore for S3VectorStore {
    fn fixed_dimensions(&self) -> Option<u32> {
        Some(self.dimensions)
    }

    async fn put(
        &self,
        namespace: &Namespace,
        records: Vec<VectorRecord>,
    ) -> Result<(), StoreError> {
        let records = prepared(records, Some(self.dimensions()))?;
        let (prefix, digest) = prefix_of(namespace);
        for batch in batches(records) {
            let vectors = batch
                .into_iter()
                .map(|record| {
                    let mut metadata = record.metadata;
                    metadata.insert("ns".into(), Value::String(digest.clone()));
                    metadata.insert("text".into(), Value::String(record.text));
                    PutInputVector::builder()
                        .key(stored_key(&prefix, &record.key))
                        .data(VectorData::Float32(record.vector))
                        .metadata(to_document(&Value::Object(metadata)))
                        .build()
                        .map_err(|e| StoreError::Backend(format!("building a vector: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .put_vectors()
                .vector_bucket_name(&self.bucket)
                .index_name(&self.index)
                .set_vectors(Some(vectors))
                .send()
                .await
                .map_err(|e| store_error("PutVectors", &e))?;
        }
        Ok(())
    }

    async fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError> {
        let (prefix, _) = prefix_of(namespace);
        // A key too long to have been stored is not there to delete.
        let keys: Vec<String> = keys
            .iter()
            .filter(|key| check_key(key).is_ok())
            .map(|key| stored_key(&prefix, key))
            .collect();
        for batch in keys.chunks(MAX_BATCH) {
            self.client
                .delete_vectors()
                .vector_bucket_name(&self.bucket)
                .index_name(&self.index)
                .set_keys(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| store_error("DeleteVectors", &e))?;
        }
        Ok(())
    }

    async fn query(
        &self,
        namespace: &Namespace,
        vector: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let query = query_vector(vector, top_k, Some(self.dimensions()))?;
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let (prefix, digest) = prefix_of(namespace);
        let in_namespace = json!({"ns": {"$eq": digest}});
        let filter = match filter {
            Some(filter) => json!({"$and": [in_namespace, filter.to_json()]}),
            None => in_namespace,
        };
        let output = self
            .client
            .query_vectors()
            .vector_bucket_name(&self.bucket)
            .index_name(&self.index)
            .top_k(i32::try_from(top_k).unwrap_or(1))
            .query_vector(VectorData::Float32(query))
            .filter(to_document(&filter))
            .return_metadata(true)
            .return_distance(true)
            .send()
            .await
            .map_err(|e| store_error("QueryVectors", &e))?;
        let metric = output.distance_metric();
        let mut hits: Vec<VectorHit> = output
            .vectors()
            .iter()
            .filter_map(|found| {
                let key = found.key().strip_prefix(&prefix)?;
                let mut metadata = match found.metadata().map(from_document) {
                    Some(Value::Object(metadata)) => metadata,
                    _ => Map::new(),
                };
                metadata.remove("ns");
                let text = match metadata.remove("text") {
                    Some(Value::String(text)) => text,
                    _ => String::new(),
                };
                Some(VectorHit {
                    key: key.to_owned(),
                    score: similarity(metric, found.distance()?),
                    text,
                    metadata,
                })
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(top_k);
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_s3vectors::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3vectors::operation::delete_vectors::DeleteVectorsOutput;
    use aws_sdk_s3vectors::operation::put_vectors::{PutVectorsError, PutVectorsOutput};
    use aws_sdk_s3vectors::operation::query_vectors::{QueryVectorsError, QueryVectorsOutput};
    use aws_sdk_s3vectors::types::QueryOutputVector;
    use aws_sdk_s3vectors::types::error::{ServiceUnavailableException, ValidationException};
    use aws_smithy_mocks::{
        MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock,
    };
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn store(rules: &[&Rule]) -> S3VectorStore {
        let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
        for rule in rules {
            interceptor = interceptor.with_rule(rule);
        }
        let config = aws_sdk_s3vectors::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .http_client(create_mock_http_client())
            .interceptor(interceptor)
            .build();
        S3VectorStore::new(
            Client::from_conf(config),
            "vectors".into(),
            "docs".into(),
            3,
        )
    }

    fn ns() -> Namespace {
        Namespace {
            tenant: "acme".into(),
            collection: "handbook".into(),
        }
    }

    fn record(i: usize) -> VectorRecord {
        VectorRecord {
            key: format!("doc-{i}"),
            vector: vec![1.0, i as f32, 0.0],
            text: format!("chunk {i}"),
            metadata: json!({"page": i}).as_object().unwrap().clone(),
        }
    }

    #[tokio::test]
    async fn a_query_is_confined_to_its_namespace_and_distances_become_scores() {
        let digest = ns().digest();
        let seen = Arc::new(Mutex::new(None));
        let recorded = Arc::clone(&seen);
        let prefix = format!("{digest}:");
        let answer = move || {
            let hit = |key: &str, distance: f32, metadata: Value| {
                QueryOutputVector::builder()
                    .key(key)
                    .distance(distance)
                    .metadata(to_document(&metadata))
                    .build()
                    .unwrap()
            };
            QueryVectorsOutput::builder()
                .vectors(hit(
                    &format!("{prefix}doc-1"),
                    0.25,
                    json!({"ns": digest, "text": "the first chunk", "page": 1}),
                ))
                .vectors(hit(
                    &format!("{prefix}doc-2"),
                    0.5,
                    json!({"ns": digest, "text": "second"}),
                ))
                .distance_metric(DistanceMetric::Cosine)
                .build()
                .unwrap()
        };
        let query = mock!(Client::query_vectors)
            .match_requests(move |input| {
                *recorded.lock().unwrap() = Some(input.clone());
                true
            })
            .then_output(answer);
        let store = store(&[&query]);
        let filter = MetadataFilter::parse(&json!({"page": {"$lt": 3}})).unwrap();
        let hits = store
            .query(&ns(), &[0.0, 3.0, 4.0], 7, Some(&filter))
            .await
            .unwrap();

        let input = seen.lock().unwrap().clone().unwrap();
        assert_eq!(input.top_k(), Some(7));
        assert_eq!(input.vector_bucket_name(), Some("vectors"));
        assert_eq!(input.index_name(), Some("docs"));
        assert_eq!(input.return_metadata(), Some(true));
        assert_eq!(input.return_distance(), Some(true));
        assert_eq!(
            from_document(input.filter().unwrap()),
            json!({"$and": [{"ns": {"$eq": ns().digest()}}, {"page": {"$lt": 3}}]})
        );
        assert_eq!(
            input.query_vector(),
            Some(&VectorData::Float32(vec![0.0, 0.6, 0.8]))
        );

        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].key, "doc-1");
        assert_eq!(hits[0].score, 0.75);
        assert_eq!(hits[0].text, "the first chunk");
        assert_eq!(hits[0].metadata, *json!({"page": 1}).as_object().unwrap());
        assert_eq!(hits[1].key, "doc-2");
        assert_eq!(hits[1].score, 0.5);

        // Without a client filter, the namespace alone.
        store.query(&ns(), &[0.0, 3.0, 4.0], 1, None).await.unwrap();
        let input = seen.lock().unwrap().clone().unwrap();
        assert_eq!(
            from_document(input.filter().unwrap()),
            json!({"ns": {"$eq": ns().digest()}})
        );
        assert_eq!(query.num_calls(), 2);
    }

    #[tokio::test]
    async fn puts_and_deletes_go_in_batches_of_at_most_500_with_prefixed_keys() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&sizes);
        let digest = ns().digest();
        let put = mock!(Client::put_vectors)
            .match_requests(move |input| {
                let first = &input.vectors()[0];
                assert!(first.key().starts_with(&format!("{digest}:doc-")));
                let metadata = from_document(first.metadata());
                assert_eq!(metadata["ns"], digest);
                assert!(metadata["text"].as_str().unwrap().starts_with("chunk "));
                recorded.lock().unwrap().push(input.vectors().len());
                true
            })
            .then_output(|| PutVectorsOutput::builder().build());
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&deleted);
        let delete = mock!(Client::delete_vectors)
            .match_requests(move |input| {
                recorded.lock().unwrap().push(input.keys().len());
                true
            })
            .then_output(|| DeleteVectorsOutput::builder().build());
        let store = store(&[&put, &delete]);

        store
            .put(&ns(), (0..1201).map(record).collect())
            .await
            .unwrap();
        assert_eq!(*sizes.lock().unwrap(), [500, 500, 201]);
        let keys: Vec<String> = (0..1001).map(|i| format!("doc-{i}")).collect();
        store.delete(&ns(), &keys).await.unwrap();
        assert_eq!(*deleted.lock().unwrap(), [500, 500, 1]);

        // Large vectors: batches also stay within the request size.
        let big: Vec<VectorRecord> = (0..600)
            .map(|i| VectorRecord {
                text: "x".repeat(30_000),
                ..record(i)
            })
            .collect();
        let batched = batches(big);
        assert!(
            batched
                .iter()
                .all(|b| b.iter().map(estimated_bytes).sum::<usize>() <= MAX_BATCH_BYTES)
        );
        assert_eq!(batched.iter().map(Vec::len).sum::<usize>(), 600);
        assert!(batched.len() > 2);
    }

    #[tokio::test]
    async fn refusals_are_the_client_s_fault_and_failures_name_no_endpoint() {
        let invalid = mock!(Client::put_vectors).then_error(|| {
            PutVectorsError::ValidationException(
                ValidationException::builder()
                    .message("Filterable metadata must have at most 2048 bytes")
                    .meta(
                        ErrorMetadata::builder()
                            .code("ValidationException")
                            .message("Filterable metadata must have at most 2048 bytes")
                            .build(),
                    )
                    .build()
                    .unwrap(),
            )
        });
        let unavailable = mock!(Client::query_vectors).then_error(|| {
            QueryVectorsError::ServiceUnavailableException(
                ServiceUnavailableException::builder()
                    .message("Currently unable to handle the request")
                    .meta(
                        ErrorMetadata::builder()
                            .code("ServiceUnavailableException")
                            .message("Currently unable to handle the request")
                            .build(),
                    )
                    .build()
                    .unwrap(),
            )
        });
        let store = store(&[&invalid, &unavailable]);
        let error = store.put(&ns(), vec![record(1)]).await.unwrap_err();
        assert_eq!(
            error,
            StoreError::Invalid(
                "the vector index refused the data: Filterable metadata must have at most 2048 \
                 bytes"
                    .into()
            )
        );
        let error = store
            .query(&ns(), &[1.0, 0.0, 0.0], 3, None)
            .await
            .unwrap_err();
        let StoreError::Backend(message) = error else {
            panic!("{error:?}")
        };
        assert!(message.starts_with("S3 Vectors QueryVectors failed: ServiceUnavailableException"));
        assert!(
            !message.contains("amazonaws") && !message.contains("api.aws"),
            "{message}"
        );

        // Checked before any call: the index's dimension and the bounds.
        let error = store.query(&ns(), &[1.0, 0.0], 3, None).await.unwrap_err();
        assert!(matches!(error, StoreError::Invalid(ref m) if m.contains("have 3 dimensions")));
        let error = store
            .put(
                &ns(),
                vec![VectorRecord {
                    vector: vec![1.0; 4],
                    ..record(1)
                }],
            )
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Invalid(ref m) if m.contains("has 4")));
        assert!(
            store
                .query(&ns(), &[1.0, 0.0, 0.0], 101, None)
                .await
                .is_err()
        );
        assert_eq!(invalid.num_calls(), 1);
    }

    #[test]
    fn settings_come_from_the_environment() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(
            S3VectorStore::from_lookup(&sdk, env(&[]))
                .unwrap()
                .is_none()
        );
        let store = S3VectorStore::from_lookup(
            &sdk,
            env(&[
                ("GATEWAY_VECTOR_BUCKET", "vb"),
                ("GATEWAY_VECTOR_INDEX", "documents"),
                ("GATEWAY_VECTOR_DIMENSION", "1536"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(store.fixed_dimensions(), Some(1536));
        let error = |vars| S3VectorStore::from_lookup(&sdk, env(vars)).err().unwrap();
        assert!(error(&[("GATEWAY_VECTOR_BUCKET", "vb")]).contains("GATEWAY_VECTOR_INDEX"));
        assert!(
            error(&[
                ("GATEWAY_VECTOR_BUCKET", "vb"),
                ("GATEWAY_VECTOR_INDEX", "d")
            ])
            .contains("GATEWAY_VECTOR_DIMENSION must be set")
        );
        assert!(
            error(&[
                ("GATEWAY_VECTOR_BUCKET", "vb"),
                ("GATEWAY_VECTOR_INDEX", "d"),
                ("GATEWAY_VECTOR_DIMENSION", "5000")
            ])
            .contains("expected 1 to 4096")
        );
    }
}
