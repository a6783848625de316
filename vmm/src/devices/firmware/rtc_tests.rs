//! Tests of the CMOS RTC, through its two ports as a guest drives them.

use std::time::{Duration, SystemTime};

use super::*;
use crate::devices::firmware::clock::test_clock::ManualClock;
use crate::devices::firmware::clock::HostClock;

/// 2026-12-06T13:05:09Z, a Sunday.
const SUNDAY_AFTERNOON: u64 = 1_796_562_309;
/// 2099-12-31T23:59:59Z, a Thursday: every field changes a second later.
const LAST_SECOND_OF_2099: u64 = 4_102_444_799;
/// 2030-01-02T03:04:05Z.
const EARLY_2030: i64 = 1_893_553_445;

/// The time registers in the order [`time_fields`] reads them.
const TIME_REGISTERS: [u8; 8] = [
    SECONDS,
    MINUTES,
    HOURS,
    WEEKDAY,
    DAY_OF_MONTH,
    MONTH,
    YEAR,
    CMOS_CENTURY_REGISTER,
];

fn read(rtc: &mut dyn BusDevice, register: u8) -> u8 {
    rtc.write(0, &[register]);
    let mut value = [0u8];
    rtc.read(1, &mut value);
    value[0]
}

fn write(rtc: &mut dyn BusDevice, register: u8, value: u8) {
    rtc.write(0, &[register]);
    rtc.write(1, &[value]);
}

fn time_fields(rtc: &mut dyn BusDevice) -> [u8; 8] {
    TIME_REGISTERS.map(|register| read(rtc, register))
}

fn rtc_at(seconds: u64) -> (CmosRtc<ManualClock>, ManualClock) {
    let clock = ManualClock::at(Duration::from_secs(seconds));
    (CmosRtc::new(clock.clone()), clock)
}

/// The Unix second the RTC shows, decoded as register B says.
fn shown_second(rtc: &mut CmosRtc<ManualClock>) -> i64 {
    read(rtc, REGISTER_A);
    let register_b = read(rtc, REGISTER_B);
    let [second, minute, hour, weekday, day, month, year, century] = time_fields(rtc);
    let registers = TimeRegisters {
        second,
        minute,
        hour,
        weekday,
        day,
        month,
        year,
        century,
    };
    registers.decode(register_b).expect("a valid time")
}

/// Set the time the way Linux's `mc146818_set_time` does: SET, the
/// fields, SET cleared.
fn set_time(rtc: &mut dyn BusDevice, fields: [u8; 8]) {
    let register_b = read(rtc, REGISTER_B);
    write(rtc, REGISTER_B, register_b | B_SET);
    for (register, value) in TIME_REGISTERS.into_iter().zip(fields) {
        write(rtc, register, value);
    }
    write(rtc, REGISTER_B, register_b & !B_SET);
}

#[test]
fn power_on_mode_is_24_hour_bcd_utc() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    assert_eq!(read(&mut rtc, REGISTER_B), 0x02);
    assert_eq!(
        time_fields(&mut rtc),
        [0x09, 0x05, 0x13, 0x01, 0x06, 0x12, 0x26, 0x20]
    );
}

#[test]
fn binary_and_12_hour_modes_follow_register_b() {
    let (mut rtc, clock) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, REGISTER_B, B_BINARY | B_24_HOUR);
    assert_eq!(time_fields(&mut rtc), [9, 5, 13, 1, 6, 12, 26, 20]);
    // 12-hour BCD: 1 PM.
    write(&mut rtc, REGISTER_B, 0);
    assert_eq!(read(&mut rtc, HOURS), 0x81);
    // 12-hour binary: 1 PM as well.
    write(&mut rtc, REGISTER_B, B_BINARY);
    assert_eq!(read(&mut rtc, HOURS), 0x81);
    // Midnight is 12 AM, noon 12 PM.
    write(&mut rtc, REGISTER_B, 0);
    clock.set_utc(Duration::from_secs(1_796_515_200));
    assert_eq!(read(&mut rtc, HOURS), 0x12);
    clock.set_utc(Duration::from_secs(1_796_558_400));
    assert_eq!(read(&mut rtc, HOURS), 0x92);
    write(&mut rtc, REGISTER_B, B_BINARY);
    assert_eq!(read(&mut rtc, HOURS), 0x8c);
}

