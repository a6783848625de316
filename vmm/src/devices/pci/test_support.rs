//! Test doubles shared by the PCI and virtio tests: a `VmInterface` that
//! records MSIs and doorbell registrations instead of calling KVM.

use std::io;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::VmInterface;

#[derive(Default)]
pub struct FakeVm {
    msis: Mutex<Vec<(u64, u32)>>,
    msi_arrived: Condvar,
    doorbells: Mutex<Vec<(u64, EventFd)>>,
}

impl FakeVm {
    pub fn msis(&self) -> Vec<(u64, u32)> {
        self.msis.lock().unwrap().clone()
    }

    /// Wait until at least `count` MSIs were delivered; false on timeout.
    pub fn wait_for_msis(&self, count: usize) -> bool {
        let guard = self.msis.lock().unwrap();
        let (guard, _) = self
            .msi_arrived
            .wait_timeout_while(guard, Duration::from_secs(10), |msis| msis.len() < count)
            .unwrap();
        guard.len() >= count
    }

    pub fn doorbell_addresses(&self) -> Vec<u64> {
        self.doorbells
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| *a)
            .collect()
    }

    /// What KVM does on a guest write to a registered doorbell address.
    pub fn ring_doorbell(&self, address: u64) -> bool {
        let doorbells = self.doorbells.lock().unwrap();
        match doorbells.iter().find(|(a, _)| *a == address) {
            Some((_, event)) => event.write(1).is_ok(),
            None => false,
        }
    }
}

impl VmInterface for FakeVm {
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<()> {
        self.msis.lock().unwrap().push((address, data));
        self.msi_arrived.notify_all();
        Ok(())
    }

    fn register_mmio_doorbell(&self, event: &EventFd, address: u64) -> io::Result<()> {
        let mut doorbells = self.doorbells.lock().unwrap();
        if doorbells.iter().any(|(a, _)| *a == address) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        doorbells.push((address, event.try_clone()?));
        Ok(())
    }

    fn unregister_mmio_doorbell(&self, _event: &EventFd, address: u64) -> io::Result<()> {
        let mut doorbells = self.doorbells.lock().unwrap();
        let before = doorbells.len();
        doorbells.retain(|(a, _)| *a != address);
        if doorbells.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }
}
