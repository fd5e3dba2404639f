//! A failed provider call: its class, whether a retry could help, and what the client sees of
//! it. Every provider kind classifies its failures here.

use super::redact;
use crate::error::{ApiError, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// The request is wrong in a way a retry cannot fix.
    BadRequest,
    ContextLengthExceeded,
    ContentPolicy,
    /// The provider rejected the gateway's own credential: a deployment problem, not the client's.
    Authentication,
    NotFound,
    RateLimited,
    /// 5xx or overload.
    Server,
    Timeout,
    Connection,
    /// The provider answered something that is not its documented format.
    Protocol,
}

/// A failed provider call. Its `message` and `detail` are for the log, which may name URLs and
/// quote the upstream; what the client sees is made by [`ProviderError::to_api_error`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    /// What went wrong. For a client mistake, the provider's reason, which the client sees
    /// scrubbed of anything that locates the upstream.
    pub message: String,
    /// Raw context for the log only, such as an error body that is not an error object.
    pub detail: Option<String>,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

/// Where a provider error came from, in the terms the client knows, and the upstream's own name
/// for the model, which the client must not see.
#[derive(Debug, Clone, Copy)]
pub struct ErrorSource<'a> {
    /// The provider's name in the config.
    pub provider: &'a str,
    /// The public model name.
    pub model: &'a str,
    /// The deployment's model name upstream (an Azure deployment, a Bedrock model id).
    pub upstream_model: &'a str,
}

