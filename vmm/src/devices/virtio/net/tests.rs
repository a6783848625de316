//! virtio-net through the PCI transport: the test plays the guest driver
//! (both queues programmed through the BAR, descriptor chains in guest
//! memory, kicks through the doorbells) and the host network (the other
//! end of a datagram socket pair standing in for the TAP).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_NEEDS_CSUM,
};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::io_thread::tests::thread_cpu_ticks;
use crate::devices::virtio::test_driver::{
    Segment, TestDriver, DESC_F_INDIRECT, DESC_F_NEXT, MEM_SIZE,
};
use crate::devices::virtio::{
    IoGate, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const RING_SIZE: u16 = 256;
const CONFIG_MSI: (u64, u32) = (0xfee0_0000, 0x40);
const RX_MSI: (u64, u32) = (0xfee0_1000, 0x41);
const TX_MSI: (u64, u32) = (0xfee0_2000, 0x42);
/// What a Linux guest without mergeable buffers posts per receive buffer.
const RX_BUFFER_LEN: u32 = (VNET_HDR_LEN + 1514) as u32;
/// What the data-path tests negotiate; EVENT_IDX has its own test.
const BASIC_FEATURES: u64 = F_VERSION_1 | F_INDIRECT_DESC | 1 << VIRTIO_NET_F_MAC;
/// A local experimental EtherType, so test frames are recognisable.
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// One split virtqueue the test drives itself (the shared test driver
/// only knows queue 0).
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
    fn new(index: u16, base: u64) -> Self {
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

    fn program(&self, driver: &TestDriver, vector: u16) {
        driver.write_guest(self.desc, &[0u8; 0x3000]);
        driver.common_write(0x16, u64::from(self.index), 2);
        assert_eq!(driver.common_read(0x18, 2), u64::from(RING_SIZE));
        driver.common_write(0x1a, u64::from(vector), 2);
        assert_eq!(driver.common_read(0x1a, 2), u64::from(vector));
        for (offset, address) in [(0x20, self.desc), (0x28, self.avail), (0x30, self.used)] {
            driver.common_write(offset, address & 0xffff_ffff, 4);
            driver.common_write(offset + 4, address >> 32, 4);
        }
        driver.common_write(0x1c, 1, 2);
    }

    fn write_descriptor(
        &self,
        driver: &TestDriver,
        index: u16,
        segment: Segment,
        flags: u16,
        next: u16,
    ) {
        driver.write_descriptor(self.desc, index, segment, flags, next);
    }

    /// Put `segments` in the ring as one chain and publish it.
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
            self.write_descriptor(driver, index, segment, flags, next);
            self.next_desc = next;
        }
        self.publish(driver, head);
        head
    }

    /// Publish a chain made of the indirect `table` alone.
    fn push_indirect(&mut self, driver: &TestDriver, table: Segment) -> u16 {
        let head = self.next_desc;
        self.write_descriptor(driver, head, table, DESC_F_INDIRECT, 0);
        self.push_raw(driver, head, 1);
        head
    }

    /// Publish a chain whose `count` descriptors the test wrote itself.
    fn push_raw(&mut self, driver: &TestDriver, head: u16, count: u16) {
        self.next_desc = (self.next_desc + count) % RING_SIZE;
        self.publish(driver, head);
    }

    fn publish(&mut self, driver: &TestDriver, head: u16) {
        let slot = self.avail + 4 + u64::from(self.avail_idx % RING_SIZE) * 2;
        driver.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        driver
            .mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    fn kick(&self, driver: &TestDriver) {
        let doorbell = driver.layout.notify
            + u64::from(self.index) * u64::from(driver.layout.notify_multiplier);
        assert!(
            driver.vm.ring_doorbell(doorbell),
            "no doorbell at {doorbell:#x}"
        );
    }

    /// EVENT_IDX: interrupt once the used index passes `idx`.
    fn set_used_event(&self, driver: &TestDriver, idx: u16) {
        let at = self.avail + 4 + u64::from(RING_SIZE) * 2;
        driver.mem.write_obj(idx, GuestAddress(at)).unwrap();
    }

    /// EVENT_IDX: the avail index at which the device wants a kick.
    fn avail_event(&self, driver: &TestDriver) -> u16 {
        let at = self.used + 4 + u64::from(RING_SIZE) * 8;
        driver.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn used_idx(&self, driver: &TestDriver) -> u16 {
        driver.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    fn try_used(&mut self, driver: &TestDriver, timeout: Duration) -> Option<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        while self.used_idx(driver) == self.seen_used {
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

/// A frame that a filter can recognise by its last byte.
fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&MAC);
    frame[12..14].copy_from_slice(&TEST_ETHERTYPE);
    for (i, byte) in frame.iter_mut().enumerate().skip(14) {
        *byte = i as u8;
    }
    frame[len - 1] = tag;
    frame
}

fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes.extend_from_slice(frame);
    bytes
}

/// Refuses frames whose last byte is [`DENIED_TAG`], in both directions.
struct DenyTag;
const DENIED_TAG: u8 = 0xdd;

impl FrameFilter for DenyTag {
    fn outbound(&mut self, frame: &[u8]) -> bool {
        frame.last() != Some(&DENIED_TAG)
    }

    fn inbound(&mut self, frame: &[u8]) -> bool {
        frame.last() != Some(&DENIED_TAG)
    }
}

struct Harness {
    driver: TestDriver,
    rx: Ring,
    tx: Ring,
    host: UnixDatagram,
    counters: Arc<NetCounters>,
    thread_name: String,
}

impl Harness {
    fn new(filter: Box<dyn FrameFilter>) -> Self {
        Self::build(filter, Confinement::Unfiltered, BASIC_FEATURES)
    }

    fn build(filter: Box<dyn FrameFilter>, confinement: Confinement, features: u64) -> Self {
        Self::build_with_vpn(filter, confinement, features, None)
    }

    fn build_with_vpn(
        filter: Box<dyn FrameFilter>,
        confinement: Confinement,
        features: u64,
        vpn: Option<VpnLink>,
    ) -> Self {
        Self::build_gated(filter, confinement, features, vpn, IoGate::default())
    }

    /// A harness whose device I/O works through `gate` (as the VM's
    /// vCPU control shares it).
    fn build_gated(
        filter: Box<dyn FrameFilter>,
        confinement: Confinement,
        features: u64,
        vpn: Option<VpnLink>,
        gate: IoGate,
    ) -> Self {
        let (device_end, host) = UnixDatagram::pair().unwrap();
        device_end.set_nonblocking(true).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut net = Net::with_backend(Arc::new(device_end), MAC, filter).unwrap();
        net.set_confinement(confinement);
        if let Some(link) = vpn {
            net.attach_vpn(link);
        }
        let counters = net.counters();
        let thread_name = net.thread_name().to_string();
        let driver = TestDriver::with_io_gate(Box::new(net), gate);
        let mut harness = Self {
            driver,
            rx: Ring::new(RX_QUEUE, 0x20000),
            tx: Ring::new(TX_QUEUE, 0x30000),
            host,
            counters,
            thread_name,
        };
        harness.enable_msix();
        let status = harness.init(features);
        assert_ne!(status & STATUS_DRIVER_OK, 0, "device refused DRIVER_OK");
        harness
    }

    fn enable_msix(&self) {
        let d = &self.driver;
        let control = d.layout.msix_capability + 2;
        d.config_write(control, d.config_read(control, 2) | 1 << 15, 2);
        for (vector, (address, data)) in [(0u64, CONFIG_MSI), (1, RX_MSI), (2, TX_MSI)] {
            let entry = d.layout.msix_table + vector * 16;
            d.write_bar(entry, address & 0xffff_ffff, 4);
            d.write_bar(entry + 4, address >> 32, 4);
            d.write_bar(entry + 8, u64::from(data), 4);
            d.write_bar(entry + 12, 0, 4);
        }
    }

    /// Reset, negotiate, program both rings, DRIVER_OK.
    fn init(&mut self, wanted_features: u64) -> u8 {
        let d = &self.driver;
        d.set_status(0);
        d.set_status(STATUS_ACKNOWLEDGE);
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = d.device_features() & wanted_features;
        d.common_write(0x08, 0, 4);
        d.common_write(0x0c, features & 0xffff_ffff, 4);
        d.common_write(0x08, 1, 4);
        d.common_write(0x0c, features >> 32, 4);
        let negotiating = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        d.set_status(negotiating);
        if d.status() & STATUS_FEATURES_OK == 0 {
            return d.status();
        }
        d.common_write(0x10, 0, 2);
        self.rx = Ring::new(RX_QUEUE, self.rx.desc);
        self.tx = Ring::new(TX_QUEUE, self.tx.desc);
        self.rx.program(d, 1);
        self.tx.program(d, 2);
        d.set_status(negotiating | STATUS_DRIVER_OK);
        d.status()
    }

    fn guest_bytes(&mut self, bytes: &[u8]) -> Segment {
        let address = self.driver.alloc(bytes.len() as u64);
        self.driver.write_guest(address, bytes);
        (address, bytes.len() as u32, false)
    }

    fn rx_buffer(&mut self, len: u32) -> Segment {
        (self.driver.alloc(u64::from(len)), len, true)
    }

    /// The guest sends `frame` (header and frame in two descriptors, as
    /// Linux does) and waits for the chain to come back.
    fn transmit(&mut self, frame: &[u8]) {
        let header = self.guest_bytes(&[0u8; VNET_HDR_LEN]);
        let body = self.guest_bytes(frame);
        let head = self.tx.push(&self.driver, &[header, body]);
        self.tx.kick(&self.driver);
        assert_eq!(self.tx.wait_used(&self.driver), (head, 0));
    }

    /// Post one receive buffer and kick.
    fn post_rx(&mut self, len: u32) -> (u16, Segment) {
        let buffer = self.rx_buffer(len);
        let head = self.rx.push(&self.driver, &[buffer]);
        self.rx.kick(&self.driver);
        (head, buffer)
    }

    /// What the host side received next, if anything within `timeout`.
    fn host_receive(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.host.set_read_timeout(Some(timeout)).unwrap();
        let mut buffer = vec![0u8; MAX_BUFFER_LEN + 100];
        match self.host.recv(&mut buffer) {
            Ok(len) => Some(buffer[..len].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("host socket: {e}"),
        }
    }

    fn host_send(&self, frame: &[u8]) {
        self.host.send(&with_header(frame)).unwrap();
    }

    /// Receive into a fresh buffer and return (header, frame).
    fn receive(&mut self) -> (Vec<u8>, Vec<u8>) {
        let (head, buffer) = self.post_rx(RX_BUFFER_LEN);
        let (used_head, len) = self.rx.wait_used(&self.driver);
        assert_eq!(used_head, head);
        let bytes = self.driver.read_guest(buffer.0, len as usize);
        (
            bytes[..VNET_HDR_LEN].to_vec(),
            bytes[VNET_HDR_LEN..].to_vec(),
        )
    }

    fn counter(&self, counter: impl Fn(&NetCounters) -> &AtomicU64) -> u64 {
        counter(&self.counters).load(Ordering::Relaxed)
    }
}

fn expected_rx_header() -> Vec<u8> {
    let mut header = vec![0u8; VNET_HDR_LEN];
    header[10] = 1;
    header
}

#[test]
fn offers_mac_and_link_status_and_no_offloads() {
    let harness = Harness::new(Box::new(AllowAll));
    let features = harness.driver.device_features();
    for bit in [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS] {
        assert_ne!(features & 1 << bit, 0, "feature {bit}");
    }
    assert_ne!(features & F_VERSION_1, 0);
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_eq!(features & 1 << bit, 0, "feature {bit} is not offered");
    }
    let device = harness.driver.layout.device;
    let mac: Vec<u8> = (0..6)
        .map(|i| harness.driver.read_bar(device + i, 1) as u8)
        .collect();
    assert_eq!(mac, MAC);
    assert_eq!(
        harness.driver.read_bar(device + 6, 2),
        u64::from(VIRTIO_NET_S_LINK_UP)
    );
    // The guest cannot pick another MAC.
    harness.driver.write_bar(device, 0xee, 1);
    assert_eq!(harness.driver.read_bar(device, 1), 0x52);
    assert_eq!(
        harness.driver.config_read(0x02, 2),
        0x1041,
        "virtio-net PCI id"
    );
}

#[test]
fn transmitted_frame_reaches_the_backend_with_a_clean_header() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let sent = frame(60, 1);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    assert!(harness.driver.vm.wait_for_msis(1));
    assert_eq!(harness.driver.vm.msis(), vec![TX_MSI]);
    assert_eq!(harness.counter(|c| &c.tx_frames), 1);

    // One descriptor for header and frame works the same.
    let sent = frame(1514, 2);
    let one = harness.guest_bytes(&with_header(&sent));
    harness.tx.push(&harness.driver, &[one]);
    harness.tx.kick(&harness.driver);
    harness.tx.wait_used(&harness.driver);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
}

