//! Ed25519 signatures in the minisign file formats.
//!
//! Keys and detached signatures are byte-for-byte what the `minisign` tool
//! reads and writes, so an administrator may sign policies with either tool.
//! The trusted comment of a signature is covered by the signature and
//! carries the policy version (`securevm-policy version=7 ...`), which lets
//! a verifier check that the signer meant this version.
//!
//! The `minisign` crate (by minisign's author) generates, decrypts, signs
//! and verifies; this module keeps the messages, the key id checks and the
//! encryption of new keys at `minisign -G`'s cost.
//!
//! Formats (all base64 lines follow a line starting `untrusted comment: `):
//! - public key: `"Ed" || key_id[8] || ed25519_public[32]`;
//! - secret key: `"Ed" || kdf_alg[2] || "B2" || salt[32] || opslimit(le64) ||
//!   memlimit(le64) || (key_id[8] || ed25519_secret[64] || checksum[32])`,
//!   the last part XORed with an scrypt stream when kdf_alg is `"Sc"` and
//!   stored in clear when kdf_alg is two zero bytes; the checksum is
//!   BLAKE2b-256 of `"Ed" || key_id || ed25519_secret` (`minisign -G -W`
//!   leaves it all zero for unencrypted keys, which is accepted there);
//! - signature: `alg[2] || key_id[8] || signature[64]`, then a line
//!   `trusted comment: TEXT` and base64 of the global signature over
//!   `signature[64] || TEXT`. `alg` is `"ED"` (the message is prehashed
//!   with BLAKE2b-512, what minisign writes today) or the legacy `"Ed"`.

mod kdf;
mod keys;
mod signature;

pub use kdf::{MINISIGN_MEMLIMIT, MINISIGN_OPSLIMIT};
pub use keys::{KeyId, PublicKey, SecretKey};
pub use signature::{SignatureAlgorithm, SignatureFile};

/// Why a key or signature could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    /// A key file does not have the minisign layout.
    #[error("{what} is not a minisign key: {reason}")]
    MalformedKey {
        /// "public key" or "secret key".
        what: &'static str,
        /// What exactly is wrong.
        reason: String,
    },
    /// A signature file does not have the minisign layout.
    #[error("signature file is malformed: {0}; sign the policy again with `guest-policy sign` or `minisign -S`")]
    MalformedSignature(String),
    /// The signature names a different key than the one we trust.
    #[error("the policy was signed by key {signed_by}, but the trusted public key is {trusted}; sign it with the organisation's key or configure the right public key")]
    KeyMismatch {
        /// Key id in the signature.
        signed_by: KeyId,
        /// Key id of the trusted public key.
        trusted: KeyId,
    },
    /// The signature does not match the file's bytes.
    #[error("signature verification failed: the policy file is not exactly what was signed (it was changed after signing, or the signature belongs to another file)")]
    BadSignature,
    /// The trusted comment was altered.
    #[error("the trusted comment's signature is invalid: the comment was changed after signing")]
    BadTrustedComment,
    /// The secret key is encrypted and needs a passphrase.
    #[error("the secret key is encrypted; a passphrase is needed to use it")]
    PassphraseRequired,
    /// Decryption produced a key whose checksum does not match.
    #[error(
        "the secret key's checksum does not match: wrong passphrase, or the key file is damaged"
    )]
    WrongPassphrase,
    /// The `minisign` crate could not sign.
    #[error("{0}")]
    Sign(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}
