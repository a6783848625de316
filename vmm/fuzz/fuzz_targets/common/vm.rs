//! A `VmInterface` that records the doorbells devices ask KVM for, instead
//! of registering them, so targets can check them; MSIs go nowhere.

// Compiled into targets that check doorbells and into ones that only need
// a VM for their interrupt path.
#![allow(dead_code)]

use std::io;
use std::sync::Mutex;

use securevm::devices::VmInterface;
use vmm_sys_util::eventfd::EventFd;

#[derive(Default)]
pub struct RecordingVm {
    doorbells: Mutex<Vec<u64>>,
}

impl RecordingVm {
    pub fn doorbells(&self) -> Vec<u64> {
        self.doorbells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl VmInterface for RecordingVm {
    fn signal_msi(&self, _address: u64, _data: u32) -> io::Result<()> {
        Ok(())
    }

    fn register_mmio_doorbell(&self, _event: &EventFd, address: u64) -> io::Result<()> {
        let mut doorbells = self.doorbells.lock().unwrap_or_else(|e| e.into_inner());
        // KVM refuses a second ioeventfd on the same address.
        if doorbells.contains(&address) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        doorbells.push(address);
        Ok(())
    }

    fn unregister_mmio_doorbell(&self, _event: &EventFd, address: u64) -> io::Result<()> {
        let mut doorbells = self.doorbells.lock().unwrap_or_else(|e| e.into_inner());
        let before = doorbells.len();
        doorbells.retain(|&registered| registered != address);
        if doorbells.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }
}
