//! API keys in the embedded store's `keys` table.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use crate::error::StoreError;
use crate::keys::{KeyEdit, KeyRecord, KeyStore};
use crate::storage::embedded::{EmbeddedStore, from_sql_int, to_sql_int};

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
            let current = conn
                .prepare_cached("SELECT record FROM keys WHERE hash = ?1")?
                .query_row(params![hash], |row| {
                    decode_record(&row.get::<_, String>(0)?)
                })
                .optional()?;
            if current.is_some() {
                return Ok(current);
            }
            // A rotated-out secret reads its key's current record, so a revocation or change
            // made since applies to it too.
            conn.prepare_cached(
                "SELECT k.record, s.valid_until FROM superseded_keys s \
                 JOIN keys k ON k.id = s.id WHERE s.hash = ?1",
            )?
            .query_row(params![hash], |row| {
                let mut record = decode_record(&row.get::<_, String>(0)?)?;
                record.superseded_until = Some(from_sql_int(row.get(1)?));
                Ok(record)
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

    async fn update(
        &self,
        id: &str,
        change: &KeyEdit<'_>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            let transaction = write_transaction(conn)?;
            let Some(mut record) = read_by_id(&transaction, id)? else {
                return Ok(None);
            };
            change(&mut record);
            transaction.execute(
                "UPDATE keys SET record = ?1 WHERE id = ?2",
                params![to_text(&record)?, id],
            )?;
            transaction.commit()?;
            Ok(Some(record))
        })
    }

    async fn rotate(
        &self,
        id: &str,
        new_hash: &str,
        prefix: Option<&str>,
        old_valid_until: u64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            let transaction = write_transaction(conn)?;
            let found = transaction
                .query_row(
                    "SELECT hash, record FROM keys WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((old_hash, text)) = found else {
                return Ok(None);
            };
            let mut record: KeyRecord = decode_record(&text)?;
            record.prefix = prefix.map(str::to_owned);
            transaction.execute(
                "UPDATE keys SET hash = ?1, record = ?2 WHERE id = ?3",
                params![new_hash, to_text(&record)?, id],
            )?;
            transaction.execute(
                "INSERT OR REPLACE INTO superseded_keys (hash, id, valid_until) VALUES (?1, ?2, ?3)",
                params![old_hash, id, to_sql_int(old_valid_until)],
            )?;
            transaction.commit()?;
            Ok(Some(record))
        })
    }
}

/// A read-then-write transaction takes the write lock first: a deferred one that reads and then
/// writes fails at once with "database is locked" when another process (the server, while the
/// CLI revokes a key) committed in between, without waiting out the busy timeout.
fn write_transaction(conn: &rusqlite::Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

fn read_by_id(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<KeyRecord>> {
    conn.prepare_cached("SELECT record FROM keys WHERE id = ?1")?
        .query_row(params![id], |row| decode_record(&row.get::<_, String>(0)?))
        .optional()
}

fn to_text(record: &KeyRecord) -> rusqlite::Result<String> {
    serde_json::to_string(record).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
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

    #[tokio::test]
    async fn a_key_change_waits_for_another_process_writing_instead_of_failing() {
        let dir = test_dir("keys-busy");
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
        // Another process (the running server) holds the write lock and commits a change
        // while this one (the CLI) revokes the key.
        let server = rusqlite::Connection::open(dir.join("gateway.db")).unwrap();
        server.execute_batch("BEGIN IMMEDIATE").unwrap();
        server
            .execute(
                "INSERT INTO spend (key_id, month, usd) VALUES ('other', 1, 1.0)",
                [],
            )
            .unwrap();
        let committer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            server.execute_batch("COMMIT").unwrap();
        });
        assert!(store.revoke(&record.id).await.unwrap());
        committer.join().unwrap();
        assert!(store.get_by_hash(&hash).await.unwrap().unwrap().disabled);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_rotated_key_keeps_its_id_and_its_old_secret_reads_with_a_deadline() {
        let dir = test_dir("keys-rotate");
        let store = EmbeddedStore::open(&dir).unwrap();
        let (old_hash, _, record) = generate_key(
            NewKey {
                name: "a".into(),
                ..NewKey::default()
            },
            1,
        )
        .unwrap();
        store.insert(&old_hash, &record).await.unwrap();
        let rotated = store
            .rotate(&record.id, "newhash", Some("gw-12345678"), 500)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rotated.id, record.id);
        assert_eq!(rotated.prefix.as_deref(), Some("gw-12345678"));
        let current = store.get_by_hash("newhash").await.unwrap().unwrap();
        assert_eq!(current.superseded_until, None);
        let old = store.get_by_hash(&old_hash).await.unwrap().unwrap();
        assert_eq!(
            (old.id.as_str(), old.superseded_until),
            (record.id.as_str(), Some(500))
        );
        assert_eq!(store.list().await.unwrap(), std::slice::from_ref(&rotated));
        assert_eq!(store.get_by_id(&record.id).await.unwrap(), Some(rotated));
        // Revoking the key revokes the old secret too.
        assert!(store.revoke(&record.id).await.unwrap());
        assert!(
            store
                .get_by_hash(&old_hash)
                .await
                .unwrap()
                .unwrap()
                .disabled
        );
        assert!(
            store
                .rotate("key_missing", "h", None, 1)
                .await
                .unwrap()
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
