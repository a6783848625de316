//! Guest RAM backed by transparent huge pages.
//!
//! KVM maps guest memory into the nested page tables lazily, one fault per
//! page the guest touches. With 4 KiB host pages a stock kernel's boot takes
//! tens of thousands of nested page faults; each is cheap on bare metal but
//! costs a full VM exit under nested virtualization. Host huge pages let KVM
//! map 2 MiB at a time, but only where the host address and the guest
//! physical address are aligned alike, so the RAM is mapped 2 MiB-aligned
//! here (plain `mmap` gives 4 KiB alignment) and marked `MADV_HUGEPAGE`.
//! When the kernel has transparent huge pages off, the memory simply stays
//! in 4 KiB pages. An inaccessible guard page on each side turns a stray
//! access past the RAM into a fault, and keeps the next mapping (a thread
//! stack, say) off the 2 MiB boundary, where a kernel with THP "always"
//! would back a mostly unused stack with a whole huge page.
//!
//! The RAM is also marked `MADV_DONTFORK` and `MADV_DONTDUMP`. securevm
//! forks helper processes (`securevm-luks`), one of them while the guest
//! runs; without DONTFORK each fork write-protected all guest RAM for
//! copy-on-write under the running vCPUs (slow, and the child would hold
//! the guest's memory until its exec). DONTDUMP keeps the guest's memory
//! out of securevm's core dumps.
//!
//! vm-memory does not own such a mapping, so [`GuestRam`] does: it unmaps
//! the RAM only once nothing else holds the guest memory or one of its
//! regions (a device thread still holding it makes it stay mapped until the
//! process exits, never unmapped under a user).

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemoryMmap, GuestRegionMmap};

use super::memory::{ram_regions, validate_size, MemoryError};

const HUGE_PAGE: usize = 2 << 20;
const GUARD: usize = 4096;

/// The guest's RAM and the host mappings behind it.
pub struct GuestRam {
    memory: Arc<GuestMemoryMmap>,
    regions: Vec<Arc<GuestRegionMmap>>,
    mappings: Vec<Mapping>,
}

impl GuestRam {
    /// `mem_size_bytes` of RAM laid out as `ram_regions` says.
    pub fn new(mem_size_bytes: u64) -> Result<GuestRam, MemoryError> {
        validate_size(mem_size_bytes)?;
        let allocation = |source| MemoryError::Mapping {
            size_mib: mem_size_bytes >> 20,
            source,
        };
        let mut mappings = Vec::new();
        let mut regions = Vec::new();
        for (guest_address, size) in ram_regions(mem_size_bytes) {
            let mapping = Mapping::new(size).map_err(allocation)?;
            // SAFETY: `mapping` is a live, page-aligned, read-write private
            // anonymous mapping of `size` bytes that `GuestRam` keeps until
            // no region built on it remains.
            let region = unsafe {
                MmapRegionBuilder::new(size)
                    .with_raw_mmap_pointer(mapping.addr.as_ptr())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            }
            .build()
            .map_err(|e| allocation(io::Error::other(e)))?;
            mappings.push(mapping);
            let region = GuestRegionMmap::new(region, guest_address)
                .ok_or_else(|| allocation(io::Error::other("guest region overflows")))?;
            regions.push(Arc::new(region));
        }
        let memory = GuestMemoryMmap::from_arc_regions(regions.clone())
            .map_err(|e| allocation(io::Error::other(e)))?;
        Ok(GuestRam {
            memory: Arc::new(memory),
            regions,
            mappings,
        })
    }

    /// The guest memory, to share with devices and vCPUs.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.memory
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        let memory = std::mem::replace(&mut self.memory, Arc::new(GuestMemoryMmap::new()));
        let collection_released = Arc::try_unwrap(memory).is_ok();
        let regions_released = self
            .regions
            .drain(..)
            .all(|region| Arc::try_unwrap(region).is_ok());
        if !(collection_released && regions_released) {
            log::warn!("guest memory still in use at teardown; it stays mapped until exit");
            std::mem::forget(std::mem::take(&mut self.mappings));
        }
    }
}

