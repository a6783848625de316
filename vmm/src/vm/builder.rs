//! The boot sequence as a short list of named steps, top to bottom (see
//! [`run_once`]): open every input before KVM is touched, create the
//! machine (KVM VM, guest RAM, kernel, boot structures, ACPI tables),
//! attach the legacy devices, then the PCI and virtio devices, create the
//! vCPUs, and start the console, the vCPU threads and the services. The
//! result is a [`RunningVm`], which owns all of it until it stops.

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use guest_policy::{Action, NetworkPolicy};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::api::protocol::{Device, MediaCounters};
use crate::api::{ApiServer, BoundSocket, LiveVm, LiveVmParts, NetDevice, ServerConfig};
use crate::arch::acpi::{create_acpi_tables, PciHotplugSlots, PCI_HOTPLUG_GSI, POWER_BUTTON_GSI};
use crate::arch::boot_params::{configure_boot, configure_firmware_boot, BootConfig, BootEntry};
use crate::arch::cpuid::physical_address_bits;
use crate::arch::guest_ram::GuestRam;
use crate::arch::layout::{
    pci_mmio64_window, COM1_IRQ, COM1_PORT, PCI_CONFIG_ADDRESS_PORT, PCI_ECAM_SIZE, PCI_ECAM_START,
    PCI_HOTPLUG_PORT_BASE, PCI_HOTPLUG_PORT_LEN,
};
use crate::arch::memory::low_ram_end;
use crate::arch::vcpu::configure_vcpu;
use crate::audit::{Audit, Event};
use crate::config::{BootSource, ConfigError, VmConfig};
use crate::confined::{self, Confinement};
use crate::console::{spawn_input_thread, ConsoleGate, ConsoleWriter, PromptPhrase, RawTerminal};
use crate::devices::bus::Bus;
use crate::devices::firmware::attach_firmware_devices;
use crate::devices::pci::{PciConfigIo, PciConfigMmio, PciHotplug, PciHotplugPorts, PciRoot};
use crate::devices::power::{
    AcpiPowerDevice, I8042Device, ACPI_POWER_PORT_BASE, ACPI_POWER_PORT_LEN,
};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::{port_channel, PortEnd, VirtioConsole};
use crate::devices::virtio::gpu::Gpu;
use crate::devices::virtio::input::{InputEvents, VirtioInput};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::IoGate;
use crate::display::{
    clipboard_policy, ClipboardLink, DisplayConfig, DisplayError, DisplayHandle, GuestLink,
};
use crate::exit::{ExitNotifier, ExitReason};
use crate::external_media::hotplug::block_device_numbers;
use crate::external_media::watch::RemovableWatch;
use crate::external_media::{MediaHotplug, MediaHotplugParts, EJECT_TIMEOUT};
use crate::identity::session::{Session, SessionError};
use crate::identity::smartcard::login::CardCredential;
use crate::identity::smartcard::monitor::{watch_session, RemovalMonitor};
use crate::kvm::vcpu::{self, VcpuContext, VcpuControl, VcpuControlError, VcpuHandle};
use crate::kvm::vm::Vm;
use crate::loader::firmware::load_firmware;
use crate::loader::{load_cmdline, load_initrd, load_kernel};
use crate::network::PolicyFilter;
use crate::policy::dir::{PolicyDir, PolicyDirWatch};
use crate::policy::{ActiveRole, PolicyVerifier};
use crate::seccomp::{self, ThreadKind};
use crate::service::ServedVm;
use crate::vpn::VpnLink;
use gpu2d::Gpu2dConfig;
use guest_policy::model::Clipboard;
use netfilter::{Filter, FilterConfig, FilterControl, DEFAULT_CONNTRACK_CAPACITY};

use super::disks::{open_disks, OpenedDisks};
use super::running::RunningVm;
use super::{main_thread_filter, may_unlock_luks, open_input, session_card, VmmError};

