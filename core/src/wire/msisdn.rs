//! MSISDN and the keyed subscriber reference that stands for it (DESIGN §3).
//!
//! The MSISDN is personal data. It is parsed and normalised here, turned at
//! once into a [`SubscriberRef`] (HMAC-SHA-256 under a per-deployment
//! [`SubscriberKey`]), and never stored, logged or displayed in clear: its
//! `Debug` and `Display` show only a masked form.

use std::fmt;

use aws_lc_rs::hmac;

/// Fewest and most digits of an international number (E.164 allows 15).
const MIN_DIGITS: usize = 8;
const MAX_DIGITS: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsisdnError {
    #[error("MSISDN is empty")]
    Empty,
    #[error("MSISDN contains a character that is not a digit, '+', space, '-', '(' or ')'")]
    BadCharacter,
    #[error("MSISDN must have {MIN_DIGITS} to {MAX_DIGITS} digits in international format")]
    BadLength,
    #[error("MSISDN must start with a country code (no leading 0 after '+' or '00')")]
    NotInternational,
}

/// An MSISDN normalised to E.164: `+` then 8–15 digits, first digit not 0.
#[derive(Clone, PartialEq, Eq)]
pub struct Msisdn(String);

impl Msisdn {
    /// Accepts `+447700900123`, `00447700900123`, `447700900123` (as sent by
    /// header-enrichment gateways) and the same with spaces, dashes or
    /// brackets. National formats (leading 0) are refused: the CMP cannot know
    /// the country.
    pub fn parse(text: &str) -> Result<Self, MsisdnError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MsisdnError::Empty);
        }
        let rest = text.strip_prefix('+').unwrap_or(text);
        let mut digits = String::with_capacity(MAX_DIGITS + 1);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '(' | ')' => {}
                _ => return Err(MsisdnError::BadCharacter),
            }
        }
        let digits = match digits.strip_prefix("00") {
            Some(international) if !text.starts_with('+') => international.to_owned(),
            _ => digits,
        };
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits.len()) {
            return Err(MsisdnError::BadLength);
        }
        if digits.starts_with('0') {
            return Err(MsisdnError::NotInternational);
        }
        Ok(Self(format!("+{digits}")))
    }

    /// The E.164 text. Only for computing a [`SubscriberRef`] and for the
    /// admin API's own answers: never for logs or the event log.
    pub fn e164(&self) -> &str {
        &self.0
    }
}

/// Shows the country-code end and the last two digits only.
impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "Msisdn({}…{})", &self.0[..3], &self.0[n - 2..])
    }
}

/// The per-deployment secret that keys [`SubscriberRef`].
pub struct SubscriberKey(hmac::Key);

impl SubscriberKey {
    pub const LEN: usize = 32;

    pub fn new(secret: &[u8; Self::LEN]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn subscriber_ref(&self, msisdn: &Msisdn) -> SubscriberRef {
        let tag = hmac::sign(&self.0, msisdn.e164().as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(tag.as_ref());
        SubscriberRef(bytes)
    }
}

impl fmt::Debug for SubscriberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriberKey(..)")
    }
}

/// HMAC-SHA-256 of the E.164 MSISDN: identifies a subscriber in the index and
/// the event log without revealing the number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bincode::Encode, bincode::Decode)]
pub struct SubscriberRef(pub [u8; 32]);

impl SubscriberRef {
    pub fn to_hex(&self) -> String {
        self.hex_digits(|digits| digits.to_owned())
    }

    /// Its 64 lowercase hex digits, handed to `then` from the stack (no
    /// allocation: `log export` writes one per event).
    fn hex_digits<R>(&self, then: impl FnOnce(&str) -> R) -> R {
        let mut digits = [0u8; 64];
        hex::encode_to_slice(self.0, &mut digits).expect("64 digits for 32 bytes");
        then(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for SubscriberRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.hex_digits(|digits| f.write_str(digits))
    }
}

/// Short form for logs: the first 8 bytes are plenty to tell subscribers apart.
impl fmt::Debug for SubscriberRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.hex_digits(|digits| write!(f, "sub:{}", &digits[..16]))
    }
}

