//! The commands of the README and of the book (docs/book/src), run
//! exactly as printed: the README's curl walk-through against `homecmp
//! serve` on its embedded defaults (ports 8443 and 8444 on loopback, data in
//! ./homecmp-data of a fresh directory), then the book's admin, SRE and
//! backup commands beside that live server, then repair with the server
//! stopped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[path = "support/tools.rs"]
mod tools;

/// A markdown file of the checkout: its path, for messages, and its text.
struct Doc {
    path: &'static str,
    text: &'static str,
}

/// A [`Doc`] of the file at `path` (from the checkout's root).
macro_rules! doc {
    ($path:literal) => {
        Doc {
            path: $path,
            text: include_str!(concat!("../", $path)),
        }
    };
}

const README: Doc = doc!("README.md");
const CONFIGURE: Doc = doc!("docs/book/src/configure.md");
const ADMIN_API: Doc = doc!("docs/book/src/admin-api.md");
const EVENT_LOG: Doc = doc!("docs/book/src/event-log.md");
const RADIUS: Doc = doc!("docs/book/src/radius.md");

/// The first ```sh block after the line `heading` of `doc`.
fn sh_block_after(doc: &Doc, heading: &str) -> String {
    block_after(doc, heading, "sh")
}

/// The first ```lang block after the line `heading` of `doc`.
fn block_after(doc: &Doc, heading: &str, lang: &str) -> String {
    let path = doc.path;
    let section = doc
        .text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{path} has no {heading:?}"))
        .1;
    let block = section
        .split_once(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("{path}: no {lang} block after {heading:?}"))
        .1
        .split_once("\n```")
        .unwrap_or_else(|| panic!("{path}: the {lang} block after {heading:?} never ends"))
        .0;
    block.to_owned()
}

/// Kills the server when the test ends, whichever way it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `script` with bash (`-euo pipefail`) in `dir`: how it ended, and
/// its standard output.
fn bash_in(dir: &std::path::Path, script: &str) -> (std::process::Output, String) {
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    (run, out)
}

/// `homecmp <args>` started in `dir` with no HOMECMP_* environment; its
/// first line (the ready line) once it is serving.
fn serve_in(dir: &std::path::Path, args: &[&str]) -> (Killed, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_homecmp"));
    command
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("HOMECMP") {
            command.env_remove(name);
        }
    }
    let mut server = Killed(command.spawn().unwrap());
    let mut ready = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    (server, ready)
}

#[test]
fn the_curl_walkthrough_works_as_printed() {
    tools::require("curl", "Debian package curl");
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = serve_in(dir.path(), &["serve"]);
    assert!(
        ready
            .starts_with("homecmp ready public=https://127.0.0.1:8443 admin=http://127.0.0.1:8444"),
        "is another server on 8443/8444? {ready:?}"
    );

    let script = sh_block_after(&README, "## Try it with curl");
    assert!(script.contains("curl"), "{script}");
    let (run, out) = bash_in(dir.path(), &script);
    assert!(run.status.success(), "{run:?}");
    // What the README's comments promise, in order.
    let promised = [
        r#"{"code":"2001000001promo","target":"https://example.org/promo","seq":1}"#,
        r#""subscriber":"#,
        r#""code":"RETRY_ON_MNO_NETWORK""#,
        r#""association":"created""#,
        r#""association":"existing""#,
    ];
    let mut rest = &*out;
    for text in promised {
        let at = rest
            .find(text)
            .unwrap_or_else(|| panic!("{text} missing from the walk-through's output:\n{out}"));
        rest = &rest[at + text.len()..];
    }

    // `homecmp` on PATH, as an operator has it.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_homecmp"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let run_block = |doc: &Doc, after: &str| {
        let script = sh_block_after(doc, after);
        let run = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(run.status.success(), "{script}\n{run:?}");
        String::from_utf8_lossy(&run.stdout).into_owned()
    };
    let out = run_block(
        &EVENT_LOG,
        "The tools open the log read-only, so they run beside a live server:",
    );
    assert!(out.contains("association_created"), "{out}");
    let out = run_block(&ADMIN_API, "### Who may do what: roles and scoped tokens");
    let promised = [
        r#""code":"2001000001promo""#,
        r#""code":"FORBIDDEN""#,
        "lacks the role subscribers:erase",
        "marketing\tcodes:read,codes:write\t",
        "revoked marketing",
    ];
    let mut rest = &*out;
    for text in promised {
        let at = rest
            .find(text)
            .unwrap_or_else(|| panic!("{text} missing:\n{out}"));
        rest = &rest[at + text.len()..];
    }
    let out = run_block(
        &ADMIN_API,
        "### One code, different answers: resolution rules",
    );
    let promised = [
        r#""code":"2001000001poster""#,
        r#""target":"https://example.org/fr""#,
        r#""resolutions":1"#,
    ];
    let mut rest = &*out;
    for text in promised {
        let at = rest
            .find(text)
            .unwrap_or_else(|| panic!("{text} missing:\n{out}"));
        rest = &rest[at + text.len()..];
    }
    let out = run_block(&ADMIN_API, "### Who changed what, when: the audit trail");
    let promised = [
        r#""kind":"code_registered""#,
        r#""actor":"admin-token""#,
        r#""kind":"association_created""#,
        r#""next":null"#,
    ];
    let mut rest = &*out;
    for text in promised {
        let at = rest
            .find(text)
            .unwrap_or_else(|| panic!("{text} missing:\n{out}"));
        rest = &rest[at + text.len()..];
    }
    let out = run_block(&EVENT_LOG, "### Backup, restore, export and import");
    assert!(out.contains("by copy"), "{out}");
    assert!(out.contains("imported 3 events"), "{out}");
    drop(server);
    let out = run_block(
        &EVENT_LOG,
        "Retention, with the server stopped (it needs the log for writing):",
    );
    assert!(out.starts_with("blanked 0 of 3 records"), "{out}");
    let out = run_block(
        &EVENT_LOG,
        "The way out of such a log, with the server stopped:",
    );
    assert!(out.contains("kept events 1..=1"), "{out}");
}

