//! Loads the guest kernel, initrd and command line into guest memory.
//!
//! Two kernel formats are accepted: a bzImage (what distributions ship as
//! `/boot/vmlinuz-*`, entered through the Linux 64-bit boot protocol) and an
//! uncompressed ELF `vmlinux` (entered through PVH when it carries the PVH
//! note, else through the 64-bit protocol at its ELF entry). The copying is
//! done by linux-loader; this module first checks the image itself so that a
//! user who passes the wrong file, a truncated download, a kernel too old for
//! 64-bit entry or too little `--memory` is told exactly that.

pub mod firmware;

use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use thiserror::Error;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
    ReadVolatile,
};

use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START};
use crate::narrow::usize_from_u64;

const MIB: u64 = 1 << 20;
const PAGE_SIZE: u64 = 4096;
/// Offset of the setup header in a bzImage, and of its "HdrS" magic.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const SETUP_MAGIC_OFFSET: usize = 0x202;
const SETUP_MAGIC: &[u8; 4] = b"HdrS";
/// Boot protocol 2.12 introduced `xloadflags` and with it the flag that
/// announces the 64-bit entry point this VMM uses.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry point is this far into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Initrds must stay below this when the kernel does not say otherwise
/// (the boot protocol's value for the `vmlinux` case, where there is no header).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELF_CLASS_64: u8 = 2;
const ELF_DATA_LITTLE_ENDIAN: u8 = 1;
const ELF_MACHINE_X86_64: u16 = 62;
const ELF_HEADER_SIZE: usize = 64;
const ELF_PROGRAM_HEADER_SIZE: usize = 56;
const ELF_PT_LOAD: u32 = 1;
/// How much of a kernel file is read up front to recognise its format.
const PROBE_SIZE: u64 = 0x1000;

/// Why a kernel, initrd or command line could not be loaded.
#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("cannot read the {what}: {source}; check that the file exists and is readable")]
    Read {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel file is empty: give a bzImage (e.g. /boot/vmlinuz-*) or an ELF vmlinux with --kernel")]
    EmptyKernel,
    #[error("the file given as kernel is not a Linux kernel (neither a bzImage with a \"HdrS\" setup header nor an ELF file): give a bzImage (e.g. /boot/vmlinuz-*) or an ELF vmlinux with --kernel")]
    NotAKernel,
    #[error("the bzImage is truncated: its setup header describes {expected} bytes but the file has only {actual}; copy or download the kernel again")]
    TruncatedBzImage { expected: u64, actual: u64 },
    #[error("the kernel uses boot protocol {}.{:02}; securevm needs 2.12 or newer (Linux 3.8+) for the 64-bit entry point: give a newer kernel", .version >> 8, .version & 0xff)]
    KernelTooOld { version: u16 },
    #[error("the kernel has no 64-bit entry point (it is a 32-bit build or a zImage): give an x86-64 kernel")]
    No64BitEntry,
    #[error("the ELF file is for machine type {machine}, not x86-64 (62): give a kernel built for x86-64")]
    ElfNotX86_64 { machine: u16 },
    #[error("the ELF file is not a little-endian 64-bit ELF: give an x86-64 vmlinux")]
    ElfNot64Bit,
    #[error("the ELF file is truncated (its program headers end past the end of the file): copy the kernel again")]
    TruncatedElf,
    #[error("the kernel wants to be loaded at {address:#x}, below 1 MiB where the boot structures live: give a standard x86-64 kernel")]
    LoadAddressTooLow { address: u64 },
    #[error("guest memory too small for the kernel: needs at least {needed_mib} MiB, give --memory {suggested_mib}")]
    MemoryTooSmall { needed_mib: u64, suggested_mib: u64 },
    #[error("cannot copy the kernel into guest memory: {0}")]
    Load(#[source] linux_loader::loader::Error),
    #[error("the initrd file is empty: give an initramfs (e.g. /boot/initrd.img-*) with --initrd or leave --initrd out")]
    EmptyInitrd,
    #[error("the initrd ({size_mib} MiB) does not fit in guest memory next to the kernel ({available_mib} MiB free below the initrd limit): give a larger --memory or a smaller initrd")]
    InitrdTooBig { size_mib: u64, available_mib: u64 },
    #[error("the kernel command line is {len} bytes, longer than the {max} bytes the kernel accepts: shorten --cmdline")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte: remove it from --cmdline")]
    CmdlineHasNul,
    #[error("cannot write the {what} into guest memory: {source}")]
    GuestMemory {
        what: &'static str,
        #[source]
        source: GuestMemoryError,
    },
}

/// The on-disk format the kernel was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// What the boot code needs to know about a loaded kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    pub format: KernelFormat,
    /// Where the (protected-mode part of the) kernel was copied.
    pub load_address: GuestAddress,
    /// Entry point for the Linux 64-bit boot protocol.
    pub entry_64: GuestAddress,
    /// Entry point for PVH, when an ELF kernel carries the PVH note.
    pub pvh_entry: Option<GuestAddress>,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte past the memory the kernel uses while it decompresses and
    /// boots; the initrd must go above this.
    pub footprint_end: u64,
    /// Longest command line (without the terminating NUL) the kernel accepts.
    pub cmdline_max: usize,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u64,
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdInfo {
    pub address: GuestAddress,
    pub size: u64,
}

/// Where the command line was placed; `len` excludes the terminating NUL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdlineInfo {
    pub address: GuestAddress,
    pub len: usize,
}

