//! The virtio-net data path on the device's I/O thread.
//!
//! Transmit: each chain from the guest is copied into one reused buffer
//! (bounded by [`MAX_BUFFER_LEN`]), checked, shown to the filter and, if
//! allowed, written to the backend with a clean virtio header.
//!
//! Receive: while the guest has receive buffers, the worker listens on
//! the backend's fd; each frame read is filtered and copied into the next
//! receive chain. When the guest has no buffer left, the frame just read
//! is kept, and the worker stops listening until the guest kicks the
//! receive queue, so an idle guest never makes the thread spin.
//!
//! With a VPN, an allowed frame for the tunnel's routes goes to the
//! tunnel instead of the backend (never both), the endpoint's socket is
//! read beside the backend (alternately, while the guest has buffers),
//! and the tunnel's timer is always watched.
//!
//! Anything the guest gets wrong drops that frame and returns its chain;
//! only a corrupt ring stops the device (NEEDS_RESET). Each chain's
//! descriptors are collected once, up to [`MAX_CHAIN_LEN`], before any of
//! them is used. Nothing allocates per frame.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::backend::NetBackend;
use super::filter::FrameFilter;
use super::tunnel::{SharedTunnel, TunnelRead};
use super::{NetCounters, MAX_BUFFER_LEN, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::devices::virtio::chain::{ChainBytes, ChainDescriptor, CollectedChain, DescriptorTable};
use crate::devices::virtio::driver_wants_interrupt;
use crate::devices::virtio::{
    ActiveQueue, EventSource, Progress, QueueWorker, VirtioInterrupt, QUEUE_MAX_SIZE,
};
use crate::sync::lock;
use crate::sync::Unpoisoned;

/// Ethernet destination, source and type.
const ETH_HEADER_LEN: usize = 14;
/// Frames received, or sent, per wake-up: a flood from the host cannot
/// starve the guest's transmissions (epoll wakes us again for the rest),
/// and a guest that keeps its transmit ring full cannot keep the I/O
/// thread (and a reset or pause waiting for it) in one call.
const BATCH: usize = 64;
const BACKEND_TOKEN: u32 = 0;
const TUNNEL_TOKEN: u32 = 1;
const TIMER_TOKEN: u32 = 2;
/// `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Most descriptors a chain on either queue may have: as many as the
/// largest ring holds (Linux uses at most MAX_SKB_FRAGS + 2).
const MAX_CHAIN_LEN: u16 = QUEUE_MAX_SIZE;

type SharedFilter = Arc<Mutex<Box<dyn FrameFilter>>>;

struct WorkerQueue {
    queue: Queue,
    msix_vector: u16,
}

pub(super) struct NetWorker {
    mem: Arc<GuestMemoryMmap>,
    rx: WorkerQueue,
    tx: WorkerQueue,
    interrupt: Arc<VirtioInterrupt>,
    backend: Arc<dyn NetBackend>,
    filter: SharedFilter,
    counters: Arc<NetCounters>,
    rx_buffer: Vec<u8>,
    /// The receive chain being filled.
    rx_chain: CollectedChain,
    /// Length of an allowed frame in `rx_buffer` that no receive buffer
    /// has taken yet.
    rx_pending: Option<usize>,
    tx_buffer: Vec<u8>,
    /// The transmit chain being gathered.
    tx_chain: CollectedChain,
    vpn: Option<SharedTunnel>,
    /// Read the tunnel before the backend next time (fair turns).
    tunnel_turn: bool,
    /// What wakes the worker while the guest has receive buffers: the
    /// backend, and the tunnel's socket and timer with a VPN.
    listening_sources: Vec<EventSource>,
    /// What wakes it otherwise: the tunnel's timer with a VPN.
    idle_sources: Vec<EventSource>,
    listening: bool,
    /// Set once a ring is found corrupt; the driver must reset.
    broken: bool,
}

/// Why a chain or frame was dropped; for the debug log only.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("refused by the filter")]
    Filtered,
}

/// What one read from a frame source gave.
enum Incoming {
    /// A frame of this length (virtio header included) in `rx_buffer`.
    Frame(usize),
    /// Something was read, but there is nothing to deliver.
    Skipped,
    /// The source has nothing now.
    Empty,
}

/// What a worker takes over from its device, which outlives it.
pub(super) struct DeviceParts {
    pub(super) backend: Arc<dyn NetBackend>,
    pub(super) filter: SharedFilter,
    pub(super) counters: Arc<NetCounters>,
    pub(super) vpn: Option<SharedTunnel>,
}

