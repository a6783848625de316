//! minisign public and secret key files.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::digest::consts::U32;
use blake2::digest::Digest;
use blake2::Blake2b;
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::{Zeroize, Zeroizing};

use super::kdf;
use super::SigningError;

const ED25519_ALG: [u8; 2] = *b"Ed";
const SCRYPT_KDF: [u8; 2] = *b"Sc";
const NO_KDF: [u8; 2] = [0, 0];
const BLAKE2_CHECKSUM: [u8; 2] = *b"B2";
const COMMENT_PREFIX: &str = "untrusted comment: ";
const PUBLIC_KEY_LEN: usize = 2 + 8 + 32;
const KEY_MATERIAL_LEN: usize = 8 + 64 + 32;
const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + KEY_MATERIAL_LEN;

/// The 8-byte key id minisign stores next to every key and signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    /// Same spelling as minisign: the id read as a little-endian number, in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl std::str::FromStr for KeyId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 16 {
            return Err(format!("key id \"{text}\" is not 16 hex digits"));
        }
        u64::from_str_radix(text, 16)
            .map(|value| KeyId(value.to_le_bytes()))
            .map_err(|_| format!("key id \"{text}\" is not 16 hex digits"))
    }
}

/// A minisign public key: the trust anchor for policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: KeyId,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses a `.pub` file, or the bare base64 line `minisign -P` takes.
    pub fn from_text(text: &str) -> Result<Self, SigningError> {
        let malformed = |reason: &str| SigningError::MalformedKey {
            what: "public key",
            reason: reason.to_string(),
        };
        let line = key_line(text).ok_or_else(|| malformed("no base64 key line found"))?;
        let bytes = BASE64
            .decode(line)
            .map_err(|_| malformed("the key line is not valid base64"))?;
        if bytes.len() != PUBLIC_KEY_LEN {
            return Err(malformed(&format!(
                "the key is {} bytes long, expected {PUBLIC_KEY_LEN}",
                bytes.len()
            )));
        }
        if bytes[..2] != ED25519_ALG {
            return Err(malformed("the algorithm is not Ed25519 (\"Ed\")"));
        }
        let key_id = KeyId(
            bytes[2..10]
                .try_into()
                .map_err(|_| malformed("short key id"))?,
        );
        let key_bytes: [u8; 32] = bytes[10..].try_into().map_err(|_| malformed("short key"))?;
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| malformed("the key is not a valid Ed25519 point"))?;
        Ok(Self { key_id, key })
    }

    /// The file contents minisign writes for a public key.
    pub fn to_text(&self) -> String {
        let mut bytes = Vec::with_capacity(PUBLIC_KEY_LEN);
        bytes.extend_from_slice(&ED25519_ALG);
        bytes.extend_from_slice(&self.key_id.0);
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "{COMMENT_PREFIX}minisign public key {}\n{}\n",
            self.key_id,
            BASE64.encode(bytes)
        )
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// A minisign secret key; the key material is wiped from memory on drop.
pub struct SecretKey {
    key_id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, <redacted>)", self.key_id)
    }
}

