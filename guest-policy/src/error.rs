//! The one error type of the library API: every way a policy can be refused.
//!
//! Each message says what went wrong and what the administrator can do
//! about it, because these errors end up in front of people.

use std::io;
use std::path::PathBuf;

use crate::diag::{render, Diagnostic};
use crate::signing::{KeyId, SigningError};

/// Why a policy was not loaded or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The policy file is not UTF-8.
    #[error("{file} is not UTF-8 text; policy files are TOML and must be UTF-8")]
    NotUtf8 {
        /// The policy file name.
        file: String,
    },
    /// Parsing or validation failed; one diagnostic per problem.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
    /// The signature is malformed, from another key, or does not match.
    #[error("{file}: {source}")]
    Signature {
        /// The signature file name.
        file: String,
        /// What is wrong with it.
        source: SigningError,
    },
    /// The trusted comment has no `version=N`.
    #[error("the signature's trusted comment \"{comment}\" carries no version=N; sign with `guest-policy sign`, or with `minisign -S -t \"securevm-policy version=N\"`")]
    UnversionedSignature {
        /// The trusted comment.
        comment: String,
    },
    /// The signed version differs from the file's version.
    #[error("the signature was made for policy version {signed}, but the file says version = {in_file}; sign this exact file again")]
    VersionMismatch {
        /// Version in the trusted comment.
        signed: u64,
        /// Version in `[policy]`.
        in_file: u64,
    },
    /// The policy's `expires` is in the past.
    #[error(
        "policy version {version} expired at {expires}; publish a new version with a later expiry"
    )]
    Expired {
        /// The policy version.
        version: u64,
        /// The expiry, formatted as UTC.
        expires: String,
    },
    /// The offered version is older than the installed one.
    #[error("policy version {offered} is older than the installed version {installed}; refusing to roll back (publish a version above {installed})")]
    Rollback {
        /// Version offered.
        offered: u64,
        /// Version installed.
        installed: u64,
    },
    /// The offered version is the installed one.
    #[error("policy version {version} is already installed; refusing to install it again (publish a higher version to change the policy)")]
    Replay {
        /// The version.
        version: u64,
    },
    /// The policy is signed by another key than the installed one.
    #[error("policy is signed by key {offered}, but this machine accepted policies from key {installed}; a key change needs the state file to be re-initialised by an administrator")]
    KeyChanged {
        /// Key that signed the offered policy.
        offered: KeyId,
        /// Key recorded in the state file.
        installed: KeyId,
    },
    /// No state file exists.
    #[error("state file {} does not exist; if this machine never had a policy, initialise the state explicitly (`guest-policy verify --init-state`); otherwise restore it, since without it rollback cannot be detected", path.display())]
    StateMissing {
        /// The state file.
        path: PathBuf,
    },
    /// The state file exists where it should be created.
    #[error("state file {} already exists; refusing to initialise over it (remove it deliberately first if you are resetting this machine)", path.display())]
    StateExists {
        /// The state file.
        path: PathBuf,
    },
    /// The state file cannot be understood.
    #[error("state file {} is corrupt: {reason}; restore it from a backup or re-initialise it deliberately", path.display())]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state file could not be written; the previous state is intact.
    #[error("cannot write state file {}: {source}; the previously recorded state is unchanged", path.display())]
    StateWrite {
        /// The state file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
}