#[test]
fn the_host_clock_is_read_in_utc() {
    let mut rtc = CmosRtc::new(HostClock::new());
    write(&mut rtc, REGISTER_B, B_BINARY | B_24_HOUR);
    let since_epoch = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = i64::try_from(since_epoch()).unwrap();
    read(&mut rtc, REGISTER_A);
    let [second, minute, hour, weekday, day, month, year, century] = time_fields(&mut rtc);
    let after = i64::try_from(since_epoch()).unwrap();
    let shown = TimeRegisters {
        second,
        minute,
        hour,
        weekday,
        day,
        month,
        year,
        century,
    }
    .decode(B_BINARY | B_24_HOUR)
    .unwrap();
    assert!(
        (before..=after).contains(&shown),
        "{before} {shown} {after}"
    );
}

#[test]
fn update_in_progress_is_set_only_just_before_the_update() {
    let (mut rtc, clock) = rtc_at(SUNDAY_AFTERNOON);
    let at = |nanos: u32| Duration::new(SUNDAY_AFTERNOON, nanos);
    clock.set_utc(at(999_755_999));
    assert_eq!(read(&mut rtc, REGISTER_A), 0x26);
    clock.set_utc(at(999_756_000));
    assert_eq!(read(&mut rtc, REGISTER_A), 0xa6);
    clock.set_utc(at(999_999_999));
    assert_eq!(read(&mut rtc, REGISTER_A), 0xa6);
    clock.set_utc(Duration::from_secs(SUNDAY_AFTERNOON + 1));
    assert_eq!(read(&mut rtc, REGISTER_A), 0x26);
    assert_eq!(read(&mut rtc, SECONDS), 0x10);
}

/// edk2's reader: wait for update-in-progress to clear, then read the
/// fields one at a time without checking again.
#[test]
fn a_reader_that_waits_for_the_update_reads_one_instant() {
    let (mut rtc, clock) = rtc_at(LAST_SECOND_OF_2099);
    clock.advance(Duration::from_nanos(999_800_000));
    let mut polls = 0;
    while read(&mut rtc, REGISTER_A) & A_UPDATE_IN_PROGRESS != 0 {
        clock.advance(Duration::from_micros(50));
        polls += 1;
    }
    assert!((1..=5).contains(&polls), "{polls} polls");
    assert_eq!(
        time_fields(&mut rtc),
        [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x21]
    );

    // A slow reader: the update falls between its field reads.
    let (mut rtc, clock) = rtc_at(LAST_SECOND_OF_2099);
    clock.advance(Duration::from_nanos(999_700_000));
    assert_eq!(read(&mut rtc, REGISTER_A) & A_UPDATE_IN_PROGRESS, 0);
    let fields = TIME_REGISTERS.map(|register| {
        clock.advance(Duration::from_millis(10));
        read(&mut rtc, register)
    });
    assert_eq!(fields, [0x59, 0x59, 0x23, 0x05, 0x31, 0x12, 0x99, 0x20]);
    // The next reader sees the new century.
    read(&mut rtc, REGISTER_A);
    assert_eq!(read(&mut rtc, CMOS_CENTURY_REGISTER), 0x21);
}

#[test]
fn a_reading_expires_for_readers_that_skip_register_a() {
    let (mut rtc, clock) = rtc_at(SUNDAY_AFTERNOON);
    read(&mut rtc, REGISTER_A);
    clock.advance(READING_HOLD - Duration::from_nanos(1));
    assert_eq!(read(&mut rtc, SECONDS), 0x09);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(read(&mut rtc, SECONDS), 0x10);
    // Without any register A read, each field is the current time.
    clock.advance(Duration::from_secs(5));
    assert_eq!(read(&mut rtc, SECONDS), 0x15);
}

