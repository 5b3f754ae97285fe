//! Federation (§9.3.2) between two real homecmp servers on loopback, each
//! with a CA of its own: A owns 2001000001, B owns 2001000002 and serves
//! peers on a mutual-TLS listener; A trusts B's CA and B trusts A's.
//!
//! An associated MCC at A resolves B's code through A; an unassociated one
//! is stopped at A and B never hears of it; B refuses a client with no
//! certificate or one from another CA, answers a malformed request 400 and
//! a flood 429; with B down, A answers 503 UPSTREAM_UNAVAILABLE at once
//! and still resolves its own codes.
//!
//! B's federation port admits before any TLS, under limits apart from its
//! public port's (address cap, handshake pace, penalty); A calls a pinned
//! peer only with the certificate it is pinned to (`spki_sha256`,
//! `ca_file`); a registry's loopback answers are refused by default, its
//! failures kept a while, and a peer it names keeps one circuit across
//! refreshes; in monitor and off modes, only what enforce mode lets
//! through reaches B or the registry.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{CODE, TARGET, TestServer, metric};

const B_CODE: &str = "2001000002remote";
const B_TARGET: &str = "https://b.example.org/remote";

/// A CA and a certificate it issued for 127.0.0.1: (ca.pem, cert.pem, key.pem).
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} community CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("cmp-{name}"));
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

struct Pair {
    a: TestServer,
    b: TestServer,
    dir: tempfile::TempDir,
}

const OPEN: &str = "[limits]\nfirst_scans_per_sec = 0\n";

/// B (listening for peers, trusting A's CA), then A (forwarding to B,
/// trusting B's CA). `b_extra` goes into B's `[federation]`.
async fn pair(b_extra: &str) -> Pair {
    pair_with("", b_extra, "").await
}

/// As [`pair`], with `b_limits` in B's `[limits]` and `a_sections` (whole
/// sections) in A's configuration.
async fn pair_with(b_limits: &str, b_extra: &str, a_sections: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "a");
    pki(dir.path(), "b");
    pki(dir.path(), "c");
    let b = start_b(dir.path(), b_limits, b_extra).await;
    let a = start_a(dir.path(), &fed_base(&b), a_sections, "b-ca.pem", "").await;
    Pair { a, b, dir }
}

/// B: owns 2001000002 (with [`B_CODE`]), serves peers whose certificate
/// is from A's CA.
async fn start_b(dir: &Path, b_limits: &str, b_extra: &str) -> TestServer {
    let b_federation = format!(
        "{OPEN}{b_limits}\n[federation]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\n\
         key_file = \"{}\"\nca_file = \"{}\"\n{b_extra}\n",
        dir.join("b-cert.pem").display(),
        dir.join("b-key.pem").display(),
        dir.join("a-ca.pem").display()
    );
    let b = TestServer::with_sections("routing_prefixes = [\"2001000002\"]", &b_federation).await;
    b.put_code(B_CODE, B_TARGET).await;
    b
}

/// A: A's certificate, `community_ca` (a file in `dir`) as the community
/// CA, and B at `b_url` as the peer of 2001000002 with `peer_keys` (its
/// `ca_file`, its `spki_sha256`). `a_sections` are whole sections of A's
/// configuration, `[federation]` among them to add keys to it.
async fn start_a(
    dir: &Path,
    b_url: &str,
    a_sections: &str,
    community_ca: &str,
    peer_keys: &str,
) -> TestServer {
    let federation_keys = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
         timeout_ms = 500\nfailures_to_open = 3\nopen_ms = 60000\n",
        dir.join("a-cert.pem").display(),
        dir.join("a-key.pem").display(),
        dir.join(community_ca).display(),
    );
    let sections = match a_sections.contains("[federation]\n") {
        true => a_sections.replacen(
            "[federation]\n",
            &format!("[federation]\n{federation_keys}"),
            1,
        ),
        false => format!("{a_sections}\n[federation]\n{federation_keys}"),
    };
    let a_federation = format!(
        "{OPEN}{sections}\n[[federation.peers]]\nprefix = \"2001000002\"\nurl = \"{b_url}\"\n{peer_keys}\n"
    );
    TestServer::ready(&a_federation).await
}

/// Where B serves peers.
fn fed_base(b: &TestServer) -> String {
    format!(
        "https://127.0.0.1:{}",
        b.running.federation_addr.unwrap().port()
    )
}

