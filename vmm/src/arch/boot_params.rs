//! The information a kernel reads at its entry point: the Linux zero page
//! (`struct boot_params` with the setup header and the e820 map) for the
//! 64-bit boot protocol, or `hvm_start_info` with its memory map for PVH;
//! plus the GDT, IDT and page tables the entry state refers to.
//!
//! `configure_boot` is the one call the boot sequence makes after loading the
//! kernel, initrd and command line (`configure_firmware_boot` after loading
//! UEFI firmware); its `BootEntry` then seeds the boot vCPU.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header, LOADED_HIGH};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::gdt::{write_gdt_and_idt, BootMode};
use super::layout::{
    FIRMWARE_MEMMAP_START, FIRMWARE_START_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    PVH_START_INFO_START, RSDP_START, ZERO_PAGE_START,
};
use super::memory::{memory_map, MemoryKind, MemoryMapEntry};
use super::paging::write_page_tables;
use crate::loader::{CmdlineInfo, InitrdInfo, KernelImage};
use crate::narrow::low_u32;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// "Undefined" boot loader: the kernel does not special-case it.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
const SETUP_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// Offset of the setup header inside the zero page and of the jump whose
/// high byte gives the header's length.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const SETUP_JUMP_END: usize = 0x202;
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Version 1 of `hvm_start_info` has the memory map fields.
const HVM_START_INFO_VERSION: u32 = 1;

// The PVH structures share one page and must not overlap.
const _: () = assert!(
    PVH_START_INFO_START + std::mem::size_of::<hvm_start_info>() as u64 <= PVH_MODLIST_START
);
const _: () = assert!(
    PVH_MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64 <= PVH_MEMMAP_START
);

/// Room for the firmware's memory map; `memory_map` makes at most five.
const FIRMWARE_MEMMAP_MAX_ENTRIES: u64 = 64;

// The firmware's start info and memory map lie between 640 KiB and the
// ACPI tables, apart.
const _: () = assert!(
    FIRMWARE_START_INFO_START >= 0xa0000
        && FIRMWARE_START_INFO_START + std::mem::size_of::<hvm_start_info>() as u64
            <= FIRMWARE_MEMMAP_START
        && FIRMWARE_MEMMAP_START
            + FIRMWARE_MEMMAP_MAX_ENTRIES * std::mem::size_of::<hvm_memmap_table_entry>() as u64
            <= RSDP_START
);

/// Why the boot information could not be written.
#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot write the {what} into guest memory: {source}; give a larger --memory")]
    GuestMemory {
        what: &'static str,
        #[source]
        source: GuestMemoryError,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, RBX = `hvm_start_info`.
    Pvh,
}

/// What the boot vCPU needs to start the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Instruction pointer at entry.
    pub entry: GuestAddress,
    pub protocol: BootProtocol,
    /// Zero page (Linux64) or `hvm_start_info` (PVH).
    pub boot_params_addr: GuestAddress,
}

/// Inputs of `configure_boot`: the results of the loader and the RAM size.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    pub kernel: &'a KernelImage,
    pub cmdline: CmdlineInfo,
    pub initrd: Option<InitrdInfo>,
    pub mem_size: u64,
}

/// Writes the boot information and boot paging/segment tables for `config`
/// into `mem`. PVH is used when the kernel has a PVH entry point.
pub fn configure_boot(mem: &GuestMemoryMmap, config: &BootConfig) -> Result<BootEntry, BootError> {
    let memory_error = |what| move |source| BootError::GuestMemory { what, source };
    match config.kernel.pvh_entry {
        Some(pvh_entry) => {
            write_gdt_and_idt(mem, BootMode::Protected32).map_err(memory_error("boot GDT"))?;
            write_start_info(mem, config)?;
            Ok(BootEntry {
                entry: pvh_entry,
                protocol: BootProtocol::Pvh,
                boot_params_addr: GuestAddress(PVH_START_INFO_START),
            })
        }
        None => {
            write_gdt_and_idt(mem, BootMode::Long64).map_err(memory_error("boot GDT"))?;
            write_page_tables(mem).map_err(memory_error("boot page tables"))?;
            let params = zero_page(config);
            mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
                .map_err(memory_error("zero page"))?;
            Ok(BootEntry {
                entry: config.kernel.entry_64,
                protocol: BootProtocol::Linux64,
                boot_params_addr: GuestAddress(ZERO_PAGE_START),
            })
        }
    }
}

