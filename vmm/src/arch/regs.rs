//! Register state of the boot vCPU at the kernel's entry point.
//!
//! Two entry conventions: the Linux 64-bit boot protocol (long mode, paging
//! on with identity-mapped tables, RSI = zero page) and PVH (32-bit protected
//! mode, paging off, RBX = `hvm_start_info`). Application processors are not
//! touched here: the in-kernel irqchip starts them with INIT/SIPI.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::boot_params::{BootEntry, BootProtocol};
use super::gdt::{
    gdt_table, segment_from_descriptor, BootMode, CODE_SELECTOR, DATA_SELECTOR, GDT_LIMIT,
    IDT_LIMIT, TSS_SELECTOR,
};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always reads as one.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR after reset: all SIMD exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// The CPU mode a boot protocol enters the kernel in.
pub fn boot_mode(protocol: BootProtocol) -> BootMode {
    match protocol {
        BootProtocol::Linux64 => BootMode::Long64,
        BootProtocol::Pvh => BootMode::Protected32,
    }
}

/// General-purpose registers at the kernel entry point.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.entry.0,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = entry.boot_params_addr.0;
        }
        BootProtocol::Pvh => regs.rbx = entry.boot_params_addr.0,
    }
    regs
}

/// Adjusts the special registers KVM reported for a fresh vCPU so that it
/// enters the kernel in `mode` with the boot GDT, IDT and page tables.
pub fn set_boot_sregs(sregs: &mut kvm_sregs, mode: BootMode) {
    let table = gdt_table(mode);
    let code = segment_from_descriptor(&table, CODE_SELECTOR);
    let data = segment_from_descriptor(&table, DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_descriptor(&table, TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = IDT_LIMIT;

    // Caching stays enabled: reset leaves CD/NW set, which would make the
    // early kernel run uncached until it rewrites CR0.
    sregs.cr0 = (sregs.cr0 & !(CR0_CD | CR0_NW)) | CR0_PE | CR0_ET;
    match mode {
        BootMode::Long64 => {
            sregs.cr0 |= CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootMode::Protected32 => {
            sregs.cr0 &= !CR0_PG;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer &= !(EFER_LME | EFER_LMA);
        }
    }
}

/// FPU and SSE state at entry: the values FNINIT and reset give.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::ZERO_PAGE_START;
    use vm_memory::GuestAddress;

    fn entry(protocol: BootProtocol) -> BootEntry {
        BootEntry {
            entry: GuestAddress(0x100_0200),
            protocol,
            boot_params_addr: GuestAddress(ZERO_PAGE_START),
        }
    }

    #[test]
    fn linux64_regs_point_at_zero_page_and_stack() {
        let regs = boot_regs(&entry(BootProtocol::Linux64));
        assert_eq!(regs.rip, 0x100_0200);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rflags, 0x2);
        assert_eq!(regs.rbx, 0);
    }

    #[test]
    fn pvh_regs_point_rbx_at_start_info() {
        let regs = boot_regs(&entry(BootProtocol::Pvh));
        assert_eq!(regs.rbx, ZERO_PAGE_START);
        assert_eq!(regs.rsi, 0);
        assert_eq!(regs.rflags, 0x2);
    }

    #[test]
    fn long_mode_sregs() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        set_boot_sregs(&mut sregs, BootMode::Long64);
        assert_eq!(sregs.cr0, CR0_PG | CR0_ET | CR0_PE);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (CODE_SELECTOR, 1));
        assert_eq!(sregs.ss.selector, DATA_SELECTOR);
        assert_eq!(sregs.tr.selector, TSS_SELECTOR);
        assert_eq!(
            (sregs.gdt.base, sregs.idt.base),
            (BOOT_GDT_START, BOOT_IDT_START)
        );
    }

    #[test]
    fn protected_mode_sregs_have_paging_off() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            cr4: CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        set_boot_sregs(&mut sregs, BootMode::Protected32);
        assert_eq!(sregs.cr0, CR0_ET | CR0_PE);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }
}
