//! The machine's record of the last accepted policy, which is what makes
//! rollback and replay refusable.
//!
//! The file is small text, rewritten atomically on every acceptance:
//!
//! ```text
//! # securevm policy state: written by guest-policy, do not edit
//! format=1
//! version=7
//! key_id=0123456789ABCDEF
//! accepted_at=1793523600
//! ```
//!
//! A freshly initialised file has `installed=none` instead of the last three
//! lines. A missing file is an error, not "no policy yet": otherwise deleting
//! the file would silently re-open the machine to old policies. First
//! installation therefore needs an explicit [`PolicyState::initialise`].
//! The key id is pinned at the first acceptance; changing the signing key
//! means re-initialising the state, a deliberate administrative act.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::atomic;
use crate::error::PolicyError;
use crate::load::VerifiedPolicy;
use crate::signing::KeyId;
use crate::timestamp;

const HEADER: &str = "# securevm policy state: written by guest-policy, do not edit";
const FORMAT: &str = "1";

/// What the state file says was installed last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstalledPolicy {
    /// Version of the accepted policy.
    pub version: u64,
    /// Key that signed it.
    pub key_id: KeyId,
    /// When it was accepted, in seconds since the Unix epoch.
    pub accepted_at: u64,
}

/// The state file and its current contents.
#[derive(Debug)]
pub struct PolicyState {
    path: PathBuf,
    installed: Option<InstalledPolicy>,
}

impl PolicyState {
    /// Reads an existing state file. Missing or corrupt files are errors.
    pub fn open(path: &Path) -> Result<Self, PolicyError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(PolicyError::StateMissing {
                    path: path.to_path_buf(),
                })
            }
            Err(error) if error.kind() == ErrorKind::InvalidData => {
                return Err(corrupt(path, "it is not UTF-8 text"))
            }
            Err(source) => {
                return Err(PolicyError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let installed = parse(&text).map_err(|reason| corrupt(path, &reason))?;
        Ok(Self {
            path: path.to_path_buf(),
            installed,
        })
    }

    /// Creates a state file recording that no policy is installed yet.
    /// Refuses to overwrite an existing file.
    pub fn initialise(path: &Path) -> Result<Self, PolicyError> {
        if fs::symlink_metadata(path).is_ok() {
            return Err(PolicyError::StateExists {
                path: path.to_path_buf(),
            });
        }
        let state = Self {
            path: path.to_path_buf(),
            installed: None,
        };
        state.write()?;
        Ok(state)
    }

    /// The last accepted policy, if any.
    pub fn installed(&self) -> Option<InstalledPolicy> {
        self.installed
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks whether `policy` may replace the installed one, without
    /// recording anything.
    pub fn check(&self, policy: &VerifiedPolicy) -> Result<(), PolicyError> {
        let Some(installed) = self.installed else {
            return Ok(());
        };
        if policy.key_id() != installed.key_id {
            return Err(PolicyError::KeyChanged {
                offered: policy.key_id(),
                installed: installed.key_id,
            });
        }
        match policy.version() {
            offered if offered < installed.version => Err(PolicyError::Rollback {
                offered,
                installed: installed.version,
            }),
            offered if offered == installed.version => {
                Err(PolicyError::Replay { version: offered })
            }
            _ => Ok(()),
        }
    }

    /// Checks `policy` and records it as installed. The file is replaced
    /// atomically; on error neither the file nor `self` change.
    pub fn accept(&mut self, policy: &VerifiedPolicy) -> Result<(), PolicyError> {
        // Two pushes at once must not both pass the version check against
        // the same old state: serialise on a lock file beside the state
        // and decide against what is on disk now, not at open().
        let _lock = self.lock()?;
        self.installed = Self::open(&self.path)?.installed;
        self.check(policy)?;
        let previous = self.installed;
        self.installed = Some(InstalledPolicy {
            version: policy.version(),
            key_id: policy.key_id(),
            accepted_at: timestamp::unix_seconds(SystemTime::now()),
        });
        self.write().inspect_err(|_| self.installed = previous)
    }

    /// Holds an exclusive lock on `<state>.lock` until dropped.
    fn lock(&self) -> Result<fs::File, PolicyError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_error = |source| PolicyError::StateWrite {
            path: self.path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_error)?;
        file.lock().map_err(lock_error)?;
        Ok(file)
    }

    fn write(&self) -> Result<(), PolicyError> {
        let body = match self.installed {
            None => "installed=none\n".to_string(),
            Some(installed) => format!(
                "version={}\nkey_id={}\naccepted_at={}\n",
                installed.version, installed.key_id, installed.accepted_at
            ),
        };
        let text = format!("{HEADER}\nformat={FORMAT}\n{body}");
        atomic::replace_file(&self.path, text.as_bytes()).map_err(|source| {
            PolicyError::StateWrite {
                path: self.path.clone(),
                source,
            }
        })
    }
}

fn corrupt(path: &Path, reason: &str) -> PolicyError {
    PolicyError::StateCorrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Parses the state text strictly: every key once, nothing unknown.
fn parse(text: &str) -> Result<Option<InstalledPolicy>, String> {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} is not key=value", index + 1))?;
        if fields.iter().any(|(known, _)| *known == key) {
            return Err(format!("key {key} appears twice"));
        }
        fields.push((key, value));
    }
    let get = |key: &str| {
        fields
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    };
    if get("format") != Some(FORMAT) {
        return Err("format=1 is missing".to_string());
    }
    let known: &[&str] = if get("installed") == Some("none") {
        &["format", "installed"]
    } else {
        &["format", "version", "key_id", "accepted_at"]
    };
    if let Some((unknown, _)) = fields.iter().find(|(key, _)| !known.contains(key)) {
        return Err(format!("unexpected key {unknown}"));
    }
    if known.contains(&"installed") {
        return Ok(None);
    }
    let number = |key: &str| -> Result<u64, String> {
        get(key)
            .ok_or_else(|| format!("{key} is missing"))?
            .parse()
            .map_err(|_| format!("{key} is not a number"))
    };
    let key_id = get("key_id")
        .ok_or_else(|| "key_id is missing".to_string())?
        .parse::<KeyId>()?;
    Ok(Some(InstalledPolicy {
        version: number("version")?,
        key_id,
        accepted_at: number("accepted_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_installed_and_empty_states() {
        let installed = parse("format=1\nversion=7\nkey_id=0123456789ABCDEF\naccepted_at=5\n")
            .unwrap()
            .unwrap();
        assert_eq!(installed.version, 7);
        assert_eq!(installed.key_id.to_string(), "0123456789ABCDEF");
        assert_eq!(parse("# c\nformat=1\ninstalled=none\n"), Ok(None));
    }

    #[test]
    fn rejects_anything_unexpected() {
        for (text, reason) in [
            ("", "format=1 is missing"),
            (
                "format=1\nversion=x\nkey_id=0123456789ABCDEF\naccepted_at=5",
                "version is not a number",
            ),
            (
                "format=1\nversion=1\nversion=2",
                "key version appears twice",
            ),
            (
                "format=1\ninstalled=none\nversion=3",
                "unexpected key version",
            ),
            ("format=1\nversion=1\naccepted_at=1", "key_id is missing"),
            ("garbage", "line 1 is not key=value"),
        ] {
            assert_eq!(parse(text).unwrap_err(), reason, "{text}");
        }
    }
}
