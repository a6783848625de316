//! Model-specific registers every vCPU starts with.
//!
//! The values are what firmware would leave behind: syscall MSRs cleared,
//! TSC at zero so all vCPUs start in step, fast strings enabled, and MTRRs
//! enabled with write-back as the default type (without it Linux maps all
//! RAM uncached). Only MSRs that KVM lists as saveable are written, so the
//! same code runs on Intel, AMD and nested KVM; the one exception is
//! MTRRdefType, which KVM emulates whenever the guest CPUID has MTRR but
//! leaves out of its index list (userspace is expected to know the MTRRs).

use kvm_bindings::kvm_msr_entry;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITE_BACK: u64 = 0x6;

/// All boot MSRs with their values, whether or not KVM supports them.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// The boot MSRs that appear in KVM's MSR index list `supported`, plus
/// MTRRdefType when the guest has MTRRs (`has_mtrr`, CPUID leaf 1 EDX[12]).
pub fn supported_boot_msrs(supported: &[u32], has_mtrr: bool) -> Vec<kvm_msr_entry> {
    boot_msrs()
        .into_iter()
        .filter(|entry| {
            supported.contains(&entry.index) || (has_mtrr && entry.index == MSR_MTRR_DEF_TYPE)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtrr_default_type_is_enabled_write_back() {
        let mtrr = boot_msrs()
            .into_iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
        let misc = boot_msrs()
            .into_iter()
            .find(|e| e.index == MSR_IA32_MISC_ENABLE)
            .unwrap();
        assert_eq!(misc.data, 1);
    }

    #[test]
    fn unsupported_msrs_are_left_out() {
        let supported = [MSR_IA32_TSC, MSR_LSTAR, 0x1234];
        let indices: Vec<u32> = supported_boot_msrs(&supported, false)
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(indices, vec![MSR_LSTAR, MSR_IA32_TSC]);
    }

    #[test]
    fn mtrr_default_type_follows_the_cpuid_mtrr_bit() {
        let supported = [MSR_IA32_TSC];
        let indices: Vec<u32> = supported_boot_msrs(&supported, true)
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(indices, vec![MSR_IA32_TSC, MSR_MTRR_DEF_TYPE]);
    }
}
