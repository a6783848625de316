//! securevm as a systemd service (`packaging/systemd/securevm@.service`):
//! readiness and stop reported to the service manager (`notify`, the
//! sd_notify datagram protocol), and SIGTERM, systemd's stop, handled like
//! `securevm ctl shutdown` (`sigterm`). Without NOTIFY_SOCKET nothing is
//! sent; SIGTERM is handled either way, since a host shutdown sends it to
//! a securevm started by hand too.
//!
//! Both are process-wide by nature (one environment variable, one signal
//! disposition), so what they act on is held here for the process, not
//! threaded through the VM builder.

pub mod notify;
pub mod sigterm;

use std::sync::Arc;

pub use sigterm::{SigtermWatch, Stoppable, DEFAULT_STOP_TIMEOUT};

/// While held, the guest runs: the service manager has been told it is
/// ready, and SIGTERM shuts this VM down. Dropping it (the guest stopped
/// or rebooted) makes SIGTERM wait for the next VM or the process's end.
pub struct ServedVm(());

impl ServedVm {
    /// The guest of `vm` runs (its vCPUs have started).
    pub fn started(vm: Arc<dyn Stoppable>) -> ServedVm {
        sigterm::set_target(Some(vm));
        notify::send("READY=1\nSTATUS=The guest is running");
        ServedVm(())
    }
}

/// A guest is about to start (its start audited, its vCPUs run): from
/// here on SIGTERM no longer ends the process by its default action,
/// which would leave `vm-start` without `vm-stop` and the guest's writes
/// unflushed, but is remembered and shuts the VM down as soon as it is
/// served; should the start fail, securevm ends with that failure anyway.
pub fn vm_starting() {
    sigterm::set_target(None);
}

impl Drop for ServedVm {
    fn drop(&mut self) {
        sigterm::set_target(None);
    }
}

#[cfg(test)]
mod tests {
    /// The unit the package installs.
    const UNIT: &str = include_str!("../../../packaging/systemd/securevm@.service");

    fn values<'a>(key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        UNIT.lines()
            .filter_map(move |line| line.strip_prefix(key)?.strip_prefix('='))
    }

    /// libcryptsetup takes its lock on a LUKS block device in
    /// /run/cryptsetup; under ProtectSystem=strict a read-only /run makes
    /// that fail ("Failed to acquire read lock"), and the volume cannot be
    /// opened.
    #[test]
    fn the_unit_lets_libcryptsetup_lock_block_devices() {
        assert!(
            values("ReadWritePaths")
                .flat_map(str::split_whitespace)
                .any(|path| path == "/run/cryptsetup"),
            "/run/cryptsetup is not among ReadWritePaths"
        );
        assert!(
            values("ExecStartPre").any(|line| line.starts_with('+')
                && line.contains("mkdir")
                && line.ends_with("/run/cryptsetup")),
            "nothing creates /run/cryptsetup outside the sandbox before the start"
        );
    }
}
