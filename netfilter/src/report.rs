//! What the filter tells the rest of the VMM: per-direction counters that
//! any thread can read, and a rate-limited queue of refusal events for the
//! log and audit trail.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::rules::Decider;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A deny rule matched (the refusal event names it).
    Rule,
    /// No rule matched and the default action is deny.
    Default,
    /// Outgoing DNS to an address that is not one of the policy's resolvers.
    DnsResolver,
    /// The guest used a MAC or IP address that is not its own.
    Spoof,
    /// The connection table is full; new flows are refused.
    TableFull,
    /// Truncated or malformed headers.
    Unparseable,
    /// Well-formed but never passed: VLAN tags, other EtherTypes, jumbograms,
    /// ICMP redirects, router advertisements from the guest.
    Unsupported,
    /// A fragment that belongs to no allowed packet.
    Fragment,
    /// An inbound frame addressed to another MAC or IP address.
    NotForGuest,
    /// A TCP reset without a flow, or NDP or MLD that would leave the link
    /// (wrong hop limit, a destination beyond the link, fragmented).
    Invalid,
    /// An established flow that a replaced policy no longer allows.
    Cut,
    /// IPv4 options or IPv6 extension headers the filter never passes:
    /// source routes, routing and authentication headers, unknown options.
    IpOptions,
    /// An ICMP or ICMPv6 error longer than the RFCs allow (576 bytes for
    /// IPv4, 1280 for IPv6), or fragmented.
    IcmpError,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 13] = [
        DropReason::Rule,
        DropReason::Default,
        DropReason::DnsResolver,
        DropReason::Spoof,
        DropReason::TableFull,
        DropReason::Unparseable,
        DropReason::Unsupported,
        DropReason::Fragment,
        DropReason::NotForGuest,
        DropReason::Invalid,
        DropReason::Cut,
        DropReason::IpOptions,
        DropReason::IcmpError,
    ];

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or(0)
    }

    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Rule => "rule",
            DropReason::Default => "default",
            DropReason::DnsResolver => "dns-resolver",
            DropReason::Spoof => "spoof",
            DropReason::TableFull => "table-full",
            DropReason::Unparseable => "unparseable",
            DropReason::Unsupported => "unsupported",
            DropReason::Fragment => "fragment",
            DropReason::NotForGuest => "not-for-guest",
            DropReason::Invalid => "invalid",
            DropReason::Cut => "cut",
            DropReason::IpOptions => "ip-options",
            DropReason::IcmpError => "icmp-error",
        }
    }

    pub(crate) fn from_decider(decider: Decider) -> Self {
        match decider {
            Decider::Rule(_) => DropReason::Rule,
            Decider::Default => DropReason::Default,
            Decider::DnsResolver => DropReason::DnsResolver,
        }
    }
}

/// Direction of a frame through the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameDirection {
    /// From the guest to the network.
    Outbound,
    /// From the network to the guest.
    Inbound,
}

impl FrameDirection {
    fn index(self) -> usize {
        match self {
            FrameDirection::Outbound => 0,
            FrameDirection::Inbound => 1,
        }
    }
}

/// One refused frame, with as much of its 5-tuple as could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub direction: FrameDirection,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: Option<u8>,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    pub reason: DropReason,
    /// The deciding rule (0-based index in the role's rules) for `Rule` and `Cut`.
    pub rule: Option<usize>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = match self.direction {
            FrameDirection::Outbound => "outbound",
            FrameDirection::Inbound => "inbound",
        };
        let protocol = match self.protocol {
            Some(6) => "tcp".to_string(),
            Some(17) => "udp".to_string(),
            Some(1) => "icmp".to_string(),
            Some(58) => "icmpv6".to_string(),
            Some(other) => format!("ip-proto-{other}"),
            None => "non-ip".to_string(),
        };
        let end = |address: Option<IpAddr>, port: Option<u16>| match (address, port) {
            (Some(IpAddr::V6(address)), Some(port)) => format!("[{address}]:{port}"),
            (Some(address), Some(port)) => format!("{address}:{port}"),
            (Some(address), None) => address.to_string(),
            (None, _) => "?".to_string(),
        };
        write!(
            f,
            "refused {direction} {protocol} {} -> {} ({}",
            end(self.source, self.source_port),
            end(self.destination, self.destination_port),
            self.reason.as_str()
        )?;
        match self.rule {
            Some(rule) => write!(f, " {rule})"),
            None => write!(f, ")"),
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    pub passed: u64,
    /// Indexed like [`DropReason::ALL`]; read with [`DirectionCounters::dropped`].
    pub dropped_by_reason: [u64; DropReason::ALL.len()],
}

