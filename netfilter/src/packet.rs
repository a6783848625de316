//! Frame parsing: turns raw Ethernet frames into the few facts the filter
//! decides on (addresses, IP protocol, ports, TCP flags, ICMP kind).
//!
//! The Ethernet and fixed IP headers are sliced by `etherparse` with strict
//! length checks; IPv4 options, the IPv6 extension header chain and the
//! layer-4 headers are read here, because the filter refuses more than a
//! general parser does, and fragments and ICMP-embedded packets need
//! header-only reads that the strict slicers refuse. Every length a frame
//! claims is checked against what it carries before anything is sliced.
//! Every error is a `ParseError`, and the filter drops such frames: a frame
//! this module cannot fully account for is never passed.
//!
//! Choices: 802.1Q/802.1ad tagged frames are not supported (the guest has no
//! reason to tag frames on its single virtual NIC, and a tag would hide the
//! payload from the checks), IPv6 jumbograms (payload length 0) are refused.
//! A desktop guest needs no source routing: IPv4 options other than padding
//! and Router Alert (record route and timestamps included), IPv6 routing
//! headers, authentication headers, the other extension headers a host
//! does not originate, options other than padding and (hop-by-hop) Router
//! Alert, a second destination options header and any extension header
//! after the fragment header are all refused. Fragments must be consistent
//! (a whole number of 8-byte units unless last, within 64 KiB) and may not
//! overlap the TCP header that the first fragment carried (RFC 1858).
//! NDP and MLD messages are checked to the sizes, codes and options their
//! RFCs define (RFC 4861, 2710, 3810, plus the nonce of RFC 7527 and the
//! router advertisement options in use today).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{EtherType, Ethernet2Slice, Ipv4Slice, Ipv6HeaderSlice};

/// IANA protocol numbers used by the filter.
pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const PROTO_ICMPV6: u8 = 58;

const UDP_HEADER_LEN: usize = 8;

/// TCP flag bits.
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// A header is truncated, inconsistent or malformed.
    Malformed,
    /// Well-formed, but of a kind the filter never passes (VLAN tags,
    /// unknown EtherTypes, jumbograms, ARP for other than Ethernet/IPv4,
    /// unknown NDP options).
    Unsupported,
    /// IPv4 options or IPv6 extension headers the filter never passes
    /// (source routes, routing and authentication headers, unknown options).
    IpOptions,
}

/// A parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) source_mac: [u8; 6],
    pub(crate) destination_mac: [u8; 6],
    pub(crate) body: Body<'a>,
    /// Bytes after the ARP or IP packet: padding, or data no check saw.
    pub(crate) trailing: &'a [u8],
}

/// What the Ethernet frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    Arp(Arp),
    Ip(IpPacket<'a>),
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arp {
    pub(crate) operation: u16,
    pub(crate) sender_mac: [u8; 6],
    pub(crate) sender_ip: Ipv4Addr,
    pub(crate) target_ip: Ipv4Addr,
}

/// An IPv4 or IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpPacket<'a> {
    pub(crate) source: IpAddr,
    pub(crate) destination: IpAddr,
    /// TTL or hop limit.
    pub(crate) hop_limit: u8,
    /// Bytes of the whole IP packet: IPv4 total length, or the IPv6 header
    /// and its payload length.
    pub(crate) length: usize,
    /// Protocol of the payload after all extension headers.
    pub(crate) protocol: u8,
    /// Set when the packet is one fragment of a larger one.
    pub(crate) fragment: Option<Fragment>,
    pub(crate) transport: Transport<'a>,
}

/// Fragment identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fragment {
    pub(crate) identification: u32,
    /// Offset 0: this fragment carries the layer-4 header.
    pub(crate) is_first: bool,
}

/// The layer-4 content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport<'a> {
    Tcp {
        source_port: u16,
        destination_port: u16,
        flags: u8,
        payload: &'a [u8],
    },
    Udp {
        source_port: u16,
        destination_port: u16,
        payload: &'a [u8],
    },
    Icmp(Icmp<'a>),
    /// A protocol without ports that the filter tracks by addresses only.
    Other,
    /// A non-first fragment: no layer-4 header to read.
    NoHeader,
}

