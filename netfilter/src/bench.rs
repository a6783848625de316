//! Measures the filter's cost per packet on random rule sets, so
//! `securevm bench net` can print `filter-ns-per-packet-10k`.
//!
//! The rule sets look like allow-lists: most rules name a few CIDR blocks
//! (IPv4 and IPv6) and ports, some have no address, some deny, a few use
//! host names. Packets are complete Ethernet frames the guest sends: TCP
//! SYNs, UDP datagrams and ICMP echo requests to random destinations, each
//! a new flow, so every packet is parsed, checked for spoofing, decided by
//! the rules and (when allowed) entered into the connection table. The
//! same frames are then sent again to measure the established-flow path.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use guest_policy::{Action, Connection, NetworkPolicy, PortRange, Protocol};
use ipnet::IpNet;

use super::random::{Rng, Universe};
use super::rules::{CompiledRules, Query};
use super::{Filter, FilterConfig, Verdict};

/// The benchmark guest's MAC.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const GUEST_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 2);
const GUEST_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const FLOWS_PER_ROUND: usize = 20_000;
const ROUNDS: usize = 5;

/// Figures for one rule-set size; all in nanoseconds per packet. Rule
/// decisions are the median of 5 rounds; whole-frame figures the mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetBenchReport {
    /// Rules in the policy.
    pub rules: usize,
    /// The compiled rule decision alone (no parsing, no state), over 20 000
    /// different connections, so the tables are mostly not in cache.
    pub rule_lookup_ns: f64,
    /// The same over a working set of 256 connections (tables in cache).
    pub rule_lookup_hot_ns: f64,
    /// `NetworkPolicy::decide` (a linear scan) on the same connections,
    /// for comparison in the same run.
    pub linear_scan_ns: f64,
    /// Whole `Filter::outbound` for packets opening new flows.
    pub new_flow_ns: f64,
    /// Whole `Filter::outbound` for packets of tracked flows.
    pub established_ns: f64,
    /// Share of new flows the rules allowed (sanity: the mix is not all one verdict).
    pub allowed_fraction: f64,
    /// Bytes of the compiled lookup tables.
    pub table_bytes: usize,
}

/// The benchmark's rule and address space: 10.0.0.0/8 and 2001:db8::/104
/// with ports up to 10 000.
fn universe() -> Universe {
    Universe {
        address_bits: 24,
        port_limit: 10_000,
        host_rule_percent: 2,
        allow_percent: 70,
        realistic_prefixes: true,
    }
}

/// A random policy with `rule_count` rules, default deny.
/// Rules without addresses always name ports, as in an allow-list (a
/// port-less "any address" TCP/UDP rule near the top would decide nearly
/// every packet by itself).
pub fn random_policy(rule_count: usize, seed: u64) -> NetworkPolicy {
    let mut rng = Rng::new(seed);
    let universe = universe();
    let mut policy = universe.policy(&mut rng, rule_count);
    policy.default_action = Action::Deny;
    for rule in &mut policy.rules {
        let carries_ports = matches!(rule.protocol, Protocol::Tcp | Protocol::Udp | Protocol::Any);
        if rule.remote.is_empty() && rule.ports.is_empty() && carries_ports {
            let port = universe.port(&mut rng);
            rule.ports.push(PortRange {
                first: port,
                last: port,
            });
        }
    }
    policy
}

/// A destination for benchmark traffic: half inside a block some rule
/// names, half anywhere in the universe.
fn destination(rng: &mut Rng, policy: &NetworkPolicy, ipv6: bool) -> IpAddr {
    let named = policy
        .rules
        .get(rng.index(policy.rules.len().max(1)))
        .and_then(|rule| {
            rule.remote
                .iter()
                .find(|net| matches!(net, IpNet::V6(_)) == ipv6)
        });
    match named {
        Some(IpNet::V4(net)) if rng.chance(50) => {
            let span = u64::from(u32::from(net.broadcast()) - u32::from(net.network())) + 1;
            let offset = u32::try_from(rng.below(span)).expect("an offset inside an IPv4 block");
            IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) + offset))
        }
        Some(IpNet::V6(net)) if rng.chance(50) => {
            // Blocks wider than 2^64 addresses are sampled in their first 2^64.
            let span = u64::try_from(u128::from(net.broadcast()) - u128::from(net.network()))
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            IpAddr::V6(Ipv6Addr::from(
                u128::from(net.network()) + u128::from(rng.below(span)),
            ))
        }
        _ => universe().address(rng, ipv6),
    }
}

