//! LUKS volumes on image files through libcryptsetup: format, unlock
//! (volume key only; no device-mapper), add and remove keyslots, and a
//! secret-free description. libcryptsetup is the reference
//! implementation of the format, so headers, keyslots, the anti-forensic
//! splitter, Argon2 and the atomic two-copy header update are its job; it
//! runs in the `securevm-luks` helper process ([`super::luks_helper`]),
//! never in the VMM. We check the metadata ourselves first (see
//! [`super::header`]) so that hostile images are refused before any key
//! derivation runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::StorageError;
use super::header::{self, HeaderCopy, Keyslot, Luks2Metadata};
use super::luks_helper::{self, LuksVersion, Pbkdf, PbkdfKind, Reply, Request, Shown};
use super::secret::SecretBuf;
use crate::narrow::{const_narrow, usize_from_u64};

/// Where the data segment starts on volumes we create, as cryptsetup does.
pub const DEFAULT_DATA_OFFSET: u64 = 16 << 20;
/// The only data cipher securevm serves.
pub const SUPPORTED_CIPHER: &str = "aes-xts-plain64";
/// The most Argon2 memory a keyslot may ask for: cryptsetup's own ceiling
/// for the keyslots it creates (1 GiB). Larger costs are refused before
/// any allocation, as is any cost above the host's available memory.
pub const MAX_KDF_MEMORY_KIB: u64 = 1 << 20;
const VOLUME_KEY_BYTES: usize = 64;

/// How keyslot passphrases are stretched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfSettings {
    /// Argon2id, benchmarked by libcryptsetup to about 2 s with at most
    /// 1 GiB of memory: cryptsetup's defaults.
    Benchmarked,
    /// Argon2id with exactly these costs (no benchmark).
    Fixed {
        memory_kib: u32,
        time_cost: u32,
        parallel: u32,
    },
}

impl KdfSettings {
    /// Whether these costs are below what protects a human passphrase
    /// (256 MiB, 3 passes); callers say so to the user.
    pub fn is_weak(&self) -> bool {
        match *self {
            KdfSettings::Benchmarked => false,
            KdfSettings::Fixed {
                memory_kib,
                time_cost,
                ..
            } => memory_kib < 256 * 1024 || time_cost < 3,
        }
    }

    fn pbkdf(&self) -> Pbkdf {
        let (iterations, max_memory_kib, parallel_threads, benchmark) = match *self {
            KdfSettings::Benchmarked => (0, const_narrow!(MAX_KDF_MEMORY_KIB => u32), 4, true),
            KdfSettings::Fixed {
                memory_kib,
                time_cost,
                parallel,
            } => (time_cost, memory_kib, parallel, false),
        };
        Pbkdf {
            kind: PbkdfKind::Argon2id,
            hash: "sha256".to_string(),
            time_ms: 2000,
            iterations,
            max_memory_kib,
            parallel_threads,
            benchmark,
        }
    }
}

/// How `format` lays out a new volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatOptions {
    /// Encryption sector size: 4096 (default) or 512.
    pub sector_size: u32,
    pub kdf: KdfSettings,
    /// Replace an existing file at the output path.
    pub force: bool,
}

impl Default for FormatOptions {
    fn default() -> Self {
        Self {
            sector_size: 4096,
            kdf: KdfSettings::Benchmarked,
            force: false,
        }
    }
}

/// Where the plaintext disk lives inside the image and how it is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeLayout {
    /// 1 or 2.
    pub luks_version: u16,
    /// Byte offset of the data segment in the file.
    pub data_offset: u64,
    /// Guest-visible size in bytes (a multiple of `sector_size`).
    pub capacity: u64,
    pub sector_size: u32,
    /// IV of the segment's first 512-byte sector.
    pub iv_tweak: u64,
}

/// An opened volume: its key (locked, zeroized memory) and layout.
#[derive(Debug)]
pub struct UnlockedVolume {
    pub key: SecretBuf,
    pub layout: VolumeLayout,
    /// The keyslot the passphrase opened.
    pub keyslot: u32,
}

