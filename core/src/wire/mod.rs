//! Wire parsing: the identifiers a request carries, validated into types.
//!
//! Owns the textual forms of DESIGN §1.2 and §2 and the MSISDN of §3. Nothing
//! here does I/O or knows about the index, the log or HTTP: every parser takes
//! a `&str` and returns a value or a typed error, and never panics.

pub mod clientid;
mod code;
mod msisdn;
mod query;
mod target;

pub use clientid::{ClientId, ClientIdError, ClientIdRef};
pub use code::{CodeError, IndirectCode, MAX_LEN as MAX_CODE_LEN, RoutingPrefix};
pub use msisdn::{Msisdn, MsisdnError, SubscriberKey, SubscriberRef};
pub use query::{Query, QueryError};
pub use target::{MAX_TARGET_LEN, valid_target};
