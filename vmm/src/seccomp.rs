//! Per-thread seccomp filters. Each thread kind gets the smallest syscall
//! set its work needs, installed by the thread itself before any guest
//! instruction runs (vCPUs) or before it touches guest data (I/O, console).
//! A syscall outside the set traps; the SIGSYS handler names the syscall
//! and ends the process, so a missing entry is a clear bug report rather
//! than a silent hole.

use std::collections::BTreeMap;
use std::sync::Once;

use kvm_bindings::{
    kvm_cpuid2, kvm_fpu, kvm_ioeventfd, kvm_irqfd, kvm_lapic_state, kvm_msi, kvm_msr_list,
    kvm_msrs, kvm_pit_config, kvm_regs, kvm_sregs, kvm_userspace_memory_region, KVMIO,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
// A stick's disk sequence number (`external_media::hotplug`).
ioctl_ior_nr!(BLKGETDISKSEQ, 0x12, 128, u64);

// Building a VM (see `ThreadKind::MainRestart`).
ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_pit_config);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);

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
    /// A virtio-gpu, virtio-input or virtio-console I/O thread of the
    /// desktop (`--display`): guest memory, eventfds, interrupts; no files.
    DesktopIo,
    /// The display thread (`--display`): serves the RFB socket, draws
    /// securevm's own screens, routes input and the clipboard.
    Display,
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
    /// The main thread under `--on-reboot restart`: what `Main` does, and
    /// after a guest reboot, building the next VM from the same
    /// configuration (opening the kernel and disks, KVM setup, TAP and
    /// VPN sockets, the control socket) and starting its threads, which
    /// inherit this filter before narrowing it with their own.
    MainRestart,
    /// Attaches and detaches external media while the guest runs (see
    /// `external_media::hotplug`): opens images, unlocks LUKS2, starts and stops
    /// device I/O threads.
    MediaHotplug,
    /// Watches the host for removable media (`external_media::watch`):
    /// reads the kernel's uevent socket, opened before its filter, and
    /// sysfs; hands each stick to the media hot-plug thread.
    RemovableWatch,
    /// Watches `--policy-dir` (an inotify instance opened before its
    /// filter) and pushes the signed policies dropped there: reads them,
    /// records an accepted one in the state file, appends audit records.
    PolicyDir,
    /// Waits for SIGTERM (`service::sigterm`): shuts the VM down through
    /// the power button as `ctl shutdown` does, or before any VM runs ends
    /// the process as the signal's default action would.
    Signals,
    /// Forwards audit records from the local log to a syslog destination
    /// (`audit::forward`): reads the log, sends datagrams to the syslog
    /// socket, saves its cursor; its files and socket are opened before
    /// its filter.
    AuditForward,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter for {kind:?} threads failed: {reason}")]
    Build { kind: ThreadKind, reason: String },
    #[error("installing the seccomp filter failed: {0}")]
    Install(String),
}

/// Syscalls every thread needs: memory management by the allocator, locks,
/// signals (the vCPU kick), logging to stderr and exiting. `mmap` and
/// `mprotect` are allowed too, but never with `PROT_EXEC` (see
/// [`filter_for`]): no thread maps new code once its filter is on.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_futex,
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

/// What a desktop device's I/O thread does besides the common set: it
/// sleeps in epoll on its queues' and its host side's eventfds.
const DESKTOP_IO: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

/// What the display thread does besides the common set: it accepts
/// viewers on the RFB socket (bound before any filter) and polls them,
/// its eventfds and the devices' host sides; audit records are appended
/// (a refused clipboard transfer); at the end it removes its socket file,
/// after checking it is still its own.
const DISPLAY: &[i64] = &[
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
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

/// Building the next VM after a guest reboot, besides the common set and
/// everything the threads it starts do before their own filter narrows
/// this one. Inputs, disks and the TAP are opened again (`openat`, stat
/// calls, the LUKS helper started beforehand on its pipes), guest RAM is
/// mapped (common, never executable), threads start (as for
/// `MEDIA_HOTPLUG`), the control socket is bound again under a umask and
/// its old file removed, a VPN link gets its UDP socket and timer, a
/// passphrase read from a file is locked in memory, and `--policy-dir` is
/// watched again (inotify).
const MAIN_RESTART: &[i64] = &[
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_mlock,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_seccomp,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_umask,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
];

/// Socket families the main thread may create while it builds a VM: the
/// control socket and a VPN link's UDP socket.
const MAIN_RESTART_SOCKET_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
];

