//! `homecmp admin` and `homecmp codes`: clients of a running server's admin
//! API. Where the API is and its token come from the flags, else the
//! environment, else the server's own config (`--config`), else the
//! defaults of `scripts/dev serve`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use homecmp::config::Config;
use homecmp::deploy::ADMIN_TOKEN_ENV;

/// Where the admin API is, for commands that talk to a running server.
#[derive(clap::Args, Debug)]
pub struct AdminApi {
    /// The admin API's base URL; default: http:// and the config's
    /// `admin.listen`, else http://127.0.0.1:8444.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The file holding the admin token; default: $HOMECMP_ADMIN_TOKEN (the
    /// token itself), else the config's data_dir/admin.token, else
    /// homecmp-data/admin.token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The server's config, to find `admin.listen` and the token file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

impl AdminApi {
    /// The base URL and the token, each from the first place that has it.
    fn resolve(&self) -> Result<(String, String), String> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let base = match (&self.admin, &config) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(config)) => {
                let mut addr = config.admin_listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
            (None, None) => "http://127.0.0.1:8444".to_owned(),
        };
        let from_env = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty());
        let file = match (&self.token_file, from_env, &config) {
            (Some(file), _, _) => file.clone(),
            (None, Some(token), _) => return Ok((base, token)),
            (None, None, Some(config)) => config.admin_token_path(),
            (None, None, None) => PathBuf::from("homecmp-data/admin.token"),
        };
        let token = std::fs::read_to_string(&file)
            .map_err(|e| format!("the admin token: {}: {e}", file.display()))?;
        Ok((base, token.trim().to_owned()))
    }
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Session bindings (address or prefix -> subscriber).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Associations (clientid -> subscriber).
    Associations {
        #[command(subcommand)]
        command: AssociationsCommand,
    },
    /// A subscriber's associated clientids, by MSISDN.
    Subscriber { msisdn: String },
    /// The node at a glance: index, log, cluster link, RADIUS feed.
    Status,
    /// The event log, live: each record once durable, as server-sent
    /// events, until interrupted.
    Events {
        /// From this sequence number (default: what is appended next).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Erase a subscriber (GDPR Art. 17): its bindings, its associations
    /// and every link in the history between it and its clientids.
    Erase { msisdn: String },
    /// Retention, online: blank the history of associations and codes that
    /// ended longer ago than OLDER_THAN (e.g. 90d), on every node in
    /// cluster mode (`homecmp log compact` does it offline).
    Retention {
        #[arg(long)]
        older_than: String,
    },
    /// Codes, one at a time (`homecmp codes` for bulk).
    Code {
        #[command(subcommand)]
        command: CodeCommand,
    },
    /// Read the configuration, the certificate and key, the federation
    /// peers and CA, the rules and the limits again (as SIGHUP).
    Reload,
    /// The metrics (Prometheus/OpenMetrics text).
    Metrics,
}

/// `homecmp audit`: the filters of `GET /admin/v1/audit`.
#[derive(clap::Args, Debug)]
pub struct AuditFilters {
    /// Events that change this code.
    #[arg(long)]
    code: Option<String>,
    /// Events that name this subscriber: an MSISDN or its keyed ref.
    #[arg(long)]
    subscriber: Option<String>,
    /// Changes made by this token name or identity-provider subject.
    #[arg(long)]
    actor: Option<String>,
    /// Events of this kind (association_created, code_registered, ...).
    #[arg(long)]
    kind: Option<String>,
    /// From this RFC 3339 time on.
    #[arg(long)]
    since: Option<String>,
    /// Up to this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Most events on the page (1 to 1000; default 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Events before this sequence number (the `next` of the page before).
    #[arg(long)]
    before: Option<u64>,
}

