//! The interrupt side of a virtio device, shared by the transport (which
//! the guest programs) and the device's I/O thread (which raises
//! interrupts): the ISR status byte, the configuration-change vector, the
//! NEEDS_RESET condition, and the MSI-X table they are delivered through.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::msix::MsixTable;
use super::MSI_NO_VECTOR;
use crate::sync::Unpoisoned;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

pub struct VirtioInterrupt {
    msix: Arc<Mutex<MsixTable>>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    needs_reset: AtomicBool,
}

impl VirtioInterrupt {
    pub fn new(msix: Arc<Mutex<MsixTable>>) -> Self {
        Self {
            msix,
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(MSI_NO_VECTOR),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// A queue has new used buffers.
    pub fn signal_queue(&self, vector: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        self.signal_vector(vector);
    }

    /// Device configuration (or status) changed.
    pub fn signal_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        self.signal_vector(self.config_vector.load(Ordering::SeqCst));
    }

    /// The device hit a driver error it cannot recover from on its own
    /// (virtio 1.x, 2.1.2): report NEEDS_RESET and tell the driver.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Read-and-clear of the ISR status register.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    pub fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(vector, Ordering::SeqCst);
    }

    /// Device reset: forget ISR, vectors and NEEDS_RESET.
    pub fn reset(&self) {
        self.isr.store(0, Ordering::SeqCst);
        self.config_vector.store(MSI_NO_VECTOR, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    fn signal_vector(&self, vector: u16) {
        if vector != MSI_NO_VECTOR {
            self.msix.lock().unpoisoned().signal(vector);
        }
    }
}