/// What a thread that starts threads needs of prctl: naming a new thread
/// and, before its filter, `no_new_privs`.
const THREAD_START_PRCTLS: &[u64] = &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64];

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
/// - A stick found on the host: opened with `O_EXCL` (openat) and its
///   disk sequence number read (the BLKGETDISKSEQ ioctl).
/// - Everything the I/O threads and disk-crypto workers it starts do
///   before and after their own filter narrows this one: BLOCK_IO.
///
/// An attach and detach of a LUKS2 medium runs under this filter in
/// `external_media::hotplug`'s tests and in the api-hotplug e2e scenario.
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

/// What the removable-media watch thread does besides the common set:
/// wait for and receive uevents on its netlink socket (poll, recvmsg),
/// and read what sysfs says of a block device (open, stat, list
/// directories, resolve links). It never opens a device node.
const REMOVABLE_WATCH: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvmsg,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
];

/// What the `--policy-dir` thread does besides the common set: it sleeps
/// in poll on its inotify instance and its stop eventfd (both opened by
/// the thread that starts it), lists the directory when it starts or the
/// kernel's event queue overflowed (getdents64), opens the policy files
/// without following links and checks them (openat, fstat), and accepts
/// a policy exactly as the control API does: the state file is replaced
/// atomically under its lock file (flock, rename, fsync of the
/// directory), the audit record made durable (fdatasync). HashMap seeds
/// come from getrandom.
const POLICY_DIR: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_getdents64,
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
];
/// What the SIGTERM thread does besides the common set: wait for the
/// signal (rt_sigtimedwait, which sigwait is), then either shut the VM
/// down (locks, the power button's eventfd write, the exit channel: all
/// common) or, before any VM runs, raise the signal on itself with its
/// default action (tgkill).
const SIGNALS: &[i64] = &[libc::SYS_rt_sigtimedwait, libc::SYS_tgkill];

/// What an audit forwarder does besides the common set: read the log and
/// write its cursor at offsets (pread64, pwrite64), send each message as a
/// datagram to the syslog socket (sendto). For a TLS collector: a TCP
/// socket (socket, limited to IPv4 and IPv6), connected with a deadline
/// (connect, poll, getsockopt for the result, the FIONBIO ioctl around
/// it), its timeouts (setsockopt), the TLS stream over it (sendto,
/// recvfrom), TLS randoms (getrandom), and the orderly close (shutdown).
const AUDIT_FORWARD: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getrandom,
    libc::SYS_shutdown,
];

/// The socket families an audit forwarder may create (TCP to a collector).
const AUDIT_FORWARD_SOCKET_FAMILIES: &[u64] = &[libc::AF_INET as u64, libc::AF_INET6 as u64];

/// Memory syscalls whose protection argument (the third) must not ask for
/// `PROT_EXEC`.
const NO_EXEC_PROT: &[i64] = &[libc::SYS_mmap, libc::SYS_mprotect];

