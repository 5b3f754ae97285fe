//! The events of the log and their byte layout.
//!
//! # Layout (format version 2)
//!
//! One RocksDB record per event, in the default column family:
//!
//! ```text
//! key   = sequence number, u64 big-endian (8 bytes): byte order = log order
//! value = [FORMAT_VERSION: u8] ++ bincode::encode(Record, config::standard())
//! ```
//!
//! Version 2 added the record's `actor` (an `Option<String>` after the
//! event: one byte 0 when there is none). Version 1 values (`at_ms`, the
//! event, nothing after) are still read, as records without an actor; only
//! version 2 is written.
//!
//! # One size limit
//!
//! No value is longer than [`MAX_VALUE_BYTES`] (1 MiB), version byte
//! included. [`encode_value`] is the only way a value is made (the log's
//! appends, the cluster's publishes, history rewrites, imports): it refuses
//! a longer one, and it decodes what it encoded before handing it out, so
//! every value the log accepts is one the log can replay. [`decode_value`]
//! refuses a longer one before reading it. Events are small (the largest,
//! a code with a 2 KiB target, is about 2.2 KiB); the one that grows with
//! use, `scans_counted`, is written in chunks of
//! [`crate::core::model::SCANS_PER_EVENT`] codes (under 45 KiB each).
//!
//! `config::standard()` is little-endian with variable-length integers. A
//! `Record` is `at_ms` (u64, Unix milliseconds) then the `Event`: a varint
//! variant index (declaration order below, never reordered: new variants go
//! at the end) and its fields in declaration order. Strings are a varint
//! length then UTF-8; `SubscriberRef` is 32 raw bytes; `IpAddr` is a variant
//! index (0 = v4, 1 = v6) then 4 or 16 bytes.
//!
//! A reader refuses a value whose version byte it does not know, that does
//! not decode, or that has bytes left over: such a record is corrupt. A new
//! encoding (another codec, new fields) gets a new version byte and a decoder
//! of its own beside this one, so old logs stay readable.

pub use crate::core::model::{
    Event, IdentitySource, MAX_ACTOR_LEN, Record, Replacement, RevokeReason, Seq,
};

pub const FORMAT_VERSION: u8 = 2;

/// A record as format version 1 wrote it: no actor.
#[derive(bincode::Decode)]
struct RecordV1 {
    at_ms: u64,
    event: Event,
}

/// The log's one size limit: the most bytes a value may have, version byte
/// included. Checked by [`encode_value`] and [`decode_value`] alike.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// What bincode may allocate while decoding one value: its guard against a
/// corrupt length prefix claiming gigabytes. bincode counts a collection's
/// in-memory size, not its encoded one; the largest ratio of the two in
/// any event is a `scans_counted` entry (72 bytes in memory for at least 7
/// encoded), so a value within [`MAX_VALUE_BYTES`] never claims more than
/// 11 MiB. [`encode_value`]'s read-back proves it for every value written.
const DECODE_CLAIM_LIMIT: usize = 16 * MAX_VALUE_BYTES;

/// bincode's standard config with the allocation guard above.
const CODEC: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_CLAIM_LIMIT>,
> = bincode::config::standard().with_limit::<DECODE_CLAIM_LIMIT>();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("does not decode: {0}")]
    Decode(String),
    #[error("{0} bytes left over after the event")]
    TrailingBytes(usize),
    #[error("key is {0} bytes, expected 8")]
    BadKey(usize),
    #[error("value is {0} bytes, more than the log's limit of {MAX_VALUE_BYTES}")]
    TooLarge(usize),
    #[error("actor of {0} bytes, more than {MAX_ACTOR_LEN}")]
    ActorTooLong(usize),
    /// The encoder and the decoder disagree (a bug, caught before writing).
    #[error("the event does not read back as written")]
    NotRoundTrip,
}

pub fn encode_key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_key(key: &[u8]) -> Result<Seq, CodecError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| CodecError::BadKey(key.len()))?;
    Ok(Seq::from_be_bytes(bytes))
}

