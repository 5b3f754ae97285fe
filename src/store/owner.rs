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
//!   with the first one's name and pid (a lock of this same process is
//!   waited for a moment: see [`DataDirLock::acquire`]). Read-only tools (`log verify`,
//!   `export`, `stats`, `replay`, `backup`) take no lock: they work beside
//!   a live server.
//! - [`Rewrites`], inside the server: one async lock that every rewrite
//!   holds for its whole course ([`crate::store::Store::erase_subscriber`],
//!   [`crate::store::Store::write_snapshot`]). Appends do not take it: a
//!   rewrite touches records up to the last one durable when it began, and
//!   appends only add later ones.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long [`DataDirLock::acquire`] waits for a lock this very process
/// holds: a process started meanwhile (`std::process::Command`, in any
/// thread) shares every descriptor from its fork to its exec, the lock's
/// among them, so a lock just dropped can stay held for that long (a
/// restart inside one process: tests, an embedding program).
const OWN_RELEASE_WAIT: Duration = Duration::from_secs(2);

impl DataDirLock {
    /// Takes the data dir `data_dir` (which must exist) for `who` (a name
    /// such as `homecmp serve`, shown to whoever is refused next). Another
    /// process's lock is refused at once; this process's own is waited
    /// for up to [`OWN_RELEASE_WAIT`].
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
        let ours = format!("(pid {})", std::process::id());
        let deadline = Instant::now() + OWN_RELEASE_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = holder(&mut file);
                    if !holder.ends_with(&ours) || Instant::now() >= deadline {
                        let path = data_dir.to_owned();
                        return Err(LockError::Held { path, holder });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        // Who holds it, for the next one refused; the lock is what counts.
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{who} {ours}").map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// What the holder of a lock file wrote in it.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.trim() {
        "" => "another process".to_owned(),
        text => text.to_owned(),
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

    /// The lock file of another process: a lock taken by a `flock`
    /// process (util-linux), whose text names that process.
    #[test]
    fn another_process_holding_the_lock_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        std::fs::write(&path, "homecmp serve (pid 1)\n").unwrap();
        let mut holder = std::process::Command::new("flock")
            .arg(&path)
            .args(["sleep", "5"])
            .spawn()
            .unwrap();
        let started = Instant::now();
        let refused = loop {
            match DataDirLock::acquire(dir.path(), "homecmp serve") {
                Err(e) => break e,
                // `flock` has not taken it yet.
                Ok(lock) => drop(lock),
            }
            std::fs::write(&path, "homecmp serve (pid 1)\n").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(refused.to_string().contains("(pid 1)"), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(2), "not at once");
        holder.kill().unwrap();
        holder.wait().unwrap();
    }

    /// A lock this process dropped but a duplicate of its descriptor still
    /// holds (as a process forked meanwhile does until its exec): the next
    /// owner waits for it to go, not fails.
    #[test]
    fn this_process_waits_for_its_own_lock_to_be_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "homecmp serve").unwrap();
        let duplicate = first._file.try_clone().unwrap();
        drop(first);
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(duplicate);
        });
        let started = Instant::now();
        DataDirLock::acquire(dir.path(), "homecmp serve").unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        release.join().unwrap();
    }
}
