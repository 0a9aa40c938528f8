//! The QUIC endpoint gates talk to: the only part of the appliance that touches sockets.
//!
//! Mutual TLS 1.3 through rustls: a peer without a certificate from the configured gate CA is
//! refused in the handshake. The gate id and site are read once from the verified certificate
//! and travel with every request of the connection.
//!
//! One bidirectional stream carries one request: the gate writes a protobuf `Request` and
//! finishes its side; the server answers one `Response` and finishes. A stream that sends
//! more than the configured limit, takes too long, or does not decode is answered with a
//! typed refusal; a stream the gate resets is dropped. None of them touches the other streams
//! or gates.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use tracing::Instrument;

use crate::config::ServerConfig;
use crate::flows::{Appliance, Refusal, respond};
use crate::metrics;
use crate::pki::{self, GateIdentity};
use crate::proto::{self, Reason};

/// The ALPN protocol id: the protocol's name and version.
pub const ALPN: &[u8] = b"gatematch/1";

/// The QUIC application close and stop codes the appliance uses, all in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// The appliance is shutting down.
    Shutdown = 0,
    /// The peer's certificate did not name a gate.
    NoGateIdentity = 1,
    /// The request was longer than the configured limit; the rest is not read.
    RequestTooLarge = 2,
    /// The request was not finished in time.
    RequestTimedOut = 3,
}

impl From<CloseCode> for VarInt {
    fn from(code: CloseCode) -> VarInt {
        VarInt::from_u32(code as u32)
    }
}

/// What can stop the endpoint from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Per-stream limits.
#[derive(Clone, Copy, Debug)]
struct StreamLimits {
    max_message_bytes: usize,
    read_timeout: Duration,
}

/// Binds the endpoint described by `config` (port 0 picks a free port).
pub fn bind(config: &ServerConfig) -> Result<Endpoint, ServerError> {
    let server_config = tls::server_config(config)?;
    Endpoint::server(server_config, config.listen).map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })
}

/// Serves gates on `endpoint` until `shutdown` resolves, then closes every connection.
pub async fn serve(
    endpoint: Endpoint,
    config: &ServerConfig,
    appliance: Arc<Appliance>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = StreamLimits {
        max_message_bytes: config.max_message_bytes,
        read_timeout: Duration::from_millis(config.read_timeout_ms),
    };
    if let Ok(addr) = endpoint.local_addr() {
        tracing::info!(%addr, alpn = "gatematch/1", "listening for gates");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let appliance = Arc::clone(&appliance);
                tokio::spawn(connection(incoming, appliance, limits));
            }
            () = &mut shutdown => break,
        }
    }
    endpoint.close(CloseCode::Shutdown.into(), b"shutting down");
    endpoint.wait_idle().await;
    tracing::info!("endpoint closed");
}

async fn connection(incoming: quinn::Incoming, appliance: Arc<Appliance>, limits: StreamLimits) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            let reason = refusal_label(&error);
            metrics::handshake_refused(reason);
            tracing::warn!(%remote, reason, %error, "handshake refused");
            return;
        }
    };
    let Some(gate) = peer_identity(&connection) else {
        metrics::handshake_refused("no_gate_identity");
        tracing::warn!(%remote, "certificate names no gate; closing");
        connection.close(
            CloseCode::NoGateIdentity.into(),
            b"certificate names no gate",
        );
        return;
    };
    let gate = Arc::new(gate);
    let span = tracing::info_span!("gate", id = %gate.gate_id, site = %gate.site, %remote);
    async {
        tracing::info!("gate connected");
        metrics::gate_connected(true);
        loop {
            match connection.accept_bi().await {
                Ok((send, recv)) => {
                    let appliance = Arc::clone(&appliance);
                    let gate = Arc::clone(&gate);
                    tokio::spawn(stream(send, recv, appliance, gate, limits).in_current_span());
                }
                Err(reason) => {
                    tracing::info!(%reason, "gate disconnected");
                    break;
                }
            }
        }
        metrics::gate_connected(false);
    }
    .instrument(span)
    .await;
}

async fn stream(
    mut send: SendStream,
    mut recv: RecvStream,
    appliance: Arc<Appliance>,
    gate: Arc<GateIdentity>,
    limits: StreamLimits,
) {
    let received = Instant::now();
    let read = tokio::time::timeout(
        limits.read_timeout,
        recv.read_to_end(limits.max_message_bytes),
    );
    let response = match read.await {
        Err(_elapsed) => {
            tracing::warn!(
                timeout_ms = limits.read_timeout.as_millis() as u64,
                "request not finished in time"
            );
            let _ = recv.stop(CloseCode::RequestTimedOut.into());
            refusal(
                Refusal::malformed("the request was not finished in time"),
                "none",
            )
        }
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            tracing::warn!(
                limit_bytes = limits.max_message_bytes,
                "request over the size limit"
            );
            let _ = recv.stop(CloseCode::RequestTooLarge.into());
            let detail = format!(
                "the request is over the limit of {} bytes",
                limits.max_message_bytes
            );
            refusal(
                Refusal {
                    reason: Reason::TooLarge,
                    detail,
                },
                "none",
            )
        }
        Ok(Err(quinn::ReadToEndError::Read(error))) => {
            tracing::debug!(%error, "request stream broke off");
            return;
        }
        Ok(Ok(bytes)) => match proto::Request::decode(bytes.as_slice()) {
            Ok(request) => appliance.handle(&gate, request, received).await,
            Err(error) => {
                tracing::warn!(%error, "request does not decode");
                refusal(
                    Refusal::malformed(format!("the request does not decode: {error}")),
                    "none",
                )
            }
        },
    };
    if let Err(error) = send.write_all(&response.encode_to_vec()).await {
        tracing::debug!(%error, "gate went away before the answer");
        return;
    }
    let _ = send.finish();
}

/// A refusal made by the server before the request reached the appliance; counted here.
fn refusal(refusal: Refusal, operation: &'static str) -> proto::Response {
    let reason = crate::flows::reason_label(refusal.reason);
    metrics::request(operation, "refused", reason, Duration::ZERO);
    respond(0, Err(refusal))
}

fn peer_identity(connection: &quinn::Connection) -> Option<GateIdentity> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    pki::identity_of(certs.first()?.as_ref())
}

/// A short metric label for why a handshake failed.
fn refusal_label(error: &quinn::ConnectionError) -> &'static str {
    let text = error.to_string();
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        "unknown_issuer"
    } else if text.contains("no certificate") || text.contains("NoCertificates") {
        "no_certificate"
    } else if text.contains("alpn") || text.contains("application protocol") {
        "alpn"
    } else if matches!(error, quinn::ConnectionError::TimedOut) {
        "timed_out"
    } else {
        "other"
    }
}
