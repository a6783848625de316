//! [`EncryptedBackend`]: a LUKS volume as a virtio-blk [`BlockBackend`].
//! The guest reads and writes plaintext; the image file only ever
//! receives ciphertext. Reads land in the guest's own buffers and are
//! decrypted in place there; writes encrypt from the guest's buffers into
//! a reusable scratch buffer taken from a small pool, so the hot path
//! allocates nothing once warm. Large requests are split over the disk
//! crypto workers ([`super::parallel`]): each piece does its own file I/O
//! and cipher. Guest buffers that split an encryption sector go through
//! the request path's bounce buffer instead (`read_at`/`write_at`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::block::{guest_io, BlockBackend, ExtentRange};
use crate::sync::Unpoisoned;

use super::error::StorageError;
use super::luks::{self, UnlockedVolume, VolumeLayout};
use super::parallel;
use super::xts::SectorCipher;

/// Writes are encrypted and written in pieces of at most this size.
const SCRATCH_LEN: usize = 1 << 20;

pub struct EncryptedBackend {
    file: File,
    cipher: SectorCipher,
    layout: VolumeLayout,
    read_only: bool,
    scratch: Mutex<Vec<Vec<u8>>>,
}

impl EncryptedBackend {
    /// Unlock the LUKS image at `path` with `passphrase` and serve it.
    pub fn open(path: &Path, passphrase: &[u8], read_only: bool) -> Result<Self, StorageError> {
        let unlocked = luks::unlock(path, passphrase)?;
        Self::from_unlocked(path, unlocked, read_only)
    }

    /// Serve an already unlocked volume (e.g. a key unwrapped by the
    /// identity module). `path` must be the image `unlocked` came from.
    pub fn from_unlocked(
        path: &Path,
        unlocked: UnlockedVolume,
        read_only: bool,
    ) -> Result<Self, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(StorageError::io(path))?;
        let layout = unlocked.layout;
        let cipher = SectorCipher::new(unlocked.key, layout.sector_size, layout.iv_tweak)?;
        // Now, while the process may still create threads.
        parallel::start_workers();
        Ok(Self {
            file,
            cipher,
            layout,
            read_only,
            scratch: Mutex::new(Vec::new()),
        })
    }

    pub fn layout(&self) -> &VolumeLayout {
        &self.layout
    }

    /// File offset of disk byte `offset` for a `len`-byte transfer, after
    /// checking alignment and bounds.
    fn file_offset(&self, offset: u64, len: usize) -> io::Result<u64> {
        let block = u64::from(self.layout.sector_size);
        let end = offset.checked_add(len as u64);
        if !offset.is_multiple_of(block) || !(len as u64).is_multiple_of(block) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request not aligned to the encryption sector size",
            ));
        }
        match end {
            Some(end) if end <= self.layout.capacity => Ok(self.layout.data_offset + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request beyond the end of the encrypted disk",
            )),
        }
    }

    fn take_scratch(&self) -> Vec<u8> {
        let pooled = self.scratch.lock().unpoisoned().pop();
        pooled.unwrap_or_else(|| vec![0u8; SCRATCH_LEN])
    }

    fn give_back_scratch(&self, buffer: Vec<u8>) {
        self.scratch.lock().unpoisoned().push(buffer);
    }

    /// Encrypts `buf` into `scratch` and writes it, a unit-aligned piece
    /// per worker (see [`parallel`]).
    fn write_chunks(&self, offset: u64, buf: &[u8], scratch: &mut [u8]) -> io::Result<()> {
        let file_offset = self.file_offset(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(scratch.len());
            let base = done as u64;
            parallel::for_each_piece_pair(
                &buf[done..done + n],
                &mut scratch[..n],
                self.unit(),
                |start, plain, cipher| {
                    let at = base + start as u64;
                    self.cipher
                        .encrypt_into(offset + at, plain, cipher)
                        .map_err(io::Error::other)?;
                    self.file.write_all_at(cipher, file_offset + at)
                },
            )?;
            done += n;
        }
        Ok(())
    }

    fn unit(&self) -> usize {
        self.layout.sector_size as usize
    }

    /// True when every guest buffer of `range` holds whole encryption
    /// sectors, so none has to be decrypted across two buffers.
    fn takes_directly(&self, range: ExtentRange<'_>) -> bool {
        range
            .iter()
            .all(|extent| extent.len().is_multiple_of(self.unit()))
    }

    fn read_direct(&self, offset: u64, range: ExtentRange<'_>) -> io::Result<()> {
        let file_offset = self.file_offset(offset, range.len)?;
        parallel::for_each_extent_piece(range, self.unit(), |start, piece| {
            guest_io::read_exact_at(&self.file, piece, file_offset + start)?;
            let mut at = offset + start;
            for extent in piece.iter() {
                // SAFETY: a guest extent is valid for `len` bytes while the
                // request runs; the data is decrypted where it landed.
                unsafe { self.cipher.decrypt_raw(at, extent.as_ptr(), extent.len()) }
                    .map_err(io::Error::other)?;
                at += extent.len() as u64;
            }
            Ok(())
        })
    }

    fn write_direct(&self, offset: u64, range: ExtentRange<'_>) -> io::Result<()> {
        let file_offset = self.file_offset(offset, range.len)?;
        let mut scratch = self.take_scratch();
        let mut result = Ok(());
        let mut done = 0;
        while done < range.len && result.is_ok() {
            let n = (range.len - done).min(scratch.len());
            let base = done as u64;
            result = parallel::for_each_extent_piece_with(
                range.part(done, n),
                &mut scratch[..n],
                self.unit(),
                |start, piece, cipher| {
                    let mut filled = 0;
                    for extent in piece.iter() {
                        let to = cipher
                            .get_mut(filled..filled + extent.len())
                            .ok_or_else(|| io::Error::other("scratch shorter than the piece"))?;
                        // SAFETY: the extent is guest memory valid for its
                        // length; `to` is scratch of the same length.
                        unsafe {
                            self.cipher.encrypt_raw(
                                offset + base + start + filled as u64,
                                extent.as_ptr(),
                                to.as_mut_ptr(),
                                to.len(),
                            )
                        }
                        .map_err(io::Error::other)?;
                        filled += extent.len();
                    }
                    self.file.write_all_at(cipher, file_offset + base + start)
                },
            );
            done += n;
        }
        self.give_back_scratch(scratch);
        result
    }
}

