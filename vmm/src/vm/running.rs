//! The running machine: everything a started VM holds (threads, devices,
//! guest memory, the KVM VM) in one value, and its way to stop. The order
//! of its fields is the order of teardown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::api::{ApiServer, LiveVm};
use crate::arch::guest_ram::GuestRam;
use crate::console::{ConsoleGate, ConsoleWriter, RawTerminal};
use crate::devices::pci::PciRoot;
use crate::exit::{ExitNotifier, ExitReason};
use crate::external_media::watch::RemovableWatch;
use crate::identity::smartcard::monitor::RemovalMonitor;
use crate::kvm::vcpu::{VcpuContext, VcpuHandle};
use crate::kvm::vm::Vm;
use crate::policy::dir::PolicyDirWatch;
use crate::policy::ActiveRole;

/// A started VM. [`RunningVm::stop`] ends it.
///
/// Rust drops fields in declaration order, so this order is the teardown
/// order once `stop` has stopped the threads that need an explicit stop:
/// - `vcpus`, `removable_watch`, `policy_dir_watch` and `api_server` are
///   emptied by `stop` (vCPU threads kicked and joined first, the watch
///   for sticks after the media hot-plug thread it feeds, the policy
///   directory's and the control API after the VM is marked stopped);
/// - `live` (the control API's view, with the media hot-plug handle,
///   already stopped) goes before the card monitor, so nothing can ask
///   for a pause any more;
/// - `card_monitor` ends the smart-card watch thread;
/// - `vcpu_context` and `stop_flag` release the buses (and with them
///   the legacy devices) that the joined vCPU threads used;
/// - `console_gate`, then `raw_terminal` gives the terminal back;
/// - `pci` is the last handle on the PCI root: its virtio devices go, and
///   their I/O threads are stopped and joined;
/// - `console_writer` drains what the guest printed to stdout, after every
///   thread that could add to it is gone;
/// - `exit_events` and `exit` after everyone who could report an exit;
/// - `memory` then `guest_ram`: the RAM is unmapped only once nothing
///   holds it (device workers included, gone above);
/// - `vm` last: the KVM VM outlives its vCPUs, devices and memory slots.
///
/// Most fields are only held, for their place in this order.
#[expect(
    dead_code,
    reason = "fields held so that dropping them, in order, tears the VM down"
)]
pub(super) struct RunningVm {
    pub vcpus: Vec<VcpuHandle>,
    pub api_server: Option<ApiServer>,
    pub removable_watch: Option<RemovableWatch>,
    pub policy_dir_watch: Option<PolicyDirWatch>,
    pub live: Arc<LiveVm>,
    pub card_monitor: Option<RemovalMonitor>,
    pub vcpu_context: VcpuContext,
    pub stop_flag: Arc<AtomicBool>,
    pub console_gate: Option<ConsoleGate>,
    pub raw_terminal: Option<RawTerminal>,
    pub pci: Arc<PciRoot>,
    pub console_writer: ConsoleWriter,
    pub exit_events: Receiver<ExitReason>,
    pub exit: ExitNotifier,
    pub memory: Arc<GuestMemoryMmap>,
    pub guest_ram: GuestRam,
    pub vm: Arc<Vm>,
}

impl RunningVm {
    /// Waits until the guest powers off, reboots or crashes, a device or
    /// vCPU fails, or the user quits.
    pub fn wait_for_exit(&self) -> ExitReason {
        self.exit_events
            .recv()
            .unwrap_or_else(|_| ExitReason::Internal("every device and vCPU went away".into()))
    }

    /// Stops the VM that ended for `reason` and tears it down (see the
    /// field order). Returns the role pushed through the control socket
    /// while it ran, which a restarted guest keeps.
    pub fn stop(mut self, reason: &ExitReason) -> Option<ActiveRole> {
        self.stop_flag.store(true, Ordering::Release);
        for handle in self.vcpus.drain(..) {
            handle.stop();
        }
        // A waiting `ctl shutdown` learns the outcome before the socket goes.
        self.live.vm_stopped(reason);
        // The media hot-plug thread first: a stick the watch is handing it
        // then fails at once instead of holding up the watch's end.
        self.live.stop_media_hotplug();
        if let Some(watch) = self.removable_watch.take() {
            watch.stop();
        }
        if let Some(watch) = self.policy_dir_watch.take() {
            watch.stop();
        }
        if let Some(server) = self.api_server.take() {
            server.stop();
        }
        self.live.pushed_role()
    }
}
