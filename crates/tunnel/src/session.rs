//! Streams over one tunnel: a small multiplexer on the Noise transport.
//!
//! Every frame is one Noise message: a 9-byte head (`kind: u8`, `stream: u32`, `value: u32`,
//! big-endian) and, for data, the bytes. Kinds: `OPEN` (a new stream, numbered odd by the
//! worker and even by the coordinator), `DATA` (`value`: the byte count), `WINDOW` (`value`:
//! more bytes the peer may send on the stream), `FIN` (the sender sends no more) and `RESET`
//! (the stream is dropped; both directions end).
//!
//! Latency is why this is not yamux: a stream's writer seals and sends its own frames under the
//! session's sealer lock, and the session's one task, which reads, puts a frame's bytes
//! straight into its stream's buffer and wakes the stream's reader. A message crossing a relay
//! then costs one task wake-up, not two.
//!
//! Flow control: each stream may receive [`STREAM_RECEIVE_WINDOW_BYTES`] unread bytes; its
//! reader grants more as it reads (once half a window is read), so one slow reader slows only
//! its own stream. A peer that sends past its window, names a stream it may not open, or sends
//! a frame this side cannot parse ends the session.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::transport::{DirectionKeys, Opener, PLAINTEXT_LEN_MAX, Sealer};
use crate::{
    INBOUND_QUEUE_LEN, SHUTDOWN_TIMEOUT_MS, STREAM_RECEIVE_WINDOW_BYTES, STREAMS_MAX, TunnelError,
};

const KIND_OPEN: u8 = 0;
const KIND_DATA: u8 = 1;
const KIND_WINDOW: u8 = 2;
const KIND_FIN: u8 = 3;
const KIND_RESET: u8 = 4;

/// A frame's head: kind, stream, value.
const FRAME_HEAD_LEN: usize = 9;

/// The most data one frame carries: a whole Noise message less the head.
const DATA_FRAME_BYTES_MAX: usize = PLAINTEXT_LEN_MAX - FRAME_HEAD_LEN;

/// Sealed bytes queued for the connection past which writers wait (bounds the sealer's memory
/// when the connection is slower than the streams).
const SEND_QUEUE_BYTES_MAX: usize = 4 * 64 * 1024;

/// A drained stream buffer this large or larger goes to the session's spare list rather than
/// staying with its stream, so a stream that once moved much holds little while idle.
const IDLE_BUFFER_BYTES_KEPT: usize = 4 * 1024;

/// Drained stream buffers a session keeps for the next data: a busy stream then reuses one
/// rather than allocating (and the allocator faulting in) 64 KiB per frame.
const SPARE_BUFFERS_MAX: usize = 8;

/// The window as a frame value.
const WINDOW: u32 = STREAM_RECEIVE_WINDOW_BYTES as u32;
const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= u32::MAX as usize / 2);

/// Which end of the tunnel this is (it numbers the streams it opens by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The worker, which dialled: odd stream numbers.
    Client,
    /// The coordinator, which accepted: even stream numbers.
    Server,
}

impl Role {
    fn first_stream_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    /// Whether the peer of this side may open stream `id`.
    fn peer_may_open(self, id: u32) -> bool {
        id != 0 && (id % 2 == 1) == (self == Role::Server)
    }
}

