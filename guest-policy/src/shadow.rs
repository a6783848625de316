//! Finds network rules that can never match because an earlier rule in the
//! same role already matches all of their traffic (first match wins).
//!
//! The check is conservative: it only warns when containment is certain
//! (direction, protocol, every prefix, port range and host pattern of the
//! later rule lies inside the earlier one). Such a rule is not an error —
//! the policy still means something — but it is almost always a mistake in
//! rule order, so `lint` prints it.

use std::ops::Range;

use crate::diag::{Diagnostic, SourceMap};
use crate::model::NetRule;

/// One warning per shadowed rule, naming the first earlier rule that covers it.
pub(crate) fn shadowed_rule_warnings(
    map: &SourceMap<'_>,
    role: &str,
    rules: &[NetRule],
    spans: &[Range<usize>],
) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    for (later_index, later) in rules.iter().enumerate() {
        let covering = rules[..later_index]
            .iter()
            .position(|earlier| covers(earlier, later));
        if let (Some(earlier_index), Some(span)) = (covering, spans.get(later_index)) {
            let earlier_line = spans
                .get(earlier_index)
                .map_or(0, |earlier_span| map.line_of(earlier_span.start));
            warnings.push(map.warning(
                span.clone(),
                format!(
                    "rule {} of role \"{role}\" can never match: rule {} (line {earlier_line}) already matches all of its traffic; move it above that rule or remove it",
                    later_index + 1,
                    earlier_index + 1
                ),
            ));
        }
    }
    warnings
}

/// True when every packet `later` matches is also matched by `earlier`.
pub(crate) fn covers(earlier: &NetRule, later: &NetRule) -> bool {
    later.direction.within(earlier.direction)
        && later.protocol.within(earlier.protocol)
        && all_within(&later.remote, &earlier.remote, |net, wider| {
            wider.contains(net)
        })
        && all_within(&later.ports, &earlier.ports, |range, wider| {
            range.within(wider)
        })
        && all_within(&later.hosts, &earlier.hosts, |host, wider| {
            host.within(wider)
        })
}

/// An empty list means "anything", so it is only inside another empty list.
fn all_within<T>(narrow: &[T], wide: &[T], inside: impl Fn(&T, &T) -> bool) -> bool {
    if wide.is_empty() {
        return true;
    }
    !narrow.is_empty()
        && narrow
            .iter()
            .all(|item| wide.iter().any(|outer| inside(item, outer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Direction, PortRange, Protocol};

    fn rule(protocol: Protocol, remote: &[&str], ports: &[(u16, u16)]) -> NetRule {
        NetRule {
            action: Action::Allow,
            direction: Direction::Out,
            protocol,
            remote: remote.iter().map(|net| net.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
            hosts: Vec::new(),
            comment: None,
        }
    }

    #[test]
    fn wider_rule_covers_narrower() {
        let wide = rule(Protocol::Tcp, &["192.0.2.0/24"], &[(1, 1024)]);
        let narrow = rule(Protocol::Tcp, &["192.0.2.8/29"], &[(443, 443)]);
        assert!(covers(&wide, &narrow));
        assert!(!covers(&narrow, &wide));
    }

    #[test]
    fn empty_list_is_any() {
        let any_port = rule(Protocol::Tcp, &[], &[]);
        let some_port = rule(Protocol::Tcp, &[], &[(22, 22)]);
        assert!(covers(&any_port, &some_port));
        assert!(!covers(&some_port, &any_port));
        let udp = rule(Protocol::Udp, &[], &[(22, 22)]);
        assert!(!covers(&any_port, &udp));
    }

    #[test]
    fn warning_names_both_rules() {
        let text = "a\nb\nc\n";
        let map = SourceMap::new("p.toml", text);
        let rules = [rule(Protocol::Any, &[], &[]), rule(Protocol::Tcp, &[], &[])];
        let warnings = shadowed_rule_warnings(&map, "staff", &rules, &[0..1, 4..5]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "p.toml:3:1: warning: rule 2 of role \"staff\" can never match: rule 1 (line 1) already matches all of its traffic; move it above that rule or remove it"
        );
    }
}