/// The kernel's own setup header, cut at the length it declares so that
/// code bytes that follow shorter headers are not passed as fields.
fn kernel_setup_header(header: &setup_header) -> setup_header {
    let mut header = *header;
    let declared_end = SETUP_JUMP_END + usize::from(header.jump >> 8);
    let bytes = header.as_mut_slice();
    let keep = declared_end
        .saturating_sub(SETUP_HEADER_OFFSET)
        .min(bytes.len());
    bytes[keep..].fill(0);
    header
}

/// A setup header for a kernel that has none (ELF vmlinux).
fn synthetic_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: SETUP_MAGIC,
        kernel_alignment: DEFAULT_KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

/// Builds the zero page for the Linux 64-bit boot protocol.
pub fn zero_page(config: &BootConfig) -> boot_params {
    let mut params = boot_params {
        hdr: match &config.kernel.setup_header {
            Some(header) => kernel_setup_header(header),
            None => synthetic_setup_header(),
        },
        acpi_rsdp_addr: RSDP_START,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = low_u32(config.cmdline.address.0);
    params.ext_cmd_line_ptr = (config.cmdline.address.0 >> 32) as u32;
    if let Some(initrd) = config.initrd {
        params.hdr.ramdisk_image = low_u32(initrd.address.0);
        params.ext_ramdisk_image = (initrd.address.0 >> 32) as u32;
        params.hdr.ramdisk_size = low_u32(initrd.size);
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }

    // At most five ranges (see `memory_map`), far below the table's 128.
    let map = memory_map(config.mem_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.address,
            size: entry.size,
            r#type: e820_type(entry),
        };
        params.e820_entries += 1;
    }
    params
}

fn e820_type(entry: &MemoryMapEntry) -> u32 {
    match entry.kind {
        MemoryKind::Ram => E820_RAM,
        MemoryKind::Reserved => E820_RESERVED,
    }
}

/// The PVH start info, its module list (the initrd) and its memory map.
pub fn start_info(
    config: &BootConfig,
) -> (
    hvm_start_info,
    Option<hvm_modlist_entry>,
    Vec<hvm_memmap_table_entry>,
) {
    let memmap = pvh_memmap(config.mem_size);
    let module = config.initrd.map(|initrd| hvm_modlist_entry {
        paddr: initrd.address.0,
        size: initrd.size,
        ..Default::default()
    });
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: config.cmdline.address.0,
        rsdp_paddr: RSDP_START,
        memmap_paddr: PVH_MEMMAP_START,
        // At most five ranges (see `memory_map`).
        #[allow(clippy::cast_possible_truncation)]
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    (info, module, memmap)
}

fn write_start_info(mem: &GuestMemoryMmap, config: &BootConfig) -> Result<(), BootError> {
    let memory_error = |source| BootError::GuestMemory {
        what: "PVH start info",
        source,
    };
    let (info, module, memmap) = start_info(config);
    mem.write_obj(info, GuestAddress(PVH_START_INFO_START))
        .map_err(memory_error)?;
    if let Some(module) = module {
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(memory_error)?;
    }
    write_memmap(mem, PVH_MEMMAP_START, memmap).map_err(memory_error)
}

/// The memory map in PVH's form.
fn pvh_memmap(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    memory_map(mem_size)
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.address,
            size: entry.size,
            type_: match entry.kind {
                MemoryKind::Ram => XEN_HVM_MEMMAP_TYPE_RAM,
                MemoryKind::Reserved => XEN_HVM_MEMMAP_TYPE_RESERVED,
            },
            reserved: 0,
        })
        .collect()
}

fn write_memmap(
    mem: &GuestMemoryMmap,
    start: u64,
    memmap: Vec<hvm_memmap_table_entry>,
) -> Result<(), GuestMemoryError> {
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (index, entry) in memmap.into_iter().enumerate() {
        mem.write_obj(entry, GuestAddress(start + index as u64 * entry_size))?;
    }
    Ok(())
}

/// Writes what PVH firmware reads at its entry (the boot GDT, and a start
/// info with the memory map and the RSDP, without modules or command line)
/// and returns how the boot vCPU enters it at `pvh_entry`.
pub fn configure_firmware_boot(
    mem: &GuestMemoryMmap,
    pvh_entry: GuestAddress,
    mem_size: u64,
) -> Result<BootEntry, BootError> {
    let memory_error = |what| move |source| BootError::GuestMemory { what, source };
    write_gdt_and_idt(mem, BootMode::Protected32).map_err(memory_error("boot GDT"))?;
    let (info, memmap) = firmware_start_info(mem_size);
    mem.write_obj(info, GuestAddress(FIRMWARE_START_INFO_START))
        .map_err(memory_error("PVH start info"))?;
    write_memmap(mem, FIRMWARE_MEMMAP_START, memmap).map_err(memory_error("PVH start info"))?;
    Ok(BootEntry {
        entry: pvh_entry,
        protocol: BootProtocol::Pvh,
        boot_params_addr: GuestAddress(FIRMWARE_START_INFO_START),
    })
}

