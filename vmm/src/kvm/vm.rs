//! One KVM VM: opening the KVM device with errors a user can act on,
//! registering guest memory, creating the in-kernel PIC/IOAPIC/LAPIC and
//! PIT, and the [`VmInterface`] that devices use for MSIs and doorbells.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_msi, kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::KVM_TSS_START;
use crate::devices::VmInterface;
use crate::narrow::{const_narrow, low_u32};

/// Where Intel VMX needs three pages for the real-mode TSS; the layout
/// keeps it clear of RAM, devices and both PCI windows.
const KVM_TSS_ADDRESS: usize = const_narrow!(KVM_TSS_START => usize);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path} does not exist: this host has no usable KVM; load kvm_intel or kvm_amd, enable virtualization in the firmware, or run inside the nested harness (scripts/nested)")]
    KvmMissing { path: PathBuf },
    #[error("permission denied opening {path}: run securevm as root or add your user to the `kvm` group")]
    KvmDenied { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    KvmOpen { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a KVM device (KVM_GET_API_VERSION failed or returned {version}, need 12)"
    )]
    NotKvm { path: PathBuf, version: i32 },
    #[error("KVM lacks a capability securevm needs: {0}")]
    MissingCapability(&'static str),
    #[error("creating the KVM VM failed: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("{requested} vCPUs requested but KVM on this host allows at most {max}; lower --cpus")]
    TooManyVcpus { requested: usize, max: usize },
    #[error("registering guest memory with KVM failed: {0}")]
    Memory(#[source] kvm_ioctls::Error),
    #[error("creating the in-kernel interrupt controllers failed: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("creating vCPU {index} failed: {source}")]
    CreateVcpu {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("routing interrupt {gsi} failed: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
}

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens `kvm_device` (normally `/dev/kvm`) and creates an empty VM.
    pub fn new(kvm_device: &Path) -> Result<Vm, VmError> {
        let kvm = open_kvm(kvm_device)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::NotKvm {
                path: kvm_device.to_owned(),
                version,
            });
        }
        for (cap, name) in [
            (kvm_ioctls::Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (kvm_ioctls::Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (kvm_ioctls::Cap::Irqfd, "KVM_CAP_IRQFD"),
            (kvm_ioctls::Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
            (kvm_ioctls::Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        Ok(Vm { kvm, fd })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Refuses a vCPU count this host's KVM cannot run.
    pub fn check_vcpu_count(&self, requested: usize) -> Result<(), VmError> {
        let max = self.kvm.get_max_vcpus().min(usize::from(u8::MAX));
        if requested == 0 || requested > max {
            return Err(VmError::TooManyVcpus { requested, max });
        }
        Ok(())
    }

    /// Makes every region of `memory` guest RAM, one KVM slot per region.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(memory.iter()) {
            let host = memory
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Memory(kvm_ioctls::Error::new(libc::EFAULT)))?;
            let kvm_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `memory`, which the
            // caller keeps alive for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(kvm_region) }.map_err(VmError::Memory)?;
        }
        Ok(())
    }

    /// Creates the in-kernel PIC, IOAPIC, LAPICs and PIT. Must precede vCPUs.
    pub fn create_interrupt_controllers(&self) -> Result<(), VmError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::Irqchip)?;
        self.fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::Irqchip)
    }

    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VmError::CreateVcpu { index, source })
    }

    /// Routes `event` to the legacy interrupt line `gsi` (IOAPIC pin).
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }
}

fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| VmError::KvmOpen {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    Kvm::new_with_path(&c_path).map_err(|e| match e.errno() {
        libc::ENOENT => VmError::KvmMissing {
            path: path.to_owned(),
        },
        libc::EACCES | libc::EPERM => VmError::KvmDenied {
            path: path.to_owned(),
        },
        errno => VmError::KvmOpen {
            path: path.to_owned(),
            source: io::Error::from_raw_os_error(errno),
        },
    })
}

impl VmInterface for Vm {
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<()> {
        let msi = kvm_msi {
            address_lo: low_u32(address),
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn register_mmio_doorbell(&self, event: &EventFd, address: u64) -> io::Result<()> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(address), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister_mmio_doorbell(&self, event: &EventFd, address: u64) -> io::Result<()> {
        self.fd
            .unregister_ioevent(event, &IoEventAddress::Mmio(address), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_what_to_do() {
        let err = Vm::new(Path::new("/nonexistent/kvm")).err().unwrap();
        assert!(matches!(err, VmError::KvmMissing { .. }));
        assert!(err.to_string().contains("scripts/nested"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_kvm_is_refused() {
        let err = Vm::new(Path::new("/dev/null")).err().unwrap();
        assert!(matches!(err, VmError::NotKvm { .. }), "{err}");
    }
}
