//! vCPU threads: each runs `KVM_RUN` in a loop, hands port and MMIO exits
//! to the buses, and reports the exits it cannot handle (triple fault,
//! failed entry, internal error) with a register dump. The main thread
//! stops them by setting a flag and kicking them out of `KVM_RUN` with a
//! signal whose handler does nothing.

use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, ExitReason};

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: ExitNotifier,
    pub stop: Arc<AtomicBool>,
}

/// Installs the filter for this thread just before it starts the guest.
pub type ThreadSetup = Box<dyn FnOnce() -> Result<(), String> + Send>;

pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The kick signal must interrupt `KVM_RUN` (EINTR), not kill the process.
fn install_kick_handler() -> Result<(), String> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(|e| format!("installing the vCPU kick signal handler failed: {e}"));
    });
    result
}

/// Starts vCPU `index` on its own thread.
pub fn spawn(
    index: u8,
    mut vcpu: VcpuFd,
    ctx: VcpuContext,
    setup: Option<ThreadSetup>,
) -> std::io::Result<VcpuHandle> {
    install_kick_handler().map_err(std::io::Error::other)?;
    let thread = thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            if let Some(setup) = setup {
                if let Err(e) = setup() {
                    ctx.exit
                        .request(ExitReason::Internal(format!("vcpu{index}: {e}")));
                    return;
                }
            }
            if let Some(reason) = run_loop(index, &mut vcpu, &ctx) {
                ctx.exit.request(reason);
            }
        })?;
    Ok(VcpuHandle { thread })
}

impl VcpuHandle {
    /// Kicks the thread until it has left its run loop, then joins it.
    /// The caller has already set the shared stop flag.
    pub fn stop(self) {
        while !self.thread.is_finished() {
            // SAFETY: the pthread handle is valid until the thread is
            // joined below; the signal's handler does nothing.
            unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
            thread::sleep(Duration::from_millis(1));
        }
        let _ = self.thread.join();
    }
}

/// Runs until the VM is stopped (`None`) or the vCPU hits an exit that
/// ends the VM (`Some(reason)`).
fn run_loop(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> Option<ExitReason> {
    let mut profile = ExitProfile::new(index);
    loop {
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

/// The guest state a developer needs to see where it died.
pub fn dump_registers(vcpu: &VcpuFd) -> String {
    let mut out = String::new();
    match vcpu.get_regs() {
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
        }
        Err(e) => {
            let _ = write!(out, "special registers unavailable: {e}");
        }
    }
    out
}
