//! The encrypted byte stream under the multiplexer: `[u16 length][Noise ciphertext]` frames.
//!
//! Writes collect plaintext until a frame is full or the multiplexer flushes (it flushes after
//! every yamux frame, so each yamux frame usually travels as one Noise message), then seal it in
//! one piece. Reads pull large chunks from the socket and open every whole frame in
//! them. Both directions run in the session's one task, so nothing here is shared.
//!
//! Any frame that fails to open, and a connection that ends inside a frame, is an error that ends
//! the session. An empty plaintext is a keepalive: sent when nothing else was sent for
//! [`KEEPALIVE_INTERVAL_MS`], skipped by the reader, who gives up after [`IDLE_TIMEOUT_MS`] of
//! silence.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::{IDLE_TIMEOUT_MS, KEEPALIVE_INTERVAL_MS};

/// The largest Noise message (the Noise specification's limit).
pub(crate) const NOISE_MESSAGE_LEN_MAX: usize = 65_535;

/// The AEAD tag that every Noise transport message carries.
pub(crate) const TAG_LEN: usize = 16;

/// The largest plaintext one frame carries.
pub(crate) const PLAINTEXT_LEN_MAX: usize = NOISE_MESSAGE_LEN_MAX - TAG_LEN;

/// The big-endian `u16` in front of every frame.
pub(crate) const LENGTH_PREFIX_LEN: usize = 2;

/// One whole frame on the wire, at most.
const FRAME_LEN_MAX: usize = LENGTH_PREFIX_LEN + NOISE_MESSAGE_LEN_MAX;

/// Room for two whole frames, so one socket read usually yields at least one frame to open.
const READ_BUFFER_LEN: usize = 2 * FRAME_LEN_MAX;

/// A Noise-encrypted byte stream over `S`, seen by yamux through the `futures` IO traits.
pub(crate) struct NoiseIo<S> {
    io: S,
    noise: snow::TransportState,
    /// Cancelled the moment this transport fails or ends, before the multiplexer hears of it,
    /// so that streams report an aborted session rather than a clean end of file.
    ended: CancellationToken,
    write: WriteHalf,
    read: ReadHalf,
}

struct WriteHalf {
    /// Plaintext not yet sealed; at most [`PLAINTEXT_LEN_MAX`] bytes.
    plain: Vec<u8>,
    /// One sealed frame, length prefix included, of which `cipher[start..end]` is unsent.
    cipher: Box<[u8]>,
    start: usize,
    end: usize,
    last_sent_at: Instant,
    keepalive: Pin<Box<Sleep>>,
}

struct ReadHalf {
    /// Bytes from the socket; `cipher[start..end]` is not yet opened.
    cipher: Box<[u8]>,
    start: usize,
    end: usize,
    /// One opened frame; `plain[plain_start..plain_end]` is not yet read.
    plain: Box<[u8]>,
    plain_start: usize,
    plain_end: usize,
    eof: bool,
    last_received_at: Instant,
    idle: Pin<Box<Sleep>>,
}

impl<S> NoiseIo<S> {
    pub(crate) fn new(io: S, noise: snow::TransportState, ended: CancellationToken) -> Self {
        let now = Instant::now();
        let write = WriteHalf {
            plain: Vec::with_capacity(PLAINTEXT_LEN_MAX),
            cipher: vec![0; FRAME_LEN_MAX].into_boxed_slice(),
            start: 0,
            end: 0,
            last_sent_at: now,
            keepalive: Box::pin(tokio::time::sleep_until(now + keepalive_interval())),
        };
        let read = ReadHalf {
            cipher: vec![0; READ_BUFFER_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            // A whole message, tag included, so ring opens it in place without allocating.
            plain: vec![0; NOISE_MESSAGE_LEN_MAX].into_boxed_slice(),
            plain_start: 0,
            plain_end: 0,
            eof: false,
            last_received_at: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout())),
        };
        Self {
            io,
            noise,
            ended,
            write,
            read,
        }
    }

    /// Records that the transport is over, then hands the error on.
    fn fail(&self, error: io::Error) -> io::Error {
        self.ended.cancel();
        error
    }
}

fn keepalive_interval() -> Duration {
    Duration::from_millis(KEEPALIVE_INTERVAL_MS)
}

fn idle_timeout() -> Duration {
    Duration::from_millis(IDLE_TIMEOUT_MS)
}

/// Ready once `due_at` has passed. `due_at` only moves later (it is the last activity plus a
/// fixed delay), so the timer is re-armed only when it fires early, not on every frame: timer
/// resets take a lock in tokio's driver, and frames come tens of thousands a second.
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

