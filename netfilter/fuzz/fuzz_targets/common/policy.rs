//! The network policy the filter targets run under: a resolver, a host
//! name rule, a denied range inside an allowed one, an inbound port and
//! ICMP both ways; `open` adds an allow-everything rule, so a policy
//! replacement can widen and narrow what passes.

use guest_policy::{Action, Direction, HostPattern, NetRule, NetworkPolicy, PortRange, Protocol};

pub fn rule(
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

pub fn policy(open: bool) -> NetworkPolicy {
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
