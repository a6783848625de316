//! virtio-blk request processing over hostile guest memory: descriptor
//! tables (direct and indirect), rings and buffers all come from the
//! input, in one to three memory regions with gaps.
//!
//! Invariants, beyond "no panic":
//! - the backend is never asked for a byte outside the disk, nor for an
//!   access that is not block aligned;
//! - a read-only disk is never written;
//! - each chain's used length is at most its device-writable bytes;
//! - whenever a chain is well formed (the device's own bounded walker
//!   collects it: at most SEG_MAX + 2 descriptors, sane indirect tables)
//!   and its status byte (the last device-writable byte) is in RAM, the
//!   status is written, as 0, 1 or 2;
//! - every chain taken is returned exactly once, and no more chains are
//!   used than the guest made available.
//!
//! Input: a 12-byte header, patch records, then guest memory.
//!   0: bit 0 read-only disk, bit 1 EVENT_IDX, bit 2 chain-by-chain mode
//!      (else the handler's whole-queue loop), bit 3 4 KiB blocks, bit 4
//!      first two regions adjacent, bit 5 backend takes guest buffers
//!      directly (else bounce copies), bits 6-7 region count - 1;
//!   1: queue size exponent; 2-7: descriptor table, available and used
//!   ring addresses (u16 each); 8: disk size in 512-byte sectors;
//!   9: rounds - 1 (0..3); 10-11: length of the patch records.
//! Patch records ([address u16][length u8][bytes]) are applied one per
//! round after the first, as a guest adding requests would.

#![no_main]
// Harness code narrows small known values; a wrong one fails the run.
#![allow(clippy::cast_possible_truncation)]

#[path = "common/input.rs"]
mod input;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/queue.rs"]
mod queue;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use securevm::block::{BlockBackend, ExtentRange, SECTOR_SIZE};
use securevm::devices::virtio::block::{RequestHandler, SEG_MAX};
use securevm::devices::virtio::chain::{CollectedChain, DescriptorTable};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use input::Input;
use memory::guest_memory;
use queue::{build_queue, QueueSetup};

const STATUS_SENTINEL: u8 = 0xee;

/// An in-memory disk that asserts every access the request path makes.
struct CheckedDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    block_size: u32,
    direct: bool,
}

impl CheckedDisk {
    /// Asserts that `len` bytes at `offset` are block aligned and inside
    /// the disk, and returns them as a range of `data`.
    fn checked(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let block = u64::from(self.block_size);
        let end = offset
            .checked_add(len as u64)
            .expect("access end overflows");
        assert!(
            end <= self.capacity_bytes(),
            "access {offset:#x}+{len:#x} beyond the {}-byte disk",
            self.capacity_bytes()
        );
        assert!(
            offset.is_multiple_of(block) && (len as u64).is_multiple_of(block),
            "access {offset:#x}+{len:#x} not aligned to {block}"
        );
        offset as usize..end as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockBackend for CheckedDisk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = self.checked(offset, buf.len());
        buf.copy_from_slice(&self.lock()[range]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        assert!(!self.read_only, "write to a read-only disk");
        let range = self.checked(offset, buf.len());
        self.lock()[range].copy_from_slice(buf);
        Ok(())
    }

    fn read_to_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        if !self.direct {
            return None;
        }
        let disk_range = self.checked(offset, range.len);
        let data = self.lock();
        let mut from = disk_range.start;
        for extent in range.iter() {
            assert!(
                from + extent.len() <= disk_range.end,
                "extents longer than the range"
            );
            // SAFETY: the request path builds extents from guest RAM of the
            // `GuestMemoryMmap` that outlives this call; `data` is a
            // separate host buffer, so the two cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(data[from..].as_ptr(), extent.as_ptr(), extent.len());
            }
            from += extent.len();
        }
        assert_eq!(from, disk_range.end, "extents shorter than the range");
        Some(Ok(()))
    }

    fn write_from_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        if !self.direct {
            return None;
        }
        assert!(!self.read_only, "write to a read-only disk");
        let disk_range = self.checked(offset, range.len);
        let mut data = self.lock();
        let mut to = disk_range.start;
        for extent in range.iter() {
            assert!(
                to + extent.len() <= disk_range.end,
                "extents longer than the range"
            );
            // SAFETY: as in `read_to_guest`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    extent.as_ptr(),
                    data[to..].as_mut_ptr(),
                    extent.len(),
                );
            }
            to += extent.len();
        }
        assert_eq!(to, disk_range.end, "extents shorter than the range");
        Some(Ok(()))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn capacity_bytes(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }
}

/// What the chain as the device sees it promises: its device-writable
/// bytes and, if it ends properly, where its status byte is.
struct ChainFacts {
    writable: u64,
    status_at: Option<GuestAddress>,
}

