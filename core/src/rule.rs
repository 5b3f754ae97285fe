//! The resolution rule (DESIGN §4) as one function, [`admit`]: which check
//! comes first, what each refusal costs the server and the client, and
//! what is counted. A reader, a test and a benchmark call it alike; the
//! transports only carry out what it returns.
//!
//! It asks the world for facts through [`Facts`] (an index lookup, a
//! limiter's verdict, who the network says the client is), each at most
//! once and only when the rule gets to it, so that a spoofed request costs
//! a parse, one lookup and one limiter check. It returns an [`Outcome`]:
//! how long the client waits first (the tarpit's turn: a refusal can cost
//! a wait too), what to count, and the verdict: a refusal, a permit to
//! resolve, or an association to make durable first.
//!
//! The order, cheapest first:
//!
//! 1. the enrichment headers as the gateway wrote them (an ambiguous one
//!    is refused);
//! 2. parse: the query, the code, the clientid;
//! 3. the index: an association spends its clientid's budget (never its
//!    address's: many subscribers share an address behind a NAT); a
//!    request without one spends its address's budget, and is shed first
//!    when the server sheds;
//! 4. identity, then, for a request without an association, a turn in the
//!    tarpit (first scans from the MNO network and the rest each have one);
//! 5. the decision ([`decide`]), and for a new association the
//!    subscriber's creation budget.
//!
//! Codes and prefixes come after, in [`crate::resolve`], with the permit.

use std::net::IpAddr;
use std::time::Duration;

use crate::decide::{AuthMode, Decision, Permit, Policy, decide};
use crate::identity::{ClientView, Identity, MnoPolicy, Origin, limit_address};
use crate::model::{Association, IdentitySource};
use crate::refusal::Refusal;
use crate::wire::{
    ClientIdError, ClientIdRef, CodeError, IndirectCode, Query, QueryError, SubscriberRef,
};

/// What a keyed limit said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the rate: wait this long.
    Limited(Duration),
    /// The key table is full of active keys: let through, uncounted.
    Overflow,
}

/// The facts the rule asks for, each at most once and in the rule's
/// order. The server answers from its index, limiters and session
/// bindings; a test or a bench from plain values.
pub trait Facts {
    /// The association of a well-formed clientid, if it has one.
    fn association(&mut self, clientid: &ClientIdRef<'_>) -> Option<Association>;
    /// Takes one request from the budget of `source` (a per-address key).
    fn address_budget(&mut self, source: IpAddr) -> Verdict;
    /// Takes one request from the budget of an associated clientid.
    fn clientid_budget(&mut self, association: &Association) -> Verdict;
    /// Takes one creation from the budget of `subscriber`.
    fn creation_budget(&mut self, subscriber: &SubscriberRef) -> Verdict;
    /// Whether requests without an association are shed now.
    fn shedding(&mut self) -> bool;
    /// Who the network says the client is.
    fn identity(&mut self, view: &ClientView<'_>) -> Identity;
    /// A turn in the tarpit for a request without an association from
    /// `source`: how long to wait for it, or the refusal when the queue is
    /// too long (`Overloaded`) or `source` has too many waiting.
    fn tarpit(&mut self, on_mno_network: bool, source: IpAddr) -> Result<Duration, Refusal>;
}

/// The settings the rule applies.
#[derive(Debug, Clone)]
pub struct Rules {
    pub policy: Policy,
    pub mno: MnoPolicy,
    /// `limits.max_uri_bytes`: a longer query is refused unparsed.
    pub max_uri_bytes: usize,
    /// `limits.ipv6_prefix_len`: per-address budgets count an IPv6 client
    /// by this prefix.
    pub ipv6_prefix_len: u8,
    /// `mno.msisdn_header`: the header a trusted gateway names the
    /// subscriber in.
    pub msisdn_header: http::HeaderName,
}

/// What the transport counts of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Enrichment headers from a peer that is not a trusted gateway.
    pub spoof_attempt: bool,
    /// Refused because the server sheds requests without an association.
    pub shed: bool,
    /// Waits in the tarpit before it goes on.
    pub tarpitted: bool,
    /// A limiter's key table was full (the limit's name), so it let the
    /// request through uncounted.
    pub overflowed: Option<&'static str>,
    /// Monitor mode: what enforce would have refused it with.
    pub monitored: Option<Refusal>,
}

/// What to do with a request that passed: resolve it, or make its
/// association durable first (the subscriber's creation budget is spent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    Resolve(Permit),
    Associate {
        subscriber: SubscriberRef,
        source: IdentitySource,
        rebind: bool,
    },
}

