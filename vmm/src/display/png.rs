//! Screenshots: the shown picture as an 8-bit RGB PNG (`ctl screenshot`).

use super::state::Canvas;

pub use ::png::EncodingError;

/// A PNG file and the size of its picture.
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    pub png: Vec<u8>,
}

pub fn encode(canvas: &Canvas) -> Result<Screenshot, EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = ::png::Encoder::new(
        &mut bytes,
        u32::from(canvas.width),
        u32::from(canvas.height),
    );
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let rgb: Vec<u8> = canvas
        .pixels
        .iter()
        .flat_map(|pixel| {
            let [_, r, g, b] = pixel.to_be_bytes();
            [r, g, b]
        })
        .collect();
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(Screenshot {
        width: u32::from(canvas.width),
        height: u32::from(canvas.height),
        png: bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canvas_round_trips_through_png() {
        let canvas = Canvas {
            width: 3,
            height: 2,
            pixels: vec![
                0x00ff_0000,
                0x0000_ff00,
                0x0000_00ff,
                0,
                0x00ff_ffff,
                0x0012_3456,
            ],
        };
        let bytes = encode(&canvas).unwrap().png;
        let decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut out = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut out).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(
            &out[..info.buffer_size()],
            &[255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0x12, 0x34, 0x56]
        );
    }
}
