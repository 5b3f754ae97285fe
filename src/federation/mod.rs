//! Security between two CMPs (§9.3.2): forwarding authenticated requests
//! for codes of another CMP's routing prefix, and answering a peer's.
//!
//! # Trust model
//!
//! Peers are CMPs of a community that share a CA (`federation.ca_file`).
//! Each side has one federation certificate issued by it, used both as the
//! server certificate of its federation listener and as its client
//! certificate towards peers; both directions are TLS 1.3 with mutual
//! authentication, so each CMP knows which CMP it talks to, and no one else
//! (a client without a certificate, or with one from any other CA) gets
//! past the handshake. The public resolve listener never forwards anything
//! by itself: only a request that this CMP has authenticated (the MCC's
//! association checked, a [`Permit`] issued) is forwarded, and the
//! forwarded request carries the code only: no clientid, MSISDN, subscriber
//! hash or client address. A peer answers with the code's target, which
//! this CMP relays to the MCC.
//!
//! A prefix that is neither this CMP's nor a configured peer's is looked up
//! in the community's registry (MCR, `federation.mcr_url`:
//! `GET /mcr/v1/prefixes/{prefix}` answers `{"url": "https://..."}` or 404),
//! and the answer kept for `mcr_cache_secs`.
//!
//! # Where each rule lives
//!
//! - Only what enforce mode lets through is forwarded, in every mode: the
//!   core ([`crate::core::resolve`] answers `UNKNOWN_PREFIX` instead of
//!   `Resolution::Peer` for an unauthenticated [`Permit`]).
//! - Admission to the federation listener, before any TLS: the public
//!   listener's [`crate::net::admit`] with `Transport::Federation` and
//!   limiters of its own; then its handshake pace (`crate::net::federation`).
//! - A peer's certificate (community CA or the peer's `ca_file`, then its
//!   `spki_sha256` pin), and the addresses a registry answer may name:
//!   `trust`, on every outgoing connection.
//! - One breaker and one in-flight cap per peer URL, whichever way it was
//!   found (configured, or named by the registry any number of times):
//!   `Peers::peer_at`.
//! - The registry's answers, failures included, kept per prefix in a
//!   bounded cache that drops the least recently used one:
//!   `Registry::answers` (built by `answer_cache`).
//!
//! Owns the peer client (pooled HTTP/2 clients, per-peer in-flight cap and
//! circuit breaker) and the federation listener; the decision that a code
//! belongs to a peer is the core's ([`crate::core::resolve`]).

mod trust;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::clock::now_ms;
use crate::config::FederationConfig;
use crate::core::{Permit, Refusal};
use crate::wire::IndirectCode;

/// The federation resolve path, on the listener and towards peers.
pub const RESOLVE_PATH: &str = "/fed/v1/resolve";

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("federation client: {0}")]
    Client(String),
}

/// What `[federation]` gives a running server, read from its files: the
/// peers to forward to (when it names any, or a registry) and the
/// listener's mutual TLS (its certificate, and the community CA a peer's
/// certificate must chain to). Loaded at start and again by a reload,
/// which swaps both whole.
#[derive(Debug)]
pub struct Federation {
    pub peers: Option<Peers>,
    pub listener_tls: Option<Arc<rustls::ServerConfig>>,
    /// This CMP's certificate (for its expiry metric).
    pub leaf: Option<rustls::pki_types::CertificateDer<'static>>,
}

impl Federation {
    /// Reads the certificate, key and community CA once, for both sides.
    pub fn load(config: &FederationConfig) -> Result<Self, FederationError> {
        let membership =
            crate::tls::Membership::load(&config.cert_file, &config.key_file, &config.ca_file)?;
        let peers = (!config.peers.is_empty() || config.mcr_url.is_some())
            .then(|| Peers::new(config, &membership))
            .transpose()?;
        let listener_tls = config
            .listen
            .map(|_| membership.server_config())
            .transpose()?;
        Ok(Self {
            peers,
            listener_tls,
            leaf: membership.certs.first().cloned(),
        })
    }
}

