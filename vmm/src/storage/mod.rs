//! Encrypted storage below the guest: LUKS2 volumes (headers and keyslots
//! through libcryptsetup, the data path in Rust on OpenSSL's AES-XTS), the
//! `securevm disk` commands, the external-media policy and the disk
//! benchmark.

pub mod secret;
pub mod xts;
