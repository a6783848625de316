//! Identity-mapped boot page tables for the Linux 64-bit boot protocol.
//!
//! The protocol enters the kernel with paging on and the kernel image, the
//! zero page and the command line identity mapped. Mapping the whole first
//! 4 GiB with 2 MiB pages covers all low RAM (and the MMIO hole, harmlessly)
//! whatever the guest size, with one PML4, one PDPT and four page directories.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{BOOT_STACK_POINTER, CMDLINE_START, PDE_START, PDPTE_START, PML4_START};
use crate::narrow::usize_from_u64;

const PAGE_SIZE: u64 = 0x1000;
const ENTRIES_PER_TABLE: u64 = 512;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
const HUGE_PAGE_BYTES: u64 = 2 << 20;
/// Page directories needed to map 4 GiB (each maps 1 GiB).
pub const PAGE_DIRECTORY_COUNT: u64 = 4;
/// First byte past the page directories; nothing else may live in
/// [`PDE_START`, `BOOT_PAGE_TABLES_END`).
pub const BOOT_PAGE_TABLES_END: u64 = PDE_START + PAGE_DIRECTORY_COUNT * PAGE_SIZE;

// The tables must not overlap the stack below them or the command line above.
const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(PML4_START + PAGE_SIZE <= PDPTE_START);
const _: () = assert!(PDPTE_START + PAGE_SIZE <= PDE_START);
const _: () = assert!(BOOT_PAGE_TABLES_END <= CMDLINE_START);

/// The 8-byte entries of the boot paging structures, as (guest address,
/// value) pairs, in the order they are written.
pub fn page_table_entries() -> Vec<(u64, u64)> {
    let mut entries =
        Vec::with_capacity(usize_from_u64(2 + PAGE_DIRECTORY_COUNT * ENTRIES_PER_TABLE));
    entries.push((PML4_START, PDPTE_START | PRESENT | WRITABLE));
    for directory in 0..PAGE_DIRECTORY_COUNT {
        let directory_base = PDE_START + directory * PAGE_SIZE;
        entries.push((
            PDPTE_START + directory * 8,
            directory_base | PRESENT | WRITABLE,
        ));
        for slot in 0..ENTRIES_PER_TABLE {
            let physical = (directory * ENTRIES_PER_TABLE + slot) * HUGE_PAGE_BYTES;
            entries.push((
                directory_base + slot * 8,
                physical | PRESENT | WRITABLE | PAGE_SIZE_2M,
            ));
        }
    }
    entries
}

/// Writes the boot page tables into guest memory. CR3 must then point at
/// `PML4_START`.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    for table in [PML4_START, PDPTE_START] {
        mem.write_slice(&[0u8; usize_from_u64(PAGE_SIZE)], GuestAddress(table))?;
    }
    for (address, value) in page_table_entries() {
        mem.write_obj(value, GuestAddress(address))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{CMDLINE_START, ZERO_PAGE_START};

    /// Walks the tables in guest memory the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, virtual_address: u64) -> Option<u64> {
        let read = |address: u64| mem.read_obj::<u64>(GuestAddress(address)).unwrap();
        let pml4e = read(PML4_START + ((virtual_address >> 39) & 0x1ff) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = read((pml4e & !0xfff) + ((virtual_address >> 30) & 0x1ff) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read((pdpte & !0xfff) + ((virtual_address >> 21) & 0x1ff) * 8);
        if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (virtual_address & 0x1f_ffff))
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn first_4gib_is_identity_mapped() {
        let mem = memory();
        write_page_tables(&mem).unwrap();
        for address in [
            0,
            ZERO_PAGE_START,
            CMDLINE_START,
            0x100_0200,
            0x3fff_ffff,
            0x4000_0000,
            0xbfff_f000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, address), Some(address), "{address:#x}");
        }
    }

    #[test]
    fn nothing_above_4gib_is_mapped() {
        let mem = memory();
        write_page_tables(&mem).unwrap();
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
        assert_eq!(translate(&mem, 0x80_0000_0000), None);
    }

    #[test]
    fn entries_stay_inside_the_tables() {
        let entries = page_table_entries();
        assert!(entries
            .iter()
            .all(|(address, _)| *address >= PML4_START && *address < BOOT_PAGE_TABLES_END));
    }
}
