//! The packet filter between the guest's virtio-net device and the TAP
//! backend: default-deny rules from the role's `NetworkPolicy`, connection
//! tracking, anti-spoofing, host-name rules learned from DNS answers, and
//! rate-limited refusal reports. Plain Rust with no KVM, so it is tested,
//! fuzzed and benchmarked on its own.
//!
//! The device calls [`Filter::outbound`] for every frame the guest sends
//! and [`Filter::inbound`] for every frame the TAP delivers, on its I/O
//! thread; other threads hold a [`FilterControl`] to replace the policy,
//! read counters and drain refusal events.
//!
//! Decisions for a new flow are exactly those of
//! `NetworkPolicy::decide` (tests check this on random policies): DNS only
//! to the policy's resolvers, first matching rule, else the default action.
//! A flow's direction is who sent its first packet; its "port" is the
//! destination port of that packet (the remote port for outbound flows,
//! the guest's port for inbound ones).
//!
//! Link-level traffic the guest needs for its own addresses bypasses the
//! rules but not the spoofing checks: ARP, IPv6 neighbour discovery
//! (router and neighbour solicitations, neighbour advertisements) and MLD.
//! It cannot leave the link: MLD has hop limit 1 and goes from the guest
//! only to the ff02:: group it concerns (MLDv2 reports to ff02::16); NDP
//! has hop limit 255 and goes from the guest only to ff02:: groups,
//! link-local addresses and neighbours heard on the link within a /64 of
//! the guest's addresses (a solicitation only to its target or the
//! target's solicited-node group); both are unfragmented, with only the
//! options and sizes their RFCs define.
//! The guest's addresses are fixed by its configuration: there is no DHCP
//! exception (a discovery from 0.0.0.0 is a spoof, and no answer adds an
//! address).
//!
//! ICMP errors (at most 576 bytes for IPv4, 1280 for IPv6, never
//! fragmented) pass without a rule when they quote a live flow that the
//! rules in force still allow (else the flow is cut): inbound
//! from anywhere on the path, outbound only to the flow's far end.
//! The guest's IPv6 link-local address is the EUI-64 one derived from its
//! MAC. Inbound frames must be addressed to the guest's MAC (or be
//! broadcast/multicast) and to one of its addresses, 255.255.255.255 or a
//! multicast group, and never come from a broadcast or multicast address.
//!
//! Fragments: a first fragment (offset 0, with its layer-4 header) is
//! decided like a whole packet; when it passes, the later fragments of the
//! same series (addresses, protocol, identification) pass for 30 s, or
//! until the policy is replaced. Any
//! other fragment is dropped. VLAN-tagged frames are dropped. The guest's
//! frames carry nothing after their packet but the zeros that pad a short
//! frame to 60 bytes.
//!
//! Known limits: host names are learned from DNS over UDP only (answers
//! over TCP pass but teach nothing); the guest's IPv6 link-local address is
//! assumed to be the EUI-64 one (a guest using stable-privacy link-local
//! addresses must have that address listed in `guest_ipv6`); subnet-directed
//! IPv4 broadcasts to the guest are dropped.

mod conntrack;
mod dns;
mod fragments;
mod neighbours;
mod packet;
mod random;
mod report;
mod rules;

pub mod bench;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use guest_policy::{Action, Direction, NetworkPolicy, Protocol};

use conntrack::{ConnTrack, FlowEntry, FlowKey, TcpState};
use dns::LearnedNames;
use fragments::{FragmentSeries, SeriesKey};
use neighbours::HeardNeighbours;
use packet::{Arp, Body, Embedded, Frame, Icmp, IpPacket, Mld, ParseError, Transport};
use report::{RefusalLimiter, RefusalQueue, SharedCounters};
use rules::{CompiledRules, Query};

pub use report::{
    DirectionCounters, DropReason, FilterCounters, FrameDirection, Refusal, REFUSALS_PER_SECOND,
    REFUSAL_BURST, REFUSAL_QUEUE_CAPACITY,
};
pub use rules::Decider;

/// Locks `mutex`, recovering its data if a panicking thread poisoned it:
/// release builds abort on panic, so that only happens in tests, where the
/// data is still as consistent as every holder keeps it between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Default size of the connection table.
pub const DEFAULT_CONNTRACK_CAPACITY: usize = 65_536;

