//! Loads UEFI firmware for `securevm run --firmware`: edk2's Cloud
//! Hypervisor build of OVMF ("CloudHv", `CLOUDHV.fd`), which is a PVH ELF
//! image. Its header is ELF64 but names the i386 machine (the PVH entry is
//! 32-bit code), which the kernel loader rightly refuses, so this module
//! reads the ELF and its PVH note itself.
//!
//! Every size and offset in the file is untrusted: a file that is not
//! such an image, is cut short, has no PVH entry or wants memory the guest
//! does not have is refused with one line that says so and what to give
//! instead, before anything is copied. [`inspect_firmware`] does all the
//! checking without guest memory, so a bad file is caught before KVM is
//! touched; [`load_firmware`] checks the same open file again and copies it.

use std::io::{self, Read, Seek, SeekFrom};

use thiserror::Error;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
    ReadVolatile,
};

use crate::arch::layout::{HIGH_MEMORY_START, MMIO_HOLE_START};
use crate::arch::memory::low_ram_end;
use crate::narrow::usize_from_u64;

const MIB: u64 = 1 << 20;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELF_CLASS_64: u8 = 2;
const ELF_DATA_LITTLE_ENDIAN: u8 = 1;
const ELF_MACHINE_I386: u16 = 3;
const ELF_MACHINE_X86_64: u16 = 62;
const ELF_HEADER_SIZE: usize = 64;
const ELF_PROGRAM_HEADER_SIZE: usize = 56;
const ELF_PT_LOAD: u32 = 1;
const ELF_PT_NOTE: u32 = 4;
/// The note that carries the 32-bit physical PVH entry point.
const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Size of an ELF note header (name size, descriptor size, type).
const NOTE_HEADER_SIZE: usize = 12;
/// The CloudHv image has two program headers and one 20-byte note; these
/// bounds keep what a damaged file can make securevm allocate small.
const MAX_PROGRAM_HEADERS: u16 = 64;
const MAX_NOTE_SEGMENT_SIZE: u64 = 64 << 10;
/// Zeros written per step where a segment's memory size exceeds its data.
const ZERO_CHUNK: usize = 4096;

/// The least RAM a firmware boot is given. CloudHv decompresses its PEI
/// and DXE volumes into RAM from 8 MiB to 21 MiB (its `MEMFD`), puts up to
/// 64 MiB of PEI memory above that and runs DXE in what remains; with less
/// than this it stops before any OS loader runs, with no message.
pub const FIRMWARE_MIN_MEMORY_MIB: u64 = 128;

