//! The console's queues on the device's I/O thread.
//!
//! Port transmit: each chain the guest queued is copied whole to the
//! host's end, if the host has room for it; otherwise it stays in the
//! ring until the host reads (back-pressure), and the host's read wakes
//! the worker. A chain larger than [`MAX_TX_CHAIN_BYTES`] (Linux writes
//! at most 32 KiB at a time) is returned unsent.
//!
//! Port receive: while a program in the guest has the port open, the
//! host's bytes fill the guest's receive buffers in order.
//!
//! Control: the driver's messages on the control transmit queue are read
//! (8 bytes each; short, unknown or for another port: ignored), and our
//! answers wait, at most [`MAX_PENDING_CONTROL`] of them, for the
//! driver's control receive buffers.
//!
//! Anything the guest gets wrong returns that chain unused; only a
//! corrupt ring stops the device (NEEDS_RESET). Every call serves at most
//! [`BATCH`] chains of one queue.

use std::collections::VecDeque;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::port::PortDevice;
use super::{CONTROL_RX, CONTROL_TX, PORT_NAME, PORT_RX, PORT_TX};
use crate::devices::virtio::chain::{ChainBytes, ChainDescriptor, CollectedChain, DescriptorTable};
use crate::devices::virtio::{
    ActiveQueue, EventSource, Progress, QueueWorker, VirtioInterrupt, QUEUE_MAX_SIZE,
};

/// Chains served per call, per queue.
const BATCH: usize = 64;
/// Largest transmit chain taken from the guest.
const MAX_TX_CHAIN_BYTES: usize = 64 << 10;
/// Most descriptors a chain may have.
const MAX_CHAIN_LEN: u16 = QUEUE_MAX_SIZE;
/// Control messages waiting for the driver's buffers; the driver only
/// causes them by its own messages, so more are its own loss.
const MAX_PENDING_CONTROL: usize = 16;
const PORT_WAKE_TOKEN: u32 = 0;

/// `struct virtio_console_control`: id (u32), event (u16), value (u16).
const CONTROL_LEN: usize = 8;
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;
const PORT_NAME_EVENT: u16 = 7;
/// The only port.
const PORT_ID: u32 = 0;

struct WorkerQueue {
    queue: Queue,
    msix_vector: u16,
}

impl From<ActiveQueue> for WorkerQueue {
    fn from(active: ActiveQueue) -> Self {
        Self {
            queue: active.queue,
            msix_vector: active.msix_vector,
        }
    }
}

/// The four queues, by role.
pub(super) struct Queues {
    pub(super) port_rx: ActiveQueue,
    pub(super) port_tx: ActiveQueue,
    pub(super) control_rx: ActiveQueue,
    pub(super) control_tx: ActiveQueue,
}

pub(super) struct ConsoleWorker {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<VirtioInterrupt>,
    port_rx: WorkerQueue,
    port_tx: WorkerQueue,
    control_rx: WorkerQueue,
    control_tx: WorkerQueue,
    port: PortDevice,
    control_out: VecDeque<Vec<u8>>,
    chain: CollectedChain,
    /// One transmit chain's bytes, or the next bytes for a receive chain.
    buffer: Vec<u8>,
    sources: [EventSource; 1],
    /// Set once a ring is found corrupt; the driver must reset.
    broken: bool,
}

/// One control message to the driver.
fn control_message(event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTROL_LEN + payload.len());
    message.extend_from_slice(&PORT_ID.to_le_bytes());
    message.extend_from_slice(&event.to_le_bytes());
    message.extend_from_slice(&value.to_le_bytes());
    message.extend_from_slice(payload);
    message
}

impl ConsoleWorker {
    pub(super) fn new(
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<VirtioInterrupt>,
        queues: Queues,
        port: PortDevice,
    ) -> Self {
        let sources = [EventSource {
            fd: port.wake_fd(),
            token: PORT_WAKE_TOKEN,
        }];
        Self {
            mem,
            interrupt,
            port_rx: queues.port_rx.into(),
            port_tx: queues.port_tx.into(),
            control_rx: queues.control_rx.into(),
            control_tx: queues.control_tx.into(),
            port,
            control_out: VecDeque::new(),
            // Allocated here, on the thread that activates the device.
            chain: CollectedChain::new(MAX_CHAIN_LEN),
            buffer: vec![0; MAX_TX_CHAIN_BYTES],
            sources,
            broken: false,
        }
    }

