//! Bulk code import and export against the real server (admin API and the
//! `homecmp codes` CLI): batches written whole or not at all, every bad row
//! named by its line, dry runs write nothing, a client that breaks off
//! leaves only whole batches, and an export imports back to the same codes.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use support::{TestServer, eventually};
use tokio::io::AsyncWriteExt;

/// How long the server may take to write what a test waits for.
const WITHIN: Duration = Duration::from_secs(10);

fn ndjson(range: std::ops::Range<u32>) -> String {
    range
        .map(|i| {
            format!("{{\"code\":\"2001000001bulk{i}\",\"target\":\"https://example.org/{i}\"}}\n")
        })
        .collect()
}

async fn import(
    server: &TestServer,
    body: String,
    query: &str,
    content_type: &str,
) -> (u16, Value) {
    server.import(body, query, content_type).await
}

async fn code_exists(server: &TestServer, code: &str) -> bool {
    let (status, _) = server
        .admin(Method::GET, &format!("/admin/v1/codes/{code}"), None)
        .await;
    status == 200
}

async fn codes_held(server: &TestServer) -> usize {
    let url = format!("http://{}/admin/v1/codes:export", server.running.admin_addr);
    let text = reqwest::Client::new()
        .get(url)
        .bearer_auth(server.running.admin_token.expose())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_rejects_its_batch_only_and_is_named_by_line() {
    let server = TestServer::start().await;
    let mut body = ndjson(0..25_000);
    // Line 12,345 (in the second batch of 10,000) is not a code of ours.
    let bad = "{\"code\":\"2001000009x\",\"target\":\"https://example.org/x\"}";
    let mut lines: Vec<&str> = body.lines().collect();
    lines[12_344] = bad;
    body = lines.join("\n");

    let last_seq = |metrics: String| support::metric(&metrics, "homecmp_log_last_sequence ");
    server.put_code(support::CODE, support::TARGET).await;
    let before = last_seq(server.metrics().await);
    assert_eq!(before, 1.0);
    let (status, report) = import(
        &server,
        body.clone(),
        "?dry_run=true",
        "application/x-ndjson",
    )
    .await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(
        (report["applied"].as_u64(), report["dry_run"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(
        last_seq(server.metrics().await),
        before,
        "a dry run writes nothing"
    );

    let (status, report) = import(&server, body, "", "application/x-ndjson").await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["rows"], 25_000);
    assert_eq!(report["applied"], 15_000);
    assert_eq!(report["skipped"], 9_999);
    assert_eq!(
        (
            report["batches_applied"].as_u64(),
            report["batches_rejected"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(report["errors"][0]["line"], 12_345);
    assert_eq!(report["errors"][0]["batch"], 2);
    assert!(
        report["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("routing prefix"),
        "{report}"
    );
    assert!(code_exists(&server, "2001000001bulk9999").await);
    assert!(
        !code_exists(&server, "2001000001bulk10000").await,
        "its batch was not written"
    );
    assert!(code_exists(&server, "2001000001bulk24999").await);
    assert_eq!(codes_held(&server).await, 15_001);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_are_read_and_each_bad_one_reported() {
    let server = TestServer::start().await;
    let body = "code,target\n\
                2001000001a,https://example.org/a\n\
                2001000001b,\"https://example.org/b?x=1,2\"\n\
                \n\
                2001000001c\n\
                2001000001!,https://example.org/d\n\
                2001000001e,ftp://example.org/e\n";
    let (status, report) = import(&server, body.into(), "", "text/csv").await;
    assert_eq!(status, 422, "{report}");
    let lines: Vec<u64> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [5, 6, 7]);
    assert!(
        report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["batch"] == 1),
        "{report}"
    );
    assert_eq!(
        report["applied"], 0,
        "one batch, with bad rows: nothing written"
    );
    let good = "code,target\n2001000001a,https://example.org/a\n2001000001b,\"https://example.org/b?x=1,2\"\n";
    let (status, report) = import(&server, good.into(), "", "text/csv").await;
    assert_eq!(
        (status, report["applied"].as_u64()),
        (200, Some(2)),
        "{report}"
    );
    let (_, b) = server
        .admin(Method::GET, "/admin/v1/codes/2001000001b", None)
        .await;
    assert_eq!(b["target"], "https://example.org/b?x=1,2");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_breaks_off_leaves_whole_batches() {
    let server = TestServer::start().await;
    let lines = ndjson(0..15_000);
    let mut socket = tokio::net::TcpStream::connect(server.running.admin_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /admin/v1/codes:import HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        server.running.admin_token.expose(),
        lines.len() * 2
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(lines.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    // The first batch is written whole while the body is still coming.
    eventually("the first batch written", WITHIN, async || {
        codes_held(&server).await == 10_000
    })
    .await;
    drop(socket);
    // The 5,000 rows after it are not, once the client is gone: nothing
    // says when the server has seen the connection end, so this waits
    // long enough for a server that wrongly writes the rest to do so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(codes_held(&server).await, 10_000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_what_it_imports() {
    let a = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codes.ndjson");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(ndjson(0..3000).as_bytes())
        .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, a.running.admin_token.expose()).unwrap();
    let homecmp = |args: &[&str], admin: &std::net::SocketAddr, token: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_homecmp"))
            .args(args)
            .arg(format!("--admin=http://{admin}"))
            .arg(format!("--token-file={}", token.display()))
            .output()
            .unwrap()
    };
    let file_arg = file.to_str().unwrap();
    let run = homecmp(
        &["codes", "import", file_arg],
        &a.running.admin_addr,
        &token,
    );
    assert!(run.status.success(), "{run:?}");
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["applied"], 3000);
    let exported = homecmp(&["codes", "export"], &a.running.admin_addr, &token);
    assert!(exported.status.success());
    assert_eq!(
        String::from_utf8_lossy(&exported.stdout).lines().count(),
        3000
    );

    // Into another server: the same codes and targets.
    let b = TestServer::start().await;
    let b_token = dir.path().join("b-token");
    std::fs::write(&b_token, b.running.admin_token.expose()).unwrap();
    let export_file = dir.path().join("export.ndjson");
    std::fs::write(&export_file, &exported.stdout).unwrap();
    let run = homecmp(
        &["codes", "import", export_file.to_str().unwrap()],
        &b.running.admin_addr,
        &b_token,
    );
    assert!(run.status.success(), "{run:?}");
    let again = homecmp(&["codes", "export"], &b.running.admin_addr, &b_token);
    let strip_seq = |out: &[u8]| -> Vec<(String, String)> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["code"].as_str().unwrap().to_owned(),
                    v["target"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(strip_seq(&again.stdout), strip_seq(&exported.stdout));
    // A bad file: exit 1 with the report.
    std::fs::write(&file, "{\"code\":\"nope\"}\n").unwrap();
    let run = homecmp(
        &["codes", "import", file_arg, "--dry-run"],
        &a.running.admin_addr,
        &token,
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stdout).contains("\"line\":1"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_are_counted_per_code_written_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = "[limits]\nfirst_scans_per_sec = 0\nshutdown_grace_ms = 200\n";
    let server = TestServer::in_dir(&data, extra).await;
    server.put_code(support::CODE, support::TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let query = format!("code={}&clientid=stats-1", support::CODE);
    let (status, _) = server
        .any_client("http1", "127.1.0.1")
        .resolve(&query)
        .await;
    assert_eq!(status, 200);
    for (protocol, times) in [("http2", 3), ("http3", 2)] {
        let client = server.any_client(protocol, "127.2.0.1");
        for _ in 0..times {
            assert_eq!(client.resolve(&query).await.0, 200);
        }
    }
    // Refused requests are not resolutions.
    let stranger = server.any_client("http1", "127.2.0.9");
    let refused = format!("code={}&clientid=nobody", support::CODE);
    assert_eq!(stranger.resolve(&refused).await.0, 403);
    let expected = serde_json::json!({
        "code": support::CODE,
        "resolutions": 6,
        "http1": {"associated": 0, "first_scan": 1},
        "http2": {"associated": 3, "first_scan": 0},
        "http3": {"associated": 2, "first_scan": 0},
    });
    let path = format!("/admin/v1/codes/{}/stats", support::CODE);
    let (status, stats) = server.admin(Method::GET, &path, None).await;
    assert_eq!((status, &stats), (200, &expected));
    // A new target keeps the counts; a graceful stop writes them.
    server
        .put_code(support::CODE, "https://example.org/new")
        .await;
    server.stop().await;

    let export = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(["log", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let export = String::from_utf8_lossy(&export.stdout);
    let counted: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "scans_counted")
        .collect();
    assert_eq!(counted.len(), 1, "{export}");
    assert_eq!(counted[0]["codes"][0]["http2"]["associated"], 3);

    // After a start from the snapshot, and after a full replay.
    for snapshot in [true, false] {
        if !snapshot {
            std::fs::remove_file(homecmp::store::snapshot::path(&data)).unwrap();
        }
        let server = TestServer::in_dir(&data, extra).await;
        let (_, stats) = server.admin(Method::GET, &path, None).await;
        assert_eq!(stats, expected, "snapshot: {snapshot}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_written_every_flush_period_without_a_stop() {
    let server = TestServer::with_sections("scan_stats_flush_secs = 1", "").await;
    server.put_code(support::CODE, support::TARGET).await;
    server.bind_session("127.1.0.1", "+447700900001").await;
    let query = format!("code={}&clientid=flushed", support::CODE);
    assert_eq!(
        server
            .any_client("http1", "127.1.0.1")
            .resolve(&query)
            .await
            .0,
        200
    );
    let last_seq = |m: String| support::metric(&m, "homecmp_log_last_sequence ");
    let before = last_seq(server.metrics().await);
    eventually("a scans_counted event", WITHIN, async || {
        last_seq(server.metrics().await) > before
    })
    .await;
    assert_eq!(
        last_seq(server.metrics().await),
        before + 1.0,
        "one scans_counted event"
    );
    // Over a flush period with no resolution: the test is that nothing
    // happens, so it waits the period out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        last_seq(server.metrics().await),
        before + 1.0,
        "nothing new, nothing written"
    );
    server.stop().await;
}

/// Every line of an export, read as the body arrives.
async fn export_lines(server: &TestServer) -> Vec<String> {
    let url = format!("http://{}/admin/v1/codes:export", server.running.admin_addr);
    let mut response = reqwest::Client::new()
        .get(url)
        .bearer_auth(server.running.admin_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_more_than_a_page_has_every_code_once_by_seq() {
    let server = TestServer::start().await;
    let n = homecmp::codes::EXPORT_PAGE as u32 + 2_500;
    let (status, report) = import(&server, ndjson(0..n), "", "application/x-ndjson").await;
    assert_eq!((status, report["applied"].as_u64()), (200, Some(n.into())));
    let lines = export_lines(&server).await;
    assert_eq!(lines.len(), n as usize);
    let mut codes = std::collections::HashSet::new();
    let seqs: Vec<u64> = lines
        .iter()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let code = row["code"].as_str().unwrap().to_owned();
            let i = code.strip_prefix("2001000001bulk").unwrap();
            assert_eq!(row["target"], format!("https://example.org/{i}"));
            assert!(codes.insert(code), "each code once");
            row["seq"].as_u64().unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "in the order they were registered"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_reads_a_page_only_when_the_body_asks_for_it() {
    use futures_util::StreamExt;
    let server = TestServer::start().await;
    for i in ["f", "b", "d"] {
        server
            .put_code(&format!("2001000001{i}"), "https://example.org/")
            .await;
    }
    let store = server.running.app.store.clone();
    let pages = homecmp::codes::export(store, 2);
    futures_util::pin_mut!(pages);
    let page = |bytes: bytes::Bytes| -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["code"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let first = pages.next().await.unwrap().unwrap();
    assert_eq!(page(first), ["2001000001f", "2001000001b"]);
    // Registered after the first page was read, before the next is: in a
    // later one. An export built whole before its first byte would not
    // have it.
    server.put_code("2001000001c", "https://example.org/").await;
    let mut rest = Vec::new();
    while let Some(chunk) = pages.next().await {
        let codes = page(chunk.unwrap());
        assert!(codes.len() <= 2, "{codes:?}");
        rest.extend(codes);
    }
    assert_eq!(rest, ["2001000001d", "2001000001c"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_row_is_named_by_its_line_and_batch() {
    let server = TestServer::start().await;
    let mut lines: Vec<String> = ndjson(0..10_010).lines().map(str::to_owned).collect();
    let bad = [
        (3, "{\"code\": \"2001000001x\""),
        (
            5,
            "{\"code\":\"2001000001!\",\"target\":\"https://example.org/\"}",
        ),
        (
            7,
            "{\"code\":\"2001000001y\",\"target\":\"ftp://example.org/\"}",
        ),
        (
            9,
            "{\"code\":\"2001000009z\",\"target\":\"https://example.org/\"}",
        ),
        (10_003, "not json"),
    ];
    for (line, text) in bad {
        lines[line - 1] = text.to_owned();
    }
    lines[10_005] = "x".repeat(homecmp::codes::MAX_LINE + 1);
    let (status, report) = import(&server, lines.join("\n"), "", "application/x-ndjson").await;
    assert_eq!(status, 422, "{report}");
    let named: Vec<(u64, u64)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["batch"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        named,
        [(3, 1), (5, 1), (7, 1), (9, 1), (10_003, 2), (10_006, 2)],
        "{report}"
    );
    assert_eq!(report["rows"], 10_010, "an unreadable line is a row too");
    server.stop().await;
}

/// Sends `head` and then `body` in two parts over a raw connection, calling
/// `between` once the first part is in; the answer's status and JSON body.
async fn import_in_two_parts(
    server: &TestServer,
    first: &str,
    second: &str,
    between: impl AsyncFnOnce(),
) -> (u16, Value) {
    use tokio::io::AsyncReadExt;
    let mut socket = tokio::net::TcpStream::connect(server.running.admin_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /admin/v1/codes:import HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {}\r\n\
         content-type: application/x-ndjson\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        server.running.admin_token.expose(),
        first.len() + second.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(first.as_bytes()).await.unwrap();
    between().await;
    socket.write_all(second.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).expect(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_store_fails_to_write_is_named_with_its_lines() {
    let server = TestServer::start().await;
    let first = ndjson(0..10_000);
    // A blank line: not a row, but it moves the lines of the second batch.
    let second = format!("\n{}", ndjson(10_000..15_000));
    let (status, body) = import_in_two_parts(&server, &first, &second, async || {
        // The first batch is written as soon as its last row is in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while codes_held(&server).await != 10_000 {
            assert!(std::time::Instant::now() < deadline, "batch 1 not written");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server.running.app.store.log().fail_next_write();
    })
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("batch 2 (lines 10002 to 15001) was not written"),
        "{message}"
    );
    let report = &body["report"];
    assert_eq!(
        report["not_written"],
        serde_json::json!({
            "batch": 2,
            "first_line": 10_002,
            "last_line": 15_001,
            "error": report["not_written"]["error"],
        })
    );
    assert_eq!(
        (
            report["applied"].as_u64(),
            report["batches_applied"].as_u64()
        ),
        (Some(10_000), Some(1)),
        "{report}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_outlasts_the_idle_timeout_is_not_cut() {
    // A connection with no request in flight is closed after 400 ms; the
    // export's body is in flight until sent, however slowly it is read.
    let server =
        TestServer::with_config("[limits]\nidle_timeout_ms = 400\nheader_read_timeout_ms = 200\n")
            .await;
    let n = homecmp::codes::EXPORT_PAGE as u32 + 10_000;
    let (status, _) = import(&server, ndjson(0..n), "", "application/x-ndjson").await;
    assert_eq!(status, 200);
    let url = format!("http://{}/admin/v1/codes:export", server.running.admin_addr);
    let mut response = reqwest::Client::new()
        .get(url)
        .bearer_auth(server.running.admin_token.expose())
        .send()
        .await
        .unwrap();
    let mut text = response.chunk().await.unwrap().unwrap().to_vec();
    // A reader that stops: far more than the page can fit in the socket
    // buffers is still to come.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    while let Some(chunk) = response.chunk().await.expect("not cut") {
        text.extend_from_slice(&chunk);
    }
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), n as usize);
    server.stop().await;
}
