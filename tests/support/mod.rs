//! Test support: a real server on loopback port 0 and real clients, in one line.
//!
//! Client sockets bind to loopback addresses that play roles: 127.1.x.y is
//! the MNO subscriber pool, 127.2.x.y is WiFi, 127.3.0.1 a trusted gateway.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod config;
pub mod h3;
pub mod nats;
pub mod openapi;
pub mod raw;
pub mod tools;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use homecmp::config::Config;
use homecmp::server::{self, Running};
use serde_json::Value;

pub use config::{PREFIX, config_text};

/// The code `ready_server` registers, and where it points.
pub const CODE: &str = "2001000001promo";
pub const TARGET: &str = "https://example.org/promo";
pub const GATEWAY: &str = "127.3.0.1";

pub struct TestServer {
    pub running: Running,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config("").await
    }

    /// A server with `extra` TOML sections, [`CODE`] registered, and two
    /// subscribers bound: +447700900001 at 127.1.0.1, +447700900002 at 127.1.0.2.
    pub async fn ready(extra: &str) -> Self {
        let server = Self::with_config(extra).await;
        server.put_code(CODE, TARGET).await;
        server.bind_session("127.1.0.1", "+447700900001").await;
        server.bind_session("127.1.0.2", "+447700900002").await;
        server
    }

    /// A server on a fresh temp data dir with `extra` TOML sections.
    pub async fn with_config(extra: &str) -> Self {
        Self::with_sections("", extra).await
    }

    /// Like `with_config`, with `server_keys` added to `[server]`.
    pub async fn with_sections(server_keys: &str, extra: &str) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(temp.path(), server_keys, extra).await;
        server._temp = Some(temp);
        server
    }

    /// A server on `data_dir` (kept by the caller, e.g. across restarts).
    pub async fn in_dir(data_dir: &Path, extra: &str) -> Self {
        Self::start_in(data_dir, "", extra).await
    }

    /// A server on `data_dir` whose config is the file `path`, written
    /// from `server_keys` and `extra`: a reload reads the file again.
    pub async fn from_file(path: &Path, data_dir: &Path, server_keys: &str, extra: &str) -> Self {
        std::fs::write(path, config_text(data_dir, server_keys, extra)).unwrap();
        let config = Config::load(path).expect("valid test config");
        let running = server::start(config).await.expect("server starts");
        Self {
            running,
            data_dir: data_dir.to_owned(),
            _temp: None,
        }
    }

    async fn start_in(data_dir: &Path, server_keys: &str, extra: &str) -> Self {
        let text = config_text(data_dir, server_keys, extra);
        let config = Config::parse(&text, Vec::new()).expect("valid test config");
        let running = server::start(config).await.expect("server starts");
        Self {
            running,
            data_dir: data_dir.to_owned(),
            _temp: None,
        }
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }

    pub fn url(&self, query: &str) -> String {
        format!(
            "https://localhost:{}/mc/v1/resolve?{query}",
            self.running.public_addr.port()
        )
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.running.ca_cert.as_ref().expect("generated CA")).unwrap()
    }

    /// A client speaking `protocol` ("http1" or "http2") from `local_ip`.
    pub fn client(&self, protocol: &str, local_ip: &str) -> reqwest::Client {
        let builder = self.client_builder(local_ip);
        let builder = match protocol {
            "http1" => builder.http1_only(),
            "http2" => builder.http2_prior_knowledge(),
            other => panic!("unknown protocol {other}"),
        };
        builder.build().unwrap()
    }

    /// An HTTP/1.1 client from `local_ip` that opens a new connection for
    /// every request, resuming its TLS session with the tickets it got.
    pub fn client_per_request(&self, local_ip: &str) -> reqwest::Client {
        self.client_builder(local_ip)
            .http1_only()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }

    fn client_builder(&self, local_ip: &str) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .local_address(local_ip.parse::<IpAddr>().unwrap())
            .resolve("localhost", self.public_addr_for(local_ip))
            .timeout(std::time::Duration::from_secs(10))
    }

    /// Where a client on `local_ip` reaches the public listener: a server
    /// on `[::]` or `0.0.0.0` is reached on the loopback of the client's
    /// family.
    pub fn public_addr_for(&self, local_ip: &str) -> SocketAddr {
        let public = self.running.public_addr;
        if !public.ip().is_unspecified() {
            return public;
        }
        let loopback: IpAddr = match local_ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(loopback, public.port())
    }

    /// GET the resolve URL; returns status and JSON body.
    pub async fn resolve(&self, client: &reqwest::Client, query: &str) -> (u16, Value) {
        let response = client.get(self.url(query)).send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.expect("JSON body");
        (status, body)
    }

    /// A client of any protocol ("http1", "http2" or "http3") from
    /// `local_ip`, for tests that run the same rows over each.
    pub fn any_client(&self, protocol: &str, local_ip: &str) -> AnyClient<'_> {
        match protocol {
            "http3" => AnyClient::H3(self.h3_client(local_ip)),
            _ => AnyClient::Tcp(self, self.client(protocol, local_ip)),
        }
    }

    /// An HTTP/3 client bound to `local_ip`.
    pub fn h3_client(&self, local_ip: &str) -> h3::H3Client {
        h3::H3Client::new(&self.ca_pem(), local_ip, self.public_addr_for(local_ip))
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// An admin API call with the bearer token; returns status and body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let base = format!("http://{}", self.running.admin_addr);
        let token = self.running.admin_token.expose();
        admin_call(&base, token, method, path, body).await
    }

    /// `POST /admin/v1/codes:import{query}` with `body` as `content_type`.
    pub async fn import(&self, body: String, query: &str, content_type: &str) -> (u16, Value) {
        let path = format!("/admin/v1/codes:import{query}");
        let request = reqwest::Client::new()
            .post(self.admin_url(&path))
            .bearer_auth(self.running.admin_token.expose())
            .header("content-type", content_type)
            .body(body);
        checked(&reqwest::Method::POST, &path, request).await
    }

    /// `GET /readyz`: the status and the body.
    pub async fn readyz(&self) -> (u16, Value) {
        let request = reqwest::Client::new().get(self.admin_url("/readyz"));
        checked(&reqwest::Method::GET, "/readyz", request).await
    }

    pub async fn put_code(&self, code: &str, target: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/v1/codes/{code}"),
                Some(serde_json::json!({ "target": target })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn bind_session(&self, ip: &str, msisdn: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/v1/sessions/{ip}"),
                Some(serde_json::json!({ "msisdn": msisdn })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(status, 200);
        body.as_str().unwrap().to_owned()
    }
}

/// One client over whichever protocol a test runs: `resolve` GETs the
/// resolve URL with `query` and returns the status and JSON body.
pub enum AnyClient<'a> {
    Tcp(&'a TestServer, reqwest::Client),
    H3(h3::H3Client),
}

impl AnyClient<'_> {
    pub async fn resolve(&self, query: &str) -> (u16, Value) {
        match self {
            AnyClient::Tcp(server, client) => server.resolve(client, query).await,
            AnyClient::H3(client) => client
                .get(&format!("/mc/v1/resolve?{query}"))
                .await
                .expect("an HTTP/3 answer"),
        }
    }
}

/// The value of a metric line starting with `prefix` (name and labels), 0 if absent.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Runs radclient with `attributes` (one per line); `true` if it got an
/// Accounting-Response.
pub fn radclient(to: SocketAddr, secret: &str, attributes: &str) -> bool {
    let radclient = tools::require("radclient", "Debian package freeradius-utils");
    let mut child = std::process::Command::new(radclient)
        .args(["-t", "1", "-r", "1", "-D", "/usr/share/freeradius"])
        .arg(to.to_string())
        .args(["acct", secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("radclient starts");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(attributes.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answered = stdout.contains("Received Accounting-Response");
    assert_eq!(answered, out.status.success(), "{out:?}");
    answered
}

/// Polls `check` every 20 ms until it holds, and fails the test naming
/// `what` once `within` has passed: how a test waits for the server to do
/// something (a follower to apply, a flush, a token to arrive), never by a
/// fixed sleep, which is too short on a loaded machine and wasted on an
/// idle one.
pub async fn eventually(
    what: &str,
    within: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An admin API call to `base` (`http://host:port`) with `bearer`: the
/// status and the body (JSON, or its text as a string), held to the API
/// document ([`openapi::check`]). Every test's admin calls go through
/// this, whatever token they carry.
pub async fn admin_call(
    base: &str,
    bearer: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    checked(&method, path, request).await
}

/// Sends `request` (`method path` of the admin API): the status and the
/// body, held to the API document ([`openapi::check`]).
pub async fn checked(
    method: &reqwest::Method,
    path: &str,
    request: reqwest::RequestBuilder,
) -> (u16, Value) {
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    openapi::check(method, path, status, &body);
    (status, body)
}
