//! The forced WireGuard VPN: when the user's role has a `[network.vpn]`
//! section, every packet the guest sends to the tunnel's routes (after
//! the packet filter allowed it) is encrypted with WireGuard and sent to
//! the peer, and nothing for those destinations is ever written to the
//! TAP in clear. Plain Rust around boringtun's `noise::Tunn` (no
//! hand-written cryptography), with no KVM, so it is tested on its own.
//!
//! Design choices:
//! - The outer UDP leaves through a host UDP socket that the VMM opens
//!   and connects to the endpoint, so the host's routing decides the
//!   outer link and the connected socket accepts datagrams from the
//!   endpoint only. The guest never sees the outer packets, and cannot
//!   touch them.
//! - The guest reaches the tunnel's routes normally, through its gateway.
//!   The VMM strips the Ethernet header of those frames and, for packets
//!   from the tunnel, writes one from that gateway's MAC (learned from
//!   the guest's own tunnel-bound frames) to the guest. ARP for the
//!   gateway is ordinary traffic on the TAP.
//! - No address translation: the guest must own one of the role's tunnel
//!   `addresses` (`--net ...,ip=ADDRESS`, else securevm refuses to start)
//!   and send tunnel traffic from it (`ip route add ROUTE via GATEWAY src
//!   ADDRESS`); tunnel traffic from any other source is dropped and
//!   reported, never sent.
//! - Packets from the tunnel must come from inside its routes and be
//!   addressed to the guest's tunnel address; they then pass the inbound
//!   filter like any frame.
//! - While there is no session, boringtun holds up to 256 packets for
//!   the handshake; handshake silence (wrong keys, unreachable peer) is
//!   reported after 5 s and again every 10 s, never bypassed.
//! - The tunnel is attached to the role's single `--net` device; a VPN
//!   role with several devices is refused, and a role without devices
//!   needs no tunnel.
//!
//! Known limits: the guest's ARP for its gateway may name the tunnel
//! address as its sender (Linux's default `arp_announce`), which shows
//! that address, not any tunnel traffic, on the local link; inner packets
//! larger than the outer link's MTU minus 60 bytes are sent as fragmented
//! UDP by the host (give the guest's tunnel route an MTU of 1420); packets
//! from the tunnel are dropped until the guest has sent through its
//! gateway once (its MAC is learned from that); the tunnel's counters are
//! not yet exported to the control API.

mod key;
mod link;
mod report;
mod setup;
mod tunnel;

pub use key::{load_private_key, PrivateKey, VpnKeyError};
pub use link::{VpnLink, VpnLinkError};
pub use report::{VpnEvent, REPORT_INTERVAL};
pub use setup::{plan_vpn, VpnPlan, VpnSetupError};
pub use tunnel::{
    DatagramSink, Routing, TunnelConfig, TunnelStats, VpnTunnel, HANDSHAKE_REPORT_AFTER,
    MAX_FRAME_LEN, MAX_PACKET_LEN,
};
