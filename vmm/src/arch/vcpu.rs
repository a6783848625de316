//! Per-vCPU architectural setup, the one call the boot sequence makes for
//! each vCPU before it runs: CPUID, boot MSRs and LAPIC wiring for every
//! vCPU; registers, FPU and segments for the boot vCPU only. Application
//! processors keep KVM's reset state and wait for the guest's INIT/SIPI.

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use thiserror::Error;

use super::boot_params::BootEntry;
use super::cpuid::{vcpu_cpuid, CpuidError};
use super::interrupts::set_lint_delivery_modes;
use super::msr::supported_boot_msrs;
use super::regs::{boot_fpu, boot_mode, boot_regs, set_boot_sregs};

/// Why a vCPU could not be configured. KVM failures name the step; all are
/// host-side problems the user can only report or work around.
#[derive(Debug, Error)]
pub enum ArchError {
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    #[error("KVM refused the {step} of vCPU {index}: {source}; check that the host kernel's KVM supports this CPU model")]
    Kvm {
        step: &'static str,
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {accepted} of {requested} boot MSRs of vCPU {index} (MSR {rejected:#x} refused)")]
    MsrRejected {
        index: u8,
        accepted: usize,
        requested: usize,
        rejected: u32,
    },
    #[error(
        "too many boot MSRs for one KVM call: {0:?}; this is a securevm bug, please report it"
    )]
    TooManyMsrs(vmm_sys_util::fam::Error),
}

/// Whether CPUID leaf 1 announces MTRRs (EDX bit 12).
fn has_mtrr(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|entry| entry.function == 1 && entry.edx & (1 << 12) != 0)
}

/// The XCR0 value that enables every state component CPUID offers, when
/// the CPU has XSAVE at all.
fn supported_xcr0(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Option<u64> {
    const LEAF1_ECX_XSAVE: u32 = 1 << 26;
    const X87_STATE: u64 = 1;
    let leaf1 = entries.iter().find(|e| e.function == 1)?;
    if leaf1.ecx & LEAF1_ECX_XSAVE == 0 {
        return None;
    }
    let xsave = entries.iter().find(|e| e.function == 0xd && e.index == 0)?;
    Some((u64::from(xsave.edx) << 32 | u64::from(xsave.eax)) | X87_STATE)
}

/// Configures vCPU `index` of `num_cpus`. `supported_cpuid` is
/// `kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)`, fetched once per VM.
/// `boot` is `Some` only for vCPU 0. The VM's in-kernel irqchip must exist.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    kvm: &Kvm,
    supported_cpuid: &CpuId,
    index: u8,
    num_cpus: u8,
    boot: Option<&BootEntry>,
) -> Result<(), ArchError> {
    let kvm_error = |step| {
        move |source| ArchError::Kvm {
            step,
            index,
            source,
        }
    };

    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let cpuid = vcpu_cpuid(supported_cpuid, index, num_cpus, tsc_deadline)?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_error("CPUID"))?;
    // KVM fills CPUID 0xD.0 EBX (the XSAVE area size for the enabled
    // state) from XCR0 when CPUID is set, and does not grow it when the
    // guest enables AVX; a stock kernel then warns of an "XSAVE consistency
    // problem". Enabling every supported component first and setting
    // CPUID again gives the size the kernel will compute.
    if let Some(xcr0) = supported_xcr0(cpuid.as_slice()) {
        if kvm.check_extension(Cap::Xcrs) {
            let mut xcrs = vcpu.get_xcrs().map_err(kvm_error("XCR read"))?;
            xcrs.nr_xcrs = 1;
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = xcr0;
            vcpu.set_xcrs(&xcrs).map_err(kvm_error("XCR0 setup"))?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_error("CPUID"))?;
        }
    }

    let msr_list = kvm.get_msr_index_list().map_err(kvm_error("MSR list"))?;
    let entries = supported_boot_msrs(msr_list.as_slice(), has_mtrr(&cpuid));
    let msrs = Msrs::from_entries(&entries).map_err(ArchError::TooManyMsrs)?;
    let accepted = vcpu.set_msrs(&msrs).map_err(kvm_error("boot MSRs"))?;
    if accepted != entries.len() {
        return Err(ArchError::MsrRejected {
            index,
            accepted,
            requested: entries.len(),
            rejected: entries.get(accepted).map_or(0, |e| e.index),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(kvm_error("LAPIC read"))?;
    set_lint_delivery_modes(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_error("LAPIC setup"))?;

    if let Some(entry) = boot {
        let mut sregs = vcpu
            .get_sregs()
            .map_err(kvm_error("special registers read"))?;
        set_boot_sregs(&mut sregs, boot_mode(entry.protocol));
        vcpu.set_sregs(&sregs)
            .map_err(kvm_error("special registers setup"))?;
        vcpu.set_regs(&boot_regs(entry))
            .map_err(kvm_error("registers setup"))?;
        vcpu.set_fpu(&boot_fpu()).map_err(kvm_error("FPU setup"))?;
    }
    Ok(())
}
