//! `homecmp-loadgen`: benchmarks homecmp and proves its defences hold.
//!
//! A run is: the setup phase ([`setup`]: codes, subscribers, associated
//! clientids, or a saved setup), then traffic ([`runner`]) of weighted
//! classes ([`classes`]) over HTTP/1.1, HTTP/2 or HTTP/3 ([`client`]), every
//! answer judged against DESIGN §4 and accounted ([`stats`]), then the
//! report ([`report`], [`plot`]). [`run`] is the whole of it, for the binary
//! and for tests.
//!
//! This file is the composition root: it wires the modules together and
//! none of them imports it back. What they all share sits below them, in
//! leaves of its own: the error type and exit statuses ([`error`]) and file
//! reads and writes ([`files`]).

pub mod classes;
pub mod cli;
pub mod client;
pub mod cpu;
pub mod data;
pub mod error;
pub mod files;
pub mod plot;
pub mod progress;
pub mod report;
pub mod runner;
pub mod setup;
pub mod stats;

pub use crate::error::{EXIT_CANNOT_RUN, EXIT_USAGE, Error};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::HeaderName;
use rustls::pki_types::ServerName;

use crate::classes::{Class, Planner};
use crate::cli::Args;
use crate::client::{Client, Protocol, Target};
use crate::progress::{Bound, RunProgress};
use crate::report::Report;
use crate::setup::{Admin, Setup};
use crate::stats::Live;

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub exit_code: u8,
    /// `None` with `--setup-only`.
    pub report: Option<Report>,
    pub setup: Setup,
}

/// Setup, traffic, report: everything the binary does, minus argument parsing.
pub async fn run(args: Args) -> Result<RunOutcome, Error> {
    args.check()?;
    let target = Arc::new(resolve_target(&args).await?);
    if !args.allow_remote && !target.addr.ip().is_loopback() {
        return Err(Error::Usage(format!(
            "{} is not a loopback address; pass --allow-remote to load a server elsewhere",
            target.addr
        )));
    }
    let ca = client::read_ca(&args.ca)?;
    let msisdn_header = HeaderName::try_from(args.msisdn_header.as_str()).map_err(|_| {
        Error::Usage(format!(
            "--msisdn-header {:?} is not a header name",
            args.msisdn_header
        ))
    })?;
    let setup = prepare_setup(&args, &target, &ca, &msisdn_header).await?;
    if args.setup_only {
        println!("{}", setup_summary(&setup, args.save_setup.as_deref()));
        return Ok(RunOutcome {
            exit_code: report::EXIT_OK,
            report: None,
            setup,
        });
    }
    check_setup_fits(&args, &setup)?;

    let protocols = args.protocols();
    let wifi_sources = args.wifi_sources();
    let clients = connect(&args, &protocols, &target, &ca)?;
    let run_info = run_info(&args, &protocols, &wifi_sources, &setup);
    let plan = runner::RunPlan {
        protocols,
        connections: args.connections,
        streams: args.streams,
        rate: args.rate,
        warmup: args.warmup,
        duration: args.run_duration(),
        requests: args.requests,
        keepalive: !args.disable_keepalive,
        timeout: args.timeout,
        wifi_sources,
        interval: args.interval,
        legit_side: args.legit_from.side(),
    };
    let planner = Arc::new(Planner::new(setup, args.mix.clone(), msisdn_header));
    let (collected, measured) = drive(&args, plan, planner.clone(), clients).await;

    let report = report::build(
        collected,
        report::Context {
            run: run_info,
            warmup: args.warmup,
            wall: measured.wall,
            loadgen_cpu: measured.loadgen_cpu,
            server_cpu: measured.server_cpu,
        },
    );
    publish(&args, &report)?;
    Ok(RunOutcome {
        exit_code: report.verdict.exit_code,
        report: Some(report),
        setup: planner.setup().clone(),
    })
}

/// The setup phase: a saved setup (re-bound through the admin API when there
/// is a token) or a new one made through the admin API; saved if asked.
async fn prepare_setup(
    args: &Args,
    target: &Arc<Target>,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    msisdn_header: &HeaderName,
) -> Result<Setup, Error> {
    let admin = admin(args).await?;
    let setup = match &args.setup {
        Some(path) => load_setup(args, path, admin.as_ref()).await?,
        None => {
            let admin = admin.as_ref().ok_or_else(|| {
                Error::Usage("the setup phase needs the admin API: give --token or --token-file (or --setup FILE)".into())
            })?;
            create_setup(args, target, ca, admin, msisdn_header).await?
        }
    };
    if let Some(path) = &args.save_setup {
        setup.save(path)?;
    }
    Ok(setup)
}

