//! ACPI tables for a stock Linux guest: RSDP, XSDT, FADT, MADT, MCFG and an
//! AML DSDT, written into the legacy BIOS area so that the kernel finds them
//! both through `boot_params.acpi_rsdp_addr` and by scanning for the RSDP.
//!
//! The platform is "hardware-reduced" ACPI: no PM1 blocks, GPEs or SCI to
//! emulate. Power-off and reset go through the FADT sleep-control and reset
//! registers, CPUs come from the MADT, and the PCI host bridge (ECAM from the
//! MCFG, windows from its `_CRS`) from the DSDT. The power button is a
//! control-method button notified by a Generic Event Device whose interrupt
//! is [`POWER_BUTTON_GSI`]; the same device scans the PCI hot-plug slots on
//! [`PCI_HOTPLUG_GSI`].
//!
//! Every table is built in host memory first and its placement checked
//! against [`ACPI_TABLES_END`] before a single byte reaches the guest, so a
//! failure leaves guest memory untouched.

mod dsdt;
mod fadt;
mod madt;
mod mcfg;

#[cfg(test)]
mod acpica_tests;

pub use dsdt::{PciHotplugSlots, PCI_HOTPLUG_GSI, POWER_BUTTON_GSI};

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout::{AddressRange, ACPI_TABLES_END, ACPI_TABLES_START, RSDP_START};

/// OEM identification carried in every table header; Linux prints it in
/// its boot log, which makes "whose tables are these" obvious.
pub const OEM_ID: [u8; 6] = *b"SECVM ";
pub const OEM_TABLE_ID: [u8; 8] = *b"SECUREVM";
pub const OEM_REVISION: u32 = 1;

/// XSDT entries must be 8-byte aligned physical addresses; 16 keeps every
/// table on a paragraph boundary, which is what firmware conventionally does.
const TABLE_ALIGNMENT: u64 = 16;

const _: () = assert!(RSDP_START + RSDP_LENGTH <= ACPI_TABLES_START);
const RSDP_LENGTH: u64 = 36;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("cannot describe a VM without vCPUs in the ACPI MADT: ask for at least one vCPU")]
    NoCpus,
    #[error(
        "the ACPI tables need {needed} bytes but the window reserved for them \
         ({start:#x}-{end:#x}) holds only {available}: ask for fewer vCPUs"
    )]
    TablesTooLarge {
        needed: u64,
        available: u64,
        start: u64,
        end: u64,
    },
    #[error(
        "cannot write the ACPI {table} to guest address {address:#x} ({source}): \
         guest RAM must cover the first megabyte; give the VM more memory"
    )]
    GuestMemory {
        table: &'static str,
        address: u64,
        source: GuestMemoryError,
    },
}

/// Builds all ACPI tables for a VM with `num_cpus` vCPUs (APIC IDs
/// `0..num_cpus`), with or without PCI hot-plug slots, and with `pci_mmio64`
/// (`layout::pci_mmio64_window`) as the 64-bit PCI window, and writes them
/// to guest memory: the RSDP at
/// [`RSDP_START`], the other tables in `[ACPI_TABLES_START, ACPI_TABLES_END)`.
/// Returns the RSDP address, which belongs in `boot_params.acpi_rsdp_addr`.
pub fn create_acpi_tables<M: GuestMemory + ?Sized>(
    mem: &M,
    num_cpus: u8,
    hotplug: PciHotplugSlots,
    pci_mmio64: Option<AddressRange>,
) -> Result<GuestAddress, AcpiError> {
    write_tables(
        mem,
        num_cpus,
        hotplug,
        pci_mmio64,
        GuestAddress(RSDP_START),
        TableWindow {
            start: ACPI_TABLES_START,
            end: ACPI_TABLES_END,
        },
    )
}

/// The guest physical range `[start, end)` the tables (but not the RSDP)
/// must fit in.
#[derive(Clone, Copy, Debug)]
struct TableWindow {
    start: u64,
    end: u64,
}

/// One finished table and where it goes.
struct PlacedTable {
    name: &'static str,
    address: u64,
    bytes: Vec<u8>,
}

