//! Indirect Code Identifier and Routing Prefix (DESIGN §2).
//!
//! Text form `<routing prefix><code value>`. The prefix is one hex digit `L`
//! (length indicator), three hex digits of Registry-ID (`000` reserved), then
//! `L+1` octets as `2(L+1)` hex digits; the prefix is case-insensitive and
//! kept upper-case. The code value is 1–64 characters of `[A-Za-z0-9_-]` and
//! keeps its case.

use std::fmt;

/// Longest code value, in characters.
pub const MAX_VALUE_LEN: usize = 64;

/// Longest routing prefix: `L` = F, so 4 + 2 × 16 hex digits.
pub const MAX_PREFIX_LEN: usize = 4 + 2 * 16;

/// Longest whole code, prefix and value.
pub const MAX_LEN: usize = MAX_PREFIX_LEN + MAX_VALUE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("code is empty")]
    Empty,
    #[error("routing prefix is too short: expected {expected} hex digits, got {got}")]
    PrefixTooShort { expected: usize, got: usize },
    #[error("routing prefix contains a non-hex character at position {0}")]
    PrefixNotHex(usize),
    #[error("registry-id 000 is reserved")]
    ReservedRegistry,
    #[error("code value is missing after the routing prefix")]
    ValueMissing,
    #[error("code value is longer than {MAX_VALUE_LEN} characters")]
    ValueTooLong,
    #[error("code value contains a character outside [A-Za-z0-9_-] at position {0}")]
    ValueBadCharacter(usize),
    #[error("code is given more than once")]
    Repeated,
}

/// A Routing Prefix, canonical upper-case hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingPrefix(Box<str>);

impl RoutingPrefix {
    /// Parses a text that is exactly one routing prefix.
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let len = prefix_len(text)?;
        if len != text.len() {
            return Err(CodeError::PrefixTooShort {
                expected: len,
                got: text.len(),
            });
        }
        Ok(Self(text.to_ascii_uppercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Registry-ID, three hex digits.
    pub fn registry_id(&self) -> &str {
        &self.0[1..4]
    }
}

/// Length in characters of the routing prefix that starts `text`, after
/// checking its length indicator, Registry-ID and hex digits.
fn prefix_len(text: &str) -> Result<usize, CodeError> {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(CodeError::Empty);
    };
    let indicator = hex_value(first).ok_or(CodeError::PrefixNotHex(0))? as usize;
    let len = 4 + 2 * (indicator + 1);
    if bytes.len() < len {
        return Err(CodeError::PrefixTooShort {
            expected: len,
            got: bytes.len(),
        });
    }
    if let Some(at) = bytes[..len].iter().position(|&b| hex_value(b).is_none()) {
        return Err(CodeError::PrefixNotHex(at));
    }
    if &bytes[1..4] == b"000" {
        return Err(CodeError::ReservedRegistry);
    }
    Ok(len)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// An Indirect Code Identifier: routing prefix and code value.
///
/// Its canonical text (`as_str`) is the upper-case prefix followed by the
/// value, and is the key of the code store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IndirectCode {
    text: Box<str>,
    prefix_len: u8,
}

impl IndirectCode {
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let prefix_len = prefix_len(text)?;
        let value = &text[prefix_len..];
        if value.is_empty() {
            return Err(CodeError::ValueMissing);
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(CodeError::ValueTooLong);
        }
        if let Some(at) = value
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(CodeError::ValueBadCharacter(at));
        }
        // One allocation: the text, its prefix upper-cased in place.
        let mut canonical: Box<str> = text.into();
        canonical[..prefix_len].make_ascii_uppercase();
        Ok(Self {
            text: canonical,
            prefix_len: prefix_len as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn prefix(&self) -> &str {
        &self.text[..self.prefix_len as usize]
    }

    pub fn value(&self) -> &str {
        &self.text[self.prefix_len as usize..]
    }
}

impl fmt::Display for IndirectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IndirectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndirectCode({}|{})", self.prefix(), self.value())
    }
}

