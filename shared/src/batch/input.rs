//! Batch input files: JSONL, one request per line
//! (`{"custom_id", "method": "POST", "url", "body"}`). The upload checks only that the file is
//! JSONL; the batch's `validating` step checks the requests and fails the whole batch with
//! OpenAI's `errors.data` (code, line, message) for what would fail every line the same way.
//! What depends on the line's content (an unknown model, one outside the key's scope, a provider
//! refusal) is that line's record in the error file instead.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use super::messages::MAX_ID_LEN;
use super::store::LineError;
use super::{MAX_LINE_BYTES, MAX_REQUESTS};
use crate::error::ApiError;

/// The endpoints a batch may target.
pub const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/embeddings"];

/// Validation stops collecting after this many errors (the batch fails either way).
const MAX_ERRORS: usize = 100;

/// The non-blank lines of a file with their 0-based index among the requests.
pub fn request_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
}

/// The upload's check: every line is a JSON object and there are at most `MAX_REQUESTS`.
/// Returns the number of lines.
pub fn check_jsonl(bytes: &[u8]) -> Result<u64, ApiError> {
    let mut count: u64 = 0;
    for (index, line) in request_lines(bytes).enumerate() {
        count += 1;
        if count > MAX_REQUESTS {
            return Err(ApiError::bad_request(format!(
                "The file has more than {MAX_REQUESTS} lines, the most a batch takes."
            ))
            .with_param("file"));
        }
        if !matches!(serde_json::from_slice::<Value>(line), Ok(Value::Object(_))) {
            return Err(ApiError::bad_request(format!(
                "The file is not valid JSONL: line {} is not a JSON object.",
                index + 1
            ))
            .with_param("file")
            .with_code("invalid_file_format"));
        }
    }
    if count == 0 {
        return Err(ApiError::bad_request("The file is empty.").with_param("file"));
    }
    Ok(count)
}

/// One request line.
#[derive(Debug, Deserialize)]
pub struct RequestLine {
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub body: Option<Value>,
}

