//! Every command, and every refusal, against a fake guest memory and a
//! sink that records what the display side would be told.

// Test fixtures narrow small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Mutex;

use super::*;
use crate::protocol::FLAG_FENCE;
use crate::request as req;

const BASE: u64 = 0x10_0000;
const B8G8R8A8: u32 = 1;

/// Guest RAM of `bytes.len()` bytes at [`BASE`].
struct FakeMemory {
    bytes: Vec<u8>,
}

impl FakeMemory {
    fn new(len: usize) -> Self {
        Self {
            bytes: vec![0; len],
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        let at = (gpa - BASE) as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }
}

impl GuestMemoryRead for FakeMemory {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfGuestMemory> {
        let at = gpa.checked_sub(BASE).ok_or(OutOfGuestMemory)? as usize;
        let source = self.bytes.get(at..at + buf.len()).ok_or(OutOfGuestMemory)?;
        buf.copy_from_slice(source);
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Scanout(Option<(u32, u32)>),
    /// The damage and the frame's pixels inside it, row by row.
    Flush(Rect, Vec<u32>),
    Cursor(Option<CursorImage>),
    Move(u32, u32),
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
        assert!(damage.fits(frame.width, frame.height));
        let last = (frame.height as usize - 1) * frame.stride + frame.width as usize;
        assert!(frame.pixels.len() >= last, "frame slice too short");
        let mut seen = Vec::new();
        for y in damage.y..damage.y + damage.height {
            let row = y as usize * frame.stride;
            seen.extend_from_slice(
                &frame.pixels[row + damage.x as usize..row + (damage.x + damage.width) as usize],
            );
        }
        self.events.lock().unwrap().push(Event::Flush(damage, seen));
    }

    fn set_cursor(&self, cursor: Option<CursorImage>) {
        self.events.lock().unwrap().push(Event::Cursor(cursor));
    }

    fn move_cursor(&self, x: u32, y: u32) {
        self.events.lock().unwrap().push(Event::Move(x, y));
    }
}

struct Fixture {
    gpu: Gpu2d,
    mem: FakeMemory,
    sink: RecordingSink,
}

fn config(max_mem: u64) -> Gpu2dConfig {
    Gpu2dConfig {
        width: 1280,
        height: 800,
        max_mem,
    }
}

impl Fixture {
    fn new() -> Self {
        Self::with_max_mem(64 << 20)
    }

    fn with_max_mem(max_mem: u64) -> Self {
        Self {
            gpu: Gpu2d::new(config(max_mem)).unwrap(),
            mem: FakeMemory::new(1 << 20),
            sink: RecordingSink::default(),
        }
    }

    fn control(&mut self, request: &[u8]) -> Vec<u8> {
        let response = self.gpu.handle_control(request, &self.mem, &self.sink);
        assert!(response.len() >= HEADER_LEN);
        assert!(self.gpu.memory_used() <= self.gpu.config().max_mem);
        response
    }

    /// The response type of `request`.
    fn code(&mut self, request: &[u8]) -> u32 {
        response_type(&self.control(request))
    }

    fn cursor(&mut self, request: &[u8]) -> u32 {
        response_type(&self.gpu.handle_cursor(request, &self.sink))
    }