/// ICMP and ICMPv6 messages, by what the filter does with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Icmp<'a> {
    EchoRequest {
        identifier: u16,
    },
    EchoReply {
        identifier: u16,
    },
    /// Destination unreachable, time exceeded, parameter problem, packet
    /// too big: carries the start of the packet that caused it.
    Error {
        embedded: Embedded,
    },
    RouterSolicitation {
        link_address: Option<[u8; 6]>,
    },
    RouterAdvertisement,
    NeighbourSolicitation {
        target: Ipv6Addr,
        link_address: Option<[u8; 6]>,
    },
    NeighbourAdvertisement {
        target: Ipv6Addr,
        link_address: Option<[u8; 6]>,
    },
    Redirect,
    /// MLD query, report or done: link-local multicast membership.
    MulticastListener(Mld),
    /// Any other type, decided by the rules without state.
    Other {
        kind: u8,
        payload: &'a [u8],
    },
}

/// MLD messages (RFC 2710 version 1, RFC 3810 version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mld {
    Query,
    /// Version 1 report, sent to the group it reports.
    Report {
        group: Ipv6Addr,
    },
    /// Version 1 done.
    Done,
    /// Version 2 report, sent to all MLDv2 routers.
    ReportV2,
}

/// The addresses and ports of the packet an ICMP error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Embedded {
    pub(crate) source: IpAddr,
    pub(crate) destination: IpAddr,
    pub(crate) protocol: u8,
    /// Ports for TCP/UDP, (identifier, 0) for an echo request or reply.
    pub(crate) ports: Option<(u16, u16)>,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn mac(bytes: &[u8], at: usize) -> Option<[u8; 6]> {
    bytes.get(at..at + 6)?.try_into().ok()
}

fn ipv4(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn ipv6(bytes: &[u8], at: usize) -> Option<Ipv6Addr> {
    let octets: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(octets))
}

/// Parses one Ethernet II frame (without FCS).
pub(crate) fn parse_frame(frame: &[u8]) -> Result<Frame<'_>, ParseError> {
    let ethernet =
        Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| ParseError::Malformed)?;
    let payload = ethernet.payload_slice();
    let body = match ethernet.ether_type() {
        EtherType::ARP => Body::Arp(parse_arp(payload)?),
        EtherType::IPV4 => Body::Ip(parse_ipv4(payload)?),
        EtherType::IPV6 => Body::Ip(parse_ipv6(payload)?),
        _ => return Err(ParseError::Unsupported),
    };
    let packet_len = match &body {
        Body::Arp(_) => ARP_LEN,
        Body::Ip(packet) => packet.length,
    };
    Ok(Frame {
        source_mac: ethernet.source(),
        destination_mac: ethernet.destination(),
        body,
        trailing: payload.get(packet_len..).ok_or(ParseError::Malformed)?,
    })
}

const ARP_LEN: usize = 28;

fn parse_arp(payload: &[u8]) -> Result<Arp, ParseError> {
    if payload.len() < ARP_LEN {
        return Err(ParseError::Malformed);
    }
    let hardware = be16(payload, 0);
    let protocol = be16(payload, 2);
    if hardware != Some(1) || protocol != Some(0x0800) || payload[4] != 6 || payload[5] != 4 {
        return Err(ParseError::Unsupported);
    }
    let operation = be16(payload, 6).ok_or(ParseError::Malformed)?;
    if operation != 1 && operation != 2 {
        return Err(ParseError::Unsupported);
    }
    Ok(Arp {
        operation,
        sender_mac: mac(payload, 8).ok_or(ParseError::Malformed)?,
        sender_ip: ipv4(payload, 14).ok_or(ParseError::Malformed)?,
        target_ip: ipv4(payload, 24).ok_or(ParseError::Malformed)?,
    })
}

fn parse_ipv4(payload: &[u8]) -> Result<IpPacket<'_>, ParseError> {
    let packet = Ipv4Slice::from_slice(payload).map_err(|_| ParseError::Malformed)?;
    let header = packet.header();
    check_ipv4_options(header.options())?;
    if header.protocol().0 == PROTO_AUTHENTICATION {
        return Err(ParseError::IpOptions);
    }
    let protocol = header.protocol().0;
    let data = packet.payload().payload;
    let fragment = if header.is_fragmenting_payload() {
        Some(checked_fragment(
            protocol,
            u32::from(header.identification()),
            usize::from(header.fragments_offset().value()) * 8,
            header.more_fragments(),
            data.len(),
        )?)
    } else {
        None
    };
    let transport = parse_transport(protocol, false, fragment, data)?;
    Ok(IpPacket {
        source: IpAddr::V4(header.source_addr()),
        destination: IpAddr::V4(header.destination_addr()),
        hop_limit: header.ttl(),
        length: usize::from(header.total_len()),
        protocol,
        fragment,
        transport,
    })
}

