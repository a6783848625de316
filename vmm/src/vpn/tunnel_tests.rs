//! The tunnel against a second boringtun `Tunn` playing the peer: the
//! handshake, encapsulation of routed packets only, the checks on what
//! comes out of the tunnel, and that nothing leaves in clear meanwhile.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::net::Ipv4Addr;

use boringtun::x25519::StaticSecret;

use super::*;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_CLEAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const GUEST_TUNNEL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const SERVICE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const MARKER: &[u8] = b"E2E-VPN-SECRET-PAYLOAD";

/// Datagrams "sent" to the endpoint.
#[derive(Default)]
struct Wire(Vec<Vec<u8>>);

impl DatagramSink for Wire {
    fn send_datagram(&mut self, datagram: &[u8]) -> io::Result<()> {
        self.0.push(datagram.to_vec());
        Ok(())
    }
}

impl Wire {
    fn take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.0)
    }

    fn carries_marker(&self) -> bool {
        self.0
            .iter()
            .any(|d| d.windows(MARKER.len()).any(|w| w == MARKER))
    }
}

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn public_of(secret: [u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(secret)).as_bytes()
}

/// Our tunnel (machine key 1) and the peer (key 2) that knows it.
fn pair(peer_key_in_policy: [u8; 32]) -> (VpnTunnel, Tunn) {
    let config = TunnelConfig {
        endpoint: "198.51.100.2:51820".parse().unwrap(),
        peer_public_key: peer_key_in_policy,
        routes: vec!["203.0.113.0/24".parse().unwrap()],
        guest_addresses: vec![IpAddr::V4(GUEST_TUNNEL)],
        persistent_keepalive: None,
        guest_mac: GUEST_MAC,
    };
    let ours = VpnTunnel::new(config, PrivateKey::from_bytes(key(1)));
    let peer = Tunn::new(
        StaticSecret::from(key(2)),
        PublicKey::from(public_of(key(1))),
        None,
        None,
        7,
        None,
    );
    (ours, peer)
}

fn ipv4_udp(source: Ipv4Addr, destination: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&7000u16.to_be_bytes());
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

fn frame(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut frame = GATEWAY_MAC.to_vec();
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(packet);
    frame
}

/// Runs the handshake the first routed packet starts, and hands the peer
/// what our side sent once the session existed (the keepalive that
/// confirms the session, and the queued packets); returns those packets
/// as the peer decrypted them.
fn handshake(ours: &mut VpnTunnel, peer: &mut Tunn, wire: &mut Wire, now: Instant) -> Vec<Vec<u8>> {
    let sent = wire.take();
    assert_eq!(sent.len(), 1, "one handshake initiation");
    assert_eq!(sent[0][0], WG_MESSAGE_HANDSHAKE_INIT);
    let mut buffer = vec![0u8; 2048];
    let response = match peer.decapsulate(None, &sent[0], &mut buffer) {
        TunnResult::WriteToNetwork(response) => response.to_vec(),
        other => panic!("the peer did not answer the initiation: {other:?}"),
    };
    let mut out = vec![0u8; MAX_FRAME_LEN];
    assert_eq!(ours.inbound(&response, &mut out, wire, now), None);
    let after = wire.take();
    assert!(
        !Wire(after.clone()).carries_marker(),
        "the queued packets leave encrypted"
    );
    after.iter().filter_map(|d| decrypt(peer, d)).collect()
}

fn decrypt(peer: &mut Tunn, datagram: &[u8]) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; 2048];
    match peer.decapsulate(None, datagram, &mut buffer) {
        TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
            Some(packet.to_vec())
        }
        _ => None,
    }
}

fn encrypt(peer: &mut Tunn, packet: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0u8; 2048];
    match peer.encapsulate(packet, &mut buffer) {
        TunnResult::WriteToNetwork(datagram) if datagram[0] == 4 => datagram.to_vec(),
        other => panic!("the peer has no session: {other:?}"),
    }
}

