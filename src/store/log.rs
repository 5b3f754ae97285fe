//! The append-only event log on RocksDB, with group commit.
//!
//! Owns the RocksDB handle and the sequence counter; knows nothing of the
//! index or of requests. The byte layout of keys and values is in
//! [`super::event`].
//!
//! # Durability and group commit
//!
//! `append` sends its records to one writer thread and waits. The writer takes
//! every append queued at that moment (up to [`MAX_BATCH_RECORDS`]), gives
//! them consecutive sequence numbers, writes them in one `WriteBatch` with
//! `sync = true` (WAL fsync), and only then answers each caller. So a caller
//! that got `Ok(seq)` has its records on disk, and N concurrent callers cost
//! one fsync, not N. The single writer is also what keeps sequence numbers
//! contiguous and never reused.
//!
//! A failed write poisons the log: RocksDB may or may not have kept that
//! batch, so handing its sequence numbers out again could overwrite a record.
//! Every later append fails until the process restarts and reopens the log.
//!
//! # What happens once records are handed over
//!
//! [`EventLog::append_then`] takes, with the records, what must happen once
//! they are durable (the store applies them to its index and releases its
//! locks there). The writer runs it on its own thread, in sequence order,
//! before answering; so it runs whether or not anyone still waits for the
//! answer. A request future dropped at any `.await` either never handed its
//! records over (nothing is written) or handed them over (they are written
//! *and* applied): the log and what follows from it cannot part.
//!
//! The API is `append` + `read_from` + `last_seq`: narrow enough for a
//! replicated log to sit behind it later.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use rocksdb::{DB, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use super::event::{self, CodecError, Record, Seq};

/// Most records one group commit writes; more wait for the next batch.
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Read-only opens tried again after a file vanished under them.
const READ_ONLY_ATTEMPTS: u32 = 10;
/// Records [`EventLog::read_ahead`] hands over at a time.
const READ_AHEAD_BATCH: usize = 1024;
/// Appends queued before `append` callers wait for room (back-pressure).
const QUEUE_DEPTH: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open event log at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    /// Read-only opens do not create a log; RocksDB would create the
    /// directory (for its info LOG) before failing.
    #[error("no event log at {path}")]
    Missing { path: String },
    #[error("event log write failed: {0}")]
    Write(String),
    #[error("event log refuses writes after an earlier write failure; restart to recover")]
    Poisoned,
    #[error("event log is closed")]
    Closed,
    /// What was to follow a durable write failed (the index refused an
    /// event): the log is poisoned, since its state and the index's parted.
    #[error("durable, but not applied: {0}")]
    NotApplied(String),
    #[error("event log read failed: {0}")]
    Read(#[from] rocksdb::Error),
    #[error("corrupt record at sequence {seq}: {reason}")]
    Corrupt { seq: Seq, reason: CodecError },
    #[error("corrupt record key {key:02x?}: {reason}")]
    CorruptKey { key: Vec<u8>, reason: CodecError },
    #[error("sequence gap: expected {expected}, found {found}")]
    Gap { expected: Seq, found: Seq },
    /// Refused before anything was written: the log could not replay it
    /// (see `event::MAX_VALUE_BYTES`).
    #[error("event refused: {0}")]
    Refused(CodecError),
}

impl From<super::audit::AuditError> for LogError {
    fn from(e: super::audit::AuditError) -> Self {
        use super::audit::AuditError;
        match e {
            AuditError::Db(e) => LogError::Read(e),
            AuditError::Corrupt { seq, reason } => LogError::Corrupt { seq, reason },
            AuditError::CorruptKey { key, reason } => LogError::CorruptKey { key, reason },
        }
    }
}

/// A cloneable handle to the log; all clones share one writer.
#[derive(Clone, Debug)]
pub struct EventLog {
    shared: Arc<Shared>,
}

struct Shared {
    db: Arc<DB>,
    queue: Option<mpsc::Sender<Pending>>,
    writer: Option<thread::JoinHandle<()>>,
    last_seq: Arc<AtomicU64>,
    poisoned: Arc<AtomicBool>,
    fail_next: Arc<AtomicBool>,
}

