//! The CMOS real-time clock (an MC146818) at ports 0x70 (index) and 0x71
//! (data). edk2's PcatRealTimeClockRuntimeDxe refuses to start without one
//! (its init asserts), and the OS reads the wall-clock time from it.
//!
//! The time is the host's UTC clock plus a whole-second offset that starts
//! at zero: a guest that sets the time changes only this VM's offset, never
//! the host clock. Registers A-D behave as the firmware and Linux's
//! `mc146818` code expect: BCD or binary and 12- or 24-hour encoding as
//! register B says, the SET bit of register B freezing the time registers
//! while the guest writes them, register D's valid-RAM-and-time bit always
//! set (writes cannot clear it: edk2 writes 0 there and then insists on
//! reading it set), register C always 0 (no interrupt source: no alarm,
//! periodic or update interrupts; neither the firmware nor Linux needs
//! them, Linux's `rtc_cmos` runs without an IRQ). Register B's interrupt
//! enables and daylight-saving bit are kept but do nothing; register A's
//! divider bits are kept but the clock never stops. Everything else of the
//! 128 bytes is plain CMOS RAM, zero at power-on (byte 0x0F = 0 is what
//! OVMF reads as "not an S3 resume"). The century lives at 0x32, the
//! address the FADT's `century` field can name.
//!
//! No torn reads: register A's update-in-progress bit reads set for the
//! 244 µs before each second's update, as on the real chip, and every read
//! of register A also takes a reading of the time, which the time
//! registers then return for [`READING_HOLD`]. A reader that waits for the
//! bit to clear and then reads the fields gets all of them from one
//! instant however slowly its vCPU runs; a reader that never reads
//! register A gets the current time on each read.

use crate::calendar::{civil_from_days, days_from_civil};
use std::time::Duration;

use crate::arch::layout::CMOS_CENTURY_REGISTER;
use crate::devices::bus::BusDevice;
use crate::devices::firmware::clock::Clock;
use crate::devices::firmware::port_of_byte;

/// Ports the RTC decodes: the index and the data port.
pub const CMOS_PORT_LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REGISTER_A: u8 = 0x0a;
const REGISTER_B: u8 = 0x0b;
const REGISTER_C: u8 = 0x0c;
const REGISTER_D: u8 = 0x0d;

/// Register A: update in progress (read-only).
const A_UPDATE_IN_PROGRESS: u8 = 0x80;
/// Register B: updates inhibited while the guest sets the time.
const B_SET: u8 = 0x80;
/// Register B: binary rather than BCD values.
const B_BINARY: u8 = 0x04;
/// Register B: 24-hour rather than 12-hour clock.
const B_24_HOUR: u8 = 0x02;
/// The hours register's PM flag in 12-hour mode.
const HOUR_PM: u8 = 0x80;
/// Register D: valid RAM and time.
const D_VALID: u8 = 0x80;
/// Bit 7 of an index write is the chipset's NMI mask, not address.
const INDEX_MASK: u8 = 0x7f;

/// 32.768 kHz time base, 1024 Hz rate: what firmware and Linux program.
const POWER_ON_REGISTER_A: u8 = 0x26;
/// 24-hour BCD, the PC convention.
const POWER_ON_REGISTER_B: u8 = B_24_HOUR;

/// How long before each update the update-in-progress bit reads set
/// (the MC146818's documented 244 µs), in nanoseconds of the second.
const UPDATE_WARNING_NANOS: u32 = 244_000;
/// How long a reading taken by a register A read is what the time
/// registers return.
pub const READING_HOLD: Duration = Duration::from_secs(1);
/// 9999-12-31T23:59:59Z: host clocks beyond it are clamped, so that the
/// guest time (host time plus an offset between two four-digit years)
/// stays far from any overflow.
const LATEST_HOST_SECOND: i64 = 253_402_300_799;

const SECONDS_PER_DAY: i64 = 86_400;

