//! Malformed policies, each with the exact diagnostic an administrator sees.
//!
//! Every case starts from a small valid policy and changes one thing, so the
//! expected line and column are easy to check by eye against `BASE`.

use guest_policy::validate;

mod common;

use common::BASE;

/// `BASE` with the first occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

fn errors_of(text: &str) -> String {
    match validate("policy.toml", text) {
        Ok(_) => "<accepted>".to_string(),
        Err(errors) => errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn base_policy_is_valid() {
    let validated = validate("policy.toml", BASE).unwrap();
    assert_eq!(validated.policy.meta.version, 3);
    assert!(validated.warnings.is_empty(), "{:?}", validated.warnings);
}

#[test]
fn shadowed_rule_and_unused_role_are_warnings_not_errors() {
    let text = format!(
        "{BASE}\n[[roles.staff.network.rules]]\naction = \"deny\"\ndirection = \"out\"\nprotocol = \"tcp\"\nremote = [\"198.51.100.128/25\"]\nports = [443]\n\n[roles.spare.storage]\nsystem_disk_encrypted = false\nexternal_media = \"deny\"\n\n[roles.spare.network]\ndefault = \"deny\"\n"
    );
    let validated = validate("policy.toml", &text).unwrap();
    let warnings: Vec<String> = validated.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "policy.toml:30:1: warning: rule 2 of role \"staff\" can never match: rule 1 (line 23) already matches all of its traffic; move it above that rule or remove it",
            "policy.toml:37:8: warning: role \"spare\" is not assigned to any user",
        ]
    );
}

/// A malformed policy: what it breaks, its text, the exact diagnostics.
type Case = (&'static str, String, &'static str);

/// The TOML itself, its keys and types, and the `[policy]` header.
fn document_cases() -> Vec<Case> {
    vec![
    (
        "syntax: unterminated string",
        edit("organisation = \"Org\"", "organisation = \"Org"),
        r#"policy.toml:2:20: invalid basic string, expected `"`"#,
    ),
    (
        "syntax: missing value",
        edit("version = 3", "version ="),
        "policy.toml:3:10: string values must be quoted, expected literal string",
    ),
    (
        "type: version is a string",
        edit("version = 3", "version = \"3\""),
        r#"policy.toml:3:11: invalid type: string "3", expected a whole number"#,
    ),
    (
        "type: boolean written as text",
        edit("system_disk_encrypted = true", "system_disk_encrypted = \"yes\""),
        r#"policy.toml:16:25: invalid type: string "yes", expected a boolean"#,
    ),
    (
        "unknown key in a user",
        edit("display_name = \"Alice\"", "display_name = \"Alice\"\ncolour = \"blue\""),
        "policy.toml:12:1: unknown key `colour`; valid keys here are `id`, `display_name`, `role`, `passphrase`, `smartcard`",
    ),
    (
        "unknown top-level table",
        edit("[audit]", "[firewall]\nx = 1\n\n[audit]"),
        "policy.toml:6:2: unknown key `firewall`; valid keys here are `policy`, `users`, `roles`, `audit`",
    ),
    (
        "missing key",
        edit("role = \"staff\"\n", ""),
        "policy.toml:9:1: missing key `role`",
    ),
    (
        "version zero",
        edit("version = 3", "version = 0"),
        "policy.toml:3:11: version 0 is not valid; use a whole number of at least 1 that grows with every policy you publish",
    ),
    (
        "local time without offset",
        edit("issued = 2026-11-01T09:00:00Z", "issued = 2026-11-01T09:00:00"),
        "policy.toml:4:10: time 2026-11-01T09:00:00 has no UTC offset; write a full date-time like 2026-11-01T09:00:00Z",
    ),
    (
        "expiry before issue",
        edit("issued = 2026-11-01T09:00:00Z", "issued = 2026-11-01T09:00:00Z\nexpires = 2026-10-01T00:00:00Z"),
        "policy.toml:5:11: expires is not after issued; a policy must be valid for some time after it is issued",
    ),
    ]
}

