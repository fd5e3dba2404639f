//! Provider credentials on AWS: one Secrets Manager secret holding a JSON object that maps the
//! names the config's `api_key_env` fields use to their values, read once per container. The
//! credentials never pass through plain-text parameters or the function's environment.

use std::collections::HashMap;

use aws_sdk_secretsmanager::error::DisplayErrorContext;

/// Reads the secret `arn`: `{"OPENAI_API_KEY": "sk-...", "ANTHROPIC_API_KEY": "..."}`. An empty
/// secret (the template's placeholder) means no credentials.
pub async fn provider_credentials(
    sdk_config: &aws_config::SdkConfig,
    arn: &str,
) -> Result<HashMap<String, String>, String> {
    let client = aws_sdk_secretsmanager::Client::new(sdk_config);
    let secret = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot read the provider secret: {}",
                DisplayErrorContext(e)
            )
        })?;
    parse_credentials(secret.secret_string().unwrap_or_default())
}

fn parse_credentials(text: &str) -> Result<HashMap<String, String>, String> {
    if text.trim().is_empty() {
        return Ok(HashMap::new());
    }
    serde_json::from_str(text).map_err(|_| {
        "the provider secret must be a JSON object of strings, such as \
         {\"OPENAI_API_KEY\": \"sk-...\"}"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_a_json_object_of_strings() {
        let parsed = parse_credentials(r#"{"OPENAI_API_KEY": "sk-1", "OTHER": "x"}"#).unwrap();
        assert_eq!(parsed["OPENAI_API_KEY"], "sk-1");
        assert!(parse_credentials("").unwrap().is_empty());
        let error = parse_credentials(r#"{"OPENAI_API_KEY": 5}"#).unwrap_err();
        assert!(!error.contains('5'), "never echo secret contents: {error}");
        assert!(parse_credentials("sk-plain").is_err());
    }
}
