//! Index and event log: the state of the CMP and its only way to change.
//!
//! [`Store`] is a cloneable handle (`Arc` inside) over the [`EventLog`] and
//! the [`Index`]. Every change is written to the log first and applied to the
//! index only once durable, so the index never shows what a crash would lose.
//! Changes that touch the same clientid, subscriber or code are serialised by
//! striped async locks; unrelated changes proceed together and share one
//! fsync through the log's group commit.
//!
//! # Cancellation
//!
//! A change is planned under its stripe locks, then handed to the log with
//! the locks and the index: the log's writer applies the events once they
//! are durable and only then releases the locks (`EventLog::append_then`).
//! A caller dropped at any `.await` (a reset stream, a closed socket) has
//! either handed nothing over, and nothing happens, or handed it all over,
//! and the write, the index update and the unlock happen without it. So the
//! index always equals a replay of the log, and nobody plans a change on a
//! state that a durable event has already moved past.

pub mod audit;
pub mod cluster;
pub mod event;
pub mod history;
pub mod index;
pub mod log;
pub mod owner;
pub mod snapshot;

use std::hash::{BuildHasher, Hash, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, OwnedMutexGuard};

pub use crate::core::model::{Associated, NewAssociation};
pub use event::{Event, IdentitySource, Record, RevokeReason, Seq};
pub use index::{ApplyError, Association, CodeEntry, Counts, Index};
pub use log::{EventLog, LogError};

use cluster::{ClusterError, Link, Publish};

use crate::core::targeting::TargetRule;
use crate::core::{Plan, plan_association};
use crate::wire::{ClientId, IndirectCode, SubscriberRef};

/// Lock stripes for writers; a power of two well above the core count.
const STRIPES: usize = 256;

/// Rounds of revocations an erasure makes before it rewrites history.
const ERASE_ROUNDS: usize = 4;

/// Events a history rewrite in cluster mode publishes at most (each holds
/// up to [`event::REPLACEMENTS_PER_EVENT`] records): a bound on a plan that
/// would never run out.
const REWRITE_ROUNDS: u64 = 100_000;

/// Code registrations of a cluster-mode import published at once.
const CODES_IN_FLIGHT: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("event log is inconsistent: {0}")]
    Inconsistent(#[from] ApplyError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The event that registers `code`: plain, or with its rules.
fn code_event(code: &IndirectCode, target: String, rules: Vec<TargetRule>) -> Event {
    let code = code.as_str().to_owned();
    match rules.is_empty() {
        true => Event::CodeRegistered { code, target },
        false => Event::CodeRegisteredWithRules {
            code,
            target,
            rules,
        },
    }
}

/// When a change is made and by whom: a record's `at_ms` and `actor`. A
/// bare `u64` is a change the server makes itself (no actor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub at_ms: u64,
    pub actor: Option<String>,
}

impl Stamp {
    /// A change made through the admin API by `actor`.
    pub fn by(at_ms: u64, actor: impl Into<String>) -> Stamp {
        Stamp {
            at_ms,
            actor: Some(actor.into()),
        }
    }

    pub fn record(&self, event: Event) -> Record {
        Record {
            at_ms: self.at_ms,
            event,
            actor: self.actor.clone(),
        }
    }
}

impl From<u64> for Stamp {
    fn from(at_ms: u64) -> Stamp {
        Stamp { at_ms, actor: None }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: EventLog,
    /// Shared with the log's writer, which applies durable events to it.
    index: Arc<Index>,
    stripes: Vec<Arc<Mutex<()>>>,
    hasher: RandomState,
    /// Cluster mode: changes go through the shared stream (see [`cluster`]).
    cluster: OnceLock<Arc<Link>>,
    /// Where this store's index snapshot lives, when it keeps one.
    snapshot: Option<std::path::PathBuf>,
    /// The sequence the snapshot on disk reflects (loaded or last written;
    /// 0 for none).
    snapshot_seq: AtomicU64,
    /// The one owner of history rewrites in this process ([`owner`]).
    rewrites: owner::Rewrites,
}

/// How [`Store::open_from`] rebuilt the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The sequence the snapshot reflected, if one was used.
    pub snapshot_seq: Option<Seq>,
    /// Events replayed from the log (after the snapshot, or all).
    pub replayed: u64,
    /// Why a snapshot that was there was not used.
    pub snapshot_refused: Option<String>,
}

/// How a replay ended, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    pub events: u64,
    pub counts: Counts,
}

