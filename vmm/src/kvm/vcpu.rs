//! vCPU threads: each runs `KVM_RUN` in a loop, hands port and MMIO exits
//! to the buses, and reports the exits it cannot handle (triple fault,
//! failed entry, internal error) with a register dump. The main thread
//! stops them by setting a flag and kicking them out of `KVM_RUN` with a
//! signal whose handler does nothing.
//!
//! [`VcpuControl`] pauses and resumes them (the control API, and the
//! smart-card removal monitor): a pause kicks every thread out of
//! `KVM_RUN` and parks it between two runs, so the guest continues exactly
//! where it stopped. A kick can arrive just before a thread enters
//! `KVM_RUN` and be lost, so a pause repeats it until every live thread is
//! parked. A pause (or lock) also closes the devices' [`IoGate`]: their
//! I/O threads finish the bounded unit in progress and take nothing new
//! from the guest until it is lifted.
//!
//! A pause or lock stays in force until it is lifted explicitly. If the
//! vCPUs or the device I/O do not stop in time, the request fails but the
//! VM stays held: a thread that is late parks as soon as it can.

use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::confined::{self, Confinement, ThreadError};
use crate::devices::bus::Bus;
use crate::devices::virtio::IoGate;
use crate::exit::{ExitNotifier, ExitReason};
use crate::sync::Unpoisoned;

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: ExitNotifier,
    pub stop: Arc<AtomicBool>,
    pub control: VcpuControl,
}

/// How long a parked vCPU sleeps before it looks at the stop flag again.
const PARK_RECHECK: Duration = Duration::from_millis(50);
/// How often a pause re-sends the kick to threads not yet parked.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VcpuControlError {
    #[error(
        "the vCPUs or device I/O did not all stop within {0:?}; the VM stays held \
         and what still runs stops as soon as it can"
    )]
    PauseTimedOut(Duration),
    #[error("the VM has no running vCPUs (it is stopping)")]
    NotRunning,
}

/// Pauses and resumes every vCPU of one VM; cheap to clone and share.
#[derive(Clone, Default)]
pub struct VcpuControl {
    shared: Arc<ControlShared>,
}

#[derive(Default)]
struct ControlShared {
    state: Mutex<ControlState>,
    changed: Condvar,
    /// Closed exactly while `paused || locked`, under `state`'s lock.
    io: IoGate,
}

