//! virtio-net (virtio 1.x, 5.1): one receive and one transmit queue
//! between the guest and a [`NetBackend`] (a TAP), served by the device's
//! I/O thread. Every frame passes a [`FrameFilter`] in its direction
//! before it reaches the other side. The guest's MAC is fixed by the VMM
//! (read-only configuration space), and the device offers no checksum or
//! segmentation offloads and no mergeable receive buffers: frames are
//! complete in both directions, and each received frame fills one
//! receive chain. Offered: VERSION_1, MAC, STATUS (link up), EVENT_IDX,
//! INDIRECT_DESC.
//!
//! With a forced VPN ([`VpnLink`], attached with [`Net::attach_vpn`]),
//! allowed frames for the tunnel's routes go to WireGuard instead of the
//! TAP, and frames from the tunnel join the TAP's on the way in, through
//! the same inbound filter.

mod backend;
mod filter;
mod tap;
mod vpn_link;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};

pub use backend::NetBackend;
pub use filter::{AllowAll, FrameFilter, PolicyFilter};
pub use tap::{check_interface_name, InterfaceNameError, Tap, TapError};
pub use vpn_link::{TunnelRead, VpnLink, VpnLinkError};

use super::{
    ActivateError, Activation, QueueWorker, VirtioDevice, F_EVENT_IDX, F_INDIRECT_DESC,
    F_VERSION_1, QUEUE_MAX_SIZE,
};
use crate::confined::Confinement;
use worker::{DeviceParts, NetWorker};

const DEVICE_TYPE_NET: u16 = 1;
/// Queue numbers (virtio 1.x, 5.1.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// `struct virtio_net_hdr_v1`, which precedes every frame on both sides.
pub const VNET_HDR_LEN: usize = 12;
/// Largest header plus frame either direction handles: a 64 KiB frame
/// with Ethernet and VLAN headers, plus the virtio header.
pub const MAX_BUFFER_LEN: usize = 65_562;
/// `mac[6]` and `status` of `struct virtio_net_config`.
const CONFIG_LEN: usize = 8;

static NEXT_THREAD_INDEX: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("MAC {0} is a multicast address; the guest needs a unicast one (even first byte)")]
    MulticastMac(String),
}

/// Frame counts since the device was created, for the control API and
/// tests. Drops are counted by reason; none of them is logged per frame.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub tx_frames: AtomicU64,
    pub tx_filtered: AtomicU64,
    /// Chains the guest got wrong (shape, size, memory, header).
    pub tx_malformed: AtomicU64,
    /// Allowed frames the backend did not take.
    pub tx_backend_errors: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_filtered: AtomicU64,
    /// Frames from the backend too short, with offload requests we did
    /// not negotiate, or larger than the guest's receive buffers.
    pub rx_dropped: AtomicU64,
    /// Allowed frames the VPN took instead of the backend.
    pub tx_tunnelled: AtomicU64,
    /// Frames from the VPN tunnel (before the inbound filter).
    pub rx_tunnelled: AtomicU64,
}

impl NetCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Net {
    backend: Arc<dyn NetBackend>,
    filter: Arc<Mutex<Box<dyn FrameFilter>>>,
    counters: Arc<NetCounters>,
    vpn: Option<vpn_link::SharedVpnLink>,
    config: [u8; CONFIG_LEN],
    thread_name: String,
    confinement: Confinement,
}

impl Net {
    /// A network device on `tap`, showing the guest MAC `mac`, with
    /// every frame checked by `filter`.
    pub fn new(tap: Tap, mac: [u8; 6], filter: Box<dyn FrameFilter>) -> Result<Self, NetError> {
        Self::with_backend(Arc::new(tap), mac, filter)
    }

    /// As [`Net::new`], on any backend.
    pub fn with_backend(
        backend: Arc<dyn NetBackend>,
        mac: [u8; 6],
        filter: Box<dyn FrameFilter>,
    ) -> Result<Self, NetError> {
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(format_mac(&mac)));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        let index = NEXT_THREAD_INDEX.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            backend,
            filter: Arc::new(Mutex::new(filter)),
            counters: Arc::new(NetCounters::default()),
            vpn: None,
            config,
            thread_name: format!("virtio-net{index}"),
            confinement: Confinement::Unfiltered,
        })
    }

    /// Confine this device's I/O thread (its seccomp filter). Set it
    /// before adding the device to the PCI root, which starts the thread.
    pub fn set_confinement(&mut self, confinement: Confinement) {
        self.confinement = confinement;
    }

    /// Force the tunnel's routes through `link`. Set it before adding the
    /// device to the PCI root.
    pub fn attach_vpn(&mut self, link: VpnLink) {
        self.vpn = Some(Arc::new(Mutex::new(link)));
    }

    /// Name of the I/O thread this device runs ("virtio-netN").
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }

    /// The device's frame counters; they stay valid across guest resets.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1
            | F_EVENT_IDX
            | F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is the VMM's to choose (anti-spoofing rules rely on it).
        log::debug!("virtio-net: ignored config write at {offset:#x}");
    }

    fn io_thread_name(&self) -> String {
        self.thread_name.clone()
    }

    fn io_thread_confinement(&self) -> Confinement {
        self.confinement
    }

    fn activate(&mut self, activation: Activation) -> Result<Box<dyn QueueWorker>, ActivateError> {
        let mut rx = None;
        let mut tx = None;
        for queue in activation.queues {
            match queue.index {
                RX_QUEUE => rx = Some(queue),
                TX_QUEUE => tx = Some(queue),
                _ => {}
            }
        }
        let missing = |index| ActivateError::BadQueue {
            index,
            reason: "virtio-net needs both its receive and transmit queue enabled".into(),
        };
        let rx = rx.ok_or_else(|| missing(RX_QUEUE))?;
        let tx = tx.ok_or_else(|| missing(TX_QUEUE))?;
        Ok(Box::new(NetWorker::new(
            activation.mem,
            rx,
            tx,
            activation.interrupt,
            DeviceParts {
                backend: self.backend.clone(),
                filter: self.filter.clone(),
                counters: self.counters.clone(),
                vpn: self.vpn.clone(),
            },
        )))
    }

    fn reset(&mut self) {
        // Per-activation state (queues, a frame waiting for a receive
        // buffer) lives in the worker, which is gone.
    }
}

#[cfg(test)]
mod tests;
