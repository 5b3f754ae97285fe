//! The setup phase: codes, subscribers with session bindings, and
//! associated clientids, made through the server's own front doors (the
//! admin API and first scans from MNO addresses, or a trusted gateway's
//! enrichment), saved to and loaded from a JSON file.
//!
//! Creation is limited per subscriber by the server (`auth.associations_per_minute`,
//! default 10, and `max_clientids_per_subscriber`, default 8), so clientids are
//! spread over many subscribers, at most `--per-subscriber` each. A 429 is
//! waited out as its `Retry-After` says.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderName, HeaderValue, Method};
use http_body_util::Full;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::classes::{Rng, forwarded_for, msisdn_enrichment, query};
use crate::client::{Answer, Client, Lane, Request, tcp};
pub use crate::data::{FORMAT_VERSION, Setup, Subscriber};
use crate::error::Error;

/// How often one association is retried after 429 before giving up.
const MAX_RATE_LIMITED_RETRIES: u32 = 30;

/// The admin API: plain HTTP/1.1 with the bearer token, one connection per call.
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub authority: String,
    pub token: String,
}

impl Admin {
    /// Status and JSON body (a string if the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Error> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::Setup(format!("admin API {} {path}: {e}", self.addr))
        };
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed(&e))?;
        let mut send = tcp::http1_handshake(stream).await.map_err(|e| failed(&e))?;
        let body = body.map_or_else(Vec::new, |b| {
            serde_json::to_vec(&b).expect("JSON serialises")
        });
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(&e))?;
        send.ready().await.map_err(|e| failed(&e))?;
        let response = send.send_request(request).await.map_err(|e| failed(&e))?;
        let Answer { status, body, .. } = tcp::read_h1(response).await.map_err(|e| failed(&e))?;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if status == 401 {
            return Err(failed(
                &"401: wrong or missing admin token (--token, --token-file)",
            ));
        }
        Ok((status, value))
    }

    async fn put(&self, path: &str, body: Value) -> Result<(), Error> {
        match self.call(Method::PUT, path, Some(body)).await? {
            (200, _) => Ok(()),
            (status, body) => Err(Error::Setup(format!(
                "PUT {path}: {status} {body}{}",
                admin_hint(&body)
            ))),
        }
    }

    pub async fn register_code(&self, code: &str, target: &str) -> Result<(), Error> {
        self.put(
            &format!("/admin/v1/codes/{code}"),
            json!({ "target": target }),
        )
        .await
    }

    pub async fn bind_session(&self, ip: IpAddr, msisdn: &str) -> Result<(), Error> {
        self.put(
            &format!("/admin/v1/sessions/{ip}"),
            json!({ "msisdn": msisdn }),
        )
        .await
    }
}

/// A word on the usual causes of admin refusals.
fn admin_hint(body: &Value) -> &'static str {
    match body.get("code").and_then(Value::as_str) {
        Some("NOT_IN_MNO_NETWORK") => " (--mno-range must lie inside the server's mno.networks)",
        Some("UNKNOWN_PREFIX") => " (--prefix must be one of the server's routing_prefixes)",
        _ => "",
    }
}

/// What [`create`] needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    pub clientids: usize,
    pub per_subscriber: usize,
    pub codes: usize,
    pub prefix: String,
    /// Number of the first subscriber (for MSISDNs).
    pub first_subscriber: usize,
    /// Addresses of the MNO pool, one per subscriber.
    pub subscriber_ips: Vec<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub msisdn_header: HeaderName,
    pub concurrency: usize,
}

