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

/// The AWS SDK's HTTP client: hyper and rustls with ring, the platform's roots. One per process
/// (one connection pool for every SDK client), built at the first call.
pub fn aws_http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https()
        })
        .clone()
}

/// The AWS SDK configuration loader (`aws_config::defaults` at the latest behaviour version)
/// with [`aws_http_client`]: what every SDK config of the gateway is loaded with.
pub fn aws_config() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(aws_http_client())
}

