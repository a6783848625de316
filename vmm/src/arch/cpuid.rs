//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! KVM's supported set describes features, not this VM's shape: the APIC
//! IDs, the core count and the cache sharing must be filled in per vCPU or
//! the guest mis-counts its CPUs. The topology presented is one package with
//! `num_cpus` cores of one thread each, APIC ID = vCPU index, on Intel
//! (leaves 4, 0xB, 0x1F) and AMD (leaves 0x8000_0008, 0x8000_001D,
//! 0x8000_001E) alike; the KVM paravirtual leaves are kept as KVM gives them.
//!
//! The guest gets no hardware virtualization (VMX, SVM): a desktop OS has
//! no use for it, and nested virtualization would put KVM's nested VMX/SVM
//! emulation, a part with a record of guest-to-host escapes, within the
//! guest's reach.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use thiserror::Error;

use super::layout::DEFAULT_PHYSICAL_ADDRESS_BITS;

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMETERS: u32 = 4;
const LEAF_PERFORMANCE_MONITORING: u32 = 0xa;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SVM: u32 = 0x8000_000a;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXTENDED_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDENTIFIERS: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_PROCESSOR_TOPOLOGY: u32 = 0x8000_001e;

const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const AMD_FEATURES_ECX_SVM: u32 = 1 << 2;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;
const CACHE_LEVEL_L3: u32 = 3;

/// Why the vCPU's CPUID could not be built.
#[derive(Debug, Error)]
pub enum CpuidError {
    #[error("vCPU index {index} is out of range for {num_cpus} vCPUs")]
    InvalidIndex { index: u8, num_cpus: u8 },
    #[error("the CPUID table has more entries than KVM accepts ({0:?}); this is a securevm bug, please report it")]
    TooManyEntries(vmm_sys_util::fam::Error),
}

/// The CPU vendor, which decides which topology leaves the guest reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Reads the vendor string of leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf) = entries.iter().find(|e| e.function == LEAF_VENDOR) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
    name[8..12].copy_from_slice(&leaf.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// The physical address width the guest's CPUs report (leaf 0x8000_0008
/// EAX[7:0], which the vCPUs get unchanged from KVM), or the architectural
/// default when KVM offers no such leaf.
pub fn physical_address_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    entries
        .iter()
        .find(|e| e.function == LEAF_AMD_SIZE_IDENTIFIERS)
        .map_or(DEFAULT_PHYSICAL_ADDRESS_BITS, |leaf| {
            leaf.eax.to_le_bytes()[0]
        })
}

/// Number of APIC ID bits that hold the core number.
fn core_id_bits(num_cpus: u8) -> u32 {
    u32::from(num_cpus.max(1))
        .next_power_of_two()
        .trailing_zeros()
}

/// The CPUID entries for vCPU `index` of `num_cpus`, from KVM's supported
/// set. `tsc_deadline` says whether KVM emulates the TSC-deadline timer.
pub fn vcpu_cpuid_entries(
    supported: &[kvm_cpuid_entry2],
    index: u8,
    num_cpus: u8,
    tsc_deadline: bool,
) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    if index >= num_cpus {
        return Err(CpuidError::InvalidIndex { index, num_cpus });
    }
    let apic_id = u32::from(index);
    let core_bits = core_id_bits(num_cpus);
    let max_core_id = (1u32 << core_bits) - 1;
    let vendor = vendor(supported);
    let has_v2_topology = supported
        .iter()
        .any(|e| e.function == LEAF_V2_EXTENDED_TOPOLOGY);
    let has_topology = supported
        .iter()
        .any(|e| e.function == LEAF_EXTENDED_TOPOLOGY);

    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| {
            e.function != LEAF_EXTENDED_TOPOLOGY
                && e.function != LEAF_V2_EXTENDED_TOPOLOGY
                && e.function != LEAF_AMD_SVM
        })
        .copied()
        .collect();
    for entry in &mut entries {
        match entry.function {
            LEAF_FEATURES => {
                let logical_count = (max_core_id + 1).min(0xff);
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (logical_count << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                entry.ecx &= !LEAF1_ECX_VMX;
                if tsc_deadline {
                    entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if num_cpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMETERS if entry.eax & 0x1f != 0 => {
                let sharing = if (entry.eax >> 5) & 0x7 == CACHE_LEVEL_L3 {
                    max_core_id
                } else {
                    0
                };
                entry.eax =
                    (entry.eax & 0x0000_3fff) | ((max_core_id & 0x3f) << 26) | (sharing << 14);
            }
            // No guest PMU: counters are slow and unreliable under nested
            // virtualization and are a cross-VM side channel.
            LEAF_PERFORMANCE_MONITORING => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_AMD_FEATURES => entry.ecx &= !AMD_FEATURES_ECX_SVM,
            LEAF_AMD_SIZE_IDENTIFIERS if vendor == Vendor::Amd => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | u32::from(num_cpus - 1);
            }
            LEAF_AMD_CACHE_TOPOLOGY if entry.eax & 0x1f != 0 => {
                let sharing = if (entry.eax >> 5) & 0x7 == CACHE_LEVEL_L3 {
                    max_core_id
                } else {
                    0
                };
                entry.eax = (entry.eax & !0x03ff_c000) | (sharing << 14);
            }
            LEAF_AMD_PROCESSOR_TOPOLOGY => {
                entry.eax = apic_id;
                // Core ID in [7:0]; threads per core minus one in [15:8] = 0.
                entry.ebx = (entry.ebx & !0xffff) | apic_id;
                // Node 0, one node per package.
                entry.ecx = 0;
            }
            _ => {}
        }
    }
    if has_topology {
        entries.extend(topology_leaf(
            LEAF_EXTENDED_TOPOLOGY,
            apic_id,
            core_bits,
            num_cpus,
        ));
    }
    if has_v2_topology {
        entries.extend(topology_leaf(
            LEAF_V2_EXTENDED_TOPOLOGY,
            apic_id,
            core_bits,
            num_cpus,
        ));
    }
    Ok(entries)
}

/// Subleaves of leaf 0xB or 0x1F: an SMT level of one thread, a core level
/// of `num_cpus` cores, and the terminating invalid level.
fn topology_leaf(
    function: u32,
    apic_id: u32,
    core_bits: u32,
    num_cpus: u8,
) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, count: u32, level: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        subleaf(0, 0, 1, TOPOLOGY_LEVEL_SMT),
        subleaf(1, core_bits, u32::from(num_cpus), TOPOLOGY_LEVEL_CORE),
        subleaf(2, 0, 0, 0),
    ]
}

