//! `flotilla connect`'s pool of standby connections: tunnels to the node's port opened ahead
//! of use (`?standby=true`), so that a new local connection takes one and starts it with one
//! byte instead of waiting for a fresh connection to the coordinator, its checks and the
//! worker's answer. The node is dialled only at that byte, so it sees no connection nobody
//! made, and the coordinator counts only started ones.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientError, Upgraded};
use flotilla_proto::wire::{STANDBY_GO, STANDBY_WAIT_MS_MAX};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

/// A tunnelled connection to the node's port: over an `http://` coordinator the upgraded TCP
/// socket itself (so [`crate::splice`] can carry it inside the kernel), over `https://`
/// the TLS session's.
pub type Remote = tokio_util::either::Either<tokio::net::TcpStream, Upgraded>;

/// Opens a [`Remote`] on `path` (a connect path).
pub async fn open_remote(client: &Client, path: &str) -> Result<Remote, ClientError> {
    let protocol = crate::cluster_commands::TUNNEL_PROTOCOL;
    if client.base_url().starts_with("http://") {
        Ok(Remote::Left(client.upgrade_socket(path, protocol).await?))
    } else {
        Ok(Remote::Right(client.upgrade(path, protocol).await?))
    }
}

/// Standby connections kept ready.
pub const STANDBY_CONNECTIONS: usize = 2;
/// A standby connection is used within this age or replaced: well inside the
/// coordinator's [`STANDBY_WAIT_MS_MAX`], after which it closes one.
const STANDBY_AGE_MS_MAX: u64 = STANDBY_WAIT_MS_MAX / 2;
const _: () = assert!(STANDBY_AGE_MS_MAX < STANDBY_WAIT_MS_MAX);
/// Waits between failed attempts to open one, doubling from the first to the last.
const STANDBY_RETRY_MS_MIN: u64 = 500;
const STANDBY_RETRY_MS_MAX: u64 = 30_000;

/// The ready connections, oldest first.
#[derive(Default)]
pub struct Standby {
    ready: Mutex<VecDeque<(Instant, Remote)>>,
    taken: Notify,
}

impl Standby {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Remote)>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ready connection, started: the oldest one still open and young enough. None when
    /// there is none (the caller opens a connection the usual way).
    pub async fn take(&self) -> Option<Remote> {
        let taken = {
            let mut ready = self.lock();
            std::iter::from_fn(|| ready.pop_front()).find_map(|(opened_at, mut connection)| {
                (young(opened_at) && still_open(&mut connection)).then_some(connection)
            })
        };
        self.taken.notify_one();
        let mut connection = taken?;
        connection.write_all(&[STANDBY_GO]).await.ok()?;
        Some(connection)
    }

    /// Keeps [`STANDBY_CONNECTIONS`] ready on `path` (a connect path with `standby=true`),
    /// replacing those taken and those grown old; forever.
    pub async fn keep(self: Arc<Self>, client: Client, path: String) {
        let mut retry_ms = STANDBY_RETRY_MS_MIN;
        loop {
            let (count, oldest) = self.expire();
            if count < STANDBY_CONNECTIONS {
                match open_remote(&client, &path).await {
                    Ok(connection) => {
                        self.lock().push_back((Instant::now(), connection));
                        retry_ms = STANDBY_RETRY_MS_MIN;
                    }
                    Err(_) => {
                        // The usual path reports why; this one only waits to try again.
                        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
                        retry_ms = (retry_ms * 2).min(STANDBY_RETRY_MS_MAX);
                    }
                }
                continue;
            }
            let renew_at =
                oldest.unwrap_or_else(Instant::now) + Duration::from_millis(STANDBY_AGE_MS_MAX);
            tokio::select! {
                _ = self.taken.notified() => {}
                _ = tokio::time::sleep_until(renew_at.into()) => {}
            }
        }
    }

    /// Drops connections grown old; how many are left, and when the oldest was opened.
    fn expire(&self) -> (usize, Option<Instant>) {
        let mut ready = self.lock();
        ready.retain(|(opened_at, _)| young(*opened_at));
        (ready.len(), ready.front().map(|(opened_at, _)| *opened_at))
    }
}

fn young(opened_at: Instant) -> bool {
    opened_at.elapsed() < Duration::from_millis(STANDBY_AGE_MS_MAX)
}

/// Whether a standby connection is still open. Before its go byte nothing comes from the
/// node's side, so anything to read (its end, in practice) means it is not.
fn still_open<S: AsyncRead + Unpin>(connection: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buffer = ReadBuf::new(&mut byte);
    let mut context = Context::from_waker(Waker::noop());
    Pin::new(connection)
        .poll_read(&mut context, &mut buffer)
        .is_pending()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_with_nothing_to_read_is_open_and_one_whose_end_came_is_not() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        assert!(still_open(&mut ours));
        theirs.shutdown().await.unwrap();
        drop(theirs);
        assert!(!still_open(&mut ours));
    }

    #[test]
    fn connections_grow_old_past_their_age() {
        let now = Instant::now();
        assert!(young(now));
        let old = now.checked_sub(Duration::from_millis(STANDBY_AGE_MS_MAX + 1));
        assert!(old.is_some_and(|old| !young(old)));
    }
}
