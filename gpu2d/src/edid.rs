//! The EDID block GET_EDID answers with: EDID 1.4, one 128-byte base
//! block whose preferred detailed timing is the configured display size,
//! so that the guest's driver picks exactly that mode.

/// Length of an EDID base block.
pub const EDID_LEN: usize = 128;

/// Assumed pixel density for the physical size fields (96 dpi): any
/// plausible value will do, the guest uses it for DPI only.
const PIXELS_PER_INCH: u32 = 96;

/// Blanking of the detailed timing, CVT reduced-blanking style: numbers
/// the guest accepts, since nothing here is a real monitor.
const H_BLANK: u32 = 160;
const H_FRONT_PORCH: u32 = 48;
const H_SYNC: u32 = 32;
const V_BLANK: u32 = 30;
const V_FRONT_PORCH: u32 = 3;
const V_SYNC: u32 = 6;
const REFRESH_HZ: u64 = 60;

/// Largest width or height a detailed timing can express (12 bits).
pub const MAX_DIMENSION: u32 = 4095;

/// The EDID of a display of `width` x `height` pixels (each 1 to
/// [`MAX_DIMENSION`]; larger values are cut to 12 bits by the caller's
/// configuration check long before this).
pub fn build(width: u32, height: u32) -> [u8; EDID_LEN] {
    let mut edid = [0u8; EDID_LEN];
    edid[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "SVM" in three 5-bit letters (A = 1), big-endian.
    let maker: u16 = (19 << 10) | (22 << 5) | 13;
    edid[8..10].copy_from_slice(&maker.to_be_bytes());
    edid[10..12].copy_from_slice(&1u16.to_le_bytes());
    // Model year 2026 (week 0xff marks a model year in EDID 1.4).
    edid[16] = 0xff;
    edid[17] = 36;
    edid[18] = 1;
    edid[19] = 4;
    // Digital input, 8 bits per colour, interface not defined.
    edid[20] = 0xa0;
    let (width_mm, height_mm) = (millimetres(width), millimetres(height));
    edid[21] = centimetres(width_mm);
    edid[22] = centimetres(height_mm);
    // Gamma 2.2 (stored as 100 * gamma - 100).
    edid[23] = 120;
    // RGB 4:4:4, sRGB is the default colour space, the preferred timing
    // is the native mode.
    edid[24] = 0x06;
    edid[25..35].copy_from_slice(&srgb_chromaticity());
    // No established timings; the eight standard timings unused.
    for slot in edid[38..54].chunks_exact_mut(2) {
        slot.copy_from_slice(&[0x01, 0x01]);
    }
    edid[54..72].copy_from_slice(&detailed_timing(width, height, width_mm, height_mm));
    edid[72..90].copy_from_slice(&text_descriptor(0xfc, b"securevm"));
    edid[90..108].copy_from_slice(&dummy_descriptor());
    edid[108..126].copy_from_slice(&dummy_descriptor());
    // No extension blocks; the checksum makes all bytes sum to 0.
    edid[126] = 0;
    let sum = edid[..127].iter().fold(0u8, |sum, &b| sum.wrapping_add(b));
    edid[127] = 0u8.wrapping_sub(sum);
    edid
}

fn millimetres(pixels: u32) -> u32 {
    (pixels * 254).div_ceil(PIXELS_PER_INCH * 10)
}

fn centimetres(mm: u32) -> u8 {
    u8::try_from(mm.div_ceil(10)).unwrap_or(u8::MAX)
}

/// The sRGB primaries and D65 white point as 10-bit fractions.
fn srgb_chromaticity() -> [u8; 10] {
    // red x, red y, green x, green y, blue x, blue y, white x, white y.
    let thousandths: [u32; 8] = [640, 330, 300, 600, 150, 60, 313, 329];
    let v = thousandths.map(|t| (t * 1024 + 500) / 1000);
    let low = |i: usize| low_bits(v[i], 2);
    let mut out = [0u8; 10];
    out[0] = low(0) << 6 | low(1) << 4 | low(2) << 2 | low(3);
    out[1] = low(4) << 6 | low(5) << 4 | low(6) << 2 | low(7);
    for (slot, value) in out[2..].iter_mut().zip(v) {
        *slot = low_bits(value >> 2, 8);
    }
    out
}

/// The low `bits` (at most 8) bits of `value`.
fn low_bits(value: u32, bits: u32) -> u8 {
    let mask = (1u32 << bits) - 1;
    u8::try_from(value & mask).unwrap_or(u8::MAX)
}

fn detailed_timing(width: u32, height: u32, width_mm: u32, height_mm: u32) -> [u8; 18] {
    let (width, height) = (width & 0xfff, height & 0xfff);
    let total = u64::from(width + H_BLANK) * u64::from(height + V_BLANK) * REFRESH_HZ;
    // In units of 10 kHz; the largest sizes get a lower refresh rate
    // rather than a clock the field cannot hold.
    let clock = u16::try_from(total.div_ceil(10_000)).unwrap_or(u16::MAX);
    let (width_mm, height_mm) = (width_mm & 0xfff, height_mm & 0xfff);
    let mut d = [0u8; 18];
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = low_bits(width, 8);
    d[3] = low_bits(H_BLANK, 8);
    d[4] = low_bits(width >> 8, 4) << 4 | low_bits(H_BLANK >> 8, 4);
    d[5] = low_bits(height, 8);
    d[6] = low_bits(V_BLANK, 8);
    d[7] = low_bits(height >> 8, 4) << 4 | low_bits(V_BLANK >> 8, 4);
    d[8] = low_bits(H_FRONT_PORCH, 8);
    d[9] = low_bits(H_SYNC, 8);
    d[10] = low_bits(V_FRONT_PORCH, 4) << 4 | low_bits(V_SYNC, 4);
    d[11] = low_bits(H_FRONT_PORCH >> 8, 2) << 6
        | low_bits(H_SYNC >> 8, 2) << 4
        | low_bits(V_FRONT_PORCH >> 4, 2) << 2
        | low_bits(V_SYNC >> 4, 2);
    d[12] = low_bits(width_mm, 8);
    d[13] = low_bits(height_mm, 8);
    d[14] = low_bits(width_mm >> 8, 4) << 4 | low_bits(height_mm >> 8, 4);
    // Digital separate sync, positive horizontal, negative vertical.
    d[17] = 0x1a;
    d
}

/// A display descriptor holding up to 13 bytes of text, ended by a
/// newline and padded with spaces as EDID asks.
fn text_descriptor(tag: u8, text: &[u8]) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = tag;
    let field = &mut d[5..];
    field.fill(b' ');
    let len = text.len().min(12);
    field[..len].copy_from_slice(&text[..len]);
    field[len] = b'\n';
    d
}

