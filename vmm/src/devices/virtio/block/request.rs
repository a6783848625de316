//! The virtio-blk request path: take descriptor chains off a queue,
//! check their shape, do the I/O on the backend (straight between the
//! file and guest memory where the backend can, else through a bounded
//! bounce buffer), write the status byte and return the chain. Anything the
//! guest gets wrong becomes an error status (or a dropped chain when
//! there is nowhere to put a status), never a panic.
//!
//! Public so that benchmarks can drive exactly this path host-side.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::backend::{BlockBackend, SECTOR_SIZE};
use super::guest_io::{ExtentRange, GuestExtent};

/// Data segments per request we advertise (SEG_MAX); with the header and
/// status descriptors this is the longest chain we accept.
pub const SEG_MAX: u32 = 254;
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
const HEADER_LEN: usize = 16;
/// Requests are copied through a buffer of at most this size, so a
/// guest cannot make the VMM allocate gigabytes with one request.
const CHUNK_LEN: usize = 1 << 20;
/// Guest-memory extents one request may map: a descriptor split across
/// two memory regions takes two.
const MAX_EXTENTS: usize = 2 * MAX_DESCRIPTORS;

pub type DiskId = [u8; VIRTIO_BLK_ID_BYTES as usize];

/// Serves requests for one disk.
pub struct RequestHandler {
    backend: Arc<dyn BlockBackend>,
    disk_id: DiskId,
    buffer: Vec<u8>,
    /// The current request's data buffers, for direct I/O.
    extents: Vec<GuestExtent>,
}

/// How a request that did not fail ended.
enum Done {
    /// Data (if any) went through the Reader/Writer; this is the status.
    Copied(u8),
    /// The backend moved the data itself; `written` bytes of guest
    /// buffers were filled.
    Direct { written: usize },
}

/// Why a request failed; for the debug log only, the guest sees IOERR.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("disk I/O error: {0}")]
    Io(std::io::Error),
}

impl RequestHandler {
    pub fn new(backend: Arc<dyn BlockBackend>, disk_id: DiskId) -> Self {
        Self {
            backend,
            disk_id,
            // Allocated here, on the thread that activates the device, so
            // the I/O thread never grows its heap (its seccomp filter may
            // not allow mprotect). Zeroed allocation maps pages lazily:
            // only what requests actually use becomes resident.
            buffer: vec![0u8; CHUNK_LEN],
            extents: Vec::with_capacity(MAX_EXTENTS),
        }
    }

