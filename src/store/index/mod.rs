//! The in-memory state rebuilt from the log: associations, subscribers, codes.
//!
//! Owns no I/O: it only applies events that the log has already made durable,
//! in sequence order. A lookup is one hash and one shard read lock, O(1),
//! never a global lock.
//!
//! Built for 100M associations in RAM (`benches/startup.rs` measures it): an
//! association is a 32-byte entry (clientid key, sequence, subscriber slot,
//! next clientid of the same subscriber) in a [`slab::Slab`], keyed by the
//! clientid's 16 bytes ([`key::ClientKey`]); each subscriber is stored once,
//! 36 bytes, with the slot of its oldest association, and its associations
//! form a list oldest first. What the index does not keep (when an
//! association was made) is in the log at the association's sequence.
//!
//! Writers are serialised by `changes` (the log's writer thread is the only
//! one in practice); the lists are read under it too. A lookup reads its
//! association and, with that shard still read-locked, its subscriber: a
//! writer removes an association before it frees its subscriber, so a
//! lookup never sees a subscriber slot reused by another.

mod key;
mod slab;

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

pub use crate::core::model::Association;
pub use key::ClientKey;

use super::event::{Event, Record, Seq};
use crate::core::targeting::{Compiled, TargetRule};
use crate::wire::{ClientId, IndirectCode, SubscriberRef};
use slab::{Entry, NONE, Slab, Slot};

/// A subscriber's `oldest` while it has no association: only inside one
/// change, between making it and adding its first, or between removing its
/// last and forgetting it. Not [`NONE`], which marks a free entry.
const EMPTY: Slot = NONE - 1;

/// Whether [`Index::add`] added the association, or found its clientid's
/// key taken (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    Yes,
    Taken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeEntry {
    pub target: Arc<str>,
    pub seq: Seq,
    /// Resolutions written to the log (`scans_counted` events), by slot
    /// ([`scan_slot`]).
    pub scans: [u64; SCAN_SLOTS],
    /// The code's resolution rules, if it has any.
    pub rules: Option<Arc<CodeRules>>,
    /// Resolutions by each rule written to the log (`rule_scans_counted`).
    pub rule_scans: Vec<u64>,
}

/// A code's resolution rules as the index holds them: made ready to match
/// ([`Compiled`]), and each one's target ready to answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct CodeRules {
    compiled: Compiled,
    targets: Vec<Arc<str>>,
}

impl CodeRules {
    fn new(rules: Vec<TargetRule>) -> Option<Arc<Self>> {
        if rules.is_empty() {
            return None;
        }
        let targets = rules.iter().map(|r| Arc::from(r.target.as_str())).collect();
        let compiled = Compiled::new(rules);
        Some(Arc::new(CodeRules { compiled, targets }))
    }

    pub fn rules(&self) -> &[TargetRule] {
        self.compiled.rules()
    }
}

/// Counts kept per code: 3 protocols x (associated, first scan).
pub const SCAN_SLOTS: usize = 6;

/// The slot of a resolution over `protocol` (0: HTTP/1.1, 1: HTTP/2, 2:
/// HTTP/3) that made its association (`first_scan`) or had one.
pub fn scan_slot(protocol: usize, first_scan: bool) -> usize {
    protocol * 2 + usize::from(first_scan)
}

/// A code as the index holds it: what the log says, and the resolutions
/// counted since the last `scans_counted` event.
#[derive(Debug)]
struct CodeSlot {
    entry: CodeEntry,
    pending: [AtomicU32; SCAN_SLOTS],
    /// Per rule, not written yet.
    rule_pending: Box<[AtomicU32]>,
}

impl CodeSlot {
    fn new(entry: CodeEntry) -> Self {
        let rules = entry.rule_scans.len();
        Self {
            entry,
            pending: Default::default(),
            rule_pending: (0..rules).map(|_| AtomicU32::new(0)).collect(),
        }
    }
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

/// One association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    clientid: ClientKey,
    seq: Seq,
    subscriber: Slot,
    /// The subscriber's next newer association.
    next: Slot,
}

impl Entry for Held {
    type Key = ClientKey;
    const SIZE: usize = 32;
    const FREE: Self = Held {
        clientid: ClientKey([0; 16]),
        seq: 0,
        subscriber: NONE,
        next: NONE,
    };
    fn key(&self) -> ClientKey {
        self.clientid
    }
    fn is_free(&self) -> bool {
        self.subscriber == NONE
    }
    fn spread(key: &ClientKey) -> u64 {
        key.spread()
    }
    fn encode(&self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.clientid.0);
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..28].copy_from_slice(&self.subscriber.to_le_bytes());
        out[28..32].copy_from_slice(&self.next.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Self {
        Held {
            clientid: ClientKey(bytes[..16].try_into().expect("16 bytes")),
            seq: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            subscriber: u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")),
            next: u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes")),
        }
    }
}