#[test]
fn a_routed_packet_waits_for_the_handshake_then_reaches_the_peer_encrypted() {
    let (mut ours, mut peer) = pair(public_of(key(2)));
    let mut wire = Wire::default();
    let now = Instant::now();
    let packet = ipv4_udp(GUEST_TUNNEL, SERVICE, MARKER);
    assert_eq!(
        ours.outbound(&frame(ETHERTYPE_IPV4, &packet), &mut wire, now),
        Routing::Tunnelled
    );
    assert!(!wire.carries_marker(), "nothing in clear while handshaking");

    let delivered = handshake(&mut ours, &mut peer, &mut wire, now);
    assert_eq!(delivered, vec![packet], "the queued packet arrives intact");
    assert_eq!(
        ours.take_event(),
        Some(VpnEvent::TunnelUp {
            endpoint: ours.endpoint()
        })
    );

    // With the session up, a packet goes out at once.
    let second = ipv4_udp(GUEST_TUNNEL, SERVICE, b"second");
    assert_eq!(
        ours.outbound(&frame(ETHERTYPE_IPV4, &second), &mut wire, now),
        Routing::Tunnelled
    );
    let sent = wire.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(decrypt(&mut peer, &sent[0]), Some(second));
    assert_eq!(ours.stats().encapsulated, 2);
}

#[test]
fn replies_from_the_peer_become_frames_from_the_gateway() {
    let (mut ours, mut peer) = pair(public_of(key(2)));
    let mut wire = Wire::default();
    let now = Instant::now();
    let request = ipv4_udp(GUEST_TUNNEL, SERVICE, b"request");
    ours.outbound(&frame(ETHERTYPE_IPV4, &request), &mut wire, now);
    handshake(&mut ours, &mut peer, &mut wire, now);
    // A frame to a group address names no gateway.
    let mut broadcast = frame(ETHERTYPE_IPV4, &request);
    broadcast[..6].fill(0xff);
    ours.outbound(&broadcast, &mut wire, now);

    let reply = ipv4_udp(SERVICE, GUEST_TUNNEL, b"reply");
    let mut out = vec![0u8; MAX_FRAME_LEN];
    let len = ours
        .inbound(&encrypt(&mut peer, &reply), &mut out, &mut wire, now)
        .expect("a frame for the guest");
    assert_eq!(&out[..6], &GUEST_MAC);
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    assert_eq!(&out[12..14], &ETHERTYPE_IPV4.to_be_bytes());
    assert_eq!(&out[14..len], &reply[..]);
    assert_eq!(ours.stats().delivered, 1);
}

#[test]
fn packets_from_the_tunnel_with_a_wrong_source_or_destination_are_dropped() {
    let (mut ours, mut peer) = pair(public_of(key(2)));
    let mut wire = Wire::default();
    let now = Instant::now();
    ours.outbound(
        &frame(ETHERTYPE_IPV4, &ipv4_udp(GUEST_TUNNEL, SERVICE, b"hi")),
        &mut wire,
        now,
    );
    handshake(&mut ours, &mut peer, &mut wire, now);
    while ours.take_event().is_some() {}

    let mut out = vec![0u8; MAX_FRAME_LEN];
    let outside_routes = ipv4_udp(Ipv4Addr::new(198, 18, 0, 1), GUEST_TUNNEL, b"x");
    assert_eq!(
        ours.inbound(
            &encrypt(&mut peer, &outside_routes),
            &mut out,
            &mut wire,
            now
        ),
        None
    );
    assert!(matches!(
        ours.take_event(),
        Some(VpnEvent::InnerPacketRefused { .. })
    ));
    let to_someone_else = ipv4_udp(SERVICE, GUEST_CLEAR, b"x");
    assert_eq!(
        ours.inbound(
            &encrypt(&mut peer, &to_someone_else),
            &mut out,
            &mut wire,
            now
        ),
        None
    );
    assert_eq!(ours.stats().dropped, 2);
    assert_eq!(ours.stats().delivered, 0);
}

