//! Emulated devices. Each device owns its state and its event handling and
//! reaches the VM only through [`VmInterface`], so that it can be unit
//! tested without KVM.

pub mod bus;
pub mod firmware;
pub mod pci;
pub mod power;
pub mod rate_limit;
pub mod serial;
pub mod virtio;

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// What a device needs from the VM: delivering message-signalled
/// interrupts and turning guest writes to a doorbell address into eventfd
/// wake-ups (KVM ioeventfd), so that I/O threads, not vCPUs, do the work.
/// Implemented over KVM by `kvm::vm::Vm` and by test doubles.
pub trait VmInterface: Send + Sync {
    /// Inject the MSI `data` at `address` (an x86 MSI address/data pair).
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<()>;
    /// Signal `event` whenever the guest writes (any width, any value) to
    /// guest physical address `address`.
    fn register_mmio_doorbell(&self, event: &EventFd, address: u64) -> io::Result<()>;
    /// Undo [`VmInterface::register_mmio_doorbell`] (e.g. a BAR moved).
    fn unregister_mmio_doorbell(&self, event: &EventFd, address: u64) -> io::Result<()>;
}
