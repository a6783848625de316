//! The rule engine: a `NetworkPolicy` compiled into lookup tables that give
//! the same answer as `NetworkPolicy::decide` without scanning the rules.
//!
//! Rules are split by the (direction, protocol) class of connection they can
//! match. Within a class, every CIDR of every rule becomes a block: CIDR
//! blocks are either nested or disjoint, so the blocks containing an
//! address form one chain from the most specific block up to the root
//! (which holds the rules without addresses), and the address space falls
//! into segments whose addresses share a chain. Each block's rules have
//! their port ranges painted in rule order into a port table; each
//! segment then gets its chain's merged answer, the smallest rule index of
//! any block in the chain (which is exactly "first match"): for port-less
//! traffic, and per port as one rule or a merged port table. A lookup finds
//! the segment with one binary search (narrowed, in tables of 256 segments
//! or more, by an index of about one bucket per segment below the prefix
//! all blocks share) and, when the answer depends on the port, one more in
//! the segment's port table. Identical port tables are stored once and
//! neighbouring segments with the same answer are merged, which for large
//! rule sets shrinks the tables several times over (a cold decision's
//! reads then stay within a small, cache-resident area). Memory is linear
//! in the policy size times the depth of block nesting.
//!
//! Rules with `hosts` only match names learned from DNS; they sit in a name
//! index (exact names and parent domains) and are consulted only for
//! addresses that have learned names, checked with `NetRule::matches` itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use guest_policy::{
    Action, Connection, Direction, HostPattern, NetRule, NetworkPolicy, PortRange, Protocol,
};
use ipnet::IpNet;

/// "No rule" in rule-index tables.
const NO_RULE: u32 = u32::MAX;

/// A rule number or table position as the tables store it: `u32` keeps
/// them small. Each counts rules, or blocks, segments and port intervals
/// made from them (a few per rule and address), so reaching `NO_RULE`
/// would take a policy of hundreds of gigabytes, which cannot be loaded
/// in the first place.
fn table_position(index: usize) -> u32 {
    u32::try_from(index)
        .ok()
        .filter(|&position| position != NO_RULE)
        .expect("policy tables hold fewer than 2^32 - 1 entries")
}

/// DNS is only allowed to the policy's resolvers.
pub(crate) const DNS_PORT: u16 = 53;

/// What decided a connection's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decider {
    /// The rule at this index (0-based, in policy order).
    Rule(usize),
    /// No rule matched; the policy's default action applied.
    Default,
    /// Outgoing DNS to an address that is not one of the policy's resolvers.
    DnsResolver,
}

/// The outcome of deciding one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) action: Action,
    pub(crate) decider: Decider,
    /// Index into the `names` given to `decide` of the name whose host rule
    /// decided, so an established flow can be re-checked with it later.
    pub(crate) host: Option<usize>,
}

/// The connection-level facts the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Query {
    /// `In` or `Out`.
    pub(crate) direction: Direction,
    pub(crate) protocol: Protocol,
    pub(crate) remote: IpAddr,
    pub(crate) port: Option<u16>,
}

/// A policy compiled for fast decisions.
#[derive(Debug)]
pub(crate) struct CompiledRules {
    policy: NetworkPolicy,
    /// Each rule's action, packed so the decision's last step stays in cache.
    actions: Vec<Action>,
    classes: Vec<ClassTable>,
    hosts: HostIndex,
}

pub(crate) const PROTOCOLS: [Protocol; 5] = [
    Protocol::Any,
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmp,
    Protocol::Icmpv6,
];
const DIRECTIONS: [Direction; 2] = [Direction::In, Direction::Out];

/// The class table of a connection; `PROTOCOLS` and `DIRECTIONS` give the
/// order in which `compile` builds them.
fn class_index(direction: Direction, protocol: Protocol) -> usize {
    let direction_index = match direction {
        Direction::In => 0,
        Direction::Out | Direction::Both => 1,
    };
    let protocol_index = match protocol {
        Protocol::Any => 0,
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
        Protocol::Icmp => 3,
        Protocol::Icmpv6 => 4,
    };
    direction_index * PROTOCOLS.len() + protocol_index
}

