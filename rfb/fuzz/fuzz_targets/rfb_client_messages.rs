//! RFB client messages, the bytes a VNC viewer (anyone who can open the
//! display socket) sends, fed to a `rfb::Session` after a completed
//! handshake in arbitrary chunks, with framebuffer updates, resizes,
//! cursor images, cut text and partial socket writes interleaved.
//!
//! Invariants, beyond "no panic":
//! - pointer events lie inside the screen as it is at that moment;
//! - an update request's rectangle (as reported) lies inside the screen;
//! - nothing is queued while the output holds the soft limit or more
//!   (set small, 1-64 KiB, so a client that never reads reaches it), so
//!   the queue never exceeds `Session::output_bound` for the largest
//!   screen the session has had (the soft limit plus one update);
//! - after a protocol error the session stays closed;
//! - an update is queued only when the client asked for one, and then
//!   the request is spent;
//! - every update reads back as a viewer reads it, in the pixel format
//!   the client chose: a non-empty rectangle list that fills it exactly,
//!   pixel rectangles inside the screen the viewer knows, DesktopSize
//!   with the server's size, ZRLE data that inflates on the one stream
//!   to tiles of the written subencodings with palette indices in range
//!   and no bytes left over.
//!
//! Input: byte 0 picks the protocol version (3.3, 3.7 or 3.8), bytes 1-2
//! the screen size, byte 3 the output soft limit; then operations, each an opcode byte and its operands:
//! feed the next N bytes, send an update, resize, write some output,
//! set a cursor, send cut text.

#![no_main]

use flate2::{Decompress, FlushDecompress, Status};
use libfuzzer_sys::fuzz_target;
use rfb::encode::{Cursor, Surface};
use rfb::protocol::{encoding, PixelFormat, Rect};
use rfb::session::{Event, Session};

/// Reads operands from the input, zero once it runs out.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        first
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// The viewer's side of the updates: what it knows of the screen and
/// its end of ZRLE's zlib stream.
struct Viewer {
    screen: Rect,
    zlib: Decompress,
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

impl Viewer {
    /// Reads one FramebufferUpdate, which must be exactly `bytes`.
    fn read_update(&mut self, bytes: &[u8], format: &PixelFormat, server_size: (u16, u16)) {
        assert_eq!(&bytes[..2], &[0, 0]);
        let count = be16(bytes, 2);
        assert!(count > 0, "an empty update");
        let bpp = format.bytes_per_pixel();
        let mut at = 4;
        for _ in 0..count {
            let h = &bytes[at..at + 12];
            let rect = Rect::new(be16(h, 0), be16(h, 2), be16(h, 4), be16(h, 6));
            let pixels = usize::from(rect.width) * usize::from(rect.height);
            at += 12;
            match i32::from_be_bytes([h[8], h[9], h[10], h[11]]) {
                encoding::RAW => {
                    assert!(!rect.is_empty() && self.screen.contains(&rect), "{rect:?}");
                    at += pixels * bpp;
                }
                encoding::ZRLE => {
                    assert!(!rect.is_empty() && self.screen.contains(&rect), "{rect:?}");
                    let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
                    let end = at + 4 + usize::try_from(length).unwrap();
                    self.read_zrle(&bytes[at + 4..end], rect, format);
                    at = end;
                }
                encoding::CURSOR => {
                    assert!(rect.width <= 256 && rect.height <= 256);
                    at += pixels * bpp
                        + usize::from(rect.width).div_ceil(8) * usize::from(rect.height);
                }
                encoding::DESKTOP_SIZE => {
                    assert_eq!((rect.width, rect.height), server_size);
                    self.screen = Rect::new(0, 0, rect.width, rect.height);
                }
                encoding::QEMU_EXTENDED_KEY_EVENT => assert_eq!(rect, Rect::default()),
                other => panic!("encoding {other} never asked for"),
            }
        }
        assert_eq!(at, bytes.len(), "the update's rectangles fill it exactly");
    }

