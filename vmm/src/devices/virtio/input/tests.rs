//! virtio-input through the PCI transport: a test driver configures the
//! device as Linux's `virtio_input` does, reads its configuration space,
//! posts event buffers and reads back the evdev events the host side
//! queued; hostile buffers and configuration accesses are refused
//! without a panic.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::time::{Duration, Instant};

use keymap::codes::*;

use super::*;
use crate::devices::virtio::test_driver::{TestDriver, MEM_SIZE};
use crate::devices::virtio::{STATUS_DRIVER_OK, STATUS_NEEDS_RESET};

const SELECT: u64 = 0;
const SUBSEL: u64 = 1;
const SIZE: u64 = 2;
const UNION: u64 = 8;

fn started(device: VirtioInput) -> TestDriver {
    let mut driver = TestDriver::new(Box::new(device));
    driver.enable_msix();
    let status = driver.init(F_VERSION_1);
    assert_ne!(status & STATUS_DRIVER_OK, 0, "device refused DRIVER_OK");
    driver
}

/// What the guest reads for (select, subsel): size and that many bytes.
fn query(driver: &TestDriver, select: u8, subsel: u8) -> Vec<u8> {
    let device = driver.layout.device;
    driver.write_bar(device + SELECT, u64::from(select), 1);
    driver.write_bar(device + SUBSEL, u64::from(subsel), 1);
    let size = driver.read_bar(device + SIZE, 1) as usize;
    (0..size as u64)
        .map(|i| driver.read_bar(device + UNION + i, 1) as u8)
        .collect()
}

/// Post `count` event buffers of 8 bytes.
fn post_buffers(driver: &mut TestDriver, count: usize) {
    for _ in 0..count {
        let buffer = driver.alloc(8);
        driver.push_chain(&[(buffer, 8, true)]);
    }
    driver.kick();
}

/// The next `count` events the device completed, in order.
fn take_events(driver: &mut TestDriver, count: usize) -> Vec<InputEvent> {
    (0..count)
        .map(|_| {
            let (head, len) = driver.wait_used();
            assert_eq!(len, 8);
            let descriptor = driver.desc_table() + u64::from(head) * 16;
            let buffer = u64::from_le_bytes(driver.read_guest(descriptor, 8).try_into().unwrap());
            let bytes = driver.read_guest(buffer, 8);
            InputEvent {
                kind: u16::from_le_bytes([bytes[0], bytes[1]]),
                code: u16::from_le_bytes([bytes[2], bytes[3]]),
                value: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            }
        })
        .collect()
}

fn event(kind: u16, code: u16, value: u32) -> InputEvent {
    InputEvent { kind, code, value }
}

