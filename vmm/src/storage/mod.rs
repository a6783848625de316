//! Encrypted storage below the guest: LUKS2 volumes (headers and keyslots
//! through libcryptsetup, the data path in Rust on OpenSSL's AES-XTS), the
//! `securevm disk` commands, the external-media policy and the disk
//! benchmark.

pub mod error;
pub mod header;
pub mod info;
pub mod luks;
pub mod secret;
pub mod xts;

pub use error::StorageError;
pub mod backend;

pub use backend::EncryptedBackend;

pub mod cli;
pub mod passphrase;
pub mod size;
#[cfg(test)]
mod test_support;

pub use cli::{run_disk_command, DiskCommand};
pub mod bench;
#[cfg(test)]
mod crash_tests;
pub mod external;
