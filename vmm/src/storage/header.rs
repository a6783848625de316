//! Reading LUKS metadata ourselves, before libcryptsetup touches the
//! image: both LUKS2 binary headers with their SHA-256 checksums and the
//! JSON area, reduced to what the data path and `disk info` need, and the
//! LUKS1 header's key derivation costs. Doing this first lets us say which
//! header copy was damaged, refuse segments that point past the end of
//! the file and refuse key derivation costs that would exhaust the host's
//! memory or keep it busy for hours, all before any key derivation runs.
//!
//! [`check_header_bytes`] is the same check on the bytes of a medium's
//! start, free of I/O, for fuzzing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use openssl::sha::Sha256;
use serde_json::Value;

use crate::narrow::usize_from_u64;

/// Size of each binary header; the JSON area follows it.
pub const BINARY_HEADER_LEN: u64 = 4096;
const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
const CHECKSUM_OFFSET: usize = 448;
const CHECKSUM_LEN: usize = 64;
/// Header sizes (binary header plus JSON area) the LUKS2 spec allows.
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
/// How many bytes of a medium's start hold every header
/// [`check_header_bytes`] looks at: the secondary LUKS2 header sits at
/// the primary's size (at most 4 MiB) and is at most that long.
pub const HEADER_AREA_LEN: u64 = 8 << 20;
/// libcryptsetup's limits on the LUKS2 objects it keeps (keyslots are
/// numbered below this); a header with more is not one it wrote.
const MAX_LUKS2_OBJECTS: usize = 32;

// Key derivation costs. A hostile medium chooses them, and every unlock
// attempt pays them (a keyslot's KDF, then the digest's PBKDF2 to check
// the key it yields), so each is bounded before anything is derived. The
// bounds admit what cryptsetup's benchmark produces on a fast machine
// (about 2 s of work: Argon2id at 1 GiB with 4 to about 10 passes, more
// passes only when memory is scarce; PBKDF2-SHA256 up to about 20 million
// block computations with SHA extensions) with room for a longer
// `--iter-time`, and refuse what would take more than about a minute on
// a two-core laptop: there Argon2 fills about 1 GiB per pass per second
// and a core computes one to three million HMAC blocks per second.

/// Argon2 passes: cryptsetup only adds passes beyond its minimum of 4
/// once memory is at its ceiling, which puts it near 10 at 2 s; a tiny
/// memory cost with billions of passes would otherwise pass the work
/// bound below while taking hours of per-pass overhead.
pub const MAX_ARGON2_TIME_COST: u64 = 1000;
/// Argon2 memory in KiB: the LUKS2 format's and cryptsetup's ceiling
/// (4 GiB). What the host can spare is checked on top when unlocking.
pub const MAX_ARGON2_MEMORY_KIB: u64 = 4 << 20;
/// Argon2 work, passes times KiB: 64 GiB-passes, about a minute here.
pub const MAX_ARGON2_WORK_KIB_PASSES: u64 = 64 << 20;
/// Argon2 lanes (each a thread): cryptsetup creates at most 4 and
/// `securevm disk --kdf-parallel` at most 16.
pub const MAX_ARGON2_PARALLEL: u64 = 16;
/// PBKDF2 hashes whose cost we can bound: name, output bytes, and the
/// most HMAC block computations (iterations times output blocks) that
/// take about a minute on one slow core; a faster hash gets more.
const PBKDF2_HASHES: [(&str, u64, u64); 7] = [
    ("sha1", 20, 100_000_000),
    ("sha224", 28, 100_000_000),
    ("sha256", 32, 100_000_000),
    ("sha384", 48, 60_000_000),
    ("sha512", 64, 60_000_000),
    ("ripemd160", 20, 40_000_000),
    ("whirlpool", 64, 25_000_000),
];

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("cannot read the LUKS header: {0}")]
    Io(#[from] io::Error),
    #[error(
        "not a LUKS volume (no LUKS signature at the start); format it with `securevm disk create`"
    )]
    NotLuks,
    #[error("both LUKS2 header copies are damaged ({primary}; {secondary}); restore the image from a backup or a `cryptsetup luksHeaderBackup` file")]
    BothCorrupt { primary: String, secondary: String },
    #[error("LUKS2 metadata is malformed: {0}; the image is damaged or was not written by cryptsetup or securevm")]
    Malformed(String),
    #[error("{what} asks for {cost}, above the {limit} securevm allows (about a minute of work); the medium was refused before any key derivation")]
    KdfCost {
        /// "keyslot 3", "digest 0", "the master key digest".
        what: String,
        cost: String,
        limit: String,
    },
    #[error("{what} uses PBKDF2 with hash {hash:?}, whose cost securevm cannot bound; the medium was refused before any key derivation")]
    UnboundedKdfHash { what: String, hash: String },
}