/// How often expired flows, names and fragment series are reclaimed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver the frame unchanged.
    Pass,
    /// Discard the frame.
    Drop(DropReason),
}

/// How the filter is set up for one guest NIC.
#[derive(Debug, Clone)]
pub struct FilterConfig<'p> {
    /// The only source MAC the guest may use.
    pub guest_mac: [u8; 6],
    /// The guest's IPv4 addresses.
    pub guest_ipv4: Vec<Ipv4Addr>,
    /// The guest's IPv6 addresses (the MAC-derived link-local one is added).
    pub guest_ipv6: Vec<Ipv6Addr>,
    /// Most flows tracked at once; new flows beyond it are refused.
    pub conntrack_capacity: usize,
    /// The role's network rules.
    pub policy: &'p NetworkPolicy,
}

/// The rules in force, shared with the controls.
#[derive(Debug)]
struct Shared {
    rules: Mutex<(u64, Arc<CompiledRules>)>,
    generation: AtomicU64,
    counters: SharedCounters,
    refusals: RefusalQueue,
}

/// Handle for other threads: replace the policy, read counters, drain refusals.
#[derive(Debug, Clone)]
pub struct FilterControl {
    shared: Arc<Shared>,
}

impl FilterControl {
    /// Compiles `policy` and makes it the one in force; returns its
    /// generation. New flows use it at once; an established flow is checked
    /// against it at its next packet (or ICMP error quoting it) and cut
    /// (dropped, forgotten) if it is no longer allowed.
    pub fn replace_policy(&self, policy: &NetworkPolicy) -> u64 {
        let compiled = Arc::new(CompiledRules::compile(policy));
        let mut slot = lock(&self.shared.rules);
        let generation = slot.0 + 1;
        *slot = (generation, compiled);
        self.shared.generation.store(generation, Ordering::Release);
        generation
    }

    /// The counters as they are now.
    pub fn counters(&self) -> FilterCounters {
        self.shared
            .counters
            .snapshot(self.shared.generation.load(Ordering::Acquire))
    }

    /// Takes the refusal events reported since the last call.
    pub fn drain_refusals(&self) -> Vec<Refusal> {
        self.shared.refusals.drain()
    }
}

/// Why the filter refuses a frame, before it is turned into a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Denial {
    reason: DropReason,
    rule: Option<usize>,
}

impl From<DropReason> for Denial {
    fn from(reason: DropReason) -> Self {
        Denial { reason, rule: None }
    }
}

impl From<ParseError> for Denial {
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::Malformed => DropReason::Unparseable.into(),
            ParseError::Unsupported => DropReason::Unsupported.into(),
            ParseError::IpOptions => DropReason::IpOptions.into(),
        }
    }
}

/// What a new flow is opened with, once the rules allowed it.
struct Opening {
    sender: Direction,
    protocol: Protocol,
    rule_port: Option<u16>,
    tcp_flags: u8,
    /// The learned name the deciding rule matched.
    host: Option<Arc<str>>,
}

/// The flow `packet` belongs to, given its ports as sent (source,
/// destination) and the guest's and the remote's addresses.
fn flow_key(
    packet: &IpPacket<'_>,
    outbound: bool,
    (guest, remote): (IpAddr, IpAddr),
    (source_port, destination_port): (u16, u16),
) -> FlowKey {
    let (guest_port, remote_port) = if outbound {
        (source_port, destination_port)
    } else {
        (destination_port, source_port)
    };
    let key = FlowKey {
        protocol: packet.protocol,
        guest,
        remote,
        guest_port,
        remote_port,
    };
    // Echo flows are keyed by the identifier and by who asked (remote
    // port 0: the guest, 1: the remote), so a request from the other
    // side is not mistaken for part of the guest's own ping.
    match &packet.transport {
        Transport::Icmp(Icmp::EchoRequest { identifier }) => FlowKey {
            guest_port: *identifier,
            remote_port: u16::from(!outbound),
            ..key
        },
        Transport::Icmp(Icmp::EchoReply { identifier }) => FlowKey {
            guest_port: *identifier,
            remote_port: u16::from(outbound),
            ..key
        },
        _ => key,
    }
}