/// `homecmp audit`: one page of the audit trail, its JSON on stdout.
pub fn run_audit(api: AdminApi, filters: AuditFilters) -> ExitCode {
    let AuditFilters {
        code,
        subscriber,
        actor,
        kind,
        since,
        until,
        limit,
        before,
    } = filters;
    let mut query: Vec<(&str, String)> = [
        ("code", code),
        ("subscriber", subscriber),
        ("actor", actor),
        ("kind", kind),
        ("since", since),
        ("until", until),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    query.extend(limit.map(|n| ("limit", n.to_string())));
    query.extend(before.map(|n| ("before", n.to_string())));
    run(&api, |client, base| {
        client.get(format!("{base}/admin/v1/audit")).query(&query)
    })
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// The binding that covers an address (or exactly a prefix).
    Get {
        ip: String,
    },
    /// Bind an address or prefix to a subscriber.
    Put {
        ip: String,
        #[arg(long)]
        msisdn: String,
        /// Seconds it lives; default the server's `auth.session_ttl_secs`.
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    Delete {
        ip: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AssociationsCommand {
    Get {
        clientid: String,
    },
    /// Revoke it.
    Delete {
        clientid: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CodeCommand {
    /// A code, its target and its rules.
    Get { code: String },
    /// Register a code: its target, and its rules (they replace what it
    /// had).
    Put {
        code: String,
        #[arg(long)]
        target: String,
        /// Resolution rules, first match wins: a JSON array as the admin
        /// API takes it, e.g. '[{"languages": ["fr"], "target": "https://example.org/fr"}]'.
        #[arg(long, value_parser = rules_json)]
        rules: Option<serde_json::Value>,
    },
    /// Remove a code.
    Delete { code: String },
    /// Its resolution counts.
    Stats { code: String },
}

/// `--rules`: a JSON array (the server checks each rule).
fn rules_json(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(rules @ serde_json::Value::Array(_)) => Ok(rules),
        Ok(_) => Err("expected a JSON array of rules".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[derive(Subcommand, Debug)]
pub enum CodesCommand {
    /// Register the codes of an NDJSON or CSV file (one row a line) through
    /// the running server's admin API; prints its report, exit 1 if a row
    /// was refused.
    Import {
        file: PathBuf,
        /// Check every row, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The file is CSV (code,target), not NDJSON.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        api: AdminApi,
    },
    /// Every code as NDJSON on stdout (what `codes import` takes back).
    Export {
        #[command(flatten)]
        api: AdminApi,
    },
}

/// One admin API call: method, path (its segments escaped) and JSON body.
struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<serde_json::Value>,
}

impl CodeCommand {
    fn call(self) -> Call {
        use reqwest::Method;
        let call = |method, path: String, body| Call { method, path, body };
        match self {
            CodeCommand::Get { code } => {
                call(Method::GET, format!("codes/{}", segment(&code)), None)
            }
            CodeCommand::Put {
                code,
                target,
                rules,
            } => {
                let mut body = serde_json::json!({ "target": target });
                if let Some(rules) = rules {
                    body["rules"] = rules;
                }
                call(Method::PUT, format!("codes/{}", segment(&code)), Some(body))
            }
            CodeCommand::Delete { code } => {
                call(Method::DELETE, format!("codes/{}", segment(&code)), None)
            }
            CodeCommand::Stats { code } => {
                call(Method::GET, format!("codes/{}/stats", segment(&code)), None)
            }
        }
    }
}

/// A path segment as the URL needs it (a clientid may hold any character;
/// an address or prefix goes as it is: the route takes its `/`).
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl AdminCommand {
    fn call(self) -> Call {
        use reqwest::Method;
        let call = |method, path: String, body| Call { method, path, body };
        match self {
            AdminCommand::Sessions { command } => match command {
                SessionsCommand::Get { ip } => call(Method::GET, format!("sessions/{ip}"), None),
                SessionsCommand::Put {
                    ip,
                    msisdn,
                    ttl_secs,
                } => {
                    let mut body = serde_json::json!({ "msisdn": msisdn });
                    if let Some(ttl) = ttl_secs {
                        body["ttl_secs"] = ttl.into();
                    }
                    call(Method::PUT, format!("sessions/{ip}"), Some(body))
                }
                SessionsCommand::Delete { ip } => {
                    call(Method::DELETE, format!("sessions/{ip}"), None)
                }
            },
            AdminCommand::Associations { command } => match command {
                AssociationsCommand::Get { clientid } => call(
                    Method::GET,
                    format!("associations/{}", segment(&clientid)),
                    None,
                ),
                AssociationsCommand::Delete { clientid } => call(
                    Method::DELETE,
                    format!("associations/{}", segment(&clientid)),
                    None,
                ),
            },
            AdminCommand::Subscriber { msisdn } => call(
                Method::GET,
                format!("subscribers/{}", segment(&msisdn)),
                None,
            ),
            AdminCommand::Status => call(Method::GET, "status".into(), None),
            AdminCommand::Events { from } => {
                let query = from.map_or(String::new(), |seq| format!("?from={seq}"));
                call(Method::GET, format!("events{query}"), None)
            }
            AdminCommand::Erase { msisdn } => call(
                Method::DELETE,
                format!("subscribers/{}", segment(&msisdn)),
                None,
            ),
            AdminCommand::Code { command } => command.call(),
            AdminCommand::Reload => call(Method::POST, "reload".into(), None),
            AdminCommand::Retention { older_than } => call(
                Method::POST,
                format!("retention?older_than={}", segment(&older_than)),
                None,
            ),
            AdminCommand::Metrics => Call {
                method: Method::GET,
                path: String::new(),
                body: None,
            },
        }
    }
}

/// `homecmp admin`: the answer's body on stdout; exit 0 on a 2xx, 1 on any
/// other answer (its body says why), 1 when the server cannot be reached.
pub fn run_admin(api: AdminApi, command: AdminCommand) -> ExitCode {
    let call = command.call();
    let path = match call.path.is_empty() {
        true => "/metrics".to_owned(),
        false => format!("/admin/v1/{}", call.path),
    };
    run(&api, |client, base| {
        let request = client.request(call.method, format!("{base}{path}"));
        match call.body {
            Some(body) => request.json(&body),
            None => request,
        }
    })
}

/// `homecmp codes`: bulk import and export through the admin API.
pub fn run_codes(command: CodesCommand) -> ExitCode {
    match command {
        CodesCommand::Import {
            file,
            dry_run,
            csv,
            api,
        } => {
            let body = match std::fs::read(&file) {
                Ok(body) => body,
                Err(e) => {
                    eprintln!("homecmp codes: {}: {e}", file.display());
                    return ExitCode::from(1);
                }
            };
            let content_type = if csv {
                "text/csv"
            } else {
                "application/x-ndjson"
            };
            run(&api, |client, base| {
                client
                    .post(format!("{base}/admin/v1/codes:import?dry_run={dry_run}"))
                    .header("content-type", content_type)
                    .body(body)
            })
        }
        CodesCommand::Export { api } => run(&api, |client, base| {
            client.get(format!("{base}/admin/v1/codes:export"))
        }),
    }
}

/// Sends the request `build` makes (with the token) and writes the answer
/// to stdout as it arrives: an export of any size in constant memory.
fn run(
    api: &AdminApi,
    build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    let outcome = runtime.block_on(async {
        let (base, token) = api.resolve()?;
        let client = reqwest::Client::new();
        let mut response = build(&client, &base)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        let status = response.status();
        let mut out = std::io::stdout().lock();
        let mut ends_with_newline = true;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            out.write_all(&chunk).map_err(|e| format!("stdout: {e}"))?;
            if let Some(last) = chunk.last() {
                ends_with_newline = *last == b'\n';
            }
        }
        if !ends_with_newline {
            out.write_all(b"\n").map_err(|e| format!("stdout: {e}"))?;
        }
        out.flush().map_err(|e| format!("stdout: {e}"))?;
        Ok::<_, String>(status)
    });
    match outcome {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("homecmp: {e}");
            ExitCode::from(1)
        }
    }
}
