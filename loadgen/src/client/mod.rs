//! Clients of the public API, one per protocol, over sockets bound to a
//! chosen source address: HTTP/1.1 and HTTP/2 over TCP+TLS ([`tcp`]),
//! HTTP/3 over QUIC ([`quic`]), both below this module and above
//! [`exchange`] (the request and answer they share).
//!
//! A [`Client`] makes connections and sends one asked request on one; a
//! [`Lane`] keeps a keep-alive connection for the tasks that share it. What
//! to send and whether the answer is right is decided elsewhere.

pub mod exchange;
pub mod quic;
pub mod tcp;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use self::exchange::{Answer, Failure, Request, Target};
use crate::error::Error;
use crate::files;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
pub enum Protocol {
    #[value(name = "h1", alias = "http1", alias = "http1.1")]
    #[serde(rename = "http1.1")]
    Http1,
    #[value(name = "h2", alias = "http2")]
    #[serde(rename = "http2")]
    Http2,
    #[value(name = "h3", alias = "http3")]
    #[serde(rename = "http3")]
    Http3,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1.1",
            Protocol::Http2 => "http2",
            Protocol::Http3 => "http3",
        }
    }

    /// Requests one connection carries at once.
    pub fn streams(self, requested: usize) -> usize {
        match self {
            Protocol::Http1 => 1,
            Protocol::Http2 | Protocol::Http3 => requested,
        }
    }
}

/// An open connection, ready for requests.
pub enum Conn {
    H1(tcp::H1Conn),
    H2(tcp::H2Conn),
    H3(quic::H3Conn),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::H1(_) => "Conn::H1",
            Conn::H2(_) => "Conn::H2",
            Conn::H3(_) => "Conn::H3",
        })
    }
}

impl Conn {
    pub fn is_open(&self) -> bool {
        match self {
            Conn::H1(send) => !send.is_closed(),
            Conn::H2(conn) => conn.is_open(),
            Conn::H3(conn) => conn.is_open(),
        }
    }

    /// A handle for another request at once (HTTP/2, HTTP/3); `None` for
    /// HTTP/1.1, whose connection carries one request at a time.
    fn share(&self) -> Option<Conn> {
        match self {
            Conn::H1(_) => None,
            Conn::H2(conn) => Some(Conn::H2(conn.clone())),
            Conn::H3(conn) => Some(Conn::H3(conn.clone())),
        }
    }

    /// Closes the connection now rather than at idle timeout.
    pub fn close(self) {
        if let Conn::H3(conn) = self {
            conn.close();
        }
        // HTTP/1.1 and HTTP/2: dropping the last handle ends the connection's task.
    }
}

/// Makes connections of one protocol and sends requests on them.
pub struct Client {
    pub protocol: Protocol,
    pub target: Arc<Target>,
    tls: tokio_rustls::TlsConnector,
    quic: Option<quic::Endpoints>,
    /// Per-request connections: ask the server to close after the answer.
    close_after: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &self.protocol)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        protocol: Protocol,
        target: Arc<Target>,
        ca: &[CertificateDer<'static>],
        resumption: bool,
        close_after: bool,
    ) -> Result<Self, Error> {
        let alpn: &[u8] = match protocol {
            Protocol::Http1 => b"http/1.1",
            Protocol::Http2 => b"h2",
            Protocol::Http3 => b"h3",
        };
        let tls = tls_config(ca, alpn, resumption, protocol == Protocol::Http3)?;
        let quic = match protocol {
            Protocol::Http3 => Some(quic::Endpoints::new(tls.clone())?),
            _ => None,
        };
        Ok(Self {
            protocol,
            target,
            tls: tokio_rustls::TlsConnector::from(tls),
            quic,
            close_after,
        })
    }

    /// A new connection from `source` (handshakes included).
    pub async fn connect(&self, source: IpAddr) -> Result<Conn, Failure> {
        match (&self.quic, self.protocol) {
            (Some(endpoints), _) => endpoints.connect(&self.target, source).await.map(Conn::H3),
            (None, Protocol::Http2) => tcp::connect_h2(&self.target, &self.tls, source)
                .await
                .map(Conn::H2),
            (None, _) => tcp::connect_h1(&self.target, &self.tls, source)
                .await
                .map(Conn::H1),
        }
    }

    /// Sends `asked` on `conn` and reads the whole answer.
    pub async fn send(&self, conn: &mut Conn, asked: &Request) -> Result<Answer, Failure> {
        match conn {
            Conn::H3(h3) => quic::send(h3, &self.target, asked).await,
            Conn::H1(send) => tcp::send_h1(send, &self.target, asked, self.close_after).await,
            Conn::H2(conn) => tcp::send_h2(conn, &self.target, asked).await,
        }
    }

    /// Closes the QUIC endpoints, waiting briefly for close frames to leave.
    pub async fn shutdown(&self) {
        if let Some(endpoints) = &self.quic {
            endpoints.shutdown().await;
        }
    }
}

/// One keep-alive connection from a fixed source, shared by the tasks of a
/// lane (HTTP/2 and HTTP/3 multiplex; an HTTP/1.1 lane has one task).
/// A broken connection is replaced on the next request.
#[derive(Debug)]
pub struct Lane {
    pub source: IpAddr,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Lane {
    pub fn new(source: IpAddr) -> Self {
        Self {
            source,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// A connection to send on: shared (HTTP/2, HTTP/3) or taken (HTTP/1.1;
    /// give it back with [`Lane::release`]).
    async fn acquire(&self, client: &Client) -> Result<Conn, Failure> {
        let mut held = self.conn.lock().await;
        let conn = match held.take().filter(Conn::is_open) {
            Some(conn) => conn,
            // Boxed: the connect future is large, and every request's
            // future would otherwise carry (and move) it.
            None => Box::pin(client.connect(self.source)).await?,
        };
        match conn.share() {
            Some(shared) => {
                *held = Some(conn);
                Ok(shared)
            }
            None => Ok(conn),
        }
    }

    /// Sends `asked` on the lane's connection (made first if there is none
    /// or it broke) and reads the whole answer.
    pub async fn send(&self, client: &Client, asked: &Request) -> Result<Answer, Failure> {
        let mut conn = self.acquire(client).await?;
        let answer = client.send(&mut conn, asked).await;
        self.release(conn).await;
        answer
    }

    /// Returns a taken HTTP/1.1 connection if it can carry another request.
    async fn release(&self, conn: Conn) {
        if matches!(conn, Conn::H1(_)) && conn.is_open() {
            *self.conn.lock().await = Some(conn);
        }
    }

    /// Closes the kept connection.
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.close();
        }
    }
}

/// Reads every certificate of a PEM file.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = files::read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Usage(format!("--ca {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "--ca {}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// A rustls client configuration with the aws-lc-rs provider (the only one in
/// the workspace) trusting `ca`.
fn tls_config(
    ca: &[CertificateDer<'static>],
    alpn: &[u8],
    resumption: bool,
    tls13_only: bool,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| Error::Usage(format!("--ca: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| Error::Usage(format!("TLS configuration: {e}")))?;
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}
