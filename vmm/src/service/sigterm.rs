//! SIGTERM, the signal systemd stops a service with and a host shutdown
//! sends every process, ends a running VM the way `securevm ctl shutdown`
//! does: the guest's ACPI power button, a bounded wait for it to power
//! off, then a forced stop; `vm-stop` is recorded by the usual path.
//!
//! The signal is blocked in every thread (the mask is set on the main
//! thread before it starts any other, and threads inherit it), so no
//! device thread's `epoll_wait` or vCPU's `KVM_RUN` is ever interrupted
//! by it, and one confined thread takes it with `sigwait`. Before the
//! first VM starts (login, disk unlock) that thread ends the process as the
//! signal's default action always did: there is no guest to power off.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::api::protocol::{
    ApiError, ShutdownOutcome, ShutdownReport, DEFAULT_SHUTDOWN_TIMEOUT_SECS,
};
use crate::api::{LiveVm, VmController};
use crate::confined::{self, Confinement, ThreadError};
use crate::seccomp::ThreadKind;
use crate::sync::lock;

/// How long the guest has to power off after SIGTERM unless `run
/// --stop-timeout` says otherwise: the same bound as a `ctl shutdown` that
/// names none. The unit's `TimeoutStopSec` is above it.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS);

/// What SIGTERM acts on.
pub trait Stoppable: Send + Sync {
    /// Presses the power button and waits up to `timeout` (see
    /// [`VmController::shutdown`]).
    fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ApiError>;
}

impl Stoppable for LiveVm {
    fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ApiError> {
        VmController::shutdown(self, timeout)
    }
}

/// Where the process is, as SIGTERM sees it.
#[derive(Clone)]
enum Target {
    /// No VM has run yet: SIGTERM ends the process.
    NoVmYet,
    Running(Arc<dyn Stoppable>),
    /// A VM stopped (the process is ending, or a rebooted guest is being
    /// built again): SIGTERM asks that it not be restarted, and shuts down
    /// the next VM if one starts all the same.
    Stopped,
}

static TARGET: Mutex<Target> = Mutex::new(Target::NoVmYet);
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The thread that takes SIGTERM, while a [`SigtermWatch`] runs it.
static WATCH_THREAD: Mutex<Option<libc::pthread_t>> = Mutex::new(None);

/// Makes `vm` what SIGTERM shuts down, or with `None` says the VM stopped.
/// A SIGTERM taken while no VM ran (a rebooted guest being built again
/// after `run_session` last looked) is acted on now: this VM is shut down.
pub fn set_target(vm: Option<Arc<dyn Stoppable>>) {
    let mut target = lock(&TARGET);
    *target = match vm {
        Some(vm) => Target::Running(vm),
        None => Target::Stopped,
    };
    if matches!(*target, Target::Running(_)) && stop_requested() {
        drop(target);
        signal_watch_thread();
    }
}

/// Sends SIGTERM to the watch thread alone, if one runs.
fn signal_watch_thread() {
    if let Some(thread) = *lock(&WATCH_THREAD) {
        // SAFETY: the thread is alive: WATCH_THREAD is cleared, under
        // this lock, before the thread is told to end and joined. SIGTERM
        // is blocked there and taken by sigwait.
        unsafe { libc::pthread_kill(thread, libc::SIGTERM) };
    }
}

/// Whether SIGTERM arrived since the VM started: a guest reboot then ends
/// securevm instead of starting the guest again (`--on-reboot restart`).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Acquire)
}

#[derive(Debug, thiserror::Error)]
pub enum SigtermError {
    #[error("blocking SIGTERM failed: {0}")]
    Mask(io::Error),
    #[error(transparent)]
    Thread(#[from] ThreadError),
}

/// The thread that takes SIGTERM; dropping it ends that thread. SIGTERM
/// stays blocked on the thread that started it: the run is over, and a
/// late SIGTERM then waits, unacted on, for the process to exit.
pub struct SigtermWatch {
    thread: Option<JoinHandle<()>>,
    done: Arc<AtomicBool>,
}

fn sigterm_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset only write the set they are given,
    // which is a valid, owned sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

impl SigtermWatch {
    /// Blocks SIGTERM on the calling thread, which must be the main thread
    /// before it starts any other (they inherit the mask), and starts the
    /// thread that waits for it, confined unless `seccomp` is off. A
    /// running guest gets `stop_timeout` to power off.
    pub fn start(seccomp: bool, stop_timeout: Duration) -> Result<SigtermWatch, SigtermError> {
        *lock(&TARGET) = Target::NoVmYet;
        STOP_REQUESTED.store(false, Ordering::Release);
        let set = sigterm_set();
        // SAFETY: changes only this thread's signal mask, from a valid set.
        let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if result != 0 {
            return Err(SigtermError::Mask(io::Error::from_raw_os_error(result)));
        }
        let done = Arc::new(AtomicBool::new(false));
        let thread_done = done.clone();
        let thread = confined::spawn(
            "sigterm",
            Confinement::new(ThreadKind::Signals, seccomp),
            move || loop {
                wait_for_sigterm();
                if thread_done.load(Ordering::Acquire) {
                    return;
                }
                on_sigterm(stop_timeout);
            },
        )?;
        *lock(&WATCH_THREAD) = Some(thread.as_pthread_t());
        Ok(SigtermWatch {
            thread: Some(thread),
            done,
        })
    }