    /// Resource `id` of `width` x `height` in `format`, backed by
    /// contiguous guest memory at `gpa` holding `pixels` (4 bytes each).
    fn backed(&mut self, id: u32, format: u32, size: (u32, u32), gpa: u64, pixels: &[[u8; 4]]) {
        assert_eq!(
            self.code(&req::create_2d(id, format, size.0, size.1)),
            resp::OK_NODATA
        );
        let bytes: Vec<u8> = pixels.iter().flatten().copied().collect();
        self.mem.write(gpa, &bytes);
        let len = size.0 * size.1 * 4;
        assert_eq!(
            self.code(&req::attach_backing(id, &[(gpa, len)], None)),
            resp::OK_NODATA
        );
    }
}

fn response_type(response: &[u8]) -> u32 {
    u32::from_le_bytes(response[..4].try_into().unwrap())
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// Pixel `i` as B8G8R8A8 bytes of colour 0x00RRGGBB = i * 0x010203.
fn bgra(i: u32) -> [u8; 4] {
    let [_, r, g, b] = (i * 0x01_0203).to_be_bytes();
    [b, g, r, 0xff]
}

fn xrgb(i: u32) -> u32 {
    i * 0x01_0203
}

#[test]
fn display_info_reports_the_configured_size_on_scanout_0_only() {
    let mut f = Fixture::new();
    let response = f.control(&req::get_display_info());
    assert_eq!(response_type(&response), resp::OK_DISPLAY_INFO);
    assert_eq!(response.len(), HEADER_LEN + 16 * 24);
    let word = |at: usize| u32::from_le_bytes(response[at..at + 4].try_into().unwrap());
    assert_eq!([word(24), word(28), word(32), word(36)], [0, 0, 1280, 800]);
    assert_eq!(word(40), 1, "scanout 0 enabled");
    assert!(response[48..].iter().all(|&b| b == 0), "no other scanout");
}

#[test]
fn fence_flag_and_id_are_echoed() {
    let mut f = Fixture::new();
    let mut request = req::header(protocol::cmd::GET_DISPLAY_INFO, Some(0x1234_5678_9abc));
    let response = f.control(&request);
    assert_eq!(
        u32::from_le_bytes(response[4..8].try_into().unwrap()),
        FLAG_FENCE
    );
    assert_eq!(
        u64::from_le_bytes(response[8..16].try_into().unwrap()),
        0x1234_5678_9abc
    );
    // Refusals echo it too; unfenced requests get no fence back.
    request[..4].copy_from_slice(&0x0200u32.to_le_bytes());
    let response = f.control(&request);
    assert_eq!(response_type(&response), resp::ERR_UNSPEC);
    assert_eq!(
        u64::from_le_bytes(response[8..16].try_into().unwrap()),
        0x1234_5678_9abc
    );
    let response = f.control(&req::unref(9));
    assert_eq!(&response[4..16], &[0; 12]);
}

#[test]
fn edid_describes_the_configured_size_with_a_valid_checksum() {
    let mut f = Fixture::new();
    let response = f.control(&req::get_edid(0));
    assert_eq!(response_type(&response), resp::OK_EDID);
    assert_eq!(response.len(), HEADER_LEN + 8 + 1024);
    assert_eq!(
        u32::from_le_bytes(response[24..28].try_into().unwrap()),
        128
    );
    let edid = &response[32..160];
    assert_eq!(edid.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
    let timing = &edid[54..72];
    assert_eq!(u32::from(timing[2]) | u32::from(timing[4] >> 4) << 8, 1280);
    assert_eq!(u32::from(timing[5]) | u32::from(timing[7] >> 4) << 8, 800);
    assert_eq!(f.code(&req::get_edid(1)), resp::ERR_INVALID_SCANOUT_ID);
}

#[test]
fn transfer_set_scanout_and_flush_reach_the_sink() {
    let mut f = Fixture::new();
    let pixels: Vec<[u8; 4]> = (0..8).map(bgra).collect();
    assert_eq!(f.code(&req::create_2d(1, B8G8R8A8, 4, 2)), resp::OK_NODATA);
    let bytes: Vec<u8> = pixels.iter().flatten().copied().collect();
    // Two entries that split the first row, in reverse guest order.
    f.mem.write(BASE + 0x2000, &bytes[..6]);
    f.mem.write(BASE + 0x1000, &bytes[6..]);
    let entries = [(BASE + 0x2000, 6), (BASE + 0x1000, 26)];
    assert_eq!(
        f.code(&req::attach_backing(1, &entries, None)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 2), 0, 1)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::set_scanout(rect(0, 0, 4, 2), 0, 1)),
        resp::OK_NODATA
    );
    let expected: Vec<u32> = (0..8).map(xrgb).collect();
    assert_eq!(
        f.sink.take(),
        vec![
            Event::Scanout(Some((4, 2))),
            Event::Flush(rect(0, 0, 4, 2), expected.clone())
        ]
    );
    assert_eq!(f.code(&req::flush(rect(1, 1, 2, 1), 1)), resp::OK_NODATA);
    assert_eq!(
        f.sink.take(),
        vec![Event::Flush(rect(1, 1, 2, 1), expected[5..7].to_vec())]
    );
}

#[test]
fn partial_transfer_reads_rows_at_offset_plus_stride() {
    let mut f = Fixture::new();
    let pixels: Vec<[u8; 4]> = (0..16).map(bgra).collect();
    f.backed(1, B8G8R8A8, (4, 4), BASE, &pixels);
    // The 2x2 square at (1, 2): offset of its first pixel, as Linux sends.
    let offset = (2 * 4 + 1) * 4;
    assert_eq!(
        f.code(&req::transfer(rect(1, 2, 2, 2), offset, 1)),
        resp::OK_NODATA
    );
    f.code(&req::set_scanout(rect(0, 0, 4, 4), 0, 1));
    let flushed = f.sink.take();
    let Event::Flush(_, frame) = &flushed[1] else {
        panic!("{flushed:?}");
    };
    for (i, &pixel) in frame.iter().enumerate() {
        let (x, y) = (i % 4, i / 4);
        let inside = (1..3).contains(&x) && (2..4).contains(&y);
        assert_eq!(pixel, if inside { xrgb(i as u32) } else { 0 }, "{x},{y}");
    }
}

#[test]
fn every_format_converts_to_xrgb() {
    // Memory bytes of the colour R=0x11 G=0x22 B=0x33 with A=0x44.
    let cases: [(u32, [u8; 4]); 8] = [
        (1, [0x33, 0x22, 0x11, 0x44]),
        (2, [0x33, 0x22, 0x11, 0x44]),
        (3, [0x44, 0x11, 0x22, 0x33]),
        (4, [0x44, 0x11, 0x22, 0x33]),
        (67, [0x11, 0x22, 0x33, 0x44]),
        (68, [0x44, 0x33, 0x22, 0x11]),
        (121, [0x44, 0x33, 0x22, 0x11]),
        (134, [0x11, 0x22, 0x33, 0x44]),
    ];
    for (format, bytes) in cases {
        let mut f = Fixture::new();
        f.backed(1, format, (1, 1), BASE, &[bytes]);
        f.code(&req::transfer(rect(0, 0, 1, 1), 0, 1));
        f.code(&req::set_scanout(rect(0, 0, 1, 1), 0, 1));
        assert_eq!(
            f.sink.take()[1],
            Event::Flush(rect(0, 0, 1, 1), vec![0x11_2233]),
            "{format}"
        );
    }
}

#[test]
fn scanout_of_a_sub_rectangle_sees_only_it() {
    let mut f = Fixture::new();
    let pixels: Vec<[u8; 4]> = (0..64).map(bgra).collect();
    f.backed(1, B8G8R8A8, (8, 8), BASE, &pixels);
    f.code(&req::transfer(rect(0, 0, 8, 8), 0, 1));
    f.code(&req::set_scanout(rect(2, 3, 4, 4), 0, 1));
    let shown: Vec<u32> = (3..7)
        .flat_map(|y| (2..6).map(move |x| xrgb(y * 8 + x)))
        .collect();
    assert_eq!(
        f.sink.take(),
        vec![
            Event::Scanout(Some((4, 4))),
            Event::Flush(rect(0, 0, 4, 4), shown)
        ]
    );
    // A flush overlapping the scanout's corner: clipped and translated.
    f.code(&req::flush(rect(0, 0, 3, 4), 1));
    assert_eq!(
        f.sink.take(),
        vec![Event::Flush(rect(0, 0, 1, 1), vec![xrgb(3 * 8 + 2)])]
    );
    // Outside the scanout, or on another resource: nothing to show.
    f.code(&req::flush(rect(0, 0, 2, 8), 1));
    f.code(&req::create_2d(2, B8G8R8A8, 8, 8));
    f.code(&req::flush(rect(0, 0, 8, 8), 2));
    assert_eq!(f.sink.take(), vec![]);
}

#[test]
fn create_refuses_bad_ids_formats_and_sizes() {
    let mut f = Fixture::new();
    assert_eq!(
        f.code(&req::create_2d(0, B8G8R8A8, 4, 4)),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(f.code(&req::create_2d(1, B8G8R8A8, 4, 4)), resp::OK_NODATA);
    assert_eq!(
        f.code(&req::create_2d(1, B8G8R8A8, 4, 4)),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        f.code(&req::create_2d(2, 5, 4, 4)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        f.code(&req::create_2d(2, B8G8R8A8, 0, 4)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        f.code(&req::create_2d(2, B8G8R8A8, 4, 0)),
        resp::ERR_INVALID_PARAMETER
    );
    let huge = MAX_RESOURCE_DIMENSION + 1;
    assert_eq!(
        f.code(&req::create_2d(2, B8G8R8A8, huge, 1)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        f.code(&req::create_2d(2, B8G8R8A8, u32::MAX, u32::MAX)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(f.gpu.resource_count(), 1);
}

#[test]
fn max_mem_caps_all_resources_and_unref_gives_it_back() {
    // Room for exactly one 100x100 resource (no alpha plane above 64x64).
    let mut f = Fixture::with_max_mem(1280 * 800 * 4);
    let frame = req::create_2d(1, B8G8R8A8, 1280, 800);
    assert_eq!(f.code(&frame), resp::OK_NODATA);
    assert_eq!(f.gpu.memory_used(), 1280 * 800 * 4);
    assert_eq!(
        f.code(&req::create_2d(2, B8G8R8A8, 1, 1)),
        resp::ERR_OUT_OF_MEMORY
    );
    assert_eq!(f.code(&req::unref(1)), resp::OK_NODATA);
    assert_eq!(f.gpu.memory_used(), 0);
    assert_eq!(f.code(&req::create_2d(2, B8G8R8A8, 1, 1)), resp::OK_NODATA);
    // 1x1 costs its pixel and its alpha byte.
    assert_eq!(f.gpu.memory_used(), 5);
}

#[test]
fn backing_lists_count_against_max_mem() {
    let mut f = Fixture::with_max_mem(1280 * 800 * 4);
    assert_eq!(
        f.code(&req::create_2d(1, B8G8R8A8, 1280, 799)),
        resp::OK_NODATA
    );
    let left = f.gpu.config().max_mem - f.gpu.memory_used();
    let fitting = (left / std::mem::size_of::<BackingEntry>() as u64) as usize;
    let entries = vec![(BASE, 4096u32); fitting + 1];
    assert_eq!(
        f.code(&req::attach_backing(1, &entries, None)),
        resp::ERR_OUT_OF_MEMORY
    );
    assert_eq!(
        f.code(&req::attach_backing(1, &entries[..fitting], None)),
        resp::OK_NODATA
    );
    assert_eq!(f.code(&req::detach_backing(1)), resp::OK_NODATA);
    assert_eq!(f.gpu.memory_used(), 1280 * 799 * 4);
}

#[test]
fn resource_count_is_capped() {
    let mut f = Fixture::new();
    for id in 1..=MAX_RESOURCES as u32 {
        assert_eq!(f.code(&req::create_2d(id, B8G8R8A8, 1, 1)), resp::OK_NODATA);
    }
    let one_more = req::create_2d(MAX_RESOURCES as u32 + 1, B8G8R8A8, 1, 1);
    assert_eq!(f.code(&one_more), resp::ERR_OUT_OF_MEMORY);
}

#[test]
fn transfer_refuses_rectangles_offsets_and_missing_backing() {
    let mut f = Fixture::new();
    let pixels: Vec<[u8; 4]> = (0..16).map(bgra).collect();
    f.backed(1, B8G8R8A8, (4, 4), BASE, &pixels);
    let bad = resp::ERR_INVALID_PARAMETER;
    assert_eq!(f.code(&req::transfer(rect(1, 0, 4, 1), 0, 1)), bad);
    assert_eq!(f.code(&req::transfer(rect(0, 4, 1, 1), 0, 1)), bad);
    assert_eq!(f.code(&req::transfer(rect(u32::MAX, 0, 2, 1), 0, 1)), bad);
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 4), u64::MAX - 8, 1)),
        bad
    );
    // One byte past the 64-byte backing.
    assert_eq!(f.code(&req::transfer(rect(0, 0, 4, 4), 1, 1)), bad);
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 1, 1), 0, 7)),
        resp::ERR_INVALID_RESOURCE_ID
    );
    // An empty rectangle inside the resource moves nothing.
    assert_eq!(
        f.code(&req::transfer(rect(4, 4, 0, 0), 0, 1)),
        resp::OK_NODATA
    );
    f.code(&req::create_2d(2, B8G8R8A8, 4, 4));
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 4), 0, 2)),
        resp::ERR_UNSPEC
    );
}

