//! The 16 bytes the index keys a clientid by.
//!
//! A clientid written as a canonical UUID (lowercase, hyphenated, RFC 4122
//! variant: what DESIGN §1.2 suggests, e.g. a UUID v5) is its own 16 bytes,
//! and the index stores nothing else of it. Any other clientid is keyed by
//! the first 16 bytes of a SHA-256 of its text with the variant bits set to
//! `11`, which no key of the first kind has, so the two kinds never meet;
//! its text is kept beside the index (`Index::names`) and compared on every
//! lookup, so even a hash collision cannot match the wrong clientid.

use aws_lc_rs::digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(pub [u8; 16]);

impl ClientKey {
    pub fn of(clientid: &str) -> Self {
        if let Some(bytes) = canonical_uuid(clientid.as_bytes()) {
            return Self(bytes);
        }
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"homecmp clientid\0");
        context.update(clientid.as_bytes());
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&context.finish().as_ref()[..16]);
        bytes[8] |= 0xc0;
        Self(bytes)
    }

    /// Whether this key is a UUID clientid, whose text it holds; otherwise
    /// the text is kept apart.
    pub fn is_uuid(&self) -> bool {
        self.0[8] & 0xc0 == 0x80
    }

    /// The clientid of a UUID key: lowercase and hyphenated.
    pub fn uuid_text(&self) -> String {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::from_bytes(self.0)
            .hyphenated()
            .encode_lower(&mut text)
            .to_owned()
    }

    /// A fixed (not per-process) spread of the key over the index shards:
    /// snapshots store each shard as it is.
    pub fn spread(&self) -> u64 {
        let (a, b) = self.0.split_at(8);
        fixed_mix(
            u64::from_le_bytes(a.try_into().expect("8 bytes"))
                ^ u64::from_le_bytes(b.try_into().expect("8 bytes")),
        )
    }
}

/// A multiplicative mix (Fibonacci hashing) whose top bits pick a shard.
pub fn fixed_mix(x: u64) -> u64 {
    (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The 16 bytes of `text` if it is a lowercase hyphenated UUID of the RFC
/// 4122 variant. Runs on every request with a clientid: fixed positions
/// and a table, no branch per digit.
fn canonical_uuid(text: &[u8]) -> Option<[u8; 16]> {
    let text: &[u8; 36] = text.try_into().ok()?;
    if [8, 13, 18, 23].iter().any(|&at| text[at] != b'-') {
        return None;
    }
    /// Where each byte's two hex digits start.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut bytes = [0u8; 16];
    let mut bad = 0u8;
    for (byte, &at) in bytes.iter_mut().zip(&AT) {
        let high = LOWER_HEX[usize::from(text[at])];
        let low = LOWER_HEX[usize::from(text[at + 1])];
        bad |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    (bad & 0xf0 == 0 && bytes[8] & 0xc0 == 0x80).then_some(bytes)
}

/// A lowercase hex digit's value; 0xff for any other byte.
static LOWER_HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut d = 0;
    while d < 10 {
        table[b'0' as usize + d] = d as u8;
        d += 1;
    }
    let mut d = 0;
    while d < 6 {
        table[b'a' as usize + d] = 10 + d as u8;
        d += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uuids_are_their_bytes_and_the_rest_is_hashed_apart() {
        let v5 = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_DNS, b"mcc.example");
        let text = v5.hyphenated().to_string();
        let key = ClientKey::of(&text);
        assert_eq!((key.0, key.is_uuid()), (*v5.as_bytes(), true));
        assert_eq!(key.uuid_text(), text);
        for other in [
            text.to_uppercase(),
            v5.simple().to_string(),
            "00000000-0000-0000-0000-000000000000".to_owned(),
            "mcc-1".to_owned(),
        ] {
            let key = ClientKey::of(&other);
            assert!(!key.is_uuid(), "{other}");
            assert_eq!(key, ClientKey::of(&other));
            assert_ne!(key, ClientKey::of(&format!("{other}x")));
        }
    }

    proptest! {
        #[test]
        fn a_key_is_a_uuid_exactly_when_its_text_is_canonical(bytes in any::<[u8; 16]>()) {
            let text = uuid::Uuid::from_bytes(bytes).hyphenated().to_string();
            let key = ClientKey::of(&text);
            prop_assert_eq!(key.is_uuid(), bytes[8] & 0xc0 == 0x80);
            if key.is_uuid() {
                prop_assert_eq!(key.uuid_text(), text);
            }
        }
    }
}
