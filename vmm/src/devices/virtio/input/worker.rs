//! The I/O thread's half of a virtio-input device: events from
//! [`InputEvents`] go into the event queue's buffers while there are
//! both; what the guest posts on the status queue is returned unread.
//! Each call does a bounded amount and comes back for the rest. A buffer
//! that cannot hold an event (too short, device-readable, outside guest
//! memory) means a driver that does not follow the spec: the device stops
//! and asks for a reset, as virtio-blk does for a corrupt ring.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::events::{InputEvent, InputEvents};
use crate::devices::virtio::chain::{ChainBytes, CollectedChain, DescriptorTable};
use crate::devices::virtio::{
    ActivateError, Activation, EventSource, Progress, QueueWorker, VirtioInterrupt,
};

/// Events moved into the guest per call at most.
pub(super) const EVENTS_PER_CALL: usize = 64;
/// Status buffers returned per call at most.
pub(super) const STATUS_PER_CALL: usize = 64;
/// Descriptors an event buffer may have: Linux posts one.
const MAX_DESCRIPTORS: u16 = 4;
/// Bytes of `struct virtio_input_event`.
const EVENT_LEN: u32 = 8;
const EVENTQ: usize = 0;
const STATUSQ: usize = 1;
const READY_TOKEN: u32 = 0;

struct ActiveRing {
    queue: Queue,
    msix_vector: u16,
}

pub(super) struct InputWorker {
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<VirtioInterrupt>,
    events: InputEvents,
    eventq: ActiveRing,
    statusq: Option<ActiveRing>,
    chain: CollectedChain,
    sources: [EventSource; 1],
    /// Set once the driver broke the rules; it must reset the device.
    broken: bool,
}

/// Why the device stopped; for the log.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("the ring is corrupt: {0}")]
    Ring(#[from] virtio_queue::Error),
    #[error("an event buffer is refused: {0}")]
    Buffer(&'static str),
}

impl InputWorker {
    pub(super) fn new(activation: Activation, events: InputEvents) -> Result<Self, ActivateError> {
        let mut eventq = None;
        let mut statusq = None;
        for active in activation.queues {
            let ring = ActiveRing {
                queue: active.queue,
                msix_vector: active.msix_vector,
            };
            match usize::from(active.index) {
                EVENTQ => eventq = Some(ring),
                STATUSQ => statusq = Some(ring),
                _ => {}
            }
        }
        let eventq = eventq.ok_or(ActivateError::NoQueue)?;
        let sources = [EventSource {
            fd: events.ready_fd(),
            token: READY_TOKEN,
        }];
        Ok(Self {
            mem: activation.mem,
            interrupt: activation.interrupt,
            events,
            eventq,
            statusq,
            chain: CollectedChain::new(MAX_DESCRIPTORS),
            sources,
            broken: false,
        })
    }

    fn fail(&mut self, error: &Broken) {
        crate::rate_limited!(
            log::Level::Warn,
            "virtio-input: device unusable until the driver resets it: {error}"
        );
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Move queued events into posted buffers, at most
    /// [`EVENTS_PER_CALL`]; `More` when both are left.
    fn deliver(&mut self) -> Progress {
        let Self {
            mem,
            events,
            eventq,
            chain,
            ..
        } = self;
        let mut failure = None;
        let delivered = events.deliver(EVENTS_PER_CALL, |event| {
            match put_event(&mut eventq.queue, mem, chain, event) {
                Ok(stored) => stored,
                Err(error) => {
                    failure = Some(error);
                    false
                }
            }
        });
        let result = if delivered > 0 {
            self.eventq.queue.needs_notification(&*self.mem)
        } else {
            Ok(false)
        };
        match result {
            Ok(true) => self.interrupt.signal_queue(self.eventq.msix_vector),
            Ok(false) => {}
            Err(error) => failure = Some(Broken::Ring(error)),
        }
        if let Some(error) = failure {
            self.fail(&error);
            return Progress::Done;
        }
        if delivered == EVENTS_PER_CALL && !self.events.is_empty() {
            Progress::More
        } else {
            Progress::Done
        }
    }

    /// Return what the guest posted on the status queue, at most
    /// [`STATUS_PER_CALL`] buffers.
    fn drain_status(&mut self) -> Progress {
        let Some(statusq) = &mut self.statusq else {
            return Progress::Done;
        };
        let mem = &*self.mem;
        let result = (|| -> Result<Progress, virtio_queue::Error> {
            let mut taken = 0;
            while taken < STATUS_PER_CALL {
                let Some(chain) = statusq.queue.iter(mem)?.next() else {
                    break;
                };
                statusq.queue.add_used(mem, chain.head_index(), 0)?;
                taken += 1;
            }
            if taken > 0 && statusq.queue.needs_notification(mem)? {
                self.interrupt.signal_queue(statusq.msix_vector);
            }
            Ok(if taken == STATUS_PER_CALL {
                Progress::More
            } else {
                Progress::Done
            })
        })();
        result.unwrap_or_else(|error| {
            self.fail(&Broken::Ring(error));
            Progress::Done
        })
    }
}

/// Store `event` in the next posted buffer. `Ok(false)`: none posted.
fn put_event(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    chain: &mut CollectedChain,
    event: InputEvent,
) -> Result<bool, Broken> {
    let Some(next) = queue.iter(mem)?.next() else {
        return Ok(false);
    };
    let head = next.head_index();
    let stored = store(mem, chain, DescriptorTable::of(queue), head, event);
    let used_len = if stored.is_ok() { EVENT_LEN } else { 0 };
    queue.add_used(mem, head, used_len)?;
    stored.map(|()| true)
}

fn store(
    mem: &GuestMemoryMmap,
    chain: &mut CollectedChain,
    table: DescriptorTable,
    head: u16,
    event: InputEvent,
) -> Result<(), Broken> {
    let descriptors = chain
        .collect(mem, table, head)
        .map_err(|_| Broken::Buffer("malformed descriptor chain"))?;
    if descriptors.iter().any(|d| !d.writable) {
        return Err(Broken::Buffer("device-readable buffer"));
    }
    let mut bytes = ChainBytes::new(descriptors, true, EVENT_LEN as usize);
    if bytes.remaining() < EVENT_LEN as usize {
        return Err(Broken::Buffer("shorter than an event"));
    }
    bytes
        .write(mem, &event.to_le_bytes())
        .map_err(|_| Broken::Buffer("outside guest memory"))
}

impl QueueWorker for InputWorker {
    fn process_queue(&mut self, queue: usize) -> Progress {
        if self.broken {
            return Progress::Done;
        }
        match queue {
            EVENTQ => self.deliver(),
            STATUSQ => self.drain_status(),
            _ => Progress::Done,
        }
    }

    fn event_sources(&self) -> &[EventSource] {
        if self.broken {
            &[]
        } else {
            &self.sources
        }
    }

    fn process_event(&mut self, _token: u32) {
        if self.broken {
            return;
        }
        self.events.take_wakeup();
        if self.deliver() == Progress::More {
            // Still readable, the source brings this thread back.
            self.events.wake_again();
        }
    }
}
