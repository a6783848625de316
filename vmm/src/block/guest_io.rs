//! A request's data buffers as runs of host-mapped guest memory, so a
//! backend can move sectors between its file and the guest without a
//! bounce copy: `preadv`/`pwritev` straight into guest pages, and the disk
//! cipher working in place there.
//!
//! Guest memory may change under us at any time (another vCPU, a DMA-ing
//! guest driver), so it is never turned into a Rust reference: extents are
//! raw pointers handed to system calls and to the cipher's FFI. A guest
//! that scribbles on its own buffer mid-request only garbles its own data.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `iovec`s per `preadv`/`pwritev` call; longer lists take several calls.
const IOV_BATCH: usize = 64;

/// A run of guest memory, mapped in this process, that a request moves
/// data to or from.
#[derive(Debug, Clone, Copy)]
pub struct GuestExtent {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an extent points into guest RAM, which stays mapped while the VM
// exists and is shared with the guest anyway; backends only touch it
// through system calls and the cipher's raw-pointer FFI, never through
// references, so handing it to another thread (a disk crypto worker) adds
// no data race that the guest could not already cause.
unsafe impl Send for GuestExtent {}
// SAFETY: as for `Send`: shared access goes through raw pointers only.
unsafe impl Sync for GuestExtent {}

impl GuestExtent {
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for as long
    /// as the extent is used (guest memory of the running VM).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The extent without its first `skip` bytes and cut to `len` bytes
    /// (both clamped to what it has).
    pub fn trimmed(&self, skip: usize, len: usize) -> Self {
        let skip = skip.min(self.len);
        Self {
            // SAFETY: `skip` is at most `self.len`, so the pointer stays
            // inside (or one past) the extent.
            ptr: unsafe { self.ptr.add(skip) },
            len: len.min(self.len - skip),
        }
    }
}

/// `len` bytes of a list of extents starting `skip` bytes into the first:
/// the share of one request that one worker moves.
#[derive(Debug, Clone, Copy)]
pub struct ExtentRange<'a> {
    pub extents: &'a [GuestExtent],
    pub skip: usize,
    pub len: usize,
}

impl<'a> ExtentRange<'a> {
    /// All of `extents`.
    pub fn whole(extents: &'a [GuestExtent]) -> Self {
        Self {
            extents,
            skip: 0,
            len: extents.iter().map(GuestExtent::len).sum(),
        }
    }

    /// The `len` bytes of this range from byte `from` on.
    pub fn part(&self, from: usize, len: usize) -> Self {
        Self {
            extents: self.extents,
            skip: self.skip + from,
            len: len.min(self.len.saturating_sub(from)),
        }
    }

    /// The extents of the range, trimmed to it, in order; empty ones left out.
    pub fn iter(&self) -> impl Iterator<Item = GuestExtent> + 'a {
        let mut skip = self.skip;
        let mut left = self.len;
        self.extents.iter().filter_map(move |extent| {
            if left == 0 {
                return None;
            }
            let part = extent.trimmed(skip, left);
            skip = skip.saturating_sub(extent.len());
            left -= part.len();
            (!part.is_empty()).then_some(part)
        })
    }

    /// Splits the range into at most `N` consecutive pieces of about equal
    /// length, cut at multiples of `unit` bytes from the range's start.
    pub fn split<const N: usize>(&self, pieces: usize, unit: usize) -> [Option<(u64, Self)>; N] {
        let mut out = [None; N];
        let pieces = pieces.clamp(1, N);
        let unit = unit.max(1);
        let piece_len = self.len.div_ceil(pieces).next_multiple_of(unit);
        let mut index = 0;
        let mut skip = self.skip;
        let mut done = 0;
        for slot in out.iter_mut() {
            if done >= self.len {
                break;
            }
            while index < self.extents.len() && skip >= self.extents[index].len() {
                skip -= self.extents[index].len();
                index += 1;
            }
            let len = piece_len.min(self.len - done);
            let piece = Self {
                extents: &self.extents[index..],
                skip,
                len,
            };
            *slot = Some((done as u64, piece));
            done += len;
            skip += len;
        }
        out
    }
}

/// Fills the extents of `range` from `file` at `offset`, all or an error.
pub fn read_exact_at(file: &File, range: ExtentRange<'_>, offset: u64) -> io::Result<()> {
    transfer(file, range, offset, Direction::FromFile)
}

