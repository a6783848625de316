//! Boots a bzImage without running its decompressor inside the guest.
//!
//! A bzImage is a small decompressor whose payload is the compressed kernel:
//! an ELF vmlinux followed by its relocation table. In the guest, the
//! decompressor copies itself out of the way, inflates the payload into
//! fresh memory, picks random physical and virtual addresses (KASLR), moves
//! the ELF segments there and applies the relocations. Each page it touches
//! for the first time costs the host a page fault that zeroes it, and under
//! nested virtualization each of those is a VM exit emulated by the L1
//! hypervisor: about a second of a seven-second boot. securevm does the same
//! work on the host, writing each segment straight to its final place, and
//! enters the kernel at its 64-bit entry (`startup_64`) with the boot
//! parameters, as the decompressor does.
//!
//! This is done only where the kernel then gets exactly what its own
//! decompressor would give it: an LZ4 payload (what Debian's cloud kernels
//! use), a relocatable kernel built with KASLR (its decompressor knows the
//! `nokaslr` option, so its virtual range is KASLR's 1 GiB), no command-line
//! option that limits where the decompressor may put the kernel (`mem=`,
//! `memmap=`, huge page reservations, `movable_node`), and a host without
//! 5-level paging (the decompressor would switch the guest to it). Any other
//! kernel boots through its decompressor as before.
//!
//! The random offsets come from the host's `getrandom` (never a predictable
//! fallback), `nokaslr` is honoured, and the boot parameters carry the KASLR
//! flag exactly when the kernel was moved, so that the kernel goes on to
//! randomise its own memory regions as it does after its decompressor.

use std::ops::Range;

use linux_loader::loader::bootparam::setup_header;
use thiserror::Error;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, VolatileSlice,
};

/// Magic of the LZ4 "legacy" stream (`lz4 -l`), the kernel's LZ4 format.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// A legacy-format block inflates to at most 8 MiB.
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;
/// Boot protocol 2.08 added `payload_offset` and `payload_length`.
const PAYLOAD_FIELDS_PROTOCOL: u16 = 0x0208;
/// An option only a KASLR decompressor parses.
const KASLR_MARKER: &[u8] = b"nokaslr";
/// x86-64 `KERNEL_IMAGE_SIZE` for kernels built with `CONFIG_RANDOMIZE_BASE`.
const KASLR_KERNEL_IMAGE_SIZE: u64 = 1 << 30;
/// Virtual address of physical 0 in the kernel's text mapping
/// (`__START_KERNEL_map`).
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// The smallest alignment an x86-64 kernel accepts (`MIN_KERNEL_ALIGN`).
const MIN_KERNEL_ALIGN: u64 = 2 << 20;
/// Command-line options that change where the decompressor may place the
/// kernel; with any of them the kernel's own decompressor does the work.
const OPTIONS_THAT_CONSTRAIN_PLACEMENT: &[&str] = &[
    "mem",
    "memmap",
    "hugepages",
    "hugepagesz",
    "movable_node",
    "efi_fake_mem",
];
/// Bounds what an image may make securevm allocate for its tail (section
/// headers and relocation table; about 1 MiB for a distribution kernel).
const TAIL_MAX: u64 = 64 << 20;
const ELF_HEADER_SIZE: usize = 64;
const ELF_PROGRAM_HEADER_SIZE: usize = 56;
const ELF_PT_LOAD: u32 = 1;
const ELF_MACHINE_X86_64: u16 = 62;

