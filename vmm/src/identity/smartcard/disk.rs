//! LUKS2 keyslots opened by a smart card, laid out exactly as
//! `systemd-cryptenroll --pkcs11-token-uri=...` lays them out, so that
//! `systemd-cryptsetup` (and cryptsetup's systemd-pkcs11 token plugin)
//! open our disks with the same card, and we open theirs:
//!
//! - a random secret of (RSA modulus bytes / 2) bytes, encrypted to the
//!   card's RSA public key with PKCS#1 v1.5 padding;
//! - the keyslot passphrase is the base64 (standard alphabet, padded) of
//!   the secret; the keyslot uses PBKDF2-SHA512 with 1000 iterations, as
//!   systemd does, since stretching a 1024-bit random secret adds nothing;
//! - the header gets a token
//!   `{"type":"systemd-pkcs11","keyslots":["N"],"pkcs11-uri":URI,"pkcs11-key":BASE64}`
//!   where URI names the token (p11-kit attribute order) and the key's
//!   CKA_ID, with `type=private`.
//!
//! Unlocking asks the card to decrypt `pkcs11-key` (CKM_RSA_PKCS); the
//! secret exists in clear only in locked, zeroized memory.

use std::fs::File;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use cryptoki::mechanism::Mechanism;
use openssl::rsa::Padding;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::error::SmartCardError;
use super::keys::{self, KeyKind, TokenKey};
use super::token::{LoggedIn, TokenDescription};
use crate::storage::luks::{self, UnlockedVolume};
use crate::storage::luks_helper::{LuksVersion, Pbkdf, PbkdfKind};
use crate::storage::secret::SecretBuf;
use crate::storage::StorageError;

/// The LUKS2 token type systemd-cryptenroll writes for PKCS#11 cards.
pub const TOKEN_TYPE: &str = "systemd-pkcs11";
/// systemd's "minimal" PBKDF for high-entropy token secrets.
const TOKEN_KDF_ITERATIONS: u32 = 1000;

/// A `systemd-pkcs11` LUKS2 token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdPkcs11Token {
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslot numbers as decimal strings (the LUKS2 JSON convention).
    pub keyslots: Vec<String>,
    #[serde(rename = "pkcs11-uri")]
    pub uri: String,
    /// Base64 of the secret encrypted to the card's RSA key.
    #[serde(rename = "pkcs11-key")]
    pub encrypted_key: String,
}

/// What [`enroll`] added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub keyslot: u32,
    pub token: u32,
    pub uri: String,
}

/// The RSA key on the card to bind a keyslot to: the one with `key_id`,
/// or the only RSA key there is.
pub fn decryption_key(card: &LoggedIn, key_id: Option<&[u8]>) -> Result<TokenKey, SmartCardError> {
    let mut candidates: Vec<TokenKey> = keys::private_keys(card.session())?
        .into_iter()
        .filter(|key| matches!(key.kind, KeyKind::Rsa { .. }))
        .filter(|key| key_id.is_none_or(|id| key.id == id))
        .collect();
    match candidates.len() {
        0 => Err(SmartCardError::NoDecryptionKey),
        1 => Ok(candidates.remove(0)),
        count => Err(SmartCardError::AmbiguousKey { count }),
    }
}

/// Add a keyslot to the LUKS2 image at `path` that `key` on `card`
/// opens, authorised by an existing `passphrase`, plus its
/// `systemd-pkcs11` token. The card must decrypt the new secret once
/// before anything is written, so a slot it cannot open is never added.
pub fn enroll(
    path: &Path,
    passphrase: &[u8],
    card: &LoggedIn,
    key: &TokenKey,
) -> Result<Enrolled, SmartCardError> {
    let KeyKind::Rsa { bits } = key.kind else {
        return Err(SmartCardError::NoDecryptionKey);
    };
    let unlocked = luks::unlock(path, passphrase)?;
    if unlocked.layout.luks_version != 2 {
        return Err(SmartCardError::Storage(StorageError::UnsupportedLayout {
            path: path.to_path_buf(),
            reason: "card keyslots need a LUKS2 header (tokens); convert with `cryptsetup convert --type luks2`".to_string(),
        }));
    }
    let mut secret = SecretBuf::zeroed(bits as usize / 8 / 2);
    openssl::rand::rand_bytes(secret.as_mut_bytes())
        .map_err(SmartCardError::crypto("drawing a random secret"))?;
    let rsa = key
        .public
        .rsa()
        .map_err(SmartCardError::crypto("reading the RSA key"))?;
    let mut encrypted = vec![0u8; rsa.size() as usize];
    let len = rsa
        .public_encrypt(secret.as_bytes(), &mut encrypted, Padding::PKCS1)
        .map_err(SmartCardError::crypto("encrypting the secret to the card"))?;
    encrypted.truncate(len);
    let decrypted = decrypt_on_card(card, key, &encrypted)?;
    if decrypted.as_bytes() != secret.as_bytes() {
        return Err(SmartCardError::Crypto {
            operation: "checking the card's decryption",
            detail: "the card decrypted the new secret to something else".to_string(),
        });
    }
    let keyslot_passphrase = base64_secret(&secret);
    let uri = token_uri(card.token(), key);
    let pbkdf = Pbkdf {
        kind: PbkdfKind::Pbkdf2,
        hash: "sha512".to_string(),
        time_ms: 0,
        iterations: TOKEN_KDF_ITERATIONS,
        max_memory_kib: 0,
        parallel_threads: 0,
        benchmark: false,
    };
    let keyslot = luks::add_keyslot(path, &unlocked, keyslot_passphrase.as_bytes(), pbkdf)?;
    let token = SystemdPkcs11Token {
        kind: TOKEN_TYPE.to_string(),
        keyslots: vec![keyslot.to_string()],
        uri: uri.clone(),
        encrypted_key: BASE64.encode(&encrypted),
    };
    let json = serde_json::to_value(&token).map_err(|e| SmartCardError::Crypto {
        operation: "encoding the token",
        detail: e.to_string(),
    })?;
    let token_id = match luks::add_token(path, &json) {
        Ok(id) => id,
        Err(e) => {
            // A keyslot without its token could never be opened by the card.
            let _ = luks::destroy_keyslot(path, LuksVersion::Luks2, keyslot);
            return Err(e.into());
        }
    };
    Ok(Enrolled {
        keyslot,
        token: token_id,
        uri,
    })
}

