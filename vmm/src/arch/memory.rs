//! Guest RAM: which guest physical ranges are RAM for a given size, the
//! `GuestMemoryMmap` backing them, and the firmware memory map (e820 for the
//! Linux boot protocol, the PVH memmap) that tells the guest the same thing.
//!
//! RAM below 4 GiB stops at `MMIO_HOLE_START` so that PCI BARs, ECAM, the
//! IOAPIC and the LAPIC have addresses no RAM shadows; the rest of RAM
//! continues at 4 GiB. Keeping both views in one module means the memory the
//! VMM maps and the memory the guest is told about cannot drift apart.

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{
    EBDA_START, FIRST_ADDR_PAST_4GIB, HIGH_MEMORY_START, MMIO_HOLE_START, PCI_ECAM_SIZE,
    PCI_ECAM_START,
};
use crate::narrow::usize_from_u64;

const PAGE_SIZE: u64 = 4096;

/// Why guest RAM could not be set up.
#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is not a positive multiple of 4 KiB: give --memory in MiB, e.g. --memory 512")]
    InvalidSize(u64),
    #[error("guest memory size {0} bytes does not fit in this host's address space: give a smaller --memory")]
    TooLarge(u64),
    #[error("cannot allocate {size_mib} MiB of guest memory ({source}): give a smaller --memory or free host memory")]
    Allocation {
        size_mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot map {size_mib} MiB of guest memory ({source}): give a smaller --memory or free host memory")]
    Mapping {
        size_mib: u64,
        #[source]
        source: std::io::Error,
    },
}

/// What a range of the firmware memory map holds, as the guest must treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram,
    /// Must not be used as RAM: legacy BIOS area with the ACPI tables, ECAM.
    Reserved,
}

/// One range of the firmware memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub address: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// The guest physical RAM ranges for `mem_size_bytes` of RAM: one range below
/// the MMIO hole and, when RAM does not fit there, one starting at 4 GiB.
pub fn ram_regions(mem_size_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low_size = mem_size_bytes.min(MMIO_HOLE_START);
    let high_size = mem_size_bytes - low_size;
    let mut regions = vec![(GuestAddress(0), low_size as usize)];
    if high_size > 0 {
        regions.push((
            GuestAddress(FIRST_ADDR_PAST_4GIB),
            usize_from_u64(high_size),
        ));
    }
    regions
}

/// Allocates anonymous host memory for `mem_size_bytes` of guest RAM laid out
/// as `ram_regions` says.
pub fn create_guest_memory(mem_size_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    validate_size(mem_size_bytes)?;
    GuestMemoryMmap::from_ranges(&ram_regions(mem_size_bytes)).map_err(|source| {
        MemoryError::Allocation {
            size_mib: mem_size_bytes >> 20,
            source,
        }
    })
}

/// Whether `mem_size_bytes` of guest RAM can be laid out on this host.
pub(super) fn validate_size(mem_size_bytes: u64) -> Result<(), MemoryError> {
    if mem_size_bytes == 0 || !mem_size_bytes.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::InvalidSize(mem_size_bytes));
    }
    if usize::try_from(mem_size_bytes).is_err()
        || mem_size_bytes.checked_add(FIRST_ADDR_PAST_4GIB).is_none()
    {
        return Err(MemoryError::TooLarge(mem_size_bytes));
    }
    Ok(())
}

/// End (exclusive) of the RAM range that starts at address 0.
pub fn low_ram_end(mem_size_bytes: u64) -> u64 {
    mem_size_bytes.min(MMIO_HOLE_START)
}

