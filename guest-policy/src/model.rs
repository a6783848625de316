//! The typed, already-validated policy that the VMM consumes.
//!
//! Nothing in here is a raw string the VMM would have to parse again:
//! addresses are `IpNet`/`IpAddr`, ports are ranges, host names are patterns
//! with a matcher, credentials are checked formats. Values of these types are
//! only produced by `validate` (or built by hand in tests), so the VMM can
//! trust their invariants.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

use ipnet::IpNet;

/// A complete, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Issuer, version and validity period.
    pub meta: Meta,
    /// Everyone who may log in, in file order.
    pub users: Vec<User>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
    /// Where audit records go.
    pub audit: Audit,
}

impl Policy {
    /// The user with this id, if the policy knows them.
    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|user| user.id == id)
    }

    /// The role that applies to this user, if the user exists.
    pub fn role_of(&self, user_id: &str) -> Option<&Role> {
        self.user(user_id)
            .and_then(|user| self.roles.get(&user.role))
    }
}

/// `[policy]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `format`: the policy schema the file is written in (1 if not given).
    pub format: u32,
    /// The organisation that issued the policy.
    pub organisation: String,
    /// Strictly increasing version; a machine refuses anything not newer.
    pub version: u64,
    /// When the policy was written.
    pub issued: SystemTime,
    /// After this instant the policy is refused.
    pub expires: Option<SystemTime>,
}

/// One person who may use the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name: lowercase letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// Name shown to people.
    pub display_name: String,
    /// Name of a role defined in the same policy.
    pub role: String,
    /// Argon2id PHC string, already checked for algorithm and minimum cost.
    pub passphrase_hash: Option<String>,
    /// Smart card that identifies the user.
    pub smartcard: Option<SmartCardBinding>,
}

impl User {
    /// Checks a passphrase against the user's Argon2id hash in constant time.
    /// Returns false when the user has no passphrase.
    pub fn verify_passphrase(&self, passphrase: &[u8]) -> bool {
        self.passphrase_hash
            .as_deref()
            .is_some_and(|hash| crate::passphrase_hash::verify(passphrase, hash))
    }
}

/// A PKCS#11 token plus the fingerprint of the user's key or certificate on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartCardBinding {
    /// PKCS#11 `token` attribute (the token label).
    pub token_label: Option<String>,
    /// PKCS#11 `serial` attribute.
    pub token_serial: Option<String>,
    /// PKCS#11 `manufacturer` attribute.
    pub manufacturer: Option<String>,
    /// SHA-256 of the DER public key (SubjectPublicKeyInfo) or certificate.
    pub public_key_sha256: [u8; 32],
}

impl SmartCardBinding {
    /// The token identification as a PKCS#11 URI (RFC 7512), e.g.
    /// `pkcs11:manufacturer=Nitrokey;serial=0001;token=Alice`.
    pub fn pkcs11_uri(&self) -> String {
        let attributes = [
            ("manufacturer", &self.manufacturer),
            ("serial", &self.token_serial),
            ("token", &self.token_label),
        ];
        let parts: Vec<String> = attributes
            .iter()
            .filter_map(|(name, value)| {
                value
                    .as_deref()
                    .map(|value| format!("{name}={}", percent_encode(value)))
            })
            .collect();
        format!("pkcs11:{}", parts.join(";"))
    }
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// What members of a role may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Free text for people.
    pub description: Option<String>,
    /// Disk and removable media rules.
    pub storage: StoragePolicy,
    /// Network rules.
    pub network: NetworkPolicy,
    /// `[roles.NAME.display]` as written, `None` when the table is absent
    /// (kept apart from a table with defaults because a securevm that reads
    /// only format 2 refuses the table, so writing it needs `format = 3`).
    /// Ask [`Role::clipboard`].
    pub display: Option<DisplayPolicy>,
}

impl Role {
    /// What may cross the desktop's clipboard: `Clipboard::None` unless
    /// the role's display table says otherwise.
    pub fn clipboard(&self) -> Clipboard {
        self.display
            .as_ref()
            .map_or(Clipboard::None, |display| display.clipboard)
    }
}

/// Desktop rules of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayPolicy {
    /// The clipboard between the guest and the viewer; `Clipboard::None`
    /// when the key is absent.
    pub clipboard: Clipboard,
}

/// Which way text may cross the clipboard between the guest and the
/// person's viewer. Both directions carry data past the packet filter, so
/// the default is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clipboard {
    /// Nothing crosses.
    #[default]
    None,
    /// Text copied in the viewer may be pasted in the guest.
    ToGuest,
    /// Text copied in the guest may be pasted in the viewer.
    FromGuest,
    /// Both.
    Both,
}

impl Clipboard {
    pub fn allows_to_guest(self) -> bool {
        matches!(self, Clipboard::ToGuest | Clipboard::Both)
    }

