//! Per-thread seccomp filters. Each thread kind gets the smallest syscall
//! set its work needs, installed by the thread itself before any guest
//! instruction runs (vCPUs) or before it touches guest data (I/O, console).
//! A syscall outside the set traps; the SIGSYS handler names the syscall
//! and ends the process, so a missing entry is a clear bug report rather
//! than a silent hole.

use std::collections::BTreeMap;
use std::sync::Once;

use kvm_bindings::{kvm_ioeventfd, kvm_irqfd, kvm_msi, kvm_regs, kvm_sregs, KVMIO};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);

/// Exit status after a blocked syscall.
pub const EXIT_SECCOMP_VIOLATION: i32 = 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs `KVM_RUN` and the device emulation reached through exits.
    Vcpu,
    /// A virtio I/O thread: guest memory, its backing file, interrupts.
    BlockIo,
    /// A virtio-net I/O thread: guest memory, its TAP, interrupts.
    NetIo,
    /// Copies the terminal into the serial device.
    ConsoleInput,
    /// Writes the guest's console output to stdout.
    ConsoleOutput,
    /// Encrypts and decrypts pieces of large disk requests, with their file I/O.
    DiskCrypto,
    /// Prints what the network filters refused and records it in the audit log.
    Reporter,
    /// Serves the control socket: accepts clients, reads requests with
    /// deadlines, records pushed policies in the state file, kicks vCPU
    /// threads for a pause, removes the socket file at the end.
    Api,
    /// Waits for the VM to stop, records that, then stops the other threads.
    Main,
    /// Attaches and detaches external media while the guest runs (see
    /// `media_hotplug`): opens images, unlocks LUKS2, starts and stops
    /// device I/O threads.
    MediaHotplug,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter for {kind:?} threads failed: {reason}")]
    Build { kind: ThreadKind, reason: String },
    #[error("installing the seccomp filter failed: {0}")]
    Install(String),
}

/// Syscalls every thread needs: memory management by the allocator, locks,
/// signals (the vCPU kick), logging to stderr and exiting.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_munlock,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_restart_syscall,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What a virtio-blk I/O thread does besides the common set.
const BLOCK_IO: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

/// What a virtio-net I/O thread does besides the common set: frames move
/// with read/write on the TAP (common), and the thread adds and removes
/// the TAP in its own epoll set. With a forced VPN, datagrams move with
/// read/write on a connected UDP socket and the timer is a timerfd it
/// reads (common too); WireGuard handshakes need fresh ephemeral keys
/// (getrandom).
const NET_IO: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_getrandom,
];

/// Appending an audit record: the line is written (common `write`), then
/// made durable before the decision it records takes effect.
const AUDIT: &[i64] = &[libc::SYS_fdatasync, libc::SYS_fsync];
/// What a control API thread does besides the common set. The state file
/// is replaced atomically (open, lock, write, fsync, rename, fsync of the
/// directory); HashMap seeds come from getrandom.
const API: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getrandom,
    libc::SYS_tgkill,
];

/// What the media hot-plug thread does besides the common set.
///
/// - Judging a medium: stat and open the image and the key file, read
///   its header, lock the key in memory (mlock), append the decision to
///   the audit log (fdatasync).
/// - Unlocking or formatting LUKS: requests to the LUKS helper process
///   started before this filter, on its pipes (write, read), waiting for
///   its answer until the request's deadline (poll). libcryptsetup
///   itself, with its Argon2 threads and kernel crypto sockets, runs
///   there and needs nothing here. A helper that misses the deadline is
///   killed (kill, SIGKILL only) and reaped (wait4).
/// - A new device: eventfds and the I/O thread's epoll set (eventfd2,
///   epoll_create1, epoll_ctl), starting that thread (clone3 and what a
///   new thread runs before its closure: set_robust_list, rseq, prctl for
///   the name, sched_getaffinity), which then narrows this filter with its
///   own (seccomp, prctl; a filter can only ever take syscalls away), and
///   on removal moving its doorbells (the KVM_IOEVENTFD ioctl).
/// - Everything the I/O threads and disk-crypto workers it starts do
///   before and after their own filter narrows this one: BLOCK_IO.
///
/// An attach and detach of a LUKS2 medium runs under this filter in
/// `media_hotplug`'s tests and in the api-hotplug e2e scenario.
const MEDIA_HOTPLUG: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_seccomp,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_kill,
    libc::SYS_wait4,
];

