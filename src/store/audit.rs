//! The audit index: which events name a code, a subscriber, an actor or a
//! kind, so that `GET /admin/v1/audit` answers from the log without
//! reading all of it.
//!
//! It is the column family [`CF`] of the log's own RocksDB, one empty
//! value per (term, event): the key is the term (a tag byte, the value,
//! a 0 byte) then the event's sequence number, big-endian, so a term's
//! events are together, in log order. [`MARK`] holds the last sequence
//! number indexed.
//!
//! Every write that changes the log changes the index in the same batch:
//! the log's writer ([`super::log`]) puts the terms of what it appends,
//! and a history rewrite ([`super::history`]) deletes the terms of the
//! record it replaces and puts those of the new one. So an erased
//! subscriber's keyed identity leaves the index with the records that held
//! it. What writes the log without them (an import into a new data dir,
//! a repair, an older version) leaves the mark behind the log's last
//! event, and [`catch_up`] indexes the rest when the log is next opened
//! for writing (all of it again if the mark is ahead of the log).

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::event::{self, CodecError, Event, Record, Seq};
use crate::wire::SubscriberRef;

/// What stops the index: the database, or a log record that does not read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit index: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record at sequence {seq}: {reason}")]
    Corrupt { seq: Seq, reason: CodecError },
    #[error("corrupt record key {key:02x?}: {reason}")]
    CorruptKey { key: Vec<u8>, reason: CodecError },
}

/// The column family of the index.
pub const CF: &str = "audit";
/// The key of the last sequence number indexed: above every term's tag.
const MARK: &[u8] = &[0xff];
/// Records indexed per batch when catching up.
const BATCH: usize = 4096;
/// Most candidates one query looks at before it answers with what it
/// found and where to go on (`next`).
pub const MAX_SCAN: usize = 100_000;
/// Most events one query answers.
pub const MAX_LIMIT: usize = 1000;

const KIND: u8 = b'k';
const CODE: u8 = b'c';
const SUBSCRIBER: u8 = b's';
const ACTOR: u8 = b'a';

fn term(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut term = Vec::with_capacity(value.len() + 2);
    term.push(tag);
    term.extend_from_slice(value);
    term.push(0);
    term
}

/// The terms of `record`: its kind, the code it changes, the subscribers
/// it names, its actor. Codes and actors never hold a 0 byte (their
/// parsers refuse one); a subscriber is always 32 bytes.
pub fn terms(record: &Record) -> Vec<Vec<u8>> {
    let mut terms = vec![term(KIND, record.event.kind().as_bytes())];
    match &record.event {
        Event::AssociationCreated { subscriber, .. }
        | Event::AssociationRevoked { subscriber, .. } => {
            terms.push(term(SUBSCRIBER, &subscriber.0));
        }
        Event::AssociationRebound { from, to, .. } => {
            terms.push(term(SUBSCRIBER, &from.0));
            terms.push(term(SUBSCRIBER, &to.0));
        }
        Event::CodeRegistered { code, .. }
        | Event::CodeRegisteredWithRules { code, .. }
        | Event::CodeRemoved { code } => {
            terms.push(term(CODE, code.as_bytes()));
        }
        Event::Redacted { .. }
        | Event::ScansCounted { .. }
        | Event::RuleScansCounted { .. }
        | Event::HistoryRewritten { .. } => {}
    }
    if let Some(actor) = &record.actor {
        terms.push(term(ACTOR, actor.as_bytes()));
    }
    terms
}

fn key(term: &[u8], seq: Seq) -> Vec<u8> {
    let mut key = Vec::with_capacity(term.len() + 8);
    key.extend_from_slice(term);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(CF)
        .expect("the log is opened with its audit column family")
}

/// Puts `terms` (of the record at `seq`) into `batch`.
pub fn put(db: &DB, batch: &mut WriteBatch, seq: Seq, terms: &[Vec<u8>]) {
    for term in terms {
        batch.put_cf(cf(db), key(term, seq), []);
    }
}

/// Deletes the terms of `record` (at `seq`) in `batch`.
pub fn delete(db: &DB, batch: &mut WriteBatch, seq: Seq, record: &Record) {
    for term in terms(record) {
        batch.delete_cf(cf(db), key(&term, seq));
    }
}

/// Records in `batch` that the index covers the log up to `seq`.
pub fn mark(db: &DB, batch: &mut WriteBatch, seq: Seq) {
    batch.put_cf(cf(db), MARK, seq.to_be_bytes());
}