    fn fail(&mut self, error: virtio_queue::Error) {
        crate::rate_limited!(
            log::Level::Warn,
            "virtio-console: queues unusable until the driver resets the device: {error}"
        );
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// The guest's bytes to the host, while the host has room.
    fn transmit(&mut self) -> Result<Progress, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut progress = Progress::More;
        for _ in 0..BATCH {
            let Some(chain) = self.port_tx.queue.iter(mem.as_ref())?.next() else {
                progress = Progress::Done;
                break;
            };
            let head = chain.head_index();
            let table = DescriptorTable::of(&self.port_tx.queue);
            match self.chain.collect(&mem, table, head) {
                Ok(descriptors) => {
                    match gather(&mem, descriptors, &mut self.buffer) {
                        Ok(len) if len > self.port.room_to_host() => {
                            // Back-pressure: the host's read wakes us.
                            self.port_tx.queue.go_to_previous_position();
                            progress = Progress::Done;
                            break;
                        }
                        Ok(len) => self.port.push_to_host(&self.buffer[..len]),
                        Err(why) => log::debug!("virtio-console: transmit chain dropped: {why}"),
                    }
                }
                Err(why) => log::debug!("virtio-console: transmit chain dropped: {why}"),
            }
            self.port_tx.queue.add_used(mem.as_ref(), head, 0)?;
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_queue(self.port_tx.msix_vector);
        }
        Ok(progress)
    }

    /// The host's bytes into the guest's receive buffers.
    fn receive(&mut self) -> Result<Progress, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut progress = Progress::More;
        for _ in 0..BATCH {
            if !self.port.has_bytes_for_guest() {
                progress = Progress::Done;
                break;
            }
            let Some(chain) = self.port_rx.queue.iter(mem.as_ref())?.next() else {
                // The guest's next receive kick brings us back.
                progress = Progress::Done;
                break;
            };
            let head = chain.head_index();
            let table = DescriptorTable::of(&self.port_rx.queue);
            let written = match self.chain.collect(&mem, table, head) {
                Ok(descriptors) => fill(&mem, descriptors, &self.port, &mut self.buffer),
                Err(why) => {
                    log::debug!("virtio-console: receive chain returned unused: {why}");
                    0
                }
            };
            // At most the buffer's 64 KiB.
            let used_len = u32::try_from(written).unwrap_or(0);
            self.port_rx.queue.add_used(mem.as_ref(), head, used_len)?;
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_queue(self.port_rx.msix_vector);
        }
        Ok(progress)
    }

    /// The driver's control messages.
    fn read_control(&mut self) -> Result<Progress, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut progress = Progress::More;
        for _ in 0..BATCH {
            let Some(chain) = self.control_tx.queue.iter(mem.as_ref())?.next() else {
                progress = Progress::Done;
                break;
            };
            let head = chain.head_index();
            let table = DescriptorTable::of(&self.control_tx.queue);
            let mut message = [0u8; CONTROL_LEN];
            let read = match self.chain.collect(&mem, table, head) {
                Ok(descriptors) => ChainBytes::new(descriptors, false, CONTROL_LEN)
                    .read(&mem, &mut message)
                    .is_ok(),
                Err(_) => false,
            };
            if read {
                self.control(message);
            } else {
                log::debug!("virtio-console: short or unreadable control message ignored");
            }
            self.control_tx.queue.add_used(mem.as_ref(), head, 0)?;
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_queue(self.control_tx.msix_vector);
        }
        if !self.control_out.is_empty() {
            self.write_control()?;
        }
        Ok(progress)
    }

    fn control(&mut self, message: [u8; CONTROL_LEN]) {
        let id = u32::from_le_bytes([message[0], message[1], message[2], message[3]]);
        let event = u16::from_le_bytes([message[4], message[5]]);
        let value = u16::from_le_bytes([message[6], message[7]]);
        match (event, value) {
            // The port's name follows its announcement at once: Linux
            // handles both in one pass of its control queue, so the name is
            // in sysfs before udev reads the port's "add" event, whose rule
            // (spice-vdagent's: ACTION=="add" and the name's symlink)
            // starts the guest's agent. Answered only after PORT_READY, as
            // the spec has it, the name comes from this I/O thread after
            // udev may have looked already, and the agent never starts.
            (DEVICE_READY, 1) => {
                self.send_control(control_message(DEVICE_ADD, 1, &[]));
                self.announce_port();
            }
            // Linux keeps the first name it gets and takes a repeated open.
            (PORT_READY, 1) if id == PORT_ID => self.announce_port(),
            (PORT_OPEN, open) if id == PORT_ID => {
                self.port.set_guest_open(open != 0);
                // Bytes the host queued meanwhile are ours to deliver.
                self.port.wake_again();
            }
            _ => log::debug!(
                "virtio-console: ignored control message (port {id}, event {event}, value {value})"
            ),
        }
    }

    /// The port's name, and that the host side is open.
    fn announce_port(&mut self) {
        self.send_control(control_message(PORT_NAME_EVENT, 1, PORT_NAME.as_bytes()));
        self.send_control(control_message(PORT_OPEN, 1, &[]));
    }

    fn send_control(&mut self, message: Vec<u8>) {
        if self.control_out.len() < MAX_PENDING_CONTROL {
            self.control_out.push_back(message);
        } else {
            log::debug!("virtio-console: control answers pile up unread; one dropped");
        }
    }

    /// Our control messages into the driver's control receive buffers.
    fn write_control(&mut self) -> Result<Progress, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut progress = Progress::More;
        for _ in 0..BATCH {
            let Some(message) = self.control_out.front() else {
                progress = Progress::Done;
                break;
            };
            let Some(chain) = self.control_rx.queue.iter(mem.as_ref())?.next() else {
                progress = Progress::Done;
                break;
            };
            let head = chain.head_index();
            let table = DescriptorTable::of(&self.control_rx.queue);
            let written = match self.chain.collect(&mem, table, head) {
                Ok(descriptors) => write_whole(&mem, descriptors, message),
                Err(_) => false,
            };
            let used_len = if written {
                // A control message is at most 8 bytes and the port name.
                let len = u32::try_from(message.len()).unwrap_or(0);
                self.control_out.pop_front();
                len
            } else {
                log::debug!("virtio-console: control receive buffer unusable; returned empty");
                0
            };
            self.control_rx
                .queue
                .add_used(mem.as_ref(), head, used_len)?;
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_queue(self.control_rx.msix_vector);
        }
        Ok(progress)
    }
}