/// Most records one `history_rewritten` event holds: its size in memory
/// stays far under [`DECODE_CLAIM_LIMIT`] whatever the records.
pub const REPLACEMENTS_PER_EVENT: usize = 8192;

/// `records` as `history_rewritten` events, in order: at most
/// [`REPLACEMENTS_PER_EVENT`] each, and at most half of
/// [`MAX_VALUE_BYTES`] encoded, so that every one is a value the log takes.
pub fn history_rewritten(records: Vec<Replacement>) -> Vec<Event> {
    let budget = MAX_VALUE_BYTES / 2;
    let mut events = Vec::new();
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    for replacement in records {
        let size = bincode::encode_to_vec(&replacement, CODEC).map_or(budget, |v| v.len());
        let full = chunk.len() == REPLACEMENTS_PER_EVENT || bytes + size > budget;
        if full && !chunk.is_empty() {
            let records = std::mem::take(&mut chunk);
            events.push(Event::HistoryRewritten { records });
            bytes = 0;
        }
        bytes += size;
        chunk.push(replacement);
    }
    if !chunk.is_empty() {
        events.push(Event::HistoryRewritten { records: chunk });
    }
    events
}

/// The value of `record`, or why the log must not take it: larger than
/// [`MAX_VALUE_BYTES`], or (a bug) not read back as written. Every path
/// that writes a value goes through here (see the module docs).
pub fn encode_value(record: &Record) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(96);
    out.push(FORMAT_VERSION);
    bincode::encode_into_std_write(record, &mut out, CODEC)
        .expect("writing into a Vec cannot fail");
    match decode_value(&out) {
        Ok(back) if back == *record => Ok(out),
        Ok(_) => Err(CodecError::NotRoundTrip),
        Err(e) => Err(e),
    }
}

pub fn decode_value(value: &[u8]) -> Result<Record, CodecError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(CodecError::TooLarge(value.len()));
    }
    let (&version, body) = value.split_first().ok_or(CodecError::Empty)?;
    let record = match version {
        FORMAT_VERSION => whole(body)?,
        1 => whole(body).map(|RecordV1 { at_ms, event }| Record {
            at_ms,
            event,
            actor: None,
        })?,
        _ => return Err(CodecError::UnknownVersion(version)),
    };
    match record.actor.as_ref().map(String::len) {
        Some(len) if len > MAX_ACTOR_LEN => Err(CodecError::ActorTooLong(len)),
        _ => Ok(record),
    }
}

