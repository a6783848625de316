//! The FADT (signature `FACP`): declares the hardware-reduced ACPI model and
//! where the DSDT, the reset register and the sleep registers are.
//!
//! Linux powers off a hardware-reduced platform by writing
//! `(SLP_TYP << 2) | SLP_EN` (SLP_TYP from the DSDT's `\_S5_`) to the sleep
//! control register, and reboots by writing the reset value to the reset
//! register; the VMM's port handlers at those addresses turn the writes into
//! VM exit and restart.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{to_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};

/// Size of an ACPI 6.x FADT.
pub const FADT_LENGTH: usize = 276;
const _: () = assert!(core::mem::size_of::<FADTBuilder>() == FADT_LENGTH);

/// IA-PC boot architecture flags (FADT offset 109).
///
/// - `LEGACY_DEVICES`: COM1 sits at its ISA ports.
/// - No `8042` flag: the VMM's i8042 exists only for the reset command.
///   Without the flag Linux marks the controller firmware-absent and its
///   i8042 driver does not probe it (no keyboard/mouse probe delays); the
///   kernel's reboot fallback still writes 0xfe to port 0x64 directly.
/// - `VGA_NOT_PRESENT`: there is no VGA; probing legacy VGA ports is pointless.
/// - `NO_ASPM`: there is no PCIe link power management to control.
/// - `NO_CMOS_RTC`: the VMM emulates no MC146818 RTC at 0x70; the guest
///   takes wall-clock time from kvmclock. Drop this flag if an RTC is added.
/// - MSI stays allowed: virtio-pci devices interrupt via MSI-X only.
pub const IAPC_BOOT_ARCH: u16 =
    IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT | IAPC_NO_ASPM | IAPC_NO_CMOS_RTC;
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_NO_ASPM: u16 = 1 << 4;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// "Hypervisor Vendor Identity" (ACPI 6.0+), free-form.
pub const HYPERVISOR_VENDOR_ID: u64 = u64::from_le_bytes(*b"SecureVM");

/// Builds the FADT for a DSDT at `dsdt_address`.
pub fn build_fadt(dsdt_address: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // There are no fixed-feature buttons in a hardware-reduced platform;
        // these bits say so, so the OS does not register fixed-event
        // handlers that can never fire. The power button is the DSDT's
        // control-method PNP0C0C device instead.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port_register(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_port_register(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_register(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = HYPERVISOR_VENDOR_ID.into();
    let fadt: FADT = fadt.finalize();
    to_bytes(&fadt)
}

/// An 8-bit register in system I/O space, accessed a byte at a time.
fn io_port_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::acpi::test_support::{byte_sum, u16_at, u32_at, u64_at};

    // Offsets from the ACPI 6.5 FADT format table.
    const IAPC_BOOT_ARCH_OFFSET: usize = 109;
    const FLAGS_OFFSET: usize = 112;
    const RESET_REG_OFFSET: usize = 116;
    const RESET_VALUE_OFFSET: usize = 128;
    const X_DSDT_OFFSET: usize = 140;
    const SLEEP_CONTROL_OFFSET: usize = 244;
    const SLEEP_STATUS_OFFSET: usize = 256;
    const HYPERVISOR_ID_OFFSET: usize = 268;
    const HW_REDUCED_ACPI: u32 = 1 << 20;
    const RESET_REG_SUP: u32 = 1 << 10;
    const IAPC_8042: u16 = 1 << 1;
    const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;

    /// Decodes a Generic Address Structure: (space, bit width, bit offset,
    /// access size, address).
    fn gas_at(bytes: &[u8], offset: usize) -> (u8, u8, u8, u8, u64) {
        (
            bytes[offset],
            bytes[offset + 1],
            bytes[offset + 2],
            bytes[offset + 3],
            u64_at(bytes, offset + 4),
        )
    }

    const SYSTEM_IO: u8 = 1;
    const BYTE_ACCESS: u8 = 1;

    #[test]
    fn header_is_a_valid_acpi_6_fadt() {
        let fadt = build_fadt(0x1234_5678);
        assert_eq!(&fadt[0..4], b"FACP");
        assert_eq!(fadt.len(), FADT_LENGTH);
        assert_eq!(u32_at(&fadt, 4) as usize, FADT_LENGTH);
        assert_eq!(fadt[8], 6, "major revision");
        assert_eq!(fadt[131], 5, "minor revision");
        assert_eq!(byte_sum(&fadt), 0);
    }

    #[test]
    fn dsdt_is_referenced_through_the_64_bit_field_only() {
        let fadt = build_fadt(0xe_0140);
        assert_eq!(u64_at(&fadt, X_DSDT_OFFSET), 0xe_0140);
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT field unused");
    }

    #[test]
    fn declares_hardware_reduced_acpi_with_a_reset_register() {
        let fadt = build_fadt(0);
        let flags = u32_at(&fadt, FLAGS_OFFSET);
        assert_ne!(flags & HW_REDUCED_ACPI, 0);
        assert_ne!(flags & RESET_REG_SUP, 0);
    }

    #[test]
    fn reset_register_is_the_layout_port_with_the_layout_value() {
        let fadt = build_fadt(0);
        assert_eq!(
            gas_at(&fadt, RESET_REG_OFFSET),
            (SYSTEM_IO, 8, 0, BYTE_ACCESS, u64::from(ACPI_RESET_PORT))
        );
        assert_eq!(fadt[RESET_VALUE_OFFSET], ACPI_RESET_VALUE);
    }

    #[test]
    fn sleep_registers_are_the_layout_ports() {
        let fadt = build_fadt(0);
        assert_eq!(
            gas_at(&fadt, SLEEP_CONTROL_OFFSET),
            (
                SYSTEM_IO,
                8,
                0,
                BYTE_ACCESS,
                u64::from(ACPI_SLEEP_CONTROL_PORT)
            )
        );
        assert_eq!(
            gas_at(&fadt, SLEEP_STATUS_OFFSET),
            (
                SYSTEM_IO,
                8,
                0,
                BYTE_ACCESS,
                u64::from(ACPI_SLEEP_STATUS_PORT)
            )
        );
    }

    #[test]
    fn boot_flags_allow_msi_and_hide_vga_8042_and_rtc() {
        let fadt = build_fadt(0);
        let flags = u16_at(&fadt, IAPC_BOOT_ARCH_OFFSET);
        assert_eq!(flags, IAPC_BOOT_ARCH);
        assert_eq!(flags & IAPC_MSI_NOT_SUPPORTED, 0);
        assert_eq!(flags & IAPC_8042, 0);
        assert_ne!(flags & IAPC_VGA_NOT_PRESENT, 0);
        assert_ne!(flags & IAPC_NO_CMOS_RTC, 0);
    }

    #[test]
    fn carries_the_hypervisor_vendor_id() {
        let fadt = build_fadt(0);
        assert_eq!(
            &fadt[HYPERVISOR_ID_OFFSET..HYPERVISOR_ID_OFFSET + 8],
            b"SecureVM"
        );
    }
}