impl Store {
    /// Opens the log at `path` for writing and rebuilds the index from it.
    /// A log that does not read back cleanly is an error: the server must not
    /// start on half a state.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let log = EventLog::open(path)?;
        let index = Index::new();
        replay(&log, &index, |_, _| true)?;
        Ok(Self::new(log, index, None))
    }

    /// Opens the log at `path` and rebuilds the index from the snapshot at
    /// `snapshot` (see [`snapshot`]) plus the events after it, or, when
    /// there is none or it does not match the log, from the whole log.
    /// [`Store::write_snapshot`] keeps the file up to date.
    pub fn open_from(path: &Path, snapshot: &Path) -> Result<(Self, Started), StoreError> {
        let log = EventLog::open(path)?;
        let (index, snapshot_refused) = match snapshot::load(snapshot, &log) {
            Ok(index) => (index, None),
            Err(snapshot::SnapshotError::Missing) => (Index::new(), None),
            Err(e) => {
                tracing::warn!(error = %e, file = %snapshot.display(), "index snapshot not used: replaying the whole log");
                (Index::new(), Some(e.to_string()))
            }
        };
        let from = index.last_seq();
        let replayed = replay(&log, &index, |_, _| true)?.events;
        let started = Started {
            snapshot_seq: (from > 0).then_some(from),
            replayed,
            snapshot_refused,
        };
        let store = Self::new(log, index, Some(snapshot.to_owned()));
        store.inner.snapshot_seq.store(from, Ordering::Relaxed);
        Ok((store, started))
    }

    fn new(log: EventLog, index: Index, snapshot: Option<std::path::PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                index: Arc::new(index),
                stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
                hasher: RandomState::new(),
                cluster: OnceLock::new(),
                snapshot,
                snapshot_seq: AtomicU64::new(0),
                rewrites: owner::Rewrites::default(),
            }),
        }
    }

    /// Writes the index snapshot (a store opened with [`Store::open_from`]):
    /// copied on the log's writer thread between two commits (appends wait
    /// for the copy, a walk over memory: ~0.1 s a million associations),
    /// then written out while appends go on; returns the sequence it
    /// reflects. A history rewrite: it waits for the one under way.
    pub async fn write_snapshot(&self) -> Result<Option<Seq>, StoreError> {
        let Some(file) = self.inner.snapshot.clone() else {
            return Ok(None);
        };
        let rewriting = self.inner.rewrites.begin().await;
        let (index, db) = (self.inner.index.clone(), self.log().db());
        let copied = self
            .log()
            .between_batches(move || snapshot::copy(&index, &db))
            .await?;
        let failed = |e: snapshot::SnapshotError| StoreError::Log(LogError::Write(e.to_string()));
        let copied = copied.map_err(failed)?;
        // Written out with the rewrite's turn still held, even if the
        // caller stops waiting: an erasure cannot start between the copy
        // and its file (and find its subscriber's associations in it).
        // What is on disk is told before the turn passes to a rewrite
        // (which removes the file, and says so).
        let store = self.clone();
        let saving = tokio::task::spawn_blocking(move || {
            let _rewriting = rewriting;
            let seq = copied.save(&file)?;
            store.inner.snapshot_seq.store(seq, Ordering::Relaxed);
            Ok(seq)
        });
        let saved = saving.await.expect("saving a snapshot does not panic");
        saved.map(Some).map_err(failed)
    }

    /// The snapshot file a history rewrite removes first (it holds what
    /// the rewrite changes, as it was): from then on there is none.
    fn snapshot_to_remove(&self) -> Option<std::path::PathBuf> {
        self.inner.snapshot_seq.store(0, Ordering::Relaxed);
        self.inner.snapshot.clone()
    }

    /// Events the log took since the snapshot on disk (all of them when
    /// there is none): what a start after a crash would replay.
    pub fn events_since_snapshot(&self) -> u64 {
        let since = self.inner.snapshot_seq.load(Ordering::Relaxed);
        self.inner.index.last_seq().saturating_sub(since)
    }

    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// Cluster mode from now on: every change goes through `link`'s stream
    /// and the local log only copies it. Set once, at start.
    pub fn attach(&self, link: Arc<Link>) {
        if self.inner.cluster.set(link).is_err() {
            panic!("a store joins one cluster, once");
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Link>> {
        self.inner.cluster.get()
    }

    /// Carries out [`plan_association`] (the rule lives in the core) under
    /// the stripes of the clientid, its new subscriber and its current one:
    /// `Existing` when what stands stays, else its events in one atomic
    /// batch (superseded clientids revoked, then the creation or rebind).
    pub async fn associate(
        &self,
        new: NewAssociation,
        rebind: bool,
        cap: usize,
        now_ms: u64,
    ) -> Result<Associated, StoreError> {
        if let Some(link) = self.cluster() {
            return self
                .associate_replicated(link, new, rebind, cap, now_ms)
                .await;
        }
        let (guards, current) = self
            .lock_with_owner(new.clientid.as_str(), Some(&new.subscriber))
            .await;
        // The subscriber's stripe is held: its clientids cannot change.
        let held = self.index().clientids_of(&new.subscriber);
        match plan_association(current, &held, &new, rebind, cap) {
            Plan::Existing(standing) => Ok(Associated::Existing(standing)),
            Plan::Write {
                events,
                superseded,
                rebound_from,
            } => {
                let seq = self.commit(events, now_ms, guards).await?;
                Ok(match rebound_from {
                    None => Associated::Created { seq, superseded },
                    Some(from) => Associated::Rebound {
                        seq,
                        from,
                        superseded,
                    },
                })
            }
        }
    }

    /// Revokes the association of `clientid`; `None` if it had none.
    pub async fn revoke(
        &self,
        clientid: &ClientId,
        stamp: impl Into<Stamp>,
    ) -> Result<Option<Association>, StoreError> {
        self.revoke_for(clientid, None, RevokeReason::Admin, stamp.into())
            .await
    }

    /// Erases a subscriber (GDPR Art. 17): revokes each of its associations
    /// (reason `erased`), then rewrites history so that no record links it
    /// to a clientid or a client address ([`history::rewrite`]). Returns the
    /// clientids revoked and what the rewrite did. Not in cluster mode: the
    /// shared stream cannot be rewritten.
    ///
    /// Waits for its turn among rewrites ([`owner::Rewrites`]), then runs
    /// in a task of its own that holds the turn: the caller may go away at
    /// any `.await` (before its turn nothing happened; after it the
    /// erasure finishes), and two erasures (or an erasure and a snapshot)
    /// never interleave.
    pub async fn erase_subscriber(
        &self,
        subscriber: SubscriberRef,
        stamp: impl Into<Stamp>,
    ) -> Result<(Vec<ClientId>, history::Rewritten), StoreError> {
        let stamp = stamp.into();
        if let Some(link) = self.cluster() {
            // A task of its own, like the single-node rewrite below: a
            // client that goes away does not stop it halfway.
            let (store, link) = (self.clone(), link.clone());
            let erasure =
                tokio::spawn(async move { store.erase_replicated(&link, subscriber, stamp).await });
            return erasure.await.expect("erasure does not panic");
        }
        let turn = self.inner.rewrites.begin().await;
        let store = self.clone();
        let erasure = tokio::spawn(async move {
            let _rewriting = turn;
            store.erase_now(subscriber, stamp).await
        });
        erasure.await.expect("erasure does not panic")
    }

    /// Holds the rewrite lock until the guard is dropped: for tests that
    /// check what waits for it.
    #[doc(hidden)]
    pub async fn hold_rewrites(&self) -> owner::Rewriting {
        self.inner.rewrites.begin().await
    }

    /// [`Store::erase_subscriber`]'s work, under the rewrite lock.
    async fn erase_now(
        &self,
        subscriber: SubscriberRef,
        stamp: Stamp,
    ) -> Result<(Vec<ClientId>, history::Rewritten), StoreError> {
        let revoked = self.revoke_all(subscriber, &stamp).await?;
        let rewritten = self
            .rewrite_now(crate::core::Doom::Subscriber(subscriber))
            .await?;
        Ok((revoked, rewritten))
    }

    /// Retention, online: blanks the records of associations and codes
    /// that ended before `cutoff_ms` ([`history::rewrite`] with
    /// [`crate::core::Doom::EndedBefore`], as `homecmp log compact` does
    /// offline). Like an erasure it waits for its turn among rewrites and
    /// runs in a task of its own; in cluster mode it goes through the
    /// stream ([`Store::rewrite_replicated`]).
    pub async fn apply_retention(
        &self,
        cutoff_ms: u64,
        stamp: impl Into<Stamp>,
    ) -> Result<history::Rewritten, StoreError> {
        let (store, stamp) = (self.clone(), stamp.into());
        let doom = crate::core::Doom::EndedBefore(cutoff_ms);
        if let Some(link) = self.cluster() {
            link.check_deletable().await?;
            let link = link.clone();
            let retention =
                tokio::spawn(async move { store.rewrite_replicated(&link, doom, stamp).await });
            return retention.await.expect("retention does not panic");
        }
        let turn = self.inner.rewrites.begin().await;
        let retention = tokio::spawn(async move {
            let _rewriting = turn;
            store.rewrite_now(doom).await
        });
        retention.await.expect("retention does not panic")
    }

    /// The single-node rewrite of what `doom` picks, on a blocking thread,
    /// under the rewrite lock the caller holds. It removes the snapshot
    /// too (it holds what was rewritten, as it was).
    async fn rewrite_now(&self, doom: crate::core::Doom) -> Result<history::Rewritten, StoreError> {
        let (log, snapshot) = (self.log().clone(), self.snapshot_to_remove());
        let rewritten = tokio::task::spawn_blocking(move || {
            let last = log.last_seq();
            history::rewrite(&log, last, doom, snapshot.as_deref())
        })
        .await
        .expect("the rewrite does not panic")?;
        Ok(rewritten)
    }

    /// Revokes every association of `subscriber` (erasure's first step):
    /// the clientids revoked.
    async fn revoke_all(
        &self,
        subscriber: SubscriberRef,
        stamp: &Stamp,
    ) -> Result<Vec<ClientId>, StoreError> {
        let mut revoked = Vec::new();
        // Again while any is left: a first scan may have associated one
        // more (through a gateway header, say) while these were revoked.
        for _ in 0..ERASE_ROUNDS {
            let held = self.index().clientids_of(&subscriber);
            if held.is_empty() {
                break;
            }
            for clientid in held {
                let owner = Some(subscriber);
                let erased = self.revoke_for(&clientid, owner, RevokeReason::Erased, stamp.clone());
                if erased.await?.is_some() {
                    revoked.push(clientid);
                }
            }
        }
        Ok(revoked)
    }

    /// Erasure in cluster mode (see [`cluster`]'s module docs): the
    /// associations revoked through the stream, then the history rewritten
    /// through it ([`Store::rewrite_replicated`]).
    async fn erase_replicated(
        &self,
        link: &Arc<Link>,
        subscriber: SubscriberRef,
        stamp: Stamp,
    ) -> Result<(Vec<ClientId>, history::Rewritten), StoreError> {
        link.check_deletable().await?;
        let revoked = self.revoke_all(subscriber, &stamp).await?;
        let doom = crate::core::Doom::Subscriber(subscriber);
        let rewritten = self.rewrite_replicated(link, doom, stamp).await?;
        Ok((revoked, rewritten))
    }

    /// A history rewrite in cluster mode (erasure, retention; the caller
    /// has checked the stream lets messages be deleted): planned on
    /// this node's log (the single-node plan, [`history::plan`]) and
    /// published as one `history_rewritten` event, expecting the rewrite
    /// subject's last sequence (so it is planned on the log as the previous
    /// rewrite left it); once this node has written it, the replaced
    /// messages are deleted from the stream. A plan larger than one event
    /// holds goes one event at a time, planned again after each (what is
    /// rewritten already is not planned again), until nothing is left.
    async fn rewrite_replicated(
        &self,
        link: &Arc<Link>,
        doom: crate::core::Doom,
        stamp: Stamp,
    ) -> Result<history::Rewritten, StoreError> {
        let subject = link.history_subject();
        let mut done = history::Rewritten::default();
        let (mut races, mut rounds) = (0, 0u64);
        loop {
            let expected = link.catch_up_on(&subject).await?;
            let (log, last) = (self.log().clone(), self.log().last_seq());
            let planned = tokio::task::spawn_blocking(move || history::plan(&log, last, doom))
                .await
                .expect("planning does not panic")?;
            done.scanned = last;
            let first = event::history_rewritten(planned).into_iter().next();
            let Some(Event::HistoryRewritten { records }) = first else {
                return Ok(done);
            };
            rounds += 1;
            if rounds > REWRITE_ROUNDS {
                return Err(ClusterError::Unavailable(
                    "the history rewrite did not converge; try again".into(),
                )
                .into());
            }
            let seqs: Vec<Seq> = records.iter().map(|r| r.seq).collect();
            let event = Event::HistoryRewritten { records };
            let publish = cluster::Publish::new(subject.clone(), expected, &stamp, event);
            match link.publish_rewrite(publish).await {
                Ok(_) => {
                    link.delete_messages(&seqs).await?;
                    done.records += seqs.len() as u64;
                }
                // Another node's rewrite first: plan again on the log as
                // it left it.
                Err(ClusterError::Conflict) if races < cluster::ATTEMPTS => {
                    link.lost_race();
                    races += 1;
                }
                Err(ClusterError::Conflict) => return Err(lost_every_race()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes a history rewrite's replacements over this node's records
    /// (cluster mode's follower), under the rewrite lock, off the runtime.
    ///
    /// A node that was away while the subscriber was erased applied the
    /// records that began its associations, but not those that ended them
    /// (their messages were deleted before it read them, and it filled the
    /// gap with their replacements): an association that began at a record
    /// the rewrite blanks, and is still the one that began there, ends now,
    /// so the index is the rewritten log's, as on every other node.
    pub(crate) async fn write_replacements(
        &self,
        replacements: Vec<event::Replacement>,
    ) -> Result<u64, StoreError> {
        let _rewriting = self.inner.rewrites.begin().await;
        let (log, snapshot) = (self.log().clone(), self.snapshot_to_remove());
        let new = replacements.clone();
        let replaced =
            tokio::task::spawn_blocking(move || history::replace(&log, &new, snapshot.as_deref()))
                .await
                .expect("the rewrite does not panic")?;
        for (old, new) in replaced.iter().zip(&replacements) {
            let began = match &old.record.event {
                Event::AssociationCreated { clientid, .. }
                | Event::AssociationRebound { clientid, .. } => clientid,
                _ => continue,
            };
            // The rewrite keeps an instance that began here as a creation.
            if !matches!(new.record.event, Event::AssociationCreated { .. }) {
                self.index().end_instance(began, old.seq);
            }
        }
        Ok(replaced.len() as u64)
    }

    /// Revokes the association of `clientid`, if it has one and (with
    /// `owner`) that subscriber holds it.
    async fn revoke_for(
        &self,
        clientid: &ClientId,
        owner: Option<SubscriberRef>,
        reason: RevokeReason,
        stamp: Stamp,
    ) -> Result<Option<Association>, StoreError> {
        if let Some(link) = self.cluster() {
            return self
                .revoke_replicated(link, clientid, owner, reason, &stamp)
                .await;
        }
        let (guards, current) = self.lock_with_owner(clientid.as_str(), None).await;
        let Some((current, event)) = revocation(clientid, current, owner, reason) else {
            return Ok(None);
        };
        self.commit(vec![event], stamp, guards).await?;
        Ok(Some(current))
    }

    /// Writes resolution counts, as many `scans_counted` events as they
    /// take ([`Event::scans_counted`]), then the per-rule counts likewise
    /// ([`Event::rule_scans_counted`]); returns the last one's sequence
    /// number (`None`: no counts). In cluster mode through the stream, on
    /// the subject of `writer` (this node's name: one writer per subject,
    /// so no race), one event after the other.
    pub async fn record_scans(
        &self,
        codes: Vec<crate::core::model::ScanCount>,
        rules: Vec<crate::core::model::RuleScanCount>,
        writer: &str,
        now_ms: u64,
    ) -> Result<Option<Seq>, StoreError> {
        let mut events = Event::scans_counted(codes);
        events.extend(Event::rule_scans_counted(rules));
        if events.is_empty() {
            return Ok(None);
        }
        let Some(link) = self.cluster() else {
            return self.commit(events, now_ms, Vec::new()).await.map(Some);
        };
        let subject = link.code_subject(&format!("scans of {writer}"));
        let mut last_seq = None;
        for event in events {
            last_seq = Some(self.publish_one(link, &subject, event, now_ms).await?);
        }
        Ok(last_seq)
    }

    /// Publishes `event` on `subject` expecting what this node last saw
    /// there; after a lost race, catches up and tries again.
    async fn publish_one(
        &self,
        link: &Arc<Link>,
        subject: &str,
        event: Event,
        now_ms: u64,
    ) -> Result<Seq, StoreError> {
        self.replicate(link, subject, Locks::None, |last, _| Planned::Publish {
            events: vec![Publish::new(
                subject.to_owned(),
                last,
                &Stamp::from(now_ms),
                event.clone(),
            )],
            answer: Box::new(|seq| seq),
        })
        .await
    }

    /// Registers many codes (with their rules) in one durable append: all
    /// of them or none.
    /// Not in cluster mode, where a stream takes one change per message
    /// (`ClusterError::Mismatch`).
    pub async fn register_codes(
        &self,
        codes: Vec<(IndirectCode, String, Vec<TargetRule>)>,
        stamp: impl Into<Stamp>,
    ) -> Result<Seq, StoreError> {
        let stamp = stamp.into();
        if let Some(link) = self.cluster() {
            return self.register_codes_replicated(link, codes, stamp).await;
        }
        let stripes: Vec<usize> = codes
            .iter()
            .map(|(code, _, _)| self.stripe(code.as_str()))
            .collect();
        let guards = self.lock(&stripes).await;
        let events = codes
            .into_iter()
            .map(|(code, target, rules)| code_event(&code, target, rules))
            .collect();
        self.commit(events, stamp, guards).await
    }

    /// [`Store::register_codes`] in cluster mode: a stream message carries
    /// one change, so each code is registered as a change of its own
    /// ([`CODES_IN_FLIGHT`] at once), and a batch that fails may leave some
    /// of its codes registered, each whole (importing the rows again is
    /// safe: a registration replaces the code). The last sequence.
    async fn register_codes_replicated(
        &self,
        link: &Arc<Link>,
        codes: Vec<(IndirectCode, String, Vec<TargetRule>)>,
        stamp: Stamp,
    ) -> Result<Seq, StoreError> {
        use futures_util::StreamExt;
        let changes = codes.into_iter().map(|(code, target, rules)| {
            let (event, stamp) = (code_event(&code, target, rules), stamp.clone());
            async move {
                self.change_code_replicated(link, &code, event, stamp)
                    .await
                    .map(|done| done.expect("a registration always writes"))
            }
        });
        let mut written = futures_util::stream::iter(changes).buffer_unordered(CODES_IN_FLIGHT);
        let mut last = 0;
        while let Some(seq) = written.next().await {
            last = last.max(seq?);
        }
        Ok(last)
    }

    pub async fn register_code(
        &self,
        code: &IndirectCode,
        target: &str,
        stamp: impl Into<Stamp>,
    ) -> Result<Seq, StoreError> {
        self.register_code_with(code, target, Vec::new(), stamp)
            .await
    }

    /// Registers `code` with its target and resolution rules (none: a
    /// plain registration), replacing what it had.
    pub async fn register_code_with(
        &self,
        code: &IndirectCode,
        target: &str,
        rules: Vec<TargetRule>,
        stamp: impl Into<Stamp>,
    ) -> Result<Seq, StoreError> {
        let event = code_event(code, target.to_owned(), rules);
        let stamp = stamp.into();
        if let Some(link) = self.cluster() {
            let done = self
                .change_code_replicated(link, code, event, stamp)
                .await?;
            return Ok(done.expect("a registration always writes"));
        }
        let guards = self.lock(&[self.stripe(code.as_str())]).await;
        self.commit(vec![event], stamp, guards).await
    }

    /// Removes a code; `false` if it was not registered.
    pub async fn remove_code(
        &self,
        code: &IndirectCode,
        stamp: impl Into<Stamp>,
    ) -> Result<bool, StoreError> {
        let stamp = stamp.into();
        if let Some(link) = self.cluster() {
            let event = Event::CodeRemoved {
                code: code.as_str().to_owned(),
            };
            let done = self
                .change_code_replicated(link, code, event, stamp)
                .await?;
            return Ok(done.is_some());
        }
        let guards = self.lock(&[self.stripe(code.as_str())]).await;
        if !self.index().has_code(code) {
            return Ok(false);
        }
        let event = Event::CodeRemoved {
            code: code.as_str().to_owned(),
        };
        self.commit(vec![event], stamp, guards).await?;
        Ok(true)
    }

    /// Locks the stripes of `clientid`, of `subscriber` and of the subscriber
    /// that owns `clientid` now, and returns the association as seen under
    /// those locks. Every change to a subscriber's clientids holds that
    /// subscriber's stripe, so the owner read here cannot change under us.
    async fn lock_with_owner(
        &self,
        clientid: &str,
        subscriber: Option<&SubscriberRef>,
    ) -> (Vec<OwnedMutexGuard<()>>, Option<Association>) {
        let mut owner_stripe = None;
        loop {
            let mut stripes = vec![self.stripe(clientid)];
            stripes.extend(subscriber.map(|s| self.stripe(s)));
            stripes.extend(owner_stripe);
            let guards = self.lock(&stripes).await;
            let current = self.index().association(clientid);
            match current {
                Some(a) if !stripes.contains(&self.stripe(&a.subscriber)) => {
                    owner_stripe = Some(self.stripe(&a.subscriber));
                }
                _ => return (guards, current),
            }
        }
    }

    /// Appends the events durably; the log's writer then applies them and
    /// drops `guards` (see the module docs). Returns the last seq.
    async fn commit(
        &self,
        events: Vec<Event>,
        stamp: impl Into<Stamp>,
        guards: Vec<OwnedMutexGuard<()>>,
    ) -> Result<Seq, StoreError> {
        let stamp = stamp.into();
        let records: Vec<Record> = events.into_iter().map(|e| stamp.record(e)).collect();
        self.commit_records(records, guards).await
    }

    /// Cluster mode: appends records the stream delivered, in its order, to
    /// the local log and applies them (the follower's only way in).
    pub(crate) async fn append_replicated(&self, records: Vec<Record>) -> Result<Seq, StoreError> {
        self.commit_records(records, Vec::new()).await
    }

    async fn commit_records(
        &self,
        records: Vec<Record>,
        guards: Vec<OwnedMutexGuard<()>>,
    ) -> Result<Seq, StoreError> {
        let count = records.len() as Seq;
        // The index, not the store: the writer must not hold the last
        // handle to the log it runs in.
        let index = self.inner.index.clone();
        let applied = records.clone();
        let first = self
            .log()
            .append_then(records, move |first| {
                let _guards = guards;
                (first..)
                    .zip(&applied)
                    .try_for_each(|(seq, record)| index.apply(seq, record))
                    .map_err(|e| e.to_string())
            })
            .await?;
        Ok(first + count - 1)
    }

    /// [`Store::associate`] in cluster mode: plans on the local index once it
    /// holds everything the stream has for this clientid, then publishes
    /// each event on its clientid's subject expecting what this node saw
    /// there. A lost race is planned again, and then finds the winner's
    /// association.
    async fn associate_replicated(
        &self,
        link: &Arc<Link>,
        new: NewAssociation,
        rebind: bool,
        cap: usize,
        now_ms: u64,
    ) -> Result<Associated, StoreError> {
        let subject = link.clientid_subject(new.clientid.as_str());
        let locks = Locks::Owner {
            clientid: new.clientid.as_str(),
            subscriber: Some(&new.subscriber),
        };
        self.replicate(link, &subject, locks, |last, current| {
            let held = self.index().clientids_of(&new.subscriber);
            let (events, superseded, rebound_from) =
                match plan_association(current, &held, &new, rebind, cap) {
                    Plan::Existing(standing) => {
                        return Planned::Answer(Associated::Existing(standing));
                    }
                    Plan::Write {
                        events,
                        superseded,
                        rebound_from,
                    } => (events, superseded, rebound_from),
                };
            let publish = |event: Event| {
                let id = event.clientid().unwrap_or_default();
                let (subject, expected) = match id == new.clientid.as_str() {
                    true => (subject.clone(), last),
                    false => self.superseded_expected(link, id, &new.subscriber)?,
                };
                Some(Publish::new(subject, expected, &Stamp::from(now_ms), event))
            };
            let Some(events) = events.into_iter().map(publish).collect() else {
                return Planned::Stale;
            };
            let answer = move |seq| match rebound_from {
                None => Associated::Created { seq, superseded },
                Some(from) => Associated::Rebound {
                    seq,
                    from,
                    superseded,
                },
            };
            Planned::Publish {
                events,
                answer: Box::new(answer),
            }
        })
        .await
    }

    /// The subject and expected sequence of the revocation of `id`, a
    /// clientid of `subscriber` a creation supersedes. A subject per
    /// clientid: its last event is the one that associated it, if this node
    /// is current (if not, JetStream says so). A bucket: its sequence as
    /// this node applied it ([`Link::guess`]), read before the index is
    /// asked again whether `subscriber` still holds `id`; `None` if it no
    /// longer does (the plan is stale: plan again).
    fn superseded_expected(
        &self,
        link: &Link,
        id: &str,
        subscriber: &SubscriberRef,
    ) -> Option<(String, Seq)> {
        let subject = link.clientid_subject(id);
        let expected = match link.guess(&subject) {
            Some(guess) => self
                .index()
                .association(id)
                .filter(|a| a.subscriber == *subscriber)
                .map(|_| guess)?,
            None => self.index().association(id).map_or(0, |a| a.seq),
        };
        Some((subject, expected))
    }

    async fn revoke_replicated(
        &self,
        link: &Arc<Link>,
        clientid: &ClientId,
        owner: Option<SubscriberRef>,
        reason: RevokeReason,
        stamp: &Stamp,
    ) -> Result<Option<Association>, StoreError> {
        let subject = link.clientid_subject(clientid.as_str());
        let locks = Locks::Owner {
            clientid: clientid.as_str(),
            subscriber: None,
        };
        self.replicate(link, &subject, locks, |last, current| {
            let Some((current, event)) = revocation(clientid, current, owner, reason) else {
                return Planned::Answer(None);
            };
            Planned::Publish {
                events: vec![Publish::new(subject.clone(), last, stamp, event)],
                answer: Box::new(move |_| Some(current)),
            }
        })
        .await
    }

    /// A code registration or removal in cluster mode; `None`: a removal of
    /// a code that is not registered (nothing published).
    async fn change_code_replicated(
        &self,
        link: &Arc<Link>,
        code: &IndirectCode,
        event: Event,
        stamp: Stamp,
    ) -> Result<Option<Seq>, StoreError> {
        let subject = link.code_subject(code.as_str());
        let locks = Locks::Code(code.as_str());
        self.replicate(link, &subject, locks, |last, _| {
            if matches!(event, Event::CodeRemoved { .. }) && !self.index().has_code(code) {
                return Planned::Answer(None);
            }
            Planned::Publish {
                events: vec![Publish::new(subject.clone(), last, &stamp, event.clone())],
                answer: Box::new(Some),
            }
        })
        .await
    }

    /// Cluster mode's one loop (first writer wins, see [`cluster`]):
    /// catches up on `subject`, takes `locks`, plans on what this node holds
    /// then (`plan` is given the subject's last sequence, which the
    /// publishes expect, and the clientid's association under
    /// [`Locks::Owner`]), publishes; a race lost to another node is planned
    /// again, at most `cluster::ATTEMPTS` times.
    ///
    /// A clientid's change first expects what this node's index says of
    /// the clientid (its association's sequence, 0 for none), with no read
    /// of the stream leader: JetStream accepts the publish only if that is
    /// the subject's last sequence, and then the plan was made on the
    /// clientid's latest state. A plan that publishes nothing is not
    /// trusted on a guess (this node may be behind): it, and a refused
    /// guess (the clientid was revoked, or this node is behind), are planned
    /// again after the leader read, and only those later races count as
    /// lost.
    async fn replicate<T>(
        &self,
        link: &Arc<Link>,
        subject: &str,
        locks: Locks<'_>,
        mut plan: impl FnMut(Seq, Option<Association>) -> Planned<T>,
    ) -> Result<T, StoreError> {
        let mut guess = matches!(locks, Locks::Owner { .. });
        for _ in 0..cluster::ATTEMPTS {
            // A bucket's guess is read before the index ([`Link::guess`]).
            let (read, guessed) = match guess {
                true => (None, link.guess(subject)),
                false => (Some(link.catch_up_on(subject).await?), None),
            };
            let (guards, current) = match &locks {
                Locks::Owner {
                    clientid,
                    subscriber,
                } => self.lock_with_owner(clientid, *subscriber).await,
                Locks::Code(code) => (self.lock(&[self.stripe(*code)]).await, None),
                Locks::None => (Vec::new(), None),
            };
            let last = read
                .or(guessed)
                .unwrap_or_else(|| current.map_or(0, |a| a.seq));
            let (events, answer) = match plan(last, current) {
                Planned::Answer(_) | Planned::Stale if guess => {
                    guess = false;
                    continue;
                }
                Planned::Stale => continue,
                Planned::Answer(answer) => return Ok(answer),
                Planned::Publish { events, answer } => (events, answer),
            };
            if let Some(seq) = publish_planned(link, events, guards).await? {
                return Ok(answer(seq));
            }
            if !guess {
                link.lost_race();
            }
            guess = false;
        }
        Err(lost_every_race())
    }

    fn stripe(&self, key: &(impl Hash + ?Sized)) -> usize {
        self.inner.hasher.hash_one(key) as usize % STRIPES
    }

    /// Locks the stripes in ascending order (so two writers never wait on
    /// each other in a cycle), each once.
    async fn lock(&self, stripes: &[usize]) -> Vec<OwnedMutexGuard<()>> {
        let mut order = stripes.to_vec();
        order.sort_unstable();
        order.dedup();
        let mut guards = Vec::with_capacity(order.len());
        for i in order {
            guards.push(self.inner.stripes[i].clone().lock_owned().await);
        }
        guards
    }
}

/// The event that revokes `current`, the association of `clientid`, if
/// there is one and (with `owner`) that subscriber holds it.
fn revocation(
    clientid: &ClientId,
    current: Option<Association>,
    owner: Option<SubscriberRef>,
    reason: RevokeReason,
) -> Option<(Association, Event)> {
    let current = current.filter(|a| owner.is_none_or(|o| a.subscriber == o))?;
    let event = Event::AssociationRevoked {
        clientid: clientid.as_str().to_owned(),
        subscriber: current.subscriber,
        reason,
    };
    Some((current, event))
}

/// What one attempt of a replicated change planned.
enum Planned<T> {
    /// Nothing to publish: this is the answer.
    Answer(T),
    /// Publish `events`; the answer is made from the sequence of the last.
    Publish {
        events: Vec<Publish>,
        answer: Box<dyn FnOnce(Seq) -> T + Send>,
    },
    /// The index changed while the plan read it: plan again.
    Stale,
}

/// The stripes a replicated change is planned under.
enum Locks<'a> {
    /// A clientid's, its new subscriber's (if any) and its owner's
    /// ([`Store::lock_with_owner`]): the plan sees what it holds now.
    Owner {
        clientid: &'a str,
        subscriber: Option<&'a SubscriberRef>,
    },
    Code(&'a str),
    None,
}

/// Publishes a planned change (see [`Link::publish_all`]) and then lets go
/// of the stripes it was planned under: `Some(seq)` of its last event once
/// applied here, `None` when another node changed a key first (plan again).
///
/// A task of its own owns the publishing, not the caller: a request
/// dropped at any `.await` (a reset stream) cannot stop a change halfway,
/// with the revocation that made room published and the creation not.
async fn publish_planned(
    link: &Arc<Link>,
    events: Vec<Publish>,
    guards: Vec<OwnedMutexGuard<()>>,
) -> Result<Option<Seq>, StoreError> {
    let link = link.clone();
    let publishing = tokio::spawn(async move {
        let published = link.publish_all(events).await;
        drop(guards);
        published
    });
    let published = publishing.await.expect("publishing does not panic");
    match published {
        Ok(seq) => Ok(Some(seq)),
        Err(ClusterError::Conflict) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn lost_every_race() -> StoreError {
    ClusterError::Unavailable(format!(
        "lost {} races in a row to other nodes",
        cluster::ATTEMPTS
    ))
    .into()
}

/// Applies the log's events after the index's last one (all of them for a
/// new index; the tail for one loaded from a snapshot) in order to `index`
/// while `keep(seq, record)` says so. Stops with an error at the first
/// record that does not read back or does not apply.
pub fn replay(
    log: &EventLog,
    index: &Index,
    keep: impl FnMut(Seq, &Record) -> bool,
) -> Result<Replayed, StoreError> {
    replay_until(log, index, Seq::MAX, keep)
}

/// [`replay`] of the events up to `last` (inclusive); later records are not
/// read, so damage past `last` does not matter.
pub fn replay_until(
    log: &EventLog,
    index: &Index,
    last: Seq,
    mut keep: impl FnMut(Seq, &Record) -> bool,
) -> Result<Replayed, StoreError> {
    let from = index.last_seq() + 1;
    let mut events = 0;
    std::thread::scope(|scope| {
        let batches = log.read_ahead(scope, from, last);
        for item in batches.iter().flatten() {
            let (seq, record) = item?;
            if !keep(seq, &record) {
                break;
            }
            index.apply(seq, &record)?;
            events += 1;
        }
        // Dropping `batches` here stops the reader at its next batch.
        Ok(Replayed {
            events,
            counts: index.counts(),
        })
    })
}