fn allowed(kind: ThreadKind) -> (Vec<i64>, Vec<u64>) {
    match kind {
        // Device emulation on a vCPU signals MSI-X vectors unmasked with a
        // pending interrupt and moves virtio doorbells (ioeventfds) when
        // the guest moves a BAR. Interrupt lines (irqfds) are registered
        // by the main thread while it builds the VM, never by a vCPU.
        ThreadKind::Vcpu => (
            vec![libc::SYS_ioctl],
            vec![
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_GET_SREGS(),
                KVM_SIGNAL_MSI(),
                KVM_IOEVENTFD(),
            ],
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
        ThreadKind::DesktopIo => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(DESKTOP_IO.iter().copied())
                .collect(),
            vec![KVM_SIGNAL_MSI()],
        ),
        // Accepted viewers are made non-blocking (FIONBIO).
        ThreadKind::Display => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(DISPLAY.iter().copied())
                .collect(),
            vec![libc::FIONBIO],
        ),
        ThreadKind::ConsoleInput | ThreadKind::ConsoleOutput => (vec![], vec![]),
        ThreadKind::Reporter => (AUDIT.to_vec(), vec![]),
        ThreadKind::Api => (API.to_vec(), vec![]),
        ThreadKind::RemovableWatch => (REMOVABLE_WATCH.to_vec(), vec![]),
        ThreadKind::PolicyDir => (POLICY_DIR.to_vec(), vec![]),
        ThreadKind::Signals => (SIGNALS.to_vec(), vec![]),
        ThreadKind::AuditForward => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(AUDIT_FORWARD.iter().copied())
                .collect(),
            vec![libc::FIONBIO],
        ),
        ThreadKind::MediaHotplug => (
            [libc::SYS_ioctl]
                .into_iter()
                .chain(MEDIA_HOTPLUG.iter().copied())
                .chain(BLOCK_IO.iter().copied())
                .chain(AUDIT.iter().copied())
                .collect(),
            vec![KVM_IOEVENTFD(), KVM_SIGNAL_MSI(), BLKGETDISKSEQ()],
        ),
        ThreadKind::Main => (
            [libc::SYS_ioctl, libc::SYS_tgkill]
                .into_iter()
                .chain(AUDIT.iter().copied())
                .collect(),
            vec![libc::TCGETS, libc::TCSETS],
        ),
        ThreadKind::MainRestart => {
            let mut syscalls: Vec<i64> = MAIN_RESTART.to_vec();
            let mut ioctls = vec![
                KVM_GET_API_VERSION(),
                KVM_CREATE_VM(),
                KVM_GET_MSR_INDEX_LIST(),
                KVM_CHECK_EXTENSION(),
                KVM_GET_VCPU_MMAP_SIZE(),
                KVM_GET_SUPPORTED_CPUID(),
                KVM_CREATE_VCPU(),
                KVM_SET_USER_MEMORY_REGION(),
                KVM_SET_TSS_ADDR(),
                KVM_CREATE_IRQCHIP(),
                KVM_CREATE_PIT2(),
                KVM_IRQFD(),
                KVM_SET_REGS(),
                KVM_SET_SREGS(),
                KVM_SET_MSRS(),
                KVM_SET_FPU(),
                KVM_GET_LAPIC(),
                KVM_SET_LAPIC(),
                KVM_SET_CPUID2(),
                libc::TUNSETIFF,
                libc::TUNSETVNETHDRSZ,
                libc::TUNSETOFFLOAD,
                libc::FIONBIO,
            ];
            for kind in STARTED_BY_MAIN {
                let (more_syscalls, more_ioctls) = allowed(kind);
                syscalls.extend(more_syscalls);
                ioctls.extend(more_ioctls);
            }
            syscalls.sort_unstable();
            syscalls.dedup();
            ioctls.sort_unstable();
            ioctls.dedup();
            (syscalls, ioctls)
        }
    }
}

/// Every kind of thread the main thread starts for a VM (so the
/// `MainRestart` filter they inherit must allow what they do), and `Main`
/// itself.
const STARTED_BY_MAIN: [ThreadKind; 13] = [
    ThreadKind::Vcpu,
    ThreadKind::BlockIo,
    ThreadKind::NetIo,
    ThreadKind::DesktopIo,
    ThreadKind::ConsoleInput,
    ThreadKind::ConsoleOutput,
    ThreadKind::DiskCrypto,
    ThreadKind::Reporter,
    ThreadKind::Api,
    ThreadKind::Main,
    ThreadKind::MediaHotplug,
    ThreadKind::RemovableWatch,
    ThreadKind::PolicyDir,
];