#[test]
fn malformed_transmit_chains_are_returned_and_never_sent() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let good = frame(60, 1);
    let header = harness.guest_bytes(&[0u8; VNET_HDR_LEN]);
    let body = harness.guest_bytes(&good);
    let writable = harness.rx_buffer(64);
    let mut csum_header = [0u8; VNET_HDR_LEN];
    csum_header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let csum_header = harness.guest_bytes(&csum_header);
    let short = harness.guest_bytes(&with_header(&good[..10]));
    let huge = (harness.driver.alloc(40_000), 40_000u32, false);
    let outside = (MEM_SIZE as u64 - 16, 64u32, false);
    let chains: Vec<Vec<Segment>> = vec![
        vec![header, body, writable],
        vec![csum_header, body],
        vec![short],
        vec![(header.0, 4, false)],
        vec![header, huge, huge],
        vec![header, outside],
    ];
    let count = chains.len() as u64;
    for chain in &chains {
        harness.tx.push(&harness.driver, chain);
    }
    // A chain whose descriptor points back at itself.
    let looping = harness.tx.next_desc;
    harness
        .tx
        .write_descriptor(&harness.driver, looping, header, DESC_F_NEXT, looping);
    harness.tx.push_raw(&harness.driver, looping, 1);
    harness.tx.kick(&harness.driver);
    for _ in 0..=count {
        assert_eq!(harness.tx.wait_used(&harness.driver).1, 0);
    }
    assert_eq!(harness.counter(|c| &c.tx_malformed), count + 1);
    assert_eq!(harness.host_receive(Duration::from_millis(100)), None);

    harness.transmit(&good);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&good))
    );
    let status = harness.driver.status();
    assert_eq!(
        status & STATUS_NEEDS_RESET,
        0,
        "guest mistakes do not stop the device"
    );
}