#[test]
fn a_guest_set_time_is_kept_as_an_offset_of_this_vm_only() {
    let clock = ManualClock::at(Duration::from_secs(SUNDAY_AFTERNOON));
    let mut rtc = CmosRtc::new(clock.clone());
    let mut other_vm = CmosRtc::new(clock.clone());
    set_time(&mut rtc, [0x05, 0x04, 0x03, 0x04, 0x02, 0x01, 0x30, 0x20]);
    assert_eq!(shown_second(&mut rtc), EARLY_2030);
    clock.advance(Duration::from_secs(61));
    assert_eq!(shown_second(&mut rtc), EARLY_2030 + 61);
    assert_eq!(
        shown_second(&mut other_vm),
        i64::try_from(SUNDAY_AFTERNOON).unwrap() + 61
    );
    assert_eq!(clock.utc(), Duration::from_secs(SUNDAY_AFTERNOON + 61));
}

#[test]
fn the_time_stands_still_while_set_is_raised() {
    let (mut rtc, clock) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, REGISTER_B, B_24_HOUR | B_SET);
    write(&mut rtc, MINUTES, 0x42);
    clock.advance(Duration::from_secs(3));
    // No update is ever in progress while updates are inhibited.
    clock.set_utc(Duration::new(SUNDAY_AFTERNOON + 3, 999_999_000));
    assert_eq!(read(&mut rtc, REGISTER_A), 0x26);
    assert_eq!(
        time_fields(&mut rtc),
        [0x09, 0x42, 0x13, 0x01, 0x06, 0x12, 0x26, 0x20]
    );
    // The written time counts from when SET was raised.
    write(&mut rtc, REGISTER_B, B_24_HOUR);
    assert_eq!(read(&mut rtc, SECONDS), 0x12);
    assert_eq!(read(&mut rtc, MINUTES), 0x42);
}

/// edk2 reads the time at start-up and writes it straight back.
#[test]
fn writing_back_the_time_read_keeps_the_clock() {
    let (mut rtc, clock) = rtc_at(SUNDAY_AFTERNOON);
    clock.advance(Duration::from_millis(300));
    read(&mut rtc, REGISTER_A);
    let fields = time_fields(&mut rtc);
    clock.advance(Duration::from_millis(200));
    set_time(&mut rtc, fields);
    assert_eq!(rtc.offset_seconds, 0);
}

#[test]
fn invalid_times_are_refused() {
    let valid = [0x05, 0x04, 0x03, 0x04, 0x02, 0x01, 0x30, 0x20];
    let with = |register: u8, value: u8| {
        let mut fields = valid;
        let position = TIME_REGISTERS.iter().position(|&r| r == register).unwrap();
        fields[position] = value;
        fields
    };
    let bad_24_hour_bcd = [
        with(SECONDS, 0x5a),
        with(SECONDS, 0x60),
        with(MINUTES, 0xff),
        with(HOURS, 0x24),
        with(HOURS, 0x83),
        with(DAY_OF_MONTH, 0x00),
        with(DAY_OF_MONTH, 0x32),
        with(MONTH, 0x00),
        with(MONTH, 0x13),
        with(YEAR, 0xa0),
        with(CMOS_CENTURY_REGISTER, 0x9a),
        // 2030-02-29 and 2100-02-29: no leap days.
        with(MONTH, 0x02).map(|v| if v == 0x02 { 0x29 } else { v }),
    ];
    for fields in bad_24_hour_bcd {
        let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
        set_time(&mut rtc, fields);
        assert_eq!(rtc.offset_seconds, 0, "{fields:02x?} was accepted");
    }
    let mut leap_2100 = with(MONTH, 0x02);
    leap_2100[4] = 0x29;
    leap_2100[7] = 0x21;
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    set_time(&mut rtc, leap_2100);
    assert_eq!(rtc.offset_seconds, 0);

    // 12-hour mode: hours are 1-12, with or without PM.
    for hour in [0x00, 0x13, 0x80, 0x93] {
        let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
        write(&mut rtc, REGISTER_B, 0);
        set_time(&mut rtc, with(HOURS, hour));
        assert_eq!(rtc.offset_seconds, 0, "12-hour {hour:#04x} was accepted");
    }
    // Binary mode: 60 minutes.
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, REGISTER_B, B_BINARY | B_24_HOUR);
    set_time(&mut rtc, [5, 60, 3, 4, 2, 1, 30, 20]);
    assert_eq!(rtc.offset_seconds, 0);
    // The refused time is not what the registers show afterwards.
    assert_eq!(read(&mut rtc, MINUTES), 5);
}

