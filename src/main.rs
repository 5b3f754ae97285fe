//! The `homecmp` binary: command line only; everything else is the library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use homecmp::sre::{self, Until};

#[derive(Parser, Debug)]
#[command(name = "homecmp", version, about = "Home CMP with MCC authentication")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read, check, export and replay the event log (works beside a running server).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(clap::Args, Debug)]
struct DataDir {
    /// The server's data dir (the one holding `events/`).
    #[arg(long, default_value = "./homecmp-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Event count, sequence and time range, size on disk, events by kind.
    Stats {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
    /// Check every record; exit 1 naming the first bad one.
    Verify {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Events as JSON Lines on stdout.
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// First sequence number to export.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last sequence number to export (inclusive).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Rebuild the state as of a sequence number or RFC 3339 time and summarise it.
    Replay {
        #[command(flatten)]
        dir: DataDir,
        /// Sequence number or RFC 3339 time (inclusive); default: the whole log.
        #[arg(long)]
        until: Option<Until>,
        #[arg(long)]
        json: bool,
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
        Command::Log { command } => run_log(command),
    }
}

fn run_log(command: LogCommand) -> ExitCode {
    let mut out = io::stdout().lock();
    let result = match command {
        LogCommand::Stats { dir, json } => sre::stats(&dir.data_dir, json, &mut out).map(drop),
        LogCommand::Verify { dir } => sre::verify(&dir.data_dir, &mut out).map(drop),
        LogCommand::Export { dir, from, to } => sre::export(&dir.data_dir, from, to, &mut out).map(drop),
        LogCommand::Replay { dir, until, json } => {
            sre::replay(&dir.data_dir, until, json, &mut out).map(drop)
        }
    };
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("homecmp log: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
