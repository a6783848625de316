//! Reading LUKS2 metadata ourselves, before libcryptsetup touches the
//! image: both binary headers with their SHA-256 checksums and the JSON
//! area, reduced to what the data path and `disk info` need. Doing this
//! first lets us say which header copy was damaged, refuse segments that
//! point past the end of the file and refuse keyslots whose Argon2 memory
//! cost would exhaust the host, all before any key derivation runs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use openssl::sha::Sha256;
use serde_json::Value;

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
}

/// Version word of the image's first header: 1 for LUKS1, 2 for LUKS2.
/// Also true when only the secondary LUKS2 header survives.
pub fn luks_version(file: &File) -> Result<u16, HeaderError> {
    let mut start = [0u8; 8];
    read_fully(file, &mut start, 0)?;
    if &start[..6] == MAGIC_PRIMARY {
        return Ok(u16::from_be_bytes([start[6], start[7]]));
    }
    for offset in ALLOWED_HEADER_SIZES {
        if read_fully(file, &mut start, offset).is_ok() && &start[..6] == MAGIC_SECONDARY {
            return Ok(2);
        }
    }
    Err(HeaderError::NotLuks)
}

/// Read and verify both LUKS2 header copies and return the newer valid
/// one, noting damage to the other.
pub fn read_luks2(file: &File) -> Result<Luks2Metadata, HeaderError> {
    let primary = read_copy(file, 0, HeaderCopy::Primary);
    let secondary_offset = match &primary {
        Ok(header) => Some(header.header_size),
        Err(_) => None,
    };
    let secondary = match secondary_offset {
        Some(offset) => read_copy(file, offset, HeaderCopy::Secondary),
        None => find_secondary(file),
    };
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

fn find_secondary(file: &File) -> Result<Luks2Metadata, String> {
    let mut last = NOT_LUKS2.to_string();
    for offset in ALLOWED_HEADER_SIZES {
        match read_copy(file, offset, HeaderCopy::Secondary) {
            Ok(header) => return Ok(header),
            Err(reason) if reason == NOT_LUKS2 => {}
            Err(reason) => last = reason,
        }
    }
    Err(last)
}

/// One header copy at `offset`; the error says what is wrong with it.
fn read_copy(file: &File, offset: u64, copy: HeaderCopy) -> Result<Luks2Metadata, String> {
    let mut binary = vec![0u8; BINARY_HEADER_LEN as usize];
    read_fully(file, &mut binary, offset).map_err(|e| format!("unreadable: {e}"))?;
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
    let mut json_area = vec![0u8; (header_size - BINARY_HEADER_LEN) as usize];
    read_fully(file, &mut json_area, offset + BINARY_HEADER_LEN)
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
    let (segments, keyslots) = parse_json(&json)?;
    Ok(Luks2Metadata {
        copy,
        damaged_copy: None,
        seqid,
        header_size,
        uuid: c_string(&binary[168..208]),
        label: c_string(&binary[24..72]),
        segments,
        keyslots,
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

fn parse_json(json: &Value) -> Result<(Vec<Segment>, Vec<Keyslot>), String> {
    let segments = object(json, "segments")?
        .iter()
        .map(|(id, segment)| parse_segment(id, segment))
        .collect::<Result<Vec<_>, _>>()?;
    let keyslots = object(json, "keyslots")?
        .iter()
        .map(|(id, keyslot)| parse_keyslot(id, keyslot))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((segments, keyslots))
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
    Ok(Keyslot {
        id: id.parse().map_err(|_| format!("{what}: bad id"))?,
        kind: text(keyslot, "type", &what)?.to_string(),
        key_size: integer(keyslot, "key_size", &what)?,
        area_encryption: text(area, "encryption", &what).unwrap_or("").to_string(),
        kdf,
    })
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

/// pread exactly `buf.len()` bytes; a short file is an UnexpectedEof.
fn read_fully(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Editing LUKS2 headers in tests, to build damaged or hostile images.

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
