//! Which sector size a raw disk image's GPT was written for, so that
//! `securevm disk create --from` does not wrap it in a volume whose sector
//! size hides the partition table from the guest.
//!
//! The guest's logical block size is the volume's sector size, and a GPT
//! header sits at LBA 1 (primary) and at the last LBA (backup): bytes 512
//! and `len - 512` for 512-byte sectors, bytes 4096 and `len - 4096` for
//! 4096-byte sectors. A header counts only when its signature, size (92
//! bytes up to one sector), CRC32 and own LBA agree, as the firmware and
//! Linux check them, so a stray "EFI PART" string does not count. The
//! backup alone counts too: the firmware's partition driver falls back to
//! it and rewrites the primary. The protective MBR is not consulted: it
//! sits in bytes 0..512 whatever the sector size, so it tells nothing
//! about which one the table was written for.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::narrow::usize_from_u64;

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header fields of UEFI 2.x up to the partition entry array's CRC.
const MIN_HEADER_LEN: u32 = 92;
const HEADER_LEN_OFFSET: usize = 12;
const HEADER_CRC_OFFSET: usize = 16;
const MY_LBA_OFFSET: usize = 24;

/// What one sector size's two header locations hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptFinding {
    /// Neither location holds a header that passes every check, and the
    /// primary location has no header signature.
    Absent,
    /// The primary or the backup header passes every check.
    Valid,
    /// The primary location has the signature but its header fails a
    /// check, and the backup does not pass either: the guest ignores it.
    Damaged(HeaderDefect),
}

/// Why a header with the "EFI PART" signature is not a GPT header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDefect {
    /// The image ends inside the header's fields.
    Truncated,
    /// `HeaderSize` is below 92 or above the sector size.
    Size(u32),
    /// The header's CRC32 does not match its bytes.
    Crc,
    /// `MyLBA` is not where the header sits.
    OwnLba(u64),
}

impl fmt::Display for HeaderDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "the image ends inside it"),
            Self::Size(size) => write!(f, "its header size {size} is out of range"),
            Self::Crc => write!(f, "its CRC32 does not match"),
            Self::OwnLba(lba) => write!(f, "it names LBA {lba} as its own"),
        }
    }
}

/// Look for a GPT written for `sector_size`-byte sectors (512 or 4096) in
/// the first `len` bytes of `image`. Reads at most two sectors.
pub fn probe(image: &File, len: u64, sector_size: u32) -> io::Result<GptFinding> {
    let sector = u64::from(sector_size);
    let primary = match read_sector(image, len, sector, 1)? {
        Some(bytes) => check_header(&bytes, sector_size, 1),
        None => None,
    };
    if primary == Some(Ok(())) {
        return Ok(GptFinding::Valid);
    }
    // A last LBA of 1 is the primary's own sector, already judged.
    let last_lba = (len / sector).saturating_sub(1);
    if len.is_multiple_of(sector) && last_lba > 1 {
        if let Some(bytes) = read_sector(image, len, sector, last_lba)? {
            if check_header(&bytes, sector_size, last_lba) == Some(Ok(())) {
                return Ok(GptFinding::Valid);
            }
        }
    }
    Ok(match primary {
        Some(Err(defect)) => GptFinding::Damaged(defect),
        Some(Ok(())) | None => GptFinding::Absent,
    })
}

/// The bytes of sector `lba`, cut short where the image ends; `None` when
/// the image ends before the sector starts.
fn read_sector(image: &File, len: u64, sector: u64, lba: u64) -> io::Result<Option<Vec<u8>>> {
    let start = lba * sector;
    if start >= len {
        return Ok(None);
    }
    let mut bytes = vec![0u8; usize_from_u64((len - start).min(sector))];
    image.read_exact_at(&mut bytes, start)?;
    Ok(Some(bytes))
}

/// `None` without the signature; otherwise whether the header at the
/// start of `bytes` (sector `lba`) passes the checks the guest makes.
fn check_header(bytes: &[u8], sector_size: u32, lba: u64) -> Option<Result<(), HeaderDefect>> {
    if !bytes.starts_with(SIGNATURE) {
        return None;
    }
    Some(validate(bytes, sector_size, lba))
}

