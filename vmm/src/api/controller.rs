//! The VM as the control server sees it: one trait, so the server and its
//! routing are tested against a fake, without KVM. `LiveVm` (in `live.rs`)
//! implements it for a running VM.

use std::time::Duration;

use super::protocol::{
    ApiError, KeyboardLayout, PolicyApplied, PolicyUpload, Screenshot, ShutdownReport, VmStatus,
};

/// What the control API may do to a VM. Calls come from several worker
/// threads; implementations serialise what must not interleave.
pub trait VmController: Send + Sync {
    fn status(&self) -> VmStatus;
    /// Verifies, version-checks and applies a pushed policy; on any error
    /// nothing changes.
    fn push_policy(&self, upload: PolicyUpload) -> Result<PolicyApplied, ApiError>;
    fn pause(&self) -> Result<(), ApiError>;
    fn resume(&self) -> Result<(), ApiError>;
    /// Presses the ACPI power button and waits up to `timeout` for the
    /// guest to power off; then stops the VM.
    fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ApiError>;
    fn attach_external(&self, path: &str) -> Result<String, ApiError>;
    fn detach_external(&self, id: &str) -> Result<(), ApiError>;
    /// What the display (`--display`) shows now.
    fn screenshot(&self) -> Result<Screenshot, ApiError>;
    /// Types `text` on the guest's keyboard, as keys of `layout`.
    fn type_text(&self, text: &str, layout: KeyboardLayout) -> Result<(), ApiError>;
    /// Presses and releases the key or combination `name`.
    fn press_key(&self, name: &str) -> Result<(), ApiError>;
}