impl CompiledRules {
    /// Compiles `policy`. Cost is about O(n log n) in the policy size.
    pub(crate) fn compile(policy: &NetworkPolicy) -> Self {
        let mut classes = Vec::with_capacity(DIRECTIONS.len() * PROTOCOLS.len());
        for direction in DIRECTIONS {
            for protocol in PROTOCOLS {
                classes.push(ClassTable::build(&policy.rules, direction, protocol));
            }
        }
        CompiledRules {
            policy: policy.clone(),
            actions: policy.rules.iter().map(|rule| rule.action).collect(),
            classes,
            hosts: HostIndex::build(&policy.rules),
        }
    }

    /// Bytes of the lookup tables (segments, indexes, port tables): what a
    /// cold decision may have to bring into cache.
    pub(crate) fn table_bytes(&self) -> usize {
        self.classes
            .iter()
            .map(|class| class.v4.bytes() + class.v6.bytes())
            .sum()
    }

    /// True when `address` is one of the policy's DNS resolvers.
    pub(crate) fn is_resolver(&self, address: IpAddr) -> bool {
        self.policy.dns_resolvers.contains(&address)
    }

    /// True when some rule has host names, so learned names matter.
    pub(crate) fn has_host_rules(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// Decides `query` as `NetworkPolicy::decide` would; with several
    /// learned `names` for the remote address, the first rule that matches
    /// under any of them wins (a deny for one name is not overridden by a
    /// later allow for another).
    pub(crate) fn decide(&self, query: &Query, names: &[Arc<str>]) -> Decision {
        let is_outgoing_dns = query.direction == Direction::Out
            && matches!(query.protocol, Protocol::Tcp | Protocol::Udp)
            && query.port == Some(DNS_PORT);
        if is_outgoing_dns && !self.is_resolver(query.remote) {
            return Decision {
                action: Action::Deny,
                decider: Decider::DnsResolver,
                host: None,
            };
        }
        let class = &self.classes[class_index(query.direction, query.protocol)];
        let mut best = match query.remote {
            IpAddr::V4(address) => class.v4.first_match(u32::from(address), query.port),
            IpAddr::V6(address) => class.v6.first_match(u128::from(address), query.port),
        };
        let mut host = None;
        if !self.hosts.is_empty() {
            for (name_index, name) in names.iter().enumerate() {
                let connection = Connection {
                    direction: query.direction,
                    protocol: query.protocol,
                    remote: query.remote,
                    port: query.port,
                    host: Some(name),
                };
                if let Some(rule) = self
                    .hosts
                    .first_match(&self.policy.rules, &connection, best)
                {
                    best = rule;
                    host = Some(name_index);
                }
            }
        }
        match self.actions.get(best as usize) {
            Some(action) => Decision {
                action: *action,
                decider: Decider::Rule(best as usize),
                host,
            },
            None => Decision {
                action: self.policy.default_action,
                decider: Decider::Default,
                host: None,
            },
        }
    }
}

/// The rules of one (direction, protocol) class, by address family.
#[derive(Debug)]
struct ClassTable {
    v4: AddressTable<u32>,
    v6: AddressTable<u128>,
}

impl ClassTable {
    fn build(rules: &[NetRule], direction: Direction, protocol: Protocol) -> Self {
        let mut v4 = TableBuilder::<u32>::default();
        let mut v6 = TableBuilder::<u128>::default();
        for (index, rule) in rules.iter().enumerate() {
            let applies = direction.within(rule.direction) && protocol.within(rule.protocol);
            if !applies || !rule.hosts.is_empty() {
                continue;
            }
            let index = table_position(index);
            if rule.remote.is_empty() {
                v4.add(0, u32::MAX, index, &rule.ports);
                v6.add(0, u128::MAX, index, &rule.ports);
            }
            for net in &rule.remote {
                match net {
                    IpNet::V4(net) => v4.add(
                        u32::from(net.network()),
                        u32::from(net.broadcast()),
                        index,
                        &rule.ports,
                    ),
                    IpNet::V6(net) => v6.add(
                        u128::from(net.network()),
                        u128::from(net.broadcast()),
                        index,
                        &rule.ports,
                    ),
                }
            }
        }
        ClassTable {
            v4: v4.finish(),
            v6: v6.finish(),
        }
    }
}

/// An address as an unsigned integer of its family.
trait AddressKey: Copy + Ord + std::hash::Hash + std::fmt::Debug {
    const ZERO: Self;
    const MAX: Self;
    const BITS: u32;
    fn successor(self) -> Option<Self>;
    fn widen(self) -> u128;
    /// `self >> bits`, or zero when `bits` is the width or more.
    fn shift_right(self, bits: u32) -> Self;
    /// The low bits as a `usize`.
    fn low_bits(self) -> usize;
}

impl AddressKey for u32 {
    const ZERO: Self = 0;
    const MAX: Self = u32::MAX;
    const BITS: u32 = 32;
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn widen(self) -> u128 {
        u128::from(self)
    }
    fn shift_right(self, bits: u32) -> Self {
        self.checked_shr(bits).unwrap_or(0)
    }
    fn low_bits(self) -> usize {
        self as usize
    }
}

impl AddressKey for u128 {
    const ZERO: Self = 0;
    const MAX: Self = u128::MAX;
    const BITS: u32 = 128;
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn widen(self) -> u128 {
        self
    }
    fn shift_right(self, bits: u32) -> Self {
        self.checked_shr(bits).unwrap_or(0)
    }
    fn low_bits(self) -> usize {
        self as usize
    }
}

/// Segment count above which a table gets a [`SegmentIndex`], so a lookup
/// binary-searches only the few segments of its bucket.
const SEGMENT_INDEX_MIN_SEGMENTS: usize = 256;
/// At most 2^16 buckets (256 KiB): the index has about as many buckets as
/// the table has segments, so it stays small enough to remain in cache.
const INDEX_MAX_BITS: u32 = 16;

/// Blocks of one class and family; see the module documentation.
///
/// A cold lookup is a chain of dependent cache misses, so each step reads
/// one place: the bucket, then the segment, which already holds the first
/// matching rule of its whole chain of blocks (for port-less traffic, and
/// for every port when that answer does not depend on the port), and only
/// otherwise the segment's port table.
#[derive(Debug)]
struct AddressTable<K> {
    /// Sorted by start; `segments[0]` starts at zero.
    segments: Vec<Segment<K>>,
    /// `None` for small tables.
    index: Option<SegmentIndex<K>>,
    /// The answer of the rules without addresses, which every chain ends
    /// in: kept apart rather than merged into every segment (it is often
    /// the largest port table, and shared it stays in cache).
    root: Segment<K>,
    /// The smallest rule index in `root`: a block rule before it decides
    /// without looking at the root.
    root_first: u32,
    /// Every segment's port table, each sorted by start and starting at zero.
    port_intervals: Vec<PortInterval>,
}

/// Addresses from `start` up to the next segment's start lie in the same
/// blocks, so they share one answer: the first rule of those blocks that
/// matches port-less traffic, and per port the table
/// `port_intervals[ports_at..ports_at + ports_len]`.
#[derive(Debug, Clone, Copy)]
struct Segment<K> {
    start: K,
    portless: u32,
    /// The rule for every port when the port table has one interval.
    uniform: u32,
    ports_at: u32,
    ports_len: u32,
}

/// Ports from `start` up to the next interval's start: first matching rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PortInterval {
    start: u16,
    rule: u32,
}