/// An Ethernet frame from `source` to `destination` carrying a TCP segment
/// with `flags` (bit values as in the TCP header: SYN 0x02, ACK 0x10, ...).
pub fn tcp_frame(
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    source: (IpAddr, u16),
    destination: (IpAddr, u16),
    flags: u8,
) -> Vec<u8> {
    let builder = ip_builder(source_mac, destination_mac, source.0, destination.0).tcp(
        source.1,
        destination.1,
        1000,
        65535,
    );
    let builder = if flags & 0x02 != 0 {
        builder.syn()
    } else {
        builder
    };
    let builder = if flags & 0x10 != 0 {
        builder.ack(1)
    } else {
        builder
    };
    let builder = if flags & 0x01 != 0 {
        builder.fin()
    } else {
        builder
    };
    let builder = if flags & 0x04 != 0 {
        builder.rst()
    } else {
        builder
    };
    let mut frame = Vec::with_capacity(builder.size(0));
    // Writing into a Vec cannot fail for well-formed builder input.
    builder.write(&mut frame, &[]).unwrap_or_default();
    frame
}

/// An Ethernet frame carrying a UDP datagram with `payload`.
pub fn udp_frame(
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    source: (IpAddr, u16),
    destination: (IpAddr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = ip_builder(source_mac, destination_mac, source.0, destination.0)
        .udp(source.1, destination.1);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).unwrap_or_default();
    frame
}

/// An Ethernet frame carrying an ICMP or ICMPv6 echo request (`reply`
/// false) or reply.
pub fn echo_frame(
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    source: IpAddr,
    destination: IpAddr,
    identifier: u16,
    reply: bool,
) -> Vec<u8> {
    let step = ip_builder(source_mac, destination_mac, source, destination);
    let echo = etherparse::IcmpEchoHeader {
        id: identifier,
        seq: 1,
    };
    let mut frame = Vec::new();
    match (source, reply) {
        (IpAddr::V4(_), false) => step
            .icmpv4(etherparse::Icmpv4Type::EchoRequest(echo))
            .write(&mut frame, &[]),
        (IpAddr::V4(_), true) => step
            .icmpv4(etherparse::Icmpv4Type::EchoReply(echo))
            .write(&mut frame, &[]),
        (IpAddr::V6(_), false) => step
            .icmpv6(etherparse::Icmpv6Type::EchoRequest(echo))
            .write(&mut frame, &[]),
        (IpAddr::V6(_), true) => step
            .icmpv6(etherparse::Icmpv6Type::EchoReply(echo))
            .write(&mut frame, &[]),
    }
    .unwrap_or_default();
    frame
}

fn ip_builder(
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
    source: IpAddr,
    destination: IpAddr,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let ethernet = PacketBuilder::ethernet2(source_mac, destination_mac);
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            ethernet.ipv4(source.octets(), destination.octets(), 64)
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            ethernet.ipv6(source.octets(), destination.octets(), 64)
        }
        (IpAddr::V4(source), IpAddr::V6(destination)) => ethernet.ipv4(
            source.octets(),
            destination
                .to_ipv4_mapped()
                .unwrap_or(Ipv4Addr::UNSPECIFIED)
                .octets(),
            64,
        ),
        (IpAddr::V6(source), IpAddr::V4(destination)) => {
            ethernet.ipv6(source.octets(), destination.to_ipv6_mapped().octets(), 64)
        }
    }
}

/// New-flow frames from the benchmark guest to random destinations.
fn new_flow_frames(rng: &mut Rng, policy: &NetworkPolicy) -> Vec<Vec<u8>> {
    let universe = universe();
    (0..FLOWS_PER_ROUND)
        .map(|index| {
            let ipv6 = rng.chance(20);
            let guest = if ipv6 {
                IpAddr::V6(GUEST_IPV6)
            } else {
                IpAddr::V4(GUEST_IPV4)
            };
            let remote = destination(rng, policy, ipv6);
            let guest_port = 20_000 + u16::try_from(index % 40_000).expect("below 40 000");
            let remote_port = if rng.chance(50) {
                *rng.pick(&[22, 80, 443, 8080, 3306, 5432])
            } else {
                universe.port(rng)
            };
            match rng.below(100) {
                0..=69 => tcp_frame(
                    GUEST_MAC,
                    PEER_MAC,
                    (guest, guest_port),
                    (remote, remote_port),
                    0x02,
                ),
                70..=94 => udp_frame(
                    GUEST_MAC,
                    PEER_MAC,
                    (guest, guest_port),
                    (remote, remote_port),
                    &[0; 32],
                ),
                _ => echo_frame(GUEST_MAC, PEER_MAC, guest, remote, guest_port, false),
            }
        })
        .collect()
}

/// The median of `ROUNDS` measurements: on a shared machine a round that
/// lost the CPU to another process says nothing about the filter.
fn median_of_rounds(mut measure_round: impl FnMut() -> f64) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS).map(|_| measure_round()).collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn nanoseconds_per(elapsed: Duration, count: usize) -> f64 {
    elapsed.as_nanos() as f64 / count.max(1) as f64
}

