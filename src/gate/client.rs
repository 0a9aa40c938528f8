//! A gate's side of the protocol: one QUIC connection, one stream per request.

use std::net::SocketAddr;
use std::path::Path;

use prost::Message;
use quinn::Endpoint;

use crate::proto;
use crate::server::tls::{self, TlsError};

/// Largest response a gate reads, in bytes.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// What can fail on the gate's side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be opened.
    #[error("cannot open a local socket: {0}")]
    Socket(std::io::Error),
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was refused (for example in the TLS handshake).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The request could not be sent.
    #[error("send: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was closed before the request was sent.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// The answer could not be read.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadToEndError),
    /// The answer did not decode.
    #[error("answer does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// One gate's connection to the appliance.
pub struct GateClient {
    endpoint: Endpoint,
    connection: quinn::Connection,
}

impl GateClient {
    /// Connects to `server` (verified as `server_name`) presenting the gate certificate.
    pub async fn connect(
        server: SocketAddr,
        server_name: &str,
        server_ca: &Path,
        certificate: &Path,
        private_key: &Path,
    ) -> Result<GateClient, GateError> {
        let config = tls::client_config(server_ca, certificate, private_key)?;
        Self::connect_with(server, server_name, config).await
    }

    /// Connects with a ready client configuration.
    pub async fn connect_with(
        server: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<GateClient, GateError> {
        let local: SocketAddr = if server.is_ipv6() {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        };
        let local = if server.ip().is_loopback() {
            local
        } else {
            unspecified(server)
        };
        let mut endpoint = Endpoint::client(local).map_err(GateError::Socket)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(server, server_name)?.await?;
        Ok(GateClient {
            endpoint,
            connection,
        })
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&self, request: &proto::Request) -> Result<proto::Response, GateError> {
        self.call_raw(&request.encode_to_vec()).await
    }

    /// Sends raw bytes as a request (tests use it to send what a broken gate would).
    pub async fn call_raw(&self, bytes: &[u8]) -> Result<proto::Response, GateError> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        send.write_all(bytes).await?;
        send.finish()?;
        let answer = recv.read_to_end(MAX_RESPONSE_BYTES).await?;
        Ok(proto::Response::decode(answer.as_slice())?)
    }

    /// The connection, for tests that misbehave on purpose.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Closes the connection and waits until the appliance has been told.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"gate closing");
        self.endpoint.wait_idle().await;
    }
}

fn unspecified(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}