/// The rule's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<'q> {
    /// How long the client waits before the verdict is carried out
    /// (its turn in the tarpit, refused or not).
    pub wait: Duration,
    pub tally: Tally,
    pub verdict: Result<Passed<'q>, Refusal>,
}

/// A request that passed authentication (or needs none), with what the
/// rest of its resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed<'q> {
    pub code: IndirectCode,
    /// The clientid, well formed (`None`: none, or a malformed one that
    /// monitor or off mode let through).
    pub clientid: Option<ClientIdRef<'q>>,
    pub identity: Identity,
    pub then: Admitted,
}

/// The key per-address budgets count `addr` under: an IPv4 address as
/// itself (an IPv4-mapped IPv6 address is the IPv4 address it maps), an
/// IPv6 address by its first `v6_prefix_len` bits, since one subscriber or
/// one attacker is handed a whole prefix (a /64, typically) to pick from.
pub fn source_key(addr: IpAddr, v6_prefix_len: u8) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u32::from(v6_prefix_len.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
        v4 => v4,
    }
}

/// One request as the transport received it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    pub origin: Origin,
    pub headers: &'r http::HeaderMap,
    /// The query string (after `?`), as sent.
    pub query: &'r str,
}

/// The rule of the module docs for `request`. The parsed query is kept in
/// `parsed` (the caller's), so the verdict borrows its clientid from there
/// instead of copying it.
pub fn admit<'q, 'r: 'q>(
    rules: &Rules,
    request: Request<'r>,
    parsed: &'q mut Option<Query<'r>>,
    facts: &mut impl Facts,
) -> Outcome<'q> {
    let mut tally = Tally::default();
    let mut wait = Duration::ZERO;
    let verdict = admit_counting(rules, request, parsed, facts, &mut tally, &mut wait);
    Outcome {
        wait,
        tally,
        verdict,
    }
}

/// [`admit`]'s steps, counting into `tally` and `wait` as they go.
fn admit_counting<'q, 'r: 'q>(
    rules: &Rules,
    request: Request<'r>,
    parsed: &'q mut Option<Query<'r>>,
    facts: &mut impl Facts,
    tally: &mut Tally,
    wait: &mut Duration,
) -> Result<Passed<'q>, Refusal> {
    let view = ClientView::from_headers(request.origin, request.headers, &rules.msisdn_header)?;
    let source = source_key(limit_address(&rules.mno, &view), rules.ipv6_prefix_len);
    let query = parsed.insert(parse_query(request.query, rules.max_uri_bytes)?);
    let code = IndirectCode::parse(&query.code).map_err(Refusal::InvalidCode)?;
    let clientid = query.clientid.as_deref().map(ClientIdRef::parse);
    let valid = clientid.clone().and_then(Result::ok);
    let association = valid.as_ref().and_then(|id| facts.association(id));
    match association {
        // An associated app spends its own budget, never its address's:
        // thousands of subscribers behind one NAT or hotspot are each
        // limited as themselves.
        Some(a) => spend(facts.clientid_budget(&a), "requests_per_clientid", tally)?,
        None => {
            spend(facts.address_budget(source), "requests_per_address", tally)?;
            if facts.shedding() {
                tally.shed = true;
                return Err(Refusal::Overloaded);
            }
        }
    }
    let identity = facts.identity(&view);
    tally.spoof_attempt = identity.spoof_attempt;
    if association.is_none() && rules.policy.mode != AuthMode::Off {
        *wait = facts.tarpit(identity.on_mno_network, source)?;
        tally.tarpitted = !wait.is_zero();
    }
    let then = match decide(&rules.policy, clientid, association, &identity) {
        Decision::Resolve(permit) => Admitted::Resolve(permit),
        Decision::Refuse(refusal) => return Err(refusal),
        Decision::Monitored { would, permit } => {
            tally.monitored = Some(would);
            Admitted::Resolve(permit)
        }
        Decision::Associate {
            subscriber,
            source,
            rebind,
        } => {
            if let Verdict::Limited(wait) = facts.creation_budget(&subscriber) {
                return Err(Refusal::RateLimited { wait });
            }
            Admitted::Associate {
                subscriber,
                source,
                rebind,
            }
        }
    };
    Ok(Passed {
        code,
        clientid: valid,
        identity,
        then,
    })
}

