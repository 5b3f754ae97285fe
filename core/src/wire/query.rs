//! The resolve request's query string: `code` and `clientid`,
//! percent-decoded, each at most once.

use std::borrow::Cow;

/// The query's `code` (empty when absent) and `clientid`: borrowed from
/// the query string as it is, copied only where it was percent-encoded
/// (or had a `+`), which a well-behaved app's UUID and code never are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub code: Cow<'a, str>,
    pub clientid: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is longer than allowed")]
    TooLong,
    /// Two values are an ambiguity an attacker could play on.
    #[error("code appears more than once")]
    RepeatedCode,
    #[error("clientid appears more than once")]
    RepeatedClientId,
}

impl<'a> Query<'a> {
    /// Parses `text` (the part after `?`), at most `max_bytes` long, as
    /// `application/x-www-form-urlencoded` (WHATWG URL): pairs split on
    /// `&`, name from value on the first `=`, `+` a space, percent-decoding,
    /// invalid UTF-8 replaced. Other parameters are ignored.
    pub fn parse(text: &'a str, max_bytes: usize) -> Result<Self, QueryError> {
        if text.len() > max_bytes {
            return Err(QueryError::TooLong);
        }
        let mut code = None;
        let mut clientid = None;
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = decode_pair(pair);
            let (slot, repeated) = match &*name {
                "code" => (&mut code, QueryError::RepeatedCode),
                "clientid" => (&mut clientid, QueryError::RepeatedClientId),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(repeated);
            }
        }
        Ok(Query {
            code: code.unwrap_or_default(),
            clientid,
        })
    }
}

/// One `name=value` pair, decoded: borrowed when there is nothing to
/// decode, else as `form_urlencoded` decodes it.
fn decode_pair(pair: &str) -> (Cow<'_, str>, Cow<'_, str>) {
    if !pair.bytes().any(|b| b == b'%' || b == b'+') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        return (Cow::Borrowed(name), Cow::Borrowed(value));
    }
    let (name, value) = form_urlencoded::parse(pair.as_bytes())
        .next()
        .expect("a pair that is not empty");
    (
        Cow::Owned(name.into_owned()),
        Cow::Owned(value.into_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse("code=2001000001a&clientid=a%3Ab&x=1", 100).unwrap();
        assert_eq!(
            (&*q.code, q.clientid.as_deref()),
            ("2001000001a", Some("a:b"))
        );
        assert_eq!(
            Query::parse("clientid=a&clientid=b&code=c", 100),
            Err(QueryError::RepeatedClientId)
        );
        assert_eq!(
            Query::parse("code=a&code=a", 100),
            Err(QueryError::RepeatedCode)
        );
        assert_eq!(
            Query::parse("code=2001000001a", 10),
            Err(QueryError::TooLong)
        );
        assert_eq!(Query::parse("", 10).unwrap().code, "");
    }

    proptest::proptest! {
        /// The borrowing parser reads any query exactly as
        /// `form_urlencoded` does (the WHATWG rules).
        #[test]
        fn reads_as_form_urlencoded_does(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("code".to_owned()),
                    proptest::strategy::Just("clientid".to_owned()),
                    "[a-z%+=&0-9A-F]{0,6}",
                ],
                0..8,
            ),
            values in proptest::collection::vec("[a-zA-Z0-9%+=&._:-]{0,8}|\\PC{0,4}", 8),
        ) {
            let text: String = parts
                .iter()
                .zip(&values)
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("&");
            let mut code = None;
            let mut clientid = None;
            let mut want = Ok(());
            for (name, value) in form_urlencoded::parse(text.as_bytes()) {
                let (slot, repeated) = match &*name {
                    "code" => (&mut code, QueryError::RepeatedCode),
                    "clientid" => (&mut clientid, QueryError::RepeatedClientId),
                    _ => continue,
                };
                if slot.replace(value.into_owned()).is_some() && want.is_ok() {
                    want = Err(repeated);
                }
            }
            let got = Query::parse(&text, usize::MAX);
            match want {
                Err(e) => proptest::prop_assert_eq!(got, Err(e)),
                Ok(()) => {
                    let got = got.unwrap();
                    let code = code.unwrap_or_default();
                    proptest::prop_assert_eq!(&*got.code, code.as_str());
                    proptest::prop_assert_eq!(got.clientid.as_deref(), clientid.as_deref());
                }
            }
        }
    }
}