/// Why a payload that looked unpackable could not be unpacked.
#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("its LZ4 payload is damaged ({0})")]
    Lz4(&'static str),
    #[error("its LZ4 payload inflates to {actual} bytes, not the {expected} its trailer gives")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("the vmlinux in its payload is malformed ({0})")]
    Elf(&'static str),
    #[error("its relocation table is malformed ({0})")]
    Relocations(&'static str),
    #[error(
        "a relocation points outside the kernel (at offset {offset:#x} of a {span:#x}-byte image)"
    )]
    RelocationOutside { offset: u64, span: u64 },
    #[error(
        "it needs {needed_mib} MiB below the initrd and only {available_mib} MiB are free there"
    )]
    NoRoom { needed_mib: u64, available_mib: u64 },
    #[error("the host gave no random numbers for KASLR: {0}")]
    Random(#[source] std::io::Error),
    #[error("cannot write it into guest memory: {0}")]
    GuestMemory(#[source] GuestMemoryError),
}

/// Where an unpacked kernel lies and how to enter it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// Physical address of `startup_64`.
    pub entry: u64,
    /// Guest-physical range the kernel image (text to `_end`) occupies.
    pub start: u64,
    pub end: u64,
    /// Whether KASLR moved the kernel (the boot parameters then carry the
    /// KASLR flag).
    pub randomized: bool,
}

/// The byte range of `image` holding an LZ4 payload that securevm can unpack
/// for a kernel that will run with `cmdline`, or `None` when the kernel's own
/// decompressor must run (see the module comment for when).
pub fn unpackable_payload(
    header: &setup_header,
    image: &[u8],
    setup_bytes: u64,
    cmdline: &str,
) -> Option<Range<usize>> {
    if header.version < PAYLOAD_FIELDS_PROTOCOL || header.relocatable_kernel == 0 {
        return None;
    }
    let start = usize::try_from(setup_bytes)
        .ok()?
        .checked_add(usize::try_from(header.payload_offset).ok()?)?;
    let end = start.checked_add(usize::try_from(header.payload_length).ok()?)?;
    let payload = image.get(start..end)?;
    if payload.get(..4) != Some(&LZ4_LEGACY_MAGIC.to_le_bytes()[..]) {
        return None;
    }
    let decompressor = [&image[setup_bytes as usize..start], &image[end..]];
    if !decompressor.iter().any(|part| contains(part, KASLR_MARKER)) {
        return None;
    }
    let constrained = cmdline_options(cmdline).any(|option| {
        let name = option.split_once('=').map_or(option, |(name, _)| name);
        OPTIONS_THAT_CONSTRAIN_PLACEMENT.contains(&name)
    });
    if constrained || host_has_five_level_paging() {
        return None;
    }
    Some(start..end)
}

/// Whether `cmdline` turns KASLR off, as the decompressor reads it.
pub fn kaslr_disabled(cmdline: &str) -> bool {
    cmdline_options(cmdline).any(|option| option == "nokaslr")
}

/// The options of a kernel command line: words separated by spaces, where
/// double quotes keep spaces inside one word (`e2e.cmd="a b"`), as the
/// kernel's own parser splits them.
fn cmdline_options(cmdline: &str) -> impl Iterator<Item = &str> {
    let mut rest = cmdline;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c.is_ascii_whitespace() && !quoted
            })
            .map_or(rest.len(), |(at, _)| at);
        let (option, tail) = rest.split_at(end);
        rest = tail;
        Some(option)
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn host_has_five_level_paging() -> bool {
    const LA57: u32 = 1 << 16;
    // CPUID leaf 7 exists on every x86-64 CPU KVM runs on.
    std::arch::x86_64::__cpuid_count(7, 0).ecx & LA57 != 0
}

/// A random `u64` from the host kernel's CSPRNG.
pub fn host_random() -> Result<u64, UnpackError> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `bytes`, which lives for the whole call.
        let got = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if got < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(UnpackError::Random(error));
        }
        filled += got as usize;
    }
    Ok(u64::from_ne_bytes(bytes))
}

/// One loadable segment of the vmlinux.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
}

/// The parts of the vmlinux ELF header the placement needs.
#[derive(Debug)]
struct Layout {
    entry: u64,
    segments: Vec<Segment>,
    /// Bytes from the link-time load address to the end of the highest
    /// segment in memory (`_end - _text`).
    span: u64,
    /// End of the segments' data in the ELF file; what follows holds the
    /// relocation table.
    file_end: u64,
}

