//! Usage and spend per key, UTC day and billed model: requests, input and output tokens and exact
//! cost in nano-dollars. Written where spend is settled (`Limiter::settle`: the embedded store's
//! `usage` table, or one item per key, day and model in the DynamoDB limits table), read here
//! for `GET /v1/usage`, `GET /v1/admin/usage` and `gateway-local usage`. A month's usage is the sum
//! of its days.

pub mod dynamo;
pub mod embedded;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::clock::{format_day, parse_day};
use crate::error::{ApiError, StoreError};
use crate::limits::from_nano_usd;

/// The longest range one report covers, in days: a year, leap or not.
pub const MAX_REPORT_DAYS: u32 = 366;
/// Most rows one report returns; a range with more is refused rather than cut short.
pub const MAX_REPORT_ROWS: usize = 100_000;

/// What one model was billed for in one request: its requests (the model that gave the answer
/// counts the request; a call billed before a retry counts none), tokens and cost.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelUsage {
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub nano_usd: i64,
}

/// What a settled request used: the tokens it counts against TPM, and its usage per billed model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Billed {
    pub tokens: u64,
    /// One line per model (`Settlement::settle` merges a retry answered by the same model): the
    /// DynamoDB limiter adds each model's line to attributes of one item in one UpdateItem,
    /// which refuses two additions to the same attribute.
    pub models: Vec<ModelUsage>,
}

impl Billed {
    /// One request served by one model.
    pub fn one(model: &str, input_tokens: u64, output_tokens: u64, nano_usd: i64) -> Self {
        Self {
            tokens: input_tokens + output_tokens,
            models: vec![ModelUsage {
                model: model.to_owned(),
                requests: 1,
                input_tokens,
                output_tokens,
                nano_usd,
            }],
        }
    }

    /// The request's whole cost, in nano-dollars: what its spend counters add.
    pub fn nano_usd(&self) -> i64 {
        self.models.iter().map(|m| m.nano_usd).sum()
    }
}

/// One row of a report: a key's usage of a model on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub key_id: String,
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Exact cost in nano-dollars (10^-9 USD).
    pub cost_nano_usd: i64,
}

impl UsageRow {
    pub fn cost_usd(&self) -> f64 {
        from_nano_usd(self.cost_nano_usd)
    }
}

/// Days `from..=to` (days since 1970-01-01) and optionally one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub key_id: Option<String>,
    pub from: u32,
    pub to: u32,
}

