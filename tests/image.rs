//! The container image `scripts/image` builds from scratch with buildah:
//! its config (non-root user, entrypoint, ports, volume), and its files
//! alone run the server to its ready line as that user (the image's root
//! filesystem, `chroot` as uid 10001: podman cannot start containers in
//! this sandbox, which forbids the rlimits it sets).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

mod support;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the test's container and image however the test ends.
struct Cleanup<'a> {
    buildah: &'a str,
    container: Option<String>,
    image: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new(self.buildah).args(args).output();
        };
        if let Some(container) = &self.container {
            quiet(&["umount", container]);
            quiet(&["rm", container]);
        }
        quiet(&["rmi", &self.image]);
    }
}

#[test]
fn the_image_runs_the_server_as_a_non_root_user_from_its_own_files() {
    let buildah = support::tools::require("buildah", "Debian's buildah");
    let buildah = buildah.to_str().unwrap();
    let image = format!("localhost/homecmp-test:{}", std::process::id());
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let built = Command::new(Path::new(&root).join("scripts/image"))
        .env("HOMECMP_BIN", env!("CARGO_BIN_EXE_homecmp"))
        .env("IMAGE", &image)
        .output()
        .unwrap();
    let mut cleanup = Cleanup {
        buildah,
        container: None,
        image: image.clone(),
    };
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&run(buildah, &["inspect", "--type", "image", &image])).unwrap();
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/homecmp"])
    );
    assert!(config["Volumes"].get("/data").is_some(), "{config}");
    assert!(config["ExposedPorts"].get("8443/udp").is_some(), "{config}");
    let container = run(buildah, &["from", &image]);
    cleanup.container = Some(container.clone());
    let mount = run(buildah, &["mount", &container]);
    let chroot = support::tools::require("chroot", "coreutils");
    let mut server = Command::new(chroot)
        .args(["--userspec=10001:10001", &mount, "/usr/local/bin/homecmp"])
        .args(["serve", "--config", "/etc/homecmp/homecmp.toml"])
        .env_clear()
        .env("HOMECMP__SERVER__LISTEN", "127.0.0.1:0")
        .env("HOMECMP__ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        ready.starts_with("homecmp ready public=https://127.0.0.1:"),
        "{ready:?}"
    );
    assert!(ready.contains("token_file=/data/admin.token"), "{ready}");
}
