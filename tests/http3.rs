//! HTTP/3 against the real server: the creation limit, the WiFi-then-MNO
//! flow, QUIC Retry and validation tokens, and garbage on the UDP port (the
//! DESIGN §4 table runs over HTTP/3 in `tests/resolve.rs`).

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use support::{CODE, TestServer, eventually, metric};

/// How long the server may take to do what a test waits for.
const WITHIN: Duration = Duration::from_secs(10);

fn path(query: &str) -> String {
    format!("/mc/v1/resolve?{query}")
}

fn assert_error(answer: &(u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
}

/// The table's rows run over HTTP/3 with the others, in `tests/resolve.rs`;
/// here, what only a subscriber's creations over HTTP/3 show: the rate
/// limit on new associations.
#[tokio::test]
async fn creations_over_http3_are_rate_limited() {
    let server = TestServer::ready("[auth]\nassociations_per_minute = 3").await;
    let mno = server.h3_client("127.1.0.1");
    for i in 0..3 {
        let ok = mno
            .get(&path(&format!("code={CODE}&clientid=more-{i}")))
            .await
            .unwrap();
        assert_eq!(
            (ok.0, &ok.1["association"]),
            (200, &json!("created")),
            "{}",
            ok.1
        );
    }
    assert_error(
        &mno.get(&path(&format!("code={CODE}&clientid=one-too-many")))
            .await
            .unwrap(),
        429,
        "RATE_LIMITED",
    );
}

#[tokio::test]
async fn overload_over_http3_sheds_the_unassociated() {
    let server =
        TestServer::ready("[limits]\nmax_connections = 50\nshed_unauthenticated_above = 1").await;
    // One HTTPS connection kept alive, plus the HTTP/3 one: above 1.
    let holder = server.client("http2", "127.2.0.2");
    assert_eq!(
        server.resolve(&holder, &format!("code={CODE}")).await.0,
        401
    );
    let wifi = server.h3_client("127.2.0.1");
    let answer = wifi
        .get(&path(&format!("code={CODE}&clientid=stranger")))
        .await
        .unwrap();
    assert_error(&answer, 503, "OVERLOADED");
}

#[tokio::test]
async fn a_returning_client_does_not_wait_behind_a_flood_of_new_quic_handshakes() {
    use std::time::Instant;
    let server = TestServer::ready("[limits]\nhandshakes_per_sec = 2").await;
    let query = path(&format!("code={CODE}"));
    // Connects once and keeps the NEW_TOKEN tokens the server issued.
    let returning = server.h3_client("127.2.9.1");
    assert_error(
        &returning.get(&query).await.unwrap(),
        401,
        "CLIENTID_REQUIRED",
    );
    assert!(!returning.tokens.received.lock().unwrap().is_empty());

    // 40 new clients at once, retransmitting their Initials: at 2 handshakes
    // a second, the queue of new handshakes has no free turn.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = server.h3_client(&format!("127.2.8.{}", i + 1));
        let query = query.clone();
        flood.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), client.get(&query)).await;
        });
    }
    // Every one of them in the queue (and the returning client's first).
    let new_turns = "homecmp_handshake_turns_total{queue=\"new\"}";
    eventually("the flood's Initials queued", WITHIN, async || {
        metric(&server.metrics().await, new_turns) >= 41.0
    })
    .await;
    let started = Instant::now();
    assert_error(
        &returning.get(&query).await.unwrap(),
        401,
        "CLIENTID_REQUIRED",
    );
    let returned_in = started.elapsed();
    assert!(
        returned_in < Duration::from_secs(1),
        "returning client waited {returned_in:?}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "homecmp_handshake_turns_total{queue=\"returning\"}"
        ),
        1.0
    );
    assert!(metric(&metrics, "homecmp_handshake_turns_total{queue=\"new\"}") >= 40.0);
    flood.join_all().await;
}

#[tokio::test]
async fn a_request_whose_fin_comes_late_is_answered_not_reset() {
    // The server answers on the head; it must not drop the stream unread,
    // which quinn turns into STOP_SENDING code 0 (a reset, to the client).
    let server = TestServer::ready("").await;
    let client = server.h3_client("127.2.0.1");
    let query = format!("code={CODE}&clientid=nobody");
    let answers = client
        .get_with_fin_after(&path(&query), 3, Duration::from_millis(150))
        .await
        .expect("no request is reset");
    for answer in &answers {
        assert_error(answer, 403, "RETRY_ON_MNO_NETWORK");
    }
}

/// A connection's requests are served on one task (their answers leave
/// together); one that waits must not hold up the others.
#[tokio::test]
async fn a_stream_that_waits_does_not_hold_up_the_others_on_its_connection() {
    let server = TestServer::ready("[limits]\nheader_read_timeout_ms = 3000\n").await;
    let client = server.h3_client("127.2.0.76");
    let mut connection = client.open().await.unwrap();
    // A request stream with the first byte of a HEADERS frame, then nothing:
    // the server waits for the rest of its head, up to the timeout.
    let (mut send, mut stalled) = connection.connection.open_bi().await.unwrap();
    send.write_all(&[0x01]).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let (status, _) = connection.get(&path("code=x")).await.unwrap();
        assert_eq!(status, 400);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "requests after a waiting one took {:?}",
        started.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(6), stalled.read_to_end(1024)).await;
    assert!(ended.is_ok(), "the server let the stalled stream hang");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    connection.close();
    server.stop().await;
}

