//! Every HTTPS client of the gateway, on rustls with ring as the crypto provider.
//!
//! The crates' default TLS (the AWS SDK's `default-https-client`, reqwest's `rustls` feature) is
//! rustls over aws-lc, C code that added about 1.5 MB to every function binary and a slow cmake
//! build. Without it nothing brings a crypto provider of its own, so:
//!
//! - an AWS SDK client has no HTTP client at all ("no HTTP client" at its first call) unless its
//!   config came from [`aws_config`], or had [`aws_http_client`] set on it;
//! - reqwest panics building a client unless a process-wide default provider is installed:
//!   [`http_client`] and [`http_client_builder`] install ring first, and the workspace's clippy
//!   configuration forbids `reqwest::Client::new` and `reqwest::Client::builder` everywhere else.
//!
//! Certificates are checked against the platform's roots, as before: rustls-native-certs for the
//! AWS SDK, rustls-platform-verifier for reqwest.

use std::sync::OnceLock;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
// The SDK crates re-export the type aws-smithy-runtime-api defines; any of them names it.
pub use aws_sdk_dynamodb::config::SharedHttpClient;

/// Installs ring as the process's default rustls crypto provider, which reqwest (and Redis over
/// TLS) build their TLS configuration with. Idempotent: an earlier install (this one, from
/// another thread) is kept.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is the aim.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder, with the crypto provider installed first. Every reqwest client of
/// the gateway starts here.
#[allow(clippy::disallowed_methods)]
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A reqwest client with the default settings (`reqwest::Client::new()`), with the crypto
/// provider installed first.
#[allow(clippy::disallowed_methods)]
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

/// The AWS SDK's HTTP client: hyper and rustls with ring, the platform's roots. Built as the
/// SDK builds its default client (aws-smithy-runtime's `default_https_client`) but for the
/// crypto provider: the SDK's connector settings and sleep, and a proxy from the standard
/// environment variables (`HTTPS_PROXY`, `NO_PROXY`...). One per process (one connection pool
/// for every SDK client), built at the first call.
pub fn aws_http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new().build_with_connector_fn(
                |settings, runtime_components| {
                    let mut connector = aws_smithy_http_client::ConnectorBuilder::default()
                        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
                    connector.set_connector_settings(settings.cloned());
                    if let Some(components) = runtime_components {
                        connector.set_sleep_impl(components.sleep_impl());
                    }
                    connector.set_proxy_config(Some(ProxyConfig::from_env()));
                    connector.build()
                },
            )
        })
        .clone()
}

/// The AWS SDK configuration loader (`aws_config::defaults` at the latest behaviour version)
/// with [`aws_http_client`]: what every SDK config of the gateway is loaded with.
pub fn aws_config() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(aws_http_client())
}

#[cfg(test)]
mod tests {
    //! Real TLS handshakes against a loopback server whose certificate (for `localhost`) is
    //! signed by a test CA (`test-ca.der`; certificates generated with openssl, valid to 2126).

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, mpsc};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;
    use crate::error::with_causes;

    const TEST_CA: &[u8] = include_bytes!("test-ca.der");
    const LOCALHOST_CERT: &[u8] = include_bytes!("test-localhost.der");
    const LOCALHOST_KEY: &[u8] = include_bytes!("test-localhost.key.der");

    /// A TLS server on a loopback port that answers every request `200 ok`, its own crypto
    /// provider (not the process default) on a thread of its own. Each connection's outcome
    /// (`Ok` or the handshake or read error) is sent to the receiver.
    fn tls_server() -> (u16, mpsc::Receiver<Result<(), String>>) {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(LOCALHOST_CERT.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(LOCALHOST_KEY.to_vec())),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (outcomes, received) = mpsc::channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let connection = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                let outcome = loop {
                    match tls.read(&mut buffer) {
                        Ok(0) => break Err("closed before a whole request".to_owned()),
                        Ok(n) => {
                            request.extend_from_slice(&buffer[..n]);
                            if request.windows(4).any(|w| w == b"\r\n\r\n") {
                                break tls
                                    .write_all(
                                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\
                                          connection: close\r\n\r\nok",
                                    )
                                    .and_then(|()| tls.flush())
                                    .map_err(|e| e.to_string());
                            }
                        }
                        Err(error) => break Err(error.to_string()),
                    }
                };
                tls.conn.send_close_notify();
                let _ = tls.flush();
                if outcomes.send(outcome).is_err() {
                    return;
                }
            }
        });
        (port, received)
    }

    #[tokio::test]
    async fn reqwest_completes_a_handshake_with_a_server_it_trusts() {
        let (port, outcomes) = tls_server();
        let client = http_client_builder()
            .tls_certs_only([reqwest::Certificate::from_der(TEST_CA).unwrap()])
            .build()
            .unwrap();
        let response = client
            .get(format!("https://localhost:{port}/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
        assert_eq!(outcomes.recv().unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn reqwest_refuses_a_certificate_the_platform_roots_do_not_vouch_for() {
        let (port, outcomes) = tls_server();
        let error = http_client()
            .get(format!("https://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let text = with_causes(&error);
        assert!(text.contains("certificate"), "{text}");
        // The server saw the handshake fail, at the client's alert: no request was sent.
        let outcome = outcomes.recv().unwrap().unwrap_err();
        assert!(outcome.contains("alert"), "{outcome}");
    }

    #[tokio::test]
    async fn the_aws_sdk_client_refuses_a_certificate_the_platform_roots_do_not_vouch_for() {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
        let (port, outcomes) = tls_server();
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("https://localhost:{port}"))
            .http_client(aws_http_client())
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build();
        let error = aws_sdk_dynamodb::Client::from_conf(config)
            .list_tables()
            .send()
            .await
            .unwrap_err();
        let text = format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(&error)
        );
        assert!(text.contains("certificate"), "{text}");
        let outcome = outcomes.recv().unwrap().unwrap_err();
        assert!(outcome.contains("alert"), "{outcome}");
    }
}
