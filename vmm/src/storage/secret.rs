//! [`SecretBuf`]: a fixed-size heap buffer for key material. Its pages
//! are locked in RAM (never swapped) and left out of core dumps, and the
//! bytes are zeroed when it is dropped. It never prints its contents.

use std::fmt;

use zeroize::Zeroize;

pub struct SecretBuf {
    bytes: Box<[u8]>,
    locked: bool,
}

impl SecretBuf {
    /// A zero-filled secret of `len` bytes. Locking is best effort: when
    /// RLIMIT_MEMLOCK forbids it the buffer still works, a debug line
    /// says so, and [`SecretBuf::is_locked`] reports it.
    pub fn zeroed(len: usize) -> Self {
        let mut bytes = vec![0u8; len].into_boxed_slice();
        let locked = protect(&mut bytes);
        Self { bytes, locked }
    }

    /// Copy `data` into a new secret. The caller remains responsible for
    /// wiping its own copy.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut secret = Self::zeroed(data.len());
        secret.bytes.copy_from_slice(data);
        secret
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the pages are locked in memory.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Shorten to `len` bytes, zeroing the cut-off tail.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.bytes.len() {
            return;
        }
        let mut shorter = Self::zeroed(len);
        shorter.bytes.copy_from_slice(&self.bytes[..len]);
        std::mem::swap(self, &mut shorter);
    }
}

/// mlock the buffer and mark it MADV_DONTDUMP. Returns whether mlock
/// worked.
fn protect(bytes: &mut [u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let (start, len) = page_span(bytes);
    // SAFETY: the span covers only pages that hold part of `bytes`, which
    // we own; mlock and madvise change residency and dump flags, not
    // contents.
    let locked = unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) } == 0;
    if !locked {
        log::debug!("could not lock key memory (RLIMIT_MEMLOCK); it may be swapped");
    }
    // SAFETY: as above; MADV_DONTDUMP only affects core dumps.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTDUMP) };
    locked
}

/// The page-aligned span of memory that contains `bytes`.
fn page_span(bytes: &[u8]) -> (usize, usize) {
    // SAFETY: sysconf has no memory effects.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|page| page.is_power_of_two())
        .unwrap_or(4096);
    let start = bytes.as_ptr() as usize & !(page - 1);
    let end = (bytes.as_ptr() as usize + bytes.len()).next_multiple_of(page);
    (start, end - start)
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked && !self.bytes.is_empty() {
            // SAFETY: unlocks exactly the range locked in `protect`, which
            // we still own.
            unsafe { libc::munlock(self.bytes.as_ptr().cast(), self.bytes.len()) };
        }
    }
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf({} bytes, redacted)", self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_bytes() {
        let secret = SecretBuf::from_slice(b"hunter2-hunter2");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("15 bytes"), "{shown}");
        assert_eq!(secret.as_bytes(), b"hunter2-hunter2");
    }

    #[test]
    fn memory_is_locked_when_the_limit_allows() {
        let secret = SecretBuf::zeroed(64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if limit.rlim_cur >= 8192 {
            assert!(secret.is_locked());
        }
    }

    #[test]
    fn truncate_keeps_the_prefix() {
        let mut secret = SecretBuf::from_slice(b"abcdef\n");
        secret.truncate(6);
        assert_eq!(secret.as_bytes(), b"abcdef");
        secret.truncate(10);
        assert_eq!(secret.len(), 6);
    }
}
