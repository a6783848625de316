//! Guest memory for the device targets: one to three small regions with
//! gaps between them (or, on request, two of them back to back, so that a
//! buffer can straddle two host mappings), filled from the input.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of each region: small, so that inputs can fill them and that
/// addresses from the input land in, between and past regions alike.
pub const REGION_SIZE: usize = 0x2000;

/// Region start addresses: with gaps, or with the first two adjacent.
const SPREAD: [u64; 3] = [0x0, 0x3000, 0x8000];
const ADJACENT: [u64; 3] = [0x0, 0x2000, 0x8000];

/// `count` regions (clamped to 1..=3), filled from `contents` in address
/// order; bytes beyond `contents` are zero.
pub fn guest_memory(count: usize, adjacent: bool, contents: &[u8]) -> GuestMemoryMmap {
    let bases = if adjacent { ADJACENT } else { SPREAD };
    let ranges: Vec<(GuestAddress, usize)> = bases[..count.clamp(1, 3)]
        .iter()
        .map(|&base| (GuestAddress(base), REGION_SIZE))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("fixed, non-overlapping regions");
    for ((base, _), chunk) in ranges.iter().zip(contents.chunks(REGION_SIZE)) {
        mem.write_slice(chunk, *base)
            .expect("chunk fits its region");
    }
    mem
}