/// The CPUID for vCPU `index` of `num_cpus`, ready for `set_cpuid2`.
pub fn vcpu_cpuid(
    supported: &CpuId,
    index: u8,
    num_cpus: u8,
    tsc_deadline: bool,
) -> Result<CpuId, CpuidError> {
    let entries = vcpu_cpuid_entries(supported.as_slice(), index, num_cpus, tsc_deadline)?;
    CpuId::from_entries(&entries).map_err(CpuidError::TooManyEntries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        leaf(0, 0, [0x1f, word(0), word(8), word(4)])
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn physical_address_bits_come_from_leaf_0x80000008_or_default_to_36() {
        let sizes = leaf(LEAF_AMD_SIZE_IDENTIFIERS, 0, [0x3027, 0, 0, 0]);
        assert_eq!(
            physical_address_bits(&[vendor_leaf(b"GenuineIntel"), sizes]),
            0x27
        );
        assert_eq!(physical_address_bits(&[vendor_leaf(b"GenuineIntel")]), 36);
        assert_eq!(physical_address_bits(&[]), 36);
        // What the ACPI tables are built for is what every vCPU reports.
        let amd = amd_supported();
        assert_eq!(physical_address_bits(&amd), 0x30);
        for index in 0..2 {
            let entries = vcpu_cpuid_entries(&amd, index, 2, true).unwrap();
            assert_eq!(physical_address_bits(&entries), 0x30);
        }
    }

    /// Roughly what KVM reports on an Intel host.
    fn intel_supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"GenuineIntel"),
            leaf(1, 0, [0x000906ea, 0x0010_0800, 0x7ffa_3223, 0x178b_fbff]),
            // L1 data cache (type 1, level 1) and unified L3 (type 3, level 3),
            // as the host describes them: 8 cores, 16 threads sharing L3.
            leaf(4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            leaf(4, 1, [0x1c03_c163, 0x03c0_003f, 0x3fff, 6]),
            leaf(4, 2, [0, 0, 0, 0]),
            leaf(0xa, 0, [0x0760_3f04, 0, 0, 0x603]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 16, 0x201, 7]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
        ]
    }

    /// Roughly what KVM reports on an AMD EPYC host (no leaf 0xB here).
    fn amd_supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"AuthenticAMD"),
            leaf(1, 0, [0x00830f10, 0x0008_0800, 0xfef8_3203, 0x178b_fbff]),
            leaf(0x8000_0001, 0, [0x00830f10, 0, 0x0075_f3ff, 0x2fd3_fbff]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x0000_700f, 0]),
            leaf(0x8000_000a, 0, [1, 0x8000, 0, 0x0001_b6ff]),
            leaf(0x8000_001d, 0, [0x0000_4121, 0x01c0_003f, 0x3f, 0]),
            leaf(0x8000_001d, 3, [0x0003_c163, 0x03c0_003f, 0x3fff, 1]),
            leaf(0x8000_001e, 0, [5, 0x0000_0105, 0x0000_0003, 0]),
        ]
    }

    #[test]
    fn detects_vendor() {
        assert_eq!(vendor(&intel_supported()), Vendor::Intel);
        assert_eq!(vendor(&amd_supported()), Vendor::Amd);
        assert_eq!(vendor(&[vendor_leaf(b"VIA VIA VIA ")]), Vendor::Other);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let entries = vcpu_cpuid_entries(&intel_supported(), 2, 4, true).unwrap();
        let features = find(&entries, 1, 0);
        assert_eq!(features.ebx >> 24, 2);
        assert_eq!((features.ebx >> 16) & 0xff, 4);
        assert_eq!(features.ebx & 0xffff, 0x0800, "CLFLUSH size must be kept");
        assert_ne!(features.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(features.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(features.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn the_guest_gets_no_hardware_virtualization() {
        let mut intel = intel_supported();
        intel[1].ecx |= LEAF1_ECX_VMX;
        let entries = vcpu_cpuid_entries(&intel, 0, 2, true).unwrap();
        assert_eq!(find(&entries, 1, 0).ecx & LEAF1_ECX_VMX, 0);

        let amd = amd_supported();
        assert_ne!(find(&amd, 0x8000_0001, 0).ecx & AMD_FEATURES_ECX_SVM, 0);
        let entries = vcpu_cpuid_entries(&amd, 1, 2, true).unwrap();
        let extended = find(&entries, 0x8000_0001, 0);
        assert_eq!(extended.ecx & AMD_FEATURES_ECX_SVM, 0);
        assert_eq!(
            extended.ecx,
            0x0075_f3ff & !AMD_FEATURES_ECX_SVM,
            "other features kept"
        );
        assert!(entries.iter().all(|e| e.function != LEAF_AMD_SVM));
    }

    #[test]
    fn tsc_deadline_only_when_kvm_has_it() {
        let mut supported = intel_supported();
        supported[1].ecx |= LEAF1_ECX_TSC_DEADLINE;
        let entries = vcpu_cpuid_entries(&supported, 0, 1, false).unwrap();
        let features = find(&entries, 1, 0);
        assert_eq!(features.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(features.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn intel_cache_leaf_counts_our_cores() {
        let entries = vcpu_cpuid_entries(&intel_supported(), 1, 3, true).unwrap();
        let l1 = find(&entries, 4, 0);
        let l3 = find(&entries, 4, 1);
        // Three vCPUs need two APIC ID bits: four addressable cores.
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (3, 0));
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (3, 3));
        assert_eq!(l3.eax & 0x3fff, 0x0163, "cache type and level must be kept");
        assert_eq!(find(&entries, 4, 2).eax, 0);
    }

    #[test]
    fn extended_topology_is_one_thread_per_core() {
        let entries = vcpu_cpuid_entries(&intel_supported(), 3, 4, true).unwrap();
        let smt = find(&entries, 0xb, 0);
        let core = find(&entries, 0xb, 1);
        let end = find(&entries, 0xb, 2);
        assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 3]);
        assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [2, 4, 0x201, 3]);
        assert_eq!([end.eax, end.ebx, end.ecx & 0xff00, end.edx], [0, 0, 0, 3]);
        assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        assert_eq!(entries.iter().filter(|e| e.function == 0xb).count(), 3);
        assert!(!entries.iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn pmu_is_hidden_and_paravirt_leaves_kept() {
        let entries = vcpu_cpuid_entries(&intel_supported(), 0, 2, true).unwrap();
        let pmu = find(&entries, 0xa, 0);
        assert_eq!([pmu.eax, pmu.ebx, pmu.ecx, pmu.edx], [0; 4]);
        let kvm = find(&entries, 0x4000_0000, 0);
        assert_eq!(
            [kvm.ebx, kvm.ecx, kvm.edx],
            [0x4b4d_564b, 0x564b_4d56, 0x4d]
        );
    }

    #[test]
    fn amd_topology_leaves() {
        let entries = vcpu_cpuid_entries(&amd_supported(), 2, 4, true).unwrap();
        let sizes = find(&entries, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 3);
        assert_eq!((sizes.ecx >> 12) & 0xf, 2);
        assert_eq!(sizes.ecx & 0xffff_0000, 0, "unrelated bits must stay");
        let l1 = find(&entries, 0x8000_001d, 0);
        let l3 = find(&entries, 0x8000_001d, 3);
        assert_eq!(((l1.eax >> 14) & 0xfff, (l3.eax >> 14) & 0xfff), (0, 3));
        let topology = find(&entries, 0x8000_001e, 0);
        assert_eq!(topology.eax, 2);
        assert_eq!(topology.ebx & 0xffff, 2, "core 2, one thread per core");
        assert_eq!(topology.ecx, 0);
        assert!(!entries.iter().any(|e| e.function == 0xb));
        assert_eq!(find(&entries, 1, 0).ebx >> 24, 2);
    }

    #[test]
    fn rejects_index_outside_the_vm() {
        let err = vcpu_cpuid_entries(&intel_supported(), 4, 4, true).unwrap_err();
        assert!(matches!(
            err,
            CpuidError::InvalidIndex {
                index: 4,
                num_cpus: 4
            }
        ));
    }

    #[test]
    fn builds_a_kvm_cpuid_table() {
        let supported = CpuId::from_entries(&amd_supported()).unwrap();
        let cpuid = vcpu_cpuid(&supported, 0, 1, false).unwrap();
        // Every supported leaf but the SVM one.
        assert_eq!(cpuid.as_slice().len(), amd_supported().len() - 1);
    }
}
