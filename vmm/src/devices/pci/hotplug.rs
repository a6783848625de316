//! The ACPI PCI hot-plug controller: three 32-bit registers on the I/O
//! bus that the DSDT's AML reads and writes (see `arch::acpi::dsdt`),
//! one bit per slot on bus 0.
//!
//! - `UP` (read, cleared by the read): slots whose device just appeared;
//!   the AML notifies each with "device check" and the OS scans the slot.
//! - `DOWN` (read, cleared by the read): slots the VMM asks the OS to
//!   give up; the AML notifies each with "eject request", the OS stops
//!   using the device, unbinds its driver and runs the slot's `_EJ0`.
//! - `EJECT` (write): `_EJ0` writes the slot's bit; the OS is done with
//!   the device and the VMM may remove it.
//!
//! The VMM side announces a slot and then raises the hot-plug interrupt;
//! the guest runs the slot scan in its own time. A vCPU only ever flips
//! bits and wakes a waiter here: the attach and detach work happens on
//! the thread that asked for it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::arch::layout::{
    PCI_HOTPLUG_REGISTER_DOWN, PCI_HOTPLUG_REGISTER_EJECT, PCI_HOTPLUG_REGISTER_UP, PCI_SLOT_COUNT,
};
use crate::devices::bus::BusDevice;
use crate::sync::Unpoisoned;

const _: () = assert!(
    PCI_SLOT_COUNT <= 32,
    "one bit per slot in a 32-bit register"
);

/// Raises the guest's hot-plug interrupt (an irqfd in the VMM).
pub type RaiseInterrupt = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    #[error("PCI slot {0} does not exist on bus 0")]
    NoSuchSlot(u8),
    #[error("cannot raise the hot-plug interrupt: {0}")]
    Interrupt(String),
}

#[derive(Default)]
struct Registers {
    up: u32,
    down: u32,
    /// Slots the guest ejected and the VMM has not taken back yet.
    ejected: u32,
    /// The VM stopped: nobody will eject anything any more.
    closed: bool,
}

/// The controller's state, shared by the I/O bus (guest side) and the
/// thread that attaches and detaches devices (VMM side).
pub struct PciHotplug {
    registers: Mutex<Registers>,
    ejected_changed: Condvar,
    raise: RaiseInterrupt,
}

impl PciHotplug {
    pub fn new(raise: RaiseInterrupt) -> Self {
        Self {
            registers: Mutex::new(Registers::default()),
            ejected_changed: Condvar::new(),
            raise,
        }
    }

    /// A device now sits in `slot`: tell the guest to scan it.
    pub fn announce_insert(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = slot_bit(slot)?;
        {
            let mut registers = self.lock();
            registers.up |= bit;
            registers.down &= !bit;
            registers.ejected &= !bit;
        }
        self.raise_interrupt()
    }

    /// Ask the guest to give up the device in `slot`.
    pub fn request_eject(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = slot_bit(slot)?;
        {
            let mut registers = self.lock();
            registers.down |= bit;
            registers.up &= !bit;
        }
        self.raise_interrupt()
    }

    /// Waits until the guest ejected `slot` or `deadline` passes; true
    /// when it did. The eject is consumed.
    pub fn wait_ejected(&self, slot: u8, deadline: Instant) -> Result<bool, HotplugError> {
        let bit = slot_bit(slot)?;
        let mut registers = self.lock();
        loop {
            if registers.ejected & bit != 0 {
                registers.ejected &= !bit;
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline || registers.closed {
                return Ok(false);
            }
            registers = self
                .ejected_changed
                .wait_timeout(registers, deadline - now)
                .unpoisoned()
                .0;
        }
    }

    /// The VM stopped: a waiting detach gives up at once instead of
    /// holding up the shutdown until its deadline.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ejected_changed.notify_all();
    }

    /// Forgets any pending state of `slot` (its device is gone).
    pub fn clear(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = slot_bit(slot)?;
        let mut registers = self.lock();
        registers.up &= !bit;
        registers.down &= !bit;
        registers.ejected &= !bit;
        Ok(())
    }

