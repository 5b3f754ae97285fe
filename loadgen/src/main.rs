//! `homecmp-loadgen`: see the library's [`homecmp_loadgen::run`] and `--help`.

use std::process::ExitCode;

use clap::Parser;
use homecmp_loadgen::EXIT_USAGE;
use homecmp_loadgen::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with 2 on bad usage, which is our security-failure status.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match homecmp_loadgen::run(args).await {
        Ok(outcome) => ExitCode::from(outcome.exit_code),
        Err(e) => {
            eprintln!("homecmp-loadgen: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
