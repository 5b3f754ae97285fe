//! The events of the log and their byte layout.
//!
//! # Layout (format version 1)
//!
//! One RocksDB record per event, in the default column family:
//!
//! ```text
//! key   = sequence number, u64 big-endian (8 bytes): byte order = log order
//! value = [FORMAT_VERSION: u8] ++ bincode::encode(Record, config::standard())  (64 KiB limit)
//! ```
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

pub use crate::core::model::{Event, IdentitySource, Record, RevokeReason, Seq};

pub const FORMAT_VERSION: u8 = 1;

/// bincode's standard config with a cap on what a length prefix may claim, so
/// a corrupt length cannot make the decoder allocate gigabytes.
const CODEC: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_VALUE_BYTES>,
> = bincode::config::standard().with_limit::<MAX_VALUE_BYTES>();

/// No event comes near this; the limit only guards decoding.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

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
}

pub fn encode_key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_key(key: &[u8]) -> Result<Seq, CodecError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| CodecError::BadKey(key.len()))?;
    Ok(Seq::from_be_bytes(bytes))
}

pub fn encode_value(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(FORMAT_VERSION);
    bincode::encode_into_std_write(record, &mut out, CODEC)
        .expect("writing into a Vec cannot fail");
    out
}

pub fn decode_value(value: &[u8]) -> Result<Record, CodecError> {
    let (&version, body) = value.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (record, used) =
        bincode::decode_from_slice(body, CODEC).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SubscriberRef;
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
        ];
        events
            .into_iter()
            .map(|event| Record {
                at_ms: 1_700_000_000_000,
                event,
            })
            .collect()
    }

    #[test]
    fn every_event_round_trips() {
        for record in sample() {
            let bytes = encode_value(&record);
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(decode_value(&bytes), Ok(record));
        }
    }

    #[test]
    fn corrupt_values_are_refused() {
        let good = encode_value(&sample()[0]);
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

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_value(&bytes);
            let mut versioned = bytes.clone();
            versioned.insert(0, FORMAT_VERSION);
            let _ = decode_value(&versioned);
        }
    }
}