#[test]
fn backing_too_short_for_the_resource_is_refused_at_transfer() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 4, 4));
    // 60 of the 64 bytes, in two pieces with a gap between them.
    let entries = [(BASE, 32), (BASE + 0x1000, 28)];
    assert_eq!(
        f.code(&req::attach_backing(1, &entries, None)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 3), 0, 1)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 4), 0, 1)),
        resp::ERR_INVALID_PARAMETER
    );
}

#[test]
fn backing_outside_guest_memory_fails_the_transfer() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 4, 4));
    let entries = [(BASE + (1 << 20) - 32, 64)];
    assert_eq!(
        f.code(&req::attach_backing(1, &entries, None)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 2), 0, 1)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 4, 4), 0, 1)),
        resp::ERR_INVALID_PARAMETER
    );
}

#[test]
fn attach_backing_refuses_bad_counts_short_lists_and_wrapping_entries() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 4, 4));
    let entry = [(BASE, 64)];
    let bad = resp::ERR_INVALID_PARAMETER;
    assert_eq!(f.code(&req::attach_backing(1, &entry, Some(0))), bad);
    let too_many = Some(MAX_BACKING_ENTRIES + 1);
    assert_eq!(f.code(&req::attach_backing(1, &entry, too_many)), bad);
    assert_eq!(
        f.code(&req::attach_backing(1, &entry, Some(2))),
        resp::ERR_UNSPEC
    );
    assert_eq!(
        f.code(&req::attach_backing(1, &[(u64::MAX - 8, 64)], None)),
        bad
    );
    assert_eq!(
        f.code(&req::attach_backing(2, &entry, None)),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(f.gpu.memory_used(), 4 * 4 * 5, "refusals charge nothing");
    assert_eq!(
        f.code(&req::attach_backing(1, &entry, None)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::attach_backing(1, &entry, None)),
        resp::ERR_UNSPEC
    );
}