impl serde::Serialize for SubscriberRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.hex_digits(|digits| s.serialize_str(digits))
    }
}

/// From the 64 hex digits it serialises to (`homecmp log import`).
impl<'de> serde::Deserialize<'de> for SubscriberRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a subscriber is 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_international_forms() {
        for text in [
            "+447700900123",
            "447700900123",
            "00447700900123",
            " +44 7700-900 (123) ",
        ] {
            assert_eq!(
                Msisdn::parse(text).unwrap().e164(),
                "+447700900123",
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_with_the_reason() {
        assert_eq!(Msisdn::parse(" "), Err(MsisdnError::Empty));
        assert_eq!(Msisdn::parse("+44x7700"), Err(MsisdnError::BadCharacter));
        assert_eq!(Msisdn::parse("+4477"), Err(MsisdnError::BadLength));
        assert_eq!(
            Msisdn::parse("+4477009001234567"),
            Err(MsisdnError::BadLength)
        );
        assert_eq!(
            Msisdn::parse("07700900123"),
            Err(MsisdnError::NotInternational)
        );
        assert_eq!(
            Msisdn::parse("+07700900123"),
            Err(MsisdnError::NotInternational)
        );
    }

    #[test]
    fn debug_never_shows_the_number() {
        let shown = format!("{:?}", Msisdn::parse("+447700900123").unwrap());
        assert!(!shown.contains("7700900"), "{shown}");
    }

    #[test]
    fn subscriber_ref_is_keyed_and_stable() {
        let a = SubscriberKey::new(&[1; 32]);
        let b = SubscriberKey::new(&[2; 32]);
        let m = Msisdn::parse("+447700900123").unwrap();
        let same = Msisdn::parse("00447700900123").unwrap();
        assert_eq!(a.subscriber_ref(&m), a.subscriber_ref(&same));
        assert_ne!(a.subscriber_ref(&m), b.subscriber_ref(&m));
        let r = a.subscriber_ref(&m);
        assert_eq!(SubscriberRef::from_hex(&r.to_hex()), Some(r));
        assert!(!r.to_hex().contains("447700900123"));
        assert_eq!(SubscriberRef::from_hex(&"+0".repeat(32)), None);
    }

    /// A number as its digits: valid (country code first, 8–15 digits),
    /// too short, too long, or national (a leading 0).
    fn any_digits() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[1-9][0-9]{7,14}",
            1 => "[1-9][0-9]{0,6}",
            1 => "[1-9][0-9]{15,18}",
            1 => "0[1-9][0-9]{6,13}",
        ]
    }

    /// What DESIGN §3 makes of `digits`, written apart from the parser.
    fn spec(digits: &str) -> Result<String, MsisdnError> {
        if !(8..=15).contains(&digits.len()) {
            return Err(MsisdnError::BadLength);
        }
        if digits.starts_with('0') {
            return Err(MsisdnError::NotInternational);
        }
        Ok(format!("+{digits}"))
    }