/// A limiter's verdict: `Err(RateLimited)` over it; an overflow is let
/// through and counted under `limit`.
fn spend(verdict: Verdict, limit: &'static str, tally: &mut Tally) -> Result<(), Refusal> {
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::Overflow => {
            tally.overflowed = Some(limit);
            Ok(())
        }
        Verdict::Limited(wait) => Err(Refusal::RateLimited { wait }),
    }
}

/// The query's two parameters, or the refusal of a query that is too long
/// or names one twice. (A malformed clientid is refused by the decision,
/// which knows the mode.)
fn parse_query(query: &str, max_uri_bytes: usize) -> Result<Query<'_>, Refusal> {
    Query::parse(query, max_uri_bytes).map_err(|e| match e {
        QueryError::TooLong => Refusal::RequestTooLarge,
        QueryError::RepeatedCode => Refusal::InvalidCode(CodeError::Repeated),
        QueryError::RepeatedClientId => Refusal::InvalidClientId(ClientIdError::Repeated),
    })
}

#[cfg(test)]
mod tests {
    //! DESIGN §4's table, row by row, through [`admit`] (and [`resolve`]
    //! after it) alone: no server, no index, no clock.

    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::decide::{AssociationState, MismatchPolicy, Resolution, resolve};
    use crate::identity::{Seen, Sessions, identify, identity_address};
    use crate::wire::{Msisdn, RoutingPrefix, SubscriberKey};

    const CODE: &str = "2001000001promo";
    const SUB_1: &str = "+447700900001";
    const SUB_2: &str = "+447700900002";

    fn key() -> SubscriberKey {
        SubscriberKey::new(&[9; 32])
    }

    fn sub(msisdn: &str) -> SubscriberRef {
        key().subscriber_ref(&Msisdn::parse(msisdn).unwrap())
    }

    fn rules(mode: AuthMode) -> Rules {
        Rules {
            policy: Policy {
                mode,
                on_mismatch: MismatchPolicy::Reject,
                routing_prefixes: vec![RoutingPrefix::parse("2001000001").unwrap()],
                federated_prefixes: vec![],
                peer_registry: false,
            },
            mno: MnoPolicy {
                networks: vec!["127.1.0.0/16".parse().unwrap()],
                trusted_gateways: vec!["127.3.0.1/32".parse().unwrap()],
            },
            max_uri_bytes: 2048,
            ipv6_prefix_len: 64,
            msisdn_header: http::HeaderName::from_static("x-msisdn"),
        }
    }

    /// The world as plain values, and what the rule asked of it.
    struct World {
        associations: HashMap<String, Association>,
        sessions: Sessions,
        address: Verdict,
        clientid: Verdict,
        creation: Verdict,
        shedding: bool,
        tarpit: Result<Duration, Refusal>,
        asked: Vec<&'static str>,
    }

    impl World {
        fn new() -> Self {
            let sessions = Sessions::default();
            sessions.bind("127.1.0.1/32".parse().unwrap(), sub(SUB_1), u64::MAX);
            sessions.bind("127.1.0.2/32".parse().unwrap(), sub(SUB_2), u64::MAX);
            let mut associations = HashMap::new();
            associations.insert(
                "known".to_owned(),
                Association {
                    subscriber: sub(SUB_1),
                    seq: 1,
                },
            );
            Self {
                associations,
                sessions,
                address: Verdict::Allowed,
                clientid: Verdict::Allowed,
                creation: Verdict::Allowed,
                shedding: false,
                tarpit: Ok(Duration::ZERO),
                asked: Vec::new(),
            }
        }
    }

