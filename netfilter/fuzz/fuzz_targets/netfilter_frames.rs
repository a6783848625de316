//! Feeds sequences of arbitrary frames, in both directions, to one packet
//! filter: nothing may panic, and no frame may pass that a correct filter
//! could never pass (an outbound frame from a foreign MAC, an inbound one
//! addressed to another station).
//!
//! Input: records of [control byte][length, 2 bytes big-endian][frame].
//! Control bit 0: inbound; bits 1-5: seconds to advance the clock;
//! bit 6: replace the policy before the frame; bit 7: unused.

#![no_main]

#[path = "common/policy.rs"]
mod policy;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netfilter::{Filter, FilterConfig, Verdict};

use policy::policy;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fuzz_target!(|data: &[u8]| {
    let initial = policy(false);
    let (mut filter, control) = Filter::new(FilterConfig {
        guest_mac: GUEST_MAC,
        guest_ipv4: vec!["10.0.0.2".parse().unwrap()],
        guest_ipv6: vec!["fd00::2".parse().unwrap()],
        conntrack_capacity: 8,
        policy: &initial,
    });
    let mut now = Instant::now();
    let mut rest = data;
    let mut open = false;
    while rest.len() >= 3 {
        let control_byte = rest[0];
        let length = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let frame = &rest[3..3 + length];
        rest = &rest[3 + length..];
        now += Duration::from_secs(u64::from((control_byte >> 1) & 0x1f));
        if control_byte & 0x40 != 0 {
            open = !open;
            control.replace_policy(&policy(open));
        }
        if control_byte & 1 == 1 {
            if filter.inbound(frame, now) == Verdict::Pass {
                let destination = &frame[..6];
                assert!(
                    destination == GUEST_MAC || destination[0] & 1 == 1,
                    "inbound pass to a foreign MAC"
                );
            }
        } else if filter.outbound(frame, now) == Verdict::Pass {
            assert_eq!(
                &frame[6..12],
                &GUEST_MAC,
                "outbound pass from a foreign MAC"
            );
        }
    }
    let counters = control.counters();
    assert!(
        counters.refusals_reported
            <= counters.outbound.dropped_total() + counters.inbound.dropped_total()
    );
    let _ = control.drain_refusals();
});
