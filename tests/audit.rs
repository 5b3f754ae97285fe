//! The audit trail over the real server: changes made with scoped tokens
//! carry their token's name; `GET /admin/v1/audit` filters by actor, code,
//! subscriber, kind and time, newest first, page by page; an erased
//! subscriber leaves nothing to find; the index comes back after a restart
//! and is rebuilt for a log imported without one; `homecmp audit` asks the
//! same from the command line.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

mod support;

use support::{CODE, TARGET, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_homecmp");

fn homecmp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("HOMECMP_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn create_token(server: &TestServer, name: &str, roles: &[&str]) -> String {
    let dir = server.data_dir.display().to_string();
    let mut args = vec!["token", "create", "--data-dir", &dir, "--name", name];
    for role in roles {
        args.extend(["--role", role]);
    }
    let (code, out, err) = homecmp(&args);
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

async fn call(
    server: &TestServer,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let base = format!("http://{}", server.running.admin_addr);
    support::admin_call(&base, bearer, method, path, body).await
}

/// The events of one audit query, as (kind, actor or "", code or "").
async fn audit(
    server: &TestServer,
    bearer: &str,
    query: &str,
) -> (Vec<(String, String, String)>, Value) {
    let (status, body) = call(
        server,
        bearer,
        Method::GET,
        &format!("/admin/v1/audit?{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{query}: {body}");
    let events = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |name: &str| e[name].as_str().unwrap_or("").to_owned();
            (text("kind"), text("actor"), text("code"))
        })
        .collect();
    (events, body["next"].clone())
}

fn ev(kind: &str, actor: &str, code: &str) -> (String, String, String) {
    (kind.into(), actor.into(), code.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_changed_what_and_when() {
    // A data dir of the test's own: the server restarts on it.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = TestServer::in_dir(&data_dir, "").await;
    server.put_code(CODE, TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let marketing = create_token(&server, "marketing", &["codes:read", "codes:write"]);
    let dpo = create_token(&server, "dpo", &["subscribers:erase", "audit:read"]);
    let auditor = create_token(&server, "auditor", &["audit:read"]);
    let admin = server.running.admin_token.expose().to_owned();

    let spring = "2001000001spring";
    let target = json!({"target": "https://example.org/spring"});
    let put = format!("/admin/v1/codes/{spring}");
    assert_eq!(
        call(&server, &marketing, Method::PUT, &put, Some(target))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&server, &marketing, Method::DELETE, &put, None)
            .await
            .0,
        200
    );
    // A first scan (no actor: the client made it), then the admin token
    // revokes it.
    let mno = server.client("http2", "127.1.0.1");
    let (status, body) = server
        .resolve(&mno, &format!("code={CODE}&clientid=audit-app"))
        .await;
    assert_eq!(status, 200, "{body}");
    let revoke = "/admin/v1/associations/audit-app";
    assert_eq!(
        call(&server, &admin, Method::DELETE, revoke, None).await.0,
        200
    );

    // By actor, newest first.
    let (events, next) = audit(&server, &auditor, "actor=marketing").await;
    assert_eq!(
        events,
        [
            ev("code_removed", "marketing", spring),
            ev("code_registered", "marketing", spring)
        ]
    );
    assert_eq!(next, Value::Null);
    // By code: the test server's own registration came first, by admin-token.
    let (events, _) = audit(&server, &auditor, &format!("code={CODE}")).await;
    assert_eq!(events, [ev("code_registered", "admin-token", CODE)]);
    // By subscriber (its MSISDN, keyed as the server keys it): the
    // association made by the scan and the revocation by the admin token.
    let (events, _) = audit(&server, &auditor, "subscriber=%2B447700900001").await;
    let kinds: Vec<_> = events
        .iter()
        .map(|(k, a, _)| (k.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("association_revoked", "admin-token"),
            ("association_created", "")
        ]
    );
    // By kind, one at a time: each page says where the next starts.
    let (first, next) = audit(&server, &auditor, "kind=code_registered&limit=1").await;
    assert_eq!(first, [ev("code_registered", "marketing", spring)]);
    let (second, next) = audit(
        &server,
        &auditor,
        &format!("kind=code_registered&limit=1&before={next}"),
    )
    .await;
    assert_eq!(second, [ev("code_registered", "admin-token", CODE)]);
    assert_eq!(next, Value::Null);
    // By time: nothing before the server existed.
    let (events, _) = audit(&server, &auditor, "until=2020-01-01T00:00:00Z").await;
    assert!(events.is_empty());
    let (events, _) = audit(
        &server,
        &auditor,
        "since=2020-01-01T00:00:00Z&actor=marketing",
    )
    .await;
    assert_eq!(events.len(), 2);

    // Refusals: a query that does not parse, a token without audit:read.
    for (query, code) in [
        ("kind=code_renamed", "INVALID_QUERY"),
        ("since=yesterday", "INVALID_QUERY"),
        ("limit=0", "INVALID_QUERY"),
        ("colour=red", "INVALID_QUERY"),
        ("subscriber=nobody", "INVALID_MSISDN"),
        ("code=x", "INVALID_CODE"),
    ] {
        let (status, body) = call(
            &server,
            &auditor,
            Method::GET,
            &format!("/admin/v1/audit?{query}"),
            None,
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }
    let (status, body) = call(&server, &marketing, Method::GET, "/admin/v1/audit", None).await;
    assert_eq!(status, 403);
    assert!(
        body["message"].as_str().unwrap().contains("audit:read"),
        "{body}"
    );

    // Erasure: the subscriber leaves the trail with its history.
    let erase = "/admin/v1/subscribers/+447700900001";
    let (status, body) = call(&server, &dpo, Method::DELETE, erase, None).await;
    assert_eq!(status, 200, "{body}");
    let (events, _) = audit(&server, &auditor, "subscriber=%2B447700900001").await;
    assert!(events.is_empty(), "{events:?}");
    let (events, _) = audit(&server, &auditor, "kind=redacted").await;
    assert_eq!(events, [ev("redacted", "", ""), ev("redacted", "", "")]);

    // From the command line.
    let base = format!("--admin=http://{}", server.running.admin_addr);
    let token_file = server.data_dir.join("auditor.token");
    std::fs::write(&token_file, &auditor).unwrap();
    let token = format!("--token-file={}", token_file.display());
    let (code, out, err) = homecmp(&[
        "audit",
        &base,
        &token,
        "--actor",
        "marketing",
        "--limit",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["events"][0]["kind"], "code_removed");
    let before = page["next"].as_u64().unwrap().to_string();
    let (code, out, _) = homecmp(&[
        "audit",
        &base,
        &token,
        "--actor",
        "marketing",
        "--before",
        &before,
    ]);
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["events"][0]["kind"], "code_registered");
    assert_eq!(page["next"], Value::Null);

    // A restart: the index is the log's, found again as it was.
    let (before_restart, _) = audit(&server, &auditor, "").await;
    drop(mno);
    server.stop().await;
    let server = TestServer::in_dir(&data_dir, "").await;
    let (after, _) = audit(&server, &auditor, "").await;
    // The stop wrote the scan counts; the rest is as it was.
    let not_counts = |events: Vec<(String, String, String)>| {
        let kept = events
            .into_iter()
            .filter(|(kind, _, _)| kind != "scans_counted");
        kept.collect::<Vec<_>>()
    };
    assert_eq!(not_counts(after), not_counts(before_restart));
    server.stop().await;

    // An export imported into a new data dir (written without the index):
    // indexed when the server opens it.
    let (code, export, err) = homecmp(&[
        "log",
        "--data-dir",
        &data_dir.display().to_string(),
        "export",
    ]);
    assert_eq!(code, 0, "{err}");
    let export_file = dir.path().join("export.jsonl");
    std::fs::write(&export_file, export).unwrap();
    let imported = dir.path().join("imported");
    let from = export_file.display().to_string();
    let (code, _, err) = homecmp(&[
        "log",
        "--data-dir",
        &imported.display().to_string(),
        "import",
        "--from",
        &from,
    ]);
    assert_eq!(code, 0, "{err}");
    let server = TestServer::in_dir(&imported, "").await;
    let admin = server.running.admin_token.expose().to_owned();
    let (events, _) = audit(&server, &admin, "actor=marketing").await;
    assert_eq!(
        events,
        [
            ev("code_removed", "marketing", spring),
            ev("code_registered", "marketing", spring)
        ]
    );
    server.stop().await;
}
