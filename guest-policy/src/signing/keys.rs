//! minisign public and secret key files.
//!
//! The `minisign` crate generates keys, decrypts encrypted secret keys and
//! signs. What it does not give stays here: messages that say what is wrong
//! with a key file, accepting the all-zero checksum `minisign -G -W` writes
//! (the crate refuses it), and encrypting new keys at the cost `minisign -G`
//! uses (the crate's own key generation uses a far lighter one).

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::kdf;
use super::SigningError;

const ED25519_ALG: [u8; 2] = *b"Ed";
const SCRYPT_KDF: [u8; 2] = *b"Sc";
const NO_KDF: [u8; 2] = [0, 0];
const BLAKE2_CHECKSUM: [u8; 2] = *b"B2";
const COMMENT_PREFIX: &str = "untrusted comment: ";
const PUBLIC_KEY_LEN: usize = 2 + 8 + 32;
/// `alg || kdf_alg || chk_alg || salt || opslimit || memlimit`, then the
/// part scrypt encrypts: `key_id || ed25519_secret || checksum`.
const KDF_PARAMETERS: std::ops::Range<usize> = 6..54;
const ENCRYPTED_PART: std::ops::Range<usize> = 54..SECRET_KEY_LEN;
const CHECKSUM: std::ops::Range<usize> = 126..SECRET_KEY_LEN;
const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

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
#[derive(Debug, Clone)]
pub struct PublicKey {
    key_id: KeyId,
    key: minisign::PublicKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key_id == other.key_id && self.key == other.key
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Parses a `.pub` file, or the bare base64 line `minisign -P` takes.
    pub fn from_text(text: &str) -> Result<Self, SigningError> {
        let malformed = |reason: &str| SigningError::MalformedKey {
            what: "public key",
            reason: reason.to_string(),
        };
        let bytes = decode_key_line(text).map_err(&malformed)?;
        if bytes.len() != PUBLIC_KEY_LEN {
            return Err(malformed(&format!(
                "the key is {} bytes long, expected {PUBLIC_KEY_LEN}",
                bytes.len()
            )));
        }
        if bytes[..2] != ED25519_ALG {
            return Err(malformed("the algorithm is not Ed25519 (\"Ed\")"));
        }
        let key = minisign::PublicKey::from_bytes(&bytes)
            .map_err(|error| malformed(&error.to_string()))?;
        Ok(Self::from_minisign(key))
    }

    fn from_minisign(key: minisign::PublicKey) -> Self {
        Self {
            key_id: key_id_of(key.keynum()),
            key,
        }
    }

    /// The file contents minisign writes for a public key.
    pub fn to_text(&self) -> String {
        format!(
            "{COMMENT_PREFIX}minisign public key {}\n{}\n",
            self.key_id,
            self.key.to_base64()
        )
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub(crate) fn minisign_key(&self) -> &minisign::PublicKey {
        &self.key
    }
}

/// A minisign secret key.
pub struct SecretKey {
    key: minisign::SecretKey,
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, <redacted>)", self.key_id())
    }
}