/// Loads a bzImage or ELF vmlinux into `mem`.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, kernel: &mut F) -> Result<KernelImage, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let read_error = |source| LoaderError::Read {
        what: "kernel",
        source,
    };
    let file_len = kernel.seek(SeekFrom::End(0)).map_err(read_error)?;
    if file_len == 0 {
        return Err(LoaderError::EmptyKernel);
    }
    kernel.rewind().map_err(read_error)?;
    let mut probe = Vec::with_capacity(usize_from_u64(PROBE_SIZE));
    kernel
        .by_ref()
        .take(PROBE_SIZE)
        .read_to_end(&mut probe)
        .map_err(read_error)?;

    if probe.starts_with(ELF_MAGIC) {
        load_elf(mem, kernel, &probe)
    } else if probe.get(SETUP_MAGIC_OFFSET..SETUP_MAGIC_OFFSET + 4) == Some(SETUP_MAGIC) {
        load_bzimage(mem, kernel, &probe, file_len)
    } else {
        Err(LoaderError::NotAKernel)
    }
}

fn load_bzimage<F>(
    mem: &GuestMemoryMmap,
    kernel: &mut F,
    probe: &[u8],
    file_len: u64,
) -> Result<KernelImage, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let header = parse_setup_header(probe, file_len)?;
    let load_address = u64::from(header.code32_start);
    if load_address < HIGH_MEMORY_START {
        return Err(LoaderError::LoadAddressTooLow {
            address: load_address,
        });
    }
    let payload_len = file_len - setup_bytes(&header);
    let footprint_end = bzimage_footprint_end(&header, load_address, payload_len);
    check_fits(mem, footprint_end)?;

    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START)))
        .map_err(LoaderError::Load)?;
    Ok(KernelImage {
        format: KernelFormat::BzImage,
        load_address: loaded.kernel_load,
        entry_64: GuestAddress(loaded.kernel_load.0 + ENTRY_64_OFFSET),
        pvh_entry: None,
        setup_header: loaded.setup_header,
        footprint_end,
        cmdline_max: (header.cmdline_size as usize).min(CMDLINE_MAX_SIZE - 1),
        initrd_addr_max: u64::from(header.initrd_addr_max),
    })
}

/// Size of the real-mode setup part that precedes the protected-mode kernel.
fn setup_bytes(header: &setup_header) -> u64 {
    let sectors = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    (sectors + 1) * 512
}

/// Reads and validates the setup header of a bzImage of `file_len` bytes
/// whose first bytes are `probe`.
fn parse_setup_header(probe: &[u8], file_len: u64) -> Result<setup_header, LoaderError> {
    let header_len = std::mem::size_of::<setup_header>();
    let Some(raw) = probe.get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + header_len) else {
        return Err(LoaderError::TruncatedBzImage {
            expected: (SETUP_HEADER_OFFSET + header_len) as u64,
            actual: file_len,
        });
    };
    let mut header = setup_header::default();
    vm_memory::ByteValued::as_mut_slice(&mut header).copy_from_slice(raw);

    let version = header.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(LoaderError::KernelTooOld { version });
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 || header.loadflags & LOADED_HIGH == 0 {
        return Err(LoaderError::No64BitEntry);
    }
    let setup = setup_bytes(&header);
    let expected = setup + u64::from(header.syssize).max(1) * 16;
    if file_len < expected {
        return Err(LoaderError::TruncatedBzImage {
            expected,
            actual: file_len,
        });
    }
    Ok(header)
}