#[test]
fn indirect_transmit_chain_is_sent() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let sent = frame(200, 6);
    let header = harness.guest_bytes(&[0u8; VNET_HDR_LEN]);
    let body = harness.guest_bytes(&sent);
    let table = harness.driver.alloc(2 * 16);
    harness
        .driver
        .write_descriptor(table, 0, header, DESC_F_NEXT, 1);
    harness.driver.write_descriptor(table, 1, body, 0, 0);
    let head = harness.tx.next_desc;
    harness.tx.write_descriptor(
        &harness.driver,
        head,
        (table, 32, false),
        DESC_F_INDIRECT,
        0,
    );
    harness.tx.push_raw(&harness.driver, head, 1);
    harness.tx.kick(&harness.driver);
    assert_eq!(harness.tx.wait_used(&harness.driver), (head, 0));
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
}

impl Harness {
    /// An indirect table of `entries` descriptors chained in order,
    /// splitting the `len` bytes at `buffer` between them.
    fn indirect_table(&mut self, buffer: u64, len: u64, entries: u16, writable: bool) -> Segment {
        let table = self.driver.alloc(u64::from(entries) * 16);
        let count = u64::from(entries);
        for i in 0..entries {
            let start = len * u64::from(i) / count;
            let end = len * (u64::from(i) + 1) / count;
            let flags = if i + 1 < entries { DESC_F_NEXT } else { 0 };
            let segment = (buffer + start, (end - start) as u32, writable);
            self.driver
                .write_descriptor(table, i, segment, flags, i.wrapping_add(1));
        }
        (table, u32::from(entries) * 16, false)
    }
}