impl fmt::Display for RoutingPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoutingPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingPrefix({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_design_examples() {
        let code = IndirectCode::parse("2001000001abc").unwrap();
        assert_eq!(code.prefix(), "2001000001");
        assert_eq!(code.value(), "abc");
        let code = IndirectCode::parse("6001900107f52810d5Promo_1-x").unwrap();
        assert_eq!(code.prefix(), "6001900107F52810D5");
        assert_eq!(code.value(), "Promo_1-x");
        assert_eq!(code.as_str(), "6001900107F52810D5Promo_1-x");
        let prefix = RoutingPrefix::parse("6001900107f52810d5").unwrap();
        assert_eq!(prefix.as_str(), code.prefix());
        assert_eq!(prefix.registry_id(), "001");
    }

    #[test]
    fn rejects_with_the_reason() {
        use CodeError::*;
        let cases = [
            ("", Empty),
            ("x001000001a", PrefixNotHex(0)),
            (
                "20010000",
                PrefixTooShort {
                    expected: 10,
                    got: 8,
                },
            ),
            ("2000000001a", ReservedRegistry),
            ("20010g0001a", PrefixNotHex(5)),
            ("2001000001", ValueMissing),
            ("2001000001a/b", ValueBadCharacter(1)),
            ("2001000001a.b", ValueBadCharacter(1)),
        ];
        for (text, want) in cases {
            assert_eq!(IndirectCode::parse(text), Err(want), "{text:?}");
        }
        let long = format!("2001000001{}", "v".repeat(65));
        assert_eq!(IndirectCode::parse(&long), Err(ValueTooLong));
        assert!(RoutingPrefix::parse("2001000001a").is_err());
    }

    /// A valid code as its routing prefix (hex digits in either case) and
    /// value.
    fn valid_code() -> impl Strategy<Value = (String, String)> {
        (0usize..16, 1u16..0x1000, "[A-Za-z0-9_-]{1,64}").prop_flat_map(|(l, reg, value)| {
            let digits = proptest::collection::vec((0u8..16, any::<bool>()), 2 * (l + 1));
            (digits, any::<bool>()).prop_map(move |(digits, upper)| {
                let registry = match upper {
                    true => format!("{reg:03X}"),
                    false => format!("{reg:03x}"),
                };
                let mut prefix = format!("{l:X}{registry}");
                for (d, upper) in digits {
                    let digit = char::from_digit(d.into(), 16).unwrap();
                    prefix.push(if upper {
                        digit.to_ascii_uppercase()
                    } else {
                        digit
                    });
                }
                (prefix, value.clone())
            })
        })
    }

    /// What DESIGN §2 says of a code, written apart from the parser: the
    /// prefix (upper-cased) and the value, or why not (positions and
    /// lengths in bytes, as the parser reports them).
    fn spec(text: &str) -> Result<(String, String), CodeError> {
        let first = text.chars().next().ok_or(CodeError::Empty)?;
        let indicator = first.to_digit(16).ok_or(CodeError::PrefixNotHex(0))? as usize;
        let prefix_len = 4 + 2 * (indicator + 1);
        if text.len() < prefix_len {
            return Err(CodeError::PrefixTooShort {
                expected: prefix_len,
                got: text.len(),
            });
        }
        let not_hex = text
            .bytes()
            .take(prefix_len)
            .position(|b| !b.is_ascii_hexdigit());
        if let Some(at) = not_hex {
            return Err(CodeError::PrefixNotHex(at));
        }
        let (prefix, value) = text.split_at(prefix_len);
        if &prefix[1..4] == "000" {
            return Err(CodeError::ReservedRegistry);
        }
        if value.is_empty() {
            return Err(CodeError::ValueMissing);
        }
        if value.len() > 64 {
            return Err(CodeError::ValueTooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if let Some((at, _)) = value.char_indices().find(|&(_, c)| !allowed(c)) {
            return Err(CodeError::ValueBadCharacter(at));
        }
        Ok((prefix.to_ascii_uppercase(), value.to_owned()))
    }

    /// A valid code broken in one place: a character replaced, the text
    /// cut or lengthened, the reserved registry, a value too long.
    fn broken_code() -> impl Strategy<Value = String> {
        let stray = "[0-9a-zA-Z_./ %+é-]";
        (valid_code(), 0usize..120, stray, 0u8..5).prop_map(|((prefix, value), at, stray, how)| {
            let text = format!("{prefix}{value}");
            match how {
                0 => {
                    let mut chars: Vec<char> = text.chars().collect();
                    let at = at % chars.len();
                    chars[at] = stray.chars().next().unwrap();
                    chars.into_iter().collect()
                }
                1 => text[..at % text.len()].to_owned(),
                2 => format!("{text}{stray}"),
                3 => format!("{}000{}", &prefix[..1], &text[4..]),
                _ => format!("{prefix}{}", value.repeat(1 + 65 / value.len())),
            }
        })
    }

    fn any_code_text() -> impl Strategy<Value = String> {
        prop_oneof![
            valid_code().prop_map(|(prefix, value)| format!("{prefix}{value}")),
            broken_code(),
            "[0-9a-fA-F]{0,40}[A-Za-z0-9_./-]{0,80}",
            ".{0,80}",
        ]
    }

    fn swap_case(text: &str) -> String {
        text.chars()
            .map(|c| match c.is_ascii_uppercase() {
                true => c.to_ascii_lowercase(),
                false => c.to_ascii_uppercase(),
            })
            .collect()
    }

    proptest! {
        /// The parser accepts exactly what the spec accepts, refuses the
        /// rest with the spec's reason, and what it accepts displays as a
        /// text that parses back to the same code.
        #[test]
        fn parse_agrees_with_the_spec_and_round_trips(text in any_code_text()) {
            let parsed = IndirectCode::parse(&text);
            let split = parsed.as_ref().map(|c| (c.prefix().to_owned(), c.value().to_owned()));
            prop_assert_eq!(split.map_err(Clone::clone), spec(&text), "{:?}", text);
            if let Ok(code) = parsed {
                prop_assert_eq!(code.as_str(), format!("{}{}", code.prefix(), code.value()));
                prop_assert_eq!(code.to_string(), code.as_str());
                prop_assert_eq!(IndirectCode::parse(&code.to_string()), Ok(code.clone()));
                let prefix = RoutingPrefix::parse(&text[..code.prefix().len()]).unwrap();
                prop_assert_eq!(prefix.as_str(), code.prefix());
                prop_assert!(RoutingPrefix::parse(&text).is_err(), "a whole code is no prefix");
            }
        }

        /// The prefix is hex: its case does not matter. The value is the
        /// operator's: its case is kept, and makes another code.
        #[test]
        fn the_prefix_ignores_case_and_the_value_keeps_it((prefix, value) in valid_code()) {
            let code = IndirectCode::parse(&format!("{prefix}{value}")).unwrap();
            prop_assert_eq!(code.prefix(), prefix.to_ascii_uppercase());
            prop_assert_eq!(code.value(), value.as_str());
            for other in [prefix.to_ascii_lowercase(), prefix.to_ascii_uppercase(), swap_case(&prefix)] {
                prop_assert_eq!(IndirectCode::parse(&format!("{other}{value}")), Ok(code.clone()));
                let parsed = RoutingPrefix::parse(&other).unwrap();
                prop_assert_eq!(parsed.as_str(), code.prefix());
            }
            let swapped = IndirectCode::parse(&format!("{prefix}{}", swap_case(&value))).unwrap();
            prop_assert_eq!(swapped == code, swap_case(&value) == value);
        }
    }
}