fn frame_head(kind: u8, id: u32, value: u32) -> [u8; FRAME_HEAD_LEN] {
    let mut head = [0u8; FRAME_HEAD_LEN];
    head[0] = kind;
    head[1..5].copy_from_slice(&id.to_be_bytes());
    head[5..9].copy_from_slice(&value.to_be_bytes());
    head
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent state (each critical section
    // is a few field updates), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "tunnel session is over")
}

/// The sending side, shared by every stream: frames are sealed and sent by whoever has them.
struct Writer {
    sealer: Sealer,
    /// Tasks waiting for the queue to drain (writers past [`SEND_QUEUE_BYTES_MAX`], flushes).
    waiting: Vec<Waker>,
    /// The session's task, which finishes sends the connection could not take at once.
    driver: Option<Waker>,
    failed: bool,
}

impl Writer {
    /// Queues a frame and sends what the connection takes now; the rest is left to the
    /// session's task, woken for it.
    fn send(&mut self, cx: Option<&mut Context<'_>>, head: &[u8], body: &[u8]) -> io::Result<()> {
        self.push(head, body)?;
        self.send_queued(cx)
    }

    /// Seals a frame into the queue; a connection that failed takes none.
    fn push(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(aborted());
        }
        self.sealer.push(head, body).inspect_err(|_| self.fail())
    }

    /// Marks the connection failed, and wakes the session's task to end the session.
    fn fail(&mut self) {
        self.failed = true;
        if let Some(driver) = &self.driver {
            driver.wake_by_ref();
        }
    }

    /// Queues `data` as data frames of stream `id` and sends what the connection takes now.
    fn send_data(&mut self, cx: &mut Context<'_>, id: u32, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(DATA_FRAME_BYTES_MAX) {
            // A chunk is at most a frame's data, which fits a u32.
            self.push(&frame_head(KIND_DATA, id, chunk.len() as u32), chunk)?;
        }
        self.send_queued(Some(cx))
    }

    fn send_queued(&mut self, cx: Option<&mut Context<'_>>) -> io::Result<()> {
        let polled = match cx {
            Some(cx) => self.sealer.poll_send(cx),
            None => Poll::Pending,
        };
        match polled {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(error)) => {
                self.fail();
                Err(error)
            }
            Poll::Pending => {
                if let Some(driver) = &self.driver {
                    driver.wake_by_ref();
                }
                Ok(())
            }
        }
    }

    /// Wakes the tasks waiting for the queue, once it drained.
    fn wake_waiting(&mut self) {
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }

    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiting.push(cx.waker().clone());
        }
    }
}

/// One stream's state, shared by its [`Stream`] and the session's task.
#[derive(Default)]
struct StreamState {
    /// Received bytes; `received[read_from..]` is unread.
    received: Vec<u8>,
    read_from: usize,
    /// Bytes the peer may still send before this side grants more.
    receive_window: u32,
    /// Bytes read since the last grant.
    read_ungranted: u32,
    fin_received: bool,
    /// Bytes this side may still send.
    send_credit: u32,
    fin_sent: bool,
    reset: bool,
    aborted: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl StreamState {
    fn new() -> Self {
        Self {
            receive_window: WINDOW,
            send_credit: WINDOW,
            ..Self::default()
        }
    }

    fn wake_both(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        if let Some(writer) = self.writer.take() {
            writer.wake();
        }
    }
}

type StreamRef = Arc<Mutex<StreamState>>;

/// What every stream and opener of one session shares.
struct Shared {
    role: Role,
    /// Cancelled once the tunnel is over, for whatever reason.
    ended: CancellationToken,
    /// Live [`Stream`]s, both directions.
    streams_live: AtomicUsize,
    writer: Mutex<Writer>,
    /// Streams by number, and the next number this side opens.
    streams: Mutex<(HashMap<u32, StreamRef>, u32)>,
    /// Drained stream buffers, empty, for the next data.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    /// An empty buffer with room, from the spare list if it has one.
    fn take_buffer(&self) -> Vec<u8> {
        lock(&self.spare_buffers).pop().unwrap_or_default()
    }

    /// Keeps a drained buffer for the next data, while the spare list has room.
    fn give_buffer(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut spare = lock(&self.spare_buffers);
        if spare.len() < SPARE_BUFFERS_MAX {
            spare.push(buffer);
        }
    }

    /// Sends a frame that carries no data, from a task that may not wait for the connection.
    fn send_control(&self, kind: u8, id: u32, value: u32) {
        let _ = lock(&self.writer).send(None, &frame_head(kind, id, value), &[]);
    }

