//! One audit record: what happened ([`Event`]), when, to whom, and the
//! MAC that chains it to the record before.
//!
//! A record is one JSON object on one line:
//! `{"event":"auth-success","mac":"…","method":"passphrase","prev":"…","seq":3,"time":"2026-11-26T10:49:46Z","user":"alice"}`.
//! Its canonical bytes are the JSON of the object without `mac`, keys in
//! sorted order (serde_json's map), as serde_json writes it. Then
//! `mac = HMAC-SHA256(key, prev_mac || canonical bytes)`, hex-encoded,
//! where `prev_mac` is the previous record's MAC (32 zero bytes for the
//! first record). `prev` repeats the previous MAC in the record itself so a
//! reader sees the link. Events carry no secrets: no passphrase, PIN or
//! key ever reaches a record.

use crate::calendar::civil_from_days;
use std::time::SystemTime;

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde::Serialize;
use serde_json::{Map, Value};

use super::key::AuditKey;

/// MAC length in bytes (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;

/// The MAC that the first record of a log chains to.
pub const GENESIS_MAC: [u8; MAC_BYTES] = [0; MAC_BYTES];

/// A security decision or session event. Field names are part of the log
/// format (documented in docs/manual/audit.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The log was opened for a session (`recovered_torn_line`: a crash
    /// left a partial line there; its SHA-256 binds it into the chain).
    LogOpened {
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered_torn_line: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        torn_sha256: Option<String>,
    },
    /// A signed policy was accepted.
    PolicyAccepted { version: u64, organisation: String },
    /// A policy was refused (bad signature, rollback, expiry, ...).
    PolicyRefused { reason: String },
    /// A policy pushed through the control socket was applied to the
    /// running VM (`role`: the logged-in user's role under it).
    PolicyPushed {
        version: u64,
        previous_version: u64,
        role: String,
    },
    /// A policy pushed through the control socket was refused; the VM
    /// kept the rules it had.
    PolicyPushRefused { reason: String },
    /// A user proved who they are.
    AuthSuccess { method: String, attempt: u32 },
    /// A login attempt failed. `claimed_user` is the id typed, or
    /// `"<not a user id>"` when it is not shaped like one (so a passphrase
    /// typed into the user field never reaches the log).
    AuthFailure {
        method: String,
        claimed_user: String,
        attempt: u32,
        /// What exactly was wrong, when the method can tell (e.g. a smart
        /// card's "wrong-pin" or "key-not-bound"); never on the console.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<String>,
    },
    /// The retry bound was reached; the VM does not start.
    AuthLockout {
        method: String,
        claimed_user: String,
        attempts: u32,
    },
    /// The role whose rules apply to the session.
    RoleSelected { role: String, policy_version: u64 },
    /// An encrypted disk was opened (`keyslot`: which LUKS keyslot).
    DiskOpened {
        path: String,
        keyslot: Option<u32>,
        user_slot: bool,
        read_only: bool,
    },
    /// A removable medium was attached or refused under the role's rule.
    ExternalMedium {
        path: String,
        /// The serial a stick found on the host reports (not set for media
        /// named by path).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        decision: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Network refusals over the last interval (rate-limited summary).
    NetworkRefusals { count: u64, examples: Vec<String> },
    /// The role's clipboard policy refused a transfer between the guest
    /// and the VNC viewer. `direction` is "to-guest" or "from-guest";
    /// `bytes` is the size of the text refused (0 when the guest only
    /// offered its clipboard, which is then never asked for). Never the
    /// text itself.
    ClipboardRefused { direction: String, bytes: u64 },
    /// The guest was started.
    VmStart {
        kernel: String,
        cpus: u16,
        memory_mib: u64,
    },
    /// The guest stopped.
    VmStop { reason: String },
    /// The session was locked (vCPUs paused), e.g. a smart card was pulled.
    SessionLocked { reason: String },
    /// The session was unlocked again.
    SessionUnlocked { method: String },
}

/// Builds the line (without newline) for `event` as record `seq`,
/// chained to `prev`; returns it with its MAC.
pub(crate) fn encode(
    key: &AuditKey,
    seq: u64,
    time: SystemTime,
    user: Option<&str>,
    event: &Event,
    prev: &[u8; MAC_BYTES],
) -> Result<(String, [u8; MAC_BYTES]), String> {
    let mut object = match serde_json::to_value(event) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err("an audit event is not a JSON object".into()),
        Err(e) => return Err(format!("encoding an audit event: {e}")),
    };
    object.insert("seq".into(), Value::from(seq));
    object.insert("time".into(), Value::from(rfc3339_utc(time)));
    object.insert(
        "user".into(),
        user.map_or(Value::Null, |u| Value::from(u.to_string())),
    );
    object.insert("prev".into(), Value::from(hex(prev)));
    let mac = mac_of(key, prev, &object)?;
    object.insert("mac".into(), Value::from(hex(&mac)));
    let line = serde_json::to_string(&Value::Object(object))
        .map_err(|e| format!("encoding an audit record: {e}"))?;
    Ok((line, mac))
}

