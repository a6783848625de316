//! Spreads the work of one large encrypted request (file I/O plus
//! AES-XTS) over the host's cores. One core encrypting at OpenSSL's speed
//! spends as long on the cipher as on copying the data, so a single
//! thread can never serve encrypted sectors at near the plain speed;
//! split into a few unit-aligned pieces done at once, it can.
//!
//! The workers are a rayon pool shared by every encrypted disk of the
//! process, created on first use. The VMM sets their confinement first
//! ([`set_worker_confinement`]) so that each worker installs its seccomp
//! filter before it does any work; a worker that cannot stops the process, since
//! an unfiltered thread would be a hole in the sandbox.

use std::io;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::block::ExtentRange;
use crate::confined::Confinement;

/// Requests smaller than this are served on the calling thread: handing
/// work to the pool costs a few microseconds.
pub const PARALLEL_MIN: usize = 128 * 1024;
/// At most this many workers, whatever the core count.
const MAX_WORKERS: usize = 4;

static WORKER_CONFINEMENT: OnceLock<Confinement> = OnceLock::new();
static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Every worker thread enters `confinement` first. Must be called before
/// the first encrypted request; later calls are ignored.
pub fn set_worker_confinement(confinement: Confinement) {
    // Only the first call counts; the pool may already exist otherwise.
    let _ = WORKER_CONFINEMENT.set(confinement);
}

/// Creates the pool now (e.g. before the process's own seccomp filter
/// forbids creating threads). Without it the pool appears on first use.
pub fn start_workers() {
    pool();
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cores.min(MAX_WORKERS);
        if workers < 2 {
            return None;
        }
        let confinement = WORKER_CONFINEMENT
            .get()
            .copied()
            .unwrap_or(Confinement::Unfiltered);
        rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|index| format!("disk-crypto-{index}"))
            .start_handler(move |_| {
                if let Err(e) = confinement.enter() {
                    log::error!("disk crypto worker: {e}; stopping");
                    std::process::abort();
                }
            })
            .build()
            .map_err(|e| log::warn!("no disk crypto workers ({e}); encrypting on one thread"))
            .ok()
    })
    .as_ref()
}

/// Calls `work(start, piece)` for unit-aligned pieces of `buf` that
/// together cover it, in parallel when `buf` is large, and returns the
/// first error. `start` is the piece's offset in `buf`.
pub fn for_each_piece<F>(buf: &mut [u8], unit: usize, work: F) -> io::Result<()>
where
    F: Fn(usize, &mut [u8]) -> io::Result<()> + Sync,
{
    match piece_len(buf.len(), unit).zip(pool()) {
        Some((piece, pool)) => pool.install(|| {
            buf.par_chunks_mut(piece)
                .enumerate()
                .try_for_each(|(index, chunk)| work(index * piece, chunk))
        }),
        None => work(0, buf),
    }
}

/// Like [`for_each_piece`] for work that reads `input` and fills the
/// matching piece of `output` (same length).
pub fn for_each_piece_pair<F>(
    input: &[u8],
    output: &mut [u8],
    unit: usize,
    work: F,
) -> io::Result<()>
where
    F: Fn(usize, &[u8], &mut [u8]) -> io::Result<()> + Sync,
{
    if input.len() != output.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "input and output differ in length",
        ));
    }
    match piece_len(input.len(), unit).zip(pool()) {
        Some((piece, pool)) => pool.install(|| {
            input
                .par_chunks(piece)
                .zip(output.par_chunks_mut(piece))
                .enumerate()
                .try_for_each(|(index, (from, to))| work(index * piece, from, to))
        }),
        None => work(0, input, output),
    }
}

