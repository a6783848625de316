//! RFB client-to-server messages (RFC 6143 section 7.5, plus QEMU's
//! extended key event) and an incremental decoder for them.
//!
//! The decoder is sans-I/O: the connection owner feeds it whatever bytes
//! the socket returned, in any chunking, and gets complete messages back.
//! Everything a client sends is parsed with bounds: the decoder buffers at
//! most one fixed-size message header, keeps at most [`MAX_ENCODINGS`]
//! encodings and [`MAX_CUT_TEXT`] bytes of clipboard text, and skips the
//! rest of a longer list or text without storing it, so no length field
//! makes it allocate more. An unknown message type cannot be skipped (its
//! length is unknown), so it is a typed error that closes the connection.

use crate::RfbError;

/// Encodings kept from one SetEncodings message; the rest are read and
/// ignored. Real viewers list about twenty.
pub const MAX_ENCODINGS: usize = 64;
/// Longest client cut text delivered; longer text is consumed and dropped.
pub const MAX_CUT_TEXT: usize = 1 << 20;

/// Encoding numbers this server understands (RFC 6143 section 7.7 and the
/// rfbproto community pseudo-encodings).
pub mod encoding {
    pub const RAW: i32 = 0;
    pub const ZRLE: i32 = 16;
    pub const CURSOR: i32 = -239;
    pub const DESKTOP_SIZE: i32 = -223;
    pub const QEMU_EXTENDED_KEY_EVENT: i32 = -258;
}

/// A rectangle of the framebuffer, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

impl Rect {
    pub const fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    fn right(&self) -> u32 {
        u32::from(self.x) + u32::from(self.width)
    }

    fn bottom(&self) -> u32 {
        u32::from(self.y) + u32::from(self.height)
    }

    /// The part of `self` inside `other` (empty if they do not overlap).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let right = self.right().min(other.right());
        let bottom = self.bottom().min(other.bottom());
        if right <= u32::from(x) || bottom <= u32::from(y) {
            return Rect::default();
        }
        // Both ends are within one of the u16 rectangles, so the
        // differences fit in u16.
        Rect::new(
            x,
            y,
            u16::try_from(right - u32::from(x)).unwrap_or(u16::MAX),
            u16::try_from(bottom - u32::from(y)).unwrap_or(u16::MAX),
        )
    }

    /// The smallest rectangle holding both (an empty one adds nothing).
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let right = self.right().max(other.right());
        let bottom = self.bottom().max(other.bottom());
        Rect::new(
            x,
            y,
            u16::try_from(right - u32::from(x)).unwrap_or(u16::MAX),
            u16::try_from(bottom - u32::from(y)).unwrap_or(u16::MAX),
        )
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Rect) -> bool {
        other.is_empty() || self.intersect(other) == *other
    }
}