#[test]
fn chains_longer_than_the_ring_are_refused_on_both_queues() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let sent = frame(600, 8);
    let bytes = with_header(&sent);
    let len = bytes.len() as u64;
    for (entries, delivered) in [(RING_SIZE, true), (RING_SIZE + 1, false), (u16::MAX, false)] {
        let buffer = harness.guest_bytes(&bytes).0;
        let table = harness.indirect_table(buffer, len, entries, false);
        let head = harness.tx.push_indirect(&harness.driver, table);
        harness.tx.kick(&harness.driver);
        assert_eq!(harness.tx.wait_used(&harness.driver), (head, 0));
        let wait = Duration::from_millis(if delivered { 5000 } else { 100 });
        let expected = delivered.then(|| bytes.clone());
        assert_eq!(
            harness.host_receive(wait),
            expected,
            "{entries} descriptors"
        );
    }
    assert_eq!(harness.counter(|c| &c.tx_malformed), 2);
    assert_eq!(harness.counter(|c| &c.tx_frames), 1);

    // Receive: the over-long chains come back unused, the frame waits
    // for the one that is not.
    let rx_len = u64::from(RX_BUFFER_LEN);
    let mut refused = Vec::new();
    for entries in [RING_SIZE + 1, u16::MAX] {
        let buffer = harness.driver.alloc(rx_len);
        let table = harness.indirect_table(buffer, rx_len, entries, true);
        refused.push(harness.rx.push_indirect(&harness.driver, table));
    }
    let buffer = harness.driver.alloc(rx_len);
    let table = harness.indirect_table(buffer, rx_len, RING_SIZE, true);
    let good = harness.rx.push_indirect(&harness.driver, table);
    harness.rx.kick(&harness.driver);
    let received = frame(100, 9);
    harness.host_send(&received);
    for head in refused {
        assert_eq!(harness.rx.wait_used(&harness.driver), (head, 0));
    }
    let used = harness.rx.wait_used(&harness.driver);
    assert_eq!(used, (good, (VNET_HDR_LEN + received.len()) as u32));
    let bytes = harness
        .driver
        .read_guest(buffer + VNET_HDR_LEN as u64, received.len());
    assert_eq!(bytes, received);
}