    /// One way a person or a gateway writes `digits`: `+`, `00` or nothing
    /// in front, separators between the digits, blanks around. With `bad`,
    /// that character stands somewhere after the first digit.
    fn written(digits: String, bad: Option<char>) -> impl Strategy<Value = String> {
        let separator = prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("-"), 1 => Just("("), 1 => Just(")")];
        (
            prop_oneof![Just("+"), Just("00"), Just("")],
            proptest::collection::vec(separator, digits.len()),
            1..=digits.len(),
            "[ \t]{0,2}",
            "[ \t]{0,2}",
        )
            .prop_map(move |(lead, separators, bad_at, before, after)| {
                let mut text = format!("{before}{lead}");
                for (at, (digit, separator)) in digits.chars().zip(separators).enumerate() {
                    match bad {
                        Some(bad) if at == bad_at => text.push(bad),
                        _ => text.push_str(separator),
                    }
                    text.push(digit);
                }
                if let Some(bad) = bad.filter(|_| bad_at == digits.len()) {
                    text.push(bad);
                }
                text.push_str(&after);
                text
            })
    }

    proptest! {
        /// Every way of writing a number parses to the same E.164 form
        /// (or the same refusal), and so to the same keyed subscriber;
        /// the E.164 form parses to itself.
        #[test]
        fn any_writing_of_a_number_gives_one_form_and_one_subscriber(
            (digits, one, other) in any_digits().prop_flat_map(|digits| {
                (Just(digits.clone()), written(digits.clone(), None), written(digits, None))
            })
        ) {
            let key = SubscriberKey::new(&[7; 32]);
            let want = spec(&digits);
            let (a, b) = (Msisdn::parse(&one), Msisdn::parse(&other));
            prop_assert_eq!(a.clone().map(|m| m.e164().to_owned()), want.clone(), "{:?}", one);
            prop_assert_eq!(b.clone().map(|m| m.e164().to_owned()), want, "{:?}", other);
            if let (Ok(a), Ok(b)) = (a, b) {
                prop_assert_eq!(key.subscriber_ref(&a), key.subscriber_ref(&b));
                prop_assert_eq!(Msisdn::parse(a.e164()).unwrap(), a.clone());
                let shown = format!("{a:?}");
                prop_assert!(!shown.contains(&digits[2..digits.len() - 2]), "{}", shown);
            }
        }

        /// A character other than digits, `+` in front, blanks around and
        /// ` -()` between is refused, wherever it is and whatever the length.
        #[test]
        fn a_stray_character_is_refused(
            text in (
                any_digits(),
                // Not a blank: at the end, trimming would take it away.
                "[^0-9 ()-]".prop_filter("not blank", |c| !c.trim().is_empty()),
            )
                .prop_flat_map(|(digits, bad)| written(digits, bad.chars().next()))
        ) {
            prop_assert_eq!(Msisdn::parse(&text), Err(MsisdnError::BadCharacter), "{:?}", text);
        }

        #[test]
        fn nothing_but_blanks_is_empty(text in "[ \t\n]{0,4}") {
            prop_assert_eq!(Msisdn::parse(&text), Err(MsisdnError::Empty));
        }

        /// Different numbers are different subscribers, and the same number
        /// is another subscriber under another deployment's key.
        #[test]
        fn the_reference_is_keyed_and_tells_numbers_apart(
            a in "[1-9][0-9]{7,14}",
            b in "[1-9][0-9]{7,14}",
        ) {
            let key = SubscriberKey::new(&[7; 32]);
            let (ma, mb) = (Msisdn::parse(&a).unwrap(), Msisdn::parse(&b).unwrap());
            prop_assert_eq!(key.subscriber_ref(&ma) == key.subscriber_ref(&mb), a == b);
            prop_assert_ne!(key.subscriber_ref(&ma), SubscriberKey::new(&[8; 32]).subscriber_ref(&ma));
        }

        /// `from_hex` takes exactly 64 hex digits (either case) and gives
        /// back what `to_hex` wrote.
        #[test]
        fn hex_references_round_trip(
            text in prop_oneof![
                "[0-9a-fA-F]{64}",
                "[0-9a-fA-F]{60,68}",
                // 64 characters, one of them not a hex digit (a sign among them).
                ("[0-9a-f]{64}", 0usize..64, "[-+ gxX.]").prop_map(|(hex, at, other)| {
                    format!("{}{other}{}", &hex[..at], &hex[at + 1..])
                }),
                ".{0,70}",
            ]
        ) {
            let hex64 = text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit());
            let parsed = SubscriberRef::from_hex(&text);
            prop_assert_eq!(parsed.is_some(), hex64, "{:?}", text);
            if let Some(r) = parsed {
                prop_assert_eq!(r.to_hex(), text.to_ascii_lowercase());
                prop_assert_eq!(SubscriberRef::from_hex(&r.to_hex()), Some(r));
            }
        }
    }
}