/// The peer CMPs this one forwards to.
#[derive(Debug)]
pub struct Peers {
    /// Verifies peers by the community CA alone: the registry, and peers
    /// with neither a `ca_file` nor a pin of their own.
    community: reqwest::Client,
    /// The configured peers, by routing prefix.
    configured: Vec<(String, Arc<Peer>)>,
    registry: Option<Registry>,
    max_in_flight: usize,
    failures_to_open: u32,
    open_for: Duration,
}

/// The community's registry (MCR) and what it said, per prefix. It is
/// asked with the same mutual TLS as a peer, and a CMP it names is still
/// called only if its certificate is the community's, and (unless
/// `mcr_allow_private`) only at a public address, so a wrong answer cannot
/// send a request outside the community or into this CMP's own network.
#[derive(Debug)]
struct Registry {
    url: String,
    /// Calls the CMPs the registry names (see `trust`'s module docs).
    named: reqwest::Client,
    allow_private: bool,
    /// Prefix -> its answer, for `mcr_cache_secs` (a failure for
    /// [`REGISTRY_FAILURE_KEPT`]); at most [`REGISTRY_CACHE`] prefixes, the
    /// least recently used dropped first. Concurrent misses of one prefix
    /// ask the registry once.
    answers: moka::future::Cache<String, Answer>,
    /// Peer URL -> the one [`Peer`] (breaker, in-flight cap) the registry
    /// named there, across refreshes of `answers` (a configured peer's URL
    /// is the configured peer, see `Peers::peer_at`).
    by_url: moka::future::Cache<String, Arc<Peer>>,
}

/// What the registry said of a prefix.
#[derive(Debug, Clone)]
enum Answer {
    Owner(Arc<Peer>),
    /// Nobody's (404).
    Unowned,
    /// No usable answer: why (the metric's reason).
    Failed(Outcome),
}

/// How long a registry answer lives in the cache.
#[derive(Debug)]
struct AnswerLife {
    answer: Duration,
    failure: Duration,
}

impl moka::Expiry<String, Answer> for AnswerLife {
    fn expire_after_create(&self, _: &String, answer: &Answer, _: Instant) -> Option<Duration> {
        Some(match answer {
            Answer::Failed(_) => self.failure,
            Answer::Owner(_) | Answer::Unowned => self.answer,
        })
    }
}

/// The registry's answers: at most `capacity`, the least recently used
/// dropped first (not moka's default, which may refuse a new entry
/// instead), each for its [`AnswerLife`].
fn answer_cache(capacity: u64, life: AnswerLife) -> moka::future::Cache<String, Answer> {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .expire_after(life)
        .build()
}

/// Largest answer read from a peer or the registry, bytes.
const MAX_ANSWER: usize = 16 * 1024;

/// Prefixes whose registry answer is kept at most, and peer URLs whose
/// breaker is: past it the least recently used is dropped.
const REGISTRY_CACHE: u64 = 10_000;

/// How long a registry failure (no answer in time, an error, an answer
/// that is not one) is kept: meanwhile the prefix's codes answer 503 at
/// once instead of asking a registry that is down again.
const REGISTRY_FAILURE_KEPT: Duration = Duration::from_secs(5);

/// The registry's answer for a prefix.
#[derive(serde::Deserialize)]
struct RegistryAnswer {
    url: String,
}

#[derive(Debug)]
struct Peer {
    url: String,
    /// The client whose TLS checks this peer as configured (its CA, its
    /// pin), or the one for CMPs the registry names.
    client: reqwest::Client,
    in_flight: Semaphore,
    breaker: Breaker,
}

