//! `securevm audit init-key FILE` and `securevm audit verify FILE
//! --audit-key KEY`, as clap pieces for `main.rs`.

use std::path::PathBuf;

use super::key::{AuditKey, AuditKeyError};
use super::verify;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Create the machine audit key: 32 random bytes, mode 0600, never overwritten.
    InitKey {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Check an audit log: prints `audit: all N records verify` (exit 0) or
    /// the first altered, removed, reordered or truncated record (exit 1).
    Verify {
        /// The machine audit key that wrote the log.
        #[arg(long, value_name = "KEY")]
        audit_key: PathBuf,
        /// FILE is a collector's copy of the machine's log (what forwarding
        /// delivered): exact repeats of a record are accepted and every gap
        /// is reported.
        #[arg(long)]
        collected: bool,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error(transparent)]
    Key(#[from] AuditKeyError),
    #[error("cannot read the audit log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs one `securevm audit` command. `Ok(true)`: success; `Ok(false)`:
/// the log does not verify (already reported on stdout).
pub fn run_audit_command(command: &AuditCommand) -> Result<bool, AuditCliError> {
    match command {
        AuditCommand::InitKey { file } => {
            AuditKey::create(file)?;
            println!("created audit key {} (mode 0600)", file.display());
            Ok(true)
        }
        AuditCommand::Verify {
            audit_key,
            collected,
            file,
        } => {
            let key = AuditKey::load(audit_key)?;
            let content = std::fs::read(file).map_err(|source| AuditCliError::Log {
                path: file.clone(),
                source,
            })?;
            let (text, intact) = if *collected {
                verify::report_collected(&content, &key)
            } else {
                verify::report(&content, &key)
            };
            println!("{text}");
            Ok(intact)
        }
    }
}
