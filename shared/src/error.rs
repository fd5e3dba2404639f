//! Errors at the edge, in OpenAI's error body and with the status codes the OpenAI SDKs map to
//! their typed exceptions. [`ErrorKind::status_and_type`] is the one table from a failure to its
//! HTTP status and OpenAI error `type`; conversions elsewhere only pick a kind.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong, in the classes a client tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for something the gateway does not serve.
    BadRequest,
    /// No key, or a key that is unknown, revoked or expired.
    Unauthorized,
    /// The key may not use this model or route.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The client did not send its body in time.
    RequestTimeout,
    /// The thing to create exists already.
    Conflict,
    PayloadTooLarge,
    /// A rate limit or budget of the key, or of a provider, refused the request for now.
    RateLimited,
    /// The gateway's own configuration or code failed.
    Internal,
    /// A provider failed or answered with something unusable.
    BadGateway,
    /// A store or every deployment is unavailable for now.
    Unavailable,
    /// The request's deadline passed.
    Timeout,
}

/// OpenAI's error `type` values the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Permission,
    RateLimit,
    Api,
    Timeout,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Permission => "permission_error",
            Self::RateLimit => "rate_limit_error",
            Self::Api => "api_error",
            Self::Timeout => "timeout",
        }
    }
}

impl ErrorKind {
    /// The one table: the HTTP status and OpenAI error type of each kind. 401 is an
    /// `invalid_request_error` (code `invalid_api_key`), as OpenAI answers it.
    pub fn status_and_type(self) -> (StatusCode, ErrorType) {
        use ErrorType::{Api, InvalidRequest, Permission, RateLimit, Timeout};
        match self {
            Self::BadRequest => (StatusCode::BAD_REQUEST, InvalidRequest),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, InvalidRequest),
            Self::Forbidden => (StatusCode::FORBIDDEN, Permission),
            Self::NotFound => (StatusCode::NOT_FOUND, InvalidRequest),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, InvalidRequest),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, InvalidRequest),
            Self::Conflict => (StatusCode::CONFLICT, InvalidRequest),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, InvalidRequest),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, RateLimit),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, Api),
            Self::BadGateway => (StatusCode::BAD_GATEWAY, Api),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Api),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, Timeout),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after_secs: Option<u64>,
    /// What failed underneath, for the log only (never sent): written once, when the error
    /// becomes a response.
    pub cause: Option<String>,
}

/// OpenAI's error body, every error response's shape.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_secs: None,
            cause: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status_and_type().0
    }

    pub fn error_type(&self) -> ErrorType {
        self.kind.status_and_type().1
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message).with_code("invalid_api_key")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::not_found(format!(
            "The model `{model}` does not exist or you do not have access to it."
        ))
        .with_code("model_not_found")
        .with_param("model")
    }

    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(ErrorKind::RateLimited, message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// The JSON body, also used for SSE error events in the middle of a stream.
    pub fn body_json(&self) -> String {
        let body = ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.error_type().as_str(),
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#
                .to_owned()
        })
    }

    /// Logs the cause of a gateway-side failure; client mistakes are not the operator's concern.
    fn log_cause(&self) {
        if let Some(cause) = &self.cause {
            let status = self.status().as_u16();
            if self.status().is_server_error() {
                tracing::error!(status, message = %self.message, %cause, "request failed");
            } else {
                tracing::info!(status, message = %self.message, %cause, "request refused");
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status().as_u16(),
            self.error_type().as_str(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// An error's text followed by each of its causes, `": "`-separated: libraries such as reqwest
/// put the reason (a refused connection, a bad certificate) only in a cause. For logs only.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A request body the local server stopped waiting for (`server.body_read_timeout_ms`, or under
/// `server.min_body_bytes_per_s`); the handler reading the body answers it with a 408.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTimeout {
    /// Not complete within the body-read timeout.
    Total,
    /// Arriving slower than the minimum rate.
    TooSlow,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Total => {
                "The request body was not received within the server's body-read timeout."
            }
            Self::TooSlow => "The request body arrived slower than the server's minimum rate.",
        })
    }
}

impl std::error::Error for BodyTimeout {}

impl From<BodyTimeout> for ApiError {
    fn from(timeout: BodyTimeout) -> Self {
        Self::new(ErrorKind::RequestTimeout, timeout.to_string()).with_code("request_timeout")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_cause();
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body_json(),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// What a store (keys, limits, cache) reports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The caller's data cannot be stored as given (the message says why, in the client's
    /// terms): a 400, not a storage failure.
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => {
                Self::new(ErrorKind::Conflict, format!("{what} already exists"))
            }
            StoreError::Invalid(message) => Self::bad_request(message),
            StoreError::Backend(_) => {
                Self::unavailable("The gateway's storage is unavailable; try again shortly.")
                    .with_cause(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_error_carries_retry_after_and_openai_shape() {
        let response = ApiError::rate_limited("slow down", 7).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let body: serde_json::Value =
            serde_json::from_str(&ApiError::rate_limited("slow down", 7).body_json()).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["message"], "slow down");
        assert!(body["error"]["param"].is_null());
    }

    #[test]
    fn data_a_store_refuses_is_a_400_naming_why() {
        let error = ApiError::from(StoreError::Invalid(
            "the collection's vectors have 3 dimensions; this vector has 2".to_owned(),
        ));
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.error_type(), ErrorType::InvalidRequest);
        assert_eq!(
            error.message,
            "the collection's vectors have 3 dimensions; this vector has 2"
        );
    }

    #[test]
    fn a_store_failure_is_a_503_whose_cause_stays_out_of_the_body() {
        let error = ApiError::from(StoreError::Backend(
            "dynamodb.us-east-1.amazonaws.com: connection reset".to_owned(),
        ));
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            error
                .cause
                .as_deref()
                .is_some_and(|c| c.contains("amazonaws"))
        );
        let body: serde_json::Value = serde_json::from_str(&error.body_json()).unwrap();
        assert_eq!(body["error"]["type"], "api_error");
        assert!(!error.body_json().contains("amazonaws"), "{body}");

        let conflict = ApiError::from(StoreError::Conflict("key `ci`".to_owned()));
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        assert_eq!(conflict.error_type(), ErrorType::InvalidRequest);
        assert_eq!(conflict.message, "key `ci` already exists");
    }
}
