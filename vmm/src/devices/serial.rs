//! COM1: a 16550 UART (vm-superio) whose output is the guest console on
//! securevm's stdout (through [`crate::console::output`]) and whose input is fed by the console thread. The
//! interrupt line is an eventfd that KVM routes to ISA IRQ 4 (irqfd), so
//! raising it never needs the vCPU that is running.

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// The serial interrupt as a KVM irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(event: EventFd) -> Self {
        Self(event)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub type ConsoleOutput = Box<dyn Write + Send>;

pub struct SerialDevice {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOutput>,
}

impl SerialDevice {
    /// Number of I/O ports a 16550 decodes.
    pub const PORT_LEN: u16 = 8;

    pub fn new(interrupt: EventFd, output: ConsoleOutput) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger::new(interrupt), output),
        }
    }

    /// Queue guest input; returns how many bytes fitted in the receive
    /// FIFO (the rest must be offered again once the guest has read).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(accepted) => accepted,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                crate::rate_limited!(log::Level::Warn, "serial input dropped: {e}");
                bytes.len()
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(first), Ok(register)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(register);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(register)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(register, value) {
                crate::rate_limited!(log::Level::Warn, "serial output failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR_RBR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn transmitted_bytes_reach_the_console() {
        let out = Captured::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"ok\n" {
            dev.write(THR_RBR, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok\n");
    }

    #[test]
    fn input_is_readable_and_raises_the_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        // Enable the received-data interrupt as a driver would.
        dev.write(IER, &[0x1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut lsr = [0];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x1, 0x1, "data ready");
        let mut byte = [0];
        dev.read(THR_RBR, &mut byte);
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn full_fifo_accepts_only_what_fits() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, Box::new(io::sink()));
        let big = vec![b'a'; 1000];
        let accepted = dev.enqueue_input(&big);
        assert!(accepted > 0 && accepted < big.len());
        assert_eq!(dev.enqueue_input(&big), 0);
    }
}
