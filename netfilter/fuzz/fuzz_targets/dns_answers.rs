//! DNS answers, the one place where the packet filter learns something
//! from the network: a host-name rule then lets the guest reach the
//! addresses the answer named. The answer comes from the input and
//! reaches the parser the only way it can, as a UDP reply on a flow the
//! guest opened to a policy resolver; then the guest tries to open TCP
//! connections to every address the message could be read as naming.
//!
//! The policy allows outbound TCP only to port 443 of `*.example.org`
//! names, so any such connection that passes was allowed by a learned
//! name. Invariants, beyond "no panic":
//! - nothing is learned from a reply that did not come from the
//!   resolver's address and port 53;
//! - nothing is remembered past the longest TTL (one hour);
//! - a learned name ends in `example.org`: its labels are in the message;
//! - a learned address is the data of an A (4-byte) or AAAA (16-byte)
//!   record: its bytes follow a record-data length of 4 or 16.
//!
//! Input: [flags u8][DNS message]. Flags: bit 0 reply from another
//! address, bit 1 from another port, bit 2 probe two hours later.

#![no_main]
// Harness code narrows small known values; a wrong one fails the run.
#![allow(clippy::cast_possible_truncation)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use guest_policy::{Action, Direction, HostPattern, NetRule, NetworkPolicy, PortRange, Protocol};
use libfuzzer_sys::fuzz_target;
use netfilter::bench::{tcp_frame, udp_frame};
use netfilter::{Filter, FilterConfig, Verdict};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
const GUEST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const GUEST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
const NOT_RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 54);
const QUERY_PORT: u16 = 40_053;
const SYN: u8 = 0x02;
/// Addresses tried per family; enough for a few dozen records.
const MAX_PROBES: usize = 96;
/// A query for example.org A, as a guest resolver would send.
const QUERY: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01";

fn policy() -> NetworkPolicy {
    let rule = |protocol, ports: (u16, u16), hosts: &[&str]| NetRule {
        action: Action::Allow,
        direction: Direction::Out,
        protocol,
        remote: Vec::new(),
        ports: vec![PortRange {
            first: ports.0,
            last: ports.1,
        }],
        hosts: hosts
            .iter()
            .filter_map(|host| HostPattern::parse(host).ok())
            .collect(),
        comment: None,
    };
    NetworkPolicy {
        default_action: Action::Deny,
        rules: vec![
            rule(Protocol::Udp, (53, 53), &[]),
            rule(Protocol::Tcp, (443, 443), &["*.example.org"]),
        ],
        dns_resolvers: vec![IpAddr::V4(RESOLVER)],
        vpn: None,
    }
}

fn contains_label(message: &[u8], label: &[u8]) -> bool {
    message.windows(label.len() + 1).any(|window| {
        usize::from(window[0]) == label.len() && window[1..].eq_ignore_ascii_case(label)
    })
}

/// Whether `address` could have come from a learned name: checked only
/// for addresses the filter let the guest connect to.
fn assert_learnable(message: &[u8], address: &[u8], learned_from_resolver: bool, expired: bool) {
    assert!(
        learned_from_resolver,
        "learned an address from a reply that was not the resolver's"
    );
    assert!(!expired, "an answer outlived the longest TTL");
    assert!(
        contains_label(message, b"example") && contains_label(message, b"org"),
        "learned a name that does not match *.example.org"
    );
    let len = address.len();
    assert!(
        message
            .windows(len + 2)
            .any(|window| window[..2] == [0, len as u8] && &window[2..] == address),
        "learned {address:02x?}, which is not the data of a {len}-byte record"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, message)) = data.split_first() else {
        return;
    };
    let policy = policy();
    let (mut filter, _control) = Filter::new(FilterConfig {
        guest_mac: GUEST_MAC,
        guest_ipv4: vec![GUEST_V4],
        guest_ipv6: vec![GUEST_V6],
        conntrack_capacity: 4 * MAX_PROBES,
        policy: &policy,
    });
    let mut now = Instant::now();
    let guest = (IpAddr::V4(GUEST_V4), QUERY_PORT);
    let query = udp_frame(
        GUEST_MAC,
        ROUTER_MAC,
        guest,
        (IpAddr::V4(RESOLVER), 53),
        QUERY,
    );
    assert_eq!(
        filter.outbound(&query, now),
        Verdict::Pass,
        "the policy allows DNS queries"
    );

    let from_resolver_address = flags & 1 == 0;
    let from_port_53 = flags & 2 == 0;
    let source = if from_resolver_address {
        RESOLVER
    } else {
        NOT_RESOLVER
    };
    let source_port = if from_port_53 { 53 } else { 5353 };
    let reply = udp_frame(
        ROUTER_MAC,
        GUEST_MAC,
        (IpAddr::V4(source), source_port),
        guest,
        message,
    );
    let _ = filter.inbound(&reply, now);
    let expired = flags & 4 != 0;
    if expired {
        now += Duration::from_secs(2 * 60 * 60);
    }
    let from_resolver = from_resolver_address && from_port_53;

    for window in message.windows(4).take(MAX_PROBES) {
        let address = IpAddr::V4(Ipv4Addr::new(window[0], window[1], window[2], window[3]));
        let syn = tcp_frame(
            GUEST_MAC,
            ROUTER_MAC,
            (IpAddr::V4(GUEST_V4), 40_000),
            (address, 443),
            SYN,
        );
        if filter.outbound(&syn, now) == Verdict::Pass {
            assert_learnable(message, window, from_resolver, expired);
        }
    }
    for window in message.windows(16).take(MAX_PROBES) {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(window);
        let address = IpAddr::V6(Ipv6Addr::from(octets));
        let syn = tcp_frame(
            GUEST_MAC,
            ROUTER_MAC,
            (IpAddr::V6(GUEST_V6), 40_000),
            (address, 443),
            SYN,
        );
        if filter.outbound(&syn, now) == Verdict::Pass {
            assert_learnable(message, window, from_resolver, expired);
        }
    }
});
