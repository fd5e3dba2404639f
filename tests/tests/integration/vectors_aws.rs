//! The S3 Vectors store against moto server: what PutVectors and DeleteVectors leave in the
//! index (prefixed keys, the namespace and text metadata, batches beyond the API's 500), and how
//! the index's refusals come back. moto does not implement QueryVectors, so the conformance
//! suite (`vectors_conformance`) runs on a stand-in for the three data-plane calls the store
//! makes (`stand_in_store`), following the S3 Vectors API reference: REST-JSON `POST
//! /PutVectors`, `/QueryVectors`, `/DeleteVectors` with the SDK's request shapes.

use std::collections::BTreeMap;

use aws_sdk_s3vectors::types::{DataType, DistanceMetric};
use gateway::error::StoreError;
use gateway::vectors::s3::S3VectorStore;
use gateway::vectors::{Namespace, VectorRecord, VectorStore};
use serde_json::{Value, json};

use crate::common::moto::Moto;

/// One index's vectors on the stand-in: key -> (values, metadata).
type Index = std::sync::Mutex<BTreeMap<String, (Vec<f64>, serde_json::Map<String, Value>)>>;

/// The stand-in's name for the namespace metadata: `ns` is reserved in the gateway's filter
/// language, which the stand-in borrows to evaluate S3 Vectors' (the same Mongo-like syntax).
fn unreserved(value: &Value) -> Value {
    match value {
        Value::Object(entries) => entries
            .iter()
            .map(|(k, v)| {
                let k = if k == "ns" {
                    "_ns".to_owned()
                } else {
                    k.clone()
                };
                (k, unreserved(v))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Value::Array(items) => items.iter().map(unreserved).collect(),
        other => other.clone(),
    }
}

fn float32(data: &Value) -> Vec<f64> {
    data["float32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

async fn stand_in(
    axum::extract::State(index): axum::extract::State<std::sync::Arc<Index>>,
    axum::extract::Path(operation): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    use axum::http::StatusCode;
    // Signed with SigV4 by the SDK, for the bucket and index the store names.
    let signed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential=test/"));
    if !signed || body["vectorBucketName"] != "vectors" || body["indexName"] != "docs" {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"message": "Access denied"})),
        );
    }
    let mut vectors = index.lock().unwrap();
    let answer = match operation.as_str() {
        "PutVectors" => {
            for vector in body["vectors"].as_array().unwrap() {
                let metadata = vector["metadata"].as_object().cloned().unwrap_or_default();
                let key = vector["key"].as_str().unwrap().to_owned();
                vectors.insert(key, (float32(&vector["data"]), metadata));
            }
            json!({})
        }
        "DeleteVectors" => {
            for key in body["keys"].as_array().unwrap() {
                vectors.remove(key.as_str().unwrap());
            }
            json!({})
        }
        "QueryVectors" => {
            let query = float32(&body["queryVector"]);
            let filter =
                gateway::vectors::MetadataFilter::parse(&unreserved(&body["filter"])).unwrap();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let mut found: Vec<(f64, Value)> = vectors
                .iter()
                .filter(|(_, (_, metadata))| {
                    filter.matches(
                        unreserved(&Value::Object(metadata.clone()))
                            .as_object()
                            .unwrap(),
                    )
                })
                .map(|(key, (values, metadata))| {
                    let dot: f64 = values.iter().zip(&query).map(|(a, b)| a * b).sum();
                    let distance = 1.0 - dot / (norm(values) * norm(&query));
                    (
                        distance,
                        json!({"key": key, "distance": distance, "metadata": metadata}),
                    )
                })
                .collect();
            found.sort_by(|a, b| a.0.total_cmp(&b.0));
            found.truncate(body["topK"].as_u64().unwrap() as usize);
            let found: Vec<Value> = found.into_iter().map(|(_, v)| v).collect();
            json!({"vectors": found, "distanceMetric": "cosine"})
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Unknown operation"})),
            );
        }
    };
    (StatusCode::OK, axum::Json(answer))
}

