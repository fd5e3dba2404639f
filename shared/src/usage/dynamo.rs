//! Usage in the DynamoDB limits table, beside the key's limit items:
//!
//! - `pk = "key#<key id>"`, `sk = "usage#<YYYY-MM-DD>#<model>"`: `requests`, `input_tokens`,
//!   `output_tokens`, `nano_usd` (N, added to at settlement), `key_id` and `model` (S).
//!
//! One item per key, day and model keeps every item about 150 bytes (1 WRU per write) however
//! many models a key uses in a day, far from DynamoDB's 400 KB item limit, and no TTL: these
//! items are the spend history. A key's report is one Query on its partition; the admin report
//! for all keys is a Scan of the table filtered to usage items (an operator's occasional read).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::clock::format_day;
use crate::error::StoreError;
use crate::storage::dynamo::{DynamoConfig, PK, SK, backend, n, number_attr, s, string_attr};
use crate::usage::{MAX_REPORT_ROWS, ModelUsage, UsageQuery, UsageRow, UsageStore, sorted};

pub(crate) const REQUESTS: &str = "requests";
pub(crate) const INPUT_TOKENS: &str = "input_tokens";
pub(crate) const OUTPUT_TOKENS: &str = "output_tokens";
pub(crate) const NANO_USD: &str = "nano_usd";
pub(crate) const KEY_ID: &str = "key_id";
pub(crate) const MODEL: &str = "model";

const PREFIX: &str = "usage#";

/// The sort key of a key's usage of `model` on `day`.
pub(crate) fn usage_sk(day: u32, model: &str) -> String {
    format!("{PREFIX}{}#{model}", format_day(day))
}

/// The update expression, names and values that add one model's usage to its item.
pub(crate) fn usage_update(
    key_id: &str,
    usage: &ModelUsage,
) -> (
    &'static str,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    let names = HashMap::from(
        [
            ("#requests", REQUESTS),
            ("#input", INPUT_TOKENS),
            ("#output", OUTPUT_TOKENS),
            ("#nano", NANO_USD),
            ("#key_id", KEY_ID),
            ("#model", MODEL),
        ]
        .map(|(placeholder, name)| (placeholder.to_owned(), name.to_owned())),
    );
    let values = HashMap::from(
        [
            (":requests", n(usage.requests)),
            (":input", n(usage.input_tokens)),
            (":output", n(usage.output_tokens)),
            (":nano", n(usage.nano_usd)),
            (":key_id", s(key_id)),
            (":model", s(usage.model.as_str())),
        ]
        .map(|(placeholder, value)| (placeholder.to_owned(), value)),
    );
    (
        "ADD #requests :requests, #input :input, #output :output, #nano :nano \
         SET #key_id = :key_id, #model = :model",
        names,
        values,
    )
}

/// Reads usage from the limits table.
pub struct DynamoUsageStore {
    client: Client,
    table: String,
}

impl DynamoUsageStore {
    pub fn new(client: Client, config: &DynamoConfig) -> Self {
        Self {
            client,
            table: config.limits_table.clone(),
        }
    }

    /// Over the limits table the environment names (`GATEWAY_LIMITS_TABLE`).
    pub fn from_env(client: Client) -> Result<Self, String> {
        Ok(Self::new(client, &DynamoConfig::from_env()?))
    }
}

fn row(item: &HashMap<String, AttributeValue>) -> Option<UsageRow> {
    let sk = string_attr(item, SK)?;
    let date = sk.strip_prefix(PREFIX)?.get(..10)?.to_owned();
    Some(UsageRow {
        key_id: string_attr(item, KEY_ID)?,
        date,
        model: string_attr(item, MODEL)?,
        requests: number_attr(item, REQUESTS).unwrap_or(0),
        input_tokens: number_attr(item, INPUT_TOKENS).unwrap_or(0),
        output_tokens: number_attr(item, OUTPUT_TOKENS).unwrap_or(0),
        cost_nano_usd: number_attr(item, NANO_USD).unwrap_or(0),
    })
}

fn too_many() -> StoreError {
    StoreError::Invalid(format!(
        "The usage report has more than {MAX_REPORT_ROWS} rows; narrow the dates or name a key."
    ))
}

/// One page of items and where the next one starts.
type Page = (
    Vec<HashMap<String, AttributeValue>>,
    Option<HashMap<String, AttributeValue>>,
);

impl DynamoUsageStore {
    /// One key's rows: a Query of its partition.
    async fn key_page(
        &self,
        key_id: &str,
        range: (&AttributeValue, &AttributeValue),
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<Page, StoreError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(format!("key#{key_id}")))
            .expression_attribute_values(":from", range.0.clone())
            .expression_attribute_values(":to", range.1.clone())
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| backend("Query on the limits table (usage)", &e))?;
        Ok((output.items.unwrap_or_default(), output.last_evaluated_key))
    }

    /// Every key's rows: a Scan (the admin report only).
    async fn every_key_page(
        &self,
        range: (&AttributeValue, &AttributeValue),
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<Page, StoreError> {
        let output = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("#sk BETWEEN :from AND :to")
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":from", range.0.clone())
            .expression_attribute_values(":to", range.1.clone())
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| backend("Scan of the limits table (usage)", &e))?;
        Ok((output.items.unwrap_or_default(), output.last_evaluated_key))
    }
}

#[async_trait]
impl UsageStore for DynamoUsageStore {
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        // Every sort key of the range sorts between these: '$' follows the '#' after the date.
        let from = s(format!("{PREFIX}{}#", format_day(query.from)));
        let to = s(format!("{PREFIX}{}$", format_day(query.to)));
        let mut rows = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let (items, next) = match &query.key_id {
                Some(key_id) => self.key_page(key_id, (&from, &to), start.take()).await?,
                None => self.every_key_page((&from, &to), start.take()).await?,
            };
            rows.extend(items.iter().filter_map(row));
            if rows.len() > MAX_REPORT_ROWS {
                return Err(too_many());
            }
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(sorted(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_day;

    #[test]
    fn items_sort_by_day_then_model_inside_the_range_bounds() {
        let day = parse_day("2026-12-02").unwrap_or_default();
        let sk = usage_sk(day, "gpt-4o-mini");
        assert_eq!(sk, "usage#2026-12-02#gpt-4o-mini");
        assert!("usage#2026-12-02#" <= sk.as_str() && sk.as_str() <= "usage#2026-12-02$");
        assert!(usage_sk(day + 1, "a").as_str() > "usage#2026-12-02$");
        let item = HashMap::from([
            (SK.to_owned(), s(sk)),
            (KEY_ID.to_owned(), s("key_1")),
            (MODEL.to_owned(), s("gpt-4o-mini")),
            (REQUESTS.to_owned(), n(2)),
            (NANO_USD.to_owned(), n(1_500)),
        ]);
        let parsed = row(&item).unwrap_or_else(|| panic!("no row"));
        assert_eq!(parsed.date, "2026-12-02");
        assert_eq!((parsed.requests, parsed.cost_nano_usd), (2, 1_500));
    }
}