fn dummy_descriptor() -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = 0x10;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preferred_size(edid: &[u8; EDID_LEN]) -> (u32, u32) {
        let d = &edid[54..72];
        let width = u32::from(d[2]) | u32::from(d[4] >> 4) << 8;
        let height = u32::from(d[5]) | u32::from(d[7] >> 4) << 8;
        (width, height)
    }

    #[test]
    fn checksum_makes_the_block_sum_to_zero() {
        for (w, h) in [(1280, 800), (1, 1), (4095, 4095), (1920, 1080), (640, 480)] {
            let edid = build(w, h);
            let sum = edid.iter().fold(0u8, |s, &b| s.wrapping_add(b));
            assert_eq!(sum, 0, "{w}x{h}");
        }
    }

    #[test]
    fn header_version_and_preferred_timing() {
        let edid = build(1280, 800);
        assert_eq!(&edid[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!((edid[18], edid[19]), (1, 4));
        assert_eq!(preferred_size(&edid), (1280, 800));
        assert_eq!(preferred_size(&build(4095, 2160)), (4095, 2160));
        let clock = u16::from_le_bytes([edid[54], edid[55]]);
        // (1280 + 160) * (800 + 30) * 60 Hz = 71.712 MHz, rounded up.
        assert_eq!(clock, 7172);
        assert_ne!(edid[24] & 0x02, 0, "preferred timing is native");
        assert_eq!(&edid[72..78], &[0, 0, 0, 0xfc, 0, b's']);
    }

    #[test]
    fn largest_size_keeps_a_valid_clock() {
        let edid = build(4095, 4095);
        let clock = u16::from_le_bytes([edid[54], edid[55]]);
        assert_eq!(clock, u16::MAX);
    }
}
