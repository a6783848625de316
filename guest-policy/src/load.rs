//! Loading a policy for use: signature first, then validation, then the
//! checks that tie the signature to this version and this moment.
//!
//! The signature is verified over the exact file bytes before anything is
//! parsed, so unauthenticated input never reaches the TOML parser on a
//! machine that enforces policy.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::diag::Diagnostic;
use crate::error::PolicyError;
use crate::model::Policy;
use crate::signing::{KeyId, PublicKey, SignatureFile};
use crate::timestamp;
use crate::validate::validate;

/// The first word of trusted comments written by `guest-policy sign`.
pub const TRUSTED_COMMENT_TAG: &str = "securevm-policy";

/// A policy whose signature, contents, version binding and expiry were all
/// checked. Only this module creates values of this type.
#[derive(Debug, Clone)]
pub struct VerifiedPolicy {
    policy: Policy,
    warnings: Vec<Diagnostic>,
    key_id: KeyId,
    trusted_comment: String,
}

impl VerifiedPolicy {
    /// The validated rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Consumes the wrapper, keeping the rules.
    pub fn into_policy(self) -> Policy {
        self.policy
    }

    /// `[policy] version`.
    pub fn version(&self) -> u64 {
        self.policy.meta.version
    }

    /// The key that signed the policy.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Non-fatal findings (such as shadowed rules).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The signed trusted comment.
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }
}

/// Where the signature of `policy_path` lives by default: `<policy>.minisig`.
pub fn signature_path_for(policy_path: &Path) -> PathBuf {
    let mut name = policy_path.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

/// Loads `policy_path`, verifying it against `<policy_path>.minisig`.
pub fn load_policy(
    policy_path: &Path,
    public_key: &PublicKey,
    now: SystemTime,
) -> Result<VerifiedPolicy, PolicyError> {
    load_policy_with_signature(
        policy_path,
        &signature_path_for(policy_path),
        public_key,
        now,
    )
}

/// Loads `policy_path`, verifying it against the given signature file.
pub fn load_policy_with_signature(
    policy_path: &Path,
    signature_path: &Path,
    public_key: &PublicKey,
    now: SystemTime,
) -> Result<VerifiedPolicy, PolicyError> {
    let policy_bytes = read(policy_path)?;
    let signature_bytes = read(signature_path)?;
    let signature_text =
        String::from_utf8(signature_bytes).map_err(|_| PolicyError::Signature {
            file: signature_path.display().to_string(),
            source: crate::signing::SigningError::MalformedSignature(
                "it is not UTF-8 text".to_string(),
            ),
        })?;
    verify_policy_bytes(
        &policy_path.display().to_string(),
        &policy_bytes,
        &signature_path.display().to_string(),
        &signature_text,
        public_key,
        now,
    )
}

/// Verifies a policy held in memory (for example one pushed over a
/// channel). `policy_name` and `signature_name` only appear in messages.
pub fn verify_policy_bytes(
    policy_name: &str,
    policy_bytes: &[u8],
    signature_name: &str,
    signature_text: &str,
    public_key: &PublicKey,
    now: SystemTime,
) -> Result<VerifiedPolicy, PolicyError> {
    let signature_error = |source| PolicyError::Signature {
        file: signature_name.to_string(),
        source,
    };
    let signature = SignatureFile::from_text(signature_text).map_err(signature_error)?;
    signature
        .verify(public_key, policy_bytes)
        .map_err(signature_error)?;
    let text = std::str::from_utf8(policy_bytes).map_err(|_| PolicyError::NotUtf8 {
        file: policy_name.to_string(),
    })?;
    let validated = validate(policy_name, text).map_err(PolicyError::Invalid)?;
    let comment = signature.trusted_comment();
    let signed_version =
        version_in_trusted_comment(comment).ok_or_else(|| PolicyError::UnversionedSignature {
            comment: comment.to_string(),
        })?;
    let meta = &validated.policy.meta;
    if signed_version != meta.version {
        return Err(PolicyError::VersionMismatch {
            signed: signed_version,
            in_file: meta.version,
        });
    }
    if let Some(expires) = meta.expires {
        if now >= expires {
            return Err(PolicyError::Expired {
                version: meta.version,
                expires: timestamp::format_utc(expires),
            });
        }
    }
    Ok(VerifiedPolicy {
        policy: validated.policy,
        warnings: validated.warnings,
        key_id: signature.key_id(),
        trusted_comment: comment.to_string(),
    })
}

/// The trusted comment `guest-policy sign` writes:
/// `securevm-policy version=7 timestamp=1793523600 file=policy.toml`.
pub fn trusted_comment_for(policy: &Policy, file_name: &str, now: SystemTime) -> String {
    let file_name: String = file_name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!(
        "{TRUSTED_COMMENT_TAG} version={} timestamp={} file={file_name}",
        policy.meta.version,
        timestamp::unix_seconds(now)
    )
}

/// The `version=N` word of a trusted comment, if there is exactly one.
pub fn version_in_trusted_comment(comment: &str) -> Option<u64> {
    let mut versions = comment
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("version="));
    let version = versions.next()?.parse().ok()?;
    versions.next().is_none().then_some(version)
}

fn read(path: &Path) -> Result<Vec<u8>, PolicyError> {
    fs::read(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_the_trusted_comment() {
        assert_eq!(
            version_in_trusted_comment("securevm-policy version=7 timestamp=1 file=p.toml"),
            Some(7)
        );
        assert_eq!(version_in_trusted_comment("timestamp:1 file:p.toml"), None);
        assert_eq!(version_in_trusted_comment("version=1 version=2"), None);
        assert_eq!(version_in_trusted_comment("version=-1"), None);
    }

    #[test]
    fn signature_path_appends_minisig() {
        assert_eq!(
            signature_path_for(Path::new("/etc/p.toml")),
            PathBuf::from("/etc/p.toml.minisig")
        );
    }
}
