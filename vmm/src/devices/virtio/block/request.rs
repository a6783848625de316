//! The virtio-blk request path: take descriptor chains off a queue,
//! collect each chain's descriptors once (refusing chains longer than
//! SEG_MAX allows before walking them further), check their shape, do
//! the I/O on the backend (straight between the file and guest memory
//! where the backend can, else through a bounded bounce buffer), write
//! the status byte and return the chain. Anything the guest gets wrong
//! becomes an error status whenever the chain's last byte is a writable
//! status byte in guest RAM (else a dropped chain: there is nowhere to
//! put a status), never a panic.
//!
//! Public so that benchmarks can drive exactly this path host-side.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::block::{BlockBackend, ExtentRange, GuestExtent, SECTOR_SIZE};
use crate::devices::virtio::chain::{ChainBytes, ChainDescriptor, CollectedChain, DescriptorTable};
use crate::devices::virtio::driver_wants_interrupt;
use crate::narrow::const_narrow;

/// The request status byte the device writes last.
const STATUS_OK: u8 = const_narrow!(VIRTIO_BLK_S_OK => u8);
const STATUS_IOERR: u8 = const_narrow!(VIRTIO_BLK_S_IOERR => u8);
const STATUS_UNSUPP: u8 = const_narrow!(VIRTIO_BLK_S_UNSUPP => u8);

/// Data segments per request we advertise (SEG_MAX); with the header and
/// status descriptors this is the longest chain we accept.
pub const SEG_MAX: u32 = 254;
const MAX_DESCRIPTORS: u16 = const_narrow!(SEG_MAX + 2 => u16);
const HEADER_LEN: usize = 16;
/// Requests are copied through a buffer of at most this size, so a
/// guest cannot make the VMM allocate gigabytes with one request.
const CHUNK_LEN: usize = 1 << 20;
/// The longest buffer one descriptor may have (SIZE_MAX), so one request
/// moves at most SEG_MAX of them (254 MiB): what a reset, a pause or a
/// card lock may have to wait for. Linux builds its segments to fit.
pub const SIZE_MAX: u32 = 1 << 20;
/// Guest-memory extents one request may map: a descriptor split across
/// two memory regions takes two.
const MAX_EXTENTS: usize = 2 * MAX_DESCRIPTORS as usize;

/// Requests one [`RequestHandler::process_queue`] call serves at most,
/// and the data after which it starts no further request: what a reset or
/// a pause of the device may have to wait for (plus one request).
pub const REQUESTS_PER_CALL: usize = 8;
pub const BYTES_PER_CALL: u64 = 4 << 20;

pub type DiskId = [u8; VIRTIO_BLK_ID_BYTES as usize];

/// What one [`RequestHandler::process_queue`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The driver asked to be interrupted for the buffers just used.
    pub notify: bool,
    /// It stopped at its bound; more requests may be waiting.
    pub more: bool,
}

/// Serves requests for one disk.
pub struct RequestHandler {
    /// The descriptors of the chain being served.
    chain: CollectedChain,
    disk: DiskIo,
}

/// What moves a request's data: the disk and the buffers set aside for it.
struct DiskIo {
    backend: Arc<dyn BlockBackend>,
    disk_id: DiskId,
    buffer: Vec<u8>,
    /// The current request's data buffers, for direct I/O.
    extents: Vec<GuestExtent>,
}