#[test]
fn the_largest_backing_list_is_accepted() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 1280, 1024));
    let entries = vec![(BASE, 256u32); MAX_BACKING_ENTRIES as usize];
    let request = req::attach_backing(1, &entries, None);
    assert_eq!(request.len(), MAX_REQUEST_LEN);
    assert_eq!(f.code(&request), resp::OK_NODATA);
    // 16384 x 256 bytes is all of the first 819 rows and some more.
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 1280, 819), 0, 1)),
        resp::OK_NODATA
    );
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 1280, 820), 0, 1)),
        resp::ERR_INVALID_PARAMETER
    );
}

#[test]
fn detach_backing_leaves_no_backing_and_refuses_twice() {
    let mut f = Fixture::new();
    f.backed(1, B8G8R8A8, (2, 2), BASE, &[[0; 4]; 4]);
    assert_eq!(f.code(&req::detach_backing(1)), resp::OK_NODATA);
    assert_eq!(f.code(&req::detach_backing(1)), resp::ERR_UNSPEC);
    assert_eq!(
        f.code(&req::transfer(rect(0, 0, 2, 2), 0, 1)),
        resp::ERR_UNSPEC
    );
    assert_eq!(
        f.code(&req::detach_backing(3)),
        resp::ERR_INVALID_RESOURCE_ID
    );
}

