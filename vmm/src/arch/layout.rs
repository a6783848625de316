//! The guest physical address and I/O port map. One place, so that the ACPI
//! tables, the e820 map and the device buses cannot disagree.

/// Page tables, GDT and boot parameters live in low memory, below the
/// EBDA, where firmware would put them on real hardware.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Kernel command line; 2 KiB is the boot protocol's historical limit but
/// modern kernels accept up to `CMDLINE_MAX_SIZE`.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the legacy BIOS area; ACPI tables go here so that a kernel that
/// scans for the RSDP finds it as well as one that reads `acpi_rsdp_addr`.
pub const EBDA_START: u64 = 0x9fc00;
pub const RSDP_START: u64 = 0xe0000;
pub const ACPI_TABLES_START: u64 = 0xe0100;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// A firmware boot's PVH start info and memory map, in the legacy video
/// hole below the ACPI tables. The CloudHv firmware treats [0, 640 KiB)
/// and [1 MiB, end of low RAM) as free RAM whatever the memory map says,
/// and reads the start info as late as its DXE phase (for the RSDP), so
/// anything there could be overwritten before it is read; [640 KiB, 1 MiB)
/// it never allocates.
pub const FIRMWARE_START_INFO_START: u64 = 0xa0000;
pub const FIRMWARE_MEMMAP_START: u64 = FIRMWARE_START_INFO_START + 0x80;
/// Where the protected-mode kernel is loaded (the boot protocol's default).
pub const HIGH_MEMORY_START: u64 = 0x100000;
/// Initial stack of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// RAM occupies [0, MMIO_HOLE_START) and continues at 4 GiB; the hole
/// holds the 32-bit PCI window, ECAM, the IOAPIC and the LAPIC.
///
/// The hole follows the platform the Cloud Hypervisor build of OVMF
/// ("CloudHv") expects, so that firmware and `--kernel` boots share one map:
/// that firmware assigns 32-bit BARs bottom-up from 0xC000_0000 to
/// 0xFC00_0000 (its `PcdPciMmio32Base/Size`; the 0x3800_0000 of its
/// `CLOUDHV_MMIO_HOLE_SIZE` only sizes an MTRR it never programs) and
/// 64-bit BARs from a window above RAM (see [`pci_mmio64_window`]), and it
/// knows nothing of anything else in those ranges. So ECAM sits between the
/// 32-bit window's end and the IOAPIC, and nothing of the VMM's sits above
/// RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FIRST_ADDR_PAST_4GIB: u64 = 0x1_0000_0000;
/// 32-bit PCI BAR window (the host bridge's `_CRS`, and where the VMM
/// places BARs itself for `--kernel` boots).
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x3c00_0000;
/// PCI Express enhanced configuration access (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0xfc00_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
pub const PCI_BUS_COUNT: u8 = 1;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// End of the LAPIC's 1 MiB range.
const LAPIC_END: u64 = APIC_START + 0x10_0000;

const _: () = assert!(PCI_MMIO32_START >= MMIO_HOLE_START);
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
const _: () = assert!(IOAPIC_START < APIC_START && LAPIC_END <= KVM_IDENTITY_MAP_START);
const _: () = assert!(KVM_TSS_START + KVM_TSS_SIZE <= FIRST_ADDR_PAST_4GIB);

/// The 64-bit PCI window starts on a 1 GiB boundary, as firmware aligns
/// its own (a host can then back it with 1 GiB pages).
pub const PCI_MMIO64_ALIGNMENT: u64 = 1 << 30;
/// The physical address width a CPU without CPUID leaf 0x8000_0008 has,
/// and the one firmware assumes then.
pub const DEFAULT_PHYSICAL_ADDRESS_BITS: u8 = 36;
/// The widest physical address x86-64 defines; a larger CPUID value is
/// not a real CPU's.
pub const MAX_PHYSICAL_ADDRESS_BITS: u8 = 52;

/// A guest physical address range `[start, start + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    pub start: u64,
    pub size: u64,
}

impl AddressRange {
    /// The last address inside the range.
    pub fn last(&self) -> u64 {
        self.start.saturating_add(self.size.saturating_sub(1))
    }

    pub fn contains(&self, other: &AddressRange) -> bool {
        other.start >= self.start && other.last() <= self.last()
    }
}

