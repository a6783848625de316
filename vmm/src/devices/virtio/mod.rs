//! Virtio devices behind the PCI transport (virtio 1.x, "modern" only).
//! A device model implements [`VirtioDevice`]; the transport
//! ([`VirtioPciDevice`]) owns feature negotiation, the status state
//! machine, queue configuration and MSI-X, and the device's I/O thread;
//! at DRIVER_OK the device turns the ready queues into a [`QueueWorker`]
//! that runs on that thread, so that vCPUs never wait for a disk.

pub mod block;
pub mod chain;
pub mod console;
pub mod gpu;
pub mod input;
mod interrupt;
mod io_gate;
mod io_thread;
mod msix;
pub mod net;
mod transport;

#[cfg(test)]
mod test_driver;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::confined::Confinement;

pub use interrupt::VirtioInterrupt;
pub use io_gate::IoGate;
pub use io_thread::{EventSource, IoThread, Progress, QueueWorker};
pub use msix::MsixTable;
pub use transport::VirtioPciDevice;

/// Device status bits (virtio 1.x, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bits common to all devices.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

/// "No MSI-X vector" in the vector registers.
pub const MSI_NO_VECTOR: u16 = 0xffff;

/// Largest queue any of our devices offers.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// A queue the driver enabled, ready for the device's I/O thread.
pub struct ActiveQueue {
    /// Queue number as the driver knows it.
    pub index: u16,
    pub queue: Queue,
    pub msix_vector: u16,
}

/// Everything a device needs to start serving its queues at DRIVER_OK.
pub struct Activation {
    pub mem: Arc<GuestMemoryMmap>,
    /// Features both offered and accepted.
    pub features: u64,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<VirtioInterrupt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver enabled no usable queue")]
    NoQueue,
    #[error("queue {index} is misconfigured by the driver: {reason}")]
    BadQueue { index: u16, reason: String },
    #[error("cannot set up the device queues: {0}")]
    Io(#[source] std::io::Error),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 for block).
    fn device_type(&self) -> u16;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn features(&self) -> u64;
    /// Device-specific configuration space access.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Name of the device's I/O thread (at most 15 bytes to show in full).
    fn io_thread_name(&self) -> String;
    /// What the I/O thread confines itself to (its seccomp filter).
    fn io_thread_confinement(&self) -> Confinement;
    /// Build the worker that serves the queues on the I/O thread.
    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueWorker>, ActivateError>;
    /// The driver reset the device; the transport already took the
    /// worker away from the I/O thread.
    fn reset(&mut self);
}

/// Whether the driver wants an interrupt for the buffers just used: with
/// EVENT_IDX its `used_event`, otherwise the NO_INTERRUPT flag.
pub(crate) fn driver_wants_interrupt(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, virtio_queue::Error> {
    use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem);
    }
    let flags: u16 = mem
        .load(
            GuestAddress(queue.avail_ring()),
            std::sync::atomic::Ordering::Acquire,
        )
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0)
}
