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
/// holds the PCI windows, ECAM, the IOAPIC and the LAPIC.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FIRST_ADDR_PAST_4GIB: u64 = 0x1_0000_0000;
/// 32-bit PCI BAR window (the host bridge's `_CRS`).
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
pub const PCI_BUS_COUNT: u8 = 1;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

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
/// reset register.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
pub const ACPI_RESET_PORT: u16 = 0x3c4;
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
/// (`KVM_SET_TSS_ADDR`); inside the MMIO hole, clear of every device.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
