//! The encrypted framing under the multiplexer: each direction is a sequence of
//! `[u16 big-endian length][Noise ciphertext]` messages, each message one multiplexer frame.
//!
//! The two directions are apart: a [`Sealer`] (shared by every stream of the session, behind a
//! lock, so a stream's writer seals and sends its own frames with no hand-off to another task)
//! and an [`Opener`] (the session's task, which reads). Noise's stateless transport lets each
//! count its own nonces.
//!
//! Any message that fails to open, and a connection that ends inside a message, is an error
//! that ends the session. An empty message is a keepalive: sent when nothing else was sent for
//! [`KEEPALIVE_INTERVAL_MS`], skipped by the reader, who gives up after [`IDLE_TIMEOUT_MS`] of
//! silence.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::{IDLE_TIMEOUT_MS, KEEPALIVE_INTERVAL_MS};

/// The largest Noise message (the Noise specification's limit).
pub(crate) const NOISE_MESSAGE_LEN_MAX: usize = 65_535;

/// The AEAD tag that every Noise transport message carries.
pub(crate) const TAG_LEN: usize = 16;

/// The largest plaintext one message carries.
pub(crate) const PLAINTEXT_LEN_MAX: usize = NOISE_MESSAGE_LEN_MAX - TAG_LEN;

/// The big-endian `u16` in front of every message.
pub(crate) const LENGTH_PREFIX_LEN: usize = 2;

/// One whole message on the wire, at most.
const MESSAGE_WIRE_LEN_MAX: usize = LENGTH_PREFIX_LEN + NOISE_MESSAGE_LEN_MAX;

/// Room for two whole messages, so one socket read usually yields at least one to open.
const READ_BUFFER_LEN: usize = 2 * MESSAGE_WIRE_LEN_MAX;

/// The write half of a session's connection, whatever its type.
pub(crate) type BoxedWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// The read half of a session's connection, whatever its type.
pub(crate) type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;

fn keepalive_interval() -> Duration {
    Duration::from_millis(KEEPALIVE_INTERVAL_MS)
}

fn idle_timeout() -> Duration {
    Duration::from_millis(IDLE_TIMEOUT_MS)
}

/// Ready once `due_at` has passed. `due_at` only moves later (it is the last activity plus a
/// fixed delay), so the timer is re-armed only when it fires early, not on every message: timer
/// resets take a lock in tokio's driver, and messages come tens of thousands a second.
pub(crate) fn poll_deadline(
    timer: &mut Pin<Box<Sleep>>,
    due_at: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if Instant::now() >= due_at {
            return Poll::Ready(());
        }
        ready!(timer.as_mut().poll(cx));
        timer.as_mut().reset(due_at);
    }
}

fn invalid_data(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// One direction's keys: the session's Noise state and the direction's next nonce.
pub(crate) struct DirectionKeys {
    pub(crate) noise: Arc<snow::StatelessTransportState>,
    pub(crate) nonce: u64,
}

/// Seals frames into messages and sends them.
pub(crate) struct Sealer {
    io: BoxedWrite,
    keys: DirectionKeys,
    /// One frame's plaintext, gathered for sealing in one piece.
    plain: Vec<u8>,
    /// Sealed messages, length prefixes included; `cipher[sent..]` is not yet written.
    cipher: Vec<u8>,
    sent: usize,
    last_sent_at: Instant,
    keepalive: Pin<Box<Sleep>>,
}

impl Sealer {
    pub(crate) fn new(io: BoxedWrite, keys: DirectionKeys) -> Self {
        let now = Instant::now();
        Self {
            io,
            keys,
            plain: Vec::new(),
            cipher: Vec::new(),
            sent: 0,
            last_sent_at: now,
            keepalive: Box::pin(tokio::time::sleep_until(now + keepalive_interval())),
        }
    }

    /// Sealed bytes not yet written to the connection.
    pub(crate) fn unsent_bytes(&self) -> usize {
        self.cipher.len() - self.sent
    }

    /// Seals `head` and `body` together as one message, queued for sending. Their length
    /// together is at most [`PLAINTEXT_LEN_MAX`].
    pub(crate) fn push(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        debug_assert!(head.len() + body.len() <= PLAINTEXT_LEN_MAX);
        self.plain.clear();
        self.plain.extend_from_slice(head);
        self.plain.extend_from_slice(body);
        let start = self.cipher.len();
        self.cipher
            .resize(start + LENGTH_PREFIX_LEN + self.plain.len() + TAG_LEN, 0);
        let len = self
            .keys
            .noise
            .write_message(
                self.keys.nonce,
                &self.plain,
                &mut self.cipher[start + LENGTH_PREFIX_LEN..],
            )
            .map_err(|_| io::Error::other("noise refused to seal a message"))?;
        self.keys.nonce += 1;
        let len_u16 =
            u16::try_from(len).map_err(|_| io::Error::other("sealed message too long"))?;
        self.cipher[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len_u16.to_be_bytes());
        self.cipher.truncate(start + LENGTH_PREFIX_LEN + len);
        self.last_sent_at = Instant::now();
        Ok(())
    }

    /// Writes what is queued; ready once all of it is written and flushed.
    pub(crate) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.cipher.len() {
            let unsent = &self.cipher[self.sent..];
            let written = ready!(self.io.as_mut().poll_write(cx, unsent))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.cipher.clear();
        self.sent = 0;
        self.io.as_mut().poll_flush(cx)
    }

    /// Queues a keepalive once nothing was sent for a keepalive interval; registers the
    /// wake-up otherwise.
    pub(crate) fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let due_at = self.last_sent_at + keepalive_interval();
        if poll_deadline(&mut self.keepalive, due_at, cx).is_ready() {
            self.push(&[], &[])?;
        }
        Ok(())
    }

    /// Sends what is queued, then ends the connection's write half.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        self.io.as_mut().poll_shutdown(cx)
    }

    /// Lets go of the connection's write half (so, with the read half gone, the connection
    /// closes), whoever still holds this sealer; what is queued is dropped.
    pub(crate) fn release(&mut self) {
        self.io = Box::pin(tokio::io::sink());
        self.cipher = Vec::new();
        self.plain = Vec::new();
        self.sent = 0;
    }
}

