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
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::Error;
use crate::classes::{Class, Expect, Planned, Rng, Via, query};
use crate::client::{Client, Request};
pub use crate::data::{FORMAT_VERSION, Setup, Subscriber};

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
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(connection);
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
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
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
                hint(&body)
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
fn hint(body: &Value) -> &'static str {
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
    let tag = format!("{:08x}", Rng::from_time(0x5e7).next_u64() as u32);
    let codes: Vec<String> = (0..plan.codes)
        .map(|i| format!("{}lg-{i}", plan.prefix))
        .collect();
    for (i, code) in codes.iter().enumerate() {
        admin
            .register_code(code, &format!("https://example.org/loadgen/{i}"))
            .await?;
    }
    let subscribers = plan.clientids.div_ceil(plan.per_subscriber);
    let warned = Arc::new(AtomicBool::new(false));
    let first_code = codes[0].as_str();
    let jobs = (0..subscribers).map(|s| {
        let first = s * plan.per_subscriber;
        let count = plan.per_subscriber.min(plan.clientids - first);
        let subscriber = Subscriber {
            ip: plan.subscriber_ips[s],
            msisdn: msisdn(plan.first_subscriber + s),
            clientids: (first..first + count)
                .map(|n| format!("lg-{tag}-{n}"))
                .collect(),
        };
        let (client, warned) = (client.clone(), warned.clone());
        async move {
            admin
                .bind_session(subscriber.ip, &subscriber.msisdn)
                .await?;
            associate(plan, &client, &subscriber, first_code, &warned, progress).await?;
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

/// MSISDN of the n-th subscriber: +44 7 then ten digits.
fn msisdn(n: usize) -> String {
    format!("+447{n:010}")
}

/// First scans of every clientid of `subscriber` on one keep-alive connection.
async fn associate(
    plan: &Plan,
    client: &Client,
    subscriber: &Subscriber,
    code: &str,
    warned: &AtomicBool,
    progress: &ProgressBar,
) -> Result<(), Error> {
    let (source, headers) = match plan.gateway {
        // The gateway tells who the client is; the server believes it.
        Some(gateway) => (
            gateway,
            vec![
                (
                    plan.msisdn_header.clone(),
                    HeaderValue::from_str(&subscriber.msisdn).expect("valid header value"),
                ),
                (
                    HeaderName::from_static("x-forwarded-for"),
                    HeaderValue::from_str(&subscriber.ip.to_string()).expect("valid header value"),
                ),
            ],
        ),
        None => (subscriber.ip, Vec::new()),
    };
    let failed = |what: String| {
        Error::Setup(format!(
            "first scan from {source} for {}: {what}",
            subscriber.ip
        ))
    };
    let mut conn = None;
    for clientid in &subscriber.clientids {
        let planned = Planned {
            class: Class::Legit,
            request: Request {
                path: query(code, Some(clientid)),
                headers: headers.clone(),
            },
            via: Via::Mno,
            expect: Expect::new(200, "created"),
        };
        let mut retries = 0;
        loop {
            let mut open = match conn.take() {
                Some(open) => open,
                None => client
                    .connect(source)
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            };
            let answer = client
                .send(&mut open, &planned.request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if open.is_open() {
                conn = Some(open);
            }
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            match (
                answer.status,
                body["association"].as_str(),
                body["code"].as_str(),
            ) {
                (200, Some("created" | "existing"), _) => break,
                (200, Some("none"), _) => {
                    return Err(failed(
                        "resolved without an association: is the server's auth.mode \"off\"?"
                            .into(),
                    ));
                }
                (429, _, _) if retries < MAX_RATE_LIMITED_RETRIES => {
                    retries += 1;
                    if !warned.swap(true, Ordering::Relaxed) {
                        progress.println(
                            "setup: the server rate-limits association creation per subscriber \
                             (auth.associations_per_minute); waiting as Retry-After says. For big \
                             setups raise auth.associations_per_minute, or lower --per-subscriber.",
                        );
                    }
                    let wait = answer.retry_after.unwrap_or(1).clamp(1, 60);
                    // The server may close a connection quiet for that long:
                    // a new one after the wait.
                    if let Some(quiet) = conn.take() {
                        quiet.close();
                    }
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                (status, _, _) => {
                    let hint = match body["code"].as_str() {
                        Some("RETRY_ON_MNO_NETWORK") => {
                            " (the source is not in the server's mno.networks, or the gateway is not trusted)"
                        }
                        Some("SUBSCRIBER_UNKNOWN") => " (the session binding did not take)",
                        _ => "",
                    };
                    return Err(failed(format!("{status} {body}{hint}")));
                }
            }
        }
        progress.inc(1);
    }
    if let Some(open) = conn {
        open.close();
    }
    Ok(())
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
