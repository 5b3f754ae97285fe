//! Traffic classes: what each sends and the answer DESIGN §4 prescribes for it.
//!
//! Pure: builds request plans from the setup and a random number generator,
//! and judges answers. No I/O, so every row is unit-tested. The headers a
//! trusted gateway adds are built here too: the spoofing classes forge
//! them, and the setup sends them through a gateway that is trusted.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderName, HeaderValue};

use crate::client::Request;
use crate::data::{Setup, Subscriber};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// An associated clientid and a registered code, from WiFi or the owner's MNO address.
    Legit,
    /// A registered code without clientid.
    NoClientid,
    /// A random clientid that was never associated, from WiFi.
    UnknownClientid,
    /// A bad code, a bad clientid, or a query over the 2048-byte limit.
    Malformed,
    /// An MSISDN enrichment header from an untrusted WiFi source, fresh clientid.
    SpoofedMsisdn,
    /// `X-Forwarded-For` naming a session-bound MNO address, from an untrusted source.
    SpoofedForwarded,
    /// One subscriber's associated clientid from another subscriber's MNO address.
    Mismatch,
    /// The first scan of a new installation over WiFi.
    FirstScanWifi,
    /// The first scan of a new installation from its subscriber's MNO
    /// address: an association created (not in the default mix; a
    /// creation benchmark's class).
    FirstScan,
}

impl Class {
    pub const ALL: [Class; 9] = [
        Class::Legit,
        Class::NoClientid,
        Class::UnknownClientid,
        Class::Malformed,
        Class::SpoofedMsisdn,
        Class::SpoofedForwarded,
        Class::Mismatch,
        Class::FirstScanWifi,
        Class::FirstScan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Legit => "legit",
            Class::NoClientid => "no-clientid",
            Class::UnknownClientid => "unknown-clientid",
            Class::Malformed => "malformed",
            Class::SpoofedMsisdn => "spoofed-msisdn",
            Class::SpoofedForwarded => "spoofed-forwarded",
            Class::Mismatch => "mismatch",
            Class::FirstScanWifi => "first-scan-wifi",
            Class::FirstScan => "first-scan",
        }
    }

    /// The answers DESIGN §4 prescribes (malformed: one per kind of defect).
    pub fn expected(self) -> &'static [Expect] {
        // Struct literals, not `Expect::new`: only those are promoted to statics.
        match self {
            Class::Legit => &[Expect {
                status: 200,
                label: "existing",
            }],
            Class::FirstScan => &[Expect {
                status: 200,
                label: "created",
            }],
            Class::NoClientid => &[Expect {
                status: 401,
                label: "CLIENTID_REQUIRED",
            }],
            Class::Malformed => &MALFORMED,
            Class::Mismatch => &[Expect {
                status: 403,
                label: "ASSOCIATION_MISMATCH",
            }],
            Class::UnknownClientid
            | Class::SpoofedMsisdn
            | Class::SpoofedForwarded
            | Class::FirstScanWifi => &[Expect {
                status: 403,
                label: "RETRY_ON_MNO_NETWORK",
            }],
        }
    }

    /// Every class but `legit` and `first-scan` must be refused: resolving
    /// one is a security failure.
    pub fn must_be_refused(self) -> bool {
        !matches!(self, Class::Legit | Class::FirstScan)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

static MALFORMED: [Expect; 3] = [
    Expect::new(400, "INVALID_CODE"),
    Expect::new(400, "INVALID_CLIENTID"),
    Expect::new(414, "REQUEST_TOO_LARGE"),
];

/// A prescribed answer: the status and, for 200 the `association`, else the error `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub status: u16,
    pub label: &'static str,
}

impl Expect {
    pub const fn new(status: u16, label: &'static str) -> Self {
        Self { status, label }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.label)
    }
}

/// What came back: an HTTP answer, or a transport failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Answer {
        status: u16,
        label: Cow<'static, str>,
    },
    Failed(&'static str),
}

impl Outcome {
    /// Reads the label from a JSON body: `association` of a 200, else `code`.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Fields<'a> {
            #[serde(borrow)]
            code: Option<Cow<'a, str>>,
            #[serde(borrow)]
            association: Option<Cow<'a, str>>,
        }
        let label = match serde_json::from_slice::<Fields<'_>>(body) {
            Ok(f) if status == 200 => f.association,
            Ok(f) => f.code,
            Err(_) => Some(Cow::Borrowed("non-json")),
        };
        let label = label.map_or(Cow::Borrowed("no-label"), |l| intern(&l));
        Outcome::Answer { status, label }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answer { status, label } => write!(f, "{status} {label}"),
            Outcome::Failed(kind) => write!(f, "error:{kind}"),
        }
    }
}

