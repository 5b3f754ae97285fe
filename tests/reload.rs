//! A certificate renewed without a restart: the new files are read on
//! `POST /admin/v1/reload` (and on SIGHUP), served from the next handshake
//! on, with no request failing meanwhile; a renewal that does not load is
//! refused and the running certificate kept.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use reqwest::Method;

mod support;

use support::TestServer;

const CODE: &str = "2001000001promo";

/// A CA that issues certificates for localhost and 127.0.0.1.
struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Ca {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Self(rcgen::CertifiedIssuer::self_signed(params, key).unwrap())
    }

    /// A new certificate and key (`cn` tells them apart), written to `cert`
    /// and `key` by renaming (as a renewal tool does); its DER.
    fn issue(&self, cn: &str, cert: &Path, key: &Path) -> Vec<u8> {
        let pair = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let issued = params.signed_by(&pair, &self.0).unwrap();
        for (path, text) in [(cert, issued.pem()), (key, pair.serialize_pem())] {
            let fresh = path.with_extension("new");
            std::fs::write(&fresh, text).unwrap();
            std::fs::rename(&fresh, path).unwrap();
        }
        issued.der().to_vec()
    }
}

/// The certificate a new TLS connection from `ip` is served.
async fn served_certificate(ca_pem: &[u8], server: &TestServer, ip: &str) -> Vec<u8> {
    let addr = server.public_addr_for(ip);
    let stream = support::raw::tls(ca_pem, &[b"http/1.1"], ip, addr)
        .await
        .expect("a TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let ca_pem = ca.0.pem().into_bytes();
    let first = ca.issue("first", &cert, &key);
    let server = TestServer::with_sections(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        "[limits]\naccepts_per_address_per_sec = 0\nhandshakes_per_sec = 0\n\
         requests_per_clientid_per_sec = 1000000\nrequests_per_address_per_sec = 1000000",
    )
    .await;
    server.put_code(CODE, "https://example.org/").await;
    server.bind_session("127.1.0.30", "+447700900030").await;
    assert_eq!(
        served_certificate(&ca_pem, &server, "127.1.0.30").await,
        first
    );
    // Load throughout: two clients on one connection each, two on a new
    // connection (a new handshake) for every request.
    let client = |new_connections: bool| {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
            .local_address("127.1.0.30".parse::<std::net::IpAddr>().unwrap())
            .resolve("localhost", server.public_addr_for("127.1.0.30"))
            .timeout(std::time::Duration::from_secs(10));
        if new_connections {
            builder = builder.pool_max_idle_per_host(0).http1_only();
        }
        builder.build().unwrap()
    };
    let (stop, served, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut load = tokio::task::JoinSet::new();
    for n in 0..4 {
        let (client, url) = (
            client(n % 2 == 0),
            server.url(&format!("code={CODE}&clientid=app-{n}")),
        );
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await.map(|r| r.status().as_u16()) {
                    Ok(200) => served.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let second = ca.issue("second", &cert, &key);
    let (status, body) = server.admin(Method::POST, "/admin/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], serde_json::json!(["certificate"]));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        served_certificate(&ca_pem, &server, "127.1.0.30").await,
        second
    );
    // A renewal that does not load (a key that is not the certificate's):
    // refused, and the running certificate kept.
    let other = dir.path().join("other-cert.pem");
    ca.issue("third", &other, &key);
    let (status, body) = server.admin(Method::POST, "/admin/v1/reload", None).await;
    assert_eq!(
        (status, &body["code"]),
        (422, &serde_json::json!("RELOAD_REFUSED")),
        "{body}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        served_certificate(&ca_pem, &server, "127.1.0.30").await,
        second
    );
    stop.store(true, Ordering::Relaxed);
    load.join_all().await;
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "{failed} failed, {served} served");
    assert!(served >= 50, "only {served} served");
    let metrics = server.metrics().await;
    let expiry = support::metric(
        &metrics,
        "homecmp_tls_certificate_expiry_timestamp_seconds{listener=\"public\"}",
    );
    assert!(expiry > 0.0);
    server.stop().await;
}

/// The same through the binary and a signal, as `systemctl reload` sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let ca_pem = ca.0.pem().into_bytes();
    ca.issue("first", &cert, &key);
    let config = format!(
        "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nrouting_prefixes = [\"{}\"]\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data").display(),
        support::PREFIX,
        cert.display(),
        key.display()
    );
    let served = support::binary::Served::start(dir.path(), "hup", &config);
    let addr: std::net::SocketAddr = served
        .ready
        .public
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let second = ca.issue("second", &cert, &key);
    let pid = served.child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    support::eventually(
        "the new certificate is served",
        std::time::Duration::from_secs(10),
        async || {
            let stream = support::raw::tls(&ca_pem, &[b"http/1.1"], "127.0.0.1", addr).await;
            stream.is_ok_and(|s| s.get_ref().1.peer_certificates().unwrap()[0].as_ref() == second)
        },
    )
    .await;
    assert!(
        !served.stderr().contains("reload refused"),
        "{}",
        served.stderr()
    );
}

/// A reload re-reads the config file: the MNO's address pools, its
/// trusted gateways and the routing prefixes take effect at once, without
/// a restart (a session bound in a new pool and a first scan from it, a
/// code under a new prefix); a config that does not validate is refused
/// (422 `RELOAD_REFUSED` with its errors) and the running one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_pools_and_prefixes_again_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = |networks: &str, prefixes: &str| {
        format!(
            "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nrouting_prefixes = [{prefixes}]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[mno]\nnetworks = [{networks}]\n",
            dir.path().join("data").display(),
        )
    };
    let first = config("\"127.1.0.0/16\"", &format!("\"{}\"", support::PREFIX));
    let served = support::binary::Served::start(dir.path(), "pools", &first);
    let bind = async |ip: &str| {
        let body = reqwest::Body::from(r#"{"msisdn": "+447700900077"}"#);
        let path = format!("/admin/v1/sessions/{ip}");
        served.admin(Method::PUT, &path, Some(body)).await
    };
    let (status, body) = bind("127.9.0.7").await;
    assert_eq!(
        (status, &body["code"]),
        (400, &serde_json::json!("NOT_IN_MNO_NETWORK"))
    );
    let new_code = "2002000001launch";
    let put_code = async || {
        let body = reqwest::Body::from(r#"{"target": "https://example.org/launch"}"#);
        let path = format!("/admin/v1/codes/{new_code}");
        served.admin(Method::PUT, &path, Some(body)).await
    };
    assert_eq!(put_code().await.0, 400, "not a prefix of this CMP yet");

    // A new pool and a new prefix, read on reload.
    let second = config(
        "\"127.1.0.0/16\", \"127.9.0.0/16\"",
        &format!("\"{}\", \"2002000001\"", support::PREFIX),
    );
    std::fs::write(dir.path().join("pools.toml"), &second).unwrap();
    let (status, reloaded) = served.admin(Method::POST, "/admin/v1/reload", None).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(
        reloaded["reloaded"],
        serde_json::json!(["certificate", "rules", "limits"]),
        "{reloaded}"
    );
    let (status, body) = bind("127.9.0.7").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(put_code().await.0, 200);
    let scan = format!("code={new_code}&clientid=pool-app");
    let response = served
        .client("127.9.0.7")
        .get(served.resolve_url(&scan))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a first scan from the new pool");

    // A config that does not validate: refused, every error named, and
    // the running one kept.
    std::fs::write(
        dir.path().join("pools.toml"),
        second.replace("127.9.0.0/16", "not-a-network"),
    )
    .unwrap();
    let (status, refused) = served.admin(Method::POST, "/admin/v1/reload", None).await;
    assert_eq!(
        (status, &refused["code"]),
        (422, &serde_json::json!("RELOAD_REFUSED")),
        "{refused}"
    );
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("not-a-network"), "{message}");
    let (status, _) = bind("127.9.0.7").await;
    assert_eq!(status, 200, "the running pools kept");
}

