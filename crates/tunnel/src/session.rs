//! Streams over one tunnel: yamux on the Noise transport, driven by one task per session.
//!
//! The task owns the yamux connection (every yamux call needs it mutably) and serves two
//! queues: requests to open a stream, and streams the peer opened. The [`Session`] owns the
//! task: dropping it, or [`Session::close`], closes the tunnel within [`SHUTDOWN_TIMEOUT_MS`].
//!
//! yamux quirks this module works around:
//! - Reaching yamux's stream limit, by opening or by the peer opening, kills the whole
//!   connection. So streams are counted here and refused at [`STREAMS_MAX`], while yamux's own
//!   limit is set twice as high to absorb streams dropped here that yamux has not yet reaped.
//! - After a connection ends, a yamux stream may report a clean end of file or wait forever.
//!   So each [`Stream`] also watches the session's `ended` token, cancelled by the transport
//!   before yamux learns of the failure, and then fails with `ConnectionAborted`.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};

use crate::transport::NoiseIo;
use crate::{
    INBOUND_QUEUE_LEN, OPEN_QUEUE_LEN, SHUTDOWN_TIMEOUT_MS, STREAM_RECEIVE_WINDOW_BYTES,
    STREAMS_MAX, TunnelError, WINDOW_GROWTH_POOL_BYTES,
};

/// The most data one yamux frame carries; each becomes one Noise message when flushed.
const DATA_FRAME_BYTES_MAX: usize = 16 * 1024;

/// yamux's own stream limit; see the module docs for why it is above [`STREAMS_MAX`].
const YAMUX_STREAMS_MAX: usize = 2 * STREAMS_MAX;

/// Which end of the tunnel this is (yamux numbers streams by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The worker, which dialled.
    Client,
    /// The coordinator, which accepted.
    Server,
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, TunnelError>>;

/// What every stream and opener of one session shares.
#[derive(Debug)]
struct Shared {
    /// Cancelled once the tunnel is over, for whatever reason.
    ended: CancellationToken,
    /// Live [`Stream`]s, both directions.
    streams_live: AtomicUsize,
}

/// An established tunnel. Dropping it closes the tunnel and fails its streams.
pub struct Session {
    opener: StreamOpener,
    inbound: mpsc::Receiver<Stream>,
    driver: JoinHandle<Result<(), TunnelError>>,
    _close_on_drop: DropGuard,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("streams_live", &self.streams_live())
            .field("ended", &self.is_ended())
            .finish_non_exhaustive()
    }
}

/// Opens streams on a session from anywhere; cheap to clone. It does not keep the session
/// alive: once the [`Session`] is dropped, opening fails with [`TunnelError::Closed`].
#[derive(Debug, Clone)]
pub struct StreamOpener {
    requests: mpsc::Sender<OpenReply>,
    shared: Arc<Shared>,
}

impl Session {
    pub(crate) fn start<S>(io: S, noise: snow::TransportState, role: Role) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            ended: CancellationToken::new(),
            streams_live: AtomicUsize::new(0),
        });
        let closing = CancellationToken::new();
        let (requests, requests_rx) = mpsc::channel(OPEN_QUEUE_LEN);
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE_LEN);
        let mode = match role {
            Role::Client => yamux::Mode::Client,
            Role::Server => yamux::Mode::Server,
        };
        let transport = NoiseIo::new(io, noise, shared.ended.clone());
        let driver = Driver {
            connection: yamux::Connection::new(transport, yamux_config(), mode),
            requests: requests_rx,
            pending_request: None,
            inbound: inbound_tx,
            shared: Arc::clone(&shared),
        };
        let driver = tokio::spawn(driver.run(closing.clone()));
        Self {
            opener: StreamOpener { requests, shared },
            inbound,
            driver,
            _close_on_drop: closing.drop_guard(),
        }
    }

    /// Opens a stream to the peer.
    pub async fn open_stream(&self) -> Result<Stream, TunnelError> {
        self.opener.open_stream().await
    }

    /// A handle that opens streams on this session.
    pub fn opener(&self) -> StreamOpener {
        self.opener.clone()
    }

    /// The next stream the peer opened, or `None` once the session is over.
    pub async fn accept_stream(&mut self) -> Option<Stream> {
        self.inbound.recv().await
    }

    /// Completes when the tunnel is over (closed by either side, or failed).
    pub async fn ended(&self) {
        self.opener.shared.ended.cancelled().await;
    }

    /// Whether the tunnel is over.
    pub fn is_ended(&self) -> bool {
        self.opener.shared.ended.is_cancelled()
    }

    /// Streams of this session alive now, both directions.
    pub fn streams_live(&self) -> usize {
        self.opener.shared.streams_live.load(Ordering::Relaxed)
    }

    /// Closes the tunnel: open streams fail, queued data is flushed and the peer told, within
    /// [`SHUTDOWN_TIMEOUT_MS`]. Returns how the session ended: an error if it had already
    /// failed (a bad frame, a dead peer), `Ok` if it was open or closed cleanly.
    pub async fn close(self) -> Result<(), TunnelError> {
        let Self {
            driver,
            _close_on_drop,
            ..
        } = self;
        drop(_close_on_drop);
        match driver.await {
            Ok(result) => result,
            // A panic in the driver is a bug: surface it rather than hide it in an error.
            Err(join_error) if join_error.is_panic() => {
                std::panic::resume_unwind(join_error.into_panic())
            }
            Err(join_error) => Err(TunnelError::Io(io::Error::other(join_error))),
        }
    }
}

