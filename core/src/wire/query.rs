//! The resolve request's query string: `code` and `clientid`,
//! percent-decoded, each at most once.

/// The query's `code` (empty when absent) and `clientid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub code: String,
    pub clientid: Option<String>,
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

impl Query {
    /// Parses `text` (the part after `?`), at most `max_bytes` long. Other
    /// parameters are ignored.
    pub fn parse(text: &str, max_bytes: usize) -> Result<Self, QueryError> {
        if text.len() > max_bytes {
            return Err(QueryError::TooLong);
        }
        let mut code = None;
        let mut clientid = None;
        for (name, value) in form_urlencoded::parse(text.as_bytes()) {
            let (slot, repeated) = match &*name {
                "code" => (&mut code, QueryError::RepeatedCode),
                "clientid" => (&mut clientid, QueryError::RepeatedClientId),
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(repeated);
            }
        }
        Ok(Query {
            code: code.unwrap_or_default(),
            clientid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse("code=2001000001a&clientid=a%3Ab&x=1", 100).unwrap();
        assert_eq!(
            (q.code.as_str(), q.clientid.as_deref()),
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
}