/// A true-colour pixel format (RFC 6143 section 7.4). Colour-map formats
/// are refused when parsed, so every value of this type is true-colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's native format: XRGB8888 as little-endian 32-bit words.
    pub const XRGB8888: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// The 16-byte wire form, true-colour flag set.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0] = self.bits_per_pixel;
        out[1] = self.depth;
        out[2] = u8::from(self.big_endian);
        out[3] = 1;
        out[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        out[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        out[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        out[10] = self.red_shift;
        out[11] = self.green_shift;
        out[12] = self.blue_shift;
        out
    }

    /// Parses and validates the 16-byte wire form.
    pub fn from_bytes(bytes: &[u8; 16]) -> Result<PixelFormat, RfbError> {
        if bytes[3] == 0 {
            return Err(RfbError::BadPixelFormat(
                "colour-map formats are not supported",
            ));
        }
        let format = PixelFormat {
            bits_per_pixel: bytes[0],
            depth: bytes[1],
            big_endian: bytes[2] != 0,
            red_max: u16::from_be_bytes([bytes[4], bytes[5]]),
            green_max: u16::from_be_bytes([bytes[6], bytes[7]]),
            blue_max: u16::from_be_bytes([bytes[8], bytes[9]]),
            red_shift: bytes[10],
            green_shift: bytes[11],
            blue_shift: bytes[12],
        };
        format.validate()?;
        Ok(format)
    }

    /// Checks what the encoders rely on: 8, 16 or 32 bits per pixel, a
    /// depth no larger, and each channel's maximum a 2^n - 1 whose bits,
    /// shifted, stay inside the pixel.
    pub fn validate(&self) -> Result<(), RfbError> {
        if !matches!(self.bits_per_pixel, 8 | 16 | 32) {
            return Err(RfbError::BadPixelFormat(
                "bits per pixel must be 8, 16 or 32",
            ));
        }
        if self.depth == 0 || self.depth > self.bits_per_pixel {
            return Err(RfbError::BadPixelFormat("depth out of range"));
        }
        let channels = [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ];
        for (max, shift) in channels {
            if max == 0 || !(u32::from(max) + 1).is_power_of_two() {
                return Err(RfbError::BadPixelFormat("channel maximum must be 2^n - 1"));
            }
            let bits = u32::from(max).count_ones();
            if u32::from(shift) + bits > u32::from(self.bits_per_pixel) {
                return Err(RfbError::BadPixelFormat("channel outside the pixel"));
            }
        }
        Ok(())
    }

    /// Bytes per pixel on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// An XRGB8888 colour as a pixel value of this format (each channel
    /// scaled to its maximum, rounded to nearest).
    pub fn pixel_value(&self, xrgb: u32) -> u32 {
        // 8-bit channels, the common case, are copied without arithmetic.
        let scale = |channel: u32, max: u16| match max {
            255 => channel,
            _ => (channel * u32::from(max) + 127) / 255,
        };
        let red = scale((xrgb >> 16) & 0xff, self.red_max);
        let green = scale((xrgb >> 8) & 0xff, self.green_max);
        let blue = scale(xrgb & 0xff, self.blue_max);
        (red << self.red_shift) | (green << self.green_shift) | (blue << self.blue_shift)
    }

    /// Appends a pixel value in this format's size and byte order.
    pub fn push_pixel(&self, value: u32, out: &mut Vec<u8>) {
        let bytes = if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        };
        match (self.bits_per_pixel, self.big_endian) {
            (8, _) => out.push(bytes[if self.big_endian { 3 } else { 0 }]),
            (16, true) => out.extend_from_slice(&bytes[2..4]),
            (16, false) => out.extend_from_slice(&bytes[0..2]),
            _ => out.extend_from_slice(&bytes),
        }
    }
}

/// One message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    /// The first [`MAX_ENCODINGS`] encodings, in the client's order of
    /// preference.
    SetEncodings(Vec<i32>),
    FramebufferUpdateRequest {
        incremental: bool,
        rect: Rect,
    },
    KeyEvent {
        down: bool,
        keysym: u32,
    },
    PointerEvent {
        buttons: u8,
        x: u16,
        y: u16,
    },
    /// Latin-1 text, at most [`MAX_CUT_TEXT`] bytes.
    ClientCutText(Vec<u8>),
    QemuExtendedKeyEvent {
        down: bool,
        keysym: u32,
        scancode: u32,
    },
}

const SET_PIXEL_FORMAT: u8 = 0;
const SET_ENCODINGS: u8 = 2;
const FRAMEBUFFER_UPDATE_REQUEST: u8 = 3;
const KEY_EVENT: u8 = 4;
const POINTER_EVENT: u8 = 5;
const CLIENT_CUT_TEXT: u8 = 6;
const QEMU_CLIENT_MESSAGE: u8 = 255;
const QEMU_EXTENDED_KEY_EVENT: u8 = 0;

/// The longest fixed part of any message (SetPixelFormat).
const MAX_HEADER: usize = 20;

