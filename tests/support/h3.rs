//! A real HTTP/3 client (quinn + h3 + h3-quinn) for tests.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use quinn::crypto::rustls::QuicClientConfig;
use serde_json::Value;

/// Remembers NEW_TOKEN tokens like a real client, and can be told to hand
/// out a forged one instead.
#[derive(Debug, Default)]
pub struct Tokens {
    pub received: Mutex<Vec<Bytes>>,
    pub forged: Mutex<Option<Bytes>>,
    pub replay: Mutex<Option<Bytes>>,
}

impl quinn::TokenStore for Tokens {
    fn insert(&self, _server_name: &str, token: Bytes) {
        self.received.lock().unwrap().push(token);
    }

    fn take(&self, _server_name: &str) -> Option<Bytes> {
        if let Some(forged) = self.forged.lock().unwrap().clone() {
            return Some(forged);
        }
        if let Some(replay) = self.replay.lock().unwrap().clone() {
            return Some(replay);
        }
        self.received.lock().unwrap().pop()
    }
}

pub struct H3Client {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    pub tokens: Arc<Tokens>,
}

impl H3Client {
    /// A client endpoint bound to `local_ip`, trusting `ca_pem`.
    pub fn new(ca_pem: &[u8], local_ip: &str, server: SocketAddr) -> Self {
        let tls = super::raw::client_config(ca_pem, &[b"h3"]);
        let crypto = QuicClientConfig::try_from(tls).unwrap();
        let tokens = Arc::new(Tokens::default());
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.token_store(tokens.clone());
        let local = SocketAddr::new(local_ip.parse::<IpAddr>().unwrap(), 0);
        let mut endpoint = quinn::Endpoint::client(local).unwrap();
        endpoint.set_default_client_config(config);
        Self {
            endpoint,
            server,
            tokens,
        }
    }

    /// One request on a new connection: GET `path_and_query`, status and JSON body.
    pub async fn get(&self, path_and_query: &str) -> Result<(u16, Value), String> {
        let mut answers = self.get_many(path_and_query, 1).await?;
        Ok(answers.remove(0))
    }

    /// `n` requests, one after the other, on one connection.
    pub async fn get_many(
        &self,
        path_and_query: &str,
        n: usize,
    ) -> Result<Vec<(u16, Value)>, String> {
        self.get_with_fin_after(path_and_query, n, std::time::Duration::ZERO)
            .await
    }

    /// Like `get_many`, each request's FIN sent `fin_delay` after its head,
    /// as a slow or lossy network may deliver it.
    pub async fn get_with_fin_after(
        &self,
        path_and_query: &str,
        n: usize,
        fin_delay: std::time::Duration,
    ) -> Result<Vec<(u16, Value)>, String> {
        let mut open = self.open().await?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(open.get_with_fin_after(path_and_query, fin_delay).await?);
        }
        open.close();
        Ok(out)
    }

    /// A new HTTP/3 connection, kept open for requests one after the other.
    pub async fn open(&self) -> Result<H3Connection, String> {
        let connection = self
            .endpoint
            .connect(self.server, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let drive = tokio::spawn(async move {
            let _ = poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3Connection {
            connection,
            send,
            drive,
            port: self.server.port(),
        })
    }

    /// Moves the client endpoint to a socket on `local_ip`: its open
    /// connections migrate there (QUIC connection migration).
    pub fn rebind(&self, local_ip: &str) {
        let local = SocketAddr::new(local_ip.parse::<IpAddr>().unwrap(), 0);
        self.endpoint
            .rebind(std::net::UdpSocket::bind(local).unwrap())
            .unwrap();
    }

    /// Like [`H3Client::rebind`], to a socket that sends from `local_ip`
    /// and never hears anything back: an attacker forging that source
    /// address, who cannot receive there (no PATH_CHALLENGE reaches it).
    pub fn rebind_send_only(&self, local_ip: &str) {
        let local = SocketAddr::new(local_ip.parse::<IpAddr>().unwrap(), 0);
        let socket = std::net::UdpSocket::bind(local).unwrap();
        let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket).unwrap();
        self.endpoint
            .rebind_abstract(Arc::new(SendOnly(socket)))
            .unwrap();
    }
}

/// A UDP socket that sends and never receives (see
/// [`H3Client::rebind_send_only`]).
#[derive(Debug)]
struct SendOnly(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for SendOnly {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        _cx: &mut std::task::Context,
        _bufs: &mut [std::io::IoSliceMut<'_>],
        _meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Pending
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }
}

/// An open HTTP/3 connection of an [`H3Client`].
pub struct H3Connection {
    pub connection: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    drive: tokio::task::JoinHandle<()>,
    port: u16,
}

impl H3Connection {
    /// GET `path_and_query` on this connection: status and JSON body.
    pub async fn get(&mut self, path_and_query: &str) -> Result<(u16, Value), String> {
        self.get_with_fin_after(path_and_query, std::time::Duration::ZERO)
            .await
    }

    async fn get_with_fin_after(
        &mut self,
        path_and_query: &str,
        fin_delay: std::time::Duration,
    ) -> Result<(u16, Value), String> {
        let uri = format!("https://localhost:{}{path_and_query}", self.port);
        request(&mut self.send, &uri, fin_delay).await
    }

    /// Sends a whole GET and does not wait for its answer (a task keeps
    /// the stream open for a few seconds, so it is not reset).
    pub async fn send_only(&mut self, path_and_query: &str) -> Result<(), String> {
        let uri = format!("https://localhost:{}{path_and_query}", self.port);
        let mut stream = send_get(&mut self.send, &uri).await?;
        stream.finish().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let wait = std::time::Duration::from_secs(5);
            let _ = tokio::time::timeout(wait, stream.recv_response()).await;
        });
        Ok(())
    }

    /// Resolves when the server closes the connection, with its reason.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.connection.closed().await
    }

    pub fn close(self) {
        drop(self.send);
        self.drive.abort();
        self.connection.close(0u32.into(), b"done");
    }
}

/// Sends a GET's head (no FIN yet) and returns its stream.
async fn send_get(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    uri: &str,
) -> Result<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>, String> {
    let request = http::Request::get(uri).body(()).unwrap();
    send.send_request(request).await.map_err(|e| e.to_string())
}

async fn request(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    uri: &str,
    fin_delay: std::time::Duration,
) -> Result<(u16, Value), String> {
    let mut stream = send_get(send, uri).await?;
    tokio::time::sleep(fin_delay).await;
    stream.finish().await.map_err(|e| e.to_string())?;
    let response = stream.recv_response().await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    let json = serde_json::from_slice(&body)
        .map_err(|e| format!("{e}: {:?}", String::from_utf8_lossy(&body)))?;
    Ok((response.status().as_u16(), json))
}