#[tokio::test]
async fn wifi_first_then_mno_over_http3() {
    let server = TestServer::ready("").await;
    let wifi = server.h3_client("127.2.9.9");
    let mno = server.h3_client("127.1.0.1");
    let query = path(&format!("code={CODE}&clientid=flow"));
    assert_error(
        &wifi.get(&query).await.unwrap(),
        403,
        "RETRY_ON_MNO_NETWORK",
    );
    assert_eq!(mno.get(&query).await.unwrap().1["association"], "created");
    assert_eq!(wifi.get(&query).await.unwrap().1["association"], "existing");
    // Several requests on one connection.
    let answers = wifi.get_many(&query, 5).await.unwrap();
    assert!(answers.iter().all(|(s, _)| *s == 200));
}

#[tokio::test]
async fn retry_always_validates_then_new_token_skips_it() {
    let server = TestServer::ready("[http3]\nretry = \"always\"").await;
    let wifi = server.h3_client("127.2.0.5");
    let query = path(&format!("code={CODE}&clientid=x"));
    assert_error(
        &wifi.get(&query).await.unwrap(),
        403,
        "RETRY_ON_MNO_NETWORK",
    );
    let retries = metric(&server.metrics().await, "homecmp_quic_retries_total");
    assert_eq!(retries, 1.0);
    // The server gives NEW_TOKEN tokens; the next connection uses one: no Retry.
    eventually("a NEW_TOKEN token", WITHIN, async || {
        !wifi.tokens.received.lock().unwrap().is_empty()
    })
    .await;
    assert_error(
        &wifi.get(&query).await.unwrap(),
        403,
        "RETRY_ON_MNO_NETWORK",
    );
    assert_eq!(
        metric(&server.metrics().await, "homecmp_quic_retries_total"),
        1.0
    );
}

#[tokio::test]
async fn forged_or_expired_tokens_do_not_validate() {
    let server =
        TestServer::ready("[http3]\nretry = \"always\"\nvalidation_token_lifetime_secs = 1").await;
    let client = server.h3_client("127.2.0.6");
    let query = path(&format!("code={CODE}&clientid=x"));
    *client.tokens.forged.lock().unwrap() = Some(Bytes::from_static(&[0x42; 48]));
    // The forged token is refused as proof; the server falls back to Retry
    // and the handshake still completes from the real address.
    assert_error(
        &client.get(&query).await.unwrap(),
        403,
        "RETRY_ON_MNO_NETWORK",
    );
    assert_eq!(
        metric(&server.metrics().await, "homecmp_quic_retries_total"),
        1.0
    );

    *client.tokens.forged.lock().unwrap() = None;
    client.tokens.received.lock().unwrap().clear();
    assert_error(
        &client.get(&query).await.unwrap(),
        403,
        "RETRY_ON_MNO_NETWORK",
    );
    eventually("a NEW_TOKEN token", WITHIN, async || {
        !client.tokens.received.lock().unwrap().is_empty()
    })
    .await;
    let token = client
        .tokens
        .received
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a NEW_TOKEN token");
    // The token's lifetime (1 s) and a second more waited out: the test is
    // that it has expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    *client.tokens.replay.lock().unwrap() = Some(token);
    let retries_before = metric(&server.metrics().await, "homecmp_quic_retries_total");
    assert_error(
        &client.get(&query).await.unwrap(),
        403,
        "RETRY_ON_MNO_NETWORK",
    );
    let retries_after = metric(&server.metrics().await, "homecmp_quic_retries_total");
    assert_eq!(
        retries_after,
        retries_before + 1.0,
        "an expired token must not validate"
    );
}

#[tokio::test]
async fn garbage_datagrams_leave_the_server_serving() {
    let server = TestServer::ready("").await;
    let socket = UdpSocket::bind("127.2.0.77:0").unwrap();
    let target = server.running.public_addr;
    let mut seed = 0x9e37_79b9_u32;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for i in 0..2000 {
        let len = 1 + (random() as usize % 1400);
        let mut datagram: Vec<u8> = (0..len).map(|_| random() as u8).collect();
        if i % 2 == 0 {
            // Looks like a long-header Initial of QUIC v1, then truncated.
            datagram[0] = 0xc3;
            if len > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        let _ = socket.send_to(&datagram, target);
    }
    // No wait: the server reads one socket in order, so the client's
    // Initial below comes after every datagram above.
    let mno = server.h3_client("127.1.0.1");
    let answer = mno
        .get(&path(&format!("code={CODE}&clientid=after-garbage")))
        .await
        .unwrap();
    assert_eq!(
        (answer.0, &answer.1["association"]),
        (200, &json!("created"))
    );
    let https = server.client("http2", "127.2.0.1");
    let (s, b) = server
        .resolve(&https, &format!("code={CODE}&clientid=after-garbage"))
        .await;
    assert_eq!((s, &b["association"]), (200, &json!("existing")));
}

#[tokio::test]
async fn http3_can_be_turned_off() {
    let server = TestServer::with_sections("http3 = false", "").await;
    let client = server.client("http1", "127.2.0.1");
    let response = client
        .get(server.url(&format!("code={CODE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(!response.headers().contains_key("alt-svc"));
    // Nothing listens on the UDP port.
    assert!(UdpSocket::bind(server.running.public_addr).is_ok());
}
