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
//! Owns the peer client (one pooled HTTP/2 client, per-peer in-flight cap
//! and circuit breaker) and the federation listener; the decision that a
//! code belongs to a peer is the core's ([`crate::core::resolve`]).

mod listener;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::FederationConfig;
use crate::core::{Permit, Refusal};
use crate::net::now_ms;
use crate::wire::IndirectCode;

pub use listener::serve;

/// The federation resolve path, on the listener and towards peers.
pub const RESOLVE_PATH: &str = "/fed/v1/resolve";

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("federation client: {0}")]
    Client(String),
}

/// The peer CMPs this one forwards to.
#[derive(Debug)]
pub struct Peers {
    client: reqwest::Client,
    peers: Vec<Arc<Peer>>,
    registry: Option<Registry>,
    max_in_flight: usize,
    failures_to_open: u32,
    open_for: Duration,
}

/// The community's registry (MCR) and what it said, per prefix, for
/// `cache_ms`: a CMP, or none. It is asked with the same mutual TLS as a
/// peer, and a CMP it names is still called only if its certificate is
/// the community's, so a wrong answer cannot send a request outside it.
#[derive(Debug)]
struct Registry {
    url: String,
    cache_ms: u64,
    known: dashmap::DashMap<String, (Option<Arc<Peer>>, u64)>,
}

/// Largest answer read from a peer or the registry, bytes.
const MAX_ANSWER: usize = 16 * 1024;

/// Prefixes whose registry answer is kept at most (then all are forgotten).
const REGISTRY_CACHE: usize = 10_000;

/// The registry's answer for a prefix.
#[derive(serde::Deserialize)]
struct RegistryAnswer {
    url: String,
}

#[derive(Debug)]
struct Peer {
    prefix: String,
    url: String,
    in_flight: Semaphore,
    breaker: Breaker,
}

/// What a peer answered, for the metric.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Resolved,
    NotFound,
    Busy,
    Open,
    Failed,
    /// Neither a configured peer nor the registry knows the prefix.
    Unowned,
    RegistryFailed,
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
        }
    }
}

/// The peer's answer (its resolve body, of which the target is kept).
#[derive(serde::Deserialize)]
struct PeerAnswer {
    target: String,
}

impl Peers {
    pub fn new(config: &FederationConfig) -> Result<Self, FederationError> {
        let (certs, key) = crate::net::tls::load(&config.cert_file, &config.key_file)?;
        let roots = crate::net::tls::roots(&config.ca_file)?;
        let tls = crate::net::tls::client_config(certs, key, roots)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FederationError::Client(e.to_string()))?;
        let mut peers = Self {
            client,
            peers: Vec::new(),
            registry: config.mcr_url.as_ref().map(|url| Registry {
                url: url.clone(),
                cache_ms: config.mcr_cache.as_millis() as u64,
                known: Default::default(),
            }),
            max_in_flight: config.max_in_flight_per_peer,
            failures_to_open: config.failures_to_open,
            open_for: config.open_for,
        };
        peers.peers = config
            .peers
            .iter()
            .map(|(prefix, url)| peers.peer(prefix.as_str(), url))
            .collect();
        Ok(peers)
    }

    fn peer(&self, prefix: &str, url: &str) -> Arc<Peer> {
        Arc::new(Peer {
            prefix: prefix.to_owned(),
            url: url.to_owned(),
            in_flight: Semaphore::new(self.max_in_flight),
            breaker: Breaker::new(self.failures_to_open, self.open_for),
        })
    }

    /// A GET's status and body, if it answers within the timeout with at
    /// most [`MAX_ANSWER`] bytes (a larger answer is never read whole).
    async fn get_small(&self, url: String) -> Option<(u16, Vec<u8>)> {
        let mut response = self.client.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.ok()? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        Some((status, body))
    }

    /// The CMP that owns `prefix`: configured, or named by the registry.
    async fn owner(&self, prefix: &str) -> Result<Arc<Peer>, (Outcome, Refusal)> {
        if let Some(peer) = self.peers.iter().find(|p| p.prefix == prefix) {
            return Ok(peer.clone());
        }
        let unowned = (Outcome::Unowned, Refusal::UnknownPrefix);
        let Some(registry) = &self.registry else {
            return Err(unowned);
        };
        let now = now_ms();
        if let Some(known) = registry.known.get(prefix)
            && known.1 > now
        {
            return known.0.clone().ok_or(unowned);
        }
        let failed = (Outcome::RegistryFailed, Refusal::UpstreamUnavailable);
        let url = format!("{}/mcr/v1/prefixes/{prefix}", registry.url);
        let (status, body) = self.get_small(url).await.ok_or(failed.clone())?;
        let owner = match status {
            200 => {
                let answer: RegistryAnswer =
                    serde_json::from_slice(&body).map_err(|_| failed.clone())?;
                if !answer.url.starts_with("https://") || answer.url.parse::<http::Uri>().is_err() {
                    return Err(failed);
                }
                Some(self.peer(prefix, answer.url.trim_end_matches('/')))
            }
            404 => None,
            _ => return Err(failed),
        };
        if registry.known.len() >= REGISTRY_CACHE {
            registry.known.clear();
        }
        registry
            .known
            .insert(prefix.to_owned(), (owner.clone(), now + registry.cache_ms));
        owner.ok_or(unowned)
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
        let (outcome, result) = match self.get_small(url).await {
            Some((200, body)) => match serde_json::from_slice::<PeerAnswer>(&body) {
                Ok(answer) if crate::wire::valid_target(&answer.target) => {
                    (Outcome::Resolved, Ok(Arc::from(answer.target)))
                }
                _ => (Outcome::Failed, Err(Refusal::UpstreamUnavailable)),
            },
            // The peer is up and says so: not a failure of the link.
            Some((404, body)) => {
                let unowned = serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|error| error["code"] == "UNKNOWN_PREFIX");
                match unowned {
                    true => (Outcome::Unowned, Err(Refusal::UnknownPrefix)),
                    false => (Outcome::NotFound, Err(Refusal::CodeNotFound)),
                }
            }
            _ => (Outcome::Failed, Err(Refusal::UpstreamUnavailable)),
        };
        peer.breaker
            .record(!matches!(outcome, Outcome::Failed), now_ms());
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
