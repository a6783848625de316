//! The virtio-gpu 2D command engine (virtio 1.2, 5.7), without I/O.
//!
//! securevm gives the guest a screen through virtio-gpu. Every size,
//! offset, resource id and backing page in a command comes from the
//! guest, which is hostile: this crate parses a request's bytes, checks
//! each value against the resource it names and a cap on the memory all
//! resources take, and answers with the spec's error responses, never a
//! panic or an unbounded allocation. Guest memory is reached only through
//! [`GuestMemoryRead`] (the engine never holds a guest pointer), and what
//! the guest shows goes to a [`ScanoutSink`] (the display side). The
//! device model owns the queues and copies each request in and each
//! response out.
//!
//! Each resource keeps a host copy in XRGB8888 (converted from the
//! guest's format when it is transferred), so a flush hands the sink a
//! slice of it; resources small enough to be a cursor also keep their
//! alpha.

mod edid;
pub mod protocol;
pub mod request;

use std::collections::BTreeMap;

use protocol::{cmd, resp, Fields, Format, Header, Short, HEADER_LEN, MEM_ENTRY_LEN, RECT_LEN};

pub use edid::{EDID_LEN, MAX_DIMENSION};

/// [`EDID_LEN`] as the response's size field.
const EDID_LEN_U32: u32 = 128;
const _: () = assert!(EDID_LEN_U32 as usize == EDID_LEN);

/// Resources a guest may have at once.
pub const MAX_RESOURCES: usize = 1024;
/// Backing entries one RESOURCE_ATTACH_BACKING may list.
pub const MAX_BACKING_ENTRIES: u32 = 16384;
/// Widest or tallest resource accepted (Linux's driver stays far below).
pub const MAX_RESOURCE_DIMENSION: u32 = 16384;
/// Largest cursor image (virtio-gpu cursors are 64x64).
pub const MAX_CURSOR_DIMENSION: u32 = 64;
/// Longest request the engine can need: an attach-backing command with
/// the most entries. Device models copy at most this much of a request.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + 8 + MEM_ENTRY_LEN * MAX_BACKING_ENTRIES as usize;

/// A rectangle in resource or scanout coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Whether the rectangle lies inside a `width` x `height` area.
    fn fits(&self, width: u32, height: u32) -> bool {
        let right = self.x.checked_add(self.width);
        let bottom = self.y.checked_add(self.height);
        matches!((right, bottom), (Some(r), Some(b)) if r <= width && b <= height)
    }

    /// The part of `self` inside `other` (both inside one resource, so
    /// no sum overflows), or None.
    fn intersect(&self, other: &Rect) -> Option<Rect> {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let right = (self.x + self.width).min(other.x + other.width);
        let bottom = (self.y + self.height).min(other.y + other.height);
        (x < right && y < bottom).then(|| Rect {
            x,
            y,
            width: right - x,
            height: bottom - y,
        })
    }
}

/// What scanout 0 shows: XRGB8888 words (0x00RRGGBB), `stride` words per
/// row, `width` x `height` of them.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub pixels: &'a [u32],
    pub stride: usize,
    pub width: u32,
    pub height: u32,
}

/// A cursor image: ARGB8888 words (0xAARRGGBB), `width` per row, and the
/// hot spot inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorImage {
    pub width: u32,
    pub height: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub pixels: Vec<u32>,
}

