//! The load generator's one error type and the exit statuses it maps to.
//!
//! A leaf: every module may use it and it uses none of them, so the error
//! type does not tie the modules to the crate root ([`crate::run`]) that
//! wires them together.

use std::path::PathBuf;

/// Exit status when the command line is wrong.
pub const EXIT_USAGE: u8 = 64;
/// Exit status when the run could not be carried out (setup, connections).
pub const EXIT_CANNOT_RUN: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setup failed: {0}")]
    Setup(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Io { .. } | Error::Setup(_) => EXIT_CANNOT_RUN,
        }
    }
}