fn allowed(kind: ThreadKind) -> (Vec<i64>, Vec<u64>) {
    let kvm_device_ioctls = [KVM_SIGNAL_MSI(), KVM_IOEVENTFD(), KVM_IRQFD()];
    match kind {
        ThreadKind::Vcpu => (
            vec![libc::SYS_ioctl],
            [KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS()]
                .into_iter()
                .chain(kvm_device_ioctls)
                .collect(),
        ),
        ThreadKind::BlockIo => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(BLOCK_IO.iter().copied())
                .collect(),
            vec![KVM_SIGNAL_MSI()],
        ),
        ThreadKind::DiskCrypto => (
            vec![
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
            ],
            vec![],
        ),
        ThreadKind::NetIo => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(NET_IO.iter().copied())
                .collect(),
            vec![KVM_SIGNAL_MSI()],
        ),
        ThreadKind::ConsoleInput | ThreadKind::ConsoleOutput => (vec![], vec![]),
        ThreadKind::Reporter => (AUDIT.to_vec(), vec![]),
        ThreadKind::Api => (API.to_vec(), vec![]),
        ThreadKind::MediaHotplug => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(MEDIA_HOTPLUG.iter().copied())
                .chain(BLOCK_IO.iter().copied())
                .chain(AUDIT.iter().copied())
                .collect(),
            vec![KVM_IOEVENTFD(), KVM_SIGNAL_MSI()],
        ),
        ThreadKind::Main => (
            [libc::SYS_ioctl, libc::SYS_tgkill]
                .into_iter()
                .chain(AUDIT.iter().copied())
                .collect(),
            vec![libc::TCGETS, libc::TCSETS],
        ),
    }
}

/// Compiles the filter for `kind` to BPF.
pub fn filter_for(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build_error = |reason: String| SeccompError::Build { kind, reason };
    let (extra, ioctls) = allowed(kind);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &syscall in COMMON.iter().chain(extra.iter()) {
        rules.insert(syscall, vec![]);
    }
    // A thread that may create sockets at all (libcryptsetup on the media
    // hot-plug thread) gets the kernel crypto API's family and no other.
    if extra.contains(&libc::SYS_socket) {
        let kernel_crypto_only = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_ALG as u64,
        )
        .map_err(|e| build_error(e.to_string()))?;
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![kernel_crypto_only])
                .map_err(|e| build_error(e.to_string()))?],
        );
    }
    // A thread that may kill (the media hot-plug thread, its LUKS helper)
    // sends SIGKILL and no other signal.
    if extra.contains(&libc::SYS_kill) {
        let sigkill_only = SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::SIGKILL as u64,
        )
        .map_err(|e| build_error(e.to_string()))?;
        rules.insert(
            libc::SYS_kill,
            vec![SeccompRule::new(vec![sigkill_only]).map_err(|e| build_error(e.to_string()))?],
        );
    }
    if !ioctls.is_empty() {
        let ioctl_rules = ioctls
            .iter()
            .map(|&request| {
                let cond =
                    SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                        .map_err(|e| build_error(e.to_string()))?;
                SeccompRule::new(vec![cond]).map_err(|e| build_error(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build_error(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build_error(e.to_string()))
}

/// Installs `kind`'s filter on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    install_sigsys_handler()?;
    let program = filter_for(kind)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(e.to_string()))
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| SeccompError::Install(format!("SIGSYS handler: {e}")));
    });
    result
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86-64: signo, errno,
/// code (3 x i32, padded to 16), then `_call_addr` (8 bytes).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; the field read
    // lies within the 128-byte structure.
    let syscall = unsafe { *(info as *const u8).add(SI_SYSCALL_OFFSET).cast::<i32>() };
    let mut msg = *b"securevm: blocked syscall            ; this is a bug, please report it (run with --no-seccomp to continue debugging)\n";
    format_decimal(syscall, &mut msg[26..36]);
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_SECCOMP_VIOLATION);
    }
}

/// Writes `value` left-aligned into `out` without allocating (signal-safe).
fn format_decimal(value: i32, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 11];
    let mut n = value.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        digits[len] = b'-';
        len += 1;
    }
    let len = len.min(out.len());
    for (slot, digit) in out.iter_mut().zip(digits[..len].iter().rev()) {
        *slot = *digit;
    }
    len
}

