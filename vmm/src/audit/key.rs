//! The machine audit key: 32 random bytes in a file only its owner may
//! read. Every audit record's MAC is keyed with it, so someone who can
//! edit the log but not read the key cannot rebuild a valid chain.
//! A key file that group or others can read is refused: a key anyone can
//! read protects nothing.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Length of the key in bytes (HMAC-SHA256's block-size-independent
/// recommendation: the digest length).
pub const AUDIT_KEY_BYTES: usize = 32;

/// The loaded key; zeroed when dropped, never printed.
pub struct AuditKey(Zeroizing<[u8; AUDIT_KEY_BYTES]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("cannot read the audit key {}: {source}; create one with `securevm audit init-key {}`", path.display(), path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("the audit key {} is readable by group or others (mode {mode:04o}); run `chmod 600 {}` and keep it private", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the audit key {} is {len} bytes, not {AUDIT_KEY_BYTES}; it is not a securevm audit key (create one with `securevm audit init-key FILE`)", path.display())]
    Malformed { path: PathBuf, len: usize },
    #[error("{} already exists; securevm never overwrites an audit key (the logs it signed could no longer be verified)", path.display())]
    Exists { path: PathBuf },
    #[error("cannot create the audit key {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("no random bytes for the audit key: {0}")]
    Random(openssl::error::ErrorStack),
}

impl AuditKey {
    /// Reads the key at `path`, refusing a group/other-readable file.
    pub fn load(path: &Path) -> Result<AuditKey, AuditKeyError> {
        let unreadable = |source| AuditKeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let mode = file.metadata().map_err(unreadable)?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(AuditKeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(AUDIT_KEY_BYTES + 1));
        // One byte more than a key, so an oversized file is noticed without
        // reading all of it.
        (&mut file)
            .take(AUDIT_KEY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        let key: [u8; AUDIT_KEY_BYTES] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| AuditKeyError::Malformed {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                })?;
        Ok(AuditKey(Zeroizing::new(key)))
    }

    /// Creates a fresh random key at `path` (mode 0600, never overwriting).
    pub fn create(path: &Path) -> Result<(), AuditKeyError> {
        let mut key = Zeroizing::new([0u8; AUDIT_KEY_BYTES]);
        openssl::rand::rand_bytes(key.as_mut()).map_err(AuditKeyError::Random)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => AuditKeyError::Exists {
                    path: path.to_path_buf(),
                },
                _ => AuditKeyError::Create {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let created = file.write_all(key.as_ref()).and_then(|()| file.sync_all());
        if let Err(source) = created {
            let _ = std::fs::remove_file(path);
            return Err(AuditKeyError::Create {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; AUDIT_KEY_BYTES]) -> AuditKey {
        AuditKey(Zeroizing::new(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("securevm-audit-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_created_key_is_private_random_and_loads() {
        let (a, b) = (scratch("a.key"), scratch("b.key"));
        AuditKey::create(&a).unwrap();
        AuditKey::create(&b).unwrap();
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (ka, kb) = (AuditKey::load(&a).unwrap(), AuditKey::load(&b).unwrap());
        assert_ne!(ka.bytes(), kb.bytes());
        assert!(!format!("{ka:?}").contains(&format!("{:?}", ka.bytes())));
        assert!(matches!(
            AuditKey::create(&a),
            Err(AuditKeyError::Exists { .. })
        ));
    }

    #[test]
    fn open_or_malformed_keys_are_refused() {
        let open = scratch("open.key");
        AuditKey::create(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = AuditKey::load(&open).unwrap_err();
        assert!(
            matches!(err, AuditKeyError::TooOpen { mode: 0o640, .. }),
            "{err}"
        );
        for (name, len) in [("short.key", 31), ("long.key", 33), ("empty.key", 0)] {
            let path = scratch(name);
            std::fs::write(&path, vec![7u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = AuditKey::load(&path).unwrap_err();
            assert!(
                matches!(err, AuditKeyError::Malformed { .. }),
                "{name}: {err}"
            );
        }
        let err = AuditKey::load(&scratch("missing.key")).unwrap_err();
        assert!(err.to_string().contains("init-key"), "{err}");
    }
}
