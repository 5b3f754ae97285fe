//! `GET /mc/v1/resolve`: one handler for HTTP/1.1, HTTP/2 and HTTP/3.
//!
//! Carries out what the core's rule decides ([`core::admit`]): it looks up
//! the facts the rule asks for, waits and counts as told, makes an
//! association durable, looks the code up. The wire form of every refusal
//! is decided in [`super::error`], the single place that knows DESIGN §4's
//! table.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, Uri};
use serde::Serialize;

use std::time::Duration;

use super::error::{error_response, json_response, wire_error};
use crate::app::App;
use crate::core::{self, ClientView, Refusal};
use crate::metrics::{Protocol, Transport};
use crate::store::{Associated, NewAssociation};
use crate::wire::{ClientIdRef, IndirectCode};

pub const PATH: &str = "/mc/v1/resolve";

/// What the transport knows of the connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Where the request comes from: [`core::identity_address`] of what
    /// the transport saw, the only address anything below looks at.
    pub origin: core::Origin,
    pub protocol: Protocol,
}

/// The answer to an app (JSON): the code, and where it sends the client.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resolved<'a> {
    code: &'a str,
    /// Always `url`.
    #[serde(rename = "type")]
    #[schema(schema_with = url_kind)]
    kind: &'static str,
    #[schema(format = "uri")]
    target: &'a str,
    #[schema(value_type = core::AssociationState, inline)]
    association: &'static str,
}

/// `type`, for the API document: the one kind of target there is.
fn url_kind() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["url"]))
        .build()
}

/// [`handle`] for a connection with a conduct record (`super::conn`): waits
/// first if the connection has earned a slow-down, then judges the answer.
/// Both transports serve their requests through this.
#[utoipa::path(get, path = "/mc/v1/resolve", tag = "resolve", operation_id = "resolve",
    summary = "Resolve an Indirect Code for an authenticated MCC",
    description = "The first scan from the MNO network associates the clientid with the \
        subscriber; later scans (any network) need that association. Refusals cost the server \
        least for what it knows least (DESIGN section 4). Served on the public listener: HTTPS \
        (HTTP/1.1 and HTTP/2) and HTTP/3.",
    params(
        ("code" = String, Query, description = "The Indirect Code Identifier."),
        ("clientid" = Option<String>, Query, nullable = false,
            description = "The MCC's clientid (1 to 128 of A-Z a-z 0-9 . _ : -)."),
    ),
    responses(
        (status = 200, description = "Resolved (an app: JSON).", body = Resolved),
        (status = 302, description = "Resolved, for a browser (it prefers text/html): \
            Location is the target."),
        (status = 400, description = "INVALID_CODE, INVALID_CLIENTID, INVALID_HEADER.",
            body = super::error::ErrorBody),
        (status = 401, description = "CLIENTID_REQUIRED.", body = super::error::ErrorBody),
        (status = 403, description = "RETRY_ON_MNO_NETWORK, SUBSCRIBER_UNKNOWN, \
            ASSOCIATION_MISMATCH.", body = super::error::ErrorBody),
        (status = 404, description = "CODE_NOT_FOUND, UNKNOWN_PREFIX, NOT_FOUND.",
            body = super::error::ErrorBody),
        (status = 405, description = "METHOD_NOT_ALLOWED.", body = super::error::ErrorBody),
        (status = 414, description = "REQUEST_TOO_LARGE.", body = super::error::ErrorBody),
        (status = 429, description = "RATE_LIMITED, with Retry-After.",
            body = super::error::ErrorBody),
        (status = 503, description = "OVERLOADED, UNAVAILABLE, UPSTREAM_UNAVAILABLE, with \
            Retry-After.", body = super::error::ErrorBody),
    ))]