/// Known labels as static strings: no allocation per answer.
fn intern(label: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 17] = [
        "existing",
        "created",
        "none",
        "INVALID_CODE",
        "INVALID_CLIENTID",
        "CLIENTID_REQUIRED",
        "RETRY_ON_MNO_NETWORK",
        "SUBSCRIBER_UNKNOWN",
        "ASSOCIATION_MISMATCH",
        "CODE_NOT_FOUND",
        "UNKNOWN_PREFIX",
        "RATE_LIMITED",
        "OVERLOADED",
        "UNAVAILABLE",
        "REQUEST_TOO_LARGE",
        "NOT_FOUND",
        "METHOD_NOT_ALLOWED",
    ];
    KNOWN
        .iter()
        .find(|k| **k == label)
        .map_or_else(|| Cow::Owned(label.to_owned()), |k| Cow::Borrowed(*k))
}

/// How an outcome compares with what the class prescribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Expected,
    /// Answered otherwise than prescribed (a correctness failure).
    Mismatch,
    /// A request that must be refused was resolved.
    SecurityFailure,
    /// 429 RATE_LIMITED: load protection, reported apart.
    RateLimited,
    /// 503 OVERLOADED: load shedding, reported apart.
    Overloaded,
    /// No HTTP answer (connect, TLS, QUIC, timeout).
    Error,
}

pub fn judge(class: Class, expect: Expect, outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Failed(_) => Verdict::Error,
        Outcome::Answer { status: 200, .. } if class.must_be_refused() => Verdict::SecurityFailure,
        Outcome::Answer { status, label } if *status == expect.status && label == expect.label => {
            Verdict::Expected
        }
        Outcome::Answer { status: 429, label } if label == "RATE_LIMITED" => Verdict::RateLimited,
        Outcome::Answer { status: 503, label } if label == "OVERLOADED" => Verdict::Overloaded,
        Outcome::Answer { .. } => Verdict::Mismatch,
    }
}

/// Traffic classes with weights, as given to `--mix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Class, u32)>,
}

impl Mix {
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|(_, w)| u64::from(*w)).sum()
    }

    pub fn weight(&self, class: Class) -> u32 {
        self.weights
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(0, |(_, w)| *w)
    }

    pub fn classes(&self) -> impl Iterator<Item = Class> + '_ {
        self.weights.iter().filter(|(_, w)| *w > 0).map(|(c, _)| *c)
    }

    /// A class drawn with probability weight / total.
    pub fn pick(&self, rng: &mut Rng) -> Class {
        let mut ticket = rng.below(self.total());
        for (class, weight) in &self.weights {
            let weight = u64::from(*weight);
            if ticket < weight {
                return *class;
            }
            ticket -= weight;
        }
        unreachable!("ticket below the total weight")
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `legit=90,spoofed-msisdn=10`; a class without `=N` weighs 1.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights: Vec<(Class, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let class = Class::ALL
                .into_iter()
                .find(|c| c.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<_> = Class::ALL.iter().map(|c| c.name()).collect();
                    format!("unknown class {name:?}; classes: {}", names.join(", "))
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a whole number, got {weight:?}"))?;
            if weights.iter().any(|(c, _)| *c == class) {
                return Err(format!("class {name} given twice"));
            }
            weights.push((class, weight));
        }
        weights.sort();
        Ok(Mix { weights })
    }
}

/// Which of a lane's two connections a request must use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A WiFi (non-MNO) source address.
    Wifi,
    /// The MNO address of the subscriber given as `home` to [`Planner::plan`].
    Mno,
}

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct Planned {
    pub class: Class,
    /// What the client sends.
    pub request: Request,
    pub via: Via,
    pub expect: Expect,
}

/// What `--mix` is when not given: every class, legit the largest share.
pub const DEFAULT_MIX: &str = "legit=50,no-clientid=5,unknown-clientid=10,malformed=5,\
spoofed-msisdn=10,spoofed-forwarded=10,mismatch=5,first-scan-wifi=5";

pub const RESOLVE_PATH: &str = "/mc/v1/resolve";

/// Longer than the server's 2048-byte query limit.
const OVERSIZED_PADDING: usize = 2100;

