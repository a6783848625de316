//! Shared fixtures for the integration tests.

#![allow(dead_code)]

/// A valid policy; line numbers in the expectations refer to this layout.
pub const BASE: &str = r#"[policy]
organisation = "Org"
version = 3
issued = 2026-11-01T09:00:00Z

[audit]
sink = "syslog"

[[users]]
id = "alice"
display_name = "Alice"
role = "staff"
passphrase = "$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHRzb21lc2FsdA$3sTLqpBAvmNJCiGkpVvYV4sfhyeV4aCDqxqfaoiBAbI"

[roles.staff.storage]
system_disk_encrypted = true
external_media = "encrypt"

[roles.staff.network]
default = "deny"
dns_resolvers = ["192.0.2.53"]

[[roles.staff.network.rules]]
action = "allow"
direction = "out"
protocol = "tcp"
remote = ["198.51.100.0/24"]
ports = [443]
"#;

/// `BASE` with its version changed.
pub fn base_with_version(version: u64) -> String {
    BASE.replacen("version = 3", &format!("version = {version}"), 1)
}