    impl Facts for World {
        fn association(&mut self, clientid: &ClientIdRef<'_>) -> Option<Association> {
            self.asked.push("association");
            self.associations.get(clientid.as_str()).copied()
        }
        fn address_budget(&mut self, _: IpAddr) -> Verdict {
            self.asked.push("address_budget");
            self.address
        }
        fn clientid_budget(&mut self, _: &Association) -> Verdict {
            self.asked.push("clientid_budget");
            self.clientid
        }
        fn creation_budget(&mut self, _: &SubscriberRef) -> Verdict {
            self.asked.push("creation_budget");
            self.creation
        }
        fn shedding(&mut self) -> bool {
            self.asked.push("shedding");
            self.shedding
        }
        fn identity(&mut self, view: &ClientView<'_>) -> Identity {
            self.asked.push("identity");
            identify(
                &rules(AuthMode::Enforce).mno,
                view,
                &self.sessions,
                &key(),
                0,
            )
        }
        fn tarpit(&mut self, _: bool, _: IpAddr) -> Result<Duration, Refusal> {
            self.asked.push("tarpit");
            self.tarpit.clone()
        }
    }

    /// What a request gets in the end: a refusal, or 200 with its
    /// `association` (a durable creation assumed to succeed).
    #[derive(Debug, PartialEq, Eq)]
    enum Answer {
        Refused(Refusal),
        Resolved(AssociationState),
        /// An association to make durable first.
        Creates,
    }

    fn ask(
        mode: AuthMode,
        peer: &str,
        query: &str,
        headers: &[(&str, &str)],
        world: &mut World,
    ) -> (Answer, Outcome<'static>) {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let map: &'static http::HeaderMap = Box::leak(Box::new(map));
        let parsed: &'static mut Option<Query<'static>> = Box::leak(Box::new(None));
        let request = Request {
            origin: identity_address(Seen::Tcp {
                peer: peer.parse().unwrap(),
            }),
            headers: map,
            query: Box::leak(query.to_owned().into_boxed_str()),
        };
        let rules = rules(mode);
        let outcome = admit(&rules, request, parsed, world);
        let answer = match &outcome.verdict {
            Err(refusal) => Answer::Refused(refusal.clone()),
            Ok(Passed {
                then: Admitted::Associate { .. },
                ..
            }) => Answer::Creates,
            Ok(passed) => {
                let Admitted::Resolve(permit) = &passed.then else {
                    unreachable!()
                };
                let store = |code: &IndirectCode| {
                    (code.as_str() == CODE).then(|| Arc::from("https://example.org/"))
                };
                match resolve(&rules.policy, permit, &passed.code, store) {
                    Ok(Resolution::Local(_)) => Answer::Resolved(permit.association()),
                    Ok(Resolution::Peer) => unreachable!("no peers here"),
                    Err(refusal) => Answer::Refused(refusal),
                }
            }
        };
        (answer, outcome)
    }

    fn scan(clientid: &str) -> String {
        format!("code={CODE}&clientid={clientid}")
    }

    const MNO_1: &str = "127.1.0.1";
    const MNO_UNBOUND: &str = "127.1.0.9";
    const WIFI: &str = "127.2.0.1";
    const ENFORCE: AuthMode = AuthMode::Enforce;