async fn resolve(
    server: &TestServer,
    ip: &str,
    code: &str,
    clientid: &str,
) -> (u16, serde_json::Value) {
    let client = server.client("http2", ip);
    server
        .resolve(&client, &format!("code={code}&clientid={clientid}"))
        .await
}

async fn answered_by_b(pair: &Pair) -> f64 {
    let metrics = pair.b.metrics().await;
    metric(
        &metrics,
        r#"homecmp_federation_total{outcome="answered",reason="resolved"}"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_associated_mcc_resolves_a_peers_code_through_its_home_cmp() {
    let pair = pair("").await;
    // First scan over the MNO network at A: associated at A, resolved at B.
    let (status, body) = resolve(&pair.a, "127.1.0.1", B_CODE, "mcc-fed-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["target"], B_TARGET);
    assert_eq!(body["association"], "created");
    // Again from WiFi, on the association; HTTP/2 connection to B reused.
    let (status, body) = resolve(&pair.a, "127.2.0.1", B_CODE, "mcc-fed-1").await;
    assert_eq!(
        (status, body["association"].as_str()),
        (200, Some("existing"))
    );
    assert_eq!(answered_by_b(&pair).await, 2.0);
    let connected = r#"homecmp_federation_total{outcome="connected",reason="mutual_tls"}"#;
    assert_eq!(
        metric(&pair.b.metrics().await, connected),
        1.0,
        "one reused connection"
    );
    // B's codes that do not exist, and B's answer relayed as such.
    let (status, body) = resolve(&pair.a, "127.2.0.1", "2001000002missing", "mcc-fed-1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("CODE_NOT_FOUND"))
    );
    // A prefix nobody serves is still UNKNOWN_PREFIX.
    let (status, body) = resolve(&pair.a, "127.2.0.1", "2001000003x", "mcc-fed-1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("UNKNOWN_PREFIX"))
    );

    // Unauthenticated MCCs are stopped at A: B never hears of them.
    let before = pair.b.metrics().await;
    for (ip, clientid) in [("127.2.0.1", "never-seen"), ("127.2.0.2", "")] {
        let (status, _) = resolve(&pair.a, ip, B_CODE, clientid).await;
        assert!(matches!(status, 400 | 401 | 403), "{status}");
    }
    let (status, _) = pair
        .a
        .resolve(
            &pair.a.client("http1", "127.2.0.1"),
            &format!("code={B_CODE}"),
        )
        .await;
    assert_eq!(status, 401);
    let after = pair.b.metrics().await;
    let answered = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("homecmp_federation_total{outcome=\"answered\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert_eq!(answered(&before), answered(&after), "B saw nothing");
    pair.a.stop().await;
    pair.b.stop().await;
}

/// A client to B's federation listener with `identity` (cert, key), if any.
fn peer_client(pair: &Pair, identity: Option<(&str, &str)>) -> reqwest::Client {
    let dir = pair.dir.path();
    let b_ca = std::fs::read(dir.join("b-ca.pem")).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&b_ca).unwrap()])
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(dir.join(cert)).unwrap();
        pem.extend(std::fs::read(dir.join(key)).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

fn fed_url(pair: &Pair, query: &str) -> String {
    let port = pair.b.running.federation_addr.unwrap().port();
    format!("https://127.0.0.1:{port}/fed/v1/resolve?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_takes_only_the_community_and_limits_it() {
    let pair = pair("requests_per_peer_per_sec = 5").await;
    let url = fed_url(&pair, &format!("code={B_CODE}"));
    // A's certificate (A's CA, which B trusts): answered.
    let a = peer_client(&pair, Some(("a-cert.pem", "a-key.pem")));
    let answer = a.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<serde_json::Value>().await.unwrap()["target"],
        B_TARGET
    );
    // No certificate, or one from a CA B does not trust: no TLS session.
    for client in [
        peer_client(&pair, None),
        peer_client(&pair, Some(("c-cert.pem", "c-key.pem"))),
    ] {
        let refused = client.get(&url).send().await;
        assert!(refused.is_err(), "{refused:?}");
    }
    let metrics = pair.b.metrics().await;
    let refused = r#"homecmp_federation_total{outcome="refused",reason="handshake"}"#;
    assert!(metric(&metrics, refused) >= 2.0, "{metrics}");
    // Malformed: 400, and not B's prefix: 404 UNKNOWN_PREFIX.
    let bad = a.get(fed_url(&pair, "code=!!")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let foreign = a
        .get(fed_url(&pair, "code=2001000001promo"))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    // Too many: 429 (5 per second, a burst of 10).
    let mut limited = 0;
    for _ in 0..30 {
        limited += usize::from(a.get(&url).send().await.unwrap().status() == 429);
    }
    assert!(limited > 0, "a flood from one peer is limited");
    pair.a.stop().await;
    pair.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_peer_down_its_codes_fail_fast_and_ours_still_resolve() {
    let Pair { a, b, dir: _dir } = pair("").await;
    let (status, _) = resolve(&a, "127.1.0.1", B_CODE, "mcc-fed-2").await;
    assert_eq!(status, 200);
    b.stop().await;
    for round in 0..6 {
        let started = Instant::now();
        let (status, body) = resolve(&a, "127.2.0.1", B_CODE, "mcc-fed-2").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("UPSTREAM_UNAVAILABLE")),
            "{round}"
        );
        // Within the 500 ms budget; at once once the circuit is open.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{round}: {:?}",
            started.elapsed()
        );
        let (status, body) = resolve(&a, "127.2.0.1", CODE, "mcc-fed-2").await;
        assert_eq!((status, body["target"].as_str()), (200, Some(TARGET)));
    }
    let metrics = a.metrics().await;
    let open = r#"homecmp_federation_total{outcome="forwarded",reason="circuit_open"}"#;
    assert!(metric(&metrics, open) >= 3.0, "{metrics}");
    a.stop().await;
}

/// A community registry (MCR) on loopback: `GET /mcr/v1/prefixes/{prefix}`
/// names the CMP of the prefixes in `owners` (`BIG`: an answer far too
/// large; `FAIL`: a 500), 404 for others; counts the questions.
async fn registry(
    dir: &Path,
    owners: Vec<(String, String)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (_, cert, key) = pki(dir, "mcr");
    let (certs, key) = homecmp::tls::load(&cert, &key).unwrap();
    let tls = homecmp::tls::server_config(certs, key, &[b"h2", b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (owners, counter) = (owners.clone(), counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let prefix = request
                            .uri()
                            .path()
                            .trim_start_matches("/mcr/v1/prefixes/")
                            .to_owned();
                        let owner = owners.iter().find(|(p, _)| *p == prefix);
                        let (status, body) = match owner {
                            // A registry gone wrong: an answer far too large.
                            Some((_, url)) if url == "BIG" => (200, "x".repeat(1 << 20)),
                            Some((_, url)) if url == "FAIL" => (500, "{}".to_owned()),
                            Some((_, url)) => (200, serde_json::json!({"url": url}).to_string()),
                            None => (404, "{}".to_owned()),
                        };
                        let response = hyper::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    },
                );
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, asked)
}

/// The community CAs of B and of the registry in one file of `dir`.
fn b_and_registry_roots(dir: &Path) -> PathBuf {
    let roots = dir.join("b-and-mcr-ca.pem");
    let mut pem = std::fs::read(dir.join("b-ca.pem")).unwrap();
    pem.extend(std::fs::read(dir.join("mcr-ca.pem")).unwrap());
    std::fs::write(&roots, pem).unwrap();
    roots
}

/// A third CMP like A, but with no peer listed: only the registry at
/// `mcr_url`, and `federation_keys`.
async fn registry_cmp(dir: &Path, mcr_url: &str, federation_keys: &str) -> TestServer {
    let federation = format!(
        "{OPEN}[federation]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
         mcr_url = \"{mcr_url}\"\n{federation_keys}\n",
        dir.join("a-cert.pem").display(),
        dir.join("a-key.pem").display(),
        b_and_registry_roots(dir).display()
    );
    TestServer::ready(&federation).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_community_registry_names_the_cmp_of_an_unlisted_prefix() {
    let Pair { a, b, dir } = pair("").await;
    let b_url = fed_base(&b);
    let owners = vec![
        ("2001000002".into(), b_url),
        ("2001000004".into(), "BIG".into()),
    ];
    let (mcr_url, asked) = registry(dir.path(), owners).await;
    // On loopback, as every CMP here: allowed.
    let c = registry_cmp(dir.path(), &mcr_url, "mcr_allow_private = true").await;
    for _ in 0..3 {
        let (status, body) = resolve(&c, "127.1.0.1", B_CODE, "mcc-mcr").await;
        assert_eq!(
            (status, body["target"].as_str()),
            (200, Some(B_TARGET)),
            "{body}"
        );
    }
    for _ in 0..2 {
        let (status, body) = resolve(&c, "127.1.0.1", "2001000003x", "mcc-mcr").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("UNKNOWN_PREFIX"))
        );
    }
    let asked = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 2, "one question per prefix, then the kept answer");
    // An answer too large to be one is a failure, not read whole.
    let (status, body) = resolve(&c, "127.1.0.1", "2001000004x", "mcc-mcr").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("UPSTREAM_UNAVAILABLE"))
    );
    // Its own codes never wait on the registry.
    let (status, _) = resolve(&c, "127.2.0.1", CODE, "mcc-mcr").await;
    assert_eq!(status, 200);
    for server in [a, b, c] {
        server.stop().await;
    }
}