#[derive(Default)]
struct ControlState {
    /// Paused by an operator (`ctl pause`).
    paused: bool,
    /// Locked because the session's credential went away (a pulled smart
    /// card). Independent of `paused`: an operator's resume cannot lift it.
    locked: bool,
    /// Threads parked in [`VcpuControl::park_while_paused`] right now.
    parked: usize,
    /// Threads still in their run loop, by pthread handle, so a pause can
    /// kick them. A handle leaves this list (under the lock) before its
    /// thread is joined, so a kick never reaches a joined thread.
    live: Vec<libc::pthread_t>,
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.shared.state.lock().unpoisoned()
    }

    /// The gate the devices' I/O threads work through; this control
    /// closes it while the VM is paused or locked.
    pub fn io_gate(&self) -> IoGate {
        self.shared.io.clone()
    }

    /// Stops every vCPU between two runs and the device I/O after its
    /// unit in progress, and returns once all have stopped. Pausing a
    /// paused VM does nothing. On timeout the pause stays in force.
    pub fn pause(&self, timeout: Duration) -> Result<(), VcpuControlError> {
        self.hold(timeout, |state| state.paused = true)
    }

    /// Lets parked vCPUs and device I/O run again unless the session is
    /// locked; resuming a running VM does nothing.
    pub fn resume(&self) {
        self.release(|state| state.paused = false);
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Like [`VcpuControl::pause`], for a locked session: the vCPUs stay
    /// stopped until [`VcpuControl::unlock_session`], whatever `resume`
    /// says meanwhile.
    pub fn lock_session(&self, timeout: Duration) -> Result<(), VcpuControlError> {
        self.hold(timeout, |state| state.locked = true)
    }

    /// Lifts the session lock; the vCPUs run unless also paused.
    pub fn unlock_session(&self) {
        self.release(|state| state.locked = false);
    }

    pub fn is_locked(&self) -> bool {
        self.lock().locked
    }

    /// Sets one reason to stop with `set`, kicks the vCPUs until all are
    /// parked and waits for the device I/O in progress. Nothing here
    /// undoes `set`: only [`VcpuControl::release`] does.
    fn hold(&self, timeout: Duration, set: fn(&mut ControlState)) -> Result<(), VcpuControlError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        if state.live.is_empty() {
            return Err(VcpuControlError::NotRunning);
        }
        set(&mut state);
        self.shared.io.close();
        while state.parked < state.live.len() {
            let now = Instant::now();
            if now >= deadline {
                return Err(VcpuControlError::PauseTimedOut(timeout));
            }
            for &thread in &state.live {
                // SAFETY: every handle in `live` belongs to a thread that has
                // not been joined (see `ControlState::live`); the kick's
                // handler does nothing.
                unsafe { libc::pthread_kill(thread, kick_signal()) };
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, KICK_INTERVAL.min(deadline - now))
                .unpoisoned()
                .0;
        }
        drop(state);
        if self.shared.io.wait_quiet(deadline) {
            Ok(())
        } else {
            Err(VcpuControlError::PauseTimedOut(timeout))
        }
    }

    /// Clears one reason to stop with `clear`; once none is left, the
    /// vCPUs and the device I/O go on.
    fn release(&self, clear: fn(&mut ControlState)) {
        let mut state = self.lock();
        clear(&mut state);
        if !state.paused && !state.locked {
            self.shared.io.open();
        }
        self.shared.changed.notify_all();
    }

    fn register(&self, thread: libc::pthread_t) {
        self.lock().live.push(thread);
    }

    fn unregister(&self, thread: libc::pthread_t) {
        let mut state = self.lock();
        state.live.retain(|&t| t != thread);
        self.shared.changed.notify_all();
    }

    /// Called by a vCPU thread between runs: parks it while the VM is
    /// paused, until resumed or stopped.
    fn park_while_paused(&self, stop: &AtomicBool) {
        let mut state = self.lock();
        if !state.paused && !state.locked {
            return;
        }
        state.parked += 1;
        self.shared.changed.notify_all();
        while (state.paused || state.locked) && !stop.load(Ordering::Acquire) {
            state = self
                .shared
                .changed
                .wait_timeout(state, PARK_RECHECK)
                .unpoisoned()
                .0;
        }
        state.parked -= 1;
    }
}

pub struct VcpuHandle {
    thread: JoinHandle<()>,
    control: VcpuControl,
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

#[derive(Debug, thiserror::Error)]
pub enum VcpuStartError {
    #[error("installing the vCPU kick signal handler failed: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
    #[error(transparent)]
    Thread(#[from] ThreadError),
}

/// The kick signal must interrupt `KVM_RUN` (EINTR), not kill the process.
fn install_kick_handler() -> Result<(), VcpuStartError> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(VcpuStartError::KickHandler);
    });
    result
}

/// Starts vCPU `index` on its own thread, in `confinement`.
pub fn spawn(
    index: u8,
    mut vcpu: VcpuFd,
    ctx: VcpuContext,
    confinement: Confinement,
) -> Result<VcpuHandle, VcpuStartError> {
    install_kick_handler()?;
    let control = ctx.control.clone();
    let thread = confined::spawn(format!("vcpu{index}"), confinement, move || {
        // SAFETY: pthread_self has no preconditions.
        let this_thread = unsafe { libc::pthread_self() };
        ctx.control.register(this_thread);
        let reason = run_loop(index, &mut vcpu, &ctx);
        ctx.control.unregister(this_thread);
        if let Some(reason) = reason {
            ctx.exit.request(reason);
        }
    })?;
    Ok(VcpuHandle { thread, control })
}