/// Syscalls `kind` may make only with one of a few values as their first
/// argument (socket families, prctl options). Every kind that may call
/// `socket` or `prctl` at all must be listed here.
fn first_argument_limits(kind: ThreadKind) -> Vec<(i64, &'static [u64])> {
    match kind {
        ThreadKind::MainRestart => vec![
            (libc::SYS_socket, MAIN_RESTART_SOCKET_FAMILIES),
            (libc::SYS_prctl, THREAD_START_PRCTLS),
        ],
        ThreadKind::MediaHotplug => vec![(libc::SYS_prctl, THREAD_START_PRCTLS)],
        ThreadKind::AuditForward => vec![(libc::SYS_socket, AUDIT_FORWARD_SOCKET_FAMILIES)],
        _ => vec![],
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
    for &syscall in NO_EXEC_PROT {
        let not_executable = SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )
        .map_err(|e| build_error(e.to_string()))?;
        rules.insert(
            syscall,
            vec![SeccompRule::new(vec![not_executable]).map_err(|e| build_error(e.to_string()))?],
        );
    }
    let limits = first_argument_limits(kind);
    for syscall in [libc::SYS_socket, libc::SYS_prctl] {
        let limited = limits.iter().any(|&(limited, _)| limited == syscall);
        if extra.contains(&syscall) && !limited {
            return Err(build_error(format!(
                "syscall {syscall} allowed without limits on its first argument"
            )));
        }
    }
    for (syscall, values) in limits {
        let value_rules = values
            .iter()
            .map(|&value| {
                let cond =
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                        .map_err(|e| build_error(e.to_string()))?;
                SeccompRule::new(vec![cond]).map_err(|e| build_error(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(syscall, value_rules);
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
        for kind in ALL_KINDS {
            assert!(!filter_for(kind).unwrap().is_empty());
        }
    }

    /// Exit status of a forked child that installs `kind`'s filter and
    /// then runs `action`, which makes raw syscalls only and returns the
    /// child's exit status.
    fn status_under_filter(kind: ThreadKind, action: fn() -> i32) -> i32 {
        let program = filter_for(kind).unwrap();
        // SAFETY: the child makes only raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            install_sigsys_handler().ok();
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit is always safe.
                unsafe { libc::_exit(100) };
            }
            let status = action();
            // SAFETY: as above.
            unsafe { libc::_exit(status) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{kind:?}: status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    const ALL_KINDS: [ThreadKind; 17] = [
        ThreadKind::Vcpu,
        ThreadKind::BlockIo,
        ThreadKind::NetIo,
        ThreadKind::DesktopIo,
        ThreadKind::Display,
        ThreadKind::ConsoleInput,
        ThreadKind::ConsoleOutput,
        ThreadKind::DiskCrypto,
        ThreadKind::Reporter,
        ThreadKind::Api,
        ThreadKind::Main,
        ThreadKind::MainRestart,
        ThreadKind::MediaHotplug,
        ThreadKind::RemovableWatch,
        ThreadKind::PolicyDir,
        ThreadKind::Signals,
        ThreadKind::AuditForward,
    ];

    fn map_anonymous(prot: libc::c_int) -> *mut libc::c_void {
        // SAFETY: a fresh private anonymous mapping touches no existing memory.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        }
    }

    /// No thread may map new code: an executable mapping ends the process.
    #[test]
    fn no_filter_lets_a_thread_map_executable_memory() {
        for kind in ALL_KINDS {
            let status = status_under_filter(kind, || {
                map_anonymous(libc::PROT_READ | libc::PROT_EXEC);
                0
            });
            assert_eq!(status, EXIT_SECCOMP_VIOLATION, "{kind:?}");
        }
    }

    /// Nor turn existing memory into code.
    #[test]
    fn no_filter_lets_a_thread_make_memory_executable() {
        for kind in ALL_KINDS {
            let status = status_under_filter(kind, || {
                let page = map_anonymous(libc::PROT_READ | libc::PROT_WRITE);
                if page == libc::MAP_FAILED {
                    return 1;
                }
                // SAFETY: changes the protection of the page mapped above.
                unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) };
                0
            });
            assert_eq!(status, EXIT_SECCOMP_VIOLATION, "{kind:?}");
        }
    }

    /// Data mappings, as the allocator and thread stacks need them, still
    /// work under every filter (so the two tests above fail for the
    /// reason they name).
    #[test]
    fn every_filter_allows_data_mappings() {
        for kind in ALL_KINDS {
            let status = status_under_filter(kind, || {
                let page = map_anonymous(libc::PROT_READ | libc::PROT_WRITE);
                if page == libc::MAP_FAILED {
                    return 1;
                }
                // SAFETY: changes the protection of the page mapped above.
                let protected = unsafe { libc::mprotect(page, 4096, libc::PROT_NONE) };
                i32::from(protected != 0)
            });
            assert_eq!(status, 0, "{kind:?}");
        }
    }

    /// A vCPU never registers interrupt lines; only `KVM_RUN` and the
    /// device ioctls its exits need pass. The fd is invalid, so an allowed
    /// ioctl fails with EBADF and the child exits normally.
    #[test]
    fn the_vcpu_filter_refuses_irqfd_registration() {
        let irqfd = status_under_filter(ThreadKind::Vcpu, || {
            // SAFETY: an ioctl on an invalid fd touches no memory.
            unsafe { libc::ioctl(-1, KVM_IRQFD() as _, std::ptr::null::<u8>()) };
            0
        });
        assert_eq!(irqfd, EXIT_SECCOMP_VIOLATION);
        let run = status_under_filter(ThreadKind::Vcpu, || {
            // SAFETY: as above.
            unsafe { libc::ioctl(-1, KVM_RUN() as _, 0) };
            0
        });
        assert_eq!(run, 0);
    }

    /// The restart filter lets the main thread create the control socket
    /// and a VPN link's UDP socket, and no other kind of socket.
    #[test]
    fn the_restart_filter_allows_only_its_socket_families() {
        let unix = status_under_filter(ThreadKind::MainRestart, || {
            // SAFETY: plain syscall; the fd is left to _exit.
            i32::from(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) } < 0)
        });
        assert_eq!(unix, 0);
        let udp = status_under_filter(ThreadKind::MainRestart, || {
            // SAFETY: as above.
            i32::from(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) } < 0)
        });
        assert_eq!(udp, 0);
        let netlink = status_under_filter(ThreadKind::MainRestart, || {
            // SAFETY: as above.
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
            0
        });
        assert_eq!(netlink, EXIT_SECCOMP_VIOLATION);
    }

    /// Threads that start threads may name them and set `no_new_privs`,
    /// and use prctl for nothing else.
    #[test]
    fn thread_starting_filters_limit_prctl_to_naming_and_no_new_privs() {
        for kind in [ThreadKind::MainRestart, ThreadKind::MediaHotplug] {
            let named = status_under_filter(kind, || {
                // SAFETY: PR_SET_NAME reads a NUL-terminated name.
                unsafe { libc::prctl(libc::PR_SET_NAME, c"filtered".as_ptr()) }
            });
            assert_eq!(named, 0, "{kind:?}");
            let dumpable = status_under_filter(kind, || {
                // SAFETY: plain syscall.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
                0
            });
            assert_eq!(dumpable, EXIT_SECCOMP_VIOLATION, "{kind:?}");
        }
    }

    /// The policy-dir thread only reads files: its inotify watch and stop
    /// eventfd come from the thread that starts it, and it has no sockets.
    #[test]
    fn the_policy_dir_filter_allows_no_sockets_and_no_new_watches() {
        let socket = status_under_filter(ThreadKind::PolicyDir, || {
            // SAFETY: plain syscall; it must not return under the filter.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            0
        });
        assert_eq!(socket, EXIT_SECCOMP_VIOLATION);
        let inotify = status_under_filter(ThreadKind::PolicyDir, || {
            // SAFETY: as above.
            unsafe { libc::inotify_init1(0) };
            0
        });
        assert_eq!(inotify, EXIT_SECCOMP_VIOLATION);
        let listing = status_under_filter(ThreadKind::PolicyDir, || {
            // SAFETY: an invalid fd and no buffer: fails with EBADF.
            unsafe { libc::syscall(libc::SYS_getdents64, -1, std::ptr::null_mut::<u8>(), 0) };
            0
        });
        assert_eq!(listing, 0);
    }

    /// Building the next VM after a guest reboot watches `--policy-dir`
    /// again, on the main thread under its restart filter.
    #[test]
    fn the_restart_filter_may_watch_the_policy_dir() {
        let status = status_under_filter(ThreadKind::MainRestart, || {
            // SAFETY: raw syscalls on a new inotify instance and a
            // NUL-terminated path.
            unsafe {
                let fd = libc::inotify_init1(libc::IN_CLOEXEC);
                let watched = libc::inotify_add_watch(fd, c"/".as_ptr(), libc::IN_MOVED_TO);
                i32::from(fd < 0 || watched < 0)
            }
        });
        assert_eq!(status, 0);
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
