//! Moving a cluster's stream made by an older homecmp to today's layout,
//! under the same name, with every message at the same sequence: `homecmp
//! cluster migrate`. Two things an older stream may lack: messages that can
//! be deleted (one made before erasure in cluster mode was created with
//! `deny_delete`, which JetStream never lets go), and the clientid buckets
//! (one made before them has a subject per clientid, [`Layout`]: each
//! clientid's messages move to its bucket's subject, `.c.<h>` to
//! `.b.<h[..4]>`).
//!
//! The nodes keep running: they serve resolves from their own indexes
//! throughout, and a change asked of them meanwhile is refused (503 with
//! `Retry-After`) since no stream takes its subject. Every step leaves a
//! state the next run recognises, so a run that stops anywhere is finished
//! by running it again, and no message exists nowhere at any moment:
//!
//! 1. the old stream is sealed: its subjects become `<stream>_SEALED.>`,
//!    which nobody publishes to, so what it holds is final (a publish
//!    acknowledged before is in it);
//! 2. it is copied, message by message, into a parked stream
//!    `<stream>_MIGRATING` (subjects `<stream>_MIGRATING.>`), each publish
//!    expecting the parked stream's last sequence to be the one before, so
//!    sequence `n` of the copy is message `n` of the original (a gap a
//!    history rewrite left is copied as a gap);
//! 3. once the copy holds every message, the old stream is deleted;
//! 4. the stream is created again with today's configuration, but loading:
//!    it takes only `<stream>_LOADING.>`, renamed to `<stream>.>` as it
//!    stores them, so a node cannot write into it yet; the parked copy is
//!    copied into it the same way;
//! 5. it is opened (today's subjects, [`super::open_subjects`]) and the
//!    parked copy deleted.
//!
//! The nodes' local logs are untouched: they are, record for record, the
//! stream they find again. Each node's follower finds the new stream,
//! reads its layout from it, and goes on from its last record; a node that
//! starts meanwhile waits for the end before it joins. A node that still
//! names a clientid's subject the old way cannot write into the new stream
//! (today's subjects do not take it).

use async_nats::jetstream::{self, consumer, context, stream};
use futures_util::StreamExt;

use super::{ClusterError, Layout, Seq, connect, stream_config, unavailable};
use crate::config::ClusterConfig;

/// Publishes in flight while copying.
const IN_FLIGHT: usize = 256;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// The stream already has today's layout (erasable, with clientid
    /// buckets): nothing to do.
    AlreadyCurrent { messages: Seq },
    /// The stream was moved; it holds `messages`, at the same sequences.
    Moved { messages: Seq },
}

/// The parked copy of stream `name` while it migrates.
pub(crate) fn parked_name(name: &str) -> String {
    format!("{name}_MIGRATING")
}

/// Whether a stream is the new one still loading (step 4).
pub(crate) fn loading(info: &stream::Info) -> bool {
    info.config.subject_transform.is_some()
}

/// Moves `config.stream` to today's layout (see the module docs), saying
/// each step to `say`.
pub async fn migrate(
    config: &ClusterConfig,
    mut say: impl FnMut(&str),
) -> Result<Migrated, ClusterError> {
    let js = jetstream::new(connect(config).await?);
    let name = &config.stream;
    let parked_name = parked_name(name);
    let sealed = format!("{name}_SEALED.>");
    let loading_prefix = format!("{name}_LOADING");
    loop {
        let source = existing(&js, name).await?;
        let parked = existing(&js, &parked_name).await?;
        match (source, parked) {
            (None, None) => {
                return Err(ClusterError::Mismatch(format!(
                    "no stream named {name} on these servers"
                )));
            }
            (Some(source), None) if current(&source) && !loading(source.cached_info()) => {
                let messages = source.cached_info().state.last_sequence;
                return Ok(Migrated::AlreadyCurrent { messages });
            }
            (Some(source), None) if current(&source) => {
                open(&js, config).await?;
                say(&format!("opened {name}"));
            }
            (Some(source), None) => {
                seal(&js, &source, &sealed).await?;
                say(&format!(
                    "sealed {name}: changes are refused until it is moved"
                ));
                let mut parked = stream_config(config);
                parked.name = parked_name.clone();
                parked.subjects = vec![format!("{parked_name}.>")];
                js.create_stream(parked)
                    .await
                    .map_err(|e| unavailable("create the parked stream", &e))?;
                say(&format!("created {parked_name}"));
            }
            (Some(source), Some(parked)) if !current(&source) => {
                // Sealed just now (a run of an older homecmp parked it
                // unsealed): what it holds is read again, final.
                if seal(&js, &source, &sealed).await? {
                    continue;
                }
                let copied = copy(&js, &source, &parked, &parked_name).await?;
                say(&format!("copied {copied} messages into {parked_name}"));
                js.delete_stream(name)
                    .await
                    .map_err(|e| unavailable("delete the old stream", &e))?;
                say(&format!("deleted the old {name}"));
            }
            (None, Some(_)) => {
                create_loading(&js, config, &loading_prefix).await?;
                say(&format!("created {name} with today's layout, loading"));
            }
            (Some(stream), Some(parked)) => {
                let messages = match loading(stream.cached_info()) {
                    true => copy(&js, &parked, &stream, &loading_prefix).await?,
                    false => stream.cached_info().state.last_sequence,
                };
                say(&format!("copied {messages} messages back into {name}"));
                open(&js, config).await?;
                say(&format!("opened {name}: changes are taken again"));
                js.delete_stream(&parked_name)
                    .await
                    .map_err(|e| unavailable("delete the parked stream", &e))?;
                say(&format!("deleted {parked_name}"));
                return Ok(Migrated::Moved { messages });
            }
        }
    }
}

