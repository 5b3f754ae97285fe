//! HTTP/3 over QUIC (quinn, h3, h3-quinn). One client endpoint (one UDP
//! socket) per source address, shared by every connection from it.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use quinn::crypto::rustls::QuicClientConfig;

use super::exchange::{Answer, BodyFrames, Failure, Request, Target, request};
use crate::error::Error;

/// Idle QUIC connections die after this; keep-alives keep lanes open below it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// An HTTP/3 connection: the request sender and the QUIC connection under it.
#[derive(Clone)]
pub struct H3Conn {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    connection: quinn::Connection,
}

impl std::fmt::Debug for H3Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Conn")
            .field("remote", &self.connection.remote_address())
            .finish_non_exhaustive()
    }
}

impl H3Conn {
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    pub fn close(self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// Client endpoints by source address, made on first use.
#[derive(Debug)]
pub struct Endpoints {
    config: quinn::ClientConfig,
    by_source: Mutex<HashMap<IpAddr, quinn::Endpoint>>,
}

impl Endpoints {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Result<Self, Error> {
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Usage(format!("QUIC TLS configuration: {e}")))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                IDLE_TIMEOUT.try_into().expect("idle timeout in range"),
            ))
            .keep_alive_interval(Some(KEEP_ALIVE));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(Self {
            config,
            by_source: Mutex::new(HashMap::new()),
        })
    }

    fn endpoint(&self, source: IpAddr) -> Result<quinn::Endpoint, Failure> {
        let mut map = self.by_source.lock().expect("endpoint map not poisoned");
        if let Some(endpoint) = map.get(&source) {
            return Ok(endpoint.clone());
        }
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))
            .map_err(|e| Failure::bind(source, e))?;
        endpoint.set_default_client_config(self.config.clone());
        map.insert(source, endpoint.clone());
        Ok(endpoint)
    }

    /// A QUIC connection from `source` with the HTTP/3 control streams up.
    pub async fn connect(&self, target: &Target, source: IpAddr) -> Result<H3Conn, Failure> {
        let endpoint = self.endpoint(source)?;
        let connection = endpoint
            .connect(target.addr, &target.server_name_text)
            .map_err(Failure::at(Failure::CONNECT))?
            .await
            .map_err(Failure::at(Failure::HANDSHAKE))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(Failure::at(Failure::HANDSHAKE))?;
        // The driver must be polled for the connection to make progress; it
        // ends when the connection closes.
        tokio::spawn(async move { poll_fn(|cx| driver.poll_close(cx)).await });
        Ok(H3Conn { send, connection })
    }

    /// Closes every endpoint and waits up to a second for the close frames.
    pub async fn shutdown(&self) {
        let endpoints: Vec<_> = self
            .by_source
            .lock()
            .expect("endpoint map not poisoned")
            .drain()
            .map(|(_, e)| e)
            .collect();
        for endpoint in &endpoints {
            endpoint.close(0u32.into(), b"done");
        }
        let idle = futures_util::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
        let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
    }
}

pub async fn send(conn: &mut H3Conn, target: &Target, asked: &Request) -> Result<Answer, Failure> {
    let request = request(target, asked, true)
        .body(())
        .map_err(Failure::at(Failure::PROTOCOL))?;
    let mut stream = conn
        .send
        .send_request(request)
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?;
    stream
        .finish()
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?;
    let (head, ()) = stream
        .recv_response()
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?
        .into_parts();
    let mut frames = BodyFrames::default();
    while let Some(mut frame) = stream
        .recv_data()
        .await
        .map_err(Failure::at(Failure::PROTOCOL))?
    {
        frames.push(frame.copy_to_bytes(frame.remaining()));
    }
    Ok(Answer::new(&head, frames.finish()))
}
