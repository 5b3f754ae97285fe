//! Resolution rules over the real server: one code, different answers by
//! language, platform, network and time, the first matching rule winning;
//! set with the admin API and the bulk import, shown back and exported;
//! counted per rule; kept across a restart from the snapshot and across a
//! full replay; and an unauthenticated request to such a code refused as
//! to any other.

use reqwest::Method;
use serde_json::{Value, json};

mod support;

use support::TestServer;

const POSTER: &str = "2001000001poster";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15";
const PIXEL: &str = "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0";

/// The poster of the issue: French speakers to the French page, iPhones to
/// the App Store, subscribers on the operator's network to the zero-rated
/// page, everyone to the campaign until it ends (next year), and a rule
/// whose time is over.
fn poster() -> Value {
    json!({
        "target": "https://example.org/default",
        "rules": [
            {"languages": ["fr"], "target": "https://example.org/fr"},
            {"platforms": ["ios"], "target": "https://apps.apple.com/app/id1"},
            {"network": "on_net", "target": "https://zero.mno.example/"},
            {"until": "2020-01-01T00:00:00Z", "target": "https://example.org/past"},
            {"from": "2020-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z", "target": "https://example.org/campaign"},
        ]
    })
}

async fn scan(
    server: &TestServer,
    client: &reqwest::Client,
    language: &str,
    agent: &str,
) -> (u16, Value) {
    let response = client
        .get(server.url(&format!("code={POSTER}&clientid=rules-app")))
        .header("accept-language", language)
        .header("user-agent", agent)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_answers_each_phone_by_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::in_dir(&data, "").await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let path = format!("/admin/v1/codes/{POSTER}");
    let (status, body) = server.admin(Method::PUT, &path, Some(poster())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"][4]["from"], "2020-01-01T00:00:00Z", "{body}");

    // The first scan, on the operator's network, from an Android phone in
    // German: the zero-rated page (rules 0 and 1 do not hold).
    let mno = server.client("http2", "127.1.0.1");
    let (status, body) = scan(&server, &mno, "de-DE,de;q=0.9", PIXEL).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["association"], "created");
    assert_eq!(body["target"], "https://zero.mno.example/");
    // The same app over WiFi (off-net), each phone where it belongs.
    let wifi = server.client("http1", "127.2.0.1");
    for (language, agent, target) in [
        ("fr-CA,en;q=0.5", PIXEL, "https://example.org/fr"),
        ("en-GB,fr;q=0", IPHONE, "https://apps.apple.com/app/id1"),
        ("de", PIXEL, "https://example.org/campaign"),
        ("de", PIXEL, "https://example.org/campaign"),
    ] {
        let (status, body) = scan(&server, &wifi, language, agent).await;
        assert_eq!(
            (status, body["target"].as_str()),
            (200, Some(target)),
            "{language} {agent}: {body}"
        );
    }
    // No clientid: refused as any code is, whatever its rules.
    let response = wifi
        .get(server.url(&format!("code={POSTER}")))
        .header("accept-language", "fr")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Counted per rule, beside the code's own counts.
    let (status, stats) = server
        .admin(Method::GET, &format!("{path}/stats"), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    let per_rule: Vec<u64> = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resolutions"].as_u64().unwrap())
        .collect();
    assert_eq!(per_rule, [1, 1, 1, 0, 2]);
    assert_eq!(stats["resolutions"], 5);

    // Refused rules, with the reason.
    for (rules, reason) in [
        (
            json!([{"languages": ["fr_FR"], "target": "https://example.org/"}]),
            "not a language",
        ),
        (
            json!([{"platforms": ["symbian"], "target": "https://example.org/"}]),
            "symbian",
        ),
        (json!([{"target": "javascript:alert(1)"}]), "target"),
        (
            json!([{"from": "tomorrow", "target": "https://example.org/"}]),
            "RFC 3339",
        ),
        (
            json!(vec![json!({"target": "https://example.org/"}); 17]),
            "at most 16",
        ),
    ] {
        let body = json!({"target": "https://example.org/", "rules": rules});
        let (status, answer) = server.admin(Method::PUT, &path, Some(body)).await;
        assert_eq!(status, 400, "{reason}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(reason),
            "{reason}: {answer}"
        );
    }

    // The bulk import takes rules; the export gives them back.
    let rows = [
        json!({"code": "2001000001tv", "target": "https://example.org/tv", "rules": [{"platforms": ["android"], "target": "https://play.google.com/store/apps/details?id=x"}]}),
        json!({"code": "2001000001bad", "target": "https://example.org/", "rules": [{"network": "moon", "target": "https://example.org/"}]}),
    ];
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let (_, report) = server.import(body, "", "application/x-ndjson").await;
    assert_eq!(report["errors"][0]["line"], 2, "{report}");
    let one = format!("{}\n", rows[0]);
    let (status, report) = server.import(one, "", "application/x-ndjson").await;
    assert_eq!(status, 200, "{report}");
    let (_, export) = server
        .admin(Method::GET, "/admin/v1/codes:export", None)
        .await;
    let export = export.as_str().unwrap().to_owned();
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tv = lines.iter().find(|l| l["code"] == "2001000001tv").unwrap();
    assert_eq!(tv["rules"], rows[0]["rules"], "{export}");
    let poster_line = lines.iter().find(|l| l["code"] == POSTER).unwrap();
    assert_eq!(poster_line["rules"], poster()["rules"], "{export}");

    // A restart from the snapshot (the stop writes it, and the counts):
    // rules and per-rule counts as they were.
    drop((mno, wifi));
    server.stop().await;
    assert!(data.join("index.snapshot").exists());
    let server = TestServer::in_dir(&data, "").await;
    let (_, stats) = server
        .admin(Method::GET, &format!("{path}/stats"), None)
        .await;
    assert_eq!(stats["rules"][4]["resolutions"], 2, "{stats}");
    let wifi = server.client("http1", "127.2.0.1");
    let (_, body) = scan(&server, &wifi, "fr", PIXEL).await;
    assert_eq!(body["target"], "https://example.org/fr");
    drop(wifi);
    server.stop().await;
    // And from the log alone.
    std::fs::remove_file(data.join("index.snapshot")).unwrap();
    let server = TestServer::in_dir(&data, "").await;
    let (_, stats) = server
        .admin(Method::GET, &format!("{path}/stats"), None)
        .await;
    assert_eq!(stats["rules"][0]["resolutions"], 2, "{stats}");
    let (_, code) = server.admin(Method::GET, &path, None).await;
    assert_eq!(code["rules"], poster()["rules"]);
    // A plain registration takes the rules away.
    let plain = json!({"target": "https://example.org/plain"});
    assert_eq!(server.admin(Method::PUT, &path, Some(plain)).await.0, 200);
    let wifi = server.client("http1", "127.2.0.1");
    let (_, body) = scan(&server, &wifi, "fr", IPHONE).await;
    assert_eq!(body["target"], "https://example.org/plain");
    drop(wifi);
    server.stop().await;
}
