//! The root complex: a host bridge at 00:00.0 and up to 31 devices on
//! bus 0. It places BARs in the 32-bit window when a device is added at
//! boot and keeps the MMIO bus in step with what the guest programs,
//! because only it sees both the configuration writes and the bus.
//!
//! Devices added while the guest runs (PCI hot-plug) arrive the way a
//! card plugged into a running machine does: BARs unassigned and decoding
//! off, for the guest's own resource allocator to place when it scans the
//! slot. Only those devices can be removed again; boot devices stay.

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::config::{DecodedBar, PciConfiguration, PciHeader, BAR_COUNT, COMMAND_MEMORY_SPACE};
use super::{PciDevice, PciError};
use crate::arch::layout::PCI_SLOT_COUNT;
use crate::arch::layout::{PCI_MMIO32_SIZE, PCI_MMIO32_START};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::virtio::{IoGate, VirtioDevice, VirtioPciDevice};
use crate::devices::VmInterface;
use crate::sync::lock;

/// A plain host bridge that no guest kernel applies chipset quirks to.
/// The device ID is Cloud Hypervisor's: the CloudHv build of OVMF reads it
/// (and only it, not the vendor) to tell which platform it runs on, and
/// anything else makes it assume a QEMU chipset with fw_cfg and halt.
const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST_BRIDGE: u8 = 0x00;

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

struct Slot {
    device: SharedPciDevice,
    /// Where each BAR is inserted on the MMIO bus right now.
    mapped: [Option<u64>; BAR_COUNT],
    /// Added while the guest runs, so it may be removed again.
    removable: bool,
}

pub struct PciRoot {
    mmio_bus: Arc<Bus>,
    vm: Arc<dyn VmInterface>,
    /// Through which every virtio device's I/O thread works.
    io_gate: IoGate,
    slots: Mutex<Vec<Option<Slot>>>,
    next_mmio: Mutex<u64>,
}

impl PciRoot {
    /// A root whose virtio devices are never stopped by a pause.
    pub fn new(mmio_bus: Arc<Bus>, vm: Arc<dyn VmInterface>) -> Arc<Self> {
        Self::with_io_gate(mmio_bus, vm, IoGate::default())
    }

    /// A root whose virtio devices serve their queues only while `io_gate`
    /// is open (the VM's vCPU control closes it on pause and lock).
    pub fn with_io_gate(
        mmio_bus: Arc<Bus>,
        vm: Arc<dyn VmInterface>,
        io_gate: IoGate,
    ) -> Arc<Self> {
        let mut slots: Vec<Option<Slot>> = (0..PCI_SLOT_COUNT).map(|_| None).collect();
        slots[0] = Some(Slot {
            device: Arc::new(Mutex::new(HostBridge::new())),
            mapped: [None; BAR_COUNT],
            removable: false,
        });
        Arc::new(Self {
            mmio_bus,
            vm,
            io_gate,
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
            removable: false,
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
        Ok(slot_number(slot_index))
    }

    /// Wrap `device` in a virtio-pci transport and add it.
    pub fn add_virtio_device(
        &self,
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<u8, PciError> {
        let transport = VirtioPciDevice::new(device, mem, self.vm.clone(), self.io_gate.clone())?;
        self.add_device(Arc::new(Mutex::new(transport)))
    }

    /// Put `device` in the first free slot while the guest runs: BARs
    /// unassigned and decoding off, removable later. Returns the slot; the
    /// caller tells the guest (see `hotplug`).
    pub fn add_hotplug_device(&self, device: SharedPciDevice) -> Result<u8, PciError> {
        let mut slots = lock(&self.slots);
        let slot_index = slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoFreeSlot)?;
        {
            let mut dev = lock(&device);
            for index in 0..BAR_COUNT {
                if dev.config().bar_size(index).is_some() {
                    dev.config_mut().set_bar_address(index, 0)?;
                }
            }
            let command = dev.config().command() & !COMMAND_MEMORY_SPACE;
            dev.config_mut().set_command(command);
        }
        slots[slot_index] = Some(Slot {
            device,
            mapped: [None; BAR_COUNT],
            removable: true,
        });
        Ok(slot_number(slot_index))
    }

    /// [`PciRoot::add_hotplug_device`] for a virtio device.
    pub fn add_hotplug_virtio_device(
        &self,
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<u8, PciError> {
        let transport = VirtioPciDevice::new(device, mem, self.vm.clone(), self.io_gate.clone())?;
        self.add_hotplug_device(Arc::new(Mutex::new(transport)))
    }

    /// Take the hot-plugged device out of `slot`: its BARs leave the MMIO
    /// bus (and with them its doorbells), the slot reads empty. Returns
    /// the device; dropping it stops its I/O thread, so the caller drops
    /// it on a thread that may wait, never on a vCPU.
    pub fn remove_device(&self, slot: u8) -> Result<SharedPciDevice, PciError> {
        let mut slots = lock(&self.slots);
        let entry = slots
            .get_mut(usize::from(slot))
            .ok_or(PciError::EmptySlot(slot))?;
        match entry {
            None => return Err(PciError::EmptySlot(slot)),
            Some(present) if !present.removable => return Err(PciError::NotRemovable(slot)),
            Some(_) => {}
        }
        let Some(mut removed) = entry.take() else {
            return Err(PciError::EmptySlot(slot));
        };
        self.remap(&mut removed, &[]);
        Ok(removed.device)
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
                    crate::rate_limited!(
                        log::Level::Warn,
                        "PCI BAR {index} was not mapped at {old:#x}: {e}"
                    );
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
                Err(e) => crate::rate_limited!(
                    log::Level::Warn,
                    "guest placed PCI BAR {index} badly: {e}"
                ),
            }
        }
    }
}

fn bar_access(device: &SharedPciDevice, bar: usize) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(BarAccess {
        device: device.clone(),
        bar,
    }))
}