/// Step 4: the stream made again with today's configuration, but taking
/// only `<loading_prefix>.>`, stored as `<stream>.>`.
async fn create_loading(
    js: &jetstream::Context,
    config: &ClusterConfig,
    loading_prefix: &str,
) -> Result<(), ClusterError> {
    let mut loading = stream_config(config);
    loading.subjects = vec![format!("{loading_prefix}.>")];
    loading.subject_transform = Some(stream::SubjectTransform {
        source: format!("{loading_prefix}.>"),
        destination: format!("{}.>", config.stream),
    });
    js.create_stream(loading)
        .await
        .map_err(|e| unavailable("create the stream", &e))?;
    Ok(())
}

/// Step 1: the old stream takes only `sealed`, which nobody publishes to.
/// Whether it was not sealed before.
async fn seal(
    js: &jetstream::Context,
    source: &stream::Stream,
    sealed: &str,
) -> Result<bool, ClusterError> {
    let mut config = source.cached_info().config.clone();
    if config.subjects == [sealed] {
        return Ok(false);
    }
    config.subjects = vec![sealed.to_owned()];
    js.update_stream(config)
        .await
        .map_err(|e| unavailable("seal the old stream", &e))?;
    Ok(true)
}

/// Step 5: the stream takes today's subjects, as they are.
async fn open(js: &jetstream::Context, config: &ClusterConfig) -> Result<(), ClusterError> {
    js.update_stream(stream_config(config))
        .await
        .map_err(|e| unavailable("open the stream", &e))?;
    Ok(())
}

/// Whether `stream` has today's layout: its messages can be deleted, and
/// its clientids' subjects are buckets.
fn current(stream: &stream::Stream) -> bool {
    let config = &stream.cached_info().config;
    !config.deny_delete && Layout::of(config) == Layout::Buckets
}

/// The subject a message of subject `suffix` (after the stream's name)
/// has in a stream of `layout`: a clientid's subject of its own moves to
/// its bucket's; every other stays.
fn moved_subject(suffix: &str, layout: Layout) -> std::borrow::Cow<'_, str> {
    match (layout, suffix.strip_prefix(".c.")) {
        (Layout::Buckets, Some(hash)) if hash.len() == 24 => format!(".b.{}", &hash[..4]).into(),
        _ => suffix.into(),
    }
}

/// The stream `name` with its info, or `None` if there is none.
async fn existing(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, ClusterError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(e.kind(), context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(unavailable("stream", &e)),
    }
}

/// Copies the messages of `from` that `to` does not hold yet into `to`
/// (published on `prefix`, the subjects `to` takes), each to the same
/// sequence (its subject's first token renamed, and
/// moved to its bucket if `to` has buckets: [`moved_subject`]), and
/// returns how many `to` holds. `to` must be a prefix of `from`.
async fn copy(
    js: &jetstream::Context,
    from: &stream::Stream,
    to: &stream::Stream,
    prefix: &str,
) -> Result<Seq, ClusterError> {
    let (from_name, to_name) = (
        &from.cached_info().config.name,
        &to.cached_info().config.name,
    );
    let last = from.cached_info().state.last_sequence;
    let held = to.cached_info().state.last_sequence;
    let layout = Layout::of(&to.cached_info().config);
    if held > last {
        return Err(ClusterError::Mismatch(format!(
            "{to_name} holds {held} messages, more than {from_name} ({last}): not a copy of it"
        )));
    }
    if held == last {
        return Ok(last);
    }
    let present = resume(from, to, held, last).await?;
    let mut messages = messages_from(from, held + 1).await?;
    let mut acks = futures_util::stream::FuturesOrdered::new();
    let mut next = held + 1;
    while next <= present {
        let message = messages
            .next()
            .await
            .ok_or_else(|| ClusterError::Unavailable(format!("{from_name} ended at {next}")))?
            .map_err(|e| unavailable("message", &e))?;
        let seq = message
            .info()
            .map_err(|e| unavailable("message info", &e))?
            .stream_sequence;
        if seq < next {
            return Err(ClusterError::Mismatch(format!(
                "{from_name} delivered message {seq} again (expected {next})"
            )));
        }
        if seq > next {
            while let Some(ack) = acks.next().await {
                settle(Some(ack), to_name)?;
            }
            copy_gap(js, to, prefix, next, seq).await?;
            next = seq;
        }
        let suffix = message
            .subject
            .strip_prefix(from_name.as_str())
            .unwrap_or(&message.subject);
        let suffix = moved_subject(suffix, layout);
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .expected_last_sequence(seq - 1);
        let ack = js
            .send_publish(format!("{prefix}{suffix}"), publish)
            .await
            .map_err(|e| unavailable("publish", &e))?;
        acks.push_back(ack.into_future());
        if acks.len() >= IN_FLIGHT {
            settle(acks.next().await, to_name)?;
        }
        next += 1;
    }
    while let Some(ack) = acks.next().await {
        settle(Some(ack), to_name)?;
    }
    copy_gap(js, to, prefix, next, last + 1).await?;
    Ok(last)
}