/// A transmit chain's bytes into `buffer`: device-readable only, inside
/// guest memory and no larger than the buffer. Returns the length.
fn gather(
    mem: &GuestMemoryMmap,
    descriptors: &[ChainDescriptor],
    buffer: &mut [u8],
) -> Result<usize, &'static str> {
    if descriptors.iter().any(|d| d.writable) {
        return Err("device-writable buffer in a transmit chain");
    }
    let mut bytes = ChainBytes::new(descriptors, false, buffer.len() + 1);
    let len = bytes.remaining();
    if len > buffer.len() {
        return Err("transmit chain larger than 64 KiB");
    }
    bytes
        .read(mem, &mut buffer[..len])
        .map_err(|_| "transmit buffer outside guest memory")?;
    Ok(len)
}

/// Fills a receive chain with the host's oldest bytes and takes them from
/// the port; returns how many. A chain with a device-readable buffer or
/// outside guest memory gets none.
fn fill(
    mem: &GuestMemoryMmap,
    descriptors: &[ChainDescriptor],
    port: &PortDevice,
    buffer: &mut [u8],
) -> usize {
    if descriptors.iter().any(|d| !d.writable) {
        log::debug!("virtio-console: device-readable buffer in a receive chain");
        return 0;
    }
    let mut bytes = ChainBytes::new(descriptors, true, buffer.len());
    let len = port.peek_to_guest(&mut buffer[..bytes.remaining()]);
    if bytes.write(mem, &buffer[..len]).is_err() {
        log::debug!("virtio-console: receive buffer outside guest memory");
        return 0;
    }
    port.consume_to_guest(len);
    len
}

/// Writes `message` whole into a chain's device-writable buffers.
fn write_whole(mem: &GuestMemoryMmap, descriptors: &[ChainDescriptor], message: &[u8]) -> bool {
    if descriptors.iter().any(|d| !d.writable) {
        return false;
    }
    let mut bytes = ChainBytes::new(descriptors, true, message.len());
    bytes.remaining() == message.len() && bytes.write(mem, message).is_ok()
}

impl QueueWorker for ConsoleWorker {
    fn process_queue(&mut self, queue: usize) -> Progress {
        if self.broken {
            return Progress::Done;
        }
        let result = match u16::try_from(queue) {
            Ok(PORT_RX) => self.receive(),
            Ok(PORT_TX) => self.transmit(),
            Ok(CONTROL_RX) => self.write_control(),
            Ok(CONTROL_TX) => self.read_control(),
            _ => Ok(Progress::Done),
        };
        result.unwrap_or_else(|e| {
            self.fail(e);
            Progress::Done
        })
    }

    fn event_sources(&self) -> &[EventSource] {
        if self.broken {
            &[]
        } else {
            &self.sources
        }
    }

    fn process_event(&mut self, token: u32) {
        if self.broken || token != PORT_WAKE_TOKEN {
            return;
        }
        self.port.clear_wake();
        let result = self.receive().and_then(|received| {
            let transmitted = self.transmit()?;
            Ok(received == Progress::More || transmitted == Progress::More)
        });
        match result {
            // Left at the bound: come back after the thread's other events.
            Ok(true) => self.port.wake_again(),
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }
}
