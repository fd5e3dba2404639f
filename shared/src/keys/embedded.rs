//! API keys in the embedded store's `keys` table.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::error::StoreError;
use crate::keys::{KeyRecord, KeyStore};
use crate::storage::embedded::EmbeddedStore;

fn decode_record(text: &str) -> rusqlite::Result<KeyRecord> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn encode_record(record: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Backend(e.to_string()))
}

#[async_trait]
impl KeyStore for EmbeddedStore {
    async fn get_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached("SELECT record FROM keys WHERE hash = ?1")?
                .query_row(params![hash], |row| {
                    decode_record(&row.get::<_, String>(0)?)
                })
                .optional()
        })
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached("SELECT record FROM keys WHERE id = ?1")?
                .query_row(params![id], |row| decode_record(&row.get::<_, String>(0)?))
                .optional()
        })
    }

    async fn insert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let text = encode_record(record)?;
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO keys (hash, id, record) VALUES (?1, ?2, ?3)",
                params![hash, record.id, text],
            )
        })
        .map_err(|e| match e {
            StoreError::Backend(msg) if msg.contains("UNIQUE") => {
                StoreError::Conflict(format!("key `{}`", record.id))
            }
            other => other,
        })?;
        Ok(())
    }

    async fn upsert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let text = encode_record(record)?;
        self.with_conn(|conn| {
            conn.execute(
                "DELETE FROM keys WHERE id = ?1 AND hash <> ?2",
                params![record.id, hash],
            )?;
            conn.execute(
                "INSERT OR REPLACE INTO keys (hash, id, record) VALUES (?1, ?2, ?3)",
                params![hash, record.id, text],
            )
        })?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare("SELECT record FROM keys ORDER BY id")?;
            let rows = stmt.query_map([], |row| decode_record(&row.get::<_, String>(0)?))?;
            rows.collect()
        })
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.with_conn(|conn| {
            let found = conn
                .query_row(
                    "SELECT hash, record FROM keys WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((hash, text)) = found else {
                return Ok(false);
            };
            let mut record = decode_record(&text)?;
            record.disabled = true;
            let text = serde_json::to_string(&record)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            conn.execute(
                "UPDATE keys SET record = ?1 WHERE hash = ?2",
                params![text, hash],
            )?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{NewKey, generate_key};
    use crate::storage::embedded::test_dir;

    #[tokio::test]
    async fn keys_round_trip_and_revoke_across_connections() {
        let dir = test_dir("keys");
        let store = EmbeddedStore::open(&dir).unwrap();
        let (hash, _, record) = generate_key(
            NewKey {
                name: "a".into(),
                ..NewKey::default()
            },
            1,
        )
        .unwrap();
        store.insert(&hash, &record).await.unwrap();
        assert!(matches!(
            store.insert(&hash, &record).await,
            Err(StoreError::Conflict(_))
        ));
        // A second process (the CLI) opening the same file sees and revokes the key.
        let other = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(
            other.get_by_hash(&hash).await.unwrap(),
            Some(record.clone())
        );
        assert!(other.revoke(&record.id).await.unwrap());
        assert!(!other.revoke("key_missing").await.unwrap());
        assert!(store.get_by_hash(&hash).await.unwrap().unwrap().disabled);
        assert_eq!(store.list().await.unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
