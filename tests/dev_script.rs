//! `scripts/dev`'s install path on a machine that lacks what the tests
//! need: run with a scratch `PATH` holding only the basics (and stand-ins
//! for `apt-get` and `pip3` that fail, as they do without a network), it
//! never ends silently: each failure names what is missing and how to get
//! it, and with everything present it says so and exits 0.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A scratch `PATH` directory: the real basics, failing package managers,
/// and a stand-in for each of `present`.
fn scratch(present: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let basics = [
        "bash",
        "env",
        "sed",
        "sort",
        "id",
        "dpkg",
        "dpkg-query",
        "python3",
        "cat",
        "dirname",
    ];
    for tool in basics {
        let real = which(tool).unwrap_or_else(|| panic!("{tool} is on every Debian machine"));
        std::os::unix::fs::symlink(real, dir.path().join(tool)).unwrap();
    }
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for manager in ["apt-get", "pip3", "sudo"] {
        script(manager, "echo offline >&2; exit 100");
    }
    for tool in present {
        match *tool {
            "nats-server" => script(tool, "echo 'nats-server: v2.15.1'"),
            _ => script(tool, "exit 0"),
        }
    }
    dir
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// `scripts/dev install` with only `dir` on `PATH`: its exit code and what
/// it printed.
fn install_with(dir: &Path) -> (Option<i32>, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let run = std::process::Command::new(dir.join("bash"))
        .arg(Path::new(root).join("scripts/dev"))
        .arg("install")
        .env_clear()
        .env("PATH", dir)
        .env("HOME", dir)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    (run.status.code(), said)
}

const BUILD: [&str; 3] = ["clang", "curl", "sccache"];

#[test]
fn without_nats_server_it_says_what_is_missing_and_where_to_get_it() {
    let dir = scratch(&BUILD);
    let (code, said) = install_with(dir.path());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("nats-server is missing"), "{said}");
    assert!(
        said.contains("https://github.com/nats-io/nats-server/releases"),
        "{said}"
    );
}

#[test]
fn without_radclient_it_names_the_package() {
    let dir = scratch(&[&BUILD[..], &["nats-server"]].concat());
    let (code, said) = install_with(dir.path());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("radclient is missing"), "{said}");
    assert!(
        said.contains("sudo apt-get install freeradius-utils"),
        "{said}"
    );
}

#[test]
fn with_everything_present_it_installs_nothing_and_says_so() {
    let tools = [
        "nats-server",
        "radclient",
        "h2load",
        "promtool",
        "systemd-analyze",
    ];
    let dir = scratch(&[&BUILD[..], &tools].concat());
    let (code, said) = install_with(dir.path());
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("installing"), "{said}");
    assert!(
        said.contains("everything the build and the tests need is installed"),
        "{said}"
    );
}
