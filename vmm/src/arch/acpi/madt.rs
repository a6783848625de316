//! The MADT (signature `APIC`): the interrupt controllers. One local APIC
//! per vCPU, the in-kernel KVM I/O APIC, the ISA timer override and the
//! NMI wiring.
//!
//! Built from raw bytes because the `acpi_tables` MADT builder has neither
//! a flags setter nor interrupt-source-override or local-APIC-NMI entries.

use acpi_tables::sdt::Sdt;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::layout::{APIC_START, IOAPIC_START};
use crate::narrow::const_narrow;

/// ACPI 6.2-6.4 MADT format.
const MADT_REVISION: u8 = 5;
/// Header plus "Local Interrupt Controller Address" and "Flags".
const MADT_FIXED_LENGTH: u32 = 44;

/// MADT flag: the platform also has dual 8259 PICs, which the OS must mask
/// when it uses the APICs. True here: KVM's in-kernel irqchip includes
/// them. (Linux in hardware-reduced mode ignores the PICs either way; the
/// flag is for OSes that look.)
const PCAT_COMPAT: u32 = 1;

const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;

const LOCAL_APIC_ENABLED: u32 = 1;
/// The I/O APIC's ID as KVM's in-kernel I/O APIC reports it after reset, so
/// the table and the ID register agree.
pub const IOAPIC_ID: u8 = 0;
/// MPS INTI flags: active high (bits 0-1 = 01), edge triggered (bits 2-3 = 01).
const INTI_ACTIVE_HIGH_EDGE: u16 = 0b0101;
/// ISA bus number in interrupt source overrides.
const ISA_BUS: u8 = 0;
/// The PIT's ISA IRQ 0 is wired to I/O APIC pin 2, as on every PC chipset
/// and in KVM's default GSI routing.
const TIMER_ISA_IRQ: u8 = 0;
const TIMER_GSI: u32 = 2;
/// "All processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
const NMI_LINT: u8 = 1;

const _: () = assert!(APIC_START <= u32::MAX as u64);
const _: () = assert!(IOAPIC_START <= u32::MAX as u64);

/// Builds the MADT for vCPUs with APIC IDs and ACPI processor UIDs
/// `0..num_cpus`.
pub fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_FIXED_LENGTH,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, const_narrow!(APIC_START => u32));
    madt.write_u32(40, PCAT_COMPAT);

    for cpu in 0..num_cpus {
        madt.append_slice(&local_apic(cpu));
    }
    madt.append_slice(&io_apic());
    madt.append_slice(&timer_override());
    madt.append_slice(&local_apic_nmi());
    madt.as_slice().to_vec()
}

/// Processor Local APIC structure: ACPI processor UID = APIC ID = `cpu`.
fn local_apic(cpu: u8) -> [u8; 8] {
    let mut entry = [TYPE_LOCAL_APIC, 8, cpu, cpu, 0, 0, 0, 0];
    entry[4..8].copy_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    entry
}

fn io_apic() -> [u8; 12] {
    let mut entry = [0; 12];
    entry[0] = TYPE_IO_APIC;
    entry[1] = 12;
    entry[2] = IOAPIC_ID;
    entry[4..8].copy_from_slice(&const_narrow!(IOAPIC_START => u32).to_le_bytes());
    // GSI base 0: the I/O APIC's pins are GSIs 0-23.
    entry[8..12].copy_from_slice(&0u32.to_le_bytes());
    entry
}

fn timer_override() -> [u8; 10] {
    let mut entry = [0; 10];
    entry[0] = TYPE_INTERRUPT_SOURCE_OVERRIDE;
    entry[1] = 10;
    entry[2] = ISA_BUS;
    entry[3] = TIMER_ISA_IRQ;
    entry[4..8].copy_from_slice(&TIMER_GSI.to_le_bytes());
    entry[8..10].copy_from_slice(&INTI_ACTIVE_HIGH_EDGE.to_le_bytes());
    entry
}