/// Which header copy the metadata came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCopy {
    Primary,
    Secondary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    /// `None` for "dynamic": the segment runs to the end of the file.
    pub size: Option<u64>,
    pub iv_tweak: u64,
    pub encryption: String,
    pub sector_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kdf {
    pub kind: String,
    /// Argon2 time cost or PBKDF2 iterations.
    pub time_or_iterations: u64,
    /// Argon2 memory cost in KiB (0 for PBKDF2).
    pub memory_kib: u64,
    pub parallel: u64,
    /// PBKDF2 hash ("" for Argon2).
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyslot {
    pub id: u32,
    pub kind: String,
    pub key_size: u64,
    pub area_encryption: String,
    pub kdf: Kdf,
}

/// A LUKS2 digest: the PBKDF2 check of a volume key, run after every
/// keyslot that yields one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub id: String,
    pub kind: String,
    pub hash: String,
    pub iterations: u64,
    /// Length of the stored digest, which PBKDF2 computes.
    pub len: u64,
}

/// The LUKS2 metadata of one image, as read from its valid header copy.
#[derive(Debug, Clone)]
pub struct Luks2Metadata {
    pub copy: HeaderCopy,
    /// Set when the other copy is damaged, with what is wrong with it.
    pub damaged_copy: Option<(HeaderCopy, String)>,
    pub seqid: u64,
    pub header_size: u64,
    pub uuid: String,
    pub label: String,
    pub segments: Vec<Segment>,
    pub keyslots: Vec<Keyslot>,
    pub digests: Vec<Digest>,
}

/// What a LUKS1 header asks of key derivation: every keyslot and the
/// master key digest use PBKDF2 with one hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks1Metadata {
    pub hash: String,
    pub key_bytes: u64,
    pub digest_iterations: u64,
    /// (keyslot, PBKDF2 iterations) of the keyslots not marked disabled.
    pub keyslot_iterations: Vec<(u32, u64)>,
}

/// A checked header of either version.
#[derive(Debug, Clone)]
pub enum CheckedHeader {
    Luks1(Luks1Metadata),
    Luks2(Luks2Metadata),
}

/// Check the headers at the start of a medium, given as bytes (at least
/// the first [`HEADER_AREA_LEN`], or the whole medium if shorter): what
/// opening it checks before libcryptsetup sees it, structure and key
/// derivation costs alike. Pure, for fuzzing: no I/O, no panics, and
/// allocations bounded by the LUKS2 header sizes.
pub fn check_header_bytes(bytes: &[u8]) -> Result<CheckedHeader, HeaderError> {
    match version_of(bytes)? {
        1 => read_luks1_from(bytes).map(CheckedHeader::Luks1),
        _ => read_luks2_from(bytes).map(CheckedHeader::Luks2),
    }
}

