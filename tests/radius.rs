//! RADIUS accounting against the real server: Debian's `radclient` (from
//! freeradius-utils, which `scripts/dev test` and `.ci/run` install) and
//! the project's own encoder, over UDP on loopback.
//!
//! A Start binds the address, so a first scan from it creates an
//! association; a Stop unbinds it, so the next first scan from it is
//! SUBSCRIBER_UNKNOWN; a wrong secret, an unknown client and garbage are
//! dropped; a re-sent request is answered once and applied once; a late
//! Stop or Interim of an earlier session leaves the address to the next
//! one; bindings expire without Interims; Starts past `max_bindings` are
//! not answered; a request sent (by its Event-Timestamp) longer ago than
//! the reply cache remembers is dropped and binds nothing.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use homecmp::radius::packet::{
    self, Status, accounting_request, is_response_to, session_attributes,
};
use reqwest::Method;
use support::{CODE, TARGET, TestServer, metric, radclient};
use tokio::net::UdpSocket;

/// radclient's secret, for 127.0.0.1 (where radclient sends from).
const RADCLIENT_SECRET: &str = "radclient-secret";
/// The own encoder's secret, for gateways in 127.4.0.0/16.
const GATEWAY_SECRET: &str = "gateway-secret";

fn radius_config(dir: &Path, extra: &str) -> String {
    let local = dir.join("radclient.secret");
    let gateways = dir.join("gateways.secret");
    std::fs::write(&local, format!("{RADCLIENT_SECRET}\n")).unwrap();
    std::fs::write(&gateways, GATEWAY_SECRET).unwrap();
    format!(
        "[limits]\nfirst_scans_per_sec = 0\n\
         [radius]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[radius.clients]]\nnetwork = \"127.0.0.1\"\nsecret_file = \"{}\"\n\
         [[radius.clients]]\nnetwork = \"127.4.0.0/16\"\nsecret_file = \"{}\"\n",
        local.display(),
        gateways.display()
    )
}

async fn server(extra: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&radius_config(dir.path(), extra)).await;
    server.put_code(CODE, TARGET).await;
    (server, dir)
}

fn radius_addr(server: &TestServer) -> SocketAddr {
    server.running.radius_addr.expect("radius is on")
}

/// A first scan from `ip` with a new clientid: its status and error code.
async fn first_scan(server: &TestServer, ip: &str) -> (u16, String) {
    let client = server.client("http1", ip);
    let clientid = uuid::Uuid::new_v4();
    let (status, body) = server
        .resolve(&client, &format!("code={CODE}&clientid={clientid}"))
        .await;
    let code = match status {
        200 => String::new(),
        _ => body["code"].as_str().unwrap_or("").to_owned(),
    };
    (status, code)
}