/// What a peer answered, for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Resolved,
    NotFound,
    Busy,
    Open,
    Failed,
    /// Neither a configured peer nor the registry knows the prefix.
    Unowned,
    RegistryFailed,
    /// The peer's certificate does not match its `spki_sha256`.
    PinMismatch,
    /// The peer's certificate was refused (its CA, its name, its dates).
    CertificateRefused,
    /// The registry named a CMP at an internal address (`trust`).
    PrivateAddress,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Resolved => "resolved",
            Outcome::NotFound => "not_found",
            Outcome::Busy => "busy",
            Outcome::Open => "circuit_open",
            Outcome::Failed => "failed",
            Outcome::Unowned => "unknown_prefix",
            Outcome::RegistryFailed => "registry_failed",
            Outcome::PinMismatch => "pin_mismatch",
            Outcome::CertificateRefused => "certificate_refused",
            Outcome::PrivateAddress => "private_address",
        }
    }
}

/// The peer's answer (its resolve body, of which the target is kept).
#[derive(serde::Deserialize)]
struct PeerAnswer {
    target: String,
}

impl Peers {
    pub fn new(
        config: &FederationConfig,
        membership: &crate::tls::Membership,
    ) -> Result<Self, FederationError> {
        let community_roots = membership.community.clone();
        let client = |roots, pin, peer: &str, resolver: Option<trust::PublicOnly>| {
            let identity = (membership.certs.clone(), membership.key.clone_key());
            let tls = trust::client_config(identity, roots, pin, peer)?;
            let mut builder = reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .redirect(reqwest::redirect::Policy::none());
            if let Some(resolver) = resolver {
                builder = builder.dns_resolver(Arc::new(resolver));
            }
            builder
                .build()
                .map_err(|e| FederationError::Client(e.to_string()))
        };
        let community = client(community_roots.clone(), None, "community", None)?;
        let mut peers = Self {
            community: community.clone(),
            configured: Vec::new(),
            registry: None,
            max_in_flight: config.max_in_flight_per_peer,
            failures_to_open: config.failures_to_open,
            open_for: config.open_for,
        };
        for peer in &config.peers {
            let client = match (&peer.ca_file, peer.spki_sha256) {
                (None, None) => community.clone(),
                (ca_file, pin) => {
                    let roots = match ca_file {
                        Some(ca_file) => crate::tls::roots(ca_file)?,
                        None => community_roots.clone(),
                    };
                    client(roots, pin, &peer.url, None)?
                }
            };
            let found = peers.new_peer(&peer.url, client);
            peers
                .configured
                .push((peer.prefix.as_str().to_owned(), found));
        }
        if let Some(url) = &config.mcr_url {
            let named = match config.mcr_allow_private {
                true => community,
                false => client(community_roots, None, "registry", Some(trust::PublicOnly))?,
            };
            let life = AnswerLife {
                answer: config.mcr_cache,
                failure: REGISTRY_FAILURE_KEPT,
            };
            peers.registry = Some(Registry {
                url: url.clone(),
                named,
                allow_private: config.mcr_allow_private,
                answers: answer_cache(REGISTRY_CACHE, life),
                by_url: moka::future::Cache::builder()
                    .max_capacity(REGISTRY_CACHE)
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .build(),
            });
        }
        Ok(peers)
    }

    fn new_peer(&self, url: &str, client: reqwest::Client) -> Arc<Peer> {
        Arc::new(Peer {
            url: url.to_owned(),
            client,
            in_flight: Semaphore::new(self.max_in_flight),
            breaker: Breaker::new(self.failures_to_open, self.open_for),
        })
    }

    /// The one [`Peer`] at `url`: a configured one, else the one made the
    /// first time the registry named it (the same breaker and in-flight cap
    /// however often the registry's answer is asked again).
    async fn peer_at(&self, registry: &Registry, url: &str) -> Arc<Peer> {
        if let Some((_, peer)) = self.configured.iter().find(|(_, p)| p.url == url) {
            return peer.clone();
        }
        let made = async { self.new_peer(url, registry.named.clone()) };
        registry.by_url.get_with_by_ref(url, made).await
    }