/// Reads at absolute offsets: an open medium, or the bytes of one.
trait Medium {
    /// Fill `buf` from `offset`; a short medium is an UnexpectedEof.
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Medium for File {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl Medium for [u8] {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?));
        match range.and_then(|range| self.get(range)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// Version word of the image's first header: 1 for LUKS1, 2 for LUKS2.
/// Also true when only the secondary LUKS2 header survives.
pub fn luks_version(file: &File) -> Result<u16, HeaderError> {
    version_of(file)
}

fn version_of<M: Medium + ?Sized>(medium: &M) -> Result<u16, HeaderError> {
    let mut start = [0u8; 8];
    medium.fill_at(&mut start, 0)?;
    if &start[..6] == MAGIC_PRIMARY {
        return Ok(u16::from_be_bytes([start[6], start[7]]));
    }
    for offset in ALLOWED_HEADER_SIZES {
        if medium.fill_at(&mut start, offset).is_ok() && &start[..6] == MAGIC_SECONDARY {
            return Ok(2);
        }
    }
    Err(HeaderError::NotLuks)
}

/// Read and verify both LUKS2 header copies and return the newer valid
/// one, noting damage to the other. The key derivation costs of every
/// valid copy are checked: libcryptsetup may choose either.
pub fn read_luks2(file: &File) -> Result<Luks2Metadata, HeaderError> {
    read_luks2_from(file)
}

fn read_luks2_from<M: Medium + ?Sized>(medium: &M) -> Result<Luks2Metadata, HeaderError> {
    let primary = read_copy(medium, 0, HeaderCopy::Primary);
    let secondary_offset = match &primary {
        Ok(header) => Some(header.header_size),
        Err(_) => None,
    };
    let secondary = match secondary_offset {
        Some(offset) => read_copy(medium, offset, HeaderCopy::Secondary),
        None => find_secondary(medium),
    };
    for copy in [&primary, &secondary].into_iter().flatten() {
        check_luks2_costs(copy)?;
    }
    match (primary, secondary) {
        (Ok(primary), Ok(secondary)) => Ok(if secondary.seqid > primary.seqid {
            secondary
        } else {
            primary
        }),
        (Ok(mut primary), Err(damage)) => {
            primary.damaged_copy = Some((HeaderCopy::Secondary, damage));
            Ok(primary)
        }
        (Err(damage), Ok(mut secondary)) => {
            secondary.damaged_copy = Some((HeaderCopy::Primary, damage));
            Ok(secondary)
        }
        (Err(primary), Err(secondary)) => {
            if primary == NOT_LUKS2 && secondary == NOT_LUKS2 {
                Err(HeaderError::NotLuks)
            } else {
                Err(HeaderError::BothCorrupt { primary, secondary })
            }
        }
    }
}

const NOT_LUKS2: &str = "no LUKS2 signature";

fn find_secondary<M: Medium + ?Sized>(medium: &M) -> Result<Luks2Metadata, String> {
    let mut last = NOT_LUKS2.to_string();
    for offset in ALLOWED_HEADER_SIZES {
        match read_copy(medium, offset, HeaderCopy::Secondary) {
            Ok(header) => return Ok(header),
            Err(reason) if reason == NOT_LUKS2 => {}
            Err(reason) => last = reason,
        }
    }
    Err(last)
}

/// One header copy at `offset`; the error says what is wrong with it.
fn read_copy<M: Medium + ?Sized>(
    medium: &M,
    offset: u64,
    copy: HeaderCopy,
) -> Result<Luks2Metadata, String> {
    let mut binary = vec![0u8; usize_from_u64(BINARY_HEADER_LEN)];
    medium
        .fill_at(&mut binary, offset)
        .map_err(|e| format!("unreadable: {e}"))?;
    let magic = match copy {
        HeaderCopy::Primary => MAGIC_PRIMARY,
        HeaderCopy::Secondary => MAGIC_SECONDARY,
    };
    if &binary[..6] != magic {
        return Err(NOT_LUKS2.to_string());
    }
    let version = u16::from_be_bytes([binary[6], binary[7]]);
    if version != 2 {
        return Err(format!("version {version} where 2 was expected"));
    }
    let header_size = be_u64(&binary[8..16]);
    if !ALLOWED_HEADER_SIZES.contains(&header_size) {
        return Err(format!("invalid header size {header_size}"));
    }
    let seqid = be_u64(&binary[16..24]);
    if &binary[72..78] != b"sha256" || binary[78] != 0 {
        return Err("checksum algorithm is not sha256".to_string());
    }
    let header_offset = be_u64(&binary[256..264]);
    if header_offset != offset {
        return Err(format!(
            "header claims offset {header_offset}, found at {offset}"
        ));
    }
    // At most 4 MiB: header_size is one of ALLOWED_HEADER_SIZES.
    let mut json_area = vec![0u8; usize_from_u64(header_size - BINARY_HEADER_LEN)];
    medium
        .fill_at(&mut json_area, offset + BINARY_HEADER_LEN)
        .map_err(|e| format!("JSON area unreadable: {e}"))?;
    let stored: [u8; 32] = binary[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32]
        .try_into()
        .map_err(|_| "checksum field".to_string())?;
    if checksum(&binary, &json_area) != stored {
        return Err("checksum mismatch".to_string());
    }
    let json_len = json_area
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(json_area.len());
    let json: Value = serde_json::from_slice(&json_area[..json_len])
        .map_err(|e| format!("JSON metadata does not parse: {e}"))?;
    let (segments, keyslots, digests) = parse_json(&json)?;
    Ok(Luks2Metadata {
        copy,
        damaged_copy: None,
        seqid,
        header_size,
        uuid: c_string(&binary[168..208]),
        label: c_string(&binary[24..72]),
        segments,
        keyslots,
        digests,
    })
}

/// SHA-256 over the binary header (checksum field zeroed) and JSON area.
pub(crate) fn checksum(binary: &[u8], json_area: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(&binary[..CHECKSUM_OFFSET]);
    hasher.update(&[0u8; CHECKSUM_LEN]);
    hasher.update(&binary[CHECKSUM_OFFSET + CHECKSUM_LEN..]);
    hasher.update(json_area);
    hasher.finish()
}

type Objects = (Vec<Segment>, Vec<Keyslot>, Vec<Digest>);

fn parse_json(json: &Value) -> Result<Objects, String> {
    let segments = bounded_object(json, "segments")?
        .iter()
        .map(|(id, segment)| parse_segment(id, segment))
        .collect::<Result<Vec<_>, _>>()?;
    let keyslots = bounded_object(json, "keyslots")?
        .iter()
        .map(|(id, keyslot)| parse_keyslot(id, keyslot))
        .collect::<Result<Vec<_>, _>>()?;
    let digests = bounded_object(json, "digests")?
        .iter()
        .map(|(id, digest)| parse_digest(id, digest))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((segments, keyslots, digests))
}

/// A top-level object with no more entries than libcryptsetup keeps:
/// every keyslot is one more unlock attempt.
fn bounded_object<'a>(
    json: &'a Value,
    key: &str,
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let found = object(json, key)?;
    if found.len() > MAX_LUKS2_OBJECTS {
        return Err(format!(
            "{} {key}, more than the {MAX_LUKS2_OBJECTS} LUKS2 allows",
            found.len()
        ));
    }
    Ok(found)
}

fn parse_digest(id: &str, digest: &Value) -> Result<Digest, String> {
    let what = format!("digest {id}");
    let kind = text(digest, "type", &what)?.to_string();
    if kind != "pbkdf2" {
        return Err(format!("{what}: type {kind:?} (LUKS2 digests are pbkdf2)"));
    }
    let stored = text(digest, "digest", &what)?;
    Ok(Digest {
        id: id.to_string(),
        kind,
        hash: text(digest, "hash", &what)?.to_string(),
        iterations: integer(digest, "iterations", &what)?,
        len: base64_len(stored),
    })
}

/// How many bytes `text`, in base64, decodes to (padding excluded).
fn base64_len(text: &str) -> u64 {
    (text.trim_end_matches('=').len() as u64) * 3 / 4
}

fn parse_segment(id: &str, segment: &Value) -> Result<Segment, String> {
    let what = format!("segment {id}");
    let size = match text(segment, "size", &what)? {
        "dynamic" => None,
        size => Some(number_text(size, "size", &what)?),
    };
    let sector_size = integer(segment, "sector_size", &what)?;
    Ok(Segment {
        offset: number_text(text(segment, "offset", &what)?, "offset", &what)?,
        size,
        iv_tweak: number_text(text(segment, "iv_tweak", &what)?, "iv_tweak", &what)?,
        encryption: text(segment, "encryption", &what)?.to_string(),
        sector_size: u32::try_from(sector_size)
            .map_err(|_| format!("{what}: sector_size {sector_size} too large"))?,
    })
}

fn parse_keyslot(id: &str, keyslot: &Value) -> Result<Keyslot, String> {
    let what = format!("keyslot {id}");
    let kdf_value = keyslot
        .get("kdf")
        .ok_or_else(|| format!("{what}: no kdf"))?;
    let kind = text(kdf_value, "type", &what)?.to_string();
    let kdf = if kind == "pbkdf2" {
        Kdf {
            time_or_iterations: integer(kdf_value, "iterations", &what)?,
            memory_kib: 0,
            parallel: 1,
            hash: text(kdf_value, "hash", &what)?.to_string(),
            kind,
        }
    } else {
        Kdf {
            time_or_iterations: integer(kdf_value, "time", &what)?,
            memory_kib: integer(kdf_value, "memory", &what)?,
            parallel: integer(kdf_value, "cpus", &what)?,
            hash: String::new(),
            kind,
        }
    };
    let area = keyslot
        .get("area")
        .ok_or_else(|| format!("{what}: no area"))?;
    let id: u32 = id.parse().map_err(|_| format!("{what}: bad id"))?;
    if id as usize >= MAX_LUKS2_OBJECTS {
        return Err(format!(
            "{what}: LUKS2 numbers keyslots below {MAX_LUKS2_OBJECTS}"
        ));
    }
    Ok(Keyslot {
        id,
        kind: text(keyslot, "type", &what)?.to_string(),
        key_size: integer(keyslot, "key_size", &what)?,
        area_encryption: text(area, "encryption", &what).unwrap_or("").to_string(),
        kdf,
    })
}

/// Refuse any key derivation of `metadata` that costs more than the
/// bounds above.
fn check_luks2_costs(metadata: &Luks2Metadata) -> Result<(), HeaderError> {
    for slot in &metadata.keyslots {
        let what = format!("keyslot {}", slot.id);
        let kdf = &slot.kdf;
        match kdf.kind.as_str() {
            "pbkdf2" => check_pbkdf2(&what, &kdf.hash, kdf.time_or_iterations, slot.key_size)?,
            "argon2i" | "argon2id" => check_argon2(&what, kdf)?,
            // Never derived: the unlock skips keyslots of other kinds.
            _ => {}
        }
    }
    for digest in &metadata.digests {
        let what = format!("digest {}", digest.id);
        check_pbkdf2(&what, &digest.hash, digest.iterations, digest.len)?;
    }
    Ok(())
}

fn check_argon2(what: &str, kdf: &Kdf) -> Result<(), HeaderError> {
    let too_high = |cost: String, limit: String| {
        Err(HeaderError::KdfCost {
            what: what.to_string(),
            cost,
            limit,
        })
    };
    let (time, memory_kib, parallel) = (kdf.time_or_iterations, kdf.memory_kib, kdf.parallel);
    if time > MAX_ARGON2_TIME_COST {
        return too_high(
            format!("an Argon2 time cost of {time} passes"),
            format!("{MAX_ARGON2_TIME_COST} passes"),
        );
    }
    if memory_kib > MAX_ARGON2_MEMORY_KIB {
        return too_high(
            format!("{memory_kib} KiB of Argon2 memory"),
            format!("{MAX_ARGON2_MEMORY_KIB} KiB"),
        );
    }
    // Both factors are bounded above, so the product cannot overflow.
    if time * memory_kib > MAX_ARGON2_WORK_KIB_PASSES {
        return too_high(
            format!("Argon2 work of {time} passes over {memory_kib} KiB"),
            format!(
                "{} GiB-passes (passes times memory)",
                MAX_ARGON2_WORK_KIB_PASSES >> 20
            ),
        );
    }
    if parallel > MAX_ARGON2_PARALLEL {
        return too_high(
            format!("{parallel} Argon2 threads"),
            format!("{MAX_ARGON2_PARALLEL} threads"),
        );
    }
    Ok(())
}

/// PBKDF2 computes `output_len` bytes in blocks of the hash's size, each
/// block costing `iterations` HMACs.
fn check_pbkdf2(
    what: &str,
    hash: &str,
    iterations: u64,
    output_len: u64,
) -> Result<(), HeaderError> {
    let Some(&(_, hash_len, max_blocks)) = PBKDF2_HASHES
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(hash))
    else {
        return Err(HeaderError::UnboundedKdfHash {
            what: what.to_string(),
            hash: hash.to_string(),
        });
    };
    let blocks = output_len.div_ceil(hash_len).max(1);
    if iterations.saturating_mul(blocks) > max_blocks {
        return Err(HeaderError::KdfCost {
            what: what.to_string(),
            cost: format!("{iterations} PBKDF2-{hash} iterations for {output_len} bytes"),
            limit: format!("{} iterations", max_blocks / blocks),
        });
    }
    Ok(())
}

