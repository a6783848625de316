//! The boot sequence, top to bottom: check every input, create the VM and
//! its memory, load the kernel, write the boot structures and ACPI tables,
//! attach the devices, configure and start the vCPUs, then wait for the
//! guest to power off, reboot or crash.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use guest_policy::{Action, NetworkPolicy};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vmm_sys_util::eventfd::EventFd;

use crate::api::protocol::{Device, MediaCounters};
use crate::api::{
    ApiServer, BoundSocket, LiveVm, LiveVmParts, NetDevice, ServerConfig, SocketError,
};
use crate::arch::acpi::{
    create_acpi_tables, AcpiError, PciHotplugSlots, PCI_HOTPLUG_GSI, POWER_BUTTON_GSI,
};
use crate::arch::boot_params::{configure_boot, BootConfig, BootError};
use crate::arch::guest_ram::GuestRam;
use crate::arch::layout::{
    COM1_IRQ, COM1_PORT, PCI_CONFIG_ADDRESS_PORT, PCI_ECAM_SIZE, PCI_ECAM_START,
    PCI_HOTPLUG_PORT_BASE, PCI_HOTPLUG_PORT_LEN,
};
use crate::arch::memory::MemoryError;
use crate::arch::vcpu::{configure_vcpu, ArchError};
use crate::audit::{Audit, AuditError, Event};
use crate::block::{BlockBackend, BlockError, RawFileBackend};
use crate::config::{ConfigError, RebootAction, VmConfig};
use crate::console::{
    spawn_input_thread, ConsoleGate, ConsoleWriter, PhraseError, PromptPhrase, RawTerminal,
};
use crate::devices::bus::{Bus, BusError};
use crate::devices::pci::{
    PciConfigIo, PciConfigMmio, PciError, PciHotplug, PciHotplugPorts, PciRoot,
};
use crate::devices::power::{
    AcpiPowerDevice, I8042Device, ACPI_POWER_PORT_BASE, ACPI_POWER_PORT_LEN,
};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::{disk_id_from_path, Block};
use crate::devices::virtio::net::{
    Net, NetError, PolicyFilter, Tap, TapError, VpnLink, VpnLinkError,
};
use crate::exit::{ExitNotifier, ExitReason};
use crate::external_media::{
    allowed_serials, decide_medium, media_policy, MediaHotplug, MediaHotplugParts, MediaRules,
    MediumError, MediumOutcome, EJECT_TIMEOUT,
};
use crate::identity::disk::{unlock_for_user, UserDiskError};
use crate::identity::session::{start_session, Session, SessionError};
use crate::identity::smartcard::login::CardCredential;
use crate::identity::smartcard::monitor::{watch_session, RemovalMonitor};
use crate::identity::smartcard::{self, disk as card_disk, SmartCardError};
use crate::identity::{Credential, RetryDelay};
use crate::loader::{load_cmdline, load_initrd, load_kernel, LoaderError};
use crate::netfilter::{Filter, FilterConfig, FilterControl, DEFAULT_CONNTRACK_CAPACITY};
use crate::policy::{ActiveRole, PolicyVerifier};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::storage::luks::is_luks;
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};
use crate::storage::secret::SecretBuf;
use crate::storage::{EncryptedBackend, StorageError};
use crate::vstate::vcpu::{self, VcpuContext, VcpuControl, VcpuControlError, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the {what} {path} does not exist; check the path")]
    InputMissing { what: &'static str, path: String },
    #[error("cannot read the {what} {path}: {source}")]
    InputUnreadable {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("disk {path}: {source}")]
    Disk { path: String, source: BlockError },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("network device: {0}")]
    Net(#[from] NetError),
    #[error(transparent)]
    Vpn(#[from] crate::vpn::VpnSetupError),
    #[error(transparent)]
    VpnLink(#[from] VpnLinkError),
    #[error("attaching a device failed: {0}")]
    Pci(#[from] PciError),
    #[error("placing a device on its bus failed: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Medium(#[from] MediumError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    UserDisk(#[from] UserDiskError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    SmartCard(#[from] SmartCardError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    ApiSocket(#[from] SocketError),
    #[error("reading KVM's supported CPUID failed: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error(transparent)]
    PromptPhrase(#[from] PhraseError),
    #[error("{what} failed: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

/// Boots the VM described by `config` and runs it until it stops; with
/// `--on-reboot restart`, a guest reboot builds a fresh VM (under the
/// policy pushed since the start, if one was).
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    config.validate()?;
    open_input("kernel", &config.kernel)?;
    if let Some(path) = &config.initrd {
        open_input("initrd", path)?;
    }
    // Checked before anything is asked: a phrase file that is not private
    // stops securevm here rather than at a PIN prompt with the guest running.
    let phrase = PromptPhrase::load_configured()?;
    // Audit log, policy, login and role: before any guest exists.
    let session = start_session(config, RetryDelay::default())?;
    let audit = session.audit.clone();
    // Without a policy there is no user, but a card may still open disks.
    let card_only = match (&config.card, &config.policy) {
        (Some(options), None) => {
            let login = smartcard::login_without_policy(options)?;
            Some(CardCredential::new(
                login,
                options.pins.clone(),
                options.retry,
            ))
        }
        _ => None,
    };
    let result = run_session(config, &session, card_only.as_ref(), &phrase);
    let reason = match &result {
        Ok(ExitReason::PowerOff) => "guest powered off".to_string(),
        Ok(ExitReason::Reboot) => "guest rebooted".to_string(),
        Ok(ExitReason::GuestCrash(_)) => "guest crashed".to_string(),
        Ok(ExitReason::UserQuit) => "stopped from the console".to_string(),
        Ok(ExitReason::Internal(what)) => format!("securevm failed: {what}"),
        Err(e) => format!("securevm failed: {e}"),
    };
    audit.record_or_warn(Event::VmStop { reason });
    result
}

fn run_session(
    config: &VmConfig,
    session: &Session,
    card_only: Option<&CardCredential>,
    phrase: &PromptPhrase,
) -> Result<ExitReason, VmmError> {
    let mut policy_in_force = None;
    let mut main_filtered = false;
    loop {
        let reason = run_once(
            config,
            session,
            card_only,
            phrase,
            &mut policy_in_force,
            &mut main_filtered,
        )?;
        if reason == ExitReason::Reboot && config.on_reboot == RebootAction::Restart {
            log::info!("guest rebooted; starting it again");
            continue;
        }
        return Ok(reason);
    }
}

/// The smart card of this session: the logged-in user's, or without a
/// policy the one given to open disks.
fn session_card<'a>(
    session: &'a Session,
    card_only: Option<&'a CardCredential>,
) -> Option<&'a CardCredential> {
    match session.login.as_ref().map(|login| &login.credential) {
        Some(Credential::SmartCard(card)) => Some(card),
        _ => card_only,
    }
}

/// The filter the main thread narrows itself to once its VM runs, or
/// `None` when it stays unfiltered.
fn main_thread_filter(
    seccomp: bool,
    on_reboot: RebootAction,
    card_in_session: bool,
) -> Option<ThreadKind> {
    match on_reboot {
        _ if !seccomp => None,
        RebootAction::Exit => Some(ThreadKind::Main),
        // Logging the card in again after a reboot loads its PKCS#11
        // module anew: new code mappings and whatever the module does,
        // which no filter can foresee. The card monitor thread runs that
        // module unfiltered while the guest runs in any case.
        RebootAction::Restart if card_in_session => None,
        RebootAction::Restart => Some(ThreadKind::MainRestart),
    }
}

/// Whether building a VM from `config` may unlock LUKS volumes, which the
/// LUKS helper process does: under the `MainRestart` filter, which
/// cannot start processes, that helper must already run.
fn may_unlock_luks(config: &VmConfig) -> Result<bool, VmmError> {
    for disk in &config.disks {
        if is_luks(&disk.path)? {
            return Ok(true);
        }
    }
    Ok(!config.external.media.is_empty())
}

/// `main_filtered` says whether an earlier run already filtered the main
/// thread (filters stack, so it is installed once per process).
fn run_once(
    config: &VmConfig,
    session: &Session,
    card_only: Option<&CardCredential>,
    phrase: &PromptPhrase,
    policy_in_force: &mut Option<ActiveRole>,
    main_filtered: &mut bool,
) -> Result<ExitReason, VmmError> {
    config.validate()?;
    // Bound first, while securevm has no other threads (the socket's mode
    // comes from a process-wide umask), and so a bad path fails at once.
    let api_socket = match &config.api_socket {
        Some(path) => Some(BoundSocket::bind(path)?),
        None => None,
    };
    // Every input is opened before KVM is touched: bad input fails fast,
    // and nothing is created or written on its behalf.
    let mut kernel = open_input("kernel", &config.kernel)?;
    let mut initrd = match &config.initrd {
        Some(path) => Some(open_input("initrd", path)?),
        None => None,
    };
    // A policy pushed through the control socket outlives a guest reboot.
    let role = policy_in_force.take().or_else(|| session.role.clone());
    let verifier = match (&config.policy, &session.login) {
        (Some(policy), Some(login)) => {
            Some(PolicyVerifier::new(policy, &login.identity.user_id).map_err(SessionError::from)?)
        }
        _ => None,
    };
    if config.seccomp {
        crate::storage::parallel::set_worker_start(|| {
            seccomp::install(ThreadKind::DiskCrypto).map_err(|e| e.to_string())
        });
    }
    let (disks, devices, media) = open_disks(config, session, role.as_ref(), card_only)?;
    // The card's session ends once the disks are open: its module is
    // finalized before any guest code runs and before seccomp narrows the
    // main thread (a restart logs the card in again).
    if let Some(card) = session_card(session, card_only) {
        drop(card.take_login());
    }
    let (nets, filter_controls) = open_nets(config, role.as_ref())?;

    let vm = Arc::new(Vm::new(&config.kvm_device)?);
    vm.check_vcpu_count(usize::from(config.cpus))?;
    let num_cpus = config.cpus as u8;
    // Declared before every part that uses the RAM, so dropped after them
    // (GuestRam unmaps it only once nothing holds it).
    let guest_ram = GuestRam::new(config.memory_bytes())?;
    let memory = guest_ram.memory().clone();
    vm.register_memory(&memory)?;
    vm.create_interrupt_controllers()?;

    let kernel_image = load_kernel(&memory, &mut kernel)?;
    let initrd_info = match initrd.as_mut() {
        Some(file) => Some(load_initrd(&memory, file, &kernel_image)?),
        None => None,
    };
    let cmdline = load_cmdline(&memory, &config.cmdline, &kernel_image)?;
    let boot = configure_boot(
        &memory,
        &BootConfig {
            kernel: &kernel_image,
            cmdline,
            initrd: initrd_info,
            mem_size: config.memory_bytes(),
        },
    )?;
    // Media can be hot-plugged only through the control socket; without
    // one the guest is shown no slots and the controller does not exist.
    let hotplug_slots = if api_socket.is_some() {
        PciHotplugSlots::Present
    } else {
        PciHotplugSlots::Absent
    };
    create_acpi_tables(memory.as_ref(), num_cpus, hotplug_slots)?;
    let power_button = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
        what: "creating the power button interrupt",
        source,
    })?;
    vm.register_irqfd(&power_button, POWER_BUTTON_GSI)?;

    let (exit, exit_events) = ExitNotifier::new();
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
        what: "creating the serial interrupt",
        source,
    })?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)?;
    let seccomp_on = config.seccomp;
    // Dropped (and so drained to stdout) whenever run_once returns.
    let (console_writer, console_sink) = ConsoleWriter::spawn(std::io::stdout(), move || {
        if seccomp_on {
            seccomp::install(ThreadKind::ConsoleOutput).map_err(|e| e.to_string())
        } else {
            Ok(())
        }
    })
    .map_err(|source| VmmError::Io {
        what: "starting the console output thread",
        source,
    })?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        Box::new(console_sink),
    )));
    pio.insert(
        serial.clone(),
        u64::from(COM1_PORT),
        u64::from(SerialDevice::PORT_LEN),
    )?;
    pio.insert(
        Arc::new(Mutex::new(I8042Device::new(exit.clone()))),
        u64::from(I8042Device::PORT_BASE),
        u64::from(I8042Device::PORT_LEN),
    )?;
    pio.insert(
        Arc::new(Mutex::new(AcpiPowerDevice::new(exit.clone()))),
        u64::from(ACPI_POWER_PORT_BASE),
        u64::from(ACPI_POWER_PORT_LEN),
    )?;

    // Created before the devices: their I/O threads stop with the vCPUs.
    let vcpu_control = VcpuControl::default();
    let pci = PciRoot::with_io_gate(mmio.clone(), vm.clone(), vcpu_control.io_gate());
    for mut block in disks {
        if config.seccomp {
            block.set_thread_start_hook(Arc::new(|| {
                seccomp::install(ThreadKind::BlockIo).map_err(|e| e.to_string())
            }));
        }
        pci.add_virtio_device(Box::new(block), memory.clone())?;
    }
    for mut net in nets {
        if config.seccomp {
            net.set_thread_start_hook(Arc::new(|| {
                seccomp::install(ThreadKind::NetIo).map_err(|e| e.to_string())
            }));
        }
        pci.add_virtio_device(Box::new(net), memory.clone())?;
    }
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        u64::from(PCI_CONFIG_ADDRESS_PORT),
        8,
    )?;
    let hotplug = match hotplug_slots {
        PciHotplugSlots::Present => Some(pci_hotplug_controller(&vm, &pio)?),
        PciHotplugSlots::Absent => None,
    };
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
    )?;

    let supported_cpuid = vm
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::Cpuid)?;
    let mut vcpu_fds = Vec::with_capacity(usize::from(num_cpus));
    for index in 0..num_cpus {
        let fd = vm.create_vcpu(index)?;
        let entry = (index == 0).then_some(&boot);
        configure_vcpu(&fd, vm.kvm(), &supported_cpuid, index, num_cpus, entry)?;
        vcpu_fds.push(fd);
    }

    if !config.seccomp {
        log::warn!("--no-seccomp: seccomp filters are disabled; use this for debugging only");
    }
    let _raw_terminal = RawTerminal::enable(libc::STDIN_FILENO).map_err(|source| VmmError::Io {
        what: "switching the terminal to raw mode",
        source,
    })?;
    let console_gate = ConsoleGate::new(phrase.clone(), console_writer.hold());
    spawn_input_thread(serial, exit.clone(), console_gate.clone(), move || {
        if seccomp_on {
            seccomp::install(ThreadKind::ConsoleInput).map_err(|e| e.to_string())
        } else {
            Ok(())
        }
    })
    .map_err(|source| VmmError::Io {
        what: "starting the console thread",
        source,
    })?;

    spawn_refusal_reporter(
        filter_controls.clone(),
        config.seccomp,
        session.audit.clone(),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let context = VcpuContext {
        pio,
        mmio,
        exit: exit.clone(),
        stop: stop.clone(),
        control: vcpu_control.clone(),
    };
    session.audit.record(Event::VmStart {
        kernel: config.kernel.display().to_string(),
        cpus: config.cpus,
        memory_mib: config.memory_mib,
    })?;
    let mut vcpus: Vec<VcpuHandle> = Vec::with_capacity(vcpu_fds.len());
    for (index, fd) in vcpu_fds.into_iter().enumerate() {
        let setup: Option<vcpu::ThreadSetup> = config.seccomp.then(|| {
            Box::new(|| seccomp::install(ThreadKind::Vcpu).map_err(|e| e.to_string()))
                as vcpu::ThreadSetup
        });
        let handle = vcpu::spawn(index as u8, fd, context.clone(), setup).map_err(|source| {
            VmmError::Io {
                what: "starting a vCPU thread",
                source,
            }
        })?;
        vcpus.push(handle);
    }
    // Before the main thread's filter: the monitor thread runs the card's
    // PKCS#11 module and must not inherit it.
    let _card_monitor = match session_card(session, card_only) {
        Some(card) => Some(watch_card(card, session, &vcpu_control, console_gate)?),
        None => None,
    };
    let media_hotplug = match hotplug {
        Some(controller) => Some(
            MediaHotplug::start(MediaHotplugParts {
                pci: pci.clone(),
                memory: memory.clone(),
                controller,
                audit: session.audit.clone(),
                external: config.external.clone(),
                seccomp: config.seccomp,
                eject_timeout: EJECT_TIMEOUT,
            })
            .map_err(|source| VmmError::Io {
                what: "starting the media hot-plug thread",
                source,
            })?,
        ),
        None => None,
    };
    let live = Arc::new(LiveVm::new(LiveVmParts {
        user: session.login.as_ref().map(|l| l.identity.user_id.clone()),
        verifier,
        role,
        devices,
        nets: config
            .nets
            .iter()
            .zip(filter_controls)
            .map(|(net, filter)| NetDevice {
                tap: net.tap.clone(),
                mac: format_mac(net.effective_mac()),
                addresses: net.addresses.iter().map(IpAddr::to_string).collect(),
                filter,
            })
            .collect(),
        media,
        vcpus: vcpu_control,
        power_button: Box::new(move || power_button.write(1).map_err(|e| e.to_string())),
        exit: exit.clone(),
        audit: session.audit.clone(),
        media_hotplug,
    }));
    let api_server = match api_socket {
        Some(socket) => Some(ApiServer::start(
            socket,
            ServerConfig {
                thread_setup: config.seccomp.then(|| {
                    Arc::new(|| seccomp::install(ThreadKind::Api).map_err(|e| e.to_string()))
                        as crate::api::server::ThreadSetup
                }),
                ..ServerConfig::default()
            },
            live.clone(),
        )?),
        None => None,
    };

    let card_in_session = session_card(session, card_only).is_some();
    if let Some(kind) = main_thread_filter(config.seccomp, config.on_reboot, card_in_session) {
        if !*main_filtered {
            if kind == ThreadKind::MainRestart && may_unlock_luks(config)? {
                crate::storage::luks_helper::keep_running().map_err(|source| VmmError::Io {
                    what: "starting the LUKS helper for later restarts",
                    source,
                })?;
            }
            seccomp::install(kind)?;
            *main_filtered = true;
        }
    }

    let reason = exit_events
        .recv()
        .unwrap_or_else(|_| ExitReason::Internal("every device and vCPU went away".into()));
    stop.store(true, Ordering::Release);
    for handle in vcpus {
        handle.stop();
    }
    // A waiting `ctl shutdown` learns the outcome before the socket goes.
    live.vm_stopped(&reason);
    live.stop_media_hotplug();
    if let Some(server) = api_server {
        server.stop();
    }
    *policy_in_force = live.pushed_role();
    Ok(reason)
}

