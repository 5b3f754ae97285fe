//! Cluster mode: the event log is a NATS JetStream stream that every node
//! shares, and each node's RocksDB log is an in-order copy of it.
//!
//! The stream is the source of truth and its sequence is the event
//! sequence: message `n` of the stream is record `n` of every node's local
//! log (same codec, so `homecmp log` works on a node's copy). A node
//! answers every request from its own index; it changes state only by
//! publishing to the stream and waiting until its follower has applied what
//! it published.
//!
//! # First writer wins
//!
//! Each event goes to the subject of the key it changes: for a clientid
//! `<stream>.b.<b>`, one of [`BUCKETS`] buckets (`b`: the first 16 bits of
//! a hash of the clientid, so JetStream's memory, which holds every
//! subject's state, does not grow with the clientids; a stream made before
//! the buckets has a subject per clientid, `<stream>.c.<h>`, see
//! [`Layout`]), and `<stream>.k.<h>` for a code (`h`: a hash of the key, so
//! any key makes a valid subject). A change is planned on the local index
//! once it has applied everything the stream holds for that subject (its
//! last sequence read from the stream leader, or first guessed from what
//! this node has applied), and published with
//! `Nats-Expected-Last-Subject-Sequence`: JetStream refuses it if another
//! node wrote the subject in between. The loser catches up and plans
//! again, and now finds what the winner made (`existing`, or a mismatch).
//! Two clientids of one bucket race as one key would: the loser plans
//! again and finds nothing of the other's in its way. `Nats-Msg-Id` makes a
//! re-sent publish (after a lost acknowledgement) a duplicate, not a second
//! event.
//!
//! What makes an expected sequence safe is one rule ([`Link::guess`]):
//! it is at most what the node's index had applied when the plan read the
//! index. JetStream accepts the publish only if the subject's last
//! sequence is the expected one, so the plan saw every event of the
//! subject.
//!
//! # Erasure
//!
//! The stream's messages are deleted only by a subscriber's erasure
//! ([`Store::erase_subscriber`]): the node asked revokes the subscriber's
//! associations, plans the history rewrite on its own log (the same plan as
//! single-node mode, [`super::history::plan`]) and publishes it as one
//! `history_rewritten` event on `<stream>.h`, expecting that subject's last
//! sequence (so every plan is made on the log as the previous rewrite left
//! it). Every node, applying that event, writes the replacements over its
//! own records ([`super::history::replace`]) and deletes the replaced
//! messages from the stream (JetStream erases their bytes); the node asked
//! answers once they are gone. A node that reads the stream later finds
//! gaps there, and fills each from the replacement of the rewrite that made
//! it ([`fill_gap`]), so every node's log is the same rewritten log.
//!
//! What this does not serialise: two nodes creating two *different*
//! clientids for one subscriber at the same instant may both fit under
//! `max_clientids_per_subscriber` and leave it one over; the subscriber's
//! next creation supersedes back down to the cap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context, stream};
use aws_lc_rs::digest;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;

pub mod migrate;

use super::event::{Replacement, decode_value, encode_value};
use super::{Event, Record, Seq, Store};
use crate::config::ClusterConfig;

/// Publishes tried per change before answering 503: each retry follows a
/// lost race, after catching up.
pub const ATTEMPTS: usize = 8;

/// How far back from its end a joining node looks for a message of the
/// stream to compare with its own (see [`check_prefix`]).
const PREFIX_LOOKBACK: Seq = 4096;

/// How long a node waits for its follower to write a history rewrite it
/// published (see [`Link::publish_rewrite`]).
const REWRITE_APPLIED: Duration = Duration::from_secs(600);

/// Message deletes in flight while a history rewrite's replaced messages
/// leave the stream.
const DELETES_IN_FLIGHT: usize = 64;

/// Messages the follower appends to the local log in one batch (one fsync).
const FOLLOW_BATCH: usize = 512;

/// How long the follower waits for a message before it checks that it is
/// not stuck (every fifth time also against the stream's last sequence).
const STALL_CHECK: Duration = Duration::from_secs(1);

/// The buckets of clientid subjects in a stream of [`Layout::Buckets`].
pub const BUCKETS: usize = 1 << 16;

/// The stream metadata key that names its [`Layout`].
const LAYOUT_KEY: &str = "homecmp_layout";
/// Its value for [`Layout::Buckets`].
const BUCKETS_LAYOUT: &str = "buckets";

/// How a stream names the subjects of clientids' events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<stream>.c.<24 hex digits>`: a subject per clientid, whose state
    /// every nats-server keeps in memory (about 100 B each): streams made
    /// before the buckets. `homecmp cluster migrate` moves them.
    PerClientid,
    /// `<stream>.b.<4 hex digits>`: one of [`BUCKETS`], the first 16 bits
    /// of the same hash as [`Layout::PerClientid`]'s subject.
    Buckets,
}