impl NetWorker {
    pub(super) fn new(
        mem: Arc<GuestMemoryMmap>,
        rx: ActiveQueue,
        tx: ActiveQueue,
        interrupt: Arc<VirtioInterrupt>,
        parts: DeviceParts,
    ) -> Self {
        let DeviceParts {
            backend,
            filter,
            counters,
            vpn,
        } = parts;
        let mut listening_sources = vec![EventSource {
            fd: backend.fd(),
            token: BACKEND_TOKEN,
        }];
        let mut idle_sources = Vec::new();
        if let Some(link) = &vpn {
            let link = lock(link);
            let timer = EventSource {
                fd: link.timer_fd(),
                token: TIMER_TOKEN,
            };
            listening_sources.push(EventSource {
                fd: link.socket_fd(),
                token: TUNNEL_TOKEN,
            });
            listening_sources.push(timer);
            idle_sources.push(timer);
        }
        Self {
            mem,
            rx: WorkerQueue {
                queue: rx.queue,
                msix_vector: rx.msix_vector,
            },
            tx: WorkerQueue {
                queue: tx.queue,
                msix_vector: tx.msix_vector,
            },
            interrupt,
            backend,
            filter,
            counters,
            // Allocated here, on the thread that activates the device, so
            // the I/O thread never grows its heap per frame.
            rx_buffer: vec![0u8; MAX_BUFFER_LEN],
            rx_chain: CollectedChain::new(MAX_CHAIN_LEN),
            rx_pending: None,
            tx_buffer: vec![0u8; MAX_BUFFER_LEN],
            tx_chain: CollectedChain::new(MAX_CHAIN_LEN),
            vpn,
            tunnel_turn: false,
            listening_sources,
            idle_sources,
            // The first rx kick (sent at activation) decides.
            listening: false,
            broken: false,
        }
    }

