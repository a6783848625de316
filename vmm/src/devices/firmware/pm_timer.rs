//! The ACPI power-management timer at port 0x608, where edk2's CloudHv
//! build reads it (`CLOUDHV_ACPI_TIMER_IO_ADDRESS`) for every delay it
//! makes. A free-running counter at 3.579545 MHz derived from the host's
//! monotonic clock, so it never goes back and needs no thread.
//!
//! The counter is 24 bits wide: OvmfPkg's AcpiTimerLib reports a range of
//! 0..2^24-1 to its performance-counter users and its delay loop only
//! looks at bit 23 of differences. The hardware-reduced FADT does not list
//! this timer, so the OS does not use it; were it listed, the FADT's
//! `TMR_VAL_EXT` flag would have to stay clear to match.

use crate::devices::bus::BusDevice;
use crate::devices::firmware::clock::Clock;
use crate::devices::firmware::port_of_byte;

/// Ticks per second of every ACPI PM timer.
pub const PM_TIMER_FREQUENCY_HZ: u64 = 3_579_545;
/// Ports the timer decodes: one 32-bit register.
pub const PM_TIMER_PORT_LEN: u64 = 4;
/// The counter's width: it wraps after 2^24 ticks (about 4.7 s).
const COUNTER_MASK: u32 = 0x00ff_ffff;

pub struct PmTimer<C: Clock> {
    clock: C,
}

impl<C: Clock> PmTimer<C> {
    pub fn new(clock: C) -> Self {
        Self { clock }
    }

    /// The counter now: ticks since the clock's origin, modulo 2^24.
    pub fn counter(&self) -> u32 {
        let nanos = self.clock.monotonic().as_nanos();
        let ticks = nanos * u128::from(PM_TIMER_FREQUENCY_HZ) / 1_000_000_000;
        // Only the low 24 bits are kept: the truncation is the wrap.
        #[allow(clippy::cast_possible_truncation)]
        let low = ticks as u32;
        low & COUNTER_MASK
    }
}

impl<C: Clock> BusDevice for PmTimer<C> {
    /// Each byte of an access reads the register byte at its port; bytes
    /// past the register (an access that starts inside it and runs over
    /// its end) read 0xff, like a port nothing decodes.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.counter().to_le_bytes();
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = port_of_byte(offset, index)
                .and_then(|port| usize::try_from(port).ok())
                .and_then(|port| value.get(port))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// The timer is read-only.
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::devices::firmware::clock::test_clock::ManualClock;
    use crate::devices::firmware::clock::HostClock;

    fn read32(timer: &mut dyn BusDevice) -> u32 {
        let mut bytes = [0u8; 4];
        timer.read(0, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    /// Ticks from `earlier` to `later` on a 24-bit counter.
    fn elapsed(earlier: u32, later: u32) -> u32 {
        later.wrapping_sub(earlier) & COUNTER_MASK
    }

    #[test]
    fn counts_at_the_acpi_frequency_of_the_host_clock() {
        let mut timer = PmTimer::new(HostClock::new());
        let start_time = Instant::now();
        let start = read32(&mut timer);
        std::thread::sleep(Duration::from_millis(200));
        let end = read32(&mut timer);
        let measured = start_time.elapsed();
        let expected = measured.as_secs_f64() * PM_TIMER_FREQUENCY_HZ as f64;
        let ticks = f64::from(elapsed(start, end));
        // The two reads sit inside the measured interval, so the counter
        // may only fall short of it (by the time one read takes), give or
        // take the one tick that truncating both readings can add.
        assert!(
            ticks <= expected + 1.0 && ticks >= expected * 0.99,
            "{ticks} ticks in {measured:?}, expected {expected}"
        );
    }

    #[test]
    fn one_second_is_3579545_ticks() {
        let clock = ManualClock::at(Duration::ZERO);
        let mut timer = PmTimer::new(clock.clone());
        assert_eq!(read32(&mut timer), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(read32(&mut timer), 3_579_545 & COUNTER_MASK);
        clock.advance(Duration::from_nanos(280));
        // 280 ns is one tick (279.4 ns) more.
        assert_eq!(read32(&mut timer), (3_579_545 + 1) & COUNTER_MASK);
    }

    #[test]
    fn never_goes_back_between_wraps() {
        let mut timer = PmTimer::new(HostClock::new());
        let mut previous = read32(&mut timer);
        for _ in 0..10_000 {
            let now = read32(&mut timer);
            assert!(now >> 24 == 0, "{now:#x} has bits above the 24th");
            // Anything but a small step forward would be a step back
            // seen through the wrap.
            assert!(elapsed(previous, now) < COUNTER_MASK / 2);
            previous = now;
        }
    }

    #[test]
    fn wraps_at_24_bits() {
        let clock = ManualClock::at(Duration::ZERO);
        let mut timer = PmTimer::new(clock.clone());
        // The tick before the wrap: 2^24 - 1 ticks.
        let last_tick_ns =
            (u64::from(COUNTER_MASK) * 1_000_000_000).div_ceil(PM_TIMER_FREQUENCY_HZ);
        clock.set_monotonic(Duration::from_nanos(last_tick_ns));
        assert_eq!(read32(&mut timer), COUNTER_MASK);
        clock.advance(Duration::from_micros(1));
        let after = read32(&mut timer);
        assert!(after < 4, "{after:#x}");
        // Days of uptime keep the counter in range.
        clock.set_monotonic(Duration::from_secs(86_400 * 400));
        assert!(read32(&mut timer) <= COUNTER_MASK);
    }

    #[test]
    fn narrow_reads_see_the_register_bytes() {
        let clock = ManualClock::at(Duration::ZERO);
        clock.set_monotonic(Duration::from_secs(3));
        let mut timer = PmTimer::new(clock);
        let value = read32(&mut timer).to_le_bytes();
        let mut byte = [0u8];
        for (offset, expected) in value.iter().enumerate() {
            timer.read(offset as u64, &mut byte);
            assert_eq!(byte[0], *expected);
        }
        let mut word = [0u8; 2];
        timer.read(2, &mut word);
        assert_eq!(word, [value[2], value[3]]);
    }

    #[test]
    fn bad_accesses_have_defined_results() {
        let clock = ManualClock::at(Duration::ZERO);
        clock.set_monotonic(Duration::from_secs(1));
        let mut timer = PmTimer::new(clock);
        let before = read32(&mut timer);
        // Writes change nothing.
        timer.write(0, &[0, 0, 0, 0]);
        timer.write(u64::MAX, &[1]);
        timer.write(0, &[]);
        assert_eq!(read32(&mut timer), before);
        // Past the register: 0xff, also from an access running over its end.
        let mut over = [0u8; 4];
        timer.read(2, &mut over);
        assert_eq!(&over[2..], &[0xff, 0xff]);
        let mut far = [0u8; 2];
        timer.read(u64::MAX, &mut far);
        assert_eq!(far, [0xff, 0xff]);
        timer.read(0, &mut []);
    }
}