/// Writes the extents of `range` to `file` at `offset`, all or an error.
pub fn write_all_at(file: &File, range: ExtentRange<'_>, offset: u64) -> io::Result<()> {
    transfer(file, range, offset, Direction::ToFile)
}

#[derive(Clone, Copy)]
enum Direction {
    FromFile,
    ToFile,
}

fn transfer(
    file: &File,
    range: ExtentRange<'_>,
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < range.len {
        let rest = range.part(done, range.len - done);
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let mut count: libc::c_int = 0;
        for (slot, extent) in iovecs.iter_mut().zip(rest.iter()) {
            *slot = libc::iovec {
                iov_base: extent.as_ptr().cast(),
                iov_len: extent.len(),
            };
            count += 1;
        }
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let fd = file.as_raw_fd();
        // SAFETY: every iovec is a live extent of guest memory (see
        // `GuestExtent::new`), `count` of them are initialised, and the
        // kernel checks the ranges itself.
        let moved = unsafe {
            match direction {
                Direction::FromFile => libc::preadv(fd, iovecs.as_ptr(), count, at),
                Direction::ToFile => libc::pwritev(fd, iovecs.as_ptr(), count, at),
            }
        };
        match moved {
            0 => {
                return Err(match direction {
                    Direction::FromFile => io::Error::from(io::ErrorKind::UnexpectedEof),
                    Direction::ToFile => io::Error::from(io::ErrorKind::WriteZero),
                })
            }
            moved if moved < 0 => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            moved => done += moved as usize,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn extents_of(buffers: &mut [Vec<u8>]) -> Vec<GuestExtent> {
        buffers
            .iter_mut()
            // SAFETY: the buffers outlive every use of the extents below.
            .map(|buffer| unsafe { GuestExtent::new(buffer.as_mut_ptr(), buffer.len()) })
            .collect()
    }

    fn scratch_file(name: &str, content: &[u8]) -> File {
        let path =
            std::env::temp_dir().join(format!("securevm-guest-io-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn ranges_trim_and_split_at_unit_multiples() {
        let mut buffers = vec![vec![0u8; 100], vec![0u8; 0], vec![0u8; 300], vec![0u8; 24]];
        let extents = extents_of(&mut buffers);
        let range = ExtentRange {
            extents: &extents,
            skip: 50,
            len: 360,
        };
        let lens: Vec<usize> = range.iter().map(|e| e.len()).collect();
        assert_eq!(lens, [50, 300, 10]);
        let tail: Vec<usize> = range.part(100, 1000).iter().map(|e| e.len()).collect();
        assert_eq!(tail, [250, 10], "a part stops where the range does");
        let pieces = range.split::<4>(3, 64);
        let pieces: Vec<(u64, Vec<usize>)> = pieces
            .iter()
            .flatten()
            .map(|(at, piece)| (*at, piece.iter().map(|e| e.len()).collect()))
            .collect();
        assert_eq!(
            pieces,
            [(0, vec![50, 78]), (128, vec![128]), (256, vec![94, 10])]
        );
    }

    #[test]
    fn vectored_reads_and_writes_cross_many_extents() {
        let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let file = scratch_file("rw", &content);
        // More extents than one preadv call takes.
        let mut buffers: Vec<Vec<u8>> = (0..150).map(|i| vec![0u8; 1 + i % 7]).collect();
        let extents = extents_of(&mut buffers);
        let range = ExtentRange::whole(&extents);
        read_exact_at(&file, range, 1000).unwrap();
        let read: Vec<u8> = buffers.concat();
        assert_eq!(read, content[1000..1000 + read.len()]);

        buffers
            .iter_mut()
            .for_each(|b| b.iter_mut().for_each(|x| *x ^= 0xff));
        write_all_at(&file, ExtentRange::whole(&extents), 5).unwrap();
        let mut back = vec![0u8; read.len()];
        file.read_exact_at(&mut back, 5).unwrap();
        assert_eq!(back, buffers.concat());
    }

    #[test]
    fn reading_past_the_end_of_the_file_fails() {
        let file = scratch_file("short", &[1u8; 100]);
        let mut buffers = vec![vec![0u8; 64], vec![0u8; 64]];
        let extents = extents_of(&mut buffers);
        let error = read_exact_at(&file, ExtentRange::whole(&extents), 0).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
