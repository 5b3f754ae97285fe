//! rustls server configuration: TLS 1.3 and 1.2, ALPN, session resumption.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Certificate chain and key from PEM files.
pub fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert.display().to_string(),
            reason: "no certificate in file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
    Ok((certs, key_der))
}

/// A server config with the aws-lc-rs provider (the only one in the build),
/// stateless tickets and a session cache for resumption, and `alpn`.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certified = certified_key(certs, key)?;
    server_config_with(
        Arc::new(rustls::sign::SingleCertAndKey::from(certified)),
        alpn,
    )
}

/// [`server_config`] with the certificate `resolver` chooses (a
/// [`Certificate`] a reload can swap).
pub fn server_config_with(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(config))
}

/// The chain and its key, checked to match.
fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let provider = aws_lc_rs::default_provider();
    Ok(rustls::sign::CertifiedKey::from_der(certs, key, &provider)?)
}

/// The public listeners' certificate and key, read from their files and
/// swapped whole by a reload (`SIGHUP`, `POST /admin/v1/reload`): a
/// handshake under way keeps the pair it began with, the next one gets the
/// new pair. HTTPS and HTTP/3 share it.
#[derive(Debug)]
pub struct Certificate {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl Certificate {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (certs, key_der) = load(cert, key)?;
        Ok(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: std::sync::RwLock::new(Arc::new(certified_key(certs, key_der)?)),
        })
    }

    /// Reads the files again and serves what they hold from the next
    /// handshake on; on any error (unreadable, not PEM, key and
    /// certificate that do not match) the served pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (certs, key) = load(&self.cert_path, &self.key_path)?;
        let fresh = Arc::new(certified_key(certs, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The served certificate (the chain's first).
    pub fn leaf(&self) -> CertificateDer<'static> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.cert[0].clone()
    }
}

impl rustls::server::ResolvesServerCert for Certificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// When a certificate (DER) expires, in Unix seconds; `None` if it does not
/// parse.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The certificates of a PEM file as trust anchors (a community CA).
pub fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        path: ca.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| pem_err(e.to_string()))?)
            .map_err(|e| pem_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_err("no certificate in file".into()));
    }
    Ok(Arc::new(roots))
}

/// This CMP's federation identity, read once: its certificate chain and
/// key (its server certificate on the federation listener, its client
/// certificate towards peers) and the community CA it trusts.
#[derive(Debug)]
pub struct Membership {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub community: Arc<rustls::RootCertStore>,
}

impl Membership {
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let (certs, key) = load(cert, key)?;
        Ok(Self {
            certs,
            key,
            community: roots(ca)?,
        })
    }

    /// The federation listener's config: a client certificate the
    /// community CA issued is required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        mutual_server_config(
            self.certs.clone(),
            self.key.clone_key(),
            self.community.clone(),
        )
    }
}

/// A server config that requires a client certificate issued by `roots`
/// (TLS 1.3 only, HTTP/2 and HTTP/1.1): the federation listener's.
pub fn mutual_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a session ticket this server issues can be used: rustls'
/// ticketer rotates its key every 6 hours and accepts the previous one.
pub const TICKETS_LAST: std::time::Duration = std::time::Duration::from_secs(12 * 60 * 60);

/// The TLS sessions in which an associated clientid was served: a client
/// that resumes one of them is returning, and is not held to its
/// address's accept rate (thousands of subscribers share an address behind
/// a NAT). Each connection carries a random mark in the resumption data of
/// the tickets it is issued ([`Returning::new_mark`]); serving an
/// associated clientid proves the mark ([`Returning::prove`]); a resumed
/// connection reads its mark back from the ticket
/// ([`Returning::is_proven`]). A ticket alone proves nothing: anyone who
/// completes a handshake gets one, and a ticket can be replayed.
///
/// Bounded: at most `max` marks, each kept for the tickets' lifetime; when
/// full, a new proof is not kept (its client waits its turn as a new one).
#[derive(Debug)]
pub struct Returning {
    proven: dashmap::DashMap<u128, std::time::Instant>,
    lifetime: std::time::Duration,
    max: usize,
}

/// The random mark of one TLS connection's session (its tickets' resumption
/// data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionMark(u128);

impl SessionMark {
    pub fn bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The mark a resumption ticket carried, if it is one of ours.
    pub fn read(resumption_data: &[u8]) -> Option<Self> {
        let bytes: [u8; 16] = resumption_data.try_into().ok()?;
        Some(Self(u128::from_be_bytes(bytes)))
    }
}

impl Returning {
    pub fn new(lifetime: std::time::Duration, max: usize) -> Self {
        Self {
            proven: dashmap::DashMap::new(),
            lifetime,
            max,
        }
    }

    /// A fresh, unguessable mark for a new connection's tickets.
    pub fn new_mark() -> SessionMark {
        SessionMark(uuid::Uuid::new_v4().as_u128())
    }

    /// Records that `mark`'s session served an associated clientid.
    pub fn prove(&self, mark: SessionMark) {
        if self.proven.len() >= self.max {
            self.sweep();
            if self.proven.len() >= self.max {
                return;
            }
        }
        let until = std::time::Instant::now() + self.lifetime;
        self.proven.insert(mark.0, until);
    }

