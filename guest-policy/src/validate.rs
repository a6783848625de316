//! Turns policy text into a typed [`Policy`], collecting every mistake with
//! its line and column and a hint at what would be valid.
//!
//! Parsing (syntax, types, unknown keys) is done by `toml` + serde on the
//! types in `raw`; this module adds the semantic checks and builds the model.
//! All errors found are reported together so an administrator can fix a file
//! in one pass. Suspicious but harmless constructs (such as a rule that an
//! earlier rule shadows) become warnings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use base64::Engine as _;
use ipnet::IpNet;
use toml::Spanned;

use crate::diag::{Diagnostic, SourceMap};
use crate::format::{self, FormatFeature, FORMAT_FEATURES, NEWEST_READABLE_FORMAT};
use crate::model::{
    Action, Audit, AuditForward, AuditSink, Clipboard, Direction, DisplayPolicy, ExternalMedia,
    HostPattern, Meta, NetRule, NetworkPolicy, Policy, PortRange, Protocol, RemoteCollector, Role,
    SmartCardBinding, StoragePolicy, User, WireGuardConfig, SYSLOG_TLS_PORT,
};
use crate::raw::{
    RawAudit, RawAuditRemote, RawDisplay, RawMeta, RawNetwork, RawPolicyFile, RawPort, RawRole,
    RawRule, RawSmartCard, RawStorage, RawUser, RawVpn,
};
use crate::{passphrase_hash, shadow, timestamp};

/// A policy that passed validation, plus the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The typed policy.
    pub policy: Policy,
    /// Findings that do not stop the policy from being used.
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates policy text. `file_name` only appears in messages.
/// On failure every error found is returned, in file order; a policy in a
/// format newer than this build reads gets that one error only.
pub fn validate(file_name: &str, text: &str) -> Result<Validated, Vec<Diagnostic>> {
    validate_for_format(file_name, text, NEWEST_READABLE_FORMAT, FORMAT_FEATURES)
}

