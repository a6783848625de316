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
//!   the request is spent.
//!
//! Input: byte 0 picks the protocol version (3.3, 3.7 or 3.8), bytes 1-2
//! the screen size, byte 3 the output soft limit; then operations, each an opcode byte and its operands:
//! feed the next N bytes, send an update, resize, write some output,
//! set a cursor, send cut text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rfb::encode::{Cursor, Surface};
use rfb::protocol::Rect;
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
                    assert!(session.pending_output().len() > before);
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