/// xorshift64: deterministic noise for the robustness test.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random descriptors on both queues, with a frame waiting for every
/// receive attempt: the device returns chains, drops frames or asks for
/// a reset, but never stalls or panics, and works after a reset.
#[test]
fn random_descriptor_tables_never_break_the_device() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let mut noise = Noise(0x6e65_7420_7465_7374);
    let mut resets = 0;
    let mut outcomes = 0;
    for _ in 0..300 {
        let receive = noise.next() & 1 == 0;
        let ring = if receive {
            &mut harness.rx
        } else {
            &mut harness.tx
        };
        for _ in 0..8 {
            let slot = (noise.next() % u64::from(RING_SIZE)) as u16;
            let address = match noise.next() % 4 {
                0 => noise.next(),
                _ => 0x100000 + noise.next() % (MEM_SIZE as u64 - 0x100000),
            };
            let len = match noise.next() % 4 {
                0 => noise.next() as u32,
                1 => VNET_HDR_LEN as u32,
                2 => RX_BUFFER_LEN,
                _ => (noise.next() % 4096) as u32,
            };
            let flags = (noise.next() % 8) as u16;
            let next = (noise.next() % (u64::from(RING_SIZE) + 8)) as u16;
            ring.write_descriptor(&harness.driver, slot, (address, len, false), flags, next);
        }
        let before = ring.used_idx(&harness.driver);
        let head = (noise.next() % (u64::from(RING_SIZE) + 4)) as u16;
        ring.publish(&harness.driver, head);
        let dropped_before = harness.counter(|c| &c.rx_dropped);
        if receive {
            harness.host_send(&frame(60, 1));
        }
        let ring = if receive { &harness.rx } else { &harness.tx };
        ring.kick(&harness.driver);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if harness.driver.status() & STATUS_NEEDS_RESET != 0 {
                resets += 1;
                harness.enable_msix();
                assert_ne!(harness.init(BASIC_FEATURES) & STATUS_DRIVER_OK, 0);
                break;
            }
            let ring = if receive {
                &mut harness.rx
            } else {
                &mut harness.tx
            };
            if ring.used_idx(&harness.driver) != before {
                ring.seen_used = ring.used_idx(&harness.driver);
                outcomes += 1;
                break;
            }
            if harness.counter(|c| &c.rx_dropped) != dropped_before {
                outcomes += 1;
                break;
            }
            assert!(Instant::now() < deadline, "device stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(resets > 0, "out-of-range heads must have forced resets");
    assert!(outcomes > 0, "some chains must have been served");
    harness.enable_msix();
    assert_ne!(harness.init(BASIC_FEATURES) & STATUS_DRIVER_OK, 0);
    while harness.host_receive(Duration::from_millis(50)).is_some() {}
    let sent = frame(60, 2);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    harness.host_send(&sent);
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.receive().1 != sent {
        assert!(Instant::now() < deadline, "the device no longer receives");
    }
}

#[test]
fn largest_frame_is_sent_whole() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let sent = frame(MAX_BUFFER_LEN - VNET_HDR_LEN, 3);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    let too_big = frame(MAX_BUFFER_LEN - VNET_HDR_LEN + 1, 4);
    harness.transmit(&too_big);
    assert_eq!(harness.host_receive(Duration::from_millis(100)), None);
    assert_eq!(harness.counter(|c| &c.tx_malformed), 1);
}

#[test]
fn filter_stops_outbound_frames_before_the_backend() {
    let mut harness = Harness::new(Box::new(DenyTag));
    harness.transmit(&frame(60, DENIED_TAG));
    let allowed = frame(60, 7);
    harness.transmit(&allowed);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&allowed))
    );
    assert_eq!(harness.host_receive(Duration::from_millis(100)), None);
    assert_eq!(harness.counter(|c| &c.tx_filtered), 1);
    assert_eq!(harness.counter(|c| &c.tx_frames), 1);
}

#[test]
fn received_frame_reaches_the_guest_with_one_buffer_header() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let sent = frame(100, 9);
    harness.host_send(&sent);
    let (header, received) = harness.receive();
    assert_eq!(header, expected_rx_header());
    assert_eq!(received, sent);
    assert!(harness.driver.vm.wait_for_msis(1));
    assert_eq!(harness.driver.vm.msis(), vec![RX_MSI]);

    // Frames arriving while buffers wait are delivered without a kick.
    let (head, buffer) = harness.post_rx(RX_BUFFER_LEN);
    std::thread::sleep(Duration::from_millis(20));
    let later = frame(1514, 10);
    harness.host_send(&later);
    let (used_head, len) = harness.rx.wait_used(&harness.driver);
    assert_eq!((used_head, len as usize), (head, VNET_HDR_LEN + 1514));
    assert_eq!(harness.driver.read_guest(buffer.0 + 12, 1514), later);
}

#[test]
fn filter_stops_inbound_frames_before_the_guest() {
    let mut harness = Harness::new(Box::new(DenyTag));
    harness.host_send(&frame(60, DENIED_TAG));
    let allowed = frame(60, 5);
    harness.host_send(&allowed);
    let (_, received) = harness.receive();
    assert_eq!(received, allowed);
    assert_eq!(harness.counter(|c| &c.rx_filtered), 1);
    harness.post_rx(RX_BUFFER_LEN);
    harness.rx.assert_nothing_used(&harness.driver);
}

#[test]
fn frames_wait_for_receive_buffers_without_spinning() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let first = frame(80, 1);
    let second = frame(90, 2);
    harness.host_send(&first);
    harness.host_send(&second);
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_cpu_ticks(&harness.thread_name);
    std::thread::sleep(Duration::from_millis(500));
    let spent = thread_cpu_ticks(&harness.thread_name) - before;
    assert!(
        spent <= 2,
        "I/O thread used {spent} ticks while the guest had no buffers"
    );

    let (_, received) = harness.receive();
    assert_eq!(received, first);
    let (_, received) = harness.receive();
    assert_eq!(received, second);
    assert_eq!(harness.counter(|c| &c.rx_frames), 2);
    assert_eq!(harness.counter(|c| &c.rx_dropped), 0);
}

