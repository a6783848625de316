//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! KVM's supported set describes features, not this VM's shape: the APIC
//! IDs, the core count and the cache sharing must be filled in per vCPU or
//! the guest mis-counts its CPUs. The topology presented is one package with
//! `num_cpus` cores of one thread each, APIC ID = vCPU index, on Intel
//! (leaves 4, 0xB, 0x1F) and AMD (leaves 0x8000_0008, 0x8000_001D,
//! 0x8000_001E) alike; the KVM paravirtual leaves are kept as KVM gives them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use thiserror::Error;

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMETERS: u32 = 4;
const LEAF_PERFORMANCE_MONITORING: u32 = 0xa;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXTENDED_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDENTIFIERS: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_PROCESSOR_TOPOLOGY: u32 = 0x8000_001e;

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
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
        .filter(|e| e.function != LEAF_EXTENDED_TOPOLOGY && e.function != LEAF_V2_EXTENDED_TOPOLOGY)
        .copied()
        .collect();
    for entry in &mut entries {
        match entry.function {
            LEAF_FEATURES => {
                let logical_count = (max_core_id + 1).min(0xff);
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (logical_count << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
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
