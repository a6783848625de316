//! Deciding what happens to one connection under a role's network policy,
//! so the VMM's packet filter applies exactly the semantics the validator
//! and `lint` assume: DNS only to the listed resolvers, then the first
//! matching rule, then the default action.

use std::net::IpAddr;

use crate::model::{Action, Direction, NetRule, NetworkPolicy, Protocol};

/// The DNS port; outgoing DNS to anything but the listed resolvers is refused.
const DNS_PORT: u16 = 53;

/// What the filter knows about a connection (or a connectionless flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// `In` or `Out` (who opened it). `Both` never describes a connection
    /// and matches only rules with `direction = "both"`.
    pub direction: Direction,
    /// The IP protocol; `Any` stands for protocols without their own variant
    /// and matches only rules with `protocol = "any"`.
    pub protocol: Protocol,
    /// The far end's address.
    pub remote: IpAddr,
    /// The far end's port, for TCP and UDP.
    pub port: Option<u16>,
    /// The far end's DNS name, when the VMM learned it from an allowed resolver.
    pub host: Option<&'a str>,
}

impl NetRule {
    /// True when every non-empty criterion of the rule matches.
    pub fn matches(&self, connection: &Connection<'_>) -> bool {
        connection.direction.within(self.direction)
            && connection.protocol.within(self.protocol)
            && (self.remote.is_empty()
                || self
                    .remote
                    .iter()
                    .any(|net| net.contains(&connection.remote)))
            && (self.ports.is_empty()
                || connection
                    .port
                    .is_some_and(|port| self.ports.iter().any(|range| range.contains(port))))
            && (self.hosts.is_empty()
                || connection
                    .host
                    .is_some_and(|host| self.hosts.iter().any(|pattern| pattern.matches(host))))
    }
}

impl NetworkPolicy {
    /// The action for `connection`: outgoing DNS to an address that is not
    /// a listed resolver is denied; otherwise the first matching rule
    /// decides, and the default action applies when none matches.
    pub fn decide(&self, connection: &Connection<'_>) -> Action {
        let is_outgoing_dns = connection.direction == Direction::Out
            && matches!(connection.protocol, Protocol::Udp | Protocol::Tcp)
            && connection.port == Some(DNS_PORT);
        if is_outgoing_dns && !self.dns_resolvers.contains(&connection.remote) {
            return Action::Deny;
        }
        self.rules
            .iter()
            .find(|rule| rule.matches(connection))
            .map_or(self.default_action, |rule| rule.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;

    fn staff_and_contractor() -> (NetworkPolicy, NetworkPolicy) {
        let policy = validate("policy.toml", include_str!("../examples/policy.toml"))
            .unwrap()
            .policy;
        (
            policy.roles["staff"].network.clone(),
            policy.roles["contractor"].network.clone(),
        )
    }

    fn out(
        protocol: Protocol,
        remote: &str,
        port: Option<u16>,
        host: Option<&'static str>,
    ) -> Connection<'static> {
        Connection {
            direction: Direction::Out,
            protocol,
            remote: remote.parse().unwrap(),
            port,
            host,
        }
    }

    #[test]
    fn dns_only_to_listed_resolvers() {
        let (staff, _) = staff_and_contractor();
        assert_eq!(
            staff.decide(&out(Protocol::Udp, "192.0.2.53", Some(53), None)),
            Action::Allow
        );
        assert_eq!(
            staff.decide(&out(Protocol::Udp, "203.0.113.9", Some(53), None)),
            Action::Deny
        );
    }

    #[test]
    fn first_matching_rule_wins_then_default() {
        let (staff, contractor) = staff_and_contractor();
        assert_eq!(
            staff.decide(&out(Protocol::Tcp, "198.51.100.7", Some(8080), None)),
            Action::Allow
        );
        assert_eq!(
            staff.decide(&out(Protocol::Tcp, "198.51.100.7", Some(22), None)),
            Action::Deny
        );
        assert_eq!(
            staff.decide(&out(
                Protocol::Tcp,
                "203.0.113.80",
                Some(443),
                Some("www.example.org")
            )),
            Action::Allow
        );
        assert_eq!(
            staff.decide(&out(
                Protocol::Tcp,
                "203.0.113.80",
                Some(443),
                Some("example.net")
            )),
            Action::Deny
        );
        assert_eq!(
            contractor.decide(&out(Protocol::Tcp, "203.0.113.66", Some(22), None)),
            Action::Deny
        );
        assert_eq!(
            contractor.decide(&out(Protocol::Tcp, "203.0.113.67", Some(22), None)),
            Action::Allow
        );
    }

    #[test]
    fn direction_both_covers_incoming() {
        let (staff, _) = staff_and_contractor();
        let ping_in = Connection {
            direction: Direction::In,
            protocol: Protocol::Icmp,
            remote: "198.51.100.9".parse().unwrap(),
            port: None,
            host: None,
        };
        assert_eq!(staff.decide(&ping_in), Action::Allow);
        let tcp_in = Connection {
            protocol: Protocol::Tcp,
            port: Some(443),
            ..ping_in
        };
        assert_eq!(staff.decide(&tcp_in), Action::Deny);
    }
}
