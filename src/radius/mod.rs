//! The operator's own identity feed: a RADIUS Accounting server (RFC 2866)
//! that the packet gateway (PGW, GGSN, BNG) sends its session records to.
//! A Start or Interim-Update binds the session's address (Framed-IP-Address,
//! and Framed-IPv6-Prefix as a prefix) to the subscriber whose MSISDN it
//! carries; a Stop unbinds it, but only if the binding is still that
//! session's, so a late Stop cannot clear an address already handed to the
//! next subscriber. Bindings expire when no Interim refreshes them within
//! `radius.binding_ttl_secs`.
//!
//! Owns the UDP socket, the per-client secrets and the reply cache; the
//! bindings are the same [`Bindings`] the admin API feeds, through the same
//! [`Bindings::bind`] (MNO pools, `max_bindings`). Nothing here is durable: the gateway re-sends, as it does for
//! any accounting server.
//!
//! Each datagram is handled to the end (checked, applied, its answer
//! cached) with no `.await` in between; only then is the answer sent. A
//! shutdown between the two loses an answer, never a binding: the gateway
//! re-sends and the reply cache answers.
//!
//! What a datagram gets:
//! - from an address outside every `[[radius.clients]]` network, not an
//!   Accounting-Request, or with a Request Authenticator that the client's
//!   secret does not give: dropped, counted (`radius_packets{outcome =
//!   "dropped"}`); nothing is allocated for it;
//! - a re-sent request (same gateway address, Identifier and authenticator
//!   within `REPLY_TTL`, from whichever port): the first answer again,
//!   nothing applied twice;
//! - a request whose gateway says it sent it (Event-Timestamp plus
//!   Acct-Delay-Time) more than `REPLY_TTL` before now, or after now:
//!   dropped and counted (`stale_timestamp`, `future_timestamp`). The reply
//!   cache forgets a request after `REPLY_TTL`; this keeps a recorded Start
//!   replayed later from binding its address again. A request without an
//!   Event-Timestamp is taken as before (the reply cache is its only guard);
//!   a gateway's clock must be within `REPLY_TTL` of ours;
//! - a request that can never be applied (no address, no or a bad MSISDN,
//!   an address outside the MNO pools): answered, so the gateway stops
//!   re-sending it, and counted as `ignored` with the reason;
//! - a Start or Interim while `max_bindings` are held: not answered, so the
//!   gateway re-sends it later (or fails over).

pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{RadiusConfig, Secret};
use crate::core::BindingSource;
use crate::metrics::Metrics;
use crate::sessions::{Bind, BindError, Bindings};
use crate::wire::Msisdn;
use packet::{Header, PacketError, Request, Status};

/// How long an answer is kept for re-sent requests (RFC 5080 §2.2.2 asks
/// for at least the client's retransmission window).
const REPLY_TTL: Duration = Duration::from_secs(30);
/// Answers kept at most; the oldest go first.
const REPLY_CACHE: usize = 65_536;

/// A configured client network and its shared secret.
#[derive(Debug)]
pub struct Client {
    pub network: IpNet,
    secret: Secret<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RadiusError {
    #[error("radius secret file {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("radius secret file {0} is empty")]
    EmptySecret(PathBuf),
    #[error("cannot listen for RADIUS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The clients of `config`, their secrets read from their files (one line;
/// surrounding whitespace is not part of it).
pub fn clients(config: &RadiusConfig) -> Result<Vec<Client>, RadiusError> {
    config
        .clients
        .iter()
        .map(|(network, path)| {
            let text = std::fs::read_to_string(path).map_err(|source| RadiusError::Secret {
                path: path.clone(),
                source,
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(RadiusError::EmptySecret(path.clone()));
            }
            Ok(Client {
                network: *network,
                secret: Secret::new(secret.as_bytes().to_vec()),
            })
        })
        .collect()
}

pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, RadiusError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|source| RadiusError::Bind { addr, source })
}

/// Serves accounting on `socket` until `shutdown`.
pub async fn serve(
    config: RadiusConfig,
    bindings: Arc<Bindings>,
    metrics: Arc<Metrics>,
    socket: UdpSocket,
    clients: Vec<Client>,
    shutdown: CancellationToken,
) {
    let mut server = Server {
        config,
        bindings,
        metrics,
        clients,
        replies: Replies::default(),
    };
    let mut buffer = vec![0u8; packet::MAX_PACKET];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                // ICMP errors from earlier sends surface here; keep serving.
                Err(_) => continue,
            },
        };
        if let Some(answer) = server.handle(&buffer[..len], from, now_ms()) {
            let _ = socket.send_to(&answer, from).await;
        }
    }
}

