//! `homecmp log ...`: the SRE's view of the event log.
//!
//! Every command but `repair` opens the log read-only, so it runs beside a
//! live server and never changes a byte. `repair` is the way out of a log
//! that no longer replays: with the server stopped, it keeps a copy of the
//! log, then cuts it after its last consistent event. Output goes to the
//! given writer (stdout in the binary); the result says which exit code the
//! binary should use.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::clock::rfc3339;

use serde::Serialize;

use crate::store::{self, EventLog, Index, LogError, Record, Seq, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SreError {
    /// The data dir has no readable log (wrong path, no permission).
    #[error("{0}")]
    Open(LogError),
    /// The log is damaged or inconsistent: a check failed.
    #[error("{0}")]
    Check(StoreError),
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// `repair` could not take the log for writing, keep its copy, or cut.
    #[error("{0}")]
    Repair(String),
}

impl SreError {
    /// Exit code: 1 a check failed, 66 no input (sysexits' EX_NOINPUT), 74 I/O.
    pub fn exit_code(&self) -> u8 {
        match self {
            SreError::Check(_) => 1,
            SreError::Open(_) => 66,
            SreError::Output(_) | SreError::Repair(_) => 74,
        }
    }
}

impl From<LogError> for SreError {
    fn from(e: LogError) -> Self {
        SreError::Check(StoreError::Log(e))
    }
}

/// Where `replay` stops (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Seq(Seq),
    /// Unix milliseconds.
    Time(u64),
}

impl std::str::FromStr for Until {
    type Err = String;

    /// A sequence number, or an RFC 3339 time such as `2026-11-28T10:00:00Z`.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(seq) = text.parse() {
            return Ok(Until::Seq(seq));
        }
        let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
            format!("{text:?} is neither a sequence number nor an RFC 3339 time ({e})")
        })?;
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("{text:?} is before 1970"))?
            .as_millis();
        Ok(Until::Time(ms as u64))
    }
}

/// The log for writing, as `repair` and `compact` need it: refused while a
/// server holds it.
/// The log of `data_dir`, opened to be rewritten by the tool `who`, with
/// the data dir's lock ([`store::owner`]): no server and no other tool
/// changes it meanwhile.
struct Owned {
    log: EventLog,
    // Dropped after the log: the next owner finds it closed.
    _lock: store::owner::DataDirLock,
}

fn open_for_writing(data_dir: &Path, who: &str) -> Result<Owned, SreError> {
    let path = data_dir.join(crate::LOG_DIR);
    if !path.join("CURRENT").is_file() {
        return Err(SreError::Open(LogError::Missing {
            path: path.display().to_string(),
        }));
    }
    let lock = store::owner::DataDirLock::acquire(data_dir, who)
        .map_err(|e| SreError::Repair(e.to_string()))?;
    let log = EventLog::open_for_repair(&path).map_err(|e| {
        SreError::Repair(format!("{e} (is a server still running on this data dir?)"))
    })?;
    Ok(Owned { log, _lock: lock })
}

fn open(data_dir: &Path) -> Result<EventLog, SreError> {
    EventLog::open_read_only(&data_dir.join(crate::LOG_DIR)).map_err(SreError::Open)
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub events: u64,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    pub first_at: Option<String>,
    pub last_at: Option<String>,
    pub disk_bytes: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
}

/// `log stats`: counts, range, size on disk, events by kind.
pub fn stats(data_dir: &Path, json: bool, out: &mut impl Write) -> Result<Stats, SreError> {
    let log = open(data_dir)?;
    let mut stats = Stats {
        disk_bytes: log.disk_bytes(),
        ..Stats::default()
    };
    for item in log.read_from(0) {
        let (seq, record) = item?;
        stats.events += 1;
        stats.first_seq.get_or_insert(seq);
        stats.first_at.get_or_insert_with(|| rfc3339(record.at_ms));
        stats.last_seq = Some(seq);
        stats.last_at = Some(rfc3339(record.at_ms));
        *stats.by_kind.entry(record.event.kind()).or_default() += 1;
    }
    if json {
        serde_json::to_writer(&mut *out, &stats).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        let dash = || "-".to_owned();
        writeln!(out, "events      {}", stats.events)?;
        writeln!(
            out,
            "sequence    {} .. {}",
            stats.first_seq.map_or_else(dash, |s| s.to_string()),
            stats.last_seq.map_or_else(dash, |s| s.to_string())
        )?;
        writeln!(
            out,
            "time        {} .. {}",
            stats.first_at.clone().unwrap_or_else(dash),
            stats.last_at.clone().unwrap_or_else(dash)
        )?;
        writeln!(out, "disk bytes  {}", stats.disk_bytes)?;
        for (kind, n) in &stats.by_kind {
            writeln!(out, "  {kind:<22}{n}")?;
        }
    }
    Ok(stats)
}

