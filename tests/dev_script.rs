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
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let run = std::process::Command::new(dir.join("bash"))
        .arg(Path::new(&root).join("scripts/dev"))
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
        "buildah",
        "chromedriver",
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

/// `scripts/dev cluster` (with the binary this build made): three nodes
/// on a three-server JetStream cluster, where each is printed; an
/// association made on node a is honoured on node b; SIGTERM stops them
/// all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_dev_cluster_starts_three_nodes_that_share_associations() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // Below the ephemeral range the other tests' port-0 sockets come from.
    let base = 20_000 + (std::process::id() % 400) * 20;
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let mut script = std::process::Command::new("bash")
        .arg(Path::new(&root).join("scripts/dev"))
        .arg("cluster")
        .env("HOMECMP_BIN", env!("CARGO_BIN_EXE_homecmp"))
        .env("CLUSTER_DIR", dir.path())
        .env("CLUSTER_PORT", base.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(script.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.starts_with("node"), "{header}");
    let nodes: Vec<Vec<String>> = (0..3)
        .map(|_| {
            let line = lines.next().expect("a node's line").unwrap();
            line.split_whitespace().map(str::to_owned).collect()
        })
        .collect();
    let admin = |node: usize, path: &str| {
        let token = std::fs::read_to_string(&nodes[node][3]).unwrap();
        reqwest::Client::new()
            .get(format!("{}{path}", nodes[node][2]))
            .bearer_auth(token.trim())
    };
    let put = |node: usize, path: &str, body: serde_json::Value| {
        let token = std::fs::read_to_string(&nodes[node][3]).unwrap();
        reqwest::Client::new()
            .put(format!("{}{path}", nodes[node][2]))
            .bearer_auth(token.trim())
            .json(&body)
    };
    let code = "2001000001promo";
    let status = put(
        0,
        &format!("/admin/v1/codes/{code}"),
        serde_json::json!({"target": "https://example.org/"}),
    )
    .send()
    .await
    .unwrap()
    .status();
    assert_eq!(status, 200);
    let status = put(
        0,
        "/admin/v1/sessions/127.1.0.71",
        serde_json::json!({"msisdn": "+447700900071"}),
    )
    .send()
    .await
    .unwrap()
    .status();
    assert_eq!(status, 200);
    let ca = std::fs::read(dir.path().join("a/tls/ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .local_address("127.1.0.71".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let url = format!(
        "{}/mc/v1/resolve?code={code}&clientid=dev-cluster",
        nodes[0][1]
    );
    let answer: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["association"], "created", "{answer}");
    let mut found = None;
    for _ in 0..250 {
        let response = admin(1, "/admin/v1/associations/dev-cluster")
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            found = Some(response.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(found.is_some(), "node b never saw node a's association");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &script.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(script.wait().unwrap().success());
    for node in &nodes {
        let addr = node[2].trim_start_matches("http://");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still listens"
        );
    }
}

/// `scripts/cluster-bench`, shortened, with the binaries this build made
/// (debug: the figures mean nothing, the run must work): every node
/// creates, the probe sees creations propagate, the totals are printed.
#[test]
fn scripts_cluster_bench_runs_and_reports() {
    let homecmp = Path::new(env!("CARGO_BIN_EXE_homecmp"));
    let loadgen = homecmp.with_file_name("homecmp-loadgen");
    assert!(
        loadgen.exists(),
        "{}: run the tests with `cargo test --workspace` (scripts/dev test does)",
        loadgen.display()
    );
    // Beside the other test's range (below 28,200) and the nats tests' (30,000 up).
    let base = 28_200 + (std::process::id() % 20) * 40;
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let run = std::process::Command::new("bash")
        .arg(Path::new(&root).join("scripts/cluster-bench"))
        .env("HOMECMP_BIN", homecmp)
        .env("LOADGEN_BIN", &loadgen)
        .env("CLUSTER_PORT", base.to_string())
        .env("DURATION", "3s")
        .env("PROBES", "5")
        .env("SUBSCRIBERS", "8")
        .env("CONNECTIONS", "4")
        .env("STREAMS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{run:?}");
    for line in [
        "probe: 5 creations on a",
        "node a: ",
        "node b: ",
        "node c: ",
        "total: ",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    assert!(
        !stdout.contains(" 0 created"),
        "every node created:\n{stdout}"
    );
}
