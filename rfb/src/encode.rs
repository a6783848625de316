//! FramebufferUpdate rectangles (RFC 6143 section 7.6.1 and 7.7): Raw and
//! ZRLE pixel data from an XRGB8888 framebuffer in the client's pixel
//! format, and the Cursor, DesktopSize and QEMU extended-key-event
//! pseudo-rectangles.
//!
//! ZRLE's zlib stream lives as long as the connection (the client keeps
//! one inflater for all rectangles), so [`ZrleEncoder`] is per session.
//! Every rectangle is clipped to the framebuffer before it is read, so no
//! requested or damaged area reads outside the caller's pixels.

use flate2::{Compress, Compression, FlushCompress};

use crate::protocol::{encoding, PixelFormat, Rect};

/// ZRLE's tile edge.
const TILE: u16 = 64;
/// The most colours a packed-palette tile holds.
const MAX_PALETTE: usize = 16;

/// A framebuffer (or part of one) as XRGB8888 words.
#[derive(Debug, Clone, Copy)]
pub struct Surface<'a> {
    pixels: &'a [u32],
    stride: usize,
    width: u16,
    height: u16,
}

impl<'a> Surface<'a> {
    /// `pixels` holds `height` rows of `stride` words, the first `width`
    /// of each visible; `None` if the slice is too short or the stride
    /// narrower than the width.
    pub fn new(pixels: &'a [u32], stride: usize, width: u16, height: u16) -> Option<Surface<'a>> {
        if stride < usize::from(width) {
            return None;
        }
        let needed = match height {
            0 => 0,
            rows => stride
                .checked_mul(usize::from(rows) - 1)?
                .checked_add(usize::from(width))?,
        };
        (pixels.len() >= needed).then_some(Surface {
            pixels,
            stride,
            width,
            height,
        })
    }

    pub fn width(&self) -> u16 {
        self.width
    }

    pub fn height(&self) -> u16 {
        self.height
    }

    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// The pixels of row `y` from `x` for `width` (inside the bounds).
    fn row(&self, x: u16, y: u16, width: u16) -> &'a [u32] {
        let start = usize::from(y) * self.stride + usize::from(x);
        &self.pixels[start..start + usize::from(width)]
    }
}

/// A cursor image: ARGB8888 words, alpha >= 128 shown, the rest clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub width: u16,
    pub height: u16,
    pub hotspot_x: u16,
    pub hotspot_y: u16,
    pub pixels: Vec<u32>,
}

/// Appends a FramebufferUpdate header announcing `rects` rectangles.
pub fn push_update_header(out: &mut Vec<u8>, rects: u16) {
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&rects.to_be_bytes());
}

/// Appends a rectangle header.
pub fn push_rect_header(out: &mut Vec<u8>, rect: Rect, encoding: i32) {
    out.extend_from_slice(&rect.x.to_be_bytes());
    out.extend_from_slice(&rect.y.to_be_bytes());
    out.extend_from_slice(&rect.width.to_be_bytes());
    out.extend_from_slice(&rect.height.to_be_bytes());
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// A Raw rectangle of `rect` clipped to the surface (nothing if empty).
pub fn push_raw(out: &mut Vec<u8>, surface: &Surface, rect: Rect, format: &PixelFormat) {
    let rect = rect.intersect(&surface.bounds());
    if rect.is_empty() {
        return;
    }
    push_rect_header(out, rect, encoding::RAW);
    out.reserve(usize::from(rect.width) * usize::from(rect.height) * format.bytes_per_pixel());
    for y in rect.y..rect.y + rect.height {
        for &pixel in surface.row(rect.x, y, rect.width) {
            format.push_pixel(format.pixel_value(pixel), out);
        }
    }
}

/// The DesktopSize pseudo-rectangle announcing a new framebuffer size.
pub fn push_desktop_size(out: &mut Vec<u8>, width: u16, height: u16) {
    push_rect_header(out, Rect::new(0, 0, width, height), encoding::DESKTOP_SIZE);
}

/// The pseudo-rectangle telling the client it may send QEMU extended key
/// events.
pub fn push_extended_key_ack(out: &mut Vec<u8>) {
    push_rect_header(out, Rect::default(), encoding::QEMU_EXTENDED_KEY_EVENT);
}

/// The Cursor pseudo-rectangle: the hotspot as position, the pixels in the
/// client's format, then a bit mask (rows padded to bytes, most significant
/// bit first) of the pixels shown. `None` if the image's size is wrong.
pub fn push_cursor(out: &mut Vec<u8>, cursor: &Cursor, format: &PixelFormat) -> Option<()> {
    let (width, height) = (usize::from(cursor.width), usize::from(cursor.height));
    if cursor.pixels.len() != width * height {
        return None;
    }
    let rect = Rect::new(
        cursor.hotspot_x,
        cursor.hotspot_y,
        cursor.width,
        cursor.height,
    );
    push_rect_header(out, rect, encoding::CURSOR);
    for &pixel in &cursor.pixels {
        format.push_pixel(format.pixel_value(pixel), out);
    }
    if width == 0 {
        return Some(());
    }
    for row in cursor.pixels.chunks(width) {
        for bits in row.chunks(8) {
            let byte = bits
                .iter()
                .enumerate()
                .filter(|(_, &pixel)| pixel >> 24 >= 0x80)
                .fold(0u8, |byte, (i, _)| byte | (0x80 >> i));
            out.push(byte);
        }
    }
    Some(())
}

/// How ZRLE's compressed pixel (CPIXEL) is laid out for a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompactPixel {
    /// As the full pixel.
    Full,
    /// The three least significant bytes of a 32-bit pixel.
    Low,
    /// The three most significant bytes of a 32-bit pixel.
    High,
}

