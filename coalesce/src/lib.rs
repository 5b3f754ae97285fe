//! One write per turn of a connection's task, not one per message.
//!
//! hyper's HTTP/2 server flushes after every stream it accepts, and `h2`'s
//! client after every request it is given: ten requests that arrive in one
//! read leave as ten TLS records in ten system calls, and on loopback each
//! call also pays the receiver's TCP work. A [`Coalesced`] stream keeps
//! what is written during one poll of the connection's task (its
//! [`Turns`]) and sends it at the first flush of the next turn: the first
//! flush of a turn asks for that next turn at once (wakes the task) and
//! reports itself pending, so the connection goes on with the streams it
//! already has. The next turn writes everything in one record and one call.
//!
//! - A message waits one extra poll of its own task, never for other
//!   input: the wake is immediate.
//! - Past [`HIGH_WATER`] bytes a write goes through at once; a shutdown
//!   first writes what is waiting.
//! - What is put off is sent by a flush in a later turn. `h2` (and so
//!   hyper) flushes on every poll of a connection, and the task is woken
//!   for that poll; whatever owns a [`Coalesced`] must poll through
//!   [`Turns::poll`] and flush each turn.
//! - A server's stream is held so only if it is HTTP/2 (known by its
//!   preface, [`Coalesced::new`]): HTTP/1.1 answers one request at a time
//!   and would only pay the extra turn. A client knows what it speaks
//!   ([`Coalesced::http2`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this many bytes waiting, a write first sends them.
pub const HIGH_WATER: usize = 64 * 1024;

/// The most buffer a connection keeps between turns.
const KEEP: usize = 16 * 1024;

/// The turns (polls) of one connection's task, counted by [`Turns::poll`].
#[derive(Debug, Clone, Default)]
pub struct Turns(Arc<AtomicU64>);

