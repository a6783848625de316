//! virtio-gpu (virtio 1.2, 5.7), 2D only: the guest's screen. The
//! commands are served by the `gpu2d` engine, which checks every value
//! the guest sends; this device model owns the two queues (control and
//! cursor), copies each request's readable bytes into a bounded buffer,
//! hands them to the engine with a read-only view of guest memory, and
//! writes the response into the chain's writable bytes. What the guest
//! shows goes to a [`ScanoutSink`] (the display thread). One scanout, no
//! 3D capability sets; offered: VERSION_1, EVENT_IDX, INDIRECT_DESC and
//! VIRTIO_GPU_F_EDID.

use std::sync::Arc;

use gpu2d::protocol::F_EDID;
use gpu2d::{ConfigError, Gpu2d, Gpu2dConfig, GuestMemoryRead, OutOfGuestMemory, ScanoutSink};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::chain::{ChainBytes, CollectedChain, DescriptorTable};
use super::driver_wants_interrupt;
use super::{
    ActivateError, Activation, Progress, QueueWorker, VirtioDevice, VirtioInterrupt, F_EVENT_IDX,
    F_INDIRECT_DESC, F_VERSION_1, QUEUE_MAX_SIZE,
};
use crate::confined::Confinement;

const DEVICE_TYPE_GPU: u16 = 16;
/// Queue numbers (virtio 1.2, 5.7.2).
pub const CONTROL_QUEUE: u16 = 0;
pub const CURSOR_QUEUE: u16 = 1;
/// `struct virtio_gpu_config`: events_read, events_clear, num_scanouts,
/// num_capsets.
const CONFIG_LEN: usize = 16;
const CONFIG_EVENTS_CLEAR: u64 = 4;
/// Chains one [`QueueWorker::process_queue`] call serves at most: what a
/// reset or a pause may have to wait for. A transfer is bounded by the
/// resource, so by max-mem.
pub const CHAINS_PER_CALL: usize = 8;
/// Longest chain accepted: a request, its backing entries (Linux may
/// split them page by page) and the response.
const MAX_DESCRIPTORS: u16 = QUEUE_MAX_SIZE;

/// The virtio-gpu device: one display of the configured size.
pub struct Gpu {
    config: Gpu2dConfig,
    sink: Arc<dyn ScanoutSink>,
    config_space: [u8; CONFIG_LEN],
    confinement: Confinement,
}

impl Gpu {
    /// A display of `config`'s size whose resources may take at most its
    /// max-mem, shown through `sink`. Refused if the size cannot be
    /// described or one frame does not fit max-mem.
    pub fn new(config: Gpu2dConfig, sink: Arc<dyn ScanoutSink>) -> Result<Self, ConfigError> {
        config.check()?;
        let mut config_space = [0u8; CONFIG_LEN];
        // One scanout, no capability sets; no event is ever raised, so
        // events_read stays 0.
        config_space[8..12].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            config,
            sink,
            config_space,
            confinement: Confinement::Unfiltered,
        })
    }

    /// Confine this device's I/O thread (its seccomp filter). Set it
    /// before adding the device to the PCI root, which starts the thread.
    pub fn set_confinement(&mut self, confinement: Confinement) {
        self.confinement = confinement;
    }

    /// Name of the I/O thread this device runs.
    pub fn thread_name(&self) -> &'static str {
        "virtio-gpu"
    }
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_GPU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | 1 << F_EDID
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at
                .and_then(|at| self.config_space.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // events_clear is the only writable field, and with no event
        // ever raised there is nothing to clear.
        if offset != CONFIG_EVENTS_CLEAR {
            log::debug!("virtio-gpu: ignored config write at {offset:#x}");
        }
    }

    fn io_thread_name(&self) -> String {
        self.thread_name().to_string()
    }

    fn io_thread_confinement(&self) -> Confinement {
        self.confinement
    }

    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueWorker>, ActivateError> {
        let mut control = None;
        let mut cursor = None;
        for active in activation.queues {
            let served = ServedQueue {
                queue: active.queue,
                msix_vector: active.msix_vector,
            };
            match active.index {
                CONTROL_QUEUE => control = Some(served),
                CURSOR_QUEUE => cursor = Some(served),
                _ => {}
            }
        }
        let control = control.ok_or(ActivateError::NoQueue)?;
        let gpu = Gpu2d::new(self.config).map_err(|e| ActivateError::BadQueue {
            index: CONTROL_QUEUE,
            reason: e.to_string(),
        })?;
        Ok(Box::new(GpuWorker {
            mem: activation.mem,
            interrupt: activation.interrupt,
            control,
            cursor,
            engine: Engine {
                gpu,
                sink: self.sink.clone(),
                chain: CollectedChain::new(MAX_DESCRIPTORS),
                request: Vec::with_capacity(gpu2d::MAX_REQUEST_LEN),
            },
            broken: false,
        }))
    }

    fn reset(&mut self) {
        // The resources lived in the worker, which is gone: the screen
        // they showed goes dark.
        self.sink.set_scanout(None);
        self.sink.set_cursor(None);
    }
}

