//! The live event stream (`GET /admin/v1/events`): the log's records as
//! server-sent events, as they become durable.
//!
//! The log is the source: the stream reads what was appended since its last
//! record every [`POLL`], at most [`BATCH`] records a read (a read off the
//! runtime, like every log read the admin API does), so a client watching
//! costs one sequence check a poll when nothing happens, and a stream never
//! sees a record that is not on disk. Each record is one SSE event: `id`
//! its sequence (what `from` resumes at), `event` its kind, `data` the
//! record as `homecmp log export` writes it. A record that does not read
//! ends the stream with an `error` event naming it. A comment line every
//! [`KEEP_ALIVE`] keeps proxies from closing a quiet stream.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::store::{EventLog, Seq};

/// How often the stream looks for new records.
pub const POLL: Duration = Duration::from_millis(200);

/// The most records one read takes (a stream from far back catches up in
/// steps, each a blocking-pool task of bounded length).
pub const BATCH: usize = 1000;

/// A comment line after this long without an event.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a stream is: the next sequence to send, and whether it ended.
struct Position {
    log: EventLog,
    next: Seq,
    quiet: Duration,
    ended: bool,
}

/// The records from `from` on (the next one appended, if `from` is past the
/// end), as SSE text, until the client goes away or a record does not read.
pub fn stream(log: EventLog, from: Seq) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let start = Position {
        log,
        next: from.max(1),
        quiet: Duration::ZERO,
        ended: false,
    };
    futures_util::stream::unfold(start, |mut at| async move {
        if at.ended {
            return None;
        }
        loop {
            if at.log.last_seq() >= at.next {
                let chunk = read_batch(&mut at).await;
                at.quiet = Duration::ZERO;
                return Some((Ok(chunk), at));
            }
            tokio::time::sleep(POLL).await;
            at.quiet += POLL;
            if at.quiet >= KEEP_ALIVE {
                at.quiet = Duration::ZERO;
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), at));
            }
        }
    })
}

/// Up to [`BATCH`] records from `at.next`, as SSE events; on a record that
/// does not read, the events before it and an `error` event, and the
/// stream ends.
async fn read_batch(at: &mut Position) -> Bytes {
    let (log, from) = (at.log.clone(), at.next);
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let mut next = from;
        let last = from.saturating_add(BATCH as Seq - 1);
        for item in log.read_range(from, last) {
            match item {
                Ok((seq, record)) => {
                    event_text(&mut text, seq, &record);
                    next = seq + 1;
                }
                Err(e) => return (text, next, Some(e.to_string())),
            }
        }
        (text, next, None)
    })
    .await;
    let (mut text, next, failed) = match read {
        Ok(read) => read,
        Err(e) => (String::new(), from, Some(e.to_string())),
    };
    at.next = next;
    if let Some(error) = failed {
        let data = serde_json::json!({ "error": error, "seq": next });
        text.push_str(&format!("event: error\ndata: {data}\n\n"));
        at.ended = true;
    }
    Bytes::from(text)
}

/// One record as an SSE event. The JSON is one line (serde_json escapes
/// newlines inside strings), so it is one `data:` line.
fn event_text(out: &mut String, seq: Seq, record: &crate::store::Record) {
    let line = crate::sre::ExportLine::new(seq, record);
    let data = serde_json::to_string(&line).expect("a record serializes");
    let kind = record.event.kind();
    out.push_str(&format!("id: {seq}\nevent: {kind}\ndata: {data}\n\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, Record};

    #[test]
    fn a_record_is_one_event_with_its_sequence_kind_and_json() {
        let record = Record {
            at_ms: 1_700_000_000_000,
            actor: Some("alice".into()),
            event: Event::CodeRemoved {
                code: "2001000001promo".into(),
            },
        };
        let mut text = String::new();
        event_text(&mut text, 42, &record);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id: 42");
        assert_eq!(lines[1], "event: code_removed");
        let data: serde_json::Value =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["seq"], 42);
        assert_eq!(data["code"], "2001000001promo");
        assert_eq!((lines[3], lines.len()), ("", 4));
        assert!(text.ends_with("\n\n"));
    }
}
