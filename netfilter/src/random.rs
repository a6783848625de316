//! Seeded random policies and connections, for the agreement tests against
//! `NetworkPolicy::decide` and for the benchmark's rule sets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guest_policy::{Action, Direction, HostPattern, NetRule, NetworkPolicy, PortRange, Protocol};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::rules::PROTOCOLS;

/// SplitMix64: small, fast, and good enough to spread test inputs.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A number in `0..bound` (`bound` > 0).
    pub(crate) fn below_u16(&mut self, bound: u16) -> u16 {
        u16::try_from(self.below(u64::from(bound))).expect("a number below a u16 fits a u16")
    }

    /// An index into `len` items (`len` > 0).
    pub(crate) fn index(&mut self, len: usize) -> usize {
        let bound = u64::try_from(len).expect("a length fits a u64");
        usize::try_from(self.below(bound)).expect("a number below a usize fits a usize")
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

/// The address and port space random inputs are drawn from. Small spaces
/// make rules overlap and collide, which is what the agreement tests need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Universe {
    /// IPv4 addresses are `10.0.0.0` plus `address_bits` random low bits,
    /// IPv6 addresses `2001:db8::` plus as many.
    pub(crate) address_bits: u32,
    /// Ports are drawn from `1..=port_limit`.
    pub(crate) port_limit: u16,
    /// Percentage of rules with host patterns.
    pub(crate) host_rule_percent: u64,
    /// Percentage of allow rules.
    pub(crate) allow_percent: u64,
    /// Prefix lengths like an allow-list's (mostly hosts and /24s, few
    /// wide blocks) instead of uniformly spread ones.
    pub(crate) realistic_prefixes: bool,
}

pub(crate) const HOST_PATTERNS: [&str; 5] = [
    "a.example.org",
    "b.example.org",
    "*.example.org",
    "*.a.example.org",
    "other.test",
];

#[cfg(test)]
pub(crate) const QUERY_NAMES: [&str; 6] = [
    "a.example.org",
    "x.a.example.org",
    "example.org",
    "b.example.org",
    "other.test",
    "unrelated.net",
];

impl Universe {
    pub(crate) fn address(&self, rng: &mut Rng, ipv6: bool) -> IpAddr {
        let low = rng.next_u64() & ((1u64 << self.address_bits) - 1);
        if ipv6 {
            IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(low)))
        } else {
            let low = u32::try_from(low).expect("IPv4 universes have at most 32 address bits");
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 | low))
        }
    }

    fn net(&self, rng: &mut Rng) -> IpNet {
        let ipv6 = rng.chance(20);
        let address = self.address(rng, ipv6);
        let bits = u64::from(self.address_bits);
        let host_bits = u8::try_from(if self.realistic_prefixes {
            match rng.below(100) {
                0..=44 => 0,
                45..=69 => 8.min(bits),
                70..=89 => 1 + rng.below(12.min(bits)),
                90..=97 => (13 + rng.below(8)).min(bits),
                _ => (21 + rng.below(4)).min(bits),
            }
        } else {
            rng.below(bits + 1)
        })
        .expect("a prefix has at most 128 host bits");
        match address {
            IpAddr::V4(address) => IpNet::V4(
                Ipv4Net::new(address, 32 - host_bits)
                    .unwrap_or_default()
                    .trunc(),
            ),
            IpAddr::V6(address) => IpNet::V6(
                Ipv6Net::new(address, 128 - host_bits)
                    .unwrap_or_default()
                    .trunc(),
            ),
        }
    }

    pub(crate) fn port(&self, rng: &mut Rng) -> u16 {
        1 + rng.below_u16(self.port_limit)
    }

    fn port_range(&self, rng: &mut Rng) -> PortRange {
        let first = self.port(rng);
        let span = if rng.chance(60) {
            0
        } else {
            rng.below_u16(self.port_limit / 4 + 1)
        };
        PortRange {
            first,
            last: first.saturating_add(span),
        }
    }

    pub(crate) fn rule(&self, rng: &mut Rng) -> NetRule {
        let protocol = *rng.pick(&PROTOCOLS);
        let remote = if rng.chance(15) {
            Vec::new()
        } else {
            (0..1 + rng.below(3)).map(|_| self.net(rng)).collect()
        };
        let ports = if rng.chance(40)
            || !matches!(protocol, Protocol::Tcp | Protocol::Udp | Protocol::Any)
        {
            Vec::new()
        } else {
            (0..1 + rng.below(3))
                .map(|_| self.port_range(rng))
                .collect()
        };
        let hosts = if rng.chance(self.host_rule_percent) {
            (0..1 + rng.below(2))
                .filter_map(|_| {
                    HostPattern::parse(HOST_PATTERNS[rng.index(HOST_PATTERNS.len())]).ok()
                })
                .collect()
        } else {
            Vec::new()
        };
        NetRule {
            action: if rng.chance(self.allow_percent) {
                Action::Allow
            } else {
                Action::Deny
            },
            direction: *rng.pick(&[Direction::In, Direction::Out, Direction::Both]),
            protocol,
            remote,
            ports,
            hosts,
            comment: None,
        }
    }

    pub(crate) fn policy(&self, rng: &mut Rng, rule_count: usize) -> NetworkPolicy {
        NetworkPolicy {
            default_action: if rng.chance(50) {
                Action::Allow
            } else {
                Action::Deny
            },
            rules: (0..rule_count).map(|_| self.rule(rng)).collect(),
            dns_resolvers: (0..1 + rng.below(2))
                .map(|_| {
                    let ipv6 = rng.chance(20);
                    self.address(rng, ipv6)
                })
                .collect(),
            vpn: None,
        }
    }

    /// A random connection's facts: direction, protocol, remote and port.
    pub(crate) fn connection(
        &self,
        rng: &mut Rng,
        resolvers: &[IpAddr],
    ) -> (Direction, Protocol, IpAddr, Option<u16>) {
        let protocol = *rng.pick(&PROTOCOLS);
        let remote = if rng.chance(10) && !resolvers.is_empty() {
            *rng.pick(resolvers)
        } else {
            let ipv6 = rng.chance(20);
            self.address(rng, ipv6)
        };
        let port = matches!(protocol, Protocol::Tcp | Protocol::Udp).then(|| {
            if rng.chance(10) {
                53
            } else {
                self.port(rng)
            }
        });
        let direction = if rng.chance(50) {
            Direction::In
        } else {
            Direction::Out
        };
        (direction, protocol, remote, port)
    }
}
