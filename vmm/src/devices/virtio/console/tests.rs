//! virtio-console through the PCI transport: the test plays the guest's
//! driver (four rings programmed through the BAR, control messages and
//! data in descriptor chains, kicks through the doorbells) and the host
//! thread at the port's other end.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_driver::{Segment, TestDriver, DESC_F_NEXT};
use crate::devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};

const RING_SIZE: u16 = 256;
const ALL_FEATURES: u64 = F_VERSION_1 | F_INDIRECT_DESC | F_MULTIPORT;
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;
const PORT_NAME_EVENT: u16 = 7;

/// One split virtqueue (the shared test driver only knows queue 0).
struct Ring {
    index: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
}

impl Ring {
    fn new(index: u16) -> Self {
        let base = 0x20000 + u64::from(index) * 0x4000;
        Self {
            index,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
        }
    }

    fn program(&self, driver: &TestDriver) {
        driver.write_guest(self.desc, &[0u8; 0x3000]);
        driver.common_write(0x16, u64::from(self.index), 2);
        assert_eq!(driver.common_read(0x18, 2), u64::from(RING_SIZE));
        driver.common_write(0x1a, 1, 2);
        for (offset, address) in [(0x20, self.desc), (0x28, self.avail), (0x30, self.used)] {
            driver.common_write(offset, address & 0xffff_ffff, 4);
            driver.common_write(offset + 4, address >> 32, 4);
        }
        driver.common_write(0x1c, 1, 2);
    }

    /// Put `segments` in the ring as one chain, publish it and kick.
    fn push(&mut self, driver: &TestDriver, segments: &[Segment]) -> u16 {
        let head = self.next_desc;
        for (i, &segment) in segments.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % RING_SIZE;
            let flags = if i + 1 < segments.len() {
                DESC_F_NEXT
            } else {
                0
            };
            driver.write_descriptor(self.desc, index, segment, flags, next);
            self.next_desc = next;
        }
        let slot = self.avail + 4 + u64::from(self.avail_idx % RING_SIZE) * 2;
        driver.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        driver
            .mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        let doorbell = driver.layout.notify
            + u64::from(self.index) * u64::from(driver.layout.notify_multiplier);
        assert!(driver.vm.ring_doorbell(doorbell), "no doorbell");
        head
    }

    fn try_used(&mut self, driver: &TestDriver, timeout: Duration) -> Option<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let used_idx: u16 = driver.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            if used_idx != self.seen_used {
                break;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let element = self.used + 4 + u64::from(self.seen_used % RING_SIZE) * 8;
        self.seen_used = self.seen_used.wrapping_add(1);
        let id: u32 = driver.mem.read_obj(GuestAddress(element)).unwrap();
        let len: u32 = driver.mem.read_obj(GuestAddress(element + 4)).unwrap();
        Some((id as u16, len))
    }

    fn wait_used(&mut self, driver: &TestDriver) -> (u16, u32) {
        self.try_used(driver, Duration::from_secs(10))
            .expect("the device did not return the chain")
    }

    fn assert_nothing_used(&mut self, driver: &TestDriver) {
        assert_eq!(self.try_used(driver, Duration::from_millis(100)), None);
    }
}

struct Harness {
    driver: TestDriver,
    port_rx: Ring,
    port_tx: Ring,
    control_rx: Ring,
    control_tx: Ring,
    host: PortEnd,
}

fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut message = id.to_le_bytes().to_vec();
    message.extend_from_slice(&event.to_le_bytes());
    message.extend_from_slice(&value.to_le_bytes());
    message
}

impl Harness {
    fn new() -> Self {
        Self::with_features(ALL_FEATURES)
    }

    fn with_features(features: u64) -> Self {
        let (device_end, host) = port_channel().unwrap();
        let driver = TestDriver::new(Box::new(VirtioConsole::new(device_end)));
        driver.enable_msix();
        let harness = Self {
            driver,
            port_rx: Ring::new(PORT_RX),
            port_tx: Ring::new(PORT_TX),
            control_rx: Ring::new(CONTROL_RX),
            control_tx: Ring::new(CONTROL_TX),
            host,
        };
        let d = &harness.driver;
        d.set_status(0);
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = d.device_features() & features;
        d.common_write(0x08, 0, 4);
        d.common_write(0x0c, features & 0xffff_ffff, 4);
        d.common_write(0x08, 1, 4);
        d.common_write(0x0c, features >> 32, 4);
        let negotiating = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        d.set_status(negotiating);
        for ring in [
            &harness.port_rx,
            &harness.port_tx,
            &harness.control_rx,
            &harness.control_tx,
        ] {
            ring.program(d);
        }
        d.set_status(negotiating | STATUS_DRIVER_OK);
        harness
    }

    fn guest_bytes(&mut self, bytes: &[u8]) -> Segment {
        let address = self.driver.alloc(bytes.len() as u64);
        self.driver.write_guest(address, bytes);
        (address, bytes.len() as u32, false)
    }

    fn guest_buffer(&mut self, len: u32) -> Segment {
        (self.driver.alloc(u64::from(len)), len, true)
    }

