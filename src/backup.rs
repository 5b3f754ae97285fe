//! A data dir's lifecycle: `homecmp backup`, `homecmp restore` and
//! `homecmp log import`.
//!
//! A backup is a directory that is itself a data dir: the event log
//! (`events/`) and the files the log means nothing without (the subscriber
//! key that keyed every subscriber in it; the admin token and the TLS
//! files), plus `backup.json` saying what it holds. With the server
//! stopped the log is a RocksDB checkpoint (hard links where the backup is
//! on the same file system); beside a live server, which holds RocksDB's
//! lock, it is a copy of every record durable when the backup began, byte
//! for byte. Either way the backup is replayed before it is called done.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sre::SreError;
use crate::store::event::{decode_key, encode_key, encode_value};
use crate::store::{self, EventLog, Index, LogError, Record, Seq};

/// What `backup.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub events: u64,
    pub last_seq: Seq,
    /// `checkpoint` (server stopped) or `copy` (beside a live server).
    pub method: String,
    pub made_at_ms: u64,
    /// The files copied beside the log, relative to the data dir.
    pub files: Vec<String>,
}

const MANIFEST: &str = "backup.json";
/// Records written per batch by the copy and the import.
const BATCH: usize = 4096;
/// A live server may delete an SST file (compaction) under the copy's
/// read-only view; the copy then starts again, this many times at most.
const COPY_ATTEMPTS: usize = 3;

fn fail(what: impl std::fmt::Display) -> SreError {
    SreError::Repair(what.to_string())
}

/// `homecmp backup`: `data_dir` (live or not) into the new directory `to`.
pub fn backup(data_dir: &Path, to: &Path, out: &mut impl Write) -> Result<Manifest, SreError> {
    let events = data_dir.join(crate::LOG_DIR);
    if !events.join("CURRENT").is_file() {
        return Err(SreError::Open(LogError::Missing {
            path: events.display().to_string(),
        }));
    }
    create_empty_dir(to)?;
    let target = to.join(crate::LOG_DIR);
    let method = match EventLog::open_for_repair(&events) {
        // Nobody holds the log: a checkpoint, consistent by construction.
        Ok(log) => {
            rocksdb::checkpoint::Checkpoint::new(log.raw())
                .and_then(|c| c.create_checkpoint(&target))
                .map_err(|e| fail(format!("checkpoint to {}: {e}", target.display())))?;
            "checkpoint"
        }
        // A live server holds it: copy what was durable when we looked.
        Err(_) => {
            copy_live(&events, &target)?;
            "copy"
        }
    };
    let files = copy_side_files(data_dir, to)?;
    let replayed = check(to)?;
    let manifest = Manifest {
        events: replayed.events,
        last_seq: replayed.counts.last_seq,
        method: method.into(),
        made_at_ms: crate::clock::now_ms(),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("serialisable");
    fs::write(to.join(MANIFEST), text + "\n")?;
    writeln!(
        out,
        "backup: {} events (last sequence {}) by {} to {}; with {}",
        manifest.events,
        manifest.last_seq,
        manifest.method,
        to.display(),
        manifest.files.join(", ")
    )?;
    Ok(manifest)
}

/// `homecmp restore`: a backup into `data_dir`, which must have no log.
pub fn restore(from: &Path, data_dir: &Path, out: &mut impl Write) -> Result<u64, SreError> {
    let manifest: Manifest = fs::read_to_string(from.join(MANIFEST))
        .map_err(|e| fail(format!("{} is not a backup: {e}", from.display())))
        .and_then(|text| {
            serde_json::from_str(&text).map_err(|e| fail(format!("{MANIFEST}: {e}")))
        })?;
    let replayed = check(from)?;
    if replayed.counts.last_seq != manifest.last_seq {
        return Err(fail(format!(
            "the backup's log ends at {} but {MANIFEST} says {}",
            replayed.counts.last_seq, manifest.last_seq
        )));
    }
    fs::create_dir_all(data_dir)?;
    restrict(data_dir)?;
    // Held until the restore is done: no server starts on it meanwhile.
    let _lock = crate::store::owner::DataDirLock::acquire(data_dir, "homecmp restore")
        .map_err(|e| fail(e.to_string()))?;
    if data_dir.join(crate::LOG_DIR).exists() {
        return Err(fail(format!(
            "{} already has an event log: restore into a new data dir",
            data_dir.display()
        )));
    }
    copy_tree(from, data_dir, &|name| {
        name != MANIFEST && name != crate::store::owner::LOCK_FILE
    })?;
    let restored = check(data_dir)?;
    writeln!(
        out,
        "restored {} events (last sequence {}) into {}",
        restored.events,
        restored.counts.last_seq,
        data_dir.display()
    )?;
    Ok(restored.events)
}

/// A line of `homecmp log export`.
#[derive(Deserialize)]
struct ImportLine {
    seq: Seq,
    #[serde(flatten)]
    record: Record,
}

/// `homecmp log import`: `log export` lines into the empty log of
/// `data_dir`. Every line must be the next sequence number and apply to
/// the state before it; the log appears only once all of them did.
pub fn import(data_dir: &Path, input: impl BufRead, out: &mut impl Write) -> Result<u64, SreError> {
    let events = data_dir.join(crate::LOG_DIR);
    fs::create_dir_all(data_dir)?;
    restrict(data_dir)?;
    // Held until the import is done: no second import (which would clear
    // this one's staging) and no server starts on it meanwhile.
    let _lock = crate::store::owner::DataDirLock::acquire(data_dir, "homecmp log import")
        .map_err(|e| fail(e.to_string()))?;
    if events.exists() {
        return Err(fail(format!(
            "{} already has an event log: import into a new data dir",
            data_dir.display()
        )));
    }
    let staging = data_dir.join(format!("{}.importing", crate::LOG_DIR));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let result = import_into(&staging, input);
    match result {
        Ok(count) => {
            fs::rename(&staging, &events)?;
            writeln!(out, "imported {count} events into {}", events.display())?;
            Ok(count)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn import_into(path: &Path, input: impl BufRead) -> Result<u64, SreError> {
    let db = rocksdb::DB::open(&store::log::db_options(), path)
        .map_err(|e| fail(format!("cannot create {}: {e}", path.display())))?;
    let index = Index::new();
    let mut batch = rocksdb::WriteBatch::default();
    let mut expected: Seq = 1;
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: String| fail(format!("line {}: {what}", number + 1));
        let parsed: ImportLine =
            serde_json::from_str(&line).map_err(|e| at(format!("not an export line: {e}")))?;
        if parsed.seq != expected {
            return Err(at(format!(
                "sequence {} where {expected} comes next (an import starts at 1, with no gap)",
                parsed.seq
            )));
        }
        index
            .apply(parsed.seq, &parsed.record)
            .map_err(|e| at(format!("does not apply: {e}")))?;
        let value = encode_value(&parsed.record)
            .map_err(|e| at(format!("the log cannot take this event: {e}")))?;
        batch.put(encode_key(parsed.seq), value);
        if batch.len() >= BATCH {
            db.write(std::mem::take(&mut batch))
                .map_err(|e| fail(format!("write: {e}")))?;
        }
        expected += 1;
    }
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync)
        .map_err(|e| fail(format!("write: {e}")))?;
    db.flush().map_err(|e| fail(format!("flush: {e}")))?;
    Ok(expected - 1)
}

/// Copies records 1..=last, as durable when this opens the log read-only,
/// into a new RocksDB at `target`, byte for byte.
fn copy_live(events: &Path, target: &Path) -> Result<(), SreError> {
    let mut last_error = String::new();
    for _ in 0..COPY_ATTEMPTS {
        if target.exists() {
            fs::remove_dir_all(target)?;
        }
        match copy_once(events, target) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e,
        }
    }
    Err(fail(format!(
        "cannot copy the live log ({COPY_ATTEMPTS} attempts): {last_error}"
    )))
}

fn copy_once(events: &Path, target: &Path) -> Result<(), String> {
    let source = EventLog::open_read_only(events).map_err(|e| e.to_string())?;
    let last = source.last_seq();
    let db = rocksdb::DB::open(&store::log::db_options(), target).map_err(|e| e.to_string())?;
    let mut batch = rocksdb::WriteBatch::default();
    for item in source.raw().iterator(rocksdb::IteratorMode::Start) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        match decode_key(&key) {
            Ok(seq) if seq <= last => batch.put(&key, &value),
            Ok(_) => break,
            Err(e) => return Err(format!("bad key in the log: {e}")),
        }
        if batch.len() >= BATCH {
            db.write(std::mem::take(&mut batch))
                .map_err(|e| e.to_string())?;
        }
    }
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync).map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())
}

