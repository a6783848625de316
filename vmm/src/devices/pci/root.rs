//! The root complex: a host bridge at 00:00.0 and up to 31 devices on
//! bus 0. It places BARs in the 32-bit window when a device is added and
//! keeps the MMIO bus in step with what the guest programs, because only
//! it sees both the configuration writes and the bus.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::GuestMemoryMmap;

use super::config::{DecodedBar, PciConfiguration, PciHeader, BAR_COUNT, COMMAND_MEMORY_SPACE};
use super::{PciDevice, PciError, SLOT_COUNT};
use crate::arch::layout::{PCI_MMIO32_SIZE, PCI_MMIO32_START};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::virtio::{VirtioDevice, VirtioPciDevice};
use crate::devices::VmInterface;

/// Red Hat's generic PCIe host bridge IDs: a plain bridge that no guest
/// kernel applies chipset quirks to.
const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
const HOST_BRIDGE_DEVICE: u16 = 0x0008;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST_BRIDGE: u8 = 0x00;

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

struct Slot {
    device: SharedPciDevice,
    /// Where each BAR is inserted on the MMIO bus right now.
    mapped: [Option<u64>; BAR_COUNT],
}

pub struct PciRoot {
    mmio_bus: Arc<Bus>,
    vm: Arc<dyn VmInterface>,
    slots: Mutex<Vec<Option<Slot>>>,
    next_mmio: Mutex<u64>,
}

impl PciRoot {
    pub fn new(mmio_bus: Arc<Bus>, vm: Arc<dyn VmInterface>) -> Arc<Self> {
        let mut slots: Vec<Option<Slot>> = (0..SLOT_COUNT).map(|_| None).collect();
        slots[0] = Some(Slot {
            device: Arc::new(Mutex::new(HostBridge::new())),
            mapped: [None; BAR_COUNT],
        });
        Arc::new(Self {
            mmio_bus,
            vm,
            slots: Mutex::new(slots),
            next_mmio: Mutex::new(PCI_MMIO32_START),
        })
    }

    /// Put `device` in the first free slot, give its BARs addresses in the
    /// 32-bit window, enable memory decoding (as firmware would) and map
    /// them. Returns the slot number (device number on bus 0).
    pub fn add_device(&self, device: SharedPciDevice) -> Result<u8, PciError> {
        let mut slots = lock(&self.slots);
        let slot_index = slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoFreeSlot)?;
        {
            let mut dev = lock(&device);
            for index in 0..BAR_COUNT {
                if let Some(size) = dev.config().bar_size(index) {
                    let base = self.allocate_mmio(size)?;
                    dev.config_mut().set_bar_address(index, base)?;
                }
            }
            let command = dev.config().command() | COMMAND_MEMORY_SPACE;
            dev.config_mut().set_command(command);
        }
        let mut slot = Slot {
            device,
            mapped: [None; BAR_COUNT],
        };
        let wanted = lock(&slot.device).config().decoded_bars();
        for bar in wanted {
            self.mmio_bus
                .insert(bar_access(&slot.device, bar.index), bar.base, bar.size)
                .map_err(|source| PciError::MapBar {
                    base: bar.base,
                    source,
                })?;
            slot.mapped[bar.index] = Some(bar.base);
            lock(&slot.device).bar_mapped(bar.index, Some(bar.base));
        }
        slots[slot_index] = Some(slot);
        Ok(slot_index as u8)
    }

    /// Wrap `device` in a virtio-pci transport and add it.
    pub fn add_virtio_device(
        &self,
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<u8, PciError> {
        let transport = VirtioPciDevice::new(device, mem, self.vm.clone())?;
        self.add_device(Arc::new(Mutex::new(transport)))
    }

    fn allocate_mmio(&self, size: u64) -> Result<u64, PciError> {
        let mut next = lock(&self.next_mmio);
        let base = next.checked_next_multiple_of(size);
        let end = base.and_then(|base| base.checked_add(size));
        match (base, end) {
            (Some(base), Some(end)) if end <= PCI_MMIO32_START + PCI_MMIO32_SIZE => {
                *next = end;
                Ok(base)
            }
            _ => Err(PciError::MmioWindowFull { size }),
        }
    }

    fn device_at(&self, bus: u8, device: u8, function: u8) -> Option<SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        let slots = lock(&self.slots);
        let slot = slots.get(usize::from(device))?.as_ref()?;
        Some(slot.device.clone())
    }

    /// Configuration read; absent functions read all ones, as on hardware.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        match self.device_at(bus, device, function) {
            Some(dev) => lock(&dev).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write; afterwards the MMIO bus is brought in line
    /// with the BARs the device now decodes.
    pub fn config_write(&self, bus: u8, device: u8, function: u8, offset: usize, data: &[u8]) {
        if bus != 0 || function != 0 {
            return;
        }
        // Holding the slot table across the write keeps concurrent
        // configuration writers from remapping from a stale view.
        let mut slots = lock(&self.slots);
        let Some(Some(slot)) = slots.get_mut(usize::from(device)) else {
            return;
        };
        let wanted = {
            let mut dev = lock(&slot.device);
            dev.config_write(offset, data);
            dev.config().decoded_bars()
        };
        self.remap(slot, &wanted);
    }

    fn remap(&self, slot: &mut Slot, wanted: &[DecodedBar]) {
        for index in 0..BAR_COUNT {
            let target = wanted.iter().find(|bar| bar.index == index);
            if slot.mapped[index] == target.map(|bar| bar.base) {
                continue;
            }
            if let Some(old) = slot.mapped[index].take() {
                if let Err(e) = self.mmio_bus.remove(old) {
                    log::warn!("PCI BAR {index} was not mapped at {old:#x}: {e}");
                }
                lock(&slot.device).bar_mapped(index, None);
            }
            let Some(bar) = target else { continue };
            match self
                .mmio_bus
                .insert(bar_access(&slot.device, index), bar.base, bar.size)
            {
                Ok(()) => {
                    slot.mapped[index] = Some(bar.base);
                    lock(&slot.device).bar_mapped(index, Some(bar.base));
                }
                // The guest chose an address that collides with another
                // device; the BAR stays unreachable until it picks another.
                Err(e) => log::warn!("guest placed PCI BAR {index} badly: {e}"),
            }
        }
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn bar_access(device: &SharedPciDevice, bar: usize) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(BarAccess {
        device: device.clone(),
        bar,
    }))
}

/// What the MMIO bus holds for one BAR: forwards to the owning device.
struct BarAccess {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarAccess {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).bar_write(self.bar, offset, data);
    }
}

struct HostBridge {
    config: PciConfiguration,
}

impl HostBridge {
    fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR,
                device_id: HOST_BRIDGE_DEVICE,
                revision_id: 0,
                class_code: CLASS_BRIDGE,
                subclass: SUBCLASS_HOST_BRIDGE,
                prog_if: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
