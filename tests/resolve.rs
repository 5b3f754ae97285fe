//! The resolution API of DESIGN §4 against a real server on loopback, over
//! HTTP/1.1 and HTTP/2 (and its table over HTTP/3 too), with clients bound to MNO-pool (127.1.x.y), WiFi
//! (127.2.x.y) and gateway (127.3.0.1) addresses.

mod support;

use reqwest::Method;
use serde_json::json;
use support::{CODE, GATEWAY, PREFIX, TARGET, TestServer, metric};

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// DESIGN §4's table, row by row, over HTTP/1.1, HTTP/2 and HTTP/3: one
/// table, one client type for all three.
#[tokio::test]
async fn every_row_of_the_table_in_enforce_mode() {
    let server = TestServer::ready("").await;
    for protocol in ["http1", "http2", "http3"] {
        let mno = server.any_client(protocol, "127.1.0.1");
        let other_sub = server.any_client(protocol, "127.1.0.2");
        let unknown_sub = server.any_client(protocol, "127.1.0.99");
        let wifi = server.any_client(protocol, "127.2.0.1");
        let id = format!("app-{protocol}");
        let scan = format!("code={CODE}&clientid={id}");

        let (s, b) = mno.resolve("code=zz&clientid=x").await;
        assert_error(s, &b, 400, "INVALID_CODE");
        let (s, b) = mno.resolve(&format!("code={CODE}&clientid=bad%20id")).await;
        assert_error(s, &b, 400, "INVALID_CLIENTID");
        let (s, b) = mno.resolve(&format!("code={CODE}")).await;
        assert_error(s, &b, 401, "CLIENTID_REQUIRED");
        let (s, b) = wifi.resolve(&scan).await;
        assert_error(s, &b, 403, "RETRY_ON_MNO_NETWORK");
        let (s, b) = unknown_sub.resolve(&scan).await;
        assert_error(s, &b, 403, "SUBSCRIBER_UNKNOWN");

        // First scan over the MNO network creates the association.
        let (s, b) = mno.resolve(&scan).await;
        assert_eq!(s, 200, "{protocol}: {b}");
        assert_eq!(
            b,
            json!({"code": CODE, "type": "url", "target": TARGET, "association": "created"})
        );
        let (s, b) = wifi.resolve(&scan).await;
        assert_eq!((s, &b["association"]), (200, &json!("existing")), "{b}");

        let (s, b) = other_sub.resolve(&scan).await;
        assert_error(s, &b, 403, "ASSOCIATION_MISMATCH");
        let (s, b) = wifi
            .resolve(&format!("code={PREFIX}nope&clientid={id}"))
            .await;
        assert_error(s, &b, 404, "CODE_NOT_FOUND");
        let (s, b) = wifi
            .resolve(&format!("code=2001000002promo&clientid={id}"))
            .await;
        assert_error(s, &b, 404, "UNKNOWN_PREFIX");
    }
    let metrics = server.metrics().await;
    for protocol in ["http1", "http2", "http3"] {
        let ok = format!("homecmp_requests_total{{outcome=\"ok\",protocol=\"{protocol}\"}}");
        assert!(metric(&metrics, &ok) >= 2.0, "{ok}: {metrics}");
    }
}

#[tokio::test]
async fn unauthenticated_requests_learn_nothing_about_codes() {
    let server = TestServer::ready("").await;
    let wifi = server.client("http2", "127.2.0.1");
    for code in [CODE, "2001000001missing", "2001000002promo"] {
        let (s, b) = server
            .resolve(&wifi, &format!("code={code}&clientid=stranger"))
            .await;
        assert_error(s, &b, 403, "RETRY_ON_MNO_NETWORK");
    }
}