#[test]
fn set_scanout_refusals_and_disabling() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 4, 4));
    let whole = rect(0, 0, 4, 4);
    assert_eq!(
        f.code(&req::set_scanout(whole, 1, 1)),
        resp::ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        f.code(&req::set_scanout(whole, 0, 2)),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        f.code(&req::set_scanout(rect(1, 0, 4, 4), 0, 1)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        f.code(&req::set_scanout(rect(0, 0, 0, 4), 0, 1)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(f.sink.take(), vec![]);
    assert_eq!(f.code(&req::set_scanout(whole, 0, 1)), resp::OK_NODATA);
    f.sink.take();
    assert_eq!(
        f.code(&req::set_scanout(Rect::default(), 0, 0)),
        resp::OK_NODATA
    );
    assert_eq!(f.sink.take(), vec![Event::Scanout(None)]);
    f.code(&req::flush(whole, 1));
    assert_eq!(f.sink.take(), vec![], "nothing shown once disabled");
}

#[test]
fn unref_of_the_shown_resource_blanks_the_scanout() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 4, 4));
    f.code(&req::set_scanout(rect(0, 0, 4, 4), 0, 1));
    f.sink.take();
    assert_eq!(f.code(&req::unref(1)), resp::OK_NODATA);
    assert_eq!(f.sink.take(), vec![Event::Scanout(None)]);
    assert_eq!(f.code(&req::unref(1)), resp::ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        f.code(&req::flush(rect(0, 0, 1, 1), 1)),
        resp::ERR_INVALID_RESOURCE_ID
    );
}