/// Open the volume key of `path` with `card`: every `systemd-pkcs11`
/// token naming this card is decrypted on the card and its keyslot tried.
pub fn unlock(path: &Path, card: &LoggedIn) -> Result<UnlockedVolume, SmartCardError> {
    let tokens = card_tokens(path)?;
    let keys = keys::private_keys(card.session())?;
    for (_, token) in &tokens {
        let Some(uri) = Pkcs11Uri::parse(&token.uri) else {
            log::warn!(
                "{}: ignoring a token with an unreadable PKCS#11 URI",
                path.display()
            );
            continue;
        };
        if !uri.matches_token(card.token()) {
            continue;
        }
        let Some(key) = uri.pick_key(&keys) else {
            continue;
        };
        let Ok(encrypted) = BASE64.decode(token.encrypted_key.as_bytes()) else {
            log::warn!(
                "{}: ignoring a token whose pkcs11-key is not base64",
                path.display()
            );
            continue;
        };
        let secret = decrypt_on_card(card, key, &encrypted)?;
        let passphrase = base64_secret(&secret);
        for slot in token.keyslots.iter().filter_map(|slot| slot.parse().ok()) {
            match luks::unlock_keyslots(path, passphrase.as_bytes(), &[slot]) {
                Ok(volume) => return Ok(volume),
                Err(StorageError::WrongPassphrase { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(SmartCardError::NoCardKeyslot {
        path: path.to_path_buf(),
    })
}

/// The `systemd-pkcs11` tokens in the header of `path`, by token number.
pub fn card_tokens(path: &Path) -> Result<Vec<(u32, SystemdPkcs11Token)>, SmartCardError> {
    // Our own checks first: a hostile header is refused before
    // libcryptsetup parses it.
    let file = File::open(path).map_err(StorageError::io(path))?;
    luks::read_checked_metadata(path, &file)?;
    let mut tokens = Vec::new();
    for (id, json) in luks::tokens(path)? {
        if json.get("type").and_then(|t| t.as_str()) != Some(TOKEN_TYPE) {
            continue;
        }
        match serde_json::from_value::<SystemdPkcs11Token>(json) {
            Ok(token) => tokens.push((id, token)),
            Err(e) => log::warn!("{}: ignoring malformed token {id}: {e}", path.display()),
        }
    }
    Ok(tokens)
}

/// The PKCS#11 URI (RFC 7512) of `key` on `token`, in p11-kit's
/// attribute order, as systemd-cryptenroll stores it.
pub fn token_uri(token: &TokenDescription, key: &TokenKey) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("model", &token.model),
        ("manufacturer", &token.manufacturer),
        ("serial", &token.serial),
        ("token", &token.label),
    ] {
        if !value.is_empty() {
            parts.push(format!(
                "{name}={}",
                percent_encode(value.as_bytes(), false)
            ));
        }
    }
    if !key.id.is_empty() {
        parts.push(format!("id={}", percent_encode(&key.id, true)));
    }
    parts.push("type=private".to_string());
    format!("pkcs11:{}", parts.join(";"))
}

fn decrypt_on_card(
    card: &LoggedIn,
    key: &TokenKey,
    encrypted: &[u8],
) -> Result<SecretBuf, SmartCardError> {
    let mut clear = card
        .session()
        .decrypt(&Mechanism::RsaPkcs, key.handle, encrypted)
        .map_err(SmartCardError::module(
            "decrypting the disk secret on the card",
        ))?;
    let secret = SecretBuf::from_slice(&clear);
    clear.zeroize();
    Ok(secret)
}

fn base64_secret(secret: &SecretBuf) -> SecretBuf {
    let mut text = BASE64.encode(secret.as_bytes());
    let passphrase = SecretBuf::from_slice(text.as_bytes());
    text.zeroize();
    passphrase
}

/// RFC 3986 percent-encoding; `all` encodes every byte (binary ids).
fn percent_encode(bytes: &[u8], all: bool) -> String {
    bytes
        .iter()
        .map(|&byte| {
            if !all && (byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The parts of a PKCS#11 URI that select a token and a key.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pkcs11Uri {
    token: Option<String>,
    manufacturer: Option<String>,
    serial: Option<String>,
    model: Option<String>,
    id: Option<Vec<u8>>,
    object: Option<String>,
}

impl Pkcs11Uri {
    fn parse(uri: &str) -> Option<Self> {
        let path = uri.strip_prefix("pkcs11:")?;
        let path = path.split('?').next().unwrap_or_default();
        let mut parsed = Self::default();
        for attribute in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attribute.split_once('=')?;
            let value = percent_decode(value)?;
            let text = || String::from_utf8(value.clone()).ok();
            match name {
                "token" => parsed.token = Some(text()?),
                "manufacturer" => parsed.manufacturer = Some(text()?),
                "serial" => parsed.serial = Some(text()?),
                "model" => parsed.model = Some(text()?),
                "id" => parsed.id = Some(value),
                "object" => parsed.object = Some(text()?),
                _ => {}
            }
        }
        Some(parsed)
    }

    fn matches_token(&self, token: &TokenDescription) -> bool {
        let same = |wanted: &Option<String>, actual: &str| {
            wanted.as_deref().is_none_or(|wanted| wanted == actual)
        };
        same(&self.token, &token.label)
            && same(&self.manufacturer, &token.manufacturer)
            && same(&self.serial, &token.serial)
            && same(&self.model, &token.model)
    }

    /// The RSA key the URI names; without id or label, the only RSA key.
    fn pick_key<'a>(&self, keys: &'a [TokenKey]) -> Option<&'a TokenKey> {
        let mut candidates = keys.iter().filter(|key| {
            matches!(key.kind, KeyKind::Rsa { .. })
                && self.id.as_ref().is_none_or(|id| &key.id == id)
                && self.object.as_ref().is_none_or(|label| &key.label == label)
        });
        let first = candidates.next()?;
        candidates.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> TokenDescription {
        TokenDescription {
            label: "Alice Card".into(),
            serial: "6c3a0f1b2d".into(),
            manufacturer: "SoftHSM project".into(),
            model: "SoftHSM v2".into(),
        }
    }

    #[test]
    fn uris_round_trip_and_select_the_token() {
        let uri = "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=6c3a0f1b2d;token=Alice%20Card;id=%01%A0;type=private";
        let parsed = Pkcs11Uri::parse(uri).unwrap();
        assert_eq!(parsed.token.as_deref(), Some("Alice Card"));
        assert_eq!(parsed.id.as_deref(), Some(&[0x01, 0xa0][..]));
        assert!(parsed.matches_token(&description()));
        let mut other = description();
        other.serial = "0000".into();
        assert!(!parsed.matches_token(&other));
        let token_only = Pkcs11Uri::parse("pkcs11:token=Alice%20Card").unwrap();
        assert!(token_only.matches_token(&description()));
    }

    #[test]
    fn malformed_uris_are_refused() {
        assert!(Pkcs11Uri::parse("https://example.org").is_none());
        assert!(Pkcs11Uri::parse("pkcs11:token=%zz").is_none());
        assert!(Pkcs11Uri::parse("pkcs11:token=%4").is_none());
        assert!(Pkcs11Uri::parse("pkcs11:token").is_none());
    }

    #[test]
    fn token_json_has_systemds_field_names() {
        let token = SystemdPkcs11Token {
            kind: TOKEN_TYPE.into(),
            keyslots: vec!["1".into()],
            uri: "pkcs11:token=A".into(),
            encrypted_key: "AAAA".into(),
        };
        let json = serde_json::to_value(&token).unwrap();
        assert_eq!(json["type"], "systemd-pkcs11");
        assert_eq!(json["keyslots"][0], "1");
        assert_eq!(json["pkcs11-uri"], "pkcs11:token=A");
        assert_eq!(json["pkcs11-key"], "AAAA");
    }

    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        assert_eq!(percent_encode(b"Alice Card-1", false), "Alice%20Card-1");
        assert_eq!(percent_encode(b"\x01a", true), "%01%61");
        assert_eq!(percent_decode("Alice%20Card").unwrap(), b"Alice Card");
    }
}