/// IPv4 options: padding and Router Alert (which IGMP uses) only.
fn check_ipv4_options(mut options: &[u8]) -> Result<(), ParseError> {
    const END: u8 = 0;
    const NO_OPERATION: u8 = 1;
    const ROUTER_ALERT: [u8; 4] = [148, 4, 0, 0];
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            END if rest.iter().all(|byte| *byte == 0) => return Ok(()),
            END => return Err(ParseError::Malformed),
            NO_OPERATION => options = rest,
            _ => {
                let length = usize::from(*rest.first().ok_or(ParseError::Malformed)?);
                let option = options.get(..length).ok_or(ParseError::Malformed)?;
                if length < 2 {
                    return Err(ParseError::Malformed);
                }
                if option != ROUTER_ALERT {
                    return Err(ParseError::IpOptions);
                }
                options = options.get(length..).ok_or(ParseError::Malformed)?;
            }
        }
    }
    Ok(())
}

/// Checks a fragment's place in its datagram: all but the last fragment
/// carry whole 8-byte units, the datagram fits in 64 KiB, and a later
/// fragment does not reach back into a TCP header (RFC 1858: it could
/// rewrite the flags the first fragment was judged by).
fn checked_fragment(
    protocol: u8,
    identification: u32,
    offset: usize,
    more: bool,
    data_len: usize,
) -> Result<Fragment, ParseError> {
    const MIN_TCP_HEADER: usize = 20;
    let uneven = more && !data_len.is_multiple_of(8);
    let too_long = offset + data_len > usize::from(u16::MAX);
    let overlaps_header = offset != 0 && protocol == PROTO_TCP && offset < MIN_TCP_HEADER;
    if uneven || too_long || overlaps_header {
        return Err(ParseError::Malformed);
    }
    Ok(Fragment {
        identification,
        is_first: offset == 0,
    })
}

fn parse_ipv6(payload: &[u8]) -> Result<IpPacket<'_>, ParseError> {
    const HEADER_LEN: usize = 40;
    if be16(payload, 4) == Some(0) && payload.len() > HEADER_LEN {
        return Err(ParseError::Unsupported);
    }
    let header = Ipv6HeaderSlice::from_slice(payload).map_err(|_| ParseError::Malformed)?;
    let length = HEADER_LEN + usize::from(header.payload_length());
    let body = payload
        .get(HEADER_LEN..length)
        .ok_or(ParseError::Malformed)?;
    let (protocol, fragment, data) = walk_ipv6_extensions(header.next_header().0, body)?;
    let transport = parse_transport(protocol, true, fragment, data)?;
    Ok(IpPacket {
        source: IpAddr::V6(header.source_addr()),
        destination: IpAddr::V6(header.destination_addr()),
        hop_limit: header.hop_limit(),
        length,
        protocol,
        fragment,
        transport,
    })
}

/// Follows the extension header chain of an IPv6 payload; returns the
/// upper-layer protocol, the fragment (if the packet is one) and the
/// upper-layer data. A later fragment's data is not followed further: it
/// is the middle of a datagram, not headers.
fn walk_ipv6_extensions(
    first_header: u8,
    mut rest: &[u8],
) -> Result<(u8, Option<Fragment>, &[u8]), ParseError> {
    let mut next_header = first_header;
    let mut at_start = true;
    let mut seen_destination_options = false;
    let mut seen_fragment_header = false;
    loop {
        match next_header {
            HOP_BY_HOP | DESTINATION_OPTIONS => {
                if next_header == HOP_BY_HOP && !at_start {
                    return Err(ParseError::Malformed);
                }
                if next_header == DESTINATION_OPTIONS && seen_destination_options {
                    return Err(ParseError::IpOptions);
                }
                if seen_fragment_header {
                    return Err(ParseError::IpOptions);
                }
                seen_destination_options |= next_header == DESTINATION_OPTIONS;
                let length = (usize::from(*rest.get(1).ok_or(ParseError::Malformed)?) + 1) * 8;
                let header = rest.get(..length).ok_or(ParseError::Malformed)?;
                check_ipv6_options(
                    header.get(2..).ok_or(ParseError::Malformed)?,
                    next_header == HOP_BY_HOP,
                )?;
                next_header = header[0];
                rest = rest.get(length..).ok_or(ParseError::Malformed)?;
            }
            FRAGMENT => {
                if seen_fragment_header {
                    return Err(ParseError::Malformed);
                }
                seen_fragment_header = true;
                let header = rest.get(..8).ok_or(ParseError::Malformed)?;
                next_header = header[0];
                rest = rest.get(8..).ok_or(ParseError::Malformed)?;
                let offset_and_flags = be16(header, 2).ok_or(ParseError::Malformed)?;
                let offset = usize::from(offset_and_flags >> 3) * 8;
                let more = offset_and_flags & 1 != 0;
                // Offset 0 without more fragments is an atomic fragment
                // (RFC 6946): a whole packet.
                if offset != 0 || more {
                    let identification = be32(header, 4).ok_or(ParseError::Malformed)?;
                    let fragment =
                        checked_fragment(next_header, identification, offset, more, rest.len())?;
                    // A first fragment must carry the upper-layer header
                    // itself; a later one carries data, not headers.
                    if fragment.is_first && is_ipv6_extension(next_header) {
                        return Err(ParseError::IpOptions);
                    }
                    return Ok((next_header, Some(fragment), rest));
                }
            }
            _ if is_ipv6_extension(next_header) => return Err(ParseError::IpOptions),
            _ => return Ok((next_header, None, rest)),
        }
        at_start = false;
    }
}

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const PROTO_AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;