/// The display side: where what the guest shows goes.
pub trait ScanoutSink: Send + Sync {
    /// Scanout 0 shows a frame of this size now, or nothing (None).
    /// Called when that changes, not on a switch between two resources
    /// of one size (a page flip), which only brings a full flush.
    fn set_scanout(&self, size: Option<(u32, u32)>);
    /// `damage` (in scanout coordinates, already clipped to the scanout)
    /// changed; `frame` is the scanout's view, of the size last given to
    /// [`ScanoutSink::set_scanout`].
    fn flush(&self, damage: Rect, frame: Frame<'_>);
    /// The cursor image and hot spot, or hidden (None).
    fn set_cursor(&self, cursor: Option<CursorImage>);
    fn move_cursor(&self, x: u32, y: u32);
}

/// A guest physical range that is not all guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest physical range outside guest memory")]
pub struct OutOfGuestMemory;

/// Reads guest memory; the device model implements it for the VM's.
pub trait GuestMemoryRead {
    /// Fill `buf` from guest physical address `gpa`.
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfGuestMemory>;
}

/// The display the guest is offered and the memory its resources may
/// take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu2dConfig {
    /// Display size reported by GET_DISPLAY_INFO and GET_EDID.
    pub width: u32,
    pub height: u32,
    /// Cap on the host memory of all resources (pixels and backing lists).
    pub max_mem: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("display size {0}x{1} outside 1x1 to {MAX_DIMENSION}x{MAX_DIMENSION}")]
    BadSize(u32, u32),
    #[error(
        "display max-mem {max_mem} bytes is less than one {width}x{height} frame ({frame} bytes)"
    )]
    MemoryBelowOneFrame {
        max_mem: u64,
        width: u32,
        height: u32,
        frame: u64,
    },
}

impl Gpu2dConfig {
    /// Whether the guest can be offered this display at all: a size an
    /// EDID can describe, and room for at least one frame of it.
    pub fn check(&self) -> Result<(), ConfigError> {
        let valid = 1..=MAX_DIMENSION;
        if !valid.contains(&self.width) || !valid.contains(&self.height) {
            return Err(ConfigError::BadSize(self.width, self.height));
        }
        let frame = u64::from(self.width) * u64::from(self.height) * 4;
        if self.max_mem < frame {
            return Err(ConfigError::MemoryBelowOneFrame {
                max_mem: self.max_mem,
                width: self.width,
                height: self.height,
                frame,
            });
        }
        Ok(())
    }
}

/// Why a command was refused: the response type, and for the debug log
/// what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    code: u32,
    reason: &'static str,
}

fn refuse(code: u32, reason: &'static str) -> Refusal {
    Refusal { code, reason }
}

impl From<Short> for Refusal {
    fn from(_: Short) -> Self {
        refuse(resp::ERR_UNSPEC, "request shorter than its command")
    }
}

/// A successful command's response type and the bytes after the header.
type Reply = Result<(u32, Vec<u8>), Refusal>;

fn no_data() -> Reply {
    Ok((resp::OK_NODATA, Vec::new()))
}

/// One piece of a resource's backing: `len` bytes at guest address
/// `addr`, holding backing bytes `start..start + len`.
#[derive(Debug, Clone, Copy)]
struct BackingEntry {
    addr: u64,
    len: u64,
    start: u64,
}

/// The guest pages behind a resource, in order.
#[derive(Debug)]
struct Backing {
    entries: Vec<BackingEntry>,
    total: u64,
}

impl Backing {
    /// Host memory this list takes, charged against max-mem.
    fn cost(&self) -> u64 {
        cost_of_entries(self.entries.len())
    }

    /// Fill `buf` with the backing bytes from `offset` on; the caller
    /// checked they exist.
    fn read(
        &self,
        mem: &dyn GuestMemoryRead,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), OutOfGuestMemory> {
        // The last entry starting at or before `offset`.
        let mut index = self
            .entries
            .partition_point(|e| e.start <= offset)
            .saturating_sub(1);
        let mut position = offset;
        let mut done = 0;
        while done < buf.len() {
            let entry = self.entries.get(index).ok_or(OutOfGuestMemory)?;
            let within = position - entry.start;
            if within >= entry.len {
                index += 1;
                continue;
            }
            let room = usize::try_from(entry.len - within).unwrap_or(usize::MAX);
            let take = room.min(buf.len() - done);
            let gpa = entry.addr.checked_add(within).ok_or(OutOfGuestMemory)?;
            mem.read_at(gpa, &mut buf[done..done + take])?;
            done += take;
            position += take as u64;
            index += 1;
        }
        Ok(())
    }
}

fn cost_of_entries(entries: usize) -> u64 {
    (entries as u64).saturating_mul(std::mem::size_of::<BackingEntry>() as u64)
}

