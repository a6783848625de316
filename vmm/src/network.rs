//! The network access control as the virtio-net device sees it: the
//! policy packet filter (the `netfilter` crate) behind the device's
//! [`FrameFilter`] seam, so the device knows nothing of policies. The
//! forced VPN reaches the device the same way, as its `Tunnel`
//! ([`crate::vpn::VpnLink`]).

use std::time::Instant;

use netfilter::{Filter, Verdict};

use crate::devices::virtio::net::FrameFilter;

/// The policy filter of one guest NIC, checking each frame at the time
/// it is seen.
pub struct PolicyFilter(Filter);

impl PolicyFilter {
    pub fn new(filter: Filter) -> Self {
        Self(filter)
    }
}

impl FrameFilter for PolicyFilter {
    fn outbound(&mut self, frame: &[u8]) -> bool {
        self.0.outbound(frame, Instant::now()) == Verdict::Pass
    }

    fn inbound(&mut self, frame: &[u8]) -> bool {
        self.0.inbound(frame, Instant::now()) == Verdict::Pass
    }
}
