//! The Pinecone vector store against a stand-in: an axum server on a loopback port that follows
//! Pinecone's data-plane API reference (`POST /vectors/upsert`, `/query`, `/vectors/delete`, the
//! `Api-Key` header, namespaces, `topK`, 1,000 ids per delete, `{"code", "message"}` errors).
//! No Pinecone server can run here; the stand-in evaluates filters with the gateway's own
//! `MetadataFilter`, whose language is Pinecone's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gateway::error::StoreError;
use gateway::vectors::pinecone::PineconeVectorStore;
use gateway::vectors::{MetadataFilter, Namespace, VectorRecord, VectorStore};
use serde_json::{Map, Value, json};

use crate::common::within;
use crate::ingest_api::MODEL;
use crate::vectors_conformance::a_configured_collection_round_trips;

pub(crate) const API_KEY: &str = "pc-test-key";

type Vectors = HashMap<String, HashMap<String, (Vec<f64>, Map<String, Value>)>>;

#[derive(Default)]
pub(crate) struct StandIn {
    /// The index's dimension.
    dimensions: usize,
    namespaces: Mutex<Vectors>,
    deletes: Mutex<usize>,
}

type Answer = (StatusCode, Json<Value>);

fn refused(status: StatusCode, message: &str) -> Answer {
    (status, Json(json!({"code": 3, "message": message})))
}

fn authorised(headers: &HeaderMap) -> Result<(), Answer> {
    match headers.get("Api-Key").and_then(|v| v.to_str().ok()) {
        Some(API_KEY) => Ok(()),
        _ => Err(refused(StatusCode::UNAUTHORIZED, "Invalid API Key")),
    }
}

async fn upsert(
    State(state): State<Arc<StandIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    if let Err(answer) = authorised(&headers) {
        return answer;
    }
    let namespace = body["namespace"].as_str().unwrap_or("").to_owned();
    let vectors = body["vectors"].as_array().cloned().unwrap_or_default();
    if vectors.len() > 1000 {
        return refused(StatusCode::BAD_REQUEST, "too many vectors");
    }
    let mut namespaces = state.namespaces.lock().unwrap();
    let stored = namespaces.entry(namespace).or_default();
    for vector in &vectors {
        let values: Vec<f64> = vector["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        if values.len() != state.dimensions {
            return refused(
                StatusCode::BAD_REQUEST,
                "Vector dimension does not match the index",
            );
        }
        let metadata = vector["metadata"].as_object().cloned().unwrap_or_default();
        stored.insert(
            vector["id"].as_str().unwrap().to_owned(),
            (values, metadata),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"upsertedCount": vectors.len()})),
    )
}

async fn query(
    State(state): State<Arc<StandIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    if let Err(answer) = authorised(&headers) {
        return answer;
    }
    let top_k = body["topK"].as_u64().unwrap_or(0) as usize;
    if top_k == 0 || top_k > 10_000 {
        return refused(StatusCode::BAD_REQUEST, "topK must be between 1 and 10000");
    }
    let filter = match body.get("filter") {
        Some(filter) => match MetadataFilter::parse(filter) {
            Ok(filter) => Some(filter),
            Err(message) => return refused(StatusCode::BAD_REQUEST, &message),
        },
        None => None,
    };
    let wanted: Vec<f64> = body["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let namespaces = state.namespaces.lock().unwrap();
    let mut matches: Vec<(f64, Value)> = namespaces
        .get(body["namespace"].as_str().unwrap_or(""))
        .into_iter()
        .flatten()
        .filter(|(_, (_, metadata))| filter.as_ref().is_none_or(|f| f.matches(metadata)))
        .map(|(id, (values, metadata))| {
            let dot: f64 = values.iter().zip(&wanted).map(|(a, b)| a * b).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let score = dot / (norm(values) * norm(&wanted));
            let mut found = json!({"id": id, "score": score});
            if body["includeMetadata"] == json!(true) {
                found["metadata"] = Value::Object(metadata.clone());
            }
            (score, found)
        })
        .collect();
    matches.sort_by(|a, b| b.0.total_cmp(&a.0));
    matches.truncate(top_k);
    let matches: Vec<Value> = matches.into_iter().map(|(_, m)| m).collect();
    (
        StatusCode::OK,
        Json(json!({"matches": matches, "namespace": body["namespace"]})),
    )
}

async fn delete(
    State(state): State<Arc<StandIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    if let Err(answer) = authorised(&headers) {
        return answer;
    }
    let ids = body["ids"].as_array().cloned().unwrap_or_default();
    if ids.len() > 1000 {
        return refused(StatusCode::BAD_REQUEST, "at most 1000 ids per delete");
    }
    *state.deletes.lock().unwrap() += 1;
    let mut namespaces = state.namespaces.lock().unwrap();
    if let Some(stored) = namespaces.get_mut(body["namespace"].as_str().unwrap_or("")) {
        for id in ids {
            stored.remove(id.as_str().unwrap_or(""));
        }
    }
    (StatusCode::OK, Json(json!({})))
}

pub(crate) fn stored_ids(state: &StandIn) -> Vec<String> {
    let namespaces = state.namespaces.lock().unwrap();
    let mut ids: Vec<String> = namespaces
        .values()
        .flat_map(|v| v.keys().cloned())
        .collect();
    ids.sort();
    ids
}

pub(crate) async fn start() -> (String, Arc<StandIn>) {
    start_with(3).await
}

async fn start_with(dimensions: usize) -> (String, Arc<StandIn>) {
    let state = Arc::new(StandIn {
        dimensions,
        ..StandIn::default()
    });
    let router = axum::Router::new()
        .route("/vectors/upsert", post(upsert))
        .route("/query", post(query))
        .route("/vectors/delete", post(delete))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), state)
}