/// How a request that did not fail ended.
enum Done {
    /// Data (if any) was copied through the bounce buffer; this is the
    /// status.
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
        let disk = DiskIo {
            backend,
            disk_id,
            // Allocated here, on the thread that activates the device, so
            // the I/O thread never grows its heap (its seccomp filter may
            // not allow mprotect). Zeroed allocation maps pages lazily:
            // only what requests actually use becomes resident.
            buffer: vec![0u8; CHUNK_LEN],
            extents: Vec::with_capacity(MAX_EXTENTS),
        };
        Self {
            chain: CollectedChain::new(MAX_DESCRIPTORS),
            disk,
        }
    }

    /// Serve available chains, at most [`REQUESTS_PER_CALL`] and no more
    /// once [`BYTES_PER_CALL`] were moved. An error means the ring itself
    /// is corrupt and the device needs a reset.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, virtio_queue::Error> {
        let mut requests = 0usize;
        let mut bytes = 0u64;
        let mut more = false;
        loop {
            if queue.event_idx_enabled() {
                queue.disable_notification(mem)?;
            }
            loop {
                if requests == REQUESTS_PER_CALL || bytes >= BYTES_PER_CALL {
                    // Notifications stay off: the caller comes back.
                    more = true;
                    break;
                }
                let next = queue.iter(mem)?.next();
                let Some(chain) = next else { break };
                let head = chain.head_index();
                requests += 1;
                let used_len = self.handle_chain(mem, DescriptorTable::of(queue), head);
                bytes = bytes.saturating_add(self.chain.byte_total());
                queue.add_used(mem, head, used_len)?;
            }
            // With EVENT_IDX, re-arm and look again so a buffer added
            // while notifications were off is not left behind.
            if more || !queue.event_idx_enabled() || !queue.enable_notification(mem)? {
                break;
            }
        }
        if requests == 0 {
            return Ok(Served::default());
        }
        let notify = driver_wants_interrupt(queue, mem)?;
        Ok(Served { notify, more })
    }

    /// Serve the chain at `head` of `table`; returns the used length
    /// (bytes written to the guest, status byte included; 0 when the
    /// chain has no status byte we can find and reach).
    pub fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        table: DescriptorTable,
        head: u16,
    ) -> u32 {
        let descriptors = match self.chain.collect(mem, table, head) {
            Ok(descriptors) => descriptors,
            Err(error) => {
                // Without walking the whole chain there is no telling
                // where its status byte is.
                log::debug!("virtio-blk: descriptor chain dropped: {error}");
                return 0;
            }
        };
        let Some(status_address) = status_address(mem, descriptors) else {
            log::debug!(
                "virtio-blk: request without a writable status byte in guest memory; chain dropped"
            );
            return 0;
        };
        let readable_len = byte_count(descriptors, false);
        // Everything device-writable but the status byte is data.
        let data_out_len = byte_count(descriptors, true) - 1;
        let mut data_in = ChainBytes::new(descriptors, false, readable_len);
        let mut data_out = ChainBytes::new(descriptors, true, data_out_len);
        let result = if !in_order(descriptors) {
            Err(Failure::Malformed(
                "readable descriptor after a writable one",
            ))
        } else if descriptors.iter().any(|d| d.len > SIZE_MAX) {
            Err(Failure::Malformed("buffer longer than SIZE_MAX"))
        } else if !data_in.all_in_memory(mem) || !data_out.all_in_memory(mem) {
            Err(Failure::Malformed("data buffers outside guest memory"))
        } else {
            self.disk.execute(mem, &mut data_in, &mut data_out)
        };
        let (status, direct_written) = match result {
            Ok(Done::Copied(status)) => (status, None),
            Ok(Done::Direct { written }) => (STATUS_OK, Some(written)),
            // Guest mistakes stay at debug level so a guest cannot flood
            // the log; host disk errors are the operator's business.
            Err(failure @ Failure::Io(_)) => {
                crate::rate_limited!(log::Level::Warn, "virtio-blk: {failure}");
                (STATUS_IOERR, None)
            }
            Err(failure) => {
                log::debug!("virtio-blk: {failure}");
                (STATUS_IOERR, None)
            }
        };
        if mem.write_obj(status, status_address).is_err() {
            return 0;
        }
        // Only an error before any data moved could leave the count
        // short; it is what the guest may trust either way, and never
        // more than the chain's writable bytes.
        let written = direct_written.unwrap_or_else(|| data_out.consumed());
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }
}