fn denial(reason: DropReason, decider: Decider) -> Denial {
    Denial {
        reason,
        rule: match decider {
            Decider::Rule(index) => Some(index),
            Decider::Default | Decider::DnsResolver => None,
        },
    }
}

/// The filter for one guest NIC; owned by the device's I/O thread.
#[derive(Debug)]
pub struct Filter {
    guest_mac: [u8; 6],
    guest_ipv4: Vec<Ipv4Addr>,
    guest_ipv6: Vec<Ipv6Addr>,
    shared: Arc<Shared>,
    rules: Arc<CompiledRules>,
    generation: u64,
    flows: ConnTrack,
    names: LearnedNames,
    fragments: FragmentSeries,
    neighbours: HeardNeighbours,
    limiter: RefusalLimiter,
    next_sweep: Option<Instant>,
    name_buffer: Vec<Arc<str>>,
}

/// The EUI-64 link-local address of `mac`.
pub fn link_local_ipv6(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// Longest ICMP error, as a whole IPv4 datagram (RFC 792, RFC 1812 4.3.2.3).
const MAX_ICMP_ERROR_V4: usize = 576;
/// Longest ICMPv6 error, as a whole IPv6 packet (RFC 4443 2.4).
const MAX_ICMP_ERROR_V6: usize = 1280;
/// All MLD-capable routers (MLD done messages go there).
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// All MLDv2-capable routers (MLDv2 reports go there).
const ALL_MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);

fn is_link_scope_multicast(address: Ipv6Addr) -> bool {
    address.segments()[0] == 0xff02
}

fn is_link_local(address: Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

/// ff02::1:ffXX:XXXX, where duplicate address detection asks.
fn is_solicited_node(address: Ipv6Addr) -> bool {
    let segments = address.segments();
    segments[..6] == [0xff02, 0, 0, 0, 0, 1] && segments[6] & 0xff00 == 0xff00
}

/// The solicited-node group of `address` (RFC 4291 2.7.1).
fn solicited_node(address: Ipv6Addr) -> Ipv6Addr {
    let low = address.segments();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | (low[6] & 0xff), low[7])
}

/// Shortest Ethernet frame without its FCS; shorter ones are padded to it.
const MIN_FRAME_LEN: usize = 60;

/// Whether the bytes after `frame`'s packet are only the zeros that pad a
/// short frame to the minimum size. Anything more would be data that no
/// check saw, delivered to every host on the link that sees the frame.
fn is_zero_padding(frame: &Frame<'_>, frame_len: usize) -> bool {
    frame.trailing.is_empty()
        || (frame_len <= MIN_FRAME_LEN && frame.trailing.iter().all(|byte| *byte == 0))
}

fn is_group_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(address) => address.is_multicast() || address.is_broadcast(),
        IpAddr::V6(address) => address.is_multicast(),
    }
}

impl Filter {
    /// Builds the filter and the control handle that goes with it.
    pub fn new(config: FilterConfig<'_>) -> (Filter, FilterControl) {
        let rules = Arc::new(CompiledRules::compile(config.policy));
        let shared = Arc::new(Shared {
            rules: Mutex::new((1, rules.clone())),
            generation: AtomicU64::new(1),
            counters: SharedCounters::default(),
            refusals: RefusalQueue::default(),
        });
        let mut guest_ipv6 = config.guest_ipv6;
        let link_local = link_local_ipv6(config.guest_mac);
        if !guest_ipv6.contains(&link_local) {
            guest_ipv6.push(link_local);
        }
        let filter = Filter {
            guest_mac: config.guest_mac,
            guest_ipv4: config.guest_ipv4,
            guest_ipv6,
            shared: shared.clone(),
            rules,
            generation: 1,
            flows: ConnTrack::new(config.conntrack_capacity),
            names: LearnedNames::default(),
            fragments: FragmentSeries::default(),
            neighbours: HeardNeighbours::default(),
            limiter: RefusalLimiter::default(),
            next_sweep: None,
            name_buffer: Vec::new(),
        };
        (filter, FilterControl { shared })
    }