/// Reads messages and opens them.
pub(crate) struct Opener {
    io: BoxedRead,
    keys: DirectionKeys,
    /// Bytes from the connection; `cipher[start..end]` is not yet opened.
    cipher: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last opened message's plaintext.
    plain: Box<[u8]>,
    eof: bool,
    last_received_at: Instant,
    idle: Pin<Box<Sleep>>,
}

impl Opener {
    pub(crate) fn new(io: BoxedRead, keys: DirectionKeys) -> Self {
        let now = Instant::now();
        Self {
            io,
            keys,
            cipher: vec![0; READ_BUFFER_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            // A whole message, tag included, so ring opens it in place without allocating.
            plain: vec![0; NOISE_MESSAGE_LEN_MAX].into_boxed_slice(),
            eof: false,
            last_received_at: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout())),
        }
    }

    /// The next message's plaintext (keepalives skipped), or `None` once the connection
    /// ended cleanly between messages.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<&[u8]>>> {
        loop {
            if let Some(len) = self.open_next()? {
                if len == 0 {
                    continue;
                }
                return Poll::Ready(Ok(Some(&self.plain[..len])));
            }
            if self.eof {
                if self.start == self.end {
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tunnel connection ended inside a message",
                )));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Opens the first whole message in the read buffer, if there is one: its length.
    fn open_next(&mut self) -> io::Result<Option<usize>> {
        let buffered = &self.cipher[self.start..self.end];
        let Some(prefix) = buffered.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        if len < TAG_LEN {
            return Err(invalid_data("tunnel message shorter than its tag"));
        }
        let Some(message) = buffered.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len) else {
            return Ok(None);
        };
        let opened = self
            .keys
            .noise
            .read_message(self.keys.nonce, message, &mut self.plain)
            .map_err(|_| invalid_data("tunnel message failed authentication"))?;
        self.keys.nonce += 1;
        self.start += LENGTH_PREFIX_LEN + len;
        self.last_received_at = Instant::now();
        Ok(Some(opened))
    }

    /// Reads more bytes from the connection into the read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.cipher.len() {
            // The partial message moves to the front; the buffer holds two whole messages,
            // so there is then room for the rest of it.
            self.cipher.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut buf = ReadBuf::new(&mut self.cipher[self.end..]);
        match self.io.as_mut().poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let received = buf.filled().len();
                self.eof = received == 0;
                self.end += received;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_idle(cx),
        }
    }

    /// Fails once nothing has arrived for [`IDLE_TIMEOUT_MS`]; registers the wake-up otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let due_at = self.last_received_at + idle_timeout();
        ready!(poll_deadline(&mut self.idle, due_at, cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "tunnel peer silent past the idle timeout",
        )))
    }
}