/// The device number of the slot at `index` of the root's slot table.
fn slot_number(index: usize) -> u8 {
    const _: () = assert!(PCI_SLOT_COUNT <= 1 << 8);
    #[allow(clippy::cast_possible_truncation)] // index < PCI_SLOT_COUNT, which fits a u8
    let number = index as u8;
    number
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

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::devices::pci::test_support::FakeVm;

    type MappedLog = Arc<Mutex<Vec<(usize, Option<u64>)>>>;

    /// A device with a 32-bit and a 64-bit BAR that answers BAR reads
    /// with its BAR number and remembers where it was told it lives.
    struct TwoBars {
        config: PciConfiguration,
        mapped: MappedLog,
    }

    impl TwoBars {
        fn new() -> (Self, MappedLog) {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1234,
                device_id: 0x5678,
                revision_id: 0,
                class_code: 0xff,
                subclass: 0,
                prog_if: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            });
            config.add_memory_bar(0, 0x1000, false).unwrap();
            config.add_memory_bar(2, 0x4000, true).unwrap();
            let mapped = Arc::new(Mutex::new(Vec::new()));
            (
                Self {
                    config,
                    mapped: mapped.clone(),
                },
                mapped,
            )
        }
    }

    impl PciDevice for TwoBars {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn bar_read(&mut self, bar: usize, _offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 + 0x10);
        }
        fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
        fn bar_mapped(&mut self, bar: usize, base: Option<u64>) {
            self.mapped.lock().unwrap().push((bar, base));
        }
    }

    fn setup() -> (Arc<Bus>, Arc<PciRoot>) {
        let bus = Arc::new(Bus::new());
        let root = PciRoot::new(bus.clone(), Arc::new(FakeVm::default()));
        (bus, root)
    }

    fn read_u32(root: &PciRoot, device: u8, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        root.config_read(0, device, 0, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write_u32(root: &PciRoot, device: u8, offset: usize, value: u32) {
        root.config_write(0, device, 0, offset, &value.to_le_bytes());
    }

    fn bus_byte(bus: &Bus, address: u64) -> Option<u8> {
        let mut data = [0u8; 1];
        bus.read(address, &mut data).then_some(data[0])
    }

    #[test]
    fn bars_are_allocated_naturally_aligned_and_mapped() {
        let (bus, root) = setup();
        let (first, _) = TwoBars::new();
        let (second, mapped) = TwoBars::new();
        assert_eq!(root.add_device(Arc::new(Mutex::new(first))).unwrap(), 1);
        assert_eq!(root.add_device(Arc::new(Mutex::new(second))).unwrap(), 2);
        let bar0 = u64::from(read_u32(&root, 2, 0x10));
        let bar2 =
            u64::from(read_u32(&root, 2, 0x18) & !0xf) | u64::from(read_u32(&root, 2, 0x1c)) << 32;
        assert_eq!(bar0 % 0x1000, 0);
        assert_eq!(bar2 % 0x4000, 0);
        assert!(bar0 >= PCI_MMIO32_START && bar2 + 0x4000 <= PCI_MMIO32_START + PCI_MMIO32_SIZE);
        assert_eq!(read_u32(&root, 2, 0x18) & 0xf, 0b0100, "64-bit memory BAR");
        assert_ne!(read_u32(&root, 2, 4) & u32::from(COMMAND_MEMORY_SPACE), 0);
        assert_eq!(bus_byte(&bus, bar0 + 0xfff), Some(0x10));
        assert_eq!(bus_byte(&bus, bar2 + 0x3fff), Some(0x12));
        assert_eq!(
            *mapped.lock().unwrap(),
            vec![(0, Some(bar0)), (2, Some(bar2))]
        );
    }

    #[test]
    fn sizing_then_relocation_moves_the_bus_range() {
        let (bus, root) = setup();
        let (device, mapped) = TwoBars::new();
        let slot = root.add_device(Arc::new(Mutex::new(device))).unwrap();
        let old = u64::from(read_u32(&root, slot, 0x10));
        mapped.lock().unwrap().clear();

        // What a kernel does: decode off, size, program, decode on.
        write_u32(&root, slot, 4, 0);
        assert_eq!(bus_byte(&bus, old), None, "decode off unmaps");
        write_u32(&root, slot, 0x10, u32::MAX);
        assert_eq!(read_u32(&root, slot, 0x10), 0xffff_f000);
        write_u32(&root, slot, 0x18, u32::MAX);
        write_u32(&root, slot, 0x1c, u32::MAX);
        assert_eq!(read_u32(&root, slot, 0x18), 0xffff_c004);
        assert_eq!(read_u32(&root, slot, 0x1c), u32::MAX);
        let new = 0xd000_0000u64;
        write_u32(&root, slot, 0x10, new as u32);
        write_u32(&root, slot, 0x18, 0xd001_0000);
        write_u32(&root, slot, 0x1c, 0);
        assert_eq!(bus_byte(&bus, new), None, "still not decoding");
        write_u32(&root, slot, 4, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(bus_byte(&bus, new), Some(0x10));
        assert_eq!(bus_byte(&bus, 0xd001_0000), Some(0x12));
        assert_eq!(bus_byte(&bus, old), None);
        let events = mapped.lock().unwrap().clone();
        assert!(events.contains(&(0, None)));
        assert!(events.ends_with(&[(0, Some(new)), (2, Some(0xd001_0000))]));

        // Moving a BAR while decoding is on moves it at once.
        write_u32(&root, slot, 0x10, 0xd002_0000);
        assert_eq!(bus_byte(&bus, new), None);
        assert_eq!(bus_byte(&bus, 0xd002_0000), Some(0x10));
    }

    /// What the CloudHv firmware's PCI bus driver does to a device the VMM
    /// placed: decoding off with a 16-bit write to the command register,
    /// each BAR dword sized (all ones, read, original written back), the
    /// 64-bit BAR moved into its 64-bit aperture (here the top eighth of a
    /// 46-bit address space), then decoding back on.
    #[test]
    fn firmware_enumeration_moves_a_64bit_bar_above_4gib() {
        let (bus, root) = setup();
        let (device, mapped) = TwoBars::new();
        let slot = root.add_device(Arc::new(Mutex::new(device))).unwrap();
        let old_bar0 = u64::from(read_u32(&root, slot, 0x10));
        let old_bar2 = u64::from(read_u32(&root, slot, 0x18) & !0xf);
        mapped.lock().unwrap().clear();

        let mut command = [0u8; 2];
        root.config_read(0, slot, 0, 4, &mut command);
        let off = u16::from_le_bytes(command) & !COMMAND_MEMORY_SPACE;
        root.config_write(0, slot, 0, 4, &off.to_le_bytes());
        assert_eq!(bus_byte(&bus, old_bar0), None);
        assert_eq!(bus_byte(&bus, old_bar2), None);
        assert_eq!(*mapped.lock().unwrap(), vec![(0, None), (2, None)]);
        mapped.lock().unwrap().clear();
        for (offset, expected) in [(0x10, 0xffff_f000), (0x18, 0xffff_c004), (0x1c, u32::MAX)] {
            let original = read_u32(&root, slot, offset);
            write_u32(&root, slot, offset, u32::MAX);
            assert_eq!(
                read_u32(&root, slot, offset),
                expected,
                "BAR at {offset:#x}"
            );
            write_u32(&root, slot, offset, original);
        }
        assert!(mapped.lock().unwrap().is_empty(), "sizing maps nothing");

        let high = 0x3800_0000_0000u64;
        write_u32(&root, slot, 0x10, 0xc000_0000);
        write_u32(&root, slot, 0x18, high as u32);
        write_u32(&root, slot, 0x1c, (high >> 32) as u32);
        let on = off | COMMAND_MEMORY_SPACE;
        root.config_write(0, slot, 0, 4, &on.to_le_bytes());
        assert_eq!(bus_byte(&bus, 0xc000_0000), Some(0x10));
        assert_eq!(bus_byte(&bus, high + 0x3fff), Some(0x12));
        assert_eq!(bus_byte(&bus, high + 0x4000), None);
        assert!(mapped
            .lock()
            .unwrap()
            .ends_with(&[(0, Some(0xc000_0000)), (2, Some(high))]));
    }

    #[test]
    fn colliding_bar_stays_unmapped_and_spares_the_other_device() {
        let (bus, root) = setup();
        let (first, _) = TwoBars::new();
        let (second, _) = TwoBars::new();
        let a = root.add_device(Arc::new(Mutex::new(first))).unwrap();
        let b = root.add_device(Arc::new(Mutex::new(second))).unwrap();
        let a_bar0 = read_u32(&root, a, 0x10);
        let b_bar0 = u64::from(read_u32(&root, b, 0x10));
        write_u32(&root, b, 0x10, a_bar0);
        assert_eq!(bus_byte(&bus, u64::from(a_bar0)), Some(0x10));
        assert_eq!(bus_byte(&bus, b_bar0), None);
        // B moves away again: A's range must survive.
        write_u32(&root, b, 0x10, 0xd100_0000);
        assert_eq!(bus_byte(&bus, u64::from(a_bar0)), Some(0x10));
        assert_eq!(bus_byte(&bus, 0xd100_0000), Some(0x10));
    }

    #[test]
    fn slots_and_window_run_out_cleanly() {
        let (_bus, root) = setup();
        for _ in 1..PCI_SLOT_COUNT {
            let (device, _) = TwoBars::new();
            root.add_device(Arc::new(Mutex::new(device))).unwrap();
        }
        let (device, _) = TwoBars::new();
        assert!(matches!(
            root.add_device(Arc::new(Mutex::new(device))),
            Err(PciError::NoFreeSlot)
        ));
        let (_bus, root) = setup();
        let mut huge = TwoBars::new().0;
        huge.config = PciConfiguration::new(&PciHeader {
            vendor_id: 1,
            device_id: 1,
            revision_id: 0,
            class_code: 0,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        huge.config.add_memory_bar(0, 1 << 32, true).unwrap();
        assert!(matches!(
            root.add_device(Arc::new(Mutex::new(huge))),
            Err(PciError::MmioWindowFull { .. })
        ));
    }

    #[test]
    fn a_hot_plugged_device_waits_for_the_guest_to_place_its_bars() {
        let (bus, root) = setup();
        let (boot, _) = TwoBars::new();
        let boot_slot = root.add_device(Arc::new(Mutex::new(boot))).unwrap();
        let (device, mapped) = TwoBars::new();
        let slot = root
            .add_hotplug_device(Arc::new(Mutex::new(device)))
            .unwrap();
        assert_eq!(slot, boot_slot + 1);
        assert_eq!(read_u32(&root, slot, 0), 0x5678_1234, "present at once");
        assert_eq!(read_u32(&root, slot, 0x10), 0, "BAR 0 unassigned");
        assert_eq!(
            read_u32(&root, slot, 4) & u32::from(COMMAND_MEMORY_SPACE),
            0
        );
        assert!(mapped.lock().unwrap().is_empty());

        write_u32(&root, slot, 0x10, 0xd000_0000);
        write_u32(&root, slot, 4, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(bus_byte(&bus, 0xd000_0000), Some(0x10));

        let removed = root.remove_device(slot).unwrap();
        assert_eq!(bus_byte(&bus, 0xd000_0000), None, "BAR unmapped");
        assert_eq!(read_u32(&root, slot, 0), u32::MAX, "slot reads empty");
        assert!(
            mapped.lock().unwrap().contains(&(0, None)),
            "the device learns its BAR is gone"
        );
        drop(removed);

        // The slot is free for the next device.
        let (again, _) = TwoBars::new();
        assert_eq!(
            root.add_hotplug_device(Arc::new(Mutex::new(again)))
                .unwrap(),
            slot
        );
    }

    #[test]
    fn boot_devices_and_empty_slots_cannot_be_removed() {
        let (bus, root) = setup();
        let (boot, _) = TwoBars::new();
        let slot = root.add_device(Arc::new(Mutex::new(boot))).unwrap();
        let bar0 = u64::from(read_u32(&root, slot, 0x10));
        assert!(matches!(
            root.remove_device(slot),
            Err(PciError::NotRemovable(s)) if s == slot
        ));
        assert!(matches!(
            root.remove_device(0),
            Err(PciError::NotRemovable(0))
        ));
        assert!(matches!(root.remove_device(9), Err(PciError::EmptySlot(9))));
        assert!(matches!(
            root.remove_device(200),
            Err(PciError::EmptySlot(200))
        ));
        assert_eq!(bus_byte(&bus, bar0), Some(0x10), "boot device untouched");
    }

    #[test]
    fn host_bridge_is_at_slot_zero() {
        let (_bus, root) = setup();
        assert_eq!(read_u32(&root, 0, 0), 0x0d57_1b36);
        assert_eq!(read_u32(&root, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(read_u32(&root, 0, 0x10), 0, "no BARs");
    }
}
