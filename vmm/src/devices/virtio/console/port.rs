//! The two ends of the console's one port: [`PortDevice`] for the
//! device's I/O thread, [`PortEnd`] for the host thread that speaks the
//! port's protocol (the display thread, for the clipboard agent).
//!
//! Bytes go through two bounded queues, one each way, so neither side
//! ever holds more than [`PORT_BUFFER_LIMIT`]: a guest that writes faster
//! than the host reads finds its transmit buffers left in the ring until
//! there is room (back-pressure), and a host write takes only what fits.
//! Each side has an eventfd that the other writes when there is
//! something to look at, so neither polls.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sync::lock;

/// Bytes held each way: a full 1 MiB clipboard message with its framing,
/// and room for the small messages around it.
pub const PORT_BUFFER_LIMIT: usize = (1 << 20) + (64 << 10);

struct Buffers {
    /// Written by the guest, not yet read by the host.
    to_host: VecDeque<u8>,
    /// Written by the host, not yet taken by the guest.
    to_guest: VecDeque<u8>,
    /// A program in the guest has the port open (the driver's PORT_OPEN).
    guest_open: bool,
    /// How many times the guest opened the port.
    guest_opens: u64,
}

struct Shared {
    buffers: Mutex<Buffers>,
    /// Readable when the host has something to look at: bytes from the
    /// guest, the guest opened or closed the port, or room to write.
    host_wake: EventFd,
    /// Readable when the device has something to do: bytes to deliver,
    /// or room for the guest's waiting transmit buffers.
    device_wake: EventFd,
}

impl Shared {
    fn buffers(&self) -> MutexGuard<'_, Buffers> {
        lock(&self.buffers)
    }
}

/// Wakes the other side; a full counter (2^64 - 2 writes unread) is
/// still readable, so a failed write loses nothing.
fn wake(fd: &EventFd) {
    let _ = fd.write(1);
}

/// Clears an eventfd's readiness; "nothing to clear" is the same result.
fn clear(fd: &EventFd) {
    let _ = fd.read();
}

/// The port's two ends.
pub fn port_channel() -> io::Result<(PortDevice, PortEnd)> {
    let shared = Arc::new(Shared {
        buffers: Mutex::new(Buffers {
            to_host: VecDeque::new(),
            to_guest: VecDeque::new(),
            guest_open: false,
            guest_opens: 0,
        }),
        host_wake: EventFd::new(EFD_NONBLOCK)?,
        device_wake: EventFd::new(EFD_NONBLOCK)?,
    });
    Ok((
        PortDevice {
            shared: shared.clone(),
        },
        PortEnd { shared },
    ))
}

/// The host's end of the port.
pub struct PortEnd {
    shared: Arc<Shared>,
}

impl PortEnd {
    /// Bytes the guest wrote, up to `buf.len()`; 0 when there are none.
    pub fn read(&self, buf: &mut [u8]) -> usize {
        let mut buffers = self.shared.buffers();
        let count = buf.len().min(buffers.to_host.len());
        for (slot, byte) in buf.iter_mut().zip(buffers.to_host.drain(..count)) {
            *slot = byte;
        }
        if buffers.to_host.is_empty() {
            clear(&self.shared.host_wake);
        }
        if count > 0 {
            // The guest's transmit buffers may be waiting for this room.
            wake(&self.shared.device_wake);
        }
        count
    }

    /// Queues bytes for the guest; returns how many fit (the rest is for
    /// a later call, once the guest has taken some). Nothing is taken
    /// while the guest has the port closed: a conversation starts when
    /// the guest opens it (see [`PortEnd::guest_opens`]).
    pub fn write(&self, bytes: &[u8]) -> usize {
        let mut buffers = self.shared.buffers();
        if !buffers.guest_open {
            return 0;
        }
        let room = PORT_BUFFER_LIMIT - buffers.to_guest.len();
        let count = bytes.len().min(room);
        buffers.to_guest.extend(&bytes[..count]);
        if count > 0 {
            wake(&self.shared.device_wake);
        }
        count
    }

    /// Room for [`PortEnd::write`] now (none while the port is closed).
    pub fn writable(&self) -> usize {
        let buffers = self.shared.buffers();
        if buffers.guest_open {
            PORT_BUFFER_LIMIT - buffers.to_guest.len()
        } else {
            0
        }
    }