/// Closing the queue ends the writer; joining it means the database is
/// closed when the last handle is gone, so the same process (a restart in a
/// test, say) can open it again at once.
impl Drop for Shared {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.db.path())
            .field("last_seq", &self.last_seq.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the writer runs once a batch is durable, with the first sequence
/// number of its records; an `Err` poisons the log.
pub type OnDurable = Box<dyn FnOnce(Seq) -> Result<(), String> + Send>;

struct Pending {
    /// The records' values, encoded (and checked) by the caller.
    values: Vec<Vec<u8>>,
    /// Each value's audit index terms ([`super::audit::terms`]).
    terms: Vec<Vec<Vec<u8>>>,
    on_durable: Option<OnDurable>,
    done: oneshot::Sender<Result<Seq, LogError>>,
}

pub fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_keep_log_file_num(5);
    opts
}

/// Opens the log's RocksDB for writing with its column families: the
/// events (default) and the audit index ([`super::audit`]), made if missing.
/// Every writable open goes through here: RocksDB refuses an open that
/// does not name every column family.
pub fn open_db(opts: &Options, path: &Path) -> Result<DB, LogError> {
    let families = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, super::audit::CF];
    DB::open_cf(opts, path, families).map_err(|source| LogError::Open {
        path: path.display().to_string(),
        source,
    })
}

