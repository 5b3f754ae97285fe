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
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

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

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = ClientId::parse(&s);
        }

        #[test]
        fn valid_round_trips(s in "[A-Za-z0-9._:-]{1,64}") {
            let id = ClientId::parse(&s).unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(ClientId::parse(id.as_str()).unwrap(), id);
        }
    }
}