/// Builds requests of every class from a setup.
#[derive(Debug)]
pub struct Planner {
    setup: Setup,
    mix: Mix,
    msisdn_header: HeaderName,
    /// Every associated clientid as (subscriber, index in its list).
    associated: Vec<(u32, u32)>,
    /// Per subscriber, the next of its clientids an on-net legitimate
    /// request uses: its apps take turns, so a lane's rate spreads evenly
    /// over them and none meets the server's per-clientid budget before
    /// the others (drawn at random, one of eight would at an eighth of
    /// the lane's rate plus chance).
    turns: Vec<AtomicUsize>,
}

impl Planner {
    pub fn new(setup: Setup, mix: Mix, msisdn_header: HeaderName) -> Self {
        let associated = setup
            .subscribers
            .iter()
            .enumerate()
            .flat_map(|(s, sub)| (0..sub.clientids.len()).map(move |i| (s as u32, i as u32)))
            .collect();
        let turns = setup
            .subscribers
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        Self {
            setup,
            mix,
            msisdn_header,
            associated,
            turns,
        }
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    pub fn mix(&self) -> &Mix {
        &self.mix
    }

    /// A request of a class drawn from the mix. `home` is the subscriber whose
    /// MNO address a [`Via::Mno`] request leaves from. `side` is where a
    /// legitimate request leaves from, if the caller keeps to one side;
    /// otherwise each one tosses a coin.
    pub fn plan(&self, rng: &mut Rng, home: usize, side: Option<Via>) -> Planned {
        let class = self.mix.pick(rng);
        self.plan_class(class, rng, home, side)
    }

    /// A request of `class`; `home` and `side` as for [`Planner::plan`].
    pub fn plan_class(
        &self,
        class: Class,
        rng: &mut Rng,
        home: usize,
        side: Option<Via>,
    ) -> Planned {
        let code = rng.choose(&self.setup.codes).as_str();
        match class {
            // Half from WiFi with any associated clientid, half on-net: a
            // clientid of `home` from home's own (session-bound) address.
            Class::Legit if side.map_or_else(|| rng.below(2) == 0, |side| side == Via::Wifi) => {
                let clientid = self.any_associated(rng);
                Planned::new(class, query(code, Some(clientid)))
            }
            Class::Legit => {
                let clientids = &self.subscriber(home).clientids;
                let turn = &self.turns[home % self.turns.len()];
                let clientid = &clientids[turn.fetch_add(1, Ordering::Relaxed) % clientids.len()];
                Planned::new(class, query(code, Some(clientid))).via(Via::Mno)
            }
            Class::NoClientid => Planned::new(class, query(code, None)),
            Class::UnknownClientid => {
                Planned::new(class, query(code, Some(&random_id("unknown", rng))))
            }
            Class::Malformed => malformed(rng, code),
            Class::SpoofedMsisdn => {
                let victim = rng.choose(&self.setup.subscribers);
                let enrichment = msisdn_enrichment(&self.msisdn_header, victim);
                Planned::new(class, query(code, Some(&random_id("spoof", rng))))
                    .with_header(enrichment)
            }
            Class::SpoofedForwarded => {
                let victim = rng.choose(&self.setup.subscribers);
                Planned::new(class, query(code, Some(&random_id("spoof", rng))))
                    .with_header(forwarded_for(victim))
            }
            Class::Mismatch => {
                let clientid = self.stolen_clientid(rng, home);
                Planned::new(class, query(code, Some(clientid))).via(Via::Mno)
            }
            Class::FirstScanWifi => Planned::new(class, query(code, Some(&random_uuid(rng)))),
            Class::FirstScan => {
                Planned::new(class, query(code, Some(&random_uuid(rng)))).via(Via::Mno)
            }
        }
    }

    /// Subscriber `home` (wrapped around the setup's subscribers).
    fn subscriber(&self, home: usize) -> &Subscriber {
        &self.setup.subscribers[home % self.setup.subscribers.len()]
    }

    /// Any associated clientid of any subscriber, each equally likely.
    fn any_associated(&self, rng: &mut Rng) -> &str {
        let (s, i) = *rng.choose(&self.associated);
        &self.setup.subscribers[s as usize].clientids[i as usize]
    }

    /// A clientid of another subscriber than `home` (the run checks there
    /// are two): sent from home's address, it is stolen.
    fn stolen_clientid(&self, rng: &mut Rng, home: usize) -> &str {
        let subscribers = self.setup.subscribers.len();
        let others = subscribers.saturating_sub(1).max(1) as u64;
        let other = (home % subscribers + 1 + rng.below(others) as usize) % subscribers;
        rng.choose(&self.setup.subscribers[other].clientids)
            .as_str()
    }
}

impl Planned {
    /// A request of `class` from WiFi, without extra headers, that expects
    /// the class's first prescribed answer.
    fn new(class: Class, path: String) -> Self {
        Self {
            class,
            request: Request {
                path,
                headers: Vec::new(),
            },
            via: Via::Wifi,
            expect: class.expected()[0],
        }
    }

