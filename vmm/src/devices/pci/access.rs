//! The guest's two doors into PCI configuration space: legacy mechanism
//! #1 (an address latch at 0xCF8 and a data window at 0xCFC-0xCFF) and
//! ECAM (memory-mapped, 4 KiB per function). Both decode an address and
//! hand the access to the root complex.

use std::sync::{Arc, Weak};

use super::root::PciRoot;

const ADDRESS_ENABLE: u32 = 1 << 31;
const DATA_WINDOW_OFFSET: u64 = 4;

/// Mechanism #1, inserted on the PIO bus at `PCI_CONFIG_ADDRESS_PORT`
/// with length 8.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }

    /// Bus, device, function and register offset of an access of `len`
    /// bytes at port offset `offset`, or `None` when it does not lie
    /// inside the data window (0xCFC-0xCFF) or the enable bit latched at
    /// 0xCF8 is clear. The window is checked before any arithmetic, so
    /// the register offset is at most 0xfc + 3.
    fn target(&self, offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
        let in_window = offset >= DATA_WINDOW_OFFSET
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= DATA_WINDOW_OFFSET + 4);
        if !in_window || self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let byte_in_window = usize::try_from(offset - DATA_WINDOW_OFFSET).ok()?;
        let bus = ((self.address >> 16) & 0xff) as u8;
        let device = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let register = (self.address & 0xfc) as usize;
        Some((bus, device, function, register + byte_in_window))
    }
}

impl crate::devices::bus::BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        match self.target(offset, data.len()) {
            Some((bus, device, function, register)) => {
                self.root.config_read(bus, device, function, register, data)
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only dword accesses reach the address latch, as on real chipsets
        // (byte writes to 0xCF8-0xCFB are how kernels probe for this).
        if offset == 0 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(bytes);
            }
            return;
        }
        if let Some((bus, device, function, register)) = self.target(offset, data.len()) {
            self.root
                .config_write(bus, device, function, register, data);
        }
    }
}

/// ECAM, inserted on the MMIO bus at `PCI_ECAM_START` with length
/// `PCI_ECAM_SIZE`. It holds the root weakly: the root owns the MMIO bus
/// this sits on, and a strong reference would keep both (and the device
/// I/O threads) alive forever. Whoever owns the VM keeps the root alive.
pub struct PciConfigMmio {
    root: Weak<PciRoot>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self {
            root: Arc::downgrade(&root),
        }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize) {
        let bus = ((offset >> 20) & 0xff) as u8;
        let device = ((offset >> 15) & 0x1f) as u8;
        let function = ((offset >> 12) & 0x7) as u8;
        (bus, device, function, (offset & 0xfff) as usize)
    }

    /// An access must stay inside one function's 4 KiB.
    fn fits(offset: u64, len: usize) -> bool {
        (offset & 0xfff) + len as u64 <= 0x1000 && len <= 8
    }
}

