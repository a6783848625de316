//! The KVM side of the machine: the VM (memory slots, in-kernel interrupt
//! controllers, MSI and ioeventfd plumbing) and the vCPU threads that run
//! guest code and dispatch its port and MMIO exits to the device buses.

pub mod vcpu;
pub mod vm;
