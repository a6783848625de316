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
//! sink, a file. Copies are forwarded from that file (see [`forward`]) to
//! the destinations the policy's `forward` lists (format 4): the host's
//! syslog socket and a syslog-over-TLS collector. The older
//! `sink = "syslog"` and `sink = "remote"` keep their meaning: overridden
//! by `--audit-log`, refused at start without it (never silently
//! dropped); forwarding is asked for with `forward` only, so a policy
//! that says nothing of it never sends records off the machine.
//! Writers on several threads share one [`Audit`] handle (a mutex around
//! the file); their seccomp filters allow `fdatasync`.

pub mod cli;
pub(crate) mod forward;
pub mod key;
pub mod record;
mod remote;
mod syslog;
pub mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_policy::{AuditForward, AuditSink};

use crate::confined::{Confinement, ThreadError};
use crate::seccomp::ThreadKind;
use forward::{ForwardJob, Forwarder};

pub use key::{AuditKey, AuditKeyError};
pub use record::Event;
pub use writer::{AuditError, AuditLog};

pub use remote::{ClientIdentity, RemoteSetupError};
pub use syslog::DEFAULT_SYSLOG_SOCKET;

/// How long the end of a session waits for each forwarder to deliver the
/// last records before leaving them to the next session.
pub const FORWARD_FINISH_LIMIT: Duration = Duration::from_secs(5);

/// The machine's audit options as given (`--audit-log`, `--audit-key`,
/// `--audit-syslog-socket`, `--audit-client-cert` and `--audit-client-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// Overrides the policy's sink.
    pub log: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The syslog socket forwarded records go to; `/dev/log` if unset.
    pub syslog_socket: Option<PathBuf>,
    /// This machine's certificate and key for the TLS collector.
    pub client: Option<ClientIdentity>,
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
    #[error("audit forwarding to {to}: {source}")]
    Forward { to: String, source: std::io::Error },
    #[error("audit forwarding: {0}")]
    Remote(#[from] RemoteSetupError),
    #[error(transparent)]
    Thread(#[from] ThreadError),
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

    /// Opens the policy's sink unless `--audit-log` already opened one,
    /// and starts forwarding to the destinations the policy lists (each
    /// thread confined unless `seccomp` is off).
    pub fn open_policy_sink(
        self,
        policy: &guest_policy::Audit,
        config: &AuditConfig,
        seccomp: bool,
    ) -> Result<Audit, AuditSetupError> {
        let audit = if self.is_enabled() {
            self
        } else {
            match &policy.sink {
                AuditSink::File(path) => Audit::open(path, config.key.as_deref())?,
                AuditSink::Syslog => {
                    return Err(AuditSetupError::UnsupportedSink {
                        sink: "syslog".into(),
                    })
                }
                AuditSink::Remote(address) => {
                    return Err(AuditSetupError::UnsupportedSink {
                        sink: format!("a remote collector ({address})"),
                    })
                }
            }
        };
        for target in &policy.forward {
            audit.start_forwarding(target, config, seccomp)?;
        }
        Ok(audit)
    }

    fn start_forwarding(
        &self,
        target: &AuditForward,
        config: &AuditConfig,
        seccomp: bool,
    ) -> Result<(), AuditSetupError> {
        let Some(log) = &self.0 else {
            return Ok(());
        };
        let (name, transport): (&'static str, Box<dyn forward::Transport>) = match target {
            AuditForward::Syslog => {
                let socket = config
                    .syslog_socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSLOG_SOCKET));
                let to = format!("syslog {}", socket.display());
                let transport = syslog::SyslogSocket::new(socket)
                    .map_err(|source| AuditSetupError::Forward { to, source })?;
                ("syslog", Box::new(transport))
            }
            AuditForward::Remote(collector) => (
                "remote",
                Box::new(remote::TlsCollector::new(
                    collector,
                    config.client.as_ref(),
                )?),
            ),
        };
        let to = transport.describe();
        let job = ForwardJob::open(name, log.path(), transport)
            .map_err(|source| AuditSetupError::Forward { to, source })?;
        let forwarder = Forwarder::start(job, Confinement::new(ThreadKind::AuditForward, seccomp))?;
        log.add_forwarder(forwarder);
        Ok(())
    }

    /// At the end of the session: lets forwarders deliver the last records
    /// (at most [`FORWARD_FINISH_LIMIT`] each) and stop.
    pub fn finish_forwarding(&self) {
        if let Some(log) = &self.0 {
            log.finish_forwarding(FORWARD_FINISH_LIMIT);
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