fn parse_elf(head: &[u8], load_physical: u64, total_len: u64) -> Result<Layout, UnpackError> {
    let header = head
        .get(..ELF_HEADER_SIZE)
        .ok_or(UnpackError::Elf("shorter than an ELF header"))?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(UnpackError::Elf("not a little-endian 64-bit ELF"));
    }
    let le16 = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let le64 = |bytes: &[u8], at: usize| {
        let mut field = [0u8; 8];
        field.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(field)
    };
    if le16(18) != ELF_MACHINE_X86_64 {
        return Err(UnpackError::Elf("not for x86-64"));
    }
    let entry = le64(header, 24);
    let phoff = usize::try_from(le64(header, 32)).map_err(|_| UnpackError::Elf("bad phoff"))?;
    if usize::from(le16(54)) != ELF_PROGRAM_HEADER_SIZE {
        return Err(UnpackError::Elf("unexpected program header size"));
    }
    let table_len = usize::from(le16(56)) * ELF_PROGRAM_HEADER_SIZE;
    let table = phoff
        .checked_add(table_len)
        .and_then(|end| head.get(phoff..end))
        .ok_or(UnpackError::Elf("program headers beyond the first block"))?;

    let image_limit = load_physical + KASLR_KERNEL_IMAGE_SIZE;
    let mut segments = Vec::new();
    let mut span_end = load_physical;
    let mut file_end = 0;
    for phdr in table.chunks_exact(ELF_PROGRAM_HEADER_SIZE) {
        if u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]) != ELF_PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (
            le64(phdr, 8),
            le64(phdr, 24),
            le64(phdr, 32),
            le64(phdr, 40),
        );
        let in_file = offset.checked_add(filesz).filter(|end| *end <= total_len);
        let in_memory = paddr
            .checked_add(memsz)
            .filter(|end| paddr >= load_physical && *end <= image_limit);
        let (Some(data_end), Some(memory_end)) = (in_file, in_memory) else {
            return Err(UnpackError::Elf("a segment lies outside the image"));
        };
        if filesz > memsz {
            return Err(UnpackError::Elf(
                "a segment has more file than memory bytes",
            ));
        }
        span_end = span_end.max(memory_end);
        file_end = file_end.max(data_end);
        segments.push(Segment {
            offset,
            paddr,
            filesz,
        });
    }
    if segments.is_empty() {
        return Err(UnpackError::Elf("no loadable segment"));
    }
    let span = span_end - load_physical;
    if !(load_physical..span_end).contains(&entry) {
        return Err(UnpackError::Elf("the entry point lies outside the image"));
    }
    Ok(Layout {
        entry,
        segments,
        span,
        file_end,
    })
}

/// The blocks of an LZ4 legacy stream (after its magic), inflated one at a
/// time into a reused buffer.
struct Lz4Blocks<'a> {
    input: &'a [u8],
    buffer: Vec<u8>,
}

impl<'a> Lz4Blocks<'a> {
    fn new(stream: &'a [u8]) -> Result<Self, UnpackError> {
        let input = stream
            .strip_prefix(&LZ4_LEGACY_MAGIC.to_le_bytes()[..])
            .ok_or(UnpackError::Lz4("no LZ4 legacy magic"))?;
        Ok(Lz4Blocks {
            input,
            buffer: vec![0; LZ4_LEGACY_BLOCK_MAX],
        })
    }

    /// The next inflated block, or `None` at the end of the stream.
    fn next_block(&mut self) -> Result<Option<&[u8]>, UnpackError> {
        loop {
            let Some((size, rest)) = self.input.split_first_chunk::<4>() else {
                return match self.input.is_empty() {
                    true => Ok(None),
                    false => Err(UnpackError::Lz4("a block header is cut short")),
                };
            };
            let size = u32::from_le_bytes(*size);
            if size == LZ4_LEGACY_MAGIC {
                // Concatenated streams: each starts with the magic again.
                self.input = rest;
                continue;
            }
            let block = rest
                .get(..size as usize)
                .ok_or(UnpackError::Lz4("a block runs past the payload"))?;
            self.input = &rest[size as usize..];
            let len = lz4_flex::block::decompress_into(block, &mut self.buffer)
                .map_err(|_| UnpackError::Lz4("a block does not decode"))?;
            return Ok(Some(&self.buffer[..len]));
        }
    }
}