/// The time registers' raw bytes, encoded as register B says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimeRegisters {
    second: u8,
    minute: u8,
    hour: u8,
    weekday: u8,
    day: u8,
    month: u8,
    year: u8,
    century: u8,
}

/// Time registers as a reader saw them at `taken` (monotonic).
struct Reading {
    taken: Duration,
    guest_second: i64,
}

/// The guest has raised SET: writes go to `registers`, which take effect
/// as the time at `host_second` when SET drops.
struct PendingSet {
    registers: TimeRegisters,
    host_second: i64,
}

/// First of the three CMOS bytes holding the RAM above 4 GiB.
const CMOS_RAM_ABOVE_4GIB: u8 = 0x5b;

pub struct CmosRtc<C: Clock> {
    clock: C,
    /// The last byte written to the index port, NMI bit included (reads of
    /// the port return it, and edk2 preserves the NMI bit through them).
    index: u8,
    /// CMOS RAM; also backs the alarm registers. The time registers and
    /// registers A-D are never read from here.
    ram: [u8; 128],
    register_a: u8,
    register_b: u8,
    /// Guest time minus host UTC, in seconds.
    offset_seconds: i64,
    reading: Option<Reading>,
    pending_set: Option<PendingSet>,
}

impl<C: Clock> CmosRtc<C> {
    pub fn new(clock: C) -> Self {
        Self {
            clock,
            index: 0,
            ram: [0; 128],
            register_a: POWER_ON_REGISTER_A,
            register_b: POWER_ON_REGISTER_B,
            offset_seconds: 0,
            reading: None,
            pending_set: None,
        }
    }

    /// Record in CMOS RAM, the way PC firmware setups do, how much RAM lies
    /// above 4 GiB: registers 0x5b-0x5d, least significant byte first, in
    /// 64 KiB units. edk2's CloudHv build reads only these bytes for that
    /// RAM (the PVH memory map serves it below 4 GiB); sizes past what
    /// three bytes hold (1 TiB) are capped.
    pub fn with_ram_above_4gib(mut self, bytes: u64) -> Self {
        let units = (bytes >> 16).min(0x00ff_ffff);
        let [low, middle, high, ..] = units.to_le_bytes();
        self.ram[usize::from(CMOS_RAM_ABOVE_4GIB)] = low;
        self.ram[usize::from(CMOS_RAM_ABOVE_4GIB) + 1] = middle;
        self.ram[usize::from(CMOS_RAM_ABOVE_4GIB) + 2] = high;
        self
    }

    /// Host UTC as whole seconds (clamped, see [`LATEST_HOST_SECOND`]) and
    /// nanoseconds into the second.
    fn host_now(&self) -> (i64, u32) {
        let utc = self.clock.utc();
        let seconds = i64::try_from(utc.as_secs()).unwrap_or(LATEST_HOST_SECOND);
        (seconds.min(LATEST_HOST_SECOND), utc.subsec_nanos())
    }

    fn guest_second_now(&self) -> i64 {
        self.host_now().0 + self.offset_seconds
    }

    fn read_register(&mut self, register: u8) -> u8 {
        match register {
            REGISTER_A => self.read_register_a(),
            REGISTER_B => self.register_b,
            REGISTER_C => 0,
            REGISTER_D => D_VALID,
            _ => match self.time_registers_for_reading().get(register) {
                Some(value) => value,
                None => self.ram[usize::from(register)],
            },
        }
    }

    fn read_register_a(&mut self) -> u8 {
        if self.pending_set.is_some() {
            // Updates are inhibited: none is in progress.
            return self.register_a;
        }
        let (host_second, nanos) = self.host_now();
        self.reading = Some(Reading {
            taken: self.clock.monotonic(),
            guest_second: host_second + self.offset_seconds,
        });
        let update_imminent = nanos >= 1_000_000_000 - UPDATE_WARNING_NANOS;
        self.register_a
            | if update_imminent {
                A_UPDATE_IN_PROGRESS
            } else {
                0
            }
    }