fn compact_pixel(format: &PixelFormat) -> CompactPixel {
    if format.bits_per_pixel != 32 || format.depth > 24 {
        return CompactPixel::Full;
    }
    let used = (u32::from(format.red_max) << format.red_shift)
        | (u32::from(format.green_max) << format.green_shift)
        | (u32::from(format.blue_max) << format.blue_shift);
    if used <= 0x00ff_ffff {
        CompactPixel::Low
    } else if used & 0xff == 0 {
        CompactPixel::High
    } else {
        CompactPixel::Full
    }
}

/// ZRLE encoding state of one connection: the zlib stream and buffers
/// reused between rectangles.
pub struct ZrleEncoder {
    zlib: Compress,
    tile_data: Vec<u8>,
    tile: Vec<u32>,
}

impl Default for ZrleEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ZrleEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZrleEncoder").finish_non_exhaustive()
    }
}

impl ZrleEncoder {
    pub fn new() -> ZrleEncoder {
        ZrleEncoder {
            // Fast compression: a frame must leave before the next.
            zlib: Compress::new(Compression::fast(), true),
            tile_data: Vec::new(),
            tile: Vec::with_capacity(usize::from(TILE) * usize::from(TILE)),
        }
    }

    /// A ZRLE rectangle of `rect` clipped to the surface (nothing if
    /// empty): 64x64 tiles, left to right and top to bottom, each solid,
    /// packed palette (2-16 colours) or raw, all through the stream's
    /// zlib, flushed at the rectangle's end.
    pub fn push(&mut self, out: &mut Vec<u8>, surface: &Surface, rect: Rect, format: &PixelFormat) {
        let rect = rect.intersect(&surface.bounds());
        if rect.is_empty() {
            return;
        }
        let compact = compact_pixel(format);
        self.tile_data.clear();
        let mut ty = rect.y;
        while ty < rect.y + rect.height {
            let th = TILE.min(rect.y + rect.height - ty);
            let mut tx = rect.x;
            while tx < rect.x + rect.width {
                let tw = TILE.min(rect.x + rect.width - tx);
                self.tile.clear();
                for y in ty..ty + th {
                    let row = surface.row(tx, y, tw);
                    self.tile.extend(row.iter().map(|&p| format.pixel_value(p)));
                }
                push_tile(&mut self.tile_data, &self.tile, tw, format, compact);
                tx += tw;
            }
            ty += th;
        }
        push_rect_header(out, rect, encoding::ZRLE);
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        self.deflate(out);
        // Over 4 GiB only from a framebuffer of more than 1 Gpixel, which
        // no caller has.
        let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
        out[length_at..start].copy_from_slice(&length.to_be_bytes());
    }

    /// Compresses `tile_data` onto `out` with a sync flush, so the client
    /// can decode the rectangle before the next one arrives. zlib has
    /// flushed everything once all input is taken and it left output room.
    fn deflate(&mut self, out: &mut Vec<u8>) {
        let mut consumed = 0;
        loop {
            out.reserve(self.tile_data.len() - consumed + 64);
            let (in_before, out_before) = (self.zlib.total_in(), out.len());
            let input = &self.tile_data[consumed..];
            if let Err(error) = self.zlib.compress_vec(input, out, FlushCompress::Sync) {
                // Deflate fails only on misuse; the client will then
                // report a bad rectangle and close.
                log::error!("rfb: zlib compression failed: {error}");
                return;
            }
            // total_in grew by at most `input.len()`, a usize.
            consumed += usize::try_from(self.zlib.total_in() - in_before).unwrap_or(input.len());
            let flushed = consumed == self.tile_data.len() && out.len() < out.capacity();
            let stuck = self.zlib.total_in() == in_before && out.len() == out_before;
            if flushed || stuck {
                return;
            }
        }
    }
}