    fn raise_interrupt(&self) -> Result<(), HotplugError> {
        (self.raise)().map_err(|e| HotplugError::Interrupt(e.to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, Registers> {
        self.registers.lock().unpoisoned()
    }

    fn guest_read(&self, offset: u64) -> u32 {
        let mut registers = self.lock();
        match offset {
            PCI_HOTPLUG_REGISTER_UP => std::mem::take(&mut registers.up),
            PCI_HOTPLUG_REGISTER_DOWN => std::mem::take(&mut registers.down),
            _ => 0,
        }
    }

    fn guest_write(&self, offset: u64, value: u32) {
        if offset != PCI_HOTPLUG_REGISTER_EJECT || value == 0 {
            return;
        }
        self.lock().ejected |= value;
        self.ejected_changed.notify_all();
    }
}

fn slot_bit(slot: u8) -> Result<u32, HotplugError> {
    if usize::from(slot) < PCI_SLOT_COUNT {
        Ok(1 << slot)
    } else {
        Err(HotplugError::NoSuchSlot(slot))
    }
}

/// The register block as the I/O bus sees it. Only aligned 32-bit
/// accesses mean anything (the AML's fields are DWordAcc); others read
/// zero and are ignored, so a probing guest cannot clear bits by halves.
pub struct PciHotplugPorts {
    controller: std::sync::Arc<PciHotplug>,
}

impl PciHotplugPorts {
    pub fn new(controller: std::sync::Arc<PciHotplug>) -> Self {
        Self { controller }
    }
}

impl BusDevice for PciHotplugPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.controller.guest_read(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.controller
                .guest_write(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn controller() -> (Arc<PciHotplug>, Arc<AtomicUsize>, PciHotplugPorts) {
        let raised = Arc::new(AtomicUsize::new(0));
        let counter = raised.clone();
        let hotplug = Arc::new(PciHotplug::new(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })));
        let ports = PciHotplugPorts::new(hotplug.clone());
        (hotplug, raised, ports)
    }

    fn read(ports: &mut PciHotplugPorts, offset: u64) -> u32 {
        let mut data = [0xffu8; 4];
        ports.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn an_insert_shows_once_in_up_and_raises_the_interrupt() {
        let (hotplug, raised, mut ports) = controller();
        hotplug.announce_insert(3).unwrap();
        hotplug.announce_insert(5).unwrap();
        assert_eq!(raised.load(Ordering::SeqCst), 2);
        assert_eq!(
            read(&mut ports, PCI_HOTPLUG_REGISTER_UP),
            (1 << 3) | (1 << 5)
        );
        assert_eq!(
            read(&mut ports, PCI_HOTPLUG_REGISTER_UP),
            0,
            "reading clears"
        );
        assert_eq!(read(&mut ports, PCI_HOTPLUG_REGISTER_DOWN), 0);
    }

    #[test]
    fn an_eject_request_shows_in_down_and_cancels_a_pending_insert() {
        let (hotplug, _, mut ports) = controller();
        hotplug.announce_insert(4).unwrap();
        hotplug.request_eject(4).unwrap();
        assert_eq!(read(&mut ports, PCI_HOTPLUG_REGISTER_UP), 0);
        assert_eq!(read(&mut ports, PCI_HOTPLUG_REGISTER_DOWN), 1 << 4);
        assert_eq!(read(&mut ports, PCI_HOTPLUG_REGISTER_DOWN), 0);
    }

    #[test]
    fn the_guests_eject_wakes_the_waiter() {
        let (hotplug, _, mut ports) = controller();
        hotplug.request_eject(6).unwrap();
        let waiter = {
            let hotplug = hotplug.clone();
            std::thread::spawn(move || {
                hotplug.wait_ejected(6, Instant::now() + Duration::from_secs(10))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        ports.write(PCI_HOTPLUG_REGISTER_EJECT, &(1u32 << 6).to_le_bytes());
        assert_eq!(waiter.join().unwrap(), Ok(true));
        // Consumed: a second wait times out.
        assert_eq!(
            hotplug.wait_ejected(6, Instant::now() + Duration::from_millis(20)),
            Ok(false)
        );
    }

    #[test]
    fn a_guest_that_never_ejects_times_out() {
        let (hotplug, _, mut ports) = controller();
        hotplug.request_eject(7).unwrap();
        ports.write(PCI_HOTPLUG_REGISTER_EJECT, &(1u32 << 8).to_le_bytes());
        let start = Instant::now();
        assert_eq!(
            hotplug.wait_ejected(7, start + Duration::from_millis(100)),
            Ok(false)
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn closing_releases_a_waiting_detach_at_once() {
        let (hotplug, _, _) = controller();
        hotplug.request_eject(9).unwrap();
        let waiter = {
            let hotplug = hotplug.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let ejected = hotplug.wait_ejected(9, start + Duration::from_secs(30));
                (ejected, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        hotplug.close();
        let (ejected, waited) = waiter.join().unwrap();
        assert_eq!(ejected, Ok(false));
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn odd_accesses_neither_read_nor_clear() {
        let (hotplug, _, mut ports) = controller();
        hotplug.announce_insert(2).unwrap();
        let mut half = [0xffu8; 2];
        ports.read(PCI_HOTPLUG_REGISTER_UP, &mut half);
        assert_eq!(half, [0, 0]);
        let mut misaligned = [0xffu8; 4];
        ports.read(PCI_HOTPLUG_REGISTER_UP + 1, &mut misaligned);
        assert_eq!(misaligned, [0; 4]);
        ports.write(PCI_HOTPLUG_REGISTER_EJECT, &[0xff, 0xff]);
        assert_eq!(
            read(&mut ports, PCI_HOTPLUG_REGISTER_UP),
            1 << 2,
            "still pending"
        );
        assert_eq!(
            hotplug.wait_ejected(2, Instant::now()),
            Ok(false),
            "a 16-bit write is no eject"
        );
    }

    #[test]
    fn slots_beyond_the_bus_are_refused() {
        let (hotplug, raised, _) = controller();
        assert_eq!(
            hotplug.announce_insert(32),
            Err(HotplugError::NoSuchSlot(32))
        );
        assert_eq!(hotplug.request_eject(40), Err(HotplugError::NoSuchSlot(40)));
        assert_eq!(raised.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failing_interrupt_is_reported() {
        let hotplug = PciHotplug::new(Box::new(|| Err(std::io::Error::other("gone"))));
        assert!(matches!(
            hotplug.announce_insert(1),
            Err(HotplugError::Interrupt(text)) if text.contains("gone")
        ));
    }
}
