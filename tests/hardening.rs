//! What no client and no network peer may do to the server, tried over real
//! sockets: hold connections by saying nothing, move a QUIC connection off
//! the MNO network, feed the admin API bad input, or meet a failing disk.

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{CODE, TestServer, metric};
use tokio::io::AsyncReadExt;

/// Retries `attempt` every 100 ms until it succeeds or `limit` passes;
/// returns how long it took, or `None`.
async fn served_within<F, Fut>(limit: Duration, mut attempt: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if attempt().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

const SMALL: &str = "[limits]\nmax_connections = 4\nheader_read_timeout_ms = 500\nshed_unauthenticated_above = 100\n";

// ------------------------------------------------- connections that say nothing

#[tokio::test]
async fn silent_tls_connections_are_closed_and_free_their_slots() {
    let server = TestServer::ready(SMALL).await;
    let addr = server.running.public_addr;
    let mut silent = Vec::new();
    for i in 0..4 {
        // TLS done, then nothing: not even the HTTP/2 preface or an HTTP/1 head.
        let ip = format!("127.2.0.{}", 50 + i);
        let alpn: &[&[u8]] = if i % 2 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
        silent.push(
            support::raw::tls(&server.ca_pem(), alpn, &ip, addr)
                .await
                .unwrap(),
        );
    }
    let client = server.client("http2", "127.1.0.1");
    let query = format!("code={CODE}&clientid=after-silence");
    let took = served_within(Duration::from_secs(5), || async {
        client
            .get(server.url(&query))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let took = took.expect("a fifth client is served once the silent ones are closed");
    assert!(took < Duration::from_secs(3), "{took:?}");
    for mut stream in silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is closed: {read:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_with_no_open_stream_is_closed_at_the_idle_timeout() {
    let server = TestServer::ready("[limits]\nidle_timeout_ms = 800\n").await;
    let addr = server.running.public_addr;
    let (mut h2, driver) = support::raw::h2_client(&server.ca_pem(), "127.2.0.60", addr).await;
    let request = http::Request::get(server.url("code=x")).body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 400);
    // PINGs are answered throughout, yet with no stream the server leaves.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the server closes an idle HTTP/2 connection")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700));
    server.stop().await;
}

#[tokio::test]
async fn silent_quic_connections_are_closed_and_free_their_slots() {
    let server = TestServer::ready(SMALL).await;
    let mut silent = Vec::new();
    for i in 0..4 {
        // The HTTP/3 control streams are set up; no request ever comes.
        let client = server.h3_client(&format!("127.2.0.{}", 70 + i));
        let connection = client.open().await.unwrap();
        silent.push((client, connection));
    }
    // A fifth client, retrying as a real one would when a connection is
    // dropped or closed for capacity, is served within the timeouts.
    let fifth = server.h3_client("127.1.0.1");
    let query = format!("/mc/v1/resolve?code={CODE}&clientid=after-quiet");
    let took = served_within(Duration::from_secs(6), || async {
        let answer = tokio::time::timeout(Duration::from_secs(3), fifth.get(&query)).await;
        matches!(answer, Ok(Ok((200, _))))
    })
    .await
    .expect("the fifth QUIC client is served within the timeouts");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for (_client, connection) in &silent {
        let closed = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        assert!(closed.is_ok(), "a silent QUIC connection is closed");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_http3_stream_that_never_brings_its_request_head_is_dropped() {
    let server = TestServer::ready("[limits]\nheader_read_timeout_ms = 500\n").await;
    let client = server.h3_client("127.2.0.75");
    let connection = client.open().await.unwrap();
    // A request stream with the first byte of a HEADERS frame, then nothing.
    let (mut send, mut recv) = connection.connection.open_bi().await.unwrap();
    send.write_all(&[0x01]).await.unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1024)).await;
    assert!(ended.is_ok(), "the server let the stream hang");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // The connection itself still serves requests.
    let mut connection = connection;
    let (status, _) = connection.get("/mc/v1/resolve?code=x").await.unwrap();
    assert_eq!(status, 400);
    connection.close();
    server.stop().await;
}

#[tokio::test]
async fn the_admin_listener_closes_silent_connections_and_caps_them() {
    let server =
        TestServer::ready("[admin]\nmax_connections = 2\n[limits]\nheader_read_timeout_ms = 500\n")
            .await;
    let admin = server.running.admin_addr;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(support::raw::tcp("127.0.0.1", admin).await.unwrap());
    }
    // Over the cap: closed at once, before any HTTP.
    let mut third = support::raw::tcp("127.0.0.1", admin).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let took = served_within(Duration::from_secs(5), || async {
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("the admin API answers once the silent connections are closed");
    assert!(took < Duration::from_secs(3), "{took:?}");
    for mut stream in silent {
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    server.stop().await;
}

// ------------------------------------------------------------ QUIC migration

/// Identity comes only from the address a QUIC connection's handshake
/// proved (DESIGN §10): a request after the connection moved, to wherever,
/// is off the MNO network, and the connection is drained so the client's
/// next request proves its new address with a handshake.
#[tokio::test]
async fn identity_comes_only_from_a_validated_quic_path() {
    let server = TestServer::ready("").await;
    let scan = |id: &str| format!("/mc/v1/resolve?code={CODE}&clientid={id}");
    let retry = (403, Some("RETRY_ON_MNO_NETWORK"));

    // Opened on the MNO network, moved to WiFi: a first scan is told to retry.
    let client = server.h3_client("127.1.0.1");
    let mut connection = client.open().await.unwrap();
    let (status, _) = connection.get("/mc/v1/resolve?code=x").await.unwrap();
    assert_eq!(status, 400, "a request before moving");
    client.rebind("127.2.0.80");
    let (status, body) = connection.get(&scan("moved-off")).await.unwrap();
    assert_eq!((status, body["code"].as_str()), retry, "{body}");
    connection.close();

    // Opened on WiFi, moved onto the MNO network (where it does receive):
    // still told to retry, and the connection is drained; the retry, on a
    // new connection from there, associates.
    let client = server.h3_client("127.2.0.81");
    let mut connection = client.open().await.unwrap();
    let (status, _) = connection.get("/mc/v1/resolve?code=x").await.unwrap();
    assert_eq!(status, 400);
    client.rebind("127.1.0.1");
    let (status, body) = connection.get(&scan("moved-on")).await.unwrap();
    assert_eq!((status, body["code"].as_str()), retry, "{body}");
    let drained = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
    assert!(drained.is_ok(), "a moved connection is drained");
    let (status, body) = client.get(&scan("moved-on")).await.unwrap();
    assert_eq!(
        (status, &body["association"]),
        (200, &json!("created")),
        "{body}"
    );

    // The attack of issue 24: opened on WiFi, told to retry; one request
    // sent from a subscriber's address the attacker cannot receive on.
    server.bind_session("127.1.0.50", "+447700900050").await;
    let client = server.h3_client("127.2.0.82");
    let mut connection = client.open().await.unwrap();
    let (status, body) = connection.get(&scan("spoofed")).await.unwrap();
    assert_eq!((status, body["code"].as_str()), retry, "{body}");
    // Requests answered over HTTP/3 (counted once decided, and any
    // association made).
    let answered = || async {
        let metrics = server.metrics().await;
        let lines = metrics.lines().filter(|line| {
            line.starts_with("homecmp_requests_total{") && line.contains("protocol=\"http3\"")
        });
        lines
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let answered_before = answered().await;
    client.rebind_send_only("127.1.0.50");
    connection.send_only(&scan("spoofed")).await.unwrap();
    // Until the server has answered it, then back where the attacker receives.
    support::eventually(
        "the spoofed request answered",
        Duration::from_secs(10),
        async || answered().await > answered_before,
    )
    .await;
    client.rebind("127.2.0.82");
    let (status, body) = server
        .admin(Method::GET, "/admin/v1/associations/spoofed", None)
        .await;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("NO_ASSOCIATION")),
        "{body}"
    );
    let (status, body) = server
        .h3_client("127.2.0.83")
        .get(&scan("spoofed"))
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), retry, "{body}");
    let metrics = server.metrics().await;
    assert!(
        support::metric(&metrics, "homecmp_quic_moved_requests_total") >= 3.0,
        "{metrics}"
    );
    server.stop().await;
}

// --------------------------------------------------------------- failing disk

/// Everything the server logs in this test binary, for tests that look for
/// a line (the log writer runs on its own thread: a global subscriber).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || Capture(sink.clone()))
            .with_ansi(false)
            .init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_disk_is_visible_and_refuses_writes() {
    let logs = captured_logs();
    let server = TestServer::ready("").await;
    let mno = server.client("http1", "127.1.0.1");
    let scan = |id: &str| format!("code={CODE}&clientid={id}");
    let (status, _) = server.resolve(&mno, &scan("before")).await;
    assert_eq!(status, 200);
    let ready = || async { server.readyz().await.0 };
    assert_eq!(ready().await, 200);

    server.running.app.store.log().fail_next_write();
    let (status, body) = server.resolve(&mno, &scan("during")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    assert_eq!(
        ready().await,
        503,
        "a poisoned log makes the instance not ready"
    );
    let readyz = reqwest::get(format!("http://{}/readyz", server.running.admin_addr))
        .await
        .unwrap();
    assert_eq!(readyz.headers()["content-type"], "application/json");
    let body: serde_json::Value = readyz.json().await.unwrap();
    support::openapi::check(&Method::GET, "/readyz", 503, &body);
    assert_eq!(
        (&body["code"], &body["ready"]),
        (&json!("LOG_UNAVAILABLE"), &json!(false)),
        "{body}"
    );
    assert!(
        body["reason"].as_str().is_some_and(|r| r.contains("disk")),
        "{body}"
    );
    let (status, body) = server
        .admin(
            Method::PUT,
            "/admin/v1/codes/2001000001other",
            Some(json!({"target": "https://example.org/"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    // What is already associated keeps resolving.
    let (status, body) = server.resolve(&mno, &scan("before")).await;
    assert_eq!((status, &body["association"]), (200, &json!("existing")));
    assert_eq!(
        metric(&server.metrics().await, "homecmp_log_poisoned "),
        1.0
    );
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("ERROR") && logged.contains("event log write failed"),
        "{logged}"
    );
    server.stop().await;
}

// ----------------------------------------------------------- bad admin input

/// Every admin route with a method it takes, a path to try it on, and
/// whether it takes a body.
const ROUTES: &[(&str, &str, bool)] = &[
    ("PUT", "/admin/v1/codes/2001000001promo", true),
    ("GET", "/admin/v1/codes/2001000001promo", false),
    ("DELETE", "/admin/v1/codes/2001000001gone", false),
    ("GET", "/admin/v1/associations/some-app", false),
    ("DELETE", "/admin/v1/associations/some-app", false),
    ("PUT", "/admin/v1/sessions/127.1.0.9", true),
    ("GET", "/admin/v1/sessions/127.1.0.9", false),
    ("DELETE", "/admin/v1/sessions/127.1.0.9", false),
    ("GET", "/metrics", false),
];

/// Sends a raw admin request; returns the status and the JSON body, which
/// every error must have.
async fn raw_admin(
    server: &TestServer,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Option<Value>) {
    let client = reqwest::Client::new();
    let url = format!("http://{}{path}", server.running.admin_addr);
    let mut request = client.request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let json = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.to_str().is_ok_and(|t| t.starts_with("application/json")));
    let body = response.bytes().await.unwrap();
    let body = json.then(|| serde_json::from_slice(&body).ok()).flatten();
    if let Some(body) = &body {
        support::openapi::check(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            path,
            status,
            body,
        );
    }
    (status, body)
}

#[tokio::test]
async fn the_admin_api_answers_every_bad_input_with_a_clear_4xx() {
    let server = TestServer::ready("").await;
    let token = server.running.admin_token.expose().clone();
    let right = format!("Bearer {token}");
    for &(method, path, _) in ROUTES {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token-wrong-token".to_owned()),
            Some(format!("Basic {token}")),
            Some(format!("Bearer {token}x")),
            Some(token.clone()),
        ] {
            let (status, body) = raw_admin(&server, method, path, auth.as_deref(), None).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}");
            assert_eq!(body.unwrap()["code"], "UNAUTHORIZED");
        }
    }
    let big = vec![b'{'; 10 * 1024 * 1024];
    let bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("empty", vec![], 400),
        ("not JSON", b"target=https://x".to_vec(), 400),
        ("truncated", br#"{"msisdn":"+4477"#.to_vec(), 400),
        ("an array", b"[]".to_vec(), 400),
        ("wrong types", br#"{"target":1,"msisdn":2}"#.to_vec(), 400),
        ("unknown field", br#"{"nope":true}"#.to_vec(), 400),
        (
            "invalid UTF-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
            400,
        ),
        ("10 MB", big, 413),
    ];
    for &(method, path, _) in ROUTES.iter().filter(|(_, _, takes_body)| *takes_body) {
        for (what, body, expected) in &bodies {
            // The scheme name in any case.
            let auth = format!("bEaReR {token}");
            let (status, json) =
                raw_admin(&server, method, path, Some(&auth), Some(body.clone())).await;
            assert_eq!(status, *expected, "{method} {path} with a body {what}");
            let code = json.expect("a JSON error")["code"].clone();
            assert!(code.is_string(), "{what}: {code}");
        }
    }
    let bad_paths = [
        ("PUT", "/admin/v1/codes/not-a-code", "INVALID_CODE"),
        ("GET", "/admin/v1/codes/%FF%FE", "INVALID_PATH"),
        (
            "GET",
            "/admin/v1/associations/has%20space",
            "INVALID_CLIENTID",
        ),
        ("PUT", "/admin/v1/sessions/127.1.0.999", "INVALID_IP"),
        ("PUT", "/admin/v1/sessions/127.2.0.1", "NOT_IN_MNO_NETWORK"),
        (
            "POST",
            "/admin/v1/codes/2001000001promo",
            "METHOD_NOT_ALLOWED",
        ),
        ("GET", "/admin/v2/anything", "NOT_FOUND"),
    ];
    for (method, path, expected) in bad_paths {
        let body = if path.contains("sessions") {
            br#"{"msisdn":"+447700900123"}"#.to_vec()
        } else {
            br#"{"target":"https://example.org/"}"#.to_vec()
        };
        let (status, json) = raw_admin(&server, method, path, Some(&right), Some(body)).await;
        assert!((400..500).contains(&status), "{method} {path}: {status}");
        assert_eq!(
            json.expect("a JSON error")["code"],
            expected,
            "{method} {path}"
        );
    }
    for ttl in [json!(0), json!(u64::MAX), json!(-1), json!(1e300)] {
        let body =
            serde_json::to_vec(&json!({"msisdn": "+447700900123", "ttl_secs": ttl})).unwrap();
        let path = "/admin/v1/sessions/127.1.0.9";
        let (status, json) = raw_admin(&server, "PUT", path, Some(&right), Some(body)).await;
        assert_eq!(status, 400, "ttl_secs {ttl}");
        let code = &json.unwrap()["code"];
        assert!(code == "INVALID_TTL" || code == "INVALID_BODY", "{code}");
    }
    // Alive and serving, with the right token in the usual form.
    let (status, _) = server
        .admin(Method::GET, "/admin/v1/codes/2001000001promo", None)
        .await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_data_dir_is_private_and_debug_output_shows_no_secret() {
    use std::os::unix::fs::PermissionsExt;

    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("new").join("data");
    let server = TestServer::in_dir(&data_dir, "").await;
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let token = server.running.admin_token.expose().clone();
    let key = std::fs::read_to_string(data_dir.join("subscriber.key")).unwrap();
    let shown = format!("{:?}", server.running);
    assert!(
        !shown.contains(&token),
        "the admin token is in Debug output"
    );
    assert!(
        !shown.contains(key.trim()),
        "the subscriber key is in Debug output"
    );
    server.stop().await;
}

// ------------------------------------------------ addresses as the network sees

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_ipv4_clients_everywhere() {
    let server = TestServer::with_sections(
        "listen = \"[::]:0\"",
        "[mno]\nnetworks = [\"127.1.0.0/16\", \"::/64\"]\n",
    )
    .await;
    server.put_code(CODE, support::TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    server.bind_session("127.1.0.2", "+447700900002").await;
    let scan = |id: &str| format!("code={CODE}&clientid={id}");
    // The listener sees ::ffff:127.1.0.1: inside the pool 127.1.0.0/16 all the same.
    let mno = server.client("http2", "127.1.0.1");
    let (status, body) = server.resolve(&mno, &scan("mapped-https")).await;
    assert_eq!(
        (status, &body["association"]),
        (200, &json!("created")),
        "{body}"
    );
    let (status, body) = server
        .h3_client("127.1.0.2")
        .get(&format!("/mc/v1/resolve?{}", scan("mapped-h3")))
        .await
        .unwrap();
    assert_eq!(
        (status, &body["association"]),
        (200, &json!("created")),
        "{body}"
    );
    let wifi = server.client("http1", "127.2.0.1");
    let (status, body) = server.resolve(&wifi, &scan("mapped-wifi")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("RETRY_ON_MNO_NETWORK"))
    );

    // A binding for a whole IPv6 prefix, as operators hand out /64s, and
    // one for a mapped address, which is the IPv4 address.
    for (ip, msisdn) in [
        ("::/64", "+447700900003"),
        ("::ffff:127.1.0.3", "+447700900004"),
    ] {
        let (status, body) = server
            .admin(
                Method::PUT,
                &format!("/admin/v1/sessions/{ip}"),
                Some(json!({ "msisdn": msisdn })),
            )
            .await;
        assert_eq!(status, 200, "{ip}: {body}");
    }
    let (status, body) = server
        .admin(Method::GET, "/admin/v1/sessions/::1", None)
        .await;
    assert_eq!((status, &body["network"]), (200, &json!("::/64")), "{body}");
    let (status, body) = server
        .admin(Method::GET, "/admin/v1/sessions/127.1.0.3", None)
        .await;
    assert_eq!(
        (status, &body["network"]),
        (200, &json!("127.1.0.3/32")),
        "{body}"
    );
    let v6 = server.client("http2", "::1");
    let (status, body) = server.resolve(&v6, &scan("from-the-prefix")).await;
    assert_eq!(
        (status, &body["association"]),
        (200, &json!("created")),
        "{body}"
    );
    let (_, created) = server
        .admin(Method::GET, "/admin/v1/associations/from-the-prefix", None)
        .await;
    let (_, bound) = server
        .admin(Method::GET, "/admin/v1/sessions/::1", None)
        .await;
    assert_eq!(created["subscriber"], bound["subscriber"]);
    server.stop().await;
}

// ------------------------------------------------ enrichment headers as written

const GATEWAY_CONFIG: &str =
    "[mno]\nnetworks = [\"127.1.0.0/16\"]\ntrusted_gateways = [\"127.3.0.1\"]\n";

#[tokio::test]
async fn forwarded_for_is_read_from_its_last_line_and_msisdn_must_be_single() {
    let server = TestServer::ready(GATEWAY_CONFIG).await;
    server.bind_session("127.1.0.50", "+447700900050").await;
    let gateway = server.client("http1", support::GATEWAY);
    let url = |id: &str| server.url(&format!("code={CODE}&clientid={id}"));
    // The client claimed a pool address on a line of its own; the gateway's
    // own line says where the request really came from: WiFi.
    let response = gateway
        .get(url("xff-lines"))
        .header("X-Forwarded-For", "127.1.0.50")
        .header("X-Forwarded-For", "198.51.100.7, 127.2.0.9")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "RETRY_ON_MNO_NETWORK", "{body}");
    // Two MSISDN lines: refused, whatever the peer.
    for client in [&gateway, &server.client("http1", "127.2.0.1")] {
        let response = client
            .get(url("two-msisdns"))
            .header("X-Forwarded-For", "127.1.0.50")
            .header("X-MSISDN", "+447700900050")
            .header("X-MSISDN", "+447700900099")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_HEADER", "{body}");
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "homecmp_requests_total{outcome=\"INVALID_HEADER\",protocol=\"http1\"}"
        ),
        2.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_trusted_gateway_is_limited_per_forwarded_client_not_as_one() {
    let config = format!("{GATEWAY_CONFIG}[limits]\nrequests_per_address_per_sec = 2\n");
    let server = TestServer::ready(&config).await;
    let gateway = server.client("http2", support::GATEWAY);
    let send = |client: u32| {
        gateway
            .get(server.url(&format!("code={CODE}")))
            .header("X-Forwarded-For", format!("127.1.7.{client}"))
            .send()
    };
    // 40 subscribers behind the gateway, 3 requests each: within their own
    // budget (2/s, bursts of 4), though 120 from the gateway's address.
    for round in 0..3 {
        for client in 0..40 {
            let status = send(client).await.unwrap().status();
            assert_eq!(status, 401, "round {round}, client {client}");
        }
    }
    // One forwarded client over its budget is limited alone.
    let mut limited = 0;
    for _ in 0..10 {
        limited += usize::from(send(1).await.unwrap().status() == 429);
    }
    assert!(limited >= 5, "{limited}");
    assert_eq!(send(2).await.unwrap().status(), 401);
    server.stop().await;
}

// ------------------------------------------------ budgets apart, on and off net

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_off_the_network_does_not_starve_first_scans_on_it() {
    let config = "[limits]\nunauthenticated_per_sec = 20\ntarpit_max_ms = 1500\n\
                  requests_per_address_per_sec = 0\n";
    let server = Arc::new(TestServer::ready(config).await);
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..48 {
        let server = server.clone();
        let client = server.client("http2", &format!("127.2.1.{}", i % 8 + 1));
        flood.spawn(async move {
            let mut sent = 0u32;
            while Instant::now() < deadline {
                let url = server.url(&format!("code={CODE}&clientid=spoof-{i}-{sent}"));
                let _ = client.get(url).send().await;
                sent += 1;
            }
            sent
        });
    }
    // Until the flood fills the off-net tarpit's queue: turns are
    // `tarpit_max_ms` away, and requests past that are refused.
    let overloaded = "homecmp_requests_total{outcome=\"OVERLOADED\",protocol=\"http2\"}";
    support::eventually(
        "the tarpit's queue full",
        Duration::from_secs(10),
        async || metric(&server.metrics().await, overloaded) >= 1.0,
    )
    .await;
    let mno = server.client("http2", "127.1.0.1");
    for n in 0..3 {
        let started = Instant::now();
        let (status, body) = server
            .resolve(&mno, &format!("code={CODE}&clientid=first-scan-{n}"))
            .await;
        assert_eq!(
            (status, &body["association"]),
            (200, &json!("created")),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a first scan waited {:?} behind the flood",
            started.elapsed()
        );
    }
    assert!(flood.join_all().await.iter().sum::<u32>() > 48);
    let metrics = server.metrics().await;
    assert!(
        metric(&metrics, "homecmp_tarpitted_total") > 20.0,
        "the flood was paced"
    );
}

// ------------------------------------------- QUIC limits, validated addresses only

/// A QUIC client over its address's rate, found once its handshake proves
/// the address, is answered 429 RATE_LIMITED (with `Retry-After`), not
/// dropped: an app can tell "slow down" from a broken network.
#[tokio::test]
async fn a_quic_client_over_its_address_rate_is_answered_429_not_dropped() {
    let server = TestServer::ready("[http3]\nconnections_per_address_per_sec = 1\n").await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        // A new client each time: no token, so charged after its handshake.
        let client = server.h3_client("127.2.0.92");
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(&format!("/mc/v1/resolve?code={CODE}")),
        )
        .await
        .expect("answered in time")
        .unwrap_or_else(|e| panic!("connection {i} not answered: {e}"));
        if status == 429 {
            assert_eq!(body["code"], "RATE_LIMITED", "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 2,
        "{statuses:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn quic_handshakes_that_never_complete_do_not_spend_an_address_budget() {
    let server = TestServer::ready("[http3]\nconnections_per_address_per_sec = 1\n").await;
    let addr = server.public_addr_for("127.2.0.91");
    // Initials from the address whose handshakes never complete (a client
    // offering no protocol the server speaks), as a forger's would.
    let tls = support::raw::client_config(&server.ca_pem(), &[b"bogus"]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.2.0.91:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    for _ in 0..6 {
        let failed = endpoint.connect(addr, "localhost").unwrap().await;
        assert!(failed.is_err(), "no common protocol: the handshake fails");
    }
    let refused = "homecmp_connections_refused_total{transport=\"quic\",reason=\"address_rate\"}";
    assert_eq!(
        metric(&server.metrics().await, refused),
        0.0,
        "nothing charged"
    );
    // The address's own client is served all the same: nothing was charged.
    let client = server.h3_client("127.2.0.91");
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(3),
        client.get(&format!("/mc/v1/resolve?code={CODE}")),
    )
    .await
    .expect("not refused for the failed handshakes")
    .unwrap();
    assert_eq!(status, 401);
    // Real connections are charged: past the rate (1/s, bursts of 2) a
    // connection is refused once its handshake is done (each a new client:
    // one returning with a NEW_TOKEN token is not held to the rate).
    for _ in 0..4 {
        let client = server.h3_client("127.2.0.91");
        let _ = client.get(&format!("/mc/v1/resolve?code={CODE}")).await;
    }
    assert!(metric(&server.metrics().await, refused) >= 1.0);
    server.stop().await;
}
