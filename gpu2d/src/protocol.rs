//! The wire format of virtio-gpu 2D (virtio 1.2, 5.7.6): command and
//! response types, the control header every request and response starts
//! with, and little-endian field readers that fail instead of indexing
//! past a short request.

/// Command types the driver sends (`enum virtio_gpu_ctrl_type`).
pub mod cmd {
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    pub const RESOURCE_UNREF: u32 = 0x0102;
    pub const SET_SCANOUT: u32 = 0x0103;
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
    pub const GET_EDID: u32 = 0x010a;
    pub const UPDATE_CURSOR: u32 = 0x0300;
    pub const MOVE_CURSOR: u32 = 0x0301;
}

/// Response types the device answers with.
pub mod resp {
    pub const OK_NODATA: u32 = 0x1100;
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    pub const OK_EDID: u32 = 0x1104;
    pub const ERR_UNSPEC: u32 = 0x1200;
    pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
    pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;

    /// Every response type this engine writes.
    pub const ALL: [u32; 8] = [
        OK_NODATA,
        OK_DISPLAY_INFO,
        OK_EDID,
        ERR_UNSPEC,
        ERR_OUT_OF_MEMORY,
        ERR_INVALID_SCANOUT_ID,
        ERR_INVALID_RESOURCE_ID,
        ERR_INVALID_PARAMETER,
    ];
}

/// `VIRTIO_GPU_FLAG_FENCE`: the response echoes the request's fence.
pub const FLAG_FENCE: u32 = 1;

/// Feature bit `VIRTIO_GPU_F_EDID`.
pub const F_EDID: u32 = 1;

/// `struct virtio_gpu_ctrl_hdr`.
pub const HEADER_LEN: usize = 24;
/// `struct virtio_gpu_rect`.
pub const RECT_LEN: usize = 16;
/// `struct virtio_gpu_mem_entry`.
pub const MEM_ENTRY_LEN: usize = 16;
/// Scanouts in `struct virtio_gpu_resp_display_info` (VIRTIO_GPU_MAX_SCANOUTS).
pub const MAX_SCANOUTS: usize = 16;
/// Bytes of EDID room in `struct virtio_gpu_resp_edid`.
pub const EDID_ROOM: usize = 1024;

/// Pixel formats of RESOURCE_CREATE_2D (`enum virtio_gpu_formats`), named
/// by their bytes' order in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    B8G8R8A8,
    B8G8R8X8,
    A8R8G8B8,
    X8R8G8B8,
    R8G8B8A8,
    X8B8G8R8,
    A8B8G8R8,
    R8G8B8X8,
}

impl Format {
    pub fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::B8G8R8A8,
            2 => Self::B8G8R8X8,
            3 => Self::A8R8G8B8,
            4 => Self::X8R8G8B8,
            67 => Self::R8G8B8A8,
            68 => Self::X8B8G8R8,
            121 => Self::A8B8G8R8,
            134 => Self::R8G8B8X8,
            _ => return None,
        })
    }

    /// The pixel whose four bytes in memory are `bytes`, as 0xAARRGGBB;
    /// formats without alpha (X) are opaque.
    pub fn to_argb(self, bytes: [u8; 4]) -> u32 {
        let [a, r, g, b] = match self {
            Self::B8G8R8A8 => [bytes[3], bytes[2], bytes[1], bytes[0]],
            Self::B8G8R8X8 => [0xff, bytes[2], bytes[1], bytes[0]],
            Self::A8R8G8B8 => [bytes[0], bytes[1], bytes[2], bytes[3]],
            Self::X8R8G8B8 => [0xff, bytes[1], bytes[2], bytes[3]],
            Self::R8G8B8A8 => [bytes[3], bytes[0], bytes[1], bytes[2]],
            Self::R8G8B8X8 => [0xff, bytes[0], bytes[1], bytes[2]],
            Self::A8B8G8R8 => [bytes[0], bytes[3], bytes[2], bytes[1]],
            Self::X8B8G8R8 => [0xff, bytes[3], bytes[2], bytes[1]],
        };
        u32::from_be_bytes([a, r, g, b])
    }
}

/// The fields of a request's control header the response depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub kind: u32,
    pub flags: u32,
    pub fence_id: u64,
}

/// A response header answering `request`: its fence echoed if it asked
/// for one.
pub fn response_header(kind: u32, request: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&kind.to_le_bytes());
    let fenced = request.flags & FLAG_FENCE != 0;
    let flags = if fenced { FLAG_FENCE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    let fence_id = if fenced { request.fence_id } else { 0 };
    out.extend_from_slice(&fence_id.to_le_bytes());
    // ctx_id, ring_idx and padding: unused in 2D.
    out.extend_from_slice(&[0; 8]);
    out
}

/// The request was shorter than its command's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short;

/// Little-endian reads at fixed offsets of a request.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    pub fn u32_at(self, at: usize) -> Result<u32, Short> {
        let bytes = self
            .0
            .get(at..at.checked_add(4).ok_or(Short)?)
            .ok_or(Short)?;
        Ok(u32::from_le_bytes(bytes.try_into().map_err(|_| Short)?))
    }

    pub fn u64_at(self, at: usize) -> Result<u64, Short> {
        let bytes = self
            .0
            .get(at..at.checked_add(8).ok_or(Short)?)
            .ok_or(Short)?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| Short)?))
    }

    pub fn rect_at(self, at: usize) -> Result<crate::Rect, Short> {
        Ok(crate::Rect {
            x: self.u32_at(at)?,
            y: self.u32_at(at + 4)?,
            width: self.u32_at(at + 8)?,
            height: self.u32_at(at + 12)?,
        })
    }

    pub fn header(self) -> Result<Header, Short> {
        if self.0.len() < HEADER_LEN {
            return Err(Short);
        }
        Ok(Header {
            kind: self.u32_at(0)?,
            flags: self.u32_at(4)?,
            fence_id: self.u64_at(8)?,
        })
    }
}