/// One subscriber with at least one association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    subscriber: [u8; 32],
    oldest: Slot,
}

impl Entry for Holder {
    type Key = [u8; 32];
    const SIZE: usize = 36;
    const FREE: Self = Holder {
        subscriber: [0; 32],
        oldest: NONE,
    };
    fn key(&self) -> [u8; 32] {
        self.subscriber
    }
    fn is_free(&self) -> bool {
        self.oldest == NONE
    }
    fn spread(key: &[u8; 32]) -> u64 {
        key::fixed_mix(u64::from_le_bytes(key[..8].try_into().expect("8 bytes")))
    }
    fn encode(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.subscriber);
        out[32..36].copy_from_slice(&self.oldest.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Self {
        Holder {
            subscriber: bytes[..32].try_into().expect("32 bytes"),
            oldest: u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes")),
        }
    }
}

/// Who reads the code table besides a client, and on what authority
/// (DESIGN §4: a request that fails authentication never reaches the code
/// store). Every read names one, and `tests/architecture.rs` checks where
/// each kind is named. A client reads through [`Index::code_scanned`],
/// which takes the [`crate::core::Permit`] only the resolution rule makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A peer CMP, past the federation listener's mutual-TLS handshake
    /// (`src/net/federation.rs`).
    Peer,
    /// The operator, past the admin token (`src/net/admin.rs`, and the
    /// export it streams, `src/codes.rs`).
    Operator,
}

#[derive(Debug, Default)]
pub struct Index {
    associations: Slab<Held>,
    subscribers: Slab<Holder>,
    /// The text of clientids that are not canonical UUIDs.
    names: DashMap<ClientKey, Box<str>>,
    codes: DashMap<Box<str>, CodeSlot>,
    /// Held by every change and by every read of a subscriber's list.
    changes: Mutex<()>,
    last_seq: AtomicU64,
}