/// `log verify`: every record decodes, the sequence is contiguous, and every
/// event applies to the state before it (what the server checks on start).
pub fn verify(data_dir: &Path, out: &mut impl Write) -> Result<store::Replayed, SreError> {
    let log = open(data_dir)?;
    let index = Index::new();
    let replayed = store::replay(&log, &index, |_, _| true).map_err(SreError::Check)?;
    writeln!(
        out,
        "ok: {} events, last sequence {}",
        replayed.events, replayed.counts.last_seq
    )?;
    Ok(replayed)
}

#[derive(Serialize, Debug)]
pub struct ExportLine<'a> {
    pub seq: Seq,
    pub at: crate::clock::Rfc3339,
    #[serde(flatten)]
    pub record: &'a Record,
}

/// A line as the API document shows it (`AuditEvent`): the fields every
/// line has; the event's own fields follow `kind` (the book's event-log
/// chapter lists them).
impl utoipa::PartialSchema for ExportLine<'_> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
        use utoipa::openapi::{ObjectBuilder, Type};
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let count = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
        };
        let time = string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)));
        let kinds = crate::core::model::Event::KINDS.iter().copied();
        let actor = "Who made the change through the admin API (a token's name or an \
                     identity provider's subject); absent for clients, RADIUS and the server.";
        ObjectBuilder::new()
            .property("seq", count())
            .required("seq")
            .property("at", time)
            .required("at")
            .property("at_ms", count())
            .required("at_ms")
            .property("kind", string().enum_values(Some(kinds)))
            .required("kind")
            .property("actor", string().description(Some(actor)))
            .into()
    }
}

impl utoipa::ToSchema for ExportLine<'_> {
    fn name() -> std::borrow::Cow<'static, str> {
        "AuditEvent".into()
    }
}

impl<'a> ExportLine<'a> {
    pub fn new(seq: Seq, record: &'a Record) -> Self {
        ExportLine {
            seq,
            at: crate::clock::Rfc3339(record.at_ms),
            record,
        }
    }
}

