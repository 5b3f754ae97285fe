//! The `homecmp` binary: command line only; everything else is the library.

mod admin_cli;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use admin_cli::{AdminApi, AdminCommand, AuditFilters, CodesCommand};
use clap::{Parser, Subcommand};
use homecmp::store::cluster::migrate::Migrated;

use homecmp::backup;
use homecmp::config::Config;
use homecmp::sre::{self, Until};

#[derive(Parser, Debug)]
#[command(name = "homecmp", version, about = "Home CMP with MCC authentication")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded defaults without --config).
    Serve {
        /// TOML configuration (keys in homecmp.example.toml); HOMECMP__SECTION__KEY overrides.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log JSON lines instead of human-readable ones (same as `log.json = true`).
        #[arg(long)]
        log_json: bool,
    },
    /// Check a configuration without starting: every problem at once, each
    /// with its line and column, and the files it names (certificates,
    /// keys, CA, secrets) read. Exit 0 when the server would start on it,
    /// 64 when not (like `nginx -t`).
    Check {
        /// The TOML configuration (without it: the embedded defaults);
        /// HOMECMP__SECTION__KEY overrides apply, as for `serve`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Copy a data dir (log, subscriber key, token, TLS) into a new directory,
    /// beside a running server or not; the copy is replayed before it is done.
    Backup {
        #[command(flatten)]
        dir: DataDir,
        /// The new directory (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Make a backup the data dir of a server (a data dir with no log yet).
    Restore {
        /// The backup (a directory `homecmp backup` made).
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Bulk import and export of codes, through the running server.
    Codes {
        #[command(subcommand)]
        command: CodesCommand,
    },
    /// The running server's admin API: sessions, associations, erasure,
    /// codes, reload, metrics. The answer's JSON on stdout; exit 1 when it
    /// is a refusal.
    Admin {
        #[command(flatten)]
        api: AdminApi,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Who changed what, when: the running server's audit trail (newest
    /// first, one page; `--before` the page's `next` for the one after).
    Audit {
        #[command(flatten)]
        api: AdminApi,
        #[command(flatten)]
        filters: AuditFilters,
    },
    /// Scoped admin tokens (kept hashed in data_dir/tokens.json; the
    /// running server sees a change at its next request).
    Token {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// A shell's completion script, on stdout (e.g. `homecmp completions
    /// bash > /etc/bash_completion.d/homecmp`).
    Completions { shell: clap_complete::Shell },
    /// The manual page (roff), on stdout (`homecmp man > homecmp.1`).
    Man,
    /// Cluster mode's tools.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Read, check, export and replay the event log (beside a running server);
    /// repair it (server stopped); import an export into a new data dir.
    Log {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Move a stream made by an older homecmp (before erasure in cluster
    /// mode: `deny_delete`; before the clientid buckets: a subject per
    /// clientid) to today's layout, same name, every message at the same
    /// sequence. The nodes may run: they serve resolves throughout and
    /// refuse changes (503) until it ends. Run it again to finish a run
    /// that stopped midway.
    Migrate {
        /// A node's configuration (its `[cluster]` section is used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct DataDir {
    /// The server's data dir (the one holding `events/`); default: the
    /// config's `server.data_dir`, else ./homecmp-data.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Read `server.data_dir` from this config file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

impl DataDir {
    fn resolve(self) -> Result<PathBuf, String> {
        if let Some(dir) = self.data_dir {
            return Ok(dir);
        }
        let config = match self.config {
            Some(path) => Config::load(&path),
            None => Config::from_env(),
        };
        config.map(|c| c.data_dir).map_err(|e| e.to_string())
    }
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a token; it is printed once, on stdout (only its hash is kept).
    Create {
        /// Who holds it (recorded as the actor of its changes).
        #[arg(long)]
        name: String,
        /// A role it carries (repeat for more): codes:read, codes:write,
        /// subscribers:read, subscribers:erase, sessions:read,
        /// sessions:write, audit:read, ops.
        #[arg(long = "role", required = true)]
        roles: Vec<homecmp::access::Role>,
    },
    /// The tokens: name, roles, creation time.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a token: refused from the server's next request on.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Event count, sequence and time range, size on disk, events by kind.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Check every record; exit 1 naming the first bad one.
    Verify,
    /// Events as JSON Lines on stdout.
    Export {
        /// First sequence number to export.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence number to export (inclusive).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Rebuild the state as of a sequence number or RFC 3339 time and summarise it.
    Replay {
        /// Sequence number or RFC 3339 time (inclusive); default: the whole log.
        #[arg(long)]
        until: Option<Until>,
        #[arg(long)]
        json: bool,
    },
    /// `log export` lines (stdin, or --from FILE) into a data dir with no log.
    Import {
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// With the server stopped: blank the history of associations and codes
    /// that ended more than --older-than ago; the state stays the same.
    Compact {
        /// Age, such as 90d or 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
    },
    /// With the server stopped: copy the log to data_dir/backups/, then cut
    /// it after its last consistent event (or --until SEQ, not past it).
    Repair {
        /// Last sequence number to keep; default: the last that replays.
        #[arg(long)]
        until: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match cli.command {
        Command::Serve { config, log_json } => serve(config, log_json),
        Command::Check { config } => check(config),
        Command::Log { dir, command } => run_log(dir, command),
        Command::Backup { dir, to } => with_data_dir("homecmp backup", dir, |data_dir, out| {
            backup::backup(data_dir, &to, out).map(drop)
        }),
        Command::Restore { from, dir } => with_data_dir("homecmp restore", dir, |data_dir, out| {
            backup::restore(&from, data_dir, out).map(drop)
        }),
        Command::Codes { command } => admin_cli::run_codes(command),
        Command::Cluster {
            command: ClusterCommand::Migrate { config },
        } => migrate_cluster(config),
        Command::Token { dir, command } => run_token(dir, command),
        Command::Audit { api, filters } => admin_cli::run_audit(api, filters),
        Command::Admin { api, command } => admin_cli::run_admin(api, command),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "homecmp", &mut script);
            print_all("homecmp completions", &script)
        }
        Command::Man => {
            let mut page = Vec::new();
            let cli = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cli).render(&mut page) {
                Ok(()) => print_all("homecmp man", &page),
                Err(e) => {
                    eprintln!("homecmp man: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `bytes` on stdout; a reader that stops early (`| head`) is no error.
fn print_all(what: &str, bytes: &[u8]) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (name, problems) = match &path {
        Some(path) => (path.display().to_string(), homecmp::check::check(path, env)),
        None => (
            "(embedded defaults)".to_owned(),
            homecmp::check::check_text("", env),
        ),
    };
    for problem in &problems {
        eprintln!("{}", problem.show(&name));
    }
    if problems.is_empty() {
        println!("{name}: ok");
        return ExitCode::SUCCESS;
    }
    let n = problems.len();
    eprintln!("{name}: {n} problem{}", if n == 1 { "" } else { "s" });
    ExitCode::from(64)
}

fn migrate_cluster(path: Option<PathBuf>) -> ExitCode {
    let config = match path {
        Some(path) => Config::load(&path),
        None => Config::from_env(),
    };
    let cluster = match config.map(|c| c.cluster) {
        Ok(Some(cluster)) => cluster,
        Ok(None) => {
            eprintln!("homecmp cluster migrate: the configuration has no [cluster] section");
            return ExitCode::from(64);
        }
        Err(errors) => {
            eprintln!("homecmp cluster migrate: {errors}");
            return ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    let say = |step: &str| eprintln!("homecmp cluster migrate: {step}");
    match runtime.block_on(homecmp::store::cluster::migrate::migrate(&cluster, say)) {
        Ok(Migrated::AlreadyCurrent { messages }) => {
            println!(
                "{}: already in today's layout (erasable, clientid buckets; {messages} messages); nothing to do",
                cluster.stream
            );
            ExitCode::SUCCESS
        }
        Ok(Migrated::Moved { messages }) => {
            println!(
                "{}: moved ({messages} messages, same sequences)",
                cluster.stream
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("homecmp cluster migrate: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: Option<PathBuf>, log_json: bool) -> ExitCode {
    let config = match path {
        Some(path) => Config::load(&path),
        None => Config::from_env(),
    };
    let config = match config {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("homecmp serve: {errors}");
            return ExitCode::from(64);
        }
    };
    init_tracing(config.log_json || log_json);
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    runtime.block_on(async {
        let running = match homecmp::server::start(config).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("homecmp serve: {e}");
                return ExitCode::from(1);
            }
        };
        // Before the ready line: a signal sent as soon as it is read is
        // handled, not the default action (SIGHUP would end the process).
        let signals = Signals::install();
        let config = &running.app.config;
        // One line for scripts and tests that start the binary on port 0.
        println!(
            "homecmp ready public=https://{} admin=http://{} token_file={} ca={}",
            running.public_addr,
            running.admin_addr,
            config.admin_token_path().display(),
            running
                .ca_cert
                .as_ref()
                .map_or("-".to_owned(), |p| p.display().to_string()),
        );
        let _ = io::stdout().flush();
        signals.wait(&running.app).await;
        tracing::info!("shutting down: draining connections");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The signals `serve` answers: SIGTERM and Ctrl-C stop it, SIGHUP reloads.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
            hup: signal(SignalKind::hangup()).expect("install SIGHUP handler"),
        }
    }

    /// Until SIGTERM or Ctrl-C; each SIGHUP meanwhile reloads
    /// ([`homecmp::app::App::reload`]).
    async fn wait(mut self, app: &homecmp::app::App) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = self.hup.recv() => {
                    if let Err(e) = app.reload() {
                        tracing::error!(error = %e, "reload refused, the running configuration is kept");
                    }
                }
            }
        }
    }
}

/// Human-readable logs on stderr, or JSON lines with `log.json = true`.
/// `RUST_LOG` sets the filter (default `info`).
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run_token(dir: DataDir, command: TokenCommand) -> ExitCode {
    use homecmp::access;
    let data_dir = match dir.resolve() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("homecmp token: {e}");
            return ExitCode::from(64);
        }
    };
    let text = match command {
        TokenCommand::Create { name, roles } => {
            access::create(&data_dir, &name, &roles).map(|token| token + "\n")
        }
        TokenCommand::List { json } => access::list(&data_dir).map(|tokens| match json {
            true => serde_json::to_string(&tokens).expect("serialisable") + "\n",
            false => tokens
                .iter()
                .map(|t| {
                    let roles: Vec<_> = t.roles.iter().map(|r| r.name()).collect();
                    format!("{}\t{}\t{}\n", t.name, roles.join(","), t.created)
                })
                .collect(),
        }),
        TokenCommand::Revoke { name } => match access::revoke(&data_dir, &name) {
            Ok(true) => Ok(format!("revoked {name}\n")),
            Ok(false) => {
                eprintln!("homecmp token revoke: no token named {name:?}");
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
    };
    match text {
        Ok(text) => print_all("homecmp token", text.as_bytes()),
        Err(e) => {
            eprintln!("homecmp token: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_log(dir: DataDir, command: LogCommand) -> ExitCode {
    with_data_dir("homecmp log", dir, |data_dir, out| {
        log_command(data_dir, command, out)
    })
}

/// Runs `command` on the data dir `dir` names, printing to stdout; exit 64
/// when there is no data dir to name, else what the command says.
fn with_data_dir(
    name: &str,
    dir: DataDir,
    command: impl FnOnce(&std::path::Path, &mut io::StdoutLock<'static>) -> Result<(), sre::SreError>,
) -> ExitCode {
    let data_dir = match dir.resolve() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(64);
        }
    };
    let mut out = io::stdout().lock();
    let result = command(&data_dir, &mut out);
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn log_command(
    data_dir: &std::path::Path,
    command: LogCommand,
    out: &mut io::StdoutLock<'static>,
) -> Result<(), sre::SreError> {
    match command {
        LogCommand::Stats { json } => sre::stats(data_dir, json, out).map(drop),
        LogCommand::Verify => sre::verify(data_dir, out).map(drop),
        LogCommand::Export { from, to } => sre::export(data_dir, from, to, out).map(drop),
        LogCommand::Replay { until, json } => sre::replay(data_dir, until, json, out).map(drop),
        LogCommand::Repair { until } => sre::repair(data_dir, until, out).map(drop),
        LogCommand::Compact { older_than } => sre::compact(data_dir, older_than, out).map(drop),
        LogCommand::Import { from } => match from {
            Some(path) => {
                let file = std::fs::File::open(&path)
                    .map_err(|e| sre::SreError::Repair(format!("{}: {e}", path.display())))?;
                backup::import(data_dir, io::BufReader::new(file), out).map(drop)
            }
            None => backup::import(data_dir, io::stdin().lock(), out).map(drop),
        },
    }
}
