//! The host side of a forced VPN on a virtio-net device: a UDP socket
//! connected to the WireGuard endpoint, a periodic timer that drives
//! WireGuard's timers, and the [`VpnTunnel`] between them and the guest's
//! frames. Everything is opened before the device's I/O thread starts, so
//! the thread only reads and writes (read(2)/write(2), the calls its
//! seccomp filter already allows for the TAP). The connected socket only
//! ever receives datagrams from the endpoint.
//!
//! Events (handshake failures, refused datagrams) are printed on stderr as
//! `securevm: network: vpn: ...`, rate-limited by the tunnel.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::vpn::{DatagramSink, PrivateKey, Routing, TunnelConfig, VpnTunnel};

/// How often WireGuard's timers are looked at (what boringtun's own
/// device does): handshake retries and keepalives are due in seconds.
const TIMER_PERIOD: Duration = Duration::from_millis(250);
/// The largest UDP payload.
const MAX_DATAGRAM_LEN: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum VpnLinkError {
    #[error("cannot open a UDP socket towards the VPN endpoint {endpoint}: {source}")]
    Socket {
        endpoint: SocketAddr,
        source: io::Error,
    },
    #[error("cannot create the VPN timer: {0}")]
    Timer(io::Error),
}

/// What reading the endpoint's socket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelRead {
    /// A frame for the guest of this length.
    Frame(usize),
    /// A datagram that carried nothing for the guest (a handshake, a
    /// keepalive, or one that was refused).
    Nothing,
    /// No datagram waiting.
    Empty,
}

/// The connected socket as the tunnel's way out.
struct OuterSocket(UdpSocket);

impl DatagramSink for OuterSocket {
    fn send_datagram(&mut self, datagram: &[u8]) -> io::Result<()> {
        // SAFETY: reads `datagram.len()` bytes of `datagram`; the fd is the
        // socket this struct owns.
        let sent =
            unsafe { libc::write(self.0.as_raw_fd(), datagram.as_ptr().cast(), datagram.len()) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl OuterSocket {
    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: writes at most `buffer.len()` bytes into `buffer`; fd as above.
        let read =
            unsafe { libc::read(self.0.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        usize::try_from(read).map_err(|_| io::Error::last_os_error())
    }
}

pub struct VpnLink {
    tunnel: VpnTunnel,
    socket: OuterSocket,
    timer: TimerFd,
    datagram: Vec<u8>,
}

/// The link as the device and its worker share it.
pub type SharedVpnLink = Arc<Mutex<VpnLink>>;

impl VpnLink {
    /// Opens the socket towards `config.endpoint` and starts the timer.
    pub fn open(config: TunnelConfig, key: PrivateKey) -> Result<Self, VpnLinkError> {
        let endpoint = config.endpoint;
        let socket_error = |source| VpnLinkError::Socket { endpoint, source };
        let local: SocketAddr = match endpoint {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(socket_error)?;
        socket.connect(endpoint).map_err(socket_error)?;
        socket.set_nonblocking(true).map_err(socket_error)?;
        let timer_error = |e: vmm_sys_util::errno::Error| VpnLinkError::Timer(e.into());
        let mut timer = TimerFd::new().map_err(timer_error)?;
        timer
            .reset(TIMER_PERIOD, Some(TIMER_PERIOD))
            .map_err(timer_error)?;
        set_nonblocking(timer.as_raw_fd()).map_err(VpnLinkError::Timer)?;
        Ok(Self {
            tunnel: VpnTunnel::new(config, key),
            socket: OuterSocket(socket),
            timer,
            datagram: vec![0u8; MAX_DATAGRAM_LEN],
        })
    }

    /// Readable when the endpoint sent something.
    pub fn socket_fd(&self) -> RawFd {
        self.socket.0.as_raw_fd()
    }

    /// Readable every [`TIMER_PERIOD`].
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// A frame the guest sent and the filter allowed.
    pub fn outbound(&mut self, frame: &[u8]) -> Routing {
        let routing = self
            .tunnel
            .outbound(frame, &mut self.socket, Instant::now());
        self.print_events();
        routing
    }

    /// Reads one datagram from the endpoint; a frame for the guest lands
    /// at the start of `frame_out`.
    pub fn receive_frame(&mut self, frame_out: &mut [u8]) -> TunnelRead {
        let len = match self.socket.receive(&mut self.datagram) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TunnelRead::Empty,
            Err(e) => {
                // An ICMP error for an earlier datagram (e.g. the port is
                // closed): the handshake report will tell the user.
                log::debug!("vpn: the endpoint's socket reported: {e}");
                return TunnelRead::Nothing;
            }
        };
        let frame = self.tunnel.inbound(
            &self.datagram[..len],
            frame_out,
            &mut self.socket,
            Instant::now(),
        );
        self.print_events();
        frame.map_or(TunnelRead::Nothing, TunnelRead::Frame)
    }

    /// The timer fired: run WireGuard's timers.
    pub fn on_timer(&mut self) {
        // Only the expiry count is read; WouldBlock means another wake-up
        // drained it.
        let _ = self.timer.wait();
        self.tunnel.tick(&mut self.socket, Instant::now());
        self.print_events();
    }

    fn print_events(&mut self) {
        while let Some(event) = self.tunnel.take_event() {
            crate::notice!("securevm: network: {event}");
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
