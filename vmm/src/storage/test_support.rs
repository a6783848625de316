//! Helpers shared by the storage unit tests: scratch image paths on a
//! real filesystem, a fast KDF profile and the cryptsetup binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::luks::{self, FormatOptions, KdfSettings};
use crate::sync::Unpoisoned;

/// Cheap Argon2id costs so tests run in milliseconds. Never a default.
pub const FAST_KDF: KdfSettings = KdfSettings::Fixed {
    memory_kib: 1024,
    time_cost: 4,
    parallel: 1,
};

pub const PASSPHRASE: &[u8] = b"correct horse battery staple";

/// A scratch file path, removed (with its `.key` and `.hdr` siblings)
/// when dropped so test runs do not fill the disk.
#[derive(Debug)]
pub struct ScratchPath(PathBuf);

impl std::ops::Deref for ScratchPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for ScratchPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for ScratchPath {
    fn drop(&mut self) {
        for path in [
            self.0.clone(),
            self.0.with_extension("key"),
            self.0.with_extension("hdr"),
        ] {
            let _ = std::fs::remove_file(path);
        }
        // Fails (and leaves it) only if a test put more files there.
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A fresh path under /var/tmp (not tmpfs), in a directory of its own:
/// removing it cannot race with another test creating its own.
pub fn scratch_path(name: &str) -> ScratchPath {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new("/var/tmp").join(format!(
        "securevm-storage-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    ScratchPath(dir.join(name))
}

/// A new LUKS2 image of `size` data bytes with [`PASSPHRASE`].
pub fn new_volume(name: &str, size: u64, sector_size: u32) -> ScratchPath {
    let path = scratch_path(name);
    let options = FormatOptions {
        sector_size,
        kdf: FAST_KDF,
        force: false,
    };
    luks::format(&path, size, &options, PASSPHRASE).unwrap();
    path
}

/// The cryptsetup binary, or `None` (with a message) when it is absent.
pub fn cryptsetup() -> Option<Command> {
    let found = Command::new("cryptsetup").arg("--version").output().is_ok();
    if !found {
        println!("SKIPPED: cryptsetup not installed (apt-get install cryptsetup-bin)");
        return None;
    }
    let mut command = Command::new("cryptsetup");
    command.arg("--batch-mode");
    Some(command)
}

/// Write `passphrase` to a key file next to `image` and return its path.
/// Removed together with `image` (see [`ScratchPath`]).
pub fn key_file(image: &Path, passphrase: &[u8]) -> PathBuf {
    let path = image.with_extension("key");
    std::fs::write(&path, passphrase).unwrap();
    path
}

/// Start capturing log records (idempotent); returns every warning
/// logged so far, across all tests of this process.
pub fn captured_warnings() -> Vec<String> {
    use std::sync::{Mutex, OnceLock};

    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                self.0.lock().unpoisoned().push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        if log::set_logger(capture).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
        capture
    });
    capture.0.lock().unpoisoned().clone()
}
