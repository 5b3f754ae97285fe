//! Session bindings survive a restart, even after kill -9: the live ones
//! come back with their expiry, and what was removed (DELETE, erasure) or
//! expired meanwhile does not.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

mod support;

use support::binary::Served;

fn config(data_dir: &Path) -> String {
    format!(
        "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nrouting_prefixes = [\"{}\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        data_dir.display(),
        support::PREFIX,
    )
}

async fn bind(server: &Served, ip: &str, msisdn: &str, ttl_secs: u64) -> Value {
    let body = json!({"msisdn": msisdn, "ttl_secs": ttl_secs}).to_string();
    let path = format!("/admin/v1/sessions/{ip}");
    let (status, answer) = server.admin(Method::PUT, &path, Some(body.into())).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn session(server: &Served, ip: &str) -> (u16, Value) {
    let path = format!("/admin/v1/sessions/{ip}");
    server.admin(Method::GET, &path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_found_again_after_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir.path().join("data"));
    let first = Served::start(dir.path(), "first", &config);
    let kept = bind(&first, "127.1.0.21", "+447700900021", 3600).await;
    bind(&first, "127.1.0.22", "+447700900022", 1).await;
    bind(&first, "127.1.0.23", "+447700900023", 3600).await;
    bind(&first, "127.1.0.24", "+447700900024", 3600).await;
    // Rebound to another subscriber: the last binding is what is kept.
    bind(&first, "127.1.0.25", "+447700900025", 3600).await;
    let rebound = bind(&first, "127.1.0.25", "+447700900026", 3600).await;
    let (status, _) = first
        .admin(Method::DELETE, "/admin/v1/sessions/127.1.0.23", None)
        .await;
    assert_eq!(status, 200);
    let (status, erased) = first
        .admin(Method::DELETE, "/admin/v1/subscribers/+447700900024", None)
        .await;
    assert_eq!(status, 200, "{erased}");
    first.kill9();
    // Long enough for the one-second binding to expire.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let second = Served::start(dir.path(), "second", &config);
    let (status, found) = session(&second, "127.1.0.21").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        (&found["subscriber"], &found["expires"], &found["source"]),
        (&kept["subscriber"], &kept["expires"], &json!("admin"))
    );
    let (status, found) = session(&second, "127.1.0.25").await;
    assert_eq!(
        (status, &found["subscriber"]),
        (200, &rebound["subscriber"])
    );
    for gone in ["127.1.0.22", "127.1.0.23", "127.1.0.24"] {
        let (status, found) = session(&second, gone).await;
        assert_eq!(status, 404, "{gone}: {found}");
    }
    // And it identifies the subscriber: a first scan from its address
    // makes an association.
    let (status, code) = second
        .admin(
            Method::PUT,
            "/admin/v1/codes/2001000001promo",
            Some(json!({"target": "https://example.org/"}).to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{code}");
    let client = second.client("127.1.0.21");
    let url = second.resolve_url("code=2001000001promo&clientid=after-restart");
    let answer: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["association"], "created", "{answer}");
}