impl EventLog {
    /// Opens (or creates) the log for writing. Only one process may do so.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let db = open_db(&db_options(), path)?;
        let log = Self::from_db(db, true)?;
        // A record that does not read stops the catch-up where it is (the
        // replay that follows names it, and refuses the log).
        match super::audit::catch_up(&log.shared.db, log.last_seq()) {
            Ok(0) => {}
            Ok(indexed) => tracing::info!(indexed, "audit index caught up with the log"),
            Err(e) => tracing::warn!(error = %e, "audit index not caught up"),
        }
        Ok(log)
    }

    /// Opens the log with RocksDB's write lock but no writer and no checks
    /// (a damaged last key is fine): for `homecmp log repair`, which reads
    /// it and then deletes records through [`EventLog::raw`].
    pub fn open_for_repair(path: &Path) -> Result<Self, LogError> {
        let mut opts = db_options();
        opts.create_if_missing(false);
        let db = open_db(&opts, path)?;
        Ok(Self::with_last(Arc::new(db), 0, false))
    }

    /// Opens the log read-only: works beside a running server (it sees what
    /// was durable when it opened) and never changes a byte.
    pub fn open_read_only(path: &Path) -> Result<Self, LogError> {
        if !path.join("CURRENT").is_file() {
            return Err(LogError::Missing {
                path: path.display().to_string(),
            });
        }
        let mut opts = db_options();
        opts.create_if_missing(false);
        let open = || {
            // The column families it has (a log from before the audit
            // index has none but the default).
            let families = DB::list_cf(&opts, path)?;
            DB::open_cf_for_read_only(&opts, path, families, false)
        };
        // Beside a live writer, a compaction may delete a file between the
        // open reading the manifest and opening the file: open again.
        let mut attempt = 0;
        let db = loop {
            match open() {
                Ok(db) => break db,
                Err(e) if attempt < READ_ONLY_ATTEMPTS && e.as_ref().contains("No such file") => {
                    attempt += 1;
                    thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
                }
                Err(source) => {
                    return Err(LogError::Open {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        Self::from_db(db, false)
    }

    fn from_db(db: DB, writable: bool) -> Result<Self, LogError> {
        let db = Arc::new(db);
        let last = match db.iterator(IteratorMode::End).next() {
            Some(item) => {
                let (key, _) = item?;
                event::decode_key(&key).map_err(|reason| LogError::CorruptKey {
                    key: key.to_vec(),
                    reason,
                })?
            }
            None => 0,
        };
        Ok(Self::with_last(db, last, writable))
    }

    fn with_last(db: Arc<DB>, last: Seq, writable: bool) -> Self {
        let last_seq = Arc::new(AtomicU64::new(last));
        let poisoned = Arc::new(AtomicBool::new(false));
        let fail_next = Arc::new(AtomicBool::new(false));
        let (queue, writer) = if writable {
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            let writer = Writer {
                db: db.clone(),
                next: last + 1,
                last_seq: last_seq.clone(),
                poisoned: poisoned.clone(),
                fail_next: fail_next.clone(),
            };
            let handle = thread::Builder::new()
                .name("homecmp-log-writer".into())
                .spawn(move || writer.run(rx))
                .expect("spawn the log writer thread");
            (Some(tx), Some(handle))
        } else {
            (None, None)
        };
        Self {
            shared: Arc::new(Shared {
                db,
                queue,
                writer,
                last_seq,
                poisoned,
                fail_next,
            }),
        }
    }

    /// Appends `records` as consecutive events and returns the sequence
    /// number of the first, once all of them are durable.
    pub async fn append(&self, records: Vec<Record>) -> Result<Seq, LogError> {
        self.append_with(records, None).await
    }

    /// Like [`EventLog::append`], and runs `on_durable(first_seq)` on the
    /// writer thread once the records are durable, before answering, even
    /// if this future has been dropped by then (see the module docs). If the
    /// future is dropped before the records are handed over, neither the
    /// write nor `on_durable` happens, and `on_durable` is dropped.
    pub async fn append_then(
        &self,
        records: Vec<Record>,
        on_durable: impl FnOnce(Seq) -> Result<(), String> + Send + 'static,
    ) -> Result<Seq, LogError> {
        self.append_with(records, Some(Box::new(on_durable))).await
    }

    /// Runs `f` on the writer thread between two group commits, with every
    /// record handed over before it applied and none after it: the index
    /// does not change while `f` runs (appends wait). Not on a poisoned log.
    pub async fn between_batches<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, LogError> {
        let queue = self.shared.queue.as_ref().ok_or(LogError::Closed)?;
        let (result, ran) = oneshot::channel();
        let (done, answer) = oneshot::channel();
        let on_durable: OnDurable = Box::new(move |_| {
            let _ = result.send(f());
            Ok(())
        });
        queue
            .send(Pending {
                values: Vec::new(),
                terms: Vec::new(),
                on_durable: Some(on_durable),
                done,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)??;
        ran.await.map_err(|_| LogError::Closed)
    }

    /// The RocksDB handle, shared (for work handed to the writer thread).
    pub(crate) fn db(&self) -> Arc<DB> {
        self.shared.db.clone()
    }

    async fn append_with(
        &self,
        records: Vec<Record>,
        on_durable: Option<OnDurable>,
    ) -> Result<Seq, LogError> {
        if records.is_empty() {
            return Ok(self.last_seq() + 1);
        }
        if self.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        // Encoded here, by the caller: a record the log could not replay
        // is refused before anything is written, and the writer thread
        // only writes.
        let values = records
            .iter()
            .map(event::encode_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(LogError::Refused)?;
        let terms = records.iter().map(super::audit::terms).collect();
        let queue = self.shared.queue.as_ref().ok_or(LogError::Closed)?;
        let (done, answer) = oneshot::channel();
        // Cancel-safe: a send dropped while waiting for room sends nothing.
        queue
            .send(Pending {
                values,
                terms,
                on_durable,
                done,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// The events before `before` that `filter` picks, newest first, from
    /// the audit index ([`super::audit::query`]).
    pub fn audit(
        &self,
        filter: &super::audit::Filter,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<super::audit::Page, LogError> {
        Ok(super::audit::query(&self.shared.db, filter, before, limit)?)
    }

    /// Whether a failed write has stopped the log taking appends.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Makes the next write fail as a disk error would, poisoning the log:
    /// for tests of what operators see when the disk fails.
    #[doc(hidden)]
    pub fn fail_next_write(&self) {
        self.shared.fail_next.store(true, Ordering::Release);
    }

    /// Sequence number of the newest durable event (0 for an empty log).
    pub fn last_seq(&self) -> Seq {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// Events from `from` on, in order. Each item is checked: a key that is
    /// not 8 bytes, a gap in the sequence or a value that does not decode is
    /// an error naming the record, and ends the iteration.
    pub fn read_from(&self, from: Seq) -> Reader<'_> {
        self.read_range(from, Seq::MAX)
    }

    /// Like [`EventLog::read_from`], ending after `last` (inclusive): records
    /// past it are not decoded, so a damaged record later in the log does
    /// not stop a read that ends before it.
    pub fn read_range(&self, from: Seq, last: Seq) -> Reader<'_> {
        let start = event::encode_key(from);
        Reader {
            inner: self
                .shared
                .db
                .iterator(IteratorMode::From(&start, rocksdb::Direction::Forward)),
            // The log starts at 1: a missing first record is a gap too.
            expected: Some(from.max(1)),
            last,
            failed: false,
        }
    }

    /// [`EventLog::read_range`] on a thread of its own, in batches: the
    /// records are read and decoded while the caller uses the ones before
    /// (a replay or an export takes both cores). In order; a bad record
    /// ends the batches after it; the reader stops when the receiver is
    /// dropped.
    pub fn read_ahead<'scope>(
        &'scope self,
        scope: &'scope thread::Scope<'scope, '_>,
        from: Seq,
        last: Seq,
    ) -> std::sync::mpsc::Receiver<Vec<Result<(Seq, Record), LogError>>> {
        let (send, batches) = std::sync::mpsc::sync_channel(8);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(READ_AHEAD_BATCH);
            for item in self.read_range(from, last) {
                let bad = item.is_err();
                batch.push(item);
                if batch.len() == READ_AHEAD_BATCH || bad {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_AHEAD_BATCH));
                    if send.send(full).is_err() || bad {
                        return;
                    }
                }
            }
            let _ = send.send(batch);
        });
        batches
    }

    /// Bytes on disk of the log's directory (SST, WAL, MANIFEST, ...). The
    /// RocksDB size properties miss a WAL that a read-only open replayed.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(self.shared.db.path())
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum()
    }

    /// The raw database, for tools that inspect or (in tests) damage records.
    pub fn raw(&self) -> &DB {
        &self.shared.db
    }
}

/// Iterator over checked records; see [`EventLog::read_from`].
pub struct Reader<'a> {
    inner: rocksdb::DBIteratorWithThreadMode<'a, DB>,
    expected: Option<Seq>,
    last: Seq,
    failed: bool,
}

impl Iterator for Reader<'_> {
    type Item = Result<(Seq, Record), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.inner.next()?;
        if let Ok((key, _)) = &item
            && event::decode_key(key).is_ok_and(|seq| seq > self.last)
        {
            return None;
        }
        let result = self.check(item);
        self.failed = result.is_err();
        Some(result)
    }
}

