//! homecmp: a Home CMP of the OMA Mobile Codes enabler.
//!
//! The layers, top to bottom as data flows through a request:
//!
//! - [`wire`]: parse and validate identifiers (no I/O).
//! - [`core`]: decide what a request gets (no I/O, takes `now`).
//! - [`store`]: the event log on RocksDB and the index rebuilt from it.
//! - [`net`]: HTTPS and HTTP/3 listeners, the admin API.
//! - [`sre`]: the `homecmp log` commands.
//!
//! The `homecmp` binary only parses its command line and calls in here.

pub mod config;
pub mod core;
pub mod deploy;
#[doc(hidden)]
pub mod fuzzing;
pub mod net;
pub mod sre;
pub mod store;
pub mod wire;

/// Sub-directory of the data dir that holds the RocksDB event log.
pub const LOG_DIR: &str = "events";
