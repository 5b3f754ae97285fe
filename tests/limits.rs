//! The layered limits of `[limits]` against a real server: per source
//! address (connections, accept rate, request rate) and per clientid.

mod support;

use support::{TestServer, metric};

const CODE: &str = "2001000001promo";

#[tokio::test]
async fn request_rate_per_address_answers_429_and_spares_other_addresses() {
    // The conduct rule (slowing a refused connection) off: this is about the rate.
    let server = TestServer::with_config(
        "[limits]\nrequests_per_address_per_sec = 5\nrefusals_before_slowdown = 0",
    )
    .await;
    let noisy = server.client("http2", "127.2.0.1");
    let mut limited = 0;
    for _ in 0..30 {
        let (status, body) = server.resolve(&noisy, &format!("code={CODE}")).await;
        match status {
            401 => {}
            429 => {
                assert_eq!(body["code"], "RATE_LIMITED");
                limited += 1;
            }
            other => panic!("unexpected {other} {body}"),
        }
    }
    // Burst of 10, then about 5 per second.
    assert!(limited >= 15, "only {limited} of 30 limited");
    let quiet = server.client("http2", "127.2.0.2");
    assert_eq!(server.resolve(&quiet, &format!("code={CODE}")).await.0, 401);
}

#[tokio::test]
async fn request_rate_per_clientid_limits_one_associated_app() {
    let server = TestServer::with_config("[limits]\nrequests_per_clientid_per_sec = 3").await;
    server.put_code(CODE, "https://example.org/").await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let mno = server.client("http1", "127.1.0.1");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(
            server
                .resolve(&mno, &format!("code={CODE}&clientid=busy"))
                .await
                .0,
        );
    }
    assert_eq!(statuses[0], 200);
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 10,
        "{statuses:?}"
    );
    // Another app of the same subscriber is not affected.
    let (s, _) = server
        .resolve(&mno, &format!("code={CODE}&clientid=calm"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let server = TestServer::with_config("[limits]\nmax_connections_per_address = 2").await;
    let clients: Vec<_> = (0..4)
        .map(|_| server.client("http1", "127.2.0.9"))
        .collect();
    let mut answered = 0;
    for client in &clients {
        if client
            .get(server.url(&format!("code={CODE}")))
            .send()
            .await
            .is_ok()
        {
            answered += 1;
        }
    }
    // Two keep-alive connections hold both slots; the others are closed.
    assert_eq!(answered, 2);
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "homecmp_connections_refused_total{transport=\"tcp\",reason=\"address_cap\"}"
        ),
        2.0
    );
    let other = server.client("http1", "127.2.0.10");
    assert_eq!(server.resolve(&other, &format!("code={CODE}")).await.0, 401);
}

/// New connections from one address past its accept rate wait for the
/// address's turns (delayed, not reset: many subscribers can share an
/// address); those whose turn would come after the header timeout are
/// closed before TLS, and counted.
#[tokio::test]
async fn tcp_accept_rate_per_address_delays_a_burst_and_refuses_past_the_bound() {
    let server = TestServer::with_config(
        "[limits]
accepts_per_address_per_sec = 2
header_read_timeout_ms = 1500",
    )
    .await;
    // One after another: a burst of 4, then 2 a second, each served.
    let started = std::time::Instant::now();
    for i in 0..8 {
        // A new client each time: a new connection each time.
        let client = server.client("http1", "127.2.0.11");
        let (status, body) = server.resolve(&client, &format!("code={CODE}")).await;
        assert_eq!(status, 401, "connection {i}: {body}");
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1000),
        "not paced: {:?}",
        started.elapsed()
    );
    // Thirty at once: about three turns come within the 1.5 s bound.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let client = server.client("http1", "127.2.0.11");
        let url = server.url(&format!("code={CODE}"));
        burst.spawn(async move { client.get(url).send().await.is_ok() });
    }
    let served = burst.join_all().await.into_iter().filter(|ok| *ok).count();
    assert!((1..=10).contains(&served), "{served} of 30 served");
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            "homecmp_connections_refused_total{transport=\"tcp\",reason=\"address_rate\"}"
        ) >= 20.0
    );
}

