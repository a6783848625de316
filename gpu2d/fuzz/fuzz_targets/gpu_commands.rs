//! virtio-gpu 2D commands, the bytes a guest driver puts on the control
//! and cursor queues, fed to a `gpu2d::Gpu2d` with a small guest memory
//! and a small memory cap, interleaved with guest writes to its memory
//! and device resets.
//!
//! Invariants, beyond "no panic":
//! - the resources' host memory never exceeds max-mem;
//! - every response is a well-formed header of a type the engine writes,
//!   with the body length that type has, and the request's fence echoed;
//! - every frame handed to the sink holds the scanout it describes, its
//!   damage lies inside it, and its pixels have no alpha byte;
//! - every cursor image is at most 64x64, its hot spot inside it, and
//!   holds exactly its pixels.
//!
//! Input: bytes 0-2 pick the display size and max-mem; then operations,
//! each an opcode byte and its operands: a raw request (length, bytes),
//! a structured control or cursor command (a command type from the
//! table and small field values, with edge values mixed in), a write to
//! guest memory, or a reset.

#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};

use gpu2d::protocol::{cmd, resp, FLAG_FENCE, HEADER_LEN};
use gpu2d::{
    CursorImage, Frame, Gpu2d, Gpu2dConfig, GuestMemoryRead, OutOfGuestMemory, Rect, ScanoutSink,
};
use libfuzzer_sys::fuzz_target;

/// Guest RAM: 64 KiB at 1 MiB.
const MEM_BASE: u64 = 0x10_0000;
const MEM_LEN: usize = 64 << 10;

struct Memory(Vec<u8>);

impl GuestMemoryRead for Memory {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfGuestMemory> {
        let at = gpa
            .checked_sub(MEM_BASE)
            .and_then(|at| usize::try_from(at).ok())
            .ok_or(OutOfGuestMemory)?;
        let end = at.checked_add(buf.len()).ok_or(OutOfGuestMemory)?;
        buf.copy_from_slice(self.0.get(at..end).ok_or(OutOfGuestMemory)?);
        Ok(())
    }
}

/// Checks what the display side is told.
#[derive(Default)]
struct CheckingSink {
    showing: AtomicBool,
}

impl ScanoutSink for CheckingSink {
    fn set_scanout(&self, size: Option<(u32, u32)>) {
        if let Some((width, height)) = size {
            assert!(width > 0 && height > 0);
        }
        self.showing.store(size.is_some(), Ordering::Relaxed);
    }

    fn flush(&self, damage: Rect, frame: Frame<'_>) {
        assert!(
            self.showing.load(Ordering::Relaxed),
            "flush without a scanout"
        );
        assert!(damage.width > 0 && damage.height > 0);
        assert!(damage.x + damage.width <= frame.width);
        assert!(damage.y + damage.height <= frame.height);
        assert!(frame.width as usize <= frame.stride);
        let needed = (frame.height as usize - 1) * frame.stride + frame.width as usize;
        assert!(frame.pixels.len() >= needed, "frame slice too short");
        for y in damage.y..damage.y + damage.height {
            let row = y as usize * frame.stride;
            let span = row + damage.x as usize..row + (damage.x + damage.width) as usize;
            assert!(frame.pixels[span].iter().all(|p| p >> 24 == 0));
        }
    }

    fn set_cursor(&self, cursor: Option<CursorImage>) {
        if let Some(c) = cursor {
            assert!((1..=64).contains(&c.width) && (1..=64).contains(&c.height));
            assert!(c.hot_x < c.width && c.hot_y < c.height);
            assert_eq!(c.pixels.len(), (c.width * c.height) as usize);
        }
    }

    fn move_cursor(&self, _x: u32, _y: u32) {}
}

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

    /// A field value: mostly small, sometimes an edge value or a full
    /// 32-bit word.
    fn field(&mut self) -> u32 {
        match self.byte() {
            b @ 0..=0xef => u32::from(b),
            0xf0 => u32::MAX,
            0xf1 => u32::MAX - 1,
            0xf2 => 1 << 31,
            0xf3 => 16384,
            0xf4 => 16385,
            0xf5 => 4096,
            0xf6 => 65,
            0xf7 => 64,
            0xf8 => 67,
            0xf9 => 121,
            0xfa => 134,
            0xfb => 68,
            _ => u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()]),
        }
    }

    /// A guest address: inside the small memory mostly.
    fn address(&mut self) -> u64 {
        match self.byte() {
            0xff => u64::MAX - u64::from(self.byte()),
            0xfe => u64::from(self.field()),
            b => MEM_BASE + u64::from(b) * 256,
        }
    }
}