fn marked(db: &DB) -> Result<Option<Seq>, AuditError> {
    Ok(db
        .get_cf(cf(db), MARK)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(Seq::from_be_bytes))
}

/// Brings the index up to the log's `last` event (see the module docs);
/// returns how many events it indexed.
pub fn catch_up(db: &DB, last: Seq) -> Result<u64, AuditError> {
    let from = match marked(db)? {
        Some(mark) if mark == last => return Ok(0),
        Some(mark) if mark < last => mark + 1,
        None if last == 0 => return Ok(0),
        _ => {
            // Ahead of the log (cut by a repair) or never made: again.
            let mut clear = WriteBatch::default();
            clear.delete_range_cf(cf(db), [0u8].as_slice(), [0xffu8, 0xff].as_slice());
            db.write(clear)?;
            1
        }
    };
    let mut batch = WriteBatch::default();
    let mut indexed = 0;
    for item in db.iterator(IteratorMode::From(
        &event::encode_key(from),
        Direction::Forward,
    )) {
        let (k, value) = item?;
        let seq = event::decode_key(&k).map_err(|reason| AuditError::CorruptKey {
            key: k.to_vec(),
            reason,
        })?;
        if seq > last {
            break;
        }
        let record =
            event::decode_value(&value).map_err(|reason| AuditError::Corrupt { seq, reason })?;
        put(db, &mut batch, seq, &terms(&record));
        indexed += 1;
        if batch.len() >= BATCH {
            mark(db, &mut batch, seq);
            db.write(std::mem::take(&mut batch))?;
        }
    }
    mark(db, &mut batch, last);
    db.write(batch)?;
    Ok(indexed)
}

/// What an audit query asks for: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub code: Option<String>,
    pub subscriber: Option<SubscriberRef>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl Filter {
    /// The terms a record must have, most selective first: the first one
    /// drives the scan.
    fn terms(&self) -> Vec<Vec<u8>> {
        let mut terms = Vec::new();
        if let Some(code) = &self.code {
            terms.push(term(CODE, code.as_bytes()));
        }
        if let Some(subscriber) = &self.subscriber {
            terms.push(term(SUBSCRIBER, &subscriber.0));
        }
        if let Some(actor) = &self.actor {
            terms.push(term(ACTOR, actor.as_bytes()));
        }
        if let Some(kind) = &self.kind {
            terms.push(term(KIND, kind.as_bytes()));
        }
        terms
    }

    fn matches(&self, wanted: &[Vec<u8>], record: &Record) -> bool {
        let has = terms(record);
        wanted.iter().all(|t| has.contains(t))
            && self.since_ms.is_none_or(|since| record.at_ms >= since)
            && self.until_ms.is_none_or(|until| record.at_ms <= until)
    }
}

/// One page of an answer, newest first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<(Seq, Record)>,
    /// Where the next page starts: ask again with `before = next`. `None`:
    /// nothing older matches.
    pub next: Option<Seq>,
}

/// The events before `before` (all when `None`) that match `filter`,
/// newest first, at most `limit` ([`MAX_LIMIT`]); at most [`MAX_SCAN`]
/// candidates are read, and a page cut short by that says where to go on.
pub fn query(
    db: &DB,
    filter: &Filter,
    before: Option<Seq>,
    limit: usize,
) -> Result<Page, AuditError> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let Some(upper) = before.map_or(Some(Seq::MAX), |b| b.checked_sub(1)) else {
        return Ok(Page::default());
    };
    let wanted = filter.terms();
    let mut page = Page::default();
    let mut candidates = Candidates::new(db, wanted.first(), upper);
    let mut scanned = 0;
    while let Some(seq) = candidates.next_seq()? {
        if page.records.len() == limit || scanned == MAX_SCAN {
            page.next = Some(seq + 1);
            break;
        }
        scanned += 1;
        let Some(value) = db.get(event::encode_key(seq))? else {
            continue;
        };
        let record =
            event::decode_value(&value).map_err(|reason| AuditError::Corrupt { seq, reason })?;
        if filter.matches(&wanted, &record) {
            page.records.push((seq, record));
        }
    }
    Ok(page)
}

/// The sequence numbers to look at, newest first: a term's events in the
/// index, or the whole log when no term is asked for.
struct Candidates<'a> {
    iter: rocksdb::DBIteratorWithThreadMode<'a, DB>,
    term: Option<Vec<u8>>,
}