/// `stream`'s messages from sequence `start` on, in order.
async fn messages_from(
    stream: &stream::Stream,
    start: Seq,
) -> Result<consumer::pull::Ordered, ClusterError> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("consumer", &e))?;
    consumer
        .messages()
        .await
        .map_err(|e| unavailable("messages", &e))
}

/// Gets a copy from `from` into `to` (which holds `held` of its `last`
/// messages) ready to go on: a run stopped between a gap's placeholder and
/// its delete left the placeholder, which goes. Returns the last message
/// `from` still has (a history rewrite deleted those after it: they are
/// never delivered).
async fn resume(
    from: &stream::Stream,
    to: &stream::Stream,
    held: Seq,
    last: Seq,
) -> Result<Seq, ClusterError> {
    let to_name = &to.cached_info().config.name;
    if held > 0
        && let Ok(message) = to.get_raw_message(held).await
        && message.subject.as_str() == format!("{to_name}.gap")
    {
        to.delete_message(held)
            .await
            .map_err(|e| unavailable(&format!("delete placeholder {held}"), &e))?;
    }
    let mut present = last;
    while present > held && deleted(from, present).await? {
        present -= 1;
    }
    Ok(present)
}

/// Whether `stream`'s message `seq` was deleted.
async fn deleted(stream: &stream::Stream, seq: Seq) -> Result<bool, ClusterError> {
    match stream.get_raw_message(seq).await {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(true),
        Err(e) => Err(unavailable(&format!("message {seq}"), &e)),
    }
}

/// Makes `to`'s sequences `from..until` deleted messages, as they are in
/// the stream copied: a placeholder published at each (expecting the
/// sequence before), then deleted. A node that reads them finds the gap
/// a history rewrite made and fills it as it would have in the original.
async fn copy_gap(
    js: &jetstream::Context,
    to: &stream::Stream,
    prefix: &str,
    from: Seq,
    until: Seq,
) -> Result<(), ClusterError> {
    let to_name = &to.cached_info().config.name;
    for seq in from..until {
        let publish = jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::new())
            .expected_last_sequence(seq - 1);
        let ack = js
            .send_publish(format!("{prefix}.gap"), publish)
            .await
            .map_err(|e| unavailable("publish", &e))?;
        settle(Some(ack.await), to_name)?;
        to.delete_message(seq)
            .await
            .map_err(|e| unavailable(&format!("delete placeholder {seq}"), &e))?;
    }
    Ok(())
}

/// The answer to one copied publish: refused means someone else wrote the
/// stream meanwhile.
fn settle(
    ack: Option<Result<jetstream::publish::PublishAck, context::PublishError>>,
    to_name: &str,
) -> Result<(), ClusterError> {
    match ack {
        Some(Ok(_)) | None => Ok(()),
        Some(Err(e))
            if e.kind() == context::PublishErrorKind::WrongLastSequence
                || e.to_string().contains("wrong last sequence") =>
        {
            Err(ClusterError::Mismatch(format!(
                "{to_name} was written by someone else during the copy: stop every node, \
                 then run the migration again"
            )))
        }
        Some(Err(e)) => Err(unavailable("publish", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clientid_subject_moves_to_its_bucket_and_nothing_else_moves() {
        let own = Layout::PerClientid.clientid_subject("S", "3f2b6c9e-1d4a-4c8b-9e2f-7a6b5c4d3e2f");
        let bucket = Layout::Buckets.clientid_subject("S", "3f2b6c9e-1d4a-4c8b-9e2f-7a6b5c4d3e2f");
        assert_eq!(moved_subject(&own[1..], Layout::Buckets), bucket[1..]);
        assert_eq!(moved_subject(&own[1..], Layout::PerClientid), own[1..]);
        for other in [".k.0123456789abcdef01234567", ".h", ".b.abcd", ".c.short"] {
            assert_eq!(moved_subject(other, Layout::Buckets), other);
        }
    }
}