#[derive(Debug)]
struct Resource {
    format: Format,
    width: u32,
    height: u32,
    /// The host copy, XRGB8888, `width` words per row.
    pixels: Vec<u32>,
    /// Alpha of each pixel, kept for resources small enough to be a
    /// cursor.
    alpha: Option<Vec<u8>>,
    backing: Option<Backing>,
    /// Host memory of `pixels` and `alpha`, charged against max-mem.
    cost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scanout {
    resource_id: u32,
    /// The part of the resource shown.
    rect: Rect,
}

/// The virtio-gpu 2D state of one device: resources, scanout 0.
pub struct Gpu2d {
    config: Gpu2dConfig,
    resources: BTreeMap<u32, Resource>,
    /// Host memory all resources take (pixels, alpha, backing lists).
    used: u64,
    scanout: Option<Scanout>,
}

impl Gpu2d {
    pub fn new(config: Gpu2dConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Self {
            config,
            resources: BTreeMap::new(),
            used: 0,
            scanout: None,
        })
    }

    pub fn config(&self) -> Gpu2dConfig {
        self.config
    }

    /// Host memory the resources take now (never above max-mem).
    pub fn memory_used(&self) -> u64 {
        self.used
    }

    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// Serve one control-queue request; returns the response bytes.
    pub fn handle_control(
        &mut self,
        request: &[u8],
        mem: &dyn GuestMemoryRead,
        sink: &dyn ScanoutSink,
    ) -> Vec<u8> {
        let fields = Fields(request);
        let Ok(header) = fields.header() else {
            log::debug!("virtio-gpu: control request shorter than its header");
            return protocol::response_header(resp::ERR_UNSPEC, &Header::default());
        };
        if request.len() < command_len(header.kind) {
            let refusal = refuse(resp::ERR_UNSPEC, "request shorter than its command");
            return respond(&header, Err(refusal));
        }
        let reply = match header.kind {
            cmd::GET_DISPLAY_INFO => Ok(self.display_info()),
            cmd::GET_EDID => self.edid(fields),
            cmd::RESOURCE_CREATE_2D => self.create_2d(fields),
            cmd::RESOURCE_UNREF => self.unref(fields, sink),
            cmd::SET_SCANOUT => self.set_scanout(fields, sink),
            cmd::RESOURCE_FLUSH => self.flush(fields, sink),
            cmd::TRANSFER_TO_HOST_2D => self.transfer(fields, mem),
            cmd::RESOURCE_ATTACH_BACKING => self.attach_backing(fields),
            cmd::RESOURCE_DETACH_BACKING => self.detach_backing(fields),
            _ => Err(refuse(resp::ERR_UNSPEC, "unsupported control command")),
        };
        respond(&header, reply)
    }

    /// Serve one cursor-queue request; returns the response bytes.
    pub fn handle_cursor(&mut self, request: &[u8], sink: &dyn ScanoutSink) -> Vec<u8> {
        let fields = Fields(request);
        let Ok(header) = fields.header() else {
            log::debug!("virtio-gpu: cursor request shorter than its header");
            return protocol::response_header(resp::ERR_UNSPEC, &Header::default());
        };
        if request.len() < command_len(header.kind) {
            let refusal = refuse(resp::ERR_UNSPEC, "request shorter than its command");
            return respond(&header, Err(refusal));
        }
        let reply = match header.kind {
            cmd::UPDATE_CURSOR => self.update_cursor(fields, sink),
            cmd::MOVE_CURSOR => move_cursor(fields, sink),
            _ => Err(refuse(resp::ERR_UNSPEC, "unsupported cursor command")),
        };
        respond(&header, reply)
    }

    /// The device was reset: every resource goes, the screen goes dark.
    pub fn reset(&mut self, sink: &dyn ScanoutSink) {
        self.resources.clear();
        self.used = 0;
        self.scanout = None;
        sink.set_scanout(None);
        sink.set_cursor(None);
    }

    fn display_info(&self) -> (u32, Vec<u8>) {
        let mut body = vec![0u8; protocol::MAX_SCANOUTS * (RECT_LEN + 8)];
        body[8..12].copy_from_slice(&self.config.width.to_le_bytes());
        body[12..16].copy_from_slice(&self.config.height.to_le_bytes());
        body[16..20].copy_from_slice(&1u32.to_le_bytes());
        (resp::OK_DISPLAY_INFO, body)
    }

