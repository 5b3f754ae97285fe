//! Who may rewrite a data dir's history, and when.
//!
//! History is rewritten by erasure and snapshot writing (inside a running
//! server) and by retention (`log compact`), `log repair`, `log import` and
//! `restore` (offline tools). None of them may interleave with another on
//! the same data dir, so there are two owners, one inside the other:
//!
//! - [`DataDirLock`], across processes: an exclusive `flock` on
//!   `data_dir/homecmp.lock`, held by `homecmp serve` for its whole life and
//!   by each offline tool that writes. A second holder is refused at once,
//!   with the first one's name and pid. Read-only tools (`log verify`,
//!   `export`, `stats`, `replay`, `backup`) take no lock: they work beside
//!   a live server.
//! - [`Rewrites`], inside the server: one async lock that every rewrite
//!   holds for its whole course ([`crate::store::Store::erase_subscriber`],
//!   [`crate::store::Store::write_snapshot`]). Appends do not take it: a
//!   rewrite touches records up to the last one durable when it began, and
//!   appends only add later ones.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "homecmp.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is in use by {holder}: stop it first (one process at a time changes a data dir)"
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Exclusive ownership of a data dir by this process, until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the data dir `data_dir` (which must exist) for `who` (a name
    /// such as `homecmp serve`, shown to whoever is refused next).
    pub fn acquire(data_dir: &Path, who: &str) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_owned(),
                    text => text.to_owned(),
                };
                return Err(LockError::Held {
                    path: data_dir.to_owned(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the next one refused; the lock is what counts.
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{who} (pid {})", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// The server's one owner of history rewrites (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Rewrites(Arc<Mutex<()>>);

/// A rewrite under way; the next one starts once this is dropped.
#[derive(Debug)]
pub struct Rewriting {
    _turn: OwnedMutexGuard<()>,
}

impl Rewrites {
    /// Waits for the rewrites before this one to finish.
    pub async fn begin(&self) -> Rewriting {
        Rewriting {
            _turn: self.0.clone().lock_owned().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "homecmp serve").unwrap();
        let refused = DataDirLock::acquire(dir.path(), "homecmp log compact").unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("homecmp serve (pid "), "{text}");
        assert!(text.contains("stop it first"), "{text}");
        drop(first);
        DataDirLock::acquire(dir.path(), "homecmp log compact").unwrap();
    }
}
