//! A split virtqueue set up from fuzzer-chosen sizes and ring addresses,
//! the way the virtio-pci transport builds one at DRIVER_OK: queues the
//! transport would refuse (bad size, rings outside memory) are refused
//! here too, so targets only see queues a real device can get.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub struct QueueSetup {
    /// Queue size is `1 << (size_exponent % 9)`: 1 to 256.
    pub size_exponent: u8,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub event_idx: bool,
}

pub fn build_queue(setup: &QueueSetup, mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut queue = Queue::new(securevm::devices::virtio::QUEUE_MAX_SIZE).ok()?;
    queue.try_set_size(1 << (setup.size_exponent % 9)).ok()?;
    queue
        .try_set_desc_table_address(GuestAddress(setup.desc))
        .ok()?;
    queue
        .try_set_avail_ring_address(GuestAddress(setup.avail))
        .ok()?;
    queue
        .try_set_used_ring_address(GuestAddress(setup.used))
        .ok()?;
    queue.set_event_idx(setup.event_idx);
    queue.set_ready(true);
    queue.is_valid(mem).then_some(queue)
}