fn session(status: &str, ip: &str, msisdn: &str, id: &str) -> String {
    format!(
        "Acct-Status-Type = {status}\nFramed-IP-Address = {ip}\n\
         Calling-Station-Id = \"{msisdn}\"\nAcct-Session-Id = \"{id}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn radclient_start_binds_and_stop_unbinds() {
    let (server, _dir) = server("").await;
    let to = radius_addr(&server);
    let ip = "127.1.0.9";
    assert_eq!(first_scan(&server, ip).await.1, "SUBSCRIBER_UNKNOWN");

    let start = session("Start", ip, "447700900009", "s-1");
    assert!(radclient(to, RADCLIENT_SECRET, &start));
    assert_eq!(first_scan(&server, ip).await, (200, String::new()));
    let interim = session("Interim-Update", ip, "447700900009", "s-1");
    assert!(radclient(to, RADCLIENT_SECRET, &interim));

    let stop = session("Stop", ip, "447700900009", "s-1");
    assert!(radclient(to, RADCLIENT_SECRET, &stop));
    assert_eq!(first_scan(&server, ip).await.1, "SUBSCRIBER_UNKNOWN");

    // A wrong secret: no answer, nothing bound, counted.
    assert!(!radclient(to, "not-the-secret", &start));
    assert_eq!(first_scan(&server, ip).await.1, "SUBSCRIBER_UNKNOWN");
    let metrics = server.metrics().await;
    let dropped = r#"homecmp_radius_packets_total{outcome="dropped",reason="bad_authenticator"}"#;
    assert!(metric(&metrics, dropped) >= 1.0, "{metrics}");
    let applied = r#"homecmp_radius_packets_total{outcome="applied",reason="start"}"#;
    assert_eq!(metric(&metrics, applied), 1.0, "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_older_than_the_reply_window_is_dropped_and_binds_nothing() {
    let (server, _dir) = server("").await;
    let to = radius_addr(&server);
    let ip = "127.1.0.11";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamped = |status: &str, id: &str, event: u64, delay: u64| {
        format!(
            "{}Event-Timestamp = {event}\nAcct-Delay-Time = {delay}\n",
            session(status, ip, "447700900011", id)
        )
    };
    let start = stamped("Start", "t-1", now, 0);
    assert!(radclient(to, RADCLIENT_SECRET, &start));
    assert!(bound_subscriber(&server, ip).await.is_some());
    assert!(radclient(
        to,
        RADCLIENT_SECRET,
        &stamped("Stop", "t-1", now, 0)
    ));
    assert_eq!(bound_subscriber(&server, ip).await, None);

    // The Start as someone recorded it two minutes ago, sent again: no
    // answer, and the address stays free.
    let replayed = stamped("Start", "t-1", now - 120, 0);
    assert!(!radclient(to, RADCLIENT_SECRET, &replayed));
    assert_eq!(bound_subscriber(&server, ip).await, None);
    assert_eq!(first_scan(&server, ip).await.1, "SUBSCRIBER_UNKNOWN");
    // So is one stamped well ahead of our clock.
    let ahead = stamped("Start", "t-2", now + 120, 0);
    assert!(!radclient(to, RADCLIENT_SECRET, &ahead));
    assert_eq!(bound_subscriber(&server, ip).await, None);

    // A gateway that has been re-sending its Start for two minutes says so
    // (Acct-Delay-Time): sent now, taken.
    let delayed = stamped("Start", "t-3", now - 120, 120);
    assert!(radclient(to, RADCLIENT_SECRET, &delayed));
    assert!(bound_subscriber(&server, ip).await.is_some());

    let metrics = server.metrics().await;
    for reason in ["stale_timestamp", "future_timestamp"] {
        let dropped =
            format!("homecmp_radius_packets_total{{outcome=\"dropped\",reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &dropped), 1.0, "{reason}: {metrics}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_says_where_it_came_from_and_when_it_expires() {
    let (server, _dir) = server("binding_ttl_secs = 600").await;
    let to = radius_addr(&server);
    let session_of = async |ip: &str| {
        let (status, body) = server
            .admin(Method::GET, &format!("/admin/v1/sessions/{ip}"), None)
            .await;
        assert_eq!(status, 200, "{ip}: {body}");
        body
    };
    let expires_in = |body: &serde_json::Value| {
        let expires = body["expires"].as_str().unwrap();
        let at = humantime::parse_rfc3339(expires).unwrap();
        at.duration_since(std::time::SystemTime::now())
            .unwrap()
            .as_secs()
    };

    server.bind_session("127.1.0.12", "+447700900012").await;
    let admin = session_of("127.1.0.12").await;
    assert_eq!(admin["source"], "admin", "{admin}");
    assert!(admin.get("nas").is_none(), "{admin}");

    let start = session("Start", "127.1.0.13", "447700900013", "pgw-13");
    assert!(radclient(to, RADCLIENT_SECRET, &start));
    let radius = session_of("127.1.0.13").await;
    assert_eq!(
        (
            &radius["source"],
            &radius["nas"],
            &radius["acct_session_id"]
        ),
        (
            &serde_json::json!("radius"),
            &serde_json::json!("127.0.0.1"),
            &serde_json::json!("pgw-13")
        ),
        "{radius}"
    );
    assert!((590..=600).contains(&expires_in(&radius)), "{radius}");

    // A Start on the admin's address takes it, and says so.
    let start = session("Start", "127.1.0.12", "447700900012", "pgw-12");
    assert!(radclient(to, RADCLIENT_SECRET, &start));
    let taken = session_of("127.1.0.12").await;
    assert_eq!(
        (&taken["source"], &taken["acct_session_id"]),
        (&serde_json::json!("radius"), &serde_json::json!("pgw-12")),
        "{taken}"
    );
    server.stop().await;
}

/// A gateway in 127.4.0.0/16 speaking through the project's encoder.
struct Gateway {
    socket: UdpSocket,
    to: SocketAddr,
    next_id: u8,
}

impl Gateway {
    async fn new(server: &TestServer, ip: &str) -> Self {
        let socket = UdpSocket::bind((ip.parse::<Ipv4Addr>().unwrap(), 0))
            .await
            .unwrap();
        Self {
            socket,
            to: radius_addr(server),
            next_id: 0,
        }
    }

    fn request(&mut self, status: Status, ip: &str, msisdn: &str, id: &str) -> Vec<u8> {
        let attributes = session_attributes(status, ip.parse().unwrap(), msisdn, id);
        let attributes: Vec<(u8, &[u8])> =
            attributes.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        self.next_id = self.next_id.wrapping_add(1);
        accounting_request(self.next_id, &attributes, GATEWAY_SECRET.as_bytes())
    }

    /// Sends `datagram`; the answer, if one comes within 300 ms.
    async fn send(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        self.socket.send_to(datagram, self.to).await.unwrap();
        self.answer().await
    }

    async fn answer(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 4096];
        let wait = tokio::time::timeout(Duration::from_millis(300), self.socket.recv(&mut buffer));
        let len = wait.await.ok()?.unwrap();
        buffer.truncate(len);
        Some(buffer)
    }

    /// Sends a session record and expects its Accounting-Response.
    async fn record(&mut self, status: Status, ip: &str, msisdn: &str, id: &str) -> Vec<u8> {
        let request = self.request(status, ip, msisdn, id);
        let answer = self.send(&request).await.expect("an Accounting-Response");
        assert!(is_response_to(&answer, &request, GATEWAY_SECRET.as_bytes()));
        request
    }
}

async fn bound_subscriber(server: &TestServer, ip: &str) -> Option<String> {
    let (status, body) = server
        .admin(Method::GET, &format!("/admin/v1/sessions/{ip}"), None)
        .await;
    (status == 200).then(|| body["subscriber"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_late_stops_and_strangers_change_nothing() {
    let (server, _dir) = server("").await;
    let mut gateway = Gateway::new(&server, "127.4.0.1").await;
    let ip = "127.1.0.10";

    // A re-sent Start after its Stop is answered from the reply cache,
    // with the same answer, and does not bind again.
    let start = gateway
        .record(Status::Start, ip, "+447700900010", "a-1")
        .await;
    let first_answer = gateway.send(&start).await.unwrap();
    gateway
        .record(Status::Stop, ip, "+447700900010", "a-1")
        .await;
    assert_eq!(gateway.send(&start).await.unwrap(), first_answer);
    // The same gateway re-sending from another port: the same answer.
    let other_port = Gateway::new(&server, "127.4.0.1").await;
    assert_eq!(other_port.send(&start).await.unwrap(), first_answer);
    assert_eq!(bound_subscriber(&server, ip).await, None);
    let metrics = server.metrics().await;
    let resent = r#"homecmp_radius_packets_total{outcome="duplicate",reason="resent"}"#;
    assert_eq!(metric(&metrics, resent), 3.0, "{metrics}");

    // The address goes to another subscriber's session; the first
    // session's late Interim and Stop leave it there.
    gateway
        .record(Status::Start, ip, "+447700900010", "a-2")
        .await;
    let first = bound_subscriber(&server, ip).await.unwrap();
    gateway
        .record(Status::Start, ip, "+447700900011", "b-1")
        .await;
    let second = bound_subscriber(&server, ip).await.unwrap();
    assert_ne!(first, second);
    gateway
        .record(Status::Interim, ip, "+447700900010", "a-2")
        .await;
    gateway
        .record(Status::Stop, ip, "+447700900010", "a-2")
        .await;
    assert_eq!(bound_subscriber(&server, ip).await, Some(second));
    assert_eq!(first_scan(&server, ip).await, (200, String::new()));

    // A gateway outside every client network, garbage, and a request that
    // is not accounting: no answer, and the server keeps answering.
    let stranger = Gateway::new(&server, "127.5.0.1").await;
    let request = gateway.request(Status::Start, "127.1.0.12", "+447700900012", "c-1");
    assert_eq!(stranger.send(&request).await, None);
    let mut access = request.clone();
    access[0] = 1;
    let mut garbage: Vec<Vec<u8>> = vec![vec![], vec![4; 3], access, request[..30].to_vec()];
    let mut seed = 0x9e37_79b9_u32;
    for len in [20, 21, 64, 300, 4096] {
        garbage.push(
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect(),
        );
    }
    for datagram in &garbage {
        assert_eq!(gateway.send(datagram).await, None, "{datagram:?}");
    }
    assert_eq!(bound_subscriber(&server, "127.1.0.12").await, None);
    gateway
        .record(Status::Start, "127.1.0.12", "+447700900012", "c-1")
        .await;
    assert!(bound_subscriber(&server, "127.1.0.12").await.is_some());

    // Unusable records are answered (re-sending cannot help) and counted.
    gateway
        .record(Status::Start, "127.9.0.1", "+447700900013", "d-1")
        .await;
    gateway
        .record(Status::Start, "127.1.0.13", "not a number", "d-2")
        .await;
    assert_eq!(bound_subscriber(&server, "127.9.0.1").await, None);
    assert_eq!(bound_subscriber(&server, "127.1.0.13").await, None);
    let metrics = server.metrics().await;
    for (outcome, reason, at_least) in [
        ("dropped", "unknown_client", 1.0),
        ("dropped", "not_accounting", 1.0),
        ("dropped", "truncated", 2.0),
        ("ignored", "not_mno_address", 1.0),
        ("ignored", "bad_msisdn", 1.0),
    ] {
        let line =
            format!(r#"homecmp_radius_packets_total{{outcome="{outcome}",reason="{reason}"}}"#);
        assert!(metric(&metrics, &line) >= at_least, "{line}\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_expire_without_interims() {
    let (server, _dir) = server("binding_ttl_secs = 2").await;
    let mut gateway = Gateway::new(&server, "127.4.0.2").await;
    let ip = "127.1.0.20";
    gateway
        .record(Status::Start, ip, "+447700900020", "e-1")
        .await;
    // The sleeps are the test: time passing against a 2 s binding TTL.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gateway
        .record(Status::Interim, ip, "+447700900020", "e-1")
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        first_scan(&server, ip).await,
        (200, String::new()),
        "refreshed"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(first_scan(&server, ip).await.1, "SUBSCRIBER_UNKNOWN");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_starts_from_many_gateways_stays_within_max_bindings() {
    let (server, _dir) = server("max_bindings = 300").await;
    let mut answered = 0;
    for g in 0..20u32 {
        let mut gateway = Gateway::new(&server, &format!("127.4.1.{}", g + 1)).await;
        for i in 0..25u32 {
            let n = g * 25 + i;
            let ip = format!("127.1.{}.{}", 100 + n / 250, n % 250 + 1);
            let request = gateway.request(Status::Start, &ip, &format!("+4477009{n:05}"), "f");
            gateway.socket.send_to(&request, gateway.to).await.unwrap();
        }
        while gateway.answer().await.is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 300, "Starts past max_bindings are not answered");
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "homecmp_sessions "), 300.0, "{metrics}");
    let unanswered = r#"homecmp_radius_packets_total{outcome="unanswered",reason="max_bindings"}"#;
    assert_eq!(metric(&metrics, unanswered), 200.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_prefix_is_bound_as_a_prefix() {
    let (server, _dir) = server("[mno]\nnetworks = [\"127.1.0.0/16\", \"2001:db8::/32\"]").await;
    let gateway = Gateway::new(&server, "127.4.0.3").await;
    // Framed-IPv6-Prefix (RFC 3162): reserved, length, the prefix bits.
    let prefix = [0u8, 64, 0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 9];
    let attributes: [(u8, &[u8]); 4] = [
        (packet::attr::ACCT_STATUS_TYPE, &1u32.to_be_bytes()),
        (packet::attr::FRAMED_IPV6_PREFIX, &prefix),
        (packet::attr::CALLING_STATION_ID, b"447700900030"),
        (packet::attr::ACCT_SESSION_ID, b"v6-1"),
    ];
    let request = accounting_request(9, &attributes, GATEWAY_SECRET.as_bytes());
    let answer = gateway.send(&request).await.expect("answered");
    assert!(is_response_to(&answer, &request, GATEWAY_SECRET.as_bytes()));
    // Any address of the /64 is the subscriber's; the next /64 is not.
    let (status, body) = server
        .admin(Method::GET, "/admin/v1/sessions/2001:db8:7:9::abcd", None)
        .await;
    assert_eq!(
        (status, body["network"].as_str()),
        (200, Some("2001:db8:7:9::/64"))
    );
    let (status, _) = server
        .admin(Method::GET, "/admin/v1/sessions/2001:db8:7:a::1", None)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}