    fn edid(&self, fields: Fields<'_>) -> Reply {
        if fields.u32_at(HEADER_LEN)? != 0 {
            return Err(refuse(
                resp::ERR_INVALID_SCANOUT_ID,
                "EDID of scanout other than 0",
            ));
        }
        let edid = edid::build(self.config.width, self.config.height);
        let mut body = vec![0u8; 8 + protocol::EDID_ROOM];
        body[..4].copy_from_slice(&EDID_LEN_U32.to_le_bytes());
        body[8..8 + EDID_LEN].copy_from_slice(&edid);
        Ok((resp::OK_EDID, body))
    }

    fn create_2d(&mut self, fields: Fields<'_>) -> Reply {
        let id = fields.u32_at(HEADER_LEN)?;
        let format = fields.u32_at(HEADER_LEN + 4)?;
        let width = fields.u32_at(HEADER_LEN + 8)?;
        let height = fields.u32_at(HEADER_LEN + 12)?;
        if id == 0 || self.resources.contains_key(&id) {
            return Err(refuse(
                resp::ERR_INVALID_RESOURCE_ID,
                "resource id 0 or in use",
            ));
        }
        if self.resources.len() >= MAX_RESOURCES {
            return Err(refuse(resp::ERR_OUT_OF_MEMORY, "too many resources"));
        }
        let format = Format::from_wire(format)
            .ok_or(refuse(resp::ERR_INVALID_PARAMETER, "unknown pixel format"))?;
        let dimensions = 1..=MAX_RESOURCE_DIMENSION;
        if !dimensions.contains(&width) || !dimensions.contains(&height) {
            return Err(refuse(resp::ERR_INVALID_PARAMETER, "resource size"));
        }
        let count = u64::from(width)
            .checked_mul(u64::from(height))
            .ok_or(refuse(resp::ERR_INVALID_PARAMETER, "resource size"))?;
        let cursor_sized = width <= MAX_CURSOR_DIMENSION && height <= MAX_CURSOR_DIMENSION;
        let alpha_bytes = if cursor_sized { count } else { 0 };
        let cost = count
            .checked_mul(4)
            .and_then(|bytes| bytes.checked_add(alpha_bytes))
            .ok_or(refuse(resp::ERR_OUT_OF_MEMORY, "resource size"))?;
        self.charge(cost)?;
        let pixels = zeroed::<u32>(count);
        let alpha = if cursor_sized {
            zeroed::<u8>(count).map(Some)
        } else {
            Some(None)
        };
        let (Some(pixels), Some(alpha)) = (pixels, alpha) else {
            self.used -= cost;
            return Err(refuse(resp::ERR_OUT_OF_MEMORY, "host allocation failed"));
        };
        self.resources.insert(
            id,
            Resource {
                format,
                width,
                height,
                pixels,
                alpha,
                backing: None,
                cost,
            },
        );
        no_data()
    }

    /// Count `cost` more bytes, if that stays within max-mem.
    fn charge(&mut self, cost: u64) -> Result<(), Refusal> {
        match self.used.checked_add(cost) {
            Some(total) if total <= self.config.max_mem => {
                self.used = total;
                Ok(())
            }
            _ => Err(refuse(resp::ERR_OUT_OF_MEMORY, "display max-mem reached")),
        }
    }

    fn resource_id(&self, fields: Fields<'_>, at: usize) -> Result<u32, Refusal> {
        let id = fields.u32_at(at)?;
        if self.resources.contains_key(&id) {
            Ok(id)
        } else {
            Err(refuse(resp::ERR_INVALID_RESOURCE_ID, "no such resource"))
        }
    }