/// The data dir's own files (subscriber key, admin token) and `tls/`:
/// everything but the log and earlier backups.
fn copy_side_files(data_dir: &Path, to: &Path) -> Result<Vec<String>, SreError> {
    let mut copied = Vec::new();
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if name == crate::LOG_DIR
            || name == "backups"
            || name.ends_with(".importing")
            || name == crate::store::owner::LOCK_FILE
            || name == crate::access::TOKENS_LOCK
        {
            continue;
        }
        if kind.is_file() {
            fs::copy(entry.path(), to.join(&name))?;
            copied.push(name);
        } else if kind.is_dir() && name == crate::deploy::TLS_DIR {
            copy_tree(&entry.path(), &to.join(&name), &|_| true)?;
            copied.push(format!("{name}/"));
        }
    }
    copied.sort();
    Ok(copied)
}

/// Copies `from` into `to` (created), recursively, files that `keep`.
fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            continue;
        }
        let target: PathBuf = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target, &|_| true)?;
        } else {
            // fs::copy keeps the permission bits: the key stays 0600.
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn create_empty_dir(dir: &Path) -> Result<(), SreError> {
    if dir.exists() && fs::read_dir(dir)?.next().is_some() {
        return Err(fail(format!(
            "{} exists and is not empty: back up into a new directory",
            dir.display()
        )));
    }
    fs::create_dir_all(dir)?;
    restrict(dir)
}

/// 0700: a backup holds the subscriber key.
fn restrict(dir: &Path) -> Result<(), SreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Replays the log of `data_dir` into a fresh index, as `log verify` does.
fn check(data_dir: &Path) -> Result<store::Replayed, SreError> {
    let log = EventLog::open_read_only(&data_dir.join(crate::LOG_DIR)).map_err(SreError::Open)?;
    store::replay(&log, &Index::new(), |_, _| true).map_err(SreError::Check)
}