impl StreamOpener {
    /// Opens a stream to the peer. Fails at [`STREAMS_MAX`] live streams, or once the session
    /// is over.
    pub async fn open_stream(&self) -> Result<Stream, TunnelError> {
        if self.shared.ended.is_cancelled() {
            return Err(TunnelError::Closed);
        }
        if self.shared.streams_live.load(Ordering::Relaxed) >= STREAMS_MAX {
            return Err(TunnelError::TooManyStreams {
                streams_max: STREAMS_MAX,
            });
        }
        let (reply, response) = oneshot::channel();
        self.requests
            .send(reply)
            .await
            .map_err(|_| TunnelError::Closed)?;
        let mut stream = response.await.map_err(|_| TunnelError::Closed)??;
        // yamux announces a stream with its first frame. Send that now, empty, so the peer
        // learns of the stream even if this side has nothing to say yet (a server that speaks
        // first) or closes it at once.
        let announced =
            poll_fn(|cx| futures_io::AsyncWrite::poll_write(Pin::new(&mut stream), cx, &[])).await;
        match announced {
            Ok(_) => Ok(Stream::new(stream, &self.shared)),
            Err(_) if self.shared.ended.is_cancelled() => Err(TunnelError::Closed),
            Err(error) => Err(error.into()),
        }
    }
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    // The window must cover every stream's initial credit before it may grow.
    let window_base_bytes = YAMUX_STREAMS_MAX * STREAM_RECEIVE_WINDOW_BYTES;
    config
        .set_max_num_streams(YAMUX_STREAMS_MAX)
        .set_max_connection_receive_window(Some(window_base_bytes + WINDOW_GROWTH_POOL_BYTES))
        // yamux's default. Frames of a whole Noise message (64 KiB) measured no faster on
        // loopback, and smaller frames let an interactive stream pass a bulk one sooner.
        .set_split_send_size(DATA_FRAME_BYTES_MAX);
    config
}

fn mux_error(error: yamux::ConnectionError) -> TunnelError {
    match error {
        yamux::ConnectionError::Closed => TunnelError::Closed,
        other => TunnelError::Mux(other),
    }
}

/// The session's task: owns the yamux connection.
struct Driver<S> {
    connection: yamux::Connection<NoiseIo<S>>,
    requests: mpsc::Receiver<OpenReply>,
    /// A request yamux could not serve yet (too many streams waiting for the peer's ack).
    pending_request: Option<OpenReply>,
    inbound: mpsc::Sender<Stream>,
    shared: Arc<Shared>,
}

