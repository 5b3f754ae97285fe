//! Single sign-on for the admin API: an OpenID Connect access token (a
//! JWT) from the operator's identity provider, checked with the
//! `jsonwebtoken` crate: the signature against the provider's keys (a JWKS
//! file or URL, cached, fetched again when stale or when a token names a
//! key it does not hold), the issuer, the audience, the expiry and
//! not-before (with a leeway for clocks), and an algorithm from the
//! configured list. The caller is the token's `sub`; its roles are the
//! names in the configured claim ([`crate::access::Role`]), others ignored.

use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::access::{Principal, Role};
use crate::config::{JwksSource, OidcConfig};

/// Least time between two fetches of the keys for a token naming a key
/// the cache lacks: a flood of such tokens costs one fetch, not one each.
const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(10);
/// How long a JWKS URL may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a JWT was refused (401, with this as the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtRefusal {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token is for another audience")]
    WrongAudience,
    #[error("the access token is from another issuer")]
    WrongIssuer,
    #[error("the access token's signature does not verify")]
    BadSignature,
    #[error("the access token is signed with {0}, which is not allowed here")]
    Algorithm(String),
    #[error("the access token names a key the identity provider does not publish")]
    UnknownKey,
    #[error("the access token has no usable subject (sub)")]
    NoSubject,
    #[error("not a JWT: {0}")]
    Malformed(String),
}

/// Whether `token` looks like a JWT (three base64url parts), not a
/// scoped or admin token.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.starts_with(b"eyJ") && token.iter().filter(|&&b| b == b'.').count() == 2
}

/// A key of the provider's set.
struct Key {
    id: Option<String>,
    key: DecodingKey,
}

struct Cache {
    keys: Vec<Key>,
    fetched: Option<Instant>,
}

/// Checks access tokens against one identity provider.
pub struct Verifier {
    config: OidcConfig,
    cache: std::sync::RwLock<Cache>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

impl Verifier {
    /// A verifier with no keys yet: [`Verifier::prefetch`] fetches them,
    /// and so does the first token.
    pub fn new(config: OidcConfig) -> Verifier {
        Verifier {
            config,
            cache: std::sync::RwLock::new(Cache {
                keys: Vec::new(),
                fetched: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Fetches the keys once, at start: a provider that cannot be reached
    /// is in the server log before anyone needs it (the admin token and
    /// the scoped tokens work meanwhile; the first JWT tries again).
    pub async fn prefetch(&self) {
        self.refresh(None).await;
    }

    /// Who `token` says the caller is, with the roles it grants.
    pub async fn verify(&self, token: &[u8]) -> Result<Principal, JwtRefusal> {
        let text = std::str::from_utf8(token).map_err(|_| malformed("not UTF-8"))?;
        let header = jsonwebtoken::decode_header(text).map_err(|e| malformed(&e.to_string()))?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtRefusal::Algorithm(format!("{:?}", header.alg)));
        }
        let fetched = self.read().fetched;
        let due = match fetched {
            None => true,
            Some(at) if at.elapsed() >= self.config.refresh => true,
            Some(at) => !self.has_key(header.kid.as_deref()) && at.elapsed() >= UNKNOWN_KEY_REFETCH,
        };
        if due {
            self.refresh(fetched).await;
        }
        let claims = self.decode(text, header.alg, header.kid.as_deref())?;
        principal(&claims, &self.config.roles_claim)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn has_key(&self, kid: Option<&str>) -> bool {
        let cache = self.read();
        match kid {
            Some(kid) => cache.keys.iter().any(|k| k.id.as_deref() == Some(kid)),
            None => !cache.keys.is_empty(),
        }
    }

    /// The token's claims, checked with the key it names (each key when
    /// it names none).
    fn decode(&self, token: &str, alg: Algorithm, kid: Option<&str>) -> Result<Value, JwtRefusal> {
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let cache = self.read();
        let keys = cache
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.id.as_deref() == kid);
        let mut refusal = JwtRefusal::UnknownKey;
        for key in keys {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => refusal = refusal_of(e.kind()),
            }
            if refusal != JwtRefusal::BadSignature {
                break;
            }
        }
        Err(refusal)
    }

    /// Fetches the keys again, unless another fetch did since `seen` (the
    /// fetch time the caller saw) while this waited its turn; on failure
    /// the cached keys stay.
    async fn refresh(&self, seen: Option<Instant>) {
        let _turn = self.fetching.lock().await;
        if self.read().fetched != seen {
            return;
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "identity provider keys fetched");
                let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
                *cache = Cache {
                    keys,
                    fetched: Some(Instant::now()),
                };
            }
            Err(e) => {
                tracing::error!(error = %e, "identity provider keys not fetched; the cached ones stay");
                let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
                cache.fetched = Some(Instant::now());
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let bytes = match &self.config.jwks {
            JwksSource::File(path) => {
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
            }
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("{url}: HTTP {}", response.status()));
                }
                response
                    .bytes()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?
                    .to_vec()
            }
        };
        keys(&bytes)
    }
}