    fn unref(&mut self, fields: Fields<'_>, sink: &dyn ScanoutSink) -> Reply {
        let id = self.resource_id(fields, HEADER_LEN)?;
        if self.scanout.is_some_and(|s| s.resource_id == id) {
            self.scanout = None;
            sink.set_scanout(None);
        }
        if let Some(resource) = self.resources.remove(&id) {
            let backing = resource.backing.as_ref().map_or(0, Backing::cost);
            self.used -= resource.cost + backing;
        }
        no_data()
    }

    fn set_scanout(&mut self, fields: Fields<'_>, sink: &dyn ScanoutSink) -> Reply {
        let rect = fields.rect_at(HEADER_LEN)?;
        let scanout_id = fields.u32_at(HEADER_LEN + RECT_LEN)?;
        let resource_id = fields.u32_at(HEADER_LEN + RECT_LEN + 4)?;
        if scanout_id != 0 {
            return Err(refuse(resp::ERR_INVALID_SCANOUT_ID, "scanout other than 0"));
        }
        if resource_id == 0 {
            self.scanout = None;
            sink.set_scanout(None);
            return no_data();
        }
        let resource = self
            .resources
            .get(&resource_id)
            .ok_or(refuse(resp::ERR_INVALID_RESOURCE_ID, "no such resource"))?;
        if rect.is_empty() || !rect.fits(resource.width, resource.height) {
            return Err(refuse(resp::ERR_INVALID_PARAMETER, "scanout rectangle"));
        }
        let size = (rect.width, rect.height);
        let previous = self.scanout.replace(Scanout { resource_id, rect });
        // A page flip to a buffer of the same size is no resize.
        if previous.is_none_or(|p| (p.rect.width, p.rect.height) != size) {
            sink.set_scanout(Some(size));
        }
        // Show what the resource holds now, all of it: the guest's flush
        // damage is relative to what the scanout showed before.
        self.show(resource_id, rect, sink);
        no_data()
    }

    fn flush(&mut self, fields: Fields<'_>, sink: &dyn ScanoutSink) -> Reply {
        let rect = fields.rect_at(HEADER_LEN)?;
        let id = self.resource_id(fields, HEADER_LEN + RECT_LEN)?;
        let resource = &self.resources[&id];
        if !rect.fits(resource.width, resource.height) {
            return Err(refuse(resp::ERR_INVALID_PARAMETER, "flush rectangle"));
        }
        if !rect.is_empty() {
            self.show(id, rect, sink);
        }
        no_data()
    }

    /// Hand the part of `rect` (resource coordinates) on scanout 0 to the
    /// sink, if resource `id` is what it shows.
    fn show(&self, id: u32, rect: Rect, sink: &dyn ScanoutSink) {
        let Some(scanout) = self.scanout.filter(|s| s.resource_id == id) else {
            return;
        };
        let Some(resource) = self.resources.get(&id) else {
            return;
        };
        let Some(visible) = rect.intersect(&scanout.rect) else {
            return;
        };
        let damage = Rect {
            x: visible.x - scanout.rect.x,
            y: visible.y - scanout.rect.y,
            width: visible.width,
            height: visible.height,
        };
        let stride = resource.width as usize;
        let area = scanout.rect;
        let start = area.y as usize * stride + area.x as usize;
        let end = start + (area.height as usize - 1) * stride + area.width as usize;
        sink.flush(
            damage,
            Frame {
                pixels: &resource.pixels[start..end],
                stride,
                width: area.width,
                height: area.height,
            },
        );
    }

