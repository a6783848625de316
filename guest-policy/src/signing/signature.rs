//! Detached minisign signatures (`.minisig` files): creating, parsing and
//! verifying them, including the signed trusted comment.
//!
//! The `minisign` crate signs and verifies. What stays here: a layout check
//! with messages that say which line is wrong, the key id check that names
//! both keys, and telling a changed file from a changed trusted comment.

use std::io::Cursor;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

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

/// A parsed `.minisig` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureFile {
    /// The four lines, as the `minisign` crate parses them for verifying.
    text: String,
    algorithm: SignatureAlgorithm,
    key_id: KeyId,
    trusted_comment: String,
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
        let untrusted_comment = format!("signature from guest-policy secret key {}", key.key_id());
        let signature = minisign::sign(
            Some(key.public_key().minisign_key()),
            key.minisign_key(),
            message,
            Some(trusted_comment),
            Some(&untrusted_comment),
        )
        .map_err(|error| SigningError::Sign(error.to_string()))?;
        Self::from_text(&signature.into_string())
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
        if !lines[0].starts_with(UNTRUSTED_PREFIX) {
            return Err(malformed(format!(
                "line 1 does not start with \"{UNTRUSTED_PREFIX}\""
            )));
        }
        let block = BASE64
            .decode(lines[1].trim())
            .map_err(|_| malformed("line 2 is not valid base64".to_string()))?;
        if block.len() != SIGNATURE_BLOCK_LEN {
            return Err(malformed(format!(
                "the signature on line 2 is {} bytes, expected {SIGNATURE_BLOCK_LEN}",
                block.len()
            )));
        }
        if ![*b"ED", *b"Ed"].contains(&[block[0], block[1]]) {
            return Err(malformed(
                "unknown signature algorithm (expected \"ED\" or \"Ed\")".to_string(),
            ));
        }
        if !lines[2].starts_with(TRUSTED_PREFIX) {
            return Err(malformed(format!(
                "line 3 does not start with \"{TRUSTED_PREFIX}\""
            )));
        }
        let global = BASE64
            .decode(lines[3].trim())
            .map_err(|_| malformed("line 4 is not valid base64".to_string()))?;
        if global.len() != 64 {
            return Err(malformed(format!(
                "the global signature on line 4 is {} bytes, expected 64",
                global.len()
            )));
        }
        let text = lines.join("\n") + "\n";
        let parsed = parse(&text)?;
        let trusted_comment = parsed
            .trusted_comment()
            .map_err(|error| malformed(error.to_string()))?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&parsed.keynum()[..8]);
        Ok(Self {
            text,
            algorithm: if parsed.is_prehashed() {
                SignatureAlgorithm::Prehashed
            } else {
                SignatureAlgorithm::Legacy
            },
            key_id: KeyId(key_id),
            trusted_comment,
        })
    }

    /// The file contents.
    pub fn to_text(&self) -> String {
        self.text.clone()
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
        let allow_legacy = true;
        minisign::verify(
            public_key.minisign_key(),
            &parse(&self.text)?,
            Cursor::new(message),
            true,
            false,
            allow_legacy,
        )
        .map_err(|error| {
            // The crate checks the file's signature, then the comment's;
            // only its message tells which one failed.
            if error.to_string().starts_with("Comment signature") {
                SigningError::BadTrustedComment
            } else {
                SigningError::BadSignature
            }
        })
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

fn parse(text: &str) -> Result<minisign::SignatureBox, SigningError> {
    minisign::SignatureBox::from_string(text)
        .map_err(|error| SigningError::MalformedSignature(error.to_string()))
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

    /// Made with `minisign -S -l` before the `minisign` crate was used.
    #[test]
    fn legacy_signatures_verify() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        let read = |name: &str| std::fs::read_to_string(format!("{fixtures}{name}")).unwrap();
        let key = PublicKey::from_text(&read("pre-minisign-crate.pub")).unwrap();
        let parsed = SignatureFile::from_text(&read("policy.toml.legacy.minisig")).unwrap();
        assert_eq!(parsed.algorithm(), SignatureAlgorithm::Legacy);
        let policy = read("policy.toml");
        assert_eq!(parsed.verify(&key, policy.as_bytes()), Ok(()));
        assert_eq!(
            parsed.verify(&key, b"another policy"),
            Err(SigningError::BadSignature)
        );
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