fn syn() -> InputEvent {
    event(EV_SYN, SYN_REPORT, 0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn keyboard_configuration_space() {
    let driver = started(VirtioInput::keyboard(InputEvents::new().unwrap()));
    assert_eq!(query(&driver, 1, 0), b"securevm keyboard");
    // No serial, no input property.
    assert_eq!(query(&driver, 2, 0), b"");
    assert_eq!(query(&driver, 0x10, 0), b"");
    // bustype BUS_VIRTUAL, vendor 0, product 1, version 1.
    assert_eq!(query(&driver, 3, 0), [6, 0, 0, 0, 1, 0, 1, 0]);
    let keys = query(&driver, 0x11, EV_KEY as u8);
    assert_eq!(keys.len(), 32);
    assert_eq!(keys[0], 0xfe, "every key but KEY_RESERVED");
    assert!(keys[1..31].iter().all(|&b| b == 0xff));
    assert_eq!(keys[31], 0x01, "up to KEY_MICMUTE (248)");
    assert_eq!(query(&driver, 0x11, EV_REP as u8).len(), 1);
    assert_eq!(query(&driver, 0x11, EV_ABS as u8), b"");
    assert_eq!(query(&driver, 0x11, EV_REL as u8), b"");
    assert_eq!(query(&driver, 0x12, ABS_X as u8), b"");
    assert_eq!(query(&driver, 0, 0), b"", "unset select");
    assert_eq!(query(&driver, 0x7f, 3), b"", "unknown select");
}

#[test]
fn tablet_configuration_space() {
    let driver = started(VirtioInput::tablet(InputEvents::new().unwrap(), 1280, 800));
    assert_eq!(query(&driver, 1, 0), b"securevm tablet");
    assert_eq!(query(&driver, 3, 0), [6, 0, 0, 0, 2, 0, 1, 0]);
    assert_eq!(
        query(&driver, 0x10, 0),
        b"",
        "no INPUT_PROP_DIRECT: a pointer"
    );
    let buttons = query(&driver, 0x11, EV_KEY as u8);
    assert_eq!(buttons.len(), 35);
    assert_eq!(buttons[34], 0b111, "BTN_LEFT, BTN_RIGHT, BTN_MIDDLE");
    assert!(buttons[..34].iter().all(|&b| b == 0));
    // REL_WHEEL is 8: bit 0 of the second byte.
    assert_eq!(query(&driver, 0x11, EV_REL as u8), [0, 1]);
    assert_eq!(query(&driver, 0x11, EV_ABS as u8), [0b11]);
    assert_eq!(query(&driver, 0x11, EV_REP as u8), b"");
    let x = query(&driver, 0x12, ABS_X as u8);
    let y = query(&driver, 0x12, ABS_Y as u8);
    let word =
        |info: &[u8], i: usize| u32::from_le_bytes(info[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(x.len(), 20);
    assert_eq!((word(&x, 0), word(&x, 1)), (0, 1279));
    assert_eq!((word(&y, 0), word(&y, 1)), (0, 799));
    assert_eq!(query(&driver, 0x12, 2), b"", "no ABS_Z");
}

#[test]
fn selector_writes_of_any_width_and_reads_past_the_end() {
    let driver = started(VirtioInput::keyboard(InputEvents::new().unwrap()));
    let device = driver.layout.device;
    // select and subsel in one 16-bit write.
    driver.write_bar(device, 0x0111, 2);
    assert_eq!(driver.read_bar(device + SIZE, 1), 32);
    // Writes to size, reserved bytes and the union change nothing.
    driver.write_bar(device + SIZE, 0xff, 1);
    driver.write_bar(device + UNION, 0, 4);
    assert_eq!(driver.read_bar(device + SIZE, 1), 32);
    assert_eq!(driver.read_bar(device + UNION, 4), 0xffff_fffe);
    // Beyond the structure reads zero.
    assert_eq!(driver.read_bar(device + 136, 4), 0);
    assert_eq!(driver.read_bar(device + 134, 8) >> 16, 0);
}

#[test]
fn hostile_config_accesses_are_bounded() {
    let mut device = VirtioInput::tablet(InputEvents::new().unwrap(), 0, 0);
    for offset in [0, 1, 7, 135, 136, 4096, u64::MAX - 3, u64::MAX] {
        let mut data = [0xaau8; 300];
        device.read_config(offset, &mut data);
        if offset >= 136 {
            assert!(data.iter().all(|&b| b == 0), "{offset:#x}");
        }
        device.write_config(offset, &[0x12; 300]);
        device.write_config(offset, &[]);
    }
    // A zero-sized screen still has valid axes (0..=0).
    device.write_config(0, &[0x12, ABS_X as u8]);
    let mut info = [0u8; 20];
    device.read_config(UNION, &mut info);
    assert_eq!(info, [0; 20]);
    device.write_config(0, &[0x12, ABS_Y as u8]);
    let mut size = [0u8];
    device.read_config(SIZE, &mut size);
    assert_eq!(size, [20]);
}

#[test]
fn a_key_press_and_release_arrive_as_evdev_events() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    // Buffers first: the events then reach the guest through the I/O
    // thread's wake-up, without a kick.
    post_buffers(&mut driver, 8);
    events.key(KEY_A, true);
    events.key(KEY_A, false);
    assert_eq!(
        take_events(&mut driver, 4),
        [
            event(EV_KEY, KEY_A, 1),
            syn(),
            event(EV_KEY, KEY_A, 0),
            syn()
        ]
    );
    assert_eq!(events.queued(), 0);
}

#[test]
fn events_wait_for_buffers() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    events.key(KEY_LEFTSHIFT, true);
    events.key(KEY_1, true);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(events.queued(), 4, "nowhere to put them yet");
    post_buffers(&mut driver, 2);
    assert_eq!(
        take_events(&mut driver, 2),
        [event(EV_KEY, KEY_LEFTSHIFT, 1), syn()]
    );
    wait_for("two events left", || events.queued() == 2);
    post_buffers(&mut driver, 2);
    assert_eq!(
        take_events(&mut driver, 2),
        [event(EV_KEY, KEY_1, 1), syn()]
    );
}

#[test]
fn tablet_events() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::tablet(events.clone(), 1280, 800));
    post_buffers(&mut driver, 32);
    events.pointer(10, 20, 0b001);
    assert_eq!(
        take_events(&mut driver, 4),
        [
            event(EV_ABS, ABS_X, 10),
            event(EV_ABS, ABS_Y, 20),
            event(EV_KEY, BTN_LEFT, 1),
            syn()
        ]
    );
    // Beyond the screen is its edge; left released, right pressed, the
    // wheel one step down.
    events.pointer(5000, 900, 0b1_0100);
    assert_eq!(
        take_events(&mut driver, 6),
        [
            event(EV_ABS, ABS_X, 1279),
            event(EV_ABS, ABS_Y, 799),
            event(EV_KEY, BTN_LEFT, 0),
            event(EV_KEY, BTN_RIGHT, 1),
            event(EV_REL, REL_WHEEL, u32::MAX),
            syn()
        ]
    );
    // Wheel up; the held right button emits nothing.
    events.pointer(0, 0, 0b0_1100);
    assert_eq!(
        take_events(&mut driver, 4),
        [
            event(EV_ABS, ABS_X, 0),
            event(EV_ABS, ABS_Y, 0),
            event(EV_REL, REL_WHEEL, 1),
            syn()
        ]
    );
    // The wheel bit still set is no further step.
    events.pointer(0, 1, 0b0_1100);
    assert_eq!(
        take_events(&mut driver, 3),
        [event(EV_ABS, ABS_X, 0), event(EV_ABS, ABS_Y, 1), syn()]
    );
    events.release_all();
    assert_eq!(
        take_events(&mut driver, 2),
        [event(EV_KEY, BTN_RIGHT, 0), syn()]
    );
}

