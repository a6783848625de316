//! Why a VM stops, and the process exit status each reason maps to.
//!
//! Devices and vCPU threads report the first reason through an
//! [`ExitNotifier`]; the main thread waits for it, stops the vCPUs and
//! exits with [`ExitReason::exit_code`]. The codes are part of the CLI
//! contract (scripts read them) and are documented in the README.

use std::sync::mpsc::{channel, Receiver, Sender};

/// Exit status when the guest powered off (ACPI S5).
pub const EXIT_POWER_OFF: i32 = 0;
/// Exit status when securevm could not start or run the VM.
pub const EXIT_ERROR: i32 = 1;
/// Exit status for a command-line usage error (as clap reports it).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the guest asked for a reboot.
pub const EXIT_REBOOT: i32 = 3;
/// Exit status when the guest crashed (triple fault, failed VM entry).
pub const EXIT_GUEST_CRASH: i32 = 4;
/// Exit status when login was refused after the retry bound (wrong user id
/// or credential; the guest never ran).
pub const EXIT_LOGIN_REFUSED: i32 = 5;
/// Exit status when the user stopped the VM from the console (Ctrl-A x).
pub const EXIT_USER_QUIT: i32 = 130;
/// Exit status when securevm itself panicked (a bug; sysexits' EX_SOFTWARE).
pub const EXIT_PANIC: i32 = 70;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    Reboot,
    /// The guest is beyond recovery; the text holds the vCPU state dump.
    GuestCrash(String),
    UserQuit,
    /// securevm itself failed while the guest ran (e.g. a vCPU ioctl).
    Internal(String),
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => EXIT_POWER_OFF,
            ExitReason::Reboot => EXIT_REBOOT,
            ExitReason::GuestCrash(_) => EXIT_GUEST_CRASH,
            ExitReason::UserQuit => EXIT_USER_QUIT,
            ExitReason::Internal(_) => EXIT_ERROR,
        }
    }
}

/// Cloneable handle through which any thread asks the VM to stop.
#[derive(Clone, Debug)]
pub struct ExitNotifier(Sender<ExitReason>);

impl ExitNotifier {
    pub fn new() -> (ExitNotifier, Receiver<ExitReason>) {
        let (sender, receiver) = channel();
        (ExitNotifier(sender), receiver)
    }

    pub fn request(&self, reason: ExitReason) {
        // The receiver only goes away once the VM is already stopping, so a
        // failed send has nobody left to inform.
        let _ = self.0.send(reason);
    }
}

/// Makes a panic in any thread end the process at once with
/// [`EXIT_PANIC`] and one line naming the thread, the place and the
/// message.
///
/// Release builds abort on panic, and abort raises SIGABRT with tgkill,
/// which most threads' seccomp filters refuse: the process would then end
/// as a seccomp violation, blaming the wrong bug. `_exit` (exit_group) is
/// allowed in every thread, and ends the guest with the process, so a
/// half-dead VMM never keeps running a guest whose device thread is gone.
pub fn install_panic_hook(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        let line = format!(
            "{program}: internal error: thread '{}' panicked{location}: {}; stopped with exit status {EXIT_PANIC}: this is a bug, please report it\n",
            thread.name().unwrap_or("unnamed"),
            info.payload_as_str().unwrap_or("(no message)"),
        );
        // SAFETY: write(2) of a valid buffer and _exit(2) are allowed in
        // every thread kind's filter and need no locks.
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
            libc::_exit(EXIT_PANIC);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_is_delivered_in_order() {
        let (notifier, receiver) = ExitNotifier::new();
        notifier.clone().request(ExitReason::Reboot);
        notifier.request(ExitReason::PowerOff);
        assert_eq!(receiver.recv().unwrap(), ExitReason::Reboot);
        assert_eq!(receiver.recv().unwrap().exit_code(), EXIT_POWER_OFF);
    }

    #[test]
    fn codes_are_distinct() {
        let codes = [
            ExitReason::PowerOff.exit_code(),
            ExitReason::Reboot.exit_code(),
            ExitReason::GuestCrash(String::new()).exit_code(),
            ExitReason::UserQuit.exit_code(),
            ExitReason::Internal(String::new()).exit_code(),
            EXIT_USAGE,
            EXIT_LOGIN_REFUSED,
            EXIT_PANIC,
            crate::seccomp::EXIT_SECCOMP_VIOLATION,
        ];
        let mut sorted = codes.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }

    const PANIC_CHILD: &str = "SECUREVM_TEST_PANIC_CHILD";

    /// A panic in a thread confined like a virtio-net I/O thread ends the
    /// process with its own status and a line naming it. Without the hook,
    /// abort's tgkill is refused there and the process ends as a seccomp
    /// violation (31) instead.
    #[test]
    fn a_panic_in_a_confined_thread_ends_securevm_with_its_own_status() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "exit::tests::panicking_child",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(PANIC_CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(child.status.code(), Some(EXIT_PANIC), "stderr:\n{stderr}");
        assert!(
            stderr.contains("securevm: internal error: thread 'net-io' panicked at ")
                && stderr.contains("frame length 7 < 8")
                && stderr.contains("exit status 70"),
            "stderr:\n{stderr}"
        );
    }

    #[test]
    #[ignore = "run by a_panic_in_a_confined_thread_ends_securevm_with_its_own_status"]
    fn panicking_child() {
        if std::env::var_os(PANIC_CHILD).is_none() {
            return;
        }
        install_panic_hook("securevm");
        let confinement = crate::confined::Confinement::Seccomp(crate::seccomp::ThreadKind::NetIo);
        let confined = crate::confined::spawn("net-io", confinement, || {
            let claimed = std::hint::black_box(7);
            assert!(claimed >= 8, "frame length {claimed} < 8");
        })
        .unwrap();
        let _ = confined.join();
        // Reached only if the panic did not end the process.
        std::process::exit(0);
    }
}