/// Everything the index holds, in a comparable order (see
/// [`Index::contents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Oldest association first.
    pub associations: Vec<(ClientId, Association)>,
    /// Each subscriber's clientids oldest first, subscribers in order.
    pub lists: Vec<(SubscriberRef, Vec<ClientId>)>,
    /// By code.
    pub codes: Vec<(String, CodeEntry)>,
    pub last_seq: Seq,
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
        let key = self.known_key(clientid)?;
        self.associations.with(&key, |_, held| Association {
            subscriber: SubscriberRef(self.subscribers.at(held.subscriber).subscriber),
            seq: held.seq,
        })
    }

    /// The subscriber's clientids, oldest first.
    pub fn clientids_of(&self, subscriber: &SubscriberRef) -> Vec<ClientId> {
        let _changes = self.lock_changes();
        let Some((_, holder)) = self.subscribers.get(&subscriber.0) else {
            return Vec::new();
        };
        self.list(holder.oldest)
            .into_iter()
            .map(|(_, held)| self.clientid_text(&held.clientid))
            .collect()
    }

    /// `code`'s entry, for `_reader` (see [`Reader`]).
    pub fn code(&self, code: &IndirectCode, _reader: Reader) -> Option<CodeEntry> {
        self.codes.get(code.as_str()).map(|slot| slot.entry.clone())
    }

    /// Whether `code` is registered: the store's own check before a write
    /// (no target leaves the store).
    pub(in crate::store) fn has_code(&self, code: &IndirectCode) -> bool {
        self.codes.contains_key(code.as_str())
    }

    /// The target of `code`, counting one resolution in `slot`: the hot
    /// path's lookup (one map read and one relaxed add). Only a client the
    /// rule let through reads here: it shows its permit. A code with rules
    /// answers with the target of the rule `choose` picks (counted for that
    /// rule too), else its own; `choose` is not called for a plain code.
    pub fn code_scanned(
        &self,
        code: &IndirectCode,
        slot: usize,
        _permit: &crate::core::Permit,
        choose: impl FnOnce(&Compiled) -> Option<usize>,
    ) -> Option<Arc<str>> {
        let held = self.codes.get(code.as_str())?;
        held.pending[slot].fetch_add(1, Ordering::Relaxed);
        if let Some(rules) = &held.entry.rules
            && let Some(i) = choose(&rules.compiled).filter(|&i| i < rules.targets.len())
        {
            held.rule_pending[i].fetch_add(1, Ordering::Relaxed);
            return Some(rules.targets[i].clone());
        }
        Some(held.entry.target.clone())
    }

    /// Every resolution by each rule of `code`: written and not yet
    /// written (empty for a code without rules).
    pub fn code_rule_scans(&self, code: &IndirectCode, _reader: Reader) -> Option<Vec<u64>> {
        let held = self.codes.get(code.as_str())?;
        let pending = held
            .rule_pending
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)));
        Some(
            held.entry
                .rule_scans
                .iter()
                .zip(pending)
                .map(|(w, p)| w + p)
                .collect(),
        )
    }

    /// Takes the per-rule counts not yet written (see
    /// [`Index::take_pending_scans`]).
    pub fn take_pending_rule_scans(&self) -> Vec<crate::core::model::RuleScanCount> {
        let mut counts = Vec::new();
        for held in self.codes.iter() {
            if held
                .rule_pending
                .iter()
                .all(|c| c.load(Ordering::Relaxed) == 0)
            {
                continue;
            }
            counts.push(crate::core::model::RuleScanCount {
                code: held.key().to_string(),
                since: held.entry.seq,
                counts: held
                    .rule_pending
                    .iter()
                    .map(|c| u64::from(c.swap(0, Ordering::Relaxed)))
                    .collect(),
            });
        }
        counts
    }

    /// Every resolution of `code`: written and not yet written.
    pub fn code_scans(&self, code: &IndirectCode, _reader: Reader) -> Option<[u64; SCAN_SLOTS]> {
        let held = self.codes.get(code.as_str())?;
        Some(std::array::from_fn(|i| {
            held.entry.scans[i] + u64::from(held.pending[i].load(Ordering::Relaxed))
        }))
    }

    /// Takes the counts not yet written (they are then zero here, until
    /// the event that carries them is applied to `scans`).
    pub fn take_pending_scans(&self) -> Vec<crate::core::model::ScanCount> {
        let mut counts = Vec::new();
        for held in self.codes.iter() {
            if held.pending.iter().all(|c| c.load(Ordering::Relaxed) == 0) {
                continue;
            }
            let slots =
                std::array::from_fn(|i| u64::from(held.pending[i].swap(0, Ordering::Relaxed)));
            counts.push(crate::core::model::ScanCount::from_slots(
                held.key().to_string(),
                slots,
            ));
        }
        counts
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

    /// Ends the association of `clientid` if it is still the one that
    /// began at `started` (cluster mode's history rewrite, on a node that
    /// did not read the record that ended it: see
    /// `Store::write_replacements`). `true` if it ended.
    pub fn end_instance(&self, clientid: &str, started: Seq) -> bool {
        let _changes = self.lock_changes();
        match self.association(clientid) {
            Some(held) if held.seq == started => self.revoke(clientid, &held.subscriber).is_ok(),
            _ => false,
        }
    }

    /// Applies one durable event. Events must come in sequence order. An
    /// event that does not apply changes nothing.
    pub fn apply(&self, seq: Seq, record: &Record) -> Result<(), ApplyError> {
        let fail = |reason: String| ApplyError {
            seq,
            kind: record.event.kind(),
            reason,
        };
        let _changes = self.lock_changes();
        match &record.event {
            Event::AssociationCreated {
                clientid,
                subscriber,
                ..
            } => self.create(seq, clientid, subscriber),
            Event::AssociationRevoked {
                clientid,
                subscriber,
                ..
            } => self.revoke(clientid, subscriber),
            Event::AssociationRebound {
                clientid, from, to, ..
            } => self.rebind(seq, clientid, from, to),
            Event::CodeRegistered { code, target } => self.register(seq, code, target, Vec::new()),
            Event::CodeRegisteredWithRules {
                code,
                target,
                rules,
            } => self.register(seq, code, target, rules.clone()),
            Event::RuleScansCounted { codes } => {
                self.count_rule_scans(codes);
                Ok(())
            }
            Event::ScansCounted { codes } => {
                self.count_scans(codes);
                Ok(())
            }
            Event::CodeRemoved { code } => match self.codes.remove(code.as_str()) {
                Some(_) => Ok(()),
                None => Err(format!("code {code} is not registered")),
            },
            // History removed or rewritten without changing the state:
            // nothing to do.
            Event::Redacted { .. } | Event::HistoryRewritten { .. } => Ok(()),
        }
        .map_err(fail)?;
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }

    /// `AssociationCreated`: a clientid that has none gets `subscriber`.
    fn create(&self, seq: Seq, clientid: &str, subscriber: &SubscriberRef) -> Result<(), String> {
        crate::wire::ClientIdRef::parse(clientid).map_err(|e| e.to_string())?;
        let key = ClientKey::of(clientid);
        match self.add(key, seq, subscriber).map_err(|e| e.to_string())? {
            Added::Yes => {}
            Added::Taken => {
                return Err(match self.known_key(clientid) {
                    Some(_) => format!("clientid {clientid} is already associated"),
                    None => format!("clientid {clientid} collides with another"),
                });
            }
        }
        if !key.is_uuid() {
            self.names.insert(key, clientid.into());
        }
        Ok(())
    }

    /// `AssociationRevoked`: the clientid, held by `subscriber`, has none.
    fn revoke(&self, clientid: &str, subscriber: &SubscriberRef) -> Result<(), String> {
        let (key, held) = self.expect_owner(clientid, subscriber)?;
        self.unlink(&held);
        self.associations.remove(&key);
        self.names.remove(&key);
        self.forget_if_empty(held.subscriber);
        Ok(())
    }

    /// `AssociationRebound`: the clientid moves from `from` to `to`, last
    /// in `to`'s list.
    fn rebind(
        &self,
        seq: Seq,
        clientid: &str,
        from: &SubscriberRef,
        to: &SubscriberRef,
    ) -> Result<(), String> {
        let (key, held) = self.expect_owner(clientid, from)?;
        let to = self.holder(to).map_err(|e| e.to_string())?;
        self.unlink(&held);
        let slot = self
            .associations
            .get(&key)
            .map(|(slot, _)| slot)
            .expect("checked above");
        self.associations.update(slot, |entry| {
            *entry = Held {
                seq,
                subscriber: to,
                next: NONE,
                ..*entry
            }
        });
        self.append(to, slot);
        self.forget_if_empty(held.subscriber);
        Ok(())
    }

    /// `CodeRegistered` (no rules) and `CodeRegisteredWithRules`: a new
    /// code, or a new record for it (which keeps the code's counts; its
    /// rules, and their counts, are replaced).
    fn register(
        &self,
        seq: Seq,
        code: &str,
        target: &str,
        rules: Vec<TargetRule>,
    ) -> Result<(), String> {
        let code = IndirectCode::parse(code).map_err(|e| e.to_string())?;
        let rule_count = rules.len();
        let rules = CodeRules::new(rules);
        match self.codes.get_mut(code.as_str()) {
            Some(mut held) => {
                held.entry.target = target.into();
                held.entry.seq = seq;
                held.entry.rules = rules;
                held.entry.rule_scans = vec![0; rule_count];
                held.rule_pending = (0..rule_count).map(|_| AtomicU32::new(0)).collect();
            }
            None => {
                let entry = CodeEntry {
                    target: target.into(),
                    seq,
                    scans: [0; SCAN_SLOTS],
                    rules,
                    rule_scans: vec![0; rule_count],
                };
                self.codes
                    .insert(code.as_str().into(), CodeSlot::new(entry));
            }
        }
        Ok(())
    }

    /// `RuleScansCounted`: adds to each code's written per-rule counts, if
    /// they are for the rules it has now.
    fn count_rule_scans(&self, codes: &[crate::core::model::RuleScanCount]) {
        for count in codes {
            if let Some(mut held) = self.codes.get_mut(count.code.as_str())
                && held.entry.seq == count.since
                && held.entry.rule_scans.len() == count.counts.len()
            {
                for (total, add) in held.entry.rule_scans.iter_mut().zip(&count.counts) {
                    *total = total.saturating_add(*add);
                }
            }
        }
    }

    /// `ScansCounted`: adds to each code's written counts (counts of a code
    /// removed since are of no code any more).
    fn count_scans(&self, codes: &[crate::core::model::ScanCount]) {
        for count in codes {
            if let Some(mut held) = self.codes.get_mut(count.code.as_str()) {
                for (total, add) in held.entry.scans.iter_mut().zip(count.slots()) {
                    *total = total.saturating_add(add);
                }
            }
        }
    }

    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn clientid_text(&self, key: &ClientKey) -> ClientId {
        let text = match key.is_uuid() {
            true => key.uuid_text(),
            false => self
                .names
                .get(key)
                .map(|name| name.to_string())
                .expect("a named clientid keeps its name"),
        };
        ClientId::parse(&text).expect("the index holds valid clientids")
    }

    /// The subscriber's slot, made if it has none.
    fn holder(&self, subscriber: &SubscriberRef) -> Result<Slot, slab::Full> {
        let holder = Holder {
            subscriber: subscriber.0,
            // Not free: a new subscriber gets its first association next.
            oldest: EMPTY,
        };
        Ok(self.subscribers.get_or_insert(holder)?.0)
    }

    /// Adds a new association at the end of its subscriber's list, unless
    /// the clientid's key has one already.
    fn add(
        &self,
        clientid: ClientKey,
        seq: Seq,
        subscriber: &SubscriberRef,
    ) -> Result<Added, slab::Full> {
        let to = self.holder(subscriber)?;
        let held = Held {
            clientid,
            seq,
            subscriber: to,
            next: NONE,
        };
        match self.associations.get_or_insert(held) {
            Ok((slot, true)) => {
                self.append(to, slot);
                Ok(Added::Yes)
            }
            Ok((_, false)) => {
                self.forget_if_empty(to);
                Ok(Added::Taken)
            }
            Err(full) => {
                self.forget_if_empty(to);
                Err(full)
            }
        }
    }

    /// The association entries of a list, from `first` on.
    fn list(&self, first: Slot) -> Vec<(Slot, Held)> {
        let mut items = Vec::new();
        let mut at = first;
        while at < EMPTY {
            let held = self.associations.at(at);
            items.push((at, held));
            at = held.next;
        }
        items
    }

    fn append(&self, subscriber: Slot, slot: Slot) {
        let mut at = self.subscribers.at(subscriber).oldest;
        if at >= EMPTY {
            return self
                .subscribers
                .update(subscriber, |holder| holder.oldest = slot);
        }
        // The list's last entry, walked to without collecting the list.
        loop {
            let next = self.associations.at(at).next;
            if next >= EMPTY {
                break;
            }
            at = next;
        }
        self.associations.update(at, |held| held.next = slot);
    }

    /// Takes `held` out of its subscriber's list.
    fn unlink(&self, held: &Held) {
        let key = held.clientid;
        let items = self.list(self.subscribers.at(held.subscriber).oldest);
        let at = items
            .iter()
            .position(|(_, item)| item.clientid == key)
            .expect("an association is in its subscriber's list");
        let next = match items.get(at + 1) {
            Some(&(slot, _)) => slot,
            // Keep the subscriber from looking free until it is forgotten.
            None if at == 0 => EMPTY,
            None => NONE,
        };
        match at {
            0 => self
                .subscribers
                .update(held.subscriber, |holder| holder.oldest = next),
            _ => self
                .associations
                .update(items[at - 1].0, |item| item.next = next),
        }
    }

    fn forget_if_empty(&self, subscriber: Slot) {
        let holder = self.subscribers.at(subscriber);
        if holder.oldest == EMPTY {
            self.subscribers.remove(&holder.subscriber);
        }
    }

    fn expect_owner(
        &self,
        clientid: &str,
        subscriber: &SubscriberRef,
    ) -> Result<(ClientKey, Held), String> {
        let found = self
            .known_key(clientid)
            .and_then(|key| Some((key, self.associations.get(&key)?.1)));
        match found {
            Some((key, held))
                if self.subscribers.at(held.subscriber).subscriber == subscriber.0 =>
            {
                Ok((key, held))
            }
            Some(_) => Err(format!("clientid {clientid} belongs to another subscriber")),
            None => Err(format!("clientid {clientid} is not associated")),
        }
    }

    /// The key of `clientid` if the index may hold it: a UUID's, or one
    /// whose name it keeps (names are kept exactly while associated).
    fn known_key(&self, clientid: &str) -> Option<ClientKey> {
        let key = ClientKey::of(clientid);
        let known = key.is_uuid() || self.names.get(&key).is_some_and(|name| **name == *clientid);
        known.then_some(key)
    }

    /// The whole state, for comparisons and tools: a copy, made under the
    /// change lock.
    pub fn contents(&self) -> Contents {
        let _changes = self.lock_changes();
        let mut associations = Vec::with_capacity(self.associations.len());
        let _ = self.associations.try_each(|held| {
            let subscriber = SubscriberRef(self.subscribers.at(held.subscriber).subscriber);
            let association = Association {
                subscriber,
                seq: held.seq,
            };
            associations.push((self.clientid_text(&held.clientid), association));
            Ok::<_, ()>(())
        });
        associations.sort_unstable_by_key(|(_, a)| a.seq);
        let mut lists = Vec::with_capacity(self.subscribers.len());
        let _ = self.subscribers.try_each(|holder| {
            let ids = self.list(holder.oldest);
            let ids = ids
                .iter()
                .map(|(_, held)| self.clientid_text(&held.clientid));
            lists.push((SubscriberRef(holder.subscriber), ids.collect()));
            Ok::<_, ()>(())
        });
        lists.sort_unstable_by_key(|(subscriber, _)| subscriber.0);
        Contents {
            associations,
            lists,
            codes: self.contents_codes(),
            last_seq: self.last_seq(),
        }
    }

    /// Every code and its entry, by code.
    pub fn contents_codes(&self) -> Vec<(String, CodeEntry)> {
        let mut codes: Vec<(String, CodeEntry)> = self
            .codes
            .iter()
            .map(|held| (held.key().to_string(), held.value().entry.clone()))
            .collect();
        codes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        codes
    }

    /// One page of the codes in the order they were last registered: the
    /// `limit` with the lowest `seq` above `after`, by `seq`. Holds at most
    /// `limit` entries and no lock between pages (each shard is read-locked
    /// in turn while it is scanned), so an export of any size pages through
    /// the codes in constant memory. A page is two scans of the map that
    /// read each entry's `seq` where it lies, and the text of its own codes
    /// only: a code's text is elsewhere on the heap, and reading it for
    /// every code (to page by code) made a page five times slower.
    ///
    /// Pages read while codes change: a code registered meanwhile gets a
    /// higher `seq` than any read so far, so it comes in a later page (a
    /// code registered again can be in two pages, the later line being
    /// the newer); a code removed meanwhile may be missing.
    pub fn codes_after_seq(
        &self,
        after: Seq,
        limit: usize,
        _reader: Reader,
    ) -> Vec<(String, CodeEntry)> {
        if limit == 0 {
            return Vec::new();
        }
        // The highest `seq` of the page: the `limit`-th lowest above
        // `after`. The candidates are cut back to the `limit` lowest each
        // time they reach twice that (a selection, linear), which raises
        // the bar most later entries fail at once.
        let mut lowest: Vec<Seq> = Vec::new();
        let mut bar = Seq::MAX;
        for held in self.codes.iter() {
            let seq = held.value().entry.seq;
            if seq > after && seq < bar {
                lowest.push(seq);
                if lowest.len() == 2 * limit {
                    lowest.select_nth_unstable(limit - 1);
                    lowest.truncate(limit);
                    bar = lowest[limit - 1];
                }
            }
        }
        if lowest.len() > limit {
            lowest.select_nth_unstable(limit - 1);
            lowest.truncate(limit);
        }
        let Some(&last) = lowest.iter().max() else {
            return Vec::new();
        };
        drop(lowest);
        let mut page: Vec<(String, CodeEntry)> = Vec::with_capacity(limit);
        for held in self.codes.iter() {
            let seq = held.value().entry.seq;
            if seq > after && seq <= last {
                page.push((held.key().to_string(), held.value().entry.clone()));
            }
        }
        page.sort_unstable_by_key(|(_, entry)| entry.seq);
        page
    }

    /// Writes the whole state (see `snapshot` for the layout). Nothing may
    /// change meanwhile.
    pub fn dump(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.last_seq().to_le_bytes())?;
        self.associations.dump(out)?;
        self.subscribers.dump(out)?;
        write_count(out, self.names.len())?;
        for name in self.names.iter() {
            out.write_all(&name.key().0)?;
            write_text(out, name.value())?;
        }
        write_count(out, self.codes.len())?;
        for code in self.codes.iter() {
            let entry = &code.value().entry;
            write_text(out, code.key())?;
            write_text(out, &entry.target)?;
            out.write_all(&entry.seq.to_le_bytes())?;
            for count in entry.scans {
                out.write_all(&count.to_le_bytes())?;
            }
            let rules = entry.rules.as_ref().map(|r| r.rules()).unwrap_or_default();
            write_text(out, &serde_json::to_string(rules).expect("serialisable"))?;
            write_count(out, entry.rule_scans.len())?;
            for count in &entry.rule_scans {
                out.write_all(&count.to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// The index [`Index::dump`] wrote, checked for slots that point
    /// nowhere.
    pub fn undump(input: &mut impl Read) -> io::Result<Self> {
        let last_seq = read_u64(input)?;
        let associations = Slab::<Held>::undump(input)?;
        let subscribers = Slab::<Holder>::undump(input)?;
        let names = DashMap::new();
        for _ in 0..read_u64(input)? {
            let mut key = [0; 16];
            input.read_exact(&mut key)?;
            names.insert(ClientKey(key), read_text(input)?.into());
        }
        let codes = DashMap::new();
        for _ in 0..read_u64(input)? {
            let code = read_text(input)?;
            let target = read_text(input)?;
            let seq = read_u64(input)?;
            let mut scans = [0; SCAN_SLOTS];
            for count in &mut scans {
                *count = read_u64(input)?;
            }
            let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
            let rules: Vec<TargetRule> =
                serde_json::from_str(&read_text(input)?).map_err(|_| bad("rules do not parse"))?;
            let counted = read_u64(input)? as usize;
            if counted != rules.len() {
                return Err(bad("rule counts do not match the rules"));
            }
            let rule_scans = (0..counted)
                .map(|_| read_u64(input))
                .collect::<io::Result<_>>()?;
            let entry = CodeEntry {
                target: target.into(),
                seq,
                scans,
                rules: CodeRules::new(rules),
                rule_scans,
            };
            codes.insert(code.into(), CodeSlot::new(entry));
        }
        let index = Self {
            associations,
            subscribers,
            names,
            codes,
            changes: Mutex::new(()),
            last_seq: AtomicU64::new(last_seq),
        };
        index.check_slots()?;
        Ok(index)
    }

    /// Every live entry's slots name entries that exist.
    fn check_slots(&self) -> io::Result<()> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a slot points outside the index",
            )
        };
        self.associations.try_each(|held| {
            (self.subscribers.holds(held.subscriber) && self.associations.holds(held.next))
                .then_some(())
                .ok_or_else(bad)
        })?;
        self.subscribers.try_each(|holder| {
            self.associations
                .holds(holder.oldest)
                .then_some(())
                .ok_or_else(bad)
        })
    }
}