/// Maps an address to the few segments that can hold it: the blocks of a
/// policy usually share a long prefix (an organisation's networks), and
/// the `bits` bits below that prefix pick a bucket that knows its first
/// segment. Addresses outside the prefix are searched in the whole table.
#[derive(Debug)]
struct SegmentIndex<K> {
    /// The prefix every indexed address has: `address >> (shift + bits)`.
    prefix: K,
    shift: u32,
    bits: u32,
    /// For each bucket, the segment holding its first address.
    first_segment: Vec<u32>,
}

impl<K: AddressKey> SegmentIndex<K> {
    fn bucket(&self, address: K) -> Option<usize> {
        let above = address.shift_right(self.shift + self.bits);
        let mask = (1usize << self.bits) - 1;
        (above == self.prefix).then(|| address.shift_right(self.shift).low_bits() & mask)
    }

    /// An index over the range `low..=high` that every block lies in.
    fn build(segments: &[Segment<K>], low: K, high: K) -> Self {
        let bits = segments
            .len()
            .next_power_of_two()
            .trailing_zeros()
            .min(INDEX_MAX_BITS);
        let shared_bits =
            ((low.widen() ^ high.widen()).leading_zeros() - (128 - K::BITS)).min(K::BITS);
        let shift = (K::BITS - shared_bits).saturating_sub(bits);
        let prefix = low.shift_right(shift + bits);
        let base = prefix.widen().checked_shl(shift + bits).unwrap_or(0);
        let mut segment = 0;
        let first_segment = (0..1u128 << bits)
            .map(|bucket| {
                let first_address = base | (bucket << shift);
                while segments
                    .get(segment + 1)
                    .is_some_and(|next| next.start.widen() <= first_address)
                {
                    segment += 1;
                }
                table_position(segment)
            })
            .collect();
        SegmentIndex {
            prefix,
            shift,
            bits,
            first_segment,
        }
    }
}

