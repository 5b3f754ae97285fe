//! The programs some tests drive (curl, radclient): found on `PATH`, or
//! the test fails saying what to install. A test never passes by skipping
//! what it could not run. (nats-server, which needs a version check too,
//! is found by `support::nats`.)

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// `name`'s path on `PATH`; panics naming what provides it and the
/// command that installs it.
pub fn require(name: &str, provided_by: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH, and this test runs it: `scripts/dev test` installs it \
                 ({provided_by})"
            )
        })
}