/// Unpacks the kernel in `payload` (LZ4 stream, then the inflated length as
/// 4 little-endian bytes) into `mem`, somewhere in `room`, moved by KASLR
/// unless `nokaslr`, using `random` for the offsets.
pub fn unpack(
    mem: &GuestMemoryMmap,
    header: &setup_header,
    payload: &[u8],
    room: Range<u64>,
    nokaslr: bool,
    random: &mut dyn FnMut() -> Result<u64, UnpackError>,
) -> Result<Unpacked, UnpackError> {
    let (stream, trailer) = payload
        .split_last_chunk::<4>()
        .ok_or(UnpackError::Lz4("shorter than its length trailer"))?;
    let total_len = u64::from(u32::from_le_bytes(*trailer));
    let load_physical = header.pref_address;
    let align = u64::from(header.kernel_alignment);
    if !align.is_power_of_two() || !(MIN_KERNEL_ALIGN..=KASLR_KERNEL_IMAGE_SIZE).contains(&align) {
        return Err(UnpackError::Elf(
            "the setup header's kernel alignment is unusable",
        ));
    }
    if !load_physical.is_multiple_of(align) {
        return Err(UnpackError::Elf("the preferred address is not aligned"));
    }

    let mut blocks = Lz4Blocks::new(stream)?;
    let first = blocks
        .next_block()?
        .ok_or(UnpackError::Lz4("the stream is empty"))?;
    let layout = parse_elf(first, load_physical, total_len)?;
    if total_len - layout.file_end > TAIL_MAX {
        return Err(UnpackError::Relocations("larger than any kernel's"));
    }
    let placement = place(
        &layout,
        total_len,
        align,
        load_physical,
        room,
        nokaslr,
        random,
    )?;
    let image = mem
        .get_slice(GuestAddress(placement.physical), layout.span as usize)
        .map_err(UnpackError::GuestMemory)?;

    let mut tail = Vec::new();
    scatter(&image, &layout, load_physical, 0, first, &mut tail)?;
    let mut offset = first.len() as u64;
    while let Some(data) = blocks.next_block()? {
        if offset + data.len() as u64 > total_len {
            return Err(UnpackError::LengthMismatch {
                expected: total_len,
                actual: offset + data.len() as u64,
            });
        }
        scatter(&image, &layout, load_physical, offset, data, &mut tail)?;
        offset += data.len() as u64;
    }
    if offset != total_len {
        return Err(UnpackError::LengthMismatch {
            expected: total_len,
            actual: offset,
        });
    }

    let virtual_delta = placement.virtual_address - load_physical;
    if virtual_delta != 0 {
        relocate(&image, &tail, load_physical, layout.span, virtual_delta)?;
    }
    Ok(Unpacked {
        entry: placement.physical + (layout.entry - load_physical),
        start: placement.physical,
        end: placement.physical + layout.span,
        randomized: !nokaslr,
    })
}

/// Where the kernel goes: its physical address, and the address, counted
/// from `__START_KERNEL_map`, its text is relocated to run at.
struct Placement {
    physical: u64,
    virtual_address: u64,
}

/// Picks the kernel's physical slot within `room` and its virtual slot
/// within the KASLR range, as the decompressor's `choose_random_location`.
fn place(
    layout: &Layout,
    total_len: u64,
    align: u64,
    load_physical: u64,
    room: Range<u64>,
    nokaslr: bool,
    random: &mut dyn FnMut() -> Result<u64, UnpackError>,
) -> Result<Placement, UnpackError> {
    let no_room = || UnpackError::NoRoom {
        needed_mib: layout.span.div_ceil(1 << 20),
        available_mib: room.end.saturating_sub(room.start.max(load_physical)) >> 20,
    };
    let lowest = room.start.max(load_physical).next_multiple_of(align);
    let highest = room
        .end
        .checked_sub(layout.span)
        .map(|top| top / align * align)
        .filter(|top| *top >= lowest)
        .ok_or_else(no_room)?;
    if nokaslr {
        if lowest != load_physical {
            return Err(no_room());
        }
        return Ok(Placement {
            physical: load_physical,
            virtual_address: load_physical,
        });
    }
    let physical_slots = (highest - lowest) / align + 1;
    let physical = lowest + random()? % physical_slots * align;

    // The decompressor sizes the virtual range by what it inflates in place,
    // which includes the relocation table.
    let output_size = total_len.max(layout.span).next_multiple_of(align);
    let virtual_room = KASLR_KERNEL_IMAGE_SIZE
        .checked_sub(load_physical + output_size)
        .ok_or(UnpackError::Elf(
            "the kernel is larger than the KASLR range",
        ))?;
    let virtual_slots = virtual_room / align + 1;
    let virtual_address = load_physical + random()? % virtual_slots * align;
    Ok(Placement {
        physical,
        virtual_address,
    })
}