impl<K: AddressKey> AddressTable<K> {
    fn bytes(&self) -> usize {
        self.segments.len() * std::mem::size_of::<Segment<K>>()
            + self
                .index
                .as_ref()
                .map_or(0, |index| index.first_segment.len() * 4)
            + self.port_intervals.len() * std::mem::size_of::<PortInterval>()
    }

    fn segment_of(&self, address: K) -> usize {
        let bucket = self
            .index
            .as_ref()
            .and_then(|index| Some((index, index.bucket(address)?)));
        let (low, high) = match bucket {
            Some((index, bucket)) => (
                index.first_segment[bucket] as usize,
                index
                    .first_segment
                    .get(bucket + 1)
                    .map_or(self.segments.len(), |segment| *segment as usize + 1),
            ),
            None => (0, self.segments.len()),
        };
        let candidates = self.segments.get(low..high).unwrap_or_default();
        low + candidates
            .partition_point(|segment| segment.start <= address)
            .saturating_sub(1)
    }

    fn first_match(&self, address: K, port: Option<u16>) -> u32 {
        let in_blocks = self
            .segments
            .get(self.segment_of(address))
            .map_or(NO_RULE, |segment| self.answer(segment, port));
        if in_blocks < self.root_first {
            return in_blocks;
        }
        in_blocks.min(self.answer(&self.root, port))
    }

    fn answer(&self, segment: &Segment<K>, port: Option<u16>) -> u32 {
        let Some(port) = port else {
            return segment.portless;
        };
        if segment.ports_len == 1 {
            return segment.uniform;
        }
        let at = segment.ports_at as usize;
        let Some(intervals) = self.port_intervals.get(at..at + segment.ports_len as usize) else {
            return NO_RULE;
        };
        port_rule(intervals, port)
    }
}

/// The rule of the interval of a port table that holds `port`.
fn port_rule(intervals: &[PortInterval], port: u16) -> u32 {
    let interval = intervals.partition_point(|interval| interval.start <= port);
    intervals
        .get(interval.saturating_sub(1))
        .map_or(NO_RULE, |interval| interval.rule)
}

/// Collects blocks and their rules before the segment structure is built.
struct TableBuilder<'p, K> {
    /// Node index by (start, end); node 0 is the root.
    by_block: HashMap<(K, K), usize>,
    blocks: Vec<(K, K)>,
    rules: Vec<Vec<(u32, &'p [PortRange])>>,
}

impl<K: AddressKey> Default for TableBuilder<'_, K> {
    fn default() -> Self {
        let mut by_block = HashMap::new();
        by_block.insert((K::ZERO, K::MAX), 0);
        TableBuilder {
            by_block,
            blocks: vec![(K::ZERO, K::MAX)],
            rules: vec![Vec::new()],
        }
    }
}

/// One address block's own answer, before chains are merged: the first
/// rule naming the block that has no ports, and its port table (a slice of
/// the builder's port intervals).
#[derive(Debug, Clone, Copy)]
struct Node {
    first_portless: u32,
    ports_at: u32,
    ports_len: u32,
}

impl<'p, K: AddressKey> TableBuilder<'p, K> {
    fn add(&mut self, start: K, end: K, rule: u32, ports: &'p [PortRange]) {
        let next_index = self.blocks.len();
        let node = *self.by_block.entry((start, end)).or_insert(next_index);
        if node == next_index {
            self.blocks.push((start, end));
            self.rules.push(Vec::new());
        }
        let rules = &mut self.rules[node];
        if rules.last().is_none_or(|(last, _)| *last != rule) {
            rules.push((rule, ports));
        }
    }

