//! virtio-console (virtio 1.2, 5.3) with one named port and no console:
//! the transport of the desktop's clipboard. The guest's `spice-vdagentd`
//! looks for a port named `com.redhat.spice.0`; the host end of that port
//! ([`PortEnd`]) goes to the display thread, which speaks the agent's
//! protocol (the `vdagent` crate) and applies the role's clipboard policy.
//!
//! The device offers VIRTIO_CONSOLE_F_MULTIPORT with one port, so that
//! the port can carry a name: queue 0 and 1 are the port's receive and
//! transmit queues, 2 and 3 the control queues. The control handshake:
//! the driver says DEVICE_READY, we announce the port (DEVICE_ADD); the
//! driver says PORT_READY, we send its name and say the host side is
//! open (PORT_OPEN), which the agent waits for; the driver's own
//! PORT_OPEN says whether a program in the guest has the port open. A
//! driver that does not take MULTIPORT gets no port: there is nothing
//! useful for a nameless console port to carry.

mod port;
mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    ActivateError, Activation, QueueWorker, VirtioDevice, F_INDIRECT_DESC, F_VERSION_1,
    QUEUE_MAX_SIZE,
};
use crate::confined::Confinement;

pub use port::{port_channel, PortDevice, PortEnd, PORT_BUFFER_LIMIT};

const DEVICE_TYPE_CONSOLE: u16 = 3;
/// VIRTIO_CONSOLE_F_MULTIPORT.
pub const F_MULTIPORT: u64 = 1 << 1;
/// The name spice-vdagentd looks for.
pub const PORT_NAME: &str = "com.redhat.spice.0";
/// `struct virtio_console_config`: cols, rows (no console size: no
/// VIRTIO_CONSOLE_F_SIZE), max_nr_ports, emerg_wr.
const CONFIG_LEN: usize = 12;
const MAX_NR_PORTS_OFFSET: usize = 4;

/// Queue numbers with MULTIPORT and one port.
const PORT_RX: u16 = 0;
const PORT_TX: u16 = 1;
const CONTROL_RX: u16 = 2;
const CONTROL_TX: u16 = 3;
const QUEUE_SIZES: [u16; 4] = [QUEUE_MAX_SIZE; 4];

static NEXT_THREAD_INDEX: AtomicUsize = AtomicUsize::new(0);

pub struct VirtioConsole {
    port: PortDevice,
    config: [u8; CONFIG_LEN],
    thread_name: String,
    confinement: Confinement,
}

impl VirtioConsole {
    /// A console whose one port is `port` (see [`port_channel`]).
    pub fn new(port: PortDevice) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[MAX_NR_PORTS_OFFSET..][..4].copy_from_slice(&1u32.to_le_bytes());
        let index = NEXT_THREAD_INDEX.fetch_add(1, Ordering::Relaxed);
        Self {
            port,
            config,
            thread_name: format!("virtio-con{index}"),
            confinement: Confinement::Unfiltered,
        }
    }

    /// Confine this device's I/O thread (its seccomp filter). Set it
    /// before adding the device to the PCI root, which starts the thread.
    pub fn set_confinement(&mut self, confinement: Confinement) {
        self.confinement = confinement;
    }

    /// Name of the I/O thread this device runs ("virtio-conN").
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_INDIRECT_DESC | F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, which is not offered.
        log::debug!("virtio-console: ignored config write at {offset:#x}");
    }

    fn io_thread_name(&self) -> String {
        self.thread_name.clone()
    }

    fn io_thread_confinement(&self) -> Confinement {
        self.confinement
    }

    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueWorker>, ActivateError> {
        if activation.features & F_MULTIPORT == 0 {
            return Err(ActivateError::BadQueue {
                index: CONTROL_RX,
                reason: "virtio-console offers its port only with VIRTIO_CONSOLE_F_MULTIPORT"
                    .into(),
            });
        }
        let mut queues = [None, None, None, None];
        for queue in activation.queues {
            if let Some(slot) = queues.get_mut(usize::from(queue.index)) {
                *slot = Some(queue);
            }
        }
        let [Some(port_rx), Some(port_tx), Some(control_rx), Some(control_tx)] = queues else {
            return Err(ActivateError::BadQueue {
                index: PORT_RX,
                reason: "virtio-console needs its four queues enabled".into(),
            });
        };
        Ok(Box::new(worker::ConsoleWorker::new(
            activation.mem,
            activation.interrupt,
            worker::Queues {
                port_rx,
                port_tx,
                control_rx,
                control_tx,
            },
            self.port.clone_for_worker(),
        )))
    }

    fn reset(&mut self) {
        // The port is gone with the driver's state: the program that had
        // it open no longer does.
        self.port.set_guest_open(false);
    }
}

#[cfg(test)]
mod tests;
