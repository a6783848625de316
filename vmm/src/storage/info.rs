//! `disk info`: what a LUKS image is made of, from its metadata alone.
//! Nothing secret is read or shown (salts and digests are left out too:
//! they are not secret, but nobody needs them to manage a disk).

use std::fmt;
use std::fs::File;
use std::path::Path;

use super::error::StorageError;
use super::header::{self, HeaderCopy, Keyslot, Segment};
use super::luks::read_checked_metadata;

#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub luks_version: u16,
    pub uuid: String,
    pub label: String,
    pub file_len: u64,
    pub segments: Vec<Segment>,
    pub keyslots: Vec<Keyslot>,
    /// Which header copy was damaged, when one was.
    pub damaged_header: Option<HeaderCopy>,
}

/// Describe the LUKS2 image at `path`. LUKS1 images are named but not
/// described (see `cryptsetup luksDump`).
pub fn volume_info(path: &Path) -> Result<VolumeInfo, StorageError> {
    let file = File::open(path).map_err(StorageError::io(path))?;
    let file_len = super::luks::medium_len(&file).map_err(StorageError::io(path))?;
    let version = header::luks_version(&file).map_err(|source| StorageError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    if version != 2 {
        return Ok(VolumeInfo {
            luks_version: version,
            uuid: String::new(),
            label: String::new(),
            file_len,
            segments: Vec::new(),
            keyslots: Vec::new(),
            damaged_header: None,
        });
    }
    let metadata = read_checked_metadata(path, &file)?;
    Ok(VolumeInfo {
        luks_version: 2,
        uuid: metadata.uuid,
        label: metadata.label,
        file_len,
        segments: metadata.segments,
        keyslots: metadata.keyslots,
        damaged_header: metadata.damaged_copy.map(|(copy, _)| copy),
    })
}

impl fmt::Display for VolumeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Format:        LUKS{}", self.luks_version)?;
        if self.luks_version != 2 {
            return writeln!(f, "(details of LUKS1 images: `cryptsetup luksDump`)");
        }
        writeln!(f, "UUID:          {}", self.uuid)?;
        if !self.label.is_empty() {
            writeln!(f, "Label:         {}", self.label)?;
        }
        writeln!(f, "File size:     {} bytes", self.file_len)?;
        if let Some(copy) = self.damaged_header {
            writeln!(f, "WARNING:       the {copy:?} header copy is damaged")?;
        }
        for segment in &self.segments {
            let size = match segment.size {
                Some(size) => format!("{size} bytes"),
                None => format!(
                    "{} bytes (to end of file)",
                    self.file_len.saturating_sub(segment.offset)
                ),
            };
            writeln!(f, "Cipher:        {}", segment.encryption)?;
            writeln!(f, "Sector size:   {} bytes", segment.sector_size)?;
            writeln!(f, "Data offset:   {} bytes", segment.offset)?;
            writeln!(f, "Data size:     {size}")?;
        }
        writeln!(f, "Keyslots:")?;
        for slot in &self.keyslots {
            let kdf = &slot.kdf;
            if kdf.kind == "pbkdf2" {
                writeln!(
                    f,
                    "  {}: {} key {} bits, pbkdf2-{} {} iterations",
                    slot.id,
                    slot.area_encryption,
                    slot.key_size * 8,
                    kdf.hash,
                    kdf.time_or_iterations
                )?;
            } else {
                writeln!(
                    f,
                    "  {}: {} key {} bits, {} time {} memory {} KiB threads {}",
                    slot.id,
                    slot.area_encryption,
                    slot.key_size * 8,
                    kdf.kind,
                    kdf.time_or_iterations,
                    kdf.memory_kib,
                    kdf.parallel
                )?;
            }
        }
        Ok(())
    }
}