#[test]
fn valid_edge_times_are_accepted() {
    // 2000-02-29 12:00 AM in 12-hour BCD, 9999-12-31 in binary.
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, REGISTER_B, 0);
    set_time(&mut rtc, [0x00, 0x00, 0x12, 0x03, 0x29, 0x02, 0x00, 0x20]);
    assert_eq!(shown_second(&mut rtc), 951_782_400);
    write(&mut rtc, REGISTER_B, B_BINARY | B_24_HOUR);
    set_time(&mut rtc, [59, 59, 23, 6, 31, 12, 99, 99]);
    assert_eq!(shown_second(&mut rtc), 253_402_300_799);
}

#[test]
fn a_field_written_without_set_takes_effect_at_once() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, MINUTES, 0x30);
    assert_eq!(
        time_fields(&mut rtc),
        [0x09, 0x30, 0x13, 0x01, 0x06, 0x12, 0x26, 0x20]
    );
    // The weekday follows the date, whatever is written to it.
    write(&mut rtc, WEEKDAY, 0x07);
    assert_eq!(read(&mut rtc, WEEKDAY), 0x01);
    // edk2 writes the century alone once it finds the FADT's century field.
    write(&mut rtc, CMOS_CENTURY_REGISTER, 0x21);
    assert_eq!(read(&mut rtc, YEAR), 0x26);
    // 2126-12-06 is a Friday.
    assert_eq!(read(&mut rtc, WEEKDAY), 0x06);
    assert_eq!(read(&mut rtc, CMOS_CENTURY_REGISTER), 0x21);
    // A bad value written outside SET is refused too.
    write(&mut rtc, HOURS, 0x25);
    assert_eq!(read(&mut rtc, HOURS), 0x13);
}

#[test]
fn register_d_always_reports_valid_ram_and_time() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    assert_eq!(read(&mut rtc, REGISTER_D), 0x80);
    write(&mut rtc, REGISTER_D, 0x00);
    assert_eq!(read(&mut rtc, REGISTER_D), 0x80);
    write(&mut rtc, REGISTER_C, 0xff);
    assert_eq!(read(&mut rtc, REGISTER_C), 0x00);
}

#[test]
fn register_a_keeps_its_rate_bits_but_not_update_in_progress() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, REGISTER_A, 0xff);
    assert_eq!(read(&mut rtc, REGISTER_A), 0x7f);
}

#[test]
fn cmos_ram_holds_what_the_guest_writes() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    let ram: Vec<u8> = [0x01, 0x03, 0x05]
        .into_iter()
        .chain(0x0e..0x80)
        .filter(|&register| register != CMOS_CENTURY_REGISTER)
        .collect();
    // Zero at power-on: 0x0f = 0 is a normal boot, not an S3 resume.
    assert!(ram.iter().all(|&register| read(&mut rtc, register) == 0));
    for &register in &ram {
        write(&mut rtc, register, register ^ 0x5a);
    }
    for &register in &ram {
        assert_eq!(read(&mut rtc, register), register ^ 0x5a);
    }
    // The clock did not move.
    assert_eq!(rtc.offset_seconds, 0);
    assert_eq!(read(&mut rtc, REGISTER_B), 0x02);
}

