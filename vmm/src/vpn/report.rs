//! What the tunnel tells the operator: handshake failures and timeouts,
//! datagrams the peer sent that were refused, and packets dropped because
//! they would have left the tunnel. Each kind of event is reported at most
//! once per [`REPORT_INTERVAL`], so a failing peer or a misconfigured guest
//! cannot flood the log; the queue is bounded as well.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The shortest time between two reports of the same kind.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Most events waiting to be taken.
const QUEUE_CAPACITY: usize = 32;

/// Something about the tunnel worth a line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpnEvent {
    /// Handshake initiations have gone unanswered for `seconds`.
    HandshakeUnanswered { endpoint: SocketAddr, seconds: u64 },
    /// WireGuard gave up on the handshake (90 s); waiting packets are gone.
    HandshakeGaveUp { endpoint: SocketAddr },
    /// A session with the peer exists (first time, or after a failure).
    TunnelUp { endpoint: SocketAddr },
    /// A datagram from the endpoint that WireGuard refused.
    DatagramRejected { endpoint: SocketAddr, error: String },
    /// The outer socket would not take a datagram.
    SendFailed { endpoint: SocketAddr, error: String },
    /// The guest sent to a tunnel route from an address that is not its
    /// tunnel address.
    WrongGuestSource { source: IpAddr, destination: IpAddr },
    /// A decrypted packet whose source is outside the tunnel's routes, or
    /// whose destination is not the guest's tunnel address.
    InnerPacketRefused { source: IpAddr, destination: IpAddr },
    /// A packet from the tunnel arrived before the guest used the tunnel,
    /// so its gateway's MAC (the frame's source) is not known yet.
    NoGatewayYet { source: IpAddr },
}

impl VpnEvent {
    fn kind(&self) -> usize {
        match self {
            VpnEvent::HandshakeUnanswered { .. } => 0,
            VpnEvent::HandshakeGaveUp { .. } => 1,
            VpnEvent::TunnelUp { .. } => 2,
            VpnEvent::DatagramRejected { .. } => 3,
            VpnEvent::SendFailed { .. } => 4,
            VpnEvent::WrongGuestSource { .. } => 5,
            VpnEvent::InnerPacketRefused { .. } => 6,
            VpnEvent::NoGatewayYet { .. } => 7,
        }
    }
}

const KINDS: usize = 8;

impl fmt::Display for VpnEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VpnEvent::HandshakeUnanswered { endpoint, seconds } => write!(
                f,
                "vpn: WireGuard handshake with {endpoint} unanswered for {seconds} s (wrong keys, \
                 or the peer is unreachable); traffic for the tunnel's routes is held back, never \
                 sent in clear"
            ),
            VpnEvent::HandshakeGaveUp { endpoint } => write!(
                f,
                "vpn: WireGuard handshake with {endpoint} failed for 90 s; the packets waiting \
                 for the tunnel were dropped (new traffic tries again)"
            ),
            VpnEvent::TunnelUp { endpoint } => {
                write!(f, "vpn: WireGuard tunnel to {endpoint} is up")
            }
            VpnEvent::DatagramRejected { endpoint, error } => {
                write!(f, "vpn: refused a datagram from {endpoint}: {error}")
            }
            VpnEvent::SendFailed { endpoint, error } => {
                write!(f, "vpn: cannot send to {endpoint}: {error}")
            }
            VpnEvent::WrongGuestSource {
                source,
                destination,
            } => write!(
                f,
                "vpn: dropped {source} -> {destination}: traffic for the tunnel must come from \
                 the guest's tunnel address (route it with `src ADDRESS`)"
            ),
            VpnEvent::InnerPacketRefused {
                source,
                destination,
            } => write!(
                f,
                "vpn: dropped {source} -> {destination} from the tunnel: the source is not one \
                 of its routes, or the destination is not the guest's tunnel address"
            ),
            VpnEvent::NoGatewayYet { source } => write!(
                f,
                "vpn: dropped a packet from {source}: the guest has not sent through its \
                 gateway yet"
            ),
        }
    }
}

/// Events waiting to be printed, limited per kind.
#[derive(Debug, Default)]
pub(super) struct EventQueue {
    events: VecDeque<VpnEvent>,
    last_reported: [Option<Instant>; KINDS],
}

impl EventQueue {
    /// Queues `event` unless one of its kind was reported recently.
    pub(super) fn report(&mut self, event: VpnEvent, now: Instant) {
        let last = &mut self.last_reported[event.kind()];
        if last.is_some_and(|at| now.saturating_duration_since(at) < REPORT_INTERVAL) {
            return;
        }
        if self.events.len() >= QUEUE_CAPACITY {
            return;
        }
        *last = Some(now);
        self.events.push_back(event);
    }

    pub(super) fn take(&mut self) -> Option<VpnEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_reported_at_most_once_per_interval() {
        let endpoint: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let mut queue = EventQueue::default();
        let t0 = Instant::now();
        for i in 0..5 {
            queue.report(
                VpnEvent::HandshakeUnanswered {
                    endpoint,
                    seconds: i,
                },
                t0 + Duration::from_secs(i),
            );
        }
        queue.report(VpnEvent::TunnelUp { endpoint }, t0);
        assert_eq!(
            queue.take(),
            Some(VpnEvent::HandshakeUnanswered {
                endpoint,
                seconds: 0
            })
        );
        assert_eq!(queue.take(), Some(VpnEvent::TunnelUp { endpoint }));
        assert_eq!(queue.take(), None);
        queue.report(
            VpnEvent::HandshakeUnanswered {
                endpoint,
                seconds: 10,
            },
            t0 + REPORT_INTERVAL,
        );
        assert!(queue.take().is_some(), "reported again after the interval");
    }

    #[test]
    fn handshake_reports_promise_nothing_leaves_in_clear() {
        let text = VpnEvent::HandshakeUnanswered {
            endpoint: "198.51.100.2:51820".parse().unwrap(),
            seconds: 5,
        }
        .to_string();
        assert!(text.contains("198.51.100.2:51820"), "{text}");
        assert!(text.contains("never sent in clear"), "{text}");
    }
}