impl<S> Driver<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    async fn run(mut self, closing: CancellationToken) -> Result<(), TunnelError> {
        let outcome = tokio::select! {
            biased;
            () = closing.cancelled() => None,
            result = poll_fn(|cx| self.poll_active(cx)) => Some(result),
        };
        self.shared.ended.cancel();
        if let Some(result) = outcome {
            return result;
        }
        let deadline = Duration::from_millis(SHUTDOWN_TIMEOUT_MS);
        match tokio::time::timeout(deadline, poll_fn(|cx| self.connection.poll_close(cx))).await {
            Ok(result) => result.map_err(mux_error),
            Err(_) => Err(TunnelError::ShutdownTimeout {
                timeout_ms: SHUTDOWN_TIMEOUT_MS,
            }),
        }
    }

    /// Serves open requests and inbound streams until the connection ends.
    fn poll_active(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        self.poll_open_requests(cx);
        loop {
            match self.connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => self.deliver_inbound(cx, stream),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(mux_error(error))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_open_requests(&mut self, cx: &mut Context<'_>) {
        loop {
            let reply = match self.pending_request.take() {
                Some(reply) => reply,
                None => match self.requests.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => reply,
                    Poll::Ready(None) | Poll::Pending => return,
                },
            };
            if reply.is_closed() {
                continue;
            }
            if self.shared.streams_live.load(Ordering::Relaxed) >= STREAMS_MAX {
                let _ = reply.send(Err(TunnelError::TooManyStreams {
                    streams_max: STREAMS_MAX,
                }));
                continue;
            }
            match self.connection.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    // A requester that gave up drops the stream, which resets it.
                    let _ = reply.send(result.map_err(mux_error));
                }
                Poll::Pending => {
                    self.pending_request = Some(reply);
                    return;
                }
            }
        }
    }

    fn deliver_inbound(&mut self, cx: &mut Context<'_>, mut stream: yamux::Stream) {
        // Acknowledge at once with an empty frame, so the opener's count of streams waiting
        // for an answer (yamux allows 256) drops now rather than at our first write. The new
        // stream's queue is empty, so this cannot wait; were it to, the ack would go later.
        let _ = futures_io::AsyncWrite::poll_write(Pin::new(&mut stream), cx, &[]);
        if self.shared.streams_live.load(Ordering::Relaxed) >= STREAMS_MAX {
            tracing::warn!(
                streams_max = STREAMS_MAX,
                "tunnel stream refused: too many streams"
            );
            return; // dropping it resets it
        }
        let stream = Stream::new(stream, &self.shared);
        if let Err(error) = self.inbound.try_send(stream) {
            tracing::warn!(
                queue_len = INBOUND_QUEUE_LEN,
                "tunnel stream refused: {error}"
            );
        }
    }
}

/// One byte stream through the tunnel. Shutting down the write half sends end of file to the
/// peer; dropping the stream resets it. Once the session is over, reads and writes fail with
/// `ConnectionAborted` (buffered data is still read first).
pub struct Stream {
    inner: yamux::Stream,
    /// One wait per direction: the halves of a split stream are polled by different tasks,
    /// and one future keeps only the waker that polled it last.
    read_ended: Pin<Box<WaitForCancellationFutureOwned>>,
    write_ended: Pin<Box<WaitForCancellationFutureOwned>>,
    shared: Arc<Shared>,
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.inner.id())
            .finish_non_exhaustive()
    }
}

impl Stream {
    fn new(inner: yamux::Stream, shared: &Arc<Shared>) -> Self {
        shared.streams_live.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            read_ended: Box::pin(shared.ended.clone().cancelled_owned()),
            write_ended: Box::pin(shared.ended.clone().cancelled_owned()),
            shared: Arc::clone(shared),
        }
    }

    /// yamux's answer, except that once the session is over every error and every wait is
    /// `ConnectionAborted`: yamux then reports `WriteZero` or waits forever.
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        direction: Direction,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let ended = match direction {
            Direction::Read => &mut self.read_ended,
            Direction::Write => &mut self.write_ended,
        };
        match poll {
            Poll::Ready(Err(_)) if self.shared.ended.is_cancelled() => Poll::Ready(Err(aborted())),
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => match ended.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(aborted())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "tunnel session is over")
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.streams_live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let unfilled = buf.initialize_unfilled();
        let wanted = unfilled.len();
        match futures_io::AsyncRead::poll_read(Pin::new(&mut this.inner), cx, unfilled) {
            Poll::Ready(Ok(0)) if wanted > 0 && this.shared.ended.is_cancelled() => {
                Poll::Ready(Err(aborted()))
            }
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            other => this.settle(cx, Direction::Read, other.map_ok(|_| ())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.ended.is_cancelled() {
            return Poll::Ready(Err(aborted()));
        }
        let poll = futures_io::AsyncWrite::poll_write(Pin::new(&mut this.inner), cx, buf);
        this.settle(cx, Direction::Write, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = futures_io::AsyncWrite::poll_flush(Pin::new(&mut this.inner), cx);
        this.settle(cx, Direction::Write, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = futures_io::AsyncWrite::poll_close(Pin::new(&mut this.inner), cx);
        this.settle(cx, Direction::Write, poll)
    }
}