impl<S: AsyncRead + AsyncWrite + Unpin> NoiseIo<S> {
    /// Sends the sealed frame, if any, to the socket.
    fn poll_send_cipher(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write.start < self.write.end {
            let unsent = &self.write.cipher[self.write.start..self.write.end];
            let sent = ready!(Pin::new(&mut self.io).poll_write(cx, unsent))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write.start += sent;
        }
        self.write.start = 0;
        self.write.end = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals the collected plaintext (possibly empty: a keepalive) into one frame.
    /// The cipher buffer must be empty.
    fn seal(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.write.end, 0, "sealing over an unsent frame");
        let (prefix, body) = self.write.cipher.split_at_mut(LENGTH_PREFIX_LEN);
        let len = self
            .noise
            .write_message(&self.write.plain, body)
            .map_err(|_| io::Error::other("noise refused to seal a frame"))?;
        let len_u16 = u16::try_from(len).map_err(|_| io::Error::other("sealed frame too long"))?;
        prefix.copy_from_slice(&len_u16.to_be_bytes());
        self.write.end = LENGTH_PREFIX_LEN + len;
        self.write.plain.clear();
        self.write.last_sent_at = Instant::now();
        Ok(())
    }

    /// Whether nothing was sent for a keepalive interval; registers the wake-up otherwise.
    fn keepalive_due(&mut self, cx: &mut Context<'_>) -> bool {
        let due_at = self.write.last_sent_at + keepalive_interval();
        !poll_deadline(&mut self.write.keepalive, due_at, cx).is_pending()
    }

    fn poll_flush_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send_cipher(cx))?;
            if !self.write.plain.is_empty() || self.keepalive_due(cx) {
                self.seal()?;
                continue;
            }
            return Pin::new(&mut self.io).poll_flush(cx);
        }
    }

    /// Opens the first whole frame in the read buffer, if there is one.
    fn open_next_frame(&mut self) -> io::Result<bool> {
        let buffered = &self.read.cipher[self.read.start..self.read.end];
        let Some(prefix) = buffered.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(false);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        if len < TAG_LEN {
            return Err(invalid_data("tunnel frame shorter than its tag"));
        }
        let Some(message) = buffered.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len) else {
            return Ok(false);
        };
        let opened = self
            .noise
            .read_message(message, &mut self.read.plain)
            .map_err(|_| invalid_data("tunnel frame failed authentication"))?;
        self.read.start += LENGTH_PREFIX_LEN + len;
        self.read.plain_start = 0;
        self.read.plain_end = opened;
        self.read.last_received_at = Instant::now();
        Ok(true)
    }

    /// Reads more bytes from the socket into the read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read.start == self.read.end {
            self.read.start = 0;
            self.read.end = 0;
        } else if self.read.end == self.read.cipher.len() {
            // The partial frame moves to the front; the buffer holds two whole frames, so
            // there is then room for the rest of it.
            self.read
                .cipher
                .copy_within(self.read.start..self.read.end, 0);
            self.read.end -= self.read.start;
            self.read.start = 0;
        }
        let mut buf = ReadBuf::new(&mut self.read.cipher[self.read.end..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let received = buf.filled().len();
                if received == 0 {
                    self.read.eof = true;
                }
                self.read.end += received;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_idle(cx),
        }
    }

    /// Fails once nothing has arrived for [`IDLE_TIMEOUT_MS`]; registers the wake-up otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let due_at = self.read.last_received_at + idle_timeout();
        ready!(poll_deadline(&mut self.read.idle, due_at, cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "tunnel peer silent past the idle timeout",
        )))
    }

    fn poll_read_plain(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let available = self.read.plain_end - self.read.plain_start;
            if available > 0 || out.is_empty() {
                let n = available.min(out.len());
                let from = self.read.plain_start;
                out[..n].copy_from_slice(&self.read.plain[from..from + n]);
                self.read.plain_start += n;
                return Poll::Ready(Ok(n));
            }
            if self.open_next_frame()? {
                continue;
            }
            if self.read.eof {
                if self.read.start == self.read.end {
                    return Poll::Ready(Ok(0));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tunnel connection ended inside a frame",
                )));
            }
            ready!(self.poll_fill(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_io::AsyncRead for NoiseIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(this.poll_read_plain(cx, buf)) {
            Ok(0) if !buf.is_empty() => {
                this.ended.cancel();
                Poll::Ready(Ok(0))
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(error) => Poll::Ready(Err(this.fail(error))),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_io::AsyncWrite for NoiseIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let room = PLAINTEXT_LEN_MAX - this.write.plain.len();
            if room > 0 || buf.is_empty() {
                let n = room.min(buf.len());
                this.write.plain.extend_from_slice(&buf[..n]);
                return Poll::Ready(Ok(n));
            }
            if let Err(error) = ready!(this.poll_send_cipher(cx)) {
                return Poll::Ready(Err(this.fail(error)));
            }
            if let Err(error) = this.seal() {
                return Poll::Ready(Err(this.fail(error)));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_frames(cx)).map_err(|error| this.fail(error))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_frames(cx)).map_err(|error| this.fail(error))?;
        ready!(Pin::new(&mut this.io).poll_shutdown(cx)).map_err(|error| this.fail(error))?;
        this.ended.cancel();
        Poll::Ready(Ok(()))
    }
}