    fn filter(&self) -> MutexGuard<'_, Box<dyn FrameFilter>> {
        self.filter.lock().unpoisoned()
    }

    fn fail(&mut self, error: virtio_queue::Error) {
        crate::rate_limited!(
            log::Level::Warn,
            "virtio-net: queue unusable until the driver resets it: {error}"
        );
        self.broken = true;
        self.listening = false;
        self.interrupt.set_needs_reset();
    }

    /// Send what the guest queued on the transmit queue, at most
    /// [`BATCH`] frames; `More` when it stopped there.
    fn transmit(&mut self) -> Result<Progress, virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut sent = 0usize;
        let mut progress = Progress::Done;
        loop {
            // With EVENT_IDX the guest need not kick while we drain.
            if self.tx.queue.event_idx_enabled() {
                self.tx.queue.disable_notification(mem.as_ref())?;
            }
            loop {
                if sent == BATCH {
                    // Notifications stay off: the I/O thread comes back.
                    progress = Progress::More;
                    break;
                }
                let Some(chain) = self.tx.queue.iter(mem.as_ref())?.next() else {
                    break;
                };
                let head = chain.head_index();
                let table = DescriptorTable::of(&self.tx.queue);
                match self.transmit_chain(&mem, table, head) {
                    Ok(()) => NetCounters::bump(&self.counters.tx_frames),
                    Err(Dropped::Filtered) => NetCounters::bump(&self.counters.tx_filtered),
                    Err(why @ Dropped::Malformed(_)) => {
                        log::debug!("virtio-net: transmit chain dropped: {why}");
                        NetCounters::bump(&self.counters.tx_malformed);
                    }
                }
                self.tx.queue.add_used(mem.as_ref(), head, 0)?;
                sent += 1;
            }
            // Re-arm, and look again for a chain added meanwhile.
            if progress == Progress::More
                || !self.tx.queue.event_idx_enabled()
                || !self.tx.queue.enable_notification(mem.as_ref())?
            {
                break;
            }
        }
        if sent > 0 && driver_wants_interrupt(&mut self.tx.queue, &mem)? {
            self.interrupt.signal_queue(self.tx.msix_vector);
        }
        Ok(progress)
    }

    fn transmit_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        table: DescriptorTable,
        head: u16,
    ) -> Result<(), Dropped> {
        let descriptors = self
            .tx_chain
            .collect(mem, table, head)
            .map_err(|_| Dropped::Malformed("descriptor chain too long, looping or unreadable"))?;
        let len = gather(mem, descriptors, &mut self.tx_buffer)?;
        if !plain_header(&self.tx_buffer[..VNET_HDR_LEN]) {
            return Err(Dropped::Malformed(
                "offload requested in the header, but none was negotiated",
            ));
        }
        if len < VNET_HDR_LEN + ETH_HEADER_LEN {
            return Err(Dropped::Malformed("frame shorter than an Ethernet header"));
        }
        let frame = &self.tx_buffer[VNET_HDR_LEN..len];
        if !self.filter().outbound(frame) {
            return Err(Dropped::Filtered);
        }
        if let Some(link) = &self.vpn {
            if lock(link).outbound(frame) {
                NetCounters::bump(&self.counters.tx_tunnelled);
                return Ok(());
            }
        }
        // The backend sees only a header we wrote.
        self.tx_buffer[..VNET_HDR_LEN].fill(0);
        match self.backend.write_frame(&self.tx_buffer[..len]) {
            Ok(_) => {}
            Err(e) => {
                // A full or downed TAP drops the frame, as a cable would.
                log::debug!("virtio-net: backend did not take a frame: {e}");
                NetCounters::bump(&self.counters.tx_backend_errors);
            }
        }
        Ok(())
    }

    /// Move frames from the backend into the guest's receive buffers
    /// until either runs out or a batch is done.
    fn receive(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = self.mem.clone();
        let mut used_any = false;
        self.listening = true;
        for _ in 0..BATCH {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.read_allowed_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            self.rx_pending = Some(len);
            let Some(chain) = next_rx_chain(&mut self.rx.queue, &mem)? else {
                // Keep the frame; the guest's next rx kick brings us back.
                self.listening = false;
                break;
            };
            let head = chain.head_index();
            let table = DescriptorTable::of(&self.rx.queue);
            let frame = &self.rx_buffer[..len];
            let outcome = match self.rx_chain.collect(&mem, table, head) {
                Ok(descriptors) => write_frame(&mem, descriptors, frame),
                Err(_) => Err(RxChain::Malformed(
                    "descriptor chain too long, looping or unreadable",
                )),
            };
            match outcome {
                Ok(()) => {
                    // `frame` was sliced from rx_buffer: at most
                    // MAX_BUFFER_LEN (65,562) bytes.
                    #[allow(clippy::cast_possible_truncation)]
                    let used_len = len as u32;
                    self.rx.queue.add_used(mem.as_ref(), head, used_len)?;
                    NetCounters::bump(&self.counters.rx_frames);
                    self.rx_pending = None;
                    used_any = true;
                }
                Err(RxChain::TooSmall) => {
                    // The buffer stays for a frame that fits.
                    self.rx.queue.go_to_previous_position();
                    log::debug!("virtio-net: {len}-byte frame larger than the receive buffer");
                    NetCounters::bump(&self.counters.rx_dropped);
                    self.rx_pending = None;
                }
                Err(RxChain::Malformed(why)) => {
                    log::debug!("virtio-net: receive chain returned unused: {why}");
                    self.rx.queue.add_used(mem.as_ref(), head, 0)?;
                    used_any = true;
                }
            }
        }
        if used_any && driver_wants_interrupt(&mut self.rx.queue, &mem)? {
            self.interrupt.signal_queue(self.rx.msix_vector);
        }
        Ok(())
    }

    /// The next frame from the backend or the tunnel that the filter
    /// allows, in `rx_buffer` with the header the guest will see; `None`
    /// when neither has more for now.
    fn read_allowed_frame(&mut self) -> Option<usize> {
        for _ in 0..BATCH {
            self.tunnel_turn = !self.tunnel_turn;
            let incoming = if self.vpn.is_some() && self.tunnel_turn {
                match self.read_tunnel() {
                    Incoming::Empty => self.read_backend(),
                    other => other,
                }
            } else {
                match self.read_backend() {
                    Incoming::Empty => self.read_tunnel(),
                    other => other,
                }
            };
            let len = match incoming {
                Incoming::Frame(len) => len,
                Incoming::Skipped => continue,
                Incoming::Empty => return None,
            };
            if !self.filter().inbound(&self.rx_buffer[VNET_HDR_LEN..len]) {
                NetCounters::bump(&self.counters.rx_filtered);
                continue;
            }
            let header = &mut self.rx_buffer[..VNET_HDR_LEN];
            header.fill(0);
            header[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
            return Some(len);
        }
        None
    }

    fn read_backend(&mut self) -> Incoming {
        let len = match self.backend.read_frame(&mut self.rx_buffer) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Incoming::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Incoming::Skipped,
            Err(e) => {
                // Stop listening so a failing backend cannot spin the
                // thread; the guest's next rx kick tries again.
                log::warn!("virtio-net: cannot read from the backend: {e}");
                self.listening = false;
                return Incoming::Empty;
            }
        };
        let header_ok = len >= VNET_HDR_LEN && plain_header(&self.rx_buffer[..VNET_HDR_LEN]);
        if !header_ok || len < VNET_HDR_LEN + ETH_HEADER_LEN {
            NetCounters::bump(&self.counters.rx_dropped);
            return Incoming::Skipped;
        }
        Incoming::Frame(len)
    }

    /// A frame from the tunnel goes where a backend frame would, after
    /// the virtio header.
    fn read_tunnel(&mut self) -> Incoming {
        let Some(link) = &self.vpn else {
            return Incoming::Empty;
        };
        match lock(link).receive_frame(&mut self.rx_buffer[VNET_HDR_LEN..]) {
            TunnelRead::Frame(len) => {
                NetCounters::bump(&self.counters.rx_tunnelled);
                Incoming::Frame(VNET_HDR_LEN + len)
            }
            TunnelRead::Nothing => Incoming::Skipped,
            TunnelRead::Empty => Incoming::Empty,
        }
    }
}