/// The decompressor places the kernel at the preferred address (or the load
/// address rounded up to the kernel's alignment, if higher) and needs
/// `init_size` bytes from there.
fn bzimage_footprint_end(header: &setup_header, load_address: u64, payload_len: u64) -> u64 {
    let alignment = u64::from(header.kernel_alignment).max(1);
    let aligned_load = load_address.div_ceil(alignment).saturating_mul(alignment);
    let run_address = aligned_load.max(header.pref_address);
    run_address
        .saturating_add(u64::from(header.init_size))
        .max(load_address.saturating_add(payload_len))
}

/// Errors unless `footprint_end` lies within the RAM that starts at 0.
fn check_fits(mem: &GuestMemoryMmap, footprint_end: u64) -> Result<(), LoaderError> {
    if footprint_end <= low_ram_end(mem) {
        return Ok(());
    }
    let needed_mib = footprint_end.div_ceil(MIB);
    // Room to run, not just to load: the kernel needs working memory too.
    let suggested_mib = (needed_mib + 64).div_ceil(64) * 64;
    Err(LoaderError::MemoryTooSmall {
        needed_mib,
        suggested_mib,
    })
}

/// End (exclusive) of the guest RAM region that starts at address 0.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.find_region(GuestAddress(0))
        .map(|region| region.len())
        .unwrap_or(0)
}

fn load_elf<F>(
    mem: &GuestMemoryMmap,
    kernel: &mut F,
    probe: &[u8],
) -> Result<KernelImage, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let (entry, lowest, footprint_end) = inspect_elf(kernel, probe)?;
    if lowest < HIGH_MEMORY_START || entry < HIGH_MEMORY_START {
        return Err(LoaderError::LoadAddressTooLow {
            address: lowest.min(entry),
        });
    }
    check_fits(mem, footprint_end)?;

    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START)))
        .map_err(LoaderError::Load)?;
    let pvh_entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(address) => Some(address),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => None,
    };
    Ok(KernelImage {
        format: KernelFormat::Elf,
        load_address: GuestAddress(lowest),
        entry_64: loaded.kernel_load,
        pvh_entry,
        setup_header: None,
        footprint_end,
        cmdline_max: CMDLINE_MAX_SIZE - 1,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
    })
}

/// Checks the ELF header and returns (entry, lowest load address, end of
/// the highest loadable segment).
fn inspect_elf<F: Read + Seek>(
    kernel: &mut F,
    probe: &[u8],
) -> Result<(u64, u64, u64), LoaderError> {
    let header = probe
        .get(..ELF_HEADER_SIZE)
        .ok_or(LoaderError::TruncatedElf)?;
    if header[4] != ELF_CLASS_64 || header[5] != ELF_DATA_LITTLE_ENDIAN {
        return Err(LoaderError::ElfNot64Bit);
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if machine != ELF_MACHINE_X86_64 {
        return Err(LoaderError::ElfNotX86_64 { machine });
    }
    let entry = u64::from_le_bytes(header[24..32].try_into().unwrap_or_default());
    let phoff = u64::from_le_bytes(header[32..40].try_into().unwrap_or_default());
    let phentsize = u16::from_le_bytes([header[54], header[55]]);
    let phnum = u16::from_le_bytes([header[56], header[57]]);
    if usize::from(phentsize) != ELF_PROGRAM_HEADER_SIZE || phnum == 0 {
        return Err(LoaderError::TruncatedElf);
    }

    let mut table = vec![0u8; usize::from(phnum) * ELF_PROGRAM_HEADER_SIZE];
    kernel
        .seek(SeekFrom::Start(phoff))
        .and_then(|_| kernel.read_exact(&mut table))
        .map_err(|_| LoaderError::TruncatedElf)?;

    let mut lowest = u64::MAX;
    let mut end = 0u64;
    for phdr in table.chunks_exact(ELF_PROGRAM_HEADER_SIZE) {
        let field = |at: usize| u64::from_le_bytes(phdr[at..at + 8].try_into().unwrap_or_default());
        let p_type = u32::from_le_bytes(phdr[0..4].try_into().unwrap_or_default());
        let (paddr, filesz, memsz) = (field(24), field(32), field(40));
        if p_type != ELF_PT_LOAD || filesz == 0 {
            continue;
        }
        lowest = lowest.min(paddr);
        end = end.max(paddr.saturating_add(memsz.max(filesz)));
    }
    if end == 0 {
        return Err(LoaderError::TruncatedElf);
    }
    Ok((entry, lowest, end))
}

/// Copies the initrd to the top of low RAM (below the kernel's initrd limit),
/// page aligned, as bootloaders do.
pub fn load_initrd<F>(
    mem: &GuestMemoryMmap,
    initrd: &mut F,
    kernel: &KernelImage,
) -> Result<InitrdInfo, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let read_error = |source| LoaderError::Read {
        what: "initrd",
        source,
    };
    let size = initrd.seek(SeekFrom::End(0)).map_err(read_error)?;
    if size == 0 {
        return Err(LoaderError::EmptyInitrd);
    }
    initrd.rewind().map_err(read_error)?;

    let top = low_ram_end(mem).min(kernel.initrd_addr_max.saturating_add(1));
    let available = top.saturating_sub(kernel.footprint_end);
    let address = top
        .checked_sub(size)
        .map(|start| start & !(PAGE_SIZE - 1))
        .filter(|start| *start >= kernel.footprint_end)
        .ok_or(LoaderError::InitrdTooBig {
            size_mib: size.div_ceil(MIB),
            available_mib: available / MIB,
        })?;
    let len = usize::try_from(size).map_err(|_| LoaderError::InitrdTooBig {
        size_mib: size.div_ceil(MIB),
        available_mib: available / MIB,
    })?;
    mem.read_exact_volatile_from(GuestAddress(address), initrd, len)
        .map_err(|source| LoaderError::GuestMemory {
            what: "initrd",
            source,
        })?;
    Ok(InitrdInfo {
        address: GuestAddress(address),
        size,
    })
}