/// What the chain at `head` holds, as the device's bounded walker sees
/// it: a chain it refuses (too long, bad indirect table, loop) has no
/// status byte the device could find without walking it further.
fn chain_facts(table: DescriptorTable, head: u16, mem: &GuestMemoryMmap) -> ChainFacts {
    let mut walker = CollectedChain::new(SEG_MAX as u16 + 2);
    let Ok(descriptors) = walker.collect(mem, table, head) else {
        return ChainFacts {
            writable: 0,
            status_at: None,
        };
    };
    let writable = descriptors
        .iter()
        .filter(|d| d.writable)
        .map(|d| u64::from(d.len))
        .sum();
    let status_at = descriptors
        .last()
        .filter(|d| d.writable && d.len > 0)
        .and_then(|d| d.addr.checked_add(u64::from(d.len) - 1));
    ChainFacts {
        writable,
        status_at,
    }
}

fn avail_idx(queue: &Queue, mem: &GuestMemoryMmap) -> Option<u16> {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .ok()
        .map(|idx| idx.0)
}

/// The handler's own loop over the whole queue.
fn whole_queue_round(handler: &mut RequestHandler, queue: &mut Queue, mem: &GuestMemoryMmap) {
    let next_avail = queue.next_avail();
    let next_used = queue.next_used();
    let avail_before = avail_idx(queue, mem);
    let result = handler.process_queue(queue, mem);
    let taken = queue.next_avail().wrapping_sub(next_avail);
    let returned = queue.next_used().wrapping_sub(next_used);
    if result.is_ok() {
        assert_eq!(taken, returned, "chains taken and chains returned differ");
    }
    assert!(returned <= taken, "more chains returned than taken");
    // Device writes (a read request aimed at the ring) may move the avail
    // index legitimately; the bound holds while it did not move.
    if let Some(before) = avail_before {
        if avail_idx(queue, mem) == Some(before) {
            assert!(
                taken <= before.wrapping_sub(next_avail),
                "used {taken} chains with {} available",
                before.wrapping_sub(next_avail)
            );
        }
    }
}

/// One chain at a time through `handle_chain`, checking each.
fn chain_by_chain_round(handler: &mut RequestHandler, queue: &mut Queue, mem: &GuestMemoryMmap) {
    loop {
        let chain = match queue.iter(mem) {
            Ok(mut chains) => chains.next(),
            Err(_) => None,
        };
        let Some(chain) = chain else { return };
        let head = chain.head_index();
        let table = DescriptorTable::of(queue);
        let mut facts = chain_facts(table, head, mem);
        if let Some(status_at) = facts.status_at {
            if mem.write_obj(STATUS_SENTINEL, status_at).is_ok() {
                // The sentinel may have landed in the chain's own
                // descriptors; look again so facts match what the device sees.
                let again = chain_facts(table, head, mem);
                if again.status_at != facts.status_at {
                    facts = ChainFacts {
                        writable: again.writable,
                        status_at: None,
                    };
                } else {
                    facts.writable = again.writable;
                }
            } else {
                facts.status_at = None;
            }
        }
        let used_len = handler.handle_chain(mem, table, head);
        assert!(
            u64::from(used_len) <= facts.writable,
            "used length {used_len} beyond the chain's {} writable bytes",
            facts.writable
        );
        if let Some(status_at) = facts.status_at {
            let status: u8 = mem.read_obj(status_at).expect("status byte in RAM");
            assert!(
                used_len >= 1,
                "status byte in RAM at {status_at:?} but used length 0"
            );
            assert!(
                status <= 2,
                "status {status:#x} written (or left) at {status_at:?}"
            );
        }
        if queue.add_used(mem, head, used_len).is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let setup = QueueSetup {
        size_exponent: input.u8(),
        desc: u64::from(input.u16()),
        avail: u64::from(input.u16()),
        used: u64::from(input.u16()),
        event_idx: flags & 2 != 0,
    };
    let block_size: u32 = if flags & 8 != 0 { 4096 } else { 512 };
    let sectors = u64::from(input.u8());
    let capacity = sectors * SECTOR_SIZE / u64::from(block_size) * u64::from(block_size);
    let rounds = 1 + input.u8() % 4;
    let patch_len = usize::from(input.u16());
    let mut patches = Input::new(input.bytes(patch_len));
    let mem = guest_memory(usize::from(flags >> 6) + 1, flags & 0x10 != 0, input.rest());
    let Some(mut queue) = build_queue(&setup, &mem) else {
        return;
    };
    let disk = CheckedDisk {
        data: Mutex::new(vec![0u8; capacity as usize]),
        read_only: flags & 1 != 0,
        block_size,
        direct: flags & 0x20 != 0,
    };
    let mut id = [0u8; 20];
    id[..4].copy_from_slice(b"fuzz");
    let mut handler = RequestHandler::new(Arc::new(disk), id);
    for round in 0..rounds {
        if round > 0 {
            let address = GuestAddress(u64::from(patches.u16()));
            let len = usize::from(patches.u8());
            let _ = mem.write_slice(patches.bytes(len), address);
        }
        if flags & 4 != 0 {
            chain_by_chain_round(&mut handler, &mut queue, &mem);
        } else {
            whole_queue_round(&mut handler, &mut queue, &mem);
        }
    }
});