    fn time_registers_for_reading(&self) -> TimeRegisters {
        if let Some(pending) = &self.pending_set {
            return pending.registers;
        }
        let now = self.clock.monotonic();
        let held = self
            .reading
            .as_ref()
            .filter(|reading| now.saturating_sub(reading.taken) < READING_HOLD);
        let second = match held {
            Some(reading) => reading.guest_second,
            None => self.guest_second_now(),
        };
        TimeRegisters::encode(second, self.register_b)
    }

    fn write_register(&mut self, register: u8, value: u8) {
        match register {
            // Bit 7 (update in progress) is read-only.
            REGISTER_A => self.register_a = value & !A_UPDATE_IN_PROGRESS,
            REGISTER_B => self.write_register_b(value),
            REGISTER_C | REGISTER_D => {
                crate::rate_limited!(
                    log::Level::Debug,
                    "guest wrote {value:#04x} to read-only RTC register {register:#04x}; ignored"
                );
            }
            _ if TimeRegisters::is_time_register(register) => {
                self.write_time_register(register, value);
            }
            _ => self.ram[usize::from(register)] = value,
        }
    }

    fn write_register_b(&mut self, value: u8) {
        let was_set = self.register_b & B_SET != 0;
        let now_set = value & B_SET != 0;
        if !was_set && now_set {
            // Freeze the time as the new mode encodes it, so fields the
            // guest leaves alone agree with the ones it writes.
            let (host_second, _) = self.host_now();
            self.pending_set = Some(PendingSet {
                registers: TimeRegisters::encode(host_second + self.offset_seconds, value),
                host_second,
            });
        }
        self.register_b = value;
        if was_set && !now_set {
            if let Some(pending) = self.pending_set.take() {
                self.commit(&pending.registers, pending.host_second);
            }
        }
    }

    /// A time register written outside SET takes effect at once, as on
    /// the chip: the current time with that one field replaced.
    fn write_time_register(&mut self, register: u8, value: u8) {
        if let Some(pending) = &mut self.pending_set {
            pending.registers.set(register, value);
            return;
        }
        let (host_second, _) = self.host_now();
        let mut registers =
            TimeRegisters::encode(host_second + self.offset_seconds, self.register_b);
        registers.set(register, value);
        self.commit(&registers, host_second);
    }

    /// Make `registers` the guest time at `host_second`, or refuse a time
    /// that is not one (the clock keeps its old offset).
    fn commit(&mut self, registers: &TimeRegisters, host_second: i64) {
        match registers.decode(self.register_b) {
            Some(guest_second) => {
                self.offset_seconds = guest_second - host_second;
                self.reading = None;
            }
            None => crate::rate_limited!(
                log::Level::Debug,
                "guest set the RTC to an invalid time {registers:?} (register B {:#04x}); kept the old time",
                self.register_b
            ),
        }
    }
}

impl<C: Clock> BusDevice for CmosRtc<C> {
    /// Each byte of an access is one port (an `inw` at 0x70 reads the
    /// index, then the data port); bytes past port 0x71 read 0xff.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (byte_index, byte) in data.iter_mut().enumerate() {
            *byte = match port_of_byte(offset, byte_index) {
                Some(0) => self.index,
                Some(1) => self.read_register(self.index & INDEX_MASK),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (byte_index, &value) in data.iter().enumerate() {
            match port_of_byte(offset, byte_index) {
                Some(0) => self.index = value,
                Some(1) => self.write_register(self.index & INDEX_MASK, value),
                _ => {}
            }
        }
    }
}

impl TimeRegisters {
    fn is_time_register(register: u8) -> bool {
        matches!(
            register,
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY_OF_MONTH | MONTH | YEAR
        ) || register == CMOS_CENTURY_REGISTER
    }