    fn finish(self) -> AddressTable<K> {
        let mut order: Vec<usize> = (1..self.blocks.len()).collect();
        order.sort_unstable_by_key(|&node| {
            (self.blocks[node].0, std::cmp::Reverse(self.blocks[node].1))
        });

        let mut parents = vec![NO_RULE; self.blocks.len()];
        let mut segment_starts = vec![K::ZERO];
        let mut segment_nodes = vec![0u32];
        let mut push_segment = |start: K, node: usize| {
            if segment_starts.last() == Some(&start) {
                segment_nodes.pop();
                segment_starts.pop();
            }
            segment_starts.push(start);
            segment_nodes.push(table_position(node));
        };
        let mut open: Vec<usize> = vec![0];
        for node in order {
            let (start, end) = self.blocks[node];
            while let Some(&top) = open.last() {
                if self.blocks[top].1 >= start {
                    break;
                }
                open.pop();
                if let (Some(after), Some(&enclosing)) =
                    (self.blocks[top].1.successor(), open.last())
                {
                    push_segment(after, enclosing);
                }
            }
            parents[node] = open
                .last()
                .map_or(NO_RULE, |&parent| table_position(parent));
            push_segment(start, node);
            debug_assert!(end <= K::MAX);
            open.push(node);
        }
        while let Some(top) = open.pop() {
            if let (Some(after), Some(&enclosing)) = (self.blocks[top].1.successor(), open.last()) {
                push_segment(after, enclosing);
            }
        }

        let mut node_ports = Vec::new();
        let nodes: Vec<Node> = self
            .rules
            .iter()
            .map(|rules| build_node(rules, &mut node_ports))
            .collect();
        let mut port_intervals = Vec::new();
        let mut port_tables = PortTables::default();
        let mut answer_of_node: Vec<Option<Segment<K>>> = vec![None; nodes.len()];
        let mut segments: Vec<Segment<K>> = segment_starts
            .iter()
            .zip(&segment_nodes)
            .map(|(&start, &deepest)| {
                let answer = *answer_of_node[deepest as usize].get_or_insert_with(|| {
                    let mut chain = Vec::new();
                    let mut at = deepest;
                    // Up to, not including, the root (node 0).
                    while at != 0 {
                        let Some(node) = nodes.get(at as usize) else {
                            break;
                        };
                        chain.push(*node);
                        at = parents[at as usize];
                    }
                    let answer = merge_chain(&chain, &node_ports, &mut port_intervals);
                    port_tables.share(answer, &mut port_intervals)
                });
                Segment { start, ..answer }
            })
            .collect();
        // Neighbours with the same answer are one segment: fewer to search
        // and to keep in cache.
        segments.dedup_by(|later, earlier| later.same_answer(earlier));
        let index = (segments.len() > SEGMENT_INDEX_MIN_SEGMENTS)
            .then(|| {
                let low = self.blocks.iter().skip(1).map(|block| block.0).min()?;
                let high = self.blocks.iter().skip(1).map(|block| block.1).max()?;
                Some(SegmentIndex::build(&segments, low, high))
            })
            .flatten();
        let root = merge_chain(
            nodes.get(..1).unwrap_or_default(),
            &node_ports,
            &mut port_intervals,
        );
        let root_intervals = port_intervals
            .get(root.ports_at as usize..(root.ports_at + root.ports_len) as usize)
            .unwrap_or_default();
        let root_first = root_intervals
            .iter()
            .map(|interval| interval.rule)
            .fold(root.portless, u32::min);
        AddressTable {
            segments,
            index,
            root,
            root_first,
            port_intervals,
        }
    }
}

impl<K> Segment<K> {
    fn same_answer(&self, other: &Segment<K>) -> bool {
        (self.portless, self.uniform, self.ports_at, self.ports_len)
            == (
                other.portless,
                other.uniform,
                other.ports_at,
                other.ports_len,
            )
    }
}

/// Port tables already in `port_intervals`, by content: different chains
/// of blocks often merge to the same table (the same few services), and
/// storing it once keeps the tables a cold decision reads small.
#[derive(Default)]
struct PortTables {
    at: HashMap<Vec<PortInterval>, u32>,
}

impl PortTables {
    /// `answer`, whose table was just appended to `port_intervals`, made
    /// to point at an identical earlier table if there is one (the
    /// appended copy is then dropped).
    fn share<K>(
        &mut self,
        answer: Segment<K>,
        port_intervals: &mut Vec<PortInterval>,
    ) -> Segment<K> {
        let appended = answer.ports_at as usize;
        let table = port_intervals[appended..].to_vec();
        match self.at.get(&table) {
            Some(&earlier) => {
                port_intervals.truncate(appended);
                Segment {
                    ports_at: earlier,
                    ..answer
                }
            }
            None => {
                self.at.insert(table, answer.ports_at);
                answer
            }
        }
    }
}