/// The ACPI PCI hot-plug controller on its ports, raising its own GED
/// interrupt.
fn pci_hotplug_controller(vm: &Vm, pio: &Bus) -> Result<Arc<PciHotplug>, VmmError> {
    let interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
        what: "creating the PCI hot-plug interrupt",
        source,
    })?;
    vm.register_irqfd(&interrupt, PCI_HOTPLUG_GSI)?;
    let controller = Arc::new(PciHotplug::new(Box::new(move || interrupt.write(1))));
    pio.insert(
        Arc::new(Mutex::new(PciHotplugPorts::new(controller.clone()))),
        u64::from(PCI_HOTPLUG_PORT_BASE),
        u64::from(PCI_HOTPLUG_PORT_LEN),
    )?;
    Ok(controller)
}

/// Opens every `--net` TAP with the role's network filter in front of it
/// (without a policy, one that refuses everything: default deny).
fn open_nets(
    config: &VmConfig,
    role: Option<&ActiveRole>,
) -> Result<(Vec<Net>, Vec<FilterControl>), VmmError> {
    let deny_all = NetworkPolicy {
        default_action: Action::Deny,
        rules: vec![],
        dns_resolvers: vec![],
        vpn: None,
    };
    let rules = match role {
        Some(active) => &active.role.network,
        None => {
            if !config.nets.is_empty() {
                log::warn!("no --policy: the network filter refuses every connection");
            }
            &deny_all
        }
    };
    let mut vpn =
        crate::vpn::plan_vpn(rules.vpn.as_ref(), config.vpn_key.as_deref(), &config.nets)?;
    let mut nets = Vec::with_capacity(config.nets.len());
    let mut controls = Vec::with_capacity(config.nets.len());
    for (index, net) in config.nets.iter().enumerate() {
        if net.addresses.is_empty() {
            log::warn!(
                "--net {net}: no ip= given, so the guest may send no IP traffic on it (anti-spoofing)"
            );
        }
        let (filter, control) = Filter::new(FilterConfig {
            guest_mac: net.effective_mac(),
            guest_ipv4: net
                .addresses
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            guest_ipv6: net
                .addresses
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            policy: rules,
        });
        let tap = Tap::open(&net.tap)?;
        let mut device = Net::new(
            tap,
            net.effective_mac(),
            Box::new(PolicyFilter::new(filter)),
        )?;
        if let Some(plan) = vpn.take_if(|plan| plan.net_index == index) {
            device.attach_vpn(VpnLink::open(plan.config, plan.key)?);
        }
        nets.push(device);
        controls.push(control);
    }
    Ok((nets, controls))
}

