//! x86-64 specifics: guest physical memory layout, boot state (GDT, page
//! tables, registers, MSRs, CPUID), the Linux zero page with its e820 map,
//! and the ACPI tables a stock kernel needs to find CPUs, PCI and power-off.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod guest_ram;
pub mod interrupts;
pub mod layout;
pub mod memory;
pub mod msr;
pub mod paging;
pub mod regs;
pub mod vcpu;