/// The PVH start info for firmware and its memory map.
pub fn firmware_start_info(mem_size: u64) -> (hvm_start_info, Vec<hvm_memmap_table_entry>) {
    let memmap = pvh_memmap(mem_size);
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        rsdp_paddr: RSDP_START,
        memmap_paddr: FIRMWARE_MEMMAP_START,
        // At most five ranges (see `memory_map`).
        #[allow(clippy::cast_possible_truncation)]
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    (info, memmap)
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::arch::layout::{
        CMDLINE_START, EBDA_START, HIGH_MEMORY_START, MMIO_HOLE_START, PCI_ECAM_SIZE,
        PCI_ECAM_START, PML4_START,
    };
    use crate::arch::memory::create_guest_memory;
    use crate::loader::KernelFormat;
    use linux_loader::loader::bootparam::XLF_KERNEL_64;

    const MIB: u64 = 1 << 20;

    fn bzimage_kernel() -> KernelImage {
        let header = setup_header {
            setup_sects: 1,
            boot_flag: BOOT_FLAG,
            // Header declared to end at 0x264: `kernel_info_offset` (0x268)
            // lies past it and must not be passed on.
            jump: 0x62eb,
            header: SETUP_MAGIC,
            version: 0x020c,
            loadflags: LOADED_HIGH,
            xloadflags: XLF_KERNEL_64,
            kernel_info_offset: 0xdead_beef,
            ..Default::default()
        };
        KernelImage {
            format: KernelFormat::BzImage,
            load_address: GuestAddress(HIGH_MEMORY_START),
            entry_64: GuestAddress(HIGH_MEMORY_START + 0x200),
            pvh_entry: None,
            setup_header: Some(header),
            footprint_end: 2 * MIB,
            cmdline_max: 2047,
            initrd_addr_max: 0x7fff_ffff,
        }
    }

    fn elf_kernel(pvh_entry: Option<u64>) -> KernelImage {
        KernelImage {
            format: KernelFormat::Elf,
            load_address: GuestAddress(16 * MIB),
            entry_64: GuestAddress(16 * MIB),
            pvh_entry: pvh_entry.map(GuestAddress),
            setup_header: None,
            footprint_end: 32 * MIB,
            cmdline_max: 4095,
            initrd_addr_max: 0x7fff_ffff,
        }
    }

    fn config(kernel: &KernelImage, mem_size: u64) -> BootConfig<'_> {
        BootConfig {
            kernel,
            cmdline: CmdlineInfo {
                address: GuestAddress(CMDLINE_START),
                len: 12,
            },
            initrd: Some(InitrdInfo {
                address: GuestAddress(0x0800_0000),
                size: 0x12_3456,
            }),
            mem_size,
        }
    }

    fn e820(params: &boot_params) -> Vec<(u64, u64, u32)> {
        let entries = params.e820_table;
        entries[..usize::from(params.e820_entries)]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect()
    }

    #[test]
    fn zero_page_carries_loader_fields() {
        let kernel = bzimage_kernel();
        let params = zero_page(&config(&kernel, 512 * MIB));
        let hdr = params.hdr;
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!(
            (hdr.ramdisk_image, hdr.ramdisk_size),
            (0x0800_0000, 0x12_3456)
        );
        assert_eq!({ params.acpi_rsdp_addr }, RSDP_START);
        assert_eq!({ hdr.header }, SETUP_MAGIC);
        assert_eq!({ hdr.version }, 0x020c);
        assert_eq!(
            { hdr.kernel_info_offset },
            0,
            "bytes past the declared header leak"
        );
    }

    #[test]
    fn zero_page_without_initrd_has_no_ramdisk() {
        let kernel = bzimage_kernel();
        let mut boot = config(&kernel, 512 * MIB);
        boot.initrd = None;
        let params = zero_page(&boot);
        assert_eq!((params.hdr.ramdisk_image, params.hdr.ramdisk_size), (0, 0));
    }

    #[test]
    fn e820_for_ram_below_the_hole() {
        let kernel = bzimage_kernel();
        let params = zero_page(&config(&kernel, 512 * MIB));
        assert_eq!(
            e820(&params),
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIGH_MEMORY_START - EBDA_START, E820_RESERVED),
                (HIGH_MEMORY_START, 512 * MIB - HIGH_MEMORY_START, E820_RAM),
                (PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn e820_for_ram_above_the_hole() {
        let kernel = bzimage_kernel();
        let params = zero_page(&config(&kernel, 5 << 30));
        let map = e820(&params);
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[2],
            (
                HIGH_MEMORY_START,
                MMIO_HOLE_START - HIGH_MEMORY_START,
                E820_RAM
            )
        );
        assert_eq!(map[4], (1 << 32, (5 << 30) - MMIO_HOLE_START, E820_RAM));
    }

    #[test]
    fn elf_kernel_gets_a_synthetic_header() {
        let kernel = elf_kernel(None);
        let params = zero_page(&config(&kernel, 512 * MIB));
        let hdr = params.hdr;
        assert_eq!((hdr.boot_flag, hdr.header), (BOOT_FLAG, SETUP_MAGIC));
        assert_eq!(hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(hdr.type_of_loader, 0xff);
    }

    #[test]
    fn linux64_boot_writes_zero_page_and_page_tables() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let kernel = bzimage_kernel();
        let entry = configure_boot(&mem, &config(&kernel, 64 * MIB)).unwrap();
        assert_eq!(
            entry,
            BootEntry {
                entry: GuestAddress(HIGH_MEMORY_START + 0x200),
                protocol: BootProtocol::Linux64,
                boot_params_addr: GuestAddress(ZERO_PAGE_START),
            }
        );
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(params.e820_entries, 4);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & 1, 1);
    }

    #[test]
    fn pvh_boot_writes_start_info_and_memmap() {
        let mem = create_guest_memory(256 * MIB).unwrap();
        let kernel = elf_kernel(Some(0x100_0040));
        let entry = configure_boot(&mem, &config(&kernel, 256 * MIB)).unwrap();
        assert_eq!(entry.protocol, BootProtocol::Pvh);
        assert_eq!(entry.entry, GuestAddress(0x100_0040));
        assert_eq!(entry.boot_params_addr, GuestAddress(PVH_START_INFO_START));

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.rsdp_paddr, RSDP_START);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        assert_eq!(info.memmap_entries, 4);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x0800_0000, 0x12_3456));
        let third: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 2 * 24))
            .unwrap();
        assert_eq!(
            (third.addr, third.size, third.type_),
            (
                HIGH_MEMORY_START,
                256 * MIB - HIGH_MEMORY_START,
                XEN_HVM_MEMMAP_TYPE_RAM
            )
        );
    }
    #[test]
    fn firmware_boot_writes_start_info_in_the_legacy_hole() {
        let mem = create_guest_memory(256 * MIB).unwrap();
        let entry = configure_firmware_boot(&mem, GuestAddress(0x4f_ffd0), 256 * MIB).unwrap();
        assert_eq!(
            entry,
            BootEntry {
                entry: GuestAddress(0x4f_ffd0),
                protocol: BootProtocol::Pvh,
                boot_params_addr: GuestAddress(FIRMWARE_START_INFO_START),
            }
        );
        let info: hvm_start_info = mem
            .read_obj(GuestAddress(FIRMWARE_START_INFO_START))
            .unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, HVM_START_INFO_VERSION);
        assert_eq!(info.rsdp_paddr, RSDP_START);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert_eq!(info.cmdline_paddr, 0);
        assert_eq!(info.memmap_paddr, FIRMWARE_MEMMAP_START);
        assert_eq!(info.memmap_entries, 4);
        // The firmware sizes low RAM from the highest RAM entry below 4 GiB.
        let third: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(FIRMWARE_MEMMAP_START + 2 * 24))
            .unwrap();
        assert_eq!(
            (third.addr + third.size, third.type_),
            (256 * MIB, XEN_HVM_MEMMAP_TYPE_RAM)
        );
        // The kernel's PVH page is left alone.
        let kernel_page: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO_START)).unwrap();
        assert_eq!(kernel_page.magic, 0);
    }

    #[test]
    fn firmware_start_info_is_where_the_firmware_never_allocates() {
        // CloudHv takes [0, 640 KiB) and [1 MiB, end of low RAM) as free.
        let (info, memmap) = firmware_start_info(5 << 30);
        let end = FIRMWARE_MEMMAP_START + memmap.len() as u64 * 24;
        assert!(FIRMWARE_START_INFO_START >= 0xa_0000 && end <= RSDP_START);
        assert!(memmap.len() as u64 <= FIRMWARE_MEMMAP_MAX_ENTRIES);
        assert_eq!(info.memmap_entries as usize, memmap.len());
        assert_eq!(memmap.last().map(|e| e.addr), Some(1 << 32));
    }
}