/// Most bytes of an upstream error body kept for the log.
const MAX_DETAIL_BYTES: usize = 2048;

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            detail: None,
            status: None,
            code: None,
            param: None,
            retry_after_secs: None,
        }
    }

    /// The error blamed on one request parameter, which the client sees.
    pub(crate) fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// An HTTP error whose body is not the vendor's error object (a proxy's page, say): the
    /// status classifies it, the body goes to the log only.
    pub(crate) fn from_unparsed_body(status: u16, body: &[u8], retry_after: Option<u64>) -> Self {
        let mut error = Self::from_status(
            status,
            format!("Upstream answered HTTP {status} without an error object."),
            None,
            None,
            retry_after,
        );
        let end = body.len().min(MAX_DETAIL_BYTES);
        error.detail = Some(String::from_utf8_lossy(body.get(..end).unwrap_or(body)).into_owned());
        error
    }

    /// Classifies an upstream HTTP error from its status and the fields of its error body.
    pub fn from_status(
        status: u16,
        message: String,
        code: Option<String>,
        param: Option<String>,
        retry_after_secs: Option<u64>,
    ) -> Self {
        let lower = message.to_ascii_lowercase();
        let code_is = |c: &str| code.as_deref() == Some(c);
        let kind = match status {
            401 | 403 => ProviderErrorKind::Authentication,
            404 => ProviderErrorKind::NotFound,
            408 => ProviderErrorKind::Timeout,
            429 => ProviderErrorKind::RateLimited,
            // Some providers and proxies refuse a bad or missing key with a plain 400: that is
            // the gateway's credential, never the client's business.
            400..=499 if mentions_credentials(&lower) => ProviderErrorKind::Authentication,
            400..=499
                if code_is("context_length_exceeded")
                    || lower.contains("maximum context length")
                    || lower.contains("prompt is too long") =>
            {
                ProviderErrorKind::ContextLengthExceeded
            }
            400..=499
                if code_is("content_filter")
                    || code_is("content_policy_violation")
                    || lower.contains("content policy")
                    || lower.contains("content management policy") =>
            {
                ProviderErrorKind::ContentPolicy
            }
            400..=499 => ProviderErrorKind::BadRequest,
            _ => ProviderErrorKind::Server,
        };
        Self {
            kind,
            message,
            detail: None,
            status: Some(status),
            code,
            param,
            retry_after_secs,
        }
    }

    /// Whether another attempt could succeed: rate limits, 5xx, timeouts and broken connections.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Server
                | ProviderErrorKind::Timeout
                | ProviderErrorKind::Connection
        )
    }

    /// The error as the client sees it: the provider by its config name and the class of
    /// failure. The client's own mistakes keep the provider's reason (scrubbed of URLs, hosts
    /// and the upstream's model name); the gateway's problems (credentials, outages, garbage)
    /// become 502/503/504 that quote nothing from upstream. The details are for the log, which
    /// the caller writes.
    pub fn to_api_error(&self, source: &ErrorSource<'_>) -> ApiError {
        let provider = source.provider;
        let gateway_fault =
            |kind, what: String| ApiError::new(kind, format!("Provider `{provider}` {what}"));
        let reason = || redact::client_text(&self.message, source.upstream_model, source.model);
        let mut error = match self.kind {
            ProviderErrorKind::BadRequest => ApiError::bad_request(reason()),
            ProviderErrorKind::ContextLengthExceeded => {
                ApiError::bad_request(reason()).with_code("context_length_exceeded")
            }
            ProviderErrorKind::ContentPolicy => {
                ApiError::bad_request(reason()).with_code("content_policy_violation")
            }
            ProviderErrorKind::RateLimited => {
                let retry_after = self.retry_after_secs.unwrap_or(1);
                ApiError::rate_limited(
                    format!(
                        "Provider `{provider}` is rate limiting the gateway; retry after \
                         {retry_after} s."
                    ),
                    retry_after,
                )
            }
            ProviderErrorKind::Authentication => gateway_fault(
                ErrorKind::BadGateway,
                "refused the gateway's credentials: a gateway configuration problem, not the \
                 request's."
                    .to_owned(),
            ),
            ProviderErrorKind::NotFound => gateway_fault(
                ErrorKind::BadGateway,
                format!(
                    "does not know the model configured for `{}`: a gateway configuration \
                     problem, not the request's.",
                    source.model
                ),
            ),
            ProviderErrorKind::Server => gateway_fault(
                ErrorKind::BadGateway,
                match self.status {
                    Some(status) => format!("failed (HTTP {status})."),
                    None => "failed.".to_owned(),
                },
            ),
            ProviderErrorKind::Connection => gateway_fault(
                ErrorKind::BadGateway,
                "is unreachable or dropped the connection.".to_owned(),
            ),
            ProviderErrorKind::Protocol => gateway_fault(
                ErrorKind::BadGateway,
                "sent a response the gateway cannot read.".to_owned(),
            ),
            ProviderErrorKind::Timeout => {
                gateway_fault(ErrorKind::Timeout, "timed out.".to_owned())
            }
        };
        if matches!(
            self.kind,
            ProviderErrorKind::BadRequest
                | ProviderErrorKind::ContextLengthExceeded
                | ProviderErrorKind::ContentPolicy
        ) {
            if let Some(code) = &self.code {
                error.code = Some(code.clone());
            }
            error.param.clone_from(&self.param);
        }
        error
    }
}