const CONTROL: [u32; 10] = [
    cmd::GET_DISPLAY_INFO,
    cmd::GET_EDID,
    cmd::RESOURCE_CREATE_2D,
    cmd::RESOURCE_UNREF,
    cmd::SET_SCANOUT,
    cmd::RESOURCE_FLUSH,
    cmd::TRANSFER_TO_HOST_2D,
    cmd::RESOURCE_ATTACH_BACKING,
    cmd::RESOURCE_DETACH_BACKING,
    0x0108,
];

/// A request of type `kind`: its header (fenced or not), `words` field
/// values, and for attach-backing a list of entries.
fn structured(input: &mut Input<'_>, kind: u32) -> Vec<u8> {
    let fenced = input.byte().is_multiple_of(2);
    let mut out = Vec::new();
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&u32::from(fenced).to_le_bytes());
    out.extend_from_slice(&u64::from(input.byte()).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    let words = usize::from(input.byte() % 10);
    if kind == cmd::RESOURCE_ATTACH_BACKING {
        out.extend_from_slice(&input.field().to_le_bytes());
        let count = input.byte() % 16;
        let claimed = if input.byte().is_multiple_of(8) {
            input.field()
        } else {
            u32::from(count)
        };
        out.extend_from_slice(&claimed.to_le_bytes());
        for _ in 0..count {
            out.extend_from_slice(&input.address().to_le_bytes());
            let len = u32::from(input.byte()) * 64 + u32::from(input.byte() % 64);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
        }
        return out;
    }
    for _ in 0..words {
        out.extend_from_slice(&input.field().to_le_bytes());
    }
    out
}

/// Checks `response` answers `request` as the protocol says.
fn check_response(request: &[u8], response: &[u8]) {
    assert!(response.len() >= HEADER_LEN);
    let kind = u32::from_le_bytes(response[..4].try_into().unwrap());
    assert!(resp::ALL.contains(&kind), "unknown response type {kind:#x}");
    let body = response.len() - HEADER_LEN;
    match kind {
        resp::OK_DISPLAY_INFO => assert_eq!(body, 16 * 24),
        resp::OK_EDID => {
            assert_eq!(body, 8 + 1024);
            let edid = &response[HEADER_LEN + 8..HEADER_LEN + 8 + 128];
            assert_eq!(edid.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
        }
        _ => assert_eq!(body, 0),
    }
    let flags = u32::from_le_bytes(response[4..8].try_into().unwrap());
    if request.len() >= HEADER_LEN {
        let asked = u32::from_le_bytes(request[4..8].try_into().unwrap()) & FLAG_FENCE;
        assert_eq!(flags, asked);
        if asked != 0 {
            assert_eq!(response[8..16], request[8..16]);
        }
    } else {
        assert_eq!(kind, resp::ERR_UNSPEC);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let width = 1 + u32::from(input.byte() % 64);
    let height = 1 + u32::from(input.byte() % 48);
    // One frame plus up to 255 KiB: small enough that creates and
    // attaches reach the cap.
    let max_mem = u64::from(width * height * 4) + u64::from(input.byte()) * 1024;
    let mut gpu = Gpu2d::new(Gpu2dConfig {
        width,
        height,
        max_mem,
    })
    .unwrap();
    let mut memory = Memory(
        (0..MEM_LEN)
            .map(|i| i.to_le_bytes()[0].wrapping_mul(7))
            .collect(),
    );
    let sink = CheckingSink::default();
    while !input.data.is_empty() {
        let request = match input.byte() % 8 {
            0 => {
                let len = usize::from(input.byte()) * 2;
                input.bytes(len).to_vec()
            }
            1..=3 => {
                let kind = CONTROL[usize::from(input.byte()) % CONTROL.len()];
                structured(&mut input, kind)
            }
            4 | 5 => {
                let kind = if input.byte().is_multiple_of(2) {
                    cmd::UPDATE_CURSOR
                } else {
                    cmd::MOVE_CURSOR
                };
                let request = structured(&mut input, kind);
                let response = gpu.handle_cursor(&request, &sink);
                check_response(&request, &response);
                assert!(gpu.memory_used() <= max_mem);
                continue;
            }
            6 => {
                let at = usize::from(input.byte()) * 256;
                let len = usize::from(input.byte());
                let bytes = input.bytes(len);
                let end = (at + bytes.len()).min(MEM_LEN);
                memory.0[at..end].copy_from_slice(&bytes[..end - at]);
                continue;
            }
            _ => {
                gpu.reset(&sink);
                assert_eq!(gpu.memory_used(), 0);
                continue;
            }
        };
        let response = gpu.handle_control(&request, &memory, &sink);
        check_response(&request, &response);
        assert!(gpu.memory_used() <= max_mem);
    }
});