    /// Decides a frame the guest sent.
    pub fn outbound(&mut self, frame: &[u8], now: Instant) -> Verdict {
        self.process(FrameDirection::Outbound, frame, now)
    }

    /// Decides a frame addressed to the guest.
    pub fn inbound(&mut self, frame: &[u8], now: Instant) -> Verdict {
        self.process(FrameDirection::Inbound, frame, now)
    }

    /// Flows currently tracked.
    pub fn tracked_flows(&self) -> usize {
        self.flows.len()
    }

    fn process(&mut self, direction: FrameDirection, bytes: &[u8], now: Instant) -> Verdict {
        self.refresh_rules();
        self.sweep_if_due(now);
        let parsed = packet::parse_frame(bytes);
        let outcome = match &parsed {
            Ok(frame) => self.judge(direction, frame, bytes.len(), now),
            Err(error) => Err(Denial::from(*error)),
        };
        match outcome {
            Ok(()) => {
                self.shared.counters.count_pass(direction);
                Verdict::Pass
            }
            Err(denial) => {
                self.shared.counters.count_drop(direction, denial.reason);
                self.report(direction, parsed.ok().as_ref(), denial, now);
                Verdict::Drop(denial.reason)
            }
        }
    }

    fn refresh_rules(&mut self) {
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            let slot = lock(&self.shared.rules);
            self.generation = slot.0;
            self.rules = slot.1.clone();
            // A series was allowed by the old rules; its later fragments
            // carry no ports to re-check, so the series ends here.
            self.fragments.forget_all();
        }
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|due| now < due) {
            return;
        }
        self.flows.reclaim_expired(now);
        self.names.forget_expired(now);
        self.fragments.forget_expired(now);
        self.neighbours.forget_expired(now);
        self.shared.counters.set_tracked_flows(self.flows.len());
        self.next_sweep = Some(now + SWEEP_INTERVAL);
    }

    fn report(
        &mut self,
        direction: FrameDirection,
        frame: Option<&Frame<'_>>,
        denial: Denial,
        now: Instant,
    ) {
        if !self.limiter.allow(now) {
            self.shared.refusals.suppress(&self.shared.counters);
            return;
        }
        let mut refusal = Refusal {
            direction,
            protocol: None,
            source: None,
            destination: None,
            source_port: None,
            destination_port: None,
            reason: denial.reason,
            rule: denial.rule,
        };
        match frame.map(|frame| &frame.body) {
            Some(Body::Ip(packet)) => {
                refusal.protocol = Some(packet.protocol);
                refusal.source = Some(packet.source);
                refusal.destination = Some(packet.destination);
                if let Transport::Tcp {
                    source_port,
                    destination_port,
                    ..
                }
                | Transport::Udp {
                    source_port,
                    destination_port,
                    ..
                } = packet.transport
                {
                    refusal.source_port = Some(source_port);
                    refusal.destination_port = Some(destination_port);
                }
            }
            Some(Body::Arp(arp)) => {
                refusal.source = Some(IpAddr::V4(arp.sender_ip));
                refusal.destination = Some(IpAddr::V4(arp.target_ip));
            }
            None => {}
        }
        self.shared.refusals.push(refusal, &self.shared.counters);
    }

    /// Whether `address` is in the /64 of one of the guest's addresses.
    fn shares_a_subnet(&self, address: Ipv6Addr) -> bool {
        let subnet = |address: Ipv6Addr| u128::from(address) >> 64;
        self.guest_ipv6
            .iter()
            .any(|own| subnet(*own) == subnet(address))
    }

    fn is_guest_address(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(address) => self.guest_ipv4.contains(&address),
            IpAddr::V6(address) => self.guest_ipv6.contains(&address),
        }
    }

    fn judge(
        &mut self,
        direction: FrameDirection,
        frame: &Frame<'_>,
        frame_len: usize,
        now: Instant,
    ) -> Result<(), Denial> {
        match direction {
            FrameDirection::Outbound if frame.source_mac != self.guest_mac => {
                return Err(DropReason::Spoof.into())
            }
            FrameDirection::Outbound if !is_zero_padding(frame, frame_len) => {
                return Err(DropReason::Invalid.into())
            }
            FrameDirection::Inbound
                if frame.destination_mac != self.guest_mac && frame.destination_mac[0] & 1 == 0 =>
            {
                return Err(DropReason::NotForGuest.into())
            }
            _ => {}
        }
        match &frame.body {
            Body::Arp(arp) => self.judge_arp(direction, arp),
            Body::Ip(packet) => self.judge_ip(direction, packet, now),
        }
    }

    /// The guest may only announce and ask as itself; ARP from the network passes.
    fn judge_arp(&self, direction: FrameDirection, arp: &Arp) -> Result<(), Denial> {
        if direction == FrameDirection::Inbound {
            return Ok(());
        }
        let is_probe = arp.operation == 1 && arp.sender_ip.is_unspecified();
        let own_sender = self.guest_ipv4.contains(&arp.sender_ip) || is_probe;
        if arp.sender_mac == self.guest_mac && own_sender {
            Ok(())
        } else {
            Err(DropReason::Spoof.into())
        }
    }

    fn judge_ip(
        &mut self,
        direction: FrameDirection,
        packet: &IpPacket<'_>,
        now: Instant,
    ) -> Result<(), Denial> {
        if let Some(outcome) = self.judge_link_control(direction, packet, now) {
            return outcome;
        }
        match direction {
            FrameDirection::Outbound if !self.is_guest_address(packet.source) => {
                return Err(DropReason::Spoof.into())
            }
            // No host sends from a group address; a flow "from" one would
            // let the guest answer to the whole group.
            FrameDirection::Inbound if is_group_address(packet.source) => {
                return Err(DropReason::Spoof.into())
            }
            FrameDirection::Inbound
                if !self.is_guest_address(packet.destination)
                    && !is_group_address(packet.destination) =>
            {
                return Err(DropReason::NotForGuest.into())
            }
            _ => {}
        }
        let series = packet.fragment.map(|fragment| {
            (
                fragment.is_first,
                SeriesKey {
                    source: packet.source,
                    destination: packet.destination,
                    protocol: packet.protocol,
                    identification: fragment.identification,
                },
            )
        });
        if let Transport::Icmp(Icmp::Error { .. }) = packet.transport {
            let longest = match packet.source {
                IpAddr::V4(_) => MAX_ICMP_ERROR_V4,
                IpAddr::V6(_) => MAX_ICMP_ERROR_V6,
            };
            // An error never needs fragmenting: it fits the minimum MTU.
            if packet.fragment.is_some() || packet.length > longest {
                return Err(DropReason::IcmpError.into());
            }
        }
        if let Some((false, key)) = series {
            return if self.fragments.is_allowed(&key, now) {
                Ok(())
            } else {
                Err(DropReason::Fragment.into())
            };
        }
        self.judge_flow(direction, packet, now)?;
        if let Some((true, key)) = series {
            self.fragments.allow(key, now);
        }
        Ok(())
    }

    /// ARP's IPv6 counterpart, MLD and redirects: `None` when `packet` is
    /// not link control and goes to the rules.
    fn judge_link_control(
        &mut self,
        direction: FrameDirection,
        packet: &IpPacket<'_>,
        now: Instant,
    ) -> Option<Result<(), Denial>> {
        let Transport::Icmp(message) = &packet.transport else {
            return None;
        };
        let (IpAddr::V6(source), IpAddr::V6(destination)) = (packet.source, packet.destination)
        else {
            return match message {
                Icmp::Redirect => Some(Err(DropReason::Unsupported.into())),
                _ => None,
            };
        };
        let addresses = (source, destination);
        Some(match message {
            Icmp::Redirect => Err(DropReason::Unsupported.into()),
            Icmp::MulticastListener(mld) => self.judge_mld(direction, packet, addresses, *mld),
            Icmp::RouterSolicitation { .. }
            | Icmp::RouterAdvertisement
            | Icmp::NeighbourSolicitation { .. }
            | Icmp::NeighbourAdvertisement { .. } => {
                self.judge_ndp(direction, packet, addresses, message, now)
            }
            _ => return None,
        })
    }

    /// MLD stays on the link: hop limit 1, from a link-local (or, before
    /// the guest has one, the unspecified) address, and from the guest
    /// only reports and dones to the link-scope groups they belong to.
    fn judge_mld(
        &self,
        direction: FrameDirection,
        packet: &IpPacket<'_>,
        (source, destination): (Ipv6Addr, Ipv6Addr),
        mld: Mld,
    ) -> Result<(), Denial> {
        if packet.fragment.is_some() || packet.hop_limit != 1 {
            return Err(DropReason::Invalid.into());
        }
        let link_source = source.is_unspecified() || is_link_local(source);
        if direction == FrameDirection::Inbound {
            if !link_source {
                return Err(DropReason::Invalid.into());
            }
            if !destination.is_multicast() && !self.is_guest_address(packet.destination) {
                return Err(DropReason::NotForGuest.into());
            }
            return Ok(());
        }
        let own_link_source = link_source && self.is_guest_address(packet.source);
        if !source.is_unspecified() && !own_link_source {
            return Err(DropReason::Spoof.into());
        }
        let expected_destination = match mld {
            Mld::Query => return Err(DropReason::Unsupported.into()),
            Mld::Report { group } => destination == group,
            Mld::Done => destination == ALL_ROUTERS,
            Mld::ReportV2 => destination == ALL_MLDV2_ROUTERS,
        };
        if expected_destination && is_link_scope_multicast(destination) {
            Ok(())
        } else {
            Err(DropReason::Invalid.into())
        }
    }

    /// Neighbour discovery stays on the link (hop limit 255, RFC 4861's
    /// rules for the unspecified source, unfragmented per RFC 6980). The
    /// guest speaks only as itself and only to link-scope groups,
    /// link-local addresses and neighbours it has heard from; inbound
    /// messages must be for the guest, and their senders are remembered.
    fn judge_ndp(
        &mut self,
        direction: FrameDirection,
        packet: &IpPacket<'_>,
        (source, destination): (Ipv6Addr, Ipv6Addr),
        message: &Icmp<'_>,
        now: Instant,
    ) -> Result<(), Denial> {
        if packet.fragment.is_some() || packet.hop_limit != 255 || source.is_multicast() {
            return Err(DropReason::Invalid.into());
        }
        let unspecified_source = source.is_unspecified();
        let valid_source = match message {
            Icmp::NeighbourSolicitation { link_address, .. } if unspecified_source => {
                link_address.is_none() && is_solicited_node(destination)
            }
            Icmp::RouterSolicitation { link_address } if unspecified_source => {
                link_address.is_none()
            }
            Icmp::NeighbourAdvertisement { .. } => !unspecified_source,
            Icmp::RouterAdvertisement => is_link_local(source),
            _ => true,
        };
        if direction == FrameDirection::Inbound {
            if matches!(message, Icmp::RouterSolicitation { .. }) {
                return Err(DropReason::Unsupported.into());
            }
            if !valid_source {
                return Err(DropReason::Invalid.into());
            }
            if !destination.is_multicast() && !self.is_guest_address(packet.destination) {
                return Err(DropReason::NotForGuest.into());
            }
            // Link-local senders need no slot: they are reachable anyway.
            // Anyone on the link can claim any source, so only addresses in
            // the guest's own /64s, which routers keep on this link, are
            // remembered.
            if !unspecified_source && !is_link_local(source) && self.shares_a_subnet(source) {
                self.neighbours.heard(source, now);
            }
            return Ok(());
        }
        let own_source = self.is_guest_address(packet.source);
        let own_link = |link: &Option<[u8; 6]>| link.is_none_or(|link| link == self.guest_mac);
        let speaks_as_guest = match message {
            Icmp::RouterSolicitation { link_address }
            | Icmp::NeighbourSolicitation { link_address, .. } => {
                unspecified_source || (own_source && own_link(link_address))
            }
            Icmp::NeighbourAdvertisement {
                target,
                link_address,
            } => own_source && self.guest_ipv6.contains(target) && own_link(link_address),
            _ => false,
        };
        if !speaks_as_guest {
            return Err(DropReason::Spoof.into());
        }
        // A solicitation asks about its target: unicast to the target
        // itself (unreachability detection), else to the target's
        // solicited-node group; any other target is free data.
        if let Icmp::NeighbourSolicitation { target, .. } = message {
            let asks_destination = if destination.is_multicast() {
                destination == solicited_node(*target)
            } else {
                destination == *target
            };
            if !asks_destination {
                return Err(DropReason::Invalid.into());
            }
        }
        let on_link = is_link_scope_multicast(destination)
            || is_link_local(destination)
            || self.neighbours.is_known(destination, now);
        if valid_source && on_link {
            Ok(())
        } else {
            Err(DropReason::Invalid.into())
        }
    }

    fn judge_flow(
        &mut self,
        direction: FrameDirection,
        packet: &IpPacket<'_>,
        now: Instant,
    ) -> Result<(), Denial> {
        let outbound = direction == FrameDirection::Outbound;
        let (guest, remote) = if outbound {
            (packet.source, packet.destination)
        } else {
            (packet.destination, packet.source)
        };
        let protocol = match packet.protocol {
            packet::PROTO_TCP => Protocol::Tcp,
            packet::PROTO_UDP => Protocol::Udp,
            packet::PROTO_ICMP => Protocol::Icmp,
            packet::PROTO_ICMPV6 => Protocol::Icmpv6,
            _ => Protocol::Any,
        };
        let sender = if outbound {
            Direction::Out
        } else {
            Direction::In
        };
        let mut tcp_flags = 0;
        let (ports, rule_port, opens_flow) = match &packet.transport {
            Transport::Tcp {
                source_port,
                destination_port,
                flags,
                ..
            } => {
                tcp_flags = *flags;
                (
                    Some((*source_port, *destination_port)),
                    Some(*destination_port),
                    true,
                )
            }
            Transport::Udp {
                source_port,
                destination_port,
                ..
            } => (
                Some((*source_port, *destination_port)),
                Some(*destination_port),
                true,
            ),
            Transport::Icmp(Icmp::EchoRequest { .. }) => (Some((0, 0)), None, true),
            Transport::Icmp(Icmp::EchoReply { .. }) => (Some((0, 0)), None, false),
            Transport::Icmp(Icmp::Error { embedded }) => {
                if let Some(outcome) =
                    self.relate_icmp_error(outbound, (guest, remote), embedded, now)
                {
                    return outcome;
                }
                (None, None, false)
            }
            Transport::Icmp(_) => (None, None, false),
            Transport::Other => (Some((0, 0)), None, true),
            Transport::NoHeader => return Err(DropReason::Fragment.into()),
        };
        let key = ports.map(|ports| flow_key(packet, outbound, (guest, remote), ports));

        if let Some(key) = key {
            if let Some(outcome) = self.continue_flow(&key, Some((sender, tcp_flags)), now) {
                outcome?;
                self.learn_from_resolver(direction, packet, &key, now);
                return Ok(());
            }
        }

        if protocol == Protocol::Tcp && tcp_flags & packet::TCP_RST != 0 {
            return Err(DropReason::Invalid.into());
        }
        self.name_buffer.clear();
        if self.rules.has_host_rules() {
            self.names.names_into(remote, now, &mut self.name_buffer);
        }
        let query = Query {
            direction: sender,
            protocol,
            remote,
            port: rule_port,
        };
        let decision = self.rules.decide(&query, &self.name_buffer);
        if decision.action == Action::Deny {
            return Err(denial(
                DropReason::from_decider(decision.decider),
                decision.decider,
            ));
        }
        let Some(key) = key.filter(|_| opens_flow) else {
            return Ok(());
        };
        let host = decision
            .host
            .and_then(|index| self.name_buffer.get(index).cloned());
        let opening = Opening {
            sender,
            protocol,
            rule_port,
            tcp_flags,
            host,
        };
        self.open_flow(key, opening, now)
    }

    /// Tracks the new flow `key` that the rules allowed.
    fn open_flow(&mut self, key: FlowKey, opening: Opening, now: Instant) -> Result<(), Denial> {
        let Opening {
            sender,
            protocol,
            rule_port,
            tcp_flags,
            host,
        } = opening;
        let tcp = (protocol == Protocol::Tcp).then_some({
            if tcp_flags & (packet::TCP_SYN | packet::TCP_ACK) == packet::TCP_SYN {
                TcpState::SynSent
            } else {
                TcpState::PickedUp
            }
        });
        let mut entry = FlowEntry {
            opener: sender,
            protocol,
            rule_port,
            host,
            generation: self.generation,
            tcp,
            expires: now,
        };
        entry.observe(sender, tcp_flags, now);
        self.flows
            .insert(key, entry, now)
            .map_err(|_| Denial::from(DropReason::TableFull))?;
        self.shared.counters.set_tracked_flows(self.flows.len());
        Ok(())
    }

    /// The verdict for an ICMP error that quotes a live flow of the guest
    /// (given the outer packet's guest and remote addresses), `None` when
    /// it relates to no such flow.
    fn relate_icmp_error(
        &mut self,
        outbound: bool,
        (guest, remote): (IpAddr, IpAddr),
        embedded: &Embedded,
        now: Instant,
    ) -> Option<Result<(), Denial>> {
        // The quoted packet went the other way: it is the flow's own packet.
        let quoted_from_guest = !outbound;
        let (quoted_guest, quoted_remote, quoted_ports) = if quoted_from_guest {
            (embedded.source, embedded.destination, embedded.ports)
        } else {
            (
                embedded.destination,
                embedded.source,
                embedded.ports.map(|(a, b)| (b, a)),
            )
        };
        // Routers on the path send errors to the guest too, so inbound
        // only the guest side has to match the outer packet; the
        // guest's own errors go to the flow's far end only.
        let far_end = !outbound || quoted_remote == remote;
        let (guest_port, remote_port) = quoted_ports?;
        if quoted_guest != guest || !far_end {
            return None;
        }
        let quoted_flow = FlowKey {
            protocol: embedded.protocol,
            guest: quoted_guest,
            remote: quoted_remote,
            guest_port,
            remote_port,
        };
        // Checked against the rules in force, like the flow's own
        // packets: a cut flow relates nothing.
        self.continue_flow(&quoted_flow, None, now)
    }

    /// The verdict for a packet of the live flow `key`, `None` when there
    /// is no such flow. A flow not yet checked against the rules in force
    /// is checked now, and cut (forgotten, refused) if they deny it. The
    /// flow's own packets (`sent`: sender and TCP flags) move its state on
    /// and refresh it.
    fn continue_flow(
        &mut self,
        key: &FlowKey,
        sent: Option<(Direction, u8)>,
        now: Instant,
    ) -> Option<Result<(), Denial>> {
        let entry = self.flows.get_mut(key, now)?;
        if entry.generation != self.generation {
            self.name_buffer.clear();
            if self.rules.has_host_rules() {
                self.names
                    .names_into(key.remote, now, &mut self.name_buffer);
                self.name_buffer.extend(entry.host.clone());
            }
            let query = Query {
                direction: entry.opener,
                protocol: entry.protocol,
                remote: key.remote,
                port: entry.rule_port,
            };
            let decision = self.rules.decide(&query, &self.name_buffer);
            if decision.action == Action::Deny {
                self.flows.remove(key);
                return Some(Err(denial(DropReason::Cut, decision.decider)));
            }
            entry.generation = self.generation;
        }
        if let Some((sender, tcp_flags)) = sent {
            entry.observe(sender, tcp_flags, now);
        }
        Some(Ok(()))
    }

    /// Learns names from a DNS answer that a policy resolver sent on a flow
    /// the guest opened.
    fn learn_from_resolver(
        &mut self,
        direction: FrameDirection,
        packet: &IpPacket<'_>,
        key: &FlowKey,
        now: Instant,
    ) {
        let Transport::Udp {
            source_port: dns_port,
            payload,
            ..
        } = packet.transport
        else {
            return;
        };
        let from_resolver = direction == FrameDirection::Inbound
            && dns_port == rules::DNS_PORT
            && key.remote_port == rules::DNS_PORT
            && self.rules.is_resolver(key.remote);
        if !from_resolver || packet.fragment.is_some() {
            return;
        }
        if let Some(response) = dns::parse_response(payload) {
            self.names.learn(&response, now);
        }
    }
}
