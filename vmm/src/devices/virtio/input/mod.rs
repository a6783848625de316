//! virtio-input (virtio 1.2, 5.8): a keyboard and an absolute pointer (a
//! "tablet") for the desktop, driven by Linux's `virtio_input`. The
//! display thread queues evdev events in an [`InputEvents`] handle; the
//! device's I/O thread moves them into the buffers the guest posts on the
//! event queue, one 8-byte `virtio_input_event` per buffer. LED updates
//! the guest sends on the status queue are taken and ignored.
//!
//! The tablet reports ABS_X/ABS_Y in screen pixels, BTN_LEFT/MIDDLE/RIGHT
//! and REL_WHEEL, with no input property: udev then tags it a mouse with
//! absolute axes, which Xorg's libinput drives as an absolute pointer
//! (INPUT_PROP_DIRECT would make it a touchscreen).

mod config;
mod events;
mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use events::{InputEvent, InputEvents, QUEUE_CAPACITY};

use super::{ActivateError, Activation, QueueWorker, VirtioDevice, F_VERSION_1, QUEUE_MAX_SIZE};
use crate::confined::Confinement;
use config::InputConfig;
use worker::InputWorker;

const DEVICE_TYPE_INPUT: u16 = 18;

static NEXT_THREAD_INDEX: AtomicUsize = AtomicUsize::new(0);

pub struct VirtioInput {
    config: InputConfig,
    events: InputEvents,
    thread_name: String,
    confinement: Confinement,
}

impl VirtioInput {
    /// A keyboard with every key code 1..=248 and autorepeat (the guest
    /// repeats held keys itself).
    pub fn keyboard(events: InputEvents) -> Self {
        Self::new(InputConfig::keyboard(), events)
    }

    /// An absolute pointer over a `width` x `height` pixel screen: the
    /// axes run 0..=width-1 and 0..=height-1, and positions beyond are
    /// clamped to them.
    pub fn tablet(events: InputEvents, width: u32, height: u32) -> Self {
        let (x_max, y_max) = (width.saturating_sub(1), height.saturating_sub(1));
        events.set_pointer_max(x_max, y_max);
        Self::new(InputConfig::tablet(x_max, y_max), events)
    }

    fn new(config: InputConfig, events: InputEvents) -> Self {
        let index = NEXT_THREAD_INDEX.fetch_add(1, Ordering::Relaxed);
        Self {
            config,
            events,
            thread_name: format!("virtio-input{index}"),
            confinement: Confinement::Unfiltered,
        }
    }

    /// Confine this device's I/O thread (its seccomp filter). Set it
    /// before adding the device to the PCI root, which starts the thread.
    pub fn set_confinement(&mut self, confinement: Confinement) {
        self.confinement = confinement;
    }

    /// Name of the I/O thread this device runs ("virtio-inputN").
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }
}

impl VirtioDevice for VirtioInput {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        // The event queue and the status queue.
        &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn io_thread_name(&self) -> String {
        self.thread_name.clone()
    }

    fn io_thread_confinement(&self) -> Confinement {
        self.confinement
    }

    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueWorker>, ActivateError> {
        Ok(Box::new(InputWorker::new(activation, self.events.clone())?))
    }

    fn reset(&mut self) {
        self.config.reset();
    }
}

#[cfg(test)]
mod tests;