/// Validates a batch's input for `endpoint`: the number of requests, or the errors that fail
/// the batch (at most `MAX_ERRORS`).
pub fn validate(bytes: &[u8], endpoint: &str) -> Result<u64, Vec<LineError>> {
    let mut errors = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut count: u64 = 0;
    let mut lines = Vec::new();
    for line in request_lines(bytes) {
        count += 1;
        if count > MAX_REQUESTS {
            break;
        }
        lines.push(line);
    }
    if count > MAX_REQUESTS {
        return Err(vec![LineError {
            code: "too_many_requests".into(),
            message: format!("The input file has more than {MAX_REQUESTS} requests."),
            param: None,
            line: None,
        }]);
    }
    if count == 0 {
        return Err(vec![LineError {
            code: "empty_file".into(),
            message: "The input file has no requests.".into(),
            param: None,
            line: None,
        }]);
    }
    // Parsed lines borrow their ids from `parsed`, kept alive for the duplicate check.
    let parsed: Vec<Result<RequestLine, String>> = lines
        .iter()
        .map(|line| {
            if line.len() > MAX_LINE_BYTES {
                return Err(format!(
                    "The request is {} bytes; a batch request may have at most {MAX_LINE_BYTES}.",
                    line.len()
                ));
            }
            serde_json::from_slice(line).map_err(|e| format!("The line is not a request: {e}"))
        })
        .collect();
    for (index, request) in parsed.iter().enumerate() {
        let mut error = |code: &str, line: u64, param: Option<&str>, message: String| {
            errors.push(LineError {
                code: code.to_owned(),
                message,
                param: param.map(str::to_owned),
                line: Some(line),
            });
        };
        let number = index as u64 + 1;
        let request = match request {
            Ok(request) => request,
            Err(message) => {
                let code = if message.contains("bytes") {
                    "request_too_large"
                } else {
                    "invalid_json_line"
                };
                error(code, number, None, message.clone());
                continue;
            }
        };
        match request.custom_id.as_deref() {
            None | Some("") => error(
                "missing_required_parameter",
                number,
                Some("custom_id"),
                "The request has no `custom_id`.".into(),
            ),
            Some(id) if id.len() > MAX_ID_LEN => error(
                "invalid_custom_id",
                number,
                Some("custom_id"),
                format!("`custom_id` is longer than {MAX_ID_LEN} characters."),
            ),
            Some(id) => {
                if !seen.insert(id) {
                    error(
                        "duplicate_custom_id",
                        number,
                        Some("custom_id"),
                        format!("The custom_id `{id}` appears more than once in the file."),
                    );
                }
            }
        }
        if request.method.as_deref() != Some("POST") {
            error(
                "invalid_method",
                number,
                Some("method"),
                "The request's `method` must be `POST`.".into(),
            );
        }
        if request.url.as_deref() != Some(endpoint) {
            error(
                "mismatched_url",
                number,
                Some("url"),
                format!(
                    "The request's `url` must be the batch's endpoint `{endpoint}` (one endpoint per batch)."
                ),
            );
        }
        if !matches!(request.body, Some(Value::Object(_))) {
            error(
                "missing_required_parameter",
                number,
                Some("body"),
                "The request's `body` must be a JSON object.".into(),
            );
        }
        if errors.len() >= MAX_ERRORS {
            break;
        }
    }
    if errors.is_empty() {
        Ok(count)
    } else {
        errors.truncate(MAX_ERRORS);
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, url: &str) -> String {
        format!(r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"m"}}}}"#)
    }

    #[test]
    fn valid_input_counts_its_requests_and_blank_lines_are_skipped() {
        let file = format!(
            "{}\n\n{}\r\n",
            line("a", "/v1/chat/completions"),
            line("b", "/v1/chat/completions")
        );
        assert_eq!(validate(file.as_bytes(), "/v1/chat/completions"), Ok(2));
        assert_eq!(check_jsonl(file.as_bytes()).unwrap(), 2);
    }

    #[test]
    fn whole_batch_errors_name_code_and_line() {
        let file = [
            line("a", "/v1/chat/completions"),
            line("a", "/v1/chat/completions"),
            line("c", "/v1/embeddings"),
            line("d", "/v1/chat/completions").replace("POST", "GET"),
            "{\"custom_id\":\"e\"".to_owned(),
        ]
        .join("\n");
        let errors = validate(file.as_bytes(), "/v1/chat/completions").unwrap_err();
        let found: Vec<(&str, Option<u64>)> =
            errors.iter().map(|e| (e.code.as_str(), e.line)).collect();
        assert_eq!(
            found,
            vec![
                ("duplicate_custom_id", Some(2)),
                ("mismatched_url", Some(3)),
                ("invalid_method", Some(4)),
                ("invalid_json_line", Some(5)),
            ]
        );
    }

    #[test]
    fn uploads_must_be_jsonl() {
        let error = check_jsonl(b"{\"a\":1}\nnot json\n").unwrap_err();
        assert!(error.message.contains("line 2"), "{}", error.message);
        assert!(check_jsonl(b"\n\n").is_err());
        assert!(check_jsonl(b"[1,2]").is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::{ENDPOINTS, check_jsonl, validate};
        use crate::api::parse_properties::{any_body, any_json, assert_client_error};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn input_files_are_counted_or_refused_line_by_line(
                lines in prop::collection::vec(prop_oneof![
                    any_body(),
                    any_json().prop_map(|body| serde_json::to_vec(&serde_json::json!({
                        "custom_id": "a", "method": "POST", "url": ENDPOINTS[0], "body": body,
                    })).unwrap_or_default()),
                ], 0..6),
            ) {
                let file = lines.join(&b'\n');
                assert_client_error(check_jsonl(&file))?;
                for endpoint in ENDPOINTS {
                    if let Err(errors) = validate(&file, endpoint) {
                        prop_assert!(!errors.is_empty());
                    }
                }
            }
        }
    }
}
