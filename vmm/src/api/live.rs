//! The control API's view of a running VM: status from the devices and
//! the packet filters, pushed policies applied to every filter at once,
//! pause and resume through the vCPU control, shutdown through the ACPI
//! power button with a bounded wait, and external media attached and
//! detached through the media hot-plug thread (`external_media::hotplug`) under the
//! role in force at that moment (a pushed policy's rules apply to media
//! attached after it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use netfilter::{DropReason, FilterControl};

use super::controller::VmController;
use super::protocol::{
    ApiError, Device, KeyboardLayout, MediaCounters, NetworkCounters, PolicyApplied, PolicyUpload,
    RemovableStick, RunState, Screenshot, ShutdownOutcome, ShutdownReport, StickFate, VmStatus,
};
use base64::Engine;

use crate::audit::{Audit, Event};
use crate::display::{clipboard_policy, DisplayHandle};
use crate::exit::{ExitNotifier, ExitReason};
use crate::external_media::hotplug::AttachedMedium;
use crate::external_media::watch::StickSink;
use crate::external_media::{HostStick, MediaError, MediaHotplug, MediumError};
use crate::kvm::vcpu::VcpuControl;
use crate::policy::{ActiveRole, PolicyVerifier, SignedPolicy};
use crate::sync::lock;
use crate::sync::Unpoisoned;

/// How long a pause may take before it is given up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a forced stop, how long shutdown waits to see the VM gone.
const FORCED_STOP_GRACE: Duration = Duration::from_secs(5);

/// Presses the guest's ACPI power button (raises its interrupt).
pub type PowerButton = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One network device and the control of its filter.
pub struct NetDevice {
    pub tap: String,
    pub mac: String,
    pub addresses: Vec<String>,
    pub filter: FilterControl,
}

/// Everything the control API needs from the VM, handed over at start.
pub struct LiveVmParts {
    pub user: Option<String>,
    pub role: Option<ActiveRole>,
    /// `None` when the VM runs without `--policy`: pushes are refused.
    pub verifier: Option<PolicyVerifier>,
    /// Disks and attached external media.
    pub devices: Vec<Device>,
    pub nets: Vec<NetDevice>,
    pub media: MediaCounters,
    pub vcpus: VcpuControl,
    pub power_button: PowerButton,
    pub exit: ExitNotifier,
    /// Where pushes (applied or refused) are recorded.
    pub audit: Audit,
    /// The guest's screen and keyboard (`--display`).
    pub display: Option<DisplayHandle>,
    /// `None`: media cannot be attached while the VM runs (501).
    pub media_hotplug: Option<MediaHotplug>,
    /// `--watch-removable`: every stick the watch reports is judged, even
    /// when the role in force does not ask for it.
    pub watch_removable: bool,
}

/// How many sticks `ctl status` lists at most; sticks past it are still
/// judged, only not listed.
const MAX_LISTED_STICKS: usize = 64;

/// A running VM, as [`VmController`].
pub struct LiveVm {
    parts: LiveVmParts,
    /// The role in force; also serialises pushes.
    role: Mutex<Option<ActiveRole>>,
    /// Whether a push replaced the role given at start.
    pushed: AtomicBool,
    /// Serialises pause, resume and the start of a shutdown.
    run_state: Mutex<()>,
    stopped: Mutex<Option<ExitReason>>,
    stopped_changed: Condvar,
    media: Mutex<MediaCounters>,
    /// The sticks on the host and their fate, as status shows them.
    removable: Mutex<Vec<RemovableStick>>,
}

impl LiveVm {
    pub fn new(mut parts: LiveVmParts) -> LiveVm {
        let role = parts.role.take();
        let media = parts.media;
        LiveVm {
            parts,
            media: Mutex::new(media),
            role: Mutex::new(role),
            pushed: AtomicBool::new(false),
            run_state: Mutex::new(()),
            stopped: Mutex::new(None),
            stopped_changed: Condvar::new(),
            removable: Mutex::new(Vec::new()),
        }
    }

    /// Tells waiting shutdown requests how the VM ended.
    pub fn vm_stopped(&self, reason: &ExitReason) {
        let mut stopped = lock(&self.stopped);
        if stopped.is_none() {
            *stopped = Some(reason.clone());
        }
        self.stopped_changed.notify_all();
    }

    /// Ends the media hot-plug thread (the VM stopped); later requests
    /// are refused.
    pub fn stop_media_hotplug(&self) {
        if let Some(media) = &self.parts.media_hotplug {
            media.stop();
        }
    }

