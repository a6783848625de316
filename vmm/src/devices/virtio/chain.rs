//! Descriptor chains walked once, with a bound. A device collects each
//! chain's descriptors into a list it set aside at activation and refuses
//! the chain as soon as it is longer than the device accepts; every later
//! step (shape checks, copies, mapping for direct I/O) works on that list
//! instead of walking guest memory again.
//!
//! virtio-queue's own iterator bounds a direct chain by the queue size but
//! follows an indirect table of up to 65 535 entries, and its `Reader`,
//! `Writer` and every clone of a chain walk it again: a guest could make
//! one request cost several hundred thousand descriptor reads. Here an
//! indirect table longer than the room left under the bound is refused
//! before any of its entries is read, so a refused chain costs at most
//! bound + 1 descriptor reads.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};

/// Bytes per split-ring descriptor (virtio 1.x, 2.7.5).
const DESCRIPTOR_SIZE: u64 = 16;

/// One buffer of a chain, as the driver described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDescriptor {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// Where a chain's descriptors are looked up: the ring's table, or an
/// indirect table.
#[derive(Debug, Clone, Copy)]
pub struct DescriptorTable {
    pub addr: GuestAddress,
    /// Entries in the table.
    pub size: u16,
}

impl DescriptorTable {
    /// The descriptor table of `queue` as the driver configured it.
    pub fn of(queue: &Queue) -> Self {
        Self {
            addr: GuestAddress(queue.desc_table()),
            size: queue.size(),
        }
    }
}

/// Why a chain was refused; for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("chain longer than {0} descriptors")]
    TooLong(usize),
    #[error("chain visits more descriptors than its table holds (a loop)")]
    Looping,
    #[error("descriptor index outside its table")]
    BadIndex,
    #[error("descriptor table outside guest memory")]
    Unreadable,
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect descriptor that also points to a next one")]
    IndirectWithNext,
    #[error("indirect table length not a non-zero multiple of 16")]
    BadIndirectTable,
}

/// The descriptors of the chain being served, at most `limit` of them.
pub struct CollectedChain {
    descriptors: Vec<ChainDescriptor>,
    limit: usize,
}

impl CollectedChain {
    /// Room for chains of up to `limit` descriptors (at most 65 535, the
    /// longest an indirect table can be). Allocated here, off the I/O
    /// thread's hot path.
    pub fn new(limit: u16) -> Self {
        let limit = usize::from(limit);
        Self {
            descriptors: Vec::with_capacity(limit),
            limit,
        }
    }

    /// What the buffers of the chain collected last add up to
    /// (saturating; a refused chain counts the descriptors read before
    /// the refusal).
    pub fn byte_total(&self) -> u64 {
        self.descriptors
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(u64::from(d.len)))
    }

    /// Collect the chain starting at `head` of `table`.
    pub fn collect(
        &mut self,
        mem: &GuestMemoryMmap,
        table: DescriptorTable,
        head: u16,
    ) -> Result<&[ChainDescriptor], ChainError> {
        self.collect_with(table, head, |addr| mem.read_obj::<Descriptor>(addr).ok())
    }

    /// [`CollectedChain::collect`] with descriptors read through `read`,
    /// so that tests can count the reads.
    fn collect_with(
        &mut self,
        ring: DescriptorTable,
        head: u16,
        mut read: impl FnMut(GuestAddress) -> Option<Descriptor>,
    ) -> Result<&[ChainDescriptor], ChainError> {
        self.descriptors.clear();
        let mut table = ring;
        let mut index = head;
        let mut in_indirect = false;
        // A chain never has more descriptors than its table; running past
        // that means `next` links form a loop.
        let mut left_in_table = table.size;
        loop {
            if index >= table.size {
                return Err(ChainError::BadIndex);
            }
            if left_in_table == 0 {
                return Err(ChainError::Looping);
            }
            left_in_table -= 1;
            // Whatever comes next, a data descriptor or an indirect table
            // (which holds at least one), would be one too many.
            if self.descriptors.len() == self.limit {
                return Err(ChainError::TooLong(self.limit));
            }
            let addr = table
                .addr
                .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
                .ok_or(ChainError::Unreadable)?;
            let descriptor = read(addr).ok_or(ChainError::Unreadable)?;
            if descriptor.refers_to_indirect_table() {
                if in_indirect {
                    return Err(ChainError::NestedIndirect);
                }
                if descriptor.has_next() {
                    return Err(ChainError::IndirectWithNext);
                }
                let len = u64::from(descriptor.len());
                if len == 0 || !len.is_multiple_of(DESCRIPTOR_SIZE) {
                    return Err(ChainError::BadIndirectTable);
                }
                // Refused before any entry is read: the table, not the
                // chain through it, sets what walking it could cost.
                let entries = len / DESCRIPTOR_SIZE;
                let room = self.limit - self.descriptors.len();
                let size = u16::try_from(entries)
                    .ok()
                    .filter(|&size| usize::from(size) <= room)
                    .ok_or(ChainError::TooLong(self.limit))?;
                table = DescriptorTable {
                    addr: descriptor.addr(),
                    size,
                };
                in_indirect = true;
                index = 0;
                left_in_table = size;
                continue;
            }
            // Within the capacity reserved in `new`: never reallocates.
            self.descriptors.push(ChainDescriptor {
                addr: descriptor.addr(),
                len: descriptor.len(),
                writable: descriptor.is_write_only(),
            });
            if !descriptor.has_next() {
                return Ok(&self.descriptors);
            }
            index = descriptor.next();
        }
    }
}