#[tokio::test]
async fn unauthenticated_requests_are_paced_while_associated_ones_pass() {
    let server = TestServer::with_config(
        "[limits]\nunauthenticated_per_sec = 5\ntarpit_max_ms = 300\nrequests_per_address_per_sec = 0",
    )
    .await;
    server.put_code(CODE, "https://example.org/").await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let mno = server.client("http2", "127.1.0.1");
    assert_eq!(
        server
            .resolve(&mno, &format!("code={CODE}&clientid=vip"))
            .await
            .0,
        200
    );
    let flood = server.client("http2", "127.2.0.1");
    let mut waves = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = flood.clone();
        let url = server.url(&format!("code={CODE}&clientid=flood-{i}"));
        waves.spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    }
    // While the flood waits in the tarpit, the associated client is served at once.
    let started = std::time::Instant::now();
    assert_eq!(
        server
            .resolve(&mno, &format!("code={CODE}&clientid=vip"))
            .await
            .0,
        200
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(250));
    let mut statuses = Vec::new();
    while let Some(status) = waves.join_next().await {
        statuses.push(status.unwrap());
    }
    let overloaded = statuses.iter().filter(|s| **s == 503).count();
    let refused = statuses.iter().filter(|s| **s == 403).count();
    assert_eq!(overloaded + refused, 40, "{statuses:?}");
    // 5 a second with 300 ms of patience: a burst, one or two waiting their
    // turn, and an immediate 503 for the rest (a turn too far is not waited for).
    assert!(overloaded >= 30, "{statuses:?}");
    assert!(metric(&server.metrics().await, "homecmp_tarpitted_total") >= 1.0);
}

#[tokio::test]
async fn handshake_pace_makes_new_connections_wait_or_closes_them() {
    let server = TestServer::with_config(
        "[limits]\nhandshakes_per_sec = 2\nheader_read_timeout_ms = 400\naccepts_per_address_per_sec = 0",
    )
    .await;
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..10 {
        let client = server.client("http1", &format!("127.2.1.{}", i + 1));
        let url = server.url(&format!("code={CODE}"));
        attempts.spawn(async move { client.get(url).send().await.is_ok() });
    }
    let mut served = 0;
    while let Some(ok) = attempts.join_next().await {
        served += ok.unwrap() as usize;
    }
    // A burst of one or two, then two a second for the 0.4 s a socket may wait.
    assert!((1..=4).contains(&served), "{served} of 10 served");
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            "homecmp_connections_refused_total{transport=\"tcp\",reason=\"handshake_rate\"}"
        ) >= 6.0
    );
}

#[tokio::test]
async fn a_returning_client_does_not_wait_behind_a_flood_of_new_handshakes() {
    use std::time::{Duration, Instant};
    let server = TestServer::with_config(
        "[limits]\nhandshakes_per_sec = 4\nheader_read_timeout_ms = 3000\naccepts_per_address_per_sec = 0",
    )
    .await;
    let query = format!("code={CODE}");
    // Connects once and keeps the tickets the server issued.
    let returning = server.client_per_request("127.2.9.1");
    assert_eq!(server.resolve(&returning, &query).await.0, 401);

    // 24 new clients at once: at 4 handshakes a second the queue of new
    // handshakes is full for the whole 3 s a socket may wait.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..24 {
        let client = server.client("http1", &format!("127.2.8.{}", i + 1));
        let url = server.url(&query);
        flood.spawn(async move { client.get(url).send().await.is_ok() });
    }
    // Every one of them in the queue (and the returning client's first).
    let new_turns = "homecmp_handshake_turns_total{queue=\"new\"}";
    support::eventually(
        "the flood's handshakes queued",
        Duration::from_secs(10),
        async || metric(&server.metrics().await, new_turns) >= 25.0,
    )
    .await;

    let newcomer = server.client("http1", "127.2.9.2");
    let url = server.url(&query);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let served = newcomer.get(url).send().await.is_ok();
        (served, started.elapsed())
    });
    let started = Instant::now();
    assert_eq!(server.resolve(&returning, &query).await.0, 401);
    let returned_in = started.elapsed();
    assert!(
        returned_in < Duration::from_secs(1),
        "returning client waited {returned_in:?}"
    );
    let (served, newcomer_in) = waiting.await.unwrap();
    assert!(
        !served || newcomer_in > Duration::from_secs(1),
        "a new client behind the flood waits its turn or is refused ({newcomer_in:?})"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "homecmp_handshake_turns_total{queue=\"returning\"}"
        ),
        1.0
    );
    assert!(metric(&metrics, "homecmp_handshake_turns_total{queue=\"new\"}") >= 26.0);
    flood.join_all().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::with_config("[limits]\nheader_read_timeout_ms = 300").await;
    let mut stream = support::raw::tls(
        &server.ca_pem(),
        &[b"http/1.1"],
        "127.2.0.40",
        server.running.public_addr,
    )
    .await
    .unwrap();
    stream
        .write_all(b"GET /mc/v1/resolve?code=2001000001x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Trickle a byte every 100 ms, never ending the head: the server closes.
    let mut buf = [0u8; 512];
    let closed = loop {
        if started.elapsed() > std::time::Duration::from_secs(5) {
            break false;
        }
        if stream.write_all(b"X").await.is_err() {
            break true;
        }
        match tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => break true, // an error answer (408) then close
            Err(_) => {}
        }
    };
    assert!(closed, "connection still open after 5 s");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Blocks the (current-thread) runtime `block` at a time until `stop`: the