    /// The driver sends a control message and the device takes it.
    fn send_control(&mut self, message: &[u8]) {
        let segment = self.guest_bytes(message);
        let head = self.control_tx.push(&self.driver, &[segment]);
        assert_eq!(self.control_tx.wait_used(&self.driver), (head, 0));
    }

    /// Posts a control receive buffer and returns what the device put
    /// there.
    fn receive_control(&mut self) -> Vec<u8> {
        let buffer = self.guest_buffer(4096);
        let head = self.control_rx.push(&self.driver, &[buffer]);
        let (used, len) = self.control_rx.wait_used(&self.driver);
        assert_eq!(used, head);
        self.driver.read_guest(buffer.0, len as usize)
    }

    /// The guest's agent opens the port.
    fn open(&mut self) {
        self.send_control(&control(0, PORT_OPEN, 1));
        wait_for(|| self.host.is_guest_open());
    }

    /// The guest writes `bytes` and the device returns the chain.
    fn guest_write(&mut self, bytes: &[u8]) {
        let segment = self.guest_bytes(bytes);
        let head = self.port_tx.push(&self.driver, &[segment]);
        assert_eq!(self.port_tx.wait_used(&self.driver), (head, 0));
    }

    /// Posts a receive buffer of `len` bytes and returns what arrived.
    fn guest_read(&mut self, len: u32) -> Vec<u8> {
        let buffer = self.guest_buffer(len);
        let head = self.port_rx.push(&self.driver, &[buffer]);
        let (used, written) = self.port_rx.wait_used(&self.driver);
        assert_eq!(used, head);
        self.driver.read_guest(buffer.0, written as usize)
    }

    /// Everything the host end has from the guest within a short while.
    fn host_read_all(&self, expected: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < expected && Instant::now() < deadline {
            let n = self.host.read(&mut buf);
            out.extend_from_slice(&buf[..n]);
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        out
    }
}

fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in time");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn fd_readable(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & libc::POLLIN != 0
}

#[test]
fn offers_multiport_with_one_port() {
    let harness = Harness::new();
    let d = &harness.driver;
    assert_ne!(d.status() & STATUS_DRIVER_OK, 0);
    assert_ne!(d.device_features() & F_MULTIPORT, 0);
    assert_eq!(d.read_bar(d.layout.device + 4, 4), 1, "max_nr_ports");
    assert_eq!(d.read_bar(d.layout.device, 4), 0, "no console size");
}