/// Create a LUKS2 volume at `path` with a `data_size`-byte data segment,
/// a fresh random 512-bit volume key and one keyslot for `passphrase`.
pub fn format(
    path: &Path,
    data_size: u64,
    options: &FormatOptions,
    passphrase: &[u8],
) -> Result<(), StorageError> {
    if options.sector_size != 512 && options.sector_size != 4096 {
        return Err(StorageError::InvalidOption(format!(
            "sector size {} is not supported; use 512 or 4096",
            options.sector_size
        )));
    }
    if data_size == 0 || !data_size.is_multiple_of(u64::from(options.sector_size)) {
        return Err(StorageError::InvalidOption(format!(
            "disk size {data_size} is not a positive multiple of the {}-byte sector size",
            options.sector_size
        )));
    }
    let mut open = OpenOptions::new();
    open.write(true).mode(0o600);
    if options.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let file = open.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            StorageError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            StorageError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    file.set_len(DEFAULT_DATA_OFFSET + data_size)
        .map_err(StorageError::io(path))?;
    drop(file);
    let result = format_file(path, options, passphrase);
    if result.is_err() {
        // A half-formatted file would look like a volume; leave nothing.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Format an existing file or block device at `path` in place (a blank
/// external medium): the data segment fills everything after the
/// headers. Whatever was on the medium is lost.
pub fn format_in_place(
    path: &Path,
    options: &FormatOptions,
    passphrase: &[u8],
) -> Result<(), StorageError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StorageError::io(path))?;
    let len = io::Seek::seek(&mut file, io::SeekFrom::End(0)).map_err(StorageError::io(path))?;
    if len < DEFAULT_DATA_OFFSET + (1 << 20) {
        return Err(StorageError::InvalidOption(format!(
            "{} is {len} bytes; an encrypted medium needs at least 17 MiB",
            path.display()
        )));
    }
    drop(file);
    format_file(path, options, passphrase)
}

fn format_file(
    path: &Path,
    options: &FormatOptions,
    passphrase: &[u8],
) -> Result<(), StorageError> {
    let request = Request::Format {
        path: path.to_path_buf(),
        sector_size: options.sector_size,
        data_offset: DEFAULT_DATA_OFFSET,
        key_bytes: VOLUME_KEY_BYTES,
        pbkdf: options.kdf.pbkdf(),
    };
    expect_done(path, "format the volume", &request, &[passphrase])
}

/// Whether `path` starts with a LUKS header (either version, or a LUKS2
/// image whose primary header is damaged but whose secondary survives).
/// Size of an image file or a block device (whose metadata says 0).
pub(crate) fn medium_len(file: &File) -> io::Result<u64> {
    let mut handle = file;
    handle.seek(SeekFrom::End(0))
}

