//! TLS and QUIC transport settings for both ends: the appliance and the gates.
//!
//! The crypto provider is chosen here once for the whole binary (ring), and passed explicitly
//! to every rustls builder, so no process-wide default is ever needed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;

use super::ALPN;
use crate::config::ServerConfig;
use crate::pki::{self, PkiError};

/// What can be wrong with the TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("gate CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// The one crypto provider of the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pki::read_certificates(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The appliance's QUIC server configuration: TLS 1.3, client certificates required.
pub fn server_config(config: &ServerConfig) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    // TODO: gate certificates are not checked against a revocation list; rustls's verifier
    // takes CRLs, but no operator CRL source (file or distribution point) is configured yet.
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&config.gate_ca)?),
        Arc::clone(&provider),
    )
    .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pki::read_certificates(&config.certificate)?,
            pki::read_private_key(&config.private_key)?,
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            Duration::from_millis(config.idle_timeout_ms)
                .try_into()
                .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))),
        ))
        .max_concurrent_bidi_streams(config.max_streams_per_gate.into())
        .max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// A gate's QUIC client configuration, presenting `certificate` and trusting `server_ca`.
pub fn client_config(
    server_ca: &Path,
    certificate: &Path,
    private_key: &Path,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(server_ca)?)
        .with_client_auth_cert(
            pki::read_certificates(certificate)?,
            pki::read_private_key(private_key)?,
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    // Gates idle between travellers; the keep-alive holds the connection (and its handshake)
    // open so the next traveller pays no round trips for it.
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// A client configuration that presents no certificate (for tests of the refusal).
pub fn anonymous_client_config(server_ca: &Path) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(server_ca)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )))
}
