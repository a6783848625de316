//! Connection tracking: remembers flows the rules allowed so their later
//! packets (and the replies) pass without another rule decision.
//!
//! Flows are keyed from the guest's point of view (guest address and port,
//! remote address and port), so both directions of a flow find the same
//! entry. TCP is tracked loosely (handshake, established, closing) only to
//! choose a timeout; sequence numbers are not checked. The table is bounded:
//! when it is full and nothing has expired, new flows are refused and no
//! live entry is ever evicted.
//!
//! Timeouts: TCP handshake 60 s (also for a flow first seen without a SYN,
//! until the other side answers), TCP established 2 h, TCP closing (FIN or
//! RST seen) 30 s, UDP 60 s, ICMP echo 30 s, other protocols 60 s. Every
//! packet of a flow refreshes its timeout.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_policy::{Direction, Protocol};

use super::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

pub(crate) const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const TCP_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);
pub(crate) const TCP_CLOSING_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const UDP_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const ICMP_ECHO_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const OTHER_TIMEOUT: Duration = Duration::from_secs(60);

/// A flow as seen from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    pub(crate) protocol: u8,
    pub(crate) guest: IpAddr,
    pub(crate) remote: IpAddr,
    /// Guest's port, or the ICMP echo identifier.
    pub(crate) guest_port: u16,
    /// Remote port, zero for protocols without ports.
    pub(crate) remote_port: u16,
}

fn address_bytes(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(address) => address.to_ipv6_mapped().octets(),
        IpAddr::V6(address) => address.octets(),
    }
}

impl std::hash::Hash for FlowKey {
    /// One write of the packed key: the keyed hasher's cost is mostly per call.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut packed = [0u8; 38];
        packed[0] = self.protocol;
        packed[1] = u8::from(self.guest.is_ipv6());
        packed[2..18].copy_from_slice(&address_bytes(self.guest));
        packed[18..34].copy_from_slice(&address_bytes(self.remote));
        packed[34..36].copy_from_slice(&self.guest_port.to_be_bytes());
        packed[36..38].copy_from_slice(&self.remote_port.to_be_bytes());
        state.write(&packed);
    }
}

/// Loose TCP state, only used to pick a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpState {
    /// First seen without a SYN (mid-stream, or forged) and not yet
    /// answered: it gets no more time than a handshake until the other
    /// side sends too, so forged segments cannot hold slots for hours.
    PickedUp,
    SynSent,
    SynReceived,
    Established,
    Closing,
}

/// What the table remembers about one allowed flow.
#[derive(Debug, Clone)]
pub(crate) struct FlowEntry {
    /// Who opened the flow.
    pub(crate) opener: Direction,
    /// Protocol class the rules saw.
    pub(crate) protocol: Protocol,
    /// The port the rules saw (remote port for outbound flows, the guest's
    /// port for inbound ones).
    pub(crate) rule_port: Option<u16>,
    /// The learned host name whose rule allowed the flow.
    pub(crate) host: Option<Arc<str>>,
    /// Rules generation the flow was last checked against.
    pub(crate) generation: u64,
    pub(crate) tcp: Option<TcpState>,
    pub(crate) expires: Instant,
}

impl FlowEntry {
    /// Moves the TCP state on for a packet with `flags` sent by `sender`,
    /// then refreshes the timeout.
    pub(crate) fn observe(&mut self, sender: Direction, flags: u8, now: Instant) {
        let timeout = match self.tcp {
            None if self.protocol == Protocol::Udp => UDP_TIMEOUT,
            None if matches!(self.protocol, Protocol::Icmp | Protocol::Icmpv6) => ICMP_ECHO_TIMEOUT,
            None => OTHER_TIMEOUT,
            Some(state) => {
                let from_opener = sender == self.opener;
                let is_new_syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
                let next = if flags & (TCP_RST | TCP_FIN) != 0 {
                    TcpState::Closing
                } else if is_new_syn && from_opener && state == TcpState::Closing {
                    // The opener reuses the port pair for a new connection.
                    TcpState::SynSent
                } else {
                    match state {
                        TcpState::PickedUp if !from_opener => TcpState::Established,
                        TcpState::SynSent
                            if !from_opener && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK =>
                        {
                            TcpState::SynReceived
                        }
                        TcpState::SynReceived
                            if from_opener && flags & (TCP_SYN | TCP_ACK) == TCP_ACK =>
                        {
                            TcpState::Established
                        }
                        other => other,
                    }
                };
                self.tcp = Some(next);
                match next {
                    TcpState::PickedUp | TcpState::SynSent | TcpState::SynReceived => {
                        TCP_HANDSHAKE_TIMEOUT
                    }
                    TcpState::Established => TCP_ESTABLISHED_TIMEOUT,
                    TcpState::Closing => TCP_CLOSING_TIMEOUT,
                }
            }
        };
        self.expires = now + timeout;
    }
}

