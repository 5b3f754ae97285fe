//! The in-memory state rebuilt from the log: associations, subscribers, codes.
//!
//! Owns no I/O: it only applies events that the log has already made durable,
//! in sequence order. Reads are lock-free for the caller's purposes: sharded
//! concurrent maps (dashmap, chosen over papaya by `benches/index.rs`), so a
//! lookup is one hash and one shard read lock, O(1), never a global lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

pub use crate::core::model::Association;

use super::event::{Event, Record, Seq};
use crate::wire::{ClientId, IndirectCode, SubscriberRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeEntry {
    pub target: Arc<str>,
    pub seq: Seq,
}

/// An event that does not fit the state it is applied to: the log is
/// inconsistent and replay stops there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {seq} ({kind}) does not apply: {reason}")]
pub struct ApplyError {
    pub seq: Seq,
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Index {
    associations: DashMap<ClientId, Association>,
    /// Clientids of each subscriber, oldest association first.
    subscribers: DashMap<SubscriberRef, Vec<ClientId>>,
    codes: DashMap<Box<str>, CodeEntry>,
    last_seq: AtomicU64,
}

/// The whole state, as [`Index::parts`] gives it.
#[derive(Debug, Default)]
pub struct Parts {
    /// Oldest association first.
    pub associations: Vec<(ClientId, Association)>,
    pub codes: Vec<(String, CodeEntry)>,
    pub last_seq: Seq,
    /// How many subscribers, when known (sizes their map up front).
    pub subscribers: Option<usize>,
}

/// Counts for summaries and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub associations: usize,
    pub subscribers: usize,
    pub codes: usize,
    pub last_seq: Seq,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// The association of `clientid`, if any. The hot path: no allocation.
    pub fn association(&self, clientid: &str) -> Option<Association> {
        self.associations.get(clientid).map(|entry| *entry)
    }

    /// The subscriber's clientids, oldest first.
    pub fn clientids_of(&self, subscriber: &SubscriberRef) -> Vec<ClientId> {
        self.subscribers
            .get(subscriber)
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }

    pub fn code(&self, code: &IndirectCode) -> Option<CodeEntry> {
        self.codes.get(code.as_str()).map(|entry| entry.clone())
    }

    pub fn counts(&self) -> Counts {
        Counts {
            associations: self.associations.len(),
            subscribers: self.subscribers.len(),
            codes: self.codes.len(),
            last_seq: self.last_seq(),
        }
    }

    /// Sequence number of the last event applied.
    pub fn last_seq(&self) -> Seq {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Applies one durable event. Events must come in sequence order; the
    /// caller serialises changes that touch the same clientid or subscriber.
    pub fn apply(&self, seq: Seq, record: &Record) -> Result<(), ApplyError> {
        let fail = |reason: String| ApplyError {
            seq,
            kind: record.event.kind(),
            reason,
        };
        match &record.event {
            Event::AssociationCreated {
                clientid,
                subscriber,
                ..
            } => {
                let id = ClientId::parse(clientid).map_err(|e| fail(e.to_string()))?;
                if self.associations.contains_key(clientid.as_str()) {
                    return Err(fail(format!("clientid {clientid} is already associated")));
                }
                self.associations.insert(
                    id.clone(),
                    Association {
                        subscriber: *subscriber,
                        since_ms: record.at_ms,
                        seq,
                    },
                );
                self.subscribers.entry(*subscriber).or_default().push(id);
            }
            Event::AssociationRevoked {
                clientid,
                subscriber,
                ..
            } => {
                self.expect_owner(clientid, subscriber).map_err(fail)?;
                self.associations.remove(clientid.as_str());
                self.forget(subscriber, clientid);
            }
            Event::AssociationRebound {
                clientid, from, to, ..
            } => {
                self.expect_owner(clientid, from).map_err(fail)?;
                let id = ClientId::parse(clientid).map_err(|e| fail(e.to_string()))?;
                self.forget(from, clientid);
                self.associations.insert(
                    id.clone(),
                    Association {
                        subscriber: *to,
                        since_ms: record.at_ms,
                        seq,
                    },
                );
                self.subscribers.entry(*to).or_default().push(id);
            }
            Event::CodeRegistered { code, target } => {
                let code = IndirectCode::parse(code).map_err(|e| fail(e.to_string()))?;
                self.codes.insert(
                    code.as_str().into(),
                    CodeEntry {
                        target: target.as_str().into(),
                        seq,
                    },
                );
            }
            Event::CodeRemoved { code } => {
                if self.codes.remove(code.as_str()).is_none() {
                    return Err(fail(format!("code {code} is not registered")));
                }
            }
            // History removed without changing the state: nothing to do.
            Event::Redacted { .. } => {}
        }
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }

    /// Everything the index holds, for a snapshot: associations oldest
    /// first (the order that rebuilds each subscriber's list), codes, and
    /// the last sequence applied. Consistent only while nothing applies.
    pub fn parts(&self) -> Parts {
        let mut associations: Vec<(ClientId, Association)> = self
            .associations
            .iter()
            .map(|entry| (entry.key().clone(), *entry.value()))
            .collect();
        associations.sort_unstable_by_key(|(_, a)| a.seq);
        let codes = self
            .codes
            .iter()
            .map(|entry| (entry.key().to_string(), entry.value().clone()))
            .collect();
        Parts {
            associations,
            codes,
            last_seq: self.last_seq(),
            subscribers: Some(self.subscribers.len()),
        }
    }

    /// The index `parts` describe (the inverse of [`Index::parts`]): the
    /// maps sized up front, the association map and the subscriber lists
    /// filled on two threads.
    pub fn from_parts(parts: Parts) -> Self {
        let index = Self {
            associations: DashMap::with_capacity(parts.associations.len()),
            subscribers: DashMap::with_capacity(parts.subscribers.unwrap_or(0)),
            codes: DashMap::with_capacity(parts.codes.len()),
            last_seq: AtomicU64::new(parts.last_seq),
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (clientid, association) in &parts.associations {
                    index.associations.insert(clientid.clone(), *association);
                }
            });
            for (clientid, association) in &parts.associations {
                index
                    .subscribers
                    .entry(association.subscriber)
                    .or_default()
                    .push(clientid.clone());
            }
            for (code, entry) in &parts.codes {
                index.codes.insert(code.as_str().into(), entry.clone());
            }
        });
        index
    }

    fn expect_owner(&self, clientid: &str, subscriber: &SubscriberRef) -> Result<(), String> {
        match self.associations.get(clientid) {
            Some(a) if a.subscriber == *subscriber => Ok(()),
            Some(_) => Err(format!("clientid {clientid} belongs to another subscriber")),
            None => Err(format!("clientid {clientid} is not associated")),
        }
    }

    fn forget(&self, subscriber: &SubscriberRef, clientid: &str) {
        if let dashmap::mapref::entry::Entry::Occupied(mut ids) =
            self.subscribers.entry(*subscriber)
        {
            ids.get_mut().retain(|id| id.as_str() != clientid);
            if ids.get().is_empty() {
                ids.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event::{IdentitySource, RevokeReason};

    fn created(clientid: &str, sub: u8) -> Record {
        Record {
            at_ms: 1000,
            event: Event::AssociationCreated {
                clientid: clientid.into(),
                subscriber: SubscriberRef([sub; 32]),
                source: IdentitySource::SessionBinding,
                client_addr: "127.1.0.1".parse().unwrap(),
            },
        }
    }

    fn revoked(clientid: &str, sub: u8) -> Record {
        Record {
            at_ms: 2000,
            event: Event::AssociationRevoked {
                clientid: clientid.into(),
                subscriber: SubscriberRef([sub; 32]),
                reason: RevokeReason::Admin,
            },
        }
    }

    #[test]
    fn create_revoke_and_rebind() {
        let index = Index::new();
        index.apply(1, &created("a", 1)).unwrap();
        index.apply(2, &created("b", 1)).unwrap();
        let a = index.association("a").unwrap();
        assert_eq!(
            (a.subscriber, a.seq, a.since_ms),
            (SubscriberRef([1; 32]), 1, 1000)
        );
        assert_eq!(index.clientids_of(&SubscriberRef([1; 32])).len(), 2);
        index.apply(3, &revoked("a", 1)).unwrap();
        assert_eq!(index.association("a"), None);
        let rebound = Record {
            at_ms: 3000,
            event: Event::AssociationRebound {
                clientid: "b".into(),
                from: SubscriberRef([1; 32]),
                to: SubscriberRef([2; 32]),
                source: IdentitySource::GatewayHeader,
                client_addr: "127.1.0.2".parse().unwrap(),
            },
        };
        index.apply(4, &rebound).unwrap();
        assert_eq!(
            index.association("b").unwrap().subscriber,
            SubscriberRef([2; 32])
        );
        assert_eq!(
            index.counts(),
            Counts {
                associations: 1,
                subscribers: 1,
                codes: 0,
                last_seq: 4
            }
        );
    }

    #[test]
    fn inconsistent_events_are_refused() {
        let index = Index::new();
        index.apply(1, &created("a", 1)).unwrap();
        let err = index.apply(2, &created("a", 2)).unwrap_err();
        assert_eq!((err.seq, err.kind), (2, "association_created"));
        assert!(index.apply(2, &revoked("a", 2)).is_err());
        assert!(index.apply(2, &revoked("zz", 1)).is_err());
        assert!(index.apply(2, &created("bad id!", 1)).is_err());
        let removed = Record {
            at_ms: 0,
            event: Event::CodeRemoved {
                code: "2001000001x".into(),
            },
        };
        assert!(index.apply(2, &removed).is_err());
    }

    #[test]
    fn codes_are_canonical() {
        let index = Index::new();
        let registered = Record {
            at_ms: 0,
            event: Event::CodeRegistered {
                code: "6001900107f52810d5abc".into(),
                target: "https://example.org/x".into(),
            },
        };
        index.apply(1, &registered).unwrap();
        let code = IndirectCode::parse("6001900107F52810D5abc").unwrap();
        assert_eq!(&*index.code(&code).unwrap().target, "https://example.org/x");
        let other_case = IndirectCode::parse("6001900107F52810D5ABC").unwrap();
        assert_eq!(index.code(&other_case), None);
    }
}