impl VcpuHandle {
    /// Kicks the thread until it has left its run loop, then joins it.
    /// The caller has already set the shared stop flag.
    pub fn stop(self) {
        while !self.thread.is_finished() {
            // Parked threads see the stop flag by themselves.
            // SAFETY: the pthread handle is valid until the thread is
            // joined below; the signal's handler does nothing.
            unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
            thread::sleep(Duration::from_millis(1));
        }
        self.control.unregister(self.thread.as_pthread_t());
        let _ = self.thread.join();
    }
}

/// Runs until the VM is stopped (`None`) or the vCPU hits an exit that
/// ends the VM (`Some(reason)`).
fn run_loop(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> Option<ExitReason> {
    let mut profile = ExitProfile::new(index);
    loop {
        ctx.control.park_while_paused(&ctx.stop);
        if ctx.stop.load(Ordering::Acquire) {
            return None;
        }
        match vcpu.run() {
            Ok(exit) => match profile.record(exit) {
                VcpuExit::IoIn(port, data) => {
                    if !ctx.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                VcpuExit::IoOut(port, data) => {
                    ctx.pio.write(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !ctx.mmio.read(addr, data) {
                        log::debug!("vcpu{index}: read of unmapped MMIO {addr:#x}");
                        data.fill(0xff);
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !ctx.mmio.write(addr, data) {
                        log::debug!("vcpu{index}: write to unmapped MMIO {addr:#x}");
                    }
                }
                VcpuExit::Shutdown => {
                    return Some(crash(index, vcpu, "triple fault (KVM_EXIT_SHUTDOWN)"));
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    let what =
                        format!("VM entry failed (hardware reason {reason:#x} on host cpu {cpu})");
                    return Some(crash(index, vcpu, &what));
                }
                VcpuExit::InternalError => {
                    return Some(crash(index, vcpu, "KVM internal error (emulation failure)"));
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return Some(match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                        other => crash(index, vcpu, &format!("system event {other}")),
                    });
                }
                VcpuExit::Hlt => {
                    // Only reachable without an in-kernel LAPIC; nothing can
                    // wake this vCPU then.
                    return Some(crash(index, vcpu, "halted with no way to wake"));
                }
                other => {
                    let what = format!("unexpected KVM exit {other:?}");
                    return Some(crash(index, vcpu, &what));
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                return Some(ExitReason::Internal(format!(
                    "vcpu{index}: KVM_RUN failed: {e}"
                )));
            }
        }
    }
}

/// With debug logging on, counts userspace exits by kind and address and
/// logs the busiest when the vCPU stops: where a guest's boot time goes.
struct ExitProfile {
    index: u8,
    counts: Option<std::collections::BTreeMap<(&'static str, u64), u64>>,
}

impl ExitProfile {
    fn new(index: u8) -> Self {
        let counts = log::log_enabled!(log::Level::Debug).then(std::collections::BTreeMap::new);
        Self { index, counts }
    }

    fn record<'a>(&mut self, exit: VcpuExit<'a>) -> VcpuExit<'a> {
        if let Some(counts) = &mut self.counts {
            let key = match &exit {
                VcpuExit::IoIn(port, _) => ("pio-in", u64::from(*port)),
                VcpuExit::IoOut(port, _) => ("pio-out", u64::from(*port)),
                VcpuExit::MmioRead(addr, _) => ("mmio-read", *addr & !0xfff),
                VcpuExit::MmioWrite(addr, _) => ("mmio-write", *addr & !0xfff),
                _ => ("other", 0),
            };
            *counts.entry(key).or_default() += 1;
        }
        exit
    }
}

impl Drop for ExitProfile {
    fn drop(&mut self) {
        if let Some(counts) = &self.counts {
            let mut busiest: Vec<_> = counts.iter().collect();
            busiest.sort_by(|a, b| b.1.cmp(a.1));
            let total: u64 = counts.values().sum();
            log::debug!(
                "vcpu{}: {total} userspace exits; busiest: {:x?}",
                self.index,
                &busiest[..busiest.len().min(12)]
            );
        }
    }
}

fn crash(index: u8, vcpu: &VcpuFd, what: &str) -> ExitReason {
    ExitReason::GuestCrash(format!("vcpu{index}: {what}\n{}", dump_registers(vcpu)))
}

/// Where an x86 CPU starts after reset: CS base and RIP of the reset vector.
const RESET_CS_BASE: u64 = 0xffff_0000;
const RESET_RIP: u64 = 0xfff0;

/// The guest state a developer needs to see where it died.
pub fn dump_registers(vcpu: &VcpuFd) -> String {
    let mut out = String::new();
    let regs = vcpu.get_regs();
    match &regs {
        Ok(r) => {
            let _ = writeln!(
                out,
                "rip={:#018x} rsp={:#018x} rflags={:#010x}\nrax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\nrsi={:#018x} rdi={:#018x} rbp={:#018x}\nr8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\nr12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp,
                r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
            );
        }
        Err(e) => {
            let _ = writeln!(out, "registers unavailable: {e}");
        }
    }
    match vcpu.get_sregs() {
        Ok(s) => {
            let _ = write!(
                out,
                "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\ncs={:#x} (base {:#x}, l={}) ss={:#x} ds={:#x}",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.cs.l,
                s.ss.selector, s.ds.selector
            );
            if s.cs.base == RESET_CS_BASE && regs.is_ok_and(|r| r.rip == RESET_RIP) {
                out.push_str(
                    "\n(this is the reset state: on AMD SVM, KVM reinitializes a vCPU before \
                     it reports a shutdown, so where the guest died is not known)",
                );
            }
        }
        Err(e) => {
            let _ = write!(out, "special registers unavailable: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A stand-in vCPU: blocks in poll(2) (as KVM_RUN blocks) until the
    /// kick interrupts it, and counts its "runs".
    fn fake_vcpu(
        control: VcpuControl,
        stop: Arc<AtomicBool>,
        runs: Arc<AtomicU64>,
    ) -> JoinHandle<()> {
        install_kick_handler().unwrap();
        thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            control.register(me);
            loop {
                control.park_while_paused(&stop);
                if stop.load(Ordering::Acquire) {
                    break;
                }
                runs.fetch_add(1, Ordering::Relaxed);
                // SAFETY: poll with no descriptors only sleeps.
                unsafe { libc::poll(std::ptr::null_mut(), 0, 200) };
            }
            control.unregister(me);
        })
    }

    fn wait_until(what: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(Instant::now() < deadline, "condition not reached in 5 s");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn pause_parks_every_thread_and_resume_continues() {
        let control = VcpuControl::default();
        let stop = Arc::new(AtomicBool::new(false));
        let runs: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let threads: Vec<_> = runs
            .iter()
            .map(|r| fake_vcpu(control.clone(), stop.clone(), r.clone()))
            .collect();
        wait_until(|| control.lock().live.len() == 2);

        control.pause(Duration::from_secs(5)).unwrap();
        assert!(control.is_paused());
        let frozen: Vec<u64> = runs.iter().map(|r| r.load(Ordering::Relaxed)).collect();
        thread::sleep(Duration::from_millis(300));
        let later: Vec<u64> = runs.iter().map(|r| r.load(Ordering::Relaxed)).collect();
        assert_eq!(frozen, later, "a paused vCPU ran");
        // Pausing again is harmless.
        control.pause(Duration::from_secs(1)).unwrap();

        control.resume();
        assert!(!control.is_paused());
        wait_until(|| {
            runs.iter()
                .zip(&frozen)
                .all(|(r, f)| r.load(Ordering::Relaxed) > *f)
        });

        // Stop reaches parked threads too.
        control.pause(Duration::from_secs(5)).unwrap();
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        assert!(control.lock().live.is_empty());
    }

    #[test]
    fn an_operator_resume_does_not_lift_a_session_lock() {
        let control = VcpuControl::default();
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let thread = fake_vcpu(control.clone(), stop.clone(), runs.clone());
        wait_until(|| control.lock().live.len() == 1);

        control.lock_session(Duration::from_secs(5)).unwrap();
        control.pause(Duration::from_secs(5)).unwrap();
        control.resume();
        assert!(control.is_locked() && !control.is_paused());
        assert!(control.io_gate().is_closed(), "the lock still stops I/O");
        let frozen = runs.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(runs.load(Ordering::Relaxed), frozen, "a locked vCPU ran");

        control.unlock_session();
        wait_until(|| runs.load(Ordering::Relaxed) > frozen);
        stop.store(true, Ordering::Release);
        thread.join().unwrap();
    }

    #[test]
    fn a_thread_that_never_parks_makes_pause_fail_but_stay_in_force() {
        let control = VcpuControl::default();
        // Registered but never reaching a park point (stuck in a device);
        // the kick's handler is installed first, so kicks are harmless.
        install_kick_handler().unwrap();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        control.register(me);
        let err = control.pause(Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            err,
            VcpuControlError::PauseTimedOut(Duration::from_millis(50))
        );
        assert!(control.is_paused(), "a late vCPU does not undo the pause");
        assert!(control.io_gate().is_closed());
        control.resume();
        assert!(!control.io_gate().is_closed());
        control.unregister(me);
    }

    #[test]
    fn a_lock_that_outlives_its_timeout_keeps_parked_vcpus_parked() {
        let control = VcpuControl::default();
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let parking = fake_vcpu(control.clone(), stop.clone(), runs.clone());
        wait_until(|| control.lock().live.len() == 1);
        // A second vCPU stuck in a device: it never parks.
        install_kick_handler().unwrap();
        // SAFETY: pthread_self has no preconditions.
        let stuck = unsafe { libc::pthread_self() };
        control.register(stuck);

        for _ in 0..3 {
            let err = control.lock_session(Duration::from_millis(30));
            assert!(matches!(err, Err(VcpuControlError::PauseTimedOut(_))));
            assert!(control.is_locked(), "the lock outlived its timeout");
        }
        wait_until(|| control.lock().parked == 1);
        let frozen = runs.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            runs.load(Ordering::Relaxed),
            frozen,
            "a parked vCPU ran while the session was locked"
        );
        assert!(control.io_gate().is_closed(), "device I/O stays stopped");

        control.unregister(stuck);
        control.unlock_session();
        wait_until(|| runs.load(Ordering::Relaxed) > frozen);
        assert!(!control.io_gate().is_closed());
        stop.store(true, Ordering::Release);
        parking.join().unwrap();
    }

    #[test]
    fn pause_waits_for_device_io_in_progress() {
        let control = VcpuControl::default();
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let vcpu = fake_vcpu(control.clone(), stop.clone(), runs.clone());
        wait_until(|| control.lock().live.len() == 1);
        let gate = control.io_gate();
        let unit = gate.enter().expect("the gate is open while running");

        let err = control.pause(Duration::from_millis(50));
        assert!(
            matches!(err, Err(VcpuControlError::PauseTimedOut(_))),
            "a unit of device I/O is still running"
        );
        assert!(control.is_paused() && gate.is_closed());
        drop(unit);
        control.pause(Duration::from_secs(5)).unwrap();

        control.resume();
        assert!(gate.enter().is_some());
        stop.store(true, Ordering::Release);
        vcpu.join().unwrap();
    }

    #[test]
    fn pausing_without_vcpus_is_an_error() {
        let control = VcpuControl::default();
        assert_eq!(
            control.pause(Duration::from_millis(10)),
            Err(VcpuControlError::NotRunning)
        );
    }
}
