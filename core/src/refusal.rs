//! Every way a request is refused, below the rules that refuse and the
//! transports that answer: the wire status of each is decided in one
//! place, `net::error::wire_error`.

use std::time::Duration;

use crate::wire::{ClientIdError, CodeError};

/// Every way a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid code: {0}")]
    InvalidCode(CodeError),
    #[error("invalid clientid: {0}")]
    InvalidClientId(ClientIdError),
    #[error("a clientid is required")]
    ClientIdRequired,
    #[error("this clientid has no association yet: retry the scan over the mobile network")]
    RetryOnMnoNetwork,
    #[error("the mobile network does not identify this subscriber")]
    SubscriberUnknown,
    #[error("this clientid is associated with another subscriber")]
    AssociationMismatch,
    #[error("no such code")]
    CodeNotFound,
    #[error("the code belongs to another CMP")]
    UnknownPrefix,
    /// The peer CMP that owns the code's prefix did not answer in time, is
    /// failing, or has too many requests in flight.
    #[error("the CMP that owns this code is not reachable; retry later")]
    UpstreamUnavailable,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the server is overloaded; retry later")]
    Overloaded,
    #[error("temporarily unable to store the association; retry later")]
    Unavailable,
    #[error("the request target is too long")]
    RequestTooLarge,
    #[error("no such resource; the resolution API is GET /mc/v1/resolve")]
    NotFound,
    #[error("only GET is allowed here")]
    MethodNotAllowed,
    /// An enrichment header sent more than once: which one the gateway
    /// meant is an ambiguity an attacker could play on.
    #[error("the {0} header appears more than once")]
    RepeatedHeader(String),
}

impl Refusal {
    /// Whether monitor mode would let the request through anyway: the
    /// authentication refusals, not the parse or capacity ones.
    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            Refusal::InvalidClientId(_)
                | Refusal::ClientIdRequired
                | Refusal::RetryOnMnoNetwork
                | Refusal::SubscriberUnknown
                | Refusal::AssociationMismatch
        )
    }
}

/// Whole seconds a client should wait before it comes back, for a wait of
/// `wait`: rounded up (a client told less would come back too early and
/// be refused again), and at least 1 (`Retry-After: 0` invites a retry at
/// once).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl Refusal {
    /// Over a rate limit, for `wait` (see [`retry_after_secs`]).
    pub fn rate_limited(wait: Duration) -> Self {
        Refusal::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A client told to wait comes back no earlier than it may, and
        /// no more than a second later.
        #[test]
        fn retry_after_covers_the_wait(nanos in 0u64..100_000_000_000) {
            let wait = Duration::from_nanos(nanos);
            let secs = retry_after_secs(wait);
            proptest::prop_assert!(secs >= 1);
            proptest::prop_assert!(Duration::from_secs(secs) >= wait);
            proptest::prop_assert!(Duration::from_secs(secs) < wait + Duration::from_secs(1) || secs == 1);
        }
    }
}
