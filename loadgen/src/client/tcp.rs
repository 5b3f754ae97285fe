//! HTTP/1.1 and HTTP/2 over TCP and TLS: one TCP socket bound to the
//! source address per connection. HTTP/1.1 with hyper's connection-level
//! client; HTTP/2 with the `h2` crate hyper is built on, used directly: a
//! request task polls its own answer (no channel to a connection task, no
//! task per request), and the requests of one turn of the connection leave
//! in one write ([`homecmp_coalesce`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use homecmp_coalesce::{Coalesced, Turns};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::exchange::{Answer, BodyFrames, Failure, Request, Target, request};

/// An HTTP/1.1 connection: one request at a time.
pub type H1Conn = http1::SendRequest<Empty<Bytes>>;

/// An HTTP/2 connection: clones share it.
#[derive(Debug, Clone)]
pub struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task has ended.
    closed: Arc<AtomicBool>,
}

impl H2Conn {
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }
}

/// An HTTP/1.1 connection from `source`: TCP, TLS, then hyper's handshake.
pub async fn connect_h1(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    source: IpAddr,
) -> Result<H1Conn, Failure> {
    let stream = connect_tls(target, tls, source).await?;
    http1_handshake(stream)
        .await
        .map_err(Failure::at(Failure::HANDSHAKE))
}

/// An HTTP/2 connection from `source`: TCP, TLS that must agree on `h2`,
/// then the HTTP/2 handshake, with the connection driven on a task of its own.
pub async fn connect_h2(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    source: IpAddr,
) -> Result<H2Conn, Failure> {
    let stream = connect_tls(target, tls, source).await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(Failure::at(Failure::HANDSHAKE)(
            "the server did not negotiate h2 (ALPN)",
        ));
    }
    // Every poll of what owns the stream counts a turn, the
    // handshake's included: a write put off waits for the next turn.
    let turns = Turns::default();
    let mut handshake = Box::pin(h2::client::handshake(Coalesced::http2(
        stream,
        turns.clone(),
    )));
    let (send, mut connection) = std::future::poll_fn(|cx| turns.poll(&mut handshake, cx))
        .await
        .map_err(Failure::at(Failure::HANDSHAKE))?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| turns.poll(&mut connection, cx)).await;
        ended.store(true, Ordering::Relaxed);
    });
    Ok(H2Conn { send, closed })
}

/// TCP from `source` (bound first, so the server sees that address), then
/// TLS with the connector's ALPN.
async fn connect_tls(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    source: IpAddr,
) -> Result<TlsStream<TcpStream>, Failure> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(Failure::at(Failure::CONNECT))?;
    // Many short connections from one address: let bind reuse ports in TIME_WAIT.
    let _ = socket.set_reuseaddr(true);
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| Failure::bind(source, e))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(Failure::at(Failure::CONNECT))?;
    let _ = stream.set_nodelay(true);
    tls.connect(target.server_name.clone(), stream)
        .await
        .map_err(Failure::at(Failure::TLS))
}

/// hyper's HTTP/1.1 client handshake on `io`, the connection driven on a
/// task of its own (it ends when the last sender is dropped). Used for the
/// public API over TLS and for the admin API over plain TCP.
pub async fn http1_handshake<IO, B>(io: IO) -> Result<http1::SendRequest<B>, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(send)
}

pub async fn send_h1(
    send: &mut H1Conn,
    target: &Target,
    asked: &Request,
    close_after: bool,
) -> Result<Answer, Failure> {
    let mut builder = request(target, asked, false);
    if close_after {
        builder = builder.header(http::header::CONNECTION, "close");
    }
    let request = builder
        .body(Empty::new())
        .map_err(Failure::at(Failure::PROTOCOL))?;
    send.ready().await.map_err(Failure::at(Failure::PROTOCOL))?;
    let response = send
        .send_request(request)
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?;
    read_h1(response)
        .await
        .map_err(Failure::at(Failure::PROTOCOL))
}

/// The whole answer of an HTTP/1.1 response (public or admin API).
pub async fn read_h1(
    response: http::Response<hyper::body::Incoming>,
) -> Result<Answer, hyper::Error> {
    let (head, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer::new(&head, body))
}

pub async fn send_h2(conn: &H2Conn, target: &Target, asked: &Request) -> Result<Answer, Failure> {
    let request = request(target, asked, true)
        .version(http::Version::HTTP_2)
        .body(())
        .map_err(Failure::at(Failure::PROTOCOL))?;
    let mut send = conn
        .send
        .clone()
        .ready()
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?;
    let (response, _) = send
        .send_request(request, true)
        .map_err(Failure::at(Failure::PROTOCOL))?;
    let (head, mut body) = response
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?
        .into_parts();
    let mut frames = BodyFrames::default();
    while let Some(frame) = body.data().await {
        let frame = frame.map_err(Failure::at(Failure::PROTOCOL))?;
        let _ = body.flow_control().release_capacity(frame.len());
        frames.push(frame);
    }
    Ok(Answer::new(&head, frames.finish()))
}