fn asked(counter: &std::sync::atomic::AtomicUsize) -> usize {
    counter.load(std::sync::atomic::Ordering::SeqCst)
}

async fn forwarded(server: &TestServer, reason: &str) -> f64 {
    let metrics = server.metrics().await;
    metric(
        &metrics,
        &format!("homecmp_federation_total{{outcome=\"forwarded\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_answer_naming_an_internal_address_is_refused_by_default() {
    let pair = pair("").await;
    let port = pair.b.running.federation_addr.unwrap().port();
    // B itself, the right CMP, with a certificate for both names: only
    // the address stands in the way.
    let owners = vec![
        ("2001000002".into(), format!("https://127.0.0.1:{port}")),
        ("2001000005".into(), format!("https://localhost:{port}")),
    ];
    let (mcr_url, _) = registry(pair.dir.path(), owners).await;
    let c = registry_cmp(pair.dir.path(), &mcr_url, "").await;
    for code in [B_CODE, "2001000005remote"] {
        let (status, body) = resolve(&c, "127.1.0.1", code, "mcc-internal").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("UPSTREAM_UNAVAILABLE")),
            "{code}: {body}"
        );
    }
    // One refused as an IP literal, one as a name that resolves to one.
    assert_eq!(forwarded(&c, "private_address").await, 2.0);
    assert_eq!(answered_by_b(&pair).await, 0.0);
    for server in [pair.a, pair.b, c] {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_named_peers_keep_their_breaker_and_registry_failures_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "a");
    pki(dir.path(), "b");
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("https://127.0.0.1:{}", gone.local_addr().unwrap().port());
    drop(gone);
    let owners = vec![
        ("2001000006".into(), dead),
        ("2001000007".into(), "FAIL".into()),
    ];
    let (mcr_url, questions) = registry(dir.path(), owners).await;
    // Answers are not kept at all: each request asks the registry again.
    let c = registry_cmp(
        dir.path(),
        &mcr_url,
        "mcr_allow_private = true\nmcr_cache_secs = 0\nfailures_to_open = 2\n\
         open_ms = 60000\ntimeout_ms = 500",
    )
    .await;
    for round in 0..6 {
        let (status, body) = resolve(&c, "127.1.0.1", "2001000006x", "mcc-breaker").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("UPSTREAM_UNAVAILABLE")),
            "{round}"
        );
    }
    assert_eq!(asked(&questions), 6, "the answer was asked for anew");
    // Its circuit opened after two failures and stayed open across them.
    assert_eq!(forwarded(&c, "failed").await, 2.0);
    assert_eq!(forwarded(&c, "circuit_open").await, 4.0);

    // A registry that fails is asked once, then left alone a while.
    for _ in 0..3 {
        let (status, body) = resolve(&c, "127.1.0.1", "2001000007x", "mcc-breaker").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("UPSTREAM_UNAVAILABLE"))
        );
    }
    assert_eq!(asked(&questions), 7);
    assert_eq!(forwarded(&c, "registry_failed").await, 3.0);
    c.stop().await;
}