fn validate(bytes: &[u8], sector_size: u32, lba: u64) -> Result<(), HeaderDefect> {
    let header_len = le_field(bytes, HEADER_LEN_OFFSET).map(u32::from_le_bytes)?;
    if !(MIN_HEADER_LEN..=sector_size).contains(&header_len) {
        return Err(HeaderDefect::Size(header_len));
    }
    let header = bytes
        .get(..usize_from_u64(header_len.into()))
        .ok_or(HeaderDefect::Truncated)?;
    let stored_crc = le_field(header, HEADER_CRC_OFFSET).map(u32::from_le_bytes)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..HEADER_CRC_OFFSET]);
    crc.update(&[0; 4]);
    crc.update(&header[HEADER_CRC_OFFSET + 4..]);
    if crc.finalize() != stored_crc {
        return Err(HeaderDefect::Crc);
    }
    let my_lba = le_field(header, MY_LBA_OFFSET).map(u64::from_le_bytes)?;
    if my_lba != lba {
        return Err(HeaderDefect::OwnLba(my_lba));
    }
    Ok(())
}

/// The `N` bytes of `bytes` at `offset`, for a little-endian field.
fn le_field<const N: usize>(bytes: &[u8], offset: usize) -> Result<[u8; N], HeaderDefect> {
    bytes
        .get(offset..offset + N)
        .and_then(|field| field.try_into().ok())
        .ok_or(HeaderDefect::Truncated)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::test_support::{scratch_path, ScratchPath};
    use std::process::{Command, Stdio};

    /// A GPT as a partitioning tool writes it for `sector_size`-byte
    /// sectors: protective MBR, primary header at LBA 1, backup header at
    /// the last LBA (the partition entries stay zero: the probe does not
    /// read them).
    pub(crate) fn gpt_image(sector_size: u32, len: usize) -> Vec<u8> {
        let sector = sector_size as usize;
        let last_lba = (len / sector - 1) as u64;
        let mut image = vec![0u8; len];
        image[446 + 4] = 0xee;
        image[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        image[510..512].copy_from_slice(&[0x55, 0xaa]);
        write_header(&mut image[sector..2 * sector], 1, last_lba);
        write_header(&mut image[len - sector..], last_lba, 1);
        image
    }

    fn write_header(sector: &mut [u8], my_lba: u64, alternate_lba: u64) {
        sector[..8].copy_from_slice(SIGNATURE);
        sector[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        sector[12..16].copy_from_slice(&MIN_HEADER_LEN.to_le_bytes());
        sector[24..32].copy_from_slice(&my_lba.to_le_bytes());
        sector[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        reseal(sector);
    }

    /// Recompute the CRC32 of the header at the start of `sector`.
    fn reseal(sector: &mut [u8]) {
        sector[16..20].fill(0);
        let crc = crc32fast::hash(&sector[..MIN_HEADER_LEN as usize]);
        sector[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn probe_bytes(bytes: &[u8]) -> [GptFinding; 2] {
        let path = scratch_path("probe.img");
        std::fs::write(&path, bytes).unwrap();
        probe_file(&path)
    }

    fn probe_file(path: &ScratchPath) -> [GptFinding; 2] {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        [512, 4096].map(|size| probe(&file, len, size).unwrap())
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn finds_the_sector_size_a_gpt_was_written_for() {
        use GptFinding::{Absent, Valid};
        assert_eq!(probe_bytes(&gpt_image(512, MIB)), [Valid, Absent]);
        assert_eq!(probe_bytes(&gpt_image(4096, MIB)), [Absent, Valid]);
        assert_eq!(probe_bytes(&vec![0u8; MIB]), [Absent, Absent]);
    }

    #[test]
    fn the_backup_header_alone_counts() {
        for sector_size in [512, 4096] {
            let mut image = gpt_image(sector_size, MIB);
            let primary = sector_size as usize;
            image[primary..2 * primary].fill(0);
            let found = probe_bytes(&image);
            let index = usize::from(sector_size == 4096);
            assert_eq!(found[index], GptFinding::Valid, "{sector_size}");
            assert_eq!(found[1 - index], GptFinding::Absent, "{sector_size}");
        }
    }

    #[test]
    fn a_header_failing_a_check_is_damaged_not_valid() {
        let primary = 512;
        type Corruption = fn(&mut [u8]);
        let corruptions: [(Corruption, HeaderDefect); 4] = [
            // A flipped bit anywhere in the header.
            (|h| h[60] ^= 1, HeaderDefect::Crc),
            (
                |h| {
                    h[12..16].copy_from_slice(&91u32.to_le_bytes());
                    reseal(h);
                },
                HeaderDefect::Size(91),
            ),
            (
                |h| {
                    h[12..16].copy_from_slice(&513u32.to_le_bytes());
                },
                HeaderDefect::Size(513),
            ),
            (
                |h| {
                    h[24..32].copy_from_slice(&2u64.to_le_bytes());
                    reseal(h);
                },
                HeaderDefect::OwnLba(2),
            ),
        ];
        for (corrupt, defect) in corruptions {
            let mut image = gpt_image(512, MIB);
            corrupt(&mut image[primary..2 * primary]);
            // The backup's CRC broken too, else it would rescue the table.
            image[MIB - 512 + 60] ^= 1;
            assert_eq!(
                probe_bytes(&image),
                [GptFinding::Damaged(defect), GptFinding::Absent]
            );
        }
    }

    #[test]
    fn a_stray_signature_is_not_a_gpt() {
        let mut image = vec![0u8; MIB];
        image[4096..4104].copy_from_slice(SIGNATURE);
        image[512..520].copy_from_slice(SIGNATURE);
        image[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
        let [at_512, at_4096] = probe_bytes(&image);
        assert_eq!(at_512, GptFinding::Damaged(HeaderDefect::Crc));
        assert_eq!(at_4096, GptFinding::Damaged(HeaderDefect::Size(0)));
    }

    #[test]
    fn a_backup_header_must_name_the_last_lba() {
        // A 4Kn image cut to end 512 bytes into its backup header's sector:
        // probed for 512-byte sectors, that header sits in the last LBA
        // (2040) but names the 4Kn last LBA (255) as its own.
        let image = gpt_image(4096, MIB);
        let cut = &image[..MIB - 3584];
        assert_eq!(probe_bytes(cut), [GptFinding::Absent, GptFinding::Valid]);
    }

    #[test]
    fn short_and_truncated_images_do_not_break_the_probe() {
        let whole = gpt_image(4096, 64 << 10);
        for len in [0, 1, 511, 512, 519, 520, 540, 4096, 4104, 4120, 4200, 8191] {
            let found = probe_bytes(&whole[..len]);
            let expected = match len {
                // The signature, but not all of the 92-byte header.
                4104..=4187 => GptFinding::Damaged(HeaderDefect::Truncated),
                4188.. => GptFinding::Valid,
                _ => GptFinding::Absent,
            };
            assert_eq!(found, [GptFinding::Absent, expected], "{len} bytes");
        }
        let whole = gpt_image(512, 64 << 10);
        for len in [512, 519, 520, 600, 604, 1023] {
            let expected = match len {
                520..=603 => GptFinding::Damaged(HeaderDefect::Truncated),
                604.. => GptFinding::Valid,
                _ => GptFinding::Absent,
            };
            assert_eq!(probe_bytes(&whole[..len])[0], expected, "{len} bytes");
        }
    }

    /// The fdisk binary, or `None` (with a message) when it is absent.
    /// fdisk rather than sfdisk: util-linux 2.38's sfdisk has no
    /// `--sector-size`.
    fn fdisk() -> Option<Command> {
        if Command::new("fdisk").arg("--version").output().is_err() {
            println!("SKIPPED: fdisk not installed (apt-get install fdisk)");
            return None;
        }
        Some(Command::new("fdisk"))
    }

    /// A 4 MiB image with a GPT and one partition, written by fdisk for
    /// `sector_size`-byte sectors; `None` without fdisk.
    pub(crate) fn fdisk_image(name: &str, sector_size: u32) -> Option<ScratchPath> {
        use std::io::Write;
        let mut command = fdisk()?;
        let path = scratch_path(name);
        std::fs::write(&path, vec![0u8; 4 * MIB]).unwrap();
        let mut child = command
            .arg("-b")
            .arg(sector_size.to_string())
            .arg(&*path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // New GPT label, one partition with the defaults, write.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"g\nn\n\n\n\nw\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(path)
    }

    #[test]
    fn finds_the_gpt_fdisk_writes_for_either_sector_size() {
        use GptFinding::{Absent, Valid};
        let (Some(small), Some(large)) = (
            fdisk_image("fdisk512.img", 512),
            fdisk_image("fdisk4096.img", 4096),
        ) else {
            return;
        };
        assert_eq!(probe_file(&small), [Valid, Absent]);
        assert_eq!(probe_file(&large), [Absent, Valid]);
    }
}