/// The guest's memory as the engine reads it: through bounds-checked
/// copies, never a pointer.
struct GuestRam<'a>(&'a GuestMemoryMmap);

impl GuestMemoryRead for GuestRam<'_> {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfGuestMemory> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| OutOfGuestMemory)
    }
}

struct ServedQueue {
    queue: Queue,
    msix_vector: u16,
}

/// The I/O thread's state: both queues and what serves them.
struct GpuWorker {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<VirtioInterrupt>,
    control: ServedQueue,
    cursor: Option<ServedQueue>,
    engine: Engine,
    /// Set once a ring is found corrupt; the driver must reset.
    broken: bool,
}

impl QueueWorker for GpuWorker {
    fn process_queue(&mut self, queue: usize) -> Progress {
        if self.broken {
            return Progress::Done;
        }
        let is_cursor = queue == usize::from(CURSOR_QUEUE);
        let served = if is_cursor {
            self.cursor.as_mut()
        } else {
            Some(&mut self.control)
        };
        let Some(served) = served else {
            return Progress::Done;
        };
        match self.engine.serve(&mut served.queue, &self.mem, is_cursor) {
            Ok(Served { notify, more }) => {
                if notify {
                    self.interrupt.signal_queue(served.msix_vector);
                }
                if more {
                    Progress::More
                } else {
                    Progress::Done
                }
            }
            Err(e) => {
                crate::rate_limited!(
                    log::Level::Warn,
                    "virtio-gpu: queue unusable until the driver resets it: {e}"
                );
                self.broken = true;
                self.interrupt.set_needs_reset();
                Progress::Done
            }
        }
    }
}

/// What one [`Engine::serve`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Served {
    /// The driver asked to be interrupted for the buffers just used.
    notify: bool,
    /// It stopped at its bound; more chains may be waiting.
    more: bool,
}

/// The command engine and the buffers requests pass through.
struct Engine {
    gpu: Gpu2d,
    sink: Arc<dyn ScanoutSink>,
    /// The descriptors of the chain being served.
    chain: CollectedChain,
    /// The request being served, at most [`gpu2d::MAX_REQUEST_LEN`] bytes.
    request: Vec<u8>,
}

impl Engine {
    /// Serve available chains of `queue`, at most [`CHAINS_PER_CALL`].
    /// An error means the ring itself is corrupt.
    fn serve(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        is_cursor: bool,
    ) -> Result<Served, virtio_queue::Error> {
        let mut chains = 0usize;
        let mut more = false;
        loop {
            if queue.event_idx_enabled() {
                queue.disable_notification(mem)?;
            }
            loop {
                if chains == CHAINS_PER_CALL {
                    // Notifications stay off: the caller comes back.
                    more = true;
                    break;
                }
                let next = queue.iter(mem)?.next();
                let Some(chain) = next else { break };
                let head = chain.head_index();
                chains += 1;
                let used_len = self.handle_chain(mem, DescriptorTable::of(queue), head, is_cursor);
                queue.add_used(mem, head, used_len)?;
            }
            // With EVENT_IDX, re-arm and look again so a buffer added
            // while notifications were off is not left behind.
            if more || !queue.event_idx_enabled() || !queue.enable_notification(mem)? {
                break;
            }
        }
        if chains == 0 {
            return Ok(Served::default());
        }
        let notify = driver_wants_interrupt(queue, mem)?;
        Ok(Served { notify, more })
    }

    /// Serve the chain at `head` of `table`; returns the used length (the
    /// response bytes written, 0 for a chain dropped unread).
    fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        table: DescriptorTable,
        head: u16,
        is_cursor: bool,
    ) -> u32 {
        let descriptors = match self.chain.collect(mem, table, head) {
            Ok(descriptors) => descriptors,
            Err(error) => {
                log::debug!("virtio-gpu: descriptor chain dropped: {error}");
                return 0;
            }
        };
        // Longer requests than any command needs are cut: the engine
        // refuses what the cut leaves incomplete.
        let mut readable = ChainBytes::new(descriptors, false, gpu2d::MAX_REQUEST_LEN);
        // Within the capacity reserved at activation: never reallocates.
        self.request.resize(readable.remaining(), 0);
        if readable.read(mem, &mut self.request).is_err() {
            // An empty request: the engine answers ERR_UNSPEC.
            log::debug!("virtio-gpu: request buffer outside guest memory");
            self.request.clear();
        }
        let response = if is_cursor {
            self.gpu.handle_cursor(&self.request, &*self.sink)
        } else {
            self.gpu
                .handle_control(&self.request, &GuestRam(mem), &*self.sink)
        };
        // A driver that leaves too little room gets what fits (the
        // cursor queue's requests usually leave none).
        let mut writable = ChainBytes::new(descriptors, true, response.len());
        let fits = writable.remaining();
        if writable.write(mem, &response[..fits]).is_err() {
            log::debug!("virtio-gpu: response buffer outside guest memory");
            return 0;
        }
        u32::try_from(fits).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests;
