//! The kernel's uevent socket (`NETLINK_KOBJECT_UEVENT`, multicast group
//! 1), read without udev.
//!
//! Any local process may send a datagram to the socket's port id, so only
//! datagrams proven to come from the kernel are parsed: the sender's
//! netlink port id must be 0 and the `SCM_CREDENTIALS` the kernel attaches
//! must say uid 0. Everything else (other senders, truncated or
//! unparseable datagrams) is dropped, counted, and logged at debug level
//! at most once a second. When the receive buffer overflowed (`ENOBUFS`)
//! events were lost and the caller must rescan.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::uevent::{parse_uevent, Uevent, MAX_DATAGRAM};

/// The kernel's multicast group for uevents (udevd re-broadcasts on 2).
const KERNEL_GROUP: u32 = 1;
/// Receive buffer asked for: a burst of uevents (a USB hub with several
/// sticks, a card reader's LUNs) must not overflow it.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;
/// Minimum time between two debug lines about dropped datagrams.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What [`Monitor::next`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    Uevent(Uevent),
    Timeout,
    /// The receive buffer overflowed: events were lost, rescan.
    Overflow,
}

/// A bound `NETLINK_KOBJECT_UEVENT` socket.
#[derive(Debug)]
pub struct Monitor {
    fd: OwnedFd,
    dropped: u64,
    last_drop_log: Option<Instant>,
    buffer: Vec<u8>,
}

/// Why a received datagram is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotKernel,
    Truncated,
    Unparseable,
}

impl Monitor {
    /// Opens and binds the socket to the kernel's uevent group.
    pub fn open() -> io::Result<Monitor> {
        // SAFETY: socket() takes no pointers; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor socket() just returned, owned by
        // nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Larger buffer first (the forced size ignores rmem_max but needs
        // CAP_NET_ADMIN); a smaller one still works, just overflows sooner.
        if set_int_option(&fd, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER).is_err() {
            if let Err(err) = set_int_option(&fd, libc::SO_RCVBUF, RECEIVE_BUFFER) {
                log::warn!("removable: cannot enlarge the uevent receive buffer: {err}");
            }
        }
        set_int_option(&fd, libc::SO_PASSCRED, 1)?;
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = sa_family(libc::AF_NETLINK);
        addr.nl_groups = KERNEL_GROUP;
        // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                socklen_of::<libc::sockaddr_nl>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Monitor {
            fd,
            dropped: 0,
            last_drop_log: None,
            buffer: vec![0; MAX_DATAGRAM],
        })
    }

    /// Waits up to `timeout` for the next kernel uevent. Datagrams that
    /// are not the kernel's or do not parse are dropped and waiting goes
    /// on until the deadline, however many keep coming: any local process
    /// can send them, and the caller must get its turn to stop.
    pub fn next(&mut self, timeout: Duration) -> io::Result<MonitorEvent> {
        let deadline = Instant::now().checked_add(timeout);
        let mut first = true;
        loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !first && remaining == Some(Duration::ZERO) {
                return Ok(MonitorEvent::Timeout);
            }
            first = false;
            if !self.wait_readable(remaining)? {
                return Ok(MonitorEvent::Timeout);
            }
            match self.receive() {
                Ok(Some(Ok(event))) => return Ok(MonitorEvent::Uevent(event)),
                Ok(Some(Err(reason))) => self.record_drop(reason),
                // Readable turned out empty (another reader, a race): wait on.
                Ok(None) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(MonitorEvent::Overflow)
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The socket, for callers that poll several descriptors.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Datagrams dropped since opening.
    pub fn dropped_datagrams(&self) -> u64 {
        self.dropped
    }

    /// The netlink port id the kernel gave the socket.
    pub fn port_id(&self) -> io::Result<u32> {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        let mut len = socklen_of::<libc::sockaddr_nl>();
        // SAFETY: `addr` and `len` are valid for writes and `len` holds
        // the size of `addr`.
        let ret =
            unsafe { libc::getsockname(self.fd.as_raw_fd(), (&raw mut addr).cast(), &raw mut len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(addr.nl_pid)
    }

    /// Polls for input; `None` waits forever. Retries on EINTR.
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let millis = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Round up so a sub-millisecond wait is not a busy loop.
                    let millis = left.as_micros().div_ceil(1000);
                    libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX)
                }
            };
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, count 1.
            let ret = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            return Ok(ret > 0);
        }
    }

    /// Receives one datagram without blocking. `Ok(None)`: nothing there.
    fn receive(&mut self) -> io::Result<Option<Result<Uevent, Refusal>>> {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut sender: libc::sockaddr_nl = unsafe { mem::zeroed() };
        // u64 elements keep the buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: self.buffer.as_mut_ptr().cast(),
            iov_len: self.buffer.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&raw mut sender).cast();
        msg.msg_namelen = socklen_of::<libc::sockaddr_nl>();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        let len = loop {
            // SAFETY: every pointer in `msg` points to a live buffer of
            // the length stated next to it.
            let ret =
                unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
            if ret >= 0 {
                break ret.unsigned_abs();
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(err),
            }
        };
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Ok(Some(Err(Refusal::Truncated)));
        }
        if sender.nl_pid != 0 || !sent_by_root(&msg) {
            return Ok(Some(Err(Refusal::NotKernel)));
        }
        let Some(datagram) = self.buffer.get(..len) else {
            return Ok(Some(Err(Refusal::Truncated)));
        };
        Ok(Some(
            parse_uevent(datagram).map_err(|_| Refusal::Unparseable),
        ))
    }

    fn record_drop(&mut self, reason: Refusal) {
        self.dropped = self.dropped.saturating_add(1);
        let now = Instant::now();
        if self
            .last_drop_log
            .is_none_or(|last| now.duration_since(last) >= DROP_LOG_INTERVAL)
        {
            self.last_drop_log = Some(now);
            log::debug!(
                "removable: dropped a uevent datagram ({reason:?}); {} dropped so far",
                self.dropped
            );
        }
    }
}

/// Whether the message carries SCM_CREDENTIALS with uid 0.
fn sent_by_root(msg: &libc::msghdr) -> bool {
    // SAFETY: `msg` was filled by recvmsg, so its control pointer and
    // length describe the received control data.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header lying
        // within the control buffer.
        let header = unsafe { &*cmsg };
        // SAFETY: CMSG_LEN only computes a length.
        let needed = unsafe { libc::CMSG_LEN(socklen_of::<libc::ucred>()) };
        if header.cmsg_level == libc::SOL_SOCKET
            && header.cmsg_type == libc::SCM_CREDENTIALS
            && header.cmsg_len >= needed as usize
        {
            // SAFETY: the header says its data holds a whole ucred; the
            // data may be unaligned, hence read_unaligned.
            let cred: libc::ucred =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            return cred.uid == 0;
        }
        // SAFETY: `cmsg` is a header within `msg`'s control buffer.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    false
}

fn set_int_option(fd: &OwnedFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and the length is its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size of `T` as a socklen_t; the types passed are a few bytes.
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).expect("socket structures are small")
}

fn sa_family(family: libc::c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(family).expect("address families fit sa_family_t")
}

#[cfg(test)]
mod tests;