/// The keys of a JWKS document; one that is not a key this crate can use
/// is skipped (and logged), a document that is not a JWKS is an error.
fn keys(jwks: &[u8]) -> Result<Vec<Key>, String> {
    if jwks.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "a JWKS of {} bytes (at most {MAX_JWKS_BYTES})",
            jwks.len()
        ));
    }
    let set: JwkSet = serde_json::from_slice(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Key {
                id: jwk.common.key_id.clone(),
                key,
            }),
            Err(e) => tracing::warn!(kid = ?jwk.common.key_id, error = %e, "JWKS key skipped"),
        }
    }
    Ok(keys)
}

fn malformed(why: &str) -> JwtRefusal {
    JwtRefusal::Malformed(why.to_owned())
}

fn refusal_of(kind: &ErrorKind) -> JwtRefusal {
    match kind {
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
        ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
        ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
        ErrorKind::InvalidSignature => JwtRefusal::BadSignature,
        ErrorKind::InvalidAlgorithm => {
            JwtRefusal::Algorithm("another algorithm than its key's".into())
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => JwtRefusal::NoSubject,
        other => JwtRefusal::Malformed(format!("{other:?}")),
    }
}

/// The caller of checked `claims`: `sub`, and the roles named in the claim
/// at `roles_claim` (a dotted path such as `realm_access.roles`; a list of
/// names, or one string of names separated by spaces, as `scope` is).
pub fn principal(claims: &Value, roles_claim: &str) -> Result<Principal, JwtRefusal> {
    let name = claims["sub"].as_str().unwrap_or_default();
    let usable = !name.is_empty()
        && name.len() <= crate::store::event::MAX_ACTOR_LEN
        && !name.chars().any(char::is_control);
    if !usable {
        return Err(JwtRefusal::NoSubject);
    }
    let claim = roles_claim
        .split('.')
        .try_fold(claims, |value, part| value.get(part));
    let names: Vec<&str> = match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(text)) => text.split_whitespace().collect(),
        _ => Vec::new(),
    };
    Ok(Principal {
        name: name.to_owned(),
        roles: names.into_iter().filter_map(Role::parse).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Roles;
    use serde_json::json;

    #[test]
    fn roles_come_from_the_configured_claim_unknown_ones_ignored() {
        let claims = json!({
            "sub": "alice@mno.example",
            "roles": ["codes:read", "admin-of-everything"],
            "scope": "openid ops",
            "realm_access": {"roles": ["audit:read"]},
        });
        let roles = |claim| principal(&claims, claim).unwrap().roles;
        assert_eq!(
            roles("roles"),
            [Role::CodesRead].into_iter().collect::<Roles>()
        );
        assert_eq!(roles("scope"), [Role::Ops].into_iter().collect::<Roles>());
        assert_eq!(
            roles("realm_access.roles"),
            [Role::AuditRead].into_iter().collect::<Roles>()
        );
        assert_eq!(roles("groups"), Roles::default());
        assert_eq!(
            principal(&claims, "roles").unwrap().name,
            "alice@mno.example"
        );
        for sub in [
            json!(""),
            json!(null),
            json!("a\u{0}b"),
            json!("x".repeat(300)),
        ] {
            let claims = json!({"sub": sub});
            assert_eq!(principal(&claims, "roles"), Err(JwtRefusal::NoSubject));
        }
    }

    #[test]
    fn only_jwt_shaped_tokens_go_to_the_provider() {
        assert!(looks_like_jwt(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt(b"hcmp_00ff"));
        assert!(!looks_like_jwt(&[b'a'; 64]));
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(keys(b"{}").is_err());
        assert!(keys(b"not json").is_err());
        assert!(keys(br#"{"keys": []}"#).unwrap().is_empty());
    }
}
