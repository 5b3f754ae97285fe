//! The command line: every flag, its default, and the checks that need no
//! network. Owns parsing only; nothing here opens a socket.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::classes::{DEFAULT_MIX, Mix, Via};
pub use crate::client::Protocol;
use crate::error::Error;

/// Run time when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "homecmp-loadgen",
    version,
    about = "Load generator for homecmp: legitimate and spoofed traffic, every answer checked",
    long_about = "Load generator for homecmp: legitimate and spoofed traffic, every answer checked \
against DESIGN §4.\n\nExit status: 0 all answers as expected; 1 a correctness failure (a legit \
request refused, or any class answered otherwise than prescribed; 429/503 are reported apart); \
2 a SECURITY failure (a request that must be refused was resolved); 3 the run could not be \
carried out (setup or connection failure); 64 bad usage."
)]
pub struct Args {
    // --- server ---
    /// Public HTTPS URL of the server (`public=` of its ready line).
    #[arg(
        long,
        default_value = "https://127.0.0.1:8443",
        help_heading = "Server"
    )]
    pub url: String,
    /// Admin API URL (`admin=` of the ready line).
    #[arg(long, default_value = "http://127.0.0.1:8444", help_heading = "Server")]
    pub admin: String,
    /// File holding the admin bearer token (`token_file=` of the ready line).
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub token_file: Option<PathBuf>,
    /// The admin bearer token itself; wins over --token-file.
    #[arg(
        long,
        env = "HOMECMP_ADMIN_TOKEN",
        hide_env_values = true,
        help_heading = "Server"
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust (`ca=` of the ready line).
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub ca: PathBuf,
    /// TLS server name to verify; default the host of --url.
    #[arg(long, help_heading = "Server")]
    pub server_name: Option<String>,
    /// Allow a target outside loopback (127.0.0.0/8, ::1). Floods are for your own servers only.
    #[arg(long, help_heading = "Server")]
    pub allow_remote: bool,

    // --- setup ---
    /// Load a saved setup instead of creating one (sessions are re-bound, a sample of its
    /// associations is checked).
    #[arg(long, value_name = "FILE", help_heading = "Setup")]
    pub setup: Option<PathBuf>,
    /// Save the setup (codes, subscribers, associated clientids) to FILE as JSON.
    #[arg(long, value_name = "FILE", help_heading = "Setup")]
    pub save_setup: Option<PathBuf>,
    /// Stop after the setup phase.
    #[arg(long, help_heading = "Setup")]
    pub setup_only: bool,
    /// Legitimate clientids to associate.
    #[arg(long, default_value_t = 256, help_heading = "Setup")]
    pub clientids: usize,
    /// Clientids per subscriber (at most the server's max_clientids_per_subscriber, default 8).
    #[arg(long, default_value_t = 8, help_heading = "Setup")]
    pub per_subscriber: usize,
    /// Codes to register.
    #[arg(long, default_value_t = 16, help_heading = "Setup")]
    pub codes: usize,
    /// Routing prefix of the codes (one the server owns).
    #[arg(long, default_value = "2001000001", help_heading = "Setup")]
    pub prefix: String,
    /// Number of the first subscriber: its MSISDN and its place in --mno-range. Setups
    /// that share subscribers supersede each other's clientids; give each its own range.
    #[arg(long, default_value_t = 0, help_heading = "Setup")]
    pub first_subscriber: usize,
    /// The server's MNO subscriber pool (`mno.networks`); subscribers get addresses from it.
    #[arg(long, default_value = "127.1.0.0/16", help_heading = "Setup")]
    pub mno_range: IpNet,
    /// Create associations through this trusted gateway (`mno.trusted_gateways`) with MSISDN
    /// and X-Forwarded-For enrichment, instead of first scans from the subscribers' addresses.
    #[arg(long, value_name = "IP", help_heading = "Setup")]
    pub gateway: Option<IpAddr>,
    /// Enrichment header the server believes from gateways (`mno.msisdn_header`).
    #[arg(long, default_value = "X-MSISDN", help_heading = "Setup")]
    pub msisdn_header: String,
    /// Subscribers set up in parallel.
    #[arg(long, default_value_t = 16, help_heading = "Setup")]
    pub setup_concurrency: usize,

    // --- traffic ---
    /// Traffic classes and their weights, e.g. `legit=90,spoofed-msisdn=10`. Classes: legit,
    /// no-clientid, unknown-clientid, malformed, spoofed-msisdn, spoofed-forwarded, mismatch,
    /// first-scan-wifi, first-scan (creations: not in the default mix).
    #[arg(long, default_value = DEFAULT_MIX, help_heading = "Traffic")]
    pub mix: Mix,
    /// Protocols, comma-separated; connections are spread over them round robin.
    #[arg(
        short,
        long,
        value_delimiter = ',',
        default_value = "h2",
        help_heading = "Traffic"
    )]
    pub protocol: Vec<Protocol>,
    /// Connections (HTTP/1.1: one request in flight each).
    #[arg(short = 'c', long, default_value_t = 32, help_heading = "Traffic")]
    pub connections: usize,
    /// Requests in flight per HTTP/2 or HTTP/3 connection.
    #[arg(short = 'm', long, default_value_t = 1, help_heading = "Traffic")]
    pub streams: usize,
    /// Open loop: this many requests per second in total, latency measured from each
    /// request's intended send time. Without it: closed loop, as fast as answers come.
    #[arg(short, long, help_heading = "Traffic")]
    pub rate: Option<f64>,
    /// Measured run time (after warm-up). Default 10s when --requests is not given either.
    #[arg(short, long, value_parser = humantime::parse_duration, help_heading = "Traffic")]
    pub duration: Option<Duration>,
    /// Measured requests to send (after warm-up); with --duration, whichever ends first.
    #[arg(short = 'n', long, help_heading = "Traffic")]
    pub requests: Option<u64>,
    /// Warm-up before measuring: answers are still checked, but not in the table.
    #[arg(short, long, value_parser = humantime::parse_duration, default_value = "0s", help_heading = "Traffic")]
    pub warmup: Duration,
    /// A new connection (TCP+TLS or QUIC handshake) for every request.
    #[arg(long, help_heading = "Traffic")]
    pub disable_keepalive: bool,
    /// Where legitimate requests leave from: half from WiFi sources and half from the
    /// subscribers' own MNO addresses (`both`), or all from one side. `wifi` with
    /// `--sources 1` is thousands of subscribers behind one address (a hotspot, a NAT).
    #[arg(long, value_enum, default_value = "both", help_heading = "Traffic")]
    pub legit_from: LegitFrom,
    /// No TLS session resumption: every handshake is a full one.
    #[arg(long, help_heading = "Traffic")]
    pub no_tls_resumption: bool,
    /// WiFi (non-MNO) source ranges, comma-separated; must lie outside --mno-range.
    #[arg(
        long = "wifi-range",
        value_delimiter = ',',
        default_value = "127.2.0.0/16",
        help_heading = "Traffic"
    )]
    pub wifi_ranges: Vec<IpNet>,
    /// Distinct WiFi source addresses to use from those ranges.
    #[arg(long, default_value_t = 256, help_heading = "Traffic")]
    pub sources: usize,
    /// Give up on a request (connection included) after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", help_heading = "Traffic")]
    pub timeout: Duration,

    // --- output ---
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub json: Option<PathBuf>,
    /// Draw throughput and latency over time as SVG into FILE.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub plot: Option<PathBuf>,
    /// Width of the time slices of the plot and the JSON timeline.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", help_heading = "Output")]
    pub interval: Duration,
    /// No progress bars.
    #[arg(short, long, help_heading = "Output")]
    pub quiet: bool,
    /// Also report this process's CPU use (the server's, to compare requests per core).
    #[arg(long, value_name = "PID", help_heading = "Output")]
    pub server_pid: Option<u32>,
}