impl Turns {
    /// Polls `future` as one turn.
    pub fn poll<F: Future + Unpin>(&self, future: &mut F, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Pin::new(future).poll(cx)
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `io` with its writes held to the next turn (see the module docs).
#[derive(Debug)]
pub struct Coalesced<I> {
    io: I,
    turns: Turns,
    out: Vec<u8>,
    /// How much of `out` is already written to `io`.
    sent: usize,
    /// The turn in which a flush was put off, if one is.
    put_off_in: Option<u64>,
    /// Whether the client opened with the HTTP/2 preface. HTTP/1.1 answers
    /// one request at a time: holding its answer would only cost a turn.
    http2: bool,
    /// Whether anything has been read yet.
    opened: bool,
}

/// How an HTTP/2 connection begins (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl<I: AsyncWrite + Unpin> Coalesced<I> {
    /// A server's stream: held if the client opens with the HTTP/2 preface.
    pub fn new(io: I, turns: Turns) -> Self {
        Self {
            io,
            turns,
            out: Vec::new(),
            sent: 0,
            put_off_in: None,
            http2: false,
            opened: false,
        }
    }

    /// A client's HTTP/2 stream: held from the start.
    pub fn http2(io: I, turns: Turns) -> Self {
        Self {
            http2: true,
            opened: true,
            ..Self::new(io, turns)
        }
    }

    /// Writes everything waiting to `io`.
    fn send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.out.capacity() > KEEP {
            // A burst does not stay allocated on an idle connection.
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.sent = 0;
        self.put_off_in = None;
        Poll::Ready(Ok(()))
    }

    /// Whether a flush was put off in an earlier turn than this one.
    fn overdue(&self) -> bool {
        self.put_off_in.is_some_and(|turn| turn != self.turns.now())
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesced<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.out.len() >= HIGH_WATER {
            ready!(self.send(cx))?;
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.out.len() >= HIGH_WATER {
            ready!(self.send(cx))?;
        }
        let mut n = 0;
        for buf in bufs {
            self.out.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.is_empty() {
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        if !self.http2 {
            ready!(self.send(cx))?;
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        match self.put_off_in {
            // The first flush of a turn: the next turn sends.
            None => {
                self.put_off_in = Some(self.turns.now());
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The next turn is already asked for.
            Some(_) if !self.overdue() => return Poll::Pending,
            Some(_) => {}
        }
        ready!(self.send(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // No write here: the connection reads before it queues what the
        // streams woken since its last turn wrote, and its flush, after
        // that, sends it all together.
        if self.opened {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        self.http2 = read.starts_with(PREFACE);
        self.opened = !read.is_empty();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One turn of a task: runs `body` as one poll with a waker that
    /// records being woken; returns what it returned and whether it woke.
    fn turn<T>(
        turns: &Turns,
        mut body: impl FnMut(&mut Context<'_>) -> Poll<T> + Unpin,
    ) -> (Poll<T>, bool) {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let flag = Arc::new(Flag(Default::default()));
        let waker = std::task::Waker::from(flag.clone());
        let mut future = std::future::poll_fn(&mut body);
        let poll = turns.poll(&mut future, &mut Context::from_waker(&waker));
        (poll, flag.0.load(Ordering::Relaxed))
    }

    fn write(io: &mut Coalesced<Writes>, cx: &mut Context<'_>, text: &[u8]) {
        let n = Pin::new(&mut *io).poll_write(cx, text);
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == text.len()));
    }

    #[test]
    fn answers_flushed_in_one_turn_leave_in_one_write_at_the_next() {
        let turns = Turns::default();
        let mut io = Coalesced::http2(Writes::default(), turns.clone());
        // Turn 1: three answers, each written and flushed, as hyper's
        // HTTP/2 server does: each flush is put off, the task woken.
        let (flushed, woken) = turn(&turns, |cx| {
            let mut flushes = Vec::new();
            for answer in [&b"one,"[..], b"two,", b"three"] {
                write(&mut io, cx, answer);
                flushes.push(Pin::new(&mut io).poll_flush(cx).is_pending());
            }
            Poll::Ready(flushes)
        });
        assert_eq!(flushed, Poll::Ready(vec![true; 3]));
        assert!(woken, "the first put-off flush asks for the next turn");
        assert!(io.io.0.is_empty(), "nothing written in the turn itself");
        // Turn 2: the first flush sends them all, in order, in one write.
        let (flushed, woken) = turn(&turns, |cx| Pin::new(&mut io).poll_flush(cx));
        assert!(matches!(flushed, Poll::Ready(Ok(()))) && !woken);
        assert_eq!(io.io.0, vec![b"one,two,three".to_vec()]);
        // Nothing waiting: a flush is a flush.
        let (flushed, woken) = turn(&turns, |cx| Pin::new(&mut io).poll_flush(cx));
        assert!(matches!(flushed, Poll::Ready(Ok(()))) && !woken);
    }

    #[test]
    fn the_next_turn_sends_after_its_read_and_a_shutdown_at_once() {
        let turns = Turns::default();
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Coalesced::new(near, turns.clone());
        open(
            &turns,
            &mut io,
            &mut far,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        );
        assert!(io.http2);
        let (flushed, _) = turn(&turns, |cx| {
            assert!(Pin::new(&mut io).poll_write(cx, b"one,").is_ready());
            Pin::new(&mut io).poll_flush(cx)
        });
        assert!(flushed.is_pending());
        // The next turn reads first (nothing yet): nothing is sent by the
        // read, so what the streams woken since then write joins it, and
        // the turn's flush sends both in one write.
        let mut buf = [0; 16];
        let (flushed, _) = turn(&turns, |cx| {
            assert!(
                Pin::new(&mut io)
                    .poll_read(cx, &mut ReadBuf::new(&mut buf))
                    .is_pending()
            );
            assert_eq!(io.out, b"one,", "not sent by the read");
            assert!(Pin::new(&mut io).poll_write(cx, b"two").is_ready());
            Pin::new(&mut io).poll_flush(cx)
        });
        assert!(matches!(flushed, Poll::Ready(Ok(()))));
        let mut got = [0; 16];
        let (got_it, _) = turn(&turns, |cx| {
            let mut buf = ReadBuf::new(&mut got);
            Pin::new(&mut far)
                .poll_read(cx, &mut buf)
                .map_ok(|()| buf.filled().to_vec())
        });
        assert!(matches!(got_it, Poll::Ready(Ok(ref b)) if b == b"one,two"));
        // A shutdown sends first, even within the same turn.
        let (shut, _) = turn(&turns, |cx| {
            assert!(Pin::new(&mut io).poll_write(cx, b"bye").is_ready());
            Pin::new(&mut io).poll_shutdown(cx)
        });
        assert!(matches!(shut, Poll::Ready(Ok(()))));
        let (bye, _) = turn(&turns, |cx| {
            let mut bye = [0; 3];
            let mut buf = ReadBuf::new(&mut bye);
            Pin::new(&mut far)
                .poll_read(cx, &mut buf)
                .map_ok(|()| buf.filled().to_vec())
        });
        assert!(matches!(bye, Poll::Ready(Ok(ref b)) if b == b"bye"));
    }

    /// The client's first bytes, read by `io`.
    fn open(turns: &Turns, io: &mut Coalesced<DuplexStream>, far: &mut DuplexStream, first: &[u8]) {
        let (sent, _) = turn(turns, |cx| Pin::new(&mut *far).poll_write(cx, first));
        assert!(matches!(sent, Poll::Ready(Ok(n)) if n == first.len()));
        let mut buf = [0; 64];
        let (read, _) = turn(turns, |cx| {
            Pin::new(&mut *io).poll_read(cx, &mut ReadBuf::new(&mut buf))
        });
        assert!(matches!(read, Poll::Ready(Ok(()))));
    }

    #[test]
    fn http1_answers_are_not_held() {
        let turns = Turns::default();
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Coalesced::new(near, turns.clone());
        open(&turns, &mut io, &mut far, b"GET / HTTP/1.1\r\n\r\n");
        let (flushed, woken) = turn(&turns, |cx| {
            assert!(
                Pin::new(&mut io)
                    .poll_write(cx, b"HTTP/1.1 200 OK")
                    .is_ready()
            );
            Pin::new(&mut io).poll_flush(cx)
        });
        assert!(matches!(flushed, Poll::Ready(Ok(()))) && !woken);
        assert!(io.out.is_empty(), "sent at its flush");
    }

    #[test]
    fn past_the_high_water_mark_a_write_sends_first() {
        let turns = Turns::default();
        let mut io = Coalesced::http2(Writes::default(), turns.clone());
        let chunk = vec![7u8; HIGH_WATER / 4];
        let (_, woken) = turn(&turns, |cx| {
            for _ in 0..5 {
                write(&mut io, cx, &chunk);
            }
            Poll::Ready(())
        });
        assert!(!woken);
        assert_eq!(io.io.0.len(), 1, "the fifth write sent the first four");
        assert_eq!(io.io.0[0].len(), HIGH_WATER);
        assert_eq!(io.out.len(), chunk.len());
        assert!(
            io.out.capacity() < HIGH_WATER,
            "the burst's buffer is not kept"
        );
    }
}