impl<'a> Candidates<'a> {
    fn new(db: &'a DB, term: Option<&Vec<u8>>, upper: Seq) -> Self {
        let iter = match term {
            Some(term) => {
                let from = key(term, upper);
                db.iterator_cf(cf(db), IteratorMode::From(&from, Direction::Reverse))
            }
            None => db.iterator(IteratorMode::From(
                &event::encode_key(upper),
                Direction::Reverse,
            )),
        };
        Candidates {
            iter,
            term: term.cloned(),
        }
    }

    fn next_seq(&mut self) -> Result<Option<Seq>, AuditError> {
        let Some(item) = self.iter.next() else {
            return Ok(None);
        };
        let (k, _) = item?;
        let seq_bytes = match &self.term {
            Some(term) if k.len() == term.len() + 8 && k.starts_with(term) => &k[term.len()..],
            Some(_) => return Ok(None),
            None => &k[..],
        };
        let seq = event::decode_key(seq_bytes).map_err(|reason| AuditError::CorruptKey {
            key: k.to_vec(),
            reason,
        })?;
        Ok(Some(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{IdentitySource, RevokeReason};
    use crate::store::EventLog;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Register { code: u8, actor: Option<u8> },
        Remove { code: u8, actor: Option<u8> },
        Associate { clientid: u8, subscriber: u8 },
        Revoke { clientid: u8, actor: Option<u8> },
    }

    fn op() -> impl Strategy<Value = Op> {
        let actor = proptest::option::of(0..3u8);
        prop_oneof![
            (0..4u8, actor.clone()).prop_map(|(code, actor)| Op::Register { code, actor }),
            (0..4u8, actor.clone()).prop_map(|(code, actor)| Op::Remove { code, actor }),
            (0..6u8, 0..3u8).prop_map(|(clientid, subscriber)| Op::Associate {
                clientid,
                subscriber
            }),
            (0..6u8, actor).prop_map(|(clientid, actor)| Op::Revoke { clientid, actor }),
        ]
    }

    fn code(c: u8) -> String {
        format!("2001000001c{c}")
    }
    fn actor(a: Option<u8>) -> Option<String> {
        a.map(|a| format!("actor-{a}"))
    }
    fn sub(s: u8) -> SubscriberRef {
        SubscriberRef([s + 1; 32])
    }

    /// A valid history from `ops` (a revocation only of what is
    /// associated, an association only of what is not), then an erasure of
    /// `erase` if asked: its associations revoked, then history rewritten.
    fn records(ops: &[Op], erase: Option<u8>) -> Vec<Record> {
        let mut held: BTreeMap<u8, u8> = BTreeMap::new();
        let mut out = Vec::new();
        let mut at = 1_000;
        let mut push = |event, who: Option<String>| {
            at += 7;
            out.push(Record {
                at_ms: at,
                event,
                actor: who,
            });
        };
        for op in ops {
            match *op {
                Op::Register { code: c, actor: a } => push(
                    Event::CodeRegistered {
                        code: code(c),
                        target: "https://example.org/".into(),
                    },
                    actor(a),
                ),
                Op::Remove { code: c, actor: a } => {
                    push(Event::CodeRemoved { code: code(c) }, actor(a))
                }
                Op::Associate {
                    clientid,
                    subscriber,
                } if !held.contains_key(&clientid) => {
                    held.insert(clientid, subscriber);
                    push(
                        Event::AssociationCreated {
                            clientid: format!("app-{clientid}"),
                            subscriber: sub(subscriber),
                            source: IdentitySource::SessionBinding,
                            client_addr: "127.1.0.1".parse().unwrap(),
                        },
                        None,
                    );
                }
                Op::Revoke { clientid, actor: a } => {
                    if let Some(s) = held.remove(&clientid) {
                        push(
                            Event::AssociationRevoked {
                                clientid: format!("app-{clientid}"),
                                subscriber: sub(s),
                                reason: RevokeReason::Admin,
                            },
                            actor(a),
                        );
                    }
                }
                Op::Associate { .. } => {}
            }
        }
        if let Some(e) = erase {
            for (clientid, s) in held.iter().filter(|(_, s)| **s == e) {
                push(
                    Event::AssociationRevoked {
                        clientid: format!("app-{clientid}"),
                        subscriber: sub(*s),
                        reason: RevokeReason::Erased,
                    },
                    Some("dpo".into()),
                );
            }
        }
        out
    }

    /// What the filter means, read straight off each record.
    fn wanted(filter: &Filter, record: &Record) -> bool {
        let (code, subscribers): (Option<&str>, Vec<SubscriberRef>) = match &record.event {
            Event::CodeRegistered { code, .. }
            | Event::CodeRegisteredWithRules { code, .. }
            | Event::CodeRemoved { code } => (Some(code), vec![]),
            Event::AssociationCreated { subscriber, .. }
            | Event::AssociationRevoked { subscriber, .. } => (None, vec![*subscriber]),
            Event::AssociationRebound { from, to, .. } => (None, vec![*from, *to]),
            _ => (None, vec![]),
        };
        filter.code.as_deref().is_none_or(|c| Some(c) == code)
            && filter.subscriber.is_none_or(|s| subscribers.contains(&s))
            && filter
                .actor
                .as_ref()
                .is_none_or(|a| record.actor.as_ref() == Some(a))
            && filter
                .kind
                .as_deref()
                .is_none_or(|k| k == record.event.kind())
            && filter.since_ms.is_none_or(|t| record.at_ms >= t)
            && filter.until_ms.is_none_or(|t| record.at_ms <= t)
    }

    fn filter() -> impl Strategy<Value = Filter> {
        (
            proptest::option::of(0..4u8),
            proptest::option::of(0..3u8),
            proptest::option::of(0..3u8),
            proptest::option::of(proptest::sample::select(Event::KINDS.to_vec())),
            proptest::option::of(1_000..1_200u64),
        )
            .prop_map(|(c, s, a, kind, since)| Filter {
                code: c.map(code),
                subscriber: s.map(sub),
                actor: actor(a),
                kind: kind.map(str::to_owned),
                since_ms: since,
                until_ms: None,
            })
    }

    /// Every page of `filter`, `limit` at a time, followed by `next`.
    fn all_pages(log: &EventLog, filter: &Filter, limit: usize) -> Vec<Seq> {
        let (mut seqs, mut before) = (Vec::new(), None);
        loop {
            let page = log.audit(filter, before, limit).unwrap();
            assert!(page.records.len() <= limit);
            seqs.extend(page.records.iter().map(|(seq, _)| *seq));
            match page.next {
                Some(next) => before = Some(next),
                None => return seqs,
            }
        }
    }

    fn check(log: &EventLog, filters: &[(Filter, usize)]) -> Result<(), TestCaseError> {
        let all: Vec<(Seq, Record)> = log.read_from(1).map(Result::unwrap).collect();
        for (filter, limit) in filters {
            let expected: Vec<Seq> = all
                .iter()
                .rev()
                .filter(|(_, r)| wanted(filter, r))
                .map(|(seq, _)| *seq)
                .collect();
            prop_assert_eq!(all_pages(log, filter, *limit), expected, "{:?}", filter);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any history, any filter, any page size: the pages together are
        /// exactly the matching events, newest first; after an erasure no
        /// key of the index holds the subscriber; rebuilt from nothing, the
        /// index answers the same.
        #[test]
        fn the_index_answers_as_a_scan_of_the_log_would(
            ops in proptest::collection::vec(op(), 0..40),
            erase in proptest::option::of(0..3u8),
            filters in proptest::collection::vec((filter(), 1..5usize), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let log = EventLog::open(dir.path()).unwrap();
            let records = records(&ops, erase);
            if !records.is_empty() {
                runtime.block_on(log.append(records)).unwrap();
            }
            check(&log, &filters)?;
            if let Some(e) = erase {
                let doom = crate::core::Doom::Subscriber(sub(e));
                crate::store::history::rewrite(&log, log.last_seq(), doom, None).unwrap();
                check(&log, &filters)?;
                let db = log.raw();
                for item in db.iterator_cf(cf(db), IteratorMode::Start) {
                    let (k, _) = item.unwrap();
                    prop_assert!(!k.windows(32).any(|w| w == sub(e).0), "erased subscriber in {:?}", k);
                }
            }
            // As an older version (or an import) leaves it: no index at all.
            {
                let db = log.raw();
                let mut clear = WriteBatch::default();
                clear.delete_range_cf(cf(db), [0u8].as_slice(), [0xffu8, 0xff].as_slice());
                db.write(clear).unwrap();
            }
            drop(log);
            let log = EventLog::open(dir.path()).unwrap();
            check(&log, &filters)?;
        }
    }
}
