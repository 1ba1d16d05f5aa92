//! One TLS configuration for every HTTPS client of drover's own (Rancher, the pager, IMDS):
//! the system's root certificates are loaded and parsed once per process.
//!
//! Each `reqwest::Client` left to itself builds a TLS config of its own, with its own copy
//! of the system's roots (about 85 KiB parsed, on Debian's ca-certificates) and its own
//! session cache: an idle `drover run` held five such copies (BENCHMARKS.md, 2026-12-03).
//! A rustls `ClientConfig` shares its verifier and session store through `Arc`s, so every
//! client handed a clone of this one shares the one set of roots. The AWS SDK's client
//! builds its own (see [`crate::aws`]), with a different TLS stack setup.

use std::sync::{Arc, OnceLock};

/// A clone of the process's TLS configuration for a `reqwest` client
/// (`ClientBuilder::tls_backend_preconfigured`), set up as `reqwest` sets up its own for
/// drover's features: the platform verifier over the system's roots, TLS 1.2 and 1.3,
/// HTTP/1.1 by ALPN, SNI on. An error (never a panic) when the system has no usable roots,
/// which `reqwest` would also refuse.
pub fn client_config() -> Result<rustls::ClientConfig, String> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

fn build() -> Result<rustls::ClientConfig, String> {
    // The provider the process installed, if any, else the one reqwest would pick.
    let provider = match rustls::crypto::CryptoProvider::get_default() {
        Some(installed) => installed.clone(),
        None => default_provider()?,
    };
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| format!("the system's root certificates: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(feature = "tls")]
fn default_provider() -> Result<Arc<rustls::crypto::CryptoProvider>, String> {
    Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A build without the `tls` feature (the fuzz targets') has no crypto to offer.
#[cfg(not(feature = "tls"))]
fn default_provider() -> Result<Arc<rustls::crypto::CryptoProvider>, String> {
    Err("this drover was built without TLS (the `tls` feature)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    /// A handshake in memory between a client on the shared config and a server whose
    /// certificate no system root signed: the client must refuse it.
    #[test]
    fn the_shared_config_verifies_servers_against_the_system_roots() {
        let client = match client_config() {
            Ok(config) => config,
            // A machine without CA certificates builds no config, as reqwest would not.
            Err(e) => return eprintln!("no TLS config on this machine: {e}"),
        };
        assert_eq!(client.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(client.enable_sni);
        // Built once: every clone carries the same provider (and verifier, and store).
        let again = client_config().expect("built once, built again");
        assert!(Arc::ptr_eq(
            client.crypto_provider(),
            again.crypto_provider()
        ));

        let cert = rcgen::generate_simple_self_signed(vec!["rancher.example.com".into()])
            .expect("a self-signed certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(client.crypto_provider().clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
            .expect("server config");
        let name = ServerName::try_from("rancher.example.com").expect("a name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let mut refused = None;
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).expect("client writes");
            s.read_tls(&mut wire.as_slice()).expect("server reads");
            let _ = s.process_new_packets();
            let mut wire = Vec::new();
            s.write_tls(&mut wire).expect("server writes");
            c.read_tls(&mut wire.as_slice()).expect("client reads");
            if let Err(e) = c.process_new_packets() {
                refused = Some(e);
                break;
            }
        }
        match refused {
            Some(rustls::Error::InvalidCertificate(_)) => {}
            other => panic!("an untrusted server was not refused: {other:?}"),
        }
    }
}
