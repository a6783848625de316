//! The seam between virtio-net and a forced VPN: an allowed frame the
//! [`Tunnel`] takes goes to it instead of the backend (never both), and
//! frames from it join the backend's on the way in, through the same
//! inbound filter. The device knows only this trait; the VPN implements
//! it (`crate::vpn::VpnLink`). Its methods run on the device's I/O
//! thread, so they may only read and write fds opened beforehand.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

/// What reading the tunnel gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelRead {
    /// A frame for the guest of this length.
    Frame(usize),
    /// Something was read that carried nothing for the guest (a
    /// handshake, a keepalive, or a refused datagram).
    Nothing,
    /// Nothing waiting.
    Empty,
}

/// A tunnel the device's frames may take instead of the backend.
pub trait Tunnel: Send {
    /// Readable when [`Tunnel::receive_frame`] has something to read.
    fn socket_fd(&self) -> RawFd;
    /// Readable when [`Tunnel::on_timer`] is due.
    fn timer_fd(&self) -> RawFd;
    /// A frame the guest sent and the filter allowed. `true` when the
    /// tunnel took it (sent, queued or dropped): it must then not reach
    /// the backend.
    fn outbound(&mut self, frame: &[u8]) -> bool;
    /// Reads once from the tunnel; a frame for the guest lands at the
    /// start of `frame_out`.
    fn receive_frame(&mut self, frame_out: &mut [u8]) -> TunnelRead;
    /// The timer fd fired.
    fn on_timer(&mut self);
}

/// The tunnel as the device and its worker share it.
pub(super) type SharedTunnel = Arc<Mutex<Box<dyn Tunnel>>>;
