//! The virtio-pci transport and PCI configuration space under arbitrary
//! sequences of guest register accesses: ECAM, the 0xCF8/0xCFC port
//! mechanism, and the device's BAR (common configuration, ISR, device
//! configuration, doorbells, MSI-X table and PBA), with BARs sized, moved
//! and switched off along the way. The device behind the transport is a
//! virtio-blk disk or a virtio-net card.
//!
//! Invariants, beyond "no panic":
//! - identity registers (vendor and device IDs) never change;
//! - BAR sizing works as PCI says: writing all ones reads back the size
//!   mask with the type bits kept (or 0 for a BAR that does not exist),
//!   and writing the old value back restores it;
//! - doorbells (KVM ioeventfds) exist only while the BAR is decoded and
//!   only inside it, and no more than one per queue.
//!
//! Input: one flags byte (bit 0: virtio-net, else virtio-blk), then
//! 13-byte operations [kind u8][address u32][value u64]. Kind bits 0-2:
//! 0/1 ECAM read/write, 2/3 port read/write, 4/5 BAR read/write, 6 size
//! a BAR, 7 check the invariants now; bits 3-4 pick the access width.

#![no_main]
// Harness code narrows small known values; a wrong one fails the run.
#![allow(clippy::cast_possible_truncation)]

#[path = "common/input.rs"]
mod input;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/vm.rs"]
mod vm;

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use securevm::arch::layout::{PCI_CONFIG_ADDRESS_PORT, PCI_ECAM_SIZE, PCI_ECAM_START};
use securevm::devices::bus::Bus;
use securevm::devices::pci::{PciConfigIo, PciConfigMmio, PciRoot, COMMAND_MEMORY_SPACE};
use securevm::block::BlockBackend;
use securevm::devices::virtio::block::Block;
use securevm::devices::virtio::net::{AllowAll, Net};
use securevm::devices::virtio::VirtioDevice;

use input::Input;
use memory::guest_memory;
use vm::RecordingVm;

const HOST_BRIDGE_ID: u32 = 0x0d57_1b36;
const VIRTIO_VENDOR: u32 = 0x1af4;
const VIRTIO_DEVICE_BASE: u32 = 0x1040;
const BAR0: usize = 0x10;
const COMMAND: usize = 0x04;
/// Type bits (2:1) of a 64-bit memory BAR's lower register.
const BAR_TYPE_MEMORY_64: u32 = 0x4;

/// A disk that is all zeros and takes any write.
struct ZeroDisk;

impl BlockBackend for ZeroDisk {
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn capacity_bytes(&self) -> u64 {
        64 << 10
    }

    fn read_only(&self) -> bool {
        false
    }
}

struct Machine {
    vm: Arc<RecordingVm>,
    mmio: Arc<Bus>,
    pio: Bus,
    /// Held because ECAM only holds the root weakly.
    _root: Arc<PciRoot>,
    slot: u8,
    device_id: u32,
    queue_count: usize,
    bar_size: u64,
}

impl Machine {
    fn ecam(&self, slot: u8, register: usize) -> u64 {
        PCI_ECAM_START + (u64::from(slot) << 15) + register as u64
    }

    fn config_read32(&self, slot: u8, register: usize) -> u32 {
        let mut data = [0u8; 4];
        assert!(
            self.mmio.read(self.ecam(slot, register), &mut data),
            "ECAM not mapped"
        );
        u32::from_le_bytes(data)
    }

    fn config_write32(&self, slot: u8, register: usize, value: u32) {
        assert!(
            self.mmio
                .write(self.ecam(slot, register), &value.to_le_bytes()),
            "ECAM not mapped"
        );
    }

    /// Where the device's BAR 0 decodes now, if it does.
    fn decoded_bar(&self) -> Option<u64> {
        let command = self.config_read32(self.slot, COMMAND) as u16;
        if command & COMMAND_MEMORY_SPACE == 0 {
            return None;
        }
        let low = u64::from(self.config_read32(self.slot, BAR0) & !0xf);
        let high = u64::from(self.config_read32(self.slot, BAR0 + 4));
        let base = high << 32 | low;
        base.checked_add(self.bar_size).map(|_| base)
    }

    fn check(&self) {
        assert_eq!(
            self.config_read32(0, 0),
            HOST_BRIDGE_ID,
            "host bridge identity changed"
        );
        assert_eq!(
            self.config_read32(self.slot, 0),
            self.device_id,
            "device identity changed"
        );
        let doorbells = self.vm.doorbells();
        assert!(
            doorbells.len() <= self.queue_count,
            "{} doorbells for {} queues",
            doorbells.len(),
            self.queue_count
        );
        if doorbells.is_empty() {
            return;
        }
        let base = self
            .decoded_bar()
            .expect("doorbells registered while the BAR is not decoded");
        for doorbell in doorbells {
            assert!(
                (base..base + self.bar_size).contains(&doorbell),
                "doorbell at {doorbell:#x} outside the BAR at {base:#x}"
            );
        }
    }

