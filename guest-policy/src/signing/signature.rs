//! Detached minisign signatures (`.minisig` files): creating, parsing and
//! verifying them, including the signed trusted comment.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::digest::Digest;
use blake2::Blake2b512;
use ed25519_dalek::{Signature, Signer as _};

use super::keys::{KeyId, PublicKey, SecretKey};
use super::SigningError;

const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";
const SIGNATURE_BLOCK_LEN: usize = 2 + 8 + 64;
/// minisign refuses longer trusted comments; so do we, to stay compatible.
const MAX_TRUSTED_COMMENT_LEN: usize = 8192;

/// How the message was fed to Ed25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// `"Ed"`: the message itself is signed (minisign's legacy format).
    Legacy,
    /// `"ED"`: the BLAKE2b-512 hash of the message is signed (current default).
    Prehashed,
}

impl SignatureAlgorithm {
    fn tag(self) -> [u8; 2] {
        match self {
            SignatureAlgorithm::Legacy => *b"Ed",
            SignatureAlgorithm::Prehashed => *b"ED",
        }
    }

    fn signed_bytes(self, message: &[u8]) -> Vec<u8> {
        match self {
            SignatureAlgorithm::Legacy => message.to_vec(),
            SignatureAlgorithm::Prehashed => Blake2b512::digest(message).to_vec(),
        }
    }
}

/// A parsed `.minisig` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    untrusted_comment: String,
    algorithm: SignatureAlgorithm,
    key_id: KeyId,
    signature: [u8; 64],
    trusted_comment: String,
    global_signature: [u8; 64],
}

impl SignatureFile {
    /// Signs `message` (prehashed, like current minisign) and binds
    /// `trusted_comment` to the signature.
    pub fn sign(
        key: &SecretKey,
        message: &[u8],
        trusted_comment: &str,
    ) -> Result<Self, SigningError> {
        if trusted_comment.contains(['\n', '\r']) || trusted_comment.len() > MAX_TRUSTED_COMMENT_LEN
        {
            return Err(SigningError::MalformedSignature(
                "the trusted comment must be one line of at most 8192 bytes".to_string(),
            ));
        }
        let algorithm = SignatureAlgorithm::Prehashed;
        let signature = key
            .signing_key()
            .sign(&algorithm.signed_bytes(message))
            .to_bytes();
        let global_signature = key
            .signing_key()
            .sign(&global_message(&signature, trusted_comment))
            .to_bytes();
        Ok(Self {
            untrusted_comment: format!("signature from guest-policy secret key {}", key.key_id()),
            algorithm,
            key_id: key.key_id(),
            signature,
            trusted_comment: trusted_comment.to_string(),
            global_signature,
        })
    }