impl Layout {
    /// The layout a stream was made with (its metadata says; none: one
    /// made before the buckets).
    pub fn of(config: &stream::Config) -> Layout {
        match config.metadata.get(LAYOUT_KEY).map(String::as_str) {
            Some(BUCKETS_LAYOUT) => Layout::Buckets,
            _ => Layout::PerClientid,
        }
    }

    /// The subject of `clientid`'s events in stream `stream`.
    pub fn clientid_subject(self, stream: &str, clientid: &str) -> String {
        let hash = key_hash(clientid);
        match self {
            Layout::PerClientid => format!("{stream}.c.{hash}"),
            Layout::Buckets => format!("{stream}.b.{}", &hash[..4]),
        }
    }
}

/// A stream's [`Layout`], shared by a node's publishers and its follower,
/// which reads it again each time it finds the stream (after a migration,
/// the stream it finds is another).
#[derive(Debug)]
struct SharedLayout(std::sync::atomic::AtomicBool);

impl SharedLayout {
    fn new(layout: Layout) -> Self {
        Self(std::sync::atomic::AtomicBool::new(
            layout == Layout::Buckets,
        ))
    }

    fn get(&self) -> Layout {
        match self.0.load(Ordering::Acquire) {
            true => Layout::Buckets,
            false => Layout::PerClientid,
        }
    }

    /// Takes the layout of the stream `config` describes.
    fn found(&self, config: &stream::Config) {
        let layout = Layout::of(config);
        if self.get() != layout {
            tracing::info!(stream = %config.name, ?layout, "the stream's layout changed (migrated)");
            self.0.store(layout == Layout::Buckets, Ordering::Release);
        }
    }
}

