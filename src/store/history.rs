//! Rewriting records in place, for subscriber erasure and retention: the
//! plan is the core's ([`crate::core::plan_redaction`]: same state, the
//! doomed instances gone); this writes it and makes RocksDB drop the old
//! bytes (flush, then a full compaction).

use std::path::Path;

use super::event::{encode_key, encode_value};
use super::{EventLog, Record, Seq, StoreError};
use crate::core::{Doom, Lifetimes};

/// Records rewritten per RocksDB batch.
const BATCH: usize = 4096;

/// What a rewrite did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    if let Some(file) = snapshot {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Log(super::LogError::Write(format!(
                    "cannot remove the index snapshot {}: {e}",
                    file.display()
                ))));
            }
            _ => {}
        }
    }
    let mut lifetimes = Lifetimes::default();
    for item in log.read_range(1, last) {
        let (seq, record) = item?;
        lifetimes.observe(seq, &record);
    }
    let mut batch = rocksdb::WriteBatch::default();
    let mut records = 0;
    let db = log.raw();
    let write = |batch: rocksdb::WriteBatch| -> Result<(), StoreError> {
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)
            .map_err(|e| StoreError::Log(super::LogError::from(e)))
    };
    for item in log.read_range(1, last) {
        let (seq, record) = item?;
        if let Some(event) = lifetimes.rewrite(seq, &record, doom) {
            // Nothing of a redacted event is left, its actor neither.
            let actor = match event {
                crate::core::model::Event::Redacted { .. } => None,
                _ => record.actor.clone(),
            };
            let new = Record {
                at_ms: record.at_ms,
                actor,
                event,
            };
            let value =
                encode_value(&new).map_err(|e| StoreError::Log(super::LogError::Refused(e)))?;
            batch.put(encode_key(seq), value);
            super::audit::delete(db, &mut batch, seq, &record);
            super::audit::put(db, &mut batch, seq, &super::audit::terms(&new));
            records += 1;
            if batch.len() >= BATCH {
                write(std::mem::take(&mut batch))?;
            }
        }
    }
    write(batch)?;
    if records > 0 {
        drop_old_bytes(db)?;
    }
    Ok(Rewritten {
        records,
        scanned: last,
    })
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