/// IANA's IPv6 extension header numbers (RFC 7045), besides ESP, whose
/// payload the filter treats as an opaque protocol.
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        HOP_BY_HOP
            | ROUTING
            | FRAGMENT
            | PROTO_AUTHENTICATION
            | DESTINATION_OPTIONS
            | 135
            | 139
            | 140
            | 253
            | 254
    )
}

/// Options of a hop-by-hop or destination options header: zero padding,
/// and Router Alert (which MLD uses) in hop-by-hop only.
fn check_ipv6_options(mut options: &[u8], hop_by_hop: bool) -> Result<(), ParseError> {
    const PAD1: u8 = 0;
    const PADN: u8 = 1;
    const ROUTER_ALERT: u8 = 5;
    while let Some((&kind, rest)) = options.split_first() {
        if kind == PAD1 {
            options = rest;
            continue;
        }
        let (&length, rest) = rest.split_first().ok_or(ParseError::Malformed)?;
        let data = rest
            .get(..usize::from(length))
            .ok_or(ParseError::Malformed)?;
        let allowed = match kind {
            PADN => data.iter().all(|byte| *byte == 0),
            ROUTER_ALERT => hop_by_hop && data.len() == 2,
            _ => false,
        };
        if !allowed {
            return Err(ParseError::IpOptions);
        }
        options = rest
            .get(usize::from(length)..)
            .ok_or(ParseError::Malformed)?;
    }
    Ok(())
}

fn parse_transport(
    protocol: u8,
    is_ipv6: bool,
    fragment: Option<Fragment>,
    payload: &[u8],
) -> Result<Transport<'_>, ParseError> {
    if fragment.is_some_and(|fragment| !fragment.is_first) {
        return Ok(Transport::NoHeader);
    }
    let is_fragment = fragment.is_some();
    match protocol {
        PROTO_TCP => {
            let data_offset = usize::from(payload.get(12).ok_or(ParseError::Malformed)? >> 4) * 4;
            if data_offset < 20 || data_offset > payload.len() {
                return Err(ParseError::Malformed);
            }
            Ok(Transport::Tcp {
                source_port: be16(payload, 0).ok_or(ParseError::Malformed)?,
                destination_port: be16(payload, 2).ok_or(ParseError::Malformed)?,
                flags: payload[13],
                payload: &payload[data_offset..],
            })
        }
        PROTO_UDP => {
            let length = usize::from(be16(payload, 4).ok_or(ParseError::Malformed)?);
            // A whole datagram fills the IP payload exactly; a first fragment
            // holds the 8-byte header and part of the datagram the length covers.
            let consistent = if is_fragment {
                length >= payload.len()
            } else {
                length == payload.len()
            };
            if !consistent || payload.len() < UDP_HEADER_LEN {
                return Err(ParseError::Malformed);
            }
            Ok(Transport::Udp {
                source_port: be16(payload, 0).ok_or(ParseError::Malformed)?,
                destination_port: be16(payload, 2).ok_or(ParseError::Malformed)?,
                payload: payload.get(UDP_HEADER_LEN..).ok_or(ParseError::Malformed)?,
            })
        }
        PROTO_ICMP if !is_ipv6 => Ok(Transport::Icmp(parse_icmpv4(payload)?)),
        PROTO_ICMPV6 if is_ipv6 => Ok(Transport::Icmp(parse_icmpv6(payload)?)),
        PROTO_ICMP | PROTO_ICMPV6 => Err(ParseError::Unsupported),
        _ => Ok(Transport::Other),
    }
}

