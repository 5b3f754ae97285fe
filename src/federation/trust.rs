//! Whom this CMP calls: the checks on the far end of an outgoing
//! federation connection, made while it is set up.
//!
//! - A peer's certificate ([`PeerVerifier`]): verified by webpki against the
//!   community CA, or against the peer's own `ca_file` where one is
//!   configured; then, where the peer has `spki_sha256`, its public key
//!   must hash to that pin. A pin that does not match fails the handshake
//!   with [`PinMismatch`] and a log line.
//! - The address of a CMP the registry names ([`internal_address`]): never
//!   loopback, link-local, private, shared (CGN) or unspecified unless
//!   `mcr_allow_private`. An IP literal is checked when the answer arrives
//!   (`super::Peers`); a host name is checked by [`PublicOnly`], the
//!   resolver of the client that calls such CMPs, on every connection (so a
//!   name that later resolves elsewhere is checked again), and refused with
//!   [`PrivateAddress`].
//!
//! [`refusal`] reads which of these refused a failed request, for the
//! metric.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::{FederationError, Outcome};

/// A peer's certificate carries another public key than its pin.
#[derive(Debug, thiserror::Error)]
#[error("the certificate's public key does not match the peer's spki_sha256")]
pub struct PinMismatch;

/// A CMP named by the registry resolves to an address it may not name.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {address}, a loopback, link-local, private or unspecified address")]
pub struct PrivateAddress {
    host: String,
    address: IpAddr,
}

/// The federation client's TLS: TLS 1.3 only, HTTP/2 first, this CMP's
/// certificate as client certificate, and the server's certificate checked
/// by [`PeerVerifier`] against `roots` and `pin`.
pub fn client_config(
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    roots: Arc<rustls::RootCertStore>,
    pin: Option<[u8; 32]>,
    peer: &str,
) -> Result<rustls::ClientConfig, FederationError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| FederationError::Client(e.to_string()))?;
    let verifier = PeerVerifier {
        webpki,
        pin,
        peer: peer.to_owned(),
    };
    let (certs, key) = identity;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crate::tls::TlsError::from)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(crate::tls::TlsError::from)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// webpki's verification, then the peer's pin where it has one.
#[derive(Debug)]
struct PeerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// SHA-256 of the SubjectPublicKeyInfo the certificate must carry.
    pin: Option<[u8; 32]>,
    /// The peer's URL, for the log line.
    peer: String,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let Some(pin) = &self.pin else {
            return Ok(verified);
        };
        let presented = spki_sha256(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if presented != *pin {
            tracing::warn!(
                peer = %self.peer,
                presented_spki_sha256 = %hex(&presented),
                "federation: the peer's certificate does not match its pin (spki_sha256); not called"
            );
            let mismatch = OtherError(Arc::new(PinMismatch));
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                mismatch,
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER, outer SEQUENCE
/// included, as `openssl x509 -pubkey | openssl pkey -pubin -outform der`
/// prints it); `None` when it does not parse.
fn spki_sha256(certificate: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, spki.as_ref());
    digest.as_ref().try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `address` is one a registry answer may not send this CMP to:
/// loopback, link-local, private (RFC 1918, IPv6 unique local), shared
/// (RFC 6598, carrier-grade NAT: an MNO's own networks), "this network",
/// unspecified, broadcast or multicast. An IPv4-mapped IPv6 address is the
/// IPv4 address it maps.
pub fn internal_address(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => {
            let [first, second, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || first == 0
                || (first == 100 && (64..128).contains(&second))
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
        }
    }
}

/// The address a URL names as an IP literal (`127.0.0.1`, `[::1]`), if it
/// does: such a host is connected to without asking any resolver.
pub fn ip_literal(uri: &http::Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed.parse().ok()
}

/// The resolver of the client that calls CMPs named by the registry: a
/// name with any internal address is refused ([`PrivateAddress`]).
#[derive(Debug)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the URL's port replaces it.
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(internal) = addresses.iter().find(|a| internal_address(a.ip())) {
                let refused = PrivateAddress {
                    address: internal.ip(),
                    host,
                };
                tracing::warn!(error = %refused, "federation: a CMP named by the registry is not called");
                return Err(refused.into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Which of this module's checks refused a failed request, if one did:
/// a pin, a certificate, or a registry-named address.
pub fn refusal(error: &reqwest::Error) -> Option<Outcome> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<PrivateAddress>() {
            return Some(Outcome::PrivateAddress);
        }
        if let Some(rustls::Error::InvalidCertificate(certificate)) = error.downcast_ref() {
            return Some(match certificate {
                CertificateError::Other(other) if other.0.is::<PinMismatch>() => {
                    Outcome::PinMismatch
                }
                _ => Outcome::CertificateRefused,
            });
        }
        // TLS errors come wrapped in io::Errors, whose source() skips the
        // error they wrap.
        cause = match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_the_ones_a_registry_may_not_name() {
        let internal = [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ];
        for text in internal {
            assert!(internal_address(text.parse().unwrap()), "{text}");
        }
        let public = [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "192.169.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
        ];
        for text in public {
            assert!(!internal_address(text.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn ip_literals_are_told_from_names() {
        let literal = |url: &str| ip_literal(&url.parse().unwrap());
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        assert_eq!(literal("https://127.0.0.1:8445"), ip("127.0.0.1"));
        assert_eq!(literal("https://[::1]:8445/x"), ip("::1"));
        assert_eq!(literal("https://[::ffff:10.0.0.1]"), ip("::ffff:10.0.0.1"));
        assert_eq!(literal("https://localhost:8445"), None);
        assert_eq!(literal("https://cmp.example"), None);
    }

    #[tokio::test]
    async fn the_registry_client_resolves_no_name_to_an_internal_address() {
        use reqwest::dns::Resolve;
        let name = |text: &str| text.parse::<reqwest::dns::Name>().unwrap();
        let refused = PublicOnly.resolve(name("localhost")).await.err().unwrap();
        assert!(refused.is::<PrivateAddress>(), "{refused}");
    }
}