/// A reload applies `[limits]` to the next connection without a restart,
/// and keeps what it counts: connections already open from an address
/// still count against that address's new cap (none of them is closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_limits_and_keeps_the_open_connections_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = |cap: u32| {
        format!(
            "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[mno]\nnetworks = [\"127.1.0.0/16\"]\n\
             [limits]\nmax_connections_per_address = {cap}\n",
            dir.path().join("data").display(),
        )
    };
    let served = support::binary::Served::start(dir.path(), "limits", &config(1));
    let url = served.resolve_url(&format!("code={CODE}&clientid=never-associated"));
    // Each client is a connection of its own from one WiFi address.
    let connect =
        async |client: &reqwest::Client| client.get(&url).send().await.map(|r| r.status());
    let reload = async |cap: u32| {
        std::fs::write(dir.path().join("limits.toml"), config(cap)).unwrap();
        let (status, reloaded) = served.admin(Method::POST, "/admin/v1/reload", None).await;
        assert_eq!(status, 200, "{reloaded}");
        assert!(
            reloaded["reloaded"]
                .as_array()
                .unwrap()
                .contains(&"limits".into()),
            "{reloaded}"
        );
    };
    let (a, b, c) = (
        served.client("127.2.0.9"),
        served.client("127.2.0.9"),
        served.client("127.2.0.9"),
    );
    assert!(connect(&a).await.is_ok(), "the address's one connection");
    assert!(
        connect(&b).await.is_err(),
        "a second one, over the cap of 1"
    );

    reload(3).await;
    assert!(connect(&b).await.is_ok(), "the cap is 3 now");

    reload(1).await;
    assert!(
        connect(&c).await.is_err(),
        "two open already count against the new cap of 1"
    );
    assert!(connect(&a).await.is_ok(), "an open connection stays open");
    assert!(connect(&b).await.is_ok(), "an open connection stays open");
}