/// Builds one VM from `config` and runs it until it stops. The policy a
/// push put in force (`policy_in_force`) outlives a guest reboot;
/// `main_filtered` says whether an earlier run already filtered the main
/// thread (filters stack, so it is installed once per process).
pub(super) fn run_once(
    config: &VmConfig,
    session: &Session,
    card_only: Option<&CardCredential>,
    phrase: &PromptPhrase,
    display: Option<&DisplayHandle>,
    policy_in_force: &mut Option<ActiveRole>,
    main_filtered: &mut bool,
) -> Result<ExitReason, VmmError> {
    config.validate()?;
    let builder = VmBuilder {
        config,
        session,
        card_only,
        phrase,
        display,
    };
    let (boot_files, boot_devices, control) = builder.open_inputs(policy_in_force.take())?;
    let machine = builder.create_machine(boot_files.image, control.hotplug_slots())?;
    let legacy = builder.attach_legacy_devices(&machine, boot_files.firmware_log)?;
    let pci = builder.attach_pci_devices(&machine, &legacy, boot_devices)?;
    let vcpu_fds = builder.create_vcpus(&machine)?;
    crate::service::vm_starting();
    let running = builder.start(control, machine, legacy, pci, vcpu_fds)?;
    builder.narrow_main_thread(main_filtered)?;
    let served = ServedVm::started(running.live.clone());
    let reason = running.wait_for_exit();
    drop(served);
    *policy_in_force = running.stop(&reason);
    if let Some(display) = display {
        display.detach_guest();
    }
    Ok(reason)
}

/// What every step reads: the command line, the logged-in session (or
/// the card given to open disks), the prompt phrase and the display.
struct VmBuilder<'a> {
    config: &'a VmConfig,
    session: &'a Session,
    card_only: Option<&'a CardCredential>,
    phrase: &'a PromptPhrase,
    display: Option<&'a DisplayHandle>,
}

/// What the guest boots from, and where a firmware boot's debug console
/// goes, opened before KVM is touched.
struct BootFiles {
    image: BootImage,
    /// `--firmware-log`, created (mode 0600) and truncated.
    firmware_log: Option<File>,
}

/// What is loaded into guest memory.
enum BootImage {
    Kernel {
        kernel: File,
        initrd: Option<File>,
        cmdline: String,
    },
    Firmware(File),
}

/// The devices the guest has from boot on, opened but not yet attached.
struct BootDevices {
    blocks: Vec<Block>,
    nets: Vec<Net>,
}

/// What the control API serves and shows.
struct ControlParts {
    socket: Option<BoundSocket>,
    role: Option<ActiveRole>,
    verifier: Option<PolicyVerifier>,
    devices: Vec<Device>,
    media: MediaCounters,
    filter_controls: Vec<FilterControl>,
    /// Sticks plugged into the host are watched (`--watch-removable`, or
    /// the role at start asks for it).
    watch_removable: bool,
    /// `--policy-dir`, watched from before the VM is built.
    policy_dir: Option<PolicyDir>,
}

impl ControlParts {
    /// Media can be hot-plugged only through the control socket or the
    /// watch for sticks; without either the guest is shown no slots and
    /// the controller does not exist.
    fn hotplug_slots(&self) -> PciHotplugSlots {
        if self.socket.is_some() || self.watch_removable {
            PciHotplugSlots::Present
        } else {
            PciHotplugSlots::Absent
        }
    }
}

/// The KVM VM with its RAM, the kernel loaded and the boot structures
/// and ACPI tables written.
struct Machine {
    power_button: EventFd,
    memory: Arc<GuestMemoryMmap>,
    guest_ram: GuestRam,
    vm: Arc<Vm>,
    boot: BootEntry,
    num_cpus: u8,
    hotplug_slots: PciHotplugSlots,
    /// What KVM supports, from which each vCPU's CPUID is derived.
    supported_cpuid: CpuId,
}

/// The port and MMIO buses with the legacy devices on them, and what
/// they report exits and console output through.
struct LegacyDevices {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<SerialDevice>>,
    console_writer: ConsoleWriter,
    exit: ExitNotifier,
    exit_events: Receiver<ExitReason>,
}

/// The PCI root with the virtio devices on it.
struct PciDevices {
    pci: Arc<PciRoot>,
    /// `None` without a control socket (see [`ControlParts::hotplug_slots`]).
    hotplug: Option<Arc<PciHotplug>>,
    /// Created before the devices: their I/O threads stop with the vCPUs.
    vcpu_control: VcpuControl,
    /// The host sides of the desktop's devices (`--display`).
    desktop: Option<DesktopDevices>,
}

/// The host sides of the guest's screen, keyboard, pointer and clipboard
/// port, handed to the display once the guest runs.
struct DesktopDevices {
    keyboard: InputEvents,
    tablet: InputEvents,
    tablet_size: (u32, u32),
    clipboard_port: PortEnd,
}