#[test]
fn a_closed_gate_stops_guest_frames_both_ways_until_it_opens() {
    let gate = IoGate::default();
    let mut harness = Harness::build_gated(
        Box::new(AllowAll),
        Confinement::Unfiltered,
        BASIC_FEATURES,
        None,
        gate.clone(),
    );
    let (rx_head, rx_buffer) = harness.post_rx(RX_BUFFER_LEN);
    // Let the worker take the buffer and start listening on the backend.
    std::thread::sleep(Duration::from_millis(50));
    gate.close();
    assert!(gate.wait_quiet(Instant::now() + Duration::from_secs(5)));

    let outgoing = frame(60, 1);
    let header = harness.guest_bytes(&[0u8; VNET_HDR_LEN]);
    let body = harness.guest_bytes(&outgoing);
    let tx_head = harness.tx.push(&harness.driver, &[header, body]);
    harness.tx.kick(&harness.driver);
    let incoming = frame(70, 2);
    harness.host_send(&incoming);
    let before = thread_cpu_ticks(&harness.thread_name);
    assert_eq!(
        harness.host_receive(Duration::from_millis(300)),
        None,
        "a frame left a locked guest"
    );
    harness.rx.assert_nothing_used(&harness.driver);
    harness.tx.assert_nothing_used(&harness.driver);
    let spent = thread_cpu_ticks(&harness.thread_name) - before;
    assert!(
        spent <= 2,
        "the I/O thread spun while closed: {spent} ticks"
    );
    assert_eq!(harness.counter(|c| &c.tx_frames), 0);
    assert_eq!(harness.counter(|c| &c.rx_frames), 0);

    // Once open, what waited goes through without another kick.
    gate.open();
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&outgoing))
    );
    assert_eq!(harness.tx.wait_used(&harness.driver), (tx_head, 0));
    let (used_head, len) = harness.rx.wait_used(&harness.driver);
    assert_eq!(used_head, rx_head);
    let delivered = harness.driver.read_guest(rx_buffer.0, len as usize);
    assert_eq!(&delivered[VNET_HDR_LEN..], &incoming[..]);
}

#[test]
fn a_full_transmit_ring_is_sent_in_bounded_calls_without_another_kick() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let one = harness.guest_bytes(&with_header(&frame(60, 3)));
    let head = harness.tx.push(&harness.driver, &[one]);
    for _ in 1..RING_SIZE {
        harness.tx.publish(&harness.driver, head);
    }
    harness.tx.kick(&harness.driver);
    let deadline = Instant::now() + Duration::from_secs(10);
    while harness.tx.used_idx(&harness.driver) != RING_SIZE {
        assert!(Instant::now() < deadline, "transmit chains left behind");
        // The host side drains, so the backend has room.
        let _ = harness.host_receive(Duration::from_millis(1));
    }
    let sent = harness.counter(|c| &c.tx_frames);
    assert_eq!(sent, u64::from(RING_SIZE));
}

#[test]
fn frame_too_large_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let (head, buffer) = harness.post_rx(100);
    harness.host_send(&frame(200, 1));
    let fits = frame(60, 2);
    harness.host_send(&fits);
    let (used_head, len) = harness.rx.wait_used(&harness.driver);
    assert_eq!((used_head, len as usize), (head, VNET_HDR_LEN + 60));
    assert_eq!(harness.driver.read_guest(buffer.0 + 12, 60), fits);
    assert_eq!(harness.counter(|c| &c.rx_dropped), 1);
}

#[test]
fn malformed_receive_chains_are_returned_and_the_frame_kept() {
    let mut harness = Harness::new(Box::new(AllowAll));
    let read_only = harness.guest_bytes(&[0u8; 64]);
    let outside = (MEM_SIZE as u64 - 16, 2048u32, true);
    let bad_heads = [
        harness.rx.push(&harness.driver, &[read_only]),
        harness.rx.push(&harness.driver, &[outside]),
    ];
    harness.rx.kick(&harness.driver);
    let sent = frame(60, 3);
    harness.host_send(&sent);
    for head in bad_heads {
        assert_eq!(harness.rx.wait_used(&harness.driver), (head, 0));
    }
    let (_, received) = harness.receive();
    assert_eq!(received, sent);
}

#[test]
fn runt_and_offload_frames_from_the_backend_are_dropped() {
    let mut harness = Harness::new(Box::new(AllowAll));
    harness.host.send(&[0u8; 5]).unwrap();
    harness.host.send(&with_header(&[0u8; 8])).unwrap();
    let mut gso = with_header(&frame(60, 1));
    gso[1] = 1;
    harness.host.send(&gso).unwrap();
    let good = frame(60, 2);
    harness.host_send(&good);
    let (_, received) = harness.receive();
    assert_eq!(received, good);
    assert_eq!(harness.counter(|c| &c.rx_dropped), 3);
}

