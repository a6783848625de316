//! virtio-blk (virtio 1.x, 5.2): a disk backed by a [`BlockBackend`],
//! served by one I/O thread per device. Reads, writes, flushes and
//! GET_ID; read-only disks advertise VIRTIO_BLK_F_RO and fail writes.

mod request;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::block::{BlockBackend, BlockError, SECTOR_SIZE};

pub use request::{
    DiskId, RequestHandler, Served, BYTES_PER_CALL, REQUESTS_PER_CALL, SEG_MAX, SIZE_MAX,
};

use super::{
    ActivateError, Activation, Progress, QueueWorker, VirtioDevice, VirtioInterrupt, F_EVENT_IDX,
    F_INDIRECT_DESC, F_VERSION_1, QUEUE_MAX_SIZE,
};
use crate::confined::Confinement;

const DEVICE_TYPE_BLOCK: u16 = 2;
/// `struct virtio_blk_config` up to and including `num_queues`.
const CONFIG_LEN: usize = 36;

static NEXT_THREAD_INDEX: AtomicUsize = AtomicUsize::new(0);

pub struct Block {
    backend: Arc<dyn BlockBackend>,
    disk_id: DiskId,
    config: [u8; CONFIG_LEN],
    features: u64,
    thread_name: String,
    confinement: Confinement,
}

impl Block {
    /// A disk served from `backend`, answering GET_ID with `id` (at most
    /// 20 bytes; see [`disk_id_from_path`] for a default).
    pub fn new(backend: Box<dyn BlockBackend>, id: &str) -> Result<Self, BlockError> {
        let block_size = backend.block_size();
        if block_size != 512 && block_size != 4096 {
            return Err(BlockError::UnsupportedBlockSize(block_size));
        }
        let capacity = backend.capacity_bytes();
        if !capacity.is_multiple_of(u64::from(block_size)) {
            return Err(BlockError::UnalignedCapacity(capacity));
        }
        let mut disk_id = DiskId::default();
        if id.len() > disk_id.len() {
            return Err(BlockError::IdTooLong(id.to_string()));
        }
        disk_id[..id.len()].copy_from_slice(id.as_bytes());

        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&(capacity / SECTOR_SIZE).to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&block_size.to_le_bytes());
        config[34..36].copy_from_slice(&1u16.to_le_bytes());

        let mut features = F_VERSION_1
            | F_EVENT_IDX
            | F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if backend.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let index = NEXT_THREAD_INDEX.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            backend: Arc::from(backend),
            disk_id,
            config,
            features,
            thread_name: format!("virtio-blk{index}"),
            confinement: Confinement::Unfiltered,
        })
    }

    /// Confine this device's I/O thread (its seccomp filter). Set it
    /// before adding the device to the PCI root, which starts the thread.
    pub fn set_confinement(&mut self, confinement: Confinement) {
        self.confinement = confinement;
    }

    /// Name of the I/O thread this device runs ("virtio-blkN").
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }
}

/// The default GET_ID answer: the image's file name, cut to 20 bytes at
/// a character boundary.
pub fn disk_id_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    disk_id_prefix(&name)
}

/// As much of `name` as fits the disk id (20 bytes), cut at a character
/// boundary.
pub fn disk_id_prefix(name: &str) -> String {
    let mut end = name.len().min(DiskId::default().len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE.
        log::debug!("virtio-blk: ignored config write at {offset:#x}");
    }

    fn io_thread_name(&self) -> String {
        self.thread_name.clone()
    }

    fn io_thread_confinement(&self) -> Confinement {
        self.confinement
    }

    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueWorker>, ActivateError> {
        let Some(active) = activation.queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::NoQueue);
        };
        Ok(Box::new(BlockWorker {
            mem: activation.mem,
            queue: active.queue,
            msix_vector: active.msix_vector,
            interrupt: activation.interrupt,
            handler: RequestHandler::new(self.backend.clone(), self.disk_id),
            broken: false,
        }))
    }

    fn reset(&mut self) {
        // All per-activation state lives in the worker, which is gone.
    }
}

/// The I/O thread's state for one disk queue.
struct BlockWorker {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    msix_vector: u16,
    interrupt: Arc<VirtioInterrupt>,
    handler: RequestHandler,
    /// Set once the ring is found corrupt; the driver must reset.
    broken: bool,
}

impl QueueWorker for BlockWorker {
    fn process_queue(&mut self, _queue: usize) -> Progress {
        if self.broken {
            return Progress::Done;
        }
        match self.handler.process_queue(&mut self.queue, &self.mem) {
            Ok(served) => {
                if served.notify {
                    self.interrupt.signal_queue(self.msix_vector);
                }
                if served.more {
                    Progress::More
                } else {
                    Progress::Done
                }
            }
            Err(e) => {
                crate::rate_limited!(
                    log::Level::Warn,
                    "virtio-blk: queue unusable until the driver resets it: {e}"
                );
                self.broken = true;
                self.interrupt.set_needs_reset();
                Progress::Done
            }
        }
    }
}

#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod tests;
