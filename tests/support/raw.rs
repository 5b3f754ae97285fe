//! Raw clients for what reqwest will not do: a TLS socket that says nothing,
//! an HTTP/2 connection whose streams the test resets by hand.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// A rustls client config trusting `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tls
}

/// A TLS 1.2 client config trusting `ca_pem`, offering HTTP/1.1: a TLS 1.2
/// client keeps its session ticket and offers it on every connection, as a
/// replaying attacker would.
pub fn tls12_client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}

/// One HTTP/1.1 GET of `path_and_query` on a new TLS connection made with
/// `config` from `local_ip`: the whole answer as text, read until the
/// server closes (an error if it resets or the TLS handshake fails).
pub async fn get_once(
    config: Arc<rustls::ClientConfig>,
    local_ip: &str,
    server: SocketAddr,
    path_and_query: &str,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tcp(local_ip, server).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, stream).await?;
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        // Closed without a close_notify after a whole answer: still an answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A TCP connection to `server` from `local_ip`.
pub async fn tcp(local_ip: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local_ip.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(server).await
}

/// A finished TLS handshake with `server` from `local_ip`, offering `alpn`.
pub async fn tls(
    ca_pem: &[u8],
    alpn: &[&[u8]],
    local_ip: &str,
    server: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem, alpn)));
    let stream = tcp(local_ip, server).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, stream).await
}

/// An HTTP/2 client over TLS from `local_ip`; its connection is driven by
/// the returned task, which ends when the connection does.
pub async fn h2_client(
    ca_pem: &[u8],
    local_ip: &str,
    server: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tls(ca_pem, &[b"h2"], local_ip, server).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}