#[test]
fn corrupt_ring_sets_needs_reset_and_reset_recovers() {
    let mut harness = Harness::new(Box::new(AllowAll));
    harness
        .driver
        .mem
        .write_obj(RING_SIZE + 5, GuestAddress(harness.tx.avail + 2))
        .unwrap();
    harness.tx.kick(&harness.driver);
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.driver.status() & STATUS_NEEDS_RESET == 0 {
        assert!(Instant::now() < deadline, "NEEDS_RESET not reported");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(harness.driver.vm.wait_for_msis(1));
    assert!(harness.driver.vm.msis().contains(&CONFIG_MSI));

    harness.enable_msix();
    let status = harness.init(F_VERSION_1 | 1 << VIRTIO_NET_F_MAC);
    assert_eq!(status & STATUS_NEEDS_RESET, 0);
    let sent = frame(60, 4);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    harness.host_send(&sent);
    assert_eq!(harness.receive().1, sent);
}

#[test]
fn event_idx_rearms_kicks_and_suppresses_interrupts() {
    let mut harness = Harness::build(
        Box::new(AllowAll),
        Confinement::Unfiltered,
        BASIC_FEATURES | F_EVENT_IDX,
    );
    assert_ne!(harness.driver.device_features() & F_EVENT_IDX, 0);
    let sent = frame(60, 1);

    // The driver asks for a transmit interrupt only after entry 5.
    harness.tx.set_used_event(&harness.driver, 5);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    assert_eq!(
        harness.tx.avail_event(&harness.driver),
        1,
        "kick wanted for the next chain"
    );
    harness.tx.set_used_event(&harness.driver, 1);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    assert!(harness.driver.vm.wait_for_msis(1));
    assert_eq!(
        harness.driver.vm.msis(),
        vec![TX_MSI],
        "only the requested interrupt"
    );

    // One frame received, so the receive ring has moved on to entry 1.
    harness.rx.set_used_event(&harness.driver, 0);
    harness.host_send(&sent);
    assert_eq!(harness.receive().1, sent);
    assert!(harness.driver.vm.wait_for_msis(2));
    assert_eq!(harness.driver.vm.msis()[1], RX_MSI);

    // A frame with no receive buffer: the device asks for the kick that
    // the guest's next buffer brings, then delivers.
    harness.host_send(&sent);
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.rx.avail_event(&harness.driver) != 1 {
        assert!(Instant::now() < deadline, "receive queue not re-armed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(harness.receive().1, sent);
}

#[test]
fn both_queues_are_required() {
    let (device_end, _host) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    let net = Net::with_backend(Arc::new(device_end), MAC, Box::new(AllowAll)).unwrap();
    let mut driver = TestDriver::new(Box::new(net));
    // The shared driver enables queue 0 only.
    let status = driver.init(F_VERSION_1);
    assert_ne!(status & STATUS_NEEDS_RESET, 0);
}

#[test]
fn multicast_mac_is_refused() {
    let (device_end, _host) = UnixDatagram::pair().unwrap();
    let error = Net::with_backend(
        Arc::new(device_end),
        [0x01, 0, 0x5e, 0, 0, 1],
        Box::new(AllowAll),
    )
    .err()
    .unwrap();
    assert_eq!(error, NetError::MulticastMac("01:00:5e:00:00:01".into()));
}

/// The I/O thread moves frames both ways under its own seccomp filter (a
/// missing syscall would end the test process with SIGSYS's message).
#[test]
fn data_path_runs_under_the_net_io_seccomp_filter() {
    let confinement = Confinement::Seccomp(crate::seccomp::ThreadKind::NetIo);
    let mut harness = Harness::build(Box::new(AllowAll), confinement, BASIC_FEATURES);
    let sent = frame(60, 1);
    harness.transmit(&sent);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&sent))
    );
    // Park a frame with no buffer (the TAP leaves epoll), then deliver
    // it (the TAP comes back): both epoll_ctl paths.
    harness.host_send(&sent);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(harness.receive().1, sent);
    harness.host_send(&sent);
    assert_eq!(harness.receive().1, sent);
}

/// With root and /dev/net/tun: a real TAP, brought up, carries a frame
/// from the guest to the host's packet socket and one back.
#[test]
fn real_tap_carries_frames_both_ways() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun is absent");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to create a TAP");
        return;
    }
    let name = format!("svmu{}", std::process::id() % 100_000);
    let tap = Tap::open(&name).unwrap();
    assert_eq!(tap.name(), name);
    let up = std::process::Command::new("ip")
        .args(["link", "set", &name, "up"])
        .status()
        .unwrap();
    assert!(up.success());
    let capture = PacketSocket::bind(&name);

    let net = Net::new(tap, MAC, Box::new(AllowAll)).unwrap();
    let driver = TestDriver::new(Box::new(net));
    let mut harness = Harness {
        driver,
        rx: Ring::new(RX_QUEUE, 0x20000),
        tx: Ring::new(TX_QUEUE, 0x30000),
        host: UnixDatagram::unbound().unwrap(),
        counters: Arc::new(NetCounters::default()),
        thread_name: String::new(),
    };
    harness.enable_msix();
    harness.init(F_VERSION_1 | 1 << VIRTIO_NET_F_MAC);

    let outbound = frame(64, 0x77);
    harness.transmit(&outbound);
    assert!(
        capture.wait_for(&outbound),
        "the host did not see the guest's frame on {name}"
    );

    let mut inbound = frame(64, 0x66);
    inbound[..6].copy_from_slice(&MAC);
    capture.send(&inbound);
    // The host may also send its own traffic (IPv6 solicitations) first.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, received) = harness.receive();
        if received == inbound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never got the host's frame"
        );
    }
}