/// The stream, created with today's layout if there is none, once no
/// migration is under way; retried until JetStream answers.
async fn the_stream(js: &jetstream::Context, config: &ClusterConfig) -> stream::Stream {
    loop {
        if let Some(step) = migration_under_way(js, &config.stream).await {
            tracing::warn!(stream = %config.stream, step, "a migration of the stream is under way; waiting for it to end");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        // Right after a JetStream cluster forms it has no leader for a
        // moment: retry until it answers.
        match js.get_or_create_stream(stream_config(config)).await {
            Ok(stream) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, stream = %config.stream, "JetStream stream not ready, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Which step of a migration ([`migrate`]) is under way, if one is: a node
/// does not join (nor create the stream) meanwhile.
async fn migration_under_way(js: &jetstream::Context, name: &str) -> Option<&'static str> {
    if js.get_stream(migrate::parked_name(name)).await.is_ok() {
        return Some("the stream is parked");
    }
    match js.get_stream(name).await {
        Ok(stream) if migrate::loading(stream.cached_info()) => Some("the stream is loading"),
        _ => None,
    }
}

/// The bucket a subject of stream `stream` names, if it is a bucket's.
fn bucket_of(stream: &str, subject: &str) -> Option<usize> {
    let hex = subject.strip_prefix(stream)?.strip_prefix(".b.")?;
    match hex.len() {
        4 => usize::from_str_radix(hex, 16).ok(),
        _ => None,
    }
}

/// Each bucket's last sequence among the events this node's index has
/// applied (0: none), raised by the follower once it applied them.
#[derive(Debug)]
struct BucketSeqs(Box<[AtomicU64]>);

impl BucketSeqs {
    fn new() -> Self {
        Self((0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
    }

    fn get(&self, bucket: usize) -> Seq {
        self.0[bucket].load(Ordering::Acquire)
    }

    fn raise(&self, bucket: usize, seq: Seq) {
        self.0[bucket].fetch_max(seq, Ordering::Release);
    }

    /// Sets a bucket's sequence to what the stream leader says it is now,
    /// lower than what this node saw when messages were deleted since
    /// (an erasure).
    fn set(&self, bucket: usize, seq: Seq) {
        self.0[bucket].store(seq, Ordering::Release);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not reachable, not acknowledged in time, or not caught up in time.
    #[error("JetStream unavailable: {0}")]
    Unavailable(String),
    /// Another node wrote the subject first: catch up and plan again.
    #[error("another node changed this key first")]
    Conflict,
    #[error("{0}")]
    Mismatch(String),
}

/// One event to publish: where, what this node believes the subject's last
/// sequence is, and the record.
#[derive(Debug)]
pub struct Publish {
    pub subject: String,
    pub expected: Seq,
    pub record: Record,
}

impl Publish {
    pub fn new(subject: String, expected: Seq, stamp: &super::Stamp, event: super::Event) -> Self {
        Self {
            subject,
            expected,
            record: stamp.record(event),
        }
    }
}

/// A node's connection to the shared stream.
#[derive(Debug)]
pub struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The stream, without its info (no round trip to get it).
    handle: stream::Stream<()>,
    stream: String,
    /// The stream's layout, as the follower last found it (a migration
    /// changes it under a running node).
    layout: Arc<SharedLayout>,
    buckets: Arc<BucketSeqs>,
    node: String,
    publish_timeout: Duration,
    /// The last stream sequence this node has applied to its log and index.
    applied: watch::Receiver<Seq>,
    /// A per-start nonce in message ids, so ids of two runs never collide.
    nonce: u64,
    next_id: AtomicU64,
    conflicts: AtomicU64,
    /// The highest sequence JetStream acknowledged to this node: the
    /// follower, once idle, must have reached it (else it is stuck).
    acknowledged: Arc<AtomicU64>,
    /// Why the follower stopped for good (a message it cannot apply):
    /// `/readyz` says so, and every change fails at once.
    stopped: Arc<OnceLock<String>>,
}

impl Link {
    /// Connects, makes sure the stream exists, checks that the local log is
    /// a prefix of it, starts following it and waits until this node has
    /// applied everything the stream held when it joined.
    pub async fn join(config: &ClusterConfig, store: &Store) -> Result<Arc<Self>, ClusterError> {
        let client = connect(config).await?;
        let js = jetstream::new(client.clone());
        let mut stream = the_stream(&js, config).await;
        check_server_version(&client.server_info().version)?;
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable("stream info", &e))?;
        let (target, layout) = (info.state.last_sequence, Layout::of(&info.config));
        let layout = Arc::new(SharedLayout::new(layout));
        if layout.get() == Layout::PerClientid {
            tracing::warn!(stream = %config.stream, "the stream has a subject per clientid (made before the buckets): every nats-server holds each one in memory; move it with `homecmp cluster migrate`");
        }
        check_prefix(&stream, store, target).await?;

        let (applied_tx, applied) = watch::channel(store.log().last_seq());
        let acknowledged = Arc::new(AtomicU64::new(0));
        let stopped = Arc::new(OnceLock::new());
        let buckets = Arc::new(BucketSeqs::new());
        tokio::spawn(follow(
            store.clone(),
            js.clone(),
            config.stream.clone(),
            Follower {
                applied: applied_tx,
                buckets: buckets.clone(),
                layout: layout.clone(),
            },
            acknowledged.clone(),
            stopped.clone(),
        ));
        let handle = js
            .get_stream_no_info(&config.stream)
            .await
            .map_err(|e| unavailable("stream", &e))?;
        let link = Arc::new(Self {
            client,
            handle,
            js,
            stream: config.stream.clone(),
            layout,
            buckets,
            node: config.node.clone(),
            publish_timeout: config.publish_timeout,
            applied,
            nonce: rand_nonce(),
            next_id: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            acknowledged,
            stopped,
        });
        let mut applied = link.applied.clone();
        let _ = applied
            .wait_for(|&seq| seq >= target || link.stopped().is_some())
            .await;
        if let Some(reason) = link.stopped() {
            return Err(ClusterError::Mismatch(format!(
                "cannot follow the stream: {reason}"
            )));
        }
        tracing::info!(stream = %config.stream, last_seq = target, node = %config.node, "caught up with the cluster stream");
        Ok(link)
    }

    /// Whether the NATS connection is up: down, creations are refused fast.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Why this node stopped following the stream, if it did: it serves
    /// what it has, changes nothing, and is not ready.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Races lost to another node so far (each one retried).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Counts a race lost to another node (a publish refused after this
    /// node had caught up with the subject), for `/metrics`.
    pub fn lost_race(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn applied(&self) -> Seq {
        *self.applied.borrow()
    }

    /// The subject of a clientid's events.
    pub fn clientid_subject(&self, clientid: &str) -> String {
        self.layout.get().clientid_subject(&self.stream, clientid)
    }

    /// The stream's layout.
    pub fn layout(&self) -> Layout {
        self.layout.get()
    }

    /// What a plan may expect as `subject`'s last sequence without asking
    /// the stream leader, if this node knows: for a bucket, its last
    /// sequence among the events this node's index has applied. Read it
    /// *before* the index: then the index holds every event of the bucket
    /// up to it, and a publish JetStream accepts on it was planned on
    /// everything the bucket holds. `None`: not a bucket (ask the leader,
    /// [`Link::catch_up_on`], or use what the index says of the key).
    pub fn guess(&self, subject: &str) -> Option<Seq> {
        bucket_of(&self.stream, subject).map(|b| self.buckets.get(b))
    }

    /// The subject of a code's events.
    pub fn code_subject(&self, code: &str) -> String {
        format!("{}.k.{}", self.stream, key_hash(code))
    }

    /// The subject of history rewrites: one for the stream, so that each
    /// rewrite is planned on the log as the one before left it.
    pub fn history_subject(&self) -> String {
        history_subject(&self.stream)
    }

    /// Whether the stream lets messages be deleted (a stream made by a
    /// homecmp before erasure in cluster mode denies it, for good).
    pub async fn check_deletable(&self) -> Result<(), ClusterError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unavailable("stream info", &e))?;
        match stream.cached_info().config.deny_delete {
            false => Ok(()),
            true => Err(ClusterError::Mismatch(format!(
                "the stream {} was created with deny_delete (by a homecmp before erasure in \
                 cluster mode), which JetStream never lets go: erasure needs the stream moved \
                 to today's layout: run `homecmp cluster migrate` (the nodes may run)",
                self.stream
            ))),
        }
    }

    /// Deletes the messages at `seqs` from the stream (JetStream erases
    /// their bytes); one already gone is not an error.
    pub async fn delete_messages(&self, seqs: &[Seq]) -> Result<(), ClusterError> {
        delete_messages(&self.handle, seqs).await
    }

    /// The stream's last sequence on `subject` (0: none), read from the
    /// stream leader, and waits until this node has applied it.
    pub async fn catch_up_on(&self, subject: &str) -> Result<Seq, ClusterError> {
        self.check_connected()?;
        let last = self.last_on(subject).await?;
        self.wait_applied(last).await?;
        Ok(last)
    }

    /// Read from the stream leader (a replica could answer an older
    /// sequence, and every publish expecting it would then be refused).
    async fn last_on(&self, subject: &str) -> Result<Seq, ClusterError> {
        let last = tokio::time::timeout(
            self.publish_timeout,
            self.handle.get_last_raw_message_by_subject(subject),
        )
        .await
        .map_err(|_| ClusterError::Unavailable("last message lookup timed out".into()))?;
        match last {
            Ok(message) => Ok(message.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(ClusterError::Unavailable(format!("last message: {e}"))),
        }
    }

    /// Waits until this node has applied `seq`, within the publish timeout.
    pub async fn wait_applied(&self, seq: Seq) -> Result<(), ClusterError> {
        self.wait_applied_within(seq, self.publish_timeout).await
    }

    async fn wait_applied_within(&self, seq: Seq, within: Duration) -> Result<(), ClusterError> {
        let mut applied = self.applied.clone();
        let reached = |&s: &Seq| s >= seq || self.stopped.get().is_some();
        match tokio::time::timeout(within, applied.wait_for(reached)).await {
            Ok(Ok(_)) if self.stopped().is_some() => self.check_connected(),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::Unavailable("the follower stopped".into())),
            Err(_) => Err(ClusterError::Unavailable(format!(
                "not caught up to {seq} in time (at {})",
                self.applied()
            ))),
        }
    }

    /// Publishes `events` in order, each only if its subject is still at
    /// `expected`; returns the stream sequence of the last one once this
    /// node has applied it. A lost race is [`ClusterError::Conflict`]:
    /// events before it stay published (each is a valid change alone).
    pub async fn publish_all(&self, events: Vec<Publish>) -> Result<Seq, ClusterError> {
        self.check_connected()?;
        let mut last = 0;
        // Two events of one batch on one subject (two clientids of a
        // bucket): the second expects the first.
        let mut published: Vec<(String, Seq)> = Vec::new();
        for mut event in events {
            if let Some((_, seq)) = published.iter().find(|(s, _)| *s == event.subject) {
                event.expected = *seq;
            }
            let subject = event.subject.clone();
            last = self.publish(event).await?;
            published.push((subject, last));
        }
        self.wait_applied(last).await?;
        Ok(last)
    }

    /// Publishes one history rewrite (only if its subject is still at the
    /// expected sequence, as [`Link::publish_all`]) and waits until this
    /// node has written it, for up to [`REWRITE_APPLIED`]: writing thousands
    /// of records over the log, and compacting after, takes longer than a
    /// change's publish timeout.
    pub async fn publish_rewrite(&self, event: Publish) -> Result<Seq, ClusterError> {
        self.check_connected()?;
        let seq = self.publish(event).await?;
        self.wait_applied_within(seq, REWRITE_APPLIED).await?;
        Ok(seq)
    }

    async fn publish(&self, event: Publish) -> Result<Seq, ClusterError> {
        let id = format!(
            "{}-{:016x}-{}",
            self.node,
            self.nonce,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let payload = encode_value(&event.record)
            .map_err(|e| ClusterError::Mismatch(format!("event refused: {e}")))?;
        let payload = bytes::Bytes::from(payload);
        // A lost acknowledgement is sent again with the same id: JetStream
        // answers the first one's sequence (a duplicate), not a second event.
        for attempt in 0..2 {
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id)
                .expected_last_subject_sequence(event.expected);
            let sent = async {
                self.js
                    .send_publish(event.subject.clone(), message)
                    .await?
                    .await
            };
            match tokio::time::timeout(self.publish_timeout, sent).await {
                Ok(Ok(ack)) => {
                    self.acknowledged.fetch_max(ack.sequence, Ordering::Relaxed);
                    return Ok(ack.sequence);
                }
                // 10071, or 10164 (the same check made before replication
                // in a clustered stream), which async-nats reports as Other.
                Ok(Err(e))
                    if e.kind() == context::PublishErrorKind::WrongLastSequence
                        || e.to_string().contains("wrong last sequence") =>
                {
                    self.refresh_bucket(&event.subject).await;
                    return Err(ClusterError::Conflict);
                }
                // No stream takes the subject: the stream is moving, or
                // has moved to another layout ([`migrate`]).
                Ok(Err(e)) if e.kind() == context::PublishErrorKind::StreamNotFound => {
                    self.refresh_layout().await;
                    return Err(ClusterError::Unavailable(format!(
                        "publish: {e} (the stream is being migrated?)"
                    )));
                }
                Ok(Err(e)) if attempt == 0 && retriable(e.kind()) => continue,
                Ok(Err(e)) => return Err(ClusterError::Unavailable(format!("publish: {e}"))),
                Err(_) if attempt == 0 => continue,
                Err(_) => break,
            }
        }
        Err(ClusterError::Unavailable(
            "publish not acknowledged in time".into(),
        ))
    }

    /// The stream's layout as it is now (after a [`migrate`], another).
    async fn refresh_layout(&self) {
        let found = tokio::time::timeout(self.publish_timeout, self.js.get_stream(&self.stream));
        if let Ok(Ok(stream)) = found.await {
            self.layout.found(&stream.cached_info().config);
        }
    }

    /// After a refused publish on a bucket: its last sequence as the
    /// leader says, once this node has applied it (within the publish
    /// timeout). The next plan then sees the event that won: a change
    /// planned on a bucket's guess while the follower was still behind it
    /// (a superseded clientid's revocation, say, which no catch-up on the
    /// new clientid's subject waits for) would otherwise be refused again
    /// at every attempt until the follower got there. The follower only
    /// raises a bucket's sequence; after an erasure deleted the bucket's
    /// last messages the leader's is lower, and every guess would be
    /// refused until this.
    async fn refresh_bucket(&self, subject: &str) {
        let Some(bucket) = bucket_of(&self.stream, subject) else {
            return;
        };
        if let Ok(last) = self.last_on(subject).await
            && self.wait_applied(last).await.is_ok()
        {
            self.buckets.set(bucket, last);
        }
    }

    fn check_connected(&self) -> Result<(), ClusterError> {
        if let Some(reason) = self.stopped() {
            return Err(ClusterError::Unavailable(format!(
                "this node stopped following the stream: {reason}"
            )));
        }
        match self.connected() {
            true => Ok(()),
            false => Err(ClusterError::Unavailable("not connected to NATS".into())),
        }
    }
}

/// The subject of the stream `stream`'s history rewrites.
fn history_subject(stream: &str) -> String {
    format!("{stream}.h")
}

/// [`Link::delete_messages`], on any handle of the stream.
async fn delete_messages<I>(stream: &stream::Stream<I>, seqs: &[Seq]) -> Result<(), ClusterError>
where
    I: Send + Sync,
{
    let delete = |seq: Seq| async move {
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            // Already gone: another node deleted it first (JetStream says
            // so with one code or another, 10043 or 10057 "no message
            // found", depending on the moment): a refusal is checked
            // against what the stream holds.
            Err(e) => match stream.get_raw_message(seq).await {
                Err(gone) if gone.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(()),
                _ => Err(unavailable(&format!("delete message {seq}"), &e)),
            },
        }
    };
    futures_util::stream::iter(seqs.iter().copied())
        .map(delete)
        .buffer_unordered(DELETES_IN_FLIGHT)
        .try_collect()
        .await
}

/// The replacements of the records `from..until` (a gap where the stream's
/// messages were deleted), from the history rewrites published after
/// them; `None` if a rewrite naming every one of them is not (yet) in
/// sight.
async fn fill_gap<I>(
    stream: &stream::Stream<I>,
    subject: &str,
    from: Seq,
    until: Seq,
) -> Result<Option<Vec<Record>>, ClusterError> {
    let mut found: std::collections::BTreeMap<Seq, Record> = Default::default();
    let mut next = from;
    while (found.len() as Seq) < until - from {
        let message = match stream
            .direct_get_next_for_subject(subject, Some(next))
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable("history rewrite lookup", &e)),
        };
        next = message.sequence + 1;
        let record = decode_value(&message.payload).map_err(|e| {
            ClusterError::Mismatch(format!(
                "stream message {} is not an event: {e}",
                message.sequence
            ))
        })?;
        if let Event::HistoryRewritten { records } = record.event {
            for Replacement { seq, record } in records {
                if (from..until).contains(&seq) {
                    found.insert(seq, record);
                }
            }
        }
    }
    Ok(Some(found.into_values().collect()))
}

