//! Federation (§9.3.2) between two real homecmp servers on loopback, each
//! with a CA of its own: A owns 2001000001, B owns 2001000002 and serves
//! peers on a mutual-TLS listener; A trusts B's CA and B trusts A's.
//!
//! An associated MCC at A resolves B's code through A; an unassociated one
//! is stopped at A and B never hears of it; B refuses a client with no
//! certificate or one from another CA, answers a malformed request 400 and
//! a flood 429; with B down, A answers 503 UPSTREAM_UNAVAILABLE at once
//! and still resolves its own codes.

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
    let dir = tempfile::tempdir().unwrap();
    let (a_ca, a_cert, a_key) = pki(dir.path(), "a");
    let (b_ca, b_cert, b_key) = pki(dir.path(), "b");
    pki(dir.path(), "c");
    let b_federation = format!(
        "{OPEN}[federation]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         ca_file = \"{}\"\n{b_extra}\n",
        b_cert.display(),
        b_key.display(),
        a_ca.display()
    );
    let b = TestServer::with_sections("routing_prefixes = [\"2001000002\"]", &b_federation).await;
    b.put_code(B_CODE, B_TARGET).await;
    let b_url = format!(
        "https://127.0.0.1:{}",
        b.running.federation_addr.unwrap().port()
    );
    let a_federation = format!(
        "{OPEN}[federation]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
         timeout_ms = 500\nfailures_to_open = 3\nopen_ms = 60000\n\
         [[federation.peers]]\nprefix = \"2001000002\"\nurl = \"{b_url}\"\n",
        a_cert.display(),
        a_key.display(),
        b_ca.display()
    );
    let a = TestServer::ready(&a_federation).await;
    Pair { a, b, dir }
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
/// names the CMP of the prefixes in `owners`, 404 for others; counts the
/// questions.
async fn registry(
    dir: &Path,
    owners: Vec<(String, String)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (_, cert, key) = pki(dir, "mcr");
    let (certs, key) = homecmp::net::tls::load(&cert, &key).unwrap();
    let tls = homecmp::net::tls::server_config(certs, key, &[b"h2", b"http/1.1"]).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_community_registry_names_the_cmp_of_an_unlisted_prefix() {
    let Pair { a, b, dir } = pair("").await;
    let b_url = format!(
        "https://127.0.0.1:{}",
        b.running.federation_addr.unwrap().port()
    );
    let owners = vec![
        ("2001000002".into(), b_url),
        ("2001000004".into(), "BIG".into()),
    ];
    let (mcr_url, asked) = registry(dir.path(), owners).await;
    // A third CMP like A, but with no peer listed: only the registry.
    let roots = dir.path().join("b-and-mcr-ca.pem");
    let mut pem = std::fs::read(dir.path().join("b-ca.pem")).unwrap();
    pem.extend(std::fs::read(dir.path().join("mcr-ca.pem")).unwrap());
    std::fs::write(&roots, pem).unwrap();
    let federation = format!(
        "{OPEN}[federation]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
         mcr_url = \"{mcr_url}\"\n",
        dir.path().join("a-cert.pem").display(),
        dir.path().join("a-key.pem").display(),
        roots.display()
    );
    let c = TestServer::ready(&federation).await;
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
