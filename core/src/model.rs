//! The domain's nouns, below every layer that stores or carries them: what
//! an association is, what a caller asks to associate and what came of it,
//! how a subscriber was identified, why an association ended, and the
//! events that record every change. No I/O; the byte layout of events is
//! the store's (`store::event`), their meaning is here.

use std::net::IpAddr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::targeting::TargetRule;
use crate::wire::{ClientId, SubscriberRef};

/// Position of an event in the log. The first event is 1; 0 means "none".
pub type Seq = u64;

/// An event with the time it happened.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
    /// Who made the change through the admin API: a token's name or an
    /// identity provider's subject (at most [`MAX_ACTOR_LEN`] bytes).
    /// `None` for what clients, the RADIUS feed and the server itself do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// The longest actor a record carries.
pub const MAX_ACTOR_LEN: usize = 256;

/// Every state change of the CMP. Field names are the JSON names of
/// `homecmp log export` too: keep them stable.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    AssociationCreated {
        clientid: String,
        subscriber: SubscriberRef,
        source: IdentitySource,
        client_addr: IpAddr,
    },
    AssociationRevoked {
        clientid: String,
        subscriber: SubscriberRef,
        reason: RevokeReason,
    },
    /// The clientid moved to another subscriber (mismatch policy `rebind`).
    AssociationRebound {
        clientid: String,
        from: SubscriberRef,
        to: SubscriberRef,
        source: IdentitySource,
        client_addr: IpAddr,
    },
    CodeRegistered {
        code: String,
        target: String,
    },
    CodeRemoved {
        code: String,
    },
    /// What stands where an event was removed from history (subscriber
    /// erasure, retention): the sequence number and time stay, the log stays
    /// contiguous, and replay skips it. Nothing of the event is left.
    Redacted {
        reason: RedactReason,
    },
    /// Resolutions per code since the previous such event (the server
    /// counts in memory and writes them every `codes.stats_flush_secs`),
    /// at most [`SCANS_PER_EVENT`] codes each: a busy window is written as
    /// several events ([`Event::scans_counted`]).
    ScansCounted {
        codes: Vec<ScanCount>,
    },
    /// A code registered with resolution rules ([`crate::targeting`]): as
    /// `CodeRegistered`, its rules replacing the code's (and their counts
    /// starting again).
    CodeRegisteredWithRules {
        code: String,
        target: String,
        rules: Vec<TargetRule>,
    },
    /// Resolutions per rule of codes that have rules, since the previous
    /// such event, at most [`SCANS_PER_EVENT`] codes each
    /// ([`Event::rule_scans_counted`]).
    RuleScansCounted {
        codes: Vec<RuleScanCount>,
    },
    /// Cluster mode's history rewrite (a subscriber's erasure): the records
    /// that stand at these sequence numbers from now on, on every node's
    /// log, while the stream's own messages there are deleted. It carries
    /// nothing of what it replaces, and changes no state: replay skips it.
    HistoryRewritten {
        records: Vec<Replacement>,
    },
}

/// A record of a history rewrite, and the sequence number it stands at.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Replacement {
    pub seq: Seq,
    pub record: Record,
}

/// Resolutions by each rule of one code, for the rules the code got at
/// sequence `since` (counts for rules replaced since are of no rule).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct RuleScanCount {
    pub code: String,
    pub since: Seq,
    /// One count per rule, in the rules' order.
    pub counts: Vec<u64>,
}

/// Resolutions of one code, by protocol and by whether the request had an
/// association already (`associated`: `existing`, or `none` in auth modes
/// monitor and off) or made it (`first_scan`: `created`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode, Serialize, Deserialize)]
pub struct ScanCount {
    pub code: String,
    pub http1: ScanPair,
    pub http2: ScanPair,
    pub http3: ScanPair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScanPair {
    pub associated: u64,
    pub first_scan: u64,
}

/// Most codes one `scans_counted` event carries. However many codes a
/// window saw, each event stays far below the log's size limit
/// (`store::event::MAX_VALUE_BYTES`): 256 codes of the longest form encode
/// in under 45 KiB.
pub const SCANS_PER_EVENT: usize = 256;

impl ScanCount {
    /// The six counts, in the order http1, http2, http3 x associated,
    /// first scan (the index's slot order).
    pub fn slots(&self) -> [u64; 6] {
        let [a, b, c] = [self.http1, self.http2, self.http3];
        [
            a.associated,
            a.first_scan,
            b.associated,
            b.first_scan,
            c.associated,
            c.first_scan,
        ]
    }