/// What a setup holds, and where it was saved if it was.
fn setup_summary(setup: &Setup, saved_to: Option<&std::path::Path>) -> String {
    format!(
        "setup: {} codes, {} subscribers, {} associated clientids{}",
        setup.codes.len(),
        setup.subscribers.len(),
        setup.clientid_count(),
        saved_to.map_or(String::new(), |p| format!(", saved to {}", p.display()))
    )
}

/// One client (and its connection pool) per protocol.
fn connect(
    args: &Args,
    protocols: &[Protocol],
    target: &Arc<Target>,
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<BTreeMap<Protocol, Arc<Client>>, Error> {
    let mut clients = BTreeMap::new();
    for &protocol in protocols {
        let client = Client::new(
            protocol,
            target.clone(),
            ca,
            !args.no_tls_resumption,
            args.disable_keepalive,
        )?;
        clients.insert(protocol, Arc::new(client));
    }
    Ok(clients)
}

/// What the report says about how the run was set up.
fn run_info(
    args: &Args,
    protocols: &[Protocol],
    wifi_sources: &[IpAddr],
    setup: &Setup,
) -> report::RunInfo {
    report::RunInfo {
        target: args.url.clone(),
        protocols: protocols.iter().map(|p| p.name()).collect(),
        mode: if args.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        rate: args.rate,
        connections: args.connections,
        streams: args.streams,
        keepalive: !args.disable_keepalive,
        // Keep-alive lanes each keep one WiFi source.
        wifi_sources: if args.disable_keepalive {
            wifi_sources.len()
        } else {
            wifi_sources.len().min(args.connections)
        },
        subscribers: setup.subscribers.len(),
        clientids: setup.clientid_count(),
        mix: Class::ALL
            .iter()
            .map(|c| (c.name(), args.mix.weight(*c)))
            .filter(|(_, w)| *w > 0)
            .collect(),
        warmup_secs: args.warmup.as_secs_f64(),
        measured_secs: 0.0,
    }
}

/// Wall time and CPU of a run: ours and, with `--server-pid`, the server's.
struct Measured {
    wall: std::time::Duration,
    loadgen_cpu: Option<cpu::CpuTimes>,
    server_cpu: Option<cpu::CpuTimes>,
}

/// The traffic phase, with its progress line; Ctrl-C ends it early.
async fn drive(
    args: &Args,
    plan: runner::RunPlan,
    planner: Arc<Planner>,
    clients: BTreeMap<Protocol, Arc<Client>>,
) -> (stats::Collected, Measured) {
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let bound = match (plan.duration, plan.requests) {
        (Some(d), _) => Bound::Time(plan.warmup + d),
        (None, Some(n)) => Bound::Count(n),
        (None, None) => unreachable!("run_duration gives a bound"),
    };
    let progress = RunProgress::start(args.quiet, bound, plan.warmup, live.clone());
    let cpu_before = cpu::times(None);
    let server_before = args.server_pid.and_then(|pid| cpu::times(Some(pid)));
    let started = Instant::now();
    let collected = runner::run(plan, planner, clients, live, stop).await;
    let measured = Measured {
        wall: started.elapsed(),
        loadgen_cpu: cpu_before.zip(cpu::times(None)).map(|(a, b)| b.since(&a)),
        server_cpu: server_before
            .zip(args.server_pid.and_then(|pid| cpu::times(Some(pid))))
            .map(|(a, b)| b.since(&a)),
    };
    progress.finish();
    on_ctrl_c.abort();
    (collected, measured)
}

/// The report to stdout, the security banner to stderr, and the files asked for.
fn publish(args: &Args, report: &Report) -> Result<(), Error> {
    print!("{}", report.text());
    if let Some(banner) = report.security_banner() {
        eprint!("{banner}");
    }
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.plot {
        plot::write_svg(path, report)?;
    }
    Ok(())
}

async fn create_setup(
    args: &Args,
    target: &Arc<Target>,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    admin: &Admin,
    msisdn_header: &HeaderName,
) -> Result<Setup, Error> {
    let subscribers = args.clientids.div_ceil(args.per_subscriber);
    let subscriber_ips: Vec<IpAddr> = args
        .mno_range
        .hosts()
        .skip(args.first_subscriber)
        .take(subscribers)
        .collect();
    if subscriber_ips.len() < subscribers {
        return Err(Error::Usage(format!(
            "subscribers {} to {} do not fit in --mno-range {}",
            args.first_subscriber,
            args.first_subscriber + subscribers,
            args.mno_range
        )));
    }
    let plan = setup::Plan {
        clientids: args.clientids,
        per_subscriber: args.per_subscriber,
        codes: args.codes,
        prefix: args.prefix.clone(),
        first_subscriber: args.first_subscriber,
        subscriber_ips,
        gateway: args.gateway,
        msisdn_header: msisdn_header.clone(),
        concurrency: args.setup_concurrency,
    };
    let client = Arc::new(Client::new(
        Protocol::Http1,
        target.clone(),
        ca,
        true,
        false,
    )?);
    let bar = progress::bar(
        args.quiet,
        args.clientids as u64,
        "setup     [{elapsed_precise}] [{bar:30}] {pos}/{len} associations",
    );
    let setup = setup::create(&plan, admin, client.clone(), &bar).await;
    bar.finish_and_clear();
    client.shutdown().await;
    let setup = setup?;
    setup::verify(&setup, admin).await?;
    if !args.quiet {
        eprintln!("{}", setup_summary(&setup, None));
    }
    Ok(setup)
}

async fn load_setup(
    args: &Args,
    path: &std::path::Path,
    admin: Option<&Admin>,
) -> Result<Setup, Error> {
    let setup = Setup::load(path)?;
    match admin {
        Some(admin) => setup::refresh(&setup, admin, args.setup_concurrency).await?,
        None if args.mix.weight(Class::Mismatch) > 0 => {
            return Err(Error::Usage(
                "the mismatch class needs the setup's session bindings, which live in server memory: \
                 give --token or --token-file to re-bind them, or drop mismatch from --mix"
                    .into(),
            ));
        }
        None => eprintln!(
            "setup: no admin token, so sessions are not re-bound and the setup is not checked"
        ),
    }
    Ok(setup)
}

/// Checks that need the setup: enough subscribers for `mismatch`, and WiFi
/// ranges clear of the subscribers' addresses.
fn check_setup_fits(args: &Args, setup: &Setup) -> Result<(), Error> {
    if args.mix.weight(Class::Mismatch) > 0 && setup.subscribers.len() < 2 {
        return Err(Error::Usage(
            "the mismatch class needs at least two subscribers: raise --clientids above --per-subscriber".into(),
        ));
    }
    if let Some(gateway) = args.gateway.or(setup.gateway)
        && let Some(range) = args.wifi_ranges.iter().find(|r| r.contains(&gateway))
    {
        return Err(Error::Usage(format!(
            "--wifi-range {range} contains the trusted gateway {gateway}: spoofing from it is not spoofing"
        )));
    }
    for subscriber in &setup.subscribers {
        if let Some(range) = args.wifi_ranges.iter().find(|r| r.contains(&subscriber.ip)) {
            return Err(Error::Usage(format!(
                "--wifi-range {range} contains the subscriber address {}",
                subscriber.ip
            )));
        }
    }
    Ok(())
}

/// `https://host:port` to an address, an authority and a TLS name.
async fn resolve_target(args: &Args) -> Result<Target, Error> {
    let (addr, authority, host) = resolve_url(&args.url, "https", 443).await?;
    let name = args.server_name.clone().unwrap_or(host);
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| Error::Usage(format!("--server-name {name:?}: {e}")))?;
    Ok(Target {
        addr,
        authority,
        server_name,
        server_name_text: name,
    })
}

async fn admin(args: &Args) -> Result<Option<Admin>, Error> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.trim().to_owned(),
        (None, Some(path)) => files::read_to_string(path)?.trim().to_owned(),
        (None, None) => return Ok(None),
    };
    let (addr, authority, _) = resolve_url(&args.admin, "http", 80).await?;
    Ok(Some(Admin {
        addr,
        authority,
        token,
    }))
}

async fn resolve_url(
    url: &str,
    scheme: &str,
    default_port: u16,
) -> Result<(SocketAddr, String, String), Error> {
    let bad = |why: &str| Error::Usage(format!("{url:?}: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some(scheme) {
        return Err(bad(&format!("expected a {scheme}:// URL")));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = authority.port_u16().unwrap_or(default_port);
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            // Sources are 127.x addresses: prefer the name's IPv4 address.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| bad(&e.to_string()))?
                .collect();
            found
                .iter()
                .find(|a| a.is_ipv4())
                .or(found.first())
                .copied()
                .ok_or_else(|| bad("the name resolves to no address"))?
        }
    };
    Ok((addr, authority.as_str().to_owned(), host))
}