pub async fn handle_on(
    app: &App,
    conn: ConnInfo,
    conduct: &super::conn::Conduct,
    method: &http::Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Bytes> {
    let delay = conduct.delay(|| app.limits_config());
    if !delay.is_zero() {
        // Boxed, as every rare wait below (and the tarpit's): the common
        // path's future stays small, and it is moved into a task for every
        // HTTP/2 stream that has to wait.
        Box::pin(tokio::time::sleep(delay)).await;
    }
    let response = handle(app, conn, method, uri, headers).await;
    let transport = match conn.protocol {
        Protocol::Http3 => Transport::Quic,
        _ => Transport::Tcp,
    };
    super::conn::judge(
        app,
        transport,
        conduct,
        conn.origin.validated(),
        response.status(),
    );
    response
}

/// Answers any request on the public listener: the resolve route, or a JSON
/// 404/405. Records the outcome and latency.
pub async fn handle(
    app: &App,
    conn: ConnInfo,
    method: &http::Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Bytes> {
    let started = Instant::now();
    let result = if uri.path() != PATH {
        Err(Refusal::NotFound)
    } else if method != http::Method::GET {
        Err(Refusal::MethodNotAllowed)
    } else {
        run_resolution(app, conn, uri, headers).await
    };
    let (outcome, response) = match result {
        Ok(response) => ("ok", response),
        Err(refusal) => (wire_error(&refusal).1.as_str(), error_response(&refusal)),
    };
    app.metrics
        .request(conn.protocol, outcome, started.elapsed().as_secs_f64());
    response
}

/// The whole resolution of one request: the core's rule ([`core::admit`])
/// decides, with the facts the server looks up ([`Lookups`]); this carries
/// out what it returns: the wait, the counts, a durable association, the
/// code (or a peer's answer), the answer.
async fn run_resolution(
    app: &App,
    conn: ConnInfo,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response<Bytes>, Refusal> {
    let request = core::Request {
        origin: conn.origin,
        headers,
        query: uri.query().unwrap_or(""),
    };
    let mut parsed = None;
    let now_ms = crate::clock::now_ms();
    // The rules as they are now (a reload swaps them for the next request).
    let (outcome, tarpit_slot) = {
        let rules = app.rules.load();
        let mut lookups = Lookups {
            app,
            mno: &rules.mno,
            now_ms,
            tarpit_slot: None,
        };
        let outcome = core::admit(&rules, request, &mut parsed, &mut lookups);
        (outcome, lookups.tarpit_slot.take())
    };
    count(app, &outcome.tally);
    if !outcome.wait.is_zero() {
        // Boxed: only a request that waits pays for the timer, and the
        // resolve future moved into every HTTP/2 stream stays small.
        Box::pin(tokio::time::sleep(outcome.wait)).await;
    }
    drop(tarpit_slot);
    let passed = outcome.verdict?;
    let permit = match passed.then {
        core::Admitted::Resolve(permit) => permit,
        core::Admitted::Associate {
            subscriber,
            source,
            rebind,
        } => Box::pin(associate(app, &passed, subscriber, source, rebind, now_ms)).await?,
    };
    let on_net = passed.identity.on_mno_network;
    answer(app, conn, headers, &passed.code, &permit, on_net).await
}

/// The facts [`core::admit`] asks for, from the server's index, limiters
/// and session bindings.
struct Lookups<'a> {
    app: &'a App,
    /// The MNO's pools and gateways, of the rules this request runs under.
    mno: &'a crate::core::MnoPolicy,
    now_ms: u64,
    /// The source's place among the tarpit's waiters, held while it waits.
    tarpit_slot: Option<crate::limits::AddressSlot>,
}

impl core::Facts for Lookups<'_> {
    fn association(&mut self, clientid: &ClientIdRef<'_>) -> Option<core::model::Association> {
        self.app.store.index().association(clientid.as_str())
    }

    fn address_budget(&mut self, source: std::net::IpAddr) -> core::Verdict {
        self.app.limits().requests_per_address.check(&source)
    }

    fn clientid_budget(&mut self, association: &core::model::Association) -> core::Verdict {
        self.app
            .limits()
            .requests_per_clientid
            .check(&association.seq)
    }

    fn creation_budget(&mut self, subscriber: &crate::wire::SubscriberRef) -> core::Verdict {
        self.app.creation_budget(subscriber)
    }

    fn shedding(&mut self) -> bool {
        self.app.shedding()
    }

    fn identity(&mut self, view: &ClientView<'_>) -> core::Identity {
        let app = self.app;
        core::identify(
            self.mno,
            view,
            app.bindings.table(),
            app.bindings.key(),
            self.now_ms,
        )
    }

    fn tarpit(
        &mut self,
        on_mno_network: bool,
        source: std::net::IpAddr,
    ) -> Result<Duration, Refusal> {
        let (wait, slot) = self.app.tarpit_turn(on_mno_network, source)?;
        self.tarpit_slot = slot;
        Ok(wait)
    }
}

/// Counts what the rule says to count of a request.
fn count(app: &App, tally: &core::Tally) {
    let m = &app.metrics;
    if tally.spoof_attempt {
        m.spoof_attempts.inc();
    }
    if tally.shed {
        m.shed.inc();
    }
    if tally.tarpitted {
        m.tarpitted.inc();
    }
    if let Some(limit) = tally.overflowed {
        m.limiter_overflow(limit);
    }
    if let Some(would) = &tally.monitored {
        let reason = wire_error(would).1.as_str();
        m.monitored
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    }
}

/// Makes the association the rule asked for durable, and the permit it
/// earns; when a concurrent request's association stands instead, the
/// core decides again on that one.
async fn associate(
    app: &App,
    passed: &core::Passed<'_>,
    subscriber: crate::wire::SubscriberRef,
    source: core::model::IdentitySource,
    rebind: bool,
    now_ms: u64,
) -> Result<core::Permit, Refusal> {
    // The core asks to associate only a present, valid clientid.
    let clientid = passed.clientid.ok_or(Refusal::Unavailable)?;
    let new = NewAssociation {
        clientid: clientid.to_client_id(),
        subscriber,
        source,
        client_addr: passed.identity.client_addr,
    };
    let cap = app.config.max_clientids_per_subscriber;
    let writing = Instant::now();
    let done = app.store.associate(new, rebind, cap, now_ms).await;
    app.metrics
        .association_writes
        .observe(writing.elapsed().as_secs_f64());
    let done = done.map_err(|e| {
        tracing::error!(error = %e, "association not stored");
        Refusal::Unavailable
    })?;
    let superseded = match &done {
        Associated::Created { superseded, .. } => {
            app.metrics.associations_created.inc();
            superseded.len()
        }
        Associated::Rebound { superseded, .. } => {
            app.metrics.associations_rebound.inc();
            superseded.len()
        }
        Associated::Existing(_) => 0,
    };
    app.metrics
        .associations_superseded
        .inc_by(superseded as u64);
    core::permit_for(&app.rules.load().policy, clientid, &done, &passed.identity)
}

/// The answer for a permitted request: the code's target (here, the one
/// its first matching rule names if it has rules, or a peer's), counted; a
/// redirect for a browser, the JSON of §4 otherwise.
async fn answer(
    app: &App,
    conn: ConnInfo,
    headers: &HeaderMap,
    code: &IndirectCode,
    permit: &core::Permit,
    on_net: bool,
) -> Result<Response<Bytes>, Refusal> {
    let index = app.store.index();
    let protocol = match conn.protocol {
        Protocol::Http1 => 0,
        Protocol::Http2 => 1,
        Protocol::Http3 => 2,
    };
    let first_scan = permit.association() == core::AssociationState::Created;
    let slot = crate::store::index::scan_slot(protocol, first_scan);
    // The rules loaded for this statement only (not held across a peer's
    // answer).
    let resolution = core::resolve(&app.rules.load().policy, permit, code, |code| {
        index.code_scanned(code, slot, permit, |rules| {
            let traits = core::targeting::Traits { headers, on_net };
            core::targeting::choose(rules, &traits, crate::clock::now_ms)
        })
    })?;
    let target = match resolution {
        core::Resolution::Local(target) => target,
        core::Resolution::Peer => {
            let peers = app.peers().ok_or(Refusal::UnknownPrefix)?;
            let (outcome, target) = Box::pin(peers.resolve(permit, code)).await;
            app.metrics.federation("forwarded", outcome.label());
            target?
        }
    };
    if prefers_html(headers)
        && let Ok(location) = http::HeaderValue::from_str(&target)
    {
        return Ok(redirect(location));
    }
    let body = Resolved {
        code: code.as_str(),
        kind: "url",
        target: &target,
        association: permit.association().as_str(),
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("serialisable"),
    ))
}

