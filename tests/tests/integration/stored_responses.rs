//! The stored-responses store (`previous_response_id`, `GET /v1/responses/{id}`) behaves the same
//! on the embedded store and on DynamoDB (moto): per tenant, replaced by id, expired documents
//! gone, the size bound, and large documents stored whole.

use std::sync::Arc;

use bytes::Bytes;
use gateway::error::StoreError;
use gateway::responses::dynamo::DynamoResponseStore;
use gateway::responses::{MAX_STORED_RESPONSE_BYTES, ResponseStore};
use gateway::storage::dynamo::create_responses_table;
use gateway::storage::embedded::EmbeddedStore;

use crate::common::local::TempDir;
use crate::common::moto::Moto;

async fn stores_per_tenant_until_deleted(store: &dyn ResponseStore) {
    let doc = Bytes::from_static(br#"{"id":"resp_1"}"#);
    store.put("t1", "resp_1", doc.clone(), 60).await.unwrap();
    assert_eq!(store.get("t1", "resp_1").await.unwrap(), Some(doc.clone()));
    // Another tenant neither reads nor deletes it.
    assert_eq!(store.get("t2", "resp_1").await.unwrap(), None);
    assert!(!store.delete("t2", "resp_1").await.unwrap());
    assert_eq!(store.get("t1", "resp_1").await.unwrap(), Some(doc));
    // A put of the same id replaces the document.
    let newer = Bytes::from_static(br#"{"id":"resp_1","v":2}"#);
    store.put("t1", "resp_1", newer.clone(), 60).await.unwrap();
    assert_eq!(store.get("t1", "resp_1").await.unwrap(), Some(newer));
    assert!(store.delete("t1", "resp_1").await.unwrap());
    assert_eq!(store.get("t1", "resp_1").await.unwrap(), None);
    assert!(!store.delete("t1", "resp_1").await.unwrap());
    assert_eq!(store.get("t1", "resp_missing").await.unwrap(), None);
}

async fn forgets_expired_documents(store: &dyn ResponseStore) {
    store
        .put("t1", "resp_old", Bytes::from_static(b"{}"), 0)
        .await
        .unwrap();
    assert_eq!(store.get("t1", "resp_old").await.unwrap(), None);
    assert!(!store.delete("t1", "resp_old").await.unwrap());
}

async fn refuses_oversized_and_keeps_large_documents(store: &dyn ResponseStore) {
    let too_big = Bytes::from(vec![b'a'; MAX_STORED_RESPONSE_BYTES + 1]);
    assert!(matches!(
        store.put("t1", "resp_big", too_big, 60).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.get("t1", "resp_big").await.unwrap(), None);
    // The largest allowed document round-trips: stored deflated on DynamoDB.
    let largest: Vec<u8> = (0..MAX_STORED_RESPONSE_BYTES)
        .map(|i| b"0123456789abcdef"[i % 16])
        .collect();
    let largest = Bytes::from(largest);
    store
        .put("t1", "resp_large", largest.clone(), 60)
        .await
        .unwrap();
    assert_eq!(store.get("t1", "resp_large").await.unwrap(), Some(largest));
}

async fn follows_the_contract(store: &dyn ResponseStore) {
    stores_per_tenant_until_deleted(store).await;
    forgets_expired_documents(store).await;
    refuses_oversized_and_keeps_large_documents(store).await;
}

#[tokio::test]
async fn the_embedded_store_keeps_responses_per_tenant_with_expiry() {
    let dir = TempDir::new("stored-responses");
    let store: Arc<EmbeddedStore> = EmbeddedStore::open(dir.path()).unwrap();
    follows_the_contract(store.as_ref()).await;
    // A second process on the same file (the CLI, another local instance) reads them at once.
    store
        .put("t1", "resp_shared", Bytes::from_static(b"{}"), 60)
        .await
        .unwrap();
    let other = EmbeddedStore::open(dir.path()).unwrap();
    assert!(
        ResponseStore::get(other.as_ref(), "t1", "resp_shared")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn the_dynamodb_store_keeps_responses_per_tenant_with_expiry() {
    let moto = Moto::shared();
    let client = moto.client();
    let table = "stored-responses-contract";
    create_responses_table(&client, table).await.unwrap();
    let store = DynamoResponseStore::new(client, table.to_owned());
    follows_the_contract(&store).await;
}