/// Calls `work(start, piece)` for consecutive unit-aligned pieces of the
/// guest buffers `range` that together cover it, in parallel when the
/// range is large; `start` is the piece's offset in the range. Returns
/// the first error.
pub fn for_each_extent_piece<F>(range: ExtentRange<'_>, unit: usize, work: F) -> io::Result<()>
where
    F: Fn(u64, ExtentRange<'_>) -> io::Result<()> + Sync,
{
    let pieces = range.split::<MAX_WORKERS>(extent_pieces(range.len, unit), unit);
    match pool() {
        Some(pool) if pieces.iter().flatten().count() > 1 => pool.install(|| {
            pieces
                .par_iter()
                .flatten()
                .try_for_each(|(start, piece)| work(*start, *piece))
        }),
        _ => pieces
            .iter()
            .flatten()
            .try_for_each(|(start, piece)| work(*start, *piece)),
    }
}

/// Like [`for_each_extent_piece`], also handing each piece the matching
/// part of `output`, which must be as long as `range`.
pub fn for_each_extent_piece_with<F>(
    range: ExtentRange<'_>,
    output: &mut [u8],
    unit: usize,
    work: F,
) -> io::Result<()>
where
    F: Fn(u64, ExtentRange<'_>, &mut [u8]) -> io::Result<()> + Sync,
{
    if output.len() != range.len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "output and guest buffers differ in length",
        ));
    }
    let pieces = range.split::<MAX_WORKERS>(extent_pieces(range.len, unit), unit);
    let mut jobs: [Option<(u64, ExtentRange<'_>, &mut [u8])>; MAX_WORKERS] =
        std::array::from_fn(|_| None);
    let mut rest = output;
    for (job, (start, piece)) in jobs.iter_mut().zip(pieces.into_iter().flatten()) {
        let (mine, others) = std::mem::take(&mut rest).split_at_mut(piece.len);
        *job = Some((start, piece, mine));
        rest = others;
    }
    let run = |job: &mut Option<(u64, ExtentRange<'_>, &mut [u8])>| match job {
        Some((start, piece, out)) => work(*start, *piece, out),
        None => Ok(()),
    };
    match pool() {
        Some(pool) if jobs.iter().flatten().count() > 1 => {
            pool.install(|| jobs.par_iter_mut().try_for_each(run))
        }
        _ => jobs.iter_mut().try_for_each(run),
    }
}

/// How many pieces a `len`-byte range of guest buffers is cut into.
fn extent_pieces(len: usize, unit: usize) -> usize {
    match pool() {
        Some(pool) if len >= PARALLEL_MIN && unit > 0 => {
            pool.current_num_threads().min(len / unit).max(1)
        }
        _ => 1,
    }
}

/// The piece length for a `len`-byte request, or `None` to stay on one
/// thread: one piece per worker, a whole number of units each.
fn piece_len(len: usize, unit: usize) -> Option<usize> {
    if len < PARALLEL_MIN || unit == 0 {
        return None;
    }
    let workers = pool()?.current_num_threads();
    let units = len.div_ceil(unit);
    let piece = units.div_ceil(workers) * unit;
    (piece < len).then_some(piece)
}

#[cfg(test)]
mod tests {
    // Test fixtures narrow small known values; a wrong one fails the test.
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn pieces_cover_the_buffer_once_and_stay_unit_aligned() {
        for (len, unit) in [
            (1 << 20, 4096),
            (PARALLEL_MIN, 512),
            (4096, 4096),
            (3 * 4096, 4096),
        ] {
            let mut buf = vec![0u8; len];
            let seen = Mutex::new(Vec::new());
            for_each_piece(&mut buf, unit, |start, piece| {
                assert_eq!(start % unit, 0);
                assert_eq!(piece.len() % unit, 0);
                piece.iter_mut().for_each(|b| *b += 1);
                seen.lock().unwrap().push((start, piece.len()));
                Ok(())
            })
            .unwrap();
            assert!(buf.iter().all(|&b| b == 1), "every byte exactly once");
            let mut pieces = seen.into_inner().unwrap();
            pieces.sort();
            let mut next = 0;
            for (start, piece_len) in pieces {
                assert_eq!(start, next);
                next += piece_len;
            }
            assert_eq!(next, len);
        }
    }

    #[test]
    fn paired_pieces_line_up() {
        let input: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let mut output = vec![0u8; input.len()];
        for_each_piece_pair(&input, &mut output, 4096, |start, from, to| {
            assert_eq!(from.len(), to.len());
            assert_eq!(from[0], (start % 253) as u8);
            to.copy_from_slice(from);
            Ok(())
        })
        .unwrap();
        assert_eq!(input, output);
        assert!(for_each_piece_pair(&input, &mut output[1..], 4096, |_, _, _| Ok(())).is_err());
    }

    #[test]
    fn the_first_error_is_returned() {
        let mut buf = vec![0u8; 1 << 20];
        let calls = AtomicUsize::new(0);
        let result = for_each_piece(&mut buf, 4096, |start, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            if start > 0 {
                Err(io::Error::other("disk gone"))
            } else {
                Ok(())
            }
        });
        let multi_core = pool().is_some();
        assert_eq!(result.is_err(), multi_core);
        assert!(calls.load(Ordering::Relaxed) >= 1);
    }
}
