//! The boot GDT and IDT, and the KVM segment registers that match them.
//!
//! The boot vCPU starts with segment registers already loaded, so KVM's
//! hidden segment state and the descriptors in guest memory must agree: both
//! are derived here from one table. The Linux 64-bit boot protocol asks for
//! `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18; the 16 bytes between
//! `BOOT_GDT_START` and `BOOT_IDT_START` hold exactly four descriptors, so
//! slot 1 carries the TSS that VMX entry requires in TR. PVH uses the same
//! slots with a 32-bit code segment instead of the 64-bit one.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START};

/// Selectors of the boot GDT.
pub const TSS_SELECTOR: u16 = 0x08;
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;

/// Descriptor flags: high nibble = G, D/B, L, AVL; low byte = access byte.
const CODE64_FLAGS: u16 = 0xa09b;
const CODE32_FLAGS: u16 = 0xc09b;
const DATA_FLAGS: u16 = 0xc093;
/// Present, busy 64-bit TSS, byte granular.
const TSS_FLAGS: u16 = 0x008b;
const FLAT_LIMIT: u32 = 0xfffff;
/// Minimum size of a 64-bit TSS minus one.
const TSS_LIMIT: u32 = 0x67;

/// The CPU mode the boot vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// Linux 64-bit boot protocol: long mode, paging on.
    Long64,
    /// PVH: 32-bit protected mode, paging off.
    Protected32,
}

/// Encodes a segment descriptor from its flags, base and 20-bit limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The four descriptors of the boot GDT for `mode`.
pub fn gdt_table(mode: BootMode) -> [u64; 4] {
    let code = match mode {
        BootMode::Long64 => CODE64_FLAGS,
        BootMode::Protected32 => CODE32_FLAGS,
    };
    [
        0,
        descriptor(TSS_FLAGS, 0, TSS_LIMIT),
        descriptor(code, 0, FLAT_LIMIT),
        descriptor(DATA_FLAGS, 0, FLAT_LIMIT),
    ]
}

/// The KVM segment register value that loading `selector` from `table`
/// would produce.
pub fn segment_from_descriptor(table: &[u64; 4], selector: u16) -> kvm_segment {
    let entry = table[usize::from(selector >> 3) % table.len()];
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let granular = (entry >> 55) & 1 == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        // A 20-bit limit, scaled by 4 KiB at most: 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: (present == 0) as u8,
        padding: 0,
    }
}

/// Writes the boot GDT for `mode` and an empty IDT into guest memory.
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap, mode: BootMode) -> Result<(), GuestMemoryError> {
    for (index, entry) in gdt_table(mode).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * index as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
}

/// GDTR limit of the boot GDT.
pub const GDT_LIMIT: u16 = 4 * 8 - 1;
/// IDTR limit of the empty boot IDT (one null gate).
pub const IDT_LIMIT: u16 = 8 - 1;
const _: () = assert!(BOOT_GDT_START + (GDT_LIMIT as u64) < BOOT_IDT_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_encoding_matches_architecture_manual() {
        assert_eq!(
            descriptor(CODE64_FLAGS, 0, FLAT_LIMIT),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(descriptor(DATA_FLAGS, 0, FLAT_LIMIT), 0x00cf_9300_0000_ffff);
        assert_eq!(
            descriptor(CODE32_FLAGS, 0, FLAT_LIMIT),
            0x00cf_9b00_0000_ffff
        );
        assert_eq!(
            descriptor(TSS_FLAGS, 0x1234_5678, TSS_LIMIT),
            0x1200_8b34_5678_0067
        );
    }

    #[test]
    fn code64_segment_is_long_mode() {
        let table = gdt_table(BootMode::Long64);
        let cs = segment_from_descriptor(&table, CODE_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
    }

    #[test]
    fn code32_segment_is_flat_protected_mode() {
        let table = gdt_table(BootMode::Protected32);
        let cs = segment_from_descriptor(&table, CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.type_), (0, 1, 1, 0xb));
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn data_and_tss_segments() {
        let table = gdt_table(BootMode::Long64);
        let ds = segment_from_descriptor(&table, DATA_SELECTOR);
        assert_eq!((ds.type_, ds.db, ds.limit, ds.s), (0x3, 1, 0xffff_ffff, 1));
        let tr = segment_from_descriptor(&table, TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.g), (0xb, 0, TSS_LIMIT, 0));
        let null = segment_from_descriptor(&table, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn tables_land_in_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt_and_idt(&mem, BootMode::Long64).unwrap();
        let code: u64 = mem
            .read_obj(GuestAddress(BOOT_GDT_START + u64::from(CODE_SELECTOR)))
            .unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let idt: u64 = mem.read_obj(GuestAddress(BOOT_IDT_START)).unwrap();
        assert_eq!(idt, 0);
    }
}