impl Args {
    /// The checks that need no network; every problem at once.
    pub fn check(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if self.connections == 0 {
            problems.push("--connections must be at least 1".to_owned());
        }
        if self.streams == 0 {
            problems.push("--streams must be at least 1".to_owned());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            problems.push("--rate must be a positive number of requests per second".to_owned());
        }
        if self.duration.is_some_and(|d| d.is_zero()) || self.requests == Some(0) {
            problems.push("--duration and --requests must be greater than 0".to_owned());
        }
        if self.protocol.is_empty() {
            problems.push("--protocol needs at least one of h1, h2, h3".to_owned());
        }
        if self.setup.is_none() {
            if self.clientids == 0 || self.codes == 0 {
                problems.push("--clientids and --codes must be at least 1".to_owned());
            }
            if self.per_subscriber == 0 {
                problems.push("--per-subscriber must be at least 1".to_owned());
            }
            let subscribers = self.clientids.div_ceil(self.per_subscriber.max(1));
            let pool = pool_size(&self.mno_range);
            if (self.first_subscriber + subscribers) as u128 > pool {
                problems.push(format!(
                    "subscribers {} to {} do not fit in --mno-range {} ({pool} addresses)",
                    self.first_subscriber,
                    self.first_subscriber + subscribers,
                    self.mno_range
                ));
            }
        }
        if self.sources == 0 {
            problems.push("--sources must be at least 1".to_owned());
        }
        for range in &self.wifi_ranges {
            if overlaps(range, &self.mno_range) {
                problems.push(format!(
                    "--wifi-range {range} overlaps --mno-range {}: WiFi sources must be outside the MNO pool",
                    self.mno_range
                ));
            }
        }
        if self.interval < Duration::from_millis(10) {
            problems.push("--interval must be at least 10ms".to_owned());
        }
        if self.setup_only && self.save_setup.is_none() {
            problems.push("--setup-only needs --save-setup FILE, or the setup is lost".to_owned());
        }
        if self.mix.total() == 0 {
            problems.push("--mix needs at least one class with a weight above 0".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Usage(problems.join("\n  ")))
        }
    }

