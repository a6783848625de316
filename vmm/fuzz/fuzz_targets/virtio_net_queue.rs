//! virtio-net transmit and receive over hostile guest memory, with the
//! real policy packet filter between the queues and a recording backend
//! (the TAP's place).
//!
//! Invariants, beyond "no panic":
//! - every frame that reaches the backend is the frame the filter just
//!   passed, byte for byte, sent from the guest's MAC;
//! - its virtio header is all zeros (the guest's header never leaks);
//! - every frame the filter passes outbound reaches the backend;
//! - the device delivers no more frames to the guest than the filter
//!   passed inbound, and counts every backend write as a sent frame.
//!
//! Input: a 17-byte header, operation records, then guest memory.
//!   0: bit 0 EVENT_IDX, bit 1 first two regions adjacent, bits 2-3
//!      region count - 1, bit 4 no IPv4 address;
//!   1, 2: receive and transmit queue size exponents;
//!   3-14: receive then transmit descriptor table, available and used ring
//!         addresses (u16 each); 15-16: length of the operation records.
//! Operations ([kind u8][length u16][bytes]), by kind % 5: 0 queue a
//! frame (virtio header included) on the backend, 1 kick the transmit
//! queue, 2 kick the receive queue, 3 backend readable, 4 write guest
//! memory ([address u16][bytes]).

#![no_main]