/// Measures all figures for a rule set of `rule_count` rules.
pub fn measure(rule_count: usize) -> NetBenchReport {
    let policy = random_policy(rule_count, 0x5ec0_7e11 ^ rule_count as u64);
    let mut rng = Rng::new(42);
    let frames = new_flow_frames(&mut rng, &policy);

    let compiled = CompiledRules::compile(&policy);
    let universe = universe();
    let queries: Vec<Query> = (0..FLOWS_PER_ROUND)
        .map(|_| {
            let (direction, protocol, _, port) =
                universe.connection(&mut rng, &policy.dns_resolvers);
            let ipv6 = rng.chance(20);
            Query {
                direction,
                protocol,
                remote: destination(&mut rng, &policy, ipv6),
                port,
            }
        })
        .collect();
    let no_names: [Arc<str>; 0] = [];
    let rule_lookup_ns = median_of_rounds(|| {
        let started = Instant::now();
        for query in &queries {
            black_box(compiled.decide(black_box(query), &no_names));
        }
        nanoseconds_per(started.elapsed(), queries.len())
    });
    // The same decisions for a working set of 256 connections, as when a
    // guest talks to a handful of services and the tables stay in cache.
    let hot = &queries[..256.min(queries.len())];
    let hot_rounds = (ROUNDS * queries.len()) / hot.len().max(1);
    let rule_lookup_hot_ns = median_of_rounds(|| {
        let started = Instant::now();
        for _ in 0..hot_rounds / ROUNDS {
            for query in hot {
                black_box(compiled.decide(black_box(query), &no_names));
            }
        }
        nanoseconds_per(started.elapsed(), hot_rounds / ROUNDS * hot.len())
    });
    let started = Instant::now();
    for query in &queries {
        let connection = Connection {
            direction: query.direction,
            protocol: query.protocol,
            remote: query.remote,
            port: query.port,
            host: None,
        };
        black_box(policy.decide(black_box(&connection)));
    }
    let linear_scan_ns = nanoseconds_per(started.elapsed(), queries.len());

    let mut new_flow_time = Duration::ZERO;
    let mut established_time = Duration::ZERO;
    let mut established_packets = 0;
    let mut allowed = 0;
    let clock = Instant::now();
    for _ in 0..ROUNDS {
        let (mut filter, _control) = Filter::new(FilterConfig {
            guest_mac: GUEST_MAC,
            guest_ipv4: vec![GUEST_IPV4],
            guest_ipv6: vec![GUEST_IPV6],
            conntrack_capacity: FLOWS_PER_ROUND * 2,
            policy: &policy,
        });
        // Grow the connection table once and let it expire, so the timed
        // round sees a long-running filter rather than a table's first growth.
        for frame in &frames {
            filter.outbound(frame, clock);
        }
        let clock = clock + Duration::from_secs(3 * 60 * 60);
        filter.outbound(&frames[0], clock);
        let started = Instant::now();
        let verdicts: Vec<Verdict> = frames
            .iter()
            .map(|frame| filter.outbound(black_box(frame), clock))
            .collect();
        new_flow_time += started.elapsed();
        let passed: Vec<&Vec<u8>> = frames
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| **verdict == Verdict::Pass)
            .map(|(frame, _)| frame)
            .collect();
        allowed += passed.len();
        let started = Instant::now();
        for frame in &passed {
            black_box(filter.outbound(black_box(frame), clock));
        }
        established_time += started.elapsed();
        established_packets += passed.len();
    }
    NetBenchReport {
        rules: rule_count,
        rule_lookup_ns,
        rule_lookup_hot_ns,
        linear_scan_ns,
        new_flow_ns: nanoseconds_per(new_flow_time, ROUNDS * frames.len()),
        established_ns: nanoseconds_per(established_time, established_packets),
        allowed_fraction: allowed as f64 / (ROUNDS * frames.len()) as f64,
        table_bytes: compiled.table_bytes(),
    }
}

/// Measures rule sets of 10, 1 000 and 10 000 rules and hands `print`
/// one line per size as it is done, then the line scripts read,
/// `filter-ns-per-packet-10k: N` (the cold rule decision with 10 000
/// rules). `securevm bench net` prints these lines.
pub fn run(mut print: impl FnMut(&str)) {
    let mut decision_10k = f64::NAN;
    for rules in [10, 1_000, 10_000] {
        let report = measure(rules);
        if rules == 10_000 {
            decision_10k = report.rule_lookup_ns;
        }
        print(&report_line(&report));
    }
    print(&format!("filter-ns-per-packet-10k: {decision_10k:.1}"));
}

/// The line `securevm bench net` prints for one rule-set size.
pub fn report_line(report: &NetBenchReport) -> String {
    format!(
        "rules {:>6}: rule decision {:>6.1} ns (hot cache {:>5.1} ns, linear scan {:>8.1} ns); whole frame: new flow {:>6.1} ns, established flow {:>6.1} ns ({:.0}% of new flows allowed; tables {} KiB)",
        report.rules,
        report.rule_lookup_ns,
        report.rule_lookup_hot_ns,
        report.linear_scan_ns,
        report.new_flow_ns,
        report.established_ns,
        report.allowed_fraction * 100.0,
        report.table_bytes / 1024
    )
}