fn parse_icmpv4(message: &[u8]) -> Result<Icmp<'_>, ParseError> {
    if message.len() < 8 {
        return Err(ParseError::Malformed);
    }
    let identifier = be16(message, 4).ok_or(ParseError::Malformed)?;
    Ok(match message[0] {
        0 => Icmp::EchoReply { identifier },
        8 => Icmp::EchoRequest { identifier },
        3 | 11 | 12 => Icmp::Error {
            embedded: parse_embedded(&message[8..], false).ok_or(ParseError::Malformed)?,
        },
        5 => Icmp::Redirect,
        kind => Icmp::Other {
            kind,
            payload: &message[4..],
        },
    })
}

fn parse_icmpv6(message: &[u8]) -> Result<Icmp<'_>, ParseError> {
    if message.len() < 8 {
        return Err(ParseError::Malformed);
    }
    let identifier = be16(message, 4).ok_or(ParseError::Malformed)?;
    let kind = message[0];
    // RFC 4861 has receivers discard NDP with another code.
    if matches!(kind, 133..=137) && message[1] != 0 {
        return Err(ParseError::Malformed);
    }
    Ok(match kind {
        128 => Icmp::EchoRequest { identifier },
        129 => Icmp::EchoReply { identifier },
        1..=4 => Icmp::Error {
            embedded: parse_embedded(&message[8..], true).ok_or(ParseError::Malformed)?,
        },
        130..=132 | 143 => Icmp::MulticastListener(parse_mld(message)?),
        133 => {
            let options = message.get(8..).ok_or(ParseError::Malformed)?;
            Icmp::RouterSolicitation {
                link_address: ndp_link_address(options, &[SOURCE_LINK_ADDRESS])?,
            }
        }
        134 => {
            let options = message.get(16..).ok_or(ParseError::Malformed)?;
            ndp_link_address(options, ROUTER_ADVERTISEMENT_OPTIONS)?;
            Icmp::RouterAdvertisement
        }
        135 => {
            let options = message.get(24..).ok_or(ParseError::Malformed)?;
            Icmp::NeighbourSolicitation {
                target: ndp_target(message)?,
                link_address: ndp_link_address(options, &[SOURCE_LINK_ADDRESS, NONCE])?,
            }
        }
        136 => {
            let options = message.get(24..).ok_or(ParseError::Malformed)?;
            Icmp::NeighbourAdvertisement {
                target: ndp_target(message)?,
                link_address: ndp_link_address(options, &[TARGET_LINK_ADDRESS])?,
            }
        }
        137 => Icmp::Redirect,
        kind => Icmp::Other {
            kind,
            payload: &message[4..],
        },
    })
}

/// MLD messages: version 1 messages are exactly 24 bytes; a version 2
/// query or report is exactly as long as its sources and records.
fn parse_mld(message: &[u8]) -> Result<Mld, ParseError> {
    const V1_LEN: usize = 24;
    const V2_QUERY_LEN: usize = 28;
    let group = ipv6(message, 8).ok_or(ParseError::Malformed)?;
    let is_v1 = message.len() == V1_LEN;
    match message[0] {
        130 if is_v1 => Ok(Mld::Query),
        130 => {
            let sources = usize::from(be16(message, 26).ok_or(ParseError::Malformed)?);
            if message.len() != V2_QUERY_LEN + 16 * sources {
                return Err(ParseError::Malformed);
            }
            Ok(Mld::Query)
        }
        131 | 132 if !is_v1 || !group.is_multicast() => Err(ParseError::Malformed),
        131 => Ok(Mld::Report { group }),
        132 => Ok(Mld::Done),
        _ => {
            check_mldv2_records(message)?;
            Ok(Mld::ReportV2)
        }
    }
}

