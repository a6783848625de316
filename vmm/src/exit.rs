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
        ];
        let mut sorted = codes.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }
}
