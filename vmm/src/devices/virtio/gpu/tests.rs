//! End-to-end tests of virtio-gpu through the PCI transport: a test
//! driver programs the device through ECAM and the BAR, places requests
//! in guest memory as descriptor chains and kicks the control queue; a
//! recording sink stands in for the display thread.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gpu2d::protocol::resp;
use gpu2d::request as req;
use gpu2d::{CursorImage, Frame, Rect};

use super::*;
use crate::devices::virtio::test_driver::{Segment, TestDriver, MEM_SIZE};
use crate::devices::virtio::STATUS_DRIVER_OK;
use crate::seccomp::ThreadKind;

const B8G8R8A8: u32 = 1;
/// Room for the largest response (GET_EDID's).
const RESPONSE_ROOM: u32 = 24 + 8 + 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Scanout(Option<(u32, u32)>),
    /// The damage and the frame's pixels inside it, row by row.
    Flush(Rect, Vec<u32>),
    Cursor(Option<CursorImage>),
}

#[derive(Default)]
struct RecordingSink {
    events: Mutex<Vec<Event>>,
}

impl RecordingSink {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.events.lock().unwrap())
    }
}

impl ScanoutSink for RecordingSink {
    fn set_scanout(&self, size: Option<(u32, u32)>) {
        self.events.lock().unwrap().push(Event::Scanout(size));
    }

    fn flush(&self, damage: Rect, frame: Frame<'_>) {
        let mut seen = Vec::new();
        for y in damage.y..damage.y + damage.height {
            let row = y as usize * frame.stride;
            let x = damage.x as usize;
            seen.extend_from_slice(&frame.pixels[row + x..row + x + damage.width as usize]);
        }
        self.events.lock().unwrap().push(Event::Flush(damage, seen));
    }

    fn set_cursor(&self, cursor: Option<CursorImage>) {
        self.events.lock().unwrap().push(Event::Cursor(cursor));
    }

    fn move_cursor(&self, _x: u32, _y: u32) {}
}

fn config() -> Gpu2dConfig {
    Gpu2dConfig {
        width: 1280,
        height: 800,
        max_mem: 16 << 20,
    }
}

fn driver() -> (TestDriver, Arc<RecordingSink>) {
    driver_confined(Confinement::Unfiltered)
}

fn driver_confined(confinement: Confinement) -> (TestDriver, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink::default());
    let mut gpu = Gpu::new(config(), sink.clone()).unwrap();
    gpu.set_confinement(confinement);
    let mut driver = TestDriver::new(Box::new(gpu));
    driver.enable_msix();
    let status = driver.init(!0);
    assert_ne!(status & STATUS_DRIVER_OK, 0, "device refused DRIVER_OK");
    // The driver's reset before its setup blanked the display once.
    assert_eq!(sink.take(), vec![Event::Scanout(None), Event::Cursor(None)]);
    (driver, sink)
}

/// Put `request` in guest memory and submit it with room for `room`
/// response bytes; returns the response as written and the used length.
fn submit_with_room(driver: &mut TestDriver, request: &[u8], room: u32) -> (Vec<u8>, u32) {
    let out = driver.alloc(request.len() as u64);
    driver.write_guest(out, request);
    let response = driver.alloc(u64::from(room.max(1)));
    let mut segments: Vec<Segment> = vec![(out, request.len() as u32, false)];
    if room > 0 {
        segments.push((response, room, true));
    }
    submit_segments(driver, &segments);
    let (_, used) = driver.wait_used();
    (driver.read_guest(response, used as usize), used)
}

fn submit_segments(driver: &mut TestDriver, segments: &[Segment]) {
    driver.push_chain(segments);
    driver.kick();
}

/// The response type to `request`.
fn command(driver: &mut TestDriver, request: &[u8]) -> u32 {
    let (response, used) = submit_with_room(driver, request, RESPONSE_ROOM);
    assert!(used >= 24, "a response header is written");
    u32::from_le_bytes(response[..4].try_into().unwrap())
}

