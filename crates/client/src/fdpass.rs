//! Both ends of ssh's `ProxyUseFdpass`: instead of relaying a connection's bytes, a proxy
//! command hands the connected socket itself to ssh over its standard output, a Unix socket, as
//! one byte carrying the descriptor, and exits. `flotilla connect --fdpass` passes; the tests
//! and the tunnel benchmark receive, as ssh does.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Whether `fd` is a Unix socket, the only kind a descriptor can be passed over.
pub fn is_unix_socket(fd: impl AsFd) -> bool {
    rustix::net::getsockname(fd)
        .is_ok_and(|address| address.address_family() == AddressFamily::UNIX)
}

/// Passes `socket` over the Unix socket `unix`. The receiver then holds its own copy; the
/// caller's closes when dropped.
pub fn pass(unix: impl AsFd, socket: impl AsFd) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let passed = [socket.as_fd()];
    control.push(SendAncillaryMessage::ScmRights(&passed));
    let byte = [io::IoSlice::new(&[0])];
    rustix::net::sendmsg(unix, &byte, &mut control, SendFlags::empty())?;
    Ok(())
}

/// The descriptor passed over the Unix socket `unix` (waits for it).
pub fn receive(unix: impl AsFd) -> io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let mut slices = [io::IoSliceMut::new(&mut byte)];
    rustix::net::recvmsg(unix, &mut slices, &mut control, RecvFlags::empty())?;
    control
        .drain()
        .find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut descriptors) => descriptors.next(),
            _ => None,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no descriptor came"))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_passed_socket_is_the_same_connection() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (mut near, far) = UnixStream::pair().unwrap();
        assert!(is_unix_socket(&theirs));
        pass(&theirs, &far).unwrap();
        drop(far);
        let mut received = UnixStream::from(receive(&ours).unwrap());
        near.write_all(b"same").unwrap();
        let mut heard = [0u8; 4];
        received.read_exact(&mut heard).unwrap();
        assert_eq!(&heard, b"same");
    }

    #[test]
    fn a_file_is_no_unix_socket() {
        assert!(!is_unix_socket(std::fs::File::open("/dev/null").unwrap()));
    }
}