/// Most refusals quoted in one audit summary.
const AUDIT_REFUSAL_EXAMPLES: usize = 5;

/// Every second, prints the network refusals the filters report (they
/// rate-limit themselves) on stderr, and records a summary of them (count
/// and a few examples) in the audit log.
fn spawn_refusal_reporter(
    controls: Vec<FilterControl>,
    seccomp_on: bool,
    audit: Audit,
) -> Result<(), VmmError> {
    if controls.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("net-report".into())
        .spawn(move || {
            if seccomp_on {
                if let Err(e) = seccomp::install(ThreadKind::Reporter) {
                    log::error!("network refusal reports stopped: {e}");
                    return;
                }
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let mut count = 0u64;
                let mut examples = Vec::new();
                for control in &controls {
                    for refusal in control.drain_refusals() {
                        crate::notice!("securevm: network: {refusal}");
                        count += 1;
                        if examples.len() < AUDIT_REFUSAL_EXAMPLES {
                            examples.push(refusal.to_string());
                        }
                    }
                }
                if count > 0 {
                    audit.record_or_warn(Event::NetworkRefusals { count, examples });
                }
            }
        })
        .map(|_| ())
        .map_err(|source| VmmError::Io {
            what: "starting the network report thread",
            source,
        })
}

/// Opens every `--disk` (LUKS volumes with the logged-in user's
/// credential, or without a login the disk passphrase; others raw) and
/// every `--external` medium under `role`'s external-media policy,
/// recording each in the audit log. Secrets are read once and dropped
/// (zeroized) before the VM starts. Also returns the devices as the
/// control API shows them and the media decisions.
fn open_disks(
    config: &VmConfig,
    session: &Session,
    role: Option<&ActiveRole>,
    card_only: Option<&CardCredential>,
) -> Result<(Vec<Block>, Vec<Device>, MediaCounters), VmmError> {
    let audit = &session.audit;
    let mut blocks = Vec::new();
    let mut devices = Vec::new();
    let mut media = MediaCounters::default();
    let mut disk_passphrase: Option<SecretBuf> = None;
    for disk in &config.disks {
        let disk_error = |source| VmmError::Disk {
            path: disk.path.display().to_string(),
            source,
        };
        let encrypted = is_luks(&disk.path)?;
        let backend: Box<dyn BlockBackend> =
            if let (true, Some(login)) = (encrypted, &session.login) {
                let unlocked = unlock_for_user(&disk.path, login)?;
                audit.record(Event::DiskOpened {
                    path: disk.path.display().to_string(),
                    keyslot: Some(unlocked.volume.keyslot),
                    user_slot: unlocked.own_slot,
                    read_only: disk.read_only,
                })?;
                Box::new(EncryptedBackend::from_unlocked(
                    &disk.path,
                    unlocked.volume,
                    disk.read_only,
                )?)
            } else if let Some((backend, keyslot)) = match card_only {
                Some(card) if encrypted => open_by_card(card, disk)?,
                _ => None,
            } {
                audit.record(Event::DiskOpened {
                    path: disk.path.display().to_string(),
                    keyslot: Some(keyslot),
                    user_slot: false,
                    read_only: disk.read_only,
                })?;
                Box::new(backend)
            } else if encrypted {
                if disk_passphrase.is_none() {
                    let source = match &config.passphrase_file {
                        Some(file) => PassphraseSource::File(file),
                        None => PassphraseSource::Terminal {
                            prompt: "Disk passphrase: ",
                            confirm: false,
                        },
                    };
                    disk_passphrase = Some(read_passphrase(source)?);
                }
                let passphrase = disk_passphrase.as_ref().map_or(&[][..], |p| p.as_bytes());
                let backend = EncryptedBackend::open(&disk.path, passphrase, disk.read_only)?;
                audit.record(Event::DiskOpened {
                    path: disk.path.display().to_string(),
                    keyslot: None,
                    user_slot: false,
                    read_only: disk.read_only,
                })?;
                Box::new(backend)
            } else {
                Box::new(RawFileBackend::open(&disk.path, disk.read_only).map_err(disk_error)?)
            };
        let id = disk_id_from_path(&disk.path);
        blocks.push(Block::new(backend, &id).map_err(disk_error)?);
        devices.push(Device::Disk {
            id,
            path: disk.path.display().to_string(),
            read_only: disk.read_only,
            encrypted,
        });
    }
    drop(disk_passphrase);

    let external = &config.external;
    let medium_key = match (&external.passphrase_file, external.media.is_empty()) {
        (Some(file), false) => Some(read_passphrase(PassphraseSource::File(file))?),
        _ => None,
    };
    let rules = MediaRules {
        policy: media_policy(external, role),
        allowed_serials: allowed_serials(role),
        key: medium_key.as_ref().map(|k| k.as_bytes()),
        format_blank: external.format_blank,
    };
    for medium in &external.media {
        let shown = medium.display();
        let (backend, mode) = match decide_medium(medium, &rules, audit)? {
            MediumOutcome::Attach { backend, mode } => (backend, mode),
            MediumOutcome::Denied { .. } => {
                media.denied += 1;
                continue;
            }
        };
        let id = disk_id_from_path(medium);
        blocks.push(Block::new(backend, &id).map_err(|source| VmmError::Disk {
            path: shown.to_string(),
            source,
        })?);
        media.attached += 1;
        devices.push(Device::External {
            id,
            path: shown.to_string(),
            mode: mode.to_string(),
        });
    }
    Ok((blocks, devices, media))
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// Pause the vCPUs (and, through `console`, withhold console input) while
/// the session's card is out; resume them when it is back and verified
/// (see `identity::smartcard::monitor` and `console::gate`).
fn watch_card(
    card: &CardCredential,
    session: &Session,
    vcpus: &VcpuControl,
    console: ConsoleGate,
) -> Result<RemovalMonitor, VmmError> {
    let (pause, resume) = (vcpus.clone(), vcpus.clone());
    let user = session
        .login
        .as_ref()
        .map_or("", |login| login.identity.user_id.as_str());
    watch_session(
        card,
        user,
        session.audit.clone(),
        console,
        Box::new(move || {
            // The lock is in force from the first attempt on; a vCPU or
            // device still busy stops as soon as it can. Wait for them (and
            // say so) before the console reports the session locked.
            while let Err(VcpuControlError::PauseTimedOut(_)) =
                pause.lock_session(CARD_PAUSE_TIMEOUT)
            {
                log::warn!("card removed: the vCPUs have not stopped yet; trying again");
            }
        }),
        Box::new(move || resume.unlock_session()),
    )
    .map_err(|source| VmmError::Io {
        what: "starting the smart-card monitor",
        source,
    })
}

/// How long one pause attempt waits for the vCPUs after the card is pulled.
const CARD_PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A LUKS disk opened by the logged-in card (and the keyslot that
/// opened it), or `None` when no keyslot
/// of it is bound to the card (the passphrase is asked instead).
fn open_by_card(
    card: &CardCredential,
    disk: &crate::config::DiskConfig,
) -> Result<Option<(EncryptedBackend, u32)>, VmmError> {
    match card.with_login(|login| card_disk::unlock(&disk.path, &login.token)) {
        Ok(volume) => {
            let keyslot = volume.keyslot;
            log::info!(
                "{}: opened by the smart card (keyslot {keyslot})",
                disk.path.display()
            );
            let backend = EncryptedBackend::from_unlocked(&disk.path, volume, disk.read_only)?;
            Ok(Some((backend, keyslot)))
        }
        Err(SmartCardError::NoCardKeyslot { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_input(what: &'static str, path: &Path) -> Result<File, VmmError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => VmmError::InputMissing {
            what,
            path: shown.clone(),
        },
        _ => VmmError::InputUnreadable {
            what,
            path: shown.clone(),
            source,
        },
    })?;
    let metadata = file
        .metadata()
        .map_err(|source| VmmError::InputUnreadable {
            what,
            path: shown.clone(),
            source,
        })?;
    if !metadata.is_file() {
        return Err(VmmError::InputUnreadable {
            what,
            path: shown,
            source: io::Error::other("not a regular file"),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_thread_is_filtered_in_both_reboot_modes() {
        assert_eq!(
            main_thread_filter(true, RebootAction::Exit, false),
            Some(ThreadKind::Main)
        );
        assert_eq!(
            main_thread_filter(true, RebootAction::Restart, false),
            Some(ThreadKind::MainRestart)
        );
        assert_eq!(
            main_thread_filter(true, RebootAction::Exit, true),
            Some(ThreadKind::Main)
        );
        assert_eq!(main_thread_filter(false, RebootAction::Exit, false), None);
        assert_eq!(
            main_thread_filter(false, RebootAction::Restart, false),
            None
        );
    }
}
