//! Bedrock's failures, classified: SDK errors, exceptions in HTTP responses and inside event
//! streams.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;

use crate::providers::{ProviderError, ProviderErrorKind};

/// A failed Converse, ConverseStream or InvokeModel call, with the status and `Retry-After` of its HTTP
/// response when there was one.
pub(super) fn call_error<E>(error: SdkError<E, HttpResponse>) -> ProviderError
where
    E: Exception + std::error::Error + 'static,
{
    let http = http_facts(
        error
            .raw_response()
            .map(|r| (r.status().as_u16(), r.headers().get("retry-after"))),
    );
    sdk_error(error, http)
}

/// The status and `Retry-After` of an HTTP error response.
fn http_facts(raw: Option<(u16, Option<&str>)>) -> Option<(u16, Option<u64>)> {
    raw.map(|(status, retry_after)| {
        (
            status,
            retry_after.and_then(|v| v.trim().parse::<u64>().ok()),
        )
    })
}

/// The exception's name, such as `ThrottlingException`.
pub(super) trait Exception: ProvideErrorMetadata {
    fn exception_code(&self) -> Option<&str> {
        self.code()
    }
}

/// HTTP errors name their exception in `x-amzn-errortype`, which the SDK reads as the code.
impl Exception for ConverseError {}
impl Exception for ConverseStreamError {}
impl Exception for InvokeModelError {}

/// Exceptions inside an event stream carry their name only in a frame header, which the SDK
/// turns into the variant, not into the code.
impl Exception for ConverseStreamOutputError {
    fn exception_code(&self) -> Option<&str> {
        match self {
            Self::ThrottlingException(_) => Some("ThrottlingException"),
            Self::ValidationException(_) => Some("ValidationException"),
            Self::ServiceUnavailableException(_) => Some("ServiceUnavailableException"),
            Self::InternalServerException(_) => Some("InternalServerException"),
            Self::ModelStreamErrorException(_) => Some("ModelStreamErrorException"),
            _ => self.code(),
        }
    }
}

/// Classifies an SDK failure. `http` is the status and `Retry-After` of the HTTP response, absent
/// for exceptions sent inside an event stream.
pub(super) fn sdk_error<E, R>(
    error: SdkError<E, R>,
    http: Option<(u16, Option<u64>)>,
) -> ProviderError
where
    E: Exception + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let kind = match &error {
        SdkError::ServiceError(context) => {
            let err = context.err();
            let (status, retry_after) = match http {
                Some((status, retry_after)) => (Some(status), retry_after),
                None => (None, None),
            };
            return service_error(
                err.exception_code(),
                err.message().unwrap_or("no message"),
                status,
                retry_after,
            );
        }
        SdkError::TimeoutError(_) => ProviderErrorKind::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ProviderErrorKind::Timeout,
        // Identity resolution fails before anything is sent: no credentials in the chain is a
        // deployment problem, like a rejected API key.
        SdkError::DispatchFailure(_) if caused_by_credentials(&error) => {
            ProviderErrorKind::Authentication
        }
        SdkError::DispatchFailure(_) => ProviderErrorKind::Connection,
        SdkError::ResponseError(_) => ProviderErrorKind::Protocol,
        SdkError::ConstructionFailure(_) => ProviderErrorKind::BadRequest,
        _ => ProviderErrorKind::Server,
    };
    ProviderError::new(kind, DisplayErrorContext(&error).to_string())
}

fn caused_by_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<CredentialsError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A Bedrock exception as a `ProviderError`, through the shared status classifier.
fn service_error(
    code: Option<&str>,
    message: &str,
    http_status: Option<u16>,
    retry_after: Option<u64>,
) -> ProviderError {
    let status = match code {
        // Statuses that would mislead the classifier: a quota is a rate limit (400 upstream), a
        // model's own failure is the upstream's fault (424), and a cold model is unavailable.
        Some("ServiceQuotaExceededException") => 429,
        Some("ModelErrorException" | "ModelStreamErrorException") => 502,
        Some("ModelNotReadyException") => 503,
        _ => match http_status {
            Some(status) if status >= 400 => status,
            // Exceptions inside an event stream carry no HTTP status.
            _ => match code {
                Some("ThrottlingException") => 429,
                Some("ValidationException") => 400,
                Some("AccessDeniedException") => 403,
                Some("ResourceNotFoundException") => 404,
                Some("ModelTimeoutException") => 408,
                Some("ServiceUnavailableException") => 503,
                _ => 500,
            },
        },
    };
    let text = match code {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    };
    // Bedrock has no error code for an over-long prompt, only a ValidationException's wording.
    let context = (status == 400 && is_context_overflow(message))
        .then(|| "context_length_exceeded".to_owned());
    ProviderError::from_status(status, text, context, None, retry_after)
}

fn is_context_overflow(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "too long",
        "context length",
        "context window",
        "maximum context",
        "too many input tokens",
        "too many tokens",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified() {
        let throttled = service_error(Some("ThrottlingException"), "slow down", Some(429), Some(3));
        assert_eq!(throttled.kind, ProviderErrorKind::RateLimited);
        assert_eq!(throttled.retry_after_secs, Some(3));
        for message in [
            "Input is too long for requested model.",
            "prompt is too long: 210000 tokens > 200000 maximum",
            "The input exceeds the model's context window",
        ] {
            let e = service_error(Some("ValidationException"), message, Some(400), None);
            assert_eq!(
                e.kind,
                ProviderErrorKind::ContextLengthExceeded,
                "{message}"
            );
        }
        let invalid = service_error(Some("ValidationException"), "bad role", Some(400), None);
        assert_eq!(invalid.kind, ProviderErrorKind::BadRequest);
        assert_eq!(invalid.message, "ValidationException: bad role");
        assert_eq!(invalid.code, None);
        for (code, status, kind) in [
            (
                "AccessDeniedException",
                403,
                ProviderErrorKind::Authentication,
            ),
            (
                "ResourceNotFoundException",
                404,
                ProviderErrorKind::NotFound,
            ),
            ("ModelTimeoutException", 408, ProviderErrorKind::Timeout),
            ("ModelNotReadyException", 429, ProviderErrorKind::Server),
            (
                "ServiceUnavailableException",
                503,
                ProviderErrorKind::Server,
            ),
            ("ModelErrorException", 424, ProviderErrorKind::Server),
            (
                "ServiceQuotaExceededException",
                400,
                ProviderErrorKind::RateLimited,
            ),
        ] {
            assert_eq!(
                service_error(Some(code), "x", Some(status), None).kind,
                kind,
                "{code}"
            );
        }
        // Exceptions inside a stream have no HTTP status: the code decides.
        for (code, kind) in [
            ("ThrottlingException", ProviderErrorKind::RateLimited),
            ("ValidationException", ProviderErrorKind::BadRequest),
            ("ModelStreamErrorException", ProviderErrorKind::Server),
            ("InternalServerException", ProviderErrorKind::Server),
        ] {
            assert_eq!(
                service_error(Some(code), "x", None, None).kind,
                kind,
                "{code}"
            );
        }
    }
}
