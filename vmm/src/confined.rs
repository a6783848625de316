//! The one way securevm starts a thread: [`spawn`] names it, has it
//! install the seccomp filter of its [`ThreadKind`] before anything else
//! runs on it, and returns only once the filter is in place. A thread that
//! cannot confine itself never runs its body, and whoever started it gets
//! a typed error saying why, so no thread ever runs unfiltered by accident
//! and no caller has to write (or forget) that step itself.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::seccomp::{self, SeccompError, ThreadKind};

/// What a thread confines itself to when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// The seccomp filter of this kind of thread.
    Seccomp(ThreadKind),
    /// No filter: `--no-seccomp` (for debugging), and tests.
    Unfiltered,
}

impl Confinement {
    /// `kind`'s filter, unless `seccomp` is off (`--no-seccomp`).
    pub fn new(kind: ThreadKind, seccomp: bool) -> Self {
        if seccomp {
            Confinement::Seccomp(kind)
        } else {
            Confinement::Unfiltered
        }
    }

    /// Confines the calling thread. Only for threads securevm does not
    /// start itself (the disk crypto pool's workers, started by rayon);
    /// every other thread is started by [`spawn`].
    pub fn enter(self) -> Result<(), SeccompError> {
        match self {
            Confinement::Seccomp(kind) => seccomp::install(kind),
            Confinement::Unfiltered => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("starting thread {name} failed: {source}")]
    Spawn { name: String, source: io::Error },
    #[error("thread {name} could not install its seccomp filter: {source}")]
    Confine { name: String, source: SeccompError },
    #[error("thread {name} died while starting")]
    Died { name: String },
}

/// Starts thread `name`, which enters `confinement` and then runs `body`.
/// Returns once the filter is in place, or the reason it is not (the
/// thread has then ended without running `body`).
pub fn spawn<F>(
    name: impl Into<String>,
    confinement: Confinement,
    body: F,
) -> Result<JoinHandle<()>, ThreadError>
where
    F: FnOnce() + Send + 'static,
{
    spawn_entering(name.into(), move || confinement.enter(), body)
}

/// [`spawn`] with the step that confines the thread given as `enter`.
fn spawn_entering<E, F>(name: String, enter: E, body: F) -> Result<JoinHandle<()>, ThreadError>
where
    E: FnOnce() -> Result<(), SeccompError> + Send + 'static,
    F: FnOnce() + Send + 'static,
{
    let (entered, entry) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let result = enter();
            let confined = result.is_ok();
            // The spawner waits for this; if it is gone, no one wants the
            // body run.
            if entered.send(result).is_ok() && confined {
                body();
            }
        })
        .map_err(|source| ThreadError::Spawn {
            name: name.clone(),
            source,
        })?;
    match entry.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(source)) => {
            let _ = handle.join();
            Err(ThreadError::Confine { name, source })
        }
        Err(_) => {
            let _ = handle.join();
            Err(ThreadError::Died { name })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_body_runs_on_the_named_thread_after_the_filter() {
        let (sender, receiver) = mpsc::channel();
        let handle = spawn("confined-test", Confinement::Unfiltered, move || {
            let name = std::thread::current().name().map(str::to_string);
            sender.send(name).unwrap();
        })
        .unwrap();
        handle.join().unwrap();
        assert_eq!(receiver.recv().unwrap().as_deref(), Some("confined-test"));
    }

    #[test]
    fn a_thread_that_cannot_confine_itself_never_runs_its_body() {
        let ran = Arc::new(AtomicBool::new(false));
        let ran_in_body = ran.clone();
        let error = spawn_entering(
            "refused".into(),
            || Err(SeccompError::Install("refused for the test".into())),
            move || ran_in_body.store(true, Ordering::SeqCst),
        )
        .err()
        .unwrap();
        assert!(
            matches!(&error, ThreadError::Confine { name, .. } if name == "refused"),
            "{error}"
        );
        assert!(error.to_string().contains("refused for the test"));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_thread_that_panics_while_confining_itself_is_reported() {
        let error = spawn_entering("dies".into(), || panic!("on purpose"), || {})
            .err()
            .unwrap();
        assert!(matches!(error, ThreadError::Died { .. }), "{error}");
    }

    #[test]
    fn the_filter_is_in_force_on_the_thread() {
        let (tid_sender, tid) = mpsc::channel();
        let (done, wait_for_done) = mpsc::channel::<()>();
        let handle = spawn(
            "confined-api",
            Confinement::Seccomp(ThreadKind::Api),
            move || {
                // SAFETY: gettid has no preconditions.
                tid_sender.send(unsafe { libc::gettid() }).unwrap();
                // Alive until the test has read its status.
                let _ = wait_for_done.recv();
            },
        )
        .unwrap();
        let tid = tid.recv().unwrap();
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        drop(done);
        handle.join().unwrap();
        assert!(status.lines().any(|line| line == "Seccomp:\t2"), "{status}");
    }

    #[test]
    fn seccomp_off_means_unfiltered() {
        assert_eq!(
            Confinement::new(ThreadKind::Vcpu, false),
            Confinement::Unfiltered
        );
        assert_eq!(
            Confinement::new(ThreadKind::Vcpu, true),
            Confinement::Seccomp(ThreadKind::Vcpu)
        );
    }
}