    /// The role in force now (a pushed policy replaces the one at start).
    pub fn active_role(&self) -> Option<ActiveRole> {
        lock(&self.role).clone()
    }

    /// The role of the last pushed policy, if any was pushed: what a
    /// restarted guest must run under (the file given at start is older).
    pub fn pushed_role(&self) -> Option<ActiveRole> {
        if self.pushed.load(Ordering::Acquire) {
            self.active_role()
        } else {
            None
        }
    }

    /// Waits until the VM stopped or `deadline`; returns how it ended.
    /// Pushes `signed` to the running VM: verified with the policy key,
    /// newer than the policy in force and the state file, recorded there,
    /// applied to every network filter at once and audited
    /// (`policy-pushed`, or `policy-push-refused` with nothing changed).
    /// The one way a policy replaces the one in force, whether it came
    /// through the control socket or `--policy-dir`.
    pub fn apply_signed_policy(
        &self,
        signed: &SignedPolicy<'_>,
    ) -> Result<PolicyApplied, ApiError> {
        let verifier = self.verifier()?;
        let mut role = lock(&self.role);
        let previous_version = role.as_ref().map_or(0, |r| r.policy_version);
        let accepted = match verifier.accept(signed, previous_version, SystemTime::now()) {
            Ok(accepted) => accepted,
            Err(refusal) => {
                self.refuse_policy(&refusal.to_string());
                return Err(refusal.into());
            }
        };
        for net in &self.parts.nets {
            net.filter.replace_policy(&accepted.role.network);
        }
        if let Some(display) = &self.parts.display {
            display.set_clipboard_policy(clipboard_policy(accepted.role.clipboard()));
        }
        self.parts.audit.record_or_warn(Event::PolicyPushed {
            version: accepted.policy_version,
            previous_version,
            role: accepted.name.clone(),
        });
        log::warn!(
            "policy version {} pushed and applied (was {previous_version}); role '{}'",
            accepted.policy_version,
            accepted.name
        );
        let applied = PolicyApplied {
            version: accepted.policy_version,
            previous_version,
            role: accepted.name.clone(),
            network_devices: self.parts.nets.len(),
        };
        *role = Some(accepted);
        self.pushed.store(true, Ordering::Release);
        Ok(applied)
    }

    /// Records that a pushed policy was refused (`policy-push-refused`),
    /// for refusals found before the policy checks could run (an
    /// unreadable file in `--policy-dir`) as well as by them.
    pub fn refuse_policy(&self, reason: &str) {
        self.parts.audit.record_or_warn(Event::PolicyPushRefused {
            reason: reason.to_string(),
        });
    }

    /// The version `signed` is validly signed for, checking nothing else
    /// and recording nothing (see [`PolicyVerifier::signed_version`]).
    pub fn signed_policy_version(&self, signed: &SignedPolicy<'_>) -> Result<u64, ApiError> {
        Ok(self.verifier()?.signed_version(signed, SystemTime::now())?)
    }

    /// The version of the policy in force (0 without one).
    pub fn policy_version_in_force(&self) -> u64 {
        lock(&self.role).as_ref().map_or(0, |r| r.policy_version)
    }

    fn verifier(&self) -> Result<&PolicyVerifier, ApiError> {
        self.parts.verifier.as_ref().ok_or_else(|| {
            ApiError::Conflict(
                "this VM runs without --policy, so there is no key to verify a pushed policy \
                 with; start it with --policy, --policy-key and --role"
                    .into(),
            )
        })
    }

    fn wait_stopped(&self, deadline: Instant) -> Option<ExitReason> {
        let mut stopped = lock(&self.stopped);
        while stopped.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            stopped = self
                .stopped_changed
                .wait_timeout(stopped, deadline - now)
                .unpoisoned()
                .0;
        }
        stopped.clone()
    }

    fn is_stopping(&self) -> bool {
        lock(&self.stopped).is_some()
    }

    fn media_hotplug(&self) -> Result<&MediaHotplug, ApiError> {
        if self.is_stopping() {
            return Err(ApiError::Conflict("the VM is stopping".into()));
        }
        self.parts.media_hotplug.as_ref().ok_or_else(|| {
            ApiError::NotSupported(
                "this VM cannot attach media while it runs; give the medium with --external \
                 when starting securevm"
                    .into(),
            )
        })
    }

    /// Ids of the disks and media the VM started with.
    fn boot_ids(&self) -> Vec<String> {
        self.parts
            .devices
            .iter()
            .filter_map(|device| match device {
                Device::Disk { id, .. } | Device::External { id, .. } => Some(id.clone()),
                Device::Net { .. } => None,
            })
            .collect()
    }
}