    /// Readable (level) when there is something to look at: bytes to
    /// read, a change of [`PortEnd::guest_opens`] or
    /// [`PortEnd::is_guest_open`], or room opened up for writing.
    /// [`PortEnd::read`] clears it once nothing is left to read.
    pub fn readable_fd(&self) -> RawFd {
        self.shared.host_wake.as_raw_fd()
    }

    /// Whether a program in the guest has the port open.
    pub fn is_guest_open(&self) -> bool {
        self.shared.buffers().guest_open
    }

    /// How many times the guest has opened the port: a new value is a new
    /// conversation (the agent restarted), which starts from scratch.
    pub fn guest_opens(&self) -> u64 {
        self.shared.buffers().guest_opens
    }
}

/// The device's end of the port.
pub struct PortDevice {
    shared: Arc<Shared>,
}

impl PortDevice {
    /// Another handle on the same port, for the worker of one activation.
    pub(super) fn clone_for_worker(&self) -> PortDevice {
        PortDevice {
            shared: self.shared.clone(),
        }
    }

    /// The fd the device's I/O thread listens on.
    pub(super) fn wake_fd(&self) -> RawFd {
        self.shared.device_wake.as_raw_fd()
    }

    pub(super) fn clear_wake(&self) {
        clear(&self.shared.device_wake);
    }

    /// Brings the I/O thread back for work it left at its bound.
    pub(super) fn wake_again(&self) {
        wake(&self.shared.device_wake);
    }

    pub(super) fn room_to_host(&self) -> usize {
        PORT_BUFFER_LIMIT - self.shared.buffers().to_host.len()
    }

    /// Hands the guest's bytes to the host; the caller checked the room.
    pub(super) fn push_to_host(&self, bytes: &[u8]) {
        let mut buffers = self.shared.buffers();
        let room = PORT_BUFFER_LIMIT - buffers.to_host.len();
        buffers.to_host.extend(&bytes[..bytes.len().min(room)]);
        wake(&self.shared.host_wake);
    }

    /// Whether the host has bytes for an open port.
    pub(super) fn has_bytes_for_guest(&self) -> bool {
        let buffers = self.shared.buffers();
        buffers.guest_open && !buffers.to_guest.is_empty()
    }

    /// Copies the host's oldest bytes into `buf` without taking them;
    /// returns how many.
    pub(super) fn peek_to_guest(&self, buf: &mut [u8]) -> usize {
        let buffers = self.shared.buffers();
        let count = buf.len().min(buffers.to_guest.len());
        for (slot, byte) in buf.iter_mut().zip(buffers.to_guest.iter()) {
            *slot = *byte;
        }
        count
    }

    /// Drops the `count` oldest bytes for the guest, which it now has.
    pub(super) fn consume_to_guest(&self, count: usize) {
        let mut buffers = self.shared.buffers();
        let count = count.min(buffers.to_guest.len());
        buffers.to_guest.drain(..count);
        if count > 0 {
            wake(&self.shared.host_wake);
        }
    }

    /// The guest opened or closed the port. What the host queued for the
    /// program that closed it must not reach the next one, so it is
    /// dropped.
    pub(super) fn set_guest_open(&self, open: bool) {
        let mut buffers = self.shared.buffers();
        if buffers.guest_open == open {
            return;
        }
        buffers.guest_open = open;
        if open {
            buffers.guest_opens += 1;
        } else {
            buffers.to_guest.clear();
        }
        wake(&self.shared.host_wake);
    }
}

/// The guest's side of a port for tests outside this module, which have
/// no ring to drive it through.
#[cfg(test)]
impl PortDevice {
    pub(crate) fn guest_opens_for_test(&self) {
        self.set_guest_open(true);
    }

    /// Writes what fits of `bytes` as the guest would; returns how much.
    pub(crate) fn guest_writes_for_test(&self, bytes: &[u8]) -> usize {
        let count = bytes.len().min(self.room_to_host());
        self.push_to_host(&bytes[..count]);
        count
    }

    /// Takes every byte the host queued for the guest, as the guest would.
    pub(crate) fn guest_reads_for_test(&self) -> Vec<u8> {
        self.shared.buffers().to_guest.drain(..).collect()
    }
}