    pub fn allows_from_guest(self) -> bool {
        matches!(self, Clipboard::FromGuest | Clipboard::Both)
    }
}

/// Storage rules of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePolicy {
    /// The system disk must be encrypted by the VMM.
    pub system_disk_encrypted: bool,
    /// What happens to removable media.
    pub external_media: ExternalMedia,
    /// When not empty, only media with one of these serials are attached.
    pub allowed_media_serials: Vec<String>,
    /// `watch_removable` as written: `Some(true)` makes securevm watch the
    /// host for USB and MMC sticks and judge each by this role, as
    /// `securevm run --watch-removable` does. `None` (key absent) means the
    /// same as `Some(false)`; the two are kept apart because a securevm that
    /// reads only format 1 refuses the key whatever its value, so writing it
    /// at all needs `format = 2`. Ask [`StoragePolicy::watches_removable`].
    pub watch_removable: Option<bool>,
}

impl StoragePolicy {
    /// Whether securevm watches the host for removable media for this role
    /// (`watch_removable`, false unless written `true`).
    pub fn watches_removable(&self) -> bool {
        self.watch_removable == Some(true)
    }
}

/// Treatment of removable media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalMedia {
    /// Everything written is encrypted by the VMM.
    Encrypt,
    /// Media are attached read-only.
    ReadOnly,
    /// Media are never attached.
    Deny,
}

/// Network rules of a role. Rules are tried in order; the first match wins,
/// otherwise `default_action` applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Action when no rule matches.
    pub default_action: Action,
    /// Ordered rules.
    pub rules: Vec<NetRule>,
    /// The only DNS resolvers the guest may query.
    pub dns_resolvers: Vec<IpAddr>,
    /// Optional WireGuard tunnel.
    pub vpn: Option<WireGuardConfig>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the traffic through.
    Allow,
    /// Drop the traffic.
    Deny,
}

/// Which connections a rule looks at, by who opened them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Connections opened from outside towards the guest.
    In,
    /// Connections the guest opens.
    Out,
    /// Both.
    Both,
}

impl Direction {
    /// True when every connection this direction matches is also matched by `other`.
    pub fn within(self, other: Direction) -> bool {
        other == Direction::Both || self == other
    }
}

/// IP protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Any protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4.
    Icmp,
    /// ICMP for IPv6.
    Icmpv6,
}

impl Protocol {
    /// True when the protocol has port numbers.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    /// True when every packet this protocol matches is also matched by `other`.
    pub fn within(self, other: Protocol) -> bool {
        other == Protocol::Any || self == other
    }
}

/// One network rule. Empty lists mean "any"; every non-empty list must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    /// What to do with matching traffic.
    pub action: Action,
    /// Which connections.
    pub direction: Direction,
    /// Which protocol.
    pub protocol: Protocol,
    /// The far end: destination for outgoing, source for incoming connections.
    pub remote: Vec<IpNet>,
    /// Remote ports (destination port for outgoing, local port for incoming).
    pub ports: Vec<PortRange>,
    /// DNS names of the far end, as learned from the allowed resolvers.
    pub hosts: Vec<HostPattern>,
    /// The administrator's note about the rule.
    pub comment: Option<String>,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// First port, at least 1.
    pub first: u16,
    /// Last port, at least `first`.
    pub last: u16,
}

impl PortRange {
    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// True when every port of `self` lies in `other`.
    pub fn within(&self, other: &PortRange) -> bool {
        other.first <= self.first && self.last <= other.last
    }
}

/// A DNS name or a `*.` wildcard, stored lowercase without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(String),
    /// Any name below this one (`*.example.org` matches `a.example.org` and
    /// `a.b.example.org`, but not `example.org`).
    Subdomains(String),
}

impl HostPattern {
    /// Parses `name` or `*.name`; the error says what would be valid.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lowered = text.trim_end_matches('.').to_ascii_lowercase();
        let (is_wildcard, name) = match lowered.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lowered.clone()),
        };
        let problem = host_name_problem(&name);
        if let Some(problem) = problem {
            return Err(format!(
                "host \"{text}\" is not a valid DNS name ({problem}); use a name like \"updates.example.org\" or a wildcard like \"*.example.org\" (the \"*.\" only at the start)"
            ));
        }
        Ok(if is_wildcard {
            HostPattern::Subdomains(name)
        } else {
            HostPattern::Exact(name)
        })
    }

    /// True when `name` (any case, optional trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            HostPattern::Exact(exact) => name == *exact,
            HostPattern::Subdomains(parent) => name
                .strip_suffix(parent.as_str())
                .is_some_and(|label_part| label_part.len() > 1 && label_part.ends_with('.')),
        }
    }

    /// True when every name `self` matches is also matched by `other`.
    pub fn within(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(name), _) => other.matches(name),
            (HostPattern::Subdomains(mine), HostPattern::Subdomains(theirs)) => {
                mine == theirs || HostPattern::Subdomains(theirs.clone()).matches(mine)
            }
            (HostPattern::Subdomains(_), HostPattern::Exact(_)) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(name) => write!(f, "*.{name}"),
        }
    }
}

