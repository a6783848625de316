//! The MCFG: where the PCI Express enhanced configuration space (ECAM) of
//! segment 0 is, so that Linux uses memory-mapped config access (and the
//! 4 KiB extended config space) instead of ports 0xCF8/0xCFC.

use acpi_tables::mcfg::MCFG;

use super::{to_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::arch::layout::{PCI_BUS_COUNT, PCI_ECAM_SIZE, PCI_ECAM_START};

/// Each bus takes 32 devices x 8 functions x 4 KiB of ECAM.
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;
const _: () = assert!(PCI_BUS_COUNT >= 1);
const _: () = assert!(PCI_ECAM_SIZE == PCI_BUS_COUNT as u64 * ECAM_BYTES_PER_BUS);

pub const PCI_SEGMENT: u16 = 0;
pub const LAST_BUS: u8 = PCI_BUS_COUNT - 1;

pub fn build_mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, PCI_SEGMENT, 0, LAST_BUS);
    to_bytes(&mcfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::acpi::test_support::{byte_sum, u16_at, u32_at, u64_at};

    #[test]
    fn one_allocation_for_segment_0_covering_the_layout_buses() {
        let mcfg = build_mcfg();
        assert_eq!(&mcfg[0..4], b"MCFG");
        // Header, 8 reserved bytes, one 16-byte allocation.
        assert_eq!(mcfg.len(), 36 + 8 + 16);
        assert_eq!(u32_at(&mcfg, 4) as usize, mcfg.len());
        assert_eq!(byte_sum(&mcfg), 0);
        assert_eq!(u64_at(&mcfg, 44), PCI_ECAM_START);
        assert_eq!(u16_at(&mcfg, 52), 0, "segment");
        assert_eq!(mcfg[54], 0, "start bus");
        assert_eq!(mcfg[55], PCI_BUS_COUNT - 1, "end bus");
    }
}
