//! The audit trail: an append-only, tamper-evident log of every security
//! decision, with the time and the user it concerns.
//!
//! Format: JSON lines (see [`record`]); each record carries `seq`, `time`
//! (RFC 3339, UTC), `user` (null before login), `event` and its fields,
//! `prev` (the previous record's MAC) and `mac` = HMAC-SHA256 keyed with
//! the machine audit key over `prev || canonical record`. Someone who can
//! edit the file but not read the key can neither change, remove, reorder
//! nor re-chain records without `securevm audit verify` noticing.
//!
//! Durability (fsync policy): [`AuditLog::record`] writes the line and
//! calls `fdatasync` before it returns, and callers record a decision
//! before acting on it (the VM starts only after `vm-start` is durable),
//! so a crash loses no acknowledged record. A crash mid-write leaves a
//! partial last line; the next open keeps it, ends it, and acknowledges it
//! in its `log-opened` record (see [`verify`]).
//!
//! Where records go: `--audit-log FILE`, else the policy's `[audit]`
//! sink. Only `sink = "file"` is written; `syslog` and `remote` are
//! refused at start with an error naming `--audit-log`, never silently
//! dropped. Writers on several threads share one [`Audit`] handle (a
//! mutex around the file); their seccomp filters allow `fdatasync`.

pub mod cli;
pub mod key;
pub mod record;
pub mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use guest_policy::AuditSink;

pub use key::{AuditKey, AuditKeyError};
pub use record::Event;
pub use writer::{AuditError, AuditLog};

/// `--audit-log FILE` and `--audit-key FILE` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// Overrides the policy's sink.
    pub log: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditSetupError {
    #[error(transparent)]
    Key(#[from] AuditKeyError),
    #[error(transparent)]
    Log(#[from] AuditError),
    #[error("an audit log needs the machine audit key: pass --audit-key FILE (create one with `securevm audit init-key FILE`)")]
    NoKey,
    #[error("the policy sends audit records to {sink}, which securevm does not support yet; pass --audit-log FILE to keep them in a file")]
    UnsupportedSink { sink: String },
}

/// Where this session's records go: nowhere (no policy and no
/// `--audit-log`), or an open log. Cheap to clone; every clone writes to
/// the same chain.
#[derive(Debug, Clone, Default)]
pub struct Audit(Option<Arc<AuditLog>>);

impl Audit {
    /// A session without an audit log (no policy, no `--audit-log`).
    pub fn disabled() -> Audit {
        Audit(None)
    }

    /// Opens `path` with the key at `key_path`.
    pub fn open(path: &Path, key_path: Option<&Path>) -> Result<Audit, AuditSetupError> {
        let key = AuditKey::load(key_path.ok_or(AuditSetupError::NoKey)?)?;
        Ok(Audit(Some(Arc::new(AuditLog::open(path, key)?))))
    }

    /// Opens the policy's sink unless `--audit-log` already opened one.
    pub fn open_policy_sink(
        self,
        sink: &AuditSink,
        config: &AuditConfig,
    ) -> Result<Audit, AuditSetupError> {
        if self.is_enabled() {
            return Ok(self);
        }
        match sink {
            AuditSink::File(path) => Audit::open(path, config.key.as_deref()),
            AuditSink::Syslog => Err(AuditSetupError::UnsupportedSink {
                sink: "syslog".into(),
            }),
            AuditSink::Remote(address) => Err(AuditSetupError::UnsupportedSink {
                sink: format!("a remote collector ({address})"),
            }),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The log file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref().map(AuditLog::path)
    }

    /// Attributes later records to `user`.
    pub fn set_user(&self, user: Option<&str>) {
        if let Some(log) = &self.0 {
            log.set_user(user);
        }
    }

    /// Records `event` durably; a no-op without a log. Callers act on the
    /// decision only after this returns `Ok`.
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        match &self.0 {
            Some(log) => log.record(event),
            None => Ok(()),
        }
    }

    /// For events that follow an action already taken (network refusal
    /// summaries, the VM's stop): a failure is reported on stderr, since
    /// there is nothing left to refuse.
    pub fn record_or_warn(&self, event: Event) {
        if let Err(e) = self.record(event) {
            crate::notice!("securevm: audit: {e}");
        }
    }
}
