//! Frame parsing: turns raw Ethernet frames into the few facts the filter
//! decides on (addresses, IP protocol, ports, TCP flags, ICMP kind).
//!
//! Ethernet and IP headers (IPv4 options, IPv6 extension header chains,
//! fragment headers) are sliced by `etherparse` with strict length checks;
//! the layer-4 headers are read here because fragments and ICMP-embedded
//! packets need header-only reads that the strict slicers refuse. Every
//! error is a `ParseError`, and the filter drops such frames: a frame this
//! module cannot fully account for is never passed.
//!
//! Choices: 802.1Q/802.1ad tagged frames are not supported (the guest has no
//! reason to tag frames on its single virtual NIC, and a tag would hide the
//! payload from the checks), IPv6 jumbograms (payload length 0) are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{EtherType, Ethernet2Slice, Ipv4Slice, Ipv6ExtensionSlice, Ipv6Slice};

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
    /// unknown EtherTypes, jumbograms, ARP for other than Ethernet/IPv4).
    Unsupported,
}

/// A parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) source_mac: [u8; 6],
    pub(crate) destination_mac: [u8; 6],
    pub(crate) body: Body<'a>,
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
    MulticastListener,
    /// Any other type, decided by the rules without state.
    Other {
        kind: u8,
        payload: &'a [u8],
    },
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
    Ok(Frame {
        source_mac: ethernet.source(),
        destination_mac: ethernet.destination(),
        body,
    })
}

fn parse_arp(payload: &[u8]) -> Result<Arp, ParseError> {
    const ARP_LEN: usize = 28;
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
    let fragment = header.is_fragmenting_payload().then(|| Fragment {
        identification: u32::from(header.identification()),
        is_first: header.fragments_offset().value() == 0,
    });
    let protocol = packet.payload().ip_number.0;
    let transport = parse_transport(protocol, false, fragment, packet.payload().payload)?;
    Ok(IpPacket {
        source: IpAddr::V4(header.source_addr()),
        destination: IpAddr::V4(header.destination_addr()),
        hop_limit: header.ttl(),
        protocol,
        fragment,
        transport,
    })
}

fn parse_ipv6(payload: &[u8]) -> Result<IpPacket<'_>, ParseError> {
    if be16(payload, 4) == Some(0) && payload.len() > 40 {
        return Err(ParseError::Unsupported);
    }
    let packet = Ipv6Slice::from_slice(payload).map_err(|_| ParseError::Malformed)?;
    let header = packet.header();
    let mut fragment = None;
    for extension in packet.extensions().clone() {
        if let Ipv6ExtensionSlice::Fragment(slice) = extension {
            if slice.is_fragmenting_payload() {
                if fragment.is_some() {
                    return Err(ParseError::Malformed);
                }
                fragment = Some(Fragment {
                    identification: slice.identification(),
                    is_first: slice.fragment_offset().value() == 0,
                });
            }
        }
    }
    let protocol = packet.payload().ip_number.0;
    let transport = parse_transport(protocol, true, fragment, packet.payload().payload)?;
    Ok(IpPacket {
        source: IpAddr::V6(header.source_addr()),
        destination: IpAddr::V6(header.destination_addr()),
        hop_limit: header.hop_limit(),
        protocol,
        fragment,
        transport,
    })
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
            embedded: parse_embedded(&message[8..]).ok_or(ParseError::Malformed)?,
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
    let target = || ipv6(message, 8).ok_or(ParseError::Malformed);
    Ok(match message[0] {
        128 => Icmp::EchoRequest { identifier },
        129 => Icmp::EchoReply { identifier },
        1..=4 => Icmp::Error {
            embedded: parse_embedded(&message[8..]).ok_or(ParseError::Malformed)?,
        },
        130..=132 | 143 => Icmp::MulticastListener,
        133 => Icmp::RouterSolicitation {
            link_address: ndp_link_address(message.get(8..).unwrap_or_default(), 1)?,
        },
        134 => Icmp::RouterAdvertisement,
        135 => Icmp::NeighbourSolicitation {
            target: target()?,
            link_address: ndp_link_address(message.get(24..).unwrap_or_default(), 1)?,
        },
        136 => Icmp::NeighbourAdvertisement {
            target: target()?,
            link_address: ndp_link_address(message.get(24..).unwrap_or_default(), 2)?,
        },
        137 => Icmp::Redirect,
        kind => Icmp::Other {
            kind,
            payload: &message[4..],
        },
    })
}

/// Walks NDP options and returns the link-layer address option of `kind`
/// (1 = source, 2 = target); malformed options fail the whole message.
fn ndp_link_address(mut options: &[u8], kind: u8) -> Result<Option<[u8; 6]>, ParseError> {
    let mut found = None;
    while !options.is_empty() {
        let length = usize::from(*options.get(1).ok_or(ParseError::Malformed)?) * 8;
        if length == 0 || length > options.len() {
            return Err(ParseError::Malformed);
        }
        if options[0] == 1 || options[0] == 2 {
            if length != 8 {
                return Err(ParseError::Malformed);
            }
            let address = mac(options, 2).ok_or(ParseError::Malformed)?;
            if options[0] == kind {
                found = Some(address);
            } else {
                // A solicitation carries a source, an advertisement a target option.
                return Err(ParseError::Malformed);
            }
        }
        options = &options[length..];
    }
    Ok(found)
}

/// Reads the start of the packet an ICMP error quotes: its IP header and
/// the first 8 bytes of its layer-4 header. Extension headers in a quoted
/// IPv6 packet are not followed; such errors cannot be related to a flow.
fn parse_embedded(quoted: &[u8]) -> Option<Embedded> {
    let version = quoted.first()? >> 4;
    let (source, destination, protocol, rest) = match version {
        4 => {
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
        6 => (
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
    fn ipv6_routing_and_destination_options_are_skipped() {
        let tcp = [
            0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0,
        ];
        let mut chain = vec![60, 0, 4, 0, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0];
        chain.extend_from_slice(&tcp);
        assert!(matches!(
            transport(&ipv6(43, &chain)),
            Ok(Transport::Tcp {
                source_port: 1,
                destination_port: 2,
                ..
            })
        ));
        assert_eq!(
            transport(&ipv6(43, &chain[..12])),
            Err(ParseError::Malformed)
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