/// A 2 MiB-aligned anonymous mapping between two guard pages, unmapped
/// (guards too) when dropped.
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        let padded = len
            .checked_add(HUGE_PAGE + 2 * GUARD)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh private anonymous mapping at an address the
        // kernel picks; nothing else refers to it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = (start + GUARD).next_multiple_of(HUGE_PAGE);
        let head = aligned - GUARD - start;
        let kept_end = aligned + len + GUARD;
        let tail = start + padded - kept_end;
        // SAFETY: the trimmed ranges and the guards lie inside the mapping
        // just made and outside [aligned, aligned + len), the RAM.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap(kept_end as *mut libc::c_void, tail);
            }
            for guard in [aligned - GUARD, aligned + len] {
                if libc::mprotect(guard as *mut libc::c_void, GUARD, libc::PROT_NONE) != 0 {
                    let error = io::Error::last_os_error();
                    libc::munmap((aligned - GUARD) as *mut libc::c_void, len + 2 * GUARD);
                    return Err(error);
                }
            }
            // Best effort: without THP support this fails and the RAM
            // stays in small pages.
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            for advice in [libc::MADV_DONTFORK, libc::MADV_DONTDUMP] {
                if libc::madvise(aligned as *mut libc::c_void, len, advice) != 0 {
                    let error = io::Error::last_os_error();
                    libc::munmap((aligned - GUARD) as *mut libc::c_void, len + 2 * GUARD);
                    return Err(error);
                }
            }
        }
        let addr = NonNull::new(aligned as *mut u8).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { addr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let with_guards = self.addr.as_ptr() as usize - GUARD;
        // SAFETY: the mapping (and its guards) was made by `Mapping::new`
        // and, as `GuestRam` guarantees, no region refers to it any more.
        unsafe { libc::munmap(with_guards as *mut libc::c_void, self.len + 2 * GUARD) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_huge_page_aligned_and_usable() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let memory = ram.memory();
        assert_eq!(memory.num_regions(), 1);
        let region = memory.find_region(GuestAddress(0)).unwrap();
        assert_eq!(region.len(), 64 << 20);
        let host = memory.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(host % HUGE_PAGE, 0);
        memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x3f_fff0))
            .unwrap();
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x3f_fff0)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn ram_above_the_hole_gets_its_own_aligned_region() {
        let ram = GuestRam::new(4 << 30).unwrap();
        let memory = ram.memory();
        assert_eq!(memory.num_regions(), 2);
        for region in memory.iter() {
            let host = memory.get_host_address(region.start_addr()).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0);
        }
    }

    #[test]
    fn guard_pages_surround_the_ram() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let start = ram.memory().get_host_address(GuestAddress(0)).unwrap() as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let protection_at = |address: usize| {
            maps.lines().find_map(|line| {
                let (range, rest) = line.split_once(' ')?;
                let (from, to) = range.split_once('-')?;
                let from = usize::from_str_radix(from, 16).ok()?;
                let to = usize::from_str_radix(to, 16).ok()?;
                (from..to).contains(&address).then(|| rest[..4].to_string())
            })
        };
        assert_eq!(protection_at(start - 1).as_deref(), Some("---p"));
        assert_eq!(protection_at(start).as_deref(), Some("rw-p"));
        assert_eq!(protection_at(start + (8 << 20)).as_deref(), Some("---p"));
    }

    #[test]
    fn ram_is_neither_inherited_by_children_nor_dumped() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let start = ram.memory().get_host_address(GuestAddress(0)).unwrap() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{start:x}-");
        let flags = smaps
            .lines()
            .skip_while(|line| !line.starts_with(&header))
            .find_map(|line| line.strip_prefix("VmFlags:"))
            .expect("the RAM mapping and its VmFlags in smaps");
        let flags: Vec<&str> = flags.split_whitespace().collect();
        // dc: do not copy on fork; dd: do not include in core dumps.
        assert!(flags.contains(&"dc"), "{flags:?}");
        assert!(flags.contains(&"dd"), "{flags:?}");
    }

    #[test]
    fn memory_still_shared_at_teardown_stays_mapped() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let kept = ram.memory().clone();
        drop(ram);
        kept.write_obj(7u8, GuestAddress(0x1000)).unwrap();
        assert_eq!(kept.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 7);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(GuestRam::new(0), Err(MemoryError::InvalidSize(0))));
        assert!(matches!(
            GuestRam::new(4097),
            Err(MemoryError::InvalidSize(4097))
        ));
    }
}