fn object<'a>(json: &'a Value, key: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    json.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no \"{key}\" object"))
}

fn text<'a>(value: &'a Value, key: &str, what: &str) -> Result<&'a str, String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what}: \"{key}\" missing or not a string"))
}

fn integer(value: &Value, key: &str, what: &str) -> Result<u64, String> {
    value
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{what}: \"{key}\" missing or not an integer"))
}

fn number_text(text: &str, key: &str, what: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{what}: \"{key}\" is not a number: {text:?}"))
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(word)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

// The LUKS1 header (big-endian fields at fixed offsets): the hash name
// every PBKDF2 of the volume uses, the key length, the master key
// digest's iterations, then eight keyslots of 48 bytes each, starting
// with their state word and PBKDF2 iterations.
const LUKS1_HEADER_LEN: usize = 592;
const LUKS1_HASH: std::ops::Range<usize> = 72..104;
const LUKS1_KEY_BYTES: usize = 108;
const LUKS1_DIGEST_ITERATIONS: usize = 164;
const LUKS1_KEYSLOTS: usize = 208;
const LUKS1_KEYSLOT_LEN: usize = 48;
const LUKS1_KEYSLOT_COUNT: u32 = 8;
const LUKS1_KEYSLOT_DISABLED: u32 = 0x0000_dead;
/// LUKS1's master key digest is always this long (SHA-1 sized).
const LUKS1_DIGEST_LEN: u64 = 20;