#[test]
fn the_nmi_bit_of_the_index_is_masked() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    write(&mut rtc, 0x80 | 0x20, 0x77);
    assert_eq!(read(&mut rtc, 0x20), 0x77);
    rtc.write(0, &[0x80 | REGISTER_D]);
    let mut value = [0u8];
    rtc.read(1, &mut value);
    assert_eq!(value, [0x80]);
    // The index port reads back what was written, NMI bit included.
    rtc.read(0, &mut value);
    assert_eq!(value, [0x8d]);
}

#[test]
fn bad_accesses_have_defined_results() {
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    // `outw` at 0x70: index, then data.
    rtc.write(0, &[0x40, 0x99]);
    assert_eq!(read(&mut rtc, 0x40), 0x99);
    // `inl` at 0x70: index, data, then two ports nothing decodes.
    rtc.write(0, &[0x40]);
    let mut four = [0u8; 4];
    rtc.read(0, &mut four);
    assert_eq!(four, [0x40, 0x99, 0xff, 0xff]);
    // Offsets past the device, and at the end of the port space.
    let mut two = [0u8; 2];
    rtc.read(2, &mut two);
    assert_eq!(two, [0xff, 0xff]);
    rtc.read(u64::MAX, &mut two);
    assert_eq!(two, [0xff, 0xff]);
    rtc.write(2, &[0x41]);
    rtc.write(u64::MAX, &[0x41, 0x42]);
    rtc.write(0, &[]);
    rtc.read(0, &mut []);
    assert_eq!(read(&mut rtc, 0x40), 0x99);
    assert_eq!(rtc.offset_seconds, 0);
}

