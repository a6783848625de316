//! securevm's own LUKS2 header reader, which runs on every image before
//! libcryptsetup does, including images on USB sticks someone hands the
//! user. The image is built in a memfd from the input; optionally the
//! target fixes the SHA-256 checksums up afterwards, since a fuzzer
//! cannot forge them and would otherwise never get past them.
//!
//! Invariants, beyond "no panic":
//! - metadata is returned only from a copy with the right magic, version
//!   2, an allowed header size, its own offset recorded in it and a
//!   matching checksum over the binary header and JSON area;
//! - "not LUKS" only when the image has no primary LUKS signature;
//! - the version reported for an image with a primary signature is the
//!   version word that follows it;
//! - the pure entry point on bytes (`check_header_bytes`, which also
//!   walks LUKS1 headers) accepts a LUKS2 image exactly when the reader
//!   on the file does.
//!
//! Input: [flags u8][image size in 4 KiB units - 1, u8] then records
//! [offset u32][length u16][bytes] written into the zeroed image. Flags:
//! bit 0 fix the primary's checksum, bit 1 the secondary's (at the
//! offset the primary's header size names), bit 2 every secondary
//! candidate offset's.

#![no_main]
// Harness code narrows small known values; a wrong one fails the run.
#![allow(clippy::cast_possible_truncation)]

#[path = "common/input.rs"]
mod input;

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;

use libfuzzer_sys::fuzz_target;
use openssl::sha::Sha256;
use securevm::storage::header::{
    check_header_bytes, luks_version, read_luks2, CheckedHeader, HeaderCopy, HeaderError,
    BINARY_HEADER_LEN,
};

use input::Input;

const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
const CHECKSUM: std::ops::Range<usize> = 448..512;
const ALLOWED_HEADER_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
const BINARY_LEN: usize = BINARY_HEADER_LEN as usize;

fn be_u64(image: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        image.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// SHA-256 of the copy at `offset` as LUKS2 defines it, if the image
/// holds all of it.
fn copy_checksum(image: &[u8], offset: usize) -> Option<[u8; 32]> {
    let header_size = be_u64(image, offset.checked_add(8)?)?;
    if !ALLOWED_HEADER_SIZES.contains(&header_size) {
        return None;
    }
    let binary = image.get(offset..offset.checked_add(BINARY_LEN)?)?;
    let json = image.get(offset + BINARY_LEN..offset + header_size as usize)?;
    let mut hasher = Sha256::new();
    hasher.update(&binary[..CHECKSUM.start]);
    hasher.update(&[0u8; 64]);
    hasher.update(&binary[CHECKSUM.end..]);
    hasher.update(json);
    Some(hasher.finish())
}

fn fix_checksum(image: &mut [u8], offset: usize) {
    if let Some(sum) = copy_checksum(image, offset) {
        image[offset + CHECKSUM.start..offset + CHECKSUM.end].fill(0);
        image[offset + CHECKSUM.start..offset + CHECKSUM.start + 32].copy_from_slice(&sum);
    }
}

fn memfd(image: &[u8]) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the
    // descriptor it returns is ours alone and is owned by the File.
    let fd = unsafe { libc::memfd_create(c"luks2-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(image).expect("memfd write");
    file
}

/// The offset of the copy `read_luks2` returned: where its magic,
/// sequence number and recorded offset are.
fn copy_offset(image: &[u8], copy: HeaderCopy, seqid: u64) -> usize {
    match copy {
        HeaderCopy::Primary => 0,
        HeaderCopy::Secondary => ALLOWED_HEADER_SIZES
            .iter()
            .map(|&size| size as usize)
            .find(|&at| {
                image.get(at..at + 6) == Some(&MAGIC_SECONDARY[..])
                    && be_u64(image, at + 16) == Some(seqid)
                    && be_u64(image, at + 256) == Some(at as u64)
            })
            .expect("secondary copy returned with no secondary header in the image"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let image_len = (usize::from(input.u8()) + 1) * 4096;
    let mut image = vec![0u8; image_len];
    while !input.is_empty() {
        let offset = input.u32() as usize % image_len;
        let len = usize::from(input.u16());
        let bytes = input.bytes(len);
        let end = (offset + bytes.len()).min(image_len);
        image[offset..end].copy_from_slice(&bytes[..end - offset]);
    }
    if flags & 1 != 0 {
        fix_checksum(&mut image, 0);
    }
    if flags & 2 != 0 {
        if let Some(at) = be_u64(&image, 8).and_then(|size| usize::try_from(size).ok()) {
            fix_checksum(&mut image, at);
        }
    }
    if flags & 4 != 0 {
        for size in ALLOWED_HEADER_SIZES {
            fix_checksum(&mut image, size as usize);
        }
    }
    let has_primary_magic = image[..6] == MAGIC_PRIMARY[..];
    let file = memfd(&image);

    let from_bytes = check_header_bytes(&image);
    let from_file = read_luks2(&file);
    if !matches!(from_bytes, Ok(CheckedHeader::Luks1(_))) && luks_version(&file).ok() != Some(1) {
        assert_eq!(
            from_bytes.is_ok(),
            from_file.is_ok(),
            "the bytes and the file entry points disagree"
        );
    }
    match from_file {
        Ok(metadata) => {
            assert!(
                ALLOWED_HEADER_SIZES.contains(&metadata.header_size),
                "header size {}",
                metadata.header_size
            );
            let at = copy_offset(&image, metadata.copy, metadata.seqid);
            let magic = if metadata.copy == HeaderCopy::Primary {
                MAGIC_PRIMARY
            } else {
                MAGIC_SECONDARY
            };
            assert_eq!(&image[at..at + 6], magic, "returned copy without its magic");
            assert_eq!(
                image[at + 6..at + 8],
                [0, 2],
                "returned copy is not version 2"
            );
            assert_eq!(
                be_u64(&image, at + 8),
                Some(metadata.header_size),
                "header size not the copy's own"
            );
            assert_eq!(
                be_u64(&image, at + 256),
                Some(at as u64),
                "copy found away from its recorded offset"
            );
            let sum = copy_checksum(&image, at).expect("returned copy lies inside the image");
            assert_eq!(
                image[at + CHECKSUM.start..at + CHECKSUM.start + 32],
                sum,
                "checksum mismatch accepted"
            );
            if let Some((damaged, _)) = &metadata.damaged_copy {
                assert_ne!(
                    *damaged, metadata.copy,
                    "the returned copy reported as damaged"
                );
            }
        }
        Err(HeaderError::NotLuks) => assert!(
            !has_primary_magic,
            "an image with a LUKS signature called not LUKS"
        ),
        Err(_) => {}
    }
    if let Ok(version) = luks_version(&file) {
        if has_primary_magic {
            assert_eq!(
                version,
                u16::from_be_bytes([image[6], image[7]]),
                "version word misread"
            );
        }
    }
});