impl BlockBackend for EncryptedBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let file_offset = self.file_offset(offset, buf.len())?;
        parallel::for_each_piece(buf, self.unit(), |start, piece| {
            let at = start as u64;
            self.file.read_exact_at(piece, file_offset + at)?;
            self.cipher
                .decrypt_in_place(offset + at, piece)
                .map_err(io::Error::other)
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mut scratch = self.take_scratch();
        let result = self.write_chunks(offset, buf, &mut scratch);
        self.give_back_scratch(scratch);
        result
    }

    fn read_to_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        self.takes_directly(range)
            .then(|| self.read_direct(offset, range))
    }

    fn write_from_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        if self.read_only {
            return Some(Err(io::Error::from_raw_os_error(libc::EROFS)));
        }
        self.takes_directly(range)
            .then(|| self.write_direct(offset, range))
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn capacity_bytes(&self) -> u64 {
        self.layout.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        self.layout.sector_size
    }
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::block::GuestExtent;
    use crate::storage::test_support::*;

    const MIB: u64 = 1 << 20;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn plaintext_round_trips_and_the_file_holds_only_ciphertext() {
        let path = new_volume("rt.img", 4 * MIB, 4096);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        assert_eq!(backend.capacity_bytes(), 4 * MIB);
        assert_eq!(backend.block_size(), 4096);
        let marker = b"SECUREVM-PLAINTEXT-MARKER-0123456789".repeat(113);
        let mut data = vec![0u8; 2 * MIB as usize + 8192];
        data[..marker.len()].copy_from_slice(&marker);
        data[MIB as usize..MIB as usize + marker.len()].copy_from_slice(&marker);
        backend.write_at(8192, &data).unwrap();
        backend.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        backend.read_at(8192, &mut back).unwrap();
        assert_eq!(back, data);

        let image = std::fs::read(&path).unwrap();
        assert!(!image.windows(36).any(|w| w == &marker[..36]));
        drop(backend);
        let reopened = EncryptedBackend::open(&path, PASSPHRASE, true).unwrap();
        let mut again = vec![0u8; 4096];
        reopened.read_at(8192, &mut again).unwrap();
        assert_eq!(again, data[..4096]);
    }

    /// Guest buffers of the given lengths, with extents over them.
    fn guest_buffers(lens: &[usize]) -> (Vec<Vec<u8>>, Vec<GuestExtent>) {
        let mut buffers: Vec<Vec<u8>> = lens.iter().map(|len| vec![0u8; *len]).collect();
        let extents = buffers
            .iter_mut()
            // SAFETY: each test keeps the buffers alive while it uses the extents.
            .map(|buffer| unsafe { GuestExtent::new(buffer.as_mut_ptr(), buffer.len()) })
            .collect();
        (buffers, extents)
    }

    #[test]
    fn guest_buffers_are_served_directly_and_agree_with_the_bounce_path() {
        let path = new_volume("direct.img", 4 * MIB, 4096);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        let marker = b"SECUREVM-DIRECT-MARKER-0123456789AB".repeat(200);
        // Large enough to be split over the workers, in uneven buffers.
        let lens = [4096, 65536, 12288, 1 << 20, 8192];
        let total: usize = lens.iter().sum();
        let mut data = pattern(total, 9);
        data[4096..4096 + marker.len()].copy_from_slice(&marker);
        let (mut buffers, extents) = guest_buffers(&lens);
        let mut at = 0;
        for buffer in &mut buffers {
            let len = buffer.len();
            buffer.copy_from_slice(&data[at..at + len]);
            at += len;
        }
        let range = ExtentRange::whole(&extents);
        backend.write_from_guest(MIB, range).unwrap().unwrap();
        assert_eq!(
            buffers.concat(),
            data,
            "writing leaves the guest's data alone"
        );
        let mut bounced = vec![0u8; total];
        backend.read_at(MIB, &mut bounced).unwrap();
        assert_eq!(bounced, data);

        let (buffers, extents) = guest_buffers(&[8192, total - 8192]);
        backend
            .read_to_guest(MIB, ExtentRange::whole(&extents))
            .unwrap()
            .unwrap();
        assert_eq!(buffers.concat(), data);
        backend.flush().unwrap();
        let image = std::fs::read(&path).unwrap();
        assert!(!image.windows(35).any(|w| w == &marker[..35]));
    }

    #[test]
    fn guest_buffers_that_split_a_sector_go_through_the_bounce_path() {
        let path = new_volume("split.img", MIB, 4096);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        let (_buffers, extents) = guest_buffers(&[512, 3584, 4096]);
        let range = ExtentRange::whole(&extents);
        assert!(backend.read_to_guest(0, range).is_none());
        assert!(backend.write_from_guest(0, range).is_none());
        let read_only = EncryptedBackend::open(&path, PASSPHRASE, true).unwrap();
        let error = read_only.write_from_guest(0, range).unwrap().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EROFS));
    }

    #[test]
    fn direct_requests_beyond_capacity_fail() {
        let path = new_volume("direct-end.img", MIB, 4096);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        let (_buffers, extents) = guest_buffers(&[8192]);
        let range = ExtentRange::whole(&extents);
        assert!(backend.read_to_guest(MIB - 4096, range).unwrap().is_err());
        assert!(backend
            .write_from_guest(MIB - 4096, range)
            .unwrap()
            .is_err());
    }

    /// Set in the environment of the child process that runs
    /// [`direct_io_in_child_process`].
    const FILTERED_CHILD: &str = "SECUREVM_TEST_FILTERED_CRYPTO_CHILD";

    /// Large direct reads and writes with every disk crypto worker under
    /// its real seccomp filter, in a fresh process running only
    /// `direct_io_in_child_process`: the worker pool is global, so only a
    /// new process gets workers with the filter.
    #[test]
    fn direct_io_runs_under_the_disk_crypto_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "storage::backend::tests::direct_io_in_child_process",
            FILTERED_CHILD,
        );
    }

    /// The child process of `direct_io_runs_under_the_disk_crypto_filter`;
    /// run among the ignored tests (not as that child) it is that test.
    #[test]
    #[ignore = "runs as the child of direct_io_runs_under_the_disk_crypto_filter"]
    fn direct_io_in_child_process() {
        if std::env::var_os(FILTERED_CHILD).is_none() {
            return direct_io_runs_under_the_disk_crypto_filter();
        }
        parallel::set_worker_confinement(crate::confined::Confinement::Seccomp(
            crate::seccomp::ThreadKind::DiskCrypto,
        ));
        let path = new_volume("filtered.img", 4 * MIB, 4096);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        let data = pattern(2 * MIB as usize, 3);
        let (mut buffers, extents) = guest_buffers(&[MIB as usize, MIB as usize]);
        buffers[0].copy_from_slice(&data[..MIB as usize]);
        buffers[1].copy_from_slice(&data[MIB as usize..]);
        let range = ExtentRange::whole(&extents);
        backend.write_from_guest(0, range).unwrap().unwrap();
        buffers.iter_mut().for_each(|buffer| buffer.fill(0));
        backend.read_to_guest(0, range).unwrap().unwrap();
        assert_eq!(buffers.concat(), data);
    }

    #[test]
    fn requests_beyond_capacity_or_unaligned_fail() {
        let path = new_volume("bounds.img", MIB, 512);
        let backend = EncryptedBackend::open(&path, PASSPHRASE, false).unwrap();
        assert_eq!(backend.block_size(), 512);
        let mut buf = vec![0u8; 1024];
        assert!(backend.read_at(MIB - 512, &mut buf).is_err());
        assert!(backend.write_at(MIB, &buf[..512]).is_err());
        assert!(backend.read_at(u64::MAX - 511, &mut buf[..512]).is_err());
        assert!(backend.read_at(100, &mut buf[..512]).is_err());
        assert!(backend.write_at(0, &buf[..100]).is_err());
        backend.read_at(MIB - 512, &mut buf[..512]).unwrap();
    }

    #[test]
    fn read_only_backend_refuses_writes_and_leaves_the_file_unchanged() {
        let path = new_volume("ro.img", MIB, 4096);
        let before = std::fs::read(&path).unwrap();
        let backend = EncryptedBackend::open(&path, PASSPHRASE, true).unwrap();
        assert!(backend.read_only());
        let err = backend.write_at(0, &[1u8; 4096]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        backend.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    /// `cryptsetup reencrypt --encrypt` works offline on a plain file: its
    /// ciphertext is the known answer our reads must decrypt.
    fn decrypts_data_encrypted_by_cryptsetup(sector_size: &str) {
        let Some(mut command) = cryptsetup() else {
            return;
        };
        let path = scratch_path("reencrypt.img");
        let plain = pattern(4 * MIB as usize, 7);
        let mut image = plain.clone();
        image.resize(plain.len() + 32 * MIB as usize, 0);
        std::fs::write(&path, &image).unwrap();
        let key = key_file(&path, PASSPHRASE);
        let out = command
            .args(["reencrypt", "--encrypt", "--type", "luks2"])
            .args(["--reduce-device-size", "32M", "--sector-size", sector_size])
            .args(["--pbkdf", "argon2id", "--pbkdf-memory", "1024"])
            .args(["--pbkdf-force-iterations", "4", "--key-file"])
            .arg(&key)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let backend = EncryptedBackend::open(&path, PASSPHRASE, true).unwrap();
        assert_eq!(backend.block_size().to_string(), sector_size);
        let mut back = vec![0u8; plain.len()];
        backend.read_at(0, &mut back).unwrap();
        assert!(
            back == plain,
            "plaintext differs from what cryptsetup encrypted"
        );
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(64).any(|w| w == &plain[4096..4096 + 64]));
    }

    #[test]
    fn decrypts_cryptsetup_ciphertext_with_4096_byte_sectors() {
        decrypts_data_encrypted_by_cryptsetup("4096");
    }

    #[test]
    fn decrypts_cryptsetup_ciphertext_with_512_byte_sectors() {
        decrypts_data_encrypted_by_cryptsetup("512");
    }
}
