//! The crypto provider behind every reqwest client, in a process of its own: nothing else here
//! installs one first (in the library's unit tests, an AWS SDK client or another test may already
//! have), so a `gateway::tls` helper that stopped installing ring fails this test every time.

#[test]
fn the_first_reqwest_client_of_a_process_gets_ring_from_the_helpers() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    let _client = gateway::tls::http_client();
    let _built = gateway::tls::http_client_builder().build().unwrap();
    let provider = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
    // ring's cipher suites, not another provider's.
    let ring = rustls::crypto::ring::default_provider();
    assert_eq!(
        provider
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>(),
        ring.cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>()
    );
}
