//! Feeds sequences of arbitrary frames, in both directions, to one packet
//! filter: nothing may panic, and no frame may pass that a correct filter
//! could never pass (an outbound frame from a foreign MAC, an inbound one
//! addressed to another station).
//!
//! Input: records of [control byte][length, 2 bytes big-endian][frame].
//! Control bit 0: inbound; bits 1-5: seconds to advance the clock;
//! bit 6: replace the policy before the frame; bit 7: unused.

#![no_main]

use std::time::{Duration, Instant};

use guest_policy::{Action, Direction, HostPattern, NetRule, NetworkPolicy, PortRange, Protocol};
use libfuzzer_sys::fuzz_target;
use securevm::netfilter::{Filter, FilterConfig, Verdict};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn rule(
    action: Action,
    direction: Direction,
    protocol: Protocol,
    remote: &[&str],
    ports: &[(u16, u16)],
    hosts: &[&str],
) -> NetRule {
    NetRule {
        action,
        direction,
        protocol,
        remote: remote.iter().filter_map(|net| net.parse().ok()).collect(),
        ports: ports
            .iter()
            .map(|&(first, last)| PortRange { first, last })
            .collect(),
        hosts: hosts
            .iter()
            .filter_map(|host| HostPattern::parse(host).ok())
            .collect(),
        comment: None,
    }
}

fn policy(open: bool) -> NetworkPolicy {
    let mut rules = vec![
        rule(
            Action::Allow,
            Direction::Out,
            Protocol::Udp,
            &["10.0.0.53/32"],
            &[(53, 53)],
            &[],
        ),
        rule(
            Action::Allow,
            Direction::Out,
            Protocol::Tcp,
            &[],
            &[(443, 443)],
            &["*.example.org"],
        ),
        rule(
            Action::Deny,
            Direction::Both,
            Protocol::Any,
            &["10.9.0.0/16"],
            &[],
            &[],
        ),
        rule(
            Action::Allow,
            Direction::Out,
            Protocol::Tcp,
            &["10.0.0.0/8", "fd00::/8"],
            &[(1, 1024)],
            &[],
        ),
        rule(
            Action::Allow,
            Direction::In,
            Protocol::Tcp,
            &[],
            &[(22, 22)],
            &[],
        ),
        rule(
            Action::Allow,
            Direction::Both,
            Protocol::Icmp,
            &[],
            &[],
            &[],
        ),
        rule(
            Action::Allow,
            Direction::Both,
            Protocol::Icmpv6,
            &[],
            &[],
            &[],
        ),
    ];
    if open {
        rules.push(rule(
            Action::Allow,
            Direction::Both,
            Protocol::Any,
            &[],
            &[],
            &[],
        ));
    }
    NetworkPolicy {
        default_action: Action::Deny,
        rules,
        dns_resolvers: vec!["10.0.0.53"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())],
        vpn: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let initial = policy(false);
    let (mut filter, control) = Filter::new(FilterConfig {
        guest_mac: GUEST_MAC,
        guest_ipv4: vec!["10.0.0.2".parse().unwrap()],
        guest_ipv6: vec!["fd00::2".parse().unwrap()],
        conntrack_capacity: 8,
        policy: &initial,
    });
    let mut now = Instant::now();
    let mut rest = data;
    let mut open = false;
    while rest.len() >= 3 {
        let control_byte = rest[0];
        let length = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let frame = &rest[3..3 + length];
        rest = &rest[3 + length..];
        now += Duration::from_secs(u64::from((control_byte >> 1) & 0x1f));
        if control_byte & 0x40 != 0 {
            open = !open;
            control.replace_policy(&policy(open));
        }
        if control_byte & 1 == 1 {
            if filter.inbound(frame, now) == Verdict::Pass {
                let destination = &frame[..6];
                assert!(
                    destination == GUEST_MAC || destination[0] & 1 == 1,
                    "inbound pass to a foreign MAC"
                );
            }
        } else if filter.outbound(frame, now) == Verdict::Pass {
            assert_eq!(
                &frame[6..12],
                &GUEST_MAC,
                "outbound pass from a foreign MAC"
            );
        }
    }
    let counters = control.counters();
    assert!(
        counters.refusals_reported
            <= counters.outbound.dropped_total() + counters.inbound.dropped_total()
    );
    let _ = control.drain_refusals();
});