fn push_cpixel(out: &mut Vec<u8>, value: u32, format: &PixelFormat, compact: CompactPixel) {
    let three = match compact {
        CompactPixel::Full => return format.push_pixel(value, out),
        CompactPixel::Low => value,
        CompactPixel::High => value >> 8,
    };
    if format.big_endian {
        out.extend_from_slice(&three.to_be_bytes()[1..]);
    } else {
        out.extend_from_slice(&three.to_le_bytes()[..3]);
    }
}

/// One tile's subencoding and data (uncompressed).
fn push_tile(
    out: &mut Vec<u8>,
    tile: &[u32],
    width: u16,
    format: &PixelFormat,
    compact: CompactPixel,
) {
    let mut palette: Vec<u32> = Vec::with_capacity(MAX_PALETTE);
    for &pixel in tile {
        if !palette.contains(&pixel) {
            if palette.len() == MAX_PALETTE {
                palette.clear();
                break;
            }
            palette.push(pixel);
        }
    }
    match palette.len() {
        0 => {
            out.push(0);
            for &pixel in tile {
                push_cpixel(out, pixel, format, compact);
            }
        }
        1 => {
            out.push(1);
            push_cpixel(out, palette[0], format, compact);
        }
        colours => {
            // 2..=16 colours, so the subencoding fits a byte.
            out.push(u8::try_from(colours).unwrap_or(0));
            for &colour in &palette {
                push_cpixel(out, colour, format, compact);
            }
            let bits: u8 = match colours {
                2 => 1,
                3..=4 => 2,
                _ => 4,
            };
            for row in tile.chunks(usize::from(width)) {
                let mut byte = 0u8;
                let mut used = 0u8;
                for pixel in row {
                    let index = palette.iter().position(|c| c == pixel).unwrap_or(0);
                    used += bits;
                    byte |= u8::try_from(index).unwrap_or(0) << (8 - used);
                    if used == 8 {
                        out.push(byte);
                        byte = 0;
                        used = 0;
                    }
                }
                if used > 0 {
                    out.push(byte);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    const RGB565: PixelFormat = PixelFormat {
        bits_per_pixel: 16,
        depth: 16,
        big_endian: false,
        red_max: 31,
        green_max: 63,
        blue_max: 31,
        red_shift: 11,
        green_shift: 5,
        blue_shift: 0,
    };

    /// A 32bpp format whose colours sit in the top three bytes.
    const BGR_HIGH: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 8,
        green_shift: 16,
        blue_shift: 24,
    };

    fn header(out: &[u8]) -> (Rect, i32) {
        let be16 = |at: usize| u16::from_be_bytes([out[at], out[at + 1]]);
        let rect = Rect::new(be16(0), be16(2), be16(4), be16(6));
        (rect, i32::from_be_bytes([out[8], out[9], out[10], out[11]]))
    }

    fn read_pixel(bytes: &[u8], format: &PixelFormat) -> u32 {
        let mut word = [0u8; 4];
        if format.big_endian {
            word[4 - bytes.len()..].copy_from_slice(bytes);
            u32::from_be_bytes(word)
        } else {
            word[..bytes.len()].copy_from_slice(bytes);
            u32::from_le_bytes(word)
        }
    }

    #[test]
    fn raw_is_pixel_exact_in_32_and_16_bpp() {
        let pixels = [
            0x00ff_0000,
            0x0000_ff00,
            0x0000_00ff,
            0x0012_3456,
            0x00ff_ffff,
            0,
            0xdead,
            0x0080_8080,
        ];
        // 3x2 visible of a stride-4 surface; the fourth column is padding.
        let surface = Surface::new(&pixels, 4, 3, 2).unwrap();
        let mut out = Vec::new();
        push_raw(
            &mut out,
            &surface,
            Rect::new(1, 0, 10, 10),
            &PixelFormat::XRGB8888,
        );
        assert_eq!(header(&out), (Rect::new(1, 0, 2, 2), 0));
        let expected32: Vec<u8> = [0x0000_ff00u32, 0x0000_00ff, 0, 0xdead]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        assert_eq!(&out[12..], &expected32[..]);

        let mut out = Vec::new();
        push_raw(&mut out, &surface, surface.bounds(), &RGB565);
        assert_eq!(header(&out), (Rect::new(0, 0, 3, 2), 0));
        // 0xdead: g 0xde -> 55, b 0xad -> 21 (rounded to nearest).
        let expected16: Vec<u8> = [0xf800u16, 0x07e0, 0x001f, 0xffff, 0, (55 << 5) | 21]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        assert_eq!(&out[12..], &expected16[..]);

        let mut out = Vec::new();
        push_raw(&mut out, &surface, Rect::new(3, 0, 1, 1), &RGB565);
        assert!(
            out.is_empty(),
            "a rectangle outside the surface is not sent"
        );
    }

    #[test]
    fn surfaces_too_small_for_their_size_are_refused() {
        let pixels = [0u32; 11];
        assert!(Surface::new(&pixels, 4, 3, 3).is_some());
        assert!(Surface::new(&pixels, 4, 3, 4).is_none());
        assert!(Surface::new(&pixels, 2, 3, 1).is_none());
        assert!(Surface::new(&pixels, usize::MAX, 3, 3).is_none());
        assert!(Surface::new(&[], 0, 0, 0).is_some());
    }

    /// The test's own ZRLE reader: inflates with the connection's stream
    /// and rebuilds the rectangle's pixel values.
    struct ZrleDecoder {
        zlib: Decompress,
    }

    impl ZrleDecoder {
        fn decode(&mut self, message: &[u8], format: &PixelFormat) -> (Rect, Vec<u32>) {
            let (rect, enc) = header(message);
            assert_eq!(enc, encoding::ZRLE);
            let length =
                usize::try_from(u32::from_be_bytes(message[12..16].try_into().unwrap())).unwrap();
            assert_eq!(message.len(), 16 + length);
            let mut data = Vec::with_capacity(1 << 24);
            self.zlib
                .decompress_vec(&message[16..], &mut data, FlushDecompress::Sync)
                .unwrap();
            let compact = compact_pixel(format);
            let cpixel_len = if compact == CompactPixel::Full {
                format.bytes_per_pixel()
            } else {
                3
            };
            let mut at = 0;
            let mut take = |n: usize| {
                let slice = &data[at..at + n];
                at += n;
                slice.to_vec()
            };
            let cpixel = |bytes: &[u8]| match compact {
                CompactPixel::Full | CompactPixel::Low => read_pixel(bytes, format),
                CompactPixel::High => read_pixel(bytes, format) << 8,
            };
            let mut pixels = vec![0; usize::from(rect.width) * usize::from(rect.height)];
            for ty in (0..rect.height).step_by(64) {
                for tx in (0..rect.width).step_by(64) {
                    let tw = usize::from(64.min(rect.width - tx));
                    let th = usize::from(64.min(rect.height - ty));
                    let sub = take(1)[0];
                    let tile: Vec<u32> = match sub {
                        0 => (0..tw * th).map(|_| cpixel(&take(cpixel_len))).collect(),
                        1 => vec![cpixel(&take(cpixel_len)); tw * th],
                        2..=16 => {
                            let palette: Vec<u32> =
                                (0..sub).map(|_| cpixel(&take(cpixel_len))).collect();
                            let bits = match sub {
                                2 => 1,
                                3 | 4 => 2,
                                _ => 4,
                            };
                            let mut tile = Vec::new();
                            for _ in 0..th {
                                let row = take((tw * bits).div_ceil(8));
                                for x in 0..tw {
                                    let bit = x * bits;
                                    let index =
                                        (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                    tile.push(palette[usize::from(index)]);
                                }
                            }
                            tile
                        }
                        other => panic!("subencoding {other} not expected"),
                    };
                    for (i, value) in tile.into_iter().enumerate() {
                        let (x, y) = (usize::from(tx) + i % tw, usize::from(ty) + i / tw);
                        pixels[y * usize::from(rect.width) + x] = value;
                    }
                }
            }
            assert_eq!(
                at,
                data.len(),
                "the rectangle's data ends with its last tile"
            );
            (rect, pixels)
        }
    }

    /// A 150x70 frame (tiles of 64, 64 and 22 columns, 64 and 6 rows):
    /// photo-like noise on the left, a solid band, few colours on the right.
    fn test_frame() -> Vec<u32> {
        let mut seed = 0x1234_5678u32;
        let mut pixels = Vec::new();
        for y in 0..70u32 {
            for x in 0..150u32 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                pixels.push(match x {
                    0..64 => seed >> 8,
                    64..128 => 0x0033_6699,
                    _ => [
                        0x00ff_0000,
                        0x0000_ff00,
                        0x0000_00ff,
                        0x00ff_ffff,
                        0x0010_1010,
                    ][((x + y) % 5) as usize],
                });
            }
        }
        pixels
    }

    #[test]
    fn zrle_decodes_back_pixel_exact() {
        let frame = test_frame();
        for format in [PixelFormat::XRGB8888, RGB565, BGR_HIGH] {
            let surface = Surface::new(&frame, 150, 150, 70).unwrap();
            let mut encoder = ZrleEncoder::new();
            let mut decoder = ZrleDecoder {
                zlib: Decompress::new(true),
            };
            // Two rectangles through one stream, the second off the origin.
            for rect in [surface.bounds(), Rect::new(60, 3, 80, 66)] {
                let mut out = Vec::new();
                encoder.push(&mut out, &surface, rect, &format);
                let (decoded_rect, pixels) = decoder.decode(&out, &format);
                assert_eq!(decoded_rect, rect);
                let expected: Vec<u32> = (rect.y..rect.y + rect.height)
                    .flat_map(|y| {
                        surface
                            .row(rect.x, y, rect.width)
                            .iter()
                            .map(|&p| format.pixel_value(p))
                    })
                    .collect();
                assert_eq!(pixels, expected, "{format:?} {rect:?}");
            }
        }
    }

    #[test]
    fn zrle_tiles_pick_solid_palette_and_raw() {
        let mut data = Vec::new();
        let solid = [0x00ab_cdefu32; 4];
        push_tile(
            &mut data,
            &solid,
            2,
            &PixelFormat::XRGB8888,
            CompactPixel::Low,
        );
        assert_eq!(data, [1, 0xef, 0xcd, 0xab]);
        data.clear();
        // Three columns of two colours: 1 bit each, rows padded.
        push_tile(
            &mut data,
            &[1, 2, 1, 2, 2, 2],
            3,
            &PixelFormat::XRGB8888,
            CompactPixel::Low,
        );
        assert_eq!(data, [2, 1, 0, 0, 2, 0, 0, 0b0100_0000, 0b1110_0000]);
        data.clear();
        let seventeen: Vec<u32> = (0..17).collect();
        push_tile(&mut data, &seventeen, 17, &RGB565, CompactPixel::Full);
        assert_eq!(data.len(), 1 + 17 * 2);
        assert_eq!(data[0], 0);
        assert_eq!(compact_pixel(&PixelFormat::XRGB8888), CompactPixel::Low);
        assert_eq!(compact_pixel(&BGR_HIGH), CompactPixel::High);
        assert_eq!(compact_pixel(&RGB565), CompactPixel::Full);
    }

    #[test]
    fn pseudo_rectangles_are_byte_exact() {
        let mut out = Vec::new();
        push_desktop_size(&mut out, 1024, 768);
        assert_eq!(out, [0, 0, 0, 0, 4, 0, 3, 0, 0xff, 0xff, 0xff, 0x21]);
        out.clear();
        push_extended_key_ack(&mut out);
        assert_eq!(out, [0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xfe, 0xfe]);
        out.clear();
        push_update_header(&mut out, 3);
        assert_eq!(out, [0, 0, 0, 3]);

        // A 9x2 cursor, hotspot (4, 1): opaque red except clear corners.
        let mut pixels = vec![0xffff_0000u32; 18];
        pixels[0] = 0x7fff_0000;
        pixels[17] = 0;
        let cursor = Cursor {
            width: 9,
            height: 2,
            hotspot_x: 4,
            hotspot_y: 1,
            pixels,
        };
        out.clear();
        push_cursor(&mut out, &cursor, &RGB565).unwrap();
        let mut expected = vec![0, 4, 0, 1, 0, 9, 0, 2, 0xff, 0xff, 0xff, 0x11];
        expected.extend_from_slice(&[0x00, 0xf8].repeat(17));
        expected.extend_from_slice(&[0, 0]);
        expected.extend_from_slice(&[0b0111_1111, 0b1000_0000, 0b1111_1111, 0b0000_0000]);
        assert_eq!(out, expected);
        let wrong = Cursor {
            pixels: vec![0; 17],
            ..cursor
        };
        assert_eq!(push_cursor(&mut Vec::new(), &wrong, &RGB565), None);
    }
}