/// [`validate`] as a build reading formats up to `newest_readable`, with
/// `features` as its table of post-format-1 features.
pub(crate) fn validate_for_format(
    file_name: &str,
    text: &str,
    newest_readable: u32,
    features: &[FormatFeature],
) -> Result<Validated, Vec<Diagnostic>> {
    let map = SourceMap::new(file_name, text);
    let declared = format::declared_format(&map, text, newest_readable).map_err(|e| vec![e])?;
    let raw: RawPolicyFile =
        toml::from_str(text).map_err(|error| vec![toml_error(&map, &error)])?;
    let mut checker = Checker {
        map,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let policy = checker.policy(raw, declared.format);
    if let Some(policy) = &policy {
        let undeclared = format::undeclared_features(&map, policy, &declared, features);
        checker.errors.extend(undeclared);
    }
    let Checker {
        mut errors,
        mut warnings,
        ..
    } = checker;
    let by_position = |d: &Diagnostic| (d.line, d.column);
    match policy {
        Some(policy) if errors.is_empty() => {
            warnings.sort_by_key(by_position);
            Ok(Validated { policy, warnings })
        }
        _ => {
            errors.sort_by_key(by_position);
            Err(errors)
        }
    }
}

/// Rewrites serde's wording into the policy's vocabulary ("key" rather than
/// "field") and locates it.
fn toml_error(map: &SourceMap<'_>, error: &toml::de::Error) -> Diagnostic {
    let message = error.message().trim_end();
    let message = if message.starts_with("unknown field") {
        message
            .replacen("unknown field", "unknown key", 1)
            .replacen(", expected one of", "; valid keys here are", 1)
            .replacen(", expected `", "; the only valid key here is `", 1)
    } else {
        message
            .replacen("missing field", "missing key", 1)
            .replacen("expected i64", "expected a whole number", 1)
    };
    map.error(error.span().unwrap_or(0..0), message)
}

struct Checker<'a> {
    map: SourceMap<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// Role names known to the file, for checking users' `role` values.
type RoleNames = BTreeSet<String>;

/// Where each role name was written, for warnings about unused roles.
type RoleNameSpans = Vec<(String, Range<usize>)>;

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.map.error(span, message);
        self.errors.push(diagnostic);
    }

    fn policy(&mut self, raw: RawPolicyFile, format: u32) -> Option<Policy> {
        let meta = self.meta(raw.policy, format);
        let role_names: RoleNames = raw
            .roles
            .keys()
            .map(|name| name.get_ref().clone())
            .collect();
        if raw.roles.is_empty() {
            self.error(
                0..0,
                "the policy defines no roles; add at least one [roles.NAME] table with storage and network sections",
            );
        }
        let roles = self.roles(raw.roles);
        if raw.users.is_empty() {
            self.error(
                0..0,
                "the policy defines no users; add at least one [[users]] entry, otherwise nobody can log in",
            );
        }
        let users = self.users(raw.users, &role_names);
        let used_roles: BTreeSet<&str> = users.iter().map(|user| user.role.as_str()).collect();
        for (name, span) in &roles.1 {
            if !used_roles.contains(name.as_str()) && !users.is_empty() {
                let warning = self.map.warning(
                    span.clone(),
                    format!("role \"{name}\" is not assigned to any user"),
                );
                self.warnings.push(warning);
            }
        }
        let audit = self.audit(raw.audit);
        Some(Policy {
            meta: meta?,
            users,
            roles: roles.0,
            audit: audit?,
        })
    }

    fn meta(&mut self, raw: Spanned<RawMeta>, format: u32) -> Option<Meta> {
        let raw = raw.into_inner();
        let organisation = self.non_empty(&raw.organisation, "organisation");
        let version = match u64::try_from(*raw.version.get_ref()) {
            Ok(version) if version >= 1 => Some(version),
            _ => {
                self.error(
                    raw.version.span(),
                    format!(
                        "version {} is not valid; use a whole number of at least 1 that grows with every policy you publish",
                        raw.version.get_ref()
                    ),
                );
                None
            }
        };
        let issued = self.time(&raw.issued);
        let expires = raw
            .expires
            .as_ref()
            .map(|expires| (expires.span(), self.time(expires)));
        let expires = match (issued, expires) {
            (Some(issued), Some((span, Some(expires)))) if expires <= issued => {
                self.error(
                    span,
                    "expires is not after issued; a policy must be valid for some time after it is issued",
                );
                None
            }
            (_, Some((_, None))) => None,
            (_, Some((_, Some(expires)))) => Some(Some(expires)),
            (_, None) => Some(None),
        };
        Some(Meta {
            format,
            organisation: organisation?,
            version: version?,
            issued: issued?,
            expires: expires?,
        })
    }

    fn time(&mut self, raw: &Spanned<toml::value::Datetime>) -> Option<std::time::SystemTime> {
        timestamp::to_system_time(raw.get_ref())
            .map_err(|message| self.error(raw.span(), message))
            .ok()
    }

    fn non_empty(&mut self, raw: &Spanned<String>, key: &str) -> Option<String> {
        let value = raw.get_ref().trim();
        if value.is_empty() {
            self.error(raw.span(), format!("{key} is empty; give a non-empty text"));
            return None;
        }
        Some(value.to_string())
    }

    fn identifier(&mut self, raw: &Spanned<String>, what: &str) -> Option<String> {
        let value = raw.get_ref();
        let valid = (1..=32).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !valid {
            self.error(
                raw.span(),
                format!(
                    "{what} \"{value}\" is not valid; use 1-32 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter"
                ),
            );
            return None;
        }
        Some(value.clone())
    }

    fn users(&mut self, raw: Vec<Spanned<RawUser>>, roles: &RoleNames) -> Vec<User> {
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut users = Vec::new();
        for raw_user in raw {
            let span = raw_user.span();
            let raw_user = raw_user.into_inner();
            if let Some(previous) = first_seen.get(raw_user.id.get_ref()) {
                let line = self.map.line_of(*previous);
                self.error(
                    raw_user.id.span(),
                    format!(
                        "user id \"{}\" is already used on line {line}; every user needs a unique id",
                        raw_user.id.get_ref()
                    ),
                );
                continue;
            }
            first_seen.insert(raw_user.id.get_ref().clone(), raw_user.id.span().start);
            if let Some(user) = self.user(span, raw_user, roles) {
                users.push(user);
            }
        }
        users
    }

    fn user(&mut self, span: Range<usize>, raw: RawUser, roles: &RoleNames) -> Option<User> {
        let id = self.identifier(&raw.id, "user id");
        let display_name = self.non_empty(&raw.display_name, "display_name");
        let role = raw.role.get_ref();
        let role = if roles.contains(role) {
            Some(role.clone())
        } else {
            let defined: Vec<&str> = roles.iter().map(String::as_str).collect();
            self.error(
                raw.role.span(),
                format!(
                    "role \"{role}\" is not defined; defined roles are: {}",
                    if defined.is_empty() {
                        "(none)".to_string()
                    } else {
                        defined.join(", ")
                    }
                ),
            );
            None
        };
        if raw.passphrase.is_none() && raw.smartcard.is_none() {
            self.error(
                span,
                format!(
                    "user \"{}\" has no credentials; give a passphrase (an Argon2id PHC string from `guest-policy hash-passphrase`) and/or a [users.smartcard] table",
                    raw.id.get_ref()
                ),
            );
            return None;
        }
        let passphrase_hash = match &raw.passphrase {
            Some(phc) => match passphrase_hash::check_phc(phc.get_ref()) {
                Ok(()) => Some(Some(phc.get_ref().clone())),
                Err(message) => {
                    self.error(phc.span(), message);
                    None
                }
            },
            None => Some(None),
        };
        let smartcard = match raw.smartcard {
            Some(card) => self.smartcard(card).map(Some),
            None => Some(None),
        };
        Some(User {
            id: id?,
            display_name: display_name?,
            role: role?,
            passphrase_hash: passphrase_hash?,
            smartcard: smartcard?,
        })
    }

    fn smartcard(&mut self, raw: Spanned<RawSmartCard>) -> Option<SmartCardBinding> {
        let span = raw.span();
        let raw = raw.into_inner();
        let names_a_token = raw.token_label.is_some() || raw.token_serial.is_some();
        if !names_a_token {
            self.error(
                span,
                "smartcard names no token; give token_label and/or token_serial (the PKCS#11 token label and serial number)",
            );
        }
        let fingerprint = self.sha256(&raw.public_key_sha256);
        let optional = |value: Option<Spanned<String>>| value.map(Spanned::into_inner);
        if !names_a_token {
            return None;
        }
        Some(SmartCardBinding {
            token_label: optional(raw.token_label),
            token_serial: optional(raw.token_serial),
            manufacturer: optional(raw.manufacturer),
            public_key_sha256: fingerprint?,
        })
    }

    fn sha256(&mut self, raw: &Spanned<String>) -> Option<[u8; 32]> {
        let digits: String = raw.get_ref().chars().filter(|c| *c != ':').collect();
        let mut fingerprint = [0u8; 32];
        let valid = digits.len() == 64
            && digits.is_ascii()
            && fingerprint.iter_mut().enumerate().all(|(index, byte)| {
                u8::from_str_radix(&digits[index * 2..index * 2 + 2], 16)
                    .map(|value| *byte = value)
                    .is_ok()
            });
        if !valid {
            self.error(
                raw.span(),
                "public_key_sha256 must be 64 hex digits (optionally separated by ':'), the SHA-256 of the DER public key or certificate, e.g. from `openssl x509 -noout -fingerprint -sha256`",
            );
            return None;
        }
        Some(fingerprint)
    }

    /// Returns the roles and where each name was written.
    fn roles(
        &mut self,
        raw: BTreeMap<Spanned<String>, Spanned<RawRole>>,
    ) -> (BTreeMap<String, Role>, RoleNameSpans) {
        let mut roles = BTreeMap::new();
        let mut spans = Vec::new();
        for (name, raw_role) in raw {
            let Some(role_name) = self.identifier(&name, "role name") else {
                continue;
            };
            spans.push((role_name.clone(), name.span()));
            if let Some(role) = self.role(&role_name, raw_role.into_inner()) {
                roles.insert(role_name, role);
            }
        }
        (roles, spans)
    }

    fn role(&mut self, name: &str, raw: RawRole) -> Option<Role> {
        let storage = self.storage(raw.storage.into_inner());
        let network = self.network(name, raw.network.into_inner());
        let display = match raw.display {
            Some(display) => Some(self.display(display)?),
            None => None,
        };
        Some(Role {
            description: raw.description.map(Spanned::into_inner),
            storage: storage?,
            network: network?,
            display,
        })
    }

    fn display(&mut self, raw: RawDisplay) -> Option<DisplayPolicy> {
        let clipboard = match &raw.clipboard {
            Some(clipboard) => self.choice(
                clipboard,
                "clipboard",
                &[
                    ("none", Clipboard::None),
                    ("to-guest", Clipboard::ToGuest),
                    ("from-guest", Clipboard::FromGuest),
                    ("both", Clipboard::Both),
                ],
            )?,
            None => Clipboard::None,
        };
        Some(DisplayPolicy { clipboard })
    }

    fn storage(&mut self, raw: RawStorage) -> Option<StoragePolicy> {
        let external_media = self.choice(
            &raw.external_media,
            "external_media",
            &[
                ("encrypt", ExternalMedia::Encrypt),
                ("read-only", ExternalMedia::ReadOnly),
                ("deny", ExternalMedia::Deny),
            ],
        );
        let mut serials = Vec::new();
        let mut ok = true;
        for serial in &raw.allowed_media_serials {
            let value = serial.get_ref().trim();
            if value.is_empty() {
                self.error(serial.span(), "a media serial is empty; list the serial numbers shown by `lsblk -o NAME,SERIAL`");
                ok = false;
            } else if serials.iter().any(|known| known == value) {
                self.error(
                    serial.span(),
                    format!("media serial \"{value}\" is listed twice; list each serial once"),
                );
                ok = false;
            } else {
                serials.push(value.to_string());
            }
        }
        if external_media == Some(ExternalMedia::Deny) && !serials.is_empty() {
            self.error(
                raw.allowed_media_serials[0].span(),
                "allowed_media_serials has no effect when external_media = \"deny\"; remove the list or use \"encrypt\" or \"read-only\"",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(StoragePolicy {
            system_disk_encrypted: *raw.system_disk_encrypted.get_ref(),
            external_media: external_media?,
            allowed_media_serials: serials,
            watch_removable: raw.watch_removable,
        })
    }

    fn choice<T: Copy>(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let value = raw.get_ref();
        if let Some((_, chosen)) = options.iter().find(|(name, _)| name == value) {
            return Some(*chosen);
        }
        let names: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        self.error(
            raw.span(),
            format!(
                "{key} \"{value}\" is not valid; use one of {}",
                names.join(", ")
            ),
        );
        None
    }

    fn network(&mut self, role: &str, raw: RawNetwork) -> Option<NetworkPolicy> {
        let default_action = self.action(&raw.default, "default");
        let mut resolvers = Some(Vec::new());
        for resolver in &raw.dns_resolvers {
            match resolver.get_ref().parse::<IpAddr>() {
                Ok(address) => {
                    if let Some(list) = resolvers.as_mut() {
                        list.push(address);
                    }
                }
                Err(_) => {
                    self.error(
                        resolver.span(),
                        format!("DNS resolver \"{}\" is not an IP address; write it like \"192.0.2.53\" or \"2001:db8::53\"", resolver.get_ref()),
                    );
                    resolvers = None;
                }
            }
        }
        let mut rules = Some(Vec::new());
        let mut rule_spans = Vec::new();
        for raw_rule in &raw.rules {
            match self.rule(raw_rule.get_ref(), raw.dns_resolvers.is_empty()) {
                Some(rule) => {
                    if let Some(list) = rules.as_mut() {
                        list.push(rule);
                        rule_spans.push(raw_rule.span());
                    }
                }
                None => rules = None,
            }
        }
        if let Some(rules) = &rules {
            let warnings = shadow::shadowed_rule_warnings(&self.map, role, rules, &rule_spans);
            self.warnings.extend(warnings);
        }
        let vpn = match raw.vpn {
            Some(vpn) => self.vpn(vpn.into_inner()).map(Some),
            None => Some(None),
        };
        Some(NetworkPolicy {
            default_action: default_action?,
            rules: rules?,
            dns_resolvers: resolvers?,
            vpn: vpn?,
        })
    }

    fn action(&mut self, raw: &Spanned<String>, key: &str) -> Option<Action> {
        self.choice(
            raw,
            key,
            &[("allow", Action::Allow), ("deny", Action::Deny)],
        )
    }

    fn rule(&mut self, raw: &RawRule, no_resolvers: bool) -> Option<NetRule> {
        let errors_before = self.errors.len();
        let action = self.action(&raw.action, "action");
        let direction = self.choice(
            &raw.direction,
            "direction",
            &[
                ("out", Direction::Out),
                ("in", Direction::In),
                ("both", Direction::Both),
            ],
        );
        let protocol = match &raw.protocol {
            Some(protocol) => self.choice(
                protocol,
                "protocol",
                &[
                    ("any", Protocol::Any),
                    ("tcp", Protocol::Tcp),
                    ("udp", Protocol::Udp),
                    ("icmp", Protocol::Icmp),
                    ("icmpv6", Protocol::Icmpv6),
                ],
            ),
            None => Some(Protocol::Any),
        };
        let parsed_remote: Vec<Option<IpNet>> = raw
            .remote
            .iter()
            .map(|cidr| self.network_prefix(cidr, "remote"))
            .collect();
        if let Some(protocol) = protocol {
            self.check_icmp_family(raw, protocol, &parsed_remote);
        }
        let remote: Vec<IpNet> = parsed_remote.into_iter().flatten().collect();
        let ports: Vec<PortRange> = raw
            .ports
            .iter()
            .filter_map(|port| self.port(port))
            .collect();
        if let (Some(protocol), Some(first_port)) = (protocol, raw.ports.first()) {
            if !protocol.has_ports() {
                self.error(
                    first_port.span(),
                    "ports only apply to TCP and UDP; set protocol = \"tcp\" or \"udp\", or remove ports",
                );
            }
        }
        let hosts: Vec<HostPattern> = raw
            .hosts
            .iter()
            .filter_map(|host| {
                HostPattern::parse(host.get_ref())
                    .map_err(|message| self.error(host.span(), message))
                    .ok()
            })
            .collect();
        if no_resolvers {
            if let Some(first_host) = raw.hosts.first() {
                self.error(
                    first_host.span(),
                    "host names can only be matched when the guest resolves them through a known resolver; add dns_resolvers to this role's network table",
                );
            }
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some(NetRule {
            action: action?,
            direction: direction?,
            protocol: protocol?,
            remote,
            ports,
            hosts,
            comment: raw
                .comment
                .as_ref()
                .map(|comment| comment.get_ref().clone()),
        })
    }

    /// `remote` holds the parse result of each entry of `raw.remote`, in order.
    fn check_icmp_family(&mut self, raw: &RawRule, protocol: Protocol, remote: &[Option<IpNet>]) {
        let (wrong_family, message): (fn(&IpNet) -> bool, &str) = match protocol {
            Protocol::Icmp => (
                |net| matches!(net, IpNet::V6(_)),
                "protocol \"icmp\" is IPv4 only but remote lists an IPv6 prefix; use protocol = \"icmpv6\" in a separate rule",
            ),
            Protocol::Icmpv6 => (
                |net| matches!(net, IpNet::V4(_)),
                "protocol \"icmpv6\" is IPv6 only but remote lists an IPv4 prefix; use protocol = \"icmp\" in a separate rule",
            ),
            _ => return,
        };
        let wrong = remote
            .iter()
            .zip(&raw.remote)
            .find(|(net, _)| net.as_ref().is_some_and(wrong_family));
        if let Some((_, written)) = wrong {
            self.error(written.span(), message);
        }
    }

    /// Parses a CIDR prefix (a bare address means a single host) and refuses
    /// host bits so that `192.0.2.1/24` cannot silently mean `192.0.2.0/24`.
    fn network_prefix(&mut self, raw: &Spanned<String>, key: &str) -> Option<IpNet> {
        let text = raw.get_ref().trim();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                self.error(
                    raw.span(),
                    format!("{key} \"{text}\" has bits set after the prefix length; did you mean \"{}\"?", net.trunc()),
                );
                None
            }
            Err(_) => {
                self.error(
                    raw.span(),
                    format!("{key} \"{text}\" is not a valid CIDR prefix; write an address with a prefix length like \"192.0.2.0/24\" or \"2001:db8::/32\", or a single address"),
                );
                None
            }
        }
    }

    fn port(&mut self, raw: &Spanned<RawPort>) -> Option<PortRange> {
        const HINT: &str = "ports are 1-65535 or a range like \"8000-8080\"";
        let in_range = |value: i64| u16::try_from(value).ok().filter(|port| *port >= 1);
        let range = match raw.get_ref() {
            RawPort::Number(number) => match in_range(*number) {
                Some(port) => Ok(PortRange {
                    first: port,
                    last: port,
                }),
                None => Err(format!("port {number} is out of range; {HINT}")),
            },
            RawPort::Text(text) => parse_port_text(text.trim(), HINT),
        };
        range
            .map_err(|message| self.error(raw.span(), message))
            .ok()
    }

    fn vpn(&mut self, raw: RawVpn) -> Option<WireGuardConfig> {
        let endpoint = match raw.endpoint.get_ref().parse::<SocketAddr>() {
            Ok(endpoint) if endpoint.port() != 0 => Some(endpoint),
            _ => {
                self.error(
                    raw.endpoint.span(),
                    format!("endpoint \"{}\" is not an address with a port; write it like \"203.0.113.1:51820\" or \"[2001:db8::1]:51820\"", raw.endpoint.get_ref()),
                );
                None
            }
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(raw.peer_public_key.get_ref().trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        if key.is_none() {
            self.error(
                raw.peer_public_key.span(),
                "peer_public_key is not a WireGuard public key; use the 44-character base64 text printed by `wg pubkey`",
            );
        }
        let addresses = self.interface_addresses(&raw.addresses);
        let routes = self.prefix_list(&raw.routes, "routes", "a vpn needs at least one route; list the destinations that go through the tunnel, e.g. [\"198.51.100.0/24\"]");
        let keepalive = match &raw.persistent_keepalive {
            Some(seconds) => match u16::try_from(*seconds.get_ref()) {
                Ok(value) if value >= 1 => Some(Some(value)),
                _ => {
                    self.error(seconds.span(), "persistent_keepalive must be 1-65535 seconds; leave it out to disable keepalives");
                    None
                }
            },
            None => Some(None),
        };
        Some(WireGuardConfig {
            endpoint: endpoint?,
            peer_public_key: key?,
            addresses: addresses?,
            routes: routes?,
            persistent_keepalive: keepalive?,
        })
    }

    /// Tunnel addresses keep their host part (`198.51.100.2/24` is the
    /// machine's address in a /24), so they are parsed without the host-bit check.
    fn interface_addresses(&mut self, raw: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<IpNet>> {
        let mut addresses = Vec::new();
        let mut ok = true;
        for address in raw.get_ref() {
            let text = address.get_ref().trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => addresses.push(net),
                Err(_) => {
                    self.error(address.span(), format!("tunnel address \"{text}\" is not valid; write it like \"198.51.100.2/32\""));
                    ok = false;
                }
            }
        }
        if raw.get_ref().is_empty() {
            self.error(
                raw.span(),
                "a vpn needs at least one tunnel address in addresses, e.g. [\"198.51.100.2/32\"]",
            );
            return None;
        }
        ok.then_some(addresses)
    }

    fn prefix_list(
        &mut self,
        raw: &Spanned<Vec<Spanned<String>>>,
        key: &str,
        when_empty: &str,
    ) -> Option<Vec<IpNet>> {
        if raw.get_ref().is_empty() {
            self.error(raw.span(), when_empty);
            return None;
        }
        let parsed: Vec<Option<IpNet>> = raw
            .get_ref()
            .iter()
            .map(|prefix| self.network_prefix(prefix, key))
            .collect();
        parsed.into_iter().collect()
    }

    fn audit(&mut self, raw: Spanned<RawAudit>) -> Option<Audit> {
        let span = raw.span();
        let raw = raw.into_inner();
        let sink = raw.sink.get_ref().as_str();
        let path = raw.path.as_ref();
        let address = raw.address.as_ref();
        let sink = match (sink, path, address) {
            ("file", Some(path), None) if path.get_ref().starts_with('/') => {
                AuditSink::File(PathBuf::from(path.get_ref()))
            }
            ("file", Some(path), None) => {
                self.error(path.span(), format!("audit path \"{}\" is not absolute; write a full path like \"/var/log/securevm/audit.jsonl\"", path.get_ref()));
                return None;
            }
            ("file", None, _) => {
                self.error(span, "sink = \"file\" needs path = \"/var/log/securevm/audit.jsonl\" (an absolute path)");
                return None;
            }
            ("syslog", None, None) => AuditSink::Syslog,
            ("remote", None, Some(address)) => match address.get_ref().parse::<SocketAddr>() {
                Ok(socket) => AuditSink::Remote(socket),
                Err(_) => {
                    self.error(address.span(), format!("audit address \"{}\" is not an address with a port; write it like \"198.51.100.10:6514\"", address.get_ref()));
                    return None;
                }
            },
            ("remote", None, None) => {
                self.error(span, "sink = \"remote\" needs address = \"198.51.100.10:6514\" (a syslog-over-TLS collector)");
                return None;
            }
            ("file" | "syslog" | "remote", _, _) => {
                self.error(span, "audit: use path only with sink = \"file\" and address only with sink = \"remote\"");
                return None;
            }
            (other, _, _) => {
                self.error(raw.sink.span(), format!("sink \"{other}\" is not valid; use one of \"file\", \"syslog\", \"remote\""));
                return None;
            }
        };
        let forward = self.audit_forward(span, raw.forward, raw.remote)?;
        Some(Audit { sink, forward })
    }

    /// `forward = [...]` and `[audit.remote]` (format 4).
    fn audit_forward(
        &mut self,
        audit_span: Range<usize>,
        forward: Option<Spanned<Vec<Spanned<String>>>>,
        remote: Option<Spanned<RawAuditRemote>>,
    ) -> Option<Vec<AuditForward>> {
        let mut targets = Vec::new();
        let mut wants_remote = false;
        let mut ok = true;
        if let Some(list) = forward.as_ref().filter(|list| list.get_ref().is_empty()) {
            self.error(list.span(), "forward = [] forwards nowhere; list \"syslog\" and/or \"remote\", or leave the key out");
            ok = false;
        }
        for target in forward.map(Spanned::into_inner).unwrap_or_default() {
            let name = target.get_ref().as_str();
            let duplicate = match name {
                "syslog" => targets.contains(&AuditForward::Syslog),
                "remote" => wants_remote,
                other => {
                    self.error(
                        target.span(),
                        format!(
                            "forward \"{other}\" is not valid; use \"syslog\" and/or \"remote\""
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            if duplicate {
                self.error(target.span(), format!("forward \"{name}\" is listed twice"));
                ok = false;
            } else if name == "syslog" {
                targets.push(AuditForward::Syslog);
            } else {
                wants_remote = true;
            }
        }
        match (wants_remote, remote) {
            (true, Some(remote)) => match self.remote_collector(remote.into_inner()) {
                Some(collector) => targets.push(AuditForward::Remote(collector)),
                None => ok = false,
            },
            (true, None) => {
                self.error(
                    audit_span,
                    "forward = [\"remote\"] needs an [audit.remote] table with host and ca_file",
                );
                ok = false;
            }
            (false, Some(remote)) => {
                self.error(remote.span(), "[audit.remote] is used only with forward = [\"remote\"]; add \"remote\" to forward or remove the table");
                ok = false;
            }
            (false, None) => {}
        }
        ok.then_some(targets)
    }

    fn remote_collector(&mut self, raw: RawAuditRemote) -> Option<RemoteCollector> {
        let host = raw.host.get_ref().clone();
        let host_ok = is_host_name_or_address(&host);
        if !host_ok {
            self.error(raw.host.span(), format!("audit collector host \"{host}\" is not a DNS name or an IP address; write it like \"collector.example.org\" or \"198.51.100.10\""));
        }
        let port = match raw.port {
            None => Some(SYSLOG_TLS_PORT),
            Some(port) => match u16::try_from(*port.get_ref()) {
                Ok(number) if number != 0 => Some(number),
                _ => {
                    self.error(port.span(), format!("audit collector port {} is not valid; use 1-65535 (syslog over TLS is {SYSLOG_TLS_PORT})", port.get_ref()));
                    None
                }
            },
        };
        let ca_file = raw.ca_file.get_ref();
        let ca_ok = ca_file.starts_with('/');
        if !ca_ok {
            self.error(raw.ca_file.span(), format!("audit ca_file \"{ca_file}\" is not absolute; write a full path like \"/etc/securevm/collector-ca.pem\""));
        }
        let server_name = match raw.server_name {
            None => Some(host.clone()),
            Some(name) if is_host_name_or_address(name.get_ref()) => Some(name.into_inner()),
            Some(name) => {
                self.error(
                    name.span(),
                    format!(
                        "audit server_name \"{}\" is not a DNS name or an IP address",
                        name.get_ref()
                    ),
                );
                None
            }
        };
        Some(RemoteCollector {
            host: host_ok.then_some(host)?,
            port: port?,
            ca_file: ca_ok.then(|| PathBuf::from(ca_file))?,
            server_name: server_name?,
        })
    }
}

fn parse_port_text(text: &str, hint: &str) -> Result<PortRange, String> {
    let parse_one = |part: &str| -> Result<u16, String> {
        let number: i64 = part
            .trim()
            .parse()
            .map_err(|_| format!("port \"{text}\" is not a number or range; {hint}"))?;
        u16::try_from(number)
            .ok()
            .filter(|port| *port >= 1)
            .ok_or_else(|| format!("port {number} is out of range; {hint}"))
    };
    let range = match text.split_once('-') {
        Some((first, last)) => PortRange {
            first: parse_one(first)?,
            last: parse_one(last)?,
        },
        None => {
            let port = parse_one(text)?;
            PortRange {
                first: port,
                last: port,
            }
        }
    };
    if range.first > range.last {
        return Err(format!(
            "port range \"{text}\" runs backwards; write the lower port first, like \"{}-{}\"",
            range.last, range.first
        ));
    }
    Ok(range)
}

/// A DNS name (letters, digits and hyphens in dot-separated labels of at
/// most 63 characters, 253 in all) or an IP address.
fn is_host_name_or_address(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINT: &str = "ports are 1-65535";

    #[test]
    fn port_text_forms() {
        assert_eq!(
            parse_port_text("443", HINT),
            Ok(PortRange {
                first: 443,
                last: 443
            })
        );
        assert_eq!(
            parse_port_text("8000-8080", HINT),
            Ok(PortRange {
                first: 8000,
                last: 8080
            })
        );
        assert_eq!(
            parse_port_text("0", HINT).unwrap_err(),
            "port 0 is out of range; ports are 1-65535"
        );
        assert!(parse_port_text("1-", HINT).is_err());
        assert!(parse_port_text("-5", HINT).is_err());
    }

    #[test]
    fn example_policy_becomes_typed_values() {
        let text = include_str!("../examples/policy.toml");
        let validated = validate("policy.toml", text).unwrap();
        assert!(validated.warnings.is_empty());
        let policy = validated.policy;
        let staff = policy.role_of("alice").unwrap();
        assert_eq!(staff.storage.external_media, ExternalMedia::Encrypt);
        assert_eq!(staff.network.default_action, Action::Deny);
        assert_eq!(
            staff.network.rules[1].ports[1],
            PortRange {
                first: 8000,
                last: 8080
            }
        );
        assert!(staff.network.rules[2].hosts[0].matches("www.example.org"));
        let contractor = policy.role_of("bob").unwrap();
        let vpn = contractor.network.vpn.as_ref().unwrap();
        assert_eq!(vpn.endpoint, "198.51.100.1:51820".parse().unwrap());
        assert_eq!(vpn.persistent_keepalive, Some(25));
        let card = policy.user("bob").unwrap().smartcard.as_ref().unwrap();
        assert_eq!(card.public_key_sha256[0], 0x3f);
        assert_eq!(
            policy.audit.sink,
            AuditSink::File("/var/log/securevm/audit.jsonl".into())
        );
        assert!(policy.user("carol").is_none());
    }

    #[test]
    fn all_errors_are_reported_together_in_file_order() {
        let text = include_str!("../examples/policy.toml")
            .replacen("version = 7", "version = -1", 1)
            .replacen("ports = [53]", "ports = [0]", 1);
        let errors = validate("p.toml", &text).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].line < errors[1].line);
    }
}
