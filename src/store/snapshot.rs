//! Index snapshots: start from the state at a sequence number and replay
//! only the events after it, instead of the whole log.
//!
//! A snapshot is one file, `data_dir/index.snapshot`, written at a graceful
//! shutdown on the log's writer thread (between two group commits, so the
//! index it copies is not changing), to a temporary file, fsync'd, then
//! renamed over the old one. Layout: the magic `HCMPIDX1`, then the bincode
//! encoding of [`Body`], then the SHA-256 of everything before it. The body
//! names the last sequence it reflects and the SHA-256 of that record's
//! bytes in the log: a snapshot is used only if its checksum holds and the
//! log still has that very record there (a repaired, replaced or rewritten
//! log fails the check). Anything else is a full replay, logged as a
//! warning with the reason.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use bincode::{Decode, Encode};

use super::event::encode_key;
use super::index::{CodeEntry, Index, Parts};
use super::{Association, EventLog, Seq};
use crate::wire::{ClientId, SubscriberRef};

/// File name under the data dir.
pub const FILE: &str = "index.snapshot";
const MAGIC: &[u8; 8] = b"HCMPIDX1";

#[derive(Debug, Encode, Decode)]
struct Body {
    last_seq: Seq,
    /// SHA-256 of the log's value at `last_seq` (zeros when 0).
    last_record: [u8; 32],
    /// Every subscriber once; associations refer to them by position.
    subscribers: Vec<[u8; 32]>,
    /// (clientid, subscriber position, since_ms, seq), oldest first.
    associations: Vec<(String, u32, u64, Seq)>,
    /// (code, target, seq).
    codes: Vec<(String, String, Seq)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot")]
    Missing,
    #[error("cannot read or write the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    #[error("the snapshot does not match the log: {0}")]
    Mismatch(String),
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn record_hash(db: &rocksdb::DB, seq: Seq) -> Result<[u8; 32], SnapshotError> {
    if seq == 0 {
        return Ok([0; 32]);
    }
    let value = db
        .get(encode_key(seq))
        .map_err(|e| SnapshotError::Mismatch(format!("cannot read event {seq}: {e}")))?
        .ok_or_else(|| SnapshotError::Mismatch(format!("the log has no event {seq}")))?;
    let hash = digest::digest(&digest::SHA256, &value);
    Ok(hash.as_ref().try_into().expect("32 bytes"))
}

/// Writes `index` (which must not change meanwhile) as the snapshot at
/// `file`; returns the sequence number it reflects.
pub fn write(index: &Index, db: &rocksdb::DB, file: &Path) -> Result<Seq, SnapshotError> {
    let parts = index.parts();
    let mut positions = std::collections::HashMap::new();
    let mut subscribers = Vec::new();
    let associations = parts
        .associations
        .iter()
        .map(|(clientid, a)| {
            let position = *positions.entry(a.subscriber).or_insert_with(|| {
                subscribers.push(a.subscriber.0);
                (subscribers.len() - 1) as u32
            });
            (clientid.as_str().to_owned(), position, a.since_ms, a.seq)
        })
        .collect();
    let body = Body {
        last_seq: parts.last_seq,
        last_record: record_hash(db, parts.last_seq)?,
        subscribers,
        associations,
        codes: parts
            .codes
            .into_iter()
            .map(|(code, entry)| (code, entry.target.to_string(), entry.seq))
            .collect(),
    };
    let mut bytes = MAGIC.to_vec();
    bincode::encode_into_std_write(&body, &mut bytes, bincode::config::standard())
        .map_err(|e| SnapshotError::Damaged(e.to_string()))?;
    let hash = digest::digest(&digest::SHA256, &bytes);
    bytes.extend_from_slice(hash.as_ref());
    let temp = file.with_extension("snapshot.tmp");
    let mut out = fs::File::create(&temp)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    fs::rename(&temp, file)?;
    if let Some(dir) = file.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(parts.last_seq)
}

/// The index the snapshot at `file` holds, if it is whole and matches
/// `log`; the caller replays the events after its `last_seq()`.
pub fn load(file: &Path, log: &EventLog) -> Result<Index, SnapshotError> {
    let bytes = match fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(e) => return Err(e.into()),
    };
    let damaged = |what: &str| SnapshotError::Damaged(what.to_owned());
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(damaged("not a homecmp index snapshot"));
    }
    let (content, checksum) = bytes.split_at(bytes.len() - 32);
    if digest::digest(&digest::SHA256, content).as_ref() != checksum {
        return Err(damaged("checksum mismatch"));
    }
    let (body, _): (Body, usize) =
        bincode::decode_from_slice(&content[MAGIC.len()..], bincode::config::standard())
            .map_err(|e| SnapshotError::Damaged(e.to_string()))?;
    if body.last_seq > log.last_seq() {
        return Err(SnapshotError::Mismatch(format!(
            "it reflects event {} and the log ends at {}",
            body.last_seq,
            log.last_seq()
        )));
    }
    if record_hash(log.raw(), body.last_seq)? != body.last_record {
        return Err(SnapshotError::Mismatch(format!(
            "event {} in the log is not the one it saw",
            body.last_seq
        )));
    }
    let subscribers = body.subscribers.len();
    let mut associations = Vec::with_capacity(body.associations.len());
    for (clientid, position, since_ms, seq) in body.associations {
        let clientid = ClientId::parse(&clientid).map_err(|e| damaged(&e.to_string()))?;
        let subscriber = *body
            .subscribers
            .get(position as usize)
            .ok_or_else(|| damaged("subscriber out of range"))?;
        associations.push((
            clientid,
            Association {
                subscriber: SubscriberRef(subscriber),
                since_ms,
                seq,
            },
        ));
    }
    let codes = body
        .codes
        .into_iter()
        .map(|(code, target, seq)| {
            (
                code,
                CodeEntry {
                    target: target.into(),
                    seq,
                },
            )
        })
        .collect();
    Ok(Index::from_parts(Parts {
        associations,
        codes,
        last_seq: body.last_seq,
        subscribers: Some(subscribers),
    }))
}
