//! Cluster mode: the session bindings shared through JetStream, so that a
//! binding made on any node (admin API, RADIUS) is honoured on every node,
//! and a node that starts (or restarts on an empty disk) gets the live
//! ones back.
//!
//! A stream of its own beside the event stream (`<stream>_SESSIONS`), one
//! subject per network, one message per subject (the binding as
//! [`super::kept`] encodes it; empty once it is removed), each with a
//! per-message TTL until the binding expires, so an expired binding leaves
//! the stream by itself. Every node follows the stream from the last
//! message of each subject on and applies what it reads to its table, its
//! own changes included: the stream's order is the one truth, and every
//! node ends on it. A change is published after it is made locally (the
//! node that took it answers at once), by one task that reads the table's
//! state when it publishes, with many acknowledgements outstanding.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use ipnet::IpNet;
use tokio::sync::mpsc;

use super::Bindings;
use crate::config::ClusterConfig;
use crate::store::cluster::ClusterError;

/// Publishes awaited together.
const IN_FLIGHT: usize = 256;

/// How long a removal's empty message stays (it replaces the binding at
/// once; then it too leaves).
const REMOVAL_TTL: Duration = Duration::from_secs(60);

/// The sending end: networks whose state is to be published.
#[derive(Debug, Clone)]
pub struct Publisher(mpsc::UnboundedSender<IpNet>);

impl Publisher {
    pub fn changed(&self, network: IpNet) {
        let _ = self.0.send(network);
    }

    /// A publisher whose networks a test reads.
    #[cfg(test)]
    pub fn for_test(sender: mpsc::UnboundedSender<IpNet>) -> Self {
        Self(sender)
    }
}

fn stream_name(config: &ClusterConfig) -> String {
    format!("{}_SESSIONS", config.stream)
}

/// A network as a subject token: the hex of its kept key.
fn subject(name: &str, network: IpNet) -> String {
    let key = super::kept::network_key(network);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}.{hex}")
}

fn network_of(name: &str, subject: &str) -> Option<IpNet> {
    let hex = subject.strip_prefix(name)?.strip_prefix('.')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    super::kept::network_of_key(&key)
}

/// Joins: the stream made if missing, the live bindings read into
/// `bindings` (before this returns: a node is ready with them), then
/// followed, and a publisher started for this node's own changes.
pub async fn join(config: &ClusterConfig, bindings: Arc<Bindings>) -> Result<(), ClusterError> {
    let client = crate::store::cluster::connect(config).await?;
    let js = jetstream::new(client);
    let name = stream_name(config);
    let stream = loop {
        match js.get_or_create_stream(stream_config(config, &name)).await {
            Ok(stream) => break stream,
            Err(e) => {
                tracing::warn!(error = %e, stream = %name, "bindings stream not ready, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    bindings.share(Publisher(tx));
    let (caught_up_tx, caught_up) = tokio::sync::oneshot::channel();
    // Both hold the bindings weakly: they end when the server drops them
    // (the table, its RocksDB, the NATS connection are then let go).
    tokio::spawn(follow(
        stream,
        name.clone(),
        Arc::downgrade(&bindings),
        caught_up_tx,
    ));
    tokio::spawn(publish(js, name, Arc::downgrade(&bindings), rx));
    let _ = caught_up.await;
    Ok(())
}

fn stream_config(config: &ClusterConfig, name: &str) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        num_replicas: config.replicas,
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        allow_message_ttl: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Reads the stream from each subject's last message on, as long as the
/// bindings live (starting again after an error); `caught_up` once what
/// was there when it began is applied.
async fn follow(
    stream: stream::Stream,
    name: String,
    bindings: Weak<Bindings>,
    caught_up: tokio::sync::oneshot::Sender<()>,
) {
    let mut caught_up = Some(caught_up);
    while bindings.strong_count() > 0 {
        if let Err(e) = follow_once(&stream, &name, &bindings, &mut caught_up).await {
            tracing::warn!(error = %e, "bindings stream consumer failed; starting again");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn follow_once(
    stream: &stream::Stream,
    name: &str,
    bindings: &Weak<Bindings>,
    caught_up: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: format!("{name}.>"),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
        let message = match next {
            Ok(Some(message)) => message.map_err(|e| e.to_string())?,
            Ok(None) => return Ok(()),
            // Idle (an empty stream, or read to its end).
            Err(_) if bindings.strong_count() > 0 => {
                signal(caught_up);
                continue;
            }
            Err(_) => return Ok(()),
        };
        let Some(bindings) = bindings.upgrade() else {
            return Ok(());
        };
        if let Some(network) = network_of(name, &message.subject) {
            bindings.apply_shared(network, &message.payload);
        }
        // Nothing more pending for this consumer: what was there is read.
        if message.info().is_ok_and(|info| info.pending == 0) {
            signal(caught_up);
        }
    }
}

/// Tells `join` the live bindings are read (once).
fn signal(caught_up: &mut Option<tokio::sync::oneshot::Sender<()>>) {
    if let Some(done) = caught_up.take() {
        let _ = done.send(());
    }
}

/// Publishes the table's state of each network this node changed: the
/// binding until it expires, or an empty message once it is removed.
async fn publish(
    js: jetstream::Context,
    name: String,
    bindings: Weak<Bindings>,
    mut changed: mpsc::UnboundedReceiver<IpNet>,
) {
    let mut batch = Vec::with_capacity(IN_FLIGHT);
    while changed.recv_many(&mut batch, IN_FLIGHT).await > 0 {
        // The states to send, read while the bindings are held (not
        // across the awaits below).
        let Some(messages) = bindings.upgrade().map(|b| states(&b, &name, &mut batch)) else {
            return;
        };
        let mut acks = Vec::with_capacity(messages.len());
        for (subject, message) in messages {
            match js.send_publish(subject, message).await {
                Ok(ack) => acks.push(ack),
                Err(e) => tracing::warn!(error = %e, "session binding not shared"),
            }
        }
        for ack in acks {
            if let Err(e) = ack.await {
                tracing::warn!(error = %e, "session binding not acknowledged by JetStream");
            }
        }
    }
}

/// Each of `batch`'s networks (drained) as the message that says its state
/// now: the binding with a TTL until it expires, or an empty message.
fn states(
    bindings: &Bindings,
    name: &str,
    batch: &mut Vec<IpNet>,
) -> Vec<(String, jetstream::message::PublishMessage)> {
    let now_ms = crate::clock::now_ms();
    batch
        .drain(..)
        .map(|network| {
            let (payload, ttl) = match bindings.table().get(network) {
                Some(bound) if bound.expires_ms > now_ms => {
                    let left = Duration::from_millis(bound.expires_ms - now_ms);
                    // Whole seconds, rounded up: never gone before it expires.
                    let ttl = Duration::from_secs(left.as_secs() + 1);
                    (super::kept::encode(&bound), ttl)
                }
                _ => (Vec::new(), REMOVAL_TTL),
            };
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .ttl(ttl);
            (subject(name, network), message)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_a_subject_token_and_back() {
        for text in ["127.1.0.5/32", "10.0.0.0/8", "2001:db8:1:2::/64", "::/0"] {
            let network: IpNet = text.parse().unwrap();
            let subject = subject("S_SESSIONS", network);
            assert!(!subject["S_SESSIONS.".len()..].contains(['.', '*', '>', ' ']));
            assert_eq!(network_of("S_SESSIONS", &subject), Some(network));
        }
        assert_eq!(network_of("S_SESSIONS", "S_SESSIONS.zz"), None);
        assert_eq!(network_of("S_SESSIONS", "OTHER.0420"), None);
    }
}