/// The answer of a chain of blocks (a deepest block and all that enclose
/// it): per port and for port-less traffic, the smallest rule index of any
/// block in the chain. Its port table is appended to `port_intervals`.
fn merge_chain<K: AddressKey>(
    chain: &[Node],
    node_ports: &[PortInterval],
    port_intervals: &mut Vec<PortInterval>,
) -> Segment<K> {
    let table = |node: &Node| {
        let at = node.ports_at as usize;
        node_ports
            .get(at..at + node.ports_len as usize)
            .unwrap_or_default()
    };
    let mut starts: Vec<u16> = chain
        .iter()
        .flat_map(|node| table(node).iter().map(|interval| interval.start))
        .collect();
    starts.push(0);
    starts.sort_unstable();
    starts.dedup();
    let ports_at = port_intervals.len();
    for start in starts {
        let rule = chain
            .iter()
            .map(|node| port_rule(table(node), start))
            .min()
            .unwrap_or(NO_RULE);
        push_interval(port_intervals, ports_at, start, rule);
    }
    Segment {
        start: K::ZERO,
        portless: chain
            .iter()
            .map(|node| node.first_portless)
            .min()
            .unwrap_or(NO_RULE),
        uniform: port_intervals.get(ports_at).map_or(NO_RULE, |i| i.rule),
        ports_at: table_position(ports_at),
        ports_len: table_position(port_intervals.len() - ports_at),
    }
}

/// Appends the interval from `start` to the port table that begins at
/// `table_at`, unless it would only continue the previous interval's rule.
fn push_interval(port_intervals: &mut Vec<PortInterval>, table_at: usize, start: u16, rule: u32) {
    if port_intervals.len() == table_at || port_intervals.last().map(|i| i.rule) != Some(rule) {
        port_intervals.push(PortInterval { start, rule });
    }
}