impl SecretKey {
    /// Generates a new key pair from the operating system's random source.
    pub fn generate() -> Result<Self, SigningError> {
        let pair = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|error| SigningError::Random(error.to_string()))?;
        Ok(Self {
            key: pair.sk,
            public: PublicKey::from_minisign(pair.pk),
        })
    }

    /// Parses a secret key file. `passphrase` is only consulted for
    /// scrypt-encrypted keys; it is called at most once.
    pub fn from_text(
        text: &str,
        passphrase: impl FnOnce() -> Option<Zeroizing<String>>,
    ) -> Result<Self, SigningError> {
        let malformed = |reason: &str| SigningError::MalformedKey {
            what: "secret key",
            reason: reason.to_string(),
        };
        let bytes = Zeroizing::new(decode_key_line(text).map_err(&malformed)?);
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
        let key_box = || {
            let encoded = Zeroizing::new(BASE64.encode(bytes.as_slice()));
            // The crate takes a plain String and does not wipe it (nor its
            // SecretKey): a limit of the library for this short-lived CLI.
            minisign::SecretKeyBox::from(format!(
                "{COMMENT_PREFIX}minisign secret key\n{}\n",
                encoded.as_str()
            ))
        };
        let key = match [bytes[2], bytes[3]] {
            // `minisign -G -W` leaves the checksum of unencrypted keys all
            // zero; the key pair check below still catches damage.
            NO_KDF if bytes[CHECKSUM].iter().all(|byte| *byte == 0) => {
                minisign::SecretKey::from_bytes(&bytes)
                    .map_err(|error| malformed(&error.to_string()))?
            }
            NO_KDF => {
                key_box()
                    .into_unencrypted_secret_key()
                    .map_err(|error| match error.kind() {
                        minisign::ErrorKind::Verify => {
                            malformed("the checksum does not match; the file is damaged")
                        }
                        _ => malformed(&error.to_string()),
                    })?
            }
            SCRYPT_KDF => {
                let passphrase = passphrase().ok_or(SigningError::PassphraseRequired)?;
                key_box()
                    .into_secret_key(Some(passphrase.as_str().to_string()))
                    .map_err(|error| match error.kind() {
                        minisign::ErrorKind::Verify => SigningError::WrongPassphrase,
                        _ => malformed(&error.to_string()),
                    })?
            }
            _ => {
                return Err(malformed(
                    "unknown key derivation function (expected \"Sc\" or none)",
                ))
            }
        };
        let public = minisign::PublicKey::from_secret_key(&key)
            .map_err(|error| malformed(&error.to_string()))?;
        let pair_matches = minisign::sign(Some(&public), &key, &b""[..], None, None).is_ok();
        if !pair_matches {
            return Err(malformed(
                "the public half does not belong to the secret half",
            ));
        }
        Ok(Self {
            key,
            public: PublicKey::from_minisign(public),
        })
    }

    /// The file contents of this key, unencrypted (kdf_alg all zero, as
    /// `minisign -G -W` writes). Protect the file by its permissions.
    pub fn to_unencrypted_text(&self) -> Result<Zeroizing<String>, SigningError> {
        self.key
            .to_box(Some("minisign secret key"))
            .map(|key_box| Zeroizing::new(key_box.into_string()))
            .map_err(|error| SigningError::Sign(format!("cannot encode the secret key: {error}")))
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
        let mut bytes = Zeroizing::new(self.key.to_bytes());
        bytes[2..4].copy_from_slice(&SCRYPT_KDF);
        let mut parameters = salt.to_vec();
        parameters.extend_from_slice(&opslimit.to_le_bytes());
        parameters.extend_from_slice(&memlimit.to_le_bytes());
        bytes[KDF_PARAMETERS].copy_from_slice(&parameters);
        kdf::apply_keystream(
            passphrase,
            &salt,
            opslimit,
            memlimit,
            &mut bytes[ENCRYPTED_PART],
        )
        .map_err(|reason| SigningError::MalformedKey {
            what: "secret key",
            reason,
        })?;
        let encoded = Zeroizing::new(BASE64.encode(bytes.as_slice()));
        Ok(Zeroizing::new(format!(
            "{COMMENT_PREFIX}minisign encrypted secret key\n{}\n",
            encoded.as_str()
        )))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id
    }

    pub(crate) fn minisign_key(&self) -> &minisign::SecretKey {
        &self.key
    }
}

fn key_id_of(keynum: &[u8]) -> KeyId {
    let mut id = [0u8; 8];
    id.copy_from_slice(&keynum[..8]);
    KeyId(id)
}

/// The bytes of the base64 line of a key file: the line after the comment,
/// or the first non-empty line when there is no comment.
fn decode_key_line(text: &str) -> Result<Vec<u8>, &'static str> {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().ok_or("no base64 key line found")?;
    let line = if first.starts_with("untrusted comment:") {
        lines.next().ok_or("no base64 key line found")?
    } else {
        first
    };
    BASE64
        .decode(line)
        .map_err(|_| "the key line is not valid base64")
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
        let text = key.to_unencrypted_text().unwrap();
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
            SecretKey::from_text(&text, || Some(Zeroizing::new("wrong".to_string()))).unwrap_err(),
            SigningError::WrongPassphrase
        );
        let loaded =
            SecretKey::from_text(&text, || Some(Zeroizing::new("hunter2".to_string()))).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
    }

    #[test]
    fn damaged_keys_are_refused() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_unencrypted_text().unwrap();
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