fn ns(collection: &str) -> Namespace {
    Namespace {
        tenant: "acme".into(),
        collection: collection.into(),
    }
}

fn record(key: &str, vector: [f32; 3], metadata: Value) -> VectorRecord {
    VectorRecord {
        key: key.into(),
        vector: vector.to_vec(),
        text: format!("text of {key}"),
        metadata: metadata.as_object().unwrap().clone(),
    }
}

#[tokio::test]
async fn vectors_go_to_the_tenant_s_namespace_and_deletes_in_batches_of_1000_ids() {
    within(30, async {
        let (host, state) = start().await;
        let store = PineconeVectorStore::new(host, API_KEY.into(), 3, "collection handbook".into());
        let handbook = ns("handbook");
        store
            .put(
                &handbook,
                vec![record("a", [1.0, 0.0, 0.0], json!({"lang": "en"}))],
            )
            .await
            .unwrap();
        {
            let namespaces = state.namespaces.lock().unwrap();
            let (_, metadata) = &namespaces[&handbook.digest()]["a"];
            assert_eq!(
                Value::Object(metadata.clone()),
                json!({"lang": "en", "text": "text of a"})
            );
        }

        // A document's many chunk ids go in batches of Pinecone's 1,000.
        let many: Vec<String> = (0..2500).map(|i| format!("chunk-{i}")).collect();
        store.delete(&handbook, &many).await.unwrap();
        assert_eq!(*state.deletes.lock().unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn refusals_are_client_errors_and_failures_name_the_collection_not_the_host() {
    within(30, async {
        let (host, _) = start().await;
        // An index of another dimension than configured: Pinecone's 400 is the client's error.
        let misconfigured = PineconeVectorStore::new(
            host.clone(),
            API_KEY.into(),
            4,
            "collection handbook".into(),
        );
        let error = misconfigured
            .put(&ns("h"), vec![VectorRecord { vector: vec![1.0; 4], ..record("a", [0.0; 3], json!({})) }])
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::Invalid(m) if m.contains("(Pinecone) refused the request: Vector dimension")),
            "{error:?}"
        );

        let unauthorised = PineconeVectorStore::new(
            host.clone(),
            "wrong".into(),
            3,
            "collection handbook".into(),
        );
        let error = unauthorised
            .query(&ns("h"), &[1.0, 0.0, 0.0], 1, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("collection handbook") && error.contains("401"),
            "{error}"
        );
        assert!(
            !error.contains("127.0.0.1") && !error.contains("wrong"),
            "{error}"
        );

        let down = PineconeVectorStore::new(
            format!("http://127.0.0.1:{}", crate::common::local::free_port()),
            API_KEY.into(),
            3,
            "collection handbook".into(),
        );
        let error = down
            .query(&ns("h"), &[1.0, 0.0, 0.0], 1, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot connect") && !error.contains("127.0.0.1"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_collection_configured_for_pinecone_is_ingested_queried_and_deleted_there() {
    within(60, async {
        let (host, state) = start_with(512).await;
        let table = format!(
            "[vectors.pinecone.handbook]\nhost = \"{host}\"\napi_key_env = \"PINECONE_TEST_KEY\"\ndimensions = 512\n"
        );
        let (gw, key) =
            a_configured_collection_round_trips(&table, "PINECONE_TEST_KEY", API_KEY, || {
                stored_ids(&state)
            })
            .await;
        // The Pinecone index's dimension is the collection's.
        let reply = gw
            .post(
                "/v1/collections",
                &key,
                &json!({"name": "handbook", "embedding_model": MODEL, "dimensions": 256}),
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.json());
    })
    .await;
}
