//! HTTP/1.1 and HTTP/2 over TCP and TLS, with hyper's connection-level
//! client: one TCP socket bound to the source address per connection.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http2 => {
            if negotiated.as_deref() != Some(b"h2") {
                return Err(Failure::at(Failure::HANDSHAKE)(
                    "the server did not negotiate h2 (ALPN)",
                ));
            }
            let (send, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(Failure::at(Failure::HANDSHAKE))?;
            tokio::spawn(connection);
            Ok(Conn::H2(send))
        }
        _ => {
            let (send, connection) = http1::handshake(io)
                .await
                .map_err(Failure::at(Failure::HANDSHAKE))?;
            tokio::spawn(connection);
            Ok(Conn::H1(send))
        }
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

pub async fn send_h2(
    send: &mut http2::SendRequest<Empty<Bytes>>,
    target: &Target,
    asked: &Request,
) -> Result<Answer, Failure> {
    let request = request(target, asked, true)
        .version(http::Version::HTTP_2)
        .body(Empty::new())
        .map_err(Failure::at(Failure::PROTOCOL))?;
    send.ready().await.map_err(Failure::at(Failure::PROTOCOL))?;
    let response = send
        .send_request(request)
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?;
    read(response).await
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