/// For tests that must run code under a thread's real filter in a process
/// of their own.
#[cfg(test)]
pub(crate) mod test_support {
    /// Runs the ignored test `test` (its full path) alone in a fresh
    /// process (this test binary again) with `marker` set in its
    /// environment, and fails unless it passed. A fresh process, not a
    /// fork: a fork of the multi-threaded test harness inherits whatever
    /// lock another test holds at that moment (libcryptsetup-rs's global
    /// mutex once), and the child hangs on it. A syscall outside a filter
    /// ends the child with status 31.
    pub(crate) fn run_in_fresh_process(test: &str, marker: &str) {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--ignored", "--test-threads=1"])
            .env(marker, "1")
            .output()
            .unwrap();
        let output = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success(),
            "child {} (31: a syscall outside the filter; 101: the test failed):\n{output}{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(
            output.contains("1 passed"),
            "the child did not run {test}:\n{output}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::BlockIo,
            ThreadKind::NetIo,
            ThreadKind::ConsoleInput,
            ThreadKind::ConsoleOutput,
            ThreadKind::DiskCrypto,
            ThreadKind::Reporter,
            ThreadKind::Api,
            ThreadKind::Main,
            ThreadKind::MediaHotplug,
        ] {
            assert!(!filter_for(kind).unwrap().is_empty());
        }
    }

    #[test]
    fn decimal_formatting() {
        let mut buf = [b' '; 10];
        assert_eq!(format_decimal(41, &mut buf), 2);
        assert_eq!(&buf[..3], b"41 ");
        let mut buf = [b' '; 10];
        format_decimal(-7, &mut buf);
        assert_eq!(&buf[..2], b"-7");
    }

    /// A forked child installs the console filter and opens a socket: the
    /// filter must stop it with the documented status.
    #[test]
    fn a_blocked_syscall_ends_the_process() {
        let program = filter_for(ThreadKind::ConsoleInput).unwrap();
        // SAFETY: the child only makes raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            install_sigsys_handler().ok();
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit is always safe.
                unsafe { libc::_exit(100) };
            }
            // SAFETY: plain syscall; it must never return under the filter.
            unsafe {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), EXIT_SECCOMP_VIOLATION);
    }

    /// Runs `body` in a forked child under `kind`'s filter; its exit status.
    fn status_under(kind: ThreadKind, body: fn()) -> i32 {
        let program = filter_for(kind).unwrap();
        // SAFETY: the child only makes raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            install_sigsys_handler().ok();
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit is always safe.
                unsafe { libc::_exit(100) };
            }
            body();
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// What the media hot-plug thread does to a LUKS helper past its
    /// deadline: wait in poll, kill it with SIGKILL, reap it.
    #[test]
    fn the_media_hotplug_thread_may_wait_for_kill_and_reap_a_helper() {
        let status = status_under(ThreadKind::MediaHotplug, || {
            // SAFETY: raw syscalls on a child of our own, which only sleeps.
            unsafe {
                let helper = libc::fork();
                if helper == 0 {
                    libc::sleep(600);
                    libc::_exit(0);
                }
                libc::poll(std::ptr::null_mut(), 0, 1);
                libc::kill(helper, libc::SIGKILL);
                let mut status = 0;
                if libc::waitpid(helper, &mut status, 0) != helper {
                    libc::_exit(101);
                }
            }
        });
        assert_eq!(status, 0);
        // Any other signal is refused.
        let status = status_under(ThreadKind::MediaHotplug, || {
            // SAFETY: a plain syscall that the filter must trap.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        });
        assert_eq!(status, EXIT_SECCOMP_VIOLATION);
    }

    /// The same child without a blocked call exits normally, so the test
    /// above is not passing for an unrelated reason.
    #[test]
    fn allowed_syscalls_still_work() {
        let program = filter_for(ThreadKind::ConsoleInput).unwrap();
        // SAFETY: as above.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            install_sigsys_handler().ok();
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit is always safe.
                unsafe { libc::_exit(100) };
            }
            // SAFETY: write to stderr is in the allow list.
            unsafe {
                libc::write(2, b"".as_ptr().cast(), 0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