    /// Serve every available chain. Returns whether the driver asked to be
    /// interrupted for the buffers just used. An error means the ring
    /// itself is corrupt and the device needs a reset.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used_any = false;
        loop {
            if queue.event_idx_enabled() {
                queue.disable_notification(mem)?;
            }
            loop {
                let next = queue.iter(mem)?.next();
                let Some(chain) = next else { break };
                let head = chain.head_index();
                let used_len = self.handle_chain(mem, chain);
                queue.add_used(mem, head, used_len)?;
                used_any = true;
            }
            // With EVENT_IDX, re-arm and look again so a buffer added
            // while notifications were off is not left behind.
            if !queue.event_idx_enabled() || !queue.enable_notification(mem)? {
                break;
            }
        }
        if !used_any {
            return Ok(false);
        }
        if queue.event_idx_enabled() {
            return queue.needs_notification(mem);
        }
        let flags: u16 = mem
            .load(GuestAddress(queue.avail_ring()), Ordering::Acquire)
            .map_err(virtio_queue::Error::GuestMemory)?;
        Ok(u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0)
    }

    /// Serve one chain; returns the used length (bytes written to the
    /// guest, status byte included; 0 when the chain had no status byte).
    pub fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let shape = match chain_shape(chain.clone()) {
            Some(shape) => shape,
            None => {
                log::debug!("virtio-blk: dropping truncated or looping descriptor chain");
                return 0;
            }
        };
        let Ok(mut data_out) = Writer::new(mem, chain.clone()) else {
            log::debug!("virtio-blk: writable buffers outside guest memory; chain dropped");
            return 0;
        };
        let writable = data_out.available_bytes();
        if writable == 0 {
            log::debug!("virtio-blk: request without a status byte; chain dropped");
            return 0;
        }
        let Ok(mut status_out) = data_out.split_at(writable - 1) else {
            return 0;
        };
        let result = if shape.too_long {
            Err(Failure::Malformed("chain longer than SEG_MAX allows"))
        } else if !shape.ordered {
            Err(Failure::Malformed(
                "readable descriptor after a writable one",
            ))
        } else {
            match Reader::new(mem, chain.clone()) {
                Ok(mut data_in) => self.execute(mem, &chain, &mut data_in, &mut data_out),
                Err(_) => Err(Failure::Malformed("readable buffers outside guest memory")),
            }
        };
        let (status, direct_written) = match result {
            Ok(Done::Copied(status)) => (status, None),
            Ok(Done::Direct { written }) => (VIRTIO_BLK_S_OK as u8, Some(written)),
            // Guest mistakes stay at debug level so a guest cannot flood
            // the log; host disk errors are the operator's business.
            Err(failure @ Failure::Io(_)) => {
                crate::rate_limited!(log::Level::Warn, "virtio-blk: {failure}");
                (VIRTIO_BLK_S_IOERR as u8, None)
            }
            Err(failure) => {
                log::debug!("virtio-blk: {failure}");
                (VIRTIO_BLK_S_IOERR as u8, None)
            }
        };
        if status_out.write_all(&[status]).is_err() {
            return 0;
        }
        // Only an error before any data moved could leave the count
        // short; it is what the guest may trust either way.
        let written = direct_written.unwrap_or_else(|| data_out.bytes_written());
        written as u32 + 1
    }

    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        data_in: &mut Reader<'_>,
        data_out: &mut Writer<'_>,
    ) -> Result<Done, Failure> {
        let mut header = [0u8; HEADER_LEN];
        data_in
            .read_exact(&mut header)
            .map_err(|_| Failure::Malformed("request header shorter than 16 bytes"))?;
        let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match request_type {
            VIRTIO_BLK_T_IN => {
                if data_in.available_bytes() != 0 {
                    return Err(Failure::Malformed(
                        "read request with a device-readable data buffer",
                    ));
                }
                let len = data_out.available_bytes();
                let offset = self.checked_range(sector, len)?;
                if self.map_data(mem, chain, true, 0, len) {
                    let range = ExtentRange::whole(&self.extents);
                    if let Some(result) = self.backend.read_to_guest(offset, range) {
                        result.map_err(Failure::Io)?;
                        return Ok(Done::Direct { written: len });
                    }
                }
                self.read_into_guest(offset, len, data_out)?;
            }
            VIRTIO_BLK_T_OUT => {
                if data_out.available_bytes() != 0 {
                    return Err(Failure::Malformed(
                        "write request with a device-writable data buffer",
                    ));
                }
                if self.backend.read_only() {
                    return Err(Failure::Malformed("write to a read-only disk"));
                }
                let len = data_in.available_bytes();
                let offset = self.checked_range(sector, len)?;
                if self.map_data(mem, chain, false, HEADER_LEN, len) {
                    let range = ExtentRange::whole(&self.extents);
                    if let Some(result) = self.backend.write_from_guest(offset, range) {
                        result.map_err(Failure::Io)?;
                        return Ok(Done::Direct { written: 0 });
                    }
                }
                self.write_from_guest(offset, len, data_in)?;
            }
            VIRTIO_BLK_T_FLUSH => self.backend.flush().map_err(Failure::Io)?,
            VIRTIO_BLK_T_GET_ID => {
                let len = data_out.available_bytes().min(self.disk_id.len());
                data_out
                    .write_all(&self.disk_id[..len])
                    .map_err(|_| Failure::Malformed("GET_ID buffer not writable"))?;
            }
            _ => return Ok(Done::Copied(VIRTIO_BLK_S_UNSUPP as u8)),
        }
        Ok(Done::Copied(VIRTIO_BLK_S_OK as u8))
    }

    /// Maps `len` bytes of the chain's device-writable (`writable`) or
    /// device-readable buffers, after the first `skip` of them, into
    /// `self.extents`. False when some part is not plain guest RAM or the
    /// request needs more extents than were set aside; the bounce path
    /// then serves it.
    fn map_data(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        writable: bool,
        mut skip: usize,
        len: usize,
    ) -> bool {
        self.extents.clear();
        let mut left = len;
        for descriptor in chain.clone() {
            if left == 0 {
                break;
            }
            if descriptor.is_write_only() != writable {
                continue;
            }
            let descriptor_len = descriptor.len() as usize;
            if skip >= descriptor_len {
                skip -= descriptor_len;
                continue;
            }
            let Some(start) = descriptor.addr().checked_add(skip as u64) else {
                return false;
            };
            let take = (descriptor_len - skip).min(left);
            skip = 0;
            left -= take;
            for slice in mem.get_slices(start, take) {
                let Ok(slice) = slice else { return false };
                if self.extents.len() == self.extents.capacity() {
                    return false;
                }
                // SAFETY: the slice is guest RAM, mapped for as long as
                // the VM (and so this handler's memory) exists.
                let extent =
                    unsafe { GuestExtent::new(slice.ptr_guard_mut().as_ptr(), slice.len()) };
                self.extents.push(extent);
            }
        }
        left == 0
    }

    /// Disk byte offset of a `len`-byte transfer at `sector`, if it is
    /// block aligned and inside the disk.
    fn checked_range(&self, sector: u64, len: usize) -> Result<u64, Failure> {
        let block = u64::from(self.backend.block_size());
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(Failure::Malformed("sector number overflows"))?;
        let end = offset
            .checked_add(len as u64)
            .ok_or(Failure::Malformed("request end overflows"))?;
        if !offset.is_multiple_of(block) || !(len as u64).is_multiple_of(block) {
            return Err(Failure::Malformed("request not aligned to the block size"));
        }
        if end > self.backend.capacity_bytes() {
            return Err(Failure::Malformed("request beyond the end of the disk"));
        }
        Ok(offset)
    }

    fn read_into_guest(
        &mut self,
        offset: u64,
        len: usize,
        data_out: &mut Writer<'_>,
    ) -> Result<(), Failure> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK_LEN);
            let buffer = &mut self.buffer[..n];
            self.backend
                .read_at(offset + done as u64, buffer)
                .map_err(Failure::Io)?;
            data_out
                .write_all(buffer)
                .map_err(|_| Failure::Malformed("read buffer not writable"))?;
            done += n;
        }
        Ok(())
    }

    fn write_from_guest(
        &mut self,
        offset: u64,
        len: usize,
        data_in: &mut Reader<'_>,
    ) -> Result<(), Failure> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK_LEN);
            let buffer = &mut self.buffer[..n];
            data_in
                .read_exact(buffer)
                .map_err(|_| Failure::Malformed("write buffer not readable"))?;
            self.backend
                .write_at(offset + done as u64, buffer)
                .map_err(Failure::Io)?;
            done += n;
        }
        Ok(())
    }
}

struct ChainShape {
    ordered: bool,
    too_long: bool,
}

/// Walk the chain once. `None` when it ends with a descriptor that still
/// points onwards: the walk stopped on a loop, a bad index or unreadable
/// descriptor memory, so we cannot know where the status byte is.
fn chain_shape(chain: DescriptorChain<&GuestMemoryMmap>) -> Option<ChainShape> {
    let mut count = 0usize;
    let mut seen_writable = false;
    let mut ordered = true;
    let mut last_has_next = false;
    for descriptor in chain {
        count += 1;
        if descriptor.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            ordered = false;
        }
        last_has_next = descriptor.has_next();
    }
    if count == 0 || last_has_next {
        return None;
    }
    Some(ChainShape {
        ordered,
        too_long: count > MAX_DESCRIPTORS,
    })
}
