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
    /// `wait`: until the limit lets the next request through; the wire
    /// says it as [`retry_after_secs`].
    #[error("too many requests; retry after {} s", retry_after_secs(*wait))]
    RateLimited { wait: Duration },
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

/// The `Retry-After` value (whole seconds) that tells a client to wait
/// `wait`: rounded up, never below 1. The one place a wait becomes a
/// header: rounding down would bring the client back before the limit lets
/// it through (1.9 s said as 1), and 0 would tell it to retry at once.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs();
    let rounded_up = match wait.subsec_nanos() {
        0 => whole,
        _ => whole.saturating_add(1),
    };
    rounded_up.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let said = |millis| retry_after_secs(Duration::from_millis(millis));
        assert_eq!(
            [said(0), said(1), said(1000), said(1001), said(1900)],
            [1, 1, 1, 2, 2]
        );
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    proptest::proptest! {
        /// Waiting the seconds said is waiting long enough, and never a
        /// whole second more than needed (but for the floor of 1).
        #[test]
        fn retry_after_covers_the_wait_and_not_a_second_more(
            secs in 0u64..100_000,
            nanos in 0u32..1_000_000_000,
        ) {
            let wait = Duration::new(secs, nanos);
            let said = retry_after_secs(wait);
            let said_duration = Duration::from_secs(said);
            proptest::prop_assert!(said >= 1);
            proptest::prop_assert!(said_duration >= wait, "{said} s < {wait:?}");
            proptest::prop_assert!(
                said_duration < wait + Duration::from_secs(1) || said == 1,
                "{said} s is a second or more past {wait:?}"
            );
        }
    }
}