/// Read a LUKS1 header and check its key derivation costs.
pub fn read_luks1(file: &File) -> Result<Luks1Metadata, HeaderError> {
    read_luks1_from(file)
}

fn read_luks1_from<M: Medium + ?Sized>(medium: &M) -> Result<Luks1Metadata, HeaderError> {
    let mut header = [0u8; LUKS1_HEADER_LEN];
    medium.fill_at(&mut header, 0)?;
    if &header[..6] != MAGIC_PRIMARY || header[6..8] != [0, 1] {
        return Err(HeaderError::NotLuks);
    }
    let field = |at: usize| u64::from(be_u32(&header[at..at + 4]));
    let metadata = Luks1Metadata {
        hash: c_string(&header[LUKS1_HASH]),
        key_bytes: field(LUKS1_KEY_BYTES),
        digest_iterations: field(LUKS1_DIGEST_ITERATIONS),
        keyslot_iterations: (0..LUKS1_KEYSLOT_COUNT)
            .map(|slot| (slot, LUKS1_KEYSLOTS + slot as usize * LUKS1_KEYSLOT_LEN))
            .filter(|&(_, at)| be_u32(&header[at..at + 4]) != LUKS1_KEYSLOT_DISABLED)
            .map(|(slot, at)| (slot, field(at + 4)))
            .collect(),
    };
    check_pbkdf2(
        "the master key digest",
        &metadata.hash,
        metadata.digest_iterations,
        LUKS1_DIGEST_LEN,
    )?;
    for &(slot, iterations) in &metadata.keyslot_iterations {
        check_pbkdf2(
            &format!("keyslot {slot}"),
            &metadata.hash,
            iterations,
            metadata.key_bytes,
        )?;
    }
    Ok(metadata)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(word)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Editing LUKS2 headers in tests, to build damaged or hostile images.

    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]

    use super::*;
    use std::fs::OpenOptions;
    use std::path::Path;

    /// Apply `edit` to the JSON of both header copies and fix their
    /// checksums, as a hostile but well-formed image would look.
    pub fn edit_json(path: &Path, edit: impl Fn(&mut Value)) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut binary = vec![0u8; BINARY_HEADER_LEN as usize];
        file.read_exact_at(&mut binary, 0).unwrap();
        let header_size = be_u64(&binary[8..16]);
        for offset in [0, header_size] {
            file.read_exact_at(&mut binary, offset).unwrap();
            let mut area = vec![0u8; (header_size - BINARY_HEADER_LEN) as usize];
            file.read_exact_at(&mut area, offset + BINARY_HEADER_LEN)
                .unwrap();
            let len = area.iter().position(|&b| b == 0).unwrap();
            let mut json: Value = serde_json::from_slice(&area[..len]).unwrap();
            edit(&mut json);
            let text = serde_json::to_vec(&json).unwrap();
            area.fill(0);
            area[..text.len()].copy_from_slice(&text);
            let sum = checksum(&binary, &area);
            binary[CHECKSUM_OFFSET..CHECKSUM_OFFSET + CHECKSUM_LEN].fill(0);
            binary[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32].copy_from_slice(&sum);
            file.write_all_at(&binary, offset).unwrap();
            file.write_all_at(&area, offset + BINARY_HEADER_LEN)
                .unwrap();
        }
        file.sync_all().unwrap();
    }

    /// Flip one byte of the JSON area of the copy at `offset`, breaking
    /// its checksum.
    pub fn corrupt_copy(path: &Path, offset: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset + BINARY_HEADER_LEN + 10)
            .unwrap();
        byte[0] ^= 0x55;
        file.write_all_at(&byte, offset + BINARY_HEADER_LEN + 10)
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::test_support::edit_json;
    use super::*;
    use crate::storage::error::StorageError;
    use crate::storage::luks;
    use crate::storage::test_support::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    /// The start of the medium at `path`, as [`check_header_bytes`] takes it.
    fn header_bytes(path: &std::path::Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        bytes.truncate(HEADER_AREA_LEN as usize);
        bytes
    }

    /// A LUKS2 volume edited by `edit` is refused by the pure check and by
    /// unlock, quickly, with a [`HeaderError::KdfCost`] naming `what` and
    /// `cost`.
    fn assert_cost_refused(name: &str, edit: impl Fn(&mut Value), what: &str, cost: &str) {
        let path = new_volume(name, 1 << 20, 4096);
        edit_json(&path, edit);
        let err = check_header_bytes(&header_bytes(&path)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, HeaderError::KdfCost { .. })
                && text.contains(what)
                && text.contains(cost),
            "{text}"
        );
        let started = Instant::now();
        let err = luks::unlock(&path, PASSPHRASE).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Header {
                    source: HeaderError::KdfCost { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(what), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    }

    #[test]
    fn argon2_time_cost_of_four_billion_passes_is_refused_before_derivation() {
        assert_cost_refused(
            "time.img",
            |json| json["keyslots"]["0"]["kdf"]["time"] = json!(u32::MAX),
            "keyslot 0",
            "Argon2 time cost of 4294967295 passes",
        );
    }

    #[test]
    fn argon2_memory_beyond_four_gib_is_refused_before_derivation() {
        assert_cost_refused(
            "huge-memory.img",
            |json| json["keyslots"]["0"]["kdf"]["memory"] = json!(u32::MAX),
            "keyslot 0",
            "4294967295 KiB of Argon2 memory",
        );
    }

    #[test]
    fn argon2_work_and_threads_are_bounded_too() {
        assert_cost_refused(
            "work.img",
            |json| {
                json["keyslots"]["0"]["kdf"]["time"] = json!(100);
                json["keyslots"]["0"]["kdf"]["memory"] = json!(1 << 20);
            },
            "keyslot 0",
            "Argon2 work of 100 passes over 1048576 KiB",
        );
        assert_cost_refused(
            "threads.img",
            |json| json["keyslots"]["0"]["kdf"]["cpus"] = json!(1 << 20),
            "keyslot 0",
            "1048576 Argon2 threads",
        );
    }

    #[test]
    fn pbkdf2_keyslot_of_four_billion_iterations_is_refused_before_derivation() {
        assert_cost_refused(
            "pbkdf2.img",
            |json| {
                json["keyslots"]["0"]["kdf"] = json!({
                    "type": "pbkdf2",
                    "hash": "sha256",
                    "iterations": u32::MAX,
                    "salt": "c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ=",
                })
            },
            "keyslot 0",
            "4294967295 PBKDF2-sha256 iterations",
        );
    }

    #[test]
    fn digest_pbkdf2_of_four_billion_iterations_is_refused_before_derivation() {
        assert_cost_refused(
            "digest.img",
            |json| json["digests"]["0"]["iterations"] = json!(u32::MAX),
            "digest 0",
            "4294967295 PBKDF2-sha256 iterations",
        );
    }

    #[test]
    fn pbkdf2_with_a_hash_of_unknown_cost_is_refused() {
        let path = new_volume("hash.img", 1 << 20, 4096);
        edit_json(&path, |json| {
            json["digests"]["0"]["hash"] = json!("sha3-999")
        });
        let err = check_header_bytes(&header_bytes(&path)).unwrap_err();
        assert!(
            matches!(err, HeaderError::UnboundedKdfHash { ref what, .. } if what == "digest 0"),
            "{err}"
        );
    }

    #[test]
    fn a_hostile_secondary_copy_is_refused_though_the_primary_would_be_used() {
        let path = new_volume("copies.img", 1 << 20, 4096);
        let header_size = read_luks2(&File::open(&path).unwrap()).unwrap().header_size;
        // Only the secondary gets the absurd cost: libcryptsetup may still
        // pick it (say, once the primary is damaged).
        let mut bytes = header_bytes(&path);
        let area = &mut bytes[(header_size + BINARY_HEADER_LEN) as usize..]
            [..(header_size - BINARY_HEADER_LEN) as usize];
        let len = area.iter().position(|&b| b == 0).unwrap();
        let mut json: Value = serde_json::from_slice(&area[..len]).unwrap();
        json["keyslots"]["0"]["kdf"]["time"] = json!(u32::MAX);
        let text = serde_json::to_vec(&json).unwrap();
        area.fill(0);
        area[..text.len()].copy_from_slice(&text);
        let binary_at = header_size as usize;
        let (binary, rest) = bytes[binary_at..].split_at_mut(BINARY_HEADER_LEN as usize);
        let sum = checksum(binary, &rest[..(header_size - BINARY_HEADER_LEN) as usize]);
        binary[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32].copy_from_slice(&sum);
        let err = check_header_bytes(&bytes).unwrap_err();
        assert!(matches!(err, HeaderError::KdfCost { .. }), "{err}");
    }

    #[test]
    fn the_bounds_admit_what_cryptsetup_creates_on_a_fast_machine() {
        let argon2 = |time, memory_kib, parallel| Kdf {
            kind: "argon2id".into(),
            time_or_iterations: time,
            memory_kib,
            parallel,
            hash: String::new(),
        };
        // Benchmarked to 2 s at 1 GiB; at 64 MiB on a small host; the
        // largest cryptsetup can be told to create.
        for kdf in [
            argon2(10, 1 << 20, 4),
            argon2(60, 64 << 10, 4),
            argon2(4, 4 << 20, 4),
        ] {
            check_argon2("keyslot 0", &kdf).unwrap();
        }
        // LUKS keyslots of a 512-bit key and a digest, at 2 s and 125 ms.
        check_pbkdf2("keyslot 0", "sha256", 10_000_000, 64).unwrap();
        check_pbkdf2("keyslot 0", "sha512", 6_000_000, 64).unwrap();
        check_pbkdf2("keyslot 0", "sha1", 8_000_000, 64).unwrap();
        check_pbkdf2("digest 0", "sha256", 1_000_000, 32).unwrap();
        // A 128-byte key costs four SHA-256 blocks per iteration.
        assert!(check_pbkdf2("keyslot 0", "sha256", 30_000_000, 128).is_err());
    }

    #[test]
    fn more_keyslots_than_luks2_allows_are_malformed() {
        let path = new_volume("many.img", 1 << 20, 4096);
        edit_json(&path, |json| {
            let slot = json["keyslots"]["0"].clone();
            json["keyslots"]["40"] = slot;
        });
        let err = check_header_bytes(&header_bytes(&path)).unwrap_err();
        assert!(err.to_string().contains("keyslot 40"), "{err}");
        edit_json(&path, |json| {
            let segment = json["segments"]["0"].clone();
            for id in 0..40 {
                json["segments"][id.to_string()] = segment.clone();
            }
        });
        let err = check_header_bytes(&header_bytes(&path)).unwrap_err();
        assert!(err.to_string().contains("40 segments"), "{err}");
    }

    #[test]
    fn a_good_header_passes_and_cut_short_ones_are_errors_not_panics() {
        let path = new_volume("pure.img", 1 << 20, 4096);
        let bytes = header_bytes(&path);
        let CheckedHeader::Luks2(metadata) = check_header_bytes(&bytes).unwrap() else {
            panic!("not LUKS2");
        };
        assert_eq!(metadata.digests.len(), 1);
        assert_eq!(metadata.keyslots.len(), 1);
        for len in [0, 5, 8, 4095, 4096, 16 << 10, 20 << 10, 32 << 10, 1 << 20] {
            let _ = check_header_bytes(&bytes[..len]);
        }
    }

    /// A LUKS1 header: sha256, a 64-byte key, keyslot 0 active with
    /// `keyslot_iterations`, the others disabled.
    fn luks1_header(digest_iterations: u32, keyslot_iterations: u32) -> Vec<u8> {
        let mut header = vec![0u8; 4096];
        header[..6].copy_from_slice(MAGIC_PRIMARY);
        header[6..8].copy_from_slice(&1u16.to_be_bytes());
        header[LUKS1_HASH.start..LUKS1_HASH.start + 6].copy_from_slice(b"sha256");
        header[LUKS1_KEY_BYTES..LUKS1_KEY_BYTES + 4].copy_from_slice(&64u32.to_be_bytes());
        header[LUKS1_DIGEST_ITERATIONS..LUKS1_DIGEST_ITERATIONS + 4]
            .copy_from_slice(&digest_iterations.to_be_bytes());
        for slot in 0..LUKS1_KEYSLOT_COUNT as usize {
            let at = LUKS1_KEYSLOTS + slot * LUKS1_KEYSLOT_LEN;
            let state: u32 = if slot == 0 {
                0x00ac_71f3
            } else {
                LUKS1_KEYSLOT_DISABLED
            };
            header[at..at + 4].copy_from_slice(&state.to_be_bytes());
            // A disabled slot's iterations are never used.
            header[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        }
        header[LUKS1_KEYSLOTS + 4..LUKS1_KEYSLOTS + 8]
            .copy_from_slice(&keyslot_iterations.to_be_bytes());
        header
    }

    #[test]
    fn luks1_pbkdf2_costs_are_bounded_for_keyslots_and_the_digest() {
        let CheckedHeader::Luks1(metadata) =
            check_header_bytes(&luks1_header(100_000, 2_000_000)).unwrap()
        else {
            panic!("not LUKS1");
        };
        assert_eq!(metadata.keyslot_iterations, vec![(0, 2_000_000)]);
        let err = check_header_bytes(&luks1_header(100_000, u32::MAX)).unwrap_err();
        assert!(
            err.to_string()
                .contains("keyslot 0 asks for 4294967295 PBKDF2-sha256"),
            "{err}"
        );
        let err = check_header_bytes(&luks1_header(u32::MAX, 2_000_000)).unwrap_err();
        assert!(
            err.to_string()
                .contains("the master key digest asks for 4294967295"),
            "{err}"
        );
    }

    #[test]
    fn a_cryptsetup_luks1_image_with_absurd_iterations_is_refused_quickly() {
        let Some(mut command) = cryptsetup() else {
            return;
        };
        let path = scratch_path("luks1-iter.img");
        File::create(&path).unwrap().set_len(4 << 20).unwrap();
        let key = key_file(&path, PASSPHRASE);
        let out = command
            .args([
                "luksFormat",
                "--type",
                "luks1",
                "--pbkdf-force-iterations",
                "1000",
            ])
            .arg("--key-file")
            .arg(&key)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&u32::MAX.to_be_bytes(), (LUKS1_KEYSLOTS + 4) as u64)
            .unwrap();
        let started = Instant::now();
        let err = luks::unlock(&path, PASSPHRASE).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Header {
                    source: HeaderError::KdfCost { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    }
}
