//! External (removable) media under the role's policy: `encrypt` (only
//! LUKS volumes that open with the organisation's key; a blank medium is
//! formatted first when policy allows), `read-only` (attached raw, the
//! device is read-only, the medium never changes) or `deny`.
//!
//! Refusals that follow from policy and the medium's state are
//! [`ExternalAttach::Denied`] with the reason to report; failures to
//! open a medium that should attach (wrong key, damaged header, I/O) are
//! errors.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::block::RawFileBackend;
use crate::narrow::usize_from_u64;

use crate::storage::luks::{self, FormatOptions, KdfSettings};
use crate::storage::{header, EncryptedBackend, StorageError};

/// How much of the start of a medium must be zero for it to count as
/// blank.
pub const BLANK_PROBE_LEN: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalMediaPolicy {
    Encrypt,
    ReadOnly,
    Deny,
}

pub enum ExternalAttach {
    /// A LUKS volume opened with the key; `formatted` when it was blank
    /// and has just been formatted.
    Encrypted {
        backend: EncryptedBackend,
        formatted: bool,
    },
    /// The medium as it is, read-only.
    ReadOnly(RawFileBackend),
    /// Not attached, and why.
    Denied { reason: String },
}

impl std::fmt::Debug for ExternalAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExternalAttach::Encrypted { formatted, .. } => {
                write!(f, "Encrypted {{ formatted: {formatted} }}")
            }
            ExternalAttach::ReadOnly(_) => write!(f, "ReadOnly"),
            ExternalAttach::Denied { reason } => write!(f, "Denied({reason})"),
        }
    }
}

/// Decide and open: see the module comment. Blank media are formatted
/// with benchmarked Argon2id costs.
pub fn attach_decision(
    policy: ExternalMediaPolicy,
    path: &Path,
    key: Option<&[u8]>,
    allow_format_blank: bool,
) -> Result<ExternalAttach, StorageError> {
    attach_decision_with_kdf(
        policy,
        path,
        key,
        allow_format_blank,
        KdfSettings::Benchmarked,
    )
}

/// [`attach_decision`] with the KDF costs used if a blank medium is
/// formatted.
pub fn attach_decision_with_kdf(
    policy: ExternalMediaPolicy,
    path: &Path,
    key: Option<&[u8]>,
    allow_format_blank: bool,
    kdf: KdfSettings,
) -> Result<ExternalAttach, StorageError> {
    match policy {
        ExternalMediaPolicy::Deny => Ok(denied(path, "the policy denies external media")),
        ExternalMediaPolicy::ReadOnly => {
            Ok(ExternalAttach::ReadOnly(RawFileBackend::open(path, true)?))
        }
        ExternalMediaPolicy::Encrypt => {
            let Some(key) = key else {
                return Ok(denied(
                    path,
                    "the policy requires encryption and no medium key was given",
                ));
            };
            attach_encrypted(path, key, allow_format_blank, kdf)
        }
    }
}

