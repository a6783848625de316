//! Crash-safe file replacement: write a temporary file beside the target,
//! fsync it, rename it over the target, then fsync the directory so the
//! rename itself is durable. A crash at any point leaves either the old or
//! the new contents, never a mixture.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents` atomically; the file gets mode 0600.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace_file_with_mode(path, contents, 0o600)
}

/// Like [`replace_file`], for files anyone may read (signatures).
pub fn replace_file_with_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let temporary = temporary_path(path);
    let result =
        write_synced(&temporary, contents, mode).and_then(|()| fs::rename(&temporary, path));
    if result.is_err() {
        // Best effort: a stale temporary file is harmless but untidy.
        let _ = fs::remove_file(&temporary);
        return result;
    }
    sync_directory(path)
}

fn write_synced(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_leaves_no_temporary() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        replace_file(&path, b"one").unwrap();
        replace_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temporary_path(&path).exists());
    }

    #[test]
    fn failure_keeps_the_old_contents() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        replace_file(&path, b"old").unwrap();
        fs::create_dir(temporary_path(&path)).unwrap();
        assert!(replace_file(&path, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }
}
