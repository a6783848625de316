//! A minimal virtio-pci driver for tests: it finds the device through
//! ECAM, parses the capabilities, programs MSI-X and the queue through the
//! BAR exactly as a guest would, and places descriptor chains in guest
//! memory. Kicks go through the doorbell the transport registered, as KVM
//! would deliver them.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    IoGate, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::arch::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};
use crate::devices::bus::Bus;
use crate::devices::pci::test_support::FakeVm;
use crate::devices::pci::{PciConfigMmio, PciRoot};

pub const MEM_SIZE: usize = 16 << 20;
pub const QUEUE_SIZE: u16 = 256;
const DESC_TABLE: u64 = 0x10000;
const AVAIL_RING: u64 = 0x11000;
const USED_RING: u64 = 0x12000;
const BUFFERS_START: u64 = 0x100000;
pub const CONFIG_MSI: (u64, u32) = (0xfee0_0000, 0x30);
pub const QUEUE_MSI: (u64, u32) = (0xfee0_1000, 0x31);
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

#[derive(Default, Debug)]
pub struct Layout {
    pub slot: u8,
    pub bar: u64,
    pub common: u64,
    pub isr: u64,
    pub device: u64,
    pub notify: u64,
    pub notify_multiplier: u32,
    pub msix_table: u64,
    pub msix_pba: u64,
    pub msix_capability: u64,
    pub pci_cfg_capability: u64,
}

pub struct TestDriver {
    pub vm: Arc<FakeVm>,
    pub mem: Arc<GuestMemoryMmap>,
    pub mmio: Arc<Bus>,
    /// Held because ECAM only holds the root weakly.
    _root: Arc<PciRoot>,
    pub layout: Layout,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
    next_buffer: u64,
}

/// One descriptor: guest address, length, device-writable.
pub type Segment = (u64, u32, bool);

