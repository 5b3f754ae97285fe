//! `homecmp admin` against a real server: every admin task from the
//! command line, its answer's JSON on stdout and exit 1 on a refusal; the
//! API's address and token found from the flags, `$HOMECMP_ADMIN_TOKEN` or
//! the server's own config.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod support;

use support::TestServer;

const CODE: &str = "2001000001promo";

/// `homecmp <args>` with no HOMECMP_* environment but `env`: exit code,
/// stdout, stderr.
fn homecmp(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_homecmp"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("HOMECMP") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_task_from_the_command_line() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, server.running.admin_token.expose()).unwrap();
    let admin = format!("--admin=http://{}", server.running.admin_addr);
    let token = format!("--token-file={}", token_file.display());
    let run = |args: &[&str]| {
        let mut all = vec!["admin", &admin, &token];
        all.extend_from_slice(args);
        homecmp(&all, &[])
    };
    let (code, out, err) = run(&["code", "put", CODE, "--target", "https://example.org/"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["target"], "https://example.org/");
    // With rules: the server takes them, and says why when one is wrong.
    let with_rules = |rules: &str| {
        let target = "https://example.org/";
        run(&[
            "code",
            "put",
            "2001000001cli",
            "--target",
            target,
            "--rules",
            rules,
        ])
    };
    let fr = r#"[{"languages": ["fr"], "target": "https://example.org/fr"}]"#;
    let (code, out, err) = with_rules(fr);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["rules"][0]["languages"][0], "fr", "{out}");
    let ftp = r#"[{"network": "on_net", "target": "ftp://example.org/"}]"#;
    let (code, out, _) = with_rules(ftp);
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"INVALID_RULES".into()),
        "{out}"
    );
    let (code, _, err) = with_rules("{}");
    assert_eq!(code, 64, "a usage error: {err}");
    assert!(err.contains("expected a JSON array of rules"), "{err}");
    let (code, out, _) = run(&["sessions", "put", "127.1.0.50", "--msisdn", "+447700900050"]);
    assert_eq!(code, 0, "{out}");
    let subscriber = json(&out)["subscriber"].clone();
    let (code, out, _) = run(&[
        "sessions",
        "put",
        "2001:db8:1:2::/64",
        "--msisdn",
        "+447700900051",
    ]);
    // Outside the default pools (127.1.0.0/16): refused, and said why.
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"NOT_IN_MNO_NETWORK".into()),
        "{out}"
    );
    let (code, out, _) = run(&["sessions", "get", "127.1.0.50"]);
    assert_eq!((code, &json(&out)["subscriber"]), (0, &subscriber), "{out}");
    // A first scan makes an association; the CLI reads it, counts it,
    // revokes it.
    let mno = server.client("http1", "127.1.0.50");
    let (status, body) = server
        .resolve(&mno, &format!("code={CODE}&clientid=cli-app"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (code, out, _) = run(&["associations", "get", "cli-app"]);
    assert_eq!((code, &json(&out)["subscriber"]), (0, &subscriber), "{out}");
    let (code, out, _) = run(&["code", "stats", CODE]);
    assert_eq!(code, 0, "{out}");
    assert!(json(&out).get("resolutions").is_some(), "{out}");
    let (code, out, _) = run(&["associations", "delete", "cli-app"]);
    assert_eq!((code, &json(&out)["revoked"]), (0, &true.into()), "{out}");
    let (code, out, _) = run(&["associations", "get", "cli-app"]);
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"NO_ASSOCIATION".into()),
        "{out}"
    );
    let (code, out, _) = run(&["erase", "+447700900050"]);
    assert_eq!(
        (code, &json(&out)["sessions_unbound"]),
        (0, &1.into()),
        "{out}"
    );
    let (code, _, _) = run(&["sessions", "delete", "127.1.0.50"]);
    assert_eq!(code, 1, "nothing left to delete");
    // Retention: the erasure left nothing to blank that ended a day ago.
    let (code, out, _) = run(&["retention", "--older-than", "1d"]);
    assert_eq!(
        (code, &json(&out)["records_rewritten"]),
        (0, &0.into()),
        "{out}"
    );
    let (code, out, _) = run(&["retention", "--older-than", "soon"]);
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"INVALID_QUERY".into()),
        "{out}"
    );
    let (code, out, _) = run(&["reload"]);
    assert_eq!(
        (code, &json(&out)["reloaded"][0]),
        (0, &"certificate".into()),
        "{out}"
    );
    let (code, out, _) = run(&["metrics"]);
    assert!(code == 0 && out.contains("homecmp_ready 1"), "{out}");
    let (code, out, _) = run(&["code", "delete", CODE]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&["code", "get", CODE]);
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"CODE_NOT_FOUND".into()),
        "{out}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_and_token_come_from_the_environment_or_the_config() {
    let server = TestServer::start().await;
    let token = server.running.admin_token.expose().clone();
    let admin = format!("--admin=http://{}", server.running.admin_addr);
    // $HOMECMP_ADMIN_TOKEN, no token file.
    let (code, out, err) = homecmp(
        &["admin", &admin, "reload"],
        &[("HOMECMP_ADMIN_TOKEN", token.as_str())],
    );
    assert_eq!(code, 0, "{out}{err}");
    // A wrong one is refused (401), exit 1.
    let (code, out, _) = homecmp(
        &["admin", &admin, "reload"],
        &[("HOMECMP_ADMIN_TOKEN", "wrong")],
    );
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"UNAUTHORIZED".into()),
        "{out}"
    );
    // The server's config: admin.listen and data_dir/admin.token.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homecmp.toml");
    let text = format!(
        "[server]\ndata_dir = \"{}\"\n[admin]\nlisten = \"{}\"\n",
        server.data_dir.display(),
        server.running.admin_addr
    );
    std::fs::write(&config, text).unwrap();
    let config_arg = format!("--config={}", config.display());
    let (code, out, err) = homecmp(&["admin", &config_arg, "sessions", "get", "127.1.0.9"], &[]);
    assert_eq!(
        (code, &json(&out)["code"]),
        (1, &"NO_SESSION".into()),
        "{out}{err}"
    );
    // No server there: exit 1, saying where it looked.
    let (code, _, err) = homecmp(
        &[
            "admin",
            "--admin=http://127.0.0.1:9",
            "--token-file",
            config.to_str().unwrap(),
            "reload",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
    assert!(Path::new(&server.data_dir).join("admin.token").exists());
    server.stop().await;
}

/// Shell completions and the manual page come from the same definition as
/// the parser: every command is in them.
#[test]
fn completions_and_the_manual_page_name_every_command() {
    let (code, script, err) = homecmp(&["completions", "bash"], &[]);
    assert_eq!(code, 0, "{err}");
    let syntax = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let (code, page, err) = homecmp(&["man"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(page.contains(".TH homecmp 1"), "{page}");
    for command in [
        "serve", "check", "admin", "codes", "log", "backup", "restore",
    ] {
        assert!(script.contains(command), "{command} not in the completions");
        assert!(page.contains(command), "{command} not in the manual page");
    }
    let (code, zsh, _) = homecmp(&["completions", "zsh"], &[]);
    assert!(code == 0 && zsh.contains("#compdef homecmp"));
}

/// The book's `homecmp admin` lines (docs/book/src/admin-api.md), exactly
/// as printed, beside a `homecmp.toml` that points at a running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_admin_commands_work_as_printed() {
    let chapter = include_str!("../docs/book/src/admin-api.md");
    let block = chapter
        .split_once("**From the command line**, `homecmp admin` does each of these")
        .and_then(|(_, rest)| rest.split_once("```sh\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("docs/book/src/admin-api.md's admin block")
        .0;
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\ndata_dir = \"{}\"\n[admin]\nlisten = \"{}\"\n",
        server.data_dir.display(),
        server.running.admin_addr
    );
    std::fs::write(dir.path().join("homecmp.toml"), text).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_homecmp")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir.path())
        .env("PATH", path);
    for (name, _) in std::env::vars() {
        if name.starts_with("HOMECMP") {
            command.env_remove(name);
        }
    }
    let run = command.output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let answers: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(answers.len(), 4, "{out}");
    assert_eq!(answers[1]["subscriber"], answers[0]["subscriber"]);
    assert_eq!(answers[2]["sessions_unbound"], 1, "{out}");
    assert_eq!(
        (&answers[3]["ready"], &answers[3]["sessions"]),
        (&Value::Bool(true), &Value::from(0)),
        "{out}"
    );
    server.stop().await;
}

/// `homecmp admin events --from 1`: the log's records as they are written,
/// streamed to stdout until the command is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_event_log_streams_from_the_command_line() {
    use std::io::BufRead;
    let server = TestServer::start().await;
    server
        .put_code("2001000001first", "https://example.org/1")
        .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .args(["admin", "events", "--from", "1"])
        .arg(format!("--admin=http://{}", server.running.admin_addr))
        .env("HOMECMP_ADMIN_TOKEN", server.running.admin_token.expose())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        // Until the record made after the command started.
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("2001000001second");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server
        .put_code("2001000001second", "https://example.org/2")
        .await;
    let joined = tokio::task::spawn_blocking(move || lines.join().unwrap());
    let within = std::time::Duration::from_secs(20);
    let seen = tokio::time::timeout(within, joined).await;
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.expect("the second record within 20 s").unwrap();
    assert_eq!(seen[0], "id: 1");
    assert_eq!(seen[1], "event: code_registered");
    assert!(seen[2].contains("2001000001first"), "{seen:?}");
    assert!(seen.iter().any(|l| l == "id: 2"), "{seen:?}");
    server.stop().await;
}