/// The HTTP answer to a failed attach or detach.
fn media_api_error(error: MediaError) -> ApiError {
    let text = error.to_string();
    match error {
        MediaError::BadPath { .. } | MediaError::NotAMedium { .. } => ApiError::BadRequest(text),
        MediaError::Medium(MediumError::Storage(_)) => ApiError::BadRequest(text),
        MediaError::Denied(_) => ApiError::Forbidden(text),
        MediaError::UnknownId { .. } => ApiError::NotFound(text),
        MediaError::AlreadyAttached { .. }
        | MediaError::NotEjected { .. }
        | MediaError::Busy { .. }
        | MediaError::BootDevice { .. }
        | MediaError::Gone { .. } => ApiError::Conflict(text),
        MediaError::Stopped => ApiError::Conflict(text),
        MediaError::Medium(MediumError::Audit(_))
        | MediaError::Block { .. }
        | MediaError::Pci(_)
        | MediaError::Hotplug(_)
        | MediaError::Flush { .. }
        | MediaError::Audit(_) => ApiError::Internal(text),
    }
}

/// How the VM ended, in words for `ctl`.
fn describe(reason: &ExitReason) -> String {
    match reason {
        ExitReason::PowerOff => "the guest powered off".into(),
        ExitReason::Reboot => "the guest rebooted".into(),
        ExitReason::GuestCrash(_) => "the guest crashed (securevm printed its registers)".into(),
        ExitReason::UserQuit => "it was stopped from the console".into(),
        ExitReason::Internal(what) => what.clone(),
    }
}

fn network_counters(net: &NetDevice) -> NetworkCounters {
    let counters = net.filter.counters();
    let mut refused_by_reason = std::collections::BTreeMap::new();
    for reason in DropReason::ALL {
        let count = counters.outbound.dropped(reason) + counters.inbound.dropped(reason);
        if count > 0 {
            refused_by_reason.insert(reason.as_str().to_string(), count);
        }
    }
    NetworkCounters {
        tap: net.tap.clone(),
        passed_out: counters.outbound.passed,
        passed_in: counters.inbound.passed,
        refused_out: counters.outbound.dropped_total(),
        refused_in: counters.inbound.dropped_total(),
        refused_by_reason,
        tracked_flows: counters.tracked_flows,
        rules_generation: counters.rules_generation,
    }
}

impl LiveVm {
    fn display(&self) -> Result<&DisplayHandle, ApiError> {
        self.parts.display.as_ref().ok_or_else(|| {
            ApiError::Conflict(
                "this securevm has no display; start it with --display vnc=unix:PATH".into(),
            )
        })
    }
}

impl VmController for LiveVm {
    fn status(&self) -> VmStatus {
        let role = self.active_role();
        let mut devices = self.parts.devices.clone();
        let hot_media = self
            .parts
            .media_hotplug
            .as_ref()
            .map(|media| media.attached())
            .unwrap_or_default();
        let removable = self.removable_status(&hot_media);
        devices.extend(hot_media.into_iter().map(|medium| Device::External {
            id: medium.id,
            path: medium.path,
            mode: medium.mode,
        }));
        devices.extend(self.parts.nets.iter().map(|net| Device::Net {
            tap: net.tap.clone(),
            mac: net.mac.clone(),
            addresses: net.addresses.clone(),
        }));
        VmStatus {
            state: if self.parts.vcpus.is_locked() {
                RunState::Locked
            } else if self.parts.vcpus.is_paused() {
                RunState::Paused
            } else {
                RunState::Running
            },
            user: self.parts.user.clone(),
            role: role.as_ref().map(|r| r.name.clone()),
            policy_version: role.as_ref().map(|r| r.policy_version),
            devices,
            network: self.parts.nets.iter().map(network_counters).collect(),
            media: *lock(&self.media),
            removable,
        }
    }

    fn push_policy(&self, upload: PolicyUpload) -> Result<PolicyApplied, ApiError> {
        self.apply_signed_policy(&upload.signed())
    }

