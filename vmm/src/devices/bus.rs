//! Address-range dispatch for port I/O and MMIO exits: which device owns
//! the address a vCPU touched. Ranges never overlap; lookups are shared
//! (read lock) so that vCPUs exiting at once do not serialise on the map,
//! only on the device they hit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::sync::Unpoisoned;

/// A device reachable through a [`Bus`]. `offset` is relative to the start
/// of the range it was inserted at; `data.len()` is the access width.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("no device is mapped at {0:#x}")]
    NotMapped(u64),
}

pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Range {
    len: u64,
    device: SharedBusDevice,
}

/// A set of non-overlapping `[base, base + len)` ranges, each owned by a device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Range>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let end = end.ok_or(BusError::Overlap { base, len })?;
        let mut ranges = self.ranges.write().unpoisoned();
        let overlaps_previous = ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&start, r)| start + r.len > base);
        if overlaps_previous {
            return Err(BusError::Overlap { base, len });
        }
        ranges.insert(base, Range { len, device });
        Ok(())
    }

    /// Remove the range that starts at `base`, returning its device.
    pub fn remove(&self, base: u64) -> Result<SharedBusDevice, BusError> {
        let mut ranges = self.ranges.write().unpoisoned();
        ranges
            .remove(&base)
            .map(|r| r.device)
            .ok_or(BusError::NotMapped(base))
    }

    fn resolve(&self, addr: u64) -> Option<(u64, SharedBusDevice)> {
        let ranges = self.ranges.read().unpoisoned();
        let (&start, range) = ranges.range(..=addr).next_back()?;
        (addr - start < range.len).then(|| (addr - start, range.device.clone()))
    }

    /// Dispatch a read; returns false (and leaves `data` alone) when no
    /// device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                device.lock().unpoisoned().read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                device.lock().unpoisoned().write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_within_range() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x105, &mut buf));
        assert_eq!(buf, [5, 5]);
        assert!(bus.write(0x10f, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0xf, vec![7])));
        assert!(!bus.read(0x110, &mut buf));
        assert!(!bus.write(0xff, &[1]));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(bus.insert(dev.clone(), 0x10f, 1).is_err());
        assert!(bus.insert(dev.clone(), 0xf8, 0x9).is_err());
        assert!(bus.insert(dev.clone(), 0x200, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev.clone(), 0x110, 1).unwrap();
        bus.insert(dev, 0xf0, 0x10).unwrap();
    }

    #[test]
    fn remove_unmaps() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 0x10)
            .unwrap();
        assert!(bus.remove(0x100).is_ok());
        assert!(!bus.write(0x100, &[1]));
        assert_eq!(bus.remove(0x100).err(), Some(BusError::NotMapped(0x100)));
    }
}