/// What the decoder is in the middle of.
#[derive(Debug)]
enum State {
    /// Collecting a message's fixed part into `header`.
    Header,
    /// Reading a SetEncodings list: `remaining` entries still to come.
    Encodings { remaining: u16, kept: Vec<i32> },
    /// Reading cut text: `remaining` bytes still to come, stored in
    /// `text` unless the text is being skipped (too long or extended).
    CutText {
        remaining: u32,
        text: Option<Vec<u8>>,
    },
    /// A protocol error happened; the connection must be closed.
    Failed,
}

/// Incremental decoder of client messages.
#[derive(Debug)]
pub struct ClientDecoder {
    state: State,
    header: [u8; MAX_HEADER],
    header_len: usize,
}

impl Default for ClientDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Length of the fixed part of a message, known from its first one or
/// two bytes; `None` while more bytes are needed to tell.
fn header_size(header: &[u8]) -> Result<Option<usize>, RfbError> {
    let Some(&kind) = header.first() else {
        return Ok(None);
    };
    let size = match kind {
        SET_PIXEL_FORMAT => 20,
        SET_ENCODINGS => 4,
        FRAMEBUFFER_UPDATE_REQUEST => 10,
        KEY_EVENT => 8,
        POINTER_EVENT => 6,
        CLIENT_CUT_TEXT => 8,
        QEMU_CLIENT_MESSAGE => match header.get(1) {
            None => return Ok(None),
            Some(&QEMU_EXTENDED_KEY_EVENT) => 12,
            Some(&sub) => return Err(RfbError::UnknownQemuMessage(sub)),
        },
        other => return Err(RfbError::UnknownMessage(other)),
    };
    Ok(Some(size))
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl ClientDecoder {
    pub fn new() -> Self {
        ClientDecoder {
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
        }
    }

    /// Decodes `data`, appending complete messages to `out`. After an
    /// error the decoder stays failed: the connection must be closed.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<ClientMessage>) -> Result<(), RfbError> {
        while !data.is_empty() {
            let result = match &mut self.state {
                State::Failed => return Err(RfbError::Closed),
                State::Header => self.take_header(&mut data, out),
                State::Encodings { .. } => {
                    self.take_encoding(&mut data, out);
                    Ok(())
                }
                State::CutText { .. } => {
                    self.take_cut_text(&mut data, out);
                    Ok(())
                }
            };
            if let Err(error) = result {
                self.state = State::Failed;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Moves up to `wanted - header_len` bytes from `data` into the header.
    fn fill_header(&mut self, data: &mut &[u8], wanted: usize) {
        let take = (wanted - self.header_len).min(data.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
        self.header_len += take;
        *data = &data[take..];
    }

    fn take_header(
        &mut self,
        data: &mut &[u8],
        out: &mut Vec<ClientMessage>,
    ) -> Result<(), RfbError> {
        // The type byte (and QEMU's subtype) first, then the rest.
        let size = loop {
            if let Some(size) = header_size(&self.header[..self.header_len])? {
                break size;
            }
            if data.is_empty() {
                return Ok(());
            }
            self.fill_header(data, self.header_len + 1);
        };
        self.fill_header(data, size);
        if self.header_len < size {
            return Ok(());
        }
        self.header_len = 0;
        let h = self.header;
        match h[0] {
            SET_PIXEL_FORMAT => {
                let mut format = [0u8; 16];
                format.copy_from_slice(&h[4..20]);
                out.push(ClientMessage::SetPixelFormat(PixelFormat::from_bytes(
                    &format,
                )?));
            }
            SET_ENCODINGS => {
                let remaining = be16(&h, 2);
                let kept = Vec::with_capacity(usize::from(remaining).min(MAX_ENCODINGS));
                self.state = State::Encodings { remaining, kept };
                self.finish_encodings(out);
            }
            FRAMEBUFFER_UPDATE_REQUEST => out.push(ClientMessage::FramebufferUpdateRequest {
                incremental: h[1] != 0,
                rect: Rect::new(be16(&h, 2), be16(&h, 4), be16(&h, 6), be16(&h, 8)),
            }),
            KEY_EVENT => out.push(ClientMessage::KeyEvent {
                down: h[1] != 0,
                keysym: be32(&h, 4),
            }),
            POINTER_EVENT => out.push(ClientMessage::PointerEvent {
                buttons: h[1],
                x: be16(&h, 2),
                y: be16(&h, 4),
            }),
            CLIENT_CUT_TEXT => {
                // A negative length is the extended clipboard's message
                // (its absolute value is the length); it is skipped.
                let length = i32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                let remaining = length.unsigned_abs();
                let keep = length >= 0 && remaining as usize <= MAX_CUT_TEXT;
                if !keep {
                    log::debug!("rfb: skipping client cut text of {length} bytes");
                }
                let text = keep.then(|| Vec::with_capacity(remaining as usize));
                self.state = State::CutText { remaining, text };
                self.finish_cut_text(out);
            }
            _ => out.push(ClientMessage::QemuExtendedKeyEvent {
                down: be16(&h, 2) != 0,
                keysym: be32(&h, 4),
                scancode: be32(&h, 8),
            }),
        }
        Ok(())
    }

    fn take_encoding(&mut self, data: &mut &[u8], out: &mut Vec<ClientMessage>) {
        self.fill_header(data, 4);
        if self.header_len < 4 {
            return;
        }
        self.header_len = 0;
        let value = i32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ]);
        if let State::Encodings { remaining, kept } = &mut self.state {
            *remaining -= 1;
            if kept.len() < MAX_ENCODINGS {
                kept.push(value);
            }
        }
        self.finish_encodings(out);
    }

    /// Emits the list once its last entry has been read.
    fn finish_encodings(&mut self, out: &mut Vec<ClientMessage>) {
        if let State::Encodings { remaining: 0, kept } = &mut self.state {
            out.push(ClientMessage::SetEncodings(std::mem::take(kept)));
            self.state = State::Header;
        }
    }

    fn take_cut_text(&mut self, data: &mut &[u8], out: &mut Vec<ClientMessage>) {
        if let State::CutText { remaining, text } = &mut self.state {
            let take = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
            if let Some(text) = text {
                text.extend_from_slice(&data[..take]);
            }
            *data = &data[take..];
            // `take` is at most `remaining`, a u32.
            *remaining -= u32::try_from(take).unwrap_or(*remaining);
        }
        self.finish_cut_text(out);
    }

    fn finish_cut_text(&mut self, out: &mut Vec<ClientMessage>) {
        if let State::CutText { remaining: 0, text } = &mut self.state {
            if let Some(text) = text.take() {
                out.push(ClientMessage::ClientCutText(text));
            }
            self.state = State::Header;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` one byte at a time and in one piece; both must agree.
    fn decode(bytes: &[u8]) -> Result<Vec<ClientMessage>, RfbError> {
        let mut whole = Vec::new();
        let whole_result = ClientDecoder::new().feed(bytes, &mut whole);
        let mut split = Vec::new();
        let mut decoder = ClientDecoder::new();
        let mut split_result = Ok(());
        for byte in bytes {
            split_result = decoder.feed(std::slice::from_ref(byte), &mut split);
            if split_result.is_err() {
                break;
            }
        }
        assert_eq!(whole_result, split_result);
        assert_eq!(whole, split);
        whole_result.map(|()| whole)
    }

    fn pixel_format_message(format: [u8; 16]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 0, 0];
        bytes.extend_from_slice(&format);
        bytes
    }

    const RGB565: [u8; 16] = [16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0];

    #[test]
    fn every_message_kind_decodes_from_split_chunks() {
        let mut bytes = pixel_format_message(RGB565);
        bytes.extend_from_slice(&[2, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x11]);
        bytes.extend_from_slice(&[3, 1, 0, 1, 0, 2, 0, 3, 0, 4]);
        bytes.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 0x0d]);
        bytes.extend_from_slice(&[5, 3, 0x01, 0x00, 0x00, 0x20]);
        bytes.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', 0xe9, b'c']);
        bytes.extend_from_slice(&[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]);
        let messages = decode(&bytes).unwrap();
        assert_eq!(
            messages,
            vec![
                ClientMessage::SetPixelFormat(PixelFormat {
                    bits_per_pixel: 16,
                    depth: 16,
                    big_endian: false,
                    red_max: 31,
                    green_max: 63,
                    blue_max: 31,
                    red_shift: 11,
                    green_shift: 5,
                    blue_shift: 0,
                }),
                ClientMessage::SetEncodings(vec![16, 0, -239]),
                ClientMessage::FramebufferUpdateRequest {
                    incremental: true,
                    rect: Rect::new(1, 2, 3, 4)
                },
                ClientMessage::KeyEvent {
                    down: true,
                    keysym: 0xff0d
                },
                ClientMessage::PointerEvent {
                    buttons: 3,
                    x: 256,
                    y: 32
                },
                ClientMessage::ClientCutText(vec![b'a', 0xe9, b'c']),
                ClientMessage::QemuExtendedKeyEvent {
                    down: true,
                    keysym: 0x61,
                    scancode: 0x1e
                },
            ]
        );
    }

    #[test]
    fn unknown_message_types_are_errors_and_the_decoder_stays_failed() {
        assert_eq!(decode(&[1]), Err(RfbError::UnknownMessage(1)));
        assert_eq!(decode(&[7, 0, 0]), Err(RfbError::UnknownMessage(7)));
        assert_eq!(
            decode(&[255, 1, 0, 0]),
            Err(RfbError::UnknownQemuMessage(1))
        );
        let mut decoder = ClientDecoder::new();
        let mut out = Vec::new();
        assert!(decoder.feed(&[9], &mut out).is_err());
        assert_eq!(
            decoder.feed(&[4, 1, 0, 0, 0, 0, 0, 0x61], &mut out),
            Err(RfbError::Closed)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn bad_pixel_formats_are_refused() {
        let cases: [(&str, [u8; 16]); 6] = [
            (
                "colour map",
                [8, 8, 0, 0, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0],
            ),
            (
                "24 bpp",
                [24, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0],
            ),
            (
                "depth over bpp",
                [16, 24, 0, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0],
            ),
            (
                "zero max",
                [32, 24, 0, 1, 0, 0, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0],
            ),
            (
                "max not 2^n-1",
                [32, 24, 0, 1, 0, 200, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0],
            ),
            (
                "shift outside",
                [16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 12, 5, 0, 0, 0, 0],
            ),
        ];
        for (what, format) in cases {
            let result = decode(&pixel_format_message(format));
            assert!(
                matches!(result, Err(RfbError::BadPixelFormat(_))),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn a_huge_encoding_list_is_read_whole_but_kept_short() {
        let mut bytes = vec![2, 0, 0xff, 0xff];
        for n in 0..0xffffi32 {
            bytes.extend_from_slice(&n.to_be_bytes());
        }
        bytes.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0x62]);
        let mut out = Vec::new();
        ClientDecoder::new().feed(&bytes, &mut out).unwrap();
        let expected: Vec<i32> = (0..64).collect();
        assert_eq!(out[0], ClientMessage::SetEncodings(expected));
        assert_eq!(
            out[1],
            ClientMessage::KeyEvent {
                down: false,
                keysym: 0x62
            }
        );
        assert_eq!(
            decode(&[2, 0, 0, 0]).unwrap(),
            vec![ClientMessage::SetEncodings(vec![])]
        );
    }

    #[test]
    fn cut_text_over_the_cap_or_extended_is_consumed_and_dropped() {
        let too_long = u32::try_from(MAX_CUT_TEXT + 1).unwrap();
        let mut decoder = ClientDecoder::new();
        let mut out = Vec::new();
        let mut header = vec![6, 0, 0, 0];
        header.extend_from_slice(&too_long.to_be_bytes());
        decoder.feed(&header, &mut out).unwrap();
        let chunk = vec![b'x'; 4096];
        let mut left = MAX_CUT_TEXT + 1;
        while left > 0 {
            let n = left.min(chunk.len());
            decoder.feed(&chunk[..n], &mut out).unwrap();
            left -= n;
        }
        assert!(out.is_empty());
        // Extended clipboard: length -5, five bytes skipped.
        let mut bytes = vec![6, 0, 0, 0];
        bytes.extend_from_slice(&(-5i32).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4, 5]);
        bytes.extend_from_slice(&[5, 0, 0, 7, 0, 9]);
        decoder.feed(&bytes, &mut out).unwrap();
        assert_eq!(
            out,
            vec![ClientMessage::PointerEvent {
                buttons: 0,
                x: 7,
                y: 9
            }]
        );
        // i32::MIN's length does not overflow and is skipped.
        let mut out = Vec::new();
        let mut decoder = ClientDecoder::new();
        decoder
            .feed(&[6, 0, 0, 0, 0x80, 0, 0, 0, 1, 2, 3], &mut out)
            .unwrap();
        assert!(out.is_empty());
        // Exactly the cap is delivered.
        let mut bytes = vec![6, 0, 0, 0];
        bytes.extend_from_slice(&u32::try_from(MAX_CUT_TEXT).unwrap().to_be_bytes());
        bytes.resize(8 + MAX_CUT_TEXT, b'y');
        let mut out = Vec::new();
        ClientDecoder::new().feed(&bytes, &mut out).unwrap();
        assert_eq!(
            out,
            vec![ClientMessage::ClientCutText(vec![b'y'; MAX_CUT_TEXT])]
        );
    }

    #[test]
    fn pixel_values_scale_and_serialise_in_the_clients_byte_order() {
        let rgb565 = PixelFormat::from_bytes(&RGB565).unwrap();
        assert_eq!(rgb565.pixel_value(0x00ff_0000), 0xf800);
        assert_eq!(rgb565.pixel_value(0x0000_ff00), 0x07e0);
        assert_eq!(rgb565.pixel_value(0x0000_00ff), 0x001f);
        assert_eq!(rgb565.pixel_value(0x0080_8080), (16 << 11) | (32 << 5) | 16);
        let mut out = Vec::new();
        rgb565.push_pixel(0xf800, &mut out);
        let big = PixelFormat {
            big_endian: true,
            ..rgb565
        };
        big.push_pixel(0xf800, &mut out);
        assert_eq!(out, [0x00, 0xf8, 0xf8, 0x00]);
        assert_eq!(
            PixelFormat::from_bytes(&PixelFormat::XRGB8888.to_bytes()),
            Ok(PixelFormat::XRGB8888)
        );
    }

    #[test]
    fn rect_arithmetic_stays_inside_u16() {
        let screen = Rect::new(0, 0, 100, 50);
        assert_eq!(
            Rect::new(90, 40, 0xffff, 0xffff).intersect(&screen),
            Rect::new(90, 40, 10, 10)
        );
        assert!(Rect::new(0xffff, 0, 10, 10).intersect(&screen).is_empty());
        assert_eq!(
            Rect::new(0, 0, 1, 1).union(&Rect::new(9, 9, 1, 1)),
            Rect::new(0, 0, 10, 10)
        );
        assert!(screen.contains(&Rect::new(10, 10, 5, 5)));
        assert!(!screen.contains(&Rect::new(99, 10, 5, 5)));
    }
}