    /// Every row of DESIGN §4, in enforce mode unless it says otherwise.
    /// A flat table (one row a line: rustfmt would give each six).
    #[rustfmt::skip]
    #[test]
    fn every_row_of_design_section_4() {
        use Answer::*;
        use Refusal::*;
        let none = |_: &mut World| {};
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, AuthMode, &str, String, &dyn Fn(&mut World), Answer)> = vec![
            ("200 existing", ENFORCE, WIFI, scan("known"), &none, Resolved(AssociationState::Existing)),
            ("200 created (first scan on the MNO network)", ENFORCE, MNO_1, scan("new"), &none, Creates),
            ("400 INVALID_CODE", ENFORCE, WIFI, "code=zz&clientid=known".into(), &none, Refused(InvalidCode(CodeError::PrefixNotHex(0)))),
            ("400 INVALID_CODE (repeated)", ENFORCE, WIFI, format!("code={CODE}&code={CODE}"), &none, Refused(InvalidCode(CodeError::Repeated))),
            ("400 INVALID_CLIENTID", ENFORCE, WIFI, scan("bad id!"), &none, Refused(InvalidClientId(ClientIdError::BadCharacter(3)))),
            ("401 CLIENTID_REQUIRED", ENFORCE, WIFI, format!("code={CODE}"), &none, Refused(ClientIdRequired)),
            ("403 RETRY_ON_MNO_NETWORK", ENFORCE, WIFI, scan("new"), &none, Refused(RetryOnMnoNetwork)),
            ("403 SUBSCRIBER_UNKNOWN", ENFORCE, MNO_UNBOUND, scan("new"), &none, Refused(SubscriberUnknown)),
            ("403 ASSOCIATION_MISMATCH", ENFORCE, "127.1.0.2", scan("known"), &none, Refused(AssociationMismatch)),
            ("404 CODE_NOT_FOUND", ENFORCE, WIFI, "code=2001000001other&clientid=known".into(), &none, Refused(CodeNotFound)),
            ("404 UNKNOWN_PREFIX", ENFORCE, WIFI, "code=2001000002promo&clientid=known".into(), &none, Refused(UnknownPrefix)),
            ("429 RATE_LIMITED (address)", ENFORCE, WIFI, scan("new"), &|w| w.address = Verdict::Limited(Duration::from_millis(1500)), Refused(RateLimited { wait: Duration::from_millis(1500) })),
            ("200 existing (an associated app is not held to its address's budget)", ENFORCE, WIFI, scan("known"), &|w| w.address = Verdict::Limited(Duration::from_millis(1500)), Resolved(AssociationState::Existing)),
            ("429 RATE_LIMITED (clientid)", ENFORCE, WIFI, scan("known"), &|w| w.clientid = Verdict::Limited(Duration::from_millis(200)), Refused(RateLimited { wait: Duration::from_millis(200) })),
            ("429 RATE_LIMITED (creations)", ENFORCE, MNO_1, scan("new"), &|w| w.creation = Verdict::Limited(Duration::from_secs(30)), Refused(RateLimited { wait: Duration::from_secs(30) })),
            ("429 RATE_LIMITED (tarpit, per source)", ENFORCE, WIFI, scan("new"), &|w| w.tarpit = Err(RateLimited { wait: Duration::from_secs(2) }), Refused(RateLimited { wait: Duration::from_secs(2) })),
            ("503 OVERLOADED (shed)", ENFORCE, WIFI, scan("new"), &|w| w.shedding = true, Refused(Overloaded)),
            ("503 OVERLOADED (tarpit full)", ENFORCE, WIFI, scan("new"), &|w| w.tarpit = Err(Overloaded), Refused(Overloaded)),
            ("200 none (monitor)", AuthMode::Monitor, WIFI, scan("new"), &none, Resolved(AssociationState::None)),
            ("200 none (off)", AuthMode::Off, WIFI, format!("code={CODE}"), &none, Resolved(AssociationState::None)),
            ("414 REQUEST_TOO_LARGE", ENFORCE, WIFI, format!("code={CODE}&x={}", "a".repeat(2100)), &none, Refused(RequestTooLarge)),
        ];
        for (name, mode, peer, query, setup, want) in rows {
            let mut world = World::new();
            setup(&mut world);
            let (answer, _) = ask(mode, peer, &query, &[], &mut world);
            assert_eq!(answer, want, "{name}");
        }
    }

    /// Nothing about codes or prefixes reaches a client that did not
    /// authenticate: an unknown code and a foreign prefix answer what any
    /// code would.
    #[test]
    fn codes_only_after_authentication() {
        for code in [CODE, "2001000001other", "2001000002promo"] {
            let mut world = World::new();
            let (answer, _) = ask(
                ENFORCE,
                WIFI,
                &format!("code={code}&clientid=new"),
                &[],
                &mut world,
            );
            assert_eq!(
                answer,
                Answer::Refused(Refusal::RetryOnMnoNetwork),
                "{code}"
            );
            let (answer, _) = ask(ENFORCE, WIFI, &format!("code={code}"), &[], &mut world);
            assert_eq!(answer, Answer::Refused(Refusal::ClientIdRequired), "{code}");
        }
    }

    /// Cheapest first: a request refused early asks for nothing after.
    #[test]
    fn each_fact_is_asked_only_when_the_rule_gets_to_it() {
        let asked = |peer: &str, query: &str, setup: fn(&mut World)| {
            let mut world = World::new();
            setup(&mut world);
            ask(ENFORCE, peer, query, &[], &mut world);
            world.asked
        };
        assert_eq!(
            asked(WIFI, &scan("new"), |w| w.address =
                Verdict::Limited(Duration::from_secs(1))),
            ["association", "address_budget"]
        );
        // An associated app is not held to its address's budget.
        assert_eq!(
            asked(WIFI, &scan("known"), |w| w.address =
                Verdict::Limited(Duration::from_secs(1))),
            ["association", "clientid_budget", "identity"]
        );
        assert_eq!(asked(WIFI, "code=zz", |_| {}), Vec::<&str>::new());
        assert_eq!(
            asked(WIFI, &scan("new"), |w| w.shedding = true),
            ["association", "address_budget", "shedding"]
        );
        assert_eq!(
            asked(WIFI, &scan("known"), |_| {}),
            ["association", "clientid_budget", "identity"]
        );
        assert_eq!(
            asked(WIFI, &scan("new"), |_| {}),
            [
                "association",
                "address_budget",
                "shedding",
                "identity",
                "tarpit"
            ]
        );
        assert_eq!(
            asked(MNO_1, &scan("new"), |_| {}),
            [
                "association",
                "address_budget",
                "shedding",
                "identity",
                "tarpit",
                "creation_budget"
            ]
        );
    }

    /// A refusal can cost a wait: the tarpit's turn comes first.
    #[test]
    fn the_tarpit_wait_comes_with_the_refusal() {
        let mut world = World::new();
        world.tarpit = Ok(Duration::from_millis(300));
        let (answer, outcome) = ask(ENFORCE, WIFI, &scan("new"), &[], &mut world);
        assert_eq!(answer, Answer::Refused(Refusal::RetryOnMnoNetwork));
        assert_eq!(outcome.wait, Duration::from_millis(300));
        assert!(outcome.tally.tarpitted);
    }

    /// What is counted: spoofed headers, shedding, a limiter's overflow,
    /// what monitor mode let through.
    #[test]
    fn the_tally() {
        let mut world = World::new();
        let (_, outcome) = ask(
            ENFORCE,
            WIFI,
            &scan("known"),
            &[("x-msisdn", SUB_2)],
            &mut world,
        );
        assert!(outcome.tally.spoof_attempt);
        let mut world = World::new();
        world.address = Verdict::Overflow;
        let (answer, outcome) = ask(ENFORCE, WIFI, &scan("new"), &[], &mut world);
        assert_eq!(answer, Answer::Refused(Refusal::RetryOnMnoNetwork));
        assert_eq!(outcome.tally.overflowed, Some("requests_per_address"));
        let mut world = World::new();
        let (_, outcome) = ask(
            AuthMode::Monitor,
            WIFI,
            &format!("code={CODE}"),
            &[],
            &mut world,
        );
        assert_eq!(outcome.tally.monitored, Some(Refusal::ClientIdRequired));
        let mut world = World::new();
        world.shedding = true;
        let (_, outcome) = ask(ENFORCE, WIFI, &scan("new"), &[], &mut world);
        assert!(outcome.tally.shed);
        // Two MSISDN headers: ambiguous, refused before anything is asked.
        let mut world = World::new();
        let (answer, _) = ask(
            ENFORCE,
            "127.3.0.1",
            &scan("new"),
            &[("x-msisdn", SUB_1), ("x-msisdn", SUB_2)],
            &mut world,
        );
        assert_eq!(
            answer,
            Answer::Refused(Refusal::RepeatedHeader("x-msisdn".into()))
        );
        assert!(world.asked.is_empty());
    }
}