/// HMAC-SHA256 over `prev || canonical(object without "mac")`.
pub(crate) fn mac_of(
    key: &AuditKey,
    prev: &[u8; MAC_BYTES],
    object: &Map<String, Value>,
) -> Result<[u8; MAC_BYTES], String> {
    let mut without_mac = object.clone();
    without_mac.remove("mac");
    let canonical = serde_json::to_vec(&Value::Object(without_mac))
        .map_err(|e| format!("encoding an audit record: {e}"))?;
    let failed = |e: openssl::error::ErrorStack| format!("HMAC-SHA256 failed: {e}");
    let pkey = PKey::hmac(key.bytes()).map_err(failed)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey).map_err(failed)?;
    signer.update(prev).map_err(failed)?;
    signer.update(&canonical).map_err(failed)?;
    let bytes = signer.sign_to_vec().map_err(failed)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| "HMAC-SHA256 gave a short MAC".to_string())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits to 32 bytes.
pub(crate) fn parse_mac(text: &str) -> Option<[u8; MAC_BYTES]> {
    if text.len() != 2 * MAC_BYTES || !text.is_ascii() {
        return None;
    }
    let mut mac = [0u8; MAC_BYTES];
    for (byte, pair) in mac.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(mac)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let rest = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// Whether `text` is shaped like a policy user id (1-32 of `a-z0-9._-`,
/// starting with a letter): only such text is written as a claimed user.
pub fn looks_like_user_id(text: &str) -> bool {
    let mut chars = text.chars();
    text.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339_utc(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            rfc3339_utc(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_utc(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn records_are_sorted_json_with_a_mac_over_the_rest() {
        let key = AuditKey::from_bytes([9; 32]);
        let event = Event::AuthSuccess {
            method: "passphrase".into(),
            attempt: 1,
        };
        let (line, mac) = encode(
            &key,
            1,
            SystemTime::UNIX_EPOCH,
            Some("alice"),
            &event,
            &GENESIS_MAC,
        )
        .unwrap();
        assert!(
            line.starts_with(r#"{"attempt":1,"event":"auth-success","mac":""#),
            "{line}"
        );
        assert!(line.contains(r#""user":"alice""#), "{line}");
        let Value::Object(object) = serde_json::from_str(&line).unwrap() else {
            panic!("not an object");
        };
        assert_eq!(mac_of(&key, &GENESIS_MAC, &object).unwrap(), mac);
        assert_eq!(parse_mac(object["mac"].as_str().unwrap()), Some(mac));
        let other = AuditKey::from_bytes([8; 32]);
        assert_ne!(mac_of(&other, &GENESIS_MAC, &object).unwrap(), mac);
        assert_ne!(mac_of(&key, &[1; 32], &object).unwrap(), mac);
    }

    #[test]
    fn a_refused_clipboard_transfer_records_its_direction_and_size() {
        let key = AuditKey::from_bytes([9; 32]);
        let event = Event::ClipboardRefused {
            direction: "from-guest".into(),
            bytes: 42,
        };
        let (line, _) = encode(
            &key,
            7,
            SystemTime::UNIX_EPOCH,
            Some("alice"),
            &event,
            &GENESIS_MAC,
        )
        .unwrap();
        assert!(
            line.starts_with(
                r#"{"bytes":42,"direction":"from-guest","event":"clipboard-refused","mac":""#
            ),
            "{line}"
        );
        let Value::Object(object) = serde_json::from_str(&line).unwrap() else {
            panic!("not an object");
        };
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "bytes",
                "direction",
                "event",
                "mac",
                "prev",
                "seq",
                "time",
                "user"
            ]
        );
    }

    #[test]
    fn only_user_id_shaped_text_is_logged_as_a_claimed_user() {
        assert!(looks_like_user_id("alice"));
        assert!(looks_like_user_id("bob.smith-2"));
        for bad in ["", "Alice", "1alice", "correct horse", &"a".repeat(33)] {
            assert!(!looks_like_user_id(bad), "{bad}");
        }
    }
}
