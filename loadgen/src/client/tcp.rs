//! HTTP/1.1 and HTTP/2 over TCP and TLS: one TCP socket bound to the
//! source address per connection. HTTP/1.1 with hyper's connection-level
//! client; HTTP/2 with the `h2` crate hyper is built on, used directly: a
//! request task polls its own answer (no channel to a connection task, no
//! task per request), and the requests of one turn of the connection leave
//! in one write ([`homecmp_coalesce`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use homecmp_coalesce::{Coalesced, Turns};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

use super::Protocol;
use super::{Answer, Conn, Failure, Request, Target, request, retry_after};

/// TCP from `source`, TLS with the protocol's ALPN, then the HTTP handshake.
pub async fn connect(
    protocol: Protocol,
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    source: IpAddr,
) -> Result<Conn, Failure> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(Failure::at(Failure::CONNECT))?;
    // Many short connections from one address: let bind reuse ports in TIME_WAIT.
    let _ = socket.set_reuseaddr(true);
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| Failure::at(Failure::CONNECT)(format!("bind {source}: {e}")))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(Failure::at(Failure::CONNECT))?;
    let _ = stream.set_nodelay(true);
    let stream = tls
        .connect(target.server_name.clone(), stream)
        .await
        .map_err(Failure::at(Failure::TLS))?;
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    match protocol {
        Protocol::Http2 => {
            if negotiated.as_deref() != Some(b"h2") {
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
            Ok(Conn::H2(H2Conn { send, closed }))
        }
        _ => {
            let (send, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(Failure::at(Failure::HANDSHAKE))?;
            tokio::spawn(connection);
            Ok(Conn::H1(send))
        }
    }
}

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

pub async fn send_h1(
    send: &mut http1::SendRequest<Empty<Bytes>>,
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
    read(response).await
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
    let response = response.await.map_err(Failure::at(Failure::PROTOCOL))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let mut body = response.into_body();
    // Most answers are one DATA frame: kept as it came, not copied.
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(Failure::at(Failure::PROTOCOL))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if first.is_empty() && joined.is_empty() {
            first = chunk;
        } else {
            joined.extend_from_slice(&std::mem::take(&mut first));
            joined.extend_from_slice(&chunk);
        }
    }
    Ok(Answer {
        status,
        body: if joined.is_empty() {
            first
        } else {
            joined.freeze()
        },
        retry_after,
    })
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Answer, Failure> {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?
        .to_bytes();
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}
