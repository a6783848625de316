//! The on-link IPv6 neighbours the guest has heard from: sources of the
//! inbound neighbour discovery messages the filter passed (hop limit 255,
//! so sent on the link itself) whose address is in a /64 of the guest's
//! own addresses (any host on the link can claim any source; routers keep
//! the guest's own subnets on its link). Besides link-local addresses and
//! link-scope multicast groups, these are the only destinations the
//! guest's own neighbour discovery may have, so neighbour unreachability
//! detection towards on-link global addresses keeps working while NDP
//! cannot carry data to the rest of the network.
//!
//! The set is bounded: when it is full, the neighbour heard from longest
//! ago is forgotten, which only makes the guest fall back to multicast
//! solicitations.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// How long a neighbour stays known after it was last heard from (well
/// above the minutes a stale neighbour cache entry lives).
pub(crate) const NEIGHBOUR_MEMORY: Duration = Duration::from_secs(20 * 60);
/// Most neighbours remembered at once.
pub(crate) const MAX_NEIGHBOURS: usize = 256;

/// Neighbours by address, with when they stop being known.
#[derive(Debug, Default)]
pub(crate) struct HeardNeighbours {
    known_until: HashMap<Ipv6Addr, Instant>,
}

impl HeardNeighbours {
    /// Records that `address` sent neighbour discovery on the link.
    pub(crate) fn heard(&mut self, address: Ipv6Addr, now: Instant) {
        if self.known_until.len() >= MAX_NEIGHBOURS && !self.known_until.contains_key(&address) {
            self.forget_expired(now);
            if self.known_until.len() >= MAX_NEIGHBOURS {
                let oldest = self
                    .known_until
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(address, _)| *address);
                if let Some(oldest) = oldest {
                    self.known_until.remove(&oldest);
                }
            }
        }
        self.known_until.insert(address, now + NEIGHBOUR_MEMORY);
    }

    pub(crate) fn is_known(&self, address: Ipv6Addr, now: Instant) -> bool {
        self.known_until
            .get(&address)
            .is_some_and(|until| *until > now)
    }

    pub(crate) fn forget_expired(&mut self, now: Instant) {
        self.known_until.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::cast_possible_truncation,
        reason = "test inputs are small lengths and counters built to fit their wire fields"
    )]

    use super::*;

    #[test]
    fn bounded_and_forgets_the_oldest() {
        let mut neighbours = HeardNeighbours::default();
        let start = Instant::now();
        for index in 0..MAX_NEIGHBOURS as u16 + 1 {
            let address = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, index);
            neighbours.heard(address, start + Duration::from_secs(u64::from(index)));
        }
        let now = start + Duration::from_secs(MAX_NEIGHBOURS as u64);
        assert_eq!(neighbours.known_until.len(), MAX_NEIGHBOURS);
        assert!(!neighbours.is_known(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), now));
        assert!(neighbours.is_known(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), now));
        assert!(!neighbours.is_known(
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            start + Duration::from_secs(1) + NEIGHBOUR_MEMORY
        ));
    }
}