/// server's work waits, as it does when the machine is saturated.
fn hog_runtime(
    block: std::time::Duration,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let hog = tokio::spawn(async move {
        while !flag.load(Ordering::Relaxed) {
            // Blocking on purpose: this is the saturated machine.
            std::thread::sleep(block);
            tokio::task::yield_now().await;
        }
    });
    (stop, hog)
}

async fn wait_for_gauge(server: &TestServer, name: &str, value: f64) {
    let what = format!("{name} becomes {value}");
    support::eventually(&what, std::time::Duration::from_secs(10), async || {
        metric(&server.metrics().await, name) == value
    })
    .await;
}

#[tokio::test]
async fn a_lagging_runtime_stops_taking_new_connections_and_keeps_serving_open_ones() {
    use std::sync::atomic::Ordering;
    let overloaded = "homecmp_overloaded{runtime=\"main\"}";
    let server = TestServer::ready("[limits]\noverload_lag_ms = 20").await;
    // The subscriber's connection is open before the overload.
    let subscriber = server.client("http2", "127.1.0.1");
    let query = format!("code={CODE}&clientid=lag-app");
    let (status, body) = server.resolve(&subscriber, &query).await;
    assert_eq!((status, &body["association"]), (200, &"created".into()));
    assert_eq!(metric(&server.metrics().await, overloaded), 0.0);

    let (stop, hog) = hog_runtime(std::time::Duration::from_millis(60));
    wait_for_gauge(&server, overloaded, 1.0).await;
    let (status, body) = server.resolve(&subscriber, &query).await;
    assert_eq!(status, 200, "an open connection is served: {body}");
    // A new connection waits in the kernel's backlog, unanswered...
    let newcomer = server.client("http1", "127.2.0.2");
    let url = server.url(&query);
    let mut waiting =
        tokio::spawn(async move { newcomer.get(url).send().await.map(|r| r.status()) });
    let answered = tokio::time::timeout(std::time::Duration::from_millis(400), &mut waiting).await;
    assert!(answered.is_err(), "served while overloaded: {answered:?}");
    let metrics = server.metrics().await;
    assert!(metric(&metrics, "homecmp_accept_pauses_total") >= 1.0);
    assert!(metric(&metrics, "homecmp_runtime_lag_seconds{runtime=\"main\"}") > 0.020);

    // ...and is served once the runtime catches up.
    stop.store(true, Ordering::Relaxed);
    hog.await.unwrap();
    wait_for_gauge(&server, overloaded, 0.0).await;
    let status = waiting.await.unwrap().expect("served after the overload");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn max_connections_counts_tcp_and_quic_together() {
    let server =
        TestServer::ready("[limits]\nmax_connections = 2\nshed_unauthenticated_above = 100\n")
            .await;
    let addr = server.running.public_addr;
    let _tcp = support::raw::tls(&server.ca_pem(), &[b"h2"], "127.2.0.120", addr)
        .await
        .unwrap();
    let quic = server.h3_client("127.2.0.121");
    let mut open = quic.open().await.unwrap();
    // Answered: the server has admitted it (a client that was not validated
    // is admitted once its handshake is done on the server's side too).
    let (status, _) = open
        .get(&format!("/mc/v1/resolve?code={CODE}"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // Two open, one over each transport: a third is refused on either.
    let third = support::raw::tls(&server.ca_pem(), &[b"h2"], "127.2.0.122", addr).await;
    assert!(third.is_err(), "a third connection over TCP was let in");
    let fourth = server.h3_client("127.2.0.123");
    let attempt = tokio::time::timeout(std::time::Duration::from_millis(800), fourth.open()).await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a third connection over QUIC was let in"
    );
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            "homecmp_connections_refused_total{transport=\"tcp\",reason=\"connection_cap\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "homecmp_connections_refused_total{transport=\"quic\",reason=\"connection_cap\"}"
        ) >= 1.0
    );
}

/// Many subscribers behind one address (a hotspot, an enterprise NAT,
/// another operator's CGNAT): each associated app spends its own budget,
/// not the address's, so the address's budget, spent many times over, stops
/// only the requests without an association.
#[tokio::test]
async fn associated_apps_behind_one_address_are_not_held_to_its_budget() {
    const SUBSCRIBERS: u32 = 25;
    // First scans have no association yet: they spend their own address's
    // budget (2/s, bursts of 4), so four each.
    const APPS: u32 = 4;
    let server = TestServer::with_config(
        "[limits]\nrequests_per_address_per_sec = 2\nrefusals_before_slowdown = 0",
    )
    .await;
    server.put_code(CODE, "https://example.org/").await;
    for s in 1..=SUBSCRIBERS {
        let ip = format!("127.1.3.{s}");
        server.bind_session(&ip, &format!("+4477009{s:05}")).await;
        let mno = server.client("http1", &ip);
        for a in 0..APPS {
            let (status, body) = server
                .resolve(&mno, &format!("code={CODE}&clientid=app-{s}-{a}"))
                .await;
            assert_eq!(status, 200, "first scan of app-{s}-{a}: {body}");
        }
    }
    // Now all of them from one off-net address, on one connection: 100
    // associated apps, three scans each, far past the address's 2/s.
    let shared = server.client("http2", "127.2.9.1");
    for round in 0..3 {
        for s in 1..=SUBSCRIBERS {
            for a in 0..APPS {
                let (status, body) = server
                    .resolve(&shared, &format!("code={CODE}&clientid=app-{s}-{a}"))
                    .await;
                assert_eq!(status, 200, "round {round}, app-{s}-{a}: {body}");
                assert_eq!(body["association"], "existing");
            }
        }
    }
    // Requests without an association from that address meet its budget.
    let mut limited = 0;
    for i in 0..10 {
        let (status, body) = server
            .resolve(&shared, &format!("code={CODE}&clientid=stranger-{i}"))
            .await;
        match status {
            403 => assert_eq!(body["code"], "RETRY_ON_MNO_NETWORK"),
            429 => limited += 1,
            other => panic!("unexpected {other} {body}"),
        }
    }
    assert!(limited >= 5, "only {limited} of 10 limited");
}

/// A client that resumes a TLS session in which an associated clientid was
/// served is returning: it is not held to its address's accept rate. A
/// resumed session that served nothing is (anyone who completes a handshake
/// has a ticket, and a ticket can be replayed): it waits its address's
/// turn, and past the bound is answered 429 with `Retry-After` after its
/// handshake, not reset.
#[tokio::test]
async fn only_a_session_that_served_an_associated_clientid_skips_the_address_rate() {
    let server = TestServer::with_config(
        "[limits]
accepts_per_address_per_sec = 1
header_read_timeout_ms = 1500
requests_per_address_per_sec = 0
refusals_before_slowdown = 0",
    )
    .await;
    server.put_code(CODE, "https://example.org/").await;
    server.bind_session("127.1.4.1", "+447700900401").await;
    let mno = server.client("http1", "127.1.4.1");
    let (status, body) = server
        .resolve(&mno, &format!("code={CODE}&clientid=loyal"))
        .await;
    assert_eq!(status, 200, "{body}");
    // Twelve new connections, one after another, from one off-net address
    // at 1 a second: each resumes the session before it, which served
    // "loyal", so none waits for the address's turn.
    let loyal = server.client_per_request("127.2.8.1");
    let started = std::time::Instant::now();
    for i in 0..12 {
        let (status, body) = server
            .resolve(&loyal, &format!("code={CODE}&clientid=loyal"))
            .await;
        assert_eq!(status, 200, "connection {i}: {body}");
    }
    let returning = started.elapsed();
    assert!(
        returning < std::time::Duration::from_secs(5),
        "{returning:?}"
    );
    // A stranger from the same address resumes its own sessions, which
    // served nothing: it waits for the address's turns.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let stranger = server.client_per_request("127.2.8.1");
    let started = std::time::Instant::now();
    for i in 0..5 {
        let (status, body) = server
            .resolve(&stranger, &format!("code={CODE}&clientid=stranger"))
            .await;
        assert_eq!(status, 403, "connection {i}: {body}");
    }
    let paced = started.elapsed();
    assert!(paced >= std::time::Duration::from_millis(2000), "{paced:?}");
    // Eight at once replaying one ticket of a session that served nothing:
    // each completes its (resumed) handshake, then about one a second is
    // served and the rest are answered 429 with a wait, none reset.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let replayer = support::raw::tls12_client_config(&server.ca_pem());
    let addr = server.public_addr_for("127.2.8.2");
    let path = format!("/mc/v1/resolve?code={CODE}&clientid=replayer");
    let first = support::raw::get_once(replayer.clone(), "127.2.8.2", addr, &path).await;
    assert!(first.unwrap().starts_with("HTTP/1.1 403"));
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (config, path) = (replayer.clone(), path.clone());
        burst.spawn(async move { support::raw::get_once(config, "127.2.8.2", addr, &path).await });
    }
    let answers = burst.join_all().await;
    let mut told_to_wait = 0;
    for answer in answers {
        let answer = answer.expect("an answer, not a reset");
        if answer.starts_with("HTTP/1.1 429") {
            assert!(
                answer.to_ascii_lowercase().contains("retry-after: 1"),
                "{answer}"
            );
            told_to_wait += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        }
    }
    // At 1 a second from a burst of 2, most of them (a loaded machine
    // spreading the eight out lets a few more through).
    assert!(told_to_wait >= 3, "{told_to_wait} of 8 answered 429");
}