fn write_tables<M: GuestMemory + ?Sized>(
    mem: &M,
    num_cpus: u8,
    hotplug: PciHotplugSlots,
    pci_mmio64: Option<AddressRange>,
    rsdp_address: GuestAddress,
    window: TableWindow,
) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }

    let dsdt = dsdt::build_dsdt(hotplug, pci_mmio64);
    let madt = madt::build_madt(num_cpus);
    let mcfg = mcfg::build_mcfg();

    // Addresses first: the FADT points at the DSDT and the XSDT at everything
    // else, and neither length depends on those addresses.
    let mut cursor = window.start;
    let mut next_address = |length: usize| {
        let address = align_up(cursor, TABLE_ALIGNMENT);
        cursor = address.saturating_add(length as u64);
        address
    };
    let dsdt_address = next_address(dsdt.len());
    let fadt_address = next_address(fadt::FADT_LENGTH);
    let madt_address = next_address(madt.len());
    let mcfg_address = next_address(mcfg.len());
    let xsdt_entries = [fadt_address, madt_address, mcfg_address];
    let xsdt = build_xsdt(&xsdt_entries);
    let xsdt_address = next_address(xsdt.len());

    if cursor > window.end {
        return Err(AcpiError::TablesTooLarge {
            needed: cursor - window.start,
            available: window.end.saturating_sub(window.start),
            start: window.start,
            end: window.end,
        });
    }

    let fadt = fadt::build_fadt(dsdt_address);
    let rsdp = build_rsdp(xsdt_address);
    let tables = [
        PlacedTable {
            name: "DSDT",
            address: dsdt_address,
            bytes: dsdt,
        },
        PlacedTable {
            name: "FADT",
            address: fadt_address,
            bytes: fadt,
        },
        PlacedTable {
            name: "MADT",
            address: madt_address,
            bytes: madt,
        },
        PlacedTable {
            name: "MCFG",
            address: mcfg_address,
            bytes: mcfg,
        },
        PlacedTable {
            name: "XSDT",
            address: xsdt_address,
            bytes: xsdt,
        },
        PlacedTable {
            name: "RSDP",
            address: rsdp_address.0,
            bytes: rsdp,
        },
    ];

    // Check that guest RAM holds every table before writing any of them.
    for table in &tables {
        let address = GuestAddress(table.address);
        if !mem.check_range(address, table.bytes.len(), vm_memory::Permissions::Write) {
            return Err(AcpiError::GuestMemory {
                table: table.name,
                address: table.address,
                source: GuestMemoryError::InvalidGuestAddress(address),
            });
        }
    }
    for table in &tables {
        mem.write_slice(&table.bytes, GuestAddress(table.address))
            .map_err(|source| AcpiError::GuestMemory {
                table: table.name,
                address: table.address,
                source,
            })?;
    }
    Ok(rsdp_address)
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment).saturating_mul(alignment)
}

fn build_xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for entry in entries {
        xsdt.add_entry(*entry);
    }
    to_bytes(&xsdt)
}

fn build_rsdp(xsdt_address: u64) -> Vec<u8> {
    to_bytes(&Rsdp::new(OEM_ID, xsdt_address))
}

