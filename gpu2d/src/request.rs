//! Encoders of the requests a driver sends, as Linux's virtio_gpu lays
//! them out: for tests of this crate and of the device model, and for
//! the fuzz target's seeds.

use crate::protocol::{cmd, FLAG_FENCE};
use crate::Rect;

/// A control header of type `kind`, fenced with `fence` if given.
pub fn header(kind: u32, fence: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&kind.to_le_bytes());
    let flags = if fence.is_some() { FLAG_FENCE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&fence.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

fn with_words(kind: u32, words: &[u32]) -> Vec<u8> {
    let mut out = header(kind, None);
    for word in words {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

fn rect_words(rect: Rect) -> [u32; 4] {
    [rect.x, rect.y, rect.width, rect.height]
}

pub fn get_display_info() -> Vec<u8> {
    header(cmd::GET_DISPLAY_INFO, None)
}

pub fn get_edid(scanout: u32) -> Vec<u8> {
    with_words(cmd::GET_EDID, &[scanout, 0])
}

/// `format` is the wire value (1 is B8G8R8A8).
pub fn create_2d(resource: u32, format: u32, width: u32, height: u32) -> Vec<u8> {
    with_words(cmd::RESOURCE_CREATE_2D, &[resource, format, width, height])
}

pub fn unref(resource: u32) -> Vec<u8> {
    with_words(cmd::RESOURCE_UNREF, &[resource, 0])
}

pub fn set_scanout(rect: Rect, scanout: u32, resource: u32) -> Vec<u8> {
    let [x, y, w, h] = rect_words(rect);
    with_words(cmd::SET_SCANOUT, &[x, y, w, h, scanout, resource])
}

pub fn flush(rect: Rect, resource: u32) -> Vec<u8> {
    let [x, y, w, h] = rect_words(rect);
    with_words(cmd::RESOURCE_FLUSH, &[x, y, w, h, resource, 0])
}

pub fn transfer(rect: Rect, offset: u64, resource: u32) -> Vec<u8> {
    let [x, y, w, h] = rect_words(rect);
    let mut out = with_words(cmd::TRANSFER_TO_HOST_2D, &[x, y, w, h]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&resource.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// Backing of `(guest address, length)` entries; the count written is
/// `entries.len()` unless `count` overrides it.
pub fn attach_backing(resource: u32, entries: &[(u64, u32)], count: Option<u32>) -> Vec<u8> {
    let listed = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let mut out = with_words(
        cmd::RESOURCE_ATTACH_BACKING,
        &[resource, count.unwrap_or(listed)],
    );
    for &(addr, len) in entries {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out
}

pub fn detach_backing(resource: u32) -> Vec<u8> {
    with_words(cmd::RESOURCE_DETACH_BACKING, &[resource, 0])
}

pub fn update_cursor(scanout: u32, x: u32, y: u32, resource: u32, hot: (u32, u32)) -> Vec<u8> {
    with_words(
        cmd::UPDATE_CURSOR,
        &[scanout, x, y, 0, resource, hot.0, hot.1, 0],
    )
}

pub fn move_cursor(scanout: u32, x: u32, y: u32) -> Vec<u8> {
    with_words(cmd::MOVE_CURSOR, &[scanout, x, y, 0, 0, 0, 0, 0])
}