/// The memory map the guest firmware interface reports, sorted by address:
/// conventional memory below the EBDA, the reserved legacy BIOS area (which
/// holds the RSDP and ACPI tables), RAM from 1 MiB up to the MMIO hole, the
/// PCI ECAM window (Linux only trusts MMCONFIG that the map reserves), and
/// RAM above 4 GiB.
pub fn memory_map(mem_size_bytes: u64) -> Vec<MemoryMapEntry> {
    let low_end = low_ram_end(mem_size_bytes);
    let mut map = Vec::with_capacity(5);
    let mut push = |address: u64, end: u64, kind: MemoryKind| {
        if end > address {
            map.push(MemoryMapEntry {
                address,
                size: end - address,
                kind,
            });
        }
    };
    push(0, EBDA_START.min(low_end), MemoryKind::Ram);
    push(EBDA_START, HIGH_MEMORY_START, MemoryKind::Reserved);
    push(HIGH_MEMORY_START, low_end, MemoryKind::Ram);
    push(
        PCI_ECAM_START,
        PCI_ECAM_START + PCI_ECAM_SIZE,
        MemoryKind::Reserved,
    );
    let high_size = mem_size_bytes - low_end;
    push(
        FIRST_ADDR_PAST_4GIB,
        FIRST_ADDR_PAST_4GIB + high_size,
        MemoryKind::Ram,
    );
    map
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn ram_smaller_than_hole_is_one_region() {
        assert_eq!(
            ram_regions(512 * MIB),
            vec![(GuestAddress(0), (512 * MIB) as usize)]
        );
    }

    #[test]
    fn ram_bigger_than_hole_continues_at_4gib() {
        assert_eq!(
            ram_regions(4 * GIB),
            vec![
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (
                    GuestAddress(FIRST_ADDR_PAST_4GIB),
                    (4 * GIB - MMIO_HOLE_START) as usize
                ),
            ]
        );
    }

    #[test]
    fn memory_map_small_ram() {
        let map = memory_map(256 * MIB);
        let expected = vec![
            MemoryMapEntry {
                address: 0,
                size: EBDA_START,
                kind: MemoryKind::Ram,
            },
            MemoryMapEntry {
                address: EBDA_START,
                size: HIGH_MEMORY_START - EBDA_START,
                kind: MemoryKind::Reserved,
            },
            MemoryMapEntry {
                address: HIGH_MEMORY_START,
                size: 256 * MIB - HIGH_MEMORY_START,
                kind: MemoryKind::Ram,
            },
            MemoryMapEntry {
                address: PCI_ECAM_START,
                size: PCI_ECAM_SIZE,
                kind: MemoryKind::Reserved,
            },
        ];
        assert_eq!(map, expected);
    }

    #[test]
    fn memory_map_ram_above_hole() {
        let map = memory_map(4 * GIB);
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[2],
            MemoryMapEntry {
                address: HIGH_MEMORY_START,
                size: MMIO_HOLE_START - HIGH_MEMORY_START,
                kind: MemoryKind::Ram,
            }
        );
        assert_eq!(
            map[4],
            MemoryMapEntry {
                address: FIRST_ADDR_PAST_4GIB,
                size: 4 * GIB - MMIO_HOLE_START,
                kind: MemoryKind::Ram,
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 4 * GIB - (HIGH_MEMORY_START - EBDA_START));
    }

    #[test]
    fn memory_map_is_sorted_and_disjoint() {
        for size in [64 * MIB, MMIO_HOLE_START, 6 * GIB] {
            let map = memory_map(size);
            for pair in map.windows(2) {
                assert!(pair[0].address + pair[0].size <= pair[1].address, "{map:?}");
            }
        }
    }

    #[test]
    fn guest_memory_matches_regions() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert_eq!(region.len(), 64 * MIB);
    }

    #[test]
    fn guest_memory_rejects_unaligned_size() {
        let err = create_guest_memory(MIB + 1).unwrap_err();
        assert!(matches!(err, MemoryError::InvalidSize(_)), "{err}");
        assert!(matches!(
            create_guest_memory(0),
            Err(MemoryError::InvalidSize(0))
        ));
    }

    #[test]
    fn guest_memory_rejects_sizes_past_the_address_space() {
        let err = create_guest_memory(!(PAGE_SIZE - 1)).unwrap_err();
        assert!(matches!(err, MemoryError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("give a smaller --memory"), "{err}");
    }
}