/// Whether an upstream refusal is about the gateway's credential rather than the request.
fn mentions_credentials(lower_message: &str) -> bool {
    [
        "api key",
        "api-key",
        "apikey",
        "credential",
        "security token",
        "access key",
        "authorization header",
    ]
    .iter()
    .any(|phrase| lower_message.contains(phrase))
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        match &self.detail {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ProviderError {}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const SOURCE: ErrorSource<'static> = ErrorSource {
        provider: "azure",
        model: "azure-gpt",
        upstream_model: "my-deployment",
    };

    #[test]
    fn upstream_errors_are_classified_by_status_and_code() {
        let ctx = ProviderError::from_status(
            400,
            "This model's maximum context length is 8192 tokens".into(),
            Some("context_length_exceeded".into()),
            Some("messages".into()),
            None,
        );
        assert_eq!(ctx.kind, ProviderErrorKind::ContextLengthExceeded);
        assert!(!ctx.is_retryable());
        let api = ctx.to_api_error(&SOURCE);
        assert_eq!(api.status(), StatusCode::BAD_REQUEST);
        assert_eq!(api.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(api.param.as_deref(), Some("messages"));
        assert_eq!(
            api.message,
            "This model's maximum context length is 8192 tokens"
        );

        let limited = ProviderError::from_status(429, "slow".into(), None, None, Some(2));
        assert!(limited.is_retryable());
        assert_eq!(limited.to_api_error(&SOURCE).retry_after_secs, Some(2));

        let auth = ProviderError::from_status(401, "bad key".into(), None, None, None);
        assert_eq!(auth.to_api_error(&SOURCE).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            ProviderError::from_status(503, "down".into(), None, None, None).kind,
            ProviderErrorKind::Server
        );
        // A refusal of the gateway's key is the gateway's problem whatever the status says.
        let key_in_400 = ProviderError::from_status(
            400,
            "Invalid API key provided: sk-live-abc".into(),
            None,
            None,
            None,
        );
        assert_eq!(key_in_400.kind, ProviderErrorKind::Authentication);
    }

    #[test]
    fn gateway_faults_name_the_provider_and_the_class_and_quote_nothing_upstream() {
        let url = "http://10.1.2.3:8443/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21";
        let cases = [
            (
                ProviderError::new(
                    ProviderErrorKind::Connection,
                    format!("error sending request for url ({url}): connection refused"),
                ),
                StatusCode::BAD_GATEWAY,
                "Provider `azure` is unreachable or dropped the connection.",
            ),
            (
                ProviderError::new(ProviderErrorKind::Timeout, format!("timeout at {url}")),
                StatusCode::GATEWAY_TIMEOUT,
                "Provider `azure` timed out.",
            ),
            (
                ProviderError::from_status(
                    401,
                    "Incorrect API key provided: sk-live-1234. You can find your API key at https://platform.openai.com/account/api-keys.".into(),
                    Some("invalid_api_key".into()),
                    None,
                    None,
                ),
                StatusCode::BAD_GATEWAY,
                "Provider `azure` refused the gateway's credentials: a gateway configuration problem, not the request's.",
            ),
            (
                ProviderError::from_status(
                    404,
                    "The API deployment my-deployment for this resource does not exist.".into(),
                    Some("DeploymentNotFound".into()),
                    None,
                    None,
                ),
                StatusCode::BAD_GATEWAY,
                "Provider `azure` does not know the model configured for `azure-gpt`: a gateway configuration problem, not the request's.",
            ),
            (
                ProviderError::from_unparsed_body(502, b"<html>nginx at 10.0.0.7</html>", None),
                StatusCode::BAD_GATEWAY,
                "Provider `azure` failed (HTTP 502).",
            ),
            (
                ProviderError::from_status(
                    429,
                    "Rate limit reached for my-deployment in organization org-123".into(),
                    None,
                    None,
                    Some(3),
                ),
                StatusCode::TOO_MANY_REQUESTS,
                "Provider `azure` is rate limiting the gateway; retry after 3 s.",
            ),
        ];
        for (error, status, message) in cases {
            let api = error.to_api_error(&SOURCE);
            assert_eq!(
                (api.status(), api.message.as_str()),
                (status, message),
                "{error}"
            );
            assert!(api.code.is_none() && api.param.is_none(), "{error}");
        }
    }

    #[test]
    fn client_mistakes_keep_the_reason_without_what_locates_the_upstream() {
        let error = ProviderError::from_status(
            400,
            "Invalid value for 'model': 'my-deployment' (see https://internal.example.com/docs)."
                .into(),
            Some("invalid_value".into()),
            Some("model".into()),
            None,
        );
        let api = error.to_api_error(&SOURCE);
        assert_eq!(api.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            api.message,
            "Invalid value for 'model': 'azure-gpt' (see [redacted])."
        );
        assert_eq!(api.code.as_deref(), Some("invalid_value"));
        // A refusal without an error object gives no reason rather than the body.
        let bare = ProviderError::from_unparsed_body(400, b"<html>proxy 10.0.0.7</html>", None);
        assert_eq!(bare.kind, ProviderErrorKind::BadRequest);
        let api = bare.to_api_error(&SOURCE);
        assert_eq!(
            api.message,
            "Upstream answered HTTP 400 without an error object."
        );
        // The log keeps it.
        assert!(bare.to_string().contains("proxy 10.0.0.7"));
    }
}
