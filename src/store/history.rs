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
            let new = Record {
                at_ms: record.at_ms,
                event,
            };
            let value =
                encode_value(&new).map_err(|e| StoreError::Log(super::LogError::Refused(e)))?;
            batch.put(encode_key(seq), value);
            records += 1;
            if batch.len() >= BATCH {
                write(std::mem::take(&mut batch))?;
            }
        }
    }
    write(batch)?;
    if records > 0 {
        db.flush()
            .map_err(|e| StoreError::Log(super::LogError::from(e)))?;
        db.compact_range::<&[u8], &[u8]>(None, None);
    }
    Ok(Rewritten {
        records,
        scanned: last,
    })
}
