//! The policy file exactly as written, before validation.
//!
//! These serde types mirror the TOML layout one to one. Every table rejects
//! unknown keys, and every value a person can get wrong is wrapped in
//! [`Spanned`] so validation can point at it. Enumerations are kept as strings
//! here on purpose: `validate` turns them into typed values with messages that
//! list the valid choices.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::value::Datetime;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicyFile {
    pub policy: Spanned<RawMeta>,
    #[serde(default)]
    pub users: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub roles: BTreeMap<Spanned<String>, Spanned<RawRole>>,
    pub audit: Spanned<RawAudit>,
}

/// `[policy]`: who issued the policy and which version it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeta {
    /// Read and checked by `format::declared_format` before this parse;
    /// listed so the strict parse accepts the key.
    #[serde(rename = "format")]
    pub _format: Option<de::IgnoredAny>,
    pub organisation: Spanned<String>,
    pub version: Spanned<i64>,
    pub issued: Spanned<Datetime>,
    pub expires: Option<Spanned<Datetime>>,
}

/// One `[[users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    pub id: Spanned<String>,
    pub display_name: Spanned<String>,
    pub role: Spanned<String>,
    pub passphrase: Option<Spanned<String>>,
    pub smartcard: Option<Spanned<RawSmartCard>>,
}

/// `[users.smartcard]`: which PKCS#11 token and key identify the user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmartCard {
    pub token_label: Option<Spanned<String>>,
    pub token_serial: Option<Spanned<String>>,
    pub manufacturer: Option<Spanned<String>>,
    pub public_key_sha256: Spanned<String>,
}

/// `[roles.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub description: Option<Spanned<String>>,
    pub storage: Spanned<RawStorage>,
    pub network: Spanned<RawNetwork>,
    /// Format 3; an older securevm refuses the table even when empty.
    pub display: Option<RawDisplay>,
}

/// `[roles.NAME.display]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDisplay {
    pub clipboard: Option<Spanned<String>>,
}

/// `[roles.NAME.storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub system_disk_encrypted: Spanned<bool>,
    pub external_media: Spanned<String>,
    #[serde(default)]
    pub allowed_media_serials: Vec<Spanned<String>>,
    /// Format 2; absent and `false` are told apart because writing the key
    /// at all needs the format (see `model::StoragePolicy`).
    pub watch_removable: Option<bool>,
}

/// `[roles.NAME.network]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub default: Spanned<String>,
    #[serde(default)]
    pub dns_resolvers: Vec<Spanned<String>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    pub vpn: Option<Spanned<RawVpn>>,
}

/// One `[[roles.NAME.network.rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub action: Spanned<String>,
    pub direction: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub remote: Vec<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    pub comment: Option<Spanned<String>>,
}

/// `[roles.NAME.network.vpn]`: a WireGuard tunnel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVpn {
    pub endpoint: Spanned<String>,
    pub peer_public_key: Spanned<String>,
    pub addresses: Spanned<Vec<Spanned<String>>>,
    pub routes: Spanned<Vec<Spanned<String>>>,
    pub persistent_keepalive: Option<Spanned<i64>>,
}

/// `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub sink: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    /// Format 4: where copies of the local file's records go.
    pub forward: Option<Spanned<Vec<Spanned<String>>>>,
    /// Format 4: the TLS collector of `forward = ["remote"]`.
    pub remote: Option<Spanned<RawAuditRemote>>,
}

/// `[audit.remote]`: a syslog-over-TLS collector (RFC 5425).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuditRemote {
    pub host: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    pub ca_file: Spanned<String>,
    pub server_name: Option<Spanned<String>>,
}

/// A port entry: either a number (`443`) or a string (`"443"`, `"8000-8080"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawPort {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawPortVisitor)
    }
}

struct RawPortVisitor;

impl Visitor<'_> for RawPortVisitor {
    type Value = RawPort;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a port number like 443 or a range like \"8000-8080\"")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawPort, E> {
        Ok(RawPort::Number(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawPort, E> {
        Ok(RawPort::Number(i64::try_from(value).unwrap_or(i64::MAX)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawPort, E> {
        Ok(RawPort::Text(value.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Ports {
        ports: Vec<RawPort>,
    }

    #[test]
    fn ports_accept_numbers_and_strings_only() {
        let parsed: Ports = toml::from_str("ports = [443, \"8000-8080\"]").unwrap();
        assert_eq!(
            parsed.ports,
            [RawPort::Number(443), RawPort::Text("8000-8080".into())]
        );
        let error = toml::from_str::<Ports>("ports = [true]").unwrap_err();
        assert!(
            error
                .message()
                .contains("a port number like 443 or a range like \"8000-8080\""),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = toml::from_str::<RawAudit>("sink = \"syslog\"\ncolour = 1").unwrap_err();
        assert!(
            error.message().starts_with("unknown field `colour`"),
            "{error}"
        );
    }
}
