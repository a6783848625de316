//! Loads the guest kernel, initrd and command line into guest memory.
//!
//! Two kernel formats are accepted: a bzImage (what distributions ship as
//! `/boot/vmlinuz-*`, entered through the Linux 64-bit boot protocol) and an
//! uncompressed ELF `vmlinux` (entered through PVH when it carries the PVH
//! note, else through the 64-bit protocol at its ELF entry). The copying is
//! done by linux-loader; this module first checks the image itself so that a
//! user who passes the wrong file, a truncated download, a kernel too old for
//! 64-bit entry or too little `--memory` is told exactly that.

use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use thiserror::Error;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
    ReadVolatile,
};

use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START};

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
    let mut probe = Vec::with_capacity(PROBE_SIZE as usize);
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
        .max(load_address + payload_len)
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