/// Registers codes, binds sessions and associates clientids (first scans
/// from each subscriber's MNO address, or through the gateway).
pub async fn create(
    plan: &Plan,
    admin: &Admin,
    client: Arc<Client>,
    progress: &ProgressBar,
) -> Result<Setup, Error> {
    let codes = register_codes(plan, admin).await?;
    // Tells this setup's clientids from those of earlier setups.
    let tag = format!("{:08x}", Rng::from_time(0x5e7).next_u64() as u32);
    let warned = AtomicBool::new(false);
    let (first_code, client, warned) = (codes[0].as_str(), &*client, &warned);
    let jobs = (0..plan.clientids.div_ceil(plan.per_subscriber)).map(|s| {
        let subscriber = plan.subscriber(s, &tag);
        async move {
            admin
                .bind_session(subscriber.ip, &subscriber.msisdn)
                .await?;
            associate(plan, client, &subscriber, first_code, warned, progress).await?;
            Ok::<_, Error>(subscriber)
        }
    });
    let mut made: Vec<Subscriber> = futures_util::stream::iter(jobs)
        .buffer_unordered(plan.concurrency.max(1))
        .try_collect()
        .await?;
    made.sort_by_key(|s| s.ip);
    Ok(Setup {
        version: FORMAT_VERSION,
        prefix: plan.prefix.clone(),
        codes,
        subscribers: made,
        gateway: plan.gateway,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// Registers the plan's codes, each with a target of its own.
async fn register_codes(plan: &Plan, admin: &Admin) -> Result<Vec<String>, Error> {
    let codes: Vec<String> = (0..plan.codes)
        .map(|i| format!("{}lg-{i}", plan.prefix))
        .collect();
    for (i, code) in codes.iter().enumerate() {
        admin
            .register_code(code, &format!("https://example.org/loadgen/{i}"))
            .await?;
    }
    Ok(codes)
}

impl Plan {
    /// Subscriber `s` of the plan: its address, MSISDN and the clientids it
    /// will associate (`per_subscriber` of them, fewer for the last one).
    fn subscriber(&self, s: usize, tag: &str) -> Subscriber {
        let first = s * self.per_subscriber;
        let count = self.per_subscriber.min(self.clientids - first);
        Subscriber {
            ip: self.subscriber_ips[s],
            msisdn: msisdn(self.first_subscriber + s),
            clientids: (first..first + count)
                .map(|n| format!("lg-{tag}-{n}"))
                .collect(),
        }
    }
}

/// MSISDN of the n-th subscriber: +44 7 then ten digits.
fn msisdn(n: usize) -> String {
    format!("+447{n:010}")
}

/// First scans of every clientid of `subscriber`, one after another on one
/// keep-alive connection.
async fn associate(
    plan: &Plan,
    client: &Client,
    subscriber: &Subscriber,
    code: &str,
    warned: &AtomicBool,
    progress: &ProgressBar,
) -> Result<(), Error> {
    let (source, headers) = first_scan_origin(plan, subscriber);
    let lane = Lane::new(source);
    for clientid in &subscriber.clientids {
        let request = Request {
            path: query(code, Some(clientid)),
            headers: headers.clone(),
        };
        first_scan(&lane, client, &request, warned, progress)
            .await
            .map_err(|why| {
                Error::Setup(format!(
                    "first scan from {source} for {}: {why}",
                    subscriber.ip
                ))
            })?;
        progress.inc(1);
    }
    lane.close().await;
    Ok(())
}

/// Where a subscriber's first scans leave from, and what they carry: its
/// own MNO address, or the trusted gateway with the enrichment that tells
/// the server who the client is (the server believes a trusted gateway).
fn first_scan_origin(
    plan: &Plan,
    subscriber: &Subscriber,
) -> (IpAddr, Vec<(HeaderName, HeaderValue)>) {
    match plan.gateway {
        Some(gateway) => (
            gateway,
            vec![
                msisdn_enrichment(&plan.msisdn_header, subscriber),
                forwarded_for(subscriber),
            ],
        ),
        None => (subscriber.ip, Vec::new()),
    }
}

/// Said once per setup, at the first 429.
const RATE_LIMIT_ADVICE: &str = "setup: the server rate-limits association creation per \
    subscriber (auth.associations_per_minute); waiting as Retry-After says. For big setups \
    raise auth.associations_per_minute, or lower --per-subscriber.";

/// One first scan, sent again while the server rate-limits it (after the
/// wait its `Retry-After` asks for); the error says why it did not associate.
async fn first_scan(
    lane: &Lane,
    client: &Client,
    request: &Request,
    warned: &AtomicBool,
    progress: &ProgressBar,
) -> Result<(), String> {
    let mut retries = 0;
    loop {
        let answer = lane
            .send(client, request)
            .await
            .map_err(|e| e.to_string())?;
        match FirstScan::read(&answer, retries < MAX_RATE_LIMITED_RETRIES) {
            FirstScan::Associated => return Ok(()),
            FirstScan::Refused(why) => return Err(why),
            FirstScan::RateLimited(wait) => {
                retries += 1;
                if !warned.swap(true, Ordering::Relaxed) {
                    progress.println(RATE_LIMIT_ADVICE);
                }
                // The server may close a connection quiet for that long:
                // a new one after the wait.
                lane.close().await;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What the answer to a first scan means for the setup.
#[derive(Debug, PartialEq, Eq)]
enum FirstScan {
    /// The clientid is associated (now, or already).
    Associated,
    /// 429: send again after this wait.
    RateLimited(Duration),
    /// Anything else: what came back, with a word on the usual cause.
    Refused(String),
}

impl FirstScan {
    /// A 429 is [`FirstScan::RateLimited`] only while `may_retry`.
    fn read(answer: &Answer, may_retry: bool) -> Self {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        match (answer.status, body["association"].as_str()) {
            (200, Some("created" | "existing")) => FirstScan::Associated,
            (200, Some("none")) => FirstScan::Refused(
                "resolved without an association: is the server's auth.mode \"off\"?".into(),
            ),
            (429, _) if may_retry => {
                let wait = answer.retry_after.unwrap_or(1).clamp(1, 60);
                FirstScan::RateLimited(Duration::from_secs(wait))
            }
            (status, _) => FirstScan::Refused(format!("{status} {body}{}", first_scan_hint(&body))),
        }
    }
}

/// A word on the usual causes of first scans refused.
fn first_scan_hint(body: &Value) -> &'static str {
    match body["code"].as_str() {
        Some("RETRY_ON_MNO_NETWORK") => {
            " (the source is not in the server's mno.networks, or the gateway is not trusted)"
        }
        Some("SUBSCRIBER_UNKNOWN") => " (the session binding did not take)",
        _ => "",
    }
}

/// Before a run on a loaded setup: binds the sessions again (they live in
/// server memory and expire) and checks that the server still knows a sample
/// of the setup's codes and associations.
pub async fn refresh(setup: &Setup, admin: &Admin, concurrency: usize) -> Result<(), Error> {
    futures_util::stream::iter(&setup.subscribers)
        .map(|s| admin.bind_session(s.ip, &s.msisdn))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    verify(setup, admin).await
}

/// The first code and a few clientids (first, middle, last) must be known.
pub async fn verify(setup: &Setup, admin: &Admin) -> Result<(), Error> {
    let code = &setup.codes[0];
    let (status, body) = admin
        .call(Method::GET, &format!("/admin/v1/codes/{code}"), None)
        .await?;
    if status != 200 {
        return Err(Error::Setup(format!(
            "the server does not know code {code} ({status} {body}): is this setup from another server or data dir?"
        )));
    }
    let all: Vec<&String> = setup
        .subscribers
        .iter()
        .flat_map(|s| &s.clientids)
        .collect();
    let mut sample = vec![all[0], all[all.len() / 2], all[all.len() - 1]];
    sample.dedup();
    for clientid in sample {
        let (status, body) = admin
            .call(
                Method::GET,
                &format!("/admin/v1/associations/{clientid}"),
                None,
            )
            .await?;
        if status != 200 {
            return Err(Error::Setup(format!(
                "clientid {clientid} has no association ({status} {body}): the setup is from another \
                 server or data dir, or was superseded (--per-subscriber above the server's \
                 max_clientids_per_subscriber, or a newer setup reused the subscribers)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
            retry_after,
        }
    }

    #[test]
    fn first_scans_are_associated_refused_or_waited_out() {
        for association in ["created", "existing"] {
            let created = answer(200, &format!(r#"{{"association":"{association}"}}"#), None);
            assert_eq!(FirstScan::read(&created, true), FirstScan::Associated);
        }
        let off = FirstScan::read(&answer(200, r#"{"association":"none"}"#, None), true);
        assert!(
            matches!(&off, FirstScan::Refused(why) if why.contains("auth.mode")),
            "{off:?}"
        );
        // Retry-After as given; none, 0 or far off: between 1 s and a minute.
        for (retry_after, wait) in [(Some(7), 7), (Some(0), 1), (None, 1), (Some(3600), 60)] {
            let limited = answer(429, r#"{"code":"RATE_LIMITED"}"#, retry_after);
            assert_eq!(
                FirstScan::read(&limited, true),
                FirstScan::RateLimited(Duration::from_secs(wait))
            );
        }
        let limited = answer(429, r#"{"code":"RATE_LIMITED"}"#, Some(7));
        let given_up = FirstScan::read(&limited, false);
        assert!(
            matches!(&given_up, FirstScan::Refused(why) if why.starts_with("429 ")),
            "{given_up:?}"
        );
        let off_net = answer(403, r#"{"code":"RETRY_ON_MNO_NETWORK"}"#, None);
        let refused = FirstScan::read(&off_net, true);
        assert!(
            matches!(&refused, FirstScan::Refused(why) if why.contains("mno.networks")),
            "{refused:?}"
        );
    }

    #[test]
    fn msisdns_are_international() {
        assert_eq!(msisdn(0), "+4470000000000");
        assert_eq!(msisdn(65_533).len(), 14);
    }

    #[test]
    fn save_and_load() {
        let dir = std::env::temp_dir().join(format!("loadgen-setup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("setup.json");
        let setup = Setup {
            version: FORMAT_VERSION,
            prefix: "2001000001".into(),
            codes: vec!["2001000001lg-0".into()],
            subscribers: vec![Subscriber {
                ip: "127.1.0.1".parse().unwrap(),
                msisdn: msisdn(0),
                clientids: vec!["a".into()],
            }],
            gateway: None,
            created_unix: 1,
        };
        setup.save(&path).unwrap();
        let loaded = Setup::load(&path).unwrap();
        assert_eq!(loaded.clientid_count(), 1);
        std::fs::write(&path, "{}").unwrap();
        assert!(Setup::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