/// An AF_PACKET socket on one interface, for the test EtherType only.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn bind(interface: &str) -> Self {
        use std::os::fd::FromRawFd;
        let protocol = u16::from_be_bytes(TEST_ETHERTYPE).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let cname = std::ffi::CString::new(interface).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex;
        // SAFETY: `address` is a sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                raw,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(bound, 0, "{}", io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO reads one timeval of the size given.
        let set = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(set, 0);
        Self { fd, ifindex }
    }

    fn wait_for(&self, expected: &[u8]) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: reads at most buffer.len() bytes into buffer.
            let len = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if len > 0 && &buffer[..len as usize] == expected {
                return true;
            }
        }
        false
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in bind.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = self.ifindex;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sends frame.len() bytes from frame to a valid address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
    }
}

/// The forced VPN through the whole device, under the NetIo seccomp
/// filter: a routed frame waits for the handshake with a boringtun peer
/// on a local UDP socket, then reaches it encrypted and never the TAP;
/// the peer's reply reaches the guest as a frame from its gateway; other
/// frames still go to the TAP.
#[test]
fn vpn_frames_go_through_wireguard_and_never_to_the_tap() {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    use std::net::{Ipv4Addr, UdpSocket};

    const GATEWAY: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const MARKER: &[u8] = b"E2E-VPN-MARKER";
    let peer_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer_socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ours = [1u8; 32];
    let theirs = [2u8; 32];
    let mut peer = Tunn::new(
        StaticSecret::from(theirs),
        PublicKey::from(&StaticSecret::from(ours)),
        None,
        None,
        9,
        None,
    );
    let config = crate::vpn::TunnelConfig {
        endpoint: peer_socket.local_addr().unwrap(),
        peer_public_key: *PublicKey::from(&StaticSecret::from(theirs)).as_bytes(),
        routes: vec!["203.0.113.0/24".parse().unwrap()],
        guest_addresses: vec!["203.0.113.10".parse().unwrap()],
        persistent_keepalive: None,
        guest_mac: MAC,
    };
    let link = VpnLink::open(config, crate::vpn::PrivateKey::from_bytes(ours)).unwrap();
    let confinement = Confinement::Seccomp(crate::seccomp::ThreadKind::NetIo);
    let mut harness =
        Harness::build_with_vpn(Box::new(AllowAll), confinement, BASIC_FEATURES, Some(link));

    let ip_frame = |source: Ipv4Addr, destination: Ipv4Addr, payload: &[u8]| {
        let mut frame = GATEWAY.to_vec();
        frame.extend_from_slice(&MAC);
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + payload.len()) as u16;
        frame.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 253, 0, 0]);
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&source.octets());
        frame.extend_from_slice(&destination.octets());
        frame.extend_from_slice(payload);
        frame
    };
    let guest = Ipv4Addr::new(203, 0, 113, 10);
    let service = Ipv4Addr::new(203, 0, 113, 1);
    let request = ip_frame(guest, service, MARKER);
    harness.transmit(&request);
    assert_eq!(
        harness.host_receive(Duration::from_millis(200)),
        None,
        "nothing for the tunnel on the TAP"
    );
    let mut datagram = vec![0u8; 2048];
    let (len, device_address) = peer_socket.recv_from(&mut datagram).unwrap();
    assert_eq!((len, datagram[0]), (148, 1), "a handshake initiation");
    let mut out = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(response) = peer.decapsulate(None, &datagram[..len], &mut out)
    else {
        panic!("the peer did not answer the initiation");
    };
    peer_socket.send_to(response, device_address).unwrap();

    // The keepalive that confirms the session, then the queued packet.
    let mut delivered = Vec::new();
    for _ in 0..2 {
        let len = peer_socket.recv(&mut datagram).unwrap();
        assert!(!datagram[..len].windows(MARKER.len()).any(|w| w == MARKER));
        if let TunnResult::WriteToTunnelV4(packet, _) =
            peer.decapsulate(None, &datagram[..len], &mut out)
        {
            delivered.push(packet.to_vec());
        }
    }
    assert_eq!(delivered, vec![request[14..].to_vec()]);

    let reply = ip_frame(service, guest, b"reply");
    let TunnResult::WriteToNetwork(encrypted) = peer.encapsulate(&reply[14..], &mut out) else {
        panic!("the peer has no session");
    };
    peer_socket.send_to(encrypted, device_address).unwrap();
    let (_, received) = harness.receive();
    assert_eq!(&received[..6], &MAC);
    assert_eq!(&received[6..12], &GATEWAY);
    assert_eq!(&received[12..], &reply[12..]);

    let direct = frame(60, 3);
    harness.transmit(&direct);
    assert_eq!(
        harness.host_receive(Duration::from_secs(5)),
        Some(with_header(&direct))
    );
    assert_eq!(harness.counter(|c| &c.tx_tunnelled), 1);
    assert_eq!(harness.counter(|c| &c.rx_tunnelled), 1);
    assert_eq!(harness.counter(|c| &c.tx_frames), 2);
}
