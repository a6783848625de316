//! The guest's ways to power off or reset the machine: the hardware-reduced
//! ACPI sleep control and reset registers that the FADT advertises, and the
//! i8042 keyboard controller's reset line (`reboot=k`, and Linux's fallback).

use crate::arch::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_SLP_EN, I8042_COMMAND_PORT, I8042_DATA_PORT,
};
use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Base and length of the I/O range [`AcpiPowerDevice`] decodes.
pub const ACPI_POWER_PORT_BASE: u16 = ACPI_SLEEP_CONTROL_PORT;
pub const ACPI_POWER_PORT_LEN: u16 = ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1;
/// The CloudHv firmware's ACPI PM timer (`CLOUDHV_ACPI_TIMER_IO_ADDRESS`)
/// follows at 0x608; these registers must end before it.
const _: () = assert!(ACPI_POWER_PORT_BASE + ACPI_POWER_PORT_LEN <= 0x608);

/// Sleep control, sleep status and reset registers, each one byte wide
/// (the FADT says so, and the CloudHv firmware powers off with a byte
/// write to the sleep control register).
pub struct AcpiPowerDevice {
    exit: ExitNotifier,
}

impl AcpiPowerDevice {
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }

    /// The register at `offset`, if the access is the byte wide one every
    /// register here takes.
    fn register(offset: u64, len: usize) -> Option<u16> {
        let port = port_at(ACPI_POWER_PORT_BASE, offset)?;
        let known = [
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_SLEEP_STATUS_PORT,
            ACPI_RESET_PORT,
        ];
        if len != 1 || !known.contains(&port) {
            crate::rate_limited!(
                log::Level::Debug,
                "ignoring a {len}-byte access to ACPI power port offset {offset:#x}"
            );
            return None;
        }
        Some(port)
    }
}

impl BusDevice for AcpiPowerDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::register(offset, data.len()) {
            // Sleep status: never "woken", nothing pending; the control and
            // reset registers are write-only and read as zero.
            Some(_) => data.fill(0),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(port) = Self::register(offset, data.len()) else {
            return;
        };
        let value = data[0];
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

    /// The CloudHv firmware's shutdown, literally: `IoWrite8 (0x600,
    /// 5 << 2 | 1 << 5)`, with the device where the VMM puts it.
    #[test]
    fn the_firmware_powers_off_with_a_byte_at_port_0x600() {
        let (exit, events) = ExitNotifier::new();
        let mut dev = AcpiPowerDevice::new(exit);
        assert_eq!(ACPI_POWER_PORT_BASE, 0x600);
        dev.write(0x600 - u64::from(ACPI_POWER_PORT_BASE), &[5 << 2 | 1 << 5]);
        assert_eq!(events.try_recv().unwrap(), ExitReason::PowerOff);
    }

    #[test]
    fn accesses_of_the_wrong_width_do_nothing_and_read_all_ones() {
        let (exit, events) = ExitNotifier::new();
        let mut dev = AcpiPowerDevice::new(exit);
        let s5 = (ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN;
        let control = u64::from(ACPI_SLEEP_CONTROL_PORT - ACPI_POWER_PORT_BASE);
        let reset = u64::from(ACPI_RESET_PORT - ACPI_POWER_PORT_BASE);
        dev.write(control, &[s5, 0]);
        dev.write(control, &[s5, 0, 0, 0]);
        dev.write(reset, &[ACPI_RESET_VALUE, 0]);
        dev.write(reset, &[ACPI_RESET_VALUE, 0, 0, 0]);
        assert!(events.try_recv().is_err());
        for len in [2, 4, 8] {
            let mut data = vec![0u8; len];
            dev.read(control, &mut data);
            assert!(data.iter().all(|b| *b == 0xff), "{len}-byte read {data:?}");
        }
    }

    #[test]
    fn registers_read_zero_and_the_gaps_between_them_read_all_ones() {
        let (exit, events) = ExitNotifier::new();
        let mut dev = AcpiPowerDevice::new(exit);
        for port in [
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_SLEEP_STATUS_PORT,
            ACPI_RESET_PORT,
        ] {
            let mut data = [0xaa];
            dev.read(u64::from(port - ACPI_POWER_PORT_BASE), &mut data);
            assert_eq!(data, [0], "port {port:#x}");
        }
        for port in ACPI_POWER_PORT_BASE..ACPI_POWER_PORT_BASE + ACPI_POWER_PORT_LEN {
            let offset = u64::from(port - ACPI_POWER_PORT_BASE);
            if [
                ACPI_SLEEP_CONTROL_PORT,
                ACPI_SLEEP_STATUS_PORT,
                ACPI_RESET_PORT,
            ]
            .contains(&port)
            {
                continue;
            }
            let mut data = [0];
            dev.read(offset, &mut data);
            assert_eq!(data, [0xff], "port {port:#x}");
            // The reset value or S5 written to a gap is no request.
            dev.write(offset, &[ACPI_RESET_VALUE]);
            dev.write(offset, &[(ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN]);
        }
        // Clearing wake status, and S5 written to the status register.
        write_port(&mut dev, ACPI_POWER_PORT_BASE, ACPI_SLEEP_STATUS_PORT, 0x80);
        write_port(
            &mut dev,
            ACPI_POWER_PORT_BASE,
            ACPI_SLEEP_STATUS_PORT,
            (ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN,
        );
        // The reset value written to the sleep control register.
        write_port(
            &mut dev,
            ACPI_POWER_PORT_BASE,
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_RESET_VALUE,
        );
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