impl DirectionCounters {
    /// Frames dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped_by_reason[reason.index()]
    }

    /// Frames dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_by_reason.iter().sum()
    }
}

/// A snapshot of the filter's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterCounters {
    pub outbound: DirectionCounters,
    pub inbound: DirectionCounters,
    /// Refusal events queued for [`super::FilterControl::drain_refusals`].
    pub refusals_reported: u64,
    /// Refusal events not queued because of the rate limit or a full queue.
    pub refusals_suppressed: u64,
    /// Flows in the connection table at the last update.
    pub tracked_flows: u64,
    /// Current rules generation (1 for the initial policy).
    pub rules_generation: u64,
}

/// Counters shared between the filter and its controls.
#[derive(Debug, Default)]
pub(crate) struct SharedCounters {
    passed: [AtomicU64; 2],
    dropped: [[AtomicU64; DropReason::ALL.len()]; 2],
    reported: AtomicU64,
    suppressed: AtomicU64,
    tracked_flows: AtomicU64,
}

impl SharedCounters {
    pub(crate) fn count_pass(&self, direction: FrameDirection) {
        self.passed[direction.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_drop(&self, direction: FrameDirection, reason: DropReason) {
        self.dropped[direction.index()][reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_tracked_flows(&self, flows: usize) {
        self.tracked_flows.store(flows as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, rules_generation: u64) -> FilterCounters {
        let direction = |index: usize| DirectionCounters {
            passed: self.passed[index].load(Ordering::Relaxed),
            dropped_by_reason: std::array::from_fn(|reason| {
                self.dropped[index][reason].load(Ordering::Relaxed)
            }),
        };
        FilterCounters {
            outbound: direction(0),
            inbound: direction(1),
            refusals_reported: self.reported.load(Ordering::Relaxed),
            refusals_suppressed: self.suppressed.load(Ordering::Relaxed),
            tracked_flows: self.tracked_flows.load(Ordering::Relaxed),
            rules_generation,
        }
    }
}

/// Most refusal events reported per second on average.
pub const REFUSALS_PER_SECOND: u32 = 50;
/// Most refusal events reported in one burst.
pub const REFUSAL_BURST: u32 = 100;
/// Most undrained refusal events kept.
pub const REFUSAL_QUEUE_CAPACITY: usize = 1024;

/// Token bucket deciding which refusals are reported.
#[derive(Debug)]
pub(crate) struct RefusalLimiter {
    tokens: f64,
    last_refill: Option<Instant>,
}

impl Default for RefusalLimiter {
    fn default() -> Self {
        RefusalLimiter {
            tokens: f64::from(REFUSAL_BURST),
            last_refill: None,
        }
    }
}

impl RefusalLimiter {
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last_refill {
            let elapsed = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(60));
            self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(REFUSALS_PER_SECOND))
                .min(f64::from(REFUSAL_BURST));
        }
        self.last_refill = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Refusals waiting to be drained.
#[derive(Debug, Default)]
pub(crate) struct RefusalQueue {
    events: Mutex<VecDeque<Refusal>>,
}

impl RefusalQueue {
    pub(crate) fn push(&self, refusal: Refusal, counters: &SharedCounters) {
        let mut events = crate::lock(&self.events);
        if events.len() >= REFUSAL_QUEUE_CAPACITY {
            counters.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        events.push_back(refusal);
        counters.reported.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn suppress(&self, counters: &SharedCounters) {
        counters.suppressed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn drain(&self) -> Vec<Refusal> {
        let mut events = crate::lock(&self.events);
        events.drain(..).collect()
    }
}
