//! The one way securevm takes its locks: a poisoned lock hands back its
//! data instead of failing.
//!
//! A lock is poisoned when a thread panicked while holding it. Release
//! builds use `panic = "abort"`, so there the panic has already ended the
//! process and a poisoned lock cannot occur. In tests a panic unwinds (one
//! test thread fails), and recovering the data is what the other threads
//! want: the state stays as consistent as the panicking thread left it,
//! which every holder of these locks keeps valid between statements.

use std::sync::{LockResult, Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering its data if it is poisoned.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unpoisoned()
}

/// Recovers the guard from a poisoned [`LockResult`]: for `RwLock`
/// guards and `Condvar` waits, which return one too.
pub trait Unpoisoned<Guard> {
    fn unpoisoned(self) -> Guard;
}

impl<Guard> Unpoisoned<Guard> for LockResult<Guard> {
    fn unpoisoned(self) -> Guard {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, RwLock};
    use std::time::Duration;

    fn poison<T: Send + Sync + 'static>(shared: Arc<Mutex<T>>) {
        let result = std::thread::spawn(move || {
            let _guard = shared.lock().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(result.is_err());
    }

    #[test]
    fn a_poisoned_mutex_gives_back_its_data() {
        let shared = Arc::new(Mutex::new(7));
        poison(shared.clone());
        assert!(shared.is_poisoned());
        *lock(&shared) += 1;
        assert_eq!(*lock(&shared), 8);
    }

    #[test]
    fn a_condvar_wait_on_a_poisoned_mutex_gives_back_its_guard() {
        let shared = Arc::new(Mutex::new(1));
        poison(shared.clone());
        let changed = Condvar::new();
        let (guard, timeout) = changed
            .wait_timeout(lock(&shared), Duration::from_millis(1))
            .unpoisoned();
        assert!(timeout.timed_out());
        assert_eq!(*guard, 1);
    }

    #[test]
    fn a_poisoned_rwlock_gives_back_its_data() {
        let shared = Arc::new(RwLock::new(3));
        let writer = shared.clone();
        let result = std::thread::spawn(move || {
            let _guard = writer.write().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(result.is_err());
        *shared.write().unpoisoned() += 1;
        assert_eq!(*shared.read().unpoisoned(), 4);
    }
}