#[test]
fn packets_outside_the_routes_are_left_alone() {
    let (mut ours, _) = pair(public_of(key(2)));
    let mut wire = Wire::default();
    let now = Instant::now();
    let clear = ipv4_udp(GUEST_CLEAR, Ipv4Addr::new(192, 0, 2, 1), MARKER);
    assert_eq!(
        ours.outbound(&frame(ETHERTYPE_IPV4, &clear), &mut wire, now),
        Routing::Direct
    );
    let arp = frame(0x0806, &[0u8; 28]);
    assert_eq!(ours.outbound(&arp, &mut wire, now), Routing::Direct);
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
    ipv6.extend_from_slice(
        &"2001:db8::10"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    ipv6.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    assert_eq!(
        ours.outbound(&frame(ETHERTYPE_IPV6, &ipv6), &mut wire, now),
        Routing::Direct
    );
    assert!(wire.0.is_empty());
    assert_eq!(ours.stats(), TunnelStats::default());
}

#[test]
fn tunnel_traffic_from_a_non_tunnel_address_is_dropped_not_sent() {
    let (mut ours, _) = pair(public_of(key(2)));
    let mut wire = Wire::default();
    let now = Instant::now();
    let wrong_source = ipv4_udp(GUEST_CLEAR, SERVICE, MARKER);
    assert_eq!(
        ours.outbound(&frame(ETHERTYPE_IPV4, &wrong_source), &mut wire, now),
        Routing::Tunnelled
    );
    assert!(wire.0.is_empty(), "neither sent nor a handshake started");
    assert!(matches!(
        ours.take_event(),
        Some(VpnEvent::WrongGuestSource { .. })
    ));
    assert_eq!(ours.stats().dropped, 1);
}

#[test]
fn with_a_wrong_peer_key_the_handshake_fails_is_reported_and_nothing_leaks() {
    let (mut ours, mut peer) = pair(public_of(key(3)));
    let mut wire = Wire::default();
    let now = Instant::now();
    for _ in 0..3 {
        let packet = ipv4_udp(GUEST_TUNNEL, SERVICE, MARKER);
        assert_eq!(
            ours.outbound(&frame(ETHERTYPE_IPV4, &packet), &mut wire, now),
            Routing::Tunnelled
        );
    }
    let sent = wire.take();
    assert_eq!(sent.len(), 1, "one initiation, the packets wait");
    let mut buffer = vec![0u8; 2048];
    assert!(
        matches!(
            peer.decapsulate(None, &sent[0], &mut buffer),
            TunnResult::Err(_)
        ),
        "the real peer cannot read an initiation made for another key"
    );
    ours.tick(&mut wire, now + HANDSHAKE_REPORT_AFTER);
    assert!(!wire.carries_marker());
    assert!(wire.0.iter().all(|d| d[0] == WG_MESSAGE_HANDSHAKE_INIT));
    assert_eq!(
        ours.take_event(),
        Some(VpnEvent::HandshakeUnanswered {
            endpoint: ours.endpoint(),
            seconds: HANDSHAKE_REPORT_AFTER.as_secs()
        })
    );
}

#[test]
fn garbage_from_the_endpoint_is_refused_and_reported() {
    let (mut ours, _) = pair(public_of(key(2)));
    let mut wire = Wire::default();
    let mut out = vec![0u8; MAX_FRAME_LEN];
    let now = Instant::now();
    assert_eq!(
        ours.inbound(b"hello, not wireguard", &mut out, &mut wire, now),
        None
    );
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&[0u8; 60]);
    assert_eq!(ours.inbound(&forged, &mut out, &mut wire, now), None);
    assert!(matches!(
        ours.take_event(),
        Some(VpnEvent::DatagramRejected { .. })
    ));
    assert!(wire.0.is_empty());
}

#[test]
fn ip_headers_are_read_with_their_own_length() {
    let packet = ipv4_udp(GUEST_TUNNEL, SERVICE, b"abc");
    let mut padded = packet.clone();
    padded.extend_from_slice(&[0u8; 10]);
    let header = ip_header(&padded).unwrap();
    assert_eq!(header.total_len, packet.len());
    assert_eq!(header.destination, IpAddr::V4(SERVICE));
    assert_eq!(ip_header(&packet[..packet.len() - 1]), None, "truncated");
    assert_eq!(ip_header(&[0x45; 10]), None);
    assert_eq!(ip_header(&[]), None);
}