fn unavailable(what: &str, e: &dyn std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(format!("{what}: {e}"))
}

/// The NATS connection of `[cluster]`: its credentials and TLS, retried
/// for ever (a node waits for NATS rather than exiting).
pub(crate) async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("homecmp-{}", config.node))
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let Some(path) = &config.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| unavailable(&format!("nkey_seed_file {}", path.display()), &e))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| unavailable("credentials_file", &e))?;
    }
    if let Some(path) = &config.tls_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    options
        .connect(config.nats_urls.clone())
        .await
        .map_err(|e| unavailable("connect", &e))
}

/// Cluster mode relies on `Nats-Expected-Last-Subject-Sequence`, which
/// nats-server checks reliably in a clustered stream from 2.11 on (2.9's
/// leader-only pre-check let concurrent writes through; see the README).
fn check_server_version(version: &str) -> Result<(), ClusterError> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match (major, minor) >= (2, 11) {
        true => Ok(()),
        false => Err(ClusterError::Mismatch(format!(
            "nats-server {version} is older than 2.11, whose optimistic concurrency \
             cluster mode relies on"
        ))),
    }
}

fn retriable(kind: context::PublishErrorKind) -> bool {
    matches!(
        kind,
        context::PublishErrorKind::TimedOut | context::PublishErrorKind::BrokenPipe
    )
}

