//! Carrying a connection's bytes both ways between two streams, the way every hop of a
//! tunnelled connection does (renter to coordinator, coordinator to worker, worker to node).
//!
//! Unlike `tokio::io::copy_bidirectional`, whose two 8 KiB buffers live as long as the
//! connection, each direction here holds a [`CARRY_BUFFER_BYTES`] buffer only while bytes flow:
//! it is taken when a read can proceed and given back as soon as the reader has nothing more
//! (and what was written is flushed), to a small per-thread spare list. An idle connection
//! then costs no buffer at all, and a busy one moves large chunks per system call.
//!
//! [`carry_until_idle`] also ends a connection on which no byte moved either way for a while,
//! so a connection its client forgot (the process alive, so TCP keepalive is answered) does not
//! hold its node's slot and its tunnel stream for ever.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::transport::poll_deadline;

/// One direction's buffer while bytes flow.
pub const CARRY_BUFFER_BYTES: usize = 64 * 1024;
/// Buffers given back and kept for the next taker, per thread: a ping-pong connection takes
/// and gives one back per message, which then costs neither an allocation nor zeroing.
const SPARE_BUFFERS_PER_THREAD_MAX: usize = 16;

thread_local! {
    static SPARE_BUFFERS: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    SPARE_BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| vec![0u8; CARRY_BUFFER_BYTES].into_boxed_slice())
}

fn give_buffer(buffer: Option<Box<[u8]>>) {
    let Some(buffer) = buffer else {
        return;
    };
    SPARE_BUFFERS.with_borrow_mut(|spare| {
        if spare.len() < SPARE_BUFFERS_PER_THREAD_MAX {
            spare.push(buffer);
        }
    });
}

/// One direction: from a reader to a writer.
#[derive(Debug, Default)]
struct Direction {
    buffer: Option<Box<[u8]>>,
    /// Bytes in `buffer[start..end]` are read and not yet written.
    start: usize,
    end: usize,
    read_done: bool,
    unflushed: bool,
    carried: u64,
}

impl Direction {
    /// Carries until the reader ends and the writer is shut down; the bytes carried.
    fn poll_carry<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start == self.end && !self.read_done {
                let buffer = self.buffer.get_or_insert_with(take_buffer);
                let mut read = ReadBuf::new(buffer);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let filled = read.filled().len();
                        self.read_done = filled == 0;
                        (self.start, self.end) = (0, filled);
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        // Nothing to carry now: flush what went out, and hold no buffer idle.
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        give_buffer(self.buffer.take());
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let buffer = self.buffer.as_deref().expect("bytes sit in the buffer");
                let written = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &buffer[self.start..self.end])
                )?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += written;
                self.carried += written as u64;
                self.unflushed = true;
            }
            if self.read_done {
                give_buffer(self.buffer.take());
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.carried));
            }
        }
    }
}

/// Carries bytes both ways until both sides have ended (each end's shutdown is passed on);
/// the bytes carried from `a` to `b` and from `b` to `a`. An error on either side ends both.
pub async fn carry<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    carry_watched(a, b, None).await
}

/// [`carry`], except that once no byte has moved either way for `idle_timeout` the carrying
/// stops with a `TimedOut` error (the caller then drops both ends).
pub async fn carry_until_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle_timeout: Duration,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    carry_watched(a, b, Some(Idle::new(idle_timeout))).await
}