    /// Ends every stream: reads and writes fail with `ConnectionAborted` from now on.
    fn abort_all(&self) {
        self.ended.cancel();
        let streams: Vec<StreamRef> = lock(&self.streams).0.drain().map(|(_, s)| s).collect();
        for stream in streams {
            let mut state = lock(&stream);
            state.aborted = true;
            state.wake_both();
        }
        let mut writer = lock(&self.writer);
        writer.failed = true;
        writer.wake_waiting();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("role", &self.role)
            .field("streams_live", &self.streams_live)
            .finish_non_exhaustive()
    }
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
    shared: Arc<Shared>,
}

impl Session {
    /// Starts the session over `io` with the handshake's keys. `send_nonce` and
    /// `receive_nonce` are the first unused ones (the handshake's verdict used one).
    pub(crate) fn start<S>(
        io: S,
        noise: snow::StatelessTransportState,
        role: Role,
        (send_nonce, receive_nonce): (u64, u64),
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let noise = Arc::new(noise);
        let (read_half, write_half) = tokio::io::split(io);
        let shared = Arc::new(Shared {
            role,
            ended: CancellationToken::new(),
            streams_live: AtomicUsize::new(0),
            writer: Mutex::new(Writer {
                sealer: Sealer::new(
                    Box::pin(write_half),
                    DirectionKeys {
                        noise: Arc::clone(&noise),
                        nonce: send_nonce,
                    },
                ),
                waiting: Vec::new(),
                driver: None,
                failed: false,
            }),
            streams: Mutex::new((HashMap::new(), role.first_stream_id())),
            spare_buffers: Mutex::new(Vec::new()),
        });
        let closing = CancellationToken::new();
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE_LEN);
        let driver = Driver {
            opener: Opener::new(
                Box::pin(read_half),
                DirectionKeys {
                    noise,
                    nonce: receive_nonce,
                },
            ),
            inbound: inbound_tx,
            shared: Arc::clone(&shared),
        };
        let driver = tokio::spawn(driver.run(closing.clone()));
        Self {
            opener: StreamOpener { shared },
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

    /// Closes the tunnel: open streams fail, queued frames are sent and the connection shut
    /// down, within [`SHUTDOWN_TIMEOUT_MS`]. Returns how the session ended: an error if it
    /// had already failed (a bad frame, a dead peer), `Ok` if it was open or closed cleanly.
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
    /// Streams live on this session now, both directions together.
    pub fn streams_live(&self) -> usize {
        self.shared.streams_live.load(Ordering::Relaxed)
    }

    /// Opens a stream to the peer. Fails at [`STREAMS_MAX`] live streams, or once the session
    /// is over. The peer learns of the stream at once, before any data.
    pub async fn open_stream(&self) -> Result<Stream, TunnelError> {
        let shared = &self.shared;
        if shared.ended.is_cancelled() {
            return Err(TunnelError::Closed);
        }
        if shared.streams_live.load(Ordering::Relaxed) >= STREAMS_MAX {
            return Err(TunnelError::TooManyStreams {
                streams_max: STREAMS_MAX,
            });
        }
        let state: StreamRef = Arc::new(Mutex::new(StreamState::new()));
        let id = {
            let mut streams = lock(&shared.streams);
            let (map, next_id) = &mut *streams;
            // Numbers wrap after 2^31 opens; a number still in use is skipped.
            while map.contains_key(next_id) || *next_id == 0 {
                *next_id = next_id.wrapping_add(2);
            }
            let id = *next_id;
            *next_id = next_id.wrapping_add(2);
            map.insert(id, Arc::clone(&state));
            id
        };
        let stream = Stream::new(id, state, shared);
        let head = frame_head(KIND_OPEN, id, 0);
        // Sent from this task at once: the peer learns of the stream before any data.
        let sent =
            std::future::poll_fn(|cx| Poll::Ready(lock(&shared.writer).send(Some(cx), &head, &[])))
                .await;
        match sent {
            Ok(()) => Ok(stream),
            Err(_) => Err(TunnelError::Closed),
        }
    }
}

/// The session's task: reads frames and hands them to their streams; finishes sends the
/// connection could not take at once; keeps the connection alive.
struct Driver {
    opener: Opener,
    inbound: mpsc::Sender<Stream>,
    shared: Arc<Shared>,
}

/// Sends what is queued and ends the connection, within [`SHUTDOWN_TIMEOUT_MS`].
async fn shut_down(shared: &Shared) -> Result<(), TunnelError> {
    let deadline = Duration::from_millis(SHUTDOWN_TIMEOUT_MS);
    let shutdown = std::future::poll_fn(|cx| lock(&shared.writer).sealer.poll_shutdown(cx));
    match tokio::time::timeout(deadline, shutdown).await {
        Ok(result) => result.map_err(TunnelError::Io),
        Err(_) => Err(TunnelError::ShutdownTimeout {
            timeout_ms: SHUTDOWN_TIMEOUT_MS,
        }),
    }
}

/// Why the peer's frames end the session.
fn protocol_error(what: &'static str) -> TunnelError {
    TunnelError::Protocol { what }
}

impl Driver {
    async fn run(mut self, closing: CancellationToken) -> Result<(), TunnelError> {
        let outcome = tokio::select! {
            biased;
            () = closing.cancelled() => None,
            result = std::future::poll_fn(|cx| self.poll_active(cx)) => Some(result),
        };
        self.shared.abort_all();
        let result = match outcome {
            Some(result) => result,
            None => shut_down(&self.shared).await,
        };
        lock(&self.shared.writer).sealer.release();
        result
    }