/// Wait until the sink saw `count` events.
fn events(sink: &RecordingSink, count: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.events.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "sink events missing");
        std::thread::sleep(Duration::from_millis(1));
    }
    sink.take()
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

#[test]
fn offers_edid_and_one_scanout() {
    let (driver, _sink) = driver();
    let features = driver.device_features();
    assert_ne!(features & 1 << F_EDID, 0);
    assert_ne!(features & F_VERSION_1, 0);
    // num_scanouts and num_capsets.
    assert_eq!(driver.read_bar(driver.layout.device + 8, 4), 1);
    assert_eq!(driver.read_bar(driver.layout.device + 12, 4), 0);
    assert_eq!(driver.read_bar(driver.layout.device, 4), 0, "no event");
}

#[test]
fn a_frame_reaches_the_sink_with_its_pixels() {
    let (driver, sink) = driver();
    show_a_frame(driver, &sink);
}

/// The I/O thread's filter allows what serving takes, allocating a
/// full-screen resource (mapped memory) included; a blocked syscall
/// would end the test process.
#[test]
fn serves_under_its_seccomp_filter() {
    let (mut driver, sink) = driver_confined(Confinement::Seccomp(ThreadKind::DesktopIo));
    let screen = req::create_2d(9, B8G8R8A8, 1280, 800);
    assert_eq!(command(&mut driver, &screen), resp::OK_NODATA);
    assert_eq!(command(&mut driver, &req::unref(9)), resp::OK_NODATA);
    show_a_frame(driver, &sink);
}

fn show_a_frame(mut driver: TestDriver, sink: &RecordingSink) {
    assert_eq!(
        command(&mut driver, &req::get_display_info()),
        resp::OK_DISPLAY_INFO
    );
    assert_eq!(
        command(&mut driver, &req::create_2d(1, B8G8R8A8, 4, 2)),
        resp::OK_NODATA
    );
    // B8G8R8A8 bytes of colours 0x00RRGGBB = 0x10101 * i, alpha 0xff.
    let bytes: Vec<u8> = (0..8u8).flat_map(|i| [i, i, i, 0xff]).collect();
    let backing = driver.alloc(bytes.len() as u64);
    driver.write_guest(backing, &bytes);
    let attach = req::attach_backing(1, &[(backing, bytes.len() as u32)], None);
    assert_eq!(command(&mut driver, &attach), resp::OK_NODATA);
    let whole = rect(0, 0, 4, 2);
    assert_eq!(
        command(&mut driver, &req::transfer(whole, 0, 1)),
        resp::OK_NODATA
    );
    assert_eq!(
        command(&mut driver, &req::set_scanout(whole, 0, 1)),
        resp::OK_NODATA
    );
    let expected: Vec<u32> = (0..8).map(|i| i * 0x01_0101).collect();
    assert_eq!(
        events(sink, 2),
        vec![
            Event::Scanout(Some((4, 2))),
            Event::Flush(whole, expected.clone())
        ]
    );
    assert_eq!(
        command(&mut driver, &req::flush(rect(2, 1, 2, 1), 1)),
        resp::OK_NODATA
    );
    assert_eq!(
        events(sink, 1),
        vec![Event::Flush(rect(2, 1, 2, 1), expected[6..].to_vec())]
    );
}

