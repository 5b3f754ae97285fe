//! A connection whose requests keep being refused pays for it: it is slowed,
//! then closed, and its source is refused new connections for a while;
//! clients elsewhere are not slowed (`limits.refusals_before_*`). The
//! server's own 503s (overload, a log or a peer down) are not held against
//! the connection that gets them.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{CODE, TestServer, eventually, metric};

/// How long the server may take to answer what a test waits for.
const WITHIN: Duration = Duration::from_secs(10);

const STRICT: &str =
    "[limits]\nrefusals_before_slowdown = 4\nrefusals_before_close = 10\npenalty_secs = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_slowed_then_closed_and_its_source_kept_out() {
    let server = TestServer::ready(STRICT).await;
    let legit = server.client("http2", "127.1.0.1");
    let vip = format!("code={CODE}&clientid=vip");
    assert_eq!(server.resolve(&legit, &vip).await.0, 200);

    // One HTTP/2 connection from WiFi sending spoofed clientids, one at a time.
    let flood = server.client("http2", "127.2.0.100");
    let mut waits = Vec::new();
    let mut closed_after = None;
    for i in 0..20 {
        let started = Instant::now();
        let url = server.url(&format!("code={CODE}&clientid=spoof-{i}"));
        match flood.get(url).send().await {
            Ok(response) if response.status() == 429 => {
                // Its next connection, resuming a session that served
                // nothing, is told how long the penalty holds.
                assert_eq!(response.headers()["retry-after"], "2");
                closed_after = Some(i);
                break;
            }
            Ok(response) => {
                assert_eq!(response.status(), 403);
                waits.push(started.elapsed());
            }
            Err(_) => {
                closed_after = Some(i);
                break;
            }
        }
        // The legit client elsewhere is not slowed meanwhile.
        let started = Instant::now();
        assert_eq!(server.resolve(&legit, &vip).await.0, 200);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }
    // Closed at its tenth refusal; reqwest's next connection (resuming its
    // TLS session) is answered 429 with the penalty's wait.
    assert_eq!(closed_after, Some(10), "{waits:?}");
    assert!(
        waits[..4].iter().all(|w| *w < Duration::from_millis(50)),
        "{waits:?}"
    );
    assert!(
        waits[9] >= Duration::from_millis(80),
        "slowed, doubling: {waits:?}"
    );
    let metrics = server.metrics().await;
    let count = |labels: &str| metric(&metrics, labels);
    assert_eq!(
        count("homecmp_abusive_connections_total{step=\"slowed\"}"),
        1.0
    );
    assert_eq!(
        count("homecmp_abusive_connections_total{step=\"closed\"}"),
        1.0
    );
    assert!(
        count("homecmp_connections_refused_total{transport=\"tcp\",reason=\"penalty\"}") >= 1.0
    );

    // Another address is served; the penalised one again once it is served.
    let other = server.client("http1", "127.2.0.101");
    let (status, body) = server
        .resolve(&other, &format!("code={CODE}&clientid=x"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("RETRY_ON_MNO_NETWORK"))
    );
    // The penalty (penalty_secs = 2) waited out: the test is that it ends.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let back = server.client("http1", "127.2.0.100");
    let (status, _) = server
        .resolve(&back, &format!("code={CODE}&clientid=x"))
        .await;
    assert_eq!(status, 403, "served again after the penalty");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_quic_connection_is_closed_and_its_source_kept_out() {
    let server = TestServer::ready(STRICT).await;
    let client = server.h3_client("127.2.0.102");
    let mut connection = client.open().await.unwrap();
    let mut refused = 0;
    for i in 0..20 {
        match connection
            .get(&format!("/mc/v1/resolve?code={CODE}&clientid=spoof-{i}"))
            .await
        {
            Ok((status, body)) => {
                assert_eq!(
                    (status, &body["code"]),
                    (403, &json!("RETRY_ON_MNO_NETWORK"))
                );
                refused += 1;
            }
            Err(_) => break,
        }
    }
    assert_eq!(refused, 10);
    let reason = tokio::time::timeout(Duration::from_secs(2), connection.closed())
        .await
        .expect("closed by the server");
    assert!(
        format!("{reason:?}").contains("263") || format!("{reason:?}").contains("0x107"),
        "H3_EXCESSIVE_LOAD: {reason:?}"
    );
    // A new connection from there gets no request served until the
    // penalty is served: its Initial is dropped (it came back with a token)
    // or, once its handshake completes, its request is answered 429.
    let attempt = async {
        let mut connection = client.open().await?;
        connection.get(&format!("/mc/v1/resolve?code={CODE}")).await
    };
    let kept_out = tokio::time::timeout(Duration::from_millis(1500), attempt).await;
    let refused = |body: &serde_json::Value| body["code"] == "RATE_LIMITED";
    assert!(
        !matches!(&kept_out, Ok(Ok((status, body))) if *status != 429 || !refused(body)),
        "served: {kept_out:?}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "homecmp_abusive_connections_total{step=\"closed\"}"
        ),
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_fill_the_tarpit_everyone_shares() {
    let config = "[limits]\nunauthenticated_per_sec = 10\ntarpit_max_ms = 2000\n\
                  tarpit_per_source = 3\nrequests_per_address_per_sec = 0\n\
                  refusals_before_slowdown = 0\nrefusals_before_close = 0\n";
    let server = TestServer::ready(config).await;
    // Forty requests at once from one address: three wait their turn, the
    // rest are refused at once instead of queueing ahead of everyone.
    let flood = server.client("http2", "127.2.0.110");
    let mut waves = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = server.url(&format!("code={CODE}&clientid=spoof-{i}"));
        let client = flood.clone();
        waves.spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    }
    let limited = "homecmp_requests_total{outcome=\"RATE_LIMITED\",protocol=\"http2\"}";
    eventually(
        "the flood refused past its source's share",
        WITHIN,
        async || metric(&server.metrics().await, limited) >= 30.0,
    )
    .await;
    // Another source's unassociated request still gets a near turn.
    let other = server.client("http1", "127.2.0.111");
    let started = Instant::now();
    let (status, _) = server
        .resolve(&other, &format!("code={CODE}&clientid=x"))
        .await;
    assert_eq!(status, 403);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    let statuses = waves.join_all().await;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 30, "{statuses:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_503s_do_not_count_against_a_connection() {
    // Requests without an association are shed (503 OVERLOADED) while more
    // than one connection is open.
    let config = format!("{STRICT}shed_unauthenticated_above = 1\n");
    let server = TestServer::ready(&config).await;
    let legit = server.client("http2", "127.1.0.1");
    let vip = format!("code={CODE}&clientid=vip");
    assert_eq!(server.resolve(&legit, &vip).await.0, 200);

    // Unassociated requests on one HTTP/2 connection, all shed: twice the
    // refusals that would close it, none slowed, none closing it.
    let shed = server.client("http2", "127.2.0.120");
    for i in 0..20 {
        let started = Instant::now();
        let url = server.url(&format!("code={CODE}&clientid=first-{i}"));
        let response = shed.get(url).send().await.expect("not closed");
        assert_eq!(response.status(), 503, "{i}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "OVERLOADED");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{i}: slowed {:?}",
            started.elapsed()
        );
    }
    let metrics = server.metrics().await;
    assert!(metric(&metrics, "homecmp_shed_total") >= 20.0, "{metrics}");
    for step in ["slowed", "closed"] {
        let line = format!("homecmp_abusive_connections_total{{step=\"{step}\"}}");
        assert_eq!(metric(&metrics, &line), 0.0, "{step}");
    }
    // An associated request still goes through on that connection.
    assert_eq!(server.resolve(&shed, &vip).await.0, 200);
    server.stop().await;
}

/// One user's conduct does not shut out the subscribers behind the same
/// address (a hotspot, a NAT): while the address serves its penalty, a
/// connection resuming a TLS session that served an associated clientid is
/// served; one resuming a session that served nothing is answered 429 with
/// the penalty's wait once its handshake is done (not reset); one offering
/// no ticket is closed before any TLS work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_penalty_earned_behind_a_shared_address_spares_returning_subscribers() {
    let server = TestServer::ready(
        "[limits]\nrefusals_before_slowdown = 4\nrefusals_before_close = 10\npenalty_secs = 30\n",
    )
    .await;
    let shared = "127.2.0.60";
    let mno = server.client("http1", "127.1.0.1");
    let loyal = format!("code={CODE}&clientid=loyal");
    assert_eq!(server.resolve(&mno, &loyal).await.0, 200);
    // A subscriber behind the shared address, a new connection per scan:
    // its sessions serve "loyal".
    let subscriber = server.client_per_request(shared);
    assert_eq!(server.resolve(&subscriber, &loyal).await.0, 200);
    // A stranger there completes a handshake (its session serves nothing)
    // and keeps the ticket.
    let stranger = support::raw::tls12_client_config(&server.ca_pem());
    let addr = server.public_addr_for(shared);
    let path = format!("/mc/v1/resolve?code={CODE}&clientid=stranger");
    let first = support::raw::get_once(stranger.clone(), shared, addr, &path).await;
    assert!(first.unwrap().starts_with("HTTP/1.1 403"));

    // Someone there sends spoofed clientids until the connection is closed
    // and the address is put in the penalty box.
    let flood = server.client("http2", shared);
    let mut closed = false;
    for i in 0..20 {
        let url = server.url(&format!("code={CODE}&clientid=spoof-{i}"));
        // Closed, then its next connection answered 429 (or, in the race
        // between the close and the request, an error).
        match flood.get(url).send().await {
            Ok(response) if response.status() != 429 => {}
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the flooding connection is closed");
    let refused = || async {
        let metrics = server.metrics().await;
        metric(
            &metrics,
            "homecmp_connections_refused_total{transport=\"tcp\",reason=\"penalty\"}",
        )
    };
    let before = refused().await;

    // New, with no ticket: closed before TLS.
    let newcomer = server.client("http1", shared);
    let url = server.url(&format!("code={CODE}&clientid=newcomer"));
    assert!(newcomer.get(url).send().await.is_err());
    // The returning subscriber: served, connection after connection.
    for i in 0..5 {
        let (status, body) = server.resolve(&subscriber, &loyal).await;
        assert_eq!(status, 200, "connection {i}: {body}");
    }
    // The stranger resuming its session: told to wait, not reset.
    let answer = support::raw::get_once(stranger, shared, addr, &path)
        .await
        .expect("an answer, not a reset");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 30"),
        "{answer}"
    );
    assert!(refused().await >= before + 2.0);
    server.stop().await;
}
