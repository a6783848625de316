//! A backend for a medium that can vanish under the guest: a USB stick
//! pulled from the PC without an eject.
//!
//! The guest keeps its virtio-blk device until it ejects the hot-plug slot,
//! which takes a round trip through its ACPI code and may never happen. From
//! the moment of the pull every request must fail at once (IOERR) without
//! touching the device, so that nothing waits on hardware that is gone and
//! nothing written after the pull is reported as stored. [`PullSwitch`] is
//! the handle the hot-plug code keeps: pulling it flips the backend into
//! that state and closes the medium's file as soon as no request is using
//! it, which also releases the kernel's hold on the vanished disk.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, TryLockError};

use super::{BlockBackend, ExtentRange};

struct Shared {
    pulled: AtomicBool,
    inner: RwLock<Option<Box<dyn BlockBackend>>>,
}

impl Shared {
    /// Drops the inner backend unless a request is using it right now (that
    /// request's end, or the next one, drops it instead).
    fn release(&self) {
        match self.inner.try_write() {
            Ok(mut inner) => drop(inner.take()),
            Err(TryLockError::Poisoned(poisoned)) => drop(poisoned.into_inner().take()),
            Err(TryLockError::WouldBlock) => {}
        }
    }
}

/// Serves `inner` until the switch is pulled, then fails every request.
pub struct PullableBackend {
    shared: Arc<Shared>,
    capacity_bytes: u64,
    read_only: bool,
    block_size: u32,
}

/// Pulls a [`PullableBackend`]'s medium away; cheap to clone.
#[derive(Clone)]
pub struct PullSwitch(Arc<Shared>);

impl PullSwitch {
    /// From now on every request fails; the medium's file is closed as soon
    /// as no request holds it. Never waits for the device.
    pub fn pull(&self) {
        self.0.pulled.store(true, Ordering::Release);
        self.0.release();
    }

    pub fn is_pulled(&self) -> bool {
        self.0.pulled.load(Ordering::Acquire)
    }
}

fn pulled_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the medium was removed from the host",
    )
}

impl PullableBackend {
    pub fn new(inner: Box<dyn BlockBackend>) -> (Self, PullSwitch) {
        let capacity_bytes = inner.capacity_bytes();
        let read_only = inner.read_only();
        let block_size = inner.block_size();
        let shared = Arc::new(Shared {
            pulled: AtomicBool::new(false),
            inner: RwLock::new(Some(inner)),
        });
        let backend = Self {
            shared: shared.clone(),
            capacity_bytes,
            read_only,
            block_size,
        };
        (backend, PullSwitch(shared))
    }

    /// Runs `request` on the inner backend unless the medium was pulled.
    fn serve<T>(&self, request: impl FnOnce(&dyn BlockBackend) -> T) -> Result<T, io::Error> {
        if self.shared.pulled.load(Ordering::Acquire) {
            self.shared.release();
            return Err(pulled_error());
        }
        let inner = match self.shared.inner.read() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let served = match inner.as_deref() {
            Some(backend) => Ok(request(backend)),
            None => Err(pulled_error()),
        };
        drop(inner);
        // A pull during this request could not close the medium; the guest
        // may never send another request, so close it now rather than keep
        // the vanished disk (and an encrypted medium's key) open.
        if self.shared.pulled.load(Ordering::Acquire) {
            self.shared.release();
        }
        served
    }
}

impl BlockBackend for PullableBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.serve(|inner| inner.read_at(offset, buf))?
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.serve(|inner| inner.write_at(offset, buf))?
    }

    fn read_to_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        match self.serve(|inner| inner.read_to_guest(offset, range)) {
            Ok(served) => served,
            Err(pulled) => Some(Err(pulled)),
        }
    }

    fn write_from_guest(&self, offset: u64, range: ExtentRange<'_>) -> Option<io::Result<()>> {
        match self.serve(|inner| inner.write_from_guest(offset, range)) {
            Ok(served) => served,
            Err(pulled) => Some(Err(pulled)),
        }
    }

    fn flush(&self) -> io::Result<()> {
        // A flush after the pull must fail: the guest may not believe that
        // anything it wrote since its last completed flush reached the stick.
        self.serve(|inner| inner.flush())?
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts calls and its own drop; once `pull_during_read` holds a
    /// switch, a read pulls it, as the hot-plug thread does when the stick
    /// leaves while an I/O thread is using it.
    struct Probe {
        calls: Arc<AtomicUsize>,
        dropped: Arc<AtomicBool>,
        pull_during_read: Arc<std::sync::OnceLock<PullSwitch>>,
    }

    impl BlockBackend for Probe {
        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(switch) = self.pull_during_read.get() {
                switch.pull();
            }
            buf.fill(0xab);
            Ok(())
        }
        fn write_at(&self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn capacity_bytes(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
        fn block_size(&self) -> u32 {
            4096
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    struct Probed {
        backend: PullableBackend,
        switch: PullSwitch,
        calls: Arc<AtomicUsize>,
        dropped: Arc<AtomicBool>,
        pull_during_read: Arc<std::sync::OnceLock<PullSwitch>>,
    }

    fn probe() -> Probed {
        let calls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let pull_during_read = Arc::new(std::sync::OnceLock::new());
        let (backend, switch) = PullableBackend::new(Box::new(Probe {
            calls: calls.clone(),
            dropped: dropped.clone(),
            pull_during_read: pull_during_read.clone(),
        }));
        Probed {
            backend,
            switch,
            calls,
            dropped,
            pull_during_read,
        }
    }

    #[test]
    fn serves_the_medium_until_pulled_then_fails_everything_without_touching_it() {
        let Probed {
            backend,
            switch,
            calls,
            dropped,
            ..
        } = probe();
        assert_eq!(
            (backend.capacity_bytes(), backend.block_size()),
            (1 << 20, 4096)
        );
        let mut buf = [0u8; 512];
        backend.read_at(0, &mut buf).unwrap();
        assert_eq!(buf[0], 0xab);
        backend.write_at(0, &buf).unwrap();
        backend.flush().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        switch.pull();
        assert!(switch.is_pulled());
        assert!(
            dropped.load(Ordering::SeqCst),
            "the medium's file is closed"
        );
        let error = backend.read_at(0, &mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotConnected);
        assert!(backend.write_at(0, &buf).is_err());
        assert!(backend.flush().is_err(), "no flush succeeds after a pull");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "nothing reached the medium"
        );
        // Sizes stay what the guest was told.
        assert_eq!(backend.capacity_bytes(), 1 << 20);
    }

    #[test]
    fn a_pull_during_the_last_request_closes_the_medium_when_it_ends() {
        let Probed {
            backend,
            switch,
            dropped,
            pull_during_read,
            ..
        } = probe();
        assert!(pull_during_read.set(switch).is_ok());
        let mut buf = [0u8; 512];
        backend.read_at(0, &mut buf).unwrap();
        assert!(
            dropped.load(Ordering::SeqCst),
            "closed without waiting for a request the guest may never send"
        );
    }

    #[test]
    fn a_pull_during_a_request_closes_the_medium_after_that_request() {
        let Probed {
            backend,
            switch,
            dropped,
            ..
        } = probe();
        let backend = Arc::new(backend);
        let in_request = backend.shared.inner.read().unwrap();
        switch.pull();
        assert!(
            !dropped.load(Ordering::SeqCst),
            "the request in progress keeps its medium"
        );
        assert!(backend.flush().is_err(), "later requests fail at once");
        drop(in_request);
        assert!(backend.flush().is_err());
        assert!(dropped.load(Ordering::SeqCst), "closed by the next request");
    }
}