impl QueueWorker for NetWorker {
    fn process_queue(&mut self, queue: usize) -> Progress {
        if self.broken {
            return Progress::Done;
        }
        // Receiving needs no call back: a backend with more to read stays
        // readable and wakes the thread again.
        let result = match queue {
            q if q == usize::from(RX_QUEUE) => self.receive().map(|()| Progress::Done),
            q if q == usize::from(TX_QUEUE) => self.transmit(),
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
        } else if self.listening {
            &self.listening_sources
        } else {
            &self.idle_sources
        }
    }

    fn process_event(&mut self, token: u32) {
        if self.broken {
            return;
        }
        match token {
            BACKEND_TOKEN | TUNNEL_TOKEN => {
                if let Err(e) = self.receive() {
                    self.fail(e);
                }
            }
            TIMER_TOKEN => {
                if let Some(link) = &self.vpn {
                    lock(link).on_timer();
                }
            }
            _ => {}
        }
    }
}

/// Copy a transmit chain (header and frame) into `buffer`, checking on
/// the way that it is device-readable only, inside guest memory and no
/// larger than `buffer`. Returns the length copied.
fn gather(
    mem: &GuestMemoryMmap,
    descriptors: &[ChainDescriptor],
    buffer: &mut [u8],
) -> Result<usize, Dropped> {
    let mut len = 0usize;
    for descriptor in descriptors {
        if descriptor.writable {
            return Err(Dropped::Malformed(
                "device-writable buffer in a transmit chain",
            ));
        }
        let end = len
            .checked_add(descriptor.len as usize)
            .filter(|&end| end <= buffer.len())
            .ok_or(Dropped::Malformed(
                "frame larger than the 65 562-byte maximum",
            ))?;
        mem.read_slice(&mut buffer[len..end], descriptor.addr)
            .map_err(|_| Dropped::Malformed("transmit buffer outside guest memory"))?;
        len = end;
    }
    if len < VNET_HDR_LEN {
        return Err(Dropped::Malformed(
            "chain shorter than the virtio-net header",
        ));
    }
    Ok(len)
}

/// A header that asks for nothing: no checksum to complete, no
/// segmentation. With no offloads negotiated it is the only valid one.
fn plain_header(header: &[u8]) -> bool {
    header[0] == 0 && header[1] == 0
}

enum RxChain {
    TooSmall,
    Malformed(&'static str),
}

fn write_frame(
    mem: &GuestMemoryMmap,
    descriptors: &[ChainDescriptor],
    frame: &[u8],
) -> Result<(), RxChain> {
    if descriptors.iter().any(|d| !d.writable) {
        return Err(RxChain::Malformed(
            "device-readable buffer in a receive chain",
        ));
    }
    let mut buffers = ChainBytes::new(descriptors, true, usize::MAX);
    if buffers.remaining() < VNET_HDR_LEN + ETH_HEADER_LEN {
        return Err(RxChain::Malformed("receive chain too short for any frame"));
    }
    if buffers.remaining() < frame.len() {
        return Err(RxChain::TooSmall);
    }
    buffers
        .write(mem, frame)
        .map_err(|_| RxChain::Malformed("receive buffer outside guest memory"))
}

/// The next receive chain. Before reporting none, ask the guest (with
/// EVENT_IDX, whose kicks are otherwise suppressed) to kick on its next
/// buffer, and look once more for one added in between.
fn next_rx_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, virtio_queue::Error> {
    loop {
        if let Some(chain) = queue.iter(mem)?.next() {
            return Ok(Some(chain));
        }
        if !queue.event_idx_enabled() || !queue.enable_notification(mem)? {
            return Ok(None);
        }
    }
}