#[test]
fn flush_refuses_rectangles_outside_the_resource() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 4, 4));
    assert_eq!(
        f.code(&req::flush(rect(0, 0, 5, 1), 1)),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        f.code(&req::flush(rect(1, u32::MAX, 1, 1), 1)),
        resp::ERR_INVALID_PARAMETER
    );
}

#[test]
fn short_requests_are_refused() {
    let mut f = Fixture::new();
    let response = f.control(&[0u8; 23]);
    assert_eq!(response_type(&response), resp::ERR_UNSPEC);
    for full in [
        req::create_2d(1, B8G8R8A8, 4, 4),
        req::detach_backing(1),
        req::update_cursor(0, 0, 0, 0, (0, 0)),
        req::set_scanout(rect(0, 0, 1, 1), 0, 1),
        req::transfer(rect(0, 0, 1, 1), 0, 1),
        req::flush(rect(0, 0, 1, 1), 1),
        req::attach_backing(1, &[(BASE, 64)], None),
        req::get_edid(0),
        req::unref(1),
    ] {
        let cut = &full[..full.len() - 1];
        assert_eq!(f.code(cut), resp::ERR_UNSPEC, "{:x?}", &full[..4]);
    }
    assert_eq!(f.gpu.resource_count(), 0);
    let mut cursor = req::move_cursor(0, 1, 1);
    cursor.truncate(HEADER_LEN + 12);
    assert_eq!(f.cursor(&cursor), resp::ERR_UNSPEC);
}

#[test]
fn unknown_and_misplaced_commands_are_unspecified_errors() {
    let mut f = Fixture::new();
    for kind in [
        0u32,
        0x0108,
        0x0109,
        0x010b,
        0x010c,
        0x0200,
        0x0207,
        0x1100,
        u32::MAX,
    ] {
        assert_eq!(
            f.code(&req::header(kind, None)),
            resp::ERR_UNSPEC,
            "{kind:#x}"
        );
    }
    assert_eq!(f.code(&req::move_cursor(0, 1, 1)), resp::ERR_UNSPEC);
    assert_eq!(f.cursor(&req::get_display_info()), resp::ERR_UNSPEC);
}

#[test]
fn cursor_update_hands_the_image_with_alpha_and_hides_it() {
    let mut f = Fixture::new();
    let pixels = [
        [0x33, 0x22, 0x11, 0x80],
        [0, 0, 0, 0],
        [1, 2, 3, 0xff],
        [4, 5, 6, 7],
    ];
    f.backed(5, B8G8R8A8, (2, 2), BASE, &pixels);
    f.code(&req::transfer(rect(0, 0, 2, 2), 0, 5));
    assert_eq!(
        f.cursor(&req::update_cursor(0, 10, 20, 5, (1, 0))),
        resp::OK_NODATA
    );
    let image = CursorImage {
        width: 2,
        height: 2,
        hot_x: 1,
        hot_y: 0,
        pixels: vec![0x8011_2233, 0, 0xff03_0201, 0x0706_0504],
    };
    assert_eq!(
        f.sink.take(),
        vec![Event::Cursor(Some(image)), Event::Move(10, 20)]
    );
    assert_eq!(f.cursor(&req::move_cursor(0, 7, 8)), resp::OK_NODATA);
    assert_eq!(
        f.cursor(&req::update_cursor(0, 0, 0, 0, (0, 0))),
        resp::OK_NODATA
    );
    assert_eq!(f.sink.take(), vec![Event::Move(7, 8), Event::Cursor(None)]);
}

