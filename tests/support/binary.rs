//! The `homecmp` binary started as an operator starts it, ready line read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// What the first stdout line of `homecmp serve` says.
pub struct Ready {
    pub public: String,
    pub admin: String,
    pub token_file: String,
    pub ca: String,
}

/// Spawns `command` (`homecmp serve ...`, stderr already set) with stdout
/// piped, and waits for its ready line.
pub fn spawn_ready(mut command: Command) -> (Child, Ready) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("homecmp ready "),
        "unexpected first line {line:?}"
    );
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let ready = Ready {
        public: field("public"),
        admin: field("admin"),
        token_file: field("token_file"),
        ca: field("ca"),
    };
    (child, ready)
}

/// The `homecmp` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_homecmp");

/// A `homecmp serve` child process on a config file of its own, with the
/// clients a test needs. Killed (SIGKILL) when dropped.
pub struct Served {
    pub child: Child,
    pub ready: Ready,
    pub token: String,
    pub stderr_log: std::path::PathBuf,
}

impl Served {
    /// Writes `config` to `dir/name.toml` and starts the server on it,
    /// its stderr in `dir/name.log`; returns once it is ready.
    pub fn start(dir: &std::path::Path, name: &str, config: &str) -> Self {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let stderr_log = dir.join(format!("{name}.log"));
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("HOMECMP_ADMIN_TOKEN")
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        let (child, ready) = spawn_ready(command);
        let token = std::fs::read_to_string(&ready.token_file)
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            ready,
            token,
            stderr_log,
        }
    }

    /// An HTTP/2 client of the public listener from `local_ip`.
    pub fn client(&self, local_ip: &str) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ready.ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .http2_prior_knowledge()
            .local_address(local_ip.parse::<std::net::IpAddr>().unwrap())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub fn resolve_url(&self, query: &str) -> String {
        format!("{}/mc/v1/resolve?{query}", self.ready.public)
    }

    /// An admin API call with the token; the status and the body (JSON
    /// when it parses, else a JSON string).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.ready.admin))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        super::openapi::check(&method, path, status, &body);
        (status, body)
    }

    /// SIGKILL, and the exit reaped.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `homecmp log <args> --data-dir <data_dir>`: exit code, stdout, stderr.
pub fn log_command(args: &[&str], data_dir: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(BIN)
        .arg("log")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