/// Writes the part of `data` (inflated bytes at `offset` of the vmlinux
/// file) that belongs to a segment into `image`; keeps what lies past the
/// segments (the relocation table) in `tail`.
fn scatter(
    image: &VolatileSlice,
    layout: &Layout,
    load_physical: u64,
    offset: u64,
    data: &[u8],
    tail: &mut Vec<u8>,
) -> Result<(), UnpackError> {
    let end = offset + data.len() as u64;
    for segment in &layout.segments {
        let from = segment.offset.max(offset);
        let to = (segment.offset + segment.filesz).min(end);
        if from >= to {
            continue;
        }
        let bytes = &data[(from - offset) as usize..(to - offset) as usize];
        let at = segment.paddr - load_physical + (from - segment.offset);
        image
            .write_slice(bytes, at as usize)
            .map_err(|e| UnpackError::GuestMemory(GuestMemoryError::from(e)))?;
    }
    if end > layout.file_end {
        let from = layout.file_end.max(offset);
        tail.extend_from_slice(&data[(from - offset) as usize..]);
    }
    Ok(())
}

/// Applies the relocation table at the end of `tail` for a kernel moved
/// `delta` bytes up in virtual memory, as the decompressor's
/// `handle_relocations`: read from the end, 32-bit relocations, a zero,
/// inverse 32-bit relocations, a zero, 64-bit relocations, a zero. Each
/// entry is the sign-extended virtual address of a field in the kernel.
fn relocate(
    image: &VolatileSlice,
    tail: &[u8],
    load_physical: u64,
    span: u64,
    delta: u64,
) -> Result<(), UnpackError> {
    let mut entries = tail
        .rchunks_exact(4)
        .map(|entry| i32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]));
    let field_offset = |entry: i32, width: u64| {
        let offset = (i64::from(entry) as u64)
            .wrapping_sub(START_KERNEL_MAP)
            .wrapping_sub(load_physical);
        match offset.checked_add(width) {
            Some(end) if end <= span && offset < span => Ok(offset as usize),
            _ => Err(UnpackError::RelocationOutside { offset, span }),
        }
    };
    let memory = |e: vm_memory::VolatileMemoryError| UnpackError::GuestMemory(e.into());
    for kind in [Kind::Add32, Kind::Subtract32, Kind::Add64] {
        loop {
            let entry = entries
                .next()
                .ok_or(UnpackError::Relocations("a list has no terminating zero"))?;
            if entry == 0 {
                break;
            }
            match kind {
                Kind::Add32 => {
                    let at = field_offset(entry, 4)?;
                    let value: u32 = image.read_obj(at).map_err(memory)?;
                    image
                        .write_obj(value.wrapping_add(delta as u32), at)
                        .map_err(memory)?;
                }
                Kind::Subtract32 => {
                    let at = field_offset(entry, 4)?;
                    let value: i32 = image.read_obj(at).map_err(memory)?;
                    image
                        .write_obj(value.wrapping_sub(delta as i32), at)
                        .map_err(memory)?;
                }
                Kind::Add64 => {
                    let at = field_offset(entry, 8)?;
                    let value: u64 = image.read_obj(at).map_err(memory)?;
                    image
                        .write_obj(value.wrapping_add(delta), at)
                        .map_err(memory)?;
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Add32,
    Subtract32,
    Add64,
}