fn host_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("empty label");
        }
        if label.len() > 63 {
            return Some("a label is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label starts or ends with '-'");
        }
        if !label
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        {
            return Some("only letters, digits, '-' and '.' are allowed");
        }
    }
    None
}

/// A WireGuard tunnel. The machine's own private key is provisioned
/// separately and never appears in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardConfig {
    /// The peer's UDP endpoint.
    pub endpoint: SocketAddr,
    /// The peer's Curve25519 public key.
    pub peer_public_key: [u8; 32],
    /// Addresses the machine uses inside the tunnel.
    pub addresses: Vec<IpNet>,
    /// Destinations that go through the tunnel.
    pub routes: Vec<IpNet>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

/// `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Where records go.
    pub sink: AuditSink,
    /// Where copies of the local file's records go as well (format 4);
    /// the local file stays the record of truth and the spool.
    pub forward: Vec<AuditForward>,
}

/// A destination records are forwarded to from the local audit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditForward {
    /// The host's syslog socket (RFC 5424 messages).
    Syslog,
    /// A syslog-over-TLS collector (RFC 5425).
    Remote(RemoteCollector),
}

/// `[audit.remote]`: the collector and how its certificate is checked.
/// The client certificate is per machine and so never in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCollector {
    /// A DNS name or an IP address.
    pub host: String,
    pub port: u16,
    /// The CA certificate(s) (PEM) the collector's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name the collector's certificate must carry.
    pub server_name: String,
}

/// The port RFC 5425 assigns to syslog over TLS.
pub const SYSLOG_TLS_PORT: u16 = 6514;

/// Audit destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Append JSON lines to a file on the host.
    File(PathBuf),
    /// The host's syslog.
    Syslog,
    /// A remote syslog collector (RFC 5425, syslog over TLS).
    Remote(SocketAddr),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_only_strict_subdomains() {
        let pattern = HostPattern::parse("*.Example.org.").unwrap();
        assert!(pattern.matches("a.example.org"));
        assert!(pattern.matches("A.B.EXAMPLE.ORG."));
        assert!(!pattern.matches("example.org"));
        assert!(!pattern.matches("badexample.org"));
    }

    #[test]
    fn host_patterns_reject_bad_names() {
        for bad in ["", "a..b", "-a.org", "a_b.org", "*", "a.*.org", "*.*.org"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn host_pattern_containment() {
        let wide = HostPattern::parse("*.example.org").unwrap();
        let narrow = HostPattern::parse("*.eu.example.org").unwrap();
        let exact = HostPattern::parse("www.example.org").unwrap();
        assert!(narrow.within(&wide));
        assert!(exact.within(&wide));
        assert!(!wide.within(&narrow));
        assert!(!wide.within(&exact));
    }

    #[test]
    fn port_ranges() {
        let web = PortRange {
            first: 80,
            last: 443,
        };
        assert!(web.contains(80) && web.contains(443) && !web.contains(444));
        assert!(PortRange {
            first: 100,
            last: 200
        }
        .within(&web));
        assert!(!web.within(&PortRange {
            first: 80,
            last: 80
        }));
    }

    #[test]
    fn pkcs11_uri_escapes_attribute_values() {
        let binding = SmartCardBinding {
            token_label: Some("Alice Card".into()),
            token_serial: Some("0001".into()),
            manufacturer: None,
            public_key_sha256: [0; 32],
        };
        assert_eq!(
            binding.pkcs11_uri(),
            "pkcs11:serial=0001;token=Alice%20Card"
        );
    }

    #[test]
    fn user_passphrase_verification() {
        let mut user = User {
            id: "alice".into(),
            display_name: "Alice".into(),
            role: "staff".into(),
            passphrase_hash: Some(crate::passphrase_hash::hash_for_tests(b"open sesame")),
            smartcard: None,
        };
        assert!(user.verify_passphrase(b"open sesame"));
        assert!(!user.verify_passphrase(b"open sesame "));
        user.passphrase_hash = None;
        assert!(!user.verify_passphrase(b"open sesame"));
    }

    #[test]
    fn direction_and_protocol_containment() {
        assert!(Direction::In.within(Direction::Both));
        assert!(!Direction::Both.within(Direction::Out));
        assert!(Protocol::Tcp.within(Protocol::Any));
        assert!(!Protocol::Any.within(Protocol::Udp));
    }
}