impl SecretKey {
    /// Generates a new key pair from the operating system's random source.
    pub fn generate() -> Result<Self, SigningError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        let mut key_id = [0u8; 8];
        getrandom::fill(seed.as_mut())
            .and_then(|()| getrandom::fill(&mut key_id))
            .map_err(|error| SigningError::Random(error.to_string()))?;
        Ok(Self {
            key_id: KeyId(key_id),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses a secret key file. `passphrase` is only consulted for
    /// scrypt-encrypted keys; it is called at most once.
    pub fn from_text(
        text: &str,
        passphrase: impl FnOnce() -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Self, SigningError> {
        let malformed = |reason: &str| SigningError::MalformedKey {
            what: "secret key",
            reason: reason.to_string(),
        };
        let line = key_line(text).ok_or_else(|| malformed("no base64 key line found"))?;
        let mut bytes = Zeroizing::new(
            BASE64
                .decode(line)
                .map_err(|_| malformed("the key line is not valid base64"))?,
        );
        if bytes.len() != SECRET_KEY_LEN {
            return Err(malformed(&format!(
                "the key is {} bytes long, expected {SECRET_KEY_LEN}",
                bytes.len()
            )));
        }
        if bytes[0..2] != ED25519_ALG {
            return Err(malformed("the algorithm is not Ed25519 (\"Ed\")"));
        }
        if bytes[4..6] != BLAKE2_CHECKSUM {
            return Err(malformed("the checksum algorithm is not BLAKE2b (\"B2\")"));
        }
        let kdf_alg = [bytes[2], bytes[3]];
        let salt: [u8; 32] = bytes[6..38]
            .try_into()
            .map_err(|_| malformed("short salt"))?;
        let opslimit = le64(&bytes[38..46]);
        let memlimit = le64(&bytes[46..54]);
        let material = &mut bytes[54..];
        match kdf_alg {
            NO_KDF => {}
            SCRYPT_KDF => {
                let passphrase = passphrase().ok_or(SigningError::PassphraseRequired)?;
                kdf::apply_keystream(&passphrase, &salt, opslimit, memlimit, material)
                    .map_err(|reason| malformed(&reason))?;
            }
            _ => {
                return Err(malformed(
                    "unknown key derivation function (expected \"Sc\" or none)",
                ))
            }
        }
        let key_id = KeyId(
            material[..8]
                .try_into()
                .map_err(|_| malformed("short key id"))?,
        );
        let keypair: Zeroizing<[u8; 64]> = Zeroizing::new(
            material[8..72]
                .try_into()
                .map_err(|_| malformed("short key"))?,
        );
        let stored_checksum = &material[72..];
        // `minisign -G -W` leaves the checksum of unencrypted keys all zero;
        // the key pair check below still catches damage to the key itself.
        let unchecked = kdf_alg == NO_KDF && stored_checksum.iter().all(|byte| *byte == 0);
        if !unchecked && checksum(&key_id, &keypair)[..] != stored_checksum[..] {
            return Err(if kdf_alg == NO_KDF {
                malformed("the checksum does not match; the file is damaged")
            } else {
                SigningError::WrongPassphrase
            });
        }
        let key = SigningKey::from_keypair_bytes(&keypair)
            .map_err(|_| malformed("the public half does not belong to the secret half"))?;
        Ok(Self { key_id, key })
    }

    /// The file contents of this key, unencrypted (kdf_alg all zero, as
    /// `minisign -G -W` writes). Protect the file by its permissions.
    pub fn to_unencrypted_text(&self) -> Zeroizing<String> {
        self.to_text_with(NO_KDF, [0u8; 32], 0, 0, |_| Ok(()))
            .unwrap_or_else(|_| Zeroizing::new(String::new()))
    }

    /// The file contents encrypted with a passphrase the way minisign does
    /// (scrypt with the given libsodium opslimit/memlimit).
    pub fn to_encrypted_text(
        &self,
        passphrase: &[u8],
        opslimit: u64,
        memlimit: u64,
    ) -> Result<Zeroizing<String>, SigningError> {
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).map_err(|error| SigningError::Random(error.to_string()))?;
        self.to_text_with(SCRYPT_KDF, salt, opslimit, memlimit, |material| {
            kdf::apply_keystream(passphrase, &salt, opslimit, memlimit, material)
        })
    }

    fn to_text_with(
        &self,
        kdf_alg: [u8; 2],
        salt: [u8; 32],
        opslimit: u64,
        memlimit: u64,
        protect: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<Zeroizing<String>, SigningError> {
        let keypair = Zeroizing::new(self.key.to_keypair_bytes());
        let mut bytes = Zeroizing::new(Vec::with_capacity(SECRET_KEY_LEN));
        bytes.extend_from_slice(&ED25519_ALG);
        bytes.extend_from_slice(&kdf_alg);
        bytes.extend_from_slice(&BLAKE2_CHECKSUM);
        bytes.extend_from_slice(&salt);
        bytes.extend_from_slice(&opslimit.to_le_bytes());
        bytes.extend_from_slice(&memlimit.to_le_bytes());
        bytes.extend_from_slice(&self.key_id.0);
        bytes.extend_from_slice(keypair.as_ref());
        bytes.extend_from_slice(&checksum(&self.key_id, &keypair));
        protect(&mut bytes[54..]).map_err(|reason| SigningError::MalformedKey {
            what: "secret key",
            reason,
        })?;
        let mut encoded = BASE64.encode(bytes.as_slice());
        let label = if kdf_alg == NO_KDF {
            "secret key"
        } else {
            "encrypted secret key"
        };
        let text = Zeroizing::new(format!("{COMMENT_PREFIX}minisign {label}\n{encoded}\n"));
        encoded.zeroize();
        Ok(text)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// BLAKE2b-256 over `"Ed" || key_id || keypair`, minisign's key checksum.
fn checksum(key_id: &KeyId, keypair: &[u8; 64]) -> [u8; 32] {
    let mut hasher = Blake2b::<U32>::new();
    hasher.update(ED25519_ALG);
    hasher.update(key_id.0);
    hasher.update(keypair);
    hasher.finalize().into()
}

fn le64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(buffer)
}

/// The base64 line of a key file: the line after the comment, or the first
/// non-empty line when there is no comment.
fn key_line(text: &str) -> Option<&str> {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next()?;
    if first.starts_with("untrusted comment:") {
        lines.next()
    } else {
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_prints_like_minisign() {
        let id = KeyId([0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01]);
        assert_eq!(id.to_string(), "0123456789ABCDEF");
        assert_eq!("0123456789ABCDEF".parse::<KeyId>(), Ok(id));
        assert!("xyz".parse::<KeyId>().is_err());
    }

    #[test]
    fn unencrypted_secret_key_round_trips() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_unencrypted_text();
        let loaded = SecretKey::from_text(&text, || None).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        let public = PublicKey::from_text(&key.public_key().to_text()).unwrap();
        assert_eq!(public, key.public_key());
    }

    #[test]
    fn encrypted_secret_key_needs_the_right_passphrase() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_encrypted_text(b"hunter2", 32_768, 1 << 20).unwrap();
        assert_eq!(
            SecretKey::from_text(&text, || None).unwrap_err(),
            SigningError::PassphraseRequired
        );
        assert_eq!(
            SecretKey::from_text(&text, || Some(Zeroizing::new(b"wrong".to_vec()))).unwrap_err(),
            SigningError::WrongPassphrase
        );
        let loaded =
            SecretKey::from_text(&text, || Some(Zeroizing::new(b"hunter2".to_vec()))).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
    }

    #[test]
    fn damaged_keys_are_refused() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_unencrypted_text();
        let line = text.lines().nth(1).unwrap();
        let mut bytes = BASE64.decode(line).unwrap();
        bytes[100] ^= 1;
        let damaged = format!("untrusted comment: x\n{}\n", BASE64.encode(&bytes));
        let error = SecretKey::from_text(&damaged, || None).unwrap_err();
        assert!(
            error.to_string().contains("checksum does not match"),
            "{error}"
        );
        let short = PublicKey::from_text("untrusted comment: x\nRWQ=\n").unwrap_err();
        assert!(short.to_string().contains("expected 42"), "{short}");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let key = SecretKey::generate().unwrap();
        assert!(format!("{key:?}").contains("<redacted>"));
    }
}