    /// A GET's status and body, if it answers within the timeout with at
    /// most [`MAX_ANSWER`] bytes (a larger answer is never read whole);
    /// otherwise why not.
    async fn get_small(client: &reqwest::Client, url: String) -> Result<(u16, Vec<u8>), Outcome> {
        let failed = |error: reqwest::Error| trust::refusal(&error).unwrap_or(Outcome::Failed);
        let mut response = client.get(url).send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(Outcome::Failed);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// The CMP that owns `prefix`: configured, or named by the registry.
    async fn owner(&self, prefix: &str) -> Result<Arc<Peer>, (Outcome, Refusal)> {
        if let Some((_, peer)) = self.configured.iter().find(|(p, _)| p == prefix) {
            return Ok(peer.clone());
        }
        let Some(registry) = &self.registry else {
            return Err((Outcome::Unowned, Refusal::UnknownPrefix));
        };
        let asked = self.ask_registry(registry, prefix);
        match registry.answers.get_with_by_ref(prefix, asked).await {
            Answer::Owner(peer) => Ok(peer),
            Answer::Unowned => Err((Outcome::Unowned, Refusal::UnknownPrefix)),
            Answer::Failed(outcome) => Err((outcome, Refusal::UpstreamUnavailable)),
        }
    }

    /// Asks the registry who owns `prefix`.
    async fn ask_registry(&self, registry: &Registry, prefix: &str) -> Answer {
        let url = format!("{}/mcr/v1/prefixes/{prefix}", registry.url);
        let failed = Answer::Failed(Outcome::RegistryFailed);
        let body = match Self::get_small(&self.community, url).await {
            Ok((200, body)) => body,
            Ok((404, _)) => return Answer::Unowned,
            Ok(_) | Err(_) => return failed,
        };
        let Ok(answer) = serde_json::from_slice::<RegistryAnswer>(&body) else {
            return failed;
        };
        let Ok(uri) = answer.url.parse::<http::Uri>() else {
            return failed;
        };
        if uri.scheme_str() != Some("https") {
            return failed;
        }
        // A host name is checked on every connection (trust::PublicOnly);
        // an IP literal never reaches a resolver, so it is checked here.
        if !registry.allow_private && trust::ip_literal(&uri).is_some_and(trust::internal_address) {
            tracing::warn!(prefix, url = %answer.url, "federation: the registry named a CMP at an internal address; not called");
            return Answer::Failed(Outcome::PrivateAddress);
        }
        Answer::Owner(
            self.peer_at(registry, answer.url.trim_end_matches('/'))
                .await,
        )
    }

    /// Resolves `code` at the peer that owns its prefix. The [`Permit`]
    /// says this CMP authenticated the request; nothing of it is sent.
    pub async fn resolve(
        &self,
        _permit: &Permit,
        code: &IndirectCode,
    ) -> (Outcome, Result<Arc<str>, Refusal>) {
        let peer = match self.owner(code.prefix()).await {
            Ok(peer) => peer,
            Err((outcome, refusal)) => return (outcome, Err(refusal)),
        };
        if !peer.breaker.allows(now_ms()) {
            return (Outcome::Open, Err(Refusal::UpstreamUnavailable));
        }
        let Ok(_turn) = peer.in_flight.try_acquire() else {
            return (Outcome::Busy, Err(Refusal::UpstreamUnavailable));
        };
        let url = format!("{}{RESOLVE_PATH}?code={}", peer.url, code.as_str());
        let (outcome, result) = match Self::get_small(&peer.client, url).await {
            Ok((200, body)) => match serde_json::from_slice::<PeerAnswer>(&body) {
                Ok(answer) if crate::wire::valid_target(&answer.target) => {
                    (Outcome::Resolved, Ok(Arc::from(answer.target)))
                }
                _ => (Outcome::Failed, Err(Refusal::UpstreamUnavailable)),
            },
            // The peer is up and says so: not a failure of the link.
            Ok((404, body)) => {
                let unowned = serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|error| error["code"] == "UNKNOWN_PREFIX");
                match unowned {
                    true => (Outcome::Unowned, Err(Refusal::UnknownPrefix)),
                    false => (Outcome::NotFound, Err(Refusal::CodeNotFound)),
                }
            }
            Ok(_) => (Outcome::Failed, Err(Refusal::UpstreamUnavailable)),
            Err(outcome) => (outcome, Err(Refusal::UpstreamUnavailable)),
        };
        let link_ok = matches!(
            outcome,
            Outcome::Resolved | Outcome::NotFound | Outcome::Unowned
        );
        peer.breaker.record(link_ok, now_ms());
        (outcome, result)
    }
}

