//! What a virtio-net device exchanges frames with. In production a
//! [`super::Tap`]; in tests a datagram socket pair, which keeps frame
//! boundaries like a TAP does and needs no privileges.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// One frame per read or write, each starting with the 12-byte
/// `virtio_net_hdr_v1`. Non-blocking: an empty backend reads
/// `WouldBlock`, and [`NetBackend::fd`] becomes readable when a frame
/// arrives.
pub trait NetBackend: Send + Sync {
    /// The fd to wait on for received frames.
    fn fd(&self) -> RawFd;
    /// Read one frame into `buffer`; returns its length.
    fn read_frame(&self, buffer: &mut [u8]) -> io::Result<usize>;
    /// Send one frame; returns how much was taken.
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize>;
}

/// A connected datagram socket as a backend: the device's end of a pair
/// whose other end plays the host network (tests, or a userspace
/// switch). It uses plain read(2)/write(2), exactly the calls a TAP
/// needs, so the same seccomp filter covers both.
impl NetBackend for UnixDatagram {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn read_frame(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buffer.len()` bytes into `buffer`, from
        // an fd this socket owns for the duration of the call.
        let read =
            unsafe { libc::read(self.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        usize::try_from(read).map_err(|_| io::Error::last_os_error())
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: reads `frame.len()` bytes from `frame`; fd as above.
        let written = unsafe { libc::write(self.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        usize::try_from(written).map_err(|_| io::Error::last_os_error())
    }
}