    fn transfer(&mut self, fields: Fields<'_>, mem: &dyn GuestMemoryRead) -> Reply {
        let rect = fields.rect_at(HEADER_LEN)?;
        let offset = fields.u64_at(HEADER_LEN + RECT_LEN)?;
        let id = self.resource_id(fields, HEADER_LEN + RECT_LEN + 8)?;
        let Some(resource) = self.resources.get_mut(&id) else {
            return Err(refuse(resp::ERR_INVALID_RESOURCE_ID, "no such resource"));
        };
        if !rect.fits(resource.width, resource.height) {
            return Err(refuse(resp::ERR_INVALID_PARAMETER, "transfer rectangle"));
        }
        if rect.is_empty() {
            return no_data();
        }
        let Some(backing) = resource.backing.as_ref() else {
            return Err(refuse(
                resp::ERR_UNSPEC,
                "transfer to a resource without backing",
            ));
        };
        let stride = u64::from(resource.width) * 4;
        let row_len = u64::from(rect.width) * 4;
        let end = u64::from(rect.height - 1)
            .checked_mul(stride)
            .and_then(|rows| rows.checked_add(offset))
            .and_then(|last_row| last_row.checked_add(row_len))
            .ok_or(refuse(
                resp::ERR_INVALID_PARAMETER,
                "transfer offset overflows",
            ))?;
        if end > backing.total {
            return Err(refuse(
                resp::ERR_INVALID_PARAMETER,
                "transfer beyond the resource's backing",
            ));
        }
        // At most a resource row (64 KiB).
        let mut row = vec![0u8; rect.width as usize * 4];
        let width = resource.width as usize;
        for line in 0..rect.height {
            let source = offset + u64::from(line) * stride;
            backing
                .read(mem, source, &mut row)
                .map_err(|_| refuse(resp::ERR_INVALID_PARAMETER, "backing outside guest memory"))?;
            let first = (rect.y + line) as usize * width + rect.x as usize;
            let span = first..first + rect.width as usize;
            for (i, bytes) in row.chunks_exact(4).enumerate() {
                let argb = resource
                    .format
                    .to_argb([bytes[0], bytes[1], bytes[2], bytes[3]]);
                resource.pixels[span.start + i] = argb & 0x00ff_ffff;
                if let Some(alpha) = resource.alpha.as_mut() {
                    alpha[span.start + i] = argb.to_be_bytes()[0];
                }
            }
        }
        no_data()
    }

    fn attach_backing(&mut self, fields: Fields<'_>) -> Reply {
        let count = fields.u32_at(HEADER_LEN + 4)?;
        if count == 0 || count > MAX_BACKING_ENTRIES {
            return Err(refuse(resp::ERR_INVALID_PARAMETER, "backing entry count"));
        }
        let count = count as usize;
        let entries_at = HEADER_LEN + 8;
        if fields.0.len() < entries_at + count * MEM_ENTRY_LEN {
            return Err(Short.into());
        }
        let id = self.resource_id(fields, HEADER_LEN)?;
        if self.resources[&id].backing.is_some() {
            return Err(refuse(resp::ERR_UNSPEC, "resource already has backing"));
        }
        let cost = cost_of_entries(count);
        self.charge(cost)?;
        let entries = read_entries(fields, entries_at, count);
        let entries = match entries {
            Ok(entries) => entries,
            Err(refusal) => {
                self.used -= cost;
                return Err(refusal);
            }
        };
        let total = entries.last().map_or(0, |e| e.start + e.len);
        if let Some(resource) = self.resources.get_mut(&id) {
            resource.backing = Some(Backing { entries, total });
        }
        no_data()
    }

    fn detach_backing(&mut self, fields: Fields<'_>) -> Reply {
        let id = self.resource_id(fields, HEADER_LEN)?;
        let backing = self
            .resources
            .get_mut(&id)
            .and_then(|resource| resource.backing.take())
            .ok_or(refuse(resp::ERR_UNSPEC, "resource has no backing"))?;
        self.used -= backing.cost();
        no_data()
    }

    fn update_cursor(&mut self, fields: Fields<'_>, sink: &dyn ScanoutSink) -> Reply {
        let (x, y) = cursor_position(fields)?;
        let resource_id = fields.u32_at(HEADER_LEN + 16)?;
        let hot_x = fields.u32_at(HEADER_LEN + 20)?;
        let hot_y = fields.u32_at(HEADER_LEN + 24)?;
        if resource_id == 0 {
            sink.set_cursor(None);
            return no_data();
        }
        let resource = self
            .resources
            .get(&resource_id)
            .ok_or(refuse(resp::ERR_INVALID_RESOURCE_ID, "no such resource"))?;
        let Some(alpha) = resource.alpha.as_ref() else {
            return Err(refuse(
                resp::ERR_INVALID_PARAMETER,
                "cursor larger than 64x64",
            ));
        };
        if hot_x >= resource.width || hot_y >= resource.height {
            return Err(refuse(
                resp::ERR_INVALID_PARAMETER,
                "cursor hot spot outside it",
            ));
        }
        let pixels = resource
            .pixels
            .iter()
            .zip(alpha)
            .map(|(&rgb, &a)| u32::from(a) << 24 | rgb)
            .collect();
        sink.set_cursor(Some(CursorImage {
            width: resource.width,
            height: resource.height,
            hot_x,
            hot_y,
            pixels,
        }));
        sink.move_cursor(x, y);
        no_data()
    }
}