    /// Parses the four-line `.minisig` layout.
    pub fn from_text(text: &str) -> Result<Self, SigningError> {
        let malformed = |reason: String| SigningError::MalformedSignature(reason);
        let lines: Vec<&str> = text
            .lines()
            .map(|line| line.trim_end_matches('\r'))
            .collect();
        let lines: &[&str] = match lines.iter().rposition(|line| !line.trim().is_empty()) {
            Some(last) => &lines[..=last],
            None => &[],
        };
        if lines.len() != 4 {
            return Err(malformed(format!(
                "expected 4 lines (untrusted comment, signature, trusted comment, global signature), found {}",
                lines.len()
            )));
        }
        let untrusted_comment = lines[0].strip_prefix(UNTRUSTED_PREFIX).ok_or_else(|| {
            malformed(format!("line 1 does not start with \"{UNTRUSTED_PREFIX}\""))
        })?;
        let block = BASE64
            .decode(lines[1].trim())
            .map_err(|_| malformed("line 2 is not valid base64".to_string()))?;
        if block.len() != SIGNATURE_BLOCK_LEN {
            return Err(malformed(format!(
                "the signature on line 2 is {} bytes, expected {SIGNATURE_BLOCK_LEN}",
                block.len()
            )));
        }
        let algorithm = match [block[0], block[1]] {
            tag if tag == SignatureAlgorithm::Prehashed.tag() => SignatureAlgorithm::Prehashed,
            tag if tag == SignatureAlgorithm::Legacy.tag() => SignatureAlgorithm::Legacy,
            _ => {
                return Err(malformed(
                    "unknown signature algorithm (expected \"ED\" or \"Ed\")".to_string(),
                ))
            }
        };
        let trusted_comment = lines[2]
            .strip_prefix(TRUSTED_PREFIX)
            .ok_or_else(|| malformed(format!("line 3 does not start with \"{TRUSTED_PREFIX}\"")))?;
        let global = BASE64
            .decode(lines[3].trim())
            .map_err(|_| malformed("line 4 is not valid base64".to_string()))?;
        let global_signature: [u8; 64] = global.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "the global signature on line 4 is {} bytes, expected 64",
                global.len()
            ))
        })?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&block[2..10]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&block[10..]);
        Ok(Self {
            untrusted_comment: untrusted_comment.to_string(),
            algorithm,
            key_id: KeyId(key_id),
            signature,
            trusted_comment: trusted_comment.to_string(),
            global_signature,
        })
    }

    /// The file contents.
    pub fn to_text(&self) -> String {
        let mut block = Vec::with_capacity(SIGNATURE_BLOCK_LEN);
        block.extend_from_slice(&self.algorithm.tag());
        block.extend_from_slice(&self.key_id.0);
        block.extend_from_slice(&self.signature);
        format!(
            "{UNTRUSTED_PREFIX}{}\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            self.untrusted_comment,
            BASE64.encode(block),
            self.trusted_comment,
            BASE64.encode(self.global_signature)
        )
    }

    /// Checks the key id, the signature over `message` and the signature
    /// over the trusted comment.
    pub fn verify(&self, public_key: &PublicKey, message: &[u8]) -> Result<(), SigningError> {
        if self.key_id != public_key.key_id() {
            return Err(SigningError::KeyMismatch {
                signed_by: self.key_id,
                trusted: public_key.key_id(),
            });
        }
        let key = public_key.verifying_key();
        key.verify_strict(
            &self.algorithm.signed_bytes(message),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| SigningError::BadSignature)?;
        key.verify_strict(
            &global_message(&self.signature, &self.trusted_comment),
            &Signature::from_bytes(&self.global_signature),
        )
        .map_err(|_| SigningError::BadTrustedComment)
    }

    /// The signed comment (meaningful only after [`SignatureFile::verify`]).
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// The key id the signature claims.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Legacy or prehashed.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

fn global_message(signature: &[u8; 64], trusted_comment: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(64 + trusted_comment.len());
    message.extend_from_slice(signature);
    message.extend_from_slice(trusted_comment.as_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(message: &[u8]) -> (SecretKey, SignatureFile) {
        let key = SecretKey::generate().unwrap();
        let signature = SignatureFile::sign(&key, message, "securevm-policy version=1").unwrap();
        (key, signature)
    }

    #[test]
    fn sign_then_verify_through_text() {
        let (key, signature) = signed(b"policy bytes");
        let parsed = SignatureFile::from_text(&signature.to_text()).unwrap();
        assert_eq!(parsed, signature);
        assert_eq!(parsed.verify(&key.public_key(), b"policy bytes"), Ok(()));
        assert_eq!(
            parsed.verify(&key.public_key(), b"policy bytez"),
            Err(SigningError::BadSignature)
        );
    }

    #[test]
    fn altered_trusted_comment_is_detected() {
        let (key, signature) = signed(b"policy bytes");
        let text = signature.to_text().replace("version=1", "version=9");
        let parsed = SignatureFile::from_text(&text).unwrap();
        assert_eq!(
            parsed.verify(&key.public_key(), b"policy bytes"),
            Err(SigningError::BadTrustedComment)
        );
    }

    #[test]
    fn legacy_signatures_verify() {
        let key = SecretKey::generate().unwrap();
        let signature = key.signing_key().sign(b"msg").to_bytes();
        let legacy = SignatureFile {
            untrusted_comment: String::new(),
            algorithm: SignatureAlgorithm::Legacy,
            key_id: key.key_id(),
            signature,
            trusted_comment: "t".into(),
            global_signature: key
                .signing_key()
                .sign(&global_message(&signature, "t"))
                .to_bytes(),
        };
        let parsed = SignatureFile::from_text(&legacy.to_text()).unwrap();
        assert_eq!(parsed.algorithm(), SignatureAlgorithm::Legacy);
        assert_eq!(parsed.verify(&key.public_key(), b"msg"), Ok(()));
    }

    #[test]
    fn another_key_is_named_in_the_error() {
        let (_, signature) = signed(b"m");
        let other = SecretKey::generate().unwrap();
        let error = signature.verify(&other.public_key(), b"m").unwrap_err();
        assert!(matches!(error, SigningError::KeyMismatch { .. }));
    }

    #[test]
    fn multi_line_trusted_comments_are_refused() {
        let key = SecretKey::generate().unwrap();
        assert!(SignatureFile::sign(&key, b"m", "a\nb").is_err());
    }
}