#[test]
fn release_all_lets_held_keys_go() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    post_buffers(&mut driver, 16);
    events.key(KEY_LEFTCTRL, true);
    events.key(KEY_LEFTALT, true);
    events.key(KEY_LEFTALT, false);
    events.key(KEY_F2, true);
    take_events(&mut driver, 8);
    events.release_all();
    assert_eq!(
        take_events(&mut driver, 3),
        [
            event(EV_KEY, KEY_LEFTCTRL, 0),
            event(EV_KEY, KEY_F2, 0),
            syn()
        ]
    );
    // Nothing held any more: nothing to send.
    events.release_all();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(driver.used_idx(), 11);
}

#[test]
fn a_full_queue_drops_whole_batches_without_blocking() {
    let events = InputEvents::new().unwrap();
    // No device reads them.
    for _ in 0..QUEUE_CAPACITY / 2 {
        events.key(KEY_B, true);
    }
    assert_eq!(events.queued(), QUEUE_CAPACITY);
    assert_eq!(events.dropped_batches(), 0);
    events.key(KEY_C, true);
    events.pointer(1, 1, 1);
    assert_eq!(events.queued(), QUEUE_CAPACITY);
    assert_eq!(events.dropped_batches(), 2);
    // KEY_C never reached the queue, so only KEY_B is held.
    events.release_all();
    assert_eq!(events.queued(), 2, "the queue made room for the release");
    let mut released = Vec::new();
    events.deliver(usize::MAX, |e| {
        released.push(e);
        true
    });
    assert_eq!(released, [event(EV_KEY, KEY_B, 0), syn()]);
}

#[test]
fn clear_keeps_dropped_releases_for_release_all() {
    let events = InputEvents::new().unwrap();
    events.key(KEY_Q, true);
    events.deliver(usize::MAX, |_| true);
    // The release never reaches the guest.
    events.key(KEY_Q, false);
    events.clear();
    assert_eq!(events.queued(), 0);
    events.release_all();
    let mut released = Vec::new();
    events.deliver(usize::MAX, |e| {
        released.push(e);
        true
    });
    assert_eq!(released, [event(EV_KEY, KEY_Q, 0), syn()]);
}

#[test]
fn key_codes_outside_the_keyboard_are_ignored() {
    let events = InputEvents::new().unwrap();
    for code in [0, KEY_MAX_KEYBOARD + 1, BTN_LEFT, u16::MAX] {
        events.key(code, true);
    }
    assert_eq!(events.queued(), 0);
}

fn assert_needs_reset(driver: &TestDriver) {
    wait_for("NEEDS_RESET", || driver.status() & STATUS_NEEDS_RESET != 0);
}