    /// Inflates a ZRLE rectangle and walks its tiles: each must be one of
    /// the subencodings the encoder writes, palette indices in range, and
    /// the tiles must end where the data does.
    fn read_zrle(&mut self, compressed: &[u8], rect: Rect, format: &PixelFormat) {
        let tiles = usize::from(rect.width.div_ceil(64)) * usize::from(rect.height.div_ceil(64));
        let pixels = usize::from(rect.width) * usize::from(rect.height);
        let mut data = Vec::with_capacity(pixels * 4 + tiles * 128);
        let before = self.zlib.total_in();
        let status = self
            .zlib
            .decompress_vec(compressed, &mut data, FlushDecompress::Sync)
            .unwrap();
        assert!(matches!(status, Status::Ok));
        assert_eq!(self.zlib.total_in() - before, compressed.len() as u64);
        assert!(
            data.len() < data.capacity(),
            "more data than the tiles can hold"
        );
        let used = (u32::from(format.red_max) << format.red_shift)
            | (u32::from(format.green_max) << format.green_shift)
            | (u32::from(format.blue_max) << format.blue_shift);
        let compact = format.bits_per_pixel == 32
            && format.depth <= 24
            && (used <= 0x00ff_ffff || used & 0xff == 0);
        let cpixel = if compact { 3 } else { format.bytes_per_pixel() };
        let mut at = 0;
        for ty in (0..rect.height).step_by(64) {
            for tx in (0..rect.width).step_by(64) {
                let tw = usize::from(64.min(rect.width - tx));
                let th = usize::from(64.min(rect.height - ty));
                let sub = data[at];
                at += 1;
                match sub {
                    0 => at += tw * th * cpixel,
                    1 => at += cpixel,
                    2..=16 => {
                        at += usize::from(sub) * cpixel;
                        let bits = match sub {
                            2 => 1,
                            3 | 4 => 2,
                            _ => 4,
                        };
                        let row_bytes = (tw * bits).div_ceil(8);
                        for row in data[at..at + th * row_bytes].chunks(row_bytes) {
                            for x in 0..tw {
                                let bit = x * bits;
                                let index =
                                    (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                assert!(index < sub, "palette index {index} of {sub}");
                            }
                        }
                        at += th * row_bytes;
                    }
                    other => panic!("subencoding {other} is never written"),
                }
            }
        }
        assert_eq!(at, data.len(), "the tiles end where the data does");
    }
}

/// A screen size from two bytes: up to 64x52, small enough for many
/// executions per second (the output limit is scaled down to match).
fn size(a: u8, b: u8) -> (u16, u16) {
    (1 + u16::from(a) / 4, 1 + u16::from(b) / 5)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let version: &[u8] = match input.byte() % 3 {
        0 => b"RFB 003.003\n\x01",
        1 => b"RFB 003.007\n\x01\x00",
        _ => b"RFB 003.008\n\x01\x01",
    };
    let (width, height) = size(input.byte(), input.byte());
    let mut session = Session::new(width, height, "fuzz");
    // 1-64 KiB: a few unread updates of these small screens fill it.
    session.set_output_soft_limit(1024 * (1 + usize::from(input.byte() % 64)));
    assert!(session.receive(version).unwrap().is_empty());
    assert!(session.is_ready());
    let mut bound = session.output_bound();
    let mut viewer = Viewer {
        screen: Rect::new(0, 0, width, height),
        zlib: Decompress::new(true),
    };
    let mut frame: Vec<u32> = Vec::new();
    let mut request_outstanding = false;
    while !input.data.is_empty() {
        match input.byte() % 8 {
            0..=3 => {
                let length = usize::from(input.byte());
                let chunk = input.bytes(length);
                let events = match session.receive(chunk) {
                    Ok(events) => events,
                    Err(_) => {
                        assert!(
                            session.receive(b"\x04").is_err(),
                            "a failed session stays closed"
                        );
                        return;
                    }
                };
                let screen = Rect::new(0, 0, session.width(), session.height());
                for event in events {
                    match event {
                        Event::Pointer { x, y, .. } => {
                            assert!(x < session.width().max(1) && y < session.height().max(1));
                        }
                        Event::UpdateRequested { rect, .. } => {
                            assert!(screen.contains(&rect));
                            request_outstanding = true;
                        }
                        Event::Key { .. } | Event::CutText(_) => {}
                    }
                }
            }
            4 => {
                // A surface of the session's size, or a stale one of
                // another size (the caller's resize not yet reported).
                let (w, h) = if input.byte().is_multiple_of(4) {
                    size(input.byte(), input.byte())
                } else {
                    (session.width(), session.height())
                };
                let colours = input.byte();
                let len = usize::from(w) * usize::from(h);
                frame.clear();
                frame.extend((0..len).map(|i| {
                    let i = u32::try_from(i).unwrap_or(0);
                    (i % (u32::from(colours) + 1)).wrapping_mul(0x0012_3457)
                }));
                let surface = Surface::new(&frame, usize::from(w), w, h).unwrap();
                let damage = Rect::new(
                    u16::from(input.byte()),
                    u16::from(input.byte()),
                    u16::from(input.byte()) * 2,
                    u16::from(input.byte()) * 2,
                );
                let before = session.pending_output().len();
                let sent = session.send_update(&surface, &[damage]);
                if sent {
                    assert!(request_outstanding, "an update nobody asked for");
                    assert!(
                        before < session.output_soft_limit(),
                        "queued over the limit"
                    );
                    let server_size = (session.width(), session.height());
                    let update = &session.pending_output()[before..];
                    viewer.read_update(update, &session.pixel_format(), server_size);
                    request_outstanding = false;
                } else {
                    assert_eq!(session.pending_output().len(), before);
                }
            }
            5 => {
                let (w, h) = size(input.byte(), input.byte());
                session.resize(w, h);
                bound = bound.max(session.output_bound());
            }
            6 => {
                let written = usize::from(input.byte()) * 64;
                session.consume_output(written);
            }
            _ => {
                if input.byte().is_multiple_of(2) {
                    let (w, h) = (u16::from(input.byte() % 40), u16::from(input.byte() % 40));
                    let pixels = (0..usize::from(w) * usize::from(h)
                        + usize::from(input.byte() % 2))
                        .map(|i| u32::try_from(i).unwrap_or(0).wrapping_mul(0x0101_0101))
                        .collect();
                    let cursor = Cursor {
                        width: w,
                        height: h,
                        hotspot_x: u16::from(input.byte()),
                        hotspot_y: u16::from(input.byte()),
                        pixels,
                    };
                    session.set_cursor(cursor);
                } else {
                    let repeat = usize::from(input.byte()) * 17;
                    let text: String = std::iter::repeat_n('é', repeat).collect();
                    let before = session.pending_output().len();
                    if session.send_cut_text(&text) {
                        assert!(
                            before < session.output_soft_limit(),
                            "queued over the limit"
                        );
                        assert_eq!(session.pending_output().len(), before + 8 + repeat);
                    } else {
                        assert_eq!(session.pending_output().len(), before);
                    }
                }
            }
        }
        assert!(session.pending_output().len() <= bound);
    }
});