    fn pause(&self) -> Result<(), ApiError> {
        let _serialised = lock(&self.run_state);
        if self.is_stopping() {
            return Err(ApiError::Conflict("the VM is stopping".into()));
        }
        self.parts
            .vcpus
            .pause(PAUSE_TIMEOUT)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn resume(&self) -> Result<(), ApiError> {
        let _serialised = lock(&self.run_state);
        self.parts.vcpus.resume();
        if self.parts.vcpus.is_locked() {
            return Err(ApiError::Conflict(
                "the session is locked because its smart card was removed; \
                 it runs again when the card is back and its PIN verifies"
                    .into(),
            ));
        }
        Ok(())
    }

    fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ApiError> {
        let start = Instant::now();
        {
            let _serialised = lock(&self.run_state);
            if self.is_stopping() {
                return Err(ApiError::Conflict("the VM is already stopping".into()));
            }
            // A paused guest could never answer the button.
            self.parts.vcpus.resume();
            (self.parts.power_button)().map_err(|e| {
                ApiError::Internal(format!("pressing the power button failed: {e}"))
            })?;
        }
        let outcome = match self.wait_stopped(start + timeout) {
            Some(ExitReason::PowerOff) => ShutdownOutcome::PoweredOff,
            Some(other) => ShutdownOutcome::Stopped(describe(&other)),
            None => {
                self.parts.exit.request(ExitReason::Internal(format!(
                    "the guest did not power off within {} s of the ACPI power button; \
                     securevm stopped it",
                    timeout.as_secs()
                )));
                self.wait_stopped(Instant::now() + FORCED_STOP_GRACE);
                ShutdownOutcome::Forced
            }
        };
        Ok(ShutdownReport {
            outcome,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn attach_external(&self, path: &str) -> Result<String, ApiError> {
        let media = self.media_hotplug()?;
        if path.is_empty() {
            return Err(ApiError::BadRequest(
                "the path of the medium is empty".into(),
            ));
        }
        match media.attach(
            std::path::Path::new(path),
            self.active_role(),
            self.boot_ids(),
        ) {
            Ok(medium) => {
                lock(&self.media).attached += 1;
                Ok(medium.id)
            }
            Err(error) => {
                if matches!(error, MediaError::Denied(_)) {
                    lock(&self.media).denied += 1;
                }
                Err(media_api_error(error))
            }
        }
    }

    fn detach_external(&self, id: &str) -> Result<(), ApiError> {
        let media = self.media_hotplug()?;
        if self.boot_ids().iter().any(|boot| boot == id) {
            return Err(ApiError::Conflict(format!(
                "'{id}' was attached when the VM started and cannot be removed while it runs; \
                 power the guest off to remove it"
            )));
        }
        if self.parts.vcpus.is_paused() || self.parts.vcpus.is_locked() {
            return Err(ApiError::Conflict(
                "the guest is not running, so it cannot release the medium; resume it first".into(),
            ));
        }
        media.detach(id).map_err(media_api_error)
    }

    fn screenshot(&self) -> Result<Screenshot, ApiError> {
        let display = self.display()?;
        let shot = display
            .screenshot()
            .map_err(|e| ApiError::Internal(format!("encoding the screenshot failed: {e}")))?;
        Ok(Screenshot {
            width: shot.width,
            height: shot.height,
            png_base64: base64::engine::general_purpose::STANDARD.encode(&shot.png),
        })
    }

    fn type_text(&self, text: &str, layout: KeyboardLayout) -> Result<(), ApiError> {
        let layout = match layout {
            KeyboardLayout::Us => keymap::Layout::Us,
            KeyboardLayout::Jp => keymap::Layout::Jp,
        };
        let strokes = keymap::keystrokes_for_text(text, layout)
            .map_err(|e| ApiError::BadRequest(format!("nothing was typed: {e}")))?;
        self.display()?
            .type_keystrokes(&strokes)
            .map_err(|e| ApiError::Conflict(e.to_string()))
    }

    fn press_key(&self, name: &str) -> Result<(), ApiError> {
        let codes = keymap::key_combination(name)
            .map_err(|e| ApiError::BadRequest(format!("nothing was pressed: {e}")))?;
        self.display()?
            .press_combination(&codes)
            .map_err(|e| ApiError::Conflict(e.to_string()))
    }
}

impl LiveVm {
    /// Whether sticks on the host are judged now: `--watch-removable`, or
    /// the role in force asks for it (a pushed policy may turn it off).
    fn watches_removable(&self, role: Option<&ActiveRole>) -> bool {
        self.parts.watch_removable || role.is_some_and(|r| r.role.storage.watches_removable())
    }

    /// Judges and attaches a stick the watch found, and says what became
    /// of it.
    fn judge_stick(&self, stick: &HostStick) -> RemovableStick {
        let mut listed = RemovableStick {
            device: stick.devnode.display().to_string(),
            serial: stick.serial.clone(),
            diskseq: stick.diskseq,
            fate: StickFate::Failed,
            id: None,
            mode: None,
            reason: None,
        };
        let role = self.active_role();
        if !self.watches_removable(role.as_ref()) {
            listed.fate = StickFate::Ignored;
            listed.reason = Some("the role in force does not watch removable media".into());
            return listed;
        }
        let attached = self
            .media_hotplug()
            .map_err(|e| e.to_string())
            .and_then(|media| {
                media
                    .attach_stick(stick.clone(), role, self.boot_ids())
                    .map_err(|error| {
                        listed.fate = match error {
                            MediaError::Denied(_) => StickFate::Denied,
                            MediaError::Busy { .. } | MediaError::BootDevice { .. } => {
                                StickFate::Busy
                            }
                            _ => StickFate::Failed,
                        };
                        error.to_string()
                    })
            });
        match attached {
            Ok(medium) => {
                lock(&self.media).attached += 1;
                crate::notice!(
                    "securevm: removable medium {} (serial {}) attached as '{}' ({})",
                    listed.device,
                    shown_serial(stick),
                    medium.id,
                    medium.mode
                );
                listed.fate = StickFate::Attached;
                listed.id = Some(medium.id);
                listed.mode = Some(medium.mode);
            }
            Err(reason) => {
                if listed.fate == StickFate::Denied {
                    // The refusal itself was printed where it was decided.
                    lock(&self.media).denied += 1;
                } else {
                    crate::notice!(
                        "securevm: removable medium {} (serial {}) not attached: {reason}",
                        listed.device,
                        shown_serial(stick)
                    );
                }
                listed.reason = Some(reason);
            }
        }
        listed
    }

    /// The sticks on the host as status shows them: one listed as attached
    /// whose device the guest has since ejected (or `ctl detach-external`
    /// took out) is shown as released.
    fn removable_status(&self, hot_media: &[AttachedMedium]) -> Vec<RemovableStick> {
        let mut listed = lock(&self.removable).clone();
        for stick in &mut listed {
            let still_in = |medium: &AttachedMedium| {
                stick.id.as_ref() == Some(&medium.id) && medium.path == stick.device
            };
            if stick.fate == StickFate::Attached && !hot_media.iter().any(still_in) {
                stick.fate = StickFate::Released;
                stick.id = None;
                stick.mode = None;
                stick.reason = Some(
                    "the guest let go of it (or it was detached); pull it and plug it in again \
                     to attach it again"
                        .into(),
                );
            }
        }
        listed
    }

    /// Lists `stick` in status in place of any earlier entry for its node.
    fn list_stick(&self, stick: RemovableStick) {
        let mut listed = lock(&self.removable);
        listed.retain(|s| s.diskseq != stick.diskseq && s.device != stick.device);
        if listed.len() < MAX_LISTED_STICKS {
            listed.push(stick);
        }
    }

    /// Takes the stick with `diskseq` out of the guest's reach: its
    /// requests fail from now on and the guest is asked to eject it.
    fn stick_gone(&self, diskseq: u64, why: &str) {
        if let Some(media) = &self.parts.media_hotplug {
            match media.stick_pulled(diskseq, why) {
                Ok(Some(id)) => crate::notice!("securevm: removable medium '{id}' {why}"),
                Ok(None) | Err(MediaError::Stopped) => {}
                Err(e) => log::warn!("removing the stick with sequence number {diskseq}: {e}"),
            }
        }
    }
}

fn shown_serial(stick: &HostStick) -> String {
    stick
        .serial
        .as_ref()
        .map_or_else(|| "none".to_string(), |serial| format!("'{serial}'"))
}

impl StickSink for LiveVm {
    fn arrived(&self, stick: HostStick) {
        if self.is_stopping() {
            return;
        }
        let listed = self.judge_stick(&stick);
        self.list_stick(listed);
    }

    fn left(&self, diskseq: u64) {
        lock(&self.removable).retain(|s| s.diskseq != diskseq);
        self.stick_gone(diskseq, "was pulled from the host");
    }

    fn resized(&self, stick: HostStick, old_size_bytes: u64, new_size_bytes: u64) {
        let why = format!("changed size from {old_size_bytes} to {new_size_bytes} bytes");
        self.stick_gone(stick.diskseq, &why);
        self.list_stick(RemovableStick {
            device: stick.devnode.display().to_string(),
            serial: stick.serial.clone(),
            diskseq: stick.diskseq,
            fate: StickFate::Failed,
            id: None,
            mode: None,
            reason: Some(format!("{why}; pull it and plug it in again")),
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::layout::PCI_HOTPLUG_REGISTER_EJECT;
    use crate::devices::bus::BusDevice;
    use crate::devices::pci::PciHotplugPorts;
    use crate::external_media::hotplug::tests::{rig, LoopDevice, Scratch};
    use crate::external_media::ExternalMediaPolicy;
    use crate::policy::push::tests::Fixture;
    use guest_policy::{Action, NetworkPolicy};
    use netfilter::{Filter, FilterConfig};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn deny_all() -> NetworkPolicy {
        NetworkPolicy {
            default_action: Action::Deny,
            rules: vec![],
            dns_resolvers: vec![],
            vpn: None,
        }
    }

    pub(crate) struct Harness {
        pub(crate) vm: Arc<LiveVm>,
        presses: Arc<AtomicUsize>,
        exits: std::sync::mpsc::Receiver<ExitReason>,
        _filter: Filter,
        pub(crate) _fixture: Fixture,
    }

    /// A live VM under policy version 7 of [`Fixture`], one network
    /// device, and an audit log at `audit.jsonl` in the fixture's directory.
    pub(crate) fn harness(name: &str) -> Harness {
        harness_with(name, vec![], None)
    }

    fn harness_with(
        name: &str,
        devices: Vec<Device>,
        media_hotplug: Option<MediaHotplug>,
    ) -> Harness {
        harness_watching(name, devices, media_hotplug, false)
    }

    /// `watch_removable`: as `--watch-removable`.
    fn harness_watching(
        name: &str,
        devices: Vec<Device>,
        media_hotplug: Option<MediaHotplug>,
        watch_removable: bool,
    ) -> Harness {
        let fixture = Fixture::new(name);
        let config = fixture.config();
        let policy = deny_all();
        let (filter, control) = Filter::new(FilterConfig {
            guest_mac: [2, 0, 0, 0, 0, 1],
            guest_ipv4: vec![],
            guest_ipv6: vec![],
            conntrack_capacity: 16,
            policy: &policy,
        });
        let presses = Arc::new(AtomicUsize::new(0));
        let counted = presses.clone();
        let (exit, exits) = ExitNotifier::new();
        let vm = Arc::new(LiveVm::new(LiveVmParts {
            user: None,
            role: Some(ActiveRole {
                name: "staff".into(),
                policy_version: 7,
                role: guest_policy::validate("p", &fixture.upload(7).policy)
                    .unwrap()
                    .policy
                    .roles["staff"]
                    .clone(),
            }),
            verifier: Some(PolicyVerifier::new(&config, "alice").unwrap()),
            devices,
            nets: vec![NetDevice {
                tap: "tap0".into(),
                mac: "02:00:00:00:00:01".into(),
                addresses: vec![],
                filter: control,
            }],
            media: MediaCounters::default(),
            vcpus: VcpuControl::default(),
            power_button: Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            exit,
            audit: {
                let key = fixture.dir.join("audit.key");
                crate::audit::AuditKey::create(&key).unwrap();
                Audit::open(&fixture.dir.join("audit.jsonl"), Some(&key)).unwrap()
            },
            media_hotplug,
            watch_removable,
            display: None,
        }));
        Harness {
            vm,
            presses,
            exits,
            _filter: filter,
            _fixture: fixture,
        }
    }

    #[test]
    fn a_pushed_policy_replaces_every_filters_rules() {
        let h = harness("live-push");
        assert_eq!(h.vm.status().network[0].rules_generation, 1);
        assert!(h.vm.pushed_role().is_none());
        let applied = h.vm.push_policy(h._fixture.upload(8)).unwrap();
        assert_eq!((applied.previous_version, applied.version), (7, 8));
        let status = h.vm.status();
        assert_eq!(status.policy_version, Some(8));
        assert_eq!(status.network[0].rules_generation, 2);
        assert_eq!(h.vm.pushed_role().unwrap().policy_version, 8);
        // The same version again changes nothing.
        // A refused push is the API's 422, whatever the policy checks said.
        assert_eq!(
            h.vm.push_policy(h._fixture.upload(8)).unwrap_err().status(),
            422
        );
        assert_eq!(h.vm.status().network[0].rules_generation, 2);
        let audited: Vec<serde_json::Value> =
            std::fs::read_to_string(h._fixture.dir.join("audit.jsonl"))
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
        let pushed = &audited[1];
        assert_eq!(pushed["event"], "policy-pushed");
        assert_eq!(
            (
                &pushed["version"],
                &pushed["previous_version"],
                &pushed["role"]
            ),
            (&8.into(), &7.into(), &"staff".into())
        );
        assert_eq!(audited[2]["event"], "policy-push-refused");
        assert!(audited[2]["reason"]
            .as_str()
            .unwrap()
            .contains("not newer than version 8"));
    }

    #[test]
    fn shutdown_presses_the_button_and_reports_a_clean_power_off() {
        let h = harness("live-shutdown");
        let vm = h.vm.clone();
        let guest = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            vm.vm_stopped(&ExitReason::PowerOff);
        });
        let report = h.vm.shutdown(Duration::from_secs(5)).unwrap();
        guest.join().unwrap();
        assert_eq!(report.outcome, ShutdownOutcome::PoweredOff);
        assert_eq!(h.presses.load(Ordering::SeqCst), 1);
        assert!(
            h.exits.try_recv().is_err(),
            "a clean power-off needs no forced stop"
        );
        assert_eq!(
            h.vm.shutdown(Duration::from_secs(1)).unwrap_err().status(),
            409
        );
    }

    #[test]
    fn a_guest_that_ignores_the_button_is_stopped_after_the_timeout() {
        let h = harness("live-forced");
        // Plays the main thread: stops the VM for the first reason asked.
        let vm = h.vm.clone();
        let exits = h.exits;
        let main = std::thread::spawn(move || {
            let reason = exits.recv().unwrap();
            vm.vm_stopped(&reason);
            reason
        });
        let start = Instant::now();
        let report = h.vm.shutdown(Duration::from_millis(500)).unwrap();
        assert_eq!(report.outcome, ShutdownOutcome::Forced);
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert!(start.elapsed() < FORCED_STOP_GRACE);
        match main.join().unwrap() {
            ExitReason::Internal(text) => assert!(text.contains("did not power off"), "{text}"),
            other => panic!("expected a forced stop, got {other:?}"),
        }
    }

    #[test]
    fn without_a_hot_plug_thread_media_requests_are_501() {
        let h = harness("live-hotplug");
        assert_eq!(h.vm.attach_external("/dev/sdb").unwrap_err().status(), 501);
        assert_eq!(h.vm.detach_external("stick").unwrap_err().status(), 501);
    }

    /// A serial on the allow-list of the example policy's role.
    const ALLOWED_SERIAL: &str = "4C530001230517105083";

    fn boot_disk() -> Device {
        Device::Disk {
            id: "root.img".into(),
            path: "/images/root.img".into(),
            read_only: false,
            encrypted: true,
        }
    }

    #[test]
    fn an_attached_medium_shows_in_status_until_it_is_detached() {
        let scratch = Scratch::new("live-attach");
        let stick = scratch.raw(ALLOWED_SERIAL);
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let controller = rig.controller.clone();
        let h = harness_with("live-attach", vec![boot_disk()], Some(rig.media));
        let id = h.vm.attach_external(&stick.display().to_string()).unwrap();
        assert_eq!(id, ALLOWED_SERIAL);
        let status = h.vm.status();
        assert_eq!(status.media.attached, 1);
        assert!(status.devices.contains(&Device::External {
            id: id.clone(),
            path: stick.display().to_string(),
            mode: "read-only".into(),
        }));

        let refused = h.vm.detach_external("root.img").unwrap_err();
        assert_eq!(refused.status(), 409);
        assert!(
            refused.to_string().contains("when the VM started"),
            "{refused}"
        );
        assert_eq!(h.vm.detach_external("nothing").unwrap_err().status(), 404);
        assert_eq!(h.vm.attach_external("").unwrap_err().status(), 400);
        assert_eq!(
            h.vm.attach_external("/nonexistent/stick.img")
                .unwrap_err()
                .status(),
            400
        );
        // A boot disk's id cannot be taken by a medium.
        let clash = scratch.raw("root.img");
        assert_eq!(
            h.vm.attach_external(&clash.display().to_string())
                .unwrap_err()
                .status(),
            409
        );

        let mut ports = PciHotplugPorts::new(controller);
        let guest = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ports.write(PCI_HOTPLUG_REGISTER_EJECT, &(1u32 << 1).to_le_bytes());
        });
        h.vm.detach_external(&id).unwrap();
        guest.join().unwrap();
        let status = h.vm.status();
        assert!(!status
            .devices
            .iter()
            .any(|d| matches!(d, Device::External { .. })));
    }

    #[test]
    fn a_medium_off_the_roles_allow_list_is_403_counted_and_not_attached() {
        let scratch = Scratch::new("live-deny");
        let stick = scratch.raw("stick.img");
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let h = harness_with("live-deny", vec![], Some(rig.media));
        let refused =
            h.vm.attach_external(&stick.display().to_string())
                .unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(refused.to_string().contains("allow-list"), "{refused}");
        let status = h.vm.status();
        assert_eq!((status.media.attached, status.media.denied), (0, 1));
        assert!(!status
            .devices
            .iter()
            .any(|d| matches!(d, Device::External { .. })));
    }

    #[test]
    fn sticks_the_watch_reports_are_judged_listed_and_taken_out_when_pulled() {
        let scratch = Scratch::new("live-stick");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let h = harness_watching("live-stick", vec![], Some(rig.media), true);
        let listed = device.stick(Some(ALLOWED_SERIAL));
        h.vm.arrived(listed.clone());
        let status = h.vm.status();
        assert_eq!(status.media.attached, 1);
        assert_eq!(status.removable.len(), 1);
        let stick = &status.removable[0];
        assert_eq!(
            (stick.fate, stick.id.as_deref(), stick.mode.as_deref()),
            (StickFate::Attached, Some(ALLOWED_SERIAL), Some("read-only"))
        );
        let line = format!(
            "removable {} serial '{ALLOWED_SERIAL}' diskseq {}: attached as '{ALLOWED_SERIAL}' (read-only)",
            device.devnode.display(),
            listed.diskseq
        );
        let text = crate::api::client::format_status(&status);
        assert!(text.contains(&line), "{text}");

        h.vm.left(listed.diskseq);
        assert!(
            h.vm.status().removable.is_empty(),
            "a pulled stick is not listed"
        );

        // Off the role's allow-list: denied, counted, listed with the reason.
        let unlisted = device.stick(Some("NOT-ON-THE-LIST"));
        h.vm.arrived(unlisted.clone());
        let status = h.vm.status();
        assert_eq!((status.media.attached, status.media.denied), (1, 1));
        assert_eq!(status.removable[0].fate, StickFate::Denied);
        let reason = status.removable[0].reason.clone().unwrap();
        assert!(reason.contains("allow-list"), "{reason}");
        // Its size changed: listed as failed until it is pulled.
        h.vm.resized(unlisted.clone(), 1 << 16, 1 << 20);
        let status = h.vm.status();
        assert_eq!(status.removable.len(), 1, "one entry per stick");
        assert_eq!(status.removable[0].fate, StickFate::Failed);
        h.vm.left(unlisted.diskseq);
        assert!(h.vm.status().removable.is_empty());
    }

    #[test]
    fn a_stick_the_guest_let_go_of_is_shown_released_while_it_stays_plugged_in() {
        let scratch = Scratch::new("live-stick-released");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let controller = rig.controller.clone();
        let h = harness_watching("live-stick-released", vec![], Some(rig.media), true);
        h.vm.arrived(device.stick(Some(ALLOWED_SERIAL)));
        assert_eq!(h.vm.status().removable[0].fate, StickFate::Attached);

        let mut ports = PciHotplugPorts::new(controller);
        ports.write(PCI_HOTPLUG_REGISTER_EJECT, &(1u32 << 1).to_le_bytes());
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.vm.status().removable[0].fate == StickFate::Attached && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = h.vm.status();
        let stick = &status.removable[0];
        assert_eq!(stick.fate, StickFate::Released);
        assert_eq!((stick.id.as_deref(), stick.mode.as_deref()), (None, None));
        assert!(stick.reason.as_ref().unwrap().contains("plug it in again"));
        assert!(!status
            .devices
            .iter()
            .any(|d| matches!(d, Device::External { .. })));
    }

    #[test]
    fn without_the_flag_or_the_role_asking_sticks_are_ignored() {
        let scratch = Scratch::new("live-stick-ignored");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let h = harness_watching("live-stick-ignored", vec![], Some(rig.media), false);
        h.vm.arrived(device.stick(Some(ALLOWED_SERIAL)));
        let status = h.vm.status();
        assert_eq!(status.removable[0].fate, StickFate::Ignored);
        assert_eq!((status.media.attached, status.media.denied), (0, 0));
        assert!(!status
            .devices
            .iter()
            .any(|d| matches!(d, Device::External { .. })));
    }

    #[test]
    fn a_stopping_vm_takes_no_media_requests() {
        let scratch = Scratch::new("live-stopping");
        let stick = scratch.raw(ALLOWED_SERIAL);
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let h = harness_with("live-stopping", vec![], Some(rig.media));
        let id = h.vm.attach_external(&stick.display().to_string()).unwrap();
        h.vm.vm_stopped(&ExitReason::PowerOff);
        h.vm.stop_media_hotplug();
        assert_eq!(h.vm.detach_external(&id).unwrap_err().status(), 409);
        assert_eq!(
            h.vm.attach_external(&stick.display().to_string())
                .unwrap_err()
                .status(),
            409
        );
    }
}
