//! Carrying a connection's bytes both ways between two streams, the way every hop of a
//! tunnelled connection does (renter to coordinator, coordinator to worker, worker to node).
//!
//! Unlike `tokio::io::copy_bidirectional`, whose two 8 KiB buffers live as long as the
//! connection, each direction here holds a [`CARRY_BUFFER_BYTES`] buffer only while bytes flow:
//! it is taken when a read can proceed and given back as soon as the reader has nothing more
//! (and what was written is flushed), to a small per-thread spare list. An idle connection
//! then costs no buffer at all, and a busy one moves large chunks per system call.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
        match (a_to_b_done, b_to_a_done) {
            (Some(there), Some(back)) => Poll::Ready(Ok((there, back))),
            _ => Poll::Pending,
        }
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
