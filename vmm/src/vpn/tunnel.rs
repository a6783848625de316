//! The forced tunnel between the guest's Ethernet frames and WireGuard
//! datagrams, around one boringtun [`Tunn`] (the Noise handshake, the
//! session keys, the replay window and the timers are boringtun's; this
//! file only decides which packets go in and which come out).
//!
//! Out: an IP packet the filter allowed whose destination lies in the
//! tunnel's routes loses its Ethernet header and is encrypted for the
//! peer. Without a session, boringtun keeps it (at most 256 packets) and
//! sends a handshake initiation instead; whatever happens, the packet is
//! consumed here, so the caller never writes it to the TAP in clear.
//!
//! In: a decrypted packet must come from inside the routes (WireGuard's
//! AllowedIPs check, which the noise layer leaves to its user) and be
//! addressed to the guest's tunnel address; it gets an Ethernet header
//! from the guest's gateway (the MAC the guest last sent tunnel traffic
//! to) to the guest, and the caller shows it to the inbound filter.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use ipnet::IpNet;

use super::key::PrivateKey;
use super::report::{EventQueue, VpnEvent};

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// WireGuard's data message header and authentication tag.
const WG_OVERHEAD: usize = 32;
/// The largest WireGuard message that is not data (handshake initiation).
const WG_HANDSHAKE_INIT_LEN: usize = 148;
const WG_MESSAGE_HANDSHAKE_INIT: u8 = 1;
/// How long initiations may go unanswered before we say so: WireGuard's
/// REKEY_TIMEOUT, after which it sends the next one.
pub const HANDSHAKE_REPORT_AFTER: Duration = Duration::from_secs(5);
/// The largest IP packet either direction carries.
pub const MAX_PACKET_LEN: usize = 65_535;
/// Room the caller must give [`VpnTunnel::inbound`] for one frame.
pub const MAX_FRAME_LEN: usize = ETH_HEADER_LEN + MAX_PACKET_LEN;

/// Where the tunnel's datagrams go: the connected UDP socket in the VMM,
/// a peer in tests.
pub trait DatagramSink {
    fn send_datagram(&mut self, datagram: &[u8]) -> io::Result<()>;
}

/// What one tunnel needs, from the role's policy and the guest's `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The peer's UDP address.
    pub endpoint: SocketAddr,
    pub peer_public_key: [u8; 32],
    /// Destinations that only ever go through the tunnel.
    pub routes: Vec<IpNet>,
    /// The guest's own addresses inside the tunnel: the only sources its
    /// tunnel traffic may have, and the only destinations of packets
    /// from the tunnel.
    pub guest_addresses: Vec<IpAddr>,
    pub persistent_keepalive: Option<u16>,
    /// The guest NIC's MAC, the destination of delivered frames.
    pub guest_mac: [u8; 6],
}

/// What became of a frame the guest sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Not for the tunnel: send it on the TAP as usual.
    Direct,
    /// Taken by the tunnel: encrypted and sent, queued for the
    /// handshake, or dropped. It must not be sent anywhere else.
    Tunnelled,
}

/// Packet counts for tests and, later, the control API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    /// Guest packets handed to WireGuard (sent now or queued).
    pub encapsulated: u64,
    /// Packets from the peer delivered towards the guest.
    pub delivered: u64,
    /// Packets for the tunnel dropped here (either direction).
    pub dropped: u64,
    /// Datagrams sent to the endpoint (data, handshakes, keepalives).
    pub datagrams_sent: u64,
}

/// One guest's WireGuard tunnel.
pub struct VpnTunnel {
    tunn: Tunn,
    config: TunnelConfig,
    gateway_mac: Option<[u8; 6]>,
    /// When the first still-unanswered handshake initiation went out.
    handshake_since: Option<Instant>,
    /// Whether "tunnel up" should be said at the next session: at the
    /// start, and after a handshake failure was reported.
    announce_up: bool,
    /// Encryption output; sized for the largest packet once, here.
    scratch: Vec<u8>,
    events: EventQueue,
    stats: TunnelStats,
}

impl VpnTunnel {
    pub fn new(config: TunnelConfig, key: PrivateKey) -> Self {
        let tunn = Tunn::new(
            key.into_secret(),
            PublicKey::from(config.peer_public_key),
            None,
            config.persistent_keepalive,
            0,
            None,
        );
        Self {
            tunn,
            config,
            gateway_mac: None,
            handshake_since: None,
            announce_up: true,
            scratch: vec![0u8; MAX_PACKET_LEN + WG_OVERHEAD],
            events: EventQueue::default(),
            stats: TunnelStats::default(),
        }
    }

    pub fn endpoint(&self) -> SocketAddr {
        self.config.endpoint
    }

    pub fn stats(&self) -> TunnelStats {
        self.stats
    }

    /// The next event to report, oldest first.
    pub fn take_event(&mut self) -> Option<VpnEvent> {
        self.events.take()
    }

    fn is_routed(&self, address: IpAddr) -> bool {
        self.config.routes.iter().any(|net| net.contains(&address))
    }