/// PcatRealTimeClockRuntimeDxe's start-up, register by register, as its
/// `IoRtcRead`/`IoRtcWrite` do them (index port read to keep the NMI bit).
#[test]
fn edk2_start_up_finds_a_working_clock() {
    fn edk2_read(rtc: &mut dyn BusDevice, register: u8) -> u8 {
        let mut index = [0u8];
        rtc.read(0, &mut index);
        rtc.write(0, &[register | (index[0] & 0x80)]);
        let mut value = [0u8];
        rtc.read(1, &mut value);
        value[0]
    }
    fn edk2_write(rtc: &mut dyn BusDevice, register: u8, value: u8) {
        let mut index = [0u8];
        rtc.read(0, &mut index);
        rtc.write(0, &[register | (index[0] & 0x80)]);
        rtc.write(1, &[value]);
    }
    fn wait_to_update(rtc: &mut dyn BusDevice) {
        assert_ne!(edk2_read(rtc, REGISTER_D) & D_VALID, 0);
        assert_eq!(edk2_read(rtc, REGISTER_A) & A_UPDATE_IN_PROGRESS, 0);
        assert_ne!(edk2_read(rtc, REGISTER_D) & D_VALID, 0);
    }
    let (mut rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    edk2_write(&mut rtc, REGISTER_A, 0x26);
    let register_b = edk2_read(&mut rtc, REGISTER_B);
    edk2_read(&mut rtc, REGISTER_C);
    edk2_write(&mut rtc, REGISTER_D, 0x00);
    wait_to_update(&mut rtc);
    let time = [SECONDS, MINUTES, HOURS, DAY_OF_MONTH, MONTH, YEAR]
        .map(|register| edk2_read(&mut rtc, register));
    assert_eq!(time, [0x09, 0x05, 0x13, 0x06, 0x12, 0x26]);
    // PcdInitialValueRtcRegisterB, keeping the alarm enable.
    let register_b = 0x02 | (register_b & 0x20);
    edk2_write(&mut rtc, REGISTER_B, register_b);
    // PcRtcSetTime with the time just read.
    wait_to_update(&mut rtc);
    let with_set = edk2_read(&mut rtc, REGISTER_B) | B_SET;
    edk2_write(&mut rtc, REGISTER_B, with_set);
    for (register, value) in [SECONDS, MINUTES, HOURS, DAY_OF_MONTH, MONTH, YEAR]
        .into_iter()
        .zip(time)
    {
        edk2_write(&mut rtc, register, value);
    }
    edk2_write(&mut rtc, REGISTER_B, register_b);
    wait_to_update(&mut rtc);
    assert_eq!(rtc.offset_seconds, 0);
    assert_eq!(
        time_fields(&mut rtc),
        [0x09, 0x05, 0x13, 0x01, 0x06, 0x12, 0x26, 0x20]
    );
}

#[test]
fn extreme_host_clocks_give_defined_times() {
    // Past 9999: clamped to its last second.
    let clock = ManualClock::at(Duration::MAX);
    let mut rtc = CmosRtc::new(clock.clone());
    write(&mut rtc, REGISTER_B, B_BINARY | B_24_HOUR);
    assert_eq!(time_fields(&mut rtc), [59, 59, 23, 6, 31, 12, 99, 99]);
    // A guest that set year 0000 while the host steps back to 1970 sees a
    // year before 0000 wrap to two digits, not a panic.
    clock.set_utc(Duration::from_secs(u64::try_from(EARLY_2030).unwrap()));
    set_time(&mut rtc, [0, 0, 0, 7, 1, 1, 0, 0]);
    clock.set_utc(Duration::ZERO);
    let fields = time_fields(&mut rtc);
    assert!(fields[6] <= 99 && fields[7] <= 99, "{fields:?}");
}

#[test]
fn calendar_conversions_agree() {
    // Known dates, leap days and era ends, both directions.
    let known = [
        (0, (1970, 1, 1)),
        (11_016, (2000, 2, 29)),
        (10_957, (2000, 1, 1)),
        (47_482, (2100, 1, 1)),
        (47_541, (2100, 3, 1)),
        (-719_528, (0, 1, 1)),
        (2_932_896, (9999, 12, 31)),
        (-1, (1969, 12, 31)),
    ];
    for (days, (year, month, day)) in known {
        assert_eq!(civil_from_days(days), (year, month, day), "{days}");
        assert_eq!(
            days_from_civil(year, i64::from(month), i64::from(day)),
            days
        );
    }
    for days in (-800_000..3_000_000).step_by(997) {
        let (year, month, day) = civil_from_days(days);
        assert_eq!(
            days_from_civil(year, i64::from(month), i64::from(day)),
            days
        );
    }
}

#[test]
fn every_mode_encodes_and_decodes_the_same_second() {
    for register_b in [0, B_BINARY, B_24_HOUR, B_BINARY | B_24_HOUR] {
        for second in (0..4_102_444_800_i64).step_by(7_919_993) {
            let registers = TimeRegisters::encode(second, register_b);
            assert_eq!(registers.decode(register_b), Some(second), "{registers:?}");
        }
    }
}

#[test]
fn cmos_ram_tells_the_firmware_the_ram_above_4gib() {
    let (rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    let mut rtc = rtc.with_ram_above_4gib((5 << 30) + (3 << 16));
    // 5 GiB + 192 KiB = 0x01_4003 units of 64 KiB, least significant first.
    assert_eq!(
        [
            read(&mut rtc, 0x5b),
            read(&mut rtc, 0x5c),
            read(&mut rtc, 0x5d)
        ],
        [0x03, 0x40, 0x01]
    );
    let (rtc, _) = rtc_at(SUNDAY_AFTERNOON);
    let mut huge = rtc.with_ram_above_4gib(u64::MAX);
    assert_eq!(
        [
            read(&mut huge, 0x5b),
            read(&mut huge, 0x5c),
            read(&mut huge, 0x5d)
        ],
        [0xff, 0xff, 0xff]
    );
}