/// The 64-bit PCI window of a VM with `mem_size_bytes` of RAM whose vCPUs
/// report `physical_address_bits` (CPUID 0x8000_0008 EAX[7:0]): from the
/// first 1 GiB boundary above RAM (and above 4 GiB) to the end of the
/// guest's physical address space, or `None` when RAM leaves no room.
///
/// The CloudHv firmware picks its own 64-bit aperture from the same
/// inputs (the top eighth of the address space when it trusts the CPU's
/// width and that eighth lies above its 32 GiB default, else the first
/// 32 GiB-aligned 32 GiB above the RAM that CMOS reports); this window
/// contains every aperture it can choose for such a VM, so the BARs it
/// assigns lie inside the host bridge's `_CRS` and the OS keeps them.
/// A kernel booted directly allocates hot-plugged devices' 64-bit BARs
/// here too.
pub fn pci_mmio64_window(mem_size_bytes: u64, physical_address_bits: u8) -> Option<AddressRange> {
    let ram_above_4gib = mem_size_bytes.saturating_sub(MMIO_HOLE_START);
    let ram_end = FIRST_ADDR_PAST_4GIB.checked_add(ram_above_4gib)?;
    let start = ram_end.checked_next_multiple_of(PCI_MMIO64_ALIGNMENT)?;
    let end = 1u64 << physical_address_bits.min(MAX_PHYSICAL_ADDRESS_BITS);
    let size = end.checked_sub(start).filter(|size| *size > 0)?;
    Some(AddressRange { start, size })
}

/// Legacy PCI configuration mechanism #1.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Device slots on PCI bus 0.
pub const PCI_SLOT_COUNT: usize = 32;
/// The PCI hot-plug controller's registers on the I/O bus: the device
/// model (`devices::pci::hotplug`) serves them and the DSDT's AML reads
/// and writes them, so both take the addresses from here.
pub const PCI_HOTPLUG_PORT_BASE: u16 = 0x0ae0;
/// Length of the register block in ports.
pub const PCI_HOTPLUG_PORT_LEN: u16 = 12;
/// Offsets of the registers from [`PCI_HOTPLUG_PORT_BASE`].
pub const PCI_HOTPLUG_REGISTER_UP: u64 = 0;
pub const PCI_HOTPLUG_REGISTER_DOWN: u64 = 4;
pub const PCI_HOTPLUG_REGISTER_EJECT: u64 = 8;
/// COM1 and its ISA interrupt.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller: a write of 0xfe to its command port resets.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Hardware-reduced ACPI registers (FADT sleep control/status and reset
/// register). Power-off is `(S5_SLP_TYP << 2) | SLP_EN` written to the
/// sleep control register; reboot is `ACPI_RESET_VALUE` written to the
/// reset register. The sleep control register is at 0x600 because that is
/// where the CloudHv firmware powers off (its `ResetSystemLib` writes
/// `(5 << 2) | SLP_EN` there without reading the FADT); its ACPI PM timer
/// follows at 0x608.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x604;
pub const ACPI_RESET_VALUE: u8 = 0x1;
pub const ACPI_S5_SLP_TYP: u8 = 5;
pub const ACPI_SLP_EN: u8 = 1 << 5;

/// PVH boot: `hvm_start_info` sits where the zero page would (only one boot
/// protocol is used per boot), followed by the initrd module list and the
/// memory map in the same page.
pub const PVH_START_INFO_START: u64 = ZERO_PAGE_START;
pub const PVH_MODLIST_START: u64 = ZERO_PAGE_START + 0x40;
pub const PVH_MEMMAP_START: u64 = ZERO_PAGE_START + 0x80;

/// Three pages KVM on Intel needs for its real-mode TSS
/// (`KVM_SET_TSS_ADDR`); inside the MMIO hole, clear of every device and
/// of both PCI windows. KVM puts its EPT identity-map page, unless told
/// otherwise, in the page below.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
pub const KVM_TSS_SIZE: u64 = 3 * 0x1000;
const KVM_IDENTITY_MAP_START: u64 = KVM_TSS_START - 0x1000;

