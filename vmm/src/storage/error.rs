//! [`StorageError`]: everything that can go wrong opening, creating or
//! changing an encrypted disk, worded for the person at the terminal.
//! No variant carries key material or passphrases.

use std::io;
use std::path::PathBuf;

use super::header::HeaderError;
use super::xts::CryptoError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{}: {source}; check the path and its permissions", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Header {
        path: PathBuf,
        #[source]
        source: HeaderError,
    },
    #[error("{} already exists; choose another name or pass --force to overwrite it", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("no keyslot of {} opens with this passphrase; check the passphrase (and for a passphrase file, its trailing newline is removed)", path.display())]
    WrongPassphrase { path: PathBuf },
    #[error("{}: cipher {cipher} is not supported; securevm serves aes-xts-plain64 volumes only (re-encrypt with `cryptsetup reencrypt --cipher aes-xts-plain64`)", path.display())]
    UnsupportedCipher { path: PathBuf, cipher: String },
    #[error("{}: keyslot {slot} uses KDF {kdf}, which securevm does not open; add a key with argon2id or pbkdf2", path.display())]
    UnsupportedKdf {
        path: PathBuf,
        slot: u32,
        kdf: String,
    },
    #[error("{}: keyslot {slot} asks for {memory_kib} KiB of Argon2 memory, above the {limit_kib} KiB securevm allows; refusing it rather than exhausting host memory", path.display())]
    KdfMemoryTooLarge {
        path: PathBuf,
        slot: u32,
        memory_kib: u64,
        limit_kib: u64,
    },
    #[error("{}: unsupported volume layout: {reason}", path.display())]
    UnsupportedLayout { path: PathBuf, reason: String },
    #[error("{}: the data segment ends at byte {segment_end} but the file has only {file_len} bytes; the image is truncated", path.display())]
    SegmentBeyondEnd {
        path: PathBuf,
        segment_end: u64,
        file_len: u64,
    },
    #[error("{}: libcryptsetup could not {operation}: {source}", path.display())]
    Cryptsetup {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: libcryptsetup did not {operation} within {limit}; the medium was refused (its key derivation costs more time than securevm allows, or the medium stalls)", path.display())]
    TimedOut {
        path: PathBuf,
        operation: &'static str,
        /// The deadline, as "180 s".
        limit: String,
    },
    #[error("{}: {source}", path.display())]
    LuksHelper {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: keyslot {slot} is not in use; run `securevm disk info` to list the keyslots", path.display())]
    NoSuchKeyslot { path: PathBuf, slot: u32 },
    #[error("{}: keyslot {slot} is the last one; removing it makes the data unrecoverable. Pass --force if that is what you want", path.display())]
    LastKeyslot { path: PathBuf, slot: u32 },
    #[error("disk encryption failed: {0}")]
    Crypto(#[from] CryptoError),
    #[error("cannot read the passphrase: {0}")]
    Passphrase(String),
    #[error("invalid size {0:?}; give bytes or a number with K, M, G or T (powers of 1024), e.g. 64M or 10G")]
    InvalidSize(String),
    #[error(transparent)]
    Block(#[from] crate::block::BlockError),
    #[error("{} holds a GPT for {gpt_sector_size}-byte sectors, but the volume would have {volume_sector_size}-byte sectors, which would hide the partition table from the guest; pass --sector-size {gpt_sector_size}", path.display())]
    GptSectorSizeMismatch {
        path: PathBuf,
        gpt_sector_size: u32,
        volume_sector_size: u32,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl StorageError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
