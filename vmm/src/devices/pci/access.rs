//! The guest's two doors into PCI configuration space: legacy mechanism
//! #1 (an address latch at 0xCF8 and a data window at 0xCFC-0xCFF) and
//! ECAM (memory-mapped, 4 KiB per function). Both decode an address and
//! hand the access to the root complex.

use std::sync::Arc;

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

    /// Bus, device, function and register offset latched at 0xCF8, or
    /// `None` when the enable bit is clear.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, usize)> {
        if self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let register = (self.address & 0xfc) as usize;
        Some((bus, device, function, register + data_offset as usize))
    }
}

impl crate::devices::bus::BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        let in_window = offset >= DATA_WINDOW_OFFSET && offset + data.len() as u64 <= 8;
        match self.target(offset.wrapping_sub(DATA_WINDOW_OFFSET)) {
            Some((bus, device, function, register)) if in_window => {
                self.root.config_read(bus, device, function, register, data)
            }
            _ => data.fill(0xff),
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
        let in_window = offset >= DATA_WINDOW_OFFSET && offset + data.len() as u64 <= 8;
        if let Some((bus, device, function, register)) =
            self.target(offset.wrapping_sub(DATA_WINDOW_OFFSET))
        {
            if in_window {
                self.root
                    .config_write(bus, device, function, register, data);
            }
        }
    }
}

/// ECAM, inserted on the MMIO bus at `PCI_ECAM_START` with length
/// `PCI_ECAM_SIZE`.
pub struct PciConfigMmio {
    root: Arc<PciRoot>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize) {
        let bus = (offset >> 20) as u8;
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
        self.root.config_read(bus, device, function, register, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if Self::fits(offset, data.len()) {
            let (bus, device, function, register) = Self::decode(offset);
            self.root
                .config_write(bus, device, function, register, data);
        }
    }
}
