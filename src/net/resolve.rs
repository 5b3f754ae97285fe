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

use super::App;
use super::error::{error_response, json_response, wire_error};
use super::metrics::Protocol;
use crate::core::{self, ClientView, Refusal};
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

#[derive(Serialize)]
struct Resolved<'a> {
    code: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    target: &'a str,
    association: &'static str,
}

/// [`handle`] for a connection with a conduct record (`super::conn`): waits
/// first if the connection has earned a slow-down, then judges the answer.
/// Both transports serve their requests through this.
pub async fn handle_on(
    app: &App,
    conn: ConnInfo,
    conduct: &super::conn::Conduct,
    method: &http::Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Bytes> {
    let delay = conduct.delay(&app.config.limits);
    if !delay.is_zero() {
        // Boxed, as every rare wait below (and the tarpit's): the common
        // path's future stays small, and it is moved into a task for every
        // HTTP/2 stream that has to wait.
        Box::pin(tokio::time::sleep(delay)).await;
    }
    let response = handle(app, conn, method, uri, headers).await;
    app.judge(conduct, conn.origin.validated(), response.status());
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
        Err(refusal) => (wire_error(&refusal).1, error_response(&refusal)),
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
    let mut lookups = Lookups {
        app,
        now_ms: super::now_ms(),
        tarpit_slot: None,
    };
    let outcome = core::admit(&app.rules, request, &mut parsed, &mut lookups);
    count(app, &outcome.tally);
    if !outcome.wait.is_zero() {
        // Boxed: only a request that waits pays for the timer, and the
        // resolve future moved into every HTTP/2 stream stays small.
        Box::pin(tokio::time::sleep(outcome.wait)).await;
    }
    drop(lookups.tarpit_slot.take());
    let passed = outcome.verdict?;
    let permit = match passed.then {
        core::Admitted::Resolve(permit) => permit,
        core::Admitted::Associate {
            subscriber,
            source,
            rebind,
        } => {
            Box::pin(associate(
                app,
                &passed,
                subscriber,
                source,
                rebind,
                lookups.now_ms,
            ))
            .await?
        }
    };
    answer(app, conn, headers, &passed.code, &permit).await
}

/// The facts [`core::admit`] asks for, from the server's index, limiters
/// and session bindings.
struct Lookups<'a> {
    app: &'a App,
    now_ms: u64,
    /// The source's place among the tarpit's waiters, held while it waits.
    tarpit_slot: Option<super::limits::AddressSlot>,
}

impl core::Facts for Lookups<'_> {
    fn association(&mut self, clientid: &ClientIdRef<'_>) -> Option<core::model::Association> {
        self.app.store.index().association(clientid.as_str())
    }

    fn address_budget(&mut self, source: std::net::IpAddr) -> core::Verdict {
        self.app.limits.requests_per_address.check(&source)
    }

    fn clientid_budget(&mut self, association: &core::model::Association) -> core::Verdict {
        self.app
            .limits
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
        core::identify(&app.config.mno, view, &app.sessions, &app.key, self.now_ms)
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
        let reason = wire_error(would).1;
        m.monitored
            .get_or_create(&super::metrics::ReasonLabels { reason })
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
    let done = app
        .store
        .associate(new, rebind, cap, now_ms)
        .await
        .map_err(|e| {
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
    core::permit_for(&app.config.policy, clientid, &done, &passed.identity)
}

/// The answer for a permitted request: the code's target (here, or a
/// peer's), counted; a redirect for a browser, the JSON of §4 otherwise.
async fn answer(
    app: &App,
    conn: ConnInfo,
    headers: &HeaderMap,
    code: &IndirectCode,
    permit: &core::Permit,
) -> Result<Response<Bytes>, Refusal> {
    let index = app.store.index();
    let protocol = match conn.protocol {
        Protocol::Http1 => 0,
        Protocol::Http2 => 1,
        Protocol::Http3 => 2,
    };
    let first_scan = permit.association() == core::AssociationState::Created;
    let slot = crate::store::index::scan_slot(protocol, first_scan);
    let resolution = core::resolve(&app.config.policy, permit, code, |code| {
        index.code_scanned(code, slot)
    })?;
    let target = match resolution {
        core::Resolution::Local(target) => target,
        core::Resolution::Peer => {
            let peers = app.peers.as_ref().ok_or(Refusal::UnknownPrefix)?;
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

    proptest::proptest! {
        /// Any header a client can send, in any number: an answer, no panic.
        #[test]
        fn any_accept_header_gets_an_answer(values in proptest::collection::vec("[ -~]{0,80}", 0..4)) {
            let mut headers = HeaderMap::new();
            for value in &values {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    headers.append(http::header::ACCEPT, value);
                }
            }
            let _ = prefers_html(&headers);
        }
    }
}