    pub fn from_slots(code: String, s: [u64; 6]) -> Self {
        let pair = |i: usize| ScanPair {
            associated: s[i],
            first_scan: s[i + 1],
        };
        Self {
            code,
            http1: pair(0),
            http2: pair(2),
            http3: pair(4),
        }
    }
}

impl Event {
    /// The `scans_counted` events that carry `counts`: one per
    /// [`SCANS_PER_EVENT`] codes, none for no codes. The only way the
    /// server makes them, so no window's counts outgrow an event.
    pub fn scans_counted(mut counts: Vec<ScanCount>) -> Vec<Event> {
        let mut events = Vec::with_capacity(counts.len().div_ceil(SCANS_PER_EVENT));
        while !counts.is_empty() {
            let rest = counts.split_off(counts.len().min(SCANS_PER_EVENT));
            events.push(Event::ScansCounted { codes: counts });
            counts = rest;
        }
        events
    }

    /// `counts` as `rule_scans_counted` events of at most
    /// [`SCANS_PER_EVENT`] codes (a code has at most
    /// [`crate::targeting::MAX_RULES`] counts: within the log's limit).
    pub fn rule_scans_counted(mut counts: Vec<RuleScanCount>) -> Vec<Event> {
        let mut events = Vec::with_capacity(counts.len().div_ceil(SCANS_PER_EVENT));
        while !counts.is_empty() {
            let rest = counts.split_off(counts.len().min(SCANS_PER_EVENT));
            events.push(Event::RuleScansCounted { codes: counts });
            counts = rest;
        }
        events
    }

    /// Every [`Event::kind`] name.
    pub const KINDS: [&'static str; 10] = [
        "association_created",
        "association_revoked",
        "association_rebound",
        "code_registered",
        "code_removed",
        "redacted",
        "scans_counted",
        "code_registered_with_rules",
        "rule_scans_counted",
        "history_rewritten",
    ];

    /// The `kind` name used in JSON and in `log stats`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AssociationCreated { .. } => "association_created",
            Event::AssociationRevoked { .. } => "association_revoked",
            Event::AssociationRebound { .. } => "association_rebound",
            Event::CodeRegistered { .. } => "code_registered",
            Event::CodeRemoved { .. } => "code_removed",
            Event::Redacted { .. } => "redacted",
            Event::ScansCounted { .. } => "scans_counted",
            Event::CodeRegisteredWithRules { .. } => "code_registered_with_rules",
            Event::RuleScansCounted { .. } => "rule_scans_counted",
            Event::HistoryRewritten { .. } => "history_rewritten",
        }
    }

    /// The clientid an association event changes; `None` for code events.
    pub fn clientid(&self) -> Option<&str> {
        match self {
            Event::AssociationCreated { clientid, .. }
            | Event::AssociationRevoked { clientid, .. }
            | Event::AssociationRebound { clientid, .. } => Some(clientid),
            Event::CodeRegistered { .. }
            | Event::CodeRegisteredWithRules { .. }
            | Event::RuleScansCounted { .. }
            | Event::CodeRemoved { .. }
            | Event::Redacted { .. }
            | Event::HistoryRewritten { .. }
            | Event::ScansCounted { .. } => None,
        }
    }
}

/// How the subscriber behind a request was identified (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// A client IP -> MSISDN binding fed by the operator.
    SessionBinding,
    /// A header set by a trusted TLS-terminating gateway.
    GatewayHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// Through the admin API.
    Admin,
    /// Replaced by a newer clientid of the same subscriber at the cap.
    Superseded,
    /// The subscriber was erased (`DELETE /admin/v1/subscribers/...`).
    Erased,
    /// The clientid moved to another subscriber whose record was since
    /// erased from history (what a rebind becomes when its `to` is erased).
    Moved,
}

/// Why an event was removed from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactReason {
    /// Its subscriber was erased.
    Erased,
    /// It ended before the retention cutoff (`homecmp log compact`).
    Retention,
}

/// What the index knows of one clientid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Association {
    pub subscriber: SubscriberRef,
    /// Sequence number of the event that made it (creation or rebind); the
    /// log has its time.
    pub seq: Seq,
}

/// What a caller wants associated, and how it learned the subscriber.
#[derive(Debug, Clone)]
pub struct NewAssociation {
    pub clientid: ClientId,
    pub subscriber: SubscriberRef,
    pub source: IdentitySource,
    pub client_addr: IpAddr,
}

/// Result of [`Store::associate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Associated {
    /// A new association is durable; `superseded` were revoked to make room.
    Created { seq: Seq, superseded: Vec<ClientId> },
    /// The clientid moved from another subscriber (policy `rebind`).
    Rebound {
        seq: Seq,
        from: SubscriberRef,
        superseded: Vec<ClientId>,
    },
    /// Someone else associated it first; this is what stands.
    Existing(Association),
}
