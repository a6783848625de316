//! One VM from start to stop: check every input, log the user in, build
//! the machine step by step (`builder`), run it until the guest powers
//! off, reboots or crashes (`running`), and record why it stopped. With
//! `--on-reboot restart` a guest reboot builds a fresh machine.

mod builder;
mod disks;
mod running;

use std::fs::File;
use std::io;
use std::path::Path;

use crate::api::SocketError;
use crate::arch::acpi::AcpiError;
use crate::arch::boot_params::BootError;
use crate::arch::memory::MemoryError;
use crate::arch::vcpu::ArchError;
use crate::audit::{AuditError, Event};
use crate::block::BlockError;
use crate::config::{BootSource, ConfigError, RebootAction, VmConfig};
use crate::confined::ThreadError;
use crate::console::{PhraseError, PromptPhrase};
use crate::devices::bus::BusError;
use crate::devices::pci::PciError;
use crate::devices::virtio::net::{NetError, TapError};
use crate::display::{Display, DisplayError, DisplayHandle};
use crate::exit::ExitReason;
use crate::external_media::MediumError;
use crate::identity::disk::UserDiskError;
use crate::identity::session::{start_session, Session, SessionError};
use crate::identity::smartcard::login::CardCredential;
use crate::identity::smartcard::{self, PinSource, SmartCardError};
use crate::identity::{Credential, RetryDelay};
use crate::kvm::vcpu::VcpuStartError;
use crate::kvm::vm::VmError;
use crate::loader::firmware::{inspect_firmware, FirmwareError};
use crate::loader::LoaderError;
use crate::seccomp::{SeccompError, ThreadKind};
use crate::service::sigterm::{self, SigtermError};
use crate::service::{notify, SigtermWatch};
use crate::storage::luks::is_luks;
use crate::storage::StorageError;
use crate::vpn::VpnLinkError;

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
    Firmware(#[from] FirmwareError),
    #[error("cannot create the firmware log {path}: {source}; check that its directory exists and is writable")]
    FirmwareLog { path: String, source: io::Error },
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
    Thread(#[from] ThreadError),
    #[error(transparent)]
    VcpuStart(#[from] VcpuStartError),
    #[error(transparent)]
    ApiSocket(#[from] SocketError),
    #[error("reading KVM's supported CPUID failed: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error(transparent)]
    PromptPhrase(#[from] PhraseError),
    #[error(transparent)]
    Display(#[from] DisplayError),
    #[error(transparent)]
    Sigterm(#[from] SigtermError),
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
    check_boot_files(config)?;
    // Before any other thread starts: they inherit SIGTERM blocked.
    let _sigterm = SigtermWatch::start(config.seccomp, config.stop_timeout)?;
    notify::init_from_env();
    // Checked before anything is asked: a phrase file that is not private
    // stops securevm here rather than at a PIN prompt with the guest running.
    let phrase = PromptPhrase::load_configured()?;
    // The screen first: with a policy, the login is asked on it.
    let display = match &config.display {
        Some(display_config) => Some(Display::start(
            display_config,
            phrase.clone(),
            config.seccomp,
        )?),
        None => None,
    };
    let display_handle = display.as_ref().map(Display::handle);
    // Audit log, policy, login and role: before any guest exists.
    let session = start_session(config, RetryDelay::default(), display_handle.as_ref())?;
    let audit = session.audit.clone();
    // Without a policy there is no user, but a card may still open disks.
    let card_only = match (&config.card, &config.policy) {
        (Some(options), None) => {
            let mut options = options.clone();
            if let (PinSource::Terminal, Some(display)) = (&options.pins, &display_handle) {
                options.pins = PinSource::Display(display.clone());
            }
            let login = smartcard::login_without_policy(&options)?;
            Some(CardCredential::new(login, options.pins, options.retry))
        }
        _ => None,
    };
    if let Some(display) = &display_handle {
        display.notice("securevm", "Starting the machine...");
    }
    let result = run_session(
        config,
        &session,
        card_only.as_ref(),
        &phrase,
        display_handle.as_ref(),
    );
    let reason = match &result {
        Ok(ExitReason::PowerOff) => "guest powered off".to_string(),
        Ok(ExitReason::Reboot) => "guest rebooted".to_string(),
        Ok(ExitReason::GuestCrash(_)) => "guest crashed".to_string(),
        Ok(ExitReason::UserQuit) => "stopped from the console".to_string(),
        Ok(ExitReason::Internal(what)) => format!("securevm failed: {what}"),
        Err(e) => format!("securevm failed: {e}"),
    };
    notify::send(&format!("STOPPING=1\nSTATUS=Stopped: {reason}"));
    audit.record_or_warn(Event::VmStop { reason });
    audit.finish_forwarding();
    result
}

fn run_session(
    config: &VmConfig,
    session: &Session,
    card_only: Option<&CardCredential>,
    phrase: &PromptPhrase,
    display: Option<&DisplayHandle>,
) -> Result<ExitReason, VmmError> {
    let mut policy_in_force = None;
    let mut main_filtered = false;
    loop {
        let reason = builder::run_once(
            config,
            session,
            card_only,
            phrase,
            display,
            &mut policy_in_force,
            &mut main_filtered,
        )?;
        if reason == ExitReason::Reboot
            && config.on_reboot == RebootAction::Restart
            && !sigterm::stop_requested()
        {
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

/// Opens the files the guest boots from, and checks firmware through, so
/// that a wrong path or a bad firmware file stops securevm before anyone is
/// asked for a passphrase.
fn check_boot_files(config: &VmConfig) -> Result<(), VmmError> {
    match &config.boot {
        BootSource::Kernel { kernel, initrd, .. } => {
            open_input("kernel", kernel)?;
            if let Some(path) = initrd {
                open_input("initrd", path)?;
            }
        }
        BootSource::Firmware { firmware, .. } => {
            let mut file = open_input("firmware", firmware)?;
            inspect_firmware(&mut file, config.memory_bytes())?;
        }
    }
    Ok(())
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