#[tokio::test]
async fn rate_limited_creations_get_429_with_retry_after() {
    let server = TestServer::ready("[auth]\nassociations_per_minute = 2").await;
    let mno = server.client("http1", "127.1.0.1");
    for i in 0..2 {
        let (s, b) = server
            .resolve(&mno, &format!("code={CODE}&clientid=burst-{i}"))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let response = mno
        .get(server.url(&format!("code={CODE}&clientid=burst-9")))
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").cloned();
    let (s, b) = (response.status().as_u16(), response.json().await.unwrap());
    assert_error(s, &b, 429, "RATE_LIMITED");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    // Two a minute: the next one 30 s after the first, so a wait of 29.x s
    // here, said rounded up (rounded down, the client would come back early).
    assert_eq!(secs, 30);
    // Associated clients are not limited by it.
    let (s, _) = server
        .resolve(&mno, &format!("code={CODE}&clientid=burst-0"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn overload_sheds_unassociated_requests_first() {
    let server =
        TestServer::ready("[limits]\nmax_connections = 8\nshed_unauthenticated_above = 2").await;
    let mno = server.client("http1", "127.1.0.1");
    let (s, _) = server
        .resolve(&mno, &format!("code={CODE}&clientid=early"))
        .await;
    assert_eq!(s, 200);
    // Hold three more connections open with associated requests (still
    // served): above the shedding threshold.
    let holders: Vec<_> = (0..3)
        .map(|i| server.client("http1", &format!("127.2.0.{}", 10 + i)))
        .collect();
    for h in &holders {
        let (s, _) = server
            .resolve(h, &format!("code={CODE}&clientid=early"))
            .await;
        assert_eq!(s, 200);
    }
    let wifi = server.client("http1", "127.2.0.1");
    let response = wifi
        .get(server.url(&format!("code={CODE}&clientid=stranger")))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (s, b) = (response.status().as_u16(), response.json().await.unwrap());
    assert_error(s, &b, 503, "OVERLOADED");
    let (s, b) = server
        .resolve(&wifi, &format!("code={CODE}&clientid=early"))
        .await;
    assert_eq!((s, &b["association"]), (200, &json!("existing")), "{b}");
}

#[tokio::test]
async fn monitor_mode_resolves_what_enforce_refuses_and_counts_it() {
    let server = TestServer::ready("[auth]\nmode = \"monitor\"").await;
    let wifi = server.client("http2", "127.2.0.1");
    let (s, b) = server.resolve(&wifi, &format!("code={CODE}")).await;
    assert_eq!((s, &b["association"]), (200, &json!("none")), "{b}");
    let (s, b) = server
        .resolve(&wifi, &format!("code={CODE}&clientid=new-app"))
        .await;
    assert_eq!((s, &b["association"]), (200, &json!("none")), "{b}");
    // Parse errors and codes still answer as in enforce.
    let (s, b) = server.resolve(&wifi, "code=zz").await;
    assert_error(s, &b, 400, "INVALID_CODE");
    let (s, b) = server.resolve(&wifi, &format!("code={PREFIX}nope")).await;
    assert_error(s, &b, 404, "CODE_NOT_FOUND");
    // Over the MNO network it still associates.
    let mno = server.client("http2", "127.1.0.1");
    let (s, b) = server
        .resolve(&mno, &format!("code={CODE}&clientid=new-app"))
        .await;
    assert_eq!((s, &b["association"]), (200, &json!("created")), "{b}");
    let metrics = server.metrics().await;
    // The code-less and the CODE_NOT_FOUND request both lacked a clientid.
    assert_eq!(
        metric(
            &metrics,
            "homecmp_monitor_would_refuse_total{reason=\"CLIENTID_REQUIRED\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "homecmp_monitor_would_refuse_total{reason=\"RETRY_ON_MNO_NETWORK\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn off_mode_needs_no_clientid_and_creates_nothing() {
    let server = TestServer::ready("[auth]\nmode = \"off\"").await;
    let mno = server.client("http1", "127.1.0.1");
    let (s, b) = server.resolve(&mno, &format!("code={CODE}")).await;
    assert_eq!((s, &b["association"]), (200, &json!("none")), "{b}");
    let (s, b) = server
        .resolve(&mno, &format!("code={CODE}&clientid=some-app"))
        .await;
    assert_eq!((s, &b["association"]), (200, &json!("none")), "{b}");
    let (s, _) = server
        .admin(Method::GET, "/admin/v1/associations/some-app", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn first_scan_over_wifi_then_retry_over_mno() {
    let server = TestServer::ready("").await;
    let wifi = server.client("http2", "127.2.3.4");
    let mno = server.client("http2", "127.1.0.1");
    let query = format!("code={CODE}&clientid=6ba7b810-9dad-11d1-80b4-00c04fd430c8");
    let (s, b) = server.resolve(&wifi, &query).await;
    assert_error(s, &b, 403, "RETRY_ON_MNO_NETWORK");
    let (s, b) = server.resolve(&mno, &query).await;
    assert_eq!((s, &b["association"]), (200, &json!("created")), "{b}");
    let (s, b) = server.resolve(&wifi, &query).await;
    assert_eq!((s, &b["association"]), (200, &json!("existing")), "{b}");
}

#[tokio::test]
async fn trusted_gateway_enrichment_creates_the_association() {
    let server = TestServer::ready(&format!(
        "[mno]\nnetworks = [\"127.1.0.0/16\"]\ntrusted_gateways = [\"{GATEWAY}\"]"
    ))
    .await;
    let gateway = server.client("http1", GATEWAY);
    let response = gateway
        .get(server.url(&format!("code={CODE}&clientid=via-gw")))
        .header("X-MSISDN", "447700900777")
        .header("X-Forwarded-For", "127.1.9.9")
        .send()
        .await
        .unwrap();
    let b: serde_json::Value = response.json().await.unwrap();
    assert_eq!(b["association"], "created", "{b}");
    let (s, assoc) = server
        .admin(Method::GET, "/admin/v1/associations/via-gw", None)
        .await;
    assert_eq!(s, 200);
    // The same subscriber, bound by session, matches the gateway's identity.
    server.bind_session("127.1.0.7", "+447700900777").await;
    let mno = server.client("http1", "127.1.0.7");
    let (s, b) = server
        .resolve(&mno, &format!("code={CODE}&clientid=via-gw"))
        .await;
    assert_eq!(
        (s, &b["association"]),
        (200, &json!("existing")),
        "{b} {assoc}"
    );
}

#[tokio::test]
async fn spoofed_headers_from_untrusted_peers_create_nothing() {
    let server = TestServer::ready(&format!(
        "[mno]\nnetworks = [\"127.1.0.0/16\"]\ntrusted_gateways = [\"{GATEWAY}\"]"
    ))
    .await;
    let wifi = server.client("http2", "127.2.0.66");
    let spoofs = [
        ("X-MSISDN", "+447700900001"),
        ("X-Forwarded-For", "127.1.0.1"),
    ];
    for (i, (name, value)) in spoofs.iter().enumerate() {
        let response = wifi
            .get(server.url(&format!("code={CODE}&clientid=spoof-{i}")))
            .header(*name, *value)
            .send()
            .await
            .unwrap();
        let (s, b) = (response.status().as_u16(), response.json().await.unwrap());
        assert_error(s, &b, 403, "RETRY_ON_MNO_NETWORK");
        let (s, _) = server
            .admin(
                Method::GET,
                &format!("/admin/v1/associations/spoof-{i}"),
                None,
            )
            .await;
        assert_eq!(s, 404);
    }
    // An MSISDN header from inside the pool does not choose the subscriber.
    let unknown_sub = server.client("http2", "127.1.0.50");
    let response = unknown_sub
        .get(server.url(&format!("code={CODE}&clientid=spoof-pool")))
        .header("X-MSISDN", "+447700900001")
        .send()
        .await
        .unwrap();
    let (s, b) = (response.status().as_u16(), response.json().await.unwrap());
    assert_error(s, &b, 403, "SUBSCRIBER_UNKNOWN");
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "homecmp_spoof_attempts_total"), 3.0);
    assert_eq!(metric(&metrics, "homecmp_associations_created_total"), 0.0);
}

#[tokio::test]
async fn concurrent_first_requests_create_one_association() {
    let server = TestServer::ready("[auth]\nassociations_per_minute = 1000").await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let client = server.client(if i % 2 == 0 { "http1" } else { "http2" }, "127.1.0.1");
        let url = server.url(&format!("code={CODE}&clientid=racer"));
        tasks.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()["association"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap() == "created" {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "homecmp_associations_created_total"), 1.0);
}

#[tokio::test]
async fn revoked_association_is_stopped() {
    let server = TestServer::ready("").await;
    let mno = server.client("http1", "127.1.0.1");
    let wifi = server.client("http1", "127.2.0.1");
    let query = format!("code={CODE}&clientid=to-revoke");
    assert_eq!(server.resolve(&mno, &query).await.0, 200);
    assert_eq!(server.resolve(&wifi, &query).await.0, 200);
    let (s, b) = server
        .admin(Method::DELETE, "/admin/v1/associations/to-revoke", None)
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.resolve(&wifi, &query).await;
    assert_error(s, &b, 403, "RETRY_ON_MNO_NETWORK");
    let (s, _) = server
        .admin(Method::DELETE, "/admin/v1/associations/to-revoke", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn cap_supersedes_the_oldest_clientid() {
    let server = TestServer::ready("[auth]\nmax_clientids_per_subscriber = 2").await;
    let mno = server.client("http2", "127.1.0.1");
    for id in ["first", "second", "third"] {
        let (s, b) = server
            .resolve(&mno, &format!("code={CODE}&clientid={id}"))
            .await;
        assert_eq!((s, &b["association"]), (200, &json!("created")), "{b}");
    }
    let status = |id: &'static str| {
        let server = &server;
        async move {
            server
                .admin(Method::GET, &format!("/admin/v1/associations/{id}"), None)
                .await
                .0
        }
    };
    assert_eq!(
        (
            status("first").await,
            status("second").await,
            status("third").await
        ),
        (404, 200, 200)
    );
}

#[tokio::test]
async fn rebind_policy_moves_the_association() {
    let server = TestServer::ready("[auth]\non_mismatch = \"rebind\"").await;
    let first = server.client("http1", "127.1.0.1");
    let second = server.client("http1", "127.1.0.2");
    let query = format!("code={CODE}&clientid=moving");
    assert_eq!(
        server.resolve(&first, &query).await.1["association"],
        "created"
    );
    let (s, b) = server.resolve(&second, &query).await;
    assert_eq!((s, &b["association"]), (200, &json!("created")), "{b}");
    let (s, b) = server.resolve(&second, &query).await;
    assert_eq!((s, &b["association"]), (200, &json!("existing")), "{b}");
}

#[tokio::test]
async fn association_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::in_dir(dir.path(), "").await;
    server.put_code(CODE, TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let mno = server.client("http2", "127.1.0.1");
    let query = format!("code={CODE}&clientid=durable");
    assert_eq!(
        server.resolve(&mno, &query).await.1["association"],
        "created"
    );
    server.stop().await;

    let server = TestServer::in_dir(dir.path(), "").await;
    let wifi = server.client("http2", "127.2.0.1");
    let (s, b) = server.resolve(&wifi, &query).await;
    assert_eq!(
        (s, &b["association"], &b["target"]),
        (200, &json!("existing"), &json!(TARGET)),
        "{b}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors_and_alt_svc() {
    let server = TestServer::ready("").await;
    let client = server.client("http1", "127.2.0.1");
    let base = format!("https://localhost:{}", server.running.public_addr.port());
    let response = client.get(format!("{base}/other")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("alt-svc"));
    let response = client
        .post(server.url(&format!("code={CODE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let long = "x".repeat(5000);
    let response = client
        .get(server.url(&format!("code={long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
}

/// curl as a browser (its Accept) or an app: status, Location, body.
fn curl(server: &TestServer, from: &str, accept: &str, query: &str) -> (String, String, String) {
    let ca = server.running.ca_cert.as_ref().expect("generated CA");
    let out = std::process::Command::new(support::tools::require("curl", "Debian package curl"))
        .args(["-s", "--max-time", "10", "--interface", from, "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Accept: {accept}")])
        .args(["-w", "\n%{http_code} %{redirect_url}"])
        .arg(server.url(query).replace("localhost", "127.0.0.1"))
        .output()
        .expect("curl starts");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (status, location) = last.split_once(' ').unwrap();
    (status.to_owned(), location.to_owned(), body.to_owned())
}

// curl blocks its thread: the server needs the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_is_redirected_to_the_target_after_the_same_checks() {
    let server = TestServer::ready("").await;
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let scan = format!("code={CODE}&clientid=browser-app");
    // Not yet associated, from WiFi: the same refusal as for an app.
    let (status, location, body) = curl(&server, "127.2.0.1", browser, &scan);
    assert_eq!((status.as_str(), location.as_str()), ("403", ""), "{body}");
    assert!(body.contains("RETRY_ON_MNO_NETWORK"), "{body}");
    // First scan over the MNO network: associated, and sent to the target.
    let (status, location, body) = curl(&server, "127.1.0.1", browser, &scan);
    assert_eq!(
        (status.as_str(), location.as_str()),
        ("302", TARGET),
        "{body}"
    );
    assert_eq!(body, "");
    // An app keeps getting JSON.
    let (status, _, body) = curl(&server, "127.2.0.1", "application/json", &scan);
    assert_eq!(status, "200");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["association"], "existing");
    let (status, _, _) = curl(&server, "127.2.0.1", "*/*", &scan);
    assert_eq!(status, "200");
    server.stop().await;
}