pub fn is_luks(path: &Path) -> Result<bool, StorageError> {
    let file = File::open(path).map_err(StorageError::io(path))?;
    match header::luks_version(&file) {
        Ok(_) => Ok(true),
        Err(header::HeaderError::NotLuks) => Ok(false),
        Err(header::HeaderError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(StorageError::Header {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Open the volume key of the LUKS2 (or LUKS1) image at `path` with
/// `passphrase`.
pub fn unlock(path: &Path, passphrase: &[u8]) -> Result<UnlockedVolume, StorageError> {
    unlock_with(path, passphrase, None)
}

/// Like [`unlock`], trying only the LUKS2 keyslots in `only` (a user's
/// own slots), so that the other slots' Argon2 costs are not paid.
pub fn unlock_keyslots(
    path: &Path,
    passphrase: &[u8],
    only: &[u32],
) -> Result<UnlockedVolume, StorageError> {
    unlock_with(path, passphrase, Some(only))
}

fn unlock_with(
    path: &Path,
    passphrase: &[u8],
    only: Option<&[u32]>,
) -> Result<UnlockedVolume, StorageError> {
    let file = File::open(path).map_err(StorageError::io(path))?;
    let version = header::luks_version(&file).map_err(header_error(path))?;
    if version == 1 {
        return unlock_luks1(path, &file, passphrase);
    }
    let metadata = read_checked_metadata(path, &file)?;
    let layout = layout_of(path, &file, &metadata)?;
    let (candidates, refusal) = usable_keyslots(path, &metadata.keyslots);
    let wanted = |slot: &&&Keyslot| only.is_none_or(|only| only.contains(&slot.id));
    // One deadline for all the keyslots tried, not one each: a header
    // with many costly keyslots is refused as soon as one is.
    let until = Instant::now() + unlock_deadline();
    for slot in candidates.iter().filter(wanted) {
        let opened = volume_key(
            path,
            LuksVersion::Luks2,
            Some(slot.id),
            usize_from_u64(slot.key_size),
            passphrase,
            until,
        )?;
        if let Some((key, _)) = opened {
            return Ok(UnlockedVolume {
                key,
                layout,
                keyslot: slot.id,
            });
        }
    }
    Err(refusal.unwrap_or_else(|| StorageError::WrongPassphrase {
        path: path.to_path_buf(),
    }))
}

/// Add a keyslot for `new_passphrase`, authorised by `passphrase`.
/// Returns the new slot number.
pub fn add_key(
    path: &Path,
    passphrase: &[u8],
    new_passphrase: &[u8],
    kdf: &KdfSettings,
) -> Result<u32, StorageError> {
    let unlocked = unlock(path, passphrase)?;
    add_keyslot(path, &unlocked, new_passphrase, kdf.pbkdf())
}

/// Add a keyslot for `new_passphrase` to the volume `unlocked` opened,
/// its passphrase stretched as `pbkdf` says. Returns the slot number.
pub(crate) fn add_keyslot(
    path: &Path,
    unlocked: &UnlockedVolume,
    new_passphrase: &[u8],
    pbkdf: Pbkdf,
) -> Result<u32, StorageError> {
    let request = Request::AddKeyslot {
        path: path.to_path_buf(),
        version: version_of(unlocked),
        pbkdf,
    };
    const OPERATION: &str = "add a keyslot";
    match call(
        path,
        OPERATION,
        &request,
        &[unlocked.key.as_bytes(), new_passphrase],
    )? {
        (Reply::Number(slot), _) => Ok(slot),
        (other, _) => Err(unexpected(path, OPERATION, other)),
    }
}

/// Remove a keyslot. With `slot` unset, the slot `passphrase` opens is
/// removed; with `slot` set, `passphrase` (of any slot) authorises
/// removing that one. The last remaining slot is kept unless `force`.
/// Returns the removed slot number.
pub fn remove_key(
    path: &Path,
    passphrase: &[u8],
    slot: Option<u32>,
    force: bool,
) -> Result<u32, StorageError> {
    let unlocked = unlock(path, passphrase)?;
    let version = version_of(&unlocked);
    let target = slot.unwrap_or(unlocked.keyslot);
    let active = active_keyslots(path, version)?;
    if !active.contains(&target) {
        return Err(StorageError::NoSuchKeyslot {
            path: path.to_path_buf(),
            slot: target,
        });
    }
    if active.len() == 1 && !force {
        return Err(StorageError::LastKeyslot {
            path: path.to_path_buf(),
            slot: target,
        });
    }
    destroy_keyslot(path, version, target)?;
    Ok(target)
}

/// Wipe keyslot `slot`.
pub(crate) fn destroy_keyslot(
    path: &Path,
    version: LuksVersion,
    slot: u32,
) -> Result<(), StorageError> {
    let request = Request::DestroyKeyslot {
        path: path.to_path_buf(),
        version,
        slot,
    };
    expect_done(path, "remove the keyslot", &request, &[])
}

/// LUKS2 tokens (JSON objects in the header) with their numbers; none
/// for LUKS1 images, which have no tokens.
pub fn tokens(path: &Path) -> Result<Vec<(u32, serde_json::Value)>, StorageError> {
    let file = File::open(path).map_err(StorageError::io(path))?;
    if header::luks_version(&file).map_err(header_error(path))? == 1 {
        return Ok(Vec::new());
    }
    const OPERATION: &str = "read the tokens";
    let request = Request::Tokens {
        path: path.to_path_buf(),
    };
    match call(path, OPERATION, &request, &[])? {
        (Reply::Tokens(found), _) => Ok(found),
        (other, _) => Err(unexpected(path, OPERATION, other)),
    }
}

/// Stores `json` (an object with `type` and `keyslots`) as a new LUKS2
/// token; returns its number.
pub fn add_token(path: &Path, json: &serde_json::Value) -> Result<u32, StorageError> {
    const OPERATION: &str = "add a token";
    let request = Request::AddToken {
        path: path.to_path_buf(),
        json: json.clone(),
    };
    match call(path, OPERATION, &request, &[])? {
        (Reply::Number(token), _) => Ok(token),
        (other, _) => Err(unexpected(path, OPERATION, other)),
    }
}

/// Removes LUKS2 token `token`.
pub fn remove_token(path: &Path, token: u32) -> Result<(), StorageError> {
    let request = Request::RemoveToken {
        path: path.to_path_buf(),
        token,
    };
    expect_done(path, "remove a token", &request, &[])
}

/// Keyslot numbers in use.
fn active_keyslots(path: &Path, version: LuksVersion) -> Result<Vec<u32>, StorageError> {
    const OPERATION: &str = "list the keyslots";
    let request = Request::ActiveKeyslots {
        path: path.to_path_buf(),
        version,
    };
    match call(path, OPERATION, &request, &[])? {
        (Reply::Numbers(active), _) => Ok(active),
        (other, _) => Err(unexpected(path, OPERATION, other)),
    }
}

fn version_of(unlocked: &UnlockedVolume) -> LuksVersion {
    if unlocked.layout.luks_version == 1 {
        LuksVersion::Luks1
    } else {
        LuksVersion::Luks2
    }
}

/// LUKS2 metadata with its damage reported and its shape checked.
pub(crate) fn read_checked_metadata(
    path: &Path,
    file: &File,
) -> Result<Luks2Metadata, StorageError> {
    let metadata = header::read_luks2(file).map_err(header_error(path))?;
    if let Some((copy, damage)) = &metadata.damaged_copy {
        let (bad, used) = match copy {
            HeaderCopy::Primary => ("primary", "secondary"),
            HeaderCopy::Secondary => ("secondary", "primary"),
        };
        log::warn!(
            "{}: the {bad} LUKS2 header is damaged ({damage}); using the {used} copy. \
             `securevm disk add-key` or `cryptsetup repair` rewrites both copies",
            path.display()
        );
    }
    Ok(metadata)
}

fn layout_of(
    path: &Path,
    file: &File,
    metadata: &Luks2Metadata,
) -> Result<VolumeLayout, StorageError> {
    let unsupported = |reason: String| StorageError::UnsupportedLayout {
        path: path.to_path_buf(),
        reason,
    };
    let [segment] = metadata.segments.as_slice() else {
        return Err(unsupported(format!(
            "{} data segments (a reencryption in progress?); finish it with cryptsetup first",
            metadata.segments.len()
        )));
    };
    if segment.encryption != SUPPORTED_CIPHER {
        return Err(StorageError::UnsupportedCipher {
            path: path.to_path_buf(),
            cipher: segment.encryption.clone(),
        });
    }
    if segment.sector_size != 512 && segment.sector_size != 4096 {
        return Err(unsupported(format!(
            "encryption sector size {} (512 and 4096 are supported)",
            segment.sector_size
        )));
    }
    if segment.offset < 2 * metadata.header_size || segment.offset % 512 != 0 {
        return Err(unsupported(format!(
            "data segment offset {} overlaps the headers or is unaligned",
            segment.offset
        )));
    }
    let file_len = medium_len(file).map_err(StorageError::io(path))?;
    let sector = u64::from(segment.sector_size);
    let capacity = match segment.size {
        Some(size) => {
            let end = segment.offset.saturating_add(size);
            if end > file_len {
                return Err(StorageError::SegmentBeyondEnd {
                    path: path.to_path_buf(),
                    segment_end: end,
                    file_len,
                });
            }
            if !size.is_multiple_of(sector) {
                return Err(unsupported(format!(
                    "segment size {size} is not a multiple of its sector size {sector}"
                )));
            }
            size
        }
        None => {
            if file_len < segment.offset.saturating_add(sector) {
                return Err(StorageError::SegmentBeyondEnd {
                    path: path.to_path_buf(),
                    segment_end: segment.offset.saturating_add(sector),
                    file_len,
                });
            }
            (file_len - segment.offset) / sector * sector
        }
    };
    Ok(VolumeLayout {
        luks_version: 2,
        data_offset: segment.offset,
        capacity,
        sector_size: segment.sector_size,
        iv_tweak: segment.iv_tweak,
    })
}

/// The keyslots we are willing to try, and the reason to give when none
/// of them opens and some were refused.
fn usable_keyslots<'a>(
    path: &Path,
    keyslots: &'a [Keyslot],
) -> (Vec<&'a Keyslot>, Option<StorageError>) {
    let limit_kib = kdf_memory_limit_kib();
    let mut usable = Vec::new();
    let mut refusal = None;
    for slot in keyslots {
        let reason = if !matches!(slot.kdf.kind.as_str(), "argon2id" | "argon2i" | "pbkdf2") {
            Some(StorageError::UnsupportedKdf {
                path: path.to_path_buf(),
                slot: slot.id,
                kdf: slot.kdf.kind.clone(),
            })
        } else if slot.kdf.memory_kib > limit_kib {
            Some(StorageError::KdfMemoryTooLarge {
                path: path.to_path_buf(),
                slot: slot.id,
                memory_kib: slot.kdf.memory_kib,
                limit_kib,
            })
        } else if slot.key_size == 0 || slot.key_size > 128 {
            Some(StorageError::UnsupportedLayout {
                path: path.to_path_buf(),
                reason: format!("keyslot {} has a {}-byte key", slot.id, slot.key_size),
            })
        } else {
            None
        };
        match reason {
            Some(reason) => {
                log::warn!("skipping a keyslot: {reason}");
                refusal.get_or_insert(reason);
            }
            None => usable.push(slot),
        }
    }
    (usable, refusal)
}

/// [`MAX_KDF_MEMORY_KIB`], lowered to the host's available memory.
fn kdf_memory_limit_kib() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        });
    available.map_or(MAX_KDF_MEMORY_KIB, |kib| kib.min(MAX_KDF_MEMORY_KIB))
}

fn unlock_luks1(
    path: &Path,
    file: &File,
    passphrase: &[u8],
) -> Result<UnlockedVolume, StorageError> {
    // libcryptsetup reads the header too; this is only for its costs.
    header::read_luks1(file).map_err(header_error(path))?;
    const OPERATION: &str = "read the LUKS1 header";
    let request = Request::Luks1Info {
        path: path.to_path_buf(),
    };
    let (cipher, data_offset, key_size) = match call(path, OPERATION, &request, &[])? {
        (
            Reply::Luks1 {
                cipher,
                data_offset,
                key_size,
            },
            _,
        ) => (cipher, data_offset, key_size),
        (other, _) => return Err(unexpected(path, OPERATION, other)),
    };
    if cipher != SUPPORTED_CIPHER {
        return Err(StorageError::UnsupportedCipher {
            path: path.to_path_buf(),
            cipher,
        });
    }
    let file_len = medium_len(file).map_err(StorageError::io(path))?;
    if file_len < data_offset.saturating_add(512) {
        return Err(StorageError::SegmentBeyondEnd {
            path: path.to_path_buf(),
            segment_end: data_offset.saturating_add(512),
            file_len,
        });
    }
    let until = Instant::now() + unlock_deadline();
    let Some((key, slot)) =
        volume_key(path, LuksVersion::Luks1, None, key_size, passphrase, until)?
    else {
        return Err(StorageError::WrongPassphrase {
            path: path.to_path_buf(),
        });
    };
    Ok(UnlockedVolume {
        key,
        layout: VolumeLayout {
            luks_version: 1,
            data_offset,
            capacity: (file_len - data_offset) / 512 * 512,
            sector_size: 512,
            iv_tweak: 0,
        },
        keyslot: slot,
    })
}

/// How long an unlock may take in all.
fn unlock_deadline() -> Duration {
    luks_helper::kdf_deadline()
}

/// The volume key through `slot` (any when unset) and the slot that
/// opened, or `None` when `passphrase` opens no slot tried. Fails when
/// `until` passes first.
fn volume_key(
    path: &Path,
    version: LuksVersion,
    slot: Option<u32>,
    key_size: usize,
    passphrase: &[u8],
    until: Instant,
) -> Result<Option<(SecretBuf, u32)>, StorageError> {
    const OPERATION: &str = "open a keyslot";
    let request = Request::VolumeKey {
        path: path.to_path_buf(),
        version,
        slot,
        key_size,
    };
    // Out of time is reported against the whole unlock's deadline.
    let timed_out = || StorageError::TimedOut {
        path: path.to_path_buf(),
        operation: OPERATION,
        limit: Shown(unlock_deadline()).to_string(),
    };
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    let answer = match call_within(path, OPERATION, &request, &[passphrase], left) {
        Err(StorageError::TimedOut { .. }) => return Err(timed_out()),
        other => other?,
    };
    match answer {
        (Reply::Unlocked { slot }, Some(key)) => Ok(Some((key, slot))),
        (Reply::WrongKey, _) => Ok(None),
        (other, _) => Err(unexpected(path, OPERATION, other)),
    }
}

/// One helper call within the request's deadline; a `Failed` reply
/// becomes [`StorageError::Cryptsetup`] for `operation`.
fn call(
    path: &Path,
    operation: &'static str,
    request: &Request,
    secrets: &[&[u8]],
) -> Result<(Reply, Option<SecretBuf>), StorageError> {
    let deadline = luks_helper::deadline_for(request);
    call_within(path, operation, request, secrets, deadline)
}

/// [`call`] within `deadline`; running out of time is
/// [`StorageError::TimedOut`].
fn call_within(
    path: &Path,
    operation: &'static str,
    request: &Request,
    secrets: &[&[u8]],
    deadline: Duration,
) -> Result<(Reply, Option<SecretBuf>), StorageError> {
    let timed_out = |limit: Duration| StorageError::TimedOut {
        path: path.to_path_buf(),
        operation,
        limit: Shown(limit).to_string(),
    };
    match luks_helper::call(request, secrets, deadline) {
        Ok((Reply::Failed { errno, message }, _)) => Err(StorageError::Cryptsetup {
            path: path.to_path_buf(),
            operation,
            source: Reply::failure(errno, &message),
        }),
        Ok((Reply::TimedOut { deadline_ms }, _)) => {
            Err(timed_out(Duration::from_millis(deadline_ms)))
        }
        Ok(answer) => Ok(answer),
        Err(source) if source.kind() == io::ErrorKind::TimedOut => {
            Err(timed_out(deadline + luks_helper::HELPER_GRACE))
        }
        Err(source) => Err(StorageError::LuksHelper {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn expect_done(
    path: &Path,
    operation: &'static str,
    request: &Request,
    secrets: &[&[u8]],
) -> Result<(), StorageError> {
    match call(path, operation, request, secrets)? {
        (Reply::Done, _) => Ok(()),
        (other, _) => Err(unexpected(path, operation, other)),
    }
}

/// A reply that does not answer the request: a helper from another
/// version of securevm.
fn unexpected(path: &Path, operation: &'static str, reply: Reply) -> StorageError {
    StorageError::LuksHelper {
        path: path.to_path_buf(),
        source: io::Error::other(format!(
            "answered {reply:?} when asked to {operation}; install the securevm-luks built with this securevm"
        )),
    }
}

fn header_error(path: &Path) -> impl FnOnce(header::HeaderError) -> StorageError + '_ {
    move |source| StorageError::Header {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::header::test_support::{corrupt_copy, edit_json};
    use crate::storage::test_support::*;

    const MIB: u64 = 1 << 20;

    fn expect_err(result: Result<UnlockedVolume, StorageError>) -> StorageError {
        match result {
            Ok(_) => panic!("unlock unexpectedly succeeded"),
            Err(e) => e,
        }
    }

    #[test]
    fn format_then_unlock_yields_the_layout_and_a_512_bit_key() {
        let path = new_volume("fmt.img", 4 * MIB, 4096);
        let unlocked = unlock(&path, PASSPHRASE).unwrap();
        assert_eq!(unlocked.key.len(), 64);
        assert_eq!(unlocked.keyslot, 0);
        assert_eq!(
            unlocked.layout,
            VolumeLayout {
                luks_version: 2,
                data_offset: DEFAULT_DATA_OFFSET,
                capacity: 4 * MIB,
                sector_size: 4096,
                iv_tweak: 0,
            }
        );
        assert!(!format!("{unlocked:?}").contains(&format!("{:?}", unlocked.key.as_bytes())));
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let path = new_volume("exists.img", MIB, 4096);
        let mut options = FormatOptions {
            kdf: FAST_KDF,
            ..FormatOptions::default()
        };
        let err = format(&path, MIB, &options, b"other").unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
        assert!(unlock(&path, PASSPHRASE).is_ok());
        options.force = true;
        format(&path, MIB, &options, b"other").unwrap();
        assert!(unlock(&path, b"other").is_ok());
    }

    #[test]
    fn wrong_passphrase_is_refused() {
        let path = new_volume("wrong.img", MIB, 4096);
        let err = expect_err(unlock(&path, b"not the passphrase"));
        assert!(matches!(err, StorageError::WrongPassphrase { .. }), "{err}");
        assert!(!err.to_string().contains("not the passphrase"));
    }

    #[test]
    fn keys_are_added_and_removed() {
        let path = new_volume("keys.img", MIB, 4096);
        let slot = add_key(&path, PASSPHRASE, b"second", &FAST_KDF).unwrap();
        assert_eq!(slot, 1);
        let first = unlock(&path, PASSPHRASE).unwrap();
        let second = unlock(&path, b"second").unwrap();
        assert_eq!(first.key.as_bytes(), second.key.as_bytes());
        assert_eq!(second.keyslot, 1);

        assert_eq!(remove_key(&path, PASSPHRASE, None, false).unwrap(), 0);
        assert!(matches!(
            expect_err(unlock(&path, PASSPHRASE)),
            StorageError::WrongPassphrase { .. }
        ));
        let err = remove_key(&path, b"second", None, false).unwrap_err();
        assert!(
            matches!(err, StorageError::LastKeyslot { slot: 1, .. }),
            "{err}"
        );
        let err = remove_key(&path, b"second", Some(5), false).unwrap_err();
        assert!(
            matches!(err, StorageError::NoSuchKeyslot { slot: 5, .. }),
            "{err}"
        );
        assert!(unlock(&path, b"second").is_ok());
        assert_eq!(remove_key(&path, b"second", Some(1), true).unwrap(), 1);
        assert!(unlock(&path, b"second").is_err());
    }

    #[test]
    fn damaged_primary_header_falls_back_to_the_secondary() {
        let path = new_volume("primary.img", MIB, 4096);
        corrupt_copy(&path, 0);
        captured_warnings();
        let metadata = read_checked_metadata(&path, &File::open(&path).unwrap()).unwrap();
        assert_eq!(metadata.copy, HeaderCopy::Secondary);
        assert!(matches!(
            metadata.damaged_copy,
            Some((HeaderCopy::Primary, ref why)) if why.contains("checksum")
        ));
        let name = path.display().to_string();
        assert!(
            captured_warnings()
                .iter()
                .any(|w| w.contains(&name) && w.contains("primary LUKS2 header is damaged")),
            "no warning logged for {name}"
        );
        assert!(unlock(&path, PASSPHRASE).is_ok());
    }

    #[test]
    fn damaged_secondary_header_is_reported() {
        let path = new_volume("secondary.img", MIB, 4096);
        let header_size = read_checked_metadata(&path, &File::open(&path).unwrap())
            .unwrap()
            .header_size;
        corrupt_copy(&path, header_size);
        let metadata = read_checked_metadata(&path, &File::open(&path).unwrap()).unwrap();
        assert_eq!(metadata.copy, HeaderCopy::Primary);
        assert!(metadata.damaged_copy.is_some());
        assert!(unlock(&path, PASSPHRASE).is_ok());
    }

    #[test]
    fn both_headers_damaged_is_refused() {
        let path = new_volume("both.img", MIB, 4096);
        let header_size = read_checked_metadata(&path, &File::open(&path).unwrap())
            .unwrap()
            .header_size;
        corrupt_copy(&path, 0);
        corrupt_copy(&path, header_size);
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(
                err,
                StorageError::Header {
                    source: header::HeaderError::BothCorrupt { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_images_are_refused() {
        let path = new_volume("trunc.img", MIB, 4096);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(DEFAULT_DATA_OFFSET - 4096).unwrap();
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(err, StorageError::SegmentBeyondEnd { .. }),
            "{err}"
        );
        file.set_len(6000).unwrap();
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(matches!(err, StorageError::Header { .. }), "{err}");
        file.set_len(0).unwrap();
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(matches!(err, StorageError::Header { .. }), "{err}");
    }

    #[test]
    fn segment_beyond_end_of_file_is_refused() {
        let path = new_volume("beyond.img", MIB, 4096);
        edit_json(&path, |json| {
            json["segments"]["0"]["size"] = serde_json::json!((64 * MIB).to_string());
        });
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(err, StorageError::SegmentBeyondEnd { segment_end, .. } if segment_end == DEFAULT_DATA_OFFSET + 64 * MIB),
            "{err}"
        );
    }

    #[test]
    fn absurd_segment_offsets_are_refused_without_overflow() {
        let path = new_volume("offset.img", MIB, 4096);
        edit_json(&path, |json| {
            json["segments"]["0"]["offset"] = serde_json::json!((u64::MAX - 511).to_string());
        });
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(err, StorageError::SegmentBeyondEnd { .. }),
            "{err}"
        );
    }

    #[test]
    fn unsupported_kdf_is_refused() {
        let path = new_volume("kdf.img", MIB, 4096);
        edit_json(&path, |json| {
            json["keyslots"]["0"]["kdf"]["type"] = serde_json::json!("scrypt");
        });
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(err, StorageError::UnsupportedKdf { ref kdf, .. } if kdf == "scrypt"),
            "{err}"
        );
    }

    #[test]
    fn absurd_argon2_memory_cost_is_refused_before_derivation() {
        let path = new_volume("memory.img", MIB, 4096);
        // 4 GiB: the most the LUKS2 format allows, far above our limit.
        edit_json(&path, |json| {
            json["keyslots"]["0"]["kdf"]["memory"] = serde_json::json!(4_194_304u64);
        });
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(
                err,
                StorageError::KdfMemoryTooLarge {
                    memory_kib: 4_194_304,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unsupported_segment_cipher_is_refused() {
        let path = new_volume("cipher.img", MIB, 4096);
        edit_json(&path, |json| {
            json["segments"]["0"]["encryption"] = serde_json::json!("serpent-xts-plain64");
        });
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(err, StorageError::UnsupportedCipher { ref cipher, .. } if cipher == "serpent-xts-plain64"),
            "{err}"
        );
    }

    #[test]
    fn luks_images_are_recognised() {
        let volume = new_volume("is.img", MIB, 4096);
        assert!(is_luks(&volume).unwrap());
        let raw = scratch_path("is-raw.img");
        std::fs::write(&raw, vec![0u8; 1 << 16]).unwrap();
        assert!(!is_luks(&raw).unwrap());
        std::fs::write(&raw, b"short").unwrap();
        assert!(!is_luks(&raw).unwrap());
    }

    #[test]
    fn non_luks_files_are_refused() {
        let path = scratch_path("raw.img");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let err = expect_err(unlock(&path, PASSPHRASE));
        assert!(
            matches!(
                err,
                StorageError::Header {
                    source: header::HeaderError::NotLuks,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn cryptsetup_accepts_our_headers_and_passphrase() {
        let Some(mut dump) = cryptsetup() else { return };
        let path = new_volume("dump.img", 2 * MIB, 4096);
        let out = dump.arg("luksDump").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Version:       \t2"), "{text}");
        assert!(text.contains("cipher: aes-xts-plain64"), "{text}");
        assert!(text.contains("sector: 4096 [bytes]"), "{text}");
        assert!(text.contains("argon2id"), "{text}");
        assert!(text.contains("offset: 16777216 [bytes]"), "{text}");
        let key = key_file(&path, PASSPHRASE);
        let status = cryptsetup()
            .unwrap()
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&key)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn cryptsetup_recovers_the_same_volume_key_from_our_header() {
        let Some(mut command) = cryptsetup() else {
            return;
        };
        let path = new_volume("vk.img", MIB, 4096);
        let key = key_file(&path, PASSPHRASE);
        let out = command
            .args(["luksDump", "--dump-volume-key", "--key-file"])
            .arg(&key)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let dumped: String = text
            .split("MK dump:")
            .nth(1)
            .expect("no MK dump in cryptsetup output")
            .split_whitespace()
            .filter(|word| word.len() == 2 && word.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        let ours = unlock(&path, PASSPHRASE).unwrap();
        let ours_hex: String = ours
            .key
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(dumped, ours_hex);
    }

    fn cryptsetup_format(name: &str, extra: &[&str]) -> Option<ScratchPath> {
        let mut command = cryptsetup()?;
        let path = scratch_path(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(20 * MIB)
            .unwrap();
        let key = key_file(&path, PASSPHRASE);
        let out = command
            .arg("luksFormat")
            .args(extra)
            .args(["--key-file"])
            .arg(&key)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(path)
    }

    const FAST_CRYPTSETUP_KDF: [&str; 6] = [
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "1024",
        "--pbkdf-force-iterations",
        "4",
    ];

    #[test]
    fn cryptsetup_luks2_images_open() {
        let mut args = vec!["--type", "luks2", "--sector-size", "512"];
        args.extend(FAST_CRYPTSETUP_KDF);
        let Some(path) = cryptsetup_format("cs2.img", &args) else {
            return;
        };
        let unlocked = unlock(&path, PASSPHRASE).unwrap();
        assert_eq!(unlocked.layout.sector_size, 512);
        assert_eq!(unlocked.layout.capacity, 4 * MIB);
        assert_eq!(unlocked.key.len(), 64);
    }

    #[test]
    fn cryptsetup_luks1_images_open() {
        let args = ["--type", "luks1", "--pbkdf-force-iterations", "1000"];
        let Some(path) = cryptsetup_format("cs1.img", &args) else {
            return;
        };
        let unlocked = unlock(&path, PASSPHRASE).unwrap();
        assert_eq!(unlocked.layout.luks_version, 1);
        assert_eq!(unlocked.layout.sector_size, 512);
        assert_eq!(unlocked.key.len(), 64);
        assert!(unlock(&path, b"wrong").is_err());
    }

    #[test]
    fn cryptsetup_images_with_other_ciphers_are_refused() {
        for (name, cipher) in [
            ("cbc.img", "aes-cbc-essiv:sha256"),
            ("cbc-plain.img", "aes-cbc-plain64"),
        ] {
            let mut args = vec!["--type", "luks2", "--cipher", cipher];
            args.extend(FAST_CRYPTSETUP_KDF);
            let Some(path) = cryptsetup_format(name, &args) else {
                return;
            };
            let err = expect_err(unlock(&path, PASSPHRASE));
            assert!(
                matches!(err, StorageError::UnsupportedCipher { cipher: ref c, .. } if c == cipher),
                "{err}"
            );
        }
    }
}