    /// A frame the guest sent and the filter allowed.
    pub fn outbound(&mut self, frame: &[u8], link: &mut dyn DatagramSink, now: Instant) -> Routing {
        let Some(ethertype) = frame.get(12..ETH_HEADER_LEN) else {
            return Routing::Direct;
        };
        let ethertype = u16::from_be_bytes([ethertype[0], ethertype[1]]);
        if ethertype != ETHERTYPE_IPV4 && ethertype != ETHERTYPE_IPV6 {
            return Routing::Direct;
        }
        let packet = &frame[ETH_HEADER_LEN..];
        let Some(header) = ip_header(packet) else {
            // Unreadable IP is never ours to judge as harmless: if it
            // might be for a route, it must not leave in clear.
            self.stats.dropped += 1;
            return Routing::Tunnelled;
        };
        if !self.is_routed(header.destination) {
            return Routing::Direct;
        }
        if !self.config.guest_addresses.contains(&header.source) {
            self.stats.dropped += 1;
            self.events.report(
                VpnEvent::WrongGuestSource {
                    source: header.source,
                    destination: header.destination,
                },
                now,
            );
            return Routing::Tunnelled;
        }
        if frame[0] & 1 == 0 {
            let mut gateway = [0u8; 6];
            gateway.copy_from_slice(&frame[..6]);
            self.gateway_mac = Some(gateway);
        }
        self.stats.encapsulated += 1;
        let packet = &packet[..header.total_len];
        match self.tunn.encapsulate(packet, &mut self.scratch) {
            TunnResult::WriteToNetwork(datagram) => {
                let is_initiation = datagram.first() == Some(&WG_MESSAGE_HANDSHAKE_INIT)
                    && datagram.len() == WG_HANDSHAKE_INIT_LEN;
                send(
                    link,
                    datagram,
                    self.config.endpoint,
                    &mut self.events,
                    &mut self.stats,
                    now,
                );
                if is_initiation {
                    self.handshake_sent(now);
                }
            }
            TunnResult::Done => {}
            TunnResult::Err(error) => {
                self.stats.dropped += 1;
                self.report_error(error, now);
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
        Routing::Tunnelled
    }

    /// A datagram from the endpoint. Returns the length of the Ethernet
    /// frame for the guest written at the start of `frame_out` (at least
    /// [`MAX_FRAME_LEN`] bytes), if it carried one.
    pub fn inbound(
        &mut self,
        datagram: &[u8],
        frame_out: &mut [u8],
        link: &mut dyn DatagramSink,
        now: Instant,
    ) -> Option<usize> {
        if datagram.is_empty() || frame_out.len() < MAX_FRAME_LEN {
            return None;
        }
        let endpoint = self.config.endpoint;
        let (header_room, packet_room) = frame_out.split_at_mut(ETH_HEADER_LEN);
        let delivered = match self
            .tunn
            .decapsulate(Some(endpoint.ip()), datagram, packet_room)
        {
            TunnResult::WriteToNetwork(reply) => {
                send(
                    link,
                    reply,
                    endpoint,
                    &mut self.events,
                    &mut self.stats,
                    now,
                );
                self.flush_queued(link, now);
                None
            }
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                Some(packet.len())
            }
            TunnResult::Done => None,
            TunnResult::Err(error) => {
                self.report_error(error, now);
                None
            }
        };
        self.note_session(now);
        let len = delivered?;
        self.frame_for_guest(header_room, &packet_room[..len], now)
            .then_some(ETH_HEADER_LEN + len)
    }

    /// WireGuard's timers: retransmitted handshakes, keepalives, rekeying.
    /// Call a few times a second.
    pub fn tick(&mut self, link: &mut dyn DatagramSink, now: Instant) {
        match self.tunn.update_timers(&mut self.scratch) {
            TunnResult::WriteToNetwork(datagram) => {
                let is_initiation = datagram.first() == Some(&WG_MESSAGE_HANDSHAKE_INIT)
                    && datagram.len() == WG_HANDSHAKE_INIT_LEN;
                send(
                    link,
                    datagram,
                    self.config.endpoint,
                    &mut self.events,
                    &mut self.stats,
                    now,
                );
                if is_initiation {
                    self.handshake_sent(now);
                }
            }
            TunnResult::Err(WireGuardError::ConnectionExpired) => self.handshake_expired(now),
            TunnResult::Err(error) => self.report_error(error, now),
            _ => {}
        }
        if let Some(since) = self.handshake_since {
            let waited = now.saturating_duration_since(since);
            if waited >= HANDSHAKE_REPORT_AFTER {
                self.events.report(
                    VpnEvent::HandshakeUnanswered {
                        endpoint: self.config.endpoint,
                        seconds: waited.as_secs(),
                    },
                    now,
                );
                self.announce_up = true;
            }
        }
    }

    /// boringtun gave up (and keeps saying so until new traffic comes):
    /// report it once per failed attempt.
    fn handshake_expired(&mut self, now: Instant) {
        if self.handshake_since.take().is_some() {
            self.events.report(
                VpnEvent::HandshakeGaveUp {
                    endpoint: self.config.endpoint,
                },
                now,
            );
            self.announce_up = true;
        }
    }

    fn handshake_sent(&mut self, now: Instant) {
        if self.handshake_since.is_none() {
            self.handshake_since = Some(now);
        }
    }

    /// After a datagram from the peer: is there a session now?
    fn note_session(&mut self, now: Instant) {
        if self.tunn.time_since_last_handshake().is_none() {
            return;
        }
        self.handshake_since = None;
        if std::mem::take(&mut self.announce_up) {
            self.events.report(
                VpnEvent::TunnelUp {
                    endpoint: self.config.endpoint,
                },
                now,
            );
        }
    }

    /// Sends what boringtun queued while the handshake was pending.
    fn flush_queued(&mut self, link: &mut dyn DatagramSink, now: Instant) {
        while let TunnResult::WriteToNetwork(datagram) =
            self.tunn
                .decapsulate(Some(self.config.endpoint.ip()), &[], &mut self.scratch)
        {
            send(
                link,
                datagram,
                self.config.endpoint,
                &mut self.events,
                &mut self.stats,
                now,
            );
        }
    }

    /// Checks a decrypted packet and writes its Ethernet header; false
    /// drops it.
    fn frame_for_guest(&mut self, header: &mut [u8], packet: &[u8], now: Instant) -> bool {
        let Some(ip) = ip_header(packet).filter(|ip| ip.total_len == packet.len()) else {
            self.stats.dropped += 1;
            return false;
        };
        if !self.is_routed(ip.source) || !self.config.guest_addresses.contains(&ip.destination) {
            self.stats.dropped += 1;
            self.events.report(
                VpnEvent::InnerPacketRefused {
                    source: ip.source,
                    destination: ip.destination,
                },
                now,
            );
            return false;
        }
        let Some(gateway) = self.gateway_mac else {
            self.stats.dropped += 1;
            self.events
                .report(VpnEvent::NoGatewayYet { source: ip.source }, now);
            return false;
        };
        let ethertype = match ip.destination {
            IpAddr::V4(_) => ETHERTYPE_IPV4,
            IpAddr::V6(_) => ETHERTYPE_IPV6,
        };
        header[..6].copy_from_slice(&self.config.guest_mac);
        header[6..12].copy_from_slice(&gateway);
        header[12..14].copy_from_slice(&ethertype.to_be_bytes());
        self.stats.delivered += 1;
        true
    }

    fn report_error(&mut self, error: WireGuardError, now: Instant) {
        self.events.report(
            VpnEvent::DatagramRejected {
                endpoint: self.config.endpoint,
                error: describe(&error).to_string(),
            },
            now,
        );
    }
}

fn send(
    link: &mut dyn DatagramSink,
    datagram: &[u8],
    endpoint: SocketAddr,
    events: &mut EventQueue,
    stats: &mut TunnelStats,
    now: Instant,
) {
    match link.send_datagram(datagram) {
        Ok(()) => stats.datagrams_sent += 1,
        Err(error) => events.report(
            VpnEvent::SendFailed {
                endpoint,
                error: error.to_string(),
            },
            now,
        ),
    }
}

fn describe(error: &WireGuardError) -> &'static str {
    match error {
        WireGuardError::WrongKey | WireGuardError::InvalidMac | WireGuardError::InvalidAeadTag => {
            "it does not authenticate with the configured keys"
        }
        WireGuardError::InvalidTai64nTimestamp | WireGuardError::WrongTai64nTimestamp => {
            "a replayed or stale handshake"
        }
        WireGuardError::InvalidCounter | WireGuardError::DuplicateCounter => {
            "a replayed data packet"
        }
        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => {
            "it belongs to no current session"
        }
        WireGuardError::UnderLoad => "the peer is rate-limited (handshake flood)",
        WireGuardError::ConnectionExpired => "the session expired",
        _ => "not a valid WireGuard message",
    }
}

/// Addresses and length of an IP packet, read from its fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpHeader {
    source: IpAddr,
    destination: IpAddr,
    /// The packet's length by its header (Ethernet padding excluded).
    total_len: usize,
}

fn ip_header(packet: &[u8]) -> Option<IpHeader> {
    let version = packet.first()? >> 4;
    let (source, destination, total_len) = match version {
        4 => {
            let header = packet.get(..20)?;
            let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let source: [u8; 4] = header[12..16].try_into().ok()?;
            let destination: [u8; 4] = header[16..20].try_into().ok()?;
            (IpAddr::from(source), IpAddr::from(destination), total)
        }
        6 => {
            let header = packet.get(..40)?;
            let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
            let source: [u8; 16] = header[8..24].try_into().ok()?;
            let destination: [u8; 16] = header[24..40].try_into().ok()?;
            (
                IpAddr::from(source),
                IpAddr::from(destination),
                40 + payload,
            )
        }
        _ => return None,
    };
    let minimum = if version == 4 { 20 } else { 40 };
    (total_len >= minimum && total_len <= packet.len()).then_some(IpHeader {
        source,
        destination,
        total_len,
    })
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