fn write_count(out: &mut impl Write, count: usize) -> io::Result<()> {
    out.write_all(&(count as u64).to_le_bytes())
}

fn write_text(out: &mut impl Write, text: &str) -> io::Result<()> {
    out.write_all(&(text.len() as u32).to_le_bytes())?;
    out.write_all(text.as_bytes())
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_text(input: &mut impl Read) -> io::Result<String> {
    let mut len = [0; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "text too long"));
    }
    let mut bytes = vec![0; len];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event::{IdentitySource, RevokeReason};

    fn created(clientid: &str, sub: u8) -> Record {
        Record {
            at_ms: 1000,
            actor: None,
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
            actor: None,
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
        assert_eq!((a.subscriber, a.seq), (SubscriberRef([1; 32]), 1));
        assert_eq!(index.clientids_of(&SubscriberRef([1; 32])).len(), 2);
        index.apply(3, &revoked("a", 1)).unwrap();
        assert_eq!(index.association("a"), None);
        let rebound = Record {
            at_ms: 3000,
            actor: None,
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
            actor: None,
            event: Event::CodeRemoved {
                code: "2001000001x".into(),
            },
        };
        assert!(index.apply(2, &removed).is_err());
    }

    /// What the index must hold after a sequence of changes: each
    /// subscriber's clientids oldest first.
    #[derive(Default)]
    struct Model {
        lists: std::collections::BTreeMap<[u8; 32], Vec<String>>,
    }

    impl Model {
        fn owner(&self, clientid: &str) -> Option<u8> {
            let mut owners = self
                .lists
                .iter()
                .filter(|(_, ids)| ids.iter().any(|id| id == clientid));
            owners.next().map(|(sub, _)| sub[0])
        }
    }

    /// Clientid `i` of a small set, half UUIDs and half names.
    fn some_clientid(i: u8) -> String {
        match i % 2 {
            0 => format!("named-{i}"),
            _ => uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &[i]).to_string(),
        }
    }

    proptest::proptest! {
        /// Random creations, revocations and rebinds keep the lists, the
        /// lookups and a dumped copy equal to the model.
        #[test]
        fn changes_keep_the_lists_and_a_dump_equal_to_a_model(
            steps in proptest::collection::vec((0u8..24, 1u8..6), 1..200)
        ) {
            let index = Index::new();
            let mut model = Model::default();
            for (seq, (i, sub)) in steps.into_iter().enumerate() {
                let seq = seq as u64 + 1;
                let clientid = some_clientid(i);
                let record = match model.owner(&clientid) {
                    None => created(&clientid, sub),
                    Some(owner) if owner == sub => revoked(&clientid, sub),
                    Some(owner) => Record {
                        at_ms: seq,
                        actor: None,
                        event: Event::AssociationRebound {
                            clientid: clientid.clone(),
                            from: SubscriberRef([owner; 32]),
                            to: SubscriberRef([sub; 32]),
                            source: IdentitySource::GatewayHeader,
                            client_addr: "127.1.0.2".parse().unwrap(),
                        },
                    },
                };
                index.apply(seq, &record).unwrap();
                if let Some(owner) = model.owner(&clientid) {
                    let ids = model.lists.get_mut(&[owner; 32]).unwrap();
                    ids.retain(|id| *id != clientid);
                    if ids.is_empty() {
                        model.lists.remove(&[owner; 32]);
                    }
                }
                if !matches!(record.event, Event::AssociationRevoked { .. }) {
                    model.lists.entry([sub; 32]).or_default().push(clientid.clone());
                }
                proptest::prop_assert_eq!(index.association(&clientid).map(|a| a.subscriber.0[0]), model.owner(&clientid));
            }
            let contents = index.contents();
            let lists: Vec<(SubscriberRef, Vec<String>)> = contents
                .lists
                .iter()
                .map(|(sub, ids)| (*sub, ids.iter().map(|id| id.as_str().to_owned()).collect()))
                .collect();
            let expected: Vec<(SubscriberRef, Vec<String>)> = model
                .lists
                .iter()
                .map(|(sub, ids)| (SubscriberRef(*sub), ids.clone()))
                .collect();
            proptest::prop_assert_eq!(lists, expected);
            let counts = index.counts();
            proptest::prop_assert_eq!((counts.associations, counts.subscribers), (contents.associations.len(), model.lists.len()));
            let mut bytes = Vec::new();
            index.dump(&mut bytes).unwrap();
            let copy = Index::undump(&mut bytes.as_slice()).unwrap();
            proptest::prop_assert_eq!(copy.contents(), contents.clone());
            proptest::prop_assert_eq!(copy.counts(), counts);
            // The copy keeps changing like the original.
            for (n, (clientid, a)) in contents.associations.iter().enumerate() {
                let seq = contents.last_seq + 1 + n as u64;
                copy.apply(seq, &revoked(clientid.as_str(), a.subscriber.0[0])).unwrap();
            }
            let emptied = copy.counts();
            proptest::prop_assert_eq!((emptied.associations, emptied.subscribers), (0, 0));
        }
    }

    fn registered(code: &str) -> Record {
        Record {
            at_ms: 0,
            actor: None,
            event: Event::CodeRegistered {
                code: code.into(),
                target: format!("https://example.org/{code}"),
            },
        }
    }

    proptest::proptest! {
        /// Page after page, an export sees every code once, in the order
        /// they were last registered, and never holds more than a page.
        #[test]
        fn pages_of_codes_are_every_code_once_by_seq(
            steps in proptest::collection::vec("[a-e]{1,2}", 0..300),
            limit in 1usize..50,
        ) {
            // Codes registered and registered again (a new seq each time).
            let index = Index::new();
            for (seq, value) in steps.iter().enumerate() {
                index.apply(seq as u64 + 1, &registered(&format!("2001000001{value}"))).unwrap();
            }
            let mut paged = Vec::new();
            let mut after = 0;
            loop {
                let page = index.codes_after_seq(after, limit, Reader::Operator);
                proptest::prop_assert!(page.len() <= limit);
                let Some((_, last)) = page.last() else { break };
                after = last.seq;
                paged.extend(page);
            }
            let mut expected = index.contents_codes();
            expected.sort_by_key(|(_, entry)| entry.seq);
            proptest::prop_assert_eq!(paged, expected);
        }
    }

    #[test]
    fn a_page_reads_the_codes_as_they_are_when_it_is_read() {
        let index = Index::new();
        for (seq, code) in ["2001000001f", "2001000001b", "2001000001d"]
            .iter()
            .enumerate()
        {
            index.apply(seq as u64 + 1, &registered(code)).unwrap();
        }
        let names = |page: &[(String, CodeEntry)]| -> Vec<String> {
            page.iter().map(|(code, _)| code.clone()).collect()
        };
        let first = index.codes_after_seq(0, 2, Reader::Operator);
        assert_eq!(names(&first), ["2001000001f", "2001000001b"]);
        // Between two pages: a new code, and the first one registered
        // again, come after what was read (the latter a second time).
        index.apply(4, &registered("2001000001a")).unwrap();
        index.apply(5, &registered("2001000001f")).unwrap();
        let rest = index.codes_after_seq(2, 2, Reader::Operator);
        assert_eq!(names(&rest), ["2001000001d", "2001000001a"]);
        let last = index.codes_after_seq(4, 2, Reader::Operator);
        assert_eq!(names(&last), ["2001000001f"]);
        assert_eq!(index.codes_after_seq(5, 2, Reader::Operator), []);
        assert_eq!(index.codes_after_seq(0, 0, Reader::Operator), []);
    }

    #[test]
    fn codes_are_canonical() {
        let index = Index::new();
        let registered = Record {
            at_ms: 0,
            actor: None,
            event: Event::CodeRegistered {
                code: "6001900107f52810d5abc".into(),
                target: "https://example.org/x".into(),
            },
        };
        index.apply(1, &registered).unwrap();
        let code = IndirectCode::parse("6001900107F52810D5abc").unwrap();
        assert_eq!(
            &*index.code(&code, Reader::Operator).unwrap().target,
            "https://example.org/x"
        );
        let other_case = IndirectCode::parse("6001900107F52810D5ABC").unwrap();
        assert_eq!(index.code(&other_case, Reader::Operator), None);
    }
}