    /// Whether a resumed connection's ticket (its resumption data) carries a
    /// proven mark still within its lifetime.
    pub fn is_proven(&self, resumption_data: Option<&[u8]>) -> bool {
        let Some(mark) = resumption_data.and_then(SessionMark::read) else {
            return false;
        };
        self.proven
            .get(&mark.0)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Forgets marks past their lifetime.
    pub fn sweep(&self) {
        let now = std::time::Instant::now();
        self.proven.retain(|_, until| *until > now);
    }

    pub fn len(&self) -> usize {
        self.proven.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proven.is_empty()
    }
}

/// The session ticket a client offers to resume with, from its first TLS
/// record (the ClientHello): the first pre-shared-key identity (TLS 1.3)
/// or a non-empty session-ticket extension (TLS 1.2). `None` for anything
/// else, including records that do not parse.
pub fn offered_ticket(record: &[u8]) -> Option<&[u8]> {
    use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};
    let (_, plaintext) = tls_parser::parse_tls_plaintext(record).ok()?;
    let extensions = plaintext.msg.iter().find_map(|message| match message {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) => hello.ext,
        _ => None,
    })?;
    let (_, extensions) = tls_parser::parse_tls_client_hello_extensions(extensions).ok()?;
    extensions
        .into_iter()
        .find_map(|extension| match extension {
            TlsExtension::PreSharedKey(offer) => first_psk_identity(offer),
            TlsExtension::SessionTicket(ticket) if !ticket.is_empty() => Some(ticket),
            _ => None,
        })
}

/// RFC 8446 §4.2.11: `identities` is a u16-length list of entries, each a
/// u16-length identity followed by a u32 age.
fn first_psk_identity(offer: &[u8]) -> Option<&[u8]> {
    let length = |at: usize| {
        Some(usize::from(u16::from_be_bytes([
            *offer.get(at)?,
            *offer.get(at + 1)?,
        ])))
    };
    let identity = length(2)?;
    (length(0)? >= identity + 6).then_some(())?;
    offer.get(4..4 + identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with `extensions` (type, data) and nothing else
    /// of note.
    fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut handshake = vec![1, 0];
        handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
        handshake.extend_from_slice(&body);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    fn psk_offer(identity: &[u8]) -> Vec<u8> {
        let mut identities = (identity.len() as u16).to_be_bytes().to_vec();
        identities.extend_from_slice(identity);
        identities.extend_from_slice(&[0, 0, 0, 9]); // obfuscated age
        let mut offer = (identities.len() as u16).to_be_bytes().to_vec();
        offer.extend_from_slice(&identities);
        offer.extend_from_slice(&[0, 33, 32]); // binders: one of 32 bytes
        offer.extend_from_slice(&[0; 32]);
        offer
    }

    #[test]
    fn finds_the_ticket_a_client_hello_offers() {
        let tls13 = client_hello(&[(43, vec![2, 3, 4]), (41, psk_offer(b"ticket-13"))]);
        assert_eq!(offered_ticket(&tls13), Some(&b"ticket-13"[..]));
        let tls12 = client_hello(&[(35, b"ticket-12".to_vec())]);
        assert_eq!(offered_ticket(&tls12), Some(&b"ticket-12"[..]));
    }

    #[test]
    fn only_a_proven_mark_within_its_lifetime_is_returning() {
        let returning = Returning::new(std::time::Duration::from_secs(600), 2);
        let (a, b, c) = (
            Returning::new_mark(),
            Returning::new_mark(),
            Returning::new_mark(),
        );
        assert_ne!(a, b, "marks are random");
        assert!(!returning.is_proven(Some(&a.bytes())), "not yet proven");
        assert!(!returning.is_proven(None) && !returning.is_proven(Some(b"short")));
        returning.prove(a);
        returning.prove(b);
        assert!(returning.is_proven(Some(&a.bytes())));
        returning.prove(c);
        assert!(!returning.is_proven(Some(&c.bytes())), "full: not kept");
        assert_eq!(returning.len(), 2);
        let brief = Returning::new(std::time::Duration::from_millis(10), 2);
        brief.prove(a);
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!brief.is_proven(Some(&a.bytes())), "past its lifetime");
        brief.prove(b);
        brief.prove(c);
        assert!(
            brief.is_proven(Some(&c.bytes())),
            "the served one was swept"
        );
    }

    #[test]
    fn no_ticket_in_a_new_or_broken_client_hello() {
        assert_eq!(offered_ticket(&client_hello(&[(35, vec![])])), None);
        assert_eq!(offered_ticket(&client_hello(&[(43, vec![2, 3, 4])])), None);
        let full = client_hello(&[(41, psk_offer(b"ticket-13"))]);
        for cut in 0..full.len() {
            assert_eq!(offered_ticket(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(offered_ticket(b"GET / HTTP/1.1\r\n\r\n"), None);
        // An identity list that claims more than there is.
        let mut lying = psk_offer(b"ticket-13");
        lying[3] = 200;
        assert_eq!(offered_ticket(&client_hello(&[(41, lying)])), None);
    }
}