impl crate::devices::bus::BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !Self::fits(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let (bus, device, function, register) = Self::decode(offset);
        match self.root.upgrade() {
            Some(root) => root.config_read(bus, device, function, register, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if Self::fits(offset, data.len()) {
            let (bus, device, function, register) = Self::decode(offset);
            if let Some(root) = self.root.upgrade() {
                root.config_write(bus, device, function, register, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::devices::bus::{Bus, BusDevice};
    use crate::devices::pci::test_support::FakeVm;

    fn root() -> Arc<PciRoot> {
        PciRoot::new(Arc::new(Bus::new()), Arc::new(FakeVm::default()))
    }

    fn address(bus: u32, device: u32, function: u32, register: u32) -> u32 {
        ADDRESS_ENABLE | bus << 16 | device << 11 | function << 8 | register
    }

    fn io_read(io: &mut PciConfigIo, latch: u32, port_offset: u64, len: usize) -> u32 {
        io.write(0, &latch.to_le_bytes());
        let mut data = [0u8; 4];
        io.read(port_offset, &mut data[..len]);
        u32::from_le_bytes(data)
    }

    #[test]
    fn mechanism1_reads_the_host_bridge() {
        let mut io = PciConfigIo::new(root());
        assert_eq!(io_read(&mut io, address(0, 0, 0, 0), 4, 4), 0x0d57_1b36);
        assert_eq!(io_read(&mut io, address(0, 0, 0, 8), 4, 4) >> 16, 0x0600);
        // Byte and word reads at offsets within the data window.
        assert_eq!(io_read(&mut io, address(0, 0, 0, 0), 5, 1), 0x1b);
        assert_eq!(io_read(&mut io, address(0, 0, 0, 0), 6, 2), 0x0d57);
        assert_eq!(io_read(&mut io, address(0, 0, 0, 8), 7, 1), 0x06);
    }

    #[test]
    fn mechanism1_absent_functions_read_all_ones() {
        let mut io = PciConfigIo::new(root());
        assert_eq!(io_read(&mut io, address(0, 5, 0, 0), 4, 4), u32::MAX);
        assert_eq!(io_read(&mut io, address(0, 0, 1, 0), 4, 4), u32::MAX);
        assert_eq!(io_read(&mut io, address(1, 0, 0, 0), 4, 4), u32::MAX);
        assert_eq!(
            io_read(&mut io, address(0, 0, 0, 0) & !ADDRESS_ENABLE, 4, 4),
            u32::MAX
        );
        assert_eq!(io_read(&mut io, address(0, 31, 0, 0), 6, 2), 0xffff);
    }

    #[test]
    fn mechanism1_address_latch_reads_back_and_ignores_byte_writes() {
        let mut io = PciConfigIo::new(root());
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.write(3, &[0x01]);
        let mut latch = [0u8; 4];
        io.read(0, &mut latch);
        assert_eq!(u32::from_le_bytes(latch), 0x8000_0000);
    }

    #[test]
    fn mechanism1_writes_reach_the_device() {
        let root = root();
        let mut io = PciConfigIo::new(root.clone());
        io.write(0, &address(0, 0, 0, 0x3c).to_le_bytes());
        io.write(4, &[0x0b]);
        let mut line = [0u8; 1];
        root.config_read(0, 0, 0, 0x3c, &mut line);
        assert_eq!(line, [0x0b]);
        // Writes to absent devices go nowhere and do not fail.
        io.write(0, &address(0, 9, 0, 0x3c).to_le_bytes());
        io.write(4, &[0x0b]);
    }

    /// The firmware's PciCf8Lib reaches a register's bytes and words
    /// through the data window port matching the register offset's low
    /// bits (0xCFC + (offset & 3)).
    #[test]
    fn mechanism1_byte_and_word_writes_land_on_their_register_bytes() {
        let root = root();
        let mut io = PciConfigIo::new(root.clone());
        // Latency timer (offset 0x0d) through 0xCFD.
        io.write(0, &address(0, 0, 0, 0x0c).to_le_bytes());
        io.write(5, &[0x40]);
        // Command register (offset 0x04) with a word through 0xCFC, and the
        // status above it with a word through 0xCFE (read-only here).
        io.write(0, &address(0, 0, 0, 0x04).to_le_bytes());
        io.write(4, &0x0006u16.to_le_bytes());
        io.write(6, &0xffffu16.to_le_bytes());
        let mut register = [0u8; 4];
        root.config_read(0, 0, 0, 0x0c, &mut register);
        assert_eq!(register, [0, 0x40, 0, 0]);
        root.config_read(0, 0, 0, 0x04, &mut register);
        assert_eq!(register, [0x06, 0, 0, 0]);
        assert_eq!(io_read(&mut io, address(0, 0, 0, 0x04), 4, 2), 0x0006);
        assert_eq!(io_read(&mut io, address(0, 0, 0, 0x0c), 5, 1), 0x40);
    }

    /// Accesses at 0xCF9-0xCFB (below the data window) or running past
    /// 0xCFF read all ones and write nothing, with no arithmetic on the
    /// out-of-window offset (it once wrapped, which panics with overflow
    /// checks on).
    #[test]
    fn mechanism1_accesses_outside_the_data_window_are_refused() {
        let root = root();
        let mut io = PciConfigIo::new(root.clone());
        let latch = address(0, 0, 0, 0xfc);
        for (port_offset, len) in [(1, 1), (2, 2), (3, 1), (1, 2), (6, 4), (7, 2)] {
            assert_eq!(
                io_read(&mut io, latch, port_offset, len),
                u32::MAX >> (32 - 8 * len),
                "offset {port_offset} length {len}"
            );
        }
        io.write(0, &address(0, 0, 0, 0x3c).to_le_bytes());
        io.write(2, &[0x0b, 0x0b]);
        io.write(1, &[0x0b]);
        let mut line = [0u8; 1];
        root.config_read(0, 0, 0, 0x3c, &mut line);
        assert_eq!(line, [0], "a write outside the window changed the device");
    }

    #[test]
    fn ecam_decodes_device_and_register() {
        let root = root();
        let mut ecam = PciConfigMmio::new(root.clone());
        let mut data = [0u8; 4];
        ecam.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x0d57_1b36);
        ecam.read(0xa, &mut data[..2]);
        assert_eq!(u16::from_le_bytes([data[0], data[1]]), 0x0600);
        for absent in [1 << 15, 3 << 15, 1 << 12, 0x100 + (7 << 15)] {
            let mut data = [0u8; 4];
            ecam.read(absent, &mut data);
            assert_eq!(data, [0xff; 4], "offset {absent:#x}");
        }
        // Extended configuration space of a present device: no capabilities.
        ecam.read(0x100, &mut data);
        assert_eq!(data, [0; 4]);
        // An access straddling two functions is refused.
        ecam.read(0xffe, &mut data);
        assert_eq!(data, [0xff; 4]);
        drop(root);
        ecam.read(0, &mut data);
        assert_eq!(data, [0xff; 4], "a dropped root reads as empty");
    }

    #[test]
    fn ecam_on_the_mmio_bus() {
        use crate::arch::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};
        let bus = Arc::new(Bus::new());
        let root = PciRoot::new(bus.clone(), Arc::new(FakeVm::default()));
        bus.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )
        .unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(PCI_ECAM_START, &mut data));
        assert_eq!(u16::from_le_bytes(data), 0x1b36);
        assert!(bus.read(PCI_ECAM_START + (4 << 15), &mut data));
        assert_eq!(data, [0xff; 2]);
    }
}