/// Legacy ports only a UEFI firmware boot has (`devices::firmware`): the
/// CMOS RTC's index and data ports, the byte of CMOS RAM holding the
/// century (for the FADT's `century` field), the POST code port, the
/// firmware's debug console (QEMU isa-debugcon) and the ACPI PM timer
/// where edk2's CloudHv build reads it (`CLOUDHV_ACPI_TIMER_IO_ADDRESS`).
pub const CMOS_INDEX_PORT: u16 = 0x70;
pub const CMOS_DATA_PORT: u16 = 0x71;
pub const CMOS_CENTURY_REGISTER: u8 = 0x32;
pub const POST_CODE_PORT: u16 = 0x80;
pub const FIRMWARE_DEBUG_PORT: u16 = 0x402;
pub const ACPI_PM_TIMER_PORT: u16 = 0x608;

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// How the CloudHv firmware (edk2 2022.11, `PlatformInitLib`
    /// `PlatformAddressWidthInitialization` with no fw_cfg) places its
    /// 64-bit PCI aperture for a CPU of `vendor` reporting `bits` physical
    /// address bits, with or without 1 GiB pages, in a VM with
    /// `ram_above_4gib` bytes of RAM above 4 GiB (which it reads from CMOS).
    fn firmware_aperture(
        bits: u8,
        vendor: &str,
        gib_pages: bool,
        ram_above_4gib: u64,
    ) -> AddressRange {
        const CLASSIC_SIZE: u64 = 32 * GIB;
        let first_non_address = FIRST_ADDR_PAST_4GIB + ram_above_4gib;
        let classic_base = first_non_address
            .next_multiple_of(GIB)
            .next_multiple_of(CLASSIC_SIZE);
        let plausible = bits >= 41
            || (vendor == "GenuineIntel" && (bits == 36 || bits == 39))
            || (vendor == "AuthenticAMD" && bits == 40);
        if !plausible {
            return AddressRange {
                start: classic_base,
                size: CLASSIC_SIZE,
            };
        }
        let mut width = bits.min(47);
        if !gib_pages && width > 40 {
            width = 40;
        }
        let address_space = 1u64 << width;
        let mmio_space = 1u64 << (width - 3);
        if CLASSIC_SIZE < mmio_space && classic_base + mmio_space < address_space {
            AddressRange {
                start: address_space - mmio_space,
                size: mmio_space,
            }
        } else {
            AddressRange {
                start: classic_base,
                size: CLASSIC_SIZE,
            }
        }
    }

    #[test]
    fn the_64bit_window_holds_every_aperture_the_firmware_can_choose() {
        let mut checked = 0;
        for bits in 36..=52u8 {
            for vendor in ["GenuineIntel", "AuthenticAMD", "other"] {
                for gib_pages in [false, true] {
                    for mem in [512 << 20, 3 * GIB, 4 * GIB, 16 * GIB, 100 * GIB, 900 * GIB] {
                        let ram_above = mem.saturating_sub(MMIO_HOLE_START);
                        let aperture = firmware_aperture(bits, vendor, gib_pages, ram_above);
                        // An aperture beyond the CPU's reach cannot work on
                        // any platform; the firmware only picks one when
                        // RAM fills (nearly) the whole address space.
                        if aperture.last() >= 1u64 << bits {
                            continue;
                        }
                        let window = pci_mmio64_window(mem, bits)
                            .unwrap_or_else(|| panic!("no window for {bits} bits, {mem:#x}"));
                        assert!(
                            window.contains(&aperture),
                            "{bits} bits {vendor} 1G pages {gib_pages} RAM {mem:#x}: \
                             {aperture:x?} outside {window:x?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 500, "only {checked} cases checked");
    }

    #[test]
    fn the_64bit_window_starts_above_ram_on_a_gib_and_ends_with_the_address_space() {
        let small = pci_mmio64_window(512 << 20, 39).unwrap();
        assert_eq!(small.start, FIRST_ADDR_PAST_4GIB);
        assert_eq!(small.last(), (1 << 39) - 1);
        // 5 GiB + 1 MiB of RAM: 2 GiB + 1 MiB above 4 GiB.
        let large = pci_mmio64_window(5 * GIB + (1 << 20), 46).unwrap();
        assert_eq!(large.start, 7 * GIB);
        assert_eq!(large.last(), (1 << 46) - 1);
        assert_eq!(large.start % PCI_MMIO64_ALIGNMENT, 0);
    }

    #[test]
    fn no_64bit_window_when_ram_fills_the_address_space_or_the_width_is_absurd() {
        assert_eq!(pci_mmio64_window(64 * GIB, 36), None);
        assert_eq!(pci_mmio64_window(u64::MAX, 52), None);
        assert_eq!(pci_mmio64_window(512 << 20, 0), None);
        let widest = pci_mmio64_window(512 << 20, u8::MAX).unwrap();
        assert_eq!(widest.last(), (1 << MAX_PHYSICAL_ADDRESS_BITS) - 1);
    }

    #[test]
    fn ecam_and_platform_devices_lie_outside_both_pci_windows() {
        let mmio32 = AddressRange {
            start: PCI_MMIO32_START,
            size: PCI_MMIO32_SIZE,
        };
        // What the firmware assigns 32-bit BARs from.
        assert_eq!(mmio32.start, 0xc000_0000);
        assert_eq!(mmio32.last(), 0xfbff_ffff);
        let mmio64 = pci_mmio64_window(8 * GIB, 46).unwrap();
        for (name, start, size) in [
            ("ECAM", PCI_ECAM_START, PCI_ECAM_SIZE),
            ("IOAPIC", IOAPIC_START, 0x1000),
            ("LAPIC", APIC_START, 0x10_0000),
            ("KVM TSS", KVM_TSS_START, KVM_TSS_SIZE),
            ("KVM identity map", KVM_IDENTITY_MAP_START, 0x1000),
        ] {
            let range = AddressRange { start, size };
            for window in [mmio32, mmio64] {
                assert!(
                    range.last() < window.start || range.start > window.last(),
                    "{name} {range:x?} overlaps {window:x?}"
                );
            }
        }
    }

    #[test]
    fn address_range_containment() {
        let outer = AddressRange {
            start: 0x1000,
            size: 0x1000,
        };
        assert!(outer.contains(&outer));
        assert!(outer.contains(&AddressRange {
            start: 0x1800,
            size: 0x800
        }));
        assert!(!outer.contains(&AddressRange {
            start: 0x1800,
            size: 0x801
        }));
        assert!(!outer.contains(&AddressRange {
            start: 0xfff,
            size: 0x10
        }));
    }
}