#[test]
fn cursor_refusals() {
    let mut f = Fixture::new();
    f.code(&req::create_2d(1, B8G8R8A8, 64, 64));
    f.code(&req::create_2d(2, B8G8R8A8, 65, 1));
    let ok = req::update_cursor(0, 0, 0, 1, (63, 63));
    assert_eq!(f.cursor(&ok), resp::OK_NODATA);
    let bad = resp::ERR_INVALID_PARAMETER;
    assert_eq!(f.cursor(&req::update_cursor(0, 0, 0, 2, (0, 0))), bad);
    assert_eq!(f.cursor(&req::update_cursor(0, 0, 0, 1, (64, 0))), bad);
    assert_eq!(f.cursor(&req::update_cursor(0, 0, 0, 1, (0, 64))), bad);
    assert_eq!(
        f.cursor(&req::update_cursor(0, 0, 0, 3, (0, 0))),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        f.cursor(&req::update_cursor(1, 0, 0, 1, (0, 0))),
        resp::ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        f.cursor(&req::move_cursor(2, 0, 0)),
        resp::ERR_INVALID_SCANOUT_ID
    );
}

#[test]
fn reset_drops_every_resource_and_blanks_the_display() {
    let mut f = Fixture::new();
    f.backed(1, B8G8R8A8, (4, 4), BASE, &[[0; 4]; 16]);
    f.code(&req::set_scanout(rect(0, 0, 4, 4), 0, 1));
    f.sink.take();
    f.gpu.reset(&f.sink);
    assert_eq!(f.gpu.resource_count(), 0);
    assert_eq!(f.gpu.memory_used(), 0);
    assert_eq!(
        f.sink.take(),
        vec![Event::Scanout(None), Event::Cursor(None)]
    );
    assert_eq!(
        f.code(&req::flush(rect(0, 0, 1, 1), 1)),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(f.code(&req::create_2d(1, B8G8R8A8, 4, 4)), resp::OK_NODATA);
}

#[test]
fn config_check_refuses_sizes_and_memory_below_a_frame() {
    assert!(Gpu2d::new(config(1280 * 800 * 4)).is_ok());
    assert_eq!(
        config(1280 * 800 * 4 - 1).check(),
        Err(ConfigError::MemoryBelowOneFrame {
            max_mem: 1280 * 800 * 4 - 1,
            width: 1280,
            height: 800,
            frame: 1280 * 800 * 4,
        })
    );
    for (width, height) in [(0, 800), (1280, 0), (MAX_DIMENSION + 1, 800)] {
        let config = Gpu2dConfig {
            width,
            height,
            max_mem: u64::MAX,
        };
        assert_eq!(config.check(), Err(ConfigError::BadSize(width, height)));
    }
}

#[test]
fn a_page_flip_flushes_the_new_buffer_without_a_resize() {
    let mut f = Fixture::new();
    let pixels: Vec<[u8; 4]> = (0..4).map(bgra).collect();
    f.backed(1, B8G8R8A8, (2, 2), BASE, &pixels);
    f.code(&req::create_2d(2, B8G8R8A8, 2, 2));
    f.code(&req::create_2d(3, B8G8R8A8, 3, 2));
    let whole = rect(0, 0, 2, 2);
    f.code(&req::transfer(whole, 0, 1));
    f.code(&req::set_scanout(whole, 0, 2));
    f.sink.take();
    assert_eq!(f.code(&req::set_scanout(whole, 0, 1)), resp::OK_NODATA);
    let shown: Vec<u32> = (0..4).map(xrgb).collect();
    assert_eq!(f.sink.take(), vec![Event::Flush(whole, shown)]);
    // Another size is a resize.
    f.code(&req::set_scanout(rect(0, 0, 3, 2), 0, 3));
    assert_eq!(f.sink.take()[0], Event::Scanout(Some((3, 2))));
}
