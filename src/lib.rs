//! homecmp: a Home CMP of the OMA Mobile Codes enabler.
//!
//! The layers, top to bottom as data flows through a request:
//!
//! - [`wire`]: parse and validate identifiers (no I/O).
//! - [`core`]: decide what a request gets (no I/O, takes `now`).
//!   Both are the `homecmp-core` crate, which cannot depend on tokio or
//!   RocksDB.
//! - [`store`]: the event log on RocksDB and the index rebuilt from it.
//! - [`net`]: HTTPS and HTTP/3 listeners, the admin API.
//! - [`sre`]: the `homecmp log` commands; [`backup`]: backup, restore, import.
//!
//! The `homecmp` binary only parses its command line and calls in here.

pub mod access;
pub mod app;
pub mod backup;
pub mod check;
pub mod clock;
pub mod codes;
pub mod config;
pub mod deploy;
pub mod federation;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod oidc;
pub mod radius;
pub mod server;
pub mod sessions;
pub mod sre;
pub mod store;
pub mod tls;

// The rules live in their own crate, `homecmp-core`, that cargo keeps free of
// tokio and RocksDB; these names keep every path in the server the same.
pub use homecmp_core as core;
pub use homecmp_core::wire;

/// Sub-directory of the data dir that holds the RocksDB event log.
pub const LOG_DIR: &str = "events";