fn local_apic_nmi() -> [u8; 6] {
    let mut entry = [0; 6];
    entry[0] = TYPE_LOCAL_APIC_NMI;
    entry[1] = 6;
    entry[2] = ALL_PROCESSORS;
    entry[3..5].copy_from_slice(&INTI_ACTIVE_HIGH_EDGE.to_le_bytes());
    entry[5] = NMI_LINT;
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::acpi::test_support::{byte_sum, u16_at, u32_at};

    /// Splits the MADT's interrupt controller structures into (type, bytes).
    fn structures(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut found = Vec::new();
        let mut offset = MADT_FIXED_LENGTH as usize;
        while offset < madt.len() {
            let length = madt[offset + 1] as usize;
            assert!(length >= 2, "structure at {offset} has length {length}");
            found.push((madt[offset], madt[offset..offset + length].to_vec()));
            offset += length;
        }
        assert_eq!(
            offset,
            madt.len(),
            "structures end exactly at the table end"
        );
        found
    }

    #[test]
    fn header_fields_and_checksum() {
        let madt = build_madt(3);
        assert_eq!(&madt[0..4], b"APIC");
        assert_eq!(u32_at(&madt, 4) as usize, madt.len());
        assert_eq!(byte_sum(&madt), 0);
        assert_eq!(u32_at(&madt, 36) as u64, APIC_START);
        assert_eq!(u32_at(&madt, 40), PCAT_COMPAT);
    }

    #[test]
    fn one_enabled_local_apic_per_vcpu_with_uid_equal_to_apic_id() {
        for num_cpus in [1u8, 2, 7, 255] {
            let madt = build_madt(num_cpus);
            let local_apics: Vec<Vec<u8>> = structures(&madt)
                .into_iter()
                .filter(|(kind, _)| *kind == TYPE_LOCAL_APIC)
                .map(|(_, bytes)| bytes)
                .collect();
            assert_eq!(local_apics.len(), usize::from(num_cpus));
            for (index, entry) in local_apics.iter().enumerate() {
                assert_eq!(entry.len(), 8);
                assert_eq!(usize::from(entry[2]), index, "ACPI processor UID");
                assert_eq!(usize::from(entry[3]), index, "APIC ID");
                assert_eq!(u32_at(entry, 4), LOCAL_APIC_ENABLED);
            }
        }
    }

    #[test]
    fn one_io_apic_at_the_layout_address_with_gsi_base_zero() {
        let madt = build_madt(2);
        let io_apics: Vec<Vec<u8>> = structures(&madt)
            .into_iter()
            .filter(|(kind, _)| *kind == TYPE_IO_APIC)
            .map(|(_, bytes)| bytes)
            .collect();
        assert_eq!(io_apics.len(), 1);
        let entry = &io_apics[0];
        assert_eq!(entry[2], IOAPIC_ID);
        assert_eq!(u32_at(entry, 4) as u64, IOAPIC_START);
        assert_eq!(u32_at(entry, 8), 0);
    }

    #[test]
    fn isa_irq0_is_overridden_to_gsi2_edge_triggered() {
        let madt = build_madt(1);
        let overrides: Vec<Vec<u8>> = structures(&madt)
            .into_iter()
            .filter(|(kind, _)| *kind == TYPE_INTERRUPT_SOURCE_OVERRIDE)
            .map(|(_, bytes)| bytes)
            .collect();
        assert_eq!(overrides.len(), 1);
        let entry = &overrides[0];
        assert_eq!((entry[2], entry[3]), (ISA_BUS, 0));
        assert_eq!(u32_at(entry, 4), 2);
        let flags = u16_at(entry, 8);
        assert_eq!((flags >> 2) & 0b11, 0b01, "edge triggered");
        assert_eq!(flags & 0b11, 0b01, "active high");
    }

    #[test]
    fn nmi_is_on_lint1_of_every_processor() {
        let madt = build_madt(4);
        let nmis: Vec<Vec<u8>> = structures(&madt)
            .into_iter()
            .filter(|(kind, _)| *kind == TYPE_LOCAL_APIC_NMI)
            .map(|(_, bytes)| bytes)
            .collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(nmis[0][2], 0xff, "all processors");
        assert_eq!(nmis[0][5], 1, "LINT1");
    }
}
