//! The `homecmp serve` binary as an operator runs it: config file, ready
//! line, SIGTERM drain, kill -9 durability, exit codes, and no MSISDN in
//! clear anywhere it writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_homecmp");
const CODE: &str = "2001000001promo";
const MSISDN: &str = "+447700900123";

struct Server {
    child: Child,
    public: String,
    admin: String,
    token: String,
    ca: PathBuf,
    stderr_log: PathBuf,
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("homecmp.toml");
    let text = format!(
        "[server]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[auth]\nassociations_per_minute = 10000\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary and waits for its ready line.
fn start(dir: &Path, log_name: &str) -> Server {
    let config = write_config(dir);
    let stderr_log = dir.join(log_name);
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .env_remove("HOMECMP_ADMIN_TOKEN")
        .stderr(std::fs::File::create(&stderr_log).unwrap());
    let (child, ready) = support::binary::spawn_ready(command);
    let token = std::fs::read_to_string(&ready.token_file)
        .unwrap()
        .trim()
        .to_owned();
    Server {
        public: ready.public,
        admin: ready.admin,
        ca: PathBuf::from(ready.ca),
        token,
        child,
        stderr_log,
    }
}

impl Server {
    fn client(&self, local_ip: &str) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .local_address(local_ip.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn resolve_url(&self, query: &str) -> String {
        // The certificate names 127.0.0.1; the ready line says https://127.0.0.1:PORT.
        format!("{}/mc/v1/resolve?{query}", self.public)
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        support::admin_call(&self.admin, &self.token, method, path, body).await
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("server did not exit within {limit:?}");
    }
}

/// Every byte the server wrote: data dir files and its logs.
fn assert_no_msisdn_in_clear(dir: &Path) {
    let digits = MSISDN.trim_start_matches('+');
    let national = &digits[2..];
    let mut stack = vec![dir.to_owned()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_some_and(|e| e == "toml") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for needle in [digits, national] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "MSISDN in clear in {}",
                path.display()
            );
        }
    }
    assert!(
        files > 5,
        "expected the data dir and logs, found {files} files"
    );
}

#[tokio::test]
async fn serve_drains_on_sigterm_and_never_writes_an_msisdn() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "first.log");
    let (s, b) = server
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/codes/{CODE}"),
            Some(json!({"target": "https://example.org/p"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server
        .admin(
            reqwest::Method::PUT,
            "/admin/v1/sessions/127.1.0.1",
            Some(json!({"msisdn": MSISDN})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let mno = server.client("127.1.0.1");
    let response = mno
        .get(server.resolve_url(&format!("code={CODE}&clientid=bin-app")))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["association"], "created", "{body}");
    // A spoofed header with the MSISDN must not end up in the logs either.
    let wifi = server.client("127.2.0.1");
    let _ = wifi
        .get(server.resolve_url(&format!("code={CODE}&clientid=spoof")))
        .header("X-MSISDN", MSISDN)
        .send()
        .await
        .unwrap();
    let metrics = server.admin(reqwest::Method::GET, "/metrics", None).await;
    assert!(
        metrics
            .1
            .as_str()
            .unwrap()
            .contains("homecmp_spoof_attempts_total 1")
    );

    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    let log = std::fs::read_to_string(&server.stderr_log).unwrap();
    assert!(log.contains("shutting down"), "{log}");

    // The log tools see the association; the restarted server serves it.
    let export = Command::new(BIN)
        .args(["log", "export", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"kind\":\"association_created\"") && l.contains("bin-app"))
    );
    std::fs::write(dir.path().join("export.jsonl"), &text).unwrap();

    let mut server = start(dir.path(), "second.log");
    let wifi = server.client("127.2.0.1");
    let response = wifi
        .get(server.resolve_url(&format!("code={CODE}&clientid=bin-app")))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["association"], "existing", "{body}");
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    assert_no_msisdn_in_clear(dir.path());
}

#[tokio::test]
async fn every_acknowledged_association_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), "crash.log");
    let (s, _) = server
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/codes/{CODE}"),
            Some(json!({"target": "https://example.org/p"})),
        )
        .await;
    assert_eq!(s, 200);
    let mut acknowledged = Vec::new();
    // Acknowledged so far, over every task.
    let so_far = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for sub in 0..40u32 {
        let ip = format!("127.1.1.{}", sub + 1);
        let (s, b) = server
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/v1/sessions/{ip}"),
                Some(json!({"msisdn": format!("+4477009{sub:05}")})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let client = server.client(&ip);
        let base = server.resolve_url("");
        let so_far = so_far.clone();
        tasks.spawn(async move {
            let mut created = Vec::new();
            for n in 0..1000 {
                let id = format!("crash-{sub}-{n}");
                let Ok(response) = client
                    .get(format!("{base}code={CODE}&clientid={id}"))
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(body) = response.json::<Value>().await else {
                    break;
                };
                if body["association"] == "created" {
                    created.push(id);
                    so_far.fetch_add(1, Ordering::Relaxed);
                }
            }
            created
        });
    }
    support::eventually("creations under way", Duration::from_secs(20), async || {
        so_far.load(Ordering::Relaxed) > 200
    })
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    while let Some(done) = tasks.join_next().await {
        acknowledged.extend(done.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "only {} acknowledged before the kill",
        acknowledged.len()
    );

    let export = Command::new(BIN)
        .args(["log", "export", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let text = String::from_utf8(export.stdout).unwrap();
    let stored: std::collections::HashSet<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "association_created")
        .map(|v| v["clientid"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged associations lost: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    let verify = Command::new(BIN)
        .args(["log", "verify", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn invalid_config_lists_every_error_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\nrouting_prefixes = [\"2000000001\"]\n[mno]\nnetworks = [\"300.0.0.0/8\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for key in ["server.listen", "server.routing_prefixes", "mno.networks"] {
        assert!(stderr.contains(key), "{key} missing from {stderr}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn serve_refuses_a_broken_log_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("data").join(homecmp::LOG_DIR);
    {
        let db = rocksdb::DB::open(&homecmp::store::log::db_options(), &log_dir).unwrap();
        db.put(1u64.to_be_bytes(), b"\x01not an event").unwrap();
    }
    let config = write_config(dir.path());
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("corrupt record at sequence 1"), "{stderr}");
}
