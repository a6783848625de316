//! One RFB connection without I/O: client bytes in, input events out;
//! framebuffer damage in, protocol bytes to send out.
//!
//! The caller owns the socket and the framebuffer. It passes what the
//! socket read to [`Session::receive`], writes [`Session::pending_output`]
//! when the socket is writable and reports the written count with
//! [`Session::consume_output`], and calls [`Session::send_update`] with
//! the damaged areas whenever the framebuffer changes. Updates follow the
//! client's requests (RFC 6143 section 7.5.3): damage is remembered until
//! the client asks, and while more than [`OUTPUT_SOFT_LIMIT`] bytes wait
//! unsent no new update is encoded. Damage then keeps accumulating (merged
//! into a few rectangles), so a client that stops reading costs one
//! update's worth of memory and later receives the current picture, not a
//! backlog of stale frames.

use crate::encode::{self, Cursor, Surface, ZrleEncoder};
use crate::handshake::Handshake;
use crate::protocol::{encoding, ClientDecoder, ClientMessage, PixelFormat, Rect, MAX_CUT_TEXT};
use crate::RfbError;

/// Unsent bytes above which no new update or cut text is queued, unless
/// the owner sets another limit.
pub const OUTPUT_SOFT_LIMIT: usize = 1 << 20;
/// Damaged rectangles kept apart; more are merged into their bounding box.
const MAX_DAMAGE_RECTS: usize = 16;
/// Largest cursor image sent (viewers draw bigger ones badly or not at all).
pub const MAX_CURSOR_SIZE: u16 = 256;

/// What the client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key; `scancode` is set when the client sent QEMU's extended key
    /// event: an XT scancode as that extension encodes it (one-byte codes
    /// as they are, 0xe0-prefixed ones as the second byte with the high
    /// bit set, so right Ctrl, 0xe0 0x1d, is 0x9d).
    Key {
        down: bool,
        keysym: u32,
        scancode: Option<u32>,
    },
    /// The pointer, clamped to the screen; `buttons` bit 0 is the left
    /// button (RFC 6143 section 7.5.5).
    Pointer { buttons: u8, x: u16, y: u16 },
    /// Clipboard text from the client (Latin-1 on the wire).
    CutText(String),
    /// The client asked for an update of `rect` (clipped to the screen).
    UpdateRequested { incremental: bool, rect: Rect },
}

/// Which of the encodings the server speaks the client listed.
#[derive(Debug, Clone, Copy, Default)]
struct ClientEncodings {
    zrle: bool,
    cursor: bool,
    desktop_size: bool,
    extended_key: bool,
}

impl ClientEncodings {
    fn from_list(list: &[i32]) -> ClientEncodings {
        ClientEncodings {
            zrle: list.contains(&encoding::ZRLE),
            cursor: list.contains(&encoding::CURSOR),
            desktop_size: list.contains(&encoding::DESKTOP_SIZE),
            extended_key: list.contains(&encoding::QEMU_EXTENDED_KEY_EVENT),
        }
    }
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    handshake: Handshake,
    decoder: ClientDecoder,
    width: u16,
    height: u16,
    /// The screen as the client knows it (ServerInit or the last
    /// DesktopSize): rectangles beyond it would break the client.
    client_screen: Rect,
    format: PixelFormat,
    encodings: ClientEncodings,
    /// Whether the client has an update request outstanding, and the
    /// union of the areas it asked for (clipped to the screen).
    update_requested: bool,
    requested_area: Rect,
    damage: Vec<Rect>,
    desktop_size_pending: bool,
    extended_key_ack_pending: bool,
    extended_key_acked: bool,
    cursor: Option<Cursor>,
    cursor_pending: bool,
    zrle: ZrleEncoder,
    output: Vec<u8>,
    output_soft_limit: usize,
}