impl TestDriver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_io_gate(device, IoGate::default())
    }

    /// A driver for `device`, whose I/O thread works through `gate`.
    pub fn with_io_gate(device: Box<dyn VirtioDevice>, gate: IoGate) -> Self {
        let vm = Arc::new(FakeVm::default());
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let mmio = Arc::new(Bus::new());
        let root = PciRoot::with_io_gate(mmio.clone(), vm.clone(), gate);
        mmio.insert(
            Arc::new(std::sync::Mutex::new(PciConfigMmio::new(root.clone()))),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )
        .unwrap();
        let slot = root.add_virtio_device(device, mem.clone()).unwrap();
        let mut driver = Self {
            vm,
            mem,
            mmio,
            _root: root,
            layout: Layout {
                slot,
                ..Layout::default()
            },
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
            next_buffer: BUFFERS_START,
        };
        driver.probe();
        driver
    }

    pub fn config_read(&self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        let address = PCI_ECAM_START + (u64::from(self.layout.slot) << 15) + offset;
        assert!(self.mmio.read(address, &mut data[..len]));
        u64::from_le_bytes(data)
    }

    pub fn config_write(&self, offset: u64, value: u64, len: usize) {
        let address = PCI_ECAM_START + (u64::from(self.layout.slot) << 15) + offset;
        assert!(self.mmio.write(address, &value.to_le_bytes()[..len]));
    }

    /// Read the BAR and walk the capability list, as a guest driver does.
    pub fn probe(&mut self) {
        let low = self.config_read(0x10, 4) & !0xf;
        let high = self.config_read(0x14, 4);
        self.layout.bar = high << 32 | low;
        let bar = self.layout.bar;
        let mut cap = self.config_read(0x34, 1);
        while cap != 0 {
            let id = self.config_read(cap, 1);
            if id == 0x09 {
                let cfg_type = self.config_read(cap + 3, 1);
                assert_eq!(self.config_read(cap + 4, 1), 0, "all regions live in BAR 0");
                let offset = bar + self.config_read(cap + 8, 4);
                match cfg_type {
                    1 => self.layout.common = offset,
                    2 => {
                        self.layout.notify = offset;
                        self.layout.notify_multiplier = self.config_read(cap + 16, 4) as u32;
                    }
                    3 => self.layout.isr = offset,
                    4 => self.layout.device = offset,
                    5 => self.layout.pci_cfg_capability = cap,
                    other => panic!("unexpected virtio capability type {other}"),
                }
            } else if id == 0x11 {
                self.layout.msix_capability = cap;
                self.layout.msix_table = bar + (self.config_read(cap + 4, 4) & !7);
                self.layout.msix_pba = bar + (self.config_read(cap + 8, 4) & !7);
            }
            cap = self.config_read(cap + 1, 1);
        }
    }

    pub fn read_bar(&self, address: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        assert!(
            self.mmio.read(address, &mut data[..len]),
            "nothing mapped at {address:#x}"
        );
        u64::from_le_bytes(data)
    }

    pub fn write_bar(&self, address: u64, value: u64, len: usize) {
        assert!(
            self.mmio.write(address, &value.to_le_bytes()[..len]),
            "nothing mapped at {address:#x}"
        );
    }

    pub fn common_read(&self, offset: u64, len: usize) -> u64 {
        self.read_bar(self.layout.common + offset, len)
    }

    pub fn common_write(&self, offset: u64, value: u64, len: usize) {
        self.write_bar(self.layout.common + offset, value, len)
    }

    pub fn status(&self) -> u8 {
        self.common_read(0x14, 1) as u8
    }

    pub fn set_status(&self, status: u8) {
        self.common_write(0x14, u64::from(status), 1);
    }

    pub fn device_features(&self) -> u64 {
        self.common_write(0x00, 0, 4);
        let low = self.common_read(0x04, 4);
        self.common_write(0x00, 1, 4);
        low | self.common_read(0x04, 4) << 32
    }

    /// Enable MSI-X and point vector 0 (config) and 1 (queue) at
    /// [`CONFIG_MSI`] and [`QUEUE_MSI`], unmasked.
    pub fn enable_msix(&self) {
        let control = self.layout.msix_capability + 2;
        let value = self.config_read(control, 2) | 1 << 15;
        self.config_write(control, value, 2);
        for (vector, (address, data)) in [(0u64, CONFIG_MSI), (1, QUEUE_MSI)] {
            let entry = self.layout.msix_table + vector * 16;
            self.write_bar(entry, address & 0xffff_ffff, 4);
            self.write_bar(entry + 4, address >> 32, 4);
            self.write_bar(entry + 8, u64::from(data), 4);
            self.write_bar(entry + 12, 0, 4);
        }
    }

    /// Reset, negotiate `features & offered`, and set up queue 0.
    /// Returns the status after DRIVER_OK.
    pub fn init(&mut self, wanted_features: u64) -> u8 {
        self.set_status(0);
        self.next_desc = 0;
        self.avail_idx = 0;
        self.seen_used = 0;
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(DESC_TABLE))
            .unwrap();
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = self.device_features() & wanted_features;
        self.common_write(0x08, 0, 4);
        self.common_write(0x0c, features & 0xffff_ffff, 4);
        self.common_write(0x08, 1, 4);
        self.common_write(0x0c, features >> 32, 4);
        let negotiating = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.set_status(negotiating);
        if self.status() & STATUS_FEATURES_OK == 0 {
            return self.status();
        }
        self.common_write(0x10, 0, 2);
        self.common_write(0x16, 0, 2);
        assert_eq!(self.common_read(0x18, 2), u64::from(QUEUE_SIZE));
        self.common_write(0x18, u64::from(QUEUE_SIZE), 2);
        self.common_write(0x1a, 1, 2);
        assert_eq!(self.common_read(0x1a, 2), 1, "queue vector accepted");
        self.set_queue_addresses(DESC_TABLE, AVAIL_RING, USED_RING);
        self.common_write(0x1c, 1, 2);
        self.set_status(negotiating | STATUS_DRIVER_OK);
        self.status()
    }

    pub fn set_queue_addresses(&self, desc: u64, avail: u64, used: u64) {
        for (offset, address) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            self.common_write(offset, address & 0xffff_ffff, 4);
            self.common_write(offset + 4, address >> 32, 4);
        }
    }

    /// Guest memory for a buffer of `len` bytes (16-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let address = self.next_buffer;
        self.next_buffer = (self.next_buffer + len + 15) & !15;
        assert!(self.next_buffer < MEM_SIZE as u64);
        address
    }

    /// Write a descriptor at `index` of the ring's table.
    pub fn write_descriptor(
        &self,
        table: u64,
        index: u16,
        segment: Segment,
        flags: u16,
        next: u16,
    ) {
        let at = table + u64::from(index) * 16;
        let (address, len, writable) = segment;
        let flags = flags | if writable { DESC_F_WRITE } else { 0 };
        self.mem.write_obj(address, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Put `segments` in the ring as one chain and publish it.
    pub fn push_chain(&mut self, segments: &[Segment]) -> u16 {
        let head = self.next_desc;
        for (i, &segment) in segments.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % QUEUE_SIZE;
            let flags = if i + 1 < segments.len() {
                DESC_F_NEXT
            } else {
                0
            };
            self.write_descriptor(DESC_TABLE, index, segment, flags, next);
            self.next_desc = next;
        }
        self.publish(head);
        head
    }

    /// Publish a chain whose descriptors the test wrote itself; `used`
    /// is how many table entries it took.
    pub fn push_raw(&mut self, head: u16, used: u16) {
        self.next_desc = (self.next_desc + used) % QUEUE_SIZE;
        self.publish(head);
    }

    pub fn next_descriptor(&self) -> u16 {
        self.next_desc
    }

    pub fn desc_table(&self) -> u64 {
        DESC_TABLE
    }

    pub fn publish(&mut self, head: u16) {
        let slot = AVAIL_RING + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags, GuestAddress(AVAIL_RING)).unwrap();
    }

    /// Overwrite the published avail index (to corrupt the ring).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// With EVENT_IDX: ask for an interrupt once entry `idx` is used.
    pub fn set_used_event(&self, idx: u16) {
        let at = AVAIL_RING + 4 + u64::from(QUEUE_SIZE) * 2;
        self.mem.write_obj(idx, GuestAddress(at)).unwrap();
    }

    /// Kick queue 0 through the registered doorbell.
    pub fn kick(&self) {
        let doorbell = self.layout.notify;
        assert!(
            self.vm.ring_doorbell(doorbell),
            "no doorbell registered at {doorbell:#x}"
        );
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// Wait for the next used element; returns (head, used length).
    pub fn wait_used(&mut self) -> (u16, u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() == self.seen_used {
            assert!(
                Instant::now() < deadline,
                "device did not complete the request"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let element = USED_RING + 4 + u64::from(self.seen_used % QUEUE_SIZE) * 8;
        self.seen_used = self.seen_used.wrapping_add(1);
        let id: u32 = self.mem.read_obj(GuestAddress(element)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(element + 4)).unwrap();
        (id as u16, len)
    }

    pub fn read_guest(&self, address: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem
            .read_slice(&mut data, GuestAddress(address))
            .unwrap();
        data
    }

    pub fn write_guest(&self, address: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(address)).unwrap();
    }
}
