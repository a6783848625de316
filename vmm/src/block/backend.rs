//! Where virtio-blk sectors live. [`BlockBackend`] is the seam: the raw
//! file backend here, the encrypting one in `storage`; the request path
//! is the same for both. Offsets and lengths are guest-visible disk bytes, always
//! multiples of the backend's block size.
//!
//! Reads and writes normally go straight between the file and guest
//! memory ([`BlockBackend::read_to_guest`]); `read_at`/`write_at` serve
//! the buffer layouts a backend cannot take directly, through a bounce
//! buffer.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::guest_io::{self, ExtentRange};
use crate::narrow::const_narrow;

pub const SECTOR_SIZE: u64 = 512;

/// Guest-visible disk storage. Shared between the device and its I/O
/// thread, hence `&self` and `Sync`: implementations that keep state use
/// interior mutability.
pub trait BlockBackend: Send + Sync {
    /// Fill `buf` from disk byte `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Store `buf` at disk byte `offset`. Never called on read-only disks.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Fill the guest memory of `range` from disk byte `offset` without a
    /// bounce copy; `None` when this backend cannot take these buffers as
    /// they are, and the request path falls back to `read_at`.
    fn read_to_guest(&self, _offset: u64, _range: ExtentRange<'_>) -> Option<io::Result<()>> {
        None
    }
    /// Store the guest memory of `range` at disk byte `offset` without a
    /// bounce copy; `None` as for [`BlockBackend::read_to_guest`].
    fn write_from_guest(&self, _offset: u64, _range: ExtentRange<'_>) -> Option<io::Result<()>> {
        None
    }
    /// Make completed writes durable (the guest's FLUSH).
    fn flush(&self) -> io::Result<()>;
    /// Disk size in bytes, a multiple of [`BlockBackend::block_size`].
    fn capacity_bytes(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Logical block size reported to the guest (512 or 4096); requests
    /// are refused unless aligned to it.
    fn block_size(&self) -> u32 {
        const_narrow!(SECTOR_SIZE => u32)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {}: {source}; check the path and its permissions", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {} is a directory; give the path of an image file", path.display())]
    IsDirectory { path: PathBuf },
    #[error("disk image {} is {size} bytes, not a multiple of 512; resize it with `truncate -s {rounded} {}`", path.display(), path.display())]
    UnalignedSize {
        path: PathBuf,
        size: u64,
        rounded: u64,
    },
    #[error("disk backend reports a capacity of {0} bytes, not a multiple of its block size")]
    UnalignedCapacity(u64),
    #[error("disk backend block size {0} is not supported; use 512 or 4096")]
    UnsupportedBlockSize(u32),
    #[error("disk ID {0:?} is longer than 20 bytes; give a shorter one")]
    IdTooLong(String),
}

/// A raw image file (or block device), read with pread and written with
/// pwrite; FLUSH is fdatasync.
pub struct RawFileBackend {
    file: File,
    capacity: u64,
    read_only: bool,
}

impl RawFileBackend {
    /// Open `path`, read-only (O_RDONLY) when `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_error = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_error)?;
        if file.metadata().map_err(open_error)?.is_dir() {
            return Err(BlockError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        // Seeking to the end also sizes block devices, whose metadata
        // length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(open_error)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::UnalignedSize {
                path: path.to_path_buf(),
                size,
                rounded: size.next_multiple_of(SECTOR_SIZE),
            });
        }
        Ok(Self {
            file,
            capacity: size,
            read_only,
        })
    }
}

impl BlockBackend for RawFileBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.file.write_all_at(buf, offset)
    }

    fn read_to_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        Some(guest_io::read_exact_at(&self.file, range, offset))
    }

    fn write_from_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        if self.read_only {
            return Some(Err(io::Error::from_raw_os_error(libc::EROFS)));
        }
        Some(guest_io::write_all_at(&self.file, range, offset))
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_image(name: &str, size: u64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("securevm-backend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let file = File::create(&path).unwrap();
        file.set_len(size).unwrap();
        path
    }

    #[test]
    fn reads_and_writes_at_offsets() {
        let path = temp_image("rw.img", 4096);
        let backend = RawFileBackend::open(&path, false).unwrap();
        assert_eq!(backend.capacity_bytes(), 4096);
        assert!(!backend.read_only());
        backend.write_at(1024, &[7u8; 512]).unwrap();
        backend.flush().unwrap();
        let mut buf = [0u8; 1024];
        backend.read_at(512, &mut buf).unwrap();
        assert_eq!(&buf[..512], &[0u8; 512]);
        assert_eq!(&buf[512..], &[7u8; 512]);
        let mut past_end = [0u8; 512];
        assert!(backend.read_at(4096, &mut past_end).is_err());
    }

    #[test]
    fn unaligned_image_is_refused_with_a_fix() {
        let path = temp_image("odd.img", 1000);
        let err = RawFileBackend::open(&path, false).err().unwrap();
        let message = err.to_string();
        assert!(
            message.contains("is 1000 bytes, not a multiple of 512"),
            "{message}"
        );
        assert!(message.contains("truncate -s 1024"), "{message}");
    }

    #[test]
    fn missing_image_is_refused() {
        let path = std::env::temp_dir().join("securevm-no-such-dir/none.img");
        let err = RawFileBackend::open(&path, true).err().unwrap();
        assert!(matches!(err, BlockError::Open { .. }));
        assert!(err.to_string().contains("none.img"), "{err}");
    }

    #[test]
    fn directory_is_refused() {
        let err = RawFileBackend::open(&std::env::temp_dir(), true)
            .err()
            .unwrap();
        assert!(matches!(err, BlockError::IsDirectory { .. }), "{err}");
    }

    #[test]
    fn read_only_backend_opens_without_write_access_and_never_writes() {
        let path = temp_image("ro.img", 1024);
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o444);
        std::fs::set_permissions(&path, permissions).unwrap();
        // As root the mode bits do not stop a writable open, so check the
        // descriptor's own access mode too.
        let backend = RawFileBackend::open(&path, true).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on a descriptor we own has no memory effects.
        let flags = unsafe { libc::fcntl(backend.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        assert!(backend.write_at(0, &[1u8; 512]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 1024]);
    }
}