/// `log export`: one JSON object per line, `seq`, `at` (RFC 3339), `at_ms`,
/// `kind` and the event's fields. Stops with an error at a bad record, after
/// writing every good one before it.
pub fn export(
    data_dir: &Path,
    from: Seq,
    to: Option<Seq>,
    out: &mut impl Write,
) -> Result<u64, SreError> {
    let log = open(data_dir)?;
    // Lines go out in 64 KiB writes, not one per event (stdout flushes at
    // every newline); what was read before a bad record is still written.
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    let mut written = 0;
    let read = std::thread::scope(|scope| {
        let batches = log.read_ahead(scope, from, to.unwrap_or(Seq::MAX));
        batches.iter().flatten().try_for_each(|item| {
            let (seq, record) = item?;
            serde_json::to_writer(&mut out, &ExportLine::new(seq, &record))
                .map_err(io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
            Ok::<_, SreError>(())
        })
    });
    out.flush()?;
    read.map(|()| written)
}

/// `log replay`: rebuilds the state as of `until` (inclusive; all when
/// `None`) and prints a summary.
pub fn replay(
    data_dir: &Path,
    until: Option<Until>,
    json: bool,
    out: &mut impl Write,
) -> Result<store::Replayed, SreError> {
    let log = open(data_dir)?;
    let index = Index::new();
    let (last, last_ms) = match until {
        None => (Seq::MAX, u64::MAX),
        Some(Until::Seq(last)) => (last, u64::MAX),
        Some(Until::Time(last_ms)) => (Seq::MAX, last_ms),
    };
    let keep = |_: Seq, record: &Record| record.at_ms <= last_ms;
    let replayed = store::replay_until(&log, &index, last, keep).map_err(SreError::Check)?;
    if json {
        serde_json::to_writer(&mut *out, &replayed).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        let c = replayed.counts;
        writeln!(out, "events applied  {}", replayed.events)?;
        writeln!(out, "last sequence   {}", c.last_seq)?;
        writeln!(out, "associations    {}", c.associations)?;
        writeln!(out, "subscribers     {}", c.subscribers)?;
        writeln!(out, "codes           {}", c.codes)?;
    }
    Ok(replayed)
}

/// What `log repair` did.
#[derive(Debug, Serialize)]
pub struct Repaired {
    /// The last event kept.
    pub kept_until: Seq,
    /// Records removed after it (bad or not).
    pub removed: u64,
    /// Where the untouched log was copied first; `None` when nothing was cut.
    pub backup: Option<std::path::PathBuf>,
    /// Why the log stopped replaying, if it did.
    pub first_error: Option<String>,
}

/// `log repair`: finds the last event that replays (or takes `until`, which
/// must not be past it), copies the whole log to
/// `data_dir/backups/events-<unix ms>` (a RocksDB checkpoint: hard links,
/// so cheap), then deletes every record after it. The server must be
/// stopped: it holds the log's lock. A log that replays to its end, with no
/// `until`, is left alone.
pub fn repair(
    data_dir: &Path,
    until: Option<Seq>,
    out: &mut impl Write,
) -> Result<Repaired, SreError> {
    let owned = open_for_writing(data_dir, "homecmp log repair")?;
    let log = &owned.log;
    let index = Index::new();
    let first_error = store::replay(log, &index, |_, _| true)
        .err()
        .map(|e| e.to_string());
    let consistent = index.last_seq();
    let kept_until = match until {
        Some(seq) if seq > consistent => {
            return Err(SreError::Repair(format!(
                "--until {seq} is past the last consistent event, {consistent}"
            )));
        }
        Some(seq) => seq,
        None => consistent,
    };
    let doomed = keys_after(log, kept_until)?;
    if doomed.is_empty() {
        writeln!(
            out,
            "ok: the log replays to its end ({consistent}); nothing cut"
        )?;
        return Ok(Repaired {
            kept_until,
            removed: 0,
            backup: None,
            first_error,
        });
    }
    let backup = cut(log, data_dir, &doomed)?;
    if let Some(e) = &first_error {
        writeln!(out, "first error: {e}")?;
    }
    writeln!(
        out,
        "kept events 1..={kept_until}; removed {} records; the log as it was is in {}",
        doomed.len(),
        backup.display()
    )?;
    Ok(Repaired {
        kept_until,
        removed: doomed.len() as u64,
        backup: Some(backup),
        first_error,
    })
}

/// Every key of the log but the good ones up to `kept_until`: later
/// events, and any key that is not a sequence number at all.
fn keys_after(log: &EventLog, kept_until: Seq) -> Result<Vec<Box<[u8]>>, SreError> {
    log.raw()
        .iterator(rocksdb::IteratorMode::Start)
        .map(|item| item.map(|(key, _)| key))
        .filter(|key| {
            key.as_ref().map_or(true, |key| {
                crate::store::event::decode_key(key).map_or(true, |seq| seq > kept_until)
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| SreError::Repair(format!("cannot read the log: {e}")))
}

/// Copies the whole log to `data_dir/backups/events-<unix ms>` (a RocksDB
/// checkpoint), then deletes the `doomed` keys; returns the copy's path.
fn cut(log: &EventLog, data_dir: &Path, doomed: &[Box<[u8]>]) -> Result<PathBuf, SreError> {
    let backup = data_dir
        .join("backups")
        .join(format!("events-{}", crate::clock::now_ms()));
    std::fs::create_dir_all(backup.parent().expect("has a parent"))?;
    rocksdb::checkpoint::Checkpoint::new(log.raw())
        .and_then(|c| c.create_checkpoint(&backup))
        .map_err(|e| {
            SreError::Repair(format!("cannot copy the log to {}: {e}", backup.display()))
        })?;
    let mut batch = rocksdb::WriteBatch::default();
    for key in doomed {
        batch.delete(key);
    }
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    log.raw()
        .write_opt(batch, &sync)
        .map_err(|e| SreError::Repair(format!("cannot cut the log: {e}")))?;
    Ok(backup)
}

/// What `log compact` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub rewritten: store::history::Rewritten,
    pub disk_before: u64,
    pub disk_after: u64,
}

/// `log compact`: with the server stopped, blanks the records of
/// associations and code registrations that ended before `now - older_than`
/// (the log stays contiguous, the state stays the same; see
/// `core::plan_redaction`), then compacts RocksDB so the space is freed.
/// Refuses a log that does not replay: repair it first.
pub fn compact(
    data_dir: &Path,
    older_than: Duration,
    out: &mut impl Write,
) -> Result<Compacted, SreError> {
    let owned = open_for_writing(data_dir, "homecmp log compact")?;
    let log = &owned.log;
    let index = Index::new();
    store::replay(log, &index, |_, _| true).map_err(SreError::Check)?;
    let cutoff = crate::clock::now_ms().saturating_sub(older_than.as_millis() as u64);
    let disk_before = log.disk_bytes();
    let rewritten = store::history::rewrite(
        log,
        index.last_seq(),
        crate::core::Doom::EndedBefore(cutoff),
        Some(&store::snapshot::path(data_dir)),
    )
    .map_err(SreError::Check)?;
    let disk_after = log.disk_bytes();
    writeln!(
        out,
        "blanked {} of {} records (associations and codes that ended before {}); \
         {disk_before} bytes on disk before, {disk_after} after",
        rewritten.records,
        rewritten.scanned,
        rfc3339(cutoff)
    )?;
    Ok(Compacted {
        rewritten,
        disk_before,
        disk_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_parses_seq_and_time() {
        assert_eq!("42".parse::<Until>(), Ok(Until::Seq(42)));
        assert_eq!(
            "1970-01-01T00:00:01Z".parse::<Until>(),
            Ok(Until::Time(1000))
        );
        assert!("yesterday".parse::<Until>().is_err());
    }
}