/// The multicast address records of an MLDv2 report (RFC 3810 5.2): known
/// record types, multicast groups, no auxiliary data (which senders must
/// not include), and nothing after the last record.
fn check_mldv2_records(message: &[u8]) -> Result<(), ParseError> {
    let count = be16(message, 6).ok_or(ParseError::Malformed)?;
    let mut records = message.get(8..).ok_or(ParseError::Malformed)?;
    for _ in 0..count {
        let kind = *records.first().ok_or(ParseError::Malformed)?;
        let auxiliary = *records.get(1).ok_or(ParseError::Malformed)?;
        let sources = usize::from(be16(records, 2).ok_or(ParseError::Malformed)?);
        let group = ipv6(records, 4).ok_or(ParseError::Malformed)?;
        if !(1..=6).contains(&kind) || auxiliary != 0 || !group.is_multicast() {
            return Err(ParseError::Malformed);
        }
        records = records
            .get(20 + 16 * sources..)
            .ok_or(ParseError::Malformed)?;
    }
    if records.is_empty() {
        Ok(())
    } else {
        Err(ParseError::Malformed)
    }
}

/// A neighbour message's target, which is never a multicast address.
fn ndp_target(message: &[u8]) -> Result<Ipv6Addr, ParseError> {
    let target = ipv6(message, 8).ok_or(ParseError::Malformed)?;
    if target.is_multicast() {
        return Err(ParseError::Malformed);
    }
    Ok(target)
}

/// NDP option types (RFC 4861 4.6 and later RFCs).
const SOURCE_LINK_ADDRESS: u8 = 1;
const TARGET_LINK_ADDRESS: u8 = 2;
const PREFIX_INFORMATION: u8 = 3;
const REDIRECTED_HEADER: u8 = 4;
const MTU: u8 = 5;
/// RFC 6275: mobile IPv6 routers' advertisement interval and home agent.
const ADVERTISEMENT_INTERVAL: u8 = 7;
const HOME_AGENT_INFORMATION: u8 = 8;
/// RFC 3971 / RFC 7527: Linux puts a nonce in duplicate address detection.
const NONCE: u8 = 14;
/// RFC 4191, 8106, 5175, 8910, 8781: options routers send today.
const ROUTE_INFORMATION: u8 = 24;
const RECURSIVE_DNS_SERVER: u8 = 25;
const ADVERTISEMENT_FLAGS: u8 = 26;
const DNS_SEARCH_LIST: u8 = 31;
const CAPTIVE_PORTAL: u8 = 37;
const NAT64_PREFIX: u8 = 38;

const ROUTER_ADVERTISEMENT_OPTIONS: &[u8] = &[
    SOURCE_LINK_ADDRESS,
    PREFIX_INFORMATION,
    MTU,
    ADVERTISEMENT_INTERVAL,
    HOME_AGENT_INFORMATION,
    ROUTE_INFORMATION,
    RECURSIVE_DNS_SERVER,
    ADVERTISEMENT_FLAGS,
    DNS_SEARCH_LIST,
    CAPTIVE_PORTAL,
    NAT64_PREFIX,
];

/// Whether an NDP option of `kind` may be `units` 8-byte units long: the
/// exact size where its RFC fixes one, else its RFC's bounds; `None` for
/// kinds the filter does not know.
fn ndp_option_length_fits(kind: u8, units: usize) -> Option<bool> {
    Some(match kind {
        SOURCE_LINK_ADDRESS
        | TARGET_LINK_ADDRESS
        | MTU
        | ADVERTISEMENT_INTERVAL
        | HOME_AGENT_INFORMATION
        | NONCE
        | ADVERTISEMENT_FLAGS => units == 1,
        PREFIX_INFORMATION => units == 4,
        NAT64_PREFIX => units == 2,
        ROUTE_INFORMATION => (1..=3).contains(&units),
        RECURSIVE_DNS_SERVER => units >= 3 && !units.is_multiple_of(2),
        DNS_SEARCH_LIST => units >= 2,
        REDIRECTED_HEADER | CAPTIVE_PORTAL => units >= 1,
        _ => return None,
    })
}

/// Walks NDP options, allowing only the `allowed` kinds at their RFC
/// sizes, and returns the link-layer address option's address if there
/// is one (a message carries at most one). Malformed options, and
/// options of known kinds that do not belong in the message, fail the
/// whole message; unknown kinds are unsupported.
fn ndp_link_address(mut options: &[u8], allowed: &[u8]) -> Result<Option<[u8; 6]>, ParseError> {
    let mut found = None;
    while let Some(&kind) = options.first() {
        let units = usize::from(*options.get(1).ok_or(ParseError::Malformed)?);
        let option = options.get(..units * 8).ok_or(ParseError::Malformed)?;
        if units == 0 {
            return Err(ParseError::Malformed);
        }
        match ndp_option_length_fits(kind, units) {
            None => return Err(ParseError::Unsupported),
            Some(fits) if !fits || !allowed.contains(&kind) => return Err(ParseError::Malformed),
            Some(_) => {}
        }
        if kind == SOURCE_LINK_ADDRESS || kind == TARGET_LINK_ADDRESS {
            if found.is_some() {
                return Err(ParseError::Malformed);
            }
            found = Some(mac(option, 2).ok_or(ParseError::Malformed)?);
        }
        options = options.get(units * 8..).ok_or(ParseError::Malformed)?;
    }
    Ok(found)
}

