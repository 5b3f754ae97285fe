//! A real HTTP/3 client (quinn + h3 + h3-quinn) for tests.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
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
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
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
        let connection = self
            .endpoint
            .connect(self.server, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let drive = tokio::spawn(async move { poll_fn(|cx| driver.poll_close(cx)).await });
        let uri = format!("https://localhost:{}{path_and_query}", self.server.port());
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(request(&mut send, &uri, fin_delay).await?);
        }
        drop(send);
        drive.abort();
        connection.close(0u32.into(), b"done");
        Ok(out)
    }
}

async fn request(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    uri: &str,
    fin_delay: std::time::Duration,
) -> Result<(u16, Value), String> {
    let request = http::Request::get(uri).body(()).unwrap();
    let mut stream = send
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
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