    fn via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    fn with_header(mut self, header: (HeaderName, HeaderValue)) -> Self {
        self.request.headers.push(header);
        self
    }

    fn expecting(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

/// A request with one of the defects of [`MALFORMED`], drawn: a code that
/// does not parse, a clientid with a space, a query over the size limit.
fn malformed(rng: &mut Rng, code: &str) -> Planned {
    let kind = rng.below(MALFORMED.len() as u64) as usize;
    let clientid = random_id("bad", rng);
    let path = match kind {
        0 => query("zz-not-a-code", Some(&clientid)),
        1 => format!("{RESOLVE_PATH}?code={code}&clientid=bad%20clientid"),
        _ => format!(
            "{}&pad={}",
            query(code, Some(&clientid)),
            "a".repeat(OVERSIZED_PADDING)
        ),
    };
    Planned::new(Class::Malformed, path).expecting(MALFORMED[kind])
}

/// A clientid never associated: `kind` and 16 random hex digits.
fn random_id(kind: &str, rng: &mut Rng) -> String {
    format!("{kind}-{:016x}", rng.next_u64())
}

/// A random (version 4) UUID, as a new installation makes its clientid.
fn random_uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// The resolve path with `code` and, if given, `clientid` (both URL-safe by construction).
pub fn query(code: &str, clientid: Option<&str>) -> String {
    match clientid {
        Some(id) => format!("{RESOLVE_PATH}?code={code}&clientid={id}"),
        None => format!("{RESOLVE_PATH}?code={code}"),
    }
}

/// The enrichment a trusted gateway adds for `subscriber` (and a spoofer
/// forges): its MSISDN under the server's MSISDN header, `header`.
pub fn msisdn_enrichment(
    header: &HeaderName,
    subscriber: &Subscriber,
) -> (HeaderName, HeaderValue) {
    let msisdn =
        HeaderValue::from_str(&subscriber.msisdn).expect("an MSISDN is a valid header value");
    (header.clone(), msisdn)
}

/// `X-Forwarded-For` naming `subscriber`'s MNO address.
pub fn forwarded_for(subscriber: &Subscriber) -> (HeaderName, HeaderValue) {
    let address = HeaderValue::from_str(&subscriber.ip.to_string())
        .expect("an address is a valid header value");
    (HeaderName::from_static("x-forwarded-for"), address)
}

/// SplitMix64: fast, seeded, good enough to mix traffic (not for secrets).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from the clock and `salt`, different per task and run.
    pub fn from_time(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut rng = Self(nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), by Lemire's multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// One of `items` (not empty), each equally likely.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Subscriber;

    fn setup() -> Setup {
        Setup {
            version: crate::data::FORMAT_VERSION,
            prefix: "2001000001".into(),
            codes: vec!["2001000001lg-0".into(), "2001000001lg-1".into()],
            subscribers: (0..3)
                .map(|s| Subscriber {
                    ip: format!("127.1.0.{}", s + 1).parse().unwrap(),
                    msisdn: format!("+4470000000{s}"),
                    clientids: vec![format!("c{s}-0"), format!("c{s}-1")],
                })
                .collect(),
            gateway: None,
            created_unix: 0,
        }
    }

    fn planner(mix: &str) -> Planner {
        Planner::new(
            setup(),
            mix.parse().unwrap(),
            HeaderName::from_static("x-msisdn"),
        )
    }

    #[test]
    fn mix_parsing() {
        let mix: Mix = "legit=3, mismatch".parse().unwrap();
        assert_eq!(
            (
                mix.weight(Class::Legit),
                mix.weight(Class::Mismatch),
                mix.total()
            ),
            (3, 1, 4)
        );
        assert!("legit=x".parse::<Mix>().is_err());
        assert!("nope=1".parse::<Mix>().is_err());
        assert!("legit,legit".parse::<Mix>().is_err());
        // Every class but the creations of `first-scan`.
        let all: Mix = DEFAULT_MIX.parse().unwrap();
        assert_eq!(all.classes().count(), Class::ALL.len() - 1);
        assert_eq!(all.weight(Class::FirstScan), 0);
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "legit=3,no-clientid=1,malformed=0".parse().unwrap();
        let mut rng = Rng::new(7);
        let legit = (0..40_000)
            .filter(|_| mix.pick(&mut rng) == Class::Legit)
            .count();
        assert!((29_000..31_000).contains(&legit), "{legit}");
    }

    #[test]
    fn a_task_that_keeps_to_a_side_sends_its_legit_requests_from_it() {
        let p = planner(DEFAULT_MIX);
        let mut rng = Rng::new(3);
        for side in [Via::Wifi, Via::Mno] {
            for _ in 0..50 {
                assert_eq!(
                    p.plan_class(Class::Legit, &mut rng, 1, Some(side)).via,
                    side
                );
            }
        }
        let wifi = (0..1000)
            .filter(|_| p.plan_class(Class::Legit, &mut rng, 1, None).via == Via::Wifi)
            .count();
        assert!(
            (400..600).contains(&wifi),
            "no side: a coin per request ({wifi})"
        );
    }

    #[test]
    fn every_class_builds_its_request() {
        let p = planner(DEFAULT_MIX);
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let legit = p.plan_class(Class::Legit, &mut rng, 2, None);
            assert!(
                legit.request.path.contains("clientid=c"),
                "{}",
                legit.request.path
            );
            if legit.via == Via::Mno {
                assert!(
                    legit.request.path.contains("clientid=c2-"),
                    "on-net legit uses home's own clientid"
                );
            }
        }
        let none = p.plan_class(Class::NoClientid, &mut rng, 0, None);
        assert!(!none.request.path.contains("clientid"));
        let spoof = p.plan_class(Class::SpoofedMsisdn, &mut rng, 0, None);
        assert_eq!(spoof.request.headers[0].0, "x-msisdn");
        let fwd = p.plan_class(Class::SpoofedForwarded, &mut rng, 0, None);
        assert!(
            fwd.request.headers[0]
                .1
                .to_str()
                .unwrap()
                .starts_with("127.1.0.")
        );
        for _ in 0..100 {
            let m = p.plan_class(Class::Mismatch, &mut rng, 1, None);
            assert_eq!(m.via, Via::Mno);
            assert!(
                !m.request.path.contains("clientid=c1-"),
                "stolen from home: {}",
                m.request.path
            );
            let bad = p.plan_class(Class::Malformed, &mut rng, 0, None);
            if bad.expect.status == 414 {
                assert!(bad.request.path.len() > 2048 + 20);
            }
        }
        let first = p.plan_class(Class::FirstScanWifi, &mut rng, 0, None);
        let id = first.request.path.rsplit('=').next().unwrap();
        assert_eq!(id.len(), 36, "{id}");
    }

    #[test]
    fn judging() {
        let answer = |s, l: &'static str| Outcome::Answer {
            status: s,
            label: Cow::Borrowed(l),
        };
        let retry = Expect::new(403, "RETRY_ON_MNO_NETWORK");
        let legit = Expect::new(200, "existing");
        assert_eq!(
            judge(Class::Legit, legit, &answer(200, "existing")),
            Verdict::Expected
        );
        assert_eq!(
            judge(Class::Legit, legit, &answer(200, "created")),
            Verdict::Mismatch
        );
        assert_eq!(
            judge(Class::Legit, legit, &answer(403, "RETRY_ON_MNO_NETWORK")),
            Verdict::Mismatch
        );
        assert_eq!(
            judge(Class::Legit, legit, &answer(429, "RATE_LIMITED")),
            Verdict::RateLimited
        );
        assert_eq!(
            judge(Class::SpoofedMsisdn, retry, &answer(200, "created")),
            Verdict::SecurityFailure
        );
        assert_eq!(
            judge(Class::SpoofedMsisdn, retry, &answer(200, "none")),
            Verdict::SecurityFailure
        );
        assert_eq!(
            judge(Class::SpoofedMsisdn, retry, &answer(503, "OVERLOADED")),
            Verdict::Overloaded
        );
        assert_eq!(
            judge(Class::SpoofedMsisdn, retry, &answer(503, "UNAVAILABLE")),
            Verdict::Mismatch
        );
        assert_eq!(
            judge(Class::Mismatch, retry, &Outcome::Failed("timeout")),
            Verdict::Error
        );
    }

    #[test]
    fn outcome_labels_come_from_the_body() {
        let ok = Outcome::from_answer(200, br#"{"code":"2001000001a","association":"existing"}"#);
        assert_eq!(ok.to_string(), "200 existing");
        let refused = Outcome::from_answer(
            403,
            br#"{"status":403,"code":"ASSOCIATION_MISMATCH","message":"x"}"#,
        );
        assert_eq!(refused.to_string(), "403 ASSOCIATION_MISMATCH");
        assert_eq!(
            Outcome::from_answer(502, b"<html>").to_string(),
            "502 non-json"
        );
    }
}