#[test]
fn the_radius_demo_works_as_printed() {
    tools::require("radclient", "Debian package freeradius-utils");
    let dir = tempfile::tempdir().unwrap();
    let try_it = "**Try it on loopback** with Debian's `radclient` (package freeradius-utils).";
    std::fs::write(
        dir.path().join("radius-demo.toml"),
        block_after(&RADIUS, try_it, "toml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pgw.secret"), "readme-demo-secret\n").unwrap();
    let (_server, ready) = serve_in(dir.path(), &["serve", "--config", "radius-demo.toml"]);
    assert!(
        ready.starts_with("homecmp ready public=https://127.0.0.1:9443"),
        "are 9443, 9444 and UDP 1813 free? {ready:?}"
    );
    let script = block_after(&RADIUS, try_it, "sh");
    let (run, out) = bash_in(dir.path(), &script);
    assert!(run.status.success(), "{script}\n{run:?}");
    assert!(out.contains("Received Accounting-Response"), "{out}");
    assert!(out.contains(r#""network":"127.1.0.7/32""#), "{out}");
    assert!(out.contains(r#""source":"radius""#), "{out}");
    assert!(out.contains(r#""acct_session_id":"pgw1-0001""#), "{out}");
}

/// The config check as printed, in a directory holding the example; then
/// the same file with a misspelt key and a value of the wrong type: both
/// found, each at its line, exit 64.
#[test]
fn the_config_check_works_as_printed() {
    let script = sh_block_after(
        &CONFIGURE,
        "**Check a config before you start it**, as `nginx -t` does: `homecmp check`",
    );
    let dir = tempfile::tempdir().unwrap();
    let example = include_str!("../homecmp.example.toml");
    std::fs::write(dir.path().join("homecmp.example.toml"), example).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_homecmp")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let run = |script: &str| {
        let mut command = Command::new("bash");
        command
            .args(["-uo", "pipefail", "-c", script])
            .current_dir(dir.path())
            .env("PATH", &path);
        for (name, _) in std::env::vars() {
            if name.starts_with("HOMECMP") {
                command.env_remove(name);
            }
        }
        command.output().unwrap()
    };
    let ok = run(&script);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(out, "homecmp.toml: ok\n");
    // Line 3 misspelt, and a wrong type further down.
    let mut lines: Vec<String> = example.lines().map(str::to_owned).collect();
    let server = lines
        .iter()
        .position(|l| l == "[server]")
        .expect("[server]");
    lines.insert(server + 1, "lisen = \"0.0.0.0:443\"".into());
    let limits = lines
        .iter()
        .position(|l| l == "[limits]")
        .expect("[limits]");
    let cap = limits
        + lines[limits..]
            .iter()
            .position(|l| l.starts_with("max_connections ="))
            .expect("limits.max_connections");
    lines[cap] = "max_connections = \"many\"".into();
    std::fs::write(dir.path().join("homecmp.toml"), lines.join("\n")).unwrap();
    let broken = run("homecmp check --config homecmp.toml");
    let said = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(64), "{said}");
    let expected = [
        format!("homecmp.toml:{}:1: unknown field `lisen`", server + 2),
        format!("homecmp.toml:{}:19: invalid type: string \"many\"", cap + 1),
        "homecmp.toml: 2 problems".to_owned(),
    ];
    for line in expected {
        assert!(said.contains(&line), "{line:?} not in:\n{said}");
    }
}