/// Opens after `failures_to_open` failures in a row: then every request
/// fails at once for `open_for`. After that requests go through again, but
/// until one succeeds (which closes it) the next failure reopens it at once.
#[derive(Debug)]
struct Breaker {
    failures_to_open: u32,
    open_for_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open,
            open_for_ms: open_for.as_millis() as u64,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    fn allows(&self, now_ms: u64) -> bool {
        now_ms >= self.open_until_ms.load(Ordering::Acquire)
    }

    fn record(&self, ok: bool, now_ms: u64) {
        if ok {
            self.failures.store(0, Ordering::Release);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.failures_to_open {
            // Open (again, after a failed half-open try) for the period.
            self.open_until_ms
                .store(now_ms + self.open_for_ms, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_and_half_opens_after_the_period() {
        let breaker = Breaker::new(3, Duration::from_millis(1000));
        for _ in 0..2 {
            breaker.record(false, 0);
        }
        assert!(breaker.allows(0), "two failures: still closed");
        breaker.record(false, 0);
        assert!(!breaker.allows(500), "open");
        assert!(breaker.allows(1000), "the period is over: try again");
        breaker.record(false, 1000);
        assert!(!breaker.allows(1500), "the try failed: open again");
        assert!(breaker.allows(2000));
        breaker.record(true, 2000);
        breaker.record(false, 2000);
        assert!(breaker.allows(2001), "a success closed it");
    }

    #[tokio::test]
    async fn the_registry_cache_drops_the_least_recently_used_and_failures_first() {
        let life = AnswerLife {
            answer: Duration::from_secs(60),
            failure: Duration::from_millis(100),
        };
        let cache = answer_cache(3, life);
        for prefix in ["a", "b", "c"] {
            cache.insert(prefix.into(), Answer::Unowned).await;
        }
        // moka orders entries in the background: let it, as time would.
        cache.run_pending_tasks().await;
        // "a" is used again: "b" is now the least recently used.
        assert!(cache.get("a").await.is_some());
        cache.run_pending_tasks().await;
        cache.insert("d".into(), Answer::Unowned).await;
        cache.run_pending_tasks().await;
        assert_eq!(cache.entry_count(), 3, "bounded, not emptied");
        for (prefix, kept) in [("a", true), ("b", false), ("c", true), ("d", true)] {
            assert_eq!(cache.get(prefix).await.is_some(), kept, "{prefix}");
        }
        cache
            .insert("e".into(), Answer::Failed(Outcome::RegistryFailed))
            .await;
        assert!(cache.get("e").await.is_some(), "a failure is kept a while");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(cache.get("e").await.is_none(), "and only a while");
        assert!(cache.get("d").await.is_some(), "answers live longer");
    }

    #[test]
    fn only_http_urls_that_fit_a_header_are_targets() {
        assert!(crate::wire::valid_target("https://example.org/x"));
        assert!(!crate::wire::valid_target("javascript:alert(1)"));
        assert!(!crate::wire::valid_target(
            "https://example.org/\nSet-Cookie: x"
        ));
        assert!(!crate::wire::valid_target(&format!(
            "https://e.org/{}",
            "a".repeat(5000)
        )));
    }
}
