//! Usage in the DynamoDB limits table, beside the key's limit items. A settlement writes one
//! item, the key's limits item (`shared/src/limits/dynamo.rs`), so it also holds the usage of
//! the key's current usage day:
//!
//! - `pk = "key#<key id>"`, `sk = "limits"`: `usage_day` (N, days since 1970-01-01),
//!   `usage_writes` (N, settlements folded into that day so far) and per model
//!   `u#<model>#requests`, `u#<model>#input_tokens`, `u#<model>#output_tokens`,
//!   `u#<model>#nano_usd` (N; top-level names, so `ADD` creates them; models are bounded by the
//!   configuration).
//! - `pk = "key#<key id>"`, `sk = "usage#<YYYY-MM-DD>#<model>"`, one per key, day and model:
//!   `key_id` and `model` (S); the day's counters copied from the limits item when the key's
//!   next day starts (`folded_requests`, `folded_input_tokens`, `folded_output_tokens`,
//!   `folded_nano_usd`, and `folded_version`, the `usage_writes` they were copied at); and
//!   `requests`, `input_tokens`, `output_tokens`, `nano_usd` added straight to the row by a
//!   settlement that arrives after its day was copied (a request that straddled midnight), or
//!   by earlier versions, which wrote every request here.
//!
//! The copy is `SET` (copying twice must not count twice) on condition that the row holds no
//! newer copy, so a slow copier never overwrites a newer one; what is added straight to a row
//! is kept apart from the copy, so the copy overwrites none of it. A day's usage is its row's
//! direct counters plus the newest copy of its counters, whether on the row or still on the
//! limits item (which may hold any past day if the key went quiet): a report read in the middle
//! of a copy counts each settlement once.
//!
//! Items stay small: the limits item holds one day's counters for the models the key used that
//! day (about 100 bytes each, so a key using up to about 6 models a day stays under 1 KB, 1 write
//! unit per write), and no TTL: the rows are the spend history. A key's report is one Query on
//! its partition and a GetItem of its limits item; the admin report for all keys is a Scan of
//! the table (an operator's occasional read).

use std::collections::{BTreeMap, HashMap};

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
const FOLDED_REQUESTS: &str = "folded_requests";
const FOLDED_INPUT_TOKENS: &str = "folded_input_tokens";
const FOLDED_OUTPUT_TOKENS: &str = "folded_output_tokens";
const FOLDED_NANO_USD: &str = "folded_nano_usd";
const FOLDED_VERSION: &str = "folded_version";

/// The limits item's sort key, and its usage-day attributes.
pub(crate) const LIMITS_SK: &str = "limits";
pub(crate) const USAGE_DAY: &str = "usage_day";
pub(crate) const USAGE_WRITES: &str = "usage_writes";
const DAY_COUNTER_PREFIX: &str = "u#";

const PREFIX: &str = "usage#";

/// The four counters a model's usage has, in the order `day_counter_names` gives them.
const COUNTER_FIELDS: [&str; 4] = [REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS, NANO_USD];

/// The limits item's attributes holding a model's usage of the current usage day: requests,
/// input tokens, output tokens and nano-dollars.
pub(crate) fn day_counter_names(model: &str) -> [String; 4] {
    COUNTER_FIELDS.map(|field| format!("{DAY_COUNTER_PREFIX}{model}#{field}"))
}

/// Whether an attribute of the limits item is a usage-day counter.
pub(crate) fn is_day_counter(attribute: &str) -> bool {
    attribute.starts_with(DAY_COUNTER_PREFIX)
}

/// The usage day a limits item holds: its day, `usage_writes` and usage per model (none for an
/// item that has never folded usage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DayCounters {
    pub(crate) day: u32,
    pub(crate) writes: u64,
    pub(crate) models: Vec<ModelUsage>,
}

impl DayCounters {
    pub(crate) fn read(item: &HashMap<String, AttributeValue>) -> Option<Self> {
        let day = number_attr(item, USAGE_DAY)?;
        let mut models: BTreeMap<&str, ModelUsage> = BTreeMap::new();
        for (name, value) in item {
            let Some((model, field)) = name
                .strip_prefix(DAY_COUNTER_PREFIX)
                .and_then(|rest| rest.rsplit_once('#'))
            else {
                continue;
            };
            let Some(number) = value.as_n().ok().and_then(|v| v.parse::<i64>().ok()) else {
                continue;
            };
            let usage = models.entry(model).or_insert_with(|| ModelUsage {
                model: model.to_owned(),
                ..ModelUsage::default()
            });
            let count = u64::try_from(number).unwrap_or(0);
            match field {
                REQUESTS => usage.requests = count,
                INPUT_TOKENS => usage.input_tokens = count,
                OUTPUT_TOKENS => usage.output_tokens = count,
                NANO_USD => usage.nano_usd = number,
                _ => {}
            }
        }
        Some(Self {
            day,
            writes: number_attr(item, USAGE_WRITES).unwrap_or(0),
            models: models.into_values().collect(),
        })
    }
}

