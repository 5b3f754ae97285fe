//! Rewriting records in place, for subscriber erasure and retention: the
//! plan is the core's ([`crate::core::plan_redaction`]: same state, the
//! doomed instances gone); this writes it and makes RocksDB drop the old
//! bytes (flush, then a full compaction).

use std::path::Path;

use super::event::{encode_key, encode_value};
use super::{EventLog, Record, Seq, StoreError};
use crate::core::model::Replacement;
use crate::core::{Doom, Lifetimes};

/// Records rewritten per RocksDB batch.
const BATCH: usize = 4096;

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rewritten {
    /// Records blanked or rewritten.
    pub records: u64,
    /// Records looked at (1 to the last durable when it began).
    pub scanned: u64,
}

/// Rewrites the records of the instances `doom` picks, among events 1 to
/// `last`, in place, then compacts so that the old versions leave the
/// disk. Safe beside the log's writer: it appends later keys, this
/// rewrites earlier ones, and no rewrite changes the state.
///
/// First it removes the index snapshot at `snapshot`, if any: a snapshot
/// is checked against its last record only, and the records before it are
/// what a rewrite changes (replayed after them, the rewritten tail would
/// not apply). Removed first, so a crash mid-rewrite leaves no stale one.
pub fn rewrite(
    log: &EventLog,
    last: Seq,
    doom: Doom,
    snapshot: Option<&Path>,
) -> Result<Rewritten, StoreError> {
    remove_snapshot(snapshot)?;
    let lifetimes = lifetimes_until(log, last)?;
    let mut batch = rocksdb::WriteBatch::default();
    let mut records = 0;
    let db = log.raw();
    for item in log.read_range(1, last) {
        let (seq, record) = item?;
        if let Some(new) = replacement(&lifetimes, seq, &record, doom) {
            put(db, &mut batch, seq, &record, &new)?;
            records += 1;
            if batch.len() >= BATCH {
                write(db, std::mem::take(&mut batch))?;
            }
        }
    }
    write(db, batch)?;
    if records > 0 {
        drop_old_bytes(db)?;
    }
    Ok(Rewritten {
        records,
        scanned: last,
    })
}

/// What [`rewrite`] would write, without writing it: the records that
/// replace those of the instances `doom` picks among events 1 to `last`.
/// Cluster mode publishes them ([`crate::core::model::Event::HistoryRewritten`])
/// and every node writes them with [`replace`].
pub fn plan(log: &EventLog, last: Seq, doom: Doom) -> Result<Vec<Replacement>, StoreError> {
    let lifetimes = lifetimes_until(log, last)?;
    let mut planned = Vec::new();
    for item in log.read_range(1, last) {
        let (seq, record) = item?;
        if let Some(record) = replacement(&lifetimes, seq, &record, doom) {
            planned.push(Replacement { seq, record });
        }
    }
    Ok(planned)
}

/// Writes `replacements` where they stand (each sequence number must be in
/// the log), their audit index with them, after removing the index
/// snapshot at `snapshot` (see [`rewrite`]); then compacts so that the old
/// versions leave the disk. Writing the same replacements again changes
/// nothing. Returns the records it replaced.
pub fn replace(
    log: &EventLog,
    replacements: &[Replacement],
    snapshot: Option<&Path>,
) -> Result<Vec<Replacement>, StoreError> {
    if replacements.is_empty() {
        return Ok(Vec::new());
    }
    let mut replaced = Vec::with_capacity(replacements.len());
    remove_snapshot(snapshot)?;
    let db = log.raw();
    let mut batch = rocksdb::WriteBatch::default();
    for Replacement { seq, record } in replacements {
        let old = match log.read_range(*seq, *seq).next() {
            Some(item) => item?.1,
            None => {
                return Err(StoreError::Log(super::LogError::Write(format!(
                    "history rewrite: event {seq} is not in the log"
                ))));
            }
        };
        put(db, &mut batch, *seq, &old, record)?;
        replaced.push(Replacement {
            seq: *seq,
            record: old,
        });
        if batch.len() >= BATCH {
            write(db, std::mem::take(&mut batch))?;
        }
    }
    write(db, batch)?;
    drop_old_bytes(db)?;
    Ok(replaced)
}

/// Every instance's life among events 1 to `last` (the first pass).
fn lifetimes_until(log: &EventLog, last: Seq) -> Result<Lifetimes, StoreError> {
    let mut lifetimes = Lifetimes::default();
    for item in log.read_range(1, last) {
        let (seq, record) = item?;
        lifetimes.observe(seq, &record);
    }
    Ok(lifetimes)
}

/// The record that replaces `record` (at `seq`) under `doom`, if any:
/// same time; nothing of a redacted event is left, its actor neither.
fn replacement(lifetimes: &Lifetimes, seq: Seq, record: &Record, doom: Doom) -> Option<Record> {
    let event = lifetimes.rewrite(seq, record, doom)?;
    let actor = match event {
        crate::core::model::Event::Redacted { .. } => None,
        _ => record.actor.clone(),
    };
    Some(Record {
        at_ms: record.at_ms,
        actor,
        event,
    })
}

/// Adds to `batch` the writing of `new` over `old` at `seq`, the audit
/// index's keys of the one replaced by the other's.
fn put(
    db: &rocksdb::DB,
    batch: &mut rocksdb::WriteBatch,
    seq: Seq,
    old: &Record,
    new: &Record,
) -> Result<(), StoreError> {
    let value = encode_value(new).map_err(|e| StoreError::Log(super::LogError::Refused(e)))?;
    batch.put(encode_key(seq), value);
    super::audit::delete(db, batch, seq, old);
    super::audit::put(db, batch, seq, &super::audit::terms(new));
    Ok(())
}

/// Writes `batch` durably.
fn write(db: &rocksdb::DB, batch: rocksdb::WriteBatch) -> Result<(), StoreError> {
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)
        .map_err(|e| StoreError::Log(super::LogError::from(e)))
}

/// Removes the index snapshot at `snapshot`, if there is one.
fn remove_snapshot(snapshot: Option<&Path>) -> Result<(), StoreError> {
    let Some(file) = snapshot else { return Ok(()) };
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::Log(super::LogError::Write(format!(
                "cannot remove the index snapshot {}: {e}",
                file.display()
            ))))
        }
        _ => Ok(()),
    }
}

/// Makes RocksDB drop the bytes a rewrite replaced, the records' and their
/// audit index keys': flushed, then compacted down to the bottommost level,
/// where a deletion's marker (whose key names what was deleted) is dropped.
fn drop_old_bytes(db: &rocksdb::DB) -> Result<(), StoreError> {
    let audit = db.cf_handle(super::audit::CF).expect("opened with the log");
    db.flush()
        .and_then(|()| db.flush_cf(audit))
        .map_err(|e| StoreError::Log(super::LogError::from(e)))?;
    let mut full = rocksdb::CompactOptions::default();
    full.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    db.compact_range_opt::<&[u8], &[u8]>(None, None, &full);
    db.compact_range_cf_opt::<&[u8], &[u8]>(audit, None, None, &full);
    Ok(())
}