/// Network rules, DNS resolvers and host names.
fn network_cases() -> Vec<Case> {
    vec![
    (
        "bad CIDR",
        edit("198.51.100.0/24", "198.51.100.0/33"),
        r#"policy.toml:27:11: remote "198.51.100.0/33" is not a valid CIDR prefix; write an address with a prefix length like "192.0.2.0/24" or "2001:db8::/32", or a single address"#,
    ),
    (
        "host bits set in CIDR",
        edit("198.51.100.0/24", "198.51.100.7/24"),
        r#"policy.toml:27:11: remote "198.51.100.7/24" has bits set after the prefix length; did you mean "198.51.100.0/24"?"#,
    ),
    (
        "port 70000",
        edit("ports = [443]", "ports = [70000]"),
        r#"policy.toml:28:10: port 70000 is out of range; ports are 1-65535 or a range like "8000-8080""#,
    ),
    (
        "port range backwards",
        edit("ports = [443]", "ports = [\"8080-8000\"]"),
        r#"policy.toml:28:10: port range "8080-8000" runs backwards; write the lower port first, like "8000-8080""#,
    ),
    (
        "port text garbage",
        edit("ports = [443]", "ports = [\"https\"]"),
        r#"policy.toml:28:10: port "https" is not a number or range; ports are 1-65535 or a range like "8000-8080""#,
    ),
    (
        "ports with icmp",
        edit("protocol = \"tcp\"", "protocol = \"icmp\""),
        r#"policy.toml:28:10: ports only apply to TCP and UDP; set protocol = "tcp" or "udp", or remove ports"#,
    ),
    (
        "unknown protocol",
        edit("protocol = \"tcp\"", "protocol = \"sctp\""),
        r#"policy.toml:26:12: protocol "sctp" is not valid; use one of "any", "tcp", "udp", "icmp", "icmpv6""#,
    ),
    (
        "bad DNS resolver",
        edit("dns_resolvers = [\"192.0.2.53\"]", "dns_resolvers = [\"dns.example.org\"]"),
        r#"policy.toml:21:18: DNS resolver "dns.example.org" is not an IP address; write it like "192.0.2.53" or "2001:db8::53""#,
    ),
    (
        "wildcard in the middle of a host",
        edit("ports = [443]", "ports = [443]\nhosts = [\"www.*.example.org\"]"),
        r#"policy.toml:29:10: host "www.*.example.org" is not a valid DNS name (only letters, digits, '-' and '.' are allowed); use a name like "updates.example.org" or a wildcard like "*.example.org" (the "*." only at the start)"#,
    ),
    (
        "host rule without resolvers",
        edit("dns_resolvers = [\"192.0.2.53\"]\n", "").replacen("ports = [443]", "ports = [443]\nhosts = [\"*.example.org\"]", 1),
        "policy.toml:28:10: host names can only be matched when the guest resolves them through a known resolver; add dns_resolvers to this role's network table",
    ),
    (
        "icmp with an IPv6 prefix",
        edit("protocol = \"tcp\"\nremote = [\"198.51.100.0/24\"]\nports = [443]", "protocol = \"icmp\"\nremote = [\"2001:db8::/32\"]"),
        r#"policy.toml:27:11: protocol "icmp" is IPv4 only but remote lists an IPv6 prefix; use protocol = "icmpv6" in a separate rule"#,
    ),
    (
        "icmp with a broken prefix before an IPv6 one",
        edit("protocol = \"tcp\"\nremote = [\"198.51.100.0/24\"]\nports = [443]", "protocol = \"icmp\"\nremote = [\"bogus\", \"2001:db8::/32\"]"),
        r#"policy.toml:27:11: remote "bogus" is not a valid CIDR prefix; write an address with a prefix length like "192.0.2.0/24" or "2001:db8::/32", or a single address
policy.toml:27:20: protocol "icmp" is IPv4 only but remote lists an IPv6 prefix; use protocol = "icmpv6" in a separate rule"#,
    ),
    ]
}

/// Users, their credentials and the roles they refer to.
fn user_and_role_cases() -> Vec<Case> {
    vec![
    (
        "unknown role",
        edit("role = \"staff\"", "role = \"admin\""),
        r#"policy.toml:12:8: role "admin" is not defined; defined roles are: staff"#,
    ),
    (
        "empty role table",
        edit("[roles.staff.storage]", "[roles.empty]\n\n[roles.staff.storage]"),
        "policy.toml:15:1: missing key `storage`",
    ),
    (
        "user without credentials",
        edit("passphrase = \"$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$3sTLqpBAvmNJCiGkpVvYV4sfhyeV4aCDqxqfaoiBAbI\"\n", ""),
        r#"policy.toml:9:1: user "alice" has no credentials; give a passphrase (an Argon2id PHC string from `guest-policy hash-passphrase`) and/or a [users.smartcard] table"#,
    ),
    (
        "duplicate user id",
        edit("[roles.staff.storage]", "[[users]]\nid = \"alice\"\ndisplay_name = \"Alice 2\"\nrole = \"staff\"\npassphrase = \"$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$3sTLqpBAvmNJCiGkpVvYV4sfhyeV4aCDqxqfaoiBAbI\"\n\n[roles.staff.storage]"),
        r#"policy.toml:16:6: user id "alice" is already used on line 10; every user needs a unique id"#,
    ),
    (
        "passphrase not argon2id",
        edit("$argon2id$v=19$m=65536", "$argon2i$v=19$m=65536"),
        r#"policy.toml:13:14: passphrase hash uses "argon2i", only "argon2id" is accepted; generate one with `guest-policy hash-passphrase`"#,
    ),
    (
        "passphrase below minimum cost",
        edit("m=65536,t=3", "m=4096,t=3"),
        "policy.toml:13:14: passphrase hash cost m=4096,t=3,p=1 is below the minimum m=65536,t=3,p=1; generate one with `guest-policy hash-passphrase`",
    ),
    (
        "smart card with a short fingerprint",
        edit("[roles.staff.storage]", "[users.smartcard]\ntoken_label = \"A\"\npublic_key_sha256 = \"abcd\"\n\n[roles.staff.storage]"),
        "policy.toml:17:21: public_key_sha256 must be 64 hex digits (optionally separated by ':'), the SHA-256 of the DER public key or certificate, e.g. from `openssl x509 -noout -fingerprint -sha256`",
    ),
    (
        "user id with capitals",
        edit("id = \"alice\"", "id = \"Alice\""),
        r#"policy.toml:10:6: user id "Alice" is not valid; use 1-32 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter"#,
    ),
    (
        "no users",
        BASE.split("[[users]]").next().unwrap().to_string() + "[roles.staff.storage]" + BASE.split("[roles.staff.storage]").nth(1).unwrap(),
        "policy.toml:1:1: the policy defines no users; add at least one [[users]] entry, otherwise nobody can log in",
    ),
    ]
}

