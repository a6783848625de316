//! The rule engine: a `NetworkPolicy` compiled into lookup tables that give
//! the same answer as `NetworkPolicy::decide` without scanning the rules.
//!
//! Rules are split by the (direction, protocol) class of connection they can
//! match. Within a class, every CIDR of every rule becomes a node of a tree:
//! CIDR blocks are either nested or disjoint, so the blocks containing an
//! address form one chain from the most specific block up to the root
//! (which holds the rules without addresses). A sorted array of segment
//! starts maps an address to the deepest block containing it in one binary
//! search. Each node keeps its rules' port ranges painted in rule order into
//! a small sorted port table, so a node answers "first rule here matching
//! this port" with one more binary search. The answer for a connection is
//! the smallest rule index along the chain, which is exactly "first match".
//! Memory is linear in the size of the policy.
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

const PROTOCOLS: [Protocol; 5] = [
    Protocol::Any,
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmp,
    Protocol::Icmpv6,
];
const DIRECTIONS: [Direction; 2] = [Direction::In, Direction::Out];

fn class_index(direction: Direction, protocol: Protocol) -> usize {
    let direction_index = match direction {
        Direction::In => 0,
        Direction::Out | Direction::Both => 1,
    };
    let protocol_index = PROTOCOLS
        .iter()
        .position(|candidate| *candidate == protocol)
        .unwrap_or(0);
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
            let index = index as u32;
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
    fn successor(self) -> Option<Self>;
    /// The top 16 bits, for the segment index of large IPv4 tables; `None`
    /// for families without one.
    fn bucket(self) -> Option<usize>;
    fn bucket_start(bucket: usize) -> Self;
}

impl AddressKey for u32 {
    const ZERO: Self = 0;
    const MAX: Self = u32::MAX;
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn bucket(self) -> Option<usize> {
        Some((self >> 16) as usize)
    }
    fn bucket_start(bucket: usize) -> Self {
        (bucket as u32) << 16
    }
}

impl AddressKey for u128 {
    const ZERO: Self = 0;
    const MAX: Self = u128::MAX;
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn bucket(self) -> Option<usize> {
        None
    }
    fn bucket_start(_bucket: usize) -> Self {
        0
    }
}

/// Segment count above which an IPv4 table gets a 64 Ki-entry index by the
/// address's top 16 bits (256 KiB), so a lookup binary-searches only the
/// few segments of its bucket.
const BUCKET_INDEX_MIN_SEGMENTS: usize = 2048;
const BUCKETS: usize = 1 << 16;

/// Blocks of one class and family; see the module documentation.
///
/// A cold lookup is a chain of dependent cache misses (bucket, segment,
/// chain, port table), so what one step reads is kept together: a segment
/// holds its chain's position, a port interval its rule.
#[derive(Debug)]
struct AddressTable<K> {
    /// Sorted by start; `segments[0]` starts at zero.
    segments: Vec<Segment<K>>,
    /// For each top-16-bit bucket, the segment containing its first address
    /// (empty for small tables and IPv6).
    bucket_segments: Vec<u32>,
    /// Each deepest block's chain (itself and its enclosing blocks) ordered
    /// by `first_rule`, copied contiguously so a lookup reads it in a line
    /// or two and stops at the first node that cannot beat the best rule.
    chain_nodes: Vec<Node>,
    /// All nodes' port tables, each sorted by start and starting at zero.
    port_intervals: Vec<PortInterval>,
}

/// Addresses from `start` up to the next segment's start share one chain
/// of blocks: `chain_nodes[chain_at..chain_at + chain_len]`.
#[derive(Debug, Clone, Copy)]
struct Segment<K> {
    start: K,
    chain_at: u32,
    chain_len: u32,
}

/// Ports from `start` up to the next interval's start: first matching rule.
#[derive(Debug, Clone, Copy)]
struct PortInterval {
    start: u16,
    rule: u32,
}

/// One address block and the rules naming it. Its port table is the
/// slice `ports_at..ports_at + ports_len` of the table's port intervals.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Smallest rule index in this node: lets a lookup skip the node.
    first_rule: u32,
    /// First rule without ports (the only kind that matches port-less traffic).
    first_portless: u32,
    ports_at: u32,
    ports_len: u32,
    /// The rule for every port when the port table has one interval, read
    /// without touching the shared arrays.
    uniform_port_rule: u32,
}

impl<K: AddressKey> AddressTable<K> {
    fn segment_of(&self, address: K) -> usize {
        let (low, high) = match address.bucket() {
            Some(bucket) if !self.bucket_segments.is_empty() => (
                self.bucket_segments[bucket] as usize,
                self.bucket_segments
                    .get(bucket + 1)
                    .map_or(self.segments.len(), |segment| *segment as usize + 1),
            ),
            _ => (0, self.segments.len()),
        };
        let candidates = self.segments.get(low..high).unwrap_or_default();
        low + candidates
            .partition_point(|segment| segment.start <= address)
            .saturating_sub(1)
    }