#[test]
fn without_multiport_there_is_no_port() {
    let harness = Harness::with_features(F_VERSION_1);
    assert_ne!(harness.driver.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn the_control_handshake_names_the_port_and_opens_the_host_side() {
    let mut h = Harness::new();
    let mut name = control(0, PORT_NAME_EVENT, 1);
    name.extend_from_slice(b"com.redhat.spice.0");
    // The name follows the announcement at once (udev's "add" rule for
    // the agent needs it then), and again after PORT_READY.
    h.send_control(&control(0, DEVICE_READY, 1));
    assert_eq!(h.receive_control(), control(0, DEVICE_ADD, 1));
    assert_eq!(h.receive_control(), name);
    assert_eq!(h.receive_control(), control(0, PORT_OPEN, 1));
    h.send_control(&control(0, PORT_READY, 1));
    assert_eq!(h.receive_control(), name);
    assert_eq!(h.receive_control(), control(0, PORT_OPEN, 1));
    assert!(!h.host.is_guest_open());
    h.open();
    assert_eq!(h.host.guest_opens(), 1);
    // A failed DEVICE_READY or PORT_READY is answered with nothing.
    h.send_control(&control(0, DEVICE_READY, 0));
    h.send_control(&control(0, PORT_READY, 0));
    let buffer = h.guest_buffer(4096);
    h.control_rx.push(&h.driver, &[buffer]);
    h.control_rx.assert_nothing_used(&h.driver);
}

#[test]
fn bytes_flow_both_ways_once_the_guest_opens_the_port() {
    let mut h = Harness::new();
    assert_eq!(h.host.write(b"early"), 0, "nothing for a closed port");
    assert_eq!(h.host.writable(), 0);
    h.open();
    assert!(fd_readable(h.host.readable_fd()), "the open is news");
    assert_eq!(h.host.read(&mut [0; 8]), 0);
    assert!(!fd_readable(h.host.readable_fd()));

    assert_eq!(h.host.write(b"hello guest"), 11);
    assert_eq!(h.guest_read(4), b"hell");
    assert_eq!(h.guest_read(4096), b"o guest");

    h.guest_write(b"hello ");
    h.guest_write(b"host");
    assert!(fd_readable(h.host.readable_fd()));
    assert_eq!(h.host_read_all(10), b"hello host");
    assert!(!fd_readable(h.host.readable_fd()));
}

#[test]
fn closing_the_port_drops_what_the_host_queued() {
    let mut h = Harness::new();
    h.open();
    assert_eq!(h.host.write(b"stale"), 5);
    h.send_control(&control(0, PORT_OPEN, 0));
    wait_for(|| !h.host.is_guest_open());
    assert_eq!(h.host.write(b"x"), 0);
    let buffer = h.guest_buffer(64);
    h.port_rx.push(&h.driver, &[buffer]);
    h.port_rx.assert_nothing_used(&h.driver);
    h.open();
    assert_eq!(h.host.guest_opens(), 2);
    assert_eq!(h.host.write(b"fresh"), 5);
    let (_, len) = h.port_rx.wait_used(&h.driver);
    assert_eq!(h.driver.read_guest(buffer.0, len as usize), b"fresh");
}

#[test]
fn a_guest_writing_faster_than_the_host_reads_waits_in_the_ring() {
    let mut h = Harness::new();
    h.open();
    let chunk = 64 << 10;
    let data = h.guest_bytes(&vec![0x5a; chunk]);
    let fits = PORT_BUFFER_LIMIT / chunk;
    for _ in 0..fits {
        let head = h.port_tx.push(&h.driver, &[data]);
        assert_eq!(h.port_tx.wait_used(&h.driver), (head, 0));
    }
    let waiting = h.port_tx.push(&h.driver, &[data]);
    h.port_tx.assert_nothing_used(&h.driver);
    // The host reads; the waiting chain goes through without a kick.
    let mut buf = vec![0u8; chunk];
    assert_eq!(h.host.read(&mut buf), chunk);
    assert_eq!(h.port_tx.wait_used(&h.driver), (waiting, 0));
    let rest = h.host_read_all(fits * chunk);
    assert_eq!(rest.len(), fits * chunk);
    assert!(rest.iter().all(|&b| b == 0x5a));

    // The host side is bounded too.
    let big = vec![1u8; PORT_BUFFER_LIMIT + 10];
    assert_eq!(h.host.write(&big), PORT_BUFFER_LIMIT);
    assert_eq!(h.host.write(b"more"), 0);
}

#[test]
fn hostile_transmit_chains_are_returned_unsent() {
    let mut h = Harness::new();
    h.open();
    // Larger than any write the driver makes.
    let huge = h.guest_bytes(&vec![7; (64 << 10) + 1]);
    let head = h.port_tx.push(&h.driver, &[huge]);
    assert_eq!(h.port_tx.wait_used(&h.driver), (head, 0));
    // A device-writable buffer in a transmit chain.
    let text = h.guest_bytes(b"abc");
    let writable = h.guest_buffer(16);
    let head = h.port_tx.push(&h.driver, &[text, writable]);
    assert_eq!(h.port_tx.wait_used(&h.driver), (head, 0));
    // Outside guest memory.
    let head = h.port_tx.push(&h.driver, &[(1 << 40, 16, false)]);
    assert_eq!(h.port_tx.wait_used(&h.driver), (head, 0));
    h.guest_write(b"ok");
    assert_eq!(h.host_read_all(2), b"ok");
    let mut buf = [0u8; 16];
    assert_eq!(h.host.read(&mut buf), 0, "nothing else arrived");
}

#[test]
fn hostile_receive_and_control_buffers_are_survived() {
    let mut h = Harness::new();
    h.open();
    assert_eq!(h.host.write(b"data"), 4);
    // A device-readable receive buffer gets nothing; the bytes wait.
    let readable = h.guest_bytes(b"xxxx");
    let head = h.port_rx.push(&h.driver, &[readable]);
    assert_eq!(h.port_rx.wait_used(&h.driver), (head, 0));
    assert_eq!(h.guest_read(64), b"data");

    // Short, unknown and other-port control messages change nothing.
    h.send_control(&[1, 2, 3]);
    h.send_control(&control(0, 99, 1));
    h.send_control(&control(5, PORT_READY, 1));
    h.send_control(&control(5, PORT_OPEN, 0));
    assert!(h.host.is_guest_open());
    let buffer = h.guest_buffer(4096);
    h.control_rx.push(&h.driver, &[buffer]);
    h.control_rx.assert_nothing_used(&h.driver);

    // A control buffer too small for the answer is returned empty and
    // the answer waits for the next one.
    h.send_control(&control(0, DEVICE_READY, 1));
    assert_eq!(
        h.control_rx.wait_used(&h.driver).1,
        control(0, DEVICE_ADD, 1).len() as u32
    );
    let small = h.guest_buffer(4);
    let head = h.control_rx.push(&h.driver, &[small]);
    assert_eq!(h.control_rx.wait_used(&h.driver), (head, 0));
    let mut name = control(0, PORT_NAME_EVENT, 1);
    name.extend_from_slice(b"com.redhat.spice.0");
    assert_eq!(h.receive_control(), name);
}

#[test]
fn control_answers_nobody_reads_are_bounded() {
    let mut h = Harness::new();
    for _ in 0..40 {
        h.send_control(&control(0, DEVICE_READY, 1));
    }
    let mut answered = 0;
    let buffers: Vec<Segment> = (0..40).map(|_| h.guest_buffer(64)).collect();
    for buffer in buffers {
        h.control_rx.push(&h.driver, &[buffer]);
    }
    while h
        .control_rx
        .try_used(&h.driver, Duration::from_millis(200))
        .is_some()
    {
        answered += 1;
    }
    assert_eq!(answered, 16);
}
