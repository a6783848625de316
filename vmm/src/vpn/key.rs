//! This machine's WireGuard private key, read from the file `--vpn-key`
//! names. The key is never part of a policy (policies are pushed to many
//! machines); it is provisioned per machine, exactly as `wg genkey`
//! prints it: 32 bytes in standard base64, one trailing newline allowed.
//!
//! A key file that other users can read is refused rather than used: the
//! key would be as good as published. Every copy of the key we make is
//! zeroized when dropped (the file text, the decoded bytes, and the
//! `StaticSecret` itself, which zeroizes on drop).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::narrow::usize_from_u64;

/// A `wg genkey` file is 45 bytes; anything far larger is not a key file.
const MAX_KEY_FILE_LEN: u64 = 256;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VpnKeyError {
    #[error("the VPN key file {} does not exist; create it with `wg genkey > FILE` and `chmod 600 FILE`", .0.display())]
    Missing(PathBuf),
    #[error("cannot read the VPN key file {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("the VPN key file {} is not a regular file; give the file `wg genkey` wrote", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "the VPN key file {} can be read by other users (mode {mode:04o}); \
         restrict it with `chmod 600 {}`", path.display(), path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "the VPN key file {} does not hold a WireGuard private key: expected 32 bytes in \
         base64 (44 characters), as `wg genkey` prints them", .0.display()
    )]
    Malformed(PathBuf),
}

/// This machine's WireGuard private key.
pub struct PrivateKey(StaticSecret);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<secret>)")
    }
}

impl PrivateKey {
    /// The key as the tunnel takes it.
    pub(super) fn into_secret(self) -> StaticSecret {
        self.0
    }

    /// The matching public key in base64, as `wg pubkey` prints it: what
    /// the peer's administrator needs.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(PublicKey::from(&self.0).as_bytes())
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(StaticSecret::from(bytes))
    }
}

/// Reads and checks the key file at `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, VpnKeyError> {
    let mut file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => VpnKeyError::Missing(path.to_path_buf()),
        _ => VpnKeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let unreadable = |source| VpnKeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(VpnKeyError::NotAFile(path.to_path_buf()));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VpnKeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if metadata.len() > MAX_KEY_FILE_LEN {
        return Err(VpnKeyError::Malformed(path.to_path_buf()));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(usize_from_u64(MAX_KEY_FILE_LEN)));
    file.by_ref()
        .take(MAX_KEY_FILE_LEN)
        .read_to_end(&mut text)
        .map_err(unreadable)?;
    parse_private_key(&text).ok_or_else(|| VpnKeyError::Malformed(path.to_path_buf()))
}

/// The key in `text` (base64, surrounding whitespace ignored).
fn parse_private_key(text: &[u8]) -> Option<PrivateKey> {
    let trimmed = text.trim_ascii();
    let mut decoded = Zeroizing::new([0u8; KEY_LEN + 3]);
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(trimmed, &mut decoded[..])
        .ok()?;
    if len != KEY_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&decoded[..KEY_LEN]);
    Some(PrivateKey(StaticSecret::from(*key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key as `wg genkey` prints it, and its `wg pubkey`.
    const KEY: &str = "wH8ZmucixAZfmOdsNaNth3ymtmTnI46DHE3cohF5+Ho=\n";
    const PUBLIC: &str = "LKaQZ1puxPmGtDfcW3IvUTcyvrb7lyZcvnrHz+eZnGw=";

    fn key_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("securevm-vpn-key-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_wg_genkey_file_loads_and_gives_the_wg_pubkey() {
        let dir = scratch("ok");
        let key = load_private_key(&key_file(&dir, "k", KEY, 0o600)).unwrap();
        assert_eq!(key.public_key_base64(), PUBLIC);
        assert_eq!(format!("{key:?}"), "PrivateKey(<secret>)");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = scratch("open");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let error = load_private_key(&key_file(&dir, "k", KEY, mode)).unwrap_err();
            assert!(matches!(error, VpnKeyError::TooOpen { .. }), "{mode:o}");
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_keys_are_refused() {
        let dir = scratch("malformed");
        for text in [
            "",
            "not base64 at all\n",
            "wH8ZmucixAZfmOdsNaNth3ymtmTnI46DHE3cohF5\n",
            "wH8ZmucixAZfmOdsNaNth3ymtmTnI46DHE3cohF5+HoA\n",
            "wH8ZmucixAZfmOdsNaNth3ymtmTnI46DHE3cohF5+Ho=wH8Z\n",
        ] {
            let error = load_private_key(&key_file(&dir, "k", text, 0o600)).unwrap_err();
            assert!(
                matches!(error, VpnKeyError::Malformed(_)),
                "{text:?}: {error}"
            );
        }
        let long = "A".repeat(1000);
        let error = load_private_key(&key_file(&dir, "k", &long, 0o600)).unwrap_err();
        assert!(matches!(error, VpnKeyError::Malformed(_)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_and_non_file_keys_say_so() {
        let dir = scratch("missing");
        let error = load_private_key(&dir.join("nothing")).unwrap_err();
        assert!(matches!(error, VpnKeyError::Missing(_)));
        assert!(error.to_string().contains("wg genkey"), "{error}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let error = load_private_key(&dir).unwrap_err();
        assert!(matches!(error, VpnKeyError::NotAFile(_)), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