/// Refusal to add a flow to a full table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableFull;

/// The bounded flow table.
#[derive(Debug)]
pub(crate) struct ConnTrack {
    flows: HashMap<FlowKey, FlowEntry>,
    capacity: usize,
    last_reclaim: Option<Instant>,
}

/// A full table is swept at most this often, so a guest flooding new flows
/// cannot make every packet pay for a sweep.
const RECLAIM_WHEN_FULL_INTERVAL: Duration = Duration::from_millis(100);

impl ConnTrack {
    pub(crate) fn new(capacity: usize) -> Self {
        ConnTrack {
            flows: HashMap::new(),
            capacity,
            last_reclaim: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    /// The live entry for `key`; an expired one is removed and not returned.
    pub(crate) fn get_mut(&mut self, key: &FlowKey, now: Instant) -> Option<&mut FlowEntry> {
        match self.flows.entry(*key) {
            Entry::Occupied(entry) => {
                if entry.get().expires > now {
                    Some(entry.into_mut())
                } else {
                    entry.remove();
                    None
                }
            }
            Entry::Vacant(_) => None,
        }
    }

    pub(crate) fn remove(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Adds a flow. When full, expired entries are reclaimed first; if the
    /// table is still full the flow is refused.
    pub(crate) fn insert(
        &mut self,
        key: FlowKey,
        entry: FlowEntry,
        now: Instant,
    ) -> Result<(), TableFull> {
        if self.flows.len() >= self.capacity && !self.flows.contains_key(&key) {
            let swept_recently = self.last_reclaim.is_some_and(|last| {
                now.saturating_duration_since(last) < RECLAIM_WHEN_FULL_INTERVAL
            });
            if !swept_recently {
                self.reclaim_expired(now);
            }
            if self.flows.len() >= self.capacity {
                return Err(TableFull);
            }
        }
        self.flows.insert(key, entry);
        Ok(())
    }

    /// Drops every expired entry.
    pub(crate) fn reclaim_expired(&mut self, now: Instant) {
        self.flows.retain(|_, entry| entry.expires > now);
        self.last_reclaim = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_entry(now: Instant) -> FlowEntry {
        FlowEntry {
            opener: Direction::Out,
            protocol: Protocol::Tcp,
            rule_port: Some(443),
            host: None,
            generation: 1,
            tcp: Some(TcpState::SynSent),
            expires: now,
        }
    }

    #[test]
    fn tcp_states_follow_the_handshake_and_close() {
        let now = Instant::now();
        let mut entry = tcp_entry(now);
        entry.observe(Direction::Out, TCP_SYN, now);
        assert_eq!(entry.tcp, Some(TcpState::SynSent));
        entry.observe(Direction::Out, TCP_ACK, now);
        assert_eq!(
            entry.tcp,
            Some(TcpState::SynSent),
            "an ACK before the SYN-ACK establishes nothing"
        );
        entry.observe(Direction::In, TCP_SYN | TCP_ACK, now);
        assert_eq!(entry.tcp, Some(TcpState::SynReceived));
        entry.observe(Direction::Out, TCP_ACK, now);
        assert_eq!(entry.tcp, Some(TcpState::Established));
        assert_eq!(entry.expires, now + TCP_ESTABLISHED_TIMEOUT);
        entry.observe(Direction::In, TCP_FIN | TCP_ACK, now);
        assert_eq!(entry.tcp, Some(TcpState::Closing));
        assert_eq!(entry.expires, now + TCP_CLOSING_TIMEOUT);
        entry.observe(Direction::Out, TCP_SYN, now);
        assert_eq!(entry.tcp, Some(TcpState::SynSent));
        assert_eq!(entry.expires, now + TCP_HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn a_full_table_reclaims_only_expired_entries() {
        let now = Instant::now();
        let key = |port| FlowKey {
            protocol: 6,
            guest: "10.0.0.2".parse().unwrap(),
            remote: "10.0.0.1".parse().unwrap(),
            guest_port: port,
            remote_port: 443,
        };
        let mut table = ConnTrack::new(2);
        let mut short_lived = tcp_entry(now);
        short_lived.expires = now + Duration::from_secs(1);
        table.insert(key(1), short_lived, now).unwrap();
        let mut long_lived = tcp_entry(now);
        long_lived.expires = now + Duration::from_secs(100);
        table.insert(key(2), long_lived.clone(), now).unwrap();
        assert_eq!(
            table.insert(key(3), long_lived.clone(), now),
            Err(TableFull)
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(table.insert(key(3), long_lived, later), Ok(()));
        assert!(table.get_mut(&key(2), later).is_some());
        assert!(table.get_mut(&key(1), later).is_none());
        assert_eq!(table.len(), 2);
    }
}
