//! The usage routes: `GET /v1/usage` (the `usage` scope: the calling key's own usage) and
//! `GET /v1/admin/usage` (the `admin` scope: every key's, or one's, as JSON or CSV).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::handlers::AuthorizedKey;
use super::openapi::OpenAiErrors;
use crate::clock::{day_of, now_secs};
use crate::error::ApiError;
use crate::pipeline::{json_response, to_json_bytes};
use crate::state::Gateway;
use crate::usage::{UsageQuery, UsageReport, to_csv};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageParams {
    /// First day, `YYYY-MM-DD` (UTC); the first of `to`'s month when left out.
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC), at most 366 days after `from`; today when left out.
    to: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AdminUsageParams {
    /// First day, `YYYY-MM-DD` (UTC); the first of `to`'s month when left out.
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC), at most 366 days after `from`; today when left out.
    to: Option<String>,
    /// One key's id; every key's usage when left out.
    key: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

async fn report(gateway: &Gateway, query: &UsageQuery) -> Result<UsageReport, ApiError> {
    let store = gateway
        .usage
        .as_ref()
        .ok_or_else(|| ApiError::not_found("Usage reports are not served by this gateway."))?;
    let rows = store.usage(query).await.map_err(ApiError::from)?;
    Ok(UsageReport::new(query, rows))
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    summary = "The calling key's usage and spend by day and billed model (`usage` scope)",
    params(UsageParams),
    responses((status = 200, description = "The report: rows by day and model, and their total; costs in exact nano-dollars and in USD", body = UsageReport, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn own_usage(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(params) = params.map_err(bad_query)?;
        let query = UsageQuery::parse(
            Some(key.id.clone()),
            params.from.as_deref(),
            params.to.as_deref(),
            day_of(now_secs()),
        )?;
        let body = to_json_bytes(&report(&gateway, &query).await?)?;
        Ok::<_, ApiError>(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    get,
    path = "/v1/admin/usage",
    tag = "admin",
    summary = "Usage and spend by key, day and billed model, as JSON or CSV (`admin` scope)",
    params(AdminUsageParams),
    responses((status = 200, description = "The report (JSON), or with `format=csv` its rows as CSV: key_id, date, model, requests, input_tokens, output_tokens, cost_nano_usd, cost_usd", content((UsageReport = "application/json"), (String = "text/csv")), headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn admin_usage(
    State(gateway): State<Arc<Gateway>>,
    params: Result<Query<AdminUsageParams>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(params) = params.map_err(bad_query)?;
        let csv = match params.format.as_deref() {
            None | Some("json") => false,
            Some("csv") => true,
            Some(_) => {
                return Err(
                    ApiError::bad_request("`format` must be `json` or `csv`.").with_param("format")
                );
            }
        };
        let query = UsageQuery::parse(
            params.key.filter(|key| !key.is_empty()),
            params.from.as_deref(),
            params.to.as_deref(),
            day_of(now_secs()),
        )?;
        let report = report(&gateway, &query).await?;
        if csv {
            let rows: Vec<_> = report.data.into_iter().map(|r| r.row).collect();
            let mut response = to_csv(&rows).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            return Ok(response);
        }
        Ok(json_response(StatusCode::OK, to_json_bytes(&report)?))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
