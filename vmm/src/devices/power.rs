//! The guest's ways to power off or reset the machine: the hardware-reduced
//! ACPI sleep control and reset registers that the FADT advertises, and the
//! i8042 keyboard controller's reset line (`reboot=k`, and Linux's fallback).

use crate::arch::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT, ACPI_SLP_EN,
    I8042_COMMAND_PORT, I8042_DATA_PORT,
};
use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Base and length of the I/O range [`AcpiPowerDevice`] decodes.
pub const ACPI_POWER_PORT_BASE: u16 = ACPI_SLEEP_CONTROL_PORT;
pub const ACPI_POWER_PORT_LEN: u16 = ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1;

/// Sleep control, sleep status and reset registers.
pub struct AcpiPowerDevice {
    exit: ExitNotifier,
}

impl AcpiPowerDevice {
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken", nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let Some(port) = port_at(ACPI_POWER_PORT_BASE, offset) else {
            return;
        };
        if port == ACPI_SLEEP_CONTROL_PORT && value & ACPI_SLP_EN != 0 {
            let sleep_type = (value >> 2) & 0x7;
            if sleep_type == ACPI_S5_SLP_TYP {
                self.exit.request(ExitReason::PowerOff);
            } else {
                crate::rate_limited!(
                    log::Level::Warn,
                    "guest asked for ACPI sleep type {sleep_type}; only S5 (off) is supported"
                );
            }
        } else if port == ACPI_RESET_PORT && value == ACPI_RESET_VALUE {
            self.exit.request(ExitReason::Reboot);
        }
    }
}

/// Just enough of an i8042 for the reset command; no keyboard behind it.
pub struct I8042Device {
    exit: ExitNotifier,
}

const I8042_CMD_RESET: u8 = 0xfe;

impl I8042Device {
    pub const PORT_BASE: u16 = I8042_DATA_PORT;
    pub const PORT_LEN: u16 = I8042_COMMAND_PORT - I8042_DATA_PORT + 1;

    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so drivers
        // neither wait nor read phantom keys.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let port = port_at(I8042_DATA_PORT, offset);
        if port == Some(I8042_COMMAND_PORT) && data.first() == Some(&I8042_CMD_RESET) {
            self.exit.request(ExitReason::Reboot);
        }
    }
}

/// The port `offset` bytes above `base`, if there is one (an offset past
/// the port space must not alias a low port).
fn port_at(base: u16, offset: u64) -> Option<u16> {
    u16::try_from(offset)
        .ok()
        .and_then(|offset| base.checked_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_port(dev: &mut dyn BusDevice, base: u16, port: u16, value: u8) {
        dev.write(u64::from(port - base), &[value]);
    }

    #[test]
    fn s5_powers_off_and_reset_register_reboots() {
        let (exit, events) = ExitNotifier::new();
        let mut dev = AcpiPowerDevice::new(exit);
        let s5 = (ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN;
        write_port(&mut dev, ACPI_POWER_PORT_BASE, ACPI_SLEEP_CONTROL_PORT, s5);
        assert_eq!(events.try_recv().unwrap(), ExitReason::PowerOff);
        write_port(
            &mut dev,
            ACPI_POWER_PORT_BASE,
            ACPI_RESET_PORT,
            ACPI_RESET_VALUE,
        );
        assert_eq!(events.try_recv().unwrap(), ExitReason::Reboot);
    }

    #[test]
    fn other_writes_do_nothing() {
        let (exit, events) = ExitNotifier::new();
        let mut dev = AcpiPowerDevice::new(exit);
        // S5 type without SLP_EN, S3 with SLP_EN, wrong reset value.
        write_port(
            &mut dev,
            ACPI_POWER_PORT_BASE,
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_S5_SLP_TYP << 2,
        );
        write_port(
            &mut dev,
            ACPI_POWER_PORT_BASE,
            ACPI_SLEEP_CONTROL_PORT,
            (3 << 2) | ACPI_SLP_EN,
        );
        write_port(&mut dev, ACPI_POWER_PORT_BASE, ACPI_RESET_PORT, 0x2);
        dev.write(0, &[]);
        assert!(events.try_recv().is_err());
    }

    /// A guest writing unsupported sleep types in a loop gets a bounded
    /// number of warnings, not one per write.
    #[test]
    fn unsupported_sleep_requests_cannot_flood_the_log() {
        let is_sleep_warning = |line: &String| line.starts_with("guest asked for ACPI sleep type");
        crate::storage::test_support::captured_warnings();
        let (exit, _events) = ExitNotifier::new();
        let mut dev = AcpiPowerDevice::new(exit);
        for _ in 0..1000 {
            write_port(
                &mut dev,
                ACPI_POWER_PORT_BASE,
                ACPI_SLEEP_CONTROL_PORT,
                (3 << 2) | ACPI_SLP_EN,
            );
        }
        let logged = crate::storage::test_support::captured_warnings()
            .iter()
            .filter(|line| is_sleep_warning(line))
            .count();
        // Other tests of this process hit the same call site, and an
        // interval may end during the loop: at most two bursts.
        assert!(
            (1..=2 * crate::devices::rate_limit::BURST as usize).contains(&logged),
            "{logged} warnings"
        );
    }

    /// Offsets are never truncated to 16 bits: 0x10000 above a register
    /// is not that register.
    #[test]
    fn offsets_past_the_port_space_reach_no_register() {
        let (exit, events) = ExitNotifier::new();
        let mut acpi = AcpiPowerDevice::new(exit.clone());
        let reset = u64::from(ACPI_RESET_PORT - ACPI_POWER_PORT_BASE);
        acpi.write(0x1_0000 + reset, &[ACPI_RESET_VALUE]);
        acpi.write(u64::MAX, &[ACPI_RESET_VALUE]);
        let mut i8042 = I8042Device::new(exit);
        let command = u64::from(I8042_COMMAND_PORT - I8042_DATA_PORT);
        i8042.write(0x1_0000 + command, &[I8042_CMD_RESET]);
        i8042.write(u64::MAX, &[I8042_CMD_RESET]);
        assert!(events.try_recv().is_err());
    }

    #[test]
    fn i8042_reset_command_reboots() {
        let (exit, events) = ExitNotifier::new();
        let mut dev = I8042Device::new(exit);
        let mut status = [0xff];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
        write_port(
            &mut dev,
            I8042Device::PORT_BASE,
            I8042_DATA_PORT,
            I8042_CMD_RESET,
        );
        assert!(events.try_recv().is_err());
        write_port(
            &mut dev,
            I8042Device::PORT_BASE,
            I8042_COMMAND_PORT,
            I8042_CMD_RESET,
        );
        assert_eq!(events.try_recv().unwrap(), ExitReason::Reboot);
    }
}