/// Reads the start of the packet an ICMP error quotes, of the error's own
/// IP version: its IP header and the first 8 bytes of its layer-4 header. Extension headers in a quoted
/// IPv6 packet are not followed; such errors cannot be related to a flow.
fn parse_embedded(quoted: &[u8], is_ipv6: bool) -> Option<Embedded> {
    let version = quoted.first()? >> 4;
    let (source, destination, protocol, rest) = match version {
        4 if !is_ipv6 => {
            let header_len = usize::from(quoted[0] & 0x0f) * 4;
            if header_len < 20 {
                return None;
            }
            (
                IpAddr::V4(ipv4(quoted, 12)?),
                IpAddr::V4(ipv4(quoted, 16)?),
                *quoted.get(9)?,
                quoted.get(header_len..)?,
            )
        }
        6 if is_ipv6 => (
            IpAddr::V6(ipv6(quoted, 8)?),
            IpAddr::V6(ipv6(quoted, 24)?),
            *quoted.get(6)?,
            quoted.get(40..)?,
        ),
        _ => return None,
    };
    let ports = match protocol {
        PROTO_TCP | PROTO_UDP => Some((be16(rest, 0)?, be16(rest, 2)?)),
        PROTO_ICMP | PROTO_ICMPV6 if matches!(rest.first()?, 0 | 8 | 128 | 129) => {
            Some((be16(rest, 4)?, 0))
        }
        _ => None,
    };
    Some(Embedded {
        source,
        destination,
        protocol,
        ports,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::cast_possible_truncation,
        reason = "test inputs are small lengths and counters built to fit their wire fields"
    )]

    use super::*;

    fn ethernet(ether_type: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        frame.extend_from_slice(&ether_type);
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4(protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x45, 0];
        packet.extend_from_slice(&(20 + payload.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 1, 0, 0, 64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        packet.extend_from_slice(payload);
        ethernet([0x08, 0x00], &packet)
    }

    fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[next_header, 255]);
        packet.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        packet.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        packet.extend_from_slice(payload);
        ethernet([0x86, 0xdd], &packet)
    }

    fn transport(frame: &[u8]) -> Result<Transport<'_>, ParseError> {
        match parse_frame(frame)?.body {
            Body::Ip(packet) => Ok(packet.transport),
            Body::Arp(_) => panic!("not IP"),
        }
    }

    #[test]
    fn tcp_ports_flags_and_payload() {
        let segment = [
            0x30, 0x39, 0x01, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x12, 0, 0, 0, 0, 0, 0, 9, 9,
        ];
        assert_eq!(
            transport(&ipv4(PROTO_TCP, &segment)),
            Ok(Transport::Tcp {
                source_port: 12345,
                destination_port: 443,
                flags: 0x12,
                payload: &[9, 9],
            })
        );
        let mut short_offset = segment;
        short_offset[12] = 0x40;
        assert_eq!(
            transport(&ipv4(PROTO_TCP, &short_offset)),
            Err(ParseError::Malformed)
        );
        let mut long_offset = segment;
        long_offset[12] = 0xf0;
        assert_eq!(
            transport(&ipv4(PROTO_TCP, &long_offset)),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn udp_length_must_fit() {
        let good = [0, 53, 0x13, 0x88, 0, 10, 0, 0, 1, 2];
        assert!(matches!(
            transport(&ipv4(PROTO_UDP, &good)),
            Ok(Transport::Udp {
                payload: [1, 2],
                ..
            })
        ));
        let too_long = [0, 53, 0x13, 0x88, 0, 11, 0, 0, 1, 2];
        assert_eq!(
            transport(&ipv4(PROTO_UDP, &too_long)),
            Err(ParseError::Malformed)
        );
        let too_short = [0, 53, 0x13, 0x88, 0, 7, 0, 0, 1, 2];
        assert_eq!(
            transport(&ipv4(PROTO_UDP, &too_short)),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn ipv4_length_and_padding() {
        let mut padded = ipv4(PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        padded.extend_from_slice(&[0; 18]);
        assert!(matches!(
            transport(&padded),
            Ok(Transport::Udp { payload: [], .. })
        ));
        let mut overlong = ipv4(PROTO_UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        overlong[17] += 1;
        assert_eq!(transport(&overlong), Err(ParseError::Malformed));
    }

    #[test]
    fn icmp_error_quotes_the_offending_packet() {
        let quoted_udp = {
            let inner = ipv4(PROTO_UDP, &[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
            inner[14..].to_vec()
        };
        let mut message = vec![3, 3, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&quoted_udp);
        let Ok(Transport::Icmp(Icmp::Error { embedded })) = transport(&ipv4(PROTO_ICMP, &message))
        else {
            panic!("not an ICMP error");
        };
        assert_eq!(embedded.protocol, PROTO_UDP);
        assert_eq!(embedded.ports, Some((5000, 53)));
        assert_eq!(embedded.destination, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            transport(&ipv4(PROTO_ICMP, &[3, 3, 0, 0, 0, 0, 0, 0, 0x45])),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn icmp_of_the_wrong_family_is_refused() {
        let echo = [8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(
            transport(&ipv6(PROTO_ICMP, &echo)),
            Err(ParseError::Unsupported)
        );
        assert_eq!(
            transport(&ipv4(PROTO_ICMPV6, &echo)),
            Err(ParseError::Unsupported)
        );
        assert_eq!(
            transport(&ipv4(PROTO_ICMP, &echo[..7])),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn ndp_options_are_checked() {
        let mut solicitation = vec![135, 0, 0, 0, 0, 0, 0, 0];
        solicitation.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let mut with_source = solicitation.clone();
        with_source.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 2]);
        assert_eq!(
            transport(&ipv6(PROTO_ICMPV6, &with_source)),
            Ok(Transport::Icmp(Icmp::NeighbourSolicitation {
                target: "fd00::1".parse().unwrap(),
                link_address: Some([2, 0, 0, 0, 0, 2]),
            }))
        );
        let mut zero_length = solicitation.clone();
        zero_length.extend_from_slice(&[1, 0, 2, 0, 0, 0, 0, 2]);
        assert_eq!(
            transport(&ipv6(PROTO_ICMPV6, &zero_length)),
            Err(ParseError::Malformed)
        );
        let mut wrong_kind = solicitation;
        wrong_kind.extend_from_slice(&[2, 1, 2, 0, 0, 0, 0, 2]);
        assert_eq!(
            transport(&ipv6(PROTO_ICMPV6, &wrong_kind)),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn ipv6_routing_headers_are_refused_and_destination_options_skipped() {
        let tcp = [
            0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0,
        ];
        let mut options = vec![6, 0, 1, 4, 0, 0, 0, 0];
        options.extend_from_slice(&tcp);
        assert!(matches!(
            transport(&ipv6(60, &options)),
            Ok(Transport::Tcp {
                source_port: 1,
                destination_port: 2,
                ..
            })
        ));
        assert_eq!(
            transport(&ipv6(60, &options[..12])),
            Err(ParseError::Malformed)
        );
        // Routing header type 0, one address, then destination options.
        let mut routed = vec![60, 2, 0, 1, 0, 0, 0, 0];
        routed.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        routed.extend_from_slice(&options);
        assert_eq!(transport(&ipv6(43, &routed)), Err(ParseError::IpOptions));
        let mut late_routing = vec![43, 0, 1, 4, 0, 0, 0, 0];
        late_routing.extend_from_slice(&routed);
        assert_eq!(
            transport(&ipv6(60, &late_routing)),
            Err(ParseError::IpOptions)
        );
    }

    #[test]
    fn odd_frames_are_not_supported() {
        let mut jumbo = ipv6(59, &[]);
        jumbo.extend_from_slice(&[0; 8]);
        assert_eq!(parse_frame(&jumbo), Err(ParseError::Unsupported));
        let mut arp = vec![0, 6, 0x08, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&[0; 20]);
        assert_eq!(
            parse_frame(&ethernet([0x08, 0x06], &arp)),
            Err(ParseError::Unsupported)
        );
        assert_eq!(
            parse_frame(&ethernet([0x88, 0xcc], &[0; 40])),
            Err(ParseError::Unsupported)
        );
        assert_eq!(parse_frame(&[0; 13]), Err(ParseError::Malformed));
    }
}
