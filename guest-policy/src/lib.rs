//! Signed, versioned machine policies for securevm.
//!
//! Administrators write one TOML policy per organisation (format:
//! `README.md` and `examples/policy.toml` in this crate), sign it with
//! `guest-policy sign` or the standard `minisign` tool, and push it to
//! machines. This crate parses and validates the file, verifies the
//! minisign signature, and decides whether a machine may accept it.
//!
//! # API for the VMM
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::SystemTime;
//! use guest_policy::{load_policy, PolicyState, PublicKey};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = PublicKey::from_text(&std::fs::read_to_string("/etc/securevm/policy.pub")?)?;
//! // Signature from /etc/securevm/policy.toml.minisig; checks signature,
//! // syntax, semantics, signed version and expiry.
//! let verified = load_policy(Path::new("/etc/securevm/policy.toml"), &key, SystemTime::now())?;
//! // Refuses rollback, replay and another signing key; records atomically.
//! let mut state = PolicyState::open(Path::new("/var/lib/securevm/policy.state"))?;
//! state.accept(&verified)?;
//! let policy = verified.policy();
//! if let Some(role) = policy.role_of("alice") {
//!     println!("alice: external media {:?}", role.storage.external_media);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! - [`load_policy`] / [`load_policy_with_signature`] / [`verify_policy_bytes`]
//!   return a [`VerifiedPolicy`]; its [`Policy`] holds typed rules only
//!   (`IpNet`, [`PortRange`], [`HostPattern`], enums), so nothing is re-parsed.
//! - [`PolicyState::open`] fails on a missing state file;
//!   [`PolicyState::initialise`] creates one for a machine that never had a
//!   policy. [`PolicyState::accept`] refuses versions `<=` the installed one
//!   and other key ids, then rewrites the file atomically.
//! - [`NetworkPolicy::decide`] gives the action for one [`Connection`]
//!   (DNS only to the listed resolvers, first matching rule, else default);
//!   [`NetRule::matches`] tests a single rule.
//! - [`User::verify_passphrase`] checks a passphrase against the user's
//!   Argon2id hash in constant time.
//! - [`validate()`] parses and validates text without a signature (for
//!   `lint`), returning errors and warnings as [`Diagnostic`]s that carry
//!   file, line and column.
//!
//! Every failure is a [`PolicyError`] whose message says what to do next.

pub mod atomic;
pub mod diag;
mod error;
pub mod format;
mod load;
mod matching;
pub mod model;
pub mod passphrase_hash;
mod raw;
mod shadow;
pub mod signing;
mod state;
pub mod summary;
mod timestamp;
pub mod validate;

pub use diag::{Diagnostic, Severity};
pub use error::PolicyError;
pub use load::{
    load_policy, load_policy_with_signature, signature_path_for, trusted_comment_for,
    verify_policy_bytes, version_in_trusted_comment, VerifiedPolicy, TRUSTED_COMMENT_TAG,
};
pub use matching::Connection;
pub use model::{
    Action, Audit, AuditForward, AuditSink, Clipboard, Direction, DisplayPolicy, ExternalMedia,
    HostPattern, Meta, NetRule, NetworkPolicy, Policy, PortRange, Protocol, RemoteCollector, Role,
    SmartCardBinding, StoragePolicy, User, WireGuardConfig, SYSLOG_TLS_PORT,
};
pub use signing::{KeyId, PublicKey, SecretKey, SignatureFile, SigningError};
pub use state::{InstalledPolicy, PolicyState};
pub use validate::{validate, Validated};
