//! A plain-language summary of a policy for `guest-policy show`: per role,
//! who is in it and what they may do.

use std::fmt::Write as _;

use crate::model::{
    Action, AuditForward, AuditSink, Clipboard, Direction, ExternalMedia, NetRule, Policy,
    PortRange, Protocol, Role, User,
};
use crate::timestamp::format_utc;

/// Renders the summary as text lines.
pub fn summarise(policy: &Policy) -> String {
    let mut out = String::new();
    let meta = &policy.meta;
    let _ = write!(
        out,
        "Policy version {} from {}, issued {}",
        meta.version,
        meta.organisation,
        format_utc(meta.issued)
    );
    match meta.expires {
        Some(expires) => {
            let _ = writeln!(out, ", expires {}", format_utc(expires));
        }
        None => out.push_str(", does not expire\n"),
    }
    let _ = writeln!(out, "Audit log: {}", audit_text(&policy.audit.sink));
    for target in &policy.audit.forward {
        let _ = writeln!(out, "Audit records forwarded to: {}", forward_text(target));
    }
    for (name, role) in &policy.roles {
        let members: Vec<&User> = policy
            .users
            .iter()
            .filter(|user| &user.role == name)
            .collect();
        out.push('\n');
        role_text(&mut out, name, role, &members);
    }
    out
}

fn audit_text(sink: &AuditSink) -> String {
    match sink {
        AuditSink::File(path) => format!("file {}", path.display()),
        AuditSink::Syslog => "the host's syslog".to_string(),
        AuditSink::Remote(address) => format!("remote syslog collector {address}"),
    }
}

fn forward_text(target: &AuditForward) -> String {
    match target {
        AuditForward::Syslog => "the host's syslog (/dev/log)".to_string(),
        AuditForward::Remote(collector) => format!(
            "syslog over TLS to {}:{} (certificate for {} from a CA in {})",
            collector.host,
            collector.port,
            collector.server_name,
            collector.ca_file.display()
        ),
    }
}

fn role_text(out: &mut String, name: &str, role: &Role, members: &[&User]) {
    let _ = writeln!(out, "Role {name}");
    if let Some(description) = &role.description {
        let _ = writeln!(out, "  {description}");
    }
    if members.is_empty() {
        out.push_str("  Members: nobody\n");
    }
    for user in members {
        let _ = writeln!(
            out,
            "  Member: {} ({}), {}",
            user.id,
            user.display_name,
            credentials_text(user)
        );
    }
    let storage = &role.storage;
    let _ = writeln!(
        out,
        "  System disk: {}",
        if storage.system_disk_encrypted {
            "must be encrypted"
        } else {
            "encryption not required"
        }
    );
    let media = match storage.external_media {
        ExternalMedia::Encrypt => "attached, everything written is encrypted",
        ExternalMedia::ReadOnly => "attached read-only",
        ExternalMedia::Deny => "never attached",
    };
    let _ = writeln!(out, "  External media: {media}");
    if !storage.allowed_media_serials.is_empty() {
        let _ = writeln!(
            out,
            "    only media with serial {}",
            storage.allowed_media_serials.join(", ")
        );
    }
    if storage.watches_removable() {
        out.push_str(
            "    watched: USB and MMC sticks plugged into the machine are judged as they arrive\n",
        );
    }
    if role.display.is_some() {
        let clipboard = match role.clipboard() {
            Clipboard::None => "nothing crosses between the guest and the viewer",
            Clipboard::ToGuest => "text from the viewer may be pasted in the guest",
            Clipboard::FromGuest => "text from the guest may be pasted in the viewer",
            Clipboard::Both => "text crosses both ways between the guest and the viewer",
        };
        let _ = writeln!(out, "  Clipboard: {clipboard}");
    }
    let network = &role.network;
    let _ = writeln!(
        out,
        "  Network: first matching rule wins; otherwise {}",
        action_text(network.default_action)
    );
    for (index, rule) in network.rules.iter().enumerate() {
        let _ = writeln!(out, "    {}. {}", index + 1, rule_text(rule));
    }
    if network.dns_resolvers.is_empty() {
        out.push_str("  DNS: no resolver allowed\n");
    } else {
        let resolvers: Vec<String> = network
            .dns_resolvers
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(out, "  DNS: only via {}", resolvers.join(", "));
    }
    if let Some(vpn) = &network.vpn {
        let list = |nets: &[ipnet::IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  VPN: WireGuard to {}, tunnel address {}, carries {}",
            vpn.endpoint,
            list(&vpn.addresses),
            list(&vpn.routes)
        );
    }
}

fn credentials_text(user: &User) -> String {
    let mut credentials = Vec::new();
    if user.passphrase_hash.is_some() {
        credentials.push("passphrase".to_string());
    }
    if let Some(card) = &user.smartcard {
        credentials.push(format!("smart card {}", card.pkcs11_uri()));
    }
    format!("logs in with {}", credentials.join(" or "))
}

fn action_text(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn rule_text(rule: &NetRule) -> String {
    let direction = match rule.direction {
        Direction::Out => "outgoing",
        Direction::In => "incoming",
        Direction::Both => "all",
    };
    let protocol = match rule.protocol {
        Protocol::Any => "traffic",
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Icmp => "ICMP",
        Protocol::Icmpv6 => "ICMPv6",
    };
    let mut text = format!("{} {direction} {protocol}", action_text(rule.action));
    if !rule.remote.is_empty() {
        let nets: Vec<String> = rule.remote.iter().map(ToString::to_string).collect();
        let _ = write!(text, " with {}", nets.join(", "));
    }
    if !rule.hosts.is_empty() {
        let hosts: Vec<String> = rule.hosts.iter().map(ToString::to_string).collect();
        let _ = write!(text, " named {}", hosts.join(", "));
    }
    if !rule.ports.is_empty() {
        let ports: Vec<String> = rule.ports.iter().map(port_text).collect();
        let _ = write!(text, " on port {}", ports.join(", "));
    }
    if let Some(comment) = &rule.comment {
        let _ = write!(text, " ({comment})");
    }
    text
}

fn port_text(range: &PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}-{}", range.first, range.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PortRange;

    #[test]
    fn rule_text_reads_like_a_sentence() {
        let rule = NetRule {
            action: Action::Allow,
            direction: Direction::Out,
            protocol: Protocol::Tcp,
            remote: vec!["192.0.2.0/24".parse().unwrap()],
            ports: vec![
                PortRange {
                    first: 443,
                    last: 443,
                },
                PortRange {
                    first: 8000,
                    last: 8080,
                },
            ],
            hosts: Vec::new(),
            comment: Some("web".into()),
        };
        assert_eq!(
            rule_text(&rule),
            "allow outgoing TCP with 192.0.2.0/24 on port 443, 8000-8080 (web)"
        );
    }
}