/// Why a firmware file could not be loaded.
#[derive(Debug, Error)]
pub enum FirmwareError {
    #[error("cannot read the firmware file: {0}; check that the file exists and is readable")]
    Read(#[source] io::Error),
    #[error("the firmware file is empty: give edk2's Cloud Hypervisor build of OVMF (CLOUDHV.fd, which scripts/guest-assets builds) with --firmware")]
    Empty,
    #[error("the firmware file is not an ELF image: --firmware takes the PVH ELF of edk2's Cloud Hypervisor build of OVMF (CLOUDHV.fd); flash images such as QEMU's OVMF_CODE.fd cannot be loaded")]
    NotAnElf,
    #[error("the firmware file is truncated: {len} bytes, shorter than its {ELF_HEADER_SIZE}-byte ELF header; copy or build CLOUDHV.fd again")]
    TruncatedHeader { len: u64 },
    #[error("the firmware file is not a little-endian 64-bit ELF: give the Cloud Hypervisor build of OVMF (CLOUDHV.fd), whose header is ELF64")]
    NotElf64,
    #[error("the firmware file is an ELF for machine type {machine}, not i386 (3) as a PVH firmware image is{}", if *.machine == ELF_MACHINE_X86_64 { ": this looks like a kernel, give it with --kernel" } else { ": give CLOUDHV.fd" })]
    WrongMachine { machine: u16 },
    #[error("the firmware file's program headers are malformed ({count} entries of {entry_size} bytes; expected 1 to {MAX_PROGRAM_HEADERS} of {ELF_PROGRAM_HEADER_SIZE}): the file is damaged, build CLOUDHV.fd again")]
    BadProgramHeaders { count: u16, entry_size: u16 },
    #[error("the firmware file is truncated: its program headers end at byte {end} but the file has {len} bytes; copy or build CLOUDHV.fd again")]
    TruncatedProgramHeaders { end: u64, len: u64 },
    #[error("the firmware file is truncated: segment {index}'s data ends at byte {end} but the file has {len} bytes; copy or build CLOUDHV.fd again")]
    TruncatedSegment { index: usize, end: u64, len: u64 },
    #[error("the firmware file's segment {index} is malformed (its sizes or address overflow, or it has more data than memory): the file is damaged, build CLOUDHV.fd again")]
    BadSegment { index: usize },
    #[error(
        "the firmware file has no loadable segment: the file is damaged, build CLOUDHV.fd again"
    )]
    NoLoadableSegment,
    #[error("the firmware wants to be loaded at {start:#x}..{end:#x}, below 1 MiB where securevm keeps the boot structures and ACPI tables: give CLOUDHV.fd, which loads at 1 MiB")]
    SegmentInBootArea { start: u64, end: u64 },
    #[error("the firmware wants to be loaded at {start:#x}..{end:#x}, outside the guest RAM below {MMIO_HOLE_START:#x} where 32-bit firmware can run: give CLOUDHV.fd, which loads at 1 MiB")]
    SegmentOutsideRam { start: u64, end: u64 },
    #[error("the firmware file's notes are malformed (a note runs past its segment, or the segment is over {MAX_NOTE_SEGMENT_SIZE} bytes): the file is damaged, build CLOUDHV.fd again")]
    BadNote,
    #[error("the firmware file has no PVH entry note (Xen note type {XEN_ELFNOTE_PHYS32_ENTRY}): securevm starts firmware through PVH, give edk2's Cloud Hypervisor build of OVMF (CLOUDHV.fd)")]
    NoPvhNote,
    #[error("the firmware's PVH entry {entry:#x} lies outside the segments it loads: the file is damaged, build CLOUDHV.fd again")]
    EntryOutsideImage { entry: u64 },
    #[error("guest memory too small for UEFI firmware: it needs at least {needed_mib} MiB, give --memory {needed_mib} or more")]
    MemoryTooSmall { needed_mib: u64 },
    #[error("cannot copy the firmware into guest memory: {0}")]
    GuestMemory(#[source] GuestMemoryError),
}

/// One loadable segment: `file_size` bytes from `file_offset` go to
/// `address`, followed by zeros up to `memory_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareSegment {
    pub file_offset: u64,
    pub address: u64,
    pub file_size: u64,
    pub memory_size: u64,
}

/// A firmware image that passed every check, for a given guest RAM size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareImage {
    /// Where the boot vCPU starts, in 32-bit protected mode.
    pub pvh_entry: GuestAddress,
    pub segments: Vec<FirmwareSegment>,
}