/// The update that copies a model's counters of a usage day to its row, at `version` (the
/// limits item's `usage_writes` when they were read): expression, condition, names and values.
pub(crate) fn copy_update(
    key_id: &str,
    usage: &ModelUsage,
    version: u64,
) -> (
    &'static str,
    &'static str,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    let folded = [
        FOLDED_REQUESTS,
        FOLDED_INPUT_TOKENS,
        FOLDED_OUTPUT_TOKENS,
        FOLDED_NANO_USD,
    ];
    let (mut names, mut values) = counter_attributes(key_id, usage, folded);
    names.insert("#version".to_owned(), FOLDED_VERSION.to_owned());
    values.insert(":version".to_owned(), n(version));
    (
        "SET #requests = :requests, #input = :input, #output = :output, #nano = :nano, \
         #version = :version, #key_id = :key_id, #model = :model",
        "attribute_not_exists(#version) OR #version < :version",
        names,
        values,
    )
}

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
    let direct = [REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS, NANO_USD];
    let (names, values) = counter_attributes(key_id, usage, direct);
    (
        "ADD #requests :requests, #input :input, #output :output, #nano :nano \
         SET #key_id = :key_id, #model = :model",
        names,
        values,
    )
}

/// The placeholders of one model's four counters (stored under `counters`: requests, input
/// tokens, output tokens, nano-USD), its key id and its model, as both updates of a usage row
/// name them.
fn counter_attributes(
    key_id: &str,
    usage: &ModelUsage,
    counters: [&str; 4],
) -> (HashMap<String, String>, HashMap<String, AttributeValue>) {
    let [requests, input, output, nano] = counters;
    let names = HashMap::from(
        [
            ("#requests", requests),
            ("#input", input),
            ("#output", output),
            ("#nano", nano),
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
    (names, values)
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

/// A copy of a usage day's counters for one model, and the limits item's `usage_writes` it was
/// read at: of two copies of the same day, the one with the higher version holds every
/// settlement the other does.
#[derive(Debug, Clone, PartialEq)]
struct DayCopy {
    version: u64,
    row: UsageRow,
}

/// What one item of the table adds to a report: a day row's direct counters and its copy, or
/// the copies still on a limits item.
#[derive(Debug, Default, PartialEq)]
struct Read {
    direct: Vec<UsageRow>,
    copies: Vec<DayCopy>,
}

impl Read {
    fn item(&mut self, item: &HashMap<String, AttributeValue>, query: &UsageQuery) {
        match string_attr(item, SK).as_deref() {
            Some(LIMITS_SK) => self.limits_item(item, query),
            Some(sk) if sk.starts_with(PREFIX) => self.day_row(sk, item),
            _ => {}
        }
    }

    fn day_row(&mut self, sk: &str, item: &HashMap<String, AttributeValue>) {
        let (Some(date), Some(key_id), Some(model)) = (
            sk.strip_prefix(PREFIX).and_then(|rest| rest.get(..10)),
            string_attr(item, KEY_ID),
            string_attr(item, MODEL),
        ) else {
            return;
        };
        let row = |fields: [&str; 4]| UsageRow {
            key_id: key_id.clone(),
            date: date.to_owned(),
            model: model.clone(),
            requests: number_attr(item, fields[0]).unwrap_or(0),
            input_tokens: number_attr(item, fields[1]).unwrap_or(0),
            output_tokens: number_attr(item, fields[2]).unwrap_or(0),
            cost_nano_usd: number_attr(item, fields[3]).unwrap_or(0),
        };
        self.direct.push(row(COUNTER_FIELDS));
        if let Some(version) = number_attr(item, FOLDED_VERSION) {
            self.copies.push(DayCopy {
                version,
                row: row([
                    FOLDED_REQUESTS,
                    FOLDED_INPUT_TOKENS,
                    FOLDED_OUTPUT_TOKENS,
                    FOLDED_NANO_USD,
                ]),
            });
        }
    }

    fn limits_item(&mut self, item: &HashMap<String, AttributeValue>, query: &UsageQuery) {
        let (Some(counters), Some(key_id)) = (
            DayCounters::read(item),
            string_attr(item, PK).and_then(|pk| pk.strip_prefix("key#").map(str::to_owned)),
        ) else {
            return;
        };
        if !(query.from..=query.to).contains(&counters.day) {
            return;
        }
        let date = format_day(counters.day);
        self.copies
            .extend(counters.models.into_iter().map(|usage| DayCopy {
                version: counters.writes,
                row: UsageRow {
                    key_id: key_id.clone(),
                    date: date.clone(),
                    model: usage.model,
                    requests: usage.requests,
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cost_nano_usd: usage.nano_usd,
                },
            }));
    }

    fn len(&self) -> usize {
        self.direct.len() + self.copies.len()
    }

    /// Each key, day and model: its direct counters plus its newest copy.
    fn rows(self) -> Vec<UsageRow> {
        let mut newest: HashMap<(String, String, String), DayCopy> = HashMap::new();
        for copy in self.copies {
            let slot = (
                copy.row.key_id.clone(),
                copy.row.date.clone(),
                copy.row.model.clone(),
            );
            match newest.get(&slot) {
                Some(kept) if kept.version >= copy.version => {}
                _ => {
                    newest.insert(slot, copy);
                }
            }
        }
        sorted(
            self.direct
                .into_iter()
                .chain(newest.into_values().map(|copy| copy.row)),
        )
    }
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

    /// A key's limits item, which holds its latest usage day's counters.
    async fn limits_item(
        &self,
        key_id: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(format!("key#{key_id}")))
            .key(SK, s(LIMITS_SK))
            .send()
            .await
            .map_err(|e| backend("GetItem on the limits table (usage)", &e))?;
        Ok(output.item)
    }

    /// Every key's rows and limits items: a Scan (the admin report only).
    async fn every_key_page(
        &self,
        range: (&AttributeValue, &AttributeValue),
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<Page, StoreError> {
        let output = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("#sk BETWEEN :from AND :to OR #sk = :limits")
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":from", range.0.clone())
            .expression_attribute_values(":to", range.1.clone())
            .expression_attribute_values(":limits", s(LIMITS_SK))
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
        let mut read = Read::default();
        if let Some(key_id) = &query.key_id
            && let Some(item) = self.limits_item(key_id).await?
        {
            read.item(&item, query);
        }
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let (items, next) = match &query.key_id {
                Some(key_id) => self.key_page(key_id, (&from, &to), start.take()).await?,
                None => self.every_key_page((&from, &to), start.take()).await?,
            };
            for item in &items {
                read.item(item, query);
            }
            if read.len() > 2 * MAX_REPORT_ROWS {
                return Err(too_many());
            }
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        let rows = read.rows();
        if rows.len() > MAX_REPORT_ROWS {
            return Err(too_many());
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_day;
    use crate::usage::total;

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
        let query = UsageQuery {
            key_id: None,
            from: day,
            to: day,
        };
        let mut read = Read::default();
        read.item(&item, &query);
        let rows = read.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].date, "2026-12-02");
        assert_eq!((rows[0].requests, rows[0].cost_nano_usd), (2, 1_500));
    }

    /// A day row with `direct` requests added straight to it and a copy of `copied` requests at
    /// `version`, and the limits item holding `held` requests of the same day at `writes`.
    fn report(direct: u64, copied: Option<(u64, u64)>, held: (u64, u64)) -> u64 {
        let day = parse_day("2026-12-02").unwrap_or_default();
        let mut row = HashMap::from([
            (SK.to_owned(), s(usage_sk(day, "m"))),
            (KEY_ID.to_owned(), s("key_1")),
            (MODEL.to_owned(), s("m")),
            (REQUESTS.to_owned(), n(direct)),
        ]);
        if let Some((requests, version)) = copied {
            row.insert(FOLDED_REQUESTS.to_owned(), n(requests));
            row.insert(FOLDED_VERSION.to_owned(), n(version));
        }
        let [requests, ..] = day_counter_names("m");
        let limits = HashMap::from([
            (PK.to_owned(), s("key#key_1")),
            (SK.to_owned(), s(LIMITS_SK)),
            (USAGE_DAY.to_owned(), n(day)),
            (USAGE_WRITES.to_owned(), n(held.1)),
            (requests, n(held.0)),
        ]);
        let query = UsageQuery {
            key_id: Some("key_1".into()),
            from: day,
            to: day,
        };
        let mut read = Read::default();
        read.item(&limits, &query);
        read.item(&row, &query);
        total(&read.rows()).requests
    }

    #[test]
    fn a_day_counts_its_direct_usage_and_its_newest_copy_once() {
        // Not copied yet: the limits item's counters.
        assert_eq!(report(1, None, (5, 5)), 6);
        // Copied, the limits item not emptied yet: counted once.
        assert_eq!(report(1, Some((5, 5)), (5, 5)), 6);
        // Settled again after a copy: the item's newer counters hold the copied ones.
        assert_eq!(report(1, Some((5, 5)), (7, 7)), 8);
    }
}