impl Session {
    /// A connection to a screen of `width` x `height` called `name`; the
    /// server's version string is queued at once.
    pub fn new(width: u16, height: u16, name: &str) -> Session {
        let mut handshake = Handshake::new(width, height, name);
        let output = handshake.take_output();
        Session {
            format: handshake.server_format(),
            handshake,
            decoder: ClientDecoder::new(),
            width,
            height,
            client_screen: Rect::new(0, 0, width, height),
            encodings: ClientEncodings::default(),
            update_requested: false,
            requested_area: Rect::default(),
            damage: Vec::new(),
            desktop_size_pending: false,
            extended_key_ack_pending: false,
            extended_key_acked: false,
            cursor: None,
            cursor_pending: false,
            zrle: ZrleEncoder::new(),
            output,
            output_soft_limit: OUTPUT_SOFT_LIMIT,
        }
    }

    /// Whether the handshake is over (input events and updates flow).
    pub fn is_ready(&self) -> bool {
        self.handshake.is_done()
    }

    pub fn width(&self) -> u16 {
        self.width
    }

    pub fn height(&self) -> u16 {
        self.height
    }

    /// The pixel format updates are sent in (the client's choice).
    pub fn pixel_format(&self) -> PixelFormat {
        self.format
    }

    fn screen(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Takes bytes the client sent. An error means the connection must be
    /// closed: send what [`Session::pending_output`] holds first (a
    /// refused handshake's reason), and drop events the same call carried.
    pub fn receive(&mut self, mut data: &[u8]) -> Result<Vec<Event>, RfbError> {
        if !self.handshake.is_done() {
            let used = self.handshake.receive(data);
            self.output.extend(self.handshake.take_output());
            data = &data[used?..];
            if !self.handshake.is_done() {
                return Ok(Vec::new());
            }
        }
        let mut messages = Vec::new();
        self.decoder.feed(data, &mut messages)?;
        Ok(messages
            .into_iter()
            .filter_map(|message| self.handle(message))
            .collect())
    }

    fn handle(&mut self, message: ClientMessage) -> Option<Event> {
        match message {
            ClientMessage::SetPixelFormat(format) => {
                self.format = format;
                None
            }
            ClientMessage::SetEncodings(list) => {
                let encodings = ClientEncodings::from_list(&list);
                self.extended_key_ack_pending = encodings.extended_key && !self.extended_key_acked;
                self.cursor_pending = encodings.cursor && self.cursor.is_some();
                self.encodings = encodings;
                None
            }
            ClientMessage::FramebufferUpdateRequest { incremental, rect } => {
                let rect = rect.intersect(&self.screen());
                if !incremental {
                    self.add_damage(rect);
                }
                self.update_requested = true;
                self.requested_area = self.requested_area.union(&rect);
                Some(Event::UpdateRequested { incremental, rect })
            }
            ClientMessage::KeyEvent { down, keysym } => Some(Event::Key {
                down,
                keysym,
                scancode: None,
            }),
            ClientMessage::QemuExtendedKeyEvent {
                down,
                keysym,
                scancode,
            } => Some(Event::Key {
                down,
                keysym,
                scancode: Some(scancode),
            }),
            ClientMessage::PointerEvent { buttons, x, y } => Some(Event::Pointer {
                buttons,
                x: x.min(self.width.saturating_sub(1)),
                y: y.min(self.height.saturating_sub(1)),
            }),
            ClientMessage::ClientCutText(latin1) => {
                Some(Event::CutText(latin1.into_iter().map(char::from).collect()))
            }
        }
    }

    /// Remembers a damaged area, merging when the list grows long or its
    /// rectangles together cover more than the screen (so one update never
    /// carries more pixels than the screen has).
    fn add_damage(&mut self, rect: Rect) {
        let rect = rect.intersect(&self.screen());
        if rect.is_empty() || self.damage.iter().any(|d| d.contains(&rect)) {
            return;
        }
        self.damage.retain(|d| !rect.contains(d));
        self.damage.push(rect);
        let area = |r: &Rect| u64::from(r.width) * u64::from(r.height);
        let total: u64 = self.damage.iter().map(area).sum();
        if self.damage.len() > MAX_DAMAGE_RECTS || total > area(&self.screen()) {
            let merged = self
                .damage
                .iter()
                .fold(Rect::default(), |acc, r| acc.union(r));
            self.damage = vec![merged];
        }
    }

    /// Reports damage of the framebuffer `surface` and, if the client has
    /// a request outstanding and the output queue has room, queues one
    /// FramebufferUpdate with the damaged areas it asked for (ZRLE if the
    /// client listed it, else Raw) and any pending cursor, desktop-size or
    /// extended-key-event pseudo-rectangle. Returns whether an update was
    /// queued; damage not sent is kept for the next one.
    pub fn send_update(&mut self, surface: &Surface, damaged: &[Rect]) -> bool {
        if !self.handshake.is_done() {
            return false;
        }
        for &rect in damaged {
            self.add_damage(rect);
        }
        if !self.update_requested || self.output.len() >= self.output_soft_limit {
            return false;
        }
        let area = self
            .requested_area
            .intersect(&surface.bounds())
            .intersect(&self.client_screen);
        // After a resize the client first learns the new size alone; it
        // then asks for the new screen.
        let rects: Vec<Rect> = if self.desktop_size_pending {
            Vec::new()
        } else {
            self.damage
                .iter()
                .map(|d| d.intersect(&area))
                .filter(|r| !r.is_empty())
                .collect()
        };
        let cursor = self.cursor.as_ref().filter(|_| self.cursor_pending);
        let pseudo = usize::from(self.extended_key_ack_pending)
            + usize::from(self.desktop_size_pending)
            + usize::from(cursor.is_some());
        let count = pseudo + rects.len();
        if count == 0 {
            return false;
        }
        // At most 3 + MAX_DAMAGE_RECTS rectangles.
        encode::push_update_header(&mut self.output, u16::try_from(count).unwrap_or(u16::MAX));
        if self.extended_key_ack_pending {
            encode::push_extended_key_ack(&mut self.output);
            self.extended_key_acked = true;
            self.extended_key_ack_pending = false;
        }
        if let Some(cursor) = cursor {
            // Checked when set: its pixels match its size.
            let _ = encode::push_cursor(&mut self.output, cursor, &self.format);
            self.cursor_pending = false;
        }
        if self.desktop_size_pending {
            encode::push_desktop_size(&mut self.output, self.width, self.height);
            self.client_screen = self.screen();
            self.desktop_size_pending = false;
        }
        for &rect in &rects {
            if self.encodings.zrle {
                self.zrle
                    .push(&mut self.output, surface, rect, &self.format);
            } else {
                encode::push_raw(&mut self.output, surface, rect, &self.format);
            }
        }
        if !rects.is_empty() {
            self.damage.retain(|d| !area.contains(d));
        }
        self.update_requested = false;
        self.requested_area = Rect::default();
        true
    }

    /// The screen's new size. The client learns it through DesktopSize if
    /// it listed that encoding; a client that did not keeps its old size
    /// and is sent only the part of the new screen that fits in it. The
    /// whole screen is damaged either way.
    pub fn resize(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
        if !self.handshake.is_done() {
            self.handshake.set_size(width, height);
            self.client_screen = self.screen();
            return;
        }
        if self.encodings.desktop_size {
            self.desktop_size_pending = true;
        } else {
            log::debug!("rfb: client cannot follow a resize to {width}x{height}");
        }
        self.requested_area = self.requested_area.intersect(&self.screen());
        self.damage.clear();
        self.add_damage(self.screen());
    }

    /// Sets the pointer's image, sent with the next update if the client
    /// draws the cursor itself. Returns false (and keeps the old image)
    /// if the pixels do not match the size or it exceeds
    /// [`MAX_CURSOR_SIZE`] in either direction.
    pub fn set_cursor(&mut self, cursor: Cursor) -> bool {
        let pixels = usize::from(cursor.width) * usize::from(cursor.height);
        if cursor.pixels.len() != pixels
            || cursor.width > MAX_CURSOR_SIZE
            || cursor.height > MAX_CURSOR_SIZE
        {
            return false;
        }
        self.cursor = Some(cursor);
        self.cursor_pending = self.encodings.cursor;
        true
    }

    /// Queues clipboard text for the client (Latin-1: other characters
    /// become '?'; at most [`MAX_CUT_TEXT`] characters). Returns false,
    /// dropping the text, before the handshake ends or while the output
    /// queue is full.
    pub fn send_cut_text(&mut self, text: &str) -> bool {
        if !self.handshake.is_done() || self.output.len() >= self.output_soft_limit {
            return false;
        }
        let latin1: Vec<u8> = text
            .chars()
            .take(MAX_CUT_TEXT)
            .map(|c| u8::try_from(c).unwrap_or(b'?'))
            .collect();
        self.output.extend_from_slice(&[3, 0, 0, 0]);
        // At most MAX_CUT_TEXT bytes.
        let length = u32::try_from(latin1.len()).unwrap_or(u32::MAX);
        self.output.extend_from_slice(&length.to_be_bytes());
        self.output.extend_from_slice(&latin1);
        true
    }

    /// Changes the unsent byte count above which nothing new is queued
    /// (default [`OUTPUT_SOFT_LIMIT`]), e.g. to match the socket's buffer.
    pub fn set_output_soft_limit(&mut self, bytes: usize) {
        self.output_soft_limit = bytes;
    }

    /// The unsent byte count above which nothing new is queued.
    pub fn output_soft_limit(&self) -> usize {
        self.output_soft_limit
    }

    /// Bytes waiting to be sent.
    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    /// Drops the first `written` bytes of the pending output (what the
    /// socket took).
    pub fn consume_output(&mut self, written: usize) {
        self.output.drain(..written.min(self.output.len()));
    }

    /// The most bytes the pending output can hold for a screen of this
    /// size: the soft limit plus one update (every pixel at 4 bytes with
    /// ZRLE's per-tile and zlib's per-block overhead, the largest cursor,
    /// the pseudo and rectangle headers) or one cut text.
    pub fn output_bound(&self) -> usize {
        let pixels = usize::from(self.width) * usize::from(self.height);
        let cursor = usize::from(MAX_CURSOR_SIZE) * usize::from(MAX_CURSOR_SIZE) * 5;
        let update =
            4 + pixels * 4 + pixels / 64 + cursor + (3 + MAX_DAMAGE_RECTS) * 16 + 64 * 1024;
        self.output_soft_limit + update.max(8 + MAX_CUT_TEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session past the handshake (3.8, shared), its output drained.
    fn ready(width: u16, height: u16) -> Session {
        let mut session = Session::new(width, height, "vm");
        assert!(session
            .receive(b"RFB 003.008\n\x01\x01")
            .unwrap()
            .is_empty());
        assert!(session.is_ready());
        session.consume_output(usize::MAX);
        session
    }

    fn set_encodings(list: &[i32]) -> Vec<u8> {
        let mut bytes = vec![2, 0];
        bytes.extend_from_slice(&u16::try_from(list.len()).unwrap().to_be_bytes());
        for e in list {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        bytes
    }

    fn request(incremental: bool, rect: Rect) -> Vec<u8> {
        let mut bytes = vec![3, u8::from(incremental)];
        for v in [rect.x, rect.y, rect.width, rect.height] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        bytes
    }

    fn take(session: &mut Session) -> Vec<u8> {
        let out = session.pending_output().to_vec();
        session.consume_output(out.len());
        out
    }

    #[test]
    fn the_handshake_then_input_events() {
        let mut session = Session::new(100, 50, "vm");
        assert_eq!(take(&mut session), b"RFB 003.008\n");
        let mut bytes = b"RFB 003.008\n\x01\x00".to_vec();
        bytes.extend_from_slice(&[5, 1, 0x01, 0x00, 0x00, 0x10]); // x 256 -> 99
        bytes.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x61]);
        bytes.extend_from_slice(&[255, 0, 0, 0, 0, 0, 0, 0x61, 0, 0, 0, 0x9d]);
        bytes.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 2, b'a', 0xe9]);
        let mut events = Vec::new();
        for byte in &bytes {
            events.extend(session.receive(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(
            events,
            vec![
                Event::Pointer {
                    buttons: 1,
                    x: 99,
                    y: 16
                },
                Event::Key {
                    down: true,
                    keysym: 0x61,
                    scancode: None
                },
                Event::Key {
                    down: false,
                    keysym: 0x61,
                    scancode: Some(0x9d)
                },
                Event::CutText("aé".to_string()),
            ]
        );
        let out = take(&mut session);
        assert_eq!(&out[..6], &[1, 1, 0, 0, 0, 0]);
        assert_eq!(&out[6..10], &[0, 100, 0, 50]);
    }

    #[test]
    fn a_refused_version_leaves_its_reason_to_send() {
        let mut session = Session::new(10, 10, "vm");
        take(&mut session);
        assert_eq!(session.receive(b"RFB 005.000\n"), Err(RfbError::BadVersion));
        assert_eq!(session.pending_output()[..5], [0, 0, 0, 0, 32]);
        assert_eq!(session.receive(b"x"), Err(RfbError::Closed));
    }

    #[test]
    fn updates_follow_requests_and_damage() {
        let pixels: Vec<u32> = (0..40).collect();
        let surface = Surface::new(&pixels, 8, 8, 5).unwrap();
        let mut session = ready(8, 5);
        assert!(
            !session.send_update(&surface, &[surface.bounds()]),
            "nothing asked yet"
        );
        assert!(session.pending_output().is_empty());
        let events = session
            .receive(&request(true, Rect::new(0, 0, 100, 100)))
            .unwrap();
        assert_eq!(
            events,
            vec![Event::UpdateRequested {
                incremental: true,
                rect: Rect::new(0, 0, 8, 5)
            }]
        );
        // The damage reported before the request is sent now, as Raw.
        assert!(session.send_update(&surface, &[]));
        let out = take(&mut session);
        let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0, 5, 0, 0, 0, 0];
        expected.extend(pixels.iter().flat_map(|p| p.to_le_bytes()));
        assert_eq!(out, expected);
        // Answered: the next damage waits for the next request.
        assert!(!session.send_update(&surface, &[Rect::new(2, 1, 1, 1)]));
        session
            .receive(&request(true, Rect::new(0, 0, 8, 5)))
            .unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            take(&mut session),
            [0, 0, 0, 1, 0, 2, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 10, 0, 0, 0]
        );
        // An incremental request with nothing damaged waits.
        session
            .receive(&request(true, Rect::new(0, 0, 8, 5)))
            .unwrap();
        assert!(!session.send_update(&surface, &[]));
        // A non-incremental one is answered in full (of what it asked).
        session
            .receive(&request(false, Rect::new(7, 4, 5, 5)))
            .unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            take(&mut session),
            [0, 0, 0, 1, 0, 7, 0, 4, 0, 1, 0, 1, 0, 0, 0, 0, 39, 0, 0, 0]
        );
    }