#[test]
fn hostile_requests_get_errors_and_the_device_keeps_working() {
    let (mut driver, _sink) = driver();
    // Shorter than a header.
    assert_eq!(command(&mut driver, &[0u8; 10]), resp::ERR_UNSPEC);
    // A resource the size of guest memory's cap and more.
    assert_eq!(
        command(&mut driver, &req::create_2d(1, B8G8R8A8, 16384, 16384)),
        resp::ERR_OUT_OF_MEMORY
    );
    // Backing outside guest RAM: refused when the transfer reads it.
    assert_eq!(
        command(&mut driver, &req::create_2d(1, B8G8R8A8, 4, 4)),
        resp::OK_NODATA
    );
    let outside = req::attach_backing(1, &[(MEM_SIZE as u64 + 4096, 64)], None);
    assert_eq!(command(&mut driver, &outside), resp::OK_NODATA);
    assert_eq!(
        command(&mut driver, &req::transfer(rect(0, 0, 4, 4), 0, 1)),
        resp::ERR_INVALID_PARAMETER
    );
    // A request buffer outside guest RAM reads as nothing.
    let response = driver.alloc(64);
    submit_segments(
        &mut driver,
        &[(MEM_SIZE as u64 - 8, 64, false), (response, 64, true)],
    );
    let (_, used) = driver.wait_used();
    assert_eq!(used, 24);
    // No room for a response: the chain comes back with nothing written.
    let (_, used) = submit_with_room(&mut driver, &req::get_display_info(), 0);
    assert_eq!(used, 0);
    // Too little room: what fits.
    let (response, used) = submit_with_room(&mut driver, &req::get_edid(0), 30);
    assert_eq!(used, 30);
    assert_eq!(
        u32::from_le_bytes(response[..4].try_into().unwrap()),
        resp::OK_EDID
    );
    assert_eq!(
        command(&mut driver, &req::get_display_info()),
        resp::OK_DISPLAY_INFO
    );
}

#[test]
fn an_edid_of_the_configured_size_is_served() {
    let (mut driver, _sink) = driver();
    let (response, used) = submit_with_room(&mut driver, &req::get_edid(0), RESPONSE_ROOM);
    assert_eq!(used, RESPONSE_ROOM);
    let edid = &response[32..160];
    assert_eq!(edid.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
    assert_eq!(u32::from(edid[56]) | u32::from(edid[58] >> 4) << 8, 1280);
}

#[test]
fn reset_blanks_the_display_and_forgets_resources() {
    let (mut driver, sink) = driver();
    assert_eq!(
        command(&mut driver, &req::create_2d(1, B8G8R8A8, 4, 4)),
        resp::OK_NODATA
    );
    let whole = rect(0, 0, 4, 4);
    assert_eq!(
        command(&mut driver, &req::set_scanout(whole, 0, 1)),
        resp::OK_NODATA
    );
    events(&sink, 2);
    driver.set_status(0);
    assert_eq!(
        events(&sink, 2),
        vec![Event::Scanout(None), Event::Cursor(None)]
    );
    driver.init(!0);
    assert_eq!(
        command(&mut driver, &req::flush(whole, 1)),
        resp::ERR_INVALID_RESOURCE_ID
    );
}

#[test]
fn configurations_without_room_for_a_frame_are_refused() {
    let sink: Arc<dyn ScanoutSink> = Arc::new(RecordingSink::default());
    let small = Gpu2dConfig {
        max_mem: 1280 * 800 * 4 - 1,
        ..config()
    };
    assert!(Gpu::new(small, sink.clone()).is_err());
    let wide = Gpu2dConfig {
        width: 5000,
        ..config()
    };
    assert!(Gpu::new(wide, sink).is_err());
}

#[test]
fn chains_beyond_one_call_are_served_after_a_single_kick() {
    let (mut driver, _sink) = driver();
    let count = 3 * CHAINS_PER_CALL + 1;
    let mut responses = Vec::new();
    for _ in 0..count {
        let request = req::get_display_info();
        let out = driver.alloc(request.len() as u64);
        driver.write_guest(out, &request);
        let response = driver.alloc(u64::from(RESPONSE_ROOM));
        driver.push_chain(&[(out, 24, false), (response, RESPONSE_ROOM, true)]);
        responses.push(response);
    }
    driver.kick();
    for response in responses {
        let (_, used) = driver.wait_used();
        assert_eq!(used, 24 + 16 * 24);
        let kind = driver.read_guest(response, 4);
        assert_eq!(kind, resp::OK_DISPLAY_INFO.to_le_bytes());
    }
}