/// A silent TCP connection from `local_ip` to `to`.
async fn silent_from(local_ip: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(local_ip.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `stream` (EOF or reset) within `within`,
/// having sent nothing.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the server spoke first"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_admits_before_tls_under_limits_of_its_own() {
    let cap = "max_connections_per_address = 2\n";
    let pair = pair_with(cap, cap, "").await;
    let refused = |transport: &str| {
        format!(
            "homecmp_connections_refused_total{{transport=\"{transport}\",reason=\"address_cap\"}}"
        )
    };
    // Two connections that never start a handshake hold 127.0.0.5's slots
    // on the federation port; a third is closed before any TLS.
    let federation = pair.b.running.federation_addr.unwrap();
    let mut held = [
        silent_from("127.0.0.5", federation).await,
        silent_from("127.0.0.5", federation).await,
    ];
    let mut third = silent_from("127.0.0.5", federation).await;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    assert!(!closed_within(&mut held[0], Duration::from_millis(200)).await);
    let metrics = pair.b.metrics().await;
    assert_eq!(metric(&metrics, &refused("federation")), 1.0, "{metrics}");
    let handshakes = r#"homecmp_federation_total{outcome="refused",reason="handshake"}"#;
    assert_eq!(metric(&metrics, handshakes), 0.0, "no TLS was tried");

    // 127.0.0.1 fills its slots on B's public port ...
    let public = pair.b.running.public_addr;
    let _public_held = [
        silent_from("127.0.0.1", public).await,
        silent_from("127.0.0.1", public).await,
    ];
    let mut over = silent_from("127.0.0.1", public).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    assert_eq!(metric(&pair.b.metrics().await, &refused("tcp")), 1.0);
    // ... and A, calling from 127.0.0.1 too, is still a peer with room.
    let (status, body) = resolve(&pair.a, "127.1.0.1", B_CODE, "mcc-fed-3").await;
    assert_eq!((status, body["target"].as_str()), (200, Some(B_TARGET)));
    pair.a.stop().await;
    pair.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_paces_handshakes_before_any_certificate_is_seen() {
    // One handshake a second, none waiting past the 5 s handshake budget:
    // of ten at once, about six get a turn and the others are closed.
    let pair = pair("handshakes_per_sec = 1").await;
    let federation = pair.b.running.federation_addr.unwrap();
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(silent_from("127.0.0.6", federation).await);
    }
    let closed = futures_util::future::join_all(
        flood
            .iter_mut()
            .map(|stream| closed_within(stream, Duration::from_secs(2))),
    )
    .await;
    let closed = closed.iter().filter(|closed| **closed).count();
    assert!((3..=5).contains(&closed), "{closed} of 10 closed at once");
    let metrics = pair.b.metrics().await;
    let paced =
        r#"homecmp_connections_refused_total{transport="federation",reason="handshake_rate"}"#;
    assert_eq!(metric(&metrics, paced), closed as f64, "{metrics}");
    pair.a.stop().await;
    pair.b.stop().await;
}

/// SHA-256 of the SubjectPublicKeyInfo of the key `name-key.pem` in `dir`,
/// as rcgen writes it (not as the server reads it from a certificate).
fn spki_sha256(dir: &Path, name: &str) -> [u8; 32] {
    let pem = std::fs::read_to_string(dir.join(format!("{name}-key.pem"))).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
    digest.as_ref().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_called_only_with_the_certificate_it_is_pinned_to() {
    use base64::Engine;
    let pair = pair("").await;
    let dir = pair.dir.path();
    let b_url = fed_base(&pair.b);
    let base64 = base64::engine::general_purpose::STANDARD.encode(spki_sha256(dir, "b"));
    let other: String = spki_sha256(dir, "c")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ca_file = |name: &str| format!("ca_file = \"{}\"", dir.join(name).display());
    let cases = [
        // (community CA, the peer's own keys, status, outcome)
        (
            "b-ca.pem",
            format!("spki_sha256 = \"{base64}\""),
            200,
            "resolved",
        ),
        (
            "b-ca.pem",
            format!("spki_sha256 = \"{other}\""),
            503,
            "pin_mismatch",
        ),
        // Its own CA verifies it, where the community's would not ...
        ("c-ca.pem", ca_file("b-ca.pem"), 200, "resolved"),
        // ... and in place of the community's, which would.
        ("b-ca.pem", ca_file("c-ca.pem"), 503, "certificate_refused"),
    ];
    for (community, peer_keys, status, outcome) in cases {
        let a = start_a(dir, &b_url, "", community, &peer_keys).await;
        let (answered, body) = resolve(&a, "127.1.0.1", B_CODE, "mcc-pin").await;
        assert_eq!(answered, status, "{peer_keys}: {body}");
        if status == 503 {
            assert_eq!(body["code"], "UPSTREAM_UNAVAILABLE");
        }
        assert_eq!(
            forwarded(&a, outcome).await,
            1.0,
            "{peer_keys}: {}",
            a.metrics().await
        );
        a.stop().await;
    }
    assert_eq!(
        answered_by_b(&pair).await,
        2.0,
        "B heard only the two allowed"
    );
    pair.a.stop().await;
    pair.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_and_off_modes_forward_only_what_enforce_would() {
    for mode in ["monitor", "off"] {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            pki(dir.path(), name);
        }
        let b = start_b(dir.path(), "", "").await;
        // A registry that knows no prefix: asking it is all it records.
        let (mcr_url, questions) = registry(dir.path(), Vec::new()).await;
        let roots = b_and_registry_roots(dir.path());
        let sections = format!(
            "[auth]\nmode = \"{mode}\"\n[federation]\nmcr_url = \"{mcr_url}\"\nmcr_allow_private = true\n"
        );
        let a = start_a(
            dir.path(),
            &fed_base(&b),
            &sections,
            roots.to_str().unwrap(),
            "",
        )
        .await;
        let wifi = a.client("http2", "127.2.0.1");
        // Requests enforce mode would refuse (no clientid; an unassociated
        // one off the MNO network): answered as nobody's codes, and
        // neither B nor the registry hears of them.
        for code in [B_CODE, "2001000003x"] {
            for query in [
                format!("code={code}"),
                format!("code={code}&clientid=never-associated"),
            ] {
                let (status, body) = a.resolve(&wifi, &query).await;
                assert_eq!(
                    (status, body["code"].as_str()),
                    (404, Some("UNKNOWN_PREFIX")),
                    "{mode}: {query}"
                );
            }
        }
        let b_answered = || async {
            let metrics = b.metrics().await;
            metric(
                &metrics,
                r#"homecmp_federation_total{outcome="answered",reason="resolved"}"#,
            )
        };
        assert_eq!(b_answered().await, 0.0, "{mode}: B never asked");
        assert_eq!(asked(&questions), 0, "{mode}: the registry never asked");
        // A's own codes still resolve for them, as the mode says.
        let (status, _) = a.resolve(&wifi, &format!("code={CODE}")).await;
        assert_eq!(status, 200, "{mode}");

        // A first scan on the MNO network is what enforce lets through:
        // forwarded, to B and to the registry.
        let (status, body) = resolve(&a, "127.1.0.1", B_CODE, "mcc-mode").await;
        assert_eq!(
            (status, body["target"].as_str()),
            (200, Some(B_TARGET)),
            "{mode}"
        );
        let (status, _) = resolve(&a, "127.1.0.1", "2001000003x", "mcc-mode").await;
        assert_eq!(status, 404, "{mode}");
        assert_eq!(asked(&questions), 1, "{mode}");
        // From WiFi the same clientid is associated in monitor mode (it
        // was made above) and not in off mode (which makes none).
        let (status, body) = a
            .resolve(&wifi, &format!("code={B_CODE}&clientid=mcc-mode"))
            .await;
        let expected = match mode {
            "monitor" => (200, Some(B_TARGET)),
            _ => (404, None),
        };
        assert_eq!(
            (status, body["target"].as_str()),
            expected,
            "{mode}: {body}"
        );
        let forwarded_to_b = match mode {
            "monitor" => 2.0,
            _ => 1.0,
        };
        assert_eq!(b_answered().await, forwarded_to_b, "{mode}");
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_closed_for_its_conduct_is_held_off_the_federation_port_only() {
    let conduct = "refusals_before_slowdown = 0\nrefusals_before_close = 3\npenalty_secs = 60\n";
    let pair = pair_with(conduct, "", "").await;
    let a = peer_client(&pair, Some(("a-cert.pem", "a-key.pem")));
    for _ in 0..3 {
        let bad = a.get(fed_url(&pair, "code=!!")).send().await.unwrap();
        assert_eq!(bad.status(), 400);
    }
    // It was held when its connection earned the close: a new connection
    // from its address is refused before any TLS.
    let a = peer_client(&pair, Some(("a-cert.pem", "a-key.pem")));
    let again = a
        .get(fed_url(&pair, &format!("code={B_CODE}")))
        .send()
        .await;
    assert!(again.is_err(), "{again:?}");
    let metrics = pair.b.metrics().await;
    let held = r#"homecmp_connections_refused_total{transport="federation",reason="penalty"}"#;
    assert!(metric(&metrics, held) >= 1.0, "{metrics}");
    // The same address is a client like any other on the public port.
    let public = pair.b.client("http2", "127.0.0.1");
    let (status, _) = pair.b.resolve(&public, &format!("code={B_CODE}")).await;
    assert_eq!(status, 401);
    pair.a.stop().await;
    pair.b.stop().await;
}

/// A reload reads `[federation]` again, with no restart: a peer added to
/// A is forwarded to from the next request, a community CA changed on B's
/// listener takes A's certificate from the next handshake, and a
/// federation file that does not load is refused with the running one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_federation_peers_and_community_ca_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["a", "b", "c"] {
        pki(d, name);
    }
    let file = |name: &str| d.join(name).display().to_string();
    // B's listener trusts C's CA only, for now.
    let b_federation = |ca: &str| {
        format!(
            "{OPEN}\n[federation]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\n\
             key_file = \"{}\"\nca_file = \"{}\"\n",
            file("b-cert.pem"),
            file("b-key.pem"),
            file(ca)
        )
    };
    let b_keys = "routing_prefixes = [\"2001000002\"]";
    let b_toml = d.join("b.toml");
    let b_data = d.join("b-data");
    let b = TestServer::from_file(&b_toml, &b_data, b_keys, &b_federation("c-ca.pem")).await;
    b.put_code(B_CODE, B_TARGET).await;
    // A knows no peer of B's prefix, for now.
    let a_federation = |peers: &str| {
        format!(
            "{OPEN}\n[federation]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             timeout_ms = 500\n{peers}",
            file("a-cert.pem"),
            file("a-key.pem"),
            file("b-ca.pem")
        )
    };
    let (a_toml, a_data) = (d.join("a.toml"), d.join("a-data"));
    let a = TestServer::from_file(&a_toml, &a_data, "", &a_federation("")).await;
    a.bind_session("127.1.0.1", "+447700900001").await;
    let (status, body) = resolve(&a, "127.1.0.1", B_CODE, "mcc-reload").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("UNKNOWN_PREFIX"))
    );

    let reload =
        async |server: &TestServer, path: &Path, data: &Path, keys: &str, extra: String| {
            std::fs::write(path, support::config_text(data, keys, &extra)).unwrap();
            server
                .admin(reqwest::Method::POST, "/admin/v1/reload", None)
                .await
        };
    let peer = format!(
        "[[federation.peers]]\nprefix = \"2001000002\"\nurl = \"{}\"\n",
        fed_base(&b)
    );
    let (status, reloaded) = reload(&a, &a_toml, &a_data, "", a_federation(&peer)).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(
        reloaded["reloaded"],
        serde_json::json!(["certificate", "federation", "rules", "limits"])
    );
    let (status, body) = resolve(&a, "127.1.0.1", B_CODE, "mcc-reload").await;
    assert_eq!(
        status, 503,
        "forwarded, and B refuses A's certificate: {body}"
    );

    let (status, reloaded) = reload(&b, &b_toml, &b_data, b_keys, b_federation("a-ca.pem")).await;
    assert_eq!(status, 200, "{reloaded}");
    let (status, body) = resolve(&a, "127.1.0.1", B_CODE, "mcc-reload").await;
    assert_eq!(
        (status, &body["target"]),
        (200, &serde_json::json!(B_TARGET))
    );

    // A community CA that does not load: refused, B keeps A's CA.
    let (status, refused) = reload(&b, &b_toml, &b_data, b_keys, b_federation("gone.pem")).await;
    assert_eq!(
        (status, &refused["code"]),
        (422, &serde_json::json!("RELOAD_REFUSED"))
    );
    let fresh = peer_client_of(d, ("a-cert.pem", "a-key.pem"));
    let url = format!("{}/fed/v1/resolve?code={B_CODE}", fed_base(&b));
    let answer = fresh.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200, "a new handshake under the kept CA");
    a.stop().await;
    b.stop().await;
}

/// A new client to B's federation listener (B's CA in `dir`) with
/// `identity` (cert, key files in `dir`).
fn peer_client_of(dir: &Path, identity: (&str, &str)) -> reqwest::Client {
    let b_ca = std::fs::read(dir.join("b-ca.pem")).unwrap();
    let mut pem = std::fs::read(dir.join(identity.0)).unwrap();
    pem.extend(std::fs::read(dir.join(identity.1)).unwrap());
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&b_ca).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