/// An S3 Vectors store (bucket `vectors`, index `docs`, 3 dimensions) on the stand-in.
pub(crate) async fn stand_in_store() -> S3VectorStore {
    use aws_sdk_s3vectors::config::{BehaviorVersion, Credentials, Region};
    let router = axum::Router::new()
        .route("/{operation}", axum::routing::post(stand_in))
        .with_state(std::sync::Arc::new(Index::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let config = aws_sdk_s3vectors::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(gateway::tls::aws_http_client())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(format!("http://{address}"))
        .build();
    S3VectorStore::new(
        aws_sdk_s3vectors::Client::from_conf(config),
        "vectors".into(),
        "docs".into(),
        3,
    )
}

/// A vector bucket named `bucket` with an index `docs` of 3 dimensions (cosine), and the raw
/// client to inspect it.
async fn index(moto: &Moto, bucket: &str) -> aws_sdk_s3vectors::Client {
    let client = gateway::vectors::s3::client(&moto.sdk_config());
    client
        .create_vector_bucket()
        .vector_bucket_name(bucket)
        .send()
        .await
        .unwrap();
    client
        .create_index()
        .vector_bucket_name(bucket)
        .index_name("docs")
        .data_type(DataType::Float32)
        .dimension(3)
        .distance_metric(DistanceMetric::Cosine)
        .send()
        .await
        .unwrap();
    client
}

/// Every vector in the index: key -> metadata.
async fn stored(client: &aws_sdk_s3vectors::Client, bucket: &str) -> BTreeMap<String, Value> {
    let listed = client
        .list_vectors()
        .vector_bucket_name(bucket)
        .index_name("docs")
        .return_metadata(true)
        .send()
        .await
        .unwrap();
    listed
        .vectors()
        .iter()
        .map(|v| {
            let metadata = v.metadata().map(document_json).unwrap_or(Value::Null);
            (v.key().to_owned(), metadata)
        })
        .collect()
}

fn document_json(document: &aws_smithy_types::Document) -> Value {
    use aws_smithy_types::{Document, Number};
    match document {
        Document::Object(entries) => entries
            .iter()
            .map(|(k, v)| (k.clone(), document_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Document::Array(items) => items.iter().map(document_json).collect(),
        Document::String(s) => json!(s),
        Document::Bool(b) => json!(b),
        Document::Number(Number::PosInt(n)) => json!(n),
        Document::Number(Number::NegInt(n)) => json!(n),
        Document::Number(Number::Float(n)) => json!(n),
        Document::Null => Value::Null,
    }
}

fn ns(tenant: &str) -> Namespace {
    Namespace {
        tenant: tenant.into(),
        collection: "handbook".into(),
    }
}

fn record(i: usize) -> VectorRecord {
    VectorRecord {
        key: format!("doc-{i}"),
        vector: vec![1.0, i as f32, 2.0],
        text: format!("chunk {i}"),
        metadata: json!({"page": i, "tags": ["a", "b"]})
            .as_object()
            .unwrap()
            .clone(),
    }
}

#[tokio::test]
async fn puts_and_deletes_land_in_the_index_under_the_namespace() {
    let moto = Moto::shared();
    let client = index(&moto, "vectors-put-delete").await;
    let store = S3VectorStore::new(
        client.clone(),
        "vectors-put-delete".into(),
        "docs".into(),
        3,
    );
    let (acme, other) = (ns("acme"), ns("other"));
    store
        .put(&acme, (0..1201).map(record).collect())
        .await
        .unwrap();
    store.put(&other, vec![record(0), record(1)]).await.unwrap();

    let vectors = stored(&client, "vectors-put-delete").await;
    assert_eq!(
        vectors.len(),
        1203,
        "three PutVectors calls for 1,201 vectors, one for 2"
    );
    let acme_key = format!("{}:doc-7", acme.digest());
    assert_eq!(
        vectors[&acme_key],
        json!({"page": 7, "tags": ["a", "b"], "ns": acme.digest(), "text": "chunk 7"})
    );
    assert_eq!(
        vectors[&format!("{}:doc-0", other.digest())]["ns"],
        other.digest()
    );

    // Upsert by key, then deletes in batches; the other tenant's same keys stay.
    store
        .put(
            &acme,
            vec![VectorRecord {
                text: "rewritten".into(),
                ..record(7)
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        stored(&client, "vectors-put-delete").await[&acme_key]["text"],
        "rewritten"
    );
    let keys: Vec<String> = (0..1001).map(|i| format!("doc-{i}")).collect();
    store.delete(&acme, &keys).await.unwrap();
    let left = stored(&client, "vectors-put-delete").await;
    assert_eq!(left.len(), 202);
    assert!(left.contains_key(&format!("{}:doc-0", other.digest())));
    assert!(left.contains_key(&format!("{}:doc-1200", acme.digest())));
    assert!(!left.contains_key(&acme_key));
}

#[tokio::test]
async fn the_index_s_refusals_are_client_errors_and_failures_name_no_endpoint() {
    let moto = Moto::shared();
    let client = index(&moto, "vectors-refusals").await;
    // A store told the wrong dimension: the index itself refuses the vectors.
    let wrong = S3VectorStore::new(client.clone(), "vectors-refusals".into(), "docs".into(), 4);
    let error = wrong
        .put(
            &ns("acme"),
            vec![VectorRecord {
                vector: vec![1.0; 4],
                ..record(1)
            }],
        )
        .await
        .unwrap_err();
    let StoreError::Invalid(message) = error else {
        panic!("expected a refusal, got {error:?}")
    };
    assert!(message.contains("vector must have length 3"), "{message}");

    let missing = S3VectorStore::new(client, "vectors-refusals".into(), "no-such-index".into(), 3);
    let error = missing.put(&ns("acme"), vec![record(1)]).await.unwrap_err();
    let StoreError::Backend(message) = error else {
        panic!("expected a storage failure, got {error:?}")
    };
    assert!(
        message.starts_with("S3 Vectors PutVectors failed: NotFoundException"),
        "{message}"
    );
    assert!(
        !message.contains("127.0.0.1") && !message.contains("http"),
        "{message}"
    );
}

/// The Lambda functions' vector store (`lambda::setup::vector_store`): a collection the config
/// puts in Pinecone goes there, with the API key from the provider secret's lookup; every other
/// collection stays in the stack's S3 Vectors index.
#[tokio::test]
async fn on_lambda_a_pinecone_collection_goes_to_pinecone_and_the_others_to_s3_vectors() {
    use crate::vectors_pinecone::{API_KEY, start, stored_ids};
    use gateway::config::Config;
    use gateway::lambda::setup::vector_store;

    let moto = Moto::shared();
    let client = index(&moto, "vectors-lambda-setup").await;
    let (host, pinecone) = start().await;
    let config = Config::from_toml(&format!(
        "{}\n[vectors.pinecone.handbook]\nhost = \"{host}\"\napi_key_env = \"PINECONE_KEY\"\ndimensions = 3\n",
        crate::common::test_config("http://127.0.0.1:9")
    ))
    .unwrap();
    let lookup = |name: &str| match name {
        "GATEWAY_VECTOR_BUCKET" => Some("vectors-lambda-setup".to_owned()),
        "GATEWAY_VECTOR_INDEX" => Some("docs".to_owned()),
        "GATEWAY_VECTOR_DIMENSION" => Some("3".to_owned()),
        "PINECONE_KEY" => Some(API_KEY.to_owned()),
        _ => None,
    };
    let store = vector_store(&moto.sdk_config(), &config, lookup)
        .unwrap()
        .unwrap();
    let manuals = Namespace {
        tenant: "acme".into(),
        collection: "manuals".into(),
    };
    store.put(&ns("acme"), vec![record(1)]).await.unwrap();
    store.put(&manuals, vec![record(2)]).await.unwrap();

    assert_eq!(stored_ids(&pinecone), vec!["doc-1".to_owned()]);
    let in_s3: Vec<String> = stored(&client, "vectors-lambda-setup")
        .await
        .into_keys()
        .collect();
    assert_eq!(in_s3, vec![format!("{}:doc-2", manuals.digest())]);

    // Without the API key in the secret or the environment, or without the stack's index, the
    // function refuses to start, naming what is missing.
    let no_key = |name: &str| lookup(name).filter(|_| name != "PINECONE_KEY");
    let error = vector_store(&moto.sdk_config(), &config, no_key)
        .err()
        .unwrap();
    assert!(error.contains("vectors.pinecone.handbook"), "{error}");
    let no_index = |name: &str| lookup(name).filter(|_| name == "PINECONE_KEY");
    let error = vector_store(&moto.sdk_config(), &config, no_index)
        .err()
        .unwrap();
    assert!(error.contains("GATEWAY_VECTOR_BUCKET"), "{error}");
}
