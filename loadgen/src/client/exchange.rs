//! One request and its answer, whatever the protocol: the [`Request`]
//! asked, the [`Target`] it goes to, the [`Answer`] or [`Failure`] that
//! comes back, and the steps every protocol's sender shares (building the
//! `http::Request`, reading an answer's head and body).
//!
//! Below [`tcp`](super::tcp) and [`quic`](super::quic), which send, and the
//! [`Client`](super::Client) that picks between them: it knows no
//! connection and no protocol.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;

/// What a client sends: a GET of `path` (path and query) with `headers`.
/// The client knows nothing of classes or setups: it sends requests.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Where the public API is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` for `Host` and `:authority`.
    pub authority: String,
    /// The name the certificate is verified against, parsed and as text.
    pub server_name: ServerName<'static>,
    pub server_name_text: String,
}

/// An HTTP answer: status, body, and `Retry-After` seconds if any.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub retry_after: Option<u64>,
}

impl Answer {
    /// The answer of a response whose `head` came first and `body` after.
    pub fn new(head: &http::response::Parts, body: Bytes) -> Self {
        Self {
            status: head.status.as_u16(),
            body,
            retry_after: retry_after(&head.headers),
        }
    }
}

/// No HTTP answer: at which step it failed, and the error text.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    pub const CONNECT: &'static str = "connect";
    pub const TLS: &'static str = "tls";
    pub const HANDSHAKE: &'static str = "handshake";
    pub const PROTOCOL: &'static str = "protocol";
    pub const TIMEOUT: &'static str = "timeout";

    /// `map_err(Failure::at(Failure::TLS))`.
    pub fn at<E: std::fmt::Display>(kind: &'static str) -> impl FnOnce(E) -> Failure {
        move |e| Failure {
            kind,
            detail: e.to_string(),
        }
    }

    /// A socket (TCP or UDP) that could not be bound to `source`: the
    /// usual cause is a source address the machine does not have.
    pub fn bind(source: IpAddr, error: std::io::Error) -> Failure {
        Failure::at(Failure::CONNECT)(format!("bind {source}: {error}"))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// The request as hyper, h2 and h3 take it. HTTP/1.1 uses the origin form
/// with `Host`; HTTP/2 and HTTP/3 an absolute URI (`:scheme`, `:authority`).
pub fn request(target: &Target, asked: &Request, absolute: bool) -> http::request::Builder {
    let mut builder = if absolute {
        http::Request::get(format!("https://{}{}", target.authority, asked.path))
    } else {
        http::Request::get(asked.path.as_str())
            .header(http::header::HOST, target.authority.as_str())
    };
    for (name, value) in &asked.headers {
        builder = builder.header(name, value);
    }
    builder
}

fn retry_after(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A body read frame by frame (HTTP/2 DATA, HTTP/3 DATA). Most answers are
/// one frame: that one is kept as it came, not copied; more are joined.
#[derive(Debug, Default)]
pub struct BodyFrames {
    first: Bytes,
    joined: BytesMut,
}

impl BodyFrames {
    pub fn push(&mut self, frame: Bytes) {
        if self.first.is_empty() && self.joined.is_empty() {
            self.first = frame;
        } else {
            self.joined
                .extend_from_slice(&std::mem::take(&mut self.first));
            self.joined.extend_from_slice(&frame);
        }
    }

    pub fn finish(self) -> Bytes {
        if self.joined.is_empty() {
            self.first
        } else {
            self.joined.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_frames_join_in_order_and_keep_a_single_frame_as_it_came() {
        let one = Bytes::from_static(b"{\"a\":1}");
        let mut single = BodyFrames::default();
        single.push(one.clone());
        let kept = single.finish();
        assert_eq!(kept, one);
        assert_eq!(kept.as_ptr(), one.as_ptr(), "a single frame is not copied");

        let mut many = BodyFrames::default();
        for frame in ["{\"a\"", ":", "1}"] {
            many.push(Bytes::from_static(frame.as_bytes()));
        }
        assert_eq!(many.finish(), one);
        assert_eq!(BodyFrames::default().finish(), Bytes::new());
    }

    #[test]
    fn retry_after_is_whole_seconds_or_nothing() {
        let head = |value: &str| {
            let (head, ()) = http::Response::builder()
                .status(429)
                .header(http::header::RETRY_AFTER, value)
                .body(())
                .unwrap()
                .into_parts();
            head
        };
        assert_eq!(Answer::new(&head(" 7 "), Bytes::new()).retry_after, Some(7));
        let date = head("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(Answer::new(&date, Bytes::new()).retry_after, None);
        assert_eq!(Answer::new(&head("7"), Bytes::new()).status, 429);
    }
}
