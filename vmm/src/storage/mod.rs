//! Encrypted storage below the guest: LUKS2 volumes (headers and keyslots
//! through libcryptsetup in the `securevm-luks` helper process, the data
//! path in Rust on OpenSSL's AES-XTS) and the `securevm disk` commands.
//!
//! What the rest of the VMM uses:
//! - [`EncryptedBackend`]: a LUKS image as a [`crate::block::BlockBackend`];
//! - [`luks`]: `unlock`, `format`, `add_key`, `remove_key`, `is_luks`;
//! - [`passphrase_input::read_passphrase`]: terminal (no echo) or file;
//! - [`cli::DiskCommand`] / [`run_disk_command`]: `securevm disk ...`;
//! - [`parallel::set_worker_confinement`]: the seccomp filter of the crypto workers.

pub mod backend;
pub mod cli;
pub mod error;
pub mod gpt_probe;
pub mod header;
pub mod info;
pub mod luks;
pub mod luks_helper;
pub mod parallel;
pub mod passphrase_input;
pub mod secret;
pub mod size;
pub mod xts;

pub use backend::EncryptedBackend;
pub use cli::{run_disk_command, DiskCommand};
pub use error::StorageError;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
pub(crate) mod test_support;