    /// The measured run time bound, if any (the default applies when there is no bound).
    pub fn run_duration(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        }
    }

    /// The protocols asked for, each once, in the order given.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut protocols: Vec<Protocol> = Vec::new();
        for p in &self.protocol {
            if !protocols.contains(p) {
                protocols.push(*p);
            }
        }
        protocols
    }

    /// The WiFi source addresses the spoofing classes send from.
    pub fn wifi_sources(&self) -> Vec<IpAddr> {
        self.wifi_ranges
            .iter()
            .flat_map(|net| net.hosts())
            .take(self.sources)
            .collect()
    }
}

fn pool_size(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
        IpNet::V6(n) => 1u128
            .checked_shl(128 - u32::from(n.prefix_len()))
            .unwrap_or(u128::MAX),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["homecmp-loadgen", "--ca", "ca.pem"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let args = parse(&[]);
        args.check().unwrap();
        assert_eq!(args.protocol, vec![Protocol::Http2]);
        assert_eq!(args.run_duration(), Some(DEFAULT_DURATION));
    }

    #[test]
    fn protocols_and_bounds() {
        let args = parse(&["-p", "h1,http2,h3", "-n", "100"]);
        assert_eq!(
            args.protocol,
            vec![Protocol::Http1, Protocol::Http2, Protocol::Http3]
        );
        assert_eq!(args.run_duration(), None);
        let args = parse(&["-d", "2s", "-n", "100"]);
        assert_eq!(args.run_duration(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let args = parse(&["--wifi-range", "127.1.2.0/24"]);
        let Err(Error::Usage(text)) = args.check() else {
            panic!("accepted")
        };
        assert!(text.contains("overlaps"), "{text}");
    }
}

/// `--legit-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LegitFrom {
    Both,
    Wifi,
    Mno,
}

impl LegitFrom {
    /// The side every legitimate request keeps to, if one.
    pub fn side(self) -> Option<Via> {
        match self {
            LegitFrom::Both => None,
            LegitFrom::Wifi => Some(Via::Wifi),
            LegitFrom::Mno => Some(Via::Mno),
        }
    }
}