impl VmBuilder<'_> {
    /// Step 1: every input, before KVM is touched, so bad input fails fast
    /// and nothing is created or written on its behalf.
    fn open_inputs(
        &self,
        pushed_role: Option<ActiveRole>,
    ) -> Result<(BootFiles, BootDevices, ControlParts), VmmError> {
        let (config, session) = (self.config, self.session);
        // Bound first, while securevm has no other threads (the socket's
        // mode comes from a process-wide umask), and so a bad path fails
        // at once.
        let socket = match &config.api_socket {
            Some(path) => Some(BoundSocket::bind(path)?),
            None => None,
        };
        let boot_files = open_boot_files(&config.boot)?;
        // A policy pushed through the control socket outlives a guest reboot.
        let role = pushed_role.or_else(|| session.role.clone());
        let verifier = match (&config.policy, &session.login) {
            (Some(policy), Some(login)) => Some(
                PolicyVerifier::new(policy, &login.identity.user_id).map_err(SessionError::from)?,
            ),
            _ => None,
        };
        crate::storage::parallel::set_worker_confinement(Confinement::new(
            ThreadKind::DiskCrypto,
            config.seccomp,
        ));
        let OpenedDisks {
            blocks,
            devices,
            media,
        } = open_disks(config, session, role.as_ref(), self.card_only)?;
        // The card's session ends once the disks are open: its module is
        // finalized before any guest code runs and before seccomp narrows
        // the main thread (a restart logs the card in again).
        if let Some(card) = session_card(session, self.card_only) {
            drop(card.take_login());
        }
        let (nets, filter_controls) = open_nets(config, role.as_ref())?;
        let policy_dir = match config.policy.as_ref().and_then(|p| p.dir.as_deref()) {
            Some(dir) => Some(PolicyDir::open(dir).map_err(|source| VmmError::Io {
                what: "watching the --policy-dir directory (inotify)",
                source,
            })?),
            None => None,
        };
        Ok((
            boot_files,
            BootDevices { blocks, nets },
            ControlParts {
                watch_removable: config.external.watch_removable
                    || role
                        .as_ref()
                        .is_some_and(|r| r.role.storage.watches_removable()),
                socket,
                role,
                verifier,
                devices,
                media,
                filter_controls,
                policy_dir,
            },
        ))
    }

    /// Step 2: the KVM VM and its RAM, the kernel and initrd (or the
    /// firmware) loaded, the boot structures and ACPI tables written.
    fn create_machine(
        &self,
        image: BootImage,
        hotplug_slots: PciHotplugSlots,
    ) -> Result<Machine, VmmError> {
        let config = self.config;
        let vm = Arc::new(Vm::new(&config.kvm_device)?);
        vm.check_vcpu_count(usize::from(config.cpus))?;
        let num_cpus =
            u8::try_from(config.cpus).map_err(|_| ConfigError::TooManyVcpus(config.cpus))?;
        let guest_ram = GuestRam::new(config.memory_bytes())?;
        let memory = guest_ram.memory().clone();
        vm.register_memory(&memory)?;
        vm.create_interrupt_controllers()?;

        let boot = match image {
            BootImage::Kernel {
                kernel,
                initrd,
                cmdline,
            } => self.load_kernel(&memory, kernel, initrd, &cmdline)?,
            BootImage::Firmware(mut firmware) => {
                let image = load_firmware(&memory, &mut firmware)?;
                configure_firmware_boot(&memory, image.pvh_entry, config.memory_bytes())?
            }
        };
        // The vCPUs' physical address width bounds the 64-bit PCI window.
        let supported_cpuid = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::Cpuid)?;
        let pci_mmio64 = pci_mmio64_window(
            config.memory_bytes(),
            physical_address_bits(supported_cpuid.as_slice()),
        );
        create_acpi_tables(memory.as_ref(), num_cpus, hotplug_slots, pci_mmio64)?;
        let power_button = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
            what: "creating the power button interrupt",
            source,
        })?;
        vm.register_irqfd(&power_button, POWER_BUTTON_GSI)?;
        Ok(Machine {
            power_button,
            memory,
            guest_ram,
            vm,
            boot,
            num_cpus,
            hotplug_slots,
            supported_cpuid,
        })
    }

    /// The kernel, initrd and command line of a `--kernel` boot loaded,
    /// and the boot structures for them written.
    fn load_kernel(
        &self,
        memory: &GuestMemoryMmap,
        mut kernel: File,
        initrd: Option<File>,
        cmdline: &str,
    ) -> Result<BootEntry, VmmError> {
        let kernel_image = load_kernel(memory, &mut kernel)?;
        let initrd_info = match initrd {
            Some(mut file) => Some(load_initrd(memory, &mut file, &kernel_image)?),
            None => None,
        };
        let cmdline = load_cmdline(memory, cmdline, &kernel_image)?;
        Ok(configure_boot(
            memory,
            &BootConfig {
                kernel: &kernel_image,
                cmdline,
                initrd: initrd_info,
                mem_size: self.config.memory_bytes(),
            },
        )?)
    }

    /// Step 3: the buses, with the serial port (its output through the
    /// console writer thread), the i8042 reset line and the ACPI power
    /// ports on the port bus. `firmware_log` (`--firmware-log`) is for the
    /// debug console among the devices only a firmware boot gets
    /// (`devices::firmware`).
    fn attach_legacy_devices(
        &self,
        machine: &Machine,
        firmware_log: Option<File>,
    ) -> Result<LegacyDevices, VmmError> {
        let (exit, exit_events) = ExitNotifier::new();
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
            what: "creating the serial interrupt",
            source,
        })?;
        machine.vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        let (console_writer, console_sink) = ConsoleWriter::spawn(
            std::io::stdout(),
            Confinement::new(ThreadKind::ConsoleOutput, self.config.seccomp),
        )?;
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
        if matches!(self.config.boot, BootSource::Firmware { .. }) {
            let memory = self.config.memory_bytes();
            attach_firmware_devices(&pio, firmware_log, memory - low_ram_end(memory))?;
        }
        Ok(LegacyDevices {
            pio,
            mmio,
            serial,
            console_writer,
            exit,
            exit_events,
        })
    }

    /// Step 4: the PCI root (configuration space on ports and ECAM), the
    /// disks and network devices on it, and the hot-plug controller.
    fn attach_pci_devices(
        &self,
        machine: &Machine,
        legacy: &LegacyDevices,
        devices: BootDevices,
    ) -> Result<PciDevices, VmmError> {
        let seccomp = self.config.seccomp;
        let vcpu_control = VcpuControl::default();
        let pci = PciRoot::with_io_gate(
            legacy.mmio.clone(),
            machine.vm.clone(),
            vcpu_control.io_gate(),
        );
        for mut block in devices.blocks {
            block.set_confinement(Confinement::new(ThreadKind::BlockIo, seccomp));
            pci.add_virtio_device(Box::new(block), machine.memory.clone())?;
        }
        for mut net in devices.nets {
            net.set_confinement(Confinement::new(ThreadKind::NetIo, seccomp));
            pci.add_virtio_device(Box::new(net), machine.memory.clone())?;
        }
        let desktop = match (self.display, &self.config.display) {
            (Some(display), Some(config)) => Some(attach_desktop_devices(
                &pci, machine, display, config, seccomp,
            )?),
            _ => None,
        };
        legacy.pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            u64::from(PCI_CONFIG_ADDRESS_PORT),
            8,
        )?;
        let hotplug = match machine.hotplug_slots {
            PciHotplugSlots::Present => Some(pci_hotplug_controller(&machine.vm, &legacy.pio)?),
            PciHotplugSlots::Absent => None,
        };
        legacy.mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )?;
        Ok(PciDevices {
            pci,
            hotplug,
            vcpu_control,
            desktop,
        })
    }

    /// Step 5: the vCPUs, configured (the boot vCPU at the kernel's entry)
    /// but not yet running.
    fn create_vcpus(&self, machine: &Machine) -> Result<Vec<VcpuFd>, VmmError> {
        let vm = &machine.vm;
        let mut vcpu_fds = Vec::with_capacity(usize::from(machine.num_cpus));
        for index in 0..machine.num_cpus {
            let fd = vm.create_vcpu(index)?;
            let entry = (index == 0).then_some(&machine.boot);
            configure_vcpu(
                &fd,
                vm.kvm(),
                &machine.supported_cpuid,
                index,
                machine.num_cpus,
                entry,
            )?;
            vcpu_fds.push(fd);
        }
        Ok(vcpu_fds)
    }

    /// Step 6: the console, the network refusal reporter, the vCPU
    /// threads (the guest runs from here on) and the services around it.
    fn start(
        &self,
        control: ControlParts,
        machine: Machine,
        legacy: LegacyDevices,
        mut pci: PciDevices,
        vcpu_fds: Vec<VcpuFd>,
    ) -> Result<RunningVm, VmmError> {
        let seccomp = self.config.seccomp;
        if !seccomp {
            log::warn!("--no-seccomp: seccomp filters are disabled; use this for debugging only");
        }
        let raw_terminal =
            RawTerminal::enable(libc::STDIN_FILENO).map_err(|source| VmmError::Io {
                what: "switching the terminal to raw mode",
                source,
            })?;
        let console_gate = ConsoleGate::new(self.phrase.clone(), legacy.console_writer.hold());
        spawn_input_thread(
            legacy.serial,
            legacy.exit.clone(),
            console_gate.clone(),
            Confinement::new(ThreadKind::ConsoleInput, seccomp),
        )?;
        spawn_refusal_reporter(
            control.filter_controls.clone(),
            seccomp,
            self.session.audit.clone(),
        )?;
        let stop_flag = Arc::new(AtomicBool::new(false));
        let vcpu_context = VcpuContext {
            pio: legacy.pio,
            mmio: legacy.mmio,
            exit: legacy.exit.clone(),
            stop: stop_flag.clone(),
            control: pci.vcpu_control.clone(),
        };
        let vcpus = self.start_vcpus(vcpu_fds, &vcpu_context)?;
        self.show_guest_display(
            pci.desktop.take(),
            pci.vcpu_control.io_gate(),
            control.role.as_ref(),
        );
        let services = self.start_services(
            control,
            machine.power_button,
            &machine.memory,
            &pci,
            console_gate,
            &legacy.exit,
        )?;
        Ok(RunningVm {
            vcpus,
            api_server: services.api_server,
            removable_watch: services.removable_watch,
            policy_dir_watch: services.policy_dir_watch,
            live: services.live,
            card_monitor: services.card_monitor,
            vcpu_context,
            stop_flag,
            console_gate: services.console_gate,
            raw_terminal,
            pci: pci.pci,
            console_writer: legacy.console_writer,
            exit_events: legacy.exit_events,
            exit: legacy.exit,
            memory: machine.memory,
            guest_ram: machine.guest_ram,
            vm: machine.vm,
        })
    }

    /// Hands the display the guest's input devices and clipboard port,
    /// and shows the guest's picture in place of securevm's login. `role`
    /// is the one in force: a policy pushed before a guest reboot holds
    /// for the clipboard as for the rest.
    fn show_guest_display(
        &self,
        desktop: Option<DesktopDevices>,
        gate: IoGate,
        role: Option<&ActiveRole>,
    ) {
        let (Some(display), Some(desktop)) = (self.display, desktop) else {
            return;
        };
        // Without a policy nothing crosses the clipboard.
        let clipboard = role.map_or(Clipboard::None, |role| role.role.clipboard());
        display.attach_guest(GuestLink {
            keyboard: desktop.keyboard,
            tablet: desktop.tablet,
            gate,
            clipboard: Some(ClipboardLink::new(
                desktop.clipboard_port,
                clipboard_policy(clipboard),
            )),
            audit: self.session.audit.clone(),
            tablet_size: desktop.tablet_size,
            shift_held: AtomicBool::new(false),
            keysyms_down: Mutex::new(Vec::new()),
        });
        display.show_guest();
    }

    /// Records the start in the audit log and starts one thread per vCPU.
    fn start_vcpus(
        &self,
        vcpu_fds: Vec<VcpuFd>,
        context: &VcpuContext,
    ) -> Result<Vec<VcpuHandle>, VmmError> {
        let config = self.config;
        self.session.audit.record(Event::VmStart {
            kernel: config.boot.image().display().to_string(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
        })?;
        let confinement = Confinement::new(ThreadKind::Vcpu, config.seccomp);
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        for (index, fd) in (0..=u8::MAX).zip(vcpu_fds) {
            vcpus.push(vcpu::spawn(index, fd, context.clone(), confinement)?);
        }
        Ok(vcpus)
    }

    /// The smart-card monitor, the media hot-plug thread and the control
    /// API, around a guest that already runs.
    fn start_services(
        &self,
        control: ControlParts,
        power_button: EventFd,
        memory: &Arc<GuestMemoryMmap>,
        pci: &PciDevices,
        console_gate: ConsoleGate,
        exit: &ExitNotifier,
    ) -> Result<Services, VmmError> {
        let (config, session) = (self.config, self.session);
        // Before the main thread's filter: the monitor thread runs the
        // card's PKCS#11 module and must not inherit it.
        let (card_monitor, console_gate) = match session_card(session, self.card_only) {
            Some(card) => (
                Some(watch_card(
                    card,
                    session,
                    &pci.vcpu_control,
                    console_gate,
                    self.display,
                )?),
                None,
            ),
            None => (None, Some(console_gate)),
        };
        let media_hotplug = match &pci.hotplug {
            Some(controller) => Some(
                MediaHotplug::start(MediaHotplugParts {
                    pci: pci.pci.clone(),
                    memory: memory.clone(),
                    controller: controller.clone(),
                    audit: session.audit.clone(),
                    external: config.external.clone(),
                    seccomp: config.seccomp,
                    eject_timeout: EJECT_TIMEOUT,
                    boot_devices: block_device_numbers(
                        config.disks.iter().map(|disk| disk.path.as_path()).chain(
                            config
                                .external
                                .media
                                .iter()
                                .map(std::path::PathBuf::as_path),
                        ),
                    ),
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
            verifier: control.verifier,
            role: control.role,
            devices: control.devices,
            nets: config
                .nets
                .iter()
                .zip(control.filter_controls)
                .map(|(net, filter)| NetDevice {
                    tap: net.tap.clone(),
                    mac: format_mac(net.effective_mac()),
                    addresses: net.addresses.iter().map(IpAddr::to_string).collect(),
                    filter,
                })
                .collect(),
            media: control.media,
            vcpus: pci.vcpu_control.clone(),
            power_button: Box::new(move || power_button.write(1).map_err(|e| e.to_string())),
            exit: exit.clone(),
            audit: session.audit.clone(),
            media_hotplug,
            watch_removable: config.external.watch_removable,
            display: self.display.cloned(),
        }));
        let removable_watch = if control.watch_removable {
            Some(
                RemovableWatch::start(live.clone(), config.seccomp).map_err(|source| {
                    VmmError::Io {
                        what: "watching the host for removable media (the kernel's uevents)",
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        let policy_dir_watch = match control.policy_dir {
            Some(dir) => Some(
                PolicyDirWatch::start(dir, live.clone(), config.seccomp).map_err(|source| {
                    VmmError::Io {
                        what: "starting the --policy-dir thread",
                        source,
                    }
                })?,
            ),
            None => None,
        };
        let api_server = match control.socket {
            Some(socket) => Some(ApiServer::start(
                socket,
                ServerConfig {
                    confinement: Confinement::new(ThreadKind::Api, config.seccomp),
                    ..ServerConfig::default()
                },
                live.clone(),
            )?),
            None => None,
        };
        Ok(Services {
            api_server,
            removable_watch,
            policy_dir_watch,
            live,
            card_monitor,
            console_gate,
        })
    }

    /// Step 7: the main thread narrows itself to its own filter, once per
    /// process (`main_filtered`), now that the VM runs.
    fn narrow_main_thread(&self, main_filtered: &mut bool) -> Result<(), VmmError> {
        let config = self.config;
        let card_in_session = session_card(self.session, self.card_only).is_some();
        let Some(kind) = main_thread_filter(config.seccomp, config.on_reboot, card_in_session)
        else {
            return Ok(());
        };
        if *main_filtered {
            return Ok(());
        }
        if kind == ThreadKind::MainRestart && may_unlock_luks(config)? {
            crate::storage::luks_helper::keep_running().map_err(|source| VmmError::Io {
                what: "starting the LUKS helper for later restarts",
                source,
            })?;
        }
        seccomp::install(kind)?;
        *main_filtered = true;
        Ok(())
    }
}

/// The threads and handles around the running guest.
struct Services {
    api_server: Option<ApiServer>,
    removable_watch: Option<RemovableWatch>,
    policy_dir_watch: Option<PolicyDirWatch>,
    live: Arc<LiveVm>,
    card_monitor: Option<RemovalMonitor>,
    /// Kept while no card monitor holds it.
    console_gate: Option<ConsoleGate>,
}

/// Opens the files `boot` names (and creates the firmware log).
fn open_boot_files(boot: &BootSource) -> Result<BootFiles, VmmError> {
    match boot {
        BootSource::Kernel {
            kernel,
            initrd,
            cmdline,
        } => Ok(BootFiles {
            image: BootImage::Kernel {
                kernel: open_input("kernel", kernel)?,
                initrd: match initrd {
                    Some(path) => Some(open_input("initrd", path)?),
                    None => None,
                },
                cmdline: cmdline.clone(),
            },
            firmware_log: None,
        }),
        BootSource::Firmware { firmware, log } => Ok(BootFiles {
            image: BootImage::Firmware(open_input("firmware", firmware)?),
            firmware_log: match log {
                Some(path) => Some(create_firmware_log(path)?),
                None => None,
            },
        }),
    }
}

/// Creates (or truncates) the firmware log, readable by its owner only:
/// firmware output can name the disks and boot entries of the machine.
fn create_firmware_log(path: &Path) -> Result<File, VmmError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| VmmError::FirmwareLog {
            path: path.display().to_string(),
            source,
        })
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
            device.attach_vpn(Box::new(VpnLink::open(plan.config, plan.key)?));
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
    seccomp: bool,
    audit: Audit,
) -> Result<(), VmmError> {
    if controls.is_empty() {
        return Ok(());
    }
    let confinement = Confinement::new(ThreadKind::Reporter, seccomp);
    // Never joined: it reports until the process ends.
    let _detached = confined::spawn("net-report", confinement, move || loop {
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
    })?;
    Ok(())
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
    display: Option<&DisplayHandle>,
) -> Result<RemovalMonitor, VmmError> {
    let (pause, resume) = (vcpus.clone(), vcpus.clone());
    let (lock_screen, unlock_screen) = (display.cloned(), display.cloned());
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
            if let Some(display) = &lock_screen {
                display.notice(
                    "securevm: locked",
                    "The smart card was removed. Insert it to unlock.",
                );
            }
            // The lock is in force from the first attempt on; a vCPU or
            // device still busy stops as soon as it can. Wait for them (and
            // say so) before the console reports the session locked.
            while let Err(VcpuControlError::PauseTimedOut(_)) =
                pause.lock_session(CARD_PAUSE_TIMEOUT)
            {
                log::warn!("card removed: the vCPUs have not stopped yet; trying again");
            }
        }),
        Box::new(move || {
            resume.unlock_session();
            if let Some(display) = &unlock_screen {
                display.show_guest();
            }
        }),
    )
    .map_err(|source| VmmError::Io {
        what: "starting the smart-card monitor",
        source,
    })
}

/// The guest's screen, keyboard, tablet and clipboard port (`--display`),
/// with their host sides.
fn attach_desktop_devices(
    pci: &Arc<PciRoot>,
    machine: &Machine,
    display: &DisplayHandle,
    config: &DisplayConfig,
    seccomp: bool,
) -> Result<DesktopDevices, VmmError> {
    let confinement = Confinement::new(ThreadKind::DesktopIo, seccomp);
    let mut gpu = Gpu::new(
        Gpu2dConfig {
            width: config.width,
            height: config.height,
            max_mem: config.max_mem,
        },
        Arc::new(display.clone()),
    )
    .map_err(DisplayError::Gpu)?;
    gpu.set_confinement(confinement);
    pci.add_virtio_device(Box::new(gpu), machine.memory.clone())?;
    let input_queue = |source| VmmError::Io {
        what: "creating the virtio-input queues",
        source,
    };
    let keyboard = InputEvents::new().map_err(input_queue)?;
    let tablet = InputEvents::new().map_err(input_queue)?;
    for mut device in [
        VirtioInput::keyboard(keyboard.clone()),
        VirtioInput::tablet(tablet.clone(), config.width, config.height),
    ] {
        device.set_confinement(confinement);
        pci.add_virtio_device(Box::new(device), machine.memory.clone())?;
    }
    let (port_device, clipboard_port) = port_channel().map_err(|source| VmmError::Io {
        what: "creating the clipboard port",
        source,
    })?;
    let mut console = VirtioConsole::new(port_device);
    console.set_confinement(confinement);
    pci.add_virtio_device(Box::new(console), machine.memory.clone())?;
    Ok(DesktopDevices {
        keyboard,
        tablet,
        tablet_size: (config.width, config.height),
        clipboard_port,
    })
}

/// How long one pause attempt waits for the vCPUs after the card is pulled.
const CARD_PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