/// Storage, audit and VPN settings.
fn storage_audit_and_vpn_cases() -> Vec<Case> {
    vec![
    (
        "external media value",
        edit("external_media = \"encrypt\"", "external_media = \"readonly\""),
        r#"policy.toml:17:18: external_media "readonly" is not valid; use one of "encrypt", "read-only", "deny""#,
    ),
    (
        "serials with deny",
        edit("external_media = \"encrypt\"", "external_media = \"deny\"\nallowed_media_serials = [\"X1\"]"),
        r#"policy.toml:18:26: allowed_media_serials has no effect when external_media = "deny"; remove the list or use "encrypt" or "read-only""#,
    ),
    (
        "watch_removable without format 2",
        edit("external_media = \"encrypt\"", "external_media = \"encrypt\"\nwatch_removable = true"),
        "policy.toml:1:1: [roles.NAME.storage] watch_removable needs policy format 2, but the policy declares format 1; write format = 2 in [policy] (and update securevm everywhere before pushing it)",
    ),
    (
        "watch_removable = false under format 1",
        edit("version = 3", "version = 3\nformat = 1").replacen("external_media = \"encrypt\"", "external_media = \"encrypt\"\nwatch_removable = false", 1),
        "policy.toml:4:10: [roles.NAME.storage] watch_removable needs policy format 2, but the policy declares format 1; write format = 2 in [policy] (and update securevm everywhere before pushing it)",
    ),
    (
        "watch_removable written as text",
        edit("version = 3", "version = 3\nformat = 2").replacen("external_media = \"encrypt\"", "external_media = \"encrypt\"\nwatch_removable = \"yes\"", 1),
        r#"policy.toml:19:19: invalid type: string "yes", expected a boolean"#,
    ),
    (
        "display table without format 3",
        edit("[roles.staff.network]", "[roles.staff.display]\nclipboard = \"both\"\n\n[roles.staff.network]"),
        "policy.toml:1:1: [roles.NAME.display] clipboard needs policy format 3, but the policy declares format 1; write format = 3 in [policy] (and update securevm everywhere before pushing it)",
    ),
    (
        "clipboard not one of the choices",
        edit("version = 3", "version = 3\nformat = 3").replacen("[roles.staff.network]", "[roles.staff.display]\nclipboard = \"all\"\n\n[roles.staff.network]", 1),
        r#"policy.toml:21:13: clipboard "all" is not valid; use one of "none", "to-guest", "from-guest", "both""#,
    ),
    (
        "unknown key in the display table",
        edit("version = 3", "version = 3\nformat = 3").replacen("[roles.staff.network]", "[roles.staff.display]\nresolution = \"1x1\"\n\n[roles.staff.network]", 1),
        "policy.toml:21:1: unknown key `resolution`; the only valid key here is `clipboard`",
    ),
    (
        "audit file without path",
        edit("sink = \"syslog\"", "sink = \"file\""),
        r#"policy.toml:6:1: sink = "file" needs path = "/var/log/securevm/audit.jsonl" (an absolute path)"#,
    ),
    (
        "audit relative path",
        edit("sink = \"syslog\"", "sink = \"file\"\npath = \"audit.log\""),
        r#"policy.toml:8:8: audit path "audit.log" is not absolute; write a full path like "/var/log/securevm/audit.jsonl""#,
    ),
    (
        "vpn with a bad key and no routes",
        format!("{BASE}\n[roles.staff.network.vpn]\nendpoint = \"198.51.100.1:51820\"\npeer_public_key = \"not-a-key\"\naddresses = [\"198.51.100.200/32\"]\nroutes = []\n"),
        r#"policy.toml:32:19: peer_public_key is not a WireGuard public key; use the 44-character base64 text printed by `wg pubkey`
policy.toml:34:10: a vpn needs at least one route; list the destinations that go through the tunnel, e.g. ["198.51.100.0/24"]"#,
    ),
    ]
}

#[test]
fn each_malformed_policy_gets_its_exact_error() {
    let cases = [
        document_cases(),
        network_cases(),
        user_and_role_cases(),
        storage_audit_and_vpn_cases(),
    ]
    .concat();
    assert!(cases.len() >= 20);
    let mut mismatches = Vec::new();
    for (name, text, expected) in &cases {
        let actual = errors_of(text);
        if actual != *expected {
            mismatches.push(format!(
                "{name}:\n  expected: {expected}\n  actual:   {actual}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