    /// Serves the connection until it ends: `Ok` when the peer closed it cleanly.
    fn poll_active(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        if let Err(error) = self.poll_send(cx) {
            return Poll::Ready(Err(TunnelError::Io(error)));
        }
        loop {
            let frame = match self.opener.poll_next(cx) {
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(TunnelError::Io(error))),
                Poll::Pending => return Poll::Pending,
            };
            let (head, body) = frame
                .split_first_chunk::<FRAME_HEAD_LEN>()
                .ok_or_else(|| protocol_error("a frame shorter than its head"))?;
            let kind = head[0];
            let id = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let value = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
            let inbound = deliver(&self.shared, kind, id, value, body)?;
            if let Some(stream) = inbound {
                self.accept(stream);
            }
        }
    }

    /// Finishes queued sends, and queues a keepalive when one is due.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut writer = lock(&self.shared.writer);
        if writer.failed {
            return Err(aborted());
        }
        if !writer
            .driver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            writer.driver = Some(cx.waker().clone());
        }
        writer.sealer.poll_keepalive(cx)?;
        if writer.sealer.unsent_bytes() > 0 || !writer.waiting.is_empty() {
            match writer.sealer.poll_send(cx) {
                Poll::Ready(Ok(())) => writer.wake_waiting(),
                Poll::Ready(Err(error)) => {
                    writer.failed = true;
                    return Err(error);
                }
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Hands a stream the peer opened to [`Session::accept_stream`], or resets it when this
    /// side has [`STREAMS_MAX`] or the queue is full.
    fn accept(&mut self, stream: Stream) {
        if self.shared.streams_live.load(Ordering::Relaxed) > STREAMS_MAX {
            tracing::warn!(
                streams_max = STREAMS_MAX,
                "tunnel stream refused: too many streams"
            );
            return; // dropping it resets it
        }
        if let Err(error) = self.inbound.try_send(stream) {
            tracing::warn!(
                queue_len = INBOUND_QUEUE_LEN,
                "tunnel stream refused: {error}"
            );
        }
    }
}

/// Applies one frame from the peer; a stream it opened comes back for acceptance.
fn deliver(
    shared: &Arc<Shared>,
    kind: u8,
    id: u32,
    value: u32,
    body: &[u8],
) -> Result<Option<Stream>, TunnelError> {
    if kind == KIND_OPEN {
        return open_inbound(shared, id).map(Some);
    }
    if kind > KIND_RESET {
        return Err(protocol_error("a frame of an unknown kind"));
    }
    let Some(state) = lock(&shared.streams).0.get(&id).cloned() else {
        // A stream this side already dropped (and reset): its late frames mean nothing.
        return Ok(None);
    };
    let mut state = lock(&state);
    match kind {
        KIND_DATA => {
            if value as usize != body.len() || body.len() > state.receive_window as usize {
                return Err(protocol_error("data past the stream's window"));
            }
            if state.fin_received {
                return Err(protocol_error("data after the stream's end"));
            }
            state.receive_window -= value;
            // What was read goes first, so the buffer holds at most a window of unread bytes.
            if state.read_from > 0 {
                let read = state.read_from;
                state.received.drain(..read);
                state.read_from = 0;
            }
            if state.received.capacity() == 0 {
                state.received = shared.take_buffer();
            }
            state.received.extend_from_slice(body);
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
        KIND_WINDOW => {
            state.send_credit = state
                .send_credit
                .checked_add(value)
                .filter(|credit| *credit <= 2 * WINDOW)
                .ok_or_else(|| protocol_error("a window grant past the window"))?;
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
        }
        KIND_FIN => {
            state.fin_received = true;
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
        _ => {
            state.reset = true;
            state.wake_both();
            drop(state);
            lock(&shared.streams).0.remove(&id);
        }
    }
    Ok(None)
}

/// A stream the peer opens.
fn open_inbound(shared: &Arc<Shared>, id: u32) -> Result<Stream, TunnelError> {
    if !shared.role.peer_may_open(id) {
        return Err(protocol_error("a stream number the peer may not open"));
    }
    let state: StreamRef = Arc::new(Mutex::new(StreamState::new()));
    let mut streams = lock(&shared.streams);
    if streams.0.contains_key(&id) {
        return Err(protocol_error("a stream opened twice"));
    }
    streams.0.insert(id, Arc::clone(&state));
    drop(streams);
    Ok(Stream::new(id, state, shared))
}

/// One byte stream through the tunnel. Shutting down the write half sends end of file to the
/// peer; dropping the stream resets it. A stream the peer reset reads end of file and fails
/// writes with `BrokenPipe`. Once the session is over, reads and writes fail with
/// `ConnectionAborted` (buffered data is still read first).
pub struct Stream {
    id: u32,
    state: StreamRef,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Stream {
    fn new(id: u32, state: StreamRef, shared: &Arc<Shared>) -> Self {
        shared.streams_live.fetch_add(1, Ordering::Relaxed);
        Self {
            id,
            state,
            shared: Arc::clone(shared),
        }
    }

    /// Sends `data` on this stream from its own task: the connection's back-pressure makes
    /// it wait (`Pending`) only when the session's queue is full.
    fn poll_send_data(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<()>> {
        let mut writer = lock(&self.shared.writer);
        if writer.sealer.unsent_bytes() >= SEND_QUEUE_BYTES_MAX {
            let _ = writer.send_queued(Some(cx));
            if writer.sealer.unsent_bytes() >= SEND_QUEUE_BYTES_MAX {
                writer.wait(cx);
                return Poll::Pending;
            }
        }
        Poll::Ready(writer.send_data(cx, self.id, data))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.streams_live.fetch_sub(1, Ordering::Relaxed);
        let mut state = lock(&self.state);
        let finished = state.fin_sent && state.fin_received;
        let tell_peer = !finished && !state.reset && !state.aborted;
        state.received = Vec::new();
        drop(state);
        lock(&self.shared.streams).0.remove(&self.id);
        if tell_peer {
            self.shared.send_control(KIND_RESET, self.id, 0);
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = lock(&this.state);
        let unread = state.received.len() - state.read_from;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if unread == 0 {
            if state.fin_received || state.reset {
                return Poll::Ready(Ok(()));
            }
            if state.aborted {
                return Poll::Ready(Err(aborted()));
            }
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let taken = unread.min(buf.remaining());
        let from = state.read_from;
        buf.put_slice(&state.received[from..from + taken]);
        state.read_from += taken;
        if state.read_from == state.received.len() {
            state.read_from = 0;
            if state.received.capacity() >= IDLE_BUFFER_BYTES_KEPT {
                this.shared.give_buffer(std::mem::take(&mut state.received));
            } else {
                state.received.clear();
            }
        }
        // `taken` is at most the window, which fits a u32.
        state.read_ungranted += taken as u32;
        let grant = state.read_ungranted;
        let granting = grant >= WINDOW / 2 && !state.fin_received && !state.reset;
        if granting {
            state.receive_window += grant;
            state.read_ungranted = 0;
        }
        drop(state);
        if granting {
            let head = frame_head(KIND_WINDOW, this.id, grant);
            // A failed send fails the session, which this stream's next read reports.
            let _ = lock(&this.shared.writer).send(Some(cx), &head, &[]);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = {
            let mut state = lock(&this.state);
            if state.aborted {
                return Poll::Ready(Err(aborted()));
            }
            if state.reset || state.fin_sent {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if state.send_credit == 0 {
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // A whole buffer in one go (as frames of at most a message each) costs one write
            // to the connection.
            let len = buf.len().min(state.send_credit as usize);
            // Taken now: a frame queued is a frame sent, even if this task waits below.
            state.send_credit -= len as u32;
            len
        };
        match this.poll_send_data(cx, &buf[..len]) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(len)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(aborted())),
            Poll::Pending => {
                lock(&this.state).send_credit += len as u32;
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if lock(&this.state).aborted {
            return Poll::Ready(Err(aborted()));
        }
        let mut writer = lock(&this.shared.writer);
        if writer.failed {
            return Poll::Ready(Err(aborted()));
        }
        if writer.sealer.unsent_bytes() == 0 {
            return Poll::Ready(Ok(()));
        }
        if writer.send_queued(Some(cx)).is_err() {
            return Poll::Ready(Err(aborted()));
        }
        if writer.sealer.unsent_bytes() == 0 {
            return Poll::Ready(Ok(()));
        }
        writer.wait(cx);
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let send_fin = {
            let mut state = lock(&this.state);
            if state.aborted {
                return Poll::Ready(Err(aborted()));
            }
            let send_fin = !state.fin_sent && !state.reset;
            state.fin_sent = true;
            send_fin
        };
        if send_fin {
            let head = frame_head(KIND_FIN, this.id, 0);
            if lock(&this.shared.writer)
                .send(Some(cx), &head, &[])
                .is_err()
            {
                return Poll::Ready(Err(aborted()));
            }
        }
        Pin::new(this).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::{Hello, StaticKeypair, accept, connect};

    /// A connected (coordinator, worker) session pair over an in-memory pipe.
    async fn sessions() -> (Session, Session) {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let server_keys = StaticKeypair::generate().unwrap();
        let worker_keys = StaticKeypair::generate().unwrap();
        let server_public = *server_keys.public();
        let serving = async {
            let (_, _, pending) = accept(server_io, &server_keys).await.unwrap();
            pending.finish().await.unwrap()
        };
        let hello = Hello::new("wrk_test");
        let dialling = connect(client_io, &worker_keys, &server_public, &hello);
        let (server, client) = tokio::join!(serving, dialling);
        (server, client.unwrap())
    }

    /// Sends a frame as the session's peer would, past this side's own checks.
    fn send_raw(session: &Session, kind: u8, id: u32, value: u32, body: &[u8]) {
        let head = frame_head(kind, id, value);
        lock(&session.opener.shared.writer)
            .send(None, &head, body)
            .unwrap();
    }

    async fn ended_by_protocol(session: Session) -> &'static str {
        let ended = tokio::time::timeout(Duration::from_secs(10), session.ended());
        ended.await.expect("the session ends");
        match session.close().await {
            Err(TunnelError::Protocol { what }) => what,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn data_past_a_streams_window_ends_the_session() {
        let (server, client) = sessions().await;
        let mut stream = client.open_stream().await.unwrap();
        stream.write_all(b"x").await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(10), async {
            let mut server = server;
            let accepted = server.accept_stream().await.unwrap();
            (server, accepted)
        });
        let (server, accepted) = accepted.await.unwrap();
        // The whole window and one byte more, sent around the sender's own credit.
        let frame = vec![0u8; DATA_FRAME_BYTES_MAX];
        let mut sent = 1;
        while sent + frame.len() <= STREAM_RECEIVE_WINDOW_BYTES {
            send_raw(&client, KIND_DATA, accepted.id, frame.len() as u32, &frame);
            sent += frame.len();
        }
        let rest = vec![0u8; STREAM_RECEIVE_WINDOW_BYTES - sent + 1];
        send_raw(&client, KIND_DATA, accepted.id, rest.len() as u32, &rest);
        assert_eq!(
            ended_by_protocol(server).await,
            "data past the stream's window"
        );
    }

    #[tokio::test]
    async fn a_stream_number_of_the_other_side_ends_the_session() {
        let (server, client) = sessions().await;
        // The worker numbers its streams odd; an even one is the coordinator's to open.
        send_raw(&client, KIND_OPEN, 2, 0, &[]);
        assert_eq!(
            ended_by_protocol(server).await,
            "a stream number the peer may not open"
        );
    }

    /// A frame as a peer may send it: any kind, a few stream numbers (both sides', zero, the
    /// largest), any value, a short body.
    fn any_frame() -> impl Strategy<Value = (u8, u32, u32, Vec<u8>)> {
        let id = prop_oneof![0u32..6, Just(u32::MAX)];
        let value = prop_oneof![0u32..400, any::<u32>()];
        (
            0u8..7,
            id,
            value,
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_authenticated_frames_never_panic_the_session(
            frames in proptest::collection::vec(any_frame(), 1..12)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (mut server, client) = sessions().await;
                for (kind, id, value, body) in &frames {
                    send_raw(&client, *kind, *id, *value, body);
                }
                let _ = client.close().await;
                // Read whatever streams it accepted, as the worker's side would.
                let reading = async {
                    while let Some(mut stream) = server.accept_stream().await {
                        let mut sink = Vec::new();
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), reading)
                    .await
                    .expect("the session ends");
                // An error or a clean end; a panic would resurface from `close`.
                let _ = server.close().await;
            });
        }
    }

    #[tokio::test]
    async fn a_frame_of_an_unknown_kind_ends_the_session() {
        let (server, client) = sessions().await;
        send_raw(&client, KIND_RESET + 1, 1, 0, &[]);
        assert_eq!(
            ended_by_protocol(server).await,
            "a frame of an unknown kind"
        );
    }
}
