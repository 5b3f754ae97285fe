//! Index snapshots: start from the state at a sequence number and replay
//! only the events after it, instead of the whole log.
//!
//! A snapshot is one file, `data_dir/index.snapshot`, copied from the
//! index on the log's writer thread (between two group commits, so the
//! index it copies is not changing; appends wait only for the copy, a walk
//! over memory), then written out apart, to a temporary file, fsync'd, and
//! renamed over the old one: at a graceful shutdown, and while serving
//! every `server.snapshot_every_events` events. Anything that does not
//! check out below is a full replay, logged as a warning with the reason.
//!
//! # Layout (version 4), all integers little-endian
//!
//! - the magic `HCMPIDX4` (a version 3 snapshot, from before resolution
//!   rules, is not used: the server replays the log in full once);
//! - the SHA-256 of the log's value at the last sequence the snapshot
//!   reflects (zeros when none): a snapshot is used only if the log still
//!   has that very record there, so a repaired, replaced or rewritten log
//!   fails the check;
//! - the index ([`Index::dump`]): that last sequence (`u64`); the
//!   association slab, then the subscriber slab, each as 64 shards of a
//!   `u32` count and that many fixed-size entries (associations 32 bytes:
//!   clientid key 16, sequence 8, subscriber slot 4, next slot 4;
//!   subscribers 36: subscriber 32, oldest slot 4; a slot is shard << 26 |
//!   position, `u32::MAX` for none, a free entry has none); the names of
//!   clientids that are not UUIDs (`u64` count, then key 16 and text); the
//!   codes (`u64` count, then code, target, sequence `u64`, the six
//!   resolution counts, `u64` each, the rules as JSON text (`[]` for none)
//!   and a `u64` count of per-rule counts, `u64` each); texts are a
//!   `u32` length and UTF-8;
//! - the SHA-256 of everything before it.
//!
//! The entries are the index's own memory layout, so a load reads them
//! as they are and only rebuilds the hash tables over them.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;

use super::event::encode_key;
use super::index::Index;
use super::{EventLog, Seq};

/// File name under the data dir.
pub const FILE: &str = "index.snapshot";
const MAGIC: &[u8; 8] = b"HCMPIDX4";

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

/// A reader that hashes what goes through it.
struct Hashing<T> {
    inner: T,
    hash: digest::Context,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hash: digest::Context::new(&digest::SHA256),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, bytes: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(bytes)?;
        self.hash.update(&bytes[..read]);
        Ok(read)
    }
}

/// A snapshot's bytes (all but the closing hash), copied from the index
/// while it is still ([`copy`], on the log's writer thread between two
/// group commits); writing them out ([`Copied::save`]) needs neither the
/// index nor the writer, so appends go on meanwhile.
#[derive(Debug)]
pub struct Copied {
    last_seq: Seq,
    bytes: Vec<u8>,
}

/// Copies `index` (which must not change meanwhile) as a snapshot of the
/// sequence it reflects: a walk over memory, no disk.
pub fn copy(index: &Index, db: &rocksdb::DB) -> Result<Copied, SnapshotError> {
    let last_seq = index.last_seq();
    let counts = index.counts();
    let mut bytes =
        Vec::with_capacity(counts.associations * 32 + counts.subscribers * 36 + (1 << 20));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&record_hash(db, last_seq)?);
    index.dump(&mut bytes)?;
    Ok(Copied { last_seq, bytes })
}

impl Copied {
    /// Writes the copy as the snapshot at `file`: to a temporary file with
    /// its hash, fsync'd, renamed into place; the sequence it reflects.
    pub fn save(self, file: &Path) -> Result<Seq, SnapshotError> {
        let temp = file.with_extension("snapshot.tmp");
        let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(&temp)?);
        out.write_all(&self.bytes)?;
        out.write_all(digest::digest(&digest::SHA256, &self.bytes).as_ref())?;
        let file_out = out.into_inner().map_err(|e| e.into_error())?;
        file_out.sync_all()?;
        fs::rename(&temp, file)?;
        if let Some(dir) = file.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(self.last_seq)
    }
}

/// The index the snapshot at `file` holds, if it is whole and matches
/// `log`; the caller replays the events after its `last_seq()`.
pub fn load(file: &Path, log: &EventLog) -> Result<Index, SnapshotError> {
    let opened = match fs::File::open(file) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(e) => return Err(e.into()),
    };
    let damaged = |what: String| SnapshotError::Damaged(what);
    let mut input = Hashing::new(BufReader::with_capacity(1 << 20, opened));
    let mut head = [0u8; 40];
    input
        .read_exact(&mut head)
        .map_err(|_| damaged("not a homecmp index snapshot".into()))?;
    if &head[..8] != MAGIC {
        return Err(damaged(
            "not a homecmp index snapshot (or an older version)".into(),
        ));
    }
    let index = Index::undump(&mut input).map_err(|e| damaged(format!("unreadable ({e})")))?;
    let hash = input.hash.finish();
    let mut rest = Vec::new();
    input.inner.read_to_end(&mut rest)?;
    if rest != hash.as_ref() {
        return Err(damaged("checksum mismatch".into()));
    }
    let last_seq = index.last_seq();
    if last_seq > log.last_seq() {
        return Err(SnapshotError::Mismatch(format!(
            "it reflects event {last_seq} and the log ends at {}",
            log.last_seq()
        )));
    }
    if record_hash(log.raw(), last_seq)? != head[8..] {
        return Err(SnapshotError::Mismatch(format!(
            "event {last_seq} in the log is not the one it saw"
        )));
    }
    Ok(index)
}