/// `body` decoded as one `T`, with no byte left over.
fn whole<T: bincode::Decode<()>>(body: &[u8]) -> Result<T, CodecError> {
    let (decoded, used) =
        bincode::decode_from_slice(body, CODEC).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written before actors (format version 1) reads as records
    /// without one; a record with an actor over the limit is refused both
    /// ways.
    #[test]
    fn version_1_values_read_and_actors_are_bounded() {
        for record in sample() {
            let mut v1 = vec![1u8];
            bincode::encode_into_std_write(record.at_ms, &mut v1, CODEC).unwrap();
            bincode::encode_into_std_write(&record.event, &mut v1, CODEC).unwrap();
            assert_eq!(decode_value(&v1), Ok(record.clone()));
            let v2 = encode_value(&record).unwrap();
            assert_eq!(
                (v2[0], v2.last()),
                (FORMAT_VERSION, Some(&0)),
                "no actor: one 0 byte"
            );
        }
        let mut record = sample().remove(0);
        record.actor = Some("a".repeat(MAX_ACTOR_LEN));
        assert_eq!(
            decode_value(&encode_value(&record).unwrap()),
            Ok(record.clone())
        );
        record.actor = Some("a".repeat(MAX_ACTOR_LEN + 1));
        assert_eq!(
            encode_value(&record),
            Err(CodecError::ActorTooLong(MAX_ACTOR_LEN + 1))
        );
    }
    use crate::core::model::{RedactReason, RuleScanCount, SCANS_PER_EVENT, ScanCount, ScanPair};
    use crate::core::targeting::{MAX_LANGUAGES, MAX_RULES, Network, Platform, TargetRule};
    use crate::wire::{MAX_CODE_LEN, MAX_TARGET_LEN, SubscriberRef, clientid};
    use proptest::prelude::*;

    fn sample() -> Vec<Record> {
        let sub = SubscriberRef([7; 32]);
        let events = vec![
            Event::AssociationCreated {
                clientid: "c-1".into(),
                subscriber: sub,
                source: IdentitySource::SessionBinding,
                client_addr: "127.1.0.9".parse().unwrap(),
            },
            Event::AssociationRevoked {
                clientid: "c-1".into(),
                subscriber: sub,
                reason: RevokeReason::Superseded,
            },
            Event::AssociationRebound {
                clientid: "c-1".into(),
                from: sub,
                to: SubscriberRef([8; 32]),
                source: IdentitySource::GatewayHeader,
                client_addr: "::1".parse().unwrap(),
            },
            Event::CodeRegistered {
                code: "2001000001abc".into(),
                target: "https://example.org/".into(),
            },
            Event::CodeRemoved {
                code: "2001000001abc".into(),
            },
            Event::Redacted {
                reason: RedactReason::Erased,
            },
            Event::ScansCounted {
                codes: vec![ScanCount {
                    code: "2001000001abc".into(),
                    http2: ScanPair {
                        associated: 3,
                        first_scan: 1,
                    },
                    ..Default::default()
                }],
            },
            Event::CodeRegisteredWithRules {
                code: "2001000001abc".into(),
                target: "https://example.org/".into(),
                rules: vec![TargetRule {
                    languages: vec!["fr".into()],
                    platforms: vec![Platform::Ios],
                    network: Some(Network::OffNet),
                    from_ms: Some(1),
                    until_ms: None,
                    target: "https://example.org/fr".into(),
                }],
            },
            Event::RuleScansCounted {
                codes: vec![RuleScanCount {
                    code: "2001000001abc".into(),
                    since: 8,
                    counts: vec![3, 0],
                }],
            },
            sample_rewrite(),
        ];
        events
            .into_iter()
            .map(|event| Record {
                at_ms: 1_700_000_000_000,
                actor: None,
                event,
            })
            .collect()
    }

    /// A cluster's history rewrite: a blanked record and a rebind's
    /// survivor.
    fn sample_rewrite() -> Event {
        Event::HistoryRewritten {
            records: vec![
                Replacement {
                    seq: 3,
                    record: Record {
                        at_ms: 1_700_000_000_000,
                        actor: None,
                        event: Event::Redacted {
                            reason: RedactReason::Erased,
                        },
                    },
                },
                Replacement {
                    seq: 4,
                    record: Record {
                        at_ms: 1_700_000_000_001,
                        actor: Some("alice".into()),
                        event: Event::AssociationCreated {
                            clientid: "c-2".into(),
                            subscriber: SubscriberRef([8; 32]),
                            source: IdentitySource::SessionBinding,
                            client_addr: "127.1.0.1".parse().unwrap(),
                        },
                    },
                },
            ],
        }
    }

    /// Every kind of event, each of its variable parts as large as the
    /// server lets it be (`scans_counted`: as many codes as one event
    /// takes), every counter at its largest.
    fn largest() -> Vec<Record> {
        let clientid = "c".repeat(clientid::MAX_LEN);
        let code = "C".repeat(MAX_CODE_LEN);
        let target = format!("https://{}", "t".repeat(MAX_TARGET_LEN - 8));
        let pair = ScanPair {
            associated: u64::MAX,
            first_scan: u64::MAX,
        };
        let scans = ScanCount {
            code: code.clone(),
            http1: pair,
            http2: pair,
            http3: pair,
        };
        let addr: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let sub = SubscriberRef([0xff; 32]);
        let largest_rule = TargetRule {
            languages: vec![format!("{}-{}", "a".repeat(8), "b".repeat(26)); MAX_LANGUAGES],
            platforms: vec![Platform::Ios, Platform::Android, Platform::Other],
            network: Some(Network::OnNet),
            from_ms: Some(u64::MAX - 1),
            until_ms: Some(u64::MAX),
            target: target.clone(),
        };
        let rule_counts = RuleScanCount {
            code: code.clone(),
            since: u64::MAX,
            counts: vec![u64::MAX; MAX_RULES],
        };
        [
            Event::AssociationCreated {
                clientid: clientid.clone(),
                subscriber: sub,
                source: IdentitySource::GatewayHeader,
                client_addr: addr,
            },
            Event::AssociationRevoked {
                clientid: clientid.clone(),
                subscriber: sub,
                reason: RevokeReason::Moved,
            },
            Event::AssociationRebound {
                clientid,
                from: sub,
                to: sub,
                source: IdentitySource::GatewayHeader,
                client_addr: addr,
            },
            Event::CodeRegistered {
                code: code.clone(),
                target: target.clone(),
            },
            Event::CodeRegisteredWithRules {
                code: code.clone(),
                target: target.clone(),
                rules: vec![largest_rule; MAX_RULES],
            },
            Event::RuleScansCounted {
                codes: vec![rule_counts; SCANS_PER_EVENT],
            },
            Event::CodeRemoved { code },
            Event::Redacted {
                reason: RedactReason::Retention,
            },
            Event::ScansCounted {
                codes: vec![scans; SCANS_PER_EVENT],
            },
            largest_rewrite(),
        ]
        .into_iter()
        .map(|event| Record {
            at_ms: u64::MAX,
            actor: None,
            event,
        })
        .collect()
    }

    /// The first `history_rewritten` event of a rewrite of more records
    /// than one event holds, each as large as a rewrite makes them (an
    /// association created, the largest clientid, the longest actor).
    fn largest_rewrite() -> Event {
        let record = Record {
            at_ms: u64::MAX,
            actor: Some("a".repeat(MAX_ACTOR_LEN)),
            event: Event::AssociationCreated {
                clientid: "c".repeat(clientid::MAX_LEN),
                subscriber: SubscriberRef([0xff; 32]),
                source: IdentitySource::GatewayHeader,
                client_addr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            },
        };
        let many = (0..3 * REPLACEMENTS_PER_EVENT as Seq)
            .map(|seq| Replacement {
                seq: u64::MAX - seq,
                record: record.clone(),
            })
            .collect();
        let events = history_rewritten(many);
        assert!(events.len() >= 3, "chunked: {}", events.len());
        events.into_iter().next().unwrap()
    }

    /// A `history_rewritten` event with as many records as one holds (each
    /// small: what the decoder's claim limit counts is the records' number).
    fn longest_rewrite() -> Event {
        let blank = Record {
            at_ms: u64::MAX,
            actor: None,
            event: Event::Redacted {
                reason: RedactReason::Erased,
            },
        };
        let many = (0..REPLACEMENTS_PER_EVENT as Seq + 1)
            .map(|seq| Replacement {
                seq: u64::MAX - seq,
                record: blank.clone(),
            })
            .collect();
        let mut events = history_rewritten(many);
        assert_eq!(events.len(), 2, "chunked by count");
        events.swap_remove(0)
    }

    /// The kinds `sample` and `largest` cover: every one there is.
    fn kinds(records: &[Record]) -> std::collections::BTreeSet<&'static str> {
        records.iter().map(|r| r.event.kind()).collect()
    }

    #[test]
    fn every_event_round_trips() {
        assert_eq!(
            kinds(&sample()).len(),
            Event::KINDS.len(),
            "a new event kind needs a sample"
        );
        for record in sample() {
            let bytes = encode_value(&record).unwrap();
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(decode_value(&bytes), Ok(record));
        }
    }

    #[test]
    fn every_event_at_its_largest_round_trips() {
        let records = largest();
        assert_eq!(kinds(&records), kinds(&sample()));
        for record in records {
            let bytes = encode_value(&record)
                .unwrap_or_else(|e| panic!("{} refused: {e}", record.event.kind()));
            assert!(bytes.len() <= MAX_VALUE_BYTES);
            assert_eq!(decode_value(&bytes), Ok(record));
        }
    }

    #[test]
    fn a_rewrite_with_as_many_records_as_one_holds_round_trips() {
        let record = Record {
            at_ms: u64::MAX,
            actor: None,
            event: longest_rewrite(),
        };
        let bytes = encode_value(&record).expect("within the claim limit");
        assert_eq!(decode_value(&bytes), Ok(record));
    }

    #[test]
    fn a_value_over_the_limit_is_refused_both_ways() {
        // A window of scans written as one event, as the server once did.
        let many = (0..12_000)
            .map(|i| ScanCount {
                code: format!("{}{i:064}", "6001900107F52810D5"),
                ..Default::default()
            })
            .collect();
        let record = Record {
            at_ms: 1,
            actor: None,
            event: Event::ScansCounted { codes: many },
        };
        assert!(matches!(
            encode_value(&record),
            Err(CodecError::TooLarge(n)) if n > MAX_VALUE_BYTES
        ));
        let mut value = vec![FORMAT_VERSION];
        value.resize(MAX_VALUE_BYTES + 1, 0);
        assert_eq!(
            decode_value(&value),
            Err(CodecError::TooLarge(MAX_VALUE_BYTES + 1))
        );
    }

    #[test]
    fn corrupt_values_are_refused() {
        let good = encode_value(&sample()[0]).unwrap();
        assert_eq!(decode_value(&[]), Err(CodecError::Empty));
        let mut other_version = good.clone();
        other_version[0] = 9;
        assert_eq!(
            decode_value(&other_version),
            Err(CodecError::UnknownVersion(9))
        );
        assert!(matches!(
            decode_value(&good[..good.len() - 3]),
            Err(CodecError::Decode(_))
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode_value(&longer), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn keys_sort_in_log_order() {
        assert!(encode_key(255) < encode_key(256));
        assert_eq!(decode_key(&encode_key(42)), Ok(42));
        assert_eq!(decode_key(b"abc"), Err(CodecError::BadKey(3)));
    }

    #[test]
    fn json_names_are_stable() {
        let json = serde_json::to_value(&sample()[0]).unwrap();
        assert_eq!(json["kind"], "association_created");
        assert_eq!(json["source"], "session_binding");
        assert_eq!(json["client_addr"], "127.1.0.9");
        assert_eq!(json["subscriber"], "07".repeat(32));
        assert_eq!(json["at_ms"], 1_700_000_000_000u64);
    }

    fn any_addr() -> impl Strategy<Value = std::net::IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
            any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
        ]
    }

    fn any_subscriber() -> impl Strategy<Value = SubscriberRef> {
        any::<[u8; 32]>().prop_map(SubscriberRef)
    }

    fn any_source() -> impl Strategy<Value = IdentitySource> {
        prop_oneof![
            Just(IdentitySource::SessionBinding),
            Just(IdentitySource::GatewayHeader)
        ]
    }

    fn any_scan_count() -> impl Strategy<Value = ScanCount> {
        ("[0-9A-Za-z_-]{1,100}", any::<[u64; 6]>())
            .prop_map(|(code, slots)| ScanCount::from_slots(code, slots))
    }

    /// Any event the server can write: every kind, every field anywhere in
    /// its legal range (strings up to their longest, any UTF-8 where the
    /// type allows it, counters up to `u64::MAX`).
    fn any_event() -> impl Strategy<Value = Event> {
        let clientid = "[A-Za-z0-9._:-]{1,64}";
        let code = "[0-9A-F]{10,36}[A-Za-z0-9_-]{1,64}";
        prop_oneof![
            (clientid, any_subscriber(), any_source(), any_addr()).prop_map(
                |(clientid, subscriber, source, client_addr)| Event::AssociationCreated {
                    clientid,
                    subscriber,
                    source,
                    client_addr,
                }
            ),
            (
                clientid,
                any_subscriber(),
                prop_oneof![
                    Just(RevokeReason::Admin),
                    Just(RevokeReason::Superseded),
                    Just(RevokeReason::Erased),
                    Just(RevokeReason::Moved)
                ]
            )
                .prop_map(|(clientid, subscriber, reason)| Event::AssociationRevoked {
                    clientid,
                    subscriber,
                    reason,
                }),
            (
                clientid,
                any_subscriber(),
                any_subscriber(),
                any_source(),
                any_addr()
            )
                .prop_map(|(clientid, from, to, source, client_addr)| {
                    Event::AssociationRebound {
                        clientid,
                        from,
                        to,
                        source,
                        client_addr,
                    }
                }),
            (code, "https://\\PC{1,2040}")
                .prop_map(|(code, target)| Event::CodeRegistered { code, target }),
            code.prop_map(|code| Event::CodeRemoved { code }),
            prop_oneof![Just(RedactReason::Erased), Just(RedactReason::Retention)]
                .prop_map(|reason| Event::Redacted { reason }),
            proptest::collection::vec(any_scan_count(), 0..=SCANS_PER_EVENT)
                .prop_map(|codes| Event::ScansCounted { codes }),
        ]
    }

    proptest! {
        /// What the log accepts, it reads back: the same record, within
        /// the one limit.
        #[test]
        fn any_event_round_trips(
            at_ms in any::<u64>(),
            event in any_event(),
            actor in proptest::option::of("\\PC{0,64}"),
        ) {
            let record = Record { at_ms, event, actor };
            let bytes = encode_value(&record).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(bytes.len() <= MAX_VALUE_BYTES);
            prop_assert_eq!(decode_value(&bytes), Ok(record));
        }

        /// However many codes a window saw, its `scans_counted` events keep
        /// every count, in order, each within one event's share and each
        /// accepted by the log.
        #[test]
        fn scan_counts_split_into_events_the_log_takes(
            counts in proptest::collection::vec(any_scan_count(), 0..1200),
        ) {
            let events = Event::scans_counted(counts.clone());
            prop_assert_eq!(events.len(), counts.len().div_ceil(SCANS_PER_EVENT));
            let mut back = Vec::new();
            for event in events {
                let Event::ScansCounted { codes } = &event else {
                    return Err(TestCaseError::fail("not a scans_counted event"));
                };
                prop_assert!(!codes.is_empty() && codes.len() <= SCANS_PER_EVENT);
                back.extend(codes.iter().cloned());
                let encoded = encode_value(&Record { at_ms: 0, event, actor: None });
                prop_assert!(encoded.is_ok(), "refused: {:?}", encoded);
            }
            prop_assert_eq!(back, counts);
        }

        /// However many records a history rewrite replaces, and whatever
        /// they are, its `history_rewritten` events keep every one, in
        /// order, each event within its share and accepted by the log.
        #[test]
        fn history_rewrites_split_into_events_the_log_takes(
            records in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any_event(), proptest::option::of("\\PC{0,64}")),
                0..200,
            ),
        ) {
            let replacements: Vec<Replacement> = records
                .into_iter()
                .map(|(seq, at_ms, event, actor)| Replacement { seq, record: Record { at_ms, event, actor } })
                .collect();
            let mut back = Vec::new();
            for event in history_rewritten(replacements.clone()) {
                let Event::HistoryRewritten { records } = &event else {
                    return Err(TestCaseError::fail("not a history_rewritten event"));
                };
                prop_assert!(!records.is_empty() && records.len() <= REPLACEMENTS_PER_EVENT);
                back.extend(records.iter().cloned());
                let encoded = encode_value(&Record { at_ms: 0, event, actor: None });
                prop_assert!(encoded.is_ok(), "refused: {:?}", encoded.err());
            }
            prop_assert_eq!(back, replacements);
        }

        /// Any bytes: an error or a record that encodes to the same bytes,
        /// never a panic.
        #[test]
        fn decoding_garbage_is_refused_or_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut versioned = bytes.clone();
            versioned.insert(0, FORMAT_VERSION);
            for value in [bytes, versioned] {
                if let Ok(record) = decode_value(&value) {
                    prop_assert_eq!(decode_value(&encode_value(&record).unwrap()), Ok(record));
                }
            }
        }
    }
}