#[test]
fn a_device_readable_buffer_breaks_the_device() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    let buffer = driver.alloc(8);
    driver.push_chain(&[(buffer, 8, false)]);
    driver.kick();
    events.key(KEY_A, true);
    assert_needs_reset(&driver);
    assert_eq!(driver.wait_used(), (0, 0));
    assert_eq!(driver.read_guest(buffer, 8), [0; 8], "nothing written");
    // Further events stay with the host, bounded.
    let more = driver.alloc(8);
    driver.push_chain(&[(more, 8, true)]);
    driver.kick();
    events.key(KEY_A, false);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(driver.used_idx(), 1);
    assert_eq!(events.queued(), 4);
}

#[test]
fn a_short_buffer_breaks_the_device() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    let buffer = driver.alloc(8);
    driver.push_chain(&[(buffer, 4, true)]);
    driver.kick();
    events.key(KEY_A, true);
    assert_needs_reset(&driver);
    assert_eq!(driver.read_guest(buffer, 8), [0; 8]);
}

#[test]
fn an_event_split_over_two_descriptors_is_accepted() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    let (low, high) = (driver.alloc(3), driver.alloc(5));
    driver.push_chain(&[(low, 3, true), (high, 5, true)]);
    driver.kick();
    events.key(KEY_Z, true);
    assert_eq!(driver.wait_used(), (0, 8));
    assert_eq!(driver.read_guest(low, 3), [1, 0, KEY_Z as u8]);
    assert_eq!(driver.read_guest(high, 5), [0, 1, 0, 0, 0]);
}

#[test]
fn a_buffer_outside_guest_memory_breaks_the_device() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    driver.push_chain(&[(MEM_SIZE as u64 - 4, 8, true)]);
    driver.kick();
    events.key(KEY_A, true);
    assert_needs_reset(&driver);
}

#[test]
fn a_reset_and_restart_serves_again() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    let short = driver.alloc(8);
    driver.push_chain(&[(short, 2, true)]);
    driver.kick();
    events.key(KEY_A, true);
    assert_needs_reset(&driver);
    assert_ne!(driver.init(F_VERSION_1) & STATUS_DRIVER_OK, 0);
    post_buffers(&mut driver, 2);
    assert_eq!(
        take_events(&mut driver, 2),
        [event(EV_KEY, KEY_A, 1), syn()]
    );
}

#[test]
fn more_events_than_one_call_moves_all_arrive() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    let batches = worker::EVENTS_PER_CALL * 3 / 2;
    // Queued before the buffers: served from the kick, in several calls.
    for _ in 0..batches {
        events.key(KEY_X, true);
    }
    post_buffers(&mut driver, 2 * batches);
    assert_eq!(take_events(&mut driver, 2 * batches).len(), 2 * batches);
    // Buffers before the events: served from the wake-up, in several calls.
    post_buffers(&mut driver, 2 * batches);
    for _ in 0..batches {
        events.key(KEY_Y, true);
    }
    let delivered = take_events(&mut driver, 2 * batches);
    assert_eq!(delivered.len(), 2 * batches);
    assert_eq!(events.queued(), 0);
}

/// Where the status queue lives (clear of the test driver's queue 0 at
/// 0x10000..0x13000 and its buffers from 0x100000).
const STATUS_DESC: u64 = 0x20000;
const STATUS_AVAIL: u64 = 0x21000;
const STATUS_USED: u64 = 0x22000;

/// Start the device with both queues, as Linux does; the test driver's
/// own `init` sets up queue 0 only. Queue 0 uses the test driver's
/// layout (its avail and used rings follow its descriptor table by 4 KiB
/// each), so its `push_chain` and `wait_used` keep working.
fn started_with_status_queue(device: VirtioInput) -> TestDriver {
    use crate::devices::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK};
    let driver = TestDriver::new(Box::new(device));
    driver.enable_msix();
    driver.set_status(STATUS_ACKNOWLEDGE);
    driver.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    driver.common_write(0x08, 1, 4);
    driver.common_write(0x0c, F_VERSION_1 >> 32, 4);
    let negotiating = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    driver.set_status(negotiating);
    let queue0 = driver.desc_table();
    for (index, desc) in [(0u64, queue0), (1, STATUS_DESC)] {
        driver.common_write(0x16, index, 2);
        driver.common_write(0x18, 256, 2);
        driver.common_write(0x1a, 1, 2);
        driver.set_queue_addresses(desc, desc + 0x1000, desc + 0x2000);
        driver.common_write(0x1c, 1, 2);
    }
    driver.set_status(negotiating | STATUS_DRIVER_OK);
    assert_ne!(driver.status() & STATUS_DRIVER_OK, 0);
    driver
}