impl UsageQuery {
    /// The range from `YYYY-MM-DD` dates; without them, the current month up to `today`.
    pub fn parse(
        key_id: Option<String>,
        from: Option<&str>,
        to: Option<&str>,
        today: u32,
    ) -> Result<Self, ApiError> {
        let day = |text: Option<&str>, param: &str, default: u32| match text {
            None => Ok(default),
            Some(text) => parse_day(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{param}` must be a date as YYYY-MM-DD (UTC), from 1970-01-01 on."
                ))
                .with_param(param)
            }),
        };
        let to = day(to, "to", today)?;
        let month_start = parse_day(&format!("{}-01", &format_day(to)[..7])).unwrap_or(to);
        let from = day(from, "from", month_start)?;
        if from > to {
            return Err(ApiError::bad_request("`from` must not be after `to`.").with_param("from"));
        }
        if to - from >= MAX_REPORT_DAYS {
            return Err(ApiError::bad_request(format!(
                "A usage report covers at most {MAX_REPORT_DAYS} days; narrow `from`..`to`."
            ))
            .with_param("from"));
        }
        Ok(Self { key_id, from, to })
    }
}

/// Where usage is read from.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Rows of the query's range (and key), ordered by key, date and model.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
}

/// Rows sorted by key, date and model, rows of the same key, day and model added together.
pub fn sorted(rows: impl IntoIterator<Item = UsageRow>) -> Vec<UsageRow> {
    let mut merged: BTreeMap<(String, String, String), UsageRow> = BTreeMap::new();
    for row in rows {
        let slot = (row.key_id.clone(), row.date.clone(), row.model.clone());
        match merged.get_mut(&slot) {
            Some(sum) => {
                sum.requests += row.requests;
                sum.input_tokens += row.input_tokens;
                sum.output_tokens += row.output_tokens;
                sum.cost_nano_usd += row.cost_nano_usd;
            }
            None => {
                merged.insert(slot, row);
            }
        }
    }
    merged.into_values().collect()
}

/// A report as `GET /v1/usage` and `GET /v1/admin/usage` answer it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// Always `usage.report`.
    pub object: &'static str,
    /// The first and last day covered, `YYYY-MM-DD` (UTC).
    pub from: String,
    pub to: String,
    /// By key, day and model; the model is the one billed (after a fallback, the fallback).
    pub data: Vec<ReportRow>,
    pub total: UsageTotal,
}

/// A row with its cost in USD too.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportRow {
    #[serde(flatten)]
    pub row: UsageRow,
    /// `cost_nano_usd` in USD.
    pub cost_usd: f64,
}

impl UsageReport {
    pub fn new(query: &UsageQuery, rows: Vec<UsageRow>) -> Self {
        let total = total(&rows);
        Self {
            object: "usage.report",
            from: format_day(query.from),
            to: format_day(query.to),
            data: rows
                .into_iter()
                .map(|row| ReportRow {
                    cost_usd: row.cost_usd(),
                    row,
                })
                .collect(),
            total,
        }
    }
}

/// The report's rows added up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UsageTotal {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nano_usd: i64,
    /// `cost_nano_usd` in USD.
    pub cost_usd: f64,
}

pub fn total(rows: &[UsageRow]) -> UsageTotal {
    let mut total = UsageTotal::default();
    for row in rows {
        total.requests += row.requests;
        total.input_tokens += row.input_tokens;
        total.output_tokens += row.output_tokens;
        total.cost_nano_usd += row.cost_nano_usd;
    }
    total.cost_usd = from_nano_usd(total.cost_nano_usd);
    total
}

const COLUMNS: [&str; 8] = [
    "key_id",
    "date",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_nano_usd",
    "cost_usd",
];

fn cells(row: &UsageRow) -> [String; 8] {
    [
        row.key_id.clone(),
        row.date.clone(),
        row.model.clone(),
        row.requests.to_string(),
        row.input_tokens.to_string(),
        row.output_tokens.to_string(),
        row.cost_nano_usd.to_string(),
        format!("{:.9}", row.cost_usd()),
    ]
}

/// The rows as CSV (RFC 4180), a header line first.
pub fn to_csv(rows: &[UsageRow]) -> String {
    let field = |text: &str| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_owned()
        }
    };
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for row in rows {
        let line: Vec<String> = cells(row).iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The rows as an aligned text table, with a total line.
pub fn to_table(rows: &[UsageRow]) -> String {
    let sum = total(rows);
    let mut lines: Vec<[String; 8]> = rows.iter().map(cells).collect();
    lines.push([
        "total".to_owned(),
        String::new(),
        String::new(),
        sum.requests.to_string(),
        sum.input_tokens.to_string(),
        sum.output_tokens.to_string(),
        sum.cost_nano_usd.to_string(),
        format!("{:.9}", sum.cost_usd),
    ]);
    let mut widths = COLUMNS.map(str::len);
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = COLUMNS.map(str::to_owned);
    for line in std::iter::once(&header).chain(&lines) {
        let padded: Vec<String> = line
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                // Names left-aligned, numbers right-aligned.
                if column < 3 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, date: &str, model: &str, requests: u64, nano: i64) -> UsageRow {
        UsageRow {
            key_id: key.into(),
            date: date.into(),
            model: model.into(),
            requests,
            input_tokens: 10 * requests,
            output_tokens: requests,
            cost_nano_usd: nano,
        }
    }

    #[test]
    fn dates_parse_strictly_and_ranges_are_bounded() {
        let today = parse_day("2026-12-02").unwrap();
        let month = UsageQuery::parse(None, None, None, today).unwrap();
        assert_eq!(format_day(month.from), "2026-12-01");
        assert_eq!(month.to, today);
        let range = UsageQuery::parse(None, Some("2025-12-03"), Some("2026-12-02"), today).unwrap();
        assert_eq!(range.to - range.from, 364);
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-1-01",
            "20261201",
            "２０２６-12-01",
        ] {
            let error = UsageQuery::parse(None, Some(bad), None, today).unwrap_err();
            assert_eq!(error.status().as_u16(), 400, "{bad}");
        }
        assert!(UsageQuery::parse(None, Some("2024-02-29"), Some("2024-03-01"), today).is_ok());
        assert!(UsageQuery::parse(None, Some("2026-12-03"), Some("2026-12-02"), today).is_err());
        assert!(UsageQuery::parse(None, Some("2024-12-01"), Some("2026-12-02"), today).is_err());
    }

    #[test]
    fn reports_merge_sort_and_total_exactly() {
        let rows = sorted([
            row("k2", "2026-12-01", "m", 1, 7),
            row("k1", "2026-12-02", "m", 1, 3),
            row("k1", "2026-12-01", "m", 2, 5),
            row("k1", "2026-12-02", "m", 1, 4),
        ]);
        let order: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|r| (r.key_id.as_str(), r.date.as_str(), r.requests))
            .collect();
        assert_eq!(
            order,
            [
                ("k1", "2026-12-01", 2),
                ("k1", "2026-12-02", 2),
                ("k2", "2026-12-01", 1)
            ]
        );
        assert_eq!(total(&rows).cost_nano_usd, 19);
        assert_eq!(total(&rows).requests, 5);
    }

    #[test]
    fn csv_quotes_what_needs_it_and_the_table_totals() {
        let rows = [row("k1", "2026-12-01", "a,\"b\"", 2, 1_500)];
        assert_eq!(
            to_csv(&rows),
            "key_id,date,model,requests,input_tokens,output_tokens,cost_nano_usd,cost_usd\r\n\
             k1,2026-12-01,\"a,\"\"b\"\"\",2,20,2,1500,0.000001500\r\n"
        );
        let table = to_table(&rows);
        let last = table.lines().last().unwrap();
        assert!(
            last.starts_with("total") && last.ends_with("1500  0.000001500"),
            "{table}"
        );
    }
}