impl DiskIo {
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        data_in: &mut ChainBytes<'_>,
        data_out: &mut ChainBytes<'_>,
    ) -> Result<Done, Failure> {
        let mut header = [0u8; HEADER_LEN];
        data_in
            .read(mem, &mut header)
            .map_err(|_| Failure::Malformed("request header shorter than 16 bytes"))?;
        let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match request_type {
            VIRTIO_BLK_T_IN => {
                if data_in.remaining() != 0 {
                    return Err(Failure::Malformed(
                        "read request with a device-readable data buffer",
                    ));
                }
                let len = data_out.remaining();
                let offset = self.checked_range(sector, len)?;
                if self.map_data(mem, data_out.clone()) {
                    let range = ExtentRange::whole(&self.extents);
                    if let Some(result) = self.backend.read_to_guest(offset, range) {
                        result.map_err(Failure::Io)?;
                        return Ok(Done::Direct { written: len });
                    }
                }
                self.read_into_guest(mem, offset, data_out)?;
            }
            VIRTIO_BLK_T_OUT => {
                if data_out.remaining() != 0 {
                    return Err(Failure::Malformed(
                        "write request with a device-writable data buffer",
                    ));
                }
                if self.backend.read_only() {
                    return Err(Failure::Malformed("write to a read-only disk"));
                }
                let offset = self.checked_range(sector, data_in.remaining())?;
                if self.map_data(mem, data_in.clone()) {
                    let range = ExtentRange::whole(&self.extents);
                    if let Some(result) = self.backend.write_from_guest(offset, range) {
                        result.map_err(Failure::Io)?;
                        return Ok(Done::Direct { written: 0 });
                    }
                }
                self.write_from_guest(mem, offset, data_in)?;
            }
            VIRTIO_BLK_T_FLUSH => self.backend.flush().map_err(Failure::Io)?,
            VIRTIO_BLK_T_GET_ID => {
                let len = data_out.remaining().min(self.disk_id.len());
                data_out
                    .write(mem, &self.disk_id[..len])
                    .map_err(|_| Failure::Malformed("GET_ID buffer not writable"))?;
            }
            _ => return Ok(Done::Copied(STATUS_UNSUPP)),
        }
        Ok(Done::Copied(STATUS_OK))
    }

    /// Maps the bytes ahead of `data` into `self.extents`. False when
    /// some part is not plain guest RAM or the request needs more extents
    /// than were set aside; the bounce path then serves it.
    fn map_data(&mut self, mem: &GuestMemoryMmap, mut data: ChainBytes<'_>) -> bool {
        self.extents.clear();
        let extents = &mut self.extents;
        data.advance(
            data.remaining(),
            |start, len| {
                for slice in mem.get_slices(start, len) {
                    let slice = slice.map_err(|_| ())?;
                    if extents.len() == extents.capacity() {
                        return Err(());
                    }
                    // SAFETY: the slice is guest RAM, mapped for as long
                    // as the VM (and so this handler's memory) exists.
                    let extent =
                        unsafe { GuestExtent::new(slice.ptr_guard_mut().as_ptr(), slice.len()) };
                    extents.push(extent);
                }
                Ok(())
            },
            (),
        )
        .is_ok()
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
        mem: &GuestMemoryMmap,
        offset: u64,
        data_out: &mut ChainBytes<'_>,
    ) -> Result<(), Failure> {
        let len = data_out.remaining();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK_LEN);
            let buffer = &mut self.buffer[..n];
            self.backend
                .read_at(offset + done as u64, buffer)
                .map_err(Failure::Io)?;
            data_out
                .write(mem, buffer)
                .map_err(|_| Failure::Malformed("read buffer not writable"))?;
            done += n;
        }
        Ok(())
    }

    fn write_from_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data_in: &mut ChainBytes<'_>,
    ) -> Result<(), Failure> {
        let len = data_in.remaining();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK_LEN);
            let buffer = &mut self.buffer[..n];
            data_in
                .read(mem, buffer)
                .map_err(|_| Failure::Malformed("write buffer not readable"))?;
            self.backend
                .write_at(offset + done as u64, buffer)
                .map_err(Failure::Io)?;
            done += n;
        }
        Ok(())
    }
}

/// Where the status byte goes: the last byte of the last descriptor,
/// which must be device-writable and in guest RAM.
fn status_address(mem: &GuestMemoryMmap, descriptors: &[ChainDescriptor]) -> Option<GuestAddress> {
    let last = descriptors.last().filter(|d| d.writable && d.len > 0)?;
    let address = last.addr.checked_add(u64::from(last.len) - 1)?;
    mem.address_in_range(address).then_some(address)
}

/// Bytes in the device-writable (or device-readable) descriptors.
fn byte_count(descriptors: &[ChainDescriptor], writable: bool) -> usize {
    descriptors
        .iter()
        .filter(|d| d.writable == writable)
        .map(|d| d.len as usize)
        .sum()
}

/// Whether every device-readable descriptor comes before the first
/// device-writable one, as virtio requires.
fn in_order(descriptors: &[ChainDescriptor]) -> bool {
    let first_writable = descriptors
        .iter()
        .position(|d| d.writable)
        .unwrap_or(descriptors.len());
    descriptors[first_writable..].iter().all(|d| d.writable)
}