    #[test]
    fn zrle_is_used_when_listed_and_the_extended_key_event_is_acknowledged_once() {
        let pixels = vec![0x0011_2233u32; 16];
        let surface = Surface::new(&pixels, 4, 4, 4).unwrap();
        let mut session = ready(4, 4);
        let mut bytes = set_encodings(&[
            encoding::RAW,
            encoding::ZRLE,
            encoding::QEMU_EXTENDED_KEY_EVENT,
        ]);
        bytes.extend(request(false, surface.bounds()));
        session.receive(&bytes).unwrap();
        assert!(session.send_update(&surface, &[]));
        let out = take(&mut session);
        assert_eq!(
            &out[..16],
            &[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xfe, 0xfe]
        );
        assert_eq!(&out[16..28], &[0, 0, 0, 0, 0, 4, 0, 4, 0, 0, 0, 16]);
        // Listing it again does not repeat the acknowledgement.
        let mut bytes = set_encodings(&[encoding::QEMU_EXTENDED_KEY_EVENT]);
        bytes.extend(request(false, surface.bounds()));
        session.receive(&bytes).unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            &take(&mut session)[..16],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 4, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_resize_sends_desktop_size_alone_then_the_new_screen() {
        let pixels = vec![7u32; 6 * 3];
        let surface = Surface::new(&pixels, 6, 6, 3).unwrap();
        let mut session = ready(4, 4);
        session
            .receive(&set_encodings(&[encoding::DESKTOP_SIZE]))
            .unwrap();
        session.resize(6, 3);
        session
            .receive(&request(true, Rect::new(0, 0, 4, 4)))
            .unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            take(&mut session),
            [0, 0, 0, 1, 0, 0, 0, 0, 0, 6, 0, 3, 0xff, 0xff, 0xff, 0x21]
        );
        session
            .receive(&request(true, Rect::new(0, 0, 6, 3)))
            .unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            &take(&mut session)[..16],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 6, 0, 3, 0, 0, 0, 0]
        );
        // Pointer events now clamp to the new size.
        let events = session.receive(&[5, 0, 0, 9, 0, 9]).unwrap();
        assert_eq!(
            events,
            vec![Event::Pointer {
                buttons: 0,
                x: 5,
                y: 2
            }]
        );
        // Before the handshake ends, the size goes into ServerInit.
        let mut early = Session::new(1, 1, "");
        early.resize(640, 480);
        early.receive(b"RFB 003.008\n\x01\x01").unwrap();
        assert_eq!(&early.pending_output()[18..22], &[2, 128, 1, 224]);
    }

    #[test]
    fn a_client_that_cannot_resize_gets_only_what_fits_its_old_size() {
        let pixels = vec![1u32; 8 * 8];
        let surface = Surface::new(&pixels, 8, 8, 8).unwrap();
        let mut session = ready(4, 2);
        session.resize(8, 8);
        session
            .receive(&request(false, Rect::new(0, 0, 8, 8)))
            .unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            &take(&mut session)[..16],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 2, 0, 0, 0, 0]
        );
    }

    #[test]
    fn the_cursor_goes_with_the_next_update_once_the_client_draws_it() {
        let pixels = [0u32; 1];
        let surface = Surface::new(&pixels, 1, 1, 1).unwrap();
        let mut session = ready(1, 1);
        let cursor = Cursor {
            width: 1,
            height: 1,
            hotspot_x: 0,
            hotspot_y: 0,
            pixels: vec![0xff00_00ff],
        };
        assert!(session.set_cursor(cursor.clone()));
        let too_big = Cursor {
            width: 257,
            height: 1,
            pixels: vec![0; 257],
            ..cursor.clone()
        };
        assert!(!session.set_cursor(too_big));
        let mismatched = Cursor {
            width: 2,
            ..cursor.clone()
        };
        assert!(!session.set_cursor(mismatched));
        session.receive(&request(true, surface.bounds())).unwrap();
        assert!(
            !session.send_update(&surface, &[]),
            "no cursor for a client that did not ask"
        );
        session
            .receive(&set_encodings(&[encoding::CURSOR]))
            .unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(
            take(&mut session),
            [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0xff, 0xff, 0x11, 0xff, 0, 0, 0, 0x80]
        );
    }

    #[test]
    fn updates_follow_the_clients_pixel_format() {
        let pixels = [0x00ff_0000u32, 0x0000_ff00];
        let surface = Surface::new(&pixels, 2, 2, 1).unwrap();
        let mut session = ready(2, 1);
        // BGR233 at 8 bpp: blue in the top two bits, red in the bottom three.
        let mut bytes = vec![0, 0, 0, 0, 8, 8, 0, 1, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0];
        bytes.extend(request(false, surface.bounds()));
        session.receive(&bytes).unwrap();
        assert!(session.send_update(&surface, &[]));
        assert_eq!(&take(&mut session)[16..], &[0b0000_0111, 0b0011_1000]);
    }

    #[test]
    fn many_small_damages_merge_into_their_bounding_box() {
        let pixels = vec![0u32; 64 * 64];
        let surface = Surface::new(&pixels, 64, 64, 64).unwrap();
        let mut session = ready(64, 64);
        let damage: Vec<Rect> = (0..20).map(|i| Rect::new(i * 3, i * 2, 1, 1)).collect();
        session.receive(&request(true, surface.bounds())).unwrap();
        assert!(session.send_update(&surface, &damage));
        let out = take(&mut session);
        // The seventeenth merged the first seventeen (to 49x33 at the
        // origin); the last three stay apart.
        assert_eq!(
            &out[..16],
            &[0, 0, 0, 4, 0, 0, 0, 0, 0, 49, 0, 33, 0, 0, 0, 0]
        );
        // Sixteen or fewer stay apart, a rectangle inside another is dropped.
        let mut damage: Vec<Rect> = (0..16).map(|i| Rect::new(i * 3, 0, 1, 1)).collect();
        damage.push(Rect::new(0, 0, 1, 1));
        session.receive(&request(true, surface.bounds())).unwrap();
        assert!(session.send_update(&surface, &damage));
        assert_eq!(&take(&mut session)[..4], &[0, 0, 0, 16]);
    }

    #[test]
    fn cut_text_to_the_client_is_latin_1() {
        let mut session = Session::new(1, 1, "");
        assert!(!session.send_cut_text("early"), "not before the handshake");
        let mut session = ready(1, 1);
        assert!(session.send_cut_text("é€"));
        assert_eq!(take(&mut session), [3, 0, 0, 0, 0, 0, 0, 2, 0xe9, b'?']);
    }

    #[test]
    fn a_client_that_never_reads_costs_one_update_and_gets_the_latest_frame() {
        let mut session = ready(640, 480);
        let mut frame = vec![0u32; 640 * 480];
        for n in 0..20u32 {
            frame
                .iter_mut()
                .enumerate()
                .for_each(|(i, p)| *p = n.wrapping_mul(0x0101_0101) ^ u32::try_from(i).unwrap());
            let surface = Surface::new(&frame, 640, 640, 480).unwrap();
            session.receive(&request(false, surface.bounds())).unwrap();
            session.send_update(&surface, &[surface.bounds()]);
            assert!(
                session.send_cut_text("clip")
                    || session.pending_output().len() >= OUTPUT_SOFT_LIMIT
            );
            assert!(session.pending_output().len() <= session.output_bound());
        }
        // One full raw frame (1.2 MiB) filled the queue; then nothing more,
        // not even the cut text queued after it.
        assert_eq!(session.pending_output().len(), 16 + 640 * 480 * 4);
        session.consume_output(usize::MAX);
        let surface = Surface::new(&frame, 640, 640, 480).unwrap();
        assert!(session.send_update(&surface, &[]));
        let out = take(&mut session);
        let current = frame[0] & 0x00ff_ffff;
        assert_eq!(
            &out[16..20],
            &current.to_le_bytes(),
            "the current frame, not a stale one"
        );
    }
}