/// Sequential access to a chain's device-readable or device-writable
/// bytes (the other kind is skipped), up to a length the caller chose.
#[derive(Debug, Clone)]
pub struct ChainBytes<'a> {
    descriptors: &'a [ChainDescriptor],
    writable: bool,
    /// Next descriptor to look at, and bytes of it already consumed.
    index: usize,
    offset: u32,
    remaining: usize,
    consumed: usize,
}

/// The guest memory behind a chain's buffers was not all there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chain buffer shorter than needed or outside guest memory")]
pub struct OutOfBuffer;

impl<'a> ChainBytes<'a> {
    /// The first `len` bytes of the `writable` (or readable) buffers of
    /// `descriptors`, clamped to what they hold.
    pub fn new(descriptors: &'a [ChainDescriptor], writable: bool, len: usize) -> Self {
        let total = descriptors
            .iter()
            .filter(|d| d.writable == writable)
            .map(|d| d.len as usize)
            .fold(0usize, usize::saturating_add);
        Self {
            descriptors,
            writable,
            index: 0,
            offset: 0,
            remaining: len.min(total),
            consumed: 0,
        }
    }

    /// Bytes still ahead.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Bytes already read, written or skipped.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Hand the next `len` bytes to `each` as runs of guest addresses,
    /// in order, and move past them.
    pub fn advance<E>(
        &mut self,
        len: usize,
        mut each: impl FnMut(GuestAddress, usize) -> Result<(), E>,
        short: E,
    ) -> Result<(), E> {
        if len > self.remaining {
            return Err(short);
        }
        let mut left = len;
        while left > 0 {
            let Some(descriptor) = self.descriptors.get(self.index) else {
                return Err(short);
            };
            if descriptor.writable != self.writable || self.offset == descriptor.len {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let available = descriptor.len - self.offset;
            // The rest of this descriptor or of the request, whichever is
            // shorter: a u32 like the descriptor's length.
            let take_u32 = u32::try_from(left).map_or(available, |left| left.min(available));
            let take = take_u32 as usize;
            let Some(start) = descriptor.addr.checked_add(u64::from(self.offset)) else {
                return Err(short);
            };
            each(start, take)?;
            self.offset += take_u32;
            left -= take;
            self.remaining -= take;
            self.consumed += take;
        }
        Ok(())
    }

    /// Fill `buf` from guest memory.
    pub fn read(&mut self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), OutOfBuffer> {
        let mut done = 0;
        self.advance(
            buf.len(),
            |addr, len| {
                mem.read_slice(&mut buf[done..done + len], addr)
                    .map_err(|_| OutOfBuffer)?;
                done += len;
                Ok(())
            },
            OutOfBuffer,
        )
    }

    /// Store `data` in guest memory.
    pub fn write(&mut self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<(), OutOfBuffer> {
        let mut done = 0;
        self.advance(
            data.len(),
            |addr, len| {
                mem.write_slice(&data[done..done + len], addr)
                    .map_err(|_| OutOfBuffer)?;
                done += len;
                Ok(())
            },
            OutOfBuffer,
        )
    }

    /// Whether all bytes ahead are guest RAM.
    pub fn all_in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        let mut ahead = self.clone();
        ahead
            .advance(
                ahead.remaining,
                |addr, len| {
                    if GuestMemoryBackend::check_range(mem, addr, len) {
                        Ok(())
                    } else {
                        Err(OutOfBuffer)
                    }
                },
                OutOfBuffer,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    const RING: GuestAddress = GuestAddress(0x1000);
    const RING_SIZE: u16 = 256;
    const INDIRECT_TABLE: u64 = 0x10_0000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, table: u64, index: u16, descriptor: Descriptor) {
        let at = GuestAddress(table + u64::from(index) * DESCRIPTOR_SIZE);
        mem.write_obj(descriptor, at).unwrap();
    }

    fn ring() -> DescriptorTable {
        DescriptorTable {
            addr: RING,
            size: RING_SIZE,
        }
    }

    /// Collects with `limit`, returning the outcome and how many
    /// descriptors were read from guest memory.
    fn collect_counting(
        mem: &GuestMemoryMmap,
        limit: u16,
        head: u16,
    ) -> (Result<Vec<ChainDescriptor>, ChainError>, usize) {
        let mut chain = CollectedChain::new(limit);
        let mut reads = 0;
        let result = chain
            .collect_with(ring(), head, |addr| {
                reads += 1;
                mem.read_obj(addr).ok()
            })
            .map(<[ChainDescriptor]>::to_vec);
        (result, reads)
    }

    /// An indirect table of `entries` descriptors chained 0, 1, 2, ...
    /// (the last one ending the chain), referenced from ring slot 0.
    fn indirect_chain(mem: &GuestMemoryMmap, entries: u16) {
        for i in 0..entries {
            let last = i + 1 == entries;
            let flags = if last { F_WRITE } else { F_NEXT };
            put(
                mem,
                INDIRECT_TABLE,
                i,
                Descriptor::new(0x20_0000 - 512, 1, flags, i.wrapping_add(1)),
            );
        }
        let table_len = u32::from(entries) * DESCRIPTOR_SIZE as u32;
        put(
            mem,
            RING.0,
            0,
            Descriptor::new(INDIRECT_TABLE, table_len, F_INDIRECT, 0),
        );
    }

    #[test]
    fn largest_indirect_table_is_refused_before_any_entry_is_read() {
        let mem = memory();
        indirect_chain(&mem, u16::MAX);
        let (result, reads) = collect_counting(&mem, 256, 0);
        assert_eq!(result, Err(ChainError::TooLong(256)));
        assert_eq!(reads, 1, "only the descriptor pointing at the table");
    }

    #[test]
    fn indirect_table_at_the_limit_is_collected_with_one_read_each() {
        let mem = memory();
        indirect_chain(&mem, 256);
        let (result, reads) = collect_counting(&mem, 256, 0);
        let descriptors = result.unwrap();
        assert_eq!(descriptors.len(), 256);
        assert!(descriptors[255].writable && !descriptors[0].writable);
        assert_eq!(reads, 257);
        let (result, _) = collect_counting(&mem, 255, 0);
        assert_eq!(result, Err(ChainError::TooLong(255)));
    }

    #[test]
    fn direct_prefix_counts_against_an_indirect_table() {
        let mem = memory();
        indirect_chain(&mem, 4);
        // Ring slots 1 and 2 lead to the indirect descriptor in slot 0.
        put(&mem, RING.0, 1, Descriptor::new(0x8000, 16, F_NEXT, 2));
        put(&mem, RING.0, 2, Descriptor::new(0x8000, 16, F_NEXT, 0));
        let (result, reads) = collect_counting(&mem, 6, 1);
        assert_eq!(result.unwrap().len(), 6);
        assert_eq!(reads, 7);
        let (result, reads) = collect_counting(&mem, 5, 1);
        assert_eq!(result, Err(ChainError::TooLong(5)));
        assert_eq!(reads, 3, "the table itself was never read");
    }

    #[test]
    fn long_direct_chain_stops_one_past_the_limit() {
        let mem = memory();
        for i in 0..RING_SIZE {
            let next = (i + 1) % RING_SIZE;
            put(&mem, RING.0, i, Descriptor::new(0x8000, 1, F_NEXT, next));
        }
        let (result, reads) = collect_counting(&mem, 8, 0);
        assert_eq!(result, Err(ChainError::TooLong(8)));
        assert_eq!(reads, 8);
        // With a limit the size of the ring, the table runs out first.
        let (result, reads) = collect_counting(&mem, RING_SIZE, 0);
        assert_eq!(result, Err(ChainError::Looping));
        assert_eq!(reads, usize::from(RING_SIZE));
    }

    #[test]
    fn loop_inside_an_indirect_table_stops_at_its_size() {
        let mem = memory();
        indirect_chain(&mem, 3);
        put(
            &mem,
            INDIRECT_TABLE,
            2,
            Descriptor::new(0x8000, 1, F_NEXT, 0),
        );
        let (result, reads) = collect_counting(&mem, 256, 0);
        assert_eq!(result, Err(ChainError::Looping));
        assert_eq!(reads, 4);
    }

    #[test]
    fn malformed_indirect_descriptors_are_refused() {
        let mem = memory();
        let cases = [
            (
                Descriptor::new(INDIRECT_TABLE, 0, F_INDIRECT, 0),
                ChainError::BadIndirectTable,
            ),
            (
                Descriptor::new(INDIRECT_TABLE, 24, F_INDIRECT, 0),
                ChainError::BadIndirectTable,
            ),
            (
                Descriptor::new(INDIRECT_TABLE, 32, F_INDIRECT | F_NEXT, 1),
                ChainError::IndirectWithNext,
            ),
        ];
        for (descriptor, expected) in cases {
            put(&mem, RING.0, 0, descriptor);
            assert_eq!(collect_counting(&mem, 256, 0).0, Err(expected));
        }
        put(
            &mem,
            RING.0,
            0,
            Descriptor::new(INDIRECT_TABLE, 32, F_INDIRECT, 0),
        );
        put(
            &mem,
            INDIRECT_TABLE,
            0,
            Descriptor::new(INDIRECT_TABLE, 32, F_INDIRECT, 0),
        );
        assert_eq!(
            collect_counting(&mem, 256, 0).0,
            Err(ChainError::NestedIndirect)
        );
        put(
            &mem,
            INDIRECT_TABLE,
            0,
            Descriptor::new(0x8000, 1, F_NEXT, 2),
        );
        assert_eq!(collect_counting(&mem, 256, 0).0, Err(ChainError::BadIndex));
        put(
            &mem,
            RING.0,
            0,
            Descriptor::new(0x7fff_0000_0000, 32, F_INDIRECT, 0),
        );
        assert_eq!(
            collect_counting(&mem, 256, 0).0,
            Err(ChainError::Unreadable)
        );
        assert_eq!(
            collect_counting(&mem, 256, RING_SIZE).0,
            Err(ChainError::BadIndex)
        );
    }

    #[test]
    fn chain_bytes_cross_descriptors_of_one_direction_only() {
        let mem = memory();
        let descriptors = [
            ChainDescriptor {
                addr: GuestAddress(0x8000),
                len: 3,
                writable: false,
            },
            ChainDescriptor {
                addr: GuestAddress(0x9000),
                len: 4,
                writable: true,
            },
            ChainDescriptor {
                addr: GuestAddress(0xa000),
                len: 5,
                writable: false,
            },
        ];
        mem.write_slice(b"abc", GuestAddress(0x8000)).unwrap();
        mem.write_slice(b"defgh", GuestAddress(0xa000)).unwrap();
        let mut readable = ChainBytes::new(&descriptors, false, usize::MAX);
        assert_eq!(readable.remaining(), 8);
        let mut first = [0u8; 2];
        readable.read(&mem, &mut first).unwrap();
        let mut rest = [0u8; 6];
        readable.read(&mem, &mut rest).unwrap();
        assert_eq!((&first, &rest), (b"ab", b"cdefgh"));
        assert_eq!(readable.read(&mem, &mut [0u8; 1]), Err(OutOfBuffer));
        assert_eq!(readable.consumed(), 8);

        let mut writable = ChainBytes::new(&descriptors, true, 3);
        assert_eq!(writable.write(&mem, b"wxyz"), Err(OutOfBuffer), "cut at 3");
        writable.write(&mem, b"xyz").unwrap();
        let mut back = [0u8; 4];
        mem.read_slice(&mut back, GuestAddress(0x9000)).unwrap();
        assert_eq!(&back, b"xyz\0");
    }

    #[test]
    fn chain_bytes_outside_memory_are_detected_before_use() {
        let mem = memory();
        let descriptors = [
            ChainDescriptor {
                addr: GuestAddress(0x8000),
                len: 512,
                writable: true,
            },
            ChainDescriptor {
                addr: GuestAddress((2 << 20) - 256),
                len: 512,
                writable: true,
            },
        ];
        assert!(ChainBytes::new(&descriptors, true, 768).all_in_memory(&mem));
        let whole = ChainBytes::new(&descriptors, true, 1024);
        assert!(!whole.all_in_memory(&mem));
        assert_eq!(whole.remaining(), 1024, "checking consumed nothing");
    }
}