fn attach_encrypted(
    path: &Path,
    key: &[u8],
    allow_format_blank: bool,
    kdf: KdfSettings,
) -> Result<ExternalAttach, StorageError> {
    let file = File::open(path).map_err(StorageError::io(path))?;
    let formatted = match header::luks_version(&file) {
        Ok(_) => false,
        Err(header::HeaderError::NotLuks) => {
            if !is_blank(&file).map_err(StorageError::io(path))? {
                return Ok(denied(
                    path,
                    "it is not an encrypted (LUKS) volume and the policy requires encryption",
                ));
            }
            if !allow_format_blank {
                return Ok(denied(
                    path,
                    "it is blank and the policy does not allow formatting media",
                ));
            }
            let options = FormatOptions {
                kdf,
                ..FormatOptions::default()
            };
            luks::format_in_place(path, &options, key)?;
            log::info!("{}: blank medium formatted as LUKS2", path.display());
            true
        }
        Err(source) => {
            return Err(StorageError::Header {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let backend = EncryptedBackend::open(path, key, false)?;
    Ok(ExternalAttach::Encrypted { backend, formatted })
}

fn denied(path: &Path, why: &str) -> ExternalAttach {
    ExternalAttach::Denied {
        reason: format!("{} not attached: {why}", path.display()),
    }
}

/// Whether the first [`BLANK_PROBE_LEN`] bytes (or the whole medium, if
/// smaller) are zero.
fn is_blank(file: &File) -> std::io::Result<bool> {
    let mut buffer = vec![0u8; usize_from_u64(BLANK_PROBE_LEN)];
    let mut filled = 0;
    let mut reader = file;
    while filled < buffer.len() {
        let n = reader.read(&mut buffer[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(buffer[..filled].iter().all(|&b| b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockBackend;
    use crate::storage::test_support::*;

    const MIB: u64 = 1 << 20;

    fn blank_medium(size: u64) -> ScratchPath {
        let path = scratch_path("usb.img");
        File::create(&path).unwrap().set_len(size).unwrap();
        path
    }

    fn attach(
        policy: ExternalMediaPolicy,
        path: &Path,
        key: Option<&[u8]>,
        allow_format: bool,
    ) -> Result<ExternalAttach, StorageError> {
        attach_decision_with_kdf(policy, path, key, allow_format, FAST_KDF)
    }

    #[test]
    fn a_medium_whose_unlock_misses_the_deadline_is_refused_and_the_next_attaches() {
        use crate::storage::luks_helper::tests::{slow_volume, INJECTED_DEADLINE};
        let path = slow_volume("usb-slow.img");
        INJECTED_DEADLINE.set(Some(std::time::Duration::from_millis(5)));
        let result = attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), false);
        INJECTED_DEADLINE.set(None);
        let err = result.unwrap_err();
        assert!(matches!(err, StorageError::TimedOut { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("did not open a keyslot within 5 ms; the medium was refused"),
            "{err}"
        );
        let attached =
            attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), false).unwrap();
        assert!(matches!(attached, ExternalAttach::Encrypted { .. }));
    }

    #[test]
    fn encrypt_policy_opens_luks_media_with_the_key() {
        let path = new_volume("usb-luks.img", 2 * MIB, 4096);
        let attached =
            attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), false).unwrap();
        assert!(matches!(
            attached,
            ExternalAttach::Encrypted {
                formatted: false,
                ..
            }
        ));
        let err = attach(
            ExternalMediaPolicy::Encrypt,
            &path,
            Some(b"other org"),
            false,
        )
        .unwrap_err();
        assert!(matches!(err, StorageError::WrongPassphrase { .. }), "{err}");
        let refused = attach(ExternalMediaPolicy::Encrypt, &path, None, false).unwrap();
        assert!(matches!(refused, ExternalAttach::Denied { .. }));
    }

    #[test]
    fn blank_media_are_formatted_only_when_allowed() {
        let path = blank_medium(20 * MIB);
        let refused = attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), false).unwrap();
        assert!(
            matches!(refused, ExternalAttach::Denied { ref reason } if reason.contains("blank")),
            "{refused:?}"
        );
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));

        let attached = attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), true).unwrap();
        let ExternalAttach::Encrypted { backend, formatted } = attached else {
            panic!("blank medium was not attached encrypted");
        };
        assert!(formatted);
        assert_eq!(
            backend.capacity_bytes(),
            20 * MIB - luks::DEFAULT_DATA_OFFSET
        );
        backend.write_at(0, &[0x5a; 4096]).unwrap();
        let mut back = [0u8; 4096];
        backend.read_at(0, &mut back).unwrap();
        assert_eq!(back, [0x5a; 4096]);
    }

    #[test]
    fn media_with_data_are_denied_under_encrypt_policy() {
        let path = blank_medium(20 * MIB);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at_start(b"FAT32 data");
        let before = std::fs::read(&path).unwrap();
        let refused = attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), true).unwrap();
        assert!(
            matches!(refused, ExternalAttach::Denied { ref reason } if reason.contains("not an encrypted")),
            "{refused:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn small_blank_media_cannot_be_formatted() {
        let path = blank_medium(MIB);
        let err = attach(ExternalMediaPolicy::Encrypt, &path, Some(PASSPHRASE), true).unwrap_err();
        assert!(matches!(err, StorageError::InvalidOption(_)), "{err}");
    }

    #[test]
    fn read_only_policy_attaches_unchanged_media_read_only() {
        let path = blank_medium(MIB);
        let attached = attach(ExternalMediaPolicy::ReadOnly, &path, None, true).unwrap();
        let ExternalAttach::ReadOnly(backend) = attached else {
            panic!("not attached read-only");
        };
        assert!(backend.read_only());
        assert!(backend.write_at(0, &[1u8; 512]).is_err());
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn deny_policy_attaches_nothing() {
        let path = new_volume("usb-deny.img", MIB, 4096);
        let refused = attach(ExternalMediaPolicy::Deny, &path, Some(PASSPHRASE), true).unwrap();
        assert!(
            matches!(refused, ExternalAttach::Denied { ref reason } if reason.contains("denies")),
            "{refused:?}"
        );
    }

    trait WriteAtStart {
        fn write_all_at_start(&self, data: &[u8]);
    }

    impl WriteAtStart for File {
        fn write_all_at_start(&self, data: &[u8]) {
            std::os::unix::fs::FileExt::write_all_at(self, data, 0).unwrap();
        }
    }
}