    fn get(&self, register: u8) -> Option<u8> {
        Some(match register {
            SECONDS => self.second,
            MINUTES => self.minute,
            HOURS => self.hour,
            WEEKDAY => self.weekday,
            DAY_OF_MONTH => self.day,
            MONTH => self.month,
            YEAR => self.year,
            _ if register == CMOS_CENTURY_REGISTER => self.century,
            _ => return None,
        })
    }

    fn set(&mut self, register: u8, value: u8) {
        let field = match register {
            SECONDS => &mut self.second,
            MINUTES => &mut self.minute,
            HOURS => &mut self.hour,
            WEEKDAY => &mut self.weekday,
            DAY_OF_MONTH => &mut self.day,
            MONTH => &mut self.month,
            YEAR => &mut self.year,
            _ if register == CMOS_CENTURY_REGISTER => &mut self.century,
            _ => return,
        };
        *field = value;
    }

    /// `unix_second` as the registers show it under `register_b`.
    fn encode(unix_second: i64, register_b: u8) -> Self {
        let binary = register_b & B_BINARY != 0;
        let days = unix_second.div_euclid(SECONDS_PER_DAY);
        let second_of_day = unix_second.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let hour = second_of_day / 3_600;
        let hour = if register_b & B_24_HOUR != 0 {
            to_register(hour, binary)
        } else {
            let hour_12 = match hour % 12 {
                0 => 12,
                other => other,
            };
            let pm = if hour >= 12 { HOUR_PM } else { 0 };
            to_register(hour_12, binary) | pm
        };
        Self {
            second: to_register(second_of_day % 60, binary),
            minute: to_register(second_of_day / 60 % 60, binary),
            hour,
            // 1 = Sunday; 1970-01-01 was a Thursday.
            weekday: to_register((days + 4).rem_euclid(7) + 1, binary),
            day: to_register(i64::from(day), binary),
            month: to_register(i64::from(month), binary),
            year: to_register(year.rem_euclid(100), binary),
            century: to_register(year.div_euclid(100).rem_euclid(100), binary),
        }
    }

    /// The Unix second these registers name under `register_b`, or `None`
    /// for anything that is not a date and time (bad BCD digits, hour 24,
    /// February 30th, ...). The weekday register is not consulted: the
    /// date decides it.
    fn decode(&self, register_b: u8) -> Option<i64> {
        let binary = register_b & B_BINARY != 0;
        let field = |raw: u8, range: std::ops::RangeInclusive<i64>| {
            from_register(raw, binary).filter(|value| range.contains(value))
        };
        let second = field(self.second, 0..=59)?;
        let minute = field(self.minute, 0..=59)?;
        let hour = if register_b & B_24_HOUR != 0 {
            field(self.hour, 0..=23)?
        } else {
            let hour_12 = field(self.hour & !HOUR_PM, 1..=12)?;
            hour_12 % 12 + if self.hour & HOUR_PM != 0 { 12 } else { 0 }
        };
        let month = field(self.month, 1..=12)?;
        let year = field(self.century, 0..=99)? * 100 + field(self.year, 0..=99)?;
        let day = field(self.day, 1..=days_in_month(year, month))?;
        let days = days_from_civil(year, month, day);
        Some(days * SECONDS_PER_DAY + hour * 3_600 + minute * 60 + second)
    }
}

/// `value` (0..=99) in binary or as two BCD digits.
fn to_register(value: i64, binary: bool) -> u8 {
    let value = value.rem_euclid(100);
    // rem_euclid(100) is 0..=99, which fits a byte.
    #[allow(clippy::cast_possible_truncation)]
    let value = value as u8;
    if binary {
        value
    } else {
        ((value / 10) << 4) | (value % 10)
    }
}

/// A register's value, or `None` when BCD digits are not digits.
fn from_register(raw: u8, binary: bool) -> Option<i64> {
    let (tens, ones) = (raw >> 4, raw & 0x0f);
    if binary {
        Some(i64::from(raw))
    } else if tens <= 9 && ones <= 9 {
        Some(i64::from(tens * 10 + ones))
    } else {
        None
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
#[path = "rtc_tests.rs"]
mod tests;