fn stream_config(config: &ClusterConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        subjects: open_subjects(&config.stream),
        num_replicas: config.replicas,
        storage: stream::StorageType::File,
        // Last message per subject straight from the leader.
        allow_direct: true,
        // Its sequence is every node's event seq: never purged, and a
        // message is deleted only where a history rewrite (erasure)
        // replaces it on every node (see the module docs).
        deny_delete: false,
        deny_purge: true,
        duplicate_window: Duration::from_secs(120),
        metadata: [(LAYOUT_KEY.to_owned(), BUCKETS_LAYOUT.to_owned())].into(),
        ..Default::default()
    }
}

/// The subjects a stream of today's layout takes: buckets, codes, history
/// rewrites and the gaps a migration copies ([`migrate`]); not a clientid's
/// subject of its own, so a node that still names clientids that way
/// (it has not yet seen the stream move) cannot write into it.
pub(crate) fn open_subjects(stream: &str) -> Vec<String> {
    ["b.*", "k.*", "h", "gap"]
        .iter()
        .map(|s| format!("{stream}.{s}"))
        .collect()
}

/// The local log must be a prefix of the stream: same length or shorter,
/// and its last record equal to the stream's message at that sequence. A
/// data dir of another stream or of single-node mode is refused.
///
/// A history rewrite may have deleted the stream's messages at the local
/// log's end while this node was away (its follower writes the rewrite
/// when it reads it): then the last record the stream still has, at most
/// [`PREFIX_LOOKBACK`] back, is the one compared.
async fn check_prefix(
    stream: &stream::Stream,
    store: &Store,
    stream_last: Seq,
) -> Result<(), ClusterError> {
    let local_last = store.log().last_seq();
    if local_last == 0 {
        return Ok(());
    }
    if local_last > stream_last {
        return Err(ClusterError::Mismatch(format!(
            "the local log has {local_last} events and the stream only {stream_last}: \
             this data dir belongs to another stream (or to single-node mode)"
        )));
    }
    let oldest = local_last.saturating_sub(PREFIX_LOOKBACK).max(1);
    for seq in (oldest..=local_last).rev() {
        let remote = match stream.get_raw_message(seq).await {
            Ok(message) => message.payload,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => continue,
            Err(e) => {
                return Err(ClusterError::Unavailable(format!("message {seq}: {e}")));
            }
        };
        let local = store
            .log()
            .read_range(seq, seq)
            .next()
            .and_then(Result::ok)
            .and_then(|(_, record)| encode_value(&record).ok());
        return match local.as_deref() == Some(&remote[..]) {
            true => Ok(()),
            false => Err(ClusterError::Mismatch(format!(
                "local event {seq} differs from the stream's: \
                 this data dir belongs to another stream (or to single-node mode)"
            ))),
        };
    }
    tracing::warn!(
        local_last,
        "the stream's messages at the local log's end are all deleted: nothing to compare"
    );
    Ok(())
}