    /// Size BAR `index` of `slot` as firmware does and check the answer.
    fn size_bar(&self, slot: u8, index: usize) {
        let mut upper_half = false;
        let mut at = 0;
        while at < index {
            let value = self.config_read32(slot, BAR0 + 4 * at);
            let is_64 = value & 1 == 0 && value & 0x6 == BAR_TYPE_MEMORY_64;
            at += if is_64 { 2 } else { 1 };
            upper_half = is_64 && at > index;
        }
        let register = BAR0 + 4 * index;
        let original = self.config_read32(slot, register);
        self.config_write32(slot, register, u32::MAX);
        let sized = self.config_read32(slot, register);
        if upper_half {
            assert!(
                sized == 0 || sized.leading_ones() + sized.trailing_zeros() == 32,
                "upper BAR half mask {sized:#x}"
            );
        } else if sized != 0 {
            let mask = sized & !0xf;
            assert_eq!(
                sized & 0xf,
                original & 0xf,
                "BAR type bits changed by sizing"
            );
            assert!(
                mask != 0 && mask.leading_ones() + mask.trailing_zeros() == 32,
                "BAR size mask {sized:#x}"
            );
        } else {
            assert_eq!(
                original, 0,
                "BAR {index} reads back 0 after sizing but held {original:#x}"
            );
        }
        self.config_write32(slot, register, original);
        assert_eq!(
            self.config_read32(slot, register),
            original,
            "BAR {index} not restored after sizing"
        );
    }
}

fn machine(net: bool) -> Machine {
    let vm = Arc::new(RecordingVm::default());
    let mmio = Arc::new(Bus::new());
    let root = PciRoot::new(mmio.clone(), vm.clone());
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
    )
    .expect("ECAM fits");
    let pio = Bus::new();
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        u64::from(PCI_CONFIG_ADDRESS_PORT),
        8,
    )
    .expect("ports free");
    let device: Box<dyn VirtioDevice> = if net {
        let (ours, _theirs) = UnixDatagram::pair().expect("socket pair");
        Box::new(
            Net::with_backend(Arc::new(ours), [0x52, 0x54, 0, 0, 0, 1], Box::new(AllowAll))
                .expect("unicast MAC"),
        )
    } else {
        Box::new(Block::new(Box::new(ZeroDisk), "fuzz").expect("valid disk"))
    };
    let device_id = (VIRTIO_DEVICE_BASE + u32::from(device.device_type())) << 16 | VIRTIO_VENDOR;
    let queue_count = device.queue_max_sizes().len();
    let mem = Arc::new(guest_memory(1, false, &[]));
    let slot = root.add_virtio_device(device, mem).expect("slot free");
    let mut machine = Machine {
        vm,
        mmio,
        pio,
        _root: root,
        slot,
        device_id,
        queue_count,
        bar_size: 0,
    };
    let original = machine.config_read32(slot, BAR0);
    machine.config_write32(slot, BAR0, u32::MAX);
    let mask = machine.config_read32(slot, BAR0) & !0xf;
    machine.config_write32(slot, BAR0, original);
    machine.bar_size = u64::from((!mask).wrapping_add(1));
    machine
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let machine = machine(flags & 1 != 0);
    machine.check();
    while !input.is_empty() {
        let kind = input.u8();
        let address = u64::from(input.u32());
        let value = input.u64().to_le_bytes();
        let width = [1, 2, 4, 8][usize::from(kind >> 3) & 3];
        let mut buffer = [0u8; 8];
        // Addresses a little past ECAM and around the two ports, so that
        // edges and misses are tried too.
        let ecam = PCI_ECAM_START + address % (PCI_ECAM_SIZE + 0x1000);
        let port = u64::from(PCI_CONFIG_ADDRESS_PORT) - 4 + address % 16;
        let port_width = width.min(4);
        let bar = machine
            .decoded_bar()
            .map(|base| base + address % (machine.bar_size + 0x1000));
        match kind & 7 {
            0 => {
                machine.mmio.read(ecam, &mut buffer[..width]);
            }
            1 => {
                machine.mmio.write(ecam, &value[..width]);
            }
            2 => {
                machine.pio.read(port, &mut buffer[..port_width]);
            }
            3 => {
                machine.pio.write(port, &value[..port_width]);
            }
            4 => {
                if let Some(at) = bar {
                    machine.mmio.read(at, &mut buffer[..width]);
                }
            }
            5 => {
                if let Some(at) = bar {
                    machine.mmio.write(at, &value[..width]);
                }
            }
            6 => machine.size_bar(
                (address >> 8) as u8 % 2 * machine.slot,
                (address % 6) as usize,
            ),
            _ => machine.check(),
        }
    }
    machine.check();
});