/// Writes the NUL-terminated command line at `CMDLINE_START`.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    kernel: &KernelImage,
) -> Result<CmdlineInfo, LoaderError> {
    if cmdline.contains('\0') {
        return Err(LoaderError::CmdlineHasNul);
    }
    let max = kernel.cmdline_max.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| LoaderError::GuestMemory {
            what: "kernel command line",
            source,
        })?;
    Ok(CmdlineInfo {
        address: GuestAddress(CMDLINE_START),
        len: cmdline.len(),
    })
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use linux_loader::loader::bootparam::{LOADED_HIGH, XLF_KERNEL_64};
    use std::io::Cursor;
    use vm_memory::ByteValued;

    const SETUP_SECTS: u8 = 1;
    const PAYLOAD: usize = 0x1000;

    fn memory(mib: u64) -> GuestMemoryMmap {
        crate::arch::memory::create_guest_memory(mib * MIB).unwrap()
    }

    fn valid_header() -> setup_header {
        setup_header {
            setup_sects: SETUP_SECTS,
            boot_flag: 0xaa55,
            jump: 0x6aeb,
            header: u32::from_le_bytes(*b"HdrS"),
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: HIGH_MEMORY_START as u32,
            syssize: (PAYLOAD / 16) as u32,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x1000,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            pref_address: HIGH_MEMORY_START,
            init_size: 0x10_0000,
            ..Default::default()
        }
    }

    /// A bzImage with `header` whose protected-mode payload is `PAYLOAD`
    /// bytes of 0xf4 (hlt).
    fn bzimage(header: &setup_header) -> Vec<u8> {
        let setup = (usize::from(SETUP_SECTS) + 1) * 512;
        let mut image = vec![0u8; setup + PAYLOAD];
        image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()]
            .copy_from_slice(header.as_slice());
        image[setup..].fill(0xf4);
        image
    }

    /// A 64-bit ELF for `machine` with one loadable segment of `code` at
    /// physical 0x20_0000 and, if `pvh_entry` is given, a Xen PVH note.
    fn elf(machine: u16, code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let data_start = 64 + 56 * u64::from(phnum);
        let note_start = data_start + code.len() as u64;
        let mut image = Vec::new();
        image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        image.extend_from_slice(&machine.to_le_bytes());
        image.extend_from_slice(&1u32.to_le_bytes());
        image.extend_from_slice(&0x20_0000u64.to_le_bytes()); // e_entry
        image.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, phnum, 64, 0, 0] {
            image.extend_from_slice(&half.to_le_bytes());
        }
        let mut program_header = |p_type: u32, offset: u64, paddr: u64, size: u64| {
            image.extend_from_slice(&p_type.to_le_bytes());
            image.extend_from_slice(&5u32.to_le_bytes());
            for field in [offset, paddr, paddr, size, size, 4] {
                image.extend_from_slice(&field.to_le_bytes());
            }
        };
        program_header(1, data_start, 0x20_0000, code.len() as u64);
        if pvh_entry.is_some() {
            program_header(4, note_start, 0, 20);
        }
        image.extend_from_slice(code);
        if let Some(entry) = pvh_entry {
            for word in [4u32, 4, 18] {
                image.extend_from_slice(&word.to_le_bytes());
            }
            image.extend_from_slice(b"Xen\0");
            image.extend_from_slice(&entry.to_le_bytes());
        }
        image
    }

    fn load(image: Vec<u8>, mem_mib: u64) -> Result<KernelImage, LoaderError> {
        load_kernel(&memory(mem_mib), &mut Cursor::new(image))
    }

    #[test]
    fn loads_bzimage_with_64bit_entry() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        assert_eq!(kernel.format, KernelFormat::BzImage);
        assert_eq!(kernel.load_address, GuestAddress(0x10_0000));
        assert_eq!(kernel.entry_64, GuestAddress(0x10_0200));
        assert_eq!(kernel.footprint_end, 0x20_0000);
        assert_eq!(kernel.cmdline_max, 2047);
        assert!(kernel.setup_header.is_some());
        let byte: u8 = mem
            .read_obj(GuestAddress(0x10_0000 + PAYLOAD as u64 - 1))
            .unwrap();
        assert_eq!(byte, 0xf4);
    }

    #[test]
    fn rejects_a_file_that_is_not_a_kernel() {
        // Deterministic pseudo-random bytes, as from a misnamed data file.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let err = load(noise, 32).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel), "{err}");
        assert!(err.to_string().contains("not a Linux kernel"), "{err}");
        let err = load(b"#!/bin/sh\necho hello\n".to_vec(), 32).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel), "{err}");
    }

    #[test]
    fn rejects_an_empty_file() {
        assert!(matches!(
            load(Vec::new(), 32),
            Err(LoaderError::EmptyKernel)
        ));
    }

    #[test]
    fn rejects_an_elf_for_another_machine() {
        let err = load(elf(183, &[0xf4; 16], None), 32).unwrap_err();
        assert!(
            matches!(err, LoaderError::ElfNotX86_64 { machine: 183 }),
            "{err}"
        );
        assert!(err.to_string().contains("not x86-64"), "{err}");
    }

    #[test]
    fn rejects_a_32bit_elf() {
        let mut image = elf(ELF_MACHINE_X86_64, &[0xf4; 16], None);
        image[4] = 1;
        assert!(matches!(load(image, 32), Err(LoaderError::ElfNot64Bit)));
    }

    #[test]
    fn rejects_an_elf_whose_program_headers_are_missing() {
        let mut image = elf(ELF_MACHINE_X86_64, &[0xf4; 16], None);
        image.truncate(80);
        assert!(matches!(load(image, 32), Err(LoaderError::TruncatedElf)));
    }

    #[test]
    fn loads_elf_and_finds_pvh_entry() {
        let kernel = load(elf(ELF_MACHINE_X86_64, &[0xf4; 16], Some(0x20_0004)), 32).unwrap();
        assert_eq!(kernel.format, KernelFormat::Elf);
        assert_eq!(kernel.entry_64, GuestAddress(0x20_0000));
        assert_eq!(kernel.pvh_entry, Some(GuestAddress(0x20_0004)));
        assert_eq!(kernel.footprint_end, 0x20_0010);
        let plain = load(elf(ELF_MACHINE_X86_64, &[0xf4; 16], None), 32).unwrap();
        assert_eq!(plain.pvh_entry, None);
    }

    #[test]
    fn rejects_bzimage_whose_setup_is_cut_short() {
        let header = setup_header {
            setup_sects: 30,
            ..valid_header()
        };
        let err = load(bzimage(&header), 32).unwrap_err();
        let expected = 31 * 512 + PAYLOAD as u64;
        assert!(
            matches!(err, LoaderError::TruncatedBzImage { expected: e, actual: 0x1400 } if e == expected),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn rejects_bzimage_whose_payload_is_missing() {
        let mut image = bzimage(&valid_header());
        image.truncate(1024 + 100);
        let err = load(image, 32).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::TruncatedBzImage {
                    expected: 0x1400,
                    actual: 1124
                }
            ),
            "{err}"
        );
        let mut header_only = bzimage(&valid_header());
        header_only.truncate(0x240);
        let err = load(header_only, 32).unwrap_err();
        assert!(matches!(err, LoaderError::TruncatedBzImage { .. }), "{err}");
    }

    #[test]
    fn rejects_old_boot_protocol() {
        let header = setup_header {
            version: 0x0204,
            ..valid_header()
        };
        let err = load(bzimage(&header), 32).unwrap_err();
        assert!(
            matches!(err, LoaderError::KernelTooOld { version: 0x0204 }),
            "{err}"
        );
        assert!(err.to_string().contains("boot protocol 2.04"), "{err}");
    }

    #[test]
    fn rejects_kernel_without_64bit_entry() {
        let header = setup_header {
            xloadflags: 0,
            ..valid_header()
        };
        let err = load(bzimage(&header), 32).unwrap_err();
        assert!(matches!(err, LoaderError::No64BitEntry), "{err}");
    }

    #[test]
    fn rejects_kernel_bigger_than_memory() {
        let header = setup_header {
            init_size: 64 << 20,
            ..valid_header()
        };
        let err = load(bzimage(&header), 32).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::MemoryTooSmall {
                    needed_mib: 65,
                    suggested_mib: 192
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "guest memory too small for the kernel: needs at least 65 MiB, give --memory 192"
        );
    }

    #[test]
    fn rejects_elf_bigger_than_memory() {
        let err = load(elf(ELF_MACHINE_X86_64, &[0xf4; 16], None), 2).unwrap_err();
        assert!(
            matches!(err, LoaderError::MemoryTooSmall { needed_mib: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_low_ram() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        let initrd = load_initrd(&mem, &mut Cursor::new(vec![0xabu8; 10_000]), &kernel).unwrap();
        assert_eq!(initrd.size, 10_000);
        assert_eq!(initrd.address.0, (32 * MIB - 10_000) & !0xfff);
        let last: u8 = mem
            .read_obj(GuestAddress(initrd.address.0 + 9_999))
            .unwrap();
        assert_eq!(last, 0xab);
    }

    #[test]
    fn initrd_respects_the_kernel_limit() {
        let mem = memory(32);
        let header = setup_header {
            initrd_addr_max: (16 << 20) - 1,
            ..valid_header()
        };
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&header))).unwrap();
        let initrd = load_initrd(&mem, &mut Cursor::new(vec![1u8; 4096]), &kernel).unwrap();
        assert_eq!(initrd.address, GuestAddress((16 << 20) - 4096));
    }

    #[test]
    fn rejects_initrd_too_big_for_memory() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        let err = load_initrd(&mem, &mut Cursor::new(vec![0u8; 31 << 20]), &kernel).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::InitrdTooBig {
                    size_mib: 31,
                    available_mib: 30
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("give a larger --memory"), "{err}");
    }

    #[test]
    fn rejects_empty_initrd() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        let err = load_initrd(&mem, &mut Cursor::new(Vec::new()), &kernel).unwrap_err();
        assert!(matches!(err, LoaderError::EmptyInitrd), "{err}");
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        let info = load_cmdline(&mem, "console=ttyS0 panic=-1", &kernel).unwrap();
        assert_eq!(
            info,
            CmdlineInfo {
                address: GuestAddress(CMDLINE_START),
                len: 22
            }
        );
        let mut written = [0u8; 23];
        mem.read_slice(&mut written, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&written, b"console=ttyS0 panic=-1\0");
    }

    #[test]
    fn rejects_cmdline_longer_than_the_kernel_accepts() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        let err = load_cmdline(&mem, &"a".repeat(2048), &kernel).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::CmdlineTooLong {
                    len: 2048,
                    max: 2047
                }
            ),
            "{err}"
        );
        assert!(load_cmdline(&mem, &"a".repeat(2047), &kernel).is_ok());
    }

    #[test]
    fn rejects_cmdline_longer_than_the_cmdline_area() {
        let mem = memory(32);
        let kernel = load(elf(ELF_MACHINE_X86_64, &[0xf4; 16], None), 32).unwrap();
        let err = load_cmdline(&mem, &"a".repeat(CMDLINE_MAX_SIZE), &kernel).unwrap_err();
        assert!(
            matches!(err, LoaderError::CmdlineTooLong { len: CMDLINE_MAX_SIZE, max } if max == CMDLINE_MAX_SIZE - 1),
            "{err}"
        );
    }

    #[test]
    fn rejects_cmdline_with_nul() {
        let mem = memory(32);
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&valid_header()))).unwrap();
        let err = load_cmdline(&mem, "root=/dev/vda\0init=/bin/sh", &kernel).unwrap_err();
        assert!(matches!(err, LoaderError::CmdlineHasNul), "{err}");
    }
}