/// Paints each rule's port ranges, in rule order, over the intervals not yet
/// claimed by an earlier rule; a skip list keeps each interval painted once.
fn build_node(rules: &[(u32, &[PortRange])], port_intervals: &mut Vec<PortInterval>) -> Node {
    let mut bounds: Vec<u32> = vec![0];
    for (_, ports) in rules {
        for range in *ports {
            bounds.push(u32::from(range.first));
            bounds.push(u32::from(range.last) + 1);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    // The bound after port 65535 starts no interval.
    let bounds: Vec<u16> = bounds
        .into_iter()
        .filter_map(|bound| u16::try_from(bound).ok())
        .collect();

    let interval_count = bounds.len();
    let mut painted = vec![NO_RULE; interval_count];
    let mut next_unpainted: Vec<usize> = (0..=interval_count).collect();
    let find = |next_unpainted: &mut Vec<usize>, mut at: usize| {
        let mut root = at;
        while next_unpainted[root] != root {
            root = next_unpainted[root];
        }
        while next_unpainted[at] != root {
            let following = next_unpainted[at];
            next_unpainted[at] = root;
            at = following;
        }
        root
    };
    let mut paint = |first: usize, end: usize, rule: u32| {
        let mut at = find(&mut next_unpainted, first);
        while at < end {
            painted[at] = rule;
            next_unpainted[at] = at + 1;
            at = find(&mut next_unpainted, at + 1);
        }
    };
    for (rule, ports) in rules {
        if ports.is_empty() {
            paint(0, interval_count, *rule);
        }
        for range in *ports {
            let first = bounds.partition_point(|bound| *bound < range.first);
            let end = bounds.partition_point(|bound| *bound <= range.last);
            paint(first, end, *rule);
        }
    }

    let ports_at = port_intervals.len();
    for (start, rule) in bounds.iter().zip(painted) {
        push_interval(port_intervals, ports_at, *start, rule);
    }
    Node {
        first_portless: rules
            .iter()
            .find(|(_, ports)| ports.is_empty())
            .map_or(NO_RULE, |(rule, _)| *rule),
        ports_at: table_position(ports_at),
        ports_len: table_position(port_intervals.len() - ports_at),
    }
}

/// Rules with host patterns, by the names that can select them.
#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<String, Vec<u32>>,
    subdomains_of: HashMap<String, Vec<u32>>,
}

impl HostIndex {
    fn build(rules: &[NetRule]) -> Self {
        let mut index = HostIndex::default();
        for (rule_index, rule) in rules.iter().enumerate() {
            for pattern in &rule.hosts {
                let (map, name) = match pattern {
                    HostPattern::Exact(name) => (&mut index.exact, name),
                    HostPattern::Subdomains(name) => (&mut index.subdomains_of, name),
                };
                let list = map.entry(name.clone()).or_default();
                let rule_index = table_position(rule_index);
                if list.last() != Some(&rule_index) {
                    list.push(rule_index);
                }
            }
        }
        index
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.subdomains_of.is_empty()
    }

    /// The first host rule before `before` that matches `connection`.
    fn first_match(
        &self,
        rules: &[NetRule],
        connection: &Connection<'_>,
        before: u32,
    ) -> Option<u32> {
        let name = connection.host?;
        let mut best: Option<u32> = None;
        let mut consider = |candidates: Option<&Vec<u32>>| {
            let limit = best.unwrap_or(before);
            let found = candidates
                .into_iter()
                .flatten()
                .copied()
                .take_while(|rule| *rule < limit)
                .find(|rule| {
                    rules
                        .get(*rule as usize)
                        .is_some_and(|rule| rule.matches(connection))
                });
            if found.is_some() {
                best = found;
            }
        };
        consider(self.exact.get(name));
        for (dot, _) in name.match_indices('.').filter(|(dot, _)| *dot > 0) {
            consider(self.subdomains_of.get(&name[dot + 1..]));
        }
        best
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::cast_possible_truncation,
        reason = "test inputs are small lengths and counters built to fit their wire fields"
    )]

    use super::*;
    use crate::random::{Rng, Universe, QUERY_NAMES};

    /// What `NetworkPolicy::decide` does, plus which rule decided.
    fn oracle(policy: &NetworkPolicy, connection: &Connection<'_>) -> Decider {
        let is_outgoing_dns = connection.direction == Direction::Out
            && matches!(connection.protocol, Protocol::Tcp | Protocol::Udp)
            && connection.port == Some(DNS_PORT);
        if is_outgoing_dns && !policy.dns_resolvers.contains(&connection.remote) {
            return Decider::DnsResolver;
        }
        policy
            .rules
            .iter()
            .position(|rule| rule.matches(connection))
            .map_or(Decider::Default, Decider::Rule)
    }

    fn small_universe() -> Universe {
        Universe {
            address_bits: 10,
            port_limit: 64,
            host_rule_percent: 25,
            allow_percent: 50,
            realistic_prefixes: false,
        }
    }

    #[test]
    fn agrees_with_decide_on_random_policies() {
        let universe = small_universe();
        let mut rng = Rng::new(7);
        let mut rule_decisions = 0;
        for _ in 0..300 {
            let rule_count = 1 + rng.below(40) as usize;
            let policy = universe.policy(&mut rng, rule_count);
            let compiled = CompiledRules::compile(&policy);
            for _ in 0..200 {
                let (direction, protocol, remote, port) =
                    universe.connection(&mut rng, &policy.dns_resolvers);
                let host = rng.chance(40).then(|| *rng.pick(&QUERY_NAMES));
                let connection = Connection {
                    direction,
                    protocol,
                    remote,
                    port,
                    host,
                };
                let names: Vec<Arc<str>> = host.map(Arc::from).into_iter().collect();
                let query = Query {
                    direction,
                    protocol,
                    remote,
                    port,
                };
                let decision = compiled.decide(&query, &names);
                assert_eq!(
                    decision.action,
                    policy.decide(&connection),
                    "{policy:#?}\n{connection:?}"
                );
                let expected = oracle(&policy, &connection);
                assert_eq!(decision.decider, expected, "{policy:#?}\n{connection:?}");
                if matches!(expected, Decider::Rule(_)) {
                    rule_decisions += 1;
                }
            }
        }
        // The inputs must exercise rules, not just the default.
        assert!(
            rule_decisions > 10_000,
            "only {rule_decisions} rule decisions"
        );
    }

    #[test]
    fn agrees_with_decide_on_a_large_policy_with_bucket_index() {
        let universe = Universe {
            address_bits: 20,
            port_limit: 2000,
            host_rule_percent: 0,
            allow_percent: 50,
            realistic_prefixes: true,
        };
        let mut rng = Rng::new(3);
        let policy = universe.policy(&mut rng, 6000);
        let compiled = CompiledRules::compile(&policy);
        let indexed = compiled
            .classes
            .iter()
            .filter(|class| class.v4.index.is_some())
            .count();
        assert!(indexed > 0, "no table large enough for the bucket index");
        let mut rule_decisions = 0;
        for _ in 0..3000 {
            let (direction, protocol, remote, port) =
                universe.connection(&mut rng, &policy.dns_resolvers);
            let connection = Connection {
                direction,
                protocol,
                remote,
                port,
                host: None,
            };
            let query = Query {
                direction,
                protocol,
                remote,
                port,
            };
            let expected = oracle(&policy, &connection);
            assert_eq!(compiled.decide(&query, &[]).decider, expected);
            if matches!(expected, Decider::Rule(_)) {
                rule_decisions += 1;
            }
        }
        assert!(
            rule_decisions > 1000,
            "only {rule_decisions} rule decisions"
        );
    }

    #[test]
    fn several_names_take_the_first_rule_any_of_them_matches() {
        let universe = small_universe();
        let mut rng = Rng::new(11);
        for _ in 0..200 {
            let rule_count = 1 + rng.below(30) as usize;
            let policy = universe.policy(&mut rng, rule_count);
            let compiled = CompiledRules::compile(&policy);
            for _ in 0..100 {
                let (direction, protocol, remote, port) =
                    universe.connection(&mut rng, &policy.dns_resolvers);
                let names: Vec<Arc<str>> = (0..rng.below(4))
                    .map(|_| Arc::from(*rng.pick(&QUERY_NAMES)))
                    .collect();
                let base = Connection {
                    direction,
                    protocol,
                    remote,
                    port,
                    host: None,
                };
                let expected = std::iter::once(oracle(&policy, &base))
                    .chain(names.iter().map(|name| {
                        oracle(
                            &policy,
                            &Connection {
                                host: Some(name),
                                ..base
                            },
                        )
                    }))
                    .min_by_key(|decider| match decider {
                        Decider::DnsResolver => 0,
                        Decider::Rule(index) => index + 1,
                        Decider::Default => usize::MAX,
                    })
                    .unwrap_or(Decider::Default);
                let decision = compiled.decide(
                    &Query {
                        direction,
                        protocol,
                        remote,
                        port,
                    },
                    &names,
                );
                assert_eq!(decision.decider, expected);
                if let Some(index) = decision.host {
                    let name = &names[index];
                    assert_eq!(
                        oracle(
                            &policy,
                            &Connection {
                                host: Some(name),
                                ..base
                            }
                        ),
                        expected
                    );
                }
            }
        }
    }

    #[test]
    fn nested_and_adjacent_blocks_resolve_to_the_first_rule() {
        let rule = |action, remote: &[&str], ports: &[(u16, u16)]| NetRule {
            action,
            direction: Direction::Out,
            protocol: Protocol::Tcp,
            remote: remote.iter().map(|net| net.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
            hosts: Vec::new(),
            comment: None,
        };
        let policy = NetworkPolicy {
            default_action: Action::Deny,
            rules: vec![
                rule(Action::Deny, &["10.1.2.0/24"], &[(22, 22)]),
                rule(Action::Allow, &["10.0.0.0/8"], &[]),
                rule(Action::Deny, &["10.1.3.0/24", "0.0.0.0/0"], &[(1, 65535)]),
                rule(Action::Allow, &["255.255.255.255/32"], &[]),
            ],
            dns_resolvers: Vec::new(),
            vpn: None,
        };
        let compiled = CompiledRules::compile(&policy);
        let decide = |remote: &str, port: u16| {
            compiled
                .decide(
                    &Query {
                        direction: Direction::Out,
                        protocol: Protocol::Tcp,
                        remote: remote.parse().unwrap(),
                        port: Some(port),
                    },
                    &[],
                )
                .decider
        };
        assert_eq!(decide("10.1.2.9", 22), Decider::Rule(0));
        assert_eq!(decide("10.1.2.9", 23), Decider::Rule(1));
        assert_eq!(decide("10.1.3.0", 22), Decider::Rule(1));
        assert_eq!(decide("11.0.0.0", 22), Decider::Rule(2));
        assert_eq!(decide("255.255.255.255", 80), Decider::Rule(2));
        assert_eq!(decide("9.255.255.255", 65535), Decider::Rule(2));
        assert_eq!(decide("::1", 80), Decider::Default);
    }
}