#[path = "common/input.rs"]
mod input;
#[path = "common/memory.rs"]
mod memory;
// Shared with the filter targets of the netfilter crate.
#[path = "../../../netfilter/fuzz/fuzz_targets/common/policy.rs"]
mod policy;
#[path = "common/queue.rs"]
mod queue;
#[path = "common/vm.rs"]
mod vm;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use libfuzzer_sys::fuzz_target;
use netfilter::{Filter, FilterConfig};
use securevm::devices::virtio::net::{
    FrameFilter, Net, NetBackend, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
use securevm::devices::virtio::{
    Activation, ActiveQueue, MsixTable, VirtioDevice, VirtioInterrupt, F_EVENT_IDX,
    F_INDIRECT_DESC, F_VERSION_1,
};
use securevm::network::PolicyFilter;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use input::Input;
use memory::guest_memory;
use policy::policy;
use queue::{build_queue, QueueSetup};
use vm::RecordingVm;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Source MAC offset in a frame behind its virtio header.
const SOURCE_MAC: std::ops::Range<usize> = VNET_HDR_LEN + 6..VNET_HDR_LEN + 12;
/// The worker's event token for "the backend has frames to read".
const BACKEND_TOKEN: u32 = 0;

/// What the filter let through, for the backend to check against.
#[derive(Default)]
struct Ledger {
    /// The outbound frame passed last, not yet seen by the backend.
    outbound_pending: Option<Vec<u8>>,
    inbound_passed: u64,
    backend_writes: u64,
    /// Frames for the backend to hand to the device.
    incoming: VecDeque<Vec<u8>>,
}

type SharedLedger = Arc<Mutex<Ledger>>;

fn lock(ledger: &SharedLedger) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// The real policy filter, with its verdicts written down.
struct RecordingFilter {
    inner: PolicyFilter,
    ledger: SharedLedger,
}

impl FrameFilter for RecordingFilter {
    fn outbound(&mut self, frame: &[u8]) -> bool {
        let mut ledger = lock(&self.ledger);
        assert!(
            ledger.outbound_pending.is_none(),
            "a frame the filter passed never reached the backend"
        );
        let pass = self.inner.outbound(frame);
        if pass {
            ledger.outbound_pending = Some(frame.to_vec());
        }
        pass
    }

    fn inbound(&mut self, frame: &[u8]) -> bool {
        let pass = self.inner.inbound(frame);
        if pass {
            lock(&self.ledger).inbound_passed += 1;
        }
        pass
    }
}

struct RecordingBackend {
    ledger: SharedLedger,
    readable: EventFd,
}

impl NetBackend for RecordingBackend {
    fn fd(&self) -> RawFd {
        self.readable.as_raw_fd()
    }

    fn read_frame(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let frame = lock(&self.ledger)
            .incoming
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        // A TAP truncates a datagram to the buffer, and so do we.
        let len = frame.len().min(buffer.len());
        buffer[..len].copy_from_slice(&frame[..len]);
        Ok(len)
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        let mut ledger = lock(&self.ledger);
        assert!(frame.len() >= VNET_HDR_LEN, "frame without a virtio header");
        assert!(
            frame[..VNET_HDR_LEN].iter().all(|&byte| byte == 0),
            "guest virtio header reached the backend: {:02x?}",
            &frame[..VNET_HDR_LEN]
        );
        let passed = ledger
            .outbound_pending
            .take()
            .expect("a frame the filter did not pass reached the backend");
        assert!(
            passed == frame[VNET_HDR_LEN..],
            "the backend got another frame than the filter passed"
        );
        assert_eq!(
            frame.get(SOURCE_MAC),
            Some(&GUEST_MAC[..]),
            "frame from a foreign MAC sent"
        );
        ledger.backend_writes += 1;
        Ok(frame.len())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let event_idx = flags & 1 != 0;
    let rx_exponent = input.u8();
    let tx_exponent = input.u8();
    let mut setups = [rx_exponent, tx_exponent].map(|size_exponent| QueueSetup {
        size_exponent,
        desc: 0,
        avail: 0,
        used: 0,
        event_idx,
    });
    for setup in &mut setups {
        setup.desc = u64::from(input.u16());
        setup.avail = u64::from(input.u16());
        setup.used = u64::from(input.u16());
    }
    let operations_len = usize::from(input.u16());
    let mut operations = Input::new(input.bytes(operations_len));
    let mem = Arc::new(guest_memory(
        usize::from((flags >> 2) & 3) + 1,
        flags & 2 != 0,
        input.rest(),
    ));
    let (Some(rx), Some(tx)) = (build_queue(&setups[0], &mem), build_queue(&setups[1], &mem))
    else {
        return;
    };

    let no_ipv4 = flags & 0x10 != 0;
    let policy = policy(false);
    let (filter, _control) = Filter::new(FilterConfig {
        guest_mac: GUEST_MAC,
        guest_ipv4: if no_ipv4 {
            Vec::new()
        } else {
            vec!["10.0.0.2".parse().expect("literal address")]
        },
        guest_ipv6: vec!["fd00::2".parse().expect("literal address")],
        conntrack_capacity: 16,
        policy: &policy,
    });
    let ledger = SharedLedger::default();
    let backend = Arc::new(RecordingBackend {
        ledger: ledger.clone(),
        readable: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    });
    let recording_filter = RecordingFilter {
        inner: PolicyFilter::new(filter),
        ledger: ledger.clone(),
    };
    let mut net =
        Net::with_backend(backend, GUEST_MAC, Box::new(recording_filter)).expect("unicast MAC");
    let counters = net.counters();
    let vm = Arc::new(RecordingVm::default());
    let msix = Arc::new(Mutex::new(MsixTable::new(3, vm)));
    let features = F_VERSION_1 | F_INDIRECT_DESC | if event_idx { F_EVENT_IDX } else { 0 };
    let mut worker = net
        .activate(Activation {
            mem: mem.clone(),
            features,
            queues: vec![
                ActiveQueue {
                    index: RX_QUEUE,
                    queue: rx,
                    msix_vector: 1,
                },
                ActiveQueue {
                    index: TX_QUEUE,
                    queue: tx,
                    msix_vector: 2,
                },
            ],
            interrupt: Arc::new(VirtioInterrupt::new(msix)),
        })
        .expect("both queues given");

    while !operations.is_empty() {
        let kind = operations.u8() % 5;
        let len = usize::from(operations.u16());
        let mut body = Input::new(operations.bytes(len));
        match kind {
            0 => lock(&ledger).incoming.push_back(body.rest().to_vec()),
            1 => {
                worker.process_queue(usize::from(TX_QUEUE));
            }
            2 => {
                worker.process_queue(usize::from(RX_QUEUE));
            }
            3 => worker.process_event(BACKEND_TOKEN),
            _ => {
                let address = GuestAddress(u64::from(body.u16()));
                let _ = mem.write_slice(body.rest(), address);
            }
        }
    }

    let ledger = lock(&ledger);
    assert!(
        ledger.outbound_pending.is_none(),
        "a frame the filter passed never reached the backend"
    );
    assert_eq!(
        counters.tx_frames.load(Ordering::Relaxed),
        ledger.backend_writes,
        "sent frames miscounted"
    );
    assert!(
        counters.rx_frames.load(Ordering::Relaxed) <= ledger.inbound_passed,
        "more frames delivered to the guest than the filter passed"
    );
});
