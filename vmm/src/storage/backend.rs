//! [`EncryptedBackend`]: a LUKS volume as a virtio-blk [`BlockBackend`].
//! The guest reads and writes plaintext; the image file only ever
//! receives ciphertext. Reads decrypt in place in the request's own
//! buffer; writes encrypt into a reusable per-request scratch buffer
//! taken from a small pool, so the hot path allocates nothing once warm.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::devices::virtio::block::BlockBackend;

use super::error::StorageError;
use super::luks::{self, UnlockedVolume, VolumeLayout};
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
        let pooled = self.scratch.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| vec![0u8; SCRATCH_LEN])
    }

    fn give_back_scratch(&self, buffer: Vec<u8>) {
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
    }

    fn write_chunks(&self, offset: u64, buf: &[u8], scratch: &mut [u8]) -> io::Result<()> {
        let file_offset = self.file_offset(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(scratch.len());
            let out = &mut scratch[..n];
            self.cipher
                .encrypt_into(offset + done as u64, &buf[done..done + n], out)
                .map_err(io::Error::other)?;
            self.file.write_all_at(out, file_offset + done as u64)?;
            done += n;
        }
        Ok(())
    }
}

impl BlockBackend for EncryptedBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let file_offset = self.file_offset(offset, buf.len())?;
        self.file.read_exact_at(buf, file_offset)?;
        self.cipher
            .decrypt_in_place(offset, buf)
            .map_err(io::Error::other)
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