/// Length of command `kind`'s structure (for attach-backing, without
/// its entries); unknown commands need just the header.
fn command_len(kind: u32) -> usize {
    match kind {
        cmd::GET_EDID
        | cmd::RESOURCE_UNREF
        | cmd::RESOURCE_ATTACH_BACKING
        | cmd::RESOURCE_DETACH_BACKING => HEADER_LEN + 8,
        cmd::RESOURCE_CREATE_2D => HEADER_LEN + 16,
        cmd::SET_SCANOUT | cmd::RESOURCE_FLUSH => HEADER_LEN + RECT_LEN + 8,
        cmd::TRANSFER_TO_HOST_2D => HEADER_LEN + RECT_LEN + 16,
        cmd::UPDATE_CURSOR | cmd::MOVE_CURSOR => HEADER_LEN + 32,
        _ => HEADER_LEN,
    }
}

fn move_cursor(fields: Fields<'_>, sink: &dyn ScanoutSink) -> Reply {
    let (x, y) = cursor_position(fields)?;
    sink.move_cursor(x, y);
    no_data()
}

/// `struct virtio_gpu_cursor_pos`: on scanout 0 only.
fn cursor_position(fields: Fields<'_>) -> Result<(u32, u32), Refusal> {
    let scanout_id = fields.u32_at(HEADER_LEN)?;
    let x = fields.u32_at(HEADER_LEN + 4)?;
    let y = fields.u32_at(HEADER_LEN + 8)?;
    if scanout_id != 0 {
        return Err(refuse(
            resp::ERR_INVALID_SCANOUT_ID,
            "cursor on scanout other than 0",
        ));
    }
    Ok((x, y))
}

/// The `count` `struct virtio_gpu_mem_entry` at `at`, each placed after
/// the ones before it in the backing.
fn read_entries(fields: Fields<'_>, at: usize, count: usize) -> Result<Vec<BackingEntry>, Refusal> {
    let mut entries = Vec::new();
    entries
        .try_reserve_exact(count)
        .map_err(|_| refuse(resp::ERR_OUT_OF_MEMORY, "host allocation failed"))?;
    let mut start = 0u64;
    for i in 0..count {
        let addr = fields.u64_at(at + i * MEM_ENTRY_LEN)?;
        let len = u64::from(fields.u32_at(at + i * MEM_ENTRY_LEN + 8)?);
        if addr.checked_add(len).is_none() {
            return Err(refuse(resp::ERR_INVALID_PARAMETER, "backing entry wraps"));
        }
        entries.push(BackingEntry { addr, len, start });
        start = start.checked_add(len).ok_or(refuse(
            resp::ERR_INVALID_PARAMETER,
            "backing length overflows",
        ))?;
    }
    Ok(entries)
}

/// `count` zeroed values, or None if the host cannot allocate them.
fn zeroed<T: Copy + Default>(count: u64) -> Option<Vec<T>> {
    let count = usize::try_from(count).ok()?;
    let mut values = Vec::new();
    values.try_reserve_exact(count).ok()?;
    values.resize(count, T::default());
    Some(values)
}

fn respond(header: &Header, reply: Reply) -> Vec<u8> {
    match reply {
        Ok((kind, body)) => {
            let mut out = protocol::response_header(kind, header);
            out.extend_from_slice(&body);
            out
        }
        Err(refusal) => {
            log::debug!(
                "virtio-gpu: command {:#x} refused: {}",
                header.kind,
                refusal.reason
            );
            protocol::response_header(refusal.code, header)
        }
    }
}

#[cfg(test)]
mod tests;