/// A browser (it asks for `text/html` above any JSON) is sent to the
/// target; the decision before it is the same as for an app.
fn redirect(location: http::HeaderValue) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    headers.insert(http::header::LOCATION, location);
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(http::header::VARY, http::HeaderValue::from_static("accept"));
    response
}

/// Whether `Accept` prefers `text/html` to JSON: `text/html` with a quality
/// above that of `application/json` (or `application/*`, `*/*`, whichever
/// names JSON most closely). A tie, no `Accept`, or `*/*` alone is JSON:
/// apps keep getting what DESIGN §4 promises.
fn prefers_html(headers: &HeaderMap) -> bool {
    let mut html: Option<f32> = None;
    let mut json: (u8, f32) = (0, 0.0); // (specificity, quality)
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let json_specificity = match kind.as_str() {
                "application/json" => 3,
                "application/*" => 2,
                "*/*" => 1,
                "text/html" => {
                    html = Some(html.map_or(quality, |h| h.max(quality)));
                    0
                }
                _ => 0,
            };
            if json_specificity > json.0 {
                json = (json_specificity, quality);
            }
        }
    }
    html.is_some_and(|h| h > 0.0 && h > json.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn browsers_prefer_html_and_apps_json() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                      image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        assert!(prefers_html(&accept(firefox)));
        assert!(prefers_html(&accept(chrome)));
        for app in [
            "application/json",
            "*/*",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "text/html;q=0",
            "text/plain",
        ] {
            assert!(!prefers_html(&accept(app)), "{app}");
        }
        assert!(!prefers_html(&HeaderMap::new()));
    }

    /// One media range of an `Accept` header: its text as a client wrote
    /// it, and what it means (the type, lower-case, and its quality).
    #[derive(Debug, Clone)]
    struct Range {
        text: String,
        kind: String,
        quality: f32,
    }

    /// Ranges the rule names and others, in any case, with or without a
    /// quality, after other parameters (a broken `q=abc` among them,
    /// which gives no quality).
    fn any_range() -> impl Strategy<Value = Range> {
        let kind = prop_oneof![
            Just("text/html".to_owned()),
            Just("application/json".to_owned()),
            Just("application/*".to_owned()),
            Just("*/*".to_owned()),
            Just("text/plain".to_owned()),
            Just("application/xhtml+xml".to_owned()),
            "[a-z]{1,8}/[a-z+]{1,8}",
        ];
        let quality = proptest::option::of(0u16..=1000);
        let other = prop_oneof![Just(""), Just(";v=b3"), Just(";q=abc"), Just(" ; level=1")];
        (kind, any::<bool>(), other, quality, " {0,2}").prop_map(
            |(kind, shout, other, quality, space)| {
                let quality = quality.map(|q| f32::from(q) / 1000.0);
                let written = if shout {
                    kind.to_ascii_uppercase()
                } else {
                    kind.clone()
                };
                let text = match quality {
                    Some(q) => format!("{space}{written}{other};q={q}"),
                    None => format!("{space}{written}{other}"),
                };
                Range {
                    text,
                    kind,
                    quality: quality.unwrap_or(1.0),
                }
            },
        )
    }

    /// Ranges of distinct types (what a client means by a repeated type is
    /// anyone's guess).
    fn any_ranges() -> impl Strategy<Value = Vec<Range>> {
        proptest::collection::vec(any_range(), 0..7).prop_map(|mut ranges| {
            let mut seen = std::collections::HashSet::new();
            ranges.retain(|r| seen.insert(r.kind.clone()));
            ranges
        })
    }

    /// The rule of the README, written apart: HTML when `text/html` has a
    /// quality above 0 and above that of the range naming JSON most
    /// closely (`application/json`, else `application/*`, else `*/*`).
    fn spec_prefers_html(ranges: &[Range]) -> bool {
        let quality = |kind: &str| ranges.iter().find(|r| r.kind == kind).map(|r| r.quality);
        let json = quality("application/json")
            .or_else(|| quality("application/*"))
            .or_else(|| quality("*/*"))
            .unwrap_or(0.0);
        quality("text/html").is_some_and(|html| html > 0.0 && html > json)
    }

    fn accept_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(http::header::ACCEPT, line.parse().unwrap());
        }
        headers
    }

    proptest::proptest! {
        /// The answer is the rule's, and the same whether the ranges come
        /// on one line or one per line, in this order or another.
        #[test]
        fn accept_prefers_html_exactly_as_the_rule_says(ranges in any_ranges()) {
            let texts: Vec<&str> = ranges.iter().map(|r| r.text.as_str()).collect();
            let want = spec_prefers_html(&ranges);
            let one_line = texts.join(",");
            proptest::prop_assert_eq!(prefers_html(&accept_lines([one_line.as_str()])), want, "{:?}", one_line);
            proptest::prop_assert_eq!(prefers_html(&accept_lines(texts.iter().copied())), want);
            let reversed: Vec<&str> = texts.iter().rev().copied().collect();
            proptest::prop_assert_eq!(prefers_html(&accept_lines([reversed.join(",").as_str()])), want);
        }
    }

    // ---------------------------------------------------------------
    // Any request the handler can be given gets an answer of the table.

    /// The code the property's server has, and where it points.
    const CODE: &str = "2001000001promo";
    const TARGET: &str = "https://example.org/promo";
    const MAX_URI_BYTES: usize = 2048;

    /// The public API's answers (README, after DESIGN §4): status and code.
    /// Written out here, not taken from `super::error`, so that the test
    /// checks the handler against the documentation.
    const TABLE: &[(u16, &str)] = &[
        (400, "INVALID_CODE"),
        (400, "INVALID_CLIENTID"),
        (400, "INVALID_HEADER"),
        (401, "CLIENTID_REQUIRED"),
        (403, "RETRY_ON_MNO_NETWORK"),
        (403, "SUBSCRIBER_UNKNOWN"),
        (403, "ASSOCIATION_MISMATCH"),
        (404, "CODE_NOT_FOUND"),
        (404, "UNKNOWN_PREFIX"),
        (404, "NOT_FOUND"),
        (405, "METHOD_NOT_ALLOWED"),
        (414, "REQUEST_TOO_LARGE"),
        (429, "RATE_LIMITED"),
        (503, "OVERLOADED"),
        (503, "UNAVAILABLE"),
        (503, "UPSTREAM_UNAVAILABLE"),
    ];

    /// Where a request comes from, as the transport established it.
    #[derive(Debug, Clone, Copy)]
    enum Source {
        /// MNO addresses bound to a subscriber (+447700900001, ...02).
        Subscriber(u8),
        /// An MNO address nobody is bound to.
        UnboundMno,
        Wifi,
        Gateway,
        /// A QUIC connection opened on WiFi that moved to a subscriber's
        /// address.
        Moved,
    }

    impl Source {
        fn origin(self) -> core::Origin {
            let ip = |text: &str| text.parse().unwrap();
            match self {
                Source::Subscriber(n) => core::Origin::Validated(ip(&format!("127.1.0.{n}"))),
                Source::UnboundMno => core::Origin::Validated(ip("127.1.0.99")),
                Source::Wifi => core::Origin::Validated(ip("127.2.0.1")),
                Source::Gateway => core::Origin::Validated(ip("127.3.0.1")),
                Source::Moved => core::Origin::Unvalidated {
                    validated: ip("127.2.0.1"),
                    current: ip("127.1.0.1"),
                },
            }
        }

        /// Off the MNO network, whatever the request's headers say.
        fn off_net(self) -> bool {
            matches!(self, Source::Wifi | Source::Moved)
        }
    }

    #[derive(Debug, Clone)]
    struct Request {
        from: Source,
        method: http::Method,
        path: &'static str,
        query: String,
        msisdn: Vec<&'static str>,
        forwarded_for: Option<&'static str>,
        accept: Option<&'static str>,
    }

    impl Request {
        fn headers(&self) -> HeaderMap {
            let mut headers = HeaderMap::new();
            for line in &self.msisdn {
                headers.append("x-msisdn", line.parse().unwrap());
            }
            if let Some(line) = self.forwarded_for {
                headers.insert("x-forwarded-for", line.parse().unwrap());
            }
            if let Some(line) = self.accept {
                headers.insert(http::header::ACCEPT, line.parse().unwrap());
            }
            headers
        }
    }

    /// Queries that parse, repeat, break or overflow: a code and a
    /// clientid (most of the time) with values on both sides of their
    /// rules, sometimes repeated, among other parameters, in any order;
    /// or raw text.
    fn any_query() -> impl Strategy<Value = String> {
        let code = prop_oneof![
            6 => Just(CODE.to_owned()),
            1 => Just("2001000001PROMO".to_owned()),
            1 => Just("2001000001missing".to_owned()),
            1 => Just("2002000001promo".to_owned()),
            1 => Just("3001000001abcdpromo".to_owned()),
            1 => Just(format!("2001000001{}", "v".repeat(65))),
            1 => "[ -~]{0,24}",
        ]
        .boxed();
        let clientid = prop_oneof![
            12 => (0u8..32).prop_map(|n| format!("app-{n}")),
            1 => Just(String::new()),
            1 => Just("x".repeat(65)),
            1 => Just("x".repeat(MAX_URI_BYTES)),
            1 => "[ -~]{0,12}",
        ]
        .boxed();
        let pair = |name: &str, value: BoxedStrategy<String>| (Just(name.to_owned()), value);
        let params = (
            proptest::option::weighted(0.9, pair("code", code.clone())),
            proptest::option::weighted(0.9, pair("clientid", clientid.clone())),
            proptest::option::weighted(0.05, pair("code", code)),
            proptest::option::weighted(0.05, pair("clientid", clientid)),
            proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,8}"), 0..2),
        )
            .prop_flat_map(|(code, clientid, code_again, clientid_again, others)| {
                let all: Vec<(String, String)> = [code, clientid, code_again, clientid_again]
                    .into_iter()
                    .flatten()
                    .chain(others)
                    .collect();
                Just(all).prop_shuffle()
            });
        prop_oneof![
            12 => params.prop_map(|pairs| {
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish()
            }),
            1 => "[A-Za-z0-9=&%+._~-]{0,40}",
        ]
    }

    fn any_request() -> impl Strategy<Value = Request> {
        let from = prop_oneof![
            (1u8..=2).prop_map(Source::Subscriber),
            Just(Source::UnboundMno),
            Just(Source::Wifi),
            Just(Source::Gateway),
            Just(Source::Moved),
        ];
        let method = prop_oneof![
            20 => Just(http::Method::GET),
            1 => Just(http::Method::POST),
            1 => Just(http::Method::HEAD),
        ];
        let path = prop_oneof![
            20 => Just(PATH),
            1 => Just("/mc/v1/resolve/"),
            1 => Just("/"),
        ];
        let msisdn_line = proptest::sample::select(
            &["+447700900001", "+447700900003", "07700900123", "nobody"][..],
        );
        let msisdn = prop_oneof![
            12 => Just(Vec::new()),
            6 => proptest::collection::vec(msisdn_line.clone(), 1),
            1 => proptest::collection::vec(msisdn_line, 2),
        ];
        let forwarded_for = proptest::option::of(proptest::sample::select(
            &[
                "127.1.0.1",
                "127.1.0.2",
                "127.1.0.5, 127.1.0.2",
                "127.2.0.9",
                "nonsense",
            ][..],
        ));
        let accept = proptest::option::of(proptest::sample::select(
            &[
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                "application/json",
                "*/*",
                "text/html;q=0.5, application/json",
            ][..],
        ));
        (
            from,
            method,
            path,
            any_query(),
            msisdn,
            forwarded_for,
            accept,
        )
            .prop_map(
                |(from, method, path, query, msisdn, forwarded_for, accept)| Request {
                    from,
                    method,
                    path,
                    query,
                    msisdn,
                    forwarded_for,
                    accept,
                },
            )
    }

    /// What must come back, where the request alone (and whether its
    /// clientid was associated) decides it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expected {
        Refusal(u16, &'static str),
        /// Resolved to [`TARGET`], for a clientid already associated.
        Existing,
    }

    /// The checks of DESIGN §4 that need no knowledge of identity, in
    /// their order: the route, the method, the enrichment header, the
    /// query, the code, the clientid; then what holds off the network and
    /// for an associated client seen from off it.
    fn expected(request: &Request, associated: bool) -> Option<Expected> {
        use Expected::Refusal;
        if request.path != PATH {
            return Some(Refusal(404, "NOT_FOUND"));
        }
        if request.method != http::Method::GET {
            return Some(Refusal(405, "METHOD_NOT_ALLOWED"));
        }
        if request.msisdn.len() > 1 {
            return Some(Refusal(400, "INVALID_HEADER"));
        }
        if request.query.len() > MAX_URI_BYTES {
            return Some(Refusal(414, "REQUEST_TOO_LARGE"));
        }
        let (mut code, mut clientid) = (None, None);
        for (name, value) in form_urlencoded::parse(request.query.as_bytes()) {
            let (slot, repeated) = match &*name {
                "code" => (&mut code, "INVALID_CODE"),
                "clientid" => (&mut clientid, "INVALID_CLIENTID"),
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Some(Refusal(400, repeated));
            }
        }
        let Ok(code) = IndirectCode::parse(code.as_deref().unwrap_or("")) else {
            return Some(Refusal(400, "INVALID_CODE"));
        };
        let Some(clientid) = clientid else {
            return Some(Refusal(401, "CLIENTID_REQUIRED"));
        };
        if ClientIdRef::parse(&clientid).is_err() {
            return Some(Refusal(400, "INVALID_CLIENTID"));
        }
        match (associated, request.from) {
            (false, from) if from.off_net() => Some(Refusal(403, "RETRY_ON_MNO_NETWORK")),
            (false, Source::UnboundMno) => Some(Refusal(403, "SUBSCRIBER_UNKNOWN")),
            (true, Source::Wifi | Source::Moved | Source::UnboundMno)
                if code.prefix() != "2001000001" =>
            {
                Some(Refusal(404, "UNKNOWN_PREFIX"))
            }
            (true, Source::Wifi | Source::Moved | Source::UnboundMno) if code.as_str() != CODE => {
                Some(Refusal(404, "CODE_NOT_FOUND"))
            }
            (true, Source::Wifi | Source::Moved | Source::UnboundMno) => Some(Expected::Existing),
            _ => None,
        }
    }

    /// Sends `request` to the handler and checks the answer: the one
    /// [`expected`] says where it says one, and in any case a row of the
    /// table in the JSON error shape, a resolution of [`CODE`] (JSON, or
    /// a redirect for a browser), `Retry-After` exactly on 429 and 503.
    async fn check(
        app: &App,
        request: Request,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        let uri: Uri = format!("{}?{}", request.path, request.query)
            .parse()
            .expect("the generators make valid URIs");
        let clientid = form_urlencoded::parse(request.query.as_bytes())
            .find(|(name, _)| name == "clientid")
            .map(|(_, value)| value.into_owned());
        let index = app.store.index();
        let associated_before = clientid
            .as_deref()
            .is_some_and(|id| index.association(id).is_some());
        let want = expected(&request, associated_before);
        let conn = ConnInfo {
            origin: request.from.origin(),
            protocol: Protocol::Http2,
        };
        let response = handle(app, conn, &request.method, &uri, &request.headers()).await;
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };

        if status == 302 {
            prop_assert!(prefers_html(&request.headers()), "a redirect for an app");
            prop_assert_eq!(header(http::header::LOCATION), Some(TARGET.to_owned()));
            prop_assert!(
                want.is_none() || want == Some(Expected::Existing),
                "{:?}",
                want
            );
            prop_assert!(index.association(clientid.as_deref().unwrap()).is_some());
            return Ok(());
        }
        prop_assert_eq!(
            header(http::header::CONTENT_TYPE),
            Some("application/json".to_owned())
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).map_err(|e| {
            proptest::test_runner::TestCaseError::fail(format!("{status}: not JSON: {e}"))
        })?;
        if status == 200 {
            prop_assert!(!prefers_html(&request.headers()), "JSON for a browser");
            prop_assert_eq!(&body["code"], CODE, "{}", body);
            prop_assert_eq!(&body["type"], "url");
            prop_assert_eq!(&body["target"], TARGET);
            let association = if associated_before {
                "existing"
            } else {
                "created"
            };
            prop_assert_eq!(&body["association"], association, "{}", body);
            prop_assert_eq!(body.as_object().map(|o| o.len()), Some(4), "{}", body);
            prop_assert!(
                want.is_none() || want == Some(Expected::Existing),
                "{:?}: {}",
                want,
                body
            );
            prop_assert!(index.association(clientid.as_deref().unwrap()).is_some());
            return Ok(());
        }
        let retry_after = header(http::header::RETRY_AFTER).and_then(|v| v.parse::<u64>().ok());
        check_refusal(status, &body, retry_after, want)
    }

    /// A refusal is a row of DESIGN §4's table, in its JSON shape, with a
    /// `Retry-After` exactly when it is a 429 or 503.
    fn check_refusal(
        status: u16,
        body: &serde_json::Value,
        retry_after: Option<u64>,
        want: Option<Expected>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        let code = body["code"].as_str().unwrap_or_default();
        prop_assert!(
            TABLE.contains(&(status, code)),
            "{} {} is not in the table",
            status,
            body
        );
        prop_assert_eq!(&body["status"], status, "{}", body);
        prop_assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            body
        );
        prop_assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{}", body);
        prop_assert_eq!(
            retry_after.is_some_and(|secs| secs >= 1),
            matches!(status, 429 | 503),
            "{}",
            body
        );
        match want {
            Some(Expected::Refusal(want_status, want_code)) => {
                prop_assert_eq!((status, code), (want_status, want_code), "{}", body);
            }
            Some(Expected::Existing) => {
                prop_assert!(false, "an associated client refused: {}", body)
            }
            None => {}
        }
        Ok(())
    }

    /// A server for the property: no rate limits or pacing (their
    /// answers are tested where they are made), a gateway, [`CODE`]
    /// registered and two subscribers bound.
    async fn property_server(data_dir: &std::path::Path) -> crate::server::Running {
        let text = format!(
            "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nrouting_prefixes = [\"2001000001\"]\n\
             http3 = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [mno]\nnetworks = [\"127.1.0.0/16\"]\ntrusted_gateways = [\"127.3.0.1\"]\n\
             [auth]\nassociations_per_minute = 1000000\nmax_clientids_per_subscriber = 1000\n\
             [limits]\nmax_uri_bytes = {MAX_URI_BYTES}\nrequests_per_address_per_sec = 0\n\
             requests_per_clientid_per_sec = 0\nunauthenticated_per_sec = 0\nfirst_scans_per_sec = 0\n",
            data_dir.display()
        );
        let config = crate::config::Config::parse(&text, Vec::new()).expect("valid config");
        let running = crate::server::start(config)
            .await
            .expect("the server starts");
        let app = &running.app;
        let code = IndirectCode::parse(CODE).unwrap();
        app.store
            .register_code(&code, TARGET, crate::clock::now_ms())
            .await
            .unwrap();
        for n in 1..=2 {
            let msisdn = crate::wire::Msisdn::parse(&format!("+44770090000{n}")).unwrap();
            let network = format!("127.1.0.{n}/32").parse().unwrap();
            let until = crate::clock::now_ms() + 3_600_000;
            let bind = crate::sessions::Bind {
                networks: &[network],
                msisdn: &msisdn,
                expires_ms: until,
                source: crate::core::BindingSource::Admin,
                unless_live_at: None,
            };
            app.bindings.bind(bind).unwrap();
        }
        running
    }

    /// Any request (route, method, query, enrichment headers, `Accept`,
    /// where it comes from) gets an answer of DESIGN §4's table in its
    /// JSON shape, or the resolution, as [`check`] says.
    #[test]
    fn any_request_gets_an_answer_of_the_table() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let running = runtime.block_on(property_server(dir.path()));
        let config = proptest::test_runner::Config {
            cases: 512,
            failure_persistence: None,
            ..Default::default()
        };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let outcome = runner.run(&any_request(), |request| {
            runtime.block_on(check(&running.app, request))
        });
        runtime.block_on(running.shutdown());
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    }
}