/// Checks that `file` is a PVH firmware image that fits a guest with
/// `mem_size` bytes of RAM, without copying anything.
pub fn inspect_firmware<F: Read + Seek>(
    file: &mut F,
    mem_size: u64,
) -> Result<FirmwareImage, FirmwareError> {
    let file_len = file.seek(SeekFrom::End(0)).map_err(FirmwareError::Read)?;
    if file_len == 0 {
        return Err(FirmwareError::Empty);
    }
    let header = read_header(file, file_len)?;
    let program_headers = read_program_headers(file, file_len, &header)?;

    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for (index, phdr) in program_headers.iter().enumerate() {
        match phdr.p_type {
            ELF_PT_LOAD if phdr.memory_size > 0 => {
                segments.push(check_segment(index, phdr, file_len, mem_size)?);
            }
            ELF_PT_NOTE if pvh_entry.is_none() => {
                pvh_entry = find_pvh_entry(file, file_len, phdr)?;
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(FirmwareError::NoLoadableSegment);
    }
    let entry = u64::from(pvh_entry.ok_or(FirmwareError::NoPvhNote)?);
    let inside = |segment: &FirmwareSegment| {
        entry >= segment.address && entry - segment.address < segment.memory_size
    };
    if !segments.iter().any(inside) {
        return Err(FirmwareError::EntryOutsideImage { entry });
    }
    if mem_size < FIRMWARE_MIN_MEMORY_MIB * MIB {
        return Err(FirmwareError::MemoryTooSmall {
            needed_mib: FIRMWARE_MIN_MEMORY_MIB,
        });
    }
    Ok(FirmwareImage {
        pvh_entry: GuestAddress(entry),
        segments,
    })
}

/// Checks `file` against `mem` as [`inspect_firmware`] does and copies its
/// segments into `mem`.
pub fn load_firmware<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    file: &mut F,
) -> Result<FirmwareImage, FirmwareError> {
    let mem_size = mem.iter().map(|region| region.len()).sum();
    let image = inspect_firmware(file, mem_size)?;
    for segment in &image.segments {
        file.seek(SeekFrom::Start(segment.file_offset))
            .map_err(FirmwareError::Read)?;
        mem.read_exact_volatile_from(
            GuestAddress(segment.address),
            file,
            usize_from_u64(segment.file_size),
        )
        .map_err(FirmwareError::GuestMemory)?;
        zero_fill(
            mem,
            segment.address + segment.file_size,
            segment.memory_size - segment.file_size,
        )?;
    }
    Ok(image)
}

/// Writes `len` zero bytes at `address`: the part of a segment the file
/// does not cover.
fn zero_fill(mem: &GuestMemoryMmap, address: u64, len: u64) -> Result<(), FirmwareError> {
    let zeros = [0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let step = usize_from_u64((len - done).min(ZERO_CHUNK as u64));
        mem.write_slice(&zeros[..step], GuestAddress(address + done))
            .map_err(FirmwareError::GuestMemory)?;
        done += step as u64;
    }
    Ok(())
}

/// The ELF header fields the loader uses.
struct ElfHeader {
    phoff: u64,
    phentsize: u16,
    phnum: u16,
}

fn read_header<F: Read + Seek>(file: &mut F, file_len: u64) -> Result<ElfHeader, FirmwareError> {
    let mut header = [0u8; ELF_HEADER_SIZE];
    let available = usize_from_u64(file_len.min(ELF_HEADER_SIZE as u64));
    file.rewind().map_err(FirmwareError::Read)?;
    file.read_exact(&mut header[..available])
        .map_err(FirmwareError::Read)?;
    if !header[..available].starts_with(ELF_MAGIC) {
        return Err(FirmwareError::NotAnElf);
    }
    if available < ELF_HEADER_SIZE {
        return Err(FirmwareError::TruncatedHeader { len: file_len });
    }
    if header[4] != ELF_CLASS_64 || header[5] != ELF_DATA_LITTLE_ENDIAN {
        return Err(FirmwareError::NotElf64);
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if machine != ELF_MACHINE_I386 {
        return Err(FirmwareError::WrongMachine { machine });
    }
    Ok(ElfHeader {
        phoff: le_u64(&header, 32),
        phentsize: u16::from_le_bytes([header[54], header[55]]),
        phnum: u16::from_le_bytes([header[56], header[57]]),
    })
}

/// The program header fields the loader uses.
struct ProgramHeader {
    p_type: u32,
    offset: u64,
    address: u64,
    file_size: u64,
    memory_size: u64,
}

fn read_program_headers<F: Read + Seek>(
    file: &mut F,
    file_len: u64,
    header: &ElfHeader,
) -> Result<Vec<ProgramHeader>, FirmwareError> {
    if usize::from(header.phentsize) != ELF_PROGRAM_HEADER_SIZE
        || header.phnum == 0
        || header.phnum > MAX_PROGRAM_HEADERS
    {
        return Err(FirmwareError::BadProgramHeaders {
            count: header.phnum,
            entry_size: header.phentsize,
        });
    }
    let table_len = u64::from(header.phnum) * ELF_PROGRAM_HEADER_SIZE as u64;
    let end = header.phoff.saturating_add(table_len);
    if end > file_len {
        return Err(FirmwareError::TruncatedProgramHeaders { end, len: file_len });
    }
    let mut table = vec![0u8; usize_from_u64(table_len)];
    file.seek(SeekFrom::Start(header.phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(FirmwareError::Read)?;
    Ok(table
        .chunks_exact(ELF_PROGRAM_HEADER_SIZE)
        .map(|entry| ProgramHeader {
            p_type: u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]),
            offset: le_u64(entry, 8),
            address: le_u64(entry, 24),
            file_size: le_u64(entry, 32),
            memory_size: le_u64(entry, 40),
        })
        .collect())
}

/// Checks one `PT_LOAD` segment: its data inside the file, its memory in
/// guest RAM above the boot structures and below the MMIO hole.
fn check_segment(
    index: usize,
    phdr: &ProgramHeader,
    file_len: u64,
    mem_size: u64,
) -> Result<FirmwareSegment, FirmwareError> {
    let bad = FirmwareError::BadSegment { index };
    if phdr.file_size > phdr.memory_size {
        return Err(bad);
    }
    let data_end = phdr.offset.checked_add(phdr.file_size).ok_or(bad)?;
    if data_end > file_len {
        return Err(FirmwareError::TruncatedSegment {
            index,
            end: data_end,
            len: file_len,
        });
    }
    let (start, end) = (
        phdr.address,
        phdr.address
            .checked_add(phdr.memory_size)
            .ok_or(FirmwareError::BadSegment { index })?,
    );
    if start < HIGH_MEMORY_START {
        return Err(FirmwareError::SegmentInBootArea { start, end });
    }
    if end > MMIO_HOLE_START {
        return Err(FirmwareError::SegmentOutsideRam { start, end });
    }
    if end > low_ram_end(mem_size) {
        return Err(FirmwareError::MemoryTooSmall {
            needed_mib: end.div_ceil(MIB).max(FIRMWARE_MIN_MEMORY_MIB),
        });
    }
    Ok(FirmwareSegment {
        file_offset: phdr.offset,
        address: start,
        file_size: phdr.file_size,
        memory_size: phdr.memory_size,
    })
}

/// The entry point of the first PVH note (owner "Xen", type
/// `XEN_ELFNOTE_PHYS32_ENTRY`) in the `PT_NOTE` segment `phdr`, if any.
fn find_pvh_entry<F: Read + Seek>(
    file: &mut F,
    file_len: u64,
    phdr: &ProgramHeader,
) -> Result<Option<u32>, FirmwareError> {
    if phdr.file_size > MAX_NOTE_SEGMENT_SIZE
        || phdr
            .offset
            .checked_add(phdr.file_size)
            .is_none_or(|end| end > file_len)
    {
        return Err(FirmwareError::BadNote);
    }
    let mut notes = vec![0u8; usize_from_u64(phdr.file_size)];
    file.seek(SeekFrom::Start(phdr.offset))
        .and_then(|_| file.read_exact(&mut notes))
        .map_err(FirmwareError::Read)?;
    parse_pvh_note(&notes)
}

/// Walks the notes in `notes` (each a header, then name and descriptor
/// padded to 4 bytes) for the PVH entry.
fn parse_pvh_note(notes: &[u8]) -> Result<Option<u32>, FirmwareError> {
    let mut at = 0usize;
    while at < notes.len() {
        let header = notes
            .get(at..at + NOTE_HEADER_SIZE)
            .ok_or(FirmwareError::BadNote)?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (name_size, desc_size, note_type) = (word(0), word(4), word(8));
        let name_start = at + NOTE_HEADER_SIZE;
        let desc_start = name_start
            .checked_add(padded(name_size))
            .ok_or(FirmwareError::BadNote)?;
        let next = desc_start
            .checked_add(padded(desc_size))
            .ok_or(FirmwareError::BadNote)?;
        let body = notes.get(name_start..next).ok_or(FirmwareError::BadNote)?;
        let name = &body[..usize_from_u64(u64::from(name_size))];
        let desc = &body[desc_start - name_start..];
        if note_type == XEN_ELFNOTE_PHYS32_ENTRY && name == XEN_NOTE_NAME {
            if desc_size < 4 {
                return Err(FirmwareError::BadNote);
            }
            let entry = desc.get(..4).ok_or(FirmwareError::BadNote)?;
            return Ok(Some(u32::from_le_bytes([
                entry[0], entry[1], entry[2], entry[3],
            ])));
        }
        at = next;
    }
    Ok(None)
}

/// `size` rounded up to the 4-byte alignment of note fields.
fn padded(size: u32) -> usize {
    usize_from_u64(u64::from(size).next_multiple_of(4))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::arch::memory::create_guest_memory;
    use std::io::Cursor;

    const LOAD_ADDRESS: u64 = 0x10_0000;
    const ENTRY: u32 = 0x10_0010;

    /// One program header of a test image.
    #[derive(Clone, Copy)]
    struct Phdr {
        p_type: u32,
        offset: u64,
        address: u64,
        file_size: u64,
        memory_size: u64,
    }

    /// An ELF64 header for `machine` with `phnum` program headers right
    /// after it.
    fn elf_header(machine: u16, phnum: u16) -> Vec<u8> {
        let mut image = Vec::new();
        image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        image.extend_from_slice(&machine.to_le_bytes());
        image.extend_from_slice(&1u32.to_le_bytes());
        image.extend_from_slice(&u64::from(ENTRY).to_le_bytes()); // e_entry
        image.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, phnum, 64, 0, 0] {
            image.extend_from_slice(&half.to_le_bytes());
        }
        image
    }

    fn push_phdr(image: &mut Vec<u8>, phdr: Phdr) {
        image.extend_from_slice(&phdr.p_type.to_le_bytes());
        image.extend_from_slice(&7u32.to_le_bytes());
        for field in [
            phdr.offset,
            phdr.address,
            phdr.address,
            phdr.file_size,
            phdr.memory_size,
            4,
        ] {
            image.extend_from_slice(&field.to_le_bytes());
        }
    }

    /// A note with `name`, `note_type` and `desc`, each padded to 4 bytes.
    fn note(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [name.len() as u32, desc.len() as u32, note_type] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        for field in [name, desc] {
            bytes.extend_from_slice(field);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        bytes
    }

    fn pvh_note(entry: u32) -> Vec<u8> {
        note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry.to_le_bytes())
    }

    /// A firmware image shaped like CLOUDHV.fd: machine i386, one loadable
    /// segment of `code` at 1 MiB (memory size `memory_size`) and a note
    /// segment holding `notes`.
    fn firmware_with(machine: u16, code: &[u8], memory_size: u64, notes: &[u8]) -> Vec<u8> {
        let data_start = 64 + 2 * 56;
        let notes_start = data_start + code.len() as u64;
        let mut image = elf_header(machine, 2);
        push_phdr(
            &mut image,
            Phdr {
                p_type: ELF_PT_LOAD,
                offset: data_start,
                address: LOAD_ADDRESS,
                file_size: code.len() as u64,
                memory_size,
            },
        );
        push_phdr(
            &mut image,
            Phdr {
                p_type: ELF_PT_NOTE,
                offset: notes_start,
                address: 0,
                file_size: notes.len() as u64,
                memory_size: notes.len() as u64,
            },
        );
        image.extend_from_slice(code);
        image.extend_from_slice(notes);
        image
    }

    fn firmware() -> Vec<u8> {
        firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &pvh_note(ENTRY))
    }

    /// A firmware image whose only loadable segment is `segment` (its
    /// data, if any, is zeros at the end of the file).
    fn firmware_with_segment(address: u64, file_size: u64, memory_size: u64) -> Vec<u8> {
        let notes = pvh_note(u32::try_from(address).unwrap_or(ENTRY));
        let notes_start = 64 + 2 * 56;
        let data_start = notes_start + notes.len() as u64;
        let mut image = elf_header(ELF_MACHINE_I386, 2);
        for phdr in [
            Phdr {
                p_type: ELF_PT_NOTE,
                offset: notes_start,
                address: 0,
                file_size: notes.len() as u64,
                memory_size: notes.len() as u64,
            },
            Phdr {
                p_type: ELF_PT_LOAD,
                offset: data_start,
                address,
                file_size,
                memory_size,
            },
        ] {
            push_phdr(&mut image, phdr);
        }
        image.extend_from_slice(&notes);
        image.resize(image.len() + usize_from_u64(file_size), 0xf4);
        image
    }

    fn inspect(image: Vec<u8>) -> Result<FirmwareImage, FirmwareError> {
        inspect_firmware(&mut Cursor::new(image), 512 * MIB)
    }

    #[test]
    fn loads_segments_and_finds_the_pvh_entry() {
        let mem = create_guest_memory(128 * MIB).unwrap();
        let code: Vec<u8> = (0..64u8).collect();
        let image = firmware_with(ELF_MACHINE_I386, &code, 0x2000, &pvh_note(ENTRY));
        // Guest RAM holding stale bytes shows that the tail is zeroed.
        mem.write_slice(&[0xaa; 0x2000], GuestAddress(LOAD_ADDRESS))
            .unwrap();
        let loaded = load_firmware(&mem, &mut Cursor::new(image)).unwrap();
        assert_eq!(loaded.pvh_entry, GuestAddress(u64::from(ENTRY)));
        assert_eq!(
            loaded.segments,
            vec![FirmwareSegment {
                file_offset: 64 + 2 * 56,
                address: LOAD_ADDRESS,
                file_size: 64,
                memory_size: 0x2000,
            }]
        );
        let mut copied = [0u8; 0x2000];
        mem.read_slice(&mut copied, GuestAddress(LOAD_ADDRESS))
            .unwrap();
        assert_eq!(&copied[..64], code.as_slice());
        assert!(copied[64..].iter().all(|&byte| byte == 0));
    }

    #[test]
    fn finds_the_pvh_note_among_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        notes.extend(note(b"Xen\0", 5, b"xen-3.0\0"));
        notes.extend(pvh_note(ENTRY + 4));
        let image = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &notes);
        assert_eq!(
            inspect(image).unwrap().pvh_entry,
            GuestAddress(u64::from(ENTRY + 4))
        );
    }

    #[test]
    fn rejects_an_empty_file() {
        let err = inspect(Vec::new()).unwrap_err();
        assert!(matches!(err, FirmwareError::Empty), "{err}");
        assert!(err.to_string().contains("CLOUDHV.fd"), "{err}");
    }

    #[test]
    fn rejects_a_file_that_is_not_an_elf() {
        // A flash image such as OVMF_CODE.fd starts with its volume header.
        let mut flash = vec![0u8; 0x1000];
        flash[0x28..0x2c].copy_from_slice(b"_FVH");
        let err = inspect(flash).unwrap_err();
        assert!(matches!(err, FirmwareError::NotAnElf), "{err}");
        assert!(err.to_string().contains("OVMF_CODE.fd"), "{err}");
        let err = inspect(b"\x7fEL".to_vec()).unwrap_err();
        assert!(matches!(err, FirmwareError::NotAnElf), "{err}");
    }

    #[test]
    fn rejects_a_truncated_header() {
        let mut image = firmware();
        image.truncate(40);
        let err = inspect(image).unwrap_err();
        assert!(
            matches!(err, FirmwareError::TruncatedHeader { len: 40 }),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn rejects_a_32bit_or_big_endian_elf() {
        let mut elf32 = firmware();
        elf32[4] = 1;
        assert!(matches!(inspect(elf32), Err(FirmwareError::NotElf64)));
        let mut big_endian = firmware();
        big_endian[5] = 2;
        assert!(matches!(inspect(big_endian), Err(FirmwareError::NotElf64)));
    }

    #[test]
    fn rejects_a_kernel_or_another_machine() {
        let kernel = firmware_with(ELF_MACHINE_X86_64, &[0xf4; 64], 64, &pvh_note(ENTRY));
        let err = inspect(kernel).unwrap_err();
        assert!(
            matches!(err, FirmwareError::WrongMachine { machine: 62 }),
            "{err}"
        );
        assert!(err.to_string().contains("give it with --kernel"), "{err}");
        let arm = firmware_with(183, &[0xf4; 64], 64, &pvh_note(ENTRY));
        let err = inspect(arm).unwrap_err();
        assert!(
            matches!(err, FirmwareError::WrongMachine { machine: 183 }),
            "{err}"
        );
        assert!(err.to_string().contains("give CLOUDHV.fd"), "{err}");
    }

    #[test]
    fn rejects_malformed_program_headers() {
        for (offset, value) in [(54, 32u16), (56, 0), (56, MAX_PROGRAM_HEADERS + 1)] {
            let mut image = firmware();
            image[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
            let err = inspect(image).unwrap_err();
            assert!(
                matches!(err, FirmwareError::BadProgramHeaders { .. }),
                "{offset}: {err}"
            );
        }
    }

    #[test]
    fn rejects_truncated_program_headers() {
        let mut image = firmware();
        image.truncate(64 + 56 + 10);
        let err = inspect(image).unwrap_err();
        assert!(
            matches!(
                err,
                FirmwareError::TruncatedProgramHeaders { end: 176, len: 130 }
            ),
            "{err}"
        );
        // A program header offset near the end of the address space.
        let mut image = firmware();
        image[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        let err = inspect(image).unwrap_err();
        assert!(
            matches!(err, FirmwareError::TruncatedProgramHeaders { .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_truncated_segment_data() {
        let mut image = firmware_with_segment(LOAD_ADDRESS, 0x1000, 0x1000);
        let full = image.len() as u64;
        image.truncate(image.len() - 100);
        let err = inspect(image).unwrap_err();
        assert!(
            matches!(
                err,
                FirmwareError::TruncatedSegment { index: 1, end, len }
                    if end == full && len == full - 100
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_segments_whose_sizes_do_not_add_up() {
        let more_data_than_memory = firmware_with_segment(LOAD_ADDRESS, 0x1000, 0x10);
        assert!(matches!(
            inspect(more_data_than_memory),
            Err(FirmwareError::BadSegment { index: 1 })
        ));
        let wrapping = firmware_with_segment(u64::MAX - 0x10, 0, 0x100);
        assert!(matches!(
            inspect(wrapping),
            Err(FirmwareError::BadSegment { index: 1 })
        ));
        let mut far_offset = firmware_with_segment(LOAD_ADDRESS, 0x10, 0x10);
        // p_offset of the second program header.
        let at = 64 + 56 + 8;
        far_offset[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            inspect(far_offset),
            Err(FirmwareError::BadSegment { index: 1 })
        ));
    }

    #[test]
    fn rejects_an_image_without_a_loadable_segment() {
        let image = firmware_with(ELF_MACHINE_I386, &[], 0, &pvh_note(ENTRY));
        assert!(matches!(
            inspect(image),
            Err(FirmwareError::NoLoadableSegment)
        ));
    }

    #[test]
    fn rejects_segments_over_the_boot_structures() {
        for start in [0, 0x7000, 0xa_0000, 0xe_0000, 0xf_f000] {
            let err = inspect(firmware_with_segment(start, 0x1000, 0x2000)).unwrap_err();
            assert!(
                matches!(err, FirmwareError::SegmentInBootArea { start: s, .. } if s == start),
                "{start:#x}: {err}"
            );
            assert!(err.to_string().contains("below 1 MiB"), "{err}");
        }
    }

    #[test]
    fn rejects_segments_outside_guest_ram() {
        // Where flash-style firmware sits: just below 4 GiB.
        let err = inspect(firmware_with_segment(0xffc0_0000, 0x1000, 0x40_0000)).unwrap_err();
        assert!(
            matches!(
                err,
                FirmwareError::SegmentOutsideRam {
                    start: 0xffc0_0000,
                    end: 0x1_0000_0000
                }
            ),
            "{err}"
        );
        let above_4gib = firmware_with_segment(0x1_0000_0000, 0x10, 0x10);
        assert!(matches!(
            inspect_firmware(&mut Cursor::new(above_4gib), 8 << 30),
            Err(FirmwareError::SegmentOutsideRam { .. })
        ));
    }

    #[test]
    fn rejects_an_image_without_a_pvh_note() {
        let no_notes = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &[]);
        let err = inspect(no_notes).unwrap_err();
        assert!(matches!(err, FirmwareError::NoPvhNote), "{err}");
        assert!(err.to_string().contains("PVH"), "{err}");
        for other in [
            note(b"Xen\0", 17, &ENTRY.to_le_bytes()),
            note(b"Linux\0", XEN_ELFNOTE_PHYS32_ENTRY, &ENTRY.to_le_bytes()),
        ] {
            let image = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &other);
            assert!(matches!(inspect(image), Err(FirmwareError::NoPvhNote)));
        }
    }

    #[test]
    fn rejects_malformed_notes() {
        let mut name_too_long = pvh_note(ENTRY);
        name_too_long[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let short_desc = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0x10, 0]);
        let cut_header = pvh_note(ENTRY)[..8].to_vec();
        for notes in [name_too_long, short_desc, cut_header] {
            let image = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &notes);
            let err = inspect(image).unwrap_err();
            assert!(matches!(err, FirmwareError::BadNote), "{err}");
        }
        // A note segment past the end of the file.
        let mut image = firmware();
        let size_at = 64 + 56 + 32;
        image[size_at..size_at + 8].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(matches!(inspect(image), Err(FirmwareError::BadNote)));
        let huge = vec![0u8; usize_from_u64(MAX_NOTE_SEGMENT_SIZE) + 4];
        let image = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &huge);
        assert!(matches!(inspect(image), Err(FirmwareError::BadNote)));
    }

    #[test]
    fn rejects_an_entry_outside_the_image() {
        let image = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 64, &pvh_note(0x20_0000));
        let err = inspect(image).unwrap_err();
        assert!(
            matches!(err, FirmwareError::EntryOutsideImage { entry: 0x20_0000 }),
            "{err}"
        );
    }

    #[test]
    fn rejects_too_little_memory() {
        let err = inspect_firmware(&mut Cursor::new(firmware()), 64 * MIB).unwrap_err();
        assert!(
            matches!(err, FirmwareError::MemoryTooSmall { needed_mib: 128 }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "guest memory too small for UEFI firmware: it needs at least 128 MiB, give --memory 128 or more"
        );
        assert!(inspect_firmware(&mut Cursor::new(firmware()), 128 * MIB).is_ok());
        // A segment that ends beyond RAM asks for RAM up to its end.
        let big = firmware_with_segment(LOAD_ADDRESS, 0x10, 300 * MIB);
        let err = inspect_firmware(&mut Cursor::new(big), 256 * MIB).unwrap_err();
        assert!(
            matches!(err, FirmwareError::MemoryTooSmall { needed_mib: 301 }),
            "{err}"
        );
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert!(matches!(
            load_firmware(&mem, &mut Cursor::new(firmware())),
            Err(FirmwareError::MemoryTooSmall { needed_mib: 128 })
        ));
    }
    #[test]
    fn damaged_images_are_refused_or_load_inside_ram() {
        // Deterministic damage to a valid image: bytes overwritten in its
        // headers and note, and cuts. Whatever passes must still keep its
        // segments in RAM above 1 MiB, with the entry inside one.
        let mem_size = 128 * MIB;
        let original = firmware_with(ELF_MACHINE_I386, &[0xf4; 64], 0x1000, &pvh_note(ENTRY));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut image = original.clone();
            for _ in 0..1 + next() % 4 {
                let at = usize_from_u64(next() % (64 + 2 * 56 + 64 + 20));
                image[at] = next() as u8;
            }
            if next() % 8 == 0 {
                image.truncate(usize_from_u64(next() % original.len() as u64));
            }
            let Ok(loaded) = inspect_firmware(&mut Cursor::new(image), mem_size) else {
                continue;
            };
            for segment in &loaded.segments {
                assert!(segment.address >= HIGH_MEMORY_START);
                assert!(segment.address + segment.memory_size <= mem_size);
                assert!(segment.file_size <= segment.memory_size);
            }
            let entry = loaded.pvh_entry.0;
            assert!(loaded
                .segments
                .iter()
                .any(|s| entry >= s.address && entry < s.address + s.memory_size));
        }
    }
}