/// When a connection last moved a byte, and the timer that ends it once idle too long.
struct Idle {
    timeout: Duration,
    moved_bytes: u64,
    moved_at: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Idle {
    fn new(timeout: Duration) -> Idle {
        let now = Instant::now();
        Idle {
            timeout,
            moved_bytes: 0,
            moved_at: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// Ready once `moved_bytes` (the total so far) has not grown for the timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>, moved_bytes: u64) -> Poll<()> {
        if moved_bytes != self.moved_bytes {
            self.moved_bytes = moved_bytes;
            self.moved_at = Instant::now();
        }
        poll_deadline(&mut self.timer, self.moved_at + self.timeout, cx)
    }
}

async fn carry_watched<A, B>(a: &mut A, b: &mut B, mut idle: Option<Idle>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    let (mut a_to_b_done, mut b_to_a_done) = (None, None);
    poll_fn(|cx| {
        if a_to_b_done.is_none()
            && let Poll::Ready(result) = a_to_b.poll_carry(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        {
            a_to_b_done = Some(result?);
        }
        if b_to_a_done.is_none()
            && let Poll::Ready(result) = b_to_a.poll_carry(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        {
            b_to_a_done = Some(result?);
        }
        if let (Some(there), Some(back)) = (a_to_b_done, b_to_a_done) {
            return Poll::Ready(Ok((there, back)));
        }
        if let Some(idle) = &mut idle {
            let moved_bytes = a_to_b.carried + b_to_a.carried;
            ready!(idle.poll_expired(cx, moved_bytes));
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no byte moved for {} s", idle.timeout.as_secs()),
            )));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// Writes `bytes` and shuts down while reading to the end, both at once.
    async fn exchange(end: tokio::io::DuplexStream, bytes: Vec<u8>) -> Vec<u8> {
        let (mut reader, mut writer) = tokio::io::split(end);
        let sending = async move {
            writer.write_all(&bytes).await.unwrap();
            writer.shutdown().await.unwrap();
        };
        let receiving = async move {
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.unwrap();
            received
        };
        tokio::join!(sending, receiving).1
    }

    #[tokio::test]
    async fn both_ways_carry_every_byte_and_pass_the_end_on() {
        let (left, mut left_inner) = duplex(4096);
        let (mut right_inner, right) = duplex(4096);
        let carrier = tokio::spawn(async move { carry(&mut left_inner, &mut right_inner).await });
        let there: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let back = vec![7u8; 123_457];
        let (at_left, at_right) =
            tokio::join!(exchange(left, there.clone()), exchange(right, back.clone()));
        assert_eq!(at_right, there);
        assert_eq!(at_left, back);
        let (carried_there, carried_back) = carrier.await.unwrap().unwrap();
        assert_eq!((carried_there, carried_back), (300_000, 123_457));
    }

    #[tokio::test]
    async fn a_connection_ends_once_idle_past_its_timeout_and_not_while_bytes_move() {
        let idle_timeout = Duration::from_millis(1_000);
        let (mut left, mut left_inner) = duplex(1024);
        let (mut right_inner, mut right) = duplex(1024);
        let carrier = tokio::spawn(async move {
            carry_until_idle(&mut left_inner, &mut right_inner, idle_timeout).await
        });
        // A message every tenth of the timeout, for one and a half timeouts: kept.
        for round in 0..15u8 {
            left.write_all(&[round]).await.unwrap();
            let mut heard = [0u8; 1];
            right.read_exact(&mut heard).await.unwrap();
            assert_eq!(heard, [round]);
            tokio::time::sleep(idle_timeout / 10).await;
        }
        assert!(!carrier.is_finished(), "a busy connection is not idle");
        // Then silence: the carrying ends, timed out, and both ends hear the end.
        let ended = carrier.await.unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let mut rest = Vec::new();
        assert_eq!(right.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut writer_side, mut reader) = duplex(1024);
        let mut sink = tokio::io::sink();
        let mut direction = Direction::default();
        writer_side.write_all(b"hello").await.unwrap();
        poll_fn(|cx| {
            let polled = direction.poll_carry(cx, Pin::new(&mut reader), Pin::new(&mut sink));
            assert!(polled.is_pending(), "the reader has not ended");
            Poll::Ready(())
        })
        .await;
        assert_eq!(direction.carried, 5);
        assert!(direction.buffer.is_none(), "no buffer while nothing flows");
    }
}
