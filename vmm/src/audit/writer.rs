//! [`AuditLog`]: appends records to one file, one JSON line each, and
//! makes each durable (`fdatasync`) before `record` returns, so the action
//! a record acknowledges happens only once the record would survive a
//! crash. An existing log is verified to its end first and the chain
//! continues from its last record; a log that fails verification is
//! refused (it is evidence; securevm does not write after tampering).
//! The file is locked (`flock`) so two securevm processes never interleave
//! chains in one log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use openssl::sha::sha256;

use super::forward::Forwarder;
use super::key::AuditKey;
use super::record::{encode, hex, Event, MAC_BYTES};
use super::verify::{verify_log, ChainEnd, Problem, Verdict};
use crate::sync::Unpoisoned;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {source}; check the path and its permissions", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log {} is in use by another securevm process; each machine session needs its own log or must wait", path.display())]
    Locked { path: PathBuf },
    #[error("audit log {} fails verification ({problem}); securevm will not append to it. Keep it as evidence, move it aside and start a new log", path.display())]
    Tampered { path: PathBuf, problem: Problem },
    #[error("audit log {}: {reason}", path.display())]
    Encode { path: PathBuf, reason: String },
}

struct Chain {
    file: File,
    next_seq: u64,
    prev: [u8; MAC_BYTES],
    user: Option<String>,
}

/// An open audit log; share it behind an `Arc`.
pub struct AuditLog {
    path: PathBuf,
    key: AuditKey,
    chain: Mutex<Chain>,
    /// Threads copying records to syslog destinations; woken per record.
    forwarders: Mutex<Vec<Forwarder>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path`, verifies what it
    /// holds and writes a `log-opened` record.
    pub fn open(path: &Path, key: AuditKey) -> Result<AuditLog, AuditError> {
        let io_error = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_error)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                AuditError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                io_error(error)
            });
        }
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(io_error)?;
        let (end, torn) = match verify_log(&content, &key) {
            Verdict::Intact { end, .. } => {
                // A whole record whose newline a crash cut off.
                if content.last().is_some_and(|&byte| byte != b'\n') {
                    file.write_all(b"\n").map_err(io_error)?;
                }
                (end, None)
            }
            Verdict::TornTail { end, torn, .. } => {
                log::warn!(
                    "audit log {}: line {} is a record cut by a crash; it is kept, acknowledged in the next record, and the chain continues from seq {}",
                    path.display(),
                    end.lines,
                    end.last_seq
                );
                // End the partial line so the next record starts on its own.
                file.write_all(b"\n").map_err(io_error)?;
                let line = end.lines;
                (end, Some((line, torn)))
            }
            Verdict::Broken(problem) => {
                return Err(AuditError::Tampered {
                    path: path.to_path_buf(),
                    problem,
                })
            }
        };
        if created {
            sync_parent_dir(path).map_err(io_error)?;
        }
        let ChainEnd {
            last_seq, last_mac, ..
        } = end;
        let log = AuditLog {
            path: path.to_path_buf(),
            key,
            chain: Mutex::new(Chain {
                file,
                next_seq: last_seq + 1,
                prev: last_mac,
                user: None,
            }),
            forwarders: Mutex::new(Vec::new()),
        };
        log.record(Event::LogOpened {
            recovered_torn_line: torn.as_ref().map(|(line, _)| *line),
            torn_sha256: torn.as_ref().map(|(_, bytes)| hex(&sha256(bytes))),
        })?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The user later records are attributed to (after a login, or `None`
    /// when the session ends).
    pub fn set_user(&self, user: Option<&str>) {
        self.lock().user = user.map(str::to_string);
    }

    /// Appends `event` and returns once it is on stable storage.
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        let mut chain = self.lock();
        let (mut line, mac) = encode(
            &self.key,
            chain.next_seq,
            SystemTime::now(),
            chain.user.as_deref(),
            &event,
            &chain.prev,
        )
        .map_err(|reason| AuditError::Encode {
            path: self.path.clone(),
            reason,
        })?;
        line.push('\n');
        let io_error = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        chain.file.write_all(line.as_bytes()).map_err(io_error)?;
        chain.file.sync_data().map_err(io_error)?;
        chain.next_seq += 1;
        chain.prev = mac;
        drop(chain);
        for forwarder in self.forwarders.lock().unpoisoned().iter() {
            forwarder.wake();
        }
        Ok(())
    }

    /// Adds a forwarder, which copies records from this log from now on.
    pub(crate) fn add_forwarder(&self, forwarder: Forwarder) {
        self.forwarders.lock().unpoisoned().push(forwarder);
    }

    /// Lets each forwarder deliver what the log holds and stop, waiting at
    /// most `limit` for each.
    pub(crate) fn finish_forwarding(&self, limit: std::time::Duration) {
        for forwarder in self.forwarders.lock().unpoisoned().drain(..) {
            forwarder.finish(limit);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chain> {
        // A writer that panicked mid-record leaves at worst a partial line,
        // which the next open handles; keep logging.
        self.chain.lock().unpoisoned()
    }
}

impl Drop for AuditLog {
    /// A session that ends early (a refused login) still hands its last
    /// records to the forwarders before they stop.
    fn drop(&mut self) {
        self.finish_forwarding(super::FORWARD_FINISH_LIMIT);
    }
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}