fn status_used_idx(driver: &TestDriver) -> u16 {
    let bytes = driver.read_guest(STATUS_USED + 2, 2);
    u16::from_le_bytes([bytes[0], bytes[1]])
}

#[test]
fn status_buffers_are_returned_unread_in_bounded_calls() {
    let events = InputEvents::new().unwrap();
    let mut driver = started_with_status_queue(VirtioInput::keyboard(events.clone()));
    // LED reports, as many as take several calls, and one chain of odd
    // shape: all returned, nothing written into them.
    let count = worker::STATUS_PER_CALL as u16 * 2 + 1;
    let led = driver.alloc(8);
    driver.write_guest(led, &[0x11, 0, 1, 0, 1, 0, 0, 0]);
    for index in 0..count {
        let segment = if index == 0 {
            (MEM_SIZE as u64, 0, true)
        } else {
            (led, 8, false)
        };
        driver.write_descriptor(STATUS_DESC, index, segment, 0, 0);
        let slot = STATUS_AVAIL + 4 + u64::from(index) * 2;
        driver.write_guest(slot, &index.to_le_bytes());
    }
    driver.write_guest(STATUS_AVAIL + 2, &count.to_le_bytes());
    driver.common_write(0x16, 1, 2);
    let notify_off = driver.common_read(0x1e, 2);
    let doorbell = driver.layout.notify + notify_off * u64::from(driver.layout.notify_multiplier);
    assert!(driver.vm.ring_doorbell(doorbell));
    wait_for("status buffers", || status_used_idx(&driver) == count);
    for index in 0..u64::from(count) {
        let used_len = driver.read_guest(STATUS_USED + 4 + index * 8 + 4, 4);
        assert_eq!(used_len, [0; 4]);
    }
    assert_eq!(driver.read_guest(led, 8), [0x11, 0, 1, 0, 1, 0, 0, 0]);
    assert_eq!(driver.status() & STATUS_NEEDS_RESET, 0);
    // The event queue still works beside it.
    post_buffers(&mut driver, 2);
    events.key(KEY_CAPSLOCK, true);
    assert_eq!(
        take_events(&mut driver, 2),
        [event(EV_KEY, KEY_CAPSLOCK, 1), syn()]
    );
}

#[test]
fn the_io_thread_works_under_its_seccomp_filter() {
    use crate::confined::Confinement;
    use crate::seccomp::ThreadKind;
    let events = InputEvents::new().unwrap();
    let mut keyboard = VirtioInput::keyboard(events.clone());
    keyboard.set_confinement(Confinement::Seccomp(ThreadKind::DesktopIo));
    let mut driver = started_with_status_queue(keyboard);
    post_buffers(&mut driver, 4);
    events.key(KEY_ENTER, true);
    events.key(KEY_ENTER, false);
    assert_eq!(
        take_events(&mut driver, 4),
        [
            event(EV_KEY, KEY_ENTER, 1),
            syn(),
            event(EV_KEY, KEY_ENTER, 0),
            syn()
        ]
    );
    // A refused buffer takes the rate-limited warning path too.
    let buffer = driver.alloc(8);
    driver.push_chain(&[(buffer, 8, false)]);
    driver.kick();
    events.key(KEY_ENTER, true);
    assert_needs_reset(&driver);
}

#[test]
fn a_corrupt_avail_index_breaks_the_device() {
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    post_buffers(&mut driver, 1);
    // More buffers announced than the ring holds.
    driver.set_avail_idx(1000);
    events.key(KEY_A, true);
    assert_needs_reset(&driver);
    assert_eq!(driver.used_idx(), 0);
    assert_eq!(events.queued(), 2, "kept for after the reset");
}

#[test]
fn an_indirect_table_longer_than_an_event_buffer_may_be_is_refused() {
    use crate::devices::virtio::test_driver::DESC_F_INDIRECT;
    let events = InputEvents::new().unwrap();
    let mut driver = started(VirtioInput::keyboard(events.clone()));
    let table = driver.alloc(16 * 64);
    let buffer = driver.alloc(8);
    for index in 0..64 {
        driver.write_descriptor(table, index, (buffer, 1, true), 1, index + 1);
    }
    let head = driver.next_descriptor();
    driver.write_descriptor(
        driver.desc_table(),
        head,
        (table, 16 * 64, false),
        DESC_F_INDIRECT,
        0,
    );
    driver.push_raw(head, 1);
    driver.kick();
    events.key(KEY_A, true);
    assert_needs_reset(&driver);
    assert_eq!(driver.read_guest(buffer, 8), [0; 8]);
}
