//! Usage in the embedded store's `usage` table: one row per key, day and model, added to by the
//! store's writer (and by the batch store with an item's result).

use async_trait::async_trait;
use rusqlite::params;

use crate::clock::format_day;
use crate::error::StoreError;
use crate::storage::embedded::{EmbeddedStore, from_sql_int};
use crate::usage::{MAX_REPORT_ROWS, UsageQuery, UsageRow, UsageStore};

#[async_trait]
impl UsageStore for EmbeddedStore {
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let rows = self.with_conn(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT key_id, day, model, requests, input_tokens, output_tokens, nano_usd
                 FROM usage WHERE day BETWEEN ?1 AND ?2 AND (?3 IS NULL OR key_id = ?3)
                 ORDER BY key_id, day, model LIMIT ?4",
            )?;
            let rows = statement.query_map(
                params![query.from, query.to, query.key_id, MAX_REPORT_ROWS + 1],
                |row| {
                    Ok(UsageRow {
                        key_id: row.get(0)?,
                        date: format_day(row.get(1)?),
                        model: row.get(2)?,
                        requests: from_sql_int(row.get(3)?),
                        input_tokens: from_sql_int(row.get(4)?),
                        output_tokens: from_sql_int(row.get(5)?),
                        cost_nano_usd: row.get(6)?,
                    })
                },
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        if rows.len() > MAX_REPORT_ROWS {
            return Err(StoreError::Invalid(format!(
                "The usage report has more than {MAX_REPORT_ROWS} rows; narrow the dates or name a key."
            )));
        }
        Ok(rows)
    }
}
