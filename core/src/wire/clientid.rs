//! The `clientid` that identifies one MCC installation (DESIGN §1.2).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Longest accepted `clientid`, in characters (all ASCII).
pub const MAX_LEN: usize = 64;

/// An opaque MCC installation identifier: 1–64 characters of `[A-Za-z0-9._:-]`.
///
/// Backed by an `Arc<str>` so the index can keep one allocation per clientid
/// and share it between its by-clientid and by-subscriber maps.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("clientid is empty")]
    Empty,
    #[error("clientid is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("clientid contains a character outside [A-Za-z0-9._:-] at position {0}")]
    BadCharacter(usize),
    #[error("clientid is given more than once")]
    Repeated,
}

impl ClientId {
    pub fn parse(text: &str) -> Result<Self, ClientIdError> {
        validate(text)?;
        Ok(Self(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A clientid checked but not copied: a request's clientid is parsed once,
/// at the edge, into this; looked up in the index as it is; and copied into
/// a [`ClientId`] only when an association is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdRef<'a>(&'a str);

impl<'a> ClientIdRef<'a> {
    pub fn parse(text: &'a str) -> Result<Self, ClientIdError> {
        validate(text)?;
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The owned clientid, without checking again.
    pub fn to_client_id(&self) -> ClientId {
        ClientId(Arc::from(self.0))
    }
}

/// Checks the syntax without allocating: the hot path validates before it
/// looks the text up in the index.
pub fn validate(text: &str) -> Result<(), ClientIdError> {
    if text.is_empty() {
        return Err(ClientIdError::Empty);
    }
    if text.len() > MAX_LEN {
        return Err(ClientIdError::TooLong);
    }
    match text.bytes().position(|b| !is_allowed(b)) {
        Some(at) => Err(ClientIdError::BadCharacter(at)),
        None => Ok(()),
    }
}

fn is_allowed(b: u8) -> bool {
    ALLOWED[usize::from(b)]
}

/// The bytes a clientid may have, one lookup each (the check runs on every
/// request).
static ALLOWED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
        b += 1;
    }
    table
};

impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_uuid_and_sub_id_forms() {
        for ok in ["6ba7b810-9dad-11d1-80b4-00c04fd430c8", "a", "sub:123.x_y-z"] {
            assert_eq!(ClientId::parse(ok).unwrap().as_str(), ok);
        }
        assert!(ClientId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_with_the_reason() {
        assert_eq!(ClientId::parse(""), Err(ClientIdError::Empty));
        assert_eq!(
            ClientId::parse(&"x".repeat(65)),
            Err(ClientIdError::TooLong)
        );
        assert_eq!(ClientId::parse("ab/c"), Err(ClientIdError::BadCharacter(2)));
        assert_eq!(ClientId::parse("é"), Err(ClientIdError::BadCharacter(0)));
        assert_eq!(ClientId::parse("a b"), Err(ClientIdError::BadCharacter(1)));
    }

    /// What DESIGN §1.2 says of a clientid, written apart from the parser:
    /// 1–64 characters, each of `[A-Za-z0-9._:-]`; else why not (a byte
    /// position, as the parser reports it).
    fn spec(text: &str) -> Result<(), ClientIdError> {
        const ALLOWED: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
        if text.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if text.len() > 64 {
            return Err(ClientIdError::TooLong);
        }
        match text.char_indices().find(|(_, c)| !ALLOWED.contains(*c)) {
            Some((at, _)) => Err(ClientIdError::BadCharacter(at)),
            None => Ok(()),
        }
    }

    /// Texts on both sides of the rule: valid ones, valid ones around the
    /// length limit, one wrong character among valid ones, and anything.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9._:-]{1,64}",
            "[A-Za-z0-9._:-]{60,70}",
            "[A-Za-z0-9._:-]{0,40}[^A-Za-z0-9._:-][A-Za-z0-9._:-]{0,40}",
            "[A-Za-z0-9._:/ %-]{0,8}",
            ".{0,70}",
        ]
    }

    proptest! {
        /// Accepts exactly the texts of the rule, with the reason for the
        /// others; what it accepts it keeps as it came (no case folding,
        /// no trimming), and it parses again to itself.
        #[test]
        fn accepts_exactly_the_rule_and_round_trips(text in any_text()) {
            let parsed = ClientId::parse(&text);
            prop_assert_eq!(parsed.clone().map(|_| ()), spec(&text));
            prop_assert_eq!(ClientIdRef::parse(&text).map(|r| r.to_client_id()), parsed.clone());
            if let Ok(id) = parsed {
                prop_assert_eq!(id.as_str(), text.as_str());
                prop_assert_eq!(id.to_string(), text.clone());
                prop_assert_eq!(ClientId::parse(&id.to_string()).unwrap(), id);
            }
        }
    }
}