struct Server {
    config: RadiusConfig,
    bindings: Arc<Bindings>,
    metrics: Arc<Metrics>,
    clients: Vec<Client>,
    replies: Replies,
}

/// What became of a datagram, for the counter.
enum Outcome {
    Applied(&'static str),
    Ignored(&'static str),
    Duplicate,
    Dropped(&'static str),
    Full,
}

impl Server {
    fn handle(&mut self, datagram: &[u8], from: SocketAddr, now_ms: u64) -> Option<Arc<[u8]>> {
        let (outcome, answer) = self.answer(datagram, from, now_ms);
        let (outcome, reason) = match outcome {
            Outcome::Applied(status) => ("applied", status),
            Outcome::Ignored(reason) => ("ignored", reason),
            Outcome::Duplicate => ("duplicate", "resent"),
            Outcome::Dropped(reason) => ("dropped", reason),
            Outcome::Full => ("unanswered", "max_bindings"),
        };
        self.metrics.radius(outcome, reason);
        answer
    }

    fn answer(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now_ms: u64,
    ) -> (Outcome, Option<Arc<[u8]>>) {
        let source = from.ip().to_canonical();
        // The longest configured network that holds the source.
        let Some(client) = self
            .clients
            .iter()
            .filter(|c| c.network.contains(&source))
            .max_by_key(|c| c.network.prefix_len())
        else {
            return (Outcome::Dropped("unknown_client"), None);
        };
        let secret = client.secret.expose().as_slice();
        let header = match Header::read(datagram).and_then(|h| h.verify(secret).map(|()| h)) {
            Ok(header) => header,
            Err(e) => return (Outcome::Dropped(e.label()), None),
        };
        let key = (source, header.identifier, header.authenticator);
        if let Some(answer) = self.replies.get(&key, now_ms) {
            return (Outcome::Duplicate, Some(answer));
        }
        let outcome = match header.attributes() {
            Ok(request) => {
                if let Some(reason) = outside_window(&request, now_ms) {
                    // Not answered, not cached: nothing a replay can use.
                    return (Outcome::Dropped(reason), None);
                }
                self.apply(&request, source, now_ms)
            }
            Err(e) => Outcome::Ignored(PacketError::label(e)),
        };
        if matches!(outcome, Outcome::Full) {
            return (outcome, None);
        }
        let answer: Arc<[u8]> = header.response(secret).into();
        self.replies.insert(key, answer.clone(), now_ms);
        (outcome, Some(answer))
    }

    fn apply(&self, request: &Request<'_>, nas: std::net::IpAddr, now_ms: u64) -> Outcome {
        let Some(status) = request.status() else {
            return Outcome::Ignored("no_status_type");
        };
        if matches!(
            status,
            Status::AccountingOn | Status::AccountingOff | Status::Other(_)
        ) {
            // Bindings of a rebooted gateway expire on their own.
            return Outcome::Applied("other");
        }
        let networks = request.networks();
        if networks.is_empty() {
            return Outcome::Ignored("no_address");
        }
        // A session is its gateway and its Acct-Session-Id: only its own
        // records change its bindings.
        let session = BindingSource::Radius {
            nas,
            session_id: Arc::from(request.session_id().unwrap_or_default()),
        };
        if status == Status::Stop {
            for network in networks {
                self.bindings.unbind_session(network, &session);
            }
            return Outcome::Applied("stop");
        }
        let Some(msisdn) = request
            .msisdn(self.config.msisdn_attribute)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .and_then(|text| Msisdn::parse(text).ok())
        else {
            return Outcome::Ignored("bad_msisdn");
        };
        let bound = self.bindings.bind(Bind {
            networks: &networks,
            msisdn: &msisdn,
            expires_ms: now_ms.saturating_add(self.config.binding_ttl.as_millis() as u64),
            source: session,
            // An Interim refreshes its own session's binding (or makes it,
            // if it was lost); it never takes an address from another
            // session.
            unless_live_at: (status != Status::Start).then_some(now_ms),
        });
        match bound {
            Ok(_) => {}
            Err(BindError::NotInMnoNetwork) => return Outcome::Ignored("not_mno_address"),
            Err(BindError::Full) => return Outcome::Full,
        }
        Outcome::Applied(match status {
            Status::Start => "start",
            _ => "interim",
        })
    }
}

/// Why a request is not believed by the time its gateway says it sent it
/// (see the module docs); `None` when within `REPLY_TTL` of `now_ms`, or
/// when it does not say.
fn outside_window(request: &Request<'_>, now_ms: u64) -> Option<&'static str> {
    let sent_ms = request.sent_at_secs()?.saturating_mul(1000);
    let window = REPLY_TTL.as_millis() as u64;
    if sent_ms.saturating_add(window) < now_ms {
        return Some("stale_timestamp");
    }
    if sent_ms > now_ms.saturating_add(window) {
        return Some("future_timestamp");
    }
    None
}

/// The gateway (its address: some re-send from another port), the
/// Identifier and the Request Authenticator.
type ReplyKey = (std::net::IpAddr, u8, [u8; 16]);

/// Answers by request, for re-sent requests: at most `REPLY_CACHE`, each
/// for `REPLY_TTL`.
#[derive(Default)]
struct Replies {
    answers: HashMap<ReplyKey, (Arc<[u8]>, u64)>,
    order: VecDeque<ReplyKey>,
}

impl Replies {
    fn get(&self, key: &ReplyKey, now_ms: u64) -> Option<Arc<[u8]>> {
        let (answer, at_ms) = self.answers.get(key)?;
        (now_ms.saturating_sub(*at_ms) < REPLY_TTL.as_millis() as u64).then(|| answer.clone())
    }

    fn insert(&mut self, key: ReplyKey, answer: Arc<[u8]>, now_ms: u64) {
        while self.order.len() >= REPLY_CACHE
            || self.order.front().is_some_and(|oldest| {
                self.answers.get(oldest).is_none_or(|(_, at)| {
                    now_ms.saturating_sub(*at) >= REPLY_TTL.as_millis() as u64
                })
            })
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.answers.remove(&oldest);
        }
        if self.answers.insert(key, (answer, now_ms)).is_none() {
            self.order.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_believed_within_the_reply_window_of_when_it_was_sent() {
        let now_secs = 1_800_000_000u64;
        let now_ms = now_secs * 1000 + 500;
        let verdict = |event: Option<u64>, delay: Option<u32>| {
            let mut attributes =
                vec![(packet::attr::ACCT_STATUS_TYPE, 1u32.to_be_bytes().to_vec())];
            if let Some(event) = event {
                attributes.push((
                    packet::attr::EVENT_TIMESTAMP,
                    (event as u32).to_be_bytes().to_vec(),
                ));
            }
            if let Some(delay) = delay {
                attributes.push((packet::attr::ACCT_DELAY_TIME, delay.to_be_bytes().to_vec()));
            }
            let attributes: Vec<(u8, &[u8])> =
                attributes.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let datagram = packet::accounting_request(7, &attributes, b"secret");
            let header = Header::read(&datagram).unwrap();
            outside_window(&header.attributes().unwrap(), now_ms)
        };
        let window = REPLY_TTL.as_secs();
        assert_eq!(verdict(None, None), None, "no timestamp: the cache only");
        assert_eq!(verdict(Some(now_secs), None), None);
        assert_eq!(verdict(Some(now_secs - window + 1), None), None);
        assert_eq!(
            verdict(Some(now_secs - window - 1), None),
            Some("stale_timestamp")
        );
        assert_eq!(
            verdict(Some(now_secs - 120), Some(119)),
            None,
            "re-sent for two minutes: sent now"
        );
        assert_eq!(
            verdict(Some(now_secs - 120), Some(60)),
            Some("stale_timestamp")
        );
        assert_eq!(verdict(Some(now_secs + window), None), None);
        assert_eq!(
            verdict(Some(now_secs + window + 1), None),
            Some("future_timestamp")
        );
    }

    #[test]
    fn the_reply_cache_is_bounded_and_forgets_old_answers() {
        let mut replies = Replies::default();
        let from: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let answer: Arc<[u8]> = Arc::from(&b"x"[..]);
        for i in 0..REPLY_CACHE + 10 {
            let key = (from, i as u8, (i as u128).to_le_bytes());
            replies.insert(key, answer.clone(), 1000);
        }
        assert_eq!(replies.answers.len(), REPLY_CACHE);
        assert_eq!(replies.order.len(), REPLY_CACHE);
        let last = REPLY_CACHE + 9;
        let key = (from, last as u8, (last as u128).to_le_bytes());
        assert!(replies.get(&key, 1000).is_some());
        assert!(
            replies
                .get(&key, 1000 + REPLY_TTL.as_millis() as u64)
                .is_none()
        );
        replies.insert(
            (from, 0, [9; 16]),
            answer,
            1000 + REPLY_TTL.as_millis() as u64,
        );
        assert_eq!(replies.answers.len(), 1, "expired answers go first");
    }
}