/// Follows the stream from the local log's end, for as long as the process
/// lives: each batch of messages is appended to the local log and applied
/// to the index, then announced on `applied`. Any error (a lost connection,
/// a gap) starts a new consumer from where the local log ends. A message
/// that cannot be applied stops it for good, loudly: the reason goes to
/// `stopped` (`/readyz` 503, `homecmp_cluster_follower_stopped` 1) and to
/// the log as an error.
async fn follow(
    store: Store,
    js: jetstream::Context,
    name: String,
    follower: Follower,
    acknowledged: Arc<AtomicU64>,
    stopped: Arc<OnceLock<String>>,
) {
    let applied = &follower.applied;
    loop {
        let from = store.log().last_seq() + 1;
        match follow_from(&store, &js, &name, from, &follower, &acknowledged).await {
            Ok(()) => tracing::warn!(from, "cluster stream consumer ended; starting again"),
            Err(FollowError::Fatal(e)) => {
                tracing::error!(error = %e, "cannot apply the cluster stream; this node stops following it and is not ready");
                let _ = stopped.set(e);
                // Wakes whoever waits for a sequence: it will not come.
                applied.send_modify(|_| {});
                return;
            }
            Err(FollowError::Retry(e)) => {
                tracing::warn!(error = %e, from, "cluster stream consumer failed; starting again")
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the follower announces once the index applied events: the last
/// sequence, and each bucket's ([`Link::guess`]).
struct Follower {
    applied: watch::Sender<Seq>,
    buckets: Arc<BucketSeqs>,
    layout: Arc<SharedLayout>,
}

enum FollowError {
    Retry(String),
    Fatal(String),
}

async fn follow_from(
    store: &Store,
    js: &jetstream::Context,
    name: &str,
    from: Seq,
    follower: &Follower,
    acknowledged: &AtomicU64,
) -> Result<(), FollowError> {
    let applied = &follower.applied;
    let retry = |what: &str, e: &dyn std::fmt::Display| FollowError::Retry(format!("{what}: {e}"));
    let stream = js.get_stream(name).await.map_err(|e| retry("stream", &e))?;
    follower.layout.found(&stream.cached_info().config);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| retry("consumer", &e))?;
    let mut batches = consumer
        .messages()
        .await
        .map_err(|e| retry("messages", &e))?
        .ready_chunks(FOLLOW_BATCH);
    let mut idle_checks = 0u32;
    loop {
        let batch = match tokio::time::timeout(STALL_CHECK, batches.next()).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(()),
            Err(_) => {
                idle_checks += 1;
                check_not_stalled(store, &stream, follower, acknowledged, idle_checks).await?;
                continue;
            }
        };
        idle_checks = 0;
        let next = store.log().last_seq() + 1;
        let (records, buckets, gap) = records_of(name, batch, next)?;
        apply(store, &stream, records, applied).await?;
        for (bucket, seq) in buckets {
            follower.buckets.raise(bucket, seq);
        }
        if let Some(until) = gap {
            let from = store.log().last_seq() + 1;
            let subject = history_subject(name);
            let filled = fill_gap(&stream, &subject, from, until)
                .await
                .map_err(|e| FollowError::Retry(e.to_string()))?
                .ok_or_else(|| {
                    FollowError::Retry(format!(
                        "gap: got {until}, expected {from}, and no history rewrite in sight names them"
                    ))
                })?;
            append(store, filled, applied).await?;
            // A new consumer from past the gap.
            return Err(FollowError::Retry(format!(
                "filled a gap of deleted messages ({from} to {})",
                until - 1
            )));
        }
    }
}

/// Appends `records` (the stream's, in order) to the local log and index;
/// before each history rewrite among them, writes its replacements over
/// the local records and deletes those messages from the stream.
async fn apply<I>(
    store: &Store,
    stream: &stream::Stream<I>,
    records: Vec<Record>,
    applied: &watch::Sender<Seq>,
) -> Result<(), FollowError>
where
    I: Send + Sync,
{
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        if let Event::HistoryRewritten {
            records: replacements,
        } = &record.event
        {
            append(store, std::mem::take(&mut pending), applied).await?;
            store
                .write_replacements(replacements.clone())
                .await
                .map_err(|e| FollowError::Fatal(format!("history rewrite: {e}")))?;
            // Every node deletes (the one asked may have died before it
            // did); one that finds a message gone already goes on.
            let seqs: Vec<Seq> = replacements.iter().map(|r| r.seq).collect();
            if let Err(e) = delete_messages(stream, &seqs).await {
                tracing::warn!(error = %e, "rewritten messages not deleted from the stream by this node");
            }
        }
        pending.push(record);
    }
    append(store, pending, applied).await
}

/// Appends `records` to the local log and index and announces the last.
async fn append(
    store: &Store,
    records: Vec<Record>,
    applied: &watch::Sender<Seq>,
) -> Result<(), FollowError> {
    if records.is_empty() {
        return Ok(());
    }
    let last = store
        .append_replicated(records)
        .await
        .map_err(|e| FollowError::Fatal(e.to_string()))?;
    applied.send_replace(last);
    Ok(())
}

/// A consumer can stall without an error (its server died, say): idle
/// while this node knows of later events, or (every fifth idle check)
/// while the stream has more, it is replaced.
async fn check_not_stalled(
    store: &Store,
    stream: &stream::Stream,
    follower: &Follower,
    acknowledged: &AtomicU64,
    idle_checks: u32,
) -> Result<(), FollowError> {
    let at = store.log().last_seq();
    if acknowledged.load(Ordering::Relaxed) > at {
        return Err(FollowError::Retry(format!(
            "stalled at {at} behind this node's own writes"
        )));
    }
    if idle_checks.is_multiple_of(5) {
        let info = stream.get_info().await;
        // An ordered consumer follows a stream that was moved ([`migrate`])
        // without a word: its layout is read again here.
        if let Ok(info) = &info {
            follower.layout.found(&info.config);
        }
        let last = info.map(|i| i.state.last_sequence);
        if let Ok(last) = last
            && last > at
        {
            return Err(FollowError::Retry(format!(
                "stalled at {at}, the stream is at {last}"
            )));
        }
    }
    Ok(())
}

/// The events of a batch of stream messages from sequence `next` on
/// (messages delivered again after a reconnect are skipped), up to a gap,
/// if there is one: then also the sequence after the gap (deleted messages
/// the caller fills, [`fill_gap`]). A message that is not an event stops
/// the follower.
fn records_of<E: std::fmt::Display>(
    name: &str,
    batch: Vec<Result<jetstream::Message, E>>,
    mut next: Seq,
) -> Result<Followed, FollowError> {
    let retry = |what: &str, e: &dyn std::fmt::Display| FollowError::Retry(format!("{what}: {e}"));
    let mut records = Vec::with_capacity(batch.len());
    let mut buckets = Vec::with_capacity(batch.len());
    for message in batch {
        let message = message.map_err(|e| retry("message", &e))?;
        let seq = message
            .info()
            .map_err(|e| retry("message info", &e))?
            .stream_sequence;
        if seq < next {
            continue;
        }
        if seq > next {
            return Ok((records, buckets, Some(seq)));
        }
        let record = decode_value(&message.payload).map_err(|e| {
            FollowError::Fatal(format!("stream message {seq} is not an event: {e}"))
        })?;
        records.push(record);
        if let Some(bucket) = bucket_of(name, &message.subject) {
            buckets.push((bucket, seq));
        }
        next += 1;
    }
    Ok((records, buckets, None))
}

/// A batch's events, the bucket and sequence of each on a bucket, and the
/// sequence after a gap if there is one ([`records_of`]).
type Followed = (Vec<Record>, Vec<(usize, Seq)>, Option<Seq>);

/// 24 hex digits of SHA-256: a subject token for any key, the same on
/// every node.
fn key_hash(key: &str) -> String {
    let hash = digest::digest(&digest::SHA256, key.as_bytes());
    hash.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rand_nonce() -> u64 {
    let uuid = uuid::Uuid::new_v4();
    let (high, _) = uuid.as_u64_pair();
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_older_than_2_11_is_refused() {
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.11.0-RC.1").is_ok());
        assert!(check_server_version("3.0.0").is_ok());
        for old in ["2.9.10", "2.10.24", "", "garbage"] {
            assert!(check_server_version(old).is_err(), "{old}");
        }
    }

    #[test]
    fn a_clientid_bucket_is_the_first_16_bits_of_its_subject_hash() {
        for clientid in ["a", "3f2b6c9e-1d4a-4c8b-9e2f-7a6b5c4d3e2f", "x.y"] {
            let own = Layout::PerClientid.clientid_subject("S", clientid);
            let bucket = Layout::Buckets.clientid_subject("S", clientid);
            assert_eq!(own.len(), "S.c.".len() + 24);
            assert_eq!(bucket, format!("S.b.{}", &own["S.c.".len()..][..4]));
            let b = bucket_of("S", &bucket).unwrap();
            assert!(b < BUCKETS);
        }
        for other in [
            "S.c.abcd",
            "S.b.abc",
            "S.b.abcde",
            "T.b.abcd",
            "S.b.zzzz",
            "S.k.abcd",
        ] {
            assert_eq!(bucket_of("S", other), None, "{other}");
        }
    }

    #[test]
    fn a_stream_without_the_layout_in_its_metadata_has_a_subject_per_clientid() {
        let config = ClusterConfig {
            nats_urls: vec![],
            stream: "S".into(),
            replicas: 1,
            node: "n".into(),
            credentials_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            publish_timeout: Duration::from_secs(1),
        };
        assert_eq!(Layout::of(&stream_config(&config)), Layout::Buckets);
        assert_eq!(Layout::of(&stream::Config::default()), Layout::PerClientid);
    }

    #[test]
    fn subjects_are_tokens_whatever_the_key() {
        for key in ["a.b", "*", ">", "with space", "x"] {
            let hash = key_hash(key);
            assert_eq!(hash.len(), 24);
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(key_hash("a"), key_hash("b"));
        assert_eq!(key_hash("a"), key_hash("a"));
    }
}
