//! The upgrade to a tunnelled connection over a TCP socket of the caller's own, so the socket
//! itself can be handed to another program once the coordinator says `101`: ssh's
//! `ProxyUseFdpass` takes it, and no process of ours then relays ssh's bytes.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Client, ClientError, REQUEST_TIMEOUT_MS, api_error};

/// The longest answer head read before giving up on the coordinator.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// The most of a refusal's body read (the JSON error).
const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;
/// What one look at the socket may take in: the head is read without consuming a byte past
/// its end, which belongs to the node (an SSH server speaks first).
const PEEK_BYTES: usize = 2048;
const HEAD_END: &[u8] = b"\r\n\r\n";

impl Client {
    /// [`Client::upgrade`] over a TCP connection of this call's own; the socket comes back
    /// right after the answer's head, so the node's first bytes are still in it. Only for a
    /// plain `http://` coordinator: over TLS the bytes would need this process.
    pub async fn upgrade_socket(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<TcpStream, ClientError> {
        let url = self.url(path);
        let Some((authority, target)) = url
            .strip_prefix("http://")
            .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
        else {
            return Err(ClientError::Unsupported(format!(
                "a connection of its own needs an http:// coordinator URL, not {}",
                self.base_url
            )));
        };
        let mut request = format!(
            "GET /{target} HTTP/1.1\r\nHost: {authority}\r\nConnection: upgrade\r\n\
             Upgrade: {protocol}\r\n"
        );
        if let Some(key) = &self.api_key {
            request.push_str(&format!("Authorization: Bearer {}\r\n", key.expose()));
        }
        request.push_str("\r\n");
        let transport = |error: io::Error| ClientError::Transport {
            url: self.base_url.clone(),
            detail: error.to_string(),
        };
        let limit = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let exchange = async {
            let mut tcp = TcpStream::connect(authority).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(request.as_bytes()).await?;
            let head = read_head(&mut tcp).await?;
            io::Result::Ok((tcp, head))
        };
        let (mut tcp, head) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| transport(io::ErrorKind::TimedOut.into()))?
            .map_err(transport)?;
        let status = status_of(&head).ok_or_else(|| {
            ClientError::Decode(format!(
                "not an HTTP answer: {}",
                String::from_utf8_lossy(&head[..head.len().min(80)])
            ))
        })?;
        if status == 101 {
            return Ok(tcp);
        }
        // Without a length (chunked), the connection may stay open: the status has to do.
        let body_len = content_length(&head).unwrap_or(0);
        let mut body = Vec::new();
        let mut body_reader = (&mut tcp).take(body_len.min(ERROR_BODY_BYTES_MAX) as u64);
        tokio::time::timeout(limit, body_reader.read_to_end(&mut body))
            .await
            .map_err(|_| transport(io::ErrorKind::TimedOut.into()))?
            .map_err(transport)?;
        Err(api_error(status, &body))
    }
}

/// The answer's head, through its blank line, and not a byte more.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut peeked = [0u8; PEEK_BYTES];
    loop {
        let seen = tcp.peek(&mut peeked).await?;
        if seen == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = head_bytes_in(&head, &peeked[..seen]).unwrap_or(seen);
        let start = head.len();
        head.resize(start + take, 0);
        tcp.read_exact(&mut head[start..]).await?;
        if head.ends_with(HEAD_END) {
            return Ok(head);
        }
        if head.len() > HEAD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the answer's head is over {HEAD_BYTES_MAX} bytes"),
            ));
        }
    }
}

/// How many bytes of `more` end the head that `head` (not yet ended) begins, if they do.
fn head_bytes_in(head: &[u8], more: &[u8]) -> Option<usize> {
    let carried = &head[head.len().saturating_sub(HEAD_END.len() - 1)..];
    let joined = [carried, more].concat();
    joined
        .windows(HEAD_END.len())
        .position(|window| window == HEAD_END)
        .map(|at| at + HEAD_END.len() - carried.len())
}

/// The status code of an HTTP/1 answer's head.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&byte| byte == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// The `Content-Length` of an answer's head.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_its_blank_line_even_across_reads() {
        assert_eq!(
            head_bytes_in(b"", b"HTTP/1.1 101 x\r\n\r\nSSH-2.0"),
            Some(18)
        );
        assert_eq!(head_bytes_in(b"HTTP/1.1 101 x\r\n\r", b"\nSSH"), Some(1));
        assert_eq!(head_bytes_in(b"HTTP/1.1 101 x\r", b"\n\r\nab"), Some(3));
        assert_eq!(head_bytes_in(b"HTTP/1.1 101 x", b"\r\nA: b\r\n"), None);
    }

    #[tokio::test]
    async fn a_tls_coordinator_cannot_give_its_socket_away() {
        let client = Client::new("https://coordinator.example", Some("flt_key".into()));
        let refused = client.upgrade_socket("clusters/c/connect", "p").await;
        assert!(
            matches!(refused, Err(ClientError::Unsupported(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn status_and_length_come_from_the_head() {
        let head = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\nContent-Length: 42\r\n\r\n";
        assert_eq!(status_of(head), Some(409));
        assert_eq!(content_length(head), Some(42));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(content_length(b"HTTP/1.1 101 Switching\r\n\r\n"), None);
    }
}