/// Serialises a table (or any AML object) to bytes.
fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Reading tables back out of guest memory, independently of how they
    //! were built, so the tests check the layout the spec defines.

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    pub fn low_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("test guest memory")
    }

    pub fn read(mem: &GuestMemoryMmap, address: u64, length: usize) -> Vec<u8> {
        let mut bytes = vec![0; length];
        mem.read_slice(&mut bytes, GuestAddress(address))
            .expect("read guest memory");
        bytes
    }

    pub fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    pub fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    pub fn byte_sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte))
    }

    /// Reads the whole system description table at `address`, using the
    /// length in its header.
    pub fn read_table(mem: &GuestMemoryMmap, address: u64) -> Vec<u8> {
        let header = read(mem, address, 36);
        read(mem, address, u32_at(&header, 4) as usize)
    }

    /// The tables listed in the XSDT that the RSDP at `rsdp_address` points
    /// to, keyed by signature.
    pub fn tables_by_signature(
        mem: &GuestMemoryMmap,
        rsdp_address: u64,
    ) -> Vec<([u8; 4], u64, Vec<u8>)> {
        let rsdp = read(mem, rsdp_address, 36);
        let xsdt = read_table(mem, u64_at(&rsdp, 24));
        xsdt[36..]
            .chunks_exact(8)
            .map(|entry| {
                let address = u64::from_le_bytes(entry.try_into().unwrap());
                let table = read_table(mem, address);
                (table[0..4].try_into().unwrap(), address, table)
            })
            .collect()
    }

    pub fn table(mem: &GuestMemoryMmap, rsdp_address: u64, signature: &[u8; 4]) -> Vec<u8> {
        tables_by_signature(mem, rsdp_address)
            .into_iter()
            .find(|(found, _, _)| found == signature)
            .map(|(_, _, bytes)| bytes)
            .unwrap_or_else(|| panic!("{} not listed in the XSDT", signature.escape_ascii()))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn build(num_cpus: u8) -> (GuestMemoryMmap, u64) {
        let mem = low_memory();
        let rsdp =
            create_acpi_tables(&mem, num_cpus, PciHotplugSlots::Present, None).expect("tables fit");
        (mem, rsdp.0)
    }

    #[test]
    fn rsdp_is_at_the_layout_address_with_both_checksums() {
        let (mem, rsdp_address) = build(2);
        assert_eq!(rsdp_address, RSDP_START);
        let rsdp = read(&mem, rsdp_address, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision 2 (ACPI 2.0+, has an XSDT)");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        assert_eq!(byte_sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(byte_sum(&rsdp), 0, "extended checksum");
        let xsdt_address = u64_at(&rsdp, 24);
        assert!((ACPI_TABLES_START..ACPI_TABLES_END).contains(&xsdt_address));
    }

    #[test]
    fn xsdt_lists_valid_fadt_madt_and_mcfg_inside_the_window() {
        let (mem, rsdp_address) = build(4);
        let rsdp = read(&mem, rsdp_address, 36);
        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(byte_sum(&xsdt), 0, "XSDT checksum");

        let tables = tables_by_signature(&mem, rsdp_address);
        let signatures: Vec<[u8; 4]> = tables.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(signatures, vec![*b"FACP", *b"APIC", *b"MCFG"]);
        for (signature, address, bytes) in &tables {
            let name = signature.escape_ascii();
            assert_eq!(address % 8, 0, "{name} is 8-byte aligned");
            assert!(*address >= ACPI_TABLES_START, "{name} starts in the window");
            assert!(
                address + bytes.len() as u64 <= ACPI_TABLES_END,
                "{name} ends in the window"
            );
            assert_eq!(byte_sum(bytes), 0, "{name} checksum");
            assert_eq!(&bytes[10..16], &OEM_ID, "{name} OEM id");
        }
    }

    #[test]
    fn fadt_points_at_a_valid_dsdt_inside_the_window() {
        let (mem, rsdp_address) = build(1);
        let fadt = table(&mem, rsdp_address, b"FACP");
        let dsdt_address = u64_at(&fadt, 140);
        assert!((ACPI_TABLES_START..ACPI_TABLES_END).contains(&dsdt_address));
        let dsdt = read_table(&mem, dsdt_address);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(byte_sum(&dsdt), 0, "DSDT checksum");
        assert!(dsdt_address + dsdt.len() as u64 <= ACPI_TABLES_END);
    }

    #[test]
    fn tables_do_not_overlap() {
        let (mem, rsdp_address) = build(255);
        let fadt = table(&mem, rsdp_address, b"FACP");
        let rsdp = read(&mem, rsdp_address, 36);
        let xsdt_address = u64_at(&rsdp, 24);
        let mut ranges: Vec<(u64, u64)> = tables_by_signature(&mem, rsdp_address)
            .into_iter()
            .map(|(_, address, bytes)| (address, address + bytes.len() as u64))
            .collect();
        let dsdt_address = u64_at(&fadt, 140);
        ranges.push((
            dsdt_address,
            dsdt_address + read_table(&mem, dsdt_address).len() as u64,
        ));
        ranges.push((
            xsdt_address,
            xsdt_address + read_table(&mem, xsdt_address).len() as u64,
        ));
        ranges.push((rsdp_address, rsdp_address + 36));
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        assert!(ranges.last().unwrap().1 <= ACPI_TABLES_END);
    }

    #[test]
    fn zero_cpus_is_refused() {
        let mem = low_memory();
        assert!(matches!(
            create_acpi_tables(&mem, 0, PciHotplugSlots::Present, None),
            Err(AcpiError::NoCpus)
        ));
    }

    #[test]
    fn tables_that_do_not_fit_are_refused_without_writing_anything() {
        let mem = low_memory();
        // 255 vCPUs fit the real window easily, so provoke the overflow
        // with a window too small for a 255-entry MADT.
        let window = TableWindow {
            start: ACPI_TABLES_START,
            end: ACPI_TABLES_START + 1024,
        };
        let error = write_tables(
            &mem,
            255,
            PciHotplugSlots::Present,
            None,
            GuestAddress(RSDP_START),
            window,
        )
        .expect_err("a 255-vCPU MADT does not fit in 1 KiB");
        match error {
            AcpiError::TablesTooLarge {
                needed, available, ..
            } => {
                assert_eq!(available, 1024);
                assert!(needed > 1024);
            }
            other => panic!("expected TablesTooLarge, got {other}"),
        }
        assert!(read(&mem, RSDP_START, 0x100 + 1024).iter().all(|b| *b == 0));
    }

    #[test]
    fn the_most_vcpus_a_u8_can_ask_for_fit_the_real_window() {
        let (mem, rsdp_address) = build(u8::MAX);
        let madt = table(&mem, rsdp_address, b"APIC");
        assert_eq!(byte_sum(&madt), 0);
    }

    #[test]
    fn guest_memory_without_the_first_megabyte_is_an_error_not_a_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let error = create_acpi_tables(&mem, 1, PciHotplugSlots::Present, None)
            .expect_err("no RAM at 0xe0000");
        assert!(matches!(error, AcpiError::GuestMemory { .. }));
        assert!(error.to_string().contains("more memory"));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        assert!(AcpiError::NoCpus.to_string().contains("at least one vCPU"));
        let too_large = AcpiError::TablesTooLarge {
            needed: 2,
            available: 1,
            start: 0,
            end: 1,
        };
        assert!(too_large.to_string().contains("fewer vCPUs"));
    }
}