    /// Sends SIGTERM to the watch thread alone.
    fn signal_thread(&self) {
        signal_watch_thread();
    }
}

impl Drop for SigtermWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        self.signal_thread();
        *lock(&WATCH_THREAD) = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_for_sigterm() {
    let set = sigterm_set();
    let mut signal = 0;
    // SAFETY: sigwait reads a valid set and writes one int; SIGTERM is
    // blocked in this thread (inherited), as sigwait requires.
    while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
}

fn on_sigterm(stop_timeout: Duration) {
    let target = lock(&TARGET).clone();
    match target {
        Target::NoVmYet => end_as_default(),
        Target::Stopped => {
            STOP_REQUESTED.store(true, Ordering::Release);
            log::info!("SIGTERM: the VM has stopped already; securevm ends");
        }
        Target::Running(vm) => {
            STOP_REQUESTED.store(true, Ordering::Release);
            super::notify::send("STOPPING=1\nSTATUS=SIGTERM: the guest is powering off");
            log::warn!(
                "SIGTERM: pressing the guest's power button; it has {} s to power off",
                stop_timeout.as_secs()
            );
            match vm.shutdown(stop_timeout) {
                Ok(report) => match report.outcome {
                    ShutdownOutcome::PoweredOff => {
                        log::info!("SIGTERM: the guest powered off in {:.1} s", report.seconds);
                    }
                    ShutdownOutcome::Forced => log::warn!(
                        "SIGTERM: the guest did not power off within {} s; securevm stopped it",
                        stop_timeout.as_secs()
                    ),
                    ShutdownOutcome::Stopped(why) => log::info!("SIGTERM: the VM stopped: {why}"),
                },
                Err(e) => log::warn!("SIGTERM: {e}"),
            }
        }
    }
}

/// Ends the process by SIGTERM's default action, as before securevm
/// handled the signal: unblocked on this thread and raised on it.
fn end_as_default() {
    let set = sigterm_set();
    // SAFETY: changes this thread's mask from a valid set, then sends the
    // signal to this thread; its default action ends the process.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::test_support::run_in_fresh_process;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::mpsc;

    const CHILD: &str = "SECUREVM_TEST_SIGTERM_CHILD";
    /// Not the default, so that the tests see `--stop-timeout` reach the VM.
    const STOP_TIMEOUT: Duration = Duration::from_secs(97);

    /// Records the shutdown it is asked for, as the running VM would be.
    struct FakeVm(Mutex<mpsc::Sender<Duration>>);

    impl Stoppable for FakeVm {
        fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ApiError> {
            lock(&self.0).send(timeout).unwrap();
            Ok(ShutdownReport {
                outcome: ShutdownOutcome::PoweredOff,
                seconds: 0.1,
            })
        }
    }

    #[test]
    fn sigterm_shuts_the_running_vm_down_under_the_threads_filter() {
        run_in_fresh_process(
            "service::sigterm::tests::sigterm_child_with_a_running_vm",
            CHILD,
        );
    }

    #[test]
    #[ignore = "run by sigterm_shuts_the_running_vm_down_under_the_threads_filter"]
    fn sigterm_child_with_a_running_vm() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let watch = SigtermWatch::start(true, STOP_TIMEOUT).unwrap();
        let (sender, shutdowns) = mpsc::channel();
        set_target(Some(Arc::new(FakeVm(Mutex::new(sender)))));
        assert!(!stop_requested());
        watch.signal_thread();
        let timeout = shutdowns.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(timeout, STOP_TIMEOUT);
        assert!(stop_requested());
        // Once the VM stopped, another SIGTERM neither ends the process
        // nor reaches the old VM.
        set_target(None);
        watch.signal_thread();
        std::thread::sleep(Duration::from_millis(200));
        assert!(shutdowns.try_recv().is_err());
        // The SIGTERM taken between two VMs (a guest reboot under
        // --on-reboot restart being built again) shuts the next one down
        // as soon as it runs, rather than being lost.
        let (sender, next_shutdowns) = mpsc::channel();
        set_target(Some(Arc::new(FakeVm(Mutex::new(sender)))));
        let timeout = next_shutdowns
            .recv_timeout(Duration::from_secs(10))
            .expect("the SIGTERM taken between two VMs was lost");
        assert_eq!(timeout, STOP_TIMEOUT);
        // Drop ends and joins the thread.
        drop(watch);
    }

    #[test]
    fn sigterm_while_a_vm_starts_shuts_it_down_once_it_runs() {
        run_in_fresh_process(
            "service::sigterm::tests::sigterm_child_while_a_vm_starts",
            CHILD,
        );
    }

    #[test]
    #[ignore = "run by sigterm_while_a_vm_starts_shuts_it_down_once_it_runs"]
    fn sigterm_child_while_a_vm_starts() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let watch = SigtermWatch::start(true, STOP_TIMEOUT).unwrap();
        super::super::vm_starting();
        watch.signal_thread();
        // Still alive: the signal was taken, not acted on by default.
        std::thread::sleep(Duration::from_millis(200));
        assert!(stop_requested());
        let (sender, shutdowns) = mpsc::channel();
        set_target(Some(Arc::new(FakeVm(Mutex::new(sender)))));
        let timeout = shutdowns
            .recv_timeout(Duration::from_secs(10))
            .expect("the SIGTERM taken while the VM started was lost");
        assert_eq!(timeout, STOP_TIMEOUT);
        drop(watch);
    }

    #[test]
    fn sigterm_before_any_vm_ends_the_process_by_the_signal() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "service::sigterm::tests::sigterm_child_before_any_vm",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert_eq!(
            child.status.signal(),
            Some(libc::SIGTERM),
            "{}\n{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
    }

    #[test]
    #[ignore = "run by sigterm_before_any_vm_ends_the_process_by_the_signal"]
    fn sigterm_child_before_any_vm() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let watch = SigtermWatch::start(true, STOP_TIMEOUT).unwrap();
        watch.signal_thread();
        std::thread::sleep(Duration::from_secs(10));
        // Reaching here means the signal did not end the process: the
        // parent sees a normal exit and fails.
    }
}
