//! The operator console, end to end in a real browser (Debian's chromium,
//! headless, driven over WebDriver by chromedriver) against the real
//! server: sign in, health, look up a clientid and a subscriber, register
//! and load codes, a code's scans as a chart, the event log live. And the
//! API calls it is made of, each on its own: the live event stream, the
//! status, a subscriber's clientids.

mod support;

#[path = "support/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use reqwest::Method;
use support::{CODE, TARGET, TestServer};
use webdriver::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_does_the_daily_tasks_in_a_real_browser() {
    let chromedriver = support::tools::require("chromedriver", "Debian's chromium-driver");
    let server = TestServer::ready("").await;
    let browser = Browser::start(&chromedriver).await;
    let console = format!("http://{}/admin/console", server.running.admin_addr);
    browser.goto(&console).await;

    // A wrong token is refused, and said so.
    browser.type_into("#token", "not-the-token").await;
    browser.click("#sign-in button").await;
    browser
        .wait_text("#sign-in-error", |t| t.starts_with("401 UNAUTHORIZED"))
        .await;
    // The admin token opens the console on the node's health.
    let token = server.running.admin_token.expose().to_owned();
    browser.type_into("#token", &token).await;
    browser.click("#sign-in button").await;
    let health = browser.wait_text("#health", |t| t.contains("codes1")).await;
    assert!(health.contains("ready, version"), "{health}");
    assert!(health.contains("not configured (single node)"), "{health}");

    // The event log, live: watching before anything changes.
    browser.click("#watch").await;
    browser.wait_text("#watch-state", |t| t == "watching").await;

    // Register a code, with a rule.
    let launch = "2001000001launch";
    browser.type_into("#code", launch).await;
    browser
        .type_into("#target", "https://example.org/launch")
        .await;
    let rules = r#"[{"languages": ["fr"], "target": "https://example.org/fr/launch"}]"#;
    browser.type_into("#rules", rules).await;
    browser.click("#save-code").await;
    browser
        .wait_text("#code-result", |t| t.starts_with("saved 2001000001launch"))
        .await;
    let (status, code) = server
        .admin(Method::GET, &format!("/admin/v1/codes/{launch}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(code["target"], "https://example.org/launch");
    assert_eq!(code["rules"][0]["target"], "https://example.org/fr/launch");
    // Its event arrives in the live list.
    let events = browser
        .wait_text("#events", |t| t.contains("code_registered_with_rules"))
        .await;
    assert!(events.contains(launch), "{events}");

    // Three scans of it from a subscriber on the MNO network: the count
    // and the chart follow.
    let mno = server.client("http2", "127.1.0.1");
    for _ in 0..3 {
        let query = format!("code={launch}&clientid=console-app");
        let (status, body) = server.resolve(&mno, &query).await;
        assert_eq!(status, 200, "{body}");
    }
    browser.wait_text("#scans-total", |t| t == "3").await;
    let tallest = "return Math.max(0, ...[...document.querySelectorAll('#scans-chart rect')]\
                   .map(r => Number(r.getAttribute('height'))));";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while browser.run(tallest).await.as_f64().unwrap_or(0.0) <= 0.0 {
        assert!(std::time::Instant::now() < deadline, "no bar drawn");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Look up the clientid, then its subscriber by MSISDN.
    let (_, association) = server
        .admin(Method::GET, "/admin/v1/associations/console-app", None)
        .await;
    let subscriber = association["subscriber"].as_str().unwrap().to_owned();
    browser.type_into("#clientid", "console-app").await;
    browser.click("#lookup-clientid button").await;
    browser
        .wait_text("#clientid-result", |t| t.contains(&subscriber))
        .await;
    browser.type_into("#msisdn", "+447700900001").await;
    browser.click("#lookup-subscriber button").await;
    let found = browser
        .wait_text("#subscriber-result", |t| t.contains("console-app"))
        .await;
    assert!(found.contains(&subscriber), "{found}");
    // The association's creation came by the live list too.
    browser
        .wait_text("#events", |t| t.contains("association_created"))
        .await;

    // Load an existing code into the form; an unknown one is refused.
    browser.type_into("#code", CODE).await;
    browser.click("#load-code").await;
    browser
        .wait_text("#code-result", |t| t == format!("loaded {CODE}"))
        .await;
    let target = browser
        .run("return document.getElementById('target').value;")
        .await;
    assert_eq!(target, TARGET);
    browser.type_into("#code", "2001000001nosuch").await;
    browser.click("#load-code").await;
    browser
        .wait_text("#code-result", |t| t.starts_with("404 CODE_NOT_FOUND"))
        .await;
    server.stop().await;
}

/// `GET /admin/v1/events`: each record once it is durable, as a
/// server-sent event with its sequence as `id`; `from` replays from a
/// sequence; the stream stays open across a quiet log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_each_record_as_it_is_written() {
    let server = TestServer::ready("").await;
    let url = format!(
        "http://{}/admin/v1/events?from=1",
        server.running.admin_addr
    );
    let mut stream = reqwest::Client::new()
        .get(url)
        .bearer_auth(server.running.admin_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut read_until = async |wanted: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !seen.contains(wanted) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let chunk = tokio::time::timeout(left, stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {wanted:?} in {seen}"))
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        seen.clone()
    };
    // What the log holds: the code TestServer::ready registered.
    let first = read_until("event: code_registered\n").await;
    assert!(first.starts_with("id: 1\n"), "{first}");
    // After a quiet second, a new record arrives on the open stream.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.put_code("2001000001later", TARGET).await;
    let later = read_until("2001000001later").await;
    let ids: Vec<u64> = later
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|n| n.parse().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "every record once, in order: {later}");
    server.stop().await;
}

/// The status and a subscriber's clientids, as the console and scripts
/// read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_a_subscribers_clientids() {
    let server = TestServer::ready("").await;
    let mno = server.client("http1", "127.1.0.2");
    for clientid in ["phone-b", "phone-a"] {
        let (status, _) = server
            .resolve(&mno, &format!("code={CODE}&clientid={clientid}"))
            .await;
        assert_eq!(status, 200);
    }
    let (status, subscriber) = server
        .admin(Method::GET, "/admin/v1/subscribers/+447700900002", None)
        .await;
    assert_eq!(status, 200, "{subscriber}");
    assert_eq!(
        subscriber["clientids"],
        serde_json::json!(["phone-a", "phone-b"])
    );
    let (status, nobody) = server
        .admin(Method::GET, "/admin/v1/subscribers/+447700900999", None)
        .await;
    assert_eq!(
        (status, &nobody["clientids"]),
        (200, &serde_json::json!([]))
    );
    let (status, bad) = server
        .admin(Method::GET, "/admin/v1/subscribers/not-a-number", None)
        .await;
    assert_eq!(
        (status, &bad["code"]),
        (400, &serde_json::json!("INVALID_MSISDN"))
    );

    let (status, node) = server.admin(Method::GET, "/admin/v1/status", None).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["ready"], true);
    assert_eq!(node["associations"], 2);
    assert_eq!(node["subscribers"], 1);
    assert_eq!(node["codes"], 1);
    assert_eq!(node["sessions"], 2);
    assert_eq!(node["cluster"], serde_json::Value::Null);
    assert_eq!(node["radius"], serde_json::Value::Null);
    assert!(node["log"]["last_seq"].as_u64().unwrap() >= 3);
    server.stop().await;
}
