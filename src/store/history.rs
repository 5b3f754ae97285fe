//! Rewriting records in place, for subscriber erasure and retention: the
//! plan is the core's ([`crate::core::plan_redaction`]: same state, the
//! doomed instances gone); this writes it and makes RocksDB drop the old
//! bytes (flush, then a full compaction).

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
pub fn rewrite(log: &EventLog, last: Seq, doom: Doom) -> Result<Rewritten, StoreError> {
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
            batch.put(encode_key(seq), encode_value(&new));
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