/// A raw key-value pair as RocksDB's iterator yields it.
type RawItem = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;

impl Reader<'_> {
    fn check(&mut self, item: RawItem) -> Result<(Seq, Record), LogError> {
        let (key, value) = item?;
        let seq = event::decode_key(&key).map_err(|reason| LogError::CorruptKey {
            key: key.to_vec(),
            reason,
        })?;
        if let Some(expected) = self.expected
            && seq != expected
        {
            return Err(LogError::Gap {
                expected,
                found: seq,
            });
        }
        self.expected = Some(seq + 1);
        let record =
            event::decode_value(&value).map_err(|reason| LogError::Corrupt { seq, reason })?;
        Ok((seq, record))
    }
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("expected", &self.expected)
            .finish()
    }
}

/// The one thread that writes: batches, numbers, syncs, answers.
struct Writer {
    db: Arc<DB>,
    next: Seq,
    last_seq: Arc<AtomicU64>,
    poisoned: Arc<AtomicBool>,
    fail_next: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Pending>) {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let mut batch_of = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            batch_of.push(first);
            let mut records = batch_of[0].values.len();
            while records < MAX_BATCH_RECORDS {
                match queue.try_recv() {
                    Ok(more) => {
                        records += more.values.len();
                        batch_of.push(more);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch_of, &sync);
        }
    }

    fn commit(&mut self, pending: &mut Vec<Pending>, sync: &WriteOptions) {
        if self.poisoned.load(Ordering::Acquire) {
            for p in pending.drain(..) {
                let _ = p.done.send(Err(LogError::Poisoned));
            }
            return;
        }
        let mut batch = WriteBatch::default();
        let mut seq = self.next;
        let mut firsts = Vec::with_capacity(pending.len());
        for p in pending.iter() {
            firsts.push(seq);
            for (value, terms) in p.values.iter().zip(&p.terms) {
                batch.put(event::encode_key(seq), value);
                super::audit::put(&self.db, &mut batch, seq, terms);
                seq += 1;
            }
        }
        if seq > self.next {
            super::audit::mark(&self.db, &mut batch, seq - 1);
        }
        let written = match self.fail_next.swap(false, Ordering::AcqRel) {
            true => Err("injected write failure".to_owned()),
            false => self.db.write_opt(batch, sync).map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(error = %e, "event log write failed; log poisoned, writes refused until restart");
            for p in pending.drain(..) {
                let _ = p.done.send(Err(LogError::Write(e.clone())));
            }
            return;
        }
        self.next = seq;
        self.last_seq.store(seq - 1, Ordering::Release);
        for (p, first) in pending.drain(..).zip(firsts) {
            let applied = match p.on_durable {
                // Once poisoned, the state after this batch is not trusted.
                Some(_) if self.poisoned.load(Ordering::Acquire) => Err(LogError::Poisoned),
                Some(on_durable) => on_durable(first).map_err(|e| {
                    self.poisoned.store(true, Ordering::Release);
                    tracing::error!(error = %e, seq = first, "durable event not applied; log poisoned");
                    LogError::NotApplied(e)
                }),
                None => Ok(()),
            };
            let _ = p.done.send(applied.map(|()| first));
        }
    }
}
