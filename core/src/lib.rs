//! homecmp-core: the identifiers and the rules of homecmp, with no I/O.
//!
//! A crate of its own so that cargo checks what the layering promises: it
//! depends on neither tokio nor RocksDB nor any socket, as quinn-proto is to
//! quinn. [`wire`] parses what a request carries; the rest decides.
//!
//! The decision core: who gets what.
//!
//! Takes a parsed request, what the index knows of its clientid, who the
//! network says the client is, the policy and (where time matters) `now`, and
//! returns a [`Decision`]. No sockets, no disk, no clock: unit-tested with
//! plain values. The transports do the lookups it asks for and carry out what
//! it decides; [`Permit`] is the only way to reach the code store, and only
//! this module makes one. The association rule is [`plan_association`]: the
//! store carries out its plan. The domain types ([`model`]) live here, below
//! the store that persists them.

pub mod wire;

mod associate;
mod decide;
mod identity;
pub mod model;
mod redact;
mod refusal;
mod rule;
pub mod targeting;

pub use associate::{Plan, plan_association};
pub use decide::{
    AssociationState, AuthMode, Decision, MismatchPolicy, Permit, Policy, Resolution, decide,
    permit_after, permit_for, resolve,
};
pub use identity::{
    BindingSource, Bound, ClientView, Identity, MnoPolicy, Origin, Seen, Sessions, canonical_net,
    identify, identity_address, limit_address,
};
pub use model::{
    Associated, Association, Event, IdentitySource, NewAssociation, Record, RedactReason,
    RevokeReason, RuleScanCount, ScanCount, ScanPair, Seq,
};
pub use redact::{Doom, Lifetimes, plan_redaction};
pub use refusal::{Refusal, retry_after_secs};
pub use rule::{
    Admitted, Facts, Outcome, Passed, Request, Rules, Tally, Verdict, admit, source_key,
};