    fn first_match(&self, address: K, port: Option<u16>) -> u32 {
        let Some(&Segment {
            chain_at,
            chain_len,
            ..
        }) = self.segments.get(self.segment_of(address))
        else {
            return NO_RULE;
        };
        let chain = self
            .chain_nodes
            .get(chain_at as usize..(chain_at + chain_len) as usize)
            .unwrap_or_default();
        let mut best = NO_RULE;
        for node in chain {
            if node.first_rule >= best {
                break;
            }
            best = best.min(self.node_first_match(node, port));
        }
        best
    }

    fn node_first_match(&self, node: &Node, port: Option<u16>) -> u32 {
        let Some(port) = port else {
            return node.first_portless;
        };
        if node.ports_len == 1 {
            return node.uniform_port_rule;
        }
        let at = node.ports_at as usize;
        let end = at + node.ports_len as usize;
        let Some(intervals) = self.port_intervals.get(at..end) else {
            return NO_RULE;
        };
        let interval = intervals.partition_point(|interval| interval.start <= port);
        intervals
            .get(interval.saturating_sub(1))
            .map_or(NO_RULE, |interval| interval.rule)
    }
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
            segment_nodes.push(node as u32);
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
            parents[node] = open.last().map_or(NO_RULE, |&parent| parent as u32);
            push_segment(start, node);
            debug_assert!(end <= K::MAX);
            open.push(node);
        }
        while let Some(top) = open.pop() {
            if let (Some(after), Some(&enclosing)) = (self.blocks[top].1.successor(), open.last()) {
                push_segment(after, enclosing);
            }
        }

        let mut port_intervals = Vec::new();
        let nodes = self
            .rules
            .iter()
            .map(|rules| build_node(rules, &mut port_intervals))
            .collect();
        let nodes: Vec<Node> = nodes;
        let mut chain_nodes = Vec::new();
        let mut chain_of_node = vec![None; nodes.len()];
        let segment_chains: Vec<(u32, u32)> = segment_nodes
            .iter()
            .map(|&deepest| {
                *chain_of_node[deepest as usize].get_or_insert_with(|| {
                    let mut chain = Vec::new();
                    let mut at = deepest;
                    while let Some(node) = nodes.get(at as usize) {
                        chain.push(*node);
                        at = parents[at as usize];
                    }
                    chain.sort_by_key(|node| node.first_rule);
                    let chain_at = chain_nodes.len() as u32;
                    chain_nodes.extend_from_slice(&chain);
                    (chain_at, chain.len() as u32)
                })
            })
            .collect();
        let bucket_segments =
            if K::ZERO.bucket().is_some() && segment_starts.len() > BUCKET_INDEX_MIN_SEGMENTS {
                let mut segment = 0;
                (0..BUCKETS)
                    .map(|bucket| {
                        let start = K::bucket_start(bucket);
                        while segment_starts
                            .get(segment + 1)
                            .is_some_and(|next| *next <= start)
                        {
                            segment += 1;
                        }
                        segment as u32
                    })
                    .collect()
            } else {
                Vec::new()
            };
        let segments = segment_starts
            .into_iter()
            .zip(segment_chains)
            .map(|(start, (chain_at, chain_len))| Segment {
                start,
                chain_at,
                chain_len,
            })
            .collect();
        AddressTable {
            segments,
            bucket_segments,
            chain_nodes,
            port_intervals,
        }
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
    bounds.retain(|bound| *bound <= u32::from(u16::MAX));

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
            let first = bounds.partition_point(|bound| *bound < u32::from(range.first));
            let end = bounds.partition_point(|bound| *bound <= u32::from(range.last));
            paint(first, end, *rule);
        }
    }

    let ports_at = port_intervals.len();
    for (start, rule) in bounds.iter().zip(painted) {
        if port_intervals.len() == ports_at || port_intervals.last().map(|i| i.rule) != Some(rule) {
            port_intervals.push(PortInterval {
                start: *start as u16,
                rule,
            });
        }
    }
    Node {
        first_rule: rules.first().map_or(NO_RULE, |(rule, _)| *rule),
        first_portless: rules
            .iter()
            .find(|(_, ports)| ports.is_empty())
            .map_or(NO_RULE, |(rule, _)| *rule),
        ports_at: ports_at as u32,
        ports_len: (port_intervals.len() - ports_at) as u32,
        uniform_port_rule: port_intervals.get(ports_at).map_or(NO_RULE, |i| i.rule),
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
                if list.last() != Some(&(rule_index as u32)) {
                    list.push(rule_index as u32);
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
    use super::*;
    use crate::netfilter::random::{Rng, Universe, QUERY_NAMES};

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
            .filter(|class| !class.v4.bucket_segments.is_empty())
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
