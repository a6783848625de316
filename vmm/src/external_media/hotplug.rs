//! External media attached and detached while the guest runs (PCI
//! hot-plug of a virtio-blk device), for `ctl attach-external` and
//! `ctl detach-external`.
//!
//! Threading and seccomp: attaching opens an image, may unlock LUKS2
//! (through the LUKS helper process, which is started here, before any
//! filter, and kept: the filter allows no new processes), creates
//! eventfds and starts the device's I/O thread.
//! The control API's threads and the main thread are narrowed far below
//! that, and vCPU threads must never wait for such work. So one thread of
//! its own kind, `media-hotplug`, is started at boot and does all of it:
//! it installs its own filter ([`ThreadKind::MediaHotplug`], reviewed in
//! `seccomp.rs`) before it takes the first request, and every thread it
//! starts inherits that filter and narrows it further (an I/O thread
//! installs `BlockIo` on top). The API thread only sends a request and
//! waits for the answer. A vCPU only flips bits in the hot-plug
//! controller's registers. With `--no-seccomp` the same thread does the
//! same work without a filter.
//!
//! Detaching flushes the image, asks the guest to eject the slot, waits
//! (bounded) for the guest's `_EJ0`, then takes the device out of the PCI
//! root (its BARs and doorbells leave with it), stops its I/O thread and
//! flushes again. A guest that does not eject in time keeps the device,
//! and the caller learns why. A guest may also eject a medium on its own
//! (the user's "safely remove", or `echo 0 > /sys/bus/pci/slots/N/power`):
//! the thread looks for such ejects between requests, at least every
//! [`GUEST_EJECT_POLL`], and takes the device out the same way. Media
//! present at boot are not removable.
//!
//! Sticks found on the host's USB or MMC bus (`--watch-removable`, see
//! `external_media::watch`) come as a [`HostStick`]. Each is claimed with
//! `O_EXCL` before anything reads it, so the host's own mounts and a
//! second securevm see it busy, and the claim is checked against the
//! kernel's disk sequence number the watcher saw: while the claim is held
//! the kernel cannot give the node's name to another disk, so the later
//! opens by path reach this stick or fail. A stick pulled without an eject
//! fails every request from that moment ([`PullSwitch`]) and the guest is
//! asked to let go of its slot; the device leaves when it does.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::decision::{
    allowed_serials, decide_medium, media_policy, MediaRules, Medium, MediumError, MediumOutcome,
    MediumSerial,
};
use super::open::ExternalMediaPolicy;
use crate::audit::{Audit, AuditError, Event};
use crate::block::{BlockBackend, BlockError, PullSwitch, PullableBackend};
use crate::config::ExternalMediaConfig;
use crate::confined::{self, Confinement};
use crate::devices::pci::hotplug::HotplugError;
use crate::devices::pci::{PciError, PciHotplug, PciRoot};
use crate::devices::virtio::block::{disk_id_from_path, disk_id_prefix, Block};
use crate::policy::ActiveRole;
use crate::seccomp::ThreadKind;
use crate::storage::luks_helper;
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};
use crate::sync::lock;

/// How long a detach waits for the guest to eject the slot.
pub const EJECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stick plugged in again waits for the guest to let go of the
/// pulled one under the same id: a guest that ejects does so well within
/// it, and one that never does must not hold up every other stick and the
/// control API for the full [`EJECT_TIMEOUT`].
const REPLUG_EJECT_WAIT: Duration = Duration::from_secs(3);

/// How soon a medium the guest ejected on its own leaves the VM (and
/// `ctl status`) at the latest.
pub const GUEST_EJECT_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{path}: {source}; give the path of an existing image file or block device")]
    BadPath { path: String, source: io::Error },
    #[error("{path} is neither an image file nor a block device")]
    NotAMedium { path: String },
    #[error("a medium with the id '{id}' is already attached; detach it first")]
    AlreadyAttached { id: String },
    /// Refused by policy (counted as denied and audited).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Medium(#[from] MediumError),
    #[error(
        "no external medium '{id}' was attached while the VM runs; see `ctl status` for the ids"
    )]
    UnknownId { id: String },
    #[error(
        "the guest did not release '{id}' within {} s (still mounted and busy, or no ACPI \
         hot-plug in the guest); it stays attached: unmount it in the guest and try again",
        .timeout.as_secs()
    )]
    NotEjected { id: String, timeout: Duration },
    #[error("cannot create the virtio-blk device for {path}: {source}")]
    Block { path: String, source: BlockError },
    #[error("cannot plug the device into the PCI bus: {0}")]
    Pci(#[from] PciError),
    #[error("cannot signal the guest: {0}")]
    Hotplug(#[from] HotplugError),
    #[error("cannot flush {path}: {source}")]
    Flush { path: String, source: io::Error },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(
        "{path} is in use by another program (mounted on the host, or attached by another \
         securevm); it stays with that holder"
    )]
    Busy { path: String },
    #[error("{path} {detail}; nothing was attached")]
    Gone { path: String, detail: String },
    #[error("{path} is already a disk of this VM (given at start)")]
    BootDevice { path: String },
    #[error("the media hot-plug thread has stopped; securevm is shutting down")]
    Stopped,
}

/// A whole disk on the host's USB or MMC bus, as the watcher found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStick {
    /// Its device node, e.g. `/dev/sdb`.
    pub devnode: PathBuf,
    /// The kernel's sequence number for this disk, never reused until the
    /// host reboots: what tells this stick from the next one to get its
    /// node's name.
    pub diskseq: u64,
    /// The serial its hardware reports (printable ASCII only); `None` if
    /// it reports none.
    pub serial: Option<String>,
}

impl HostStick {
    /// The medium's id in `ctl status` and `ctl detach-external`, and the
    /// disk serial the guest sees: the stick's serial cut to the 20 bytes
    /// virtio-blk carries, or `usb-DISKSEQ` when it has none.
    pub fn medium_id(&self) -> String {
        match self.serial.as_deref() {
            Some(serial) if !serial.is_empty() => disk_id_prefix(serial),
            _ => format!("usb-{}", self.diskseq),
        }
    }
}

/// A medium attached at runtime, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedMedium {
    pub id: String,
    pub path: String,
    /// `encrypt` or `read-only`.
    pub mode: String,
}

/// Everything the hot-plug thread works with, handed over at boot.
pub struct MediaHotplugParts {
    pub pci: Arc<PciRoot>,
    pub memory: Arc<GuestMemoryMmap>,
    pub controller: Arc<PciHotplug>,
    pub audit: Audit,
    /// `--external-policy`, `--external-passphrase-file`, `--format-blank-external`.
    pub external: ExternalMediaConfig,
    /// Install seccomp filters on this thread and the I/O threads it starts.
    pub seccomp: bool,
    pub eject_timeout: Duration,
    /// Device numbers of the block devices the VM started with (`--disk`,
    /// `--external`): a stick found on the host that is one of them is
    /// not attached a second time.
    pub boot_devices: Vec<u64>,
}

enum Request {
    Attach {
        path: PathBuf,
        /// Boxed: a role (its network rules) is large beside a detach.
        role: Box<Option<ActiveRole>>,
        /// Ids already in use by devices present at boot.
        taken: Vec<String>,
        reply: Sender<Result<AttachedMedium, MediaError>>,
    },
    Detach {
        id: String,
        reply: Sender<Result<(), MediaError>>,
    },
    AttachStick {
        stick: HostStick,
        role: Box<Option<ActiveRole>>,
        taken: Vec<String>,
        reply: Sender<Result<AttachedMedium, MediaError>>,
    },
    Pulled {
        diskseq: u64,
        why: String,
        reply: Sender<Option<String>>,
    },
}

/// The handle the control API holds: requests go to the hot-plug thread.
pub struct MediaHotplug {
    requests: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    controller: Arc<PciHotplug>,
    /// What is plugged now, kept by the hot-plug thread.
    attached: Arc<Mutex<Vec<AttachedMedium>>>,
}

impl MediaHotplug {
    /// Starts the `media-hotplug` thread; returns once its filter is in
    /// place (or with the reason it is not).
    pub fn start(parts: MediaHotplugParts) -> io::Result<Self> {
        luks_helper::keep_running()?;
        // OpenSSL's one-time setup asks the kernel about the machine
        // (sysinfo), which the filter forbids; the first encrypted medium
        // may be the first use of OpenSSL in this process.
        openssl::init();
        let (requests, receiver) = mpsc::channel();
        let controller = parts.controller.clone();
        let attached = Arc::new(Mutex::new(Vec::new()));
        let shown = attached.clone();
        let confinement = Confinement::new(ThreadKind::MediaHotplug, parts.seccomp);
        let thread = confined::spawn("media-hotplug", confinement, move || {
            Worker {
                parts,
                plugged: Vec::new(),
                shown,
            }
            .serve(&receiver);
        })
        .map_err(io::Error::other)?;
        Ok(Self {
            requests: Mutex::new(Some(requests)),
            thread: Mutex::new(Some(thread)),
            controller,
            attached,
        })
    }

    /// Attaches the medium at `path` under `role`'s rules; `taken` are the
    /// ids of devices present at boot.
    pub fn attach(
        &self,
        path: &Path,
        role: Option<ActiveRole>,
        taken: Vec<String>,
    ) -> Result<AttachedMedium, MediaError> {
        let (reply, answer) = mpsc::channel();
        self.send(Request::Attach {
            path: path.to_path_buf(),
            role: Box::new(role),
            taken,
            reply,
        })?;
        answer.recv().map_err(|_| MediaError::Stopped)?
    }

    /// Detaches the medium attached at runtime as `id`.
    pub fn detach(&self, id: &str) -> Result<(), MediaError> {
        let (reply, answer) = mpsc::channel();
        self.send(Request::Detach {
            id: id.to_string(),
            reply,
        })?;
        answer.recv().map_err(|_| MediaError::Stopped)?
    }

    /// Claims and attaches a stick the watcher found on the host, under
    /// `role`'s rules as [`MediaHotplug::attach`] does.
    pub fn attach_stick(
        &self,
        stick: HostStick,
        role: Option<ActiveRole>,
        taken: Vec<String>,
    ) -> Result<AttachedMedium, MediaError> {
        let (reply, answer) = mpsc::channel();
        self.send(Request::AttachStick {
            stick,
            role: Box::new(role),
            taken,
            reply,
        })?;
        answer.recv().map_err(|_| MediaError::Stopped)?
    }

    /// The stick with `diskseq` left the host (or changed under the guest,
    /// `why`): every request to it fails from now on and the guest is
    /// asked to eject it. Returns its id if it was attached. Never waits
    /// for the guest or the device.
    pub fn stick_pulled(&self, diskseq: u64, why: &str) -> Result<Option<String>, MediaError> {
        let (reply, answer) = mpsc::channel();
        self.send(Request::Pulled {
            diskseq,
            why: why.to_string(),
            reply,
        })?;
        answer.recv().map_err(|_| MediaError::Stopped)
    }

    /// The media attached at runtime and still plugged, oldest first.
    pub fn attached(&self) -> Vec<AttachedMedium> {
        lock(&self.attached).clone()
    }

    /// Ends the thread (after the request in progress, whose wait for an
    /// eject ends at once); its devices go with the PCI root.
    pub fn stop(&self) {
        self.controller.close();
        lock(&self.requests).take();
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                log::error!("the media hot-plug thread panicked");
            }
        }
    }

    fn send(&self, request: Request) -> Result<(), MediaError> {
        lock(&self.requests)
            .as_ref()
            .ok_or(MediaError::Stopped)?
            .send(request)
            .map_err(|_| MediaError::Stopped)
    }
}

impl Drop for MediaHotplug {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One medium in a hot-plug slot.
struct Plugged {
    medium: AttachedMedium,
    slot: u8,
    /// A second handle on the image, to flush it around the detach; for a
    /// stick, its `O_EXCL` claim. `None` once the stick was pulled.
    image: Option<File>,
    stick: Option<PluggedStick>,
}

/// What a stick found on the host adds to [`Plugged`].
struct PluggedStick {
    diskseq: u64,
    serial: Option<String>,
    pull: PullSwitch,
}

struct Worker {
    parts: MediaHotplugParts,
    plugged: Vec<Plugged>,
    /// `plugged`'s media, for [`MediaHotplug::attached`].
    shown: Arc<Mutex<Vec<AttachedMedium>>>,
}

impl Worker {
    fn serve(&mut self, requests: &Receiver<Request>) {
        loop {
            match requests.recv_timeout(GUEST_EJECT_POLL) {
                Ok(Request::Attach {
                    path,
                    role,
                    taken,
                    reply,
                }) => {
                    let result = self.attach(&path, role.as_ref().as_ref(), &taken);
                    if let Err(e) = &result {
                        log::warn!("attaching {}: {e}", path.display());
                    }
                    let _ = reply.send(result);
                }
                Ok(Request::Detach { id, reply }) => {
                    let _ = reply.send(self.detach(&id));
                }
                Ok(Request::AttachStick {
                    stick,
                    role,
                    taken,
                    reply,
                }) => {
                    // Its fate is printed once, by the watch's caller.
                    let result = self.attach_stick(&stick, role.as_ref().as_ref(), &taken);
                    let _ = reply.send(result);
                }
                Ok(Request::Pulled {
                    diskseq,
                    why,
                    reply,
                }) => {
                    let _ = reply.send(self.pulled(diskseq, &why));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.take_back_guest_ejects();
        }
    }

    /// Takes out every medium whose slot the guest ejected without being
    /// asked. (An eject answering a detach is consumed by that detach.)
    fn take_back_guest_ejects(&mut self) {
        let now = Instant::now();
        let mut index = 0;
        while index < self.plugged.len() {
            let slot = self.plugged[index].slot;
            if !matches!(self.parts.controller.wait_ejected(slot, now), Ok(true)) {
                index += 1;
                continue;
            }
            let plugged = self.plugged.remove(index);
            let id = plugged.medium.id.clone();
            match self.take_out(plugged, "ejected-by-guest") {
                Ok(()) => log::info!("the guest ejected external medium '{id}'"),
                Err(e) => log::warn!("removing external medium '{id}' the guest ejected: {e}"),
            }
        }
    }

    /// Drops `id` from the list `ctl status` shows.
    fn forget(&self, id: &str) {
        lock(&self.shown).retain(|medium| medium.id != id);
    }

    fn attach(
        &mut self,
        path: &Path,
        role: Option<&ActiveRole>,
        taken: &[String],
    ) -> Result<AttachedMedium, MediaError> {
        let shown = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|source| MediaError::BadPath {
            path: shown.clone(),
            source,
        })?;
        if !is_medium(&metadata) {
            return Err(MediaError::NotAMedium { path: shown });
        }
        let id = disk_id_from_path(path);
        if taken.contains(&id) || self.plugged.iter().any(|p| p.medium.id == id) {
            return Err(MediaError::AlreadyAttached { id });
        }
        let external = &self.parts.external;
        let policy = media_policy(external, role);
        // Read per attach, so the key is in memory only while it is used.
        let key = match (&external.passphrase_file, policy) {
            (Some(file), ExternalMediaPolicy::Encrypt) => {
                Some(read_passphrase(PassphraseSource::File(file)).map_err(MediumError::from)?)
            }
            _ => None,
        };
        let rules = MediaRules {
            policy,
            allowed_serials: allowed_serials(role),
            key: key.as_ref().map(|k| k.as_bytes()),
            format_blank: external.format_blank,
        };
        let (backend, mode) = match decide_medium(&Medium::named(path), &rules, &self.parts.audit)?
        {
            MediumOutcome::Attach { backend, mode } => (backend, mode),
            MediumOutcome::Denied { reason } => return Err(MediaError::Denied(reason)),
        };
        drop(key);
        let image = File::open(path).map_err(|source| MediaError::BadPath {
            path: shown.clone(),
            source,
        })?;
        let medium = AttachedMedium {
            id,
            path: shown,
            mode: mode.to_string(),
        };
        self.plug(medium, backend, image, None)
    }

    /// Puts `backend` into a free hot-plug slot and tells the guest.
    fn plug(
        &mut self,
        medium: AttachedMedium,
        backend: Box<dyn BlockBackend>,
        image: File,
        stick: Option<PluggedStick>,
    ) -> Result<AttachedMedium, MediaError> {
        let mut block = Block::new(backend, &medium.id).map_err(|source| MediaError::Block {
            path: medium.path.clone(),
            source,
        })?;
        block.set_confinement(Confinement::new(ThreadKind::BlockIo, self.parts.seccomp));
        let slot = self
            .parts
            .pci
            .add_hotplug_virtio_device(Box::new(block), self.parts.memory.clone())?;
        if let Err(e) = self.parts.controller.announce_insert(slot) {
            drop(self.parts.pci.remove_device(slot));
            return Err(e.into());
        }
        log::info!(
            "external medium {} attached as '{}' in PCI slot {slot} ({})",
            medium.path,
            medium.id,
            medium.mode
        );
        self.plugged.push(Plugged {
            medium: medium.clone(),
            slot,
            image: Some(image),
            stick,
        });
        lock(&self.shown).push(medium.clone());
        Ok(medium)
    }

    /// [`Worker::attach`] for a stick found on the host: claimed
    /// exclusively and checked to be the disk the watcher saw before and
    /// after the rules open it.
    fn attach_stick(
        &mut self,
        stick: &HostStick,
        role: Option<&ActiveRole>,
        taken: &[String],
    ) -> Result<AttachedMedium, MediaError> {
        let shown = stick.devnode.display().to_string();
        let id = stick.medium_id();
        self.await_eject_of_pulled(&id)?;
        if taken.contains(&id) || self.plugged.iter().any(|p| p.medium.id == id) {
            return Err(MediaError::AlreadyAttached { id });
        }
        let boot_devices = &self.parts.boot_devices;
        let mut claim = Some(match claim_stick(stick, boot_devices) {
            Err(MediaError::Busy { path }) => {
                self.parts.audit.record(Event::ExternalMedium {
                    path: path.clone(),
                    serial: stick.serial.clone(),
                    decision: "busy".into(),
                    reason: Some("another program holds it exclusively".into()),
                })?;
                return Err(MediaError::Busy { path });
            }
            other => other?,
        });
        let external = &self.parts.external;
        let policy = media_policy(external, role);
        let key = match (&external.passphrase_file, policy) {
            (Some(file), ExternalMediaPolicy::Encrypt) => {
                Some(read_passphrase(PassphraseSource::File(file)).map_err(MediumError::from)?)
            }
            _ => None,
        };
        let rules = MediaRules {
            policy,
            allowed_serials: allowed_serials(role),
            key: key.as_ref().map(|k| k.as_bytes()),
            format_blank: external.format_blank,
        };
        // libcryptsetup claims the disk itself to format it, and would find
        // it busy; the claim is taken again and checked below. Meanwhile a
        // plain handle on this very disk, opened while the claim still
        // holds, keeps the kernel from giving its name to another stick.
        let _pin = if policy == ExternalMediaPolicy::Encrypt && rules.format_blank {
            let pin = File::open(&stick.devnode).map_err(|e| gone(stick, &e))?;
            check_disk_seq(stick, &pin)?;
            claim = None;
            Some(pin)
        } else {
            None
        };
        let medium = Medium {
            path: &stick.devnode,
            serial: MediumSerial::Reported(stick.serial.as_deref()),
        };
        let (backend, mode) = match decide_medium(&medium, &rules, &self.parts.audit)? {
            MediumOutcome::Attach { backend, mode } => (backend, mode),
            MediumOutcome::Denied { reason } => return Err(MediaError::Denied(reason)),
        };
        drop(key);
        let claim = match claim {
            Some(claim) => claim,
            None => claim_stick(stick, &self.parts.boot_devices)?,
        };
        // The rules opened the disk by its name: make sure that name still
        // led to the stick the watcher saw.
        check_disk_seq(
            stick,
            &File::open(&stick.devnode).map_err(|e| gone(stick, &e))?,
        )?;
        let (backend, pull) = PullableBackend::new(backend);
        let medium = AttachedMedium {
            id,
            path: shown,
            mode: mode.to_string(),
        };
        let plugged_stick = PluggedStick {
            diskseq: stick.diskseq,
            serial: stick.serial.clone(),
            pull,
        };
        self.plug(medium, Box::new(backend), claim, Some(plugged_stick))
    }

    /// A stick under `id` was pulled and the guest asked to let go of it,
    /// but it has not yet: the same stick plugged in again, or a new card
    /// in the same reader (same serial) right after the old one left.
    /// Waits for that eject as a detach does, so the newcomer gets the id
    /// instead of being refused for good.
    fn await_eject_of_pulled(&mut self, id: &str) -> Result<(), MediaError> {
        let Some(index) = self.plugged.iter().position(|p| {
            p.medium.id == id && p.stick.as_ref().is_some_and(|s| s.pull.is_pulled())
        }) else {
            return Ok(());
        };
        let deadline = Instant::now() + self.parts.eject_timeout.min(REPLUG_EJECT_WAIT);
        if self
            .parts
            .controller
            .wait_ejected(self.plugged[index].slot, deadline)?
        {
            let plugged = self.plugged.remove(index);
            self.take_out(plugged, "ejected-by-guest")?;
        }
        Ok(())
    }

    /// The stick with `diskseq` is gone from the host: fail its requests,
    /// let go of its claim and ask the guest to eject it.
    fn pulled(&mut self, diskseq: u64, why: &str) -> Option<String> {
        let plugged = self.plugged.iter_mut().find(|p| {
            p.stick
                .as_ref()
                .is_some_and(|s| s.diskseq == diskseq && !s.pull.is_pulled())
        })?;
        let stick = plugged.stick.as_ref()?;
        stick.pull.pull();
        plugged.image = None;
        if let Err(e) = self.parts.audit.record(Event::ExternalMedium {
            path: plugged.medium.path.clone(),
            serial: stick.serial.clone(),
            decision: "removed".into(),
            reason: Some(why.to_string()),
        }) {
            log::error!("recording the removal of {}: {e}", plugged.medium.path);
        }
        if let Err(e) = self.parts.controller.request_eject(plugged.slot) {
            log::warn!("asking the guest to eject '{}': {e}", plugged.medium.id);
        }
        log::info!(
            "external medium {} ('{}') {why}; the guest is asked to eject it",
            plugged.medium.path,
            plugged.medium.id
        );
        Some(plugged.medium.id.clone())
    }

    fn detach(&mut self, id: &str) -> Result<(), MediaError> {
        let index = self
            .plugged
            .iter()
            .position(|p| p.medium.id == id)
            .ok_or_else(|| MediaError::UnknownId { id: id.to_string() })?;
        let plugged = &self.plugged[index];
        flush(plugged)?;
        let controller = &self.parts.controller;
        controller.request_eject(plugged.slot)?;
        let deadline = Instant::now() + self.parts.eject_timeout;
        if !controller.wait_ejected(plugged.slot, deadline)? {
            return Err(MediaError::NotEjected {
                id: id.to_string(),
                timeout: self.parts.eject_timeout,
            });
        }
        let plugged = self.plugged.remove(index);
        self.take_out(plugged, "detached")
    }

    /// Removes an ejected medium's device and audits `decision`.
    fn take_out(&mut self, plugged: Plugged, decision: &str) -> Result<(), MediaError> {
        self.forget(&plugged.medium.id);
        // Dropped here, on this thread: the I/O thread stops and the
        // backend (and its key) goes.
        drop(self.parts.pci.remove_device(plugged.slot)?);
        self.parts.controller.clear(plugged.slot)?;
        flush(&plugged)?;
        self.parts.audit.record(Event::ExternalMedium {
            path: plugged.medium.path.clone(),
            serial: plugged.stick.as_ref().and_then(|s| s.serial.clone()),
            decision: decision.into(),
            reason: None,
        })?;
        log::info!(
            "external medium {} ('{}') left PCI slot {} ({decision})",
            plugged.medium.path,
            plugged.medium.id,
            plugged.slot
        );
        Ok(())
    }
}

fn is_medium(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    metadata.is_file() || metadata.file_type().is_block_device()
}

/// Flushes the medium; a pulled stick has nothing left to flush.
fn flush(plugged: &Plugged) -> Result<(), MediaError> {
    let Some(image) = &plugged.image else {
        return Ok(());
    };
    image.sync_all().map_err(|source| MediaError::Flush {
        path: plugged.medium.path.clone(),
        source,
    })
}

/// Opens the stick with `O_EXCL` (the claim that keeps the host and other
/// programs off it) and checks it is still the disk the watcher saw.
fn claim_stick(stick: &HostStick, boot_devices: &[u64]) -> Result<File, MediaError> {
    let claim = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&stick.devnode)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => MediaError::Busy {
                path: stick.devnode.display().to_string(),
            },
            _ => gone(stick, &e),
        })?;
    let metadata = claim.metadata().map_err(|e| gone(stick, &e))?;
    if !std::os::unix::fs::FileTypeExt::is_block_device(&metadata.file_type()) {
        return Err(MediaError::NotAMedium {
            path: stick.devnode.display().to_string(),
        });
    }
    if boot_devices.contains(&std::os::unix::fs::MetadataExt::rdev(&metadata)) {
        return Err(MediaError::BootDevice {
            path: stick.devnode.display().to_string(),
        });
    }
    check_disk_seq(stick, &claim)?;
    Ok(claim)
}

/// The device numbers of those of `paths` that are block devices, and of
/// the whole disk of each that is a partition: a VM started from a
/// partition of a stick must not be given the whole stick as well, which
/// nothing else keeps from being claimed (the VM's disks are not opened
/// exclusively).
pub fn block_device_numbers<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<u64> {
    block_device_numbers_in(Path::new("/sys"), paths)
}

/// [`block_device_numbers`] with the partitions looked up in sysfs at `sys`.
fn block_device_numbers_in<'a>(sys: &Path, paths: impl IntoIterator<Item = &'a Path>) -> Vec<u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut numbers = Vec::new();
    for path in paths {
        let Ok(metadata) = std::fs::metadata(path) else {
            continue;
        };
        if !metadata.file_type().is_block_device() {
            continue;
        }
        numbers.push(metadata.rdev());
        numbers.extend(whole_disk_of(sys, metadata.rdev()));
    }
    numbers
}

/// The device number of the whole disk that partition `rdev` belongs to;
/// `None` when `rdev` is not a partition.
fn whole_disk_of(sys: &Path, rdev: u64) -> Option<u64> {
    let device = sys.join(format!(
        "dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    if !device.join("partition").exists() {
        return None;
    }
    let dev = std::fs::read_to_string(device.join("../dev")).ok()?;
    let (major, minor) = dev.trim_end().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

fn check_disk_seq(stick: &HostStick, file: &File) -> Result<(), MediaError> {
    let found = removable::disk_seq(file).map_err(|e| gone(stick, &e))?;
    if found != stick.diskseq {
        return Err(MediaError::Gone {
            path: stick.devnode.display().to_string(),
            detail: format!(
                "now names another disk (sequence number {found}, not {})",
                stick.diskseq
            ),
        });
    }
    Ok(())
}

fn gone(stick: &HostStick, error: &io::Error) -> MediaError {
    MediaError::Gone {
        path: stick.devnode.display().to_string(),
        detail: format!("cannot be opened ({error}): it was probably pulled"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::layout::{
        PCI_HOTPLUG_REGISTER_DOWN, PCI_HOTPLUG_REGISTER_EJECT, PCI_HOTPLUG_REGISTER_UP,
    };
    use crate::devices::bus::{Bus, BusDevice};
    use crate::devices::pci::hotplug::PciHotplugPorts;
    use crate::devices::pci::test_support::FakeVm;
    use crate::storage::luks::{self, FormatOptions, KdfSettings};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    pub(crate) const MEDIUM_KEY: &[u8] = b"organisation medium key";

    /// A scratch directory under /var/tmp (libcryptsetup wants a real
    /// filesystem with direct I/O), removed at the end of the test.
    pub(crate) struct Scratch(PathBuf);

    impl Scratch {
        pub(crate) fn new(tag: &str) -> Self {
            let path = Path::new("/var/tmp").join(format!(
                "securevm-hotplug-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }

        pub(crate) fn raw(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, vec![0x5a; 1 << 16]).unwrap();
            path
        }

        pub(crate) fn luks(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            let options = FormatOptions {
                kdf: KdfSettings::Fixed {
                    memory_kib: 1024,
                    time_cost: 4,
                    parallel: 1,
                },
                ..FormatOptions::default()
            };
            luks::format(&path, 1 << 20, &options, MEDIUM_KEY).unwrap();
            path
        }

        pub(crate) fn key_file(&self) -> PathBuf {
            let path = self.0.join("medium.key");
            std::fs::write(&path, MEDIUM_KEY).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A hot-plug thread over a fake VM, and the guest's view of it.
    pub(crate) struct Rig {
        pub(crate) media: MediaHotplug,
        pub(crate) pci: Arc<PciRoot>,
        pub(crate) controller: Arc<PciHotplug>,
        pub(crate) interrupts: Arc<AtomicUsize>,
    }

    pub(crate) fn rig(
        policy: ExternalMediaPolicy,
        key_file: Option<PathBuf>,
        seccomp: bool,
    ) -> Rig {
        rig_over(policy, key_file, seccomp, false, vec![])
    }

    /// A rig that formats blank media under `encrypt`.
    fn rig_with(policy: ExternalMediaPolicy, key_file: Option<PathBuf>, format_blank: bool) -> Rig {
        rig_over(policy, key_file, false, format_blank, vec![])
    }

    fn rig_over(
        policy: ExternalMediaPolicy,
        key_file: Option<PathBuf>,
        seccomp: bool,
        format_blank: bool,
        boot_devices: Vec<u64>,
    ) -> Rig {
        let pci = PciRoot::new(Arc::new(Bus::new()), Arc::new(FakeVm::default()));
        let interrupts = Arc::new(AtomicUsize::new(0));
        let counter = interrupts.clone();
        let controller = Arc::new(PciHotplug::new(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })));
        let memory = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let media = MediaHotplug::start(MediaHotplugParts {
            pci: pci.clone(),
            memory,
            controller: controller.clone(),
            audit: Audit::default(),
            external: ExternalMediaConfig {
                media: vec![],
                policy: Some(policy),
                passphrase_file: key_file,
                format_blank,
                watch_removable: false,
            },
            seccomp,
            eject_timeout: Duration::from_millis(300),
            boot_devices,
        })
        .unwrap();
        Rig {
            media,
            pci,
            controller,
            interrupts,
        }
    }

    impl Rig {
        pub(crate) fn vendor_at(&self, slot: u8) -> u32 {
            let mut data = [0u8; 4];
            self.pci.config_read(0, slot, 0, 0, &mut data);
            u32::from_le_bytes(data)
        }

        pub(crate) fn guest_reads(&self, register: u64) -> u32 {
            let mut data = [0u8; 4];
            PciHotplugPorts::new(self.controller.clone()).read(register, &mut data);
            u32::from_le_bytes(data)
        }

        /// What the guest's `_EJ0` does, `after` a while, on another thread.
        pub(crate) fn guest_ejects_after(&self, slot: u8, after: Duration) -> JoinHandle<()> {
            let mut ports = PciHotplugPorts::new(self.controller.clone());
            std::thread::spawn(move || {
                std::thread::sleep(after);
                ports.write(PCI_HOTPLUG_REGISTER_EJECT, &(1u32 << slot).to_le_bytes());
            })
        }
    }

    const VIRTIO_BLOCK: u32 = 0x1042_1af4;

    #[test]
    fn a_read_only_medium_appears_in_a_slot_and_leaves_after_the_guests_eject() {
        let scratch = Scratch::new("ro");
        let stick = scratch.raw("stick.img");
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let medium = rig.media.attach(&stick, None, vec![]).unwrap();
        assert_eq!(
            (medium.id.as_str(), medium.mode.as_str()),
            ("stick.img", "read-only")
        );
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK);
        assert_eq!(rig.interrupts.load(Ordering::SeqCst), 1);
        assert_eq!(rig.guest_reads(PCI_HOTPLUG_REGISTER_UP), 1 << 1);

        // Nobody ejects within the bound: the device stays.
        let detach = rig.media.detach("stick.img");
        assert!(
            matches!(detach, Err(MediaError::NotEjected { .. })),
            "{detach:?}"
        );
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK, "kept after the timeout");
        assert_eq!(
            rig.guest_reads(PCI_HOTPLUG_REGISTER_DOWN),
            1 << 1,
            "eject was requested"
        );

        // The guest ejects while the detach waits.
        let guest = rig.guest_ejects_after(1, Duration::from_millis(50));
        rig.media.detach("stick.img").unwrap();
        guest.join().unwrap();
        assert_eq!(rig.vendor_at(1), u32::MAX, "slot empty");
        assert!(matches!(
            rig.media.detach("stick.img"),
            Err(MediaError::UnknownId { .. })
        ));
        // The slot takes the next medium.
        rig.media.attach(&stick, None, vec![]).unwrap();
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK);
    }

    #[test]
    fn a_medium_the_guest_ejects_unasked_leaves_the_vm_and_the_list() {
        let scratch = Scratch::new("guest-eject");
        let stick = scratch.raw("stick.img");
        let other = scratch.raw("other.img");
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        rig.media.attach(&stick, None, vec![]).unwrap();
        rig.media.attach(&other, None, vec![]).unwrap();
        let ids =
            |rig: &Rig| -> Vec<String> { rig.media.attached().into_iter().map(|m| m.id).collect() };
        assert_eq!(ids(&rig), ["stick.img", "other.img"]);
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK);

        // The user removes the first stick inside the guest: no detach
        // was asked for, yet its device goes and the other one stays.
        rig.guest_ejects_after(1, Duration::ZERO).join().unwrap();
        let deadline = Instant::now() + GUEST_EJECT_POLL * 10;
        while rig.vendor_at(1) != u32::MAX && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(rig.vendor_at(1), u32::MAX, "the ejected device is gone");
        assert_eq!(rig.vendor_at(2), VIRTIO_BLOCK, "the other stays");
        assert_eq!(ids(&rig), ["other.img"]);
        assert!(matches!(
            rig.media.detach("stick.img"),
            Err(MediaError::UnknownId { .. })
        ));
        // Its slot and id are free again.
        rig.media.attach(&stick, None, vec![]).unwrap();
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK);
        assert_eq!(ids(&rig), ["other.img", "stick.img"]);
    }

    #[test]
    fn a_denied_medium_is_refused_and_nothing_is_plugged() {
        let scratch = Scratch::new("deny");
        let stick = scratch.raw("stick.img");
        let rig = rig(ExternalMediaPolicy::Deny, None, false);
        match rig.media.attach(&stick, None, vec![]) {
            Err(MediaError::Denied(reason)) => {
                assert!(reason.contains("denies external media"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(rig.vendor_at(1), u32::MAX);
        assert_eq!(rig.interrupts.load(Ordering::SeqCst), 0);

        // Encrypt refuses a plain medium the same way it does at boot.
        let scratch_key = scratch.key_file();
        let rig = super::tests::rig(ExternalMediaPolicy::Encrypt, Some(scratch_key), false);
        assert!(matches!(
            rig.media.attach(&stick, None, vec![]),
            Err(MediaError::Denied(reason)) if reason.contains("not an encrypted")
        ));
        assert_eq!(rig.vendor_at(1), u32::MAX);
    }

    #[test]
    fn bad_paths_and_taken_ids_are_refused() {
        let scratch = Scratch::new("bad");
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        assert!(matches!(
            rig.media
                .attach(&scratch.0.join("missing.img"), None, vec![]),
            Err(MediaError::BadPath { .. })
        ));
        assert!(matches!(
            rig.media.attach(&scratch.0, None, vec![]),
            Err(MediaError::NotAMedium { .. })
        ));
        let stick = scratch.raw("root.img");
        assert!(matches!(
            rig.media.attach(&stick, None, vec!["root.img".into()]),
            Err(MediaError::AlreadyAttached { .. })
        ));
        rig.media.attach(&stick, None, vec![]).unwrap();
        assert!(matches!(
            rig.media.attach(&stick, None, vec![]),
            Err(MediaError::AlreadyAttached { .. })
        ));
        assert_eq!(rig.vendor_at(2), u32::MAX, "only one device");
    }

    #[test]
    fn an_encrypted_medium_opens_with_the_organisation_key() {
        let scratch = Scratch::new("luks");
        let stick = scratch.luks("usb.img");
        let rig = rig(
            ExternalMediaPolicy::Encrypt,
            Some(scratch.key_file()),
            false,
        );
        let medium = rig.media.attach(&stick, None, vec![]).unwrap();
        assert_eq!(medium.mode, "encrypt");
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK);
    }

    /// Set in the environment of the child process that runs
    /// [`filtered_flow_in_child_process`].
    const FILTERED_CHILD: &str = "SECUREVM_TEST_FILTERED_MEDIA_CHILD";

    /// The whole attach and detach of an encrypted medium under the
    /// thread's real filter, in a fresh process running only
    /// `filtered_flow_in_child_process`.
    #[test]
    fn attach_and_detach_run_under_the_media_hotplug_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "external_media::hotplug::tests::filtered_flow_in_child_process",
            FILTERED_CHILD,
        );
    }

    /// The child process of
    /// `attach_and_detach_run_under_the_media_hotplug_filter`; run among
    /// the ignored tests (not as that child) it is that test.
    #[test]
    #[ignore = "runs as the child of attach_and_detach_run_under_the_media_hotplug_filter"]
    fn filtered_flow_in_child_process() {
        if std::env::var_os(FILTERED_CHILD).is_none() {
            return attach_and_detach_run_under_the_media_hotplug_filter();
        }
        let scratch = Scratch::new("seccomp");
        let stick = scratch.luks("usb.img");
        let rig = rig(ExternalMediaPolicy::Encrypt, Some(scratch.key_file()), true);
        let medium = rig.media.attach(&stick, None, vec![]).unwrap();
        let guest = rig.guest_ejects_after(1, Duration::from_millis(20));
        rig.media.detach(&medium.id).unwrap();
        guest.join().unwrap();
        // A stick on the host: claimed, checked by its disk sequence
        // number, unlocked, pulled.
        if let Some(device) = LoopDevice::over(&scratch.luks("stick.img")) {
            let stick = device.stick(Some("FILTERED"));
            rig.media.attach_stick(stick.clone(), None, vec![]).unwrap();
            rig.media.stick_pulled(stick.diskseq, "was pulled").unwrap();
        }
        // Idle past a poll for guest ejects, under the filter too.
        std::thread::sleep(GUEST_EJECT_POLL + Duration::from_millis(100));
        rig.media.stop();
    }

    /// Set in the environment of the child process that runs
    /// [`filtered_stick_paths_in_child_process`].
    const FILTERED_STICK_CHILD: &str = "SECUREVM_TEST_FILTERED_STICK_CHILD";

    /// The ways a stick can go under the thread's real filter besides an
    /// encrypted attach: read-only, busy, gone, left after a pull, and a
    /// blank stick formatted under `encrypt`.
    #[test]
    fn stick_paths_run_under_the_media_hotplug_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "external_media::hotplug::tests::filtered_stick_paths_in_child_process",
            FILTERED_STICK_CHILD,
        );
    }

    /// The child process of `stick_paths_run_under_the_media_hotplug_filter`.
    #[test]
    #[ignore = "runs as the child of stick_paths_run_under_the_media_hotplug_filter"]
    fn filtered_stick_paths_in_child_process() {
        if std::env::var_os(FILTERED_STICK_CHILD).is_none() {
            return stick_paths_run_under_the_media_hotplug_filter();
        }
        let scratch = Scratch::new("seccomp-stick");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let rig = rig_over(ExternalMediaPolicy::ReadOnly, None, true, false, vec![]);
        let holder = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&device.devnode)
            .unwrap();
        assert!(matches!(
            rig.media
                .attach_stick(device.stick(Some("RO")), None, vec![]),
            Err(MediaError::Busy { .. })
        ));
        drop(holder);
        let mut vanished = device.stick(Some("RO"));
        vanished.devnode = scratch.0.join("vanished");
        assert!(matches!(
            rig.media.attach_stick(vanished, None, vec![]),
            Err(MediaError::Gone { .. })
        ));
        let stick = device.stick(Some("RO"));
        rig.media.attach_stick(stick.clone(), None, vec![]).unwrap();
        rig.media.stick_pulled(stick.diskseq, "was pulled").unwrap();
        rig.guest_ejects_after(1, Duration::ZERO).join().unwrap();
        let deadline = Instant::now() + GUEST_EJECT_POLL * 10;
        while rig.vendor_at(1) != u32::MAX && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(rig.vendor_at(1), u32::MAX, "the pulled stick left");
        rig.media.stop();

        let blank = scratch.0.join("blank.img");
        File::create(&blank).unwrap().set_len(20 << 20).unwrap();
        let Some(blank) = LoopDevice::over(&blank) else {
            return;
        };
        let rig = rig_over(
            ExternalMediaPolicy::Encrypt,
            Some(scratch.key_file()),
            true,
            true,
            vec![],
        );
        let medium = rig
            .media
            .attach_stick(blank.stick(Some("BLANK")), None, vec![])
            .unwrap();
        assert_eq!(medium.mode, "encrypt");
        rig.media.stop();
    }

    #[test]
    fn a_stopped_thread_answers_every_request() {
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        rig.media.stop();
        assert!(matches!(rig.media.detach("x"), Err(MediaError::Stopped)));
    }

    /// A loop device over an image: a real block device with a disk
    /// sequence number, standing in for a stick. `None` (with the reason
    /// printed) where this test run may not create one.
    pub(crate) struct LoopDevice {
        pub(crate) devnode: PathBuf,
    }

    impl LoopDevice {
        pub(crate) fn over(image: &Path) -> Option<Self> {
            let output = std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .arg(image)
                .output();
            match output {
                Ok(output) if output.status.success() => {
                    let devnode = String::from_utf8(output.stdout).unwrap();
                    Some(Self {
                        devnode: PathBuf::from(devnode.trim()),
                    })
                }
                other => {
                    eprintln!("skipped: no loop device here (needs root and losetup): {other:?}");
                    None
                }
            }
        }

        pub(crate) fn stick(&self, serial: Option<&str>) -> HostStick {
            HostStick {
                devnode: self.devnode.clone(),
                diskseq: removable::disk_seq(&File::open(&self.devnode).unwrap()).unwrap(),
                serial: serial.map(str::to_string),
            }
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("--detach")
                .arg(&self.devnode)
                .status();
        }
    }

    fn claimed_by_someone(devnode: &Path) -> bool {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(devnode)
        {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
                true
            }
        }
    }

    #[test]
    fn a_stick_is_claimed_attached_under_its_serial_and_fails_at_once_when_pulled() {
        let scratch = Scratch::new("stick");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let stick = device.stick(Some("E2E-STICK-SERIAL-0123456789"));
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let medium = rig.media.attach_stick(stick.clone(), None, vec![]).unwrap();
        assert_eq!(
            medium.id, "E2E-STICK-SERIAL-012",
            "the serial's first 20 bytes"
        );
        assert_eq!(medium.mode, "read-only");
        assert_eq!(rig.vendor_at(1), VIRTIO_BLOCK);
        assert!(claimed_by_someone(&stick.devnode), "held with O_EXCL");

        // Plugged again while attached (a rescan): refused, not doubled.
        assert!(matches!(
            rig.media.attach_stick(stick.clone(), None, vec![]),
            Err(MediaError::AlreadyAttached { .. })
        ));

        assert_eq!(
            rig.media.stick_pulled(stick.diskseq, "was pulled").unwrap(),
            Some(medium.id.clone())
        );
        assert!(!claimed_by_someone(&stick.devnode), "the claim is let go");
        assert_eq!(
            rig.guest_reads(PCI_HOTPLUG_REGISTER_DOWN),
            1 << 1,
            "the guest is asked to eject"
        );
        assert_eq!(
            rig.media.stick_pulled(stick.diskseq, "was pulled").unwrap(),
            None,
            "a second report changes nothing"
        );
        // The device stays until the guest ejects, then the slot is free.
        rig.guest_ejects_after(1, Duration::ZERO).join().unwrap();
        let deadline = Instant::now() + GUEST_EJECT_POLL * 10;
        while rig.vendor_at(1) != u32::MAX && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(rig.vendor_at(1), u32::MAX);
        assert!(rig.media.attached().is_empty());
    }

    #[test]
    fn a_stick_plugged_in_again_right_after_the_guest_let_go_of_it_attaches() {
        let scratch = Scratch::new("stick-again");
        let (Some(first), Some(again)) = (
            LoopDevice::over(&scratch.raw("first.img")),
            LoopDevice::over(&scratch.raw("again.img")),
        ) else {
            return;
        };
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let pulled = first.stick(Some("SAME-SERIAL"));
        rig.media
            .attach_stick(pulled.clone(), None, vec![])
            .unwrap();
        rig.media
            .stick_pulled(pulled.diskseq, "was pulled")
            .unwrap();
        rig.guest_ejects_after(1, Duration::ZERO).join().unwrap();
        // Plugged in again before the hot-plug thread's next look at ejects.
        let medium = rig
            .media
            .attach_stick(again.stick(Some("SAME-SERIAL")), None, vec![])
            .unwrap();
        assert_eq!(medium.id, "SAME-SERIAL");
        assert_eq!(rig.media.attached(), [medium]);
    }

    #[test]
    fn a_new_card_in_the_same_reader_waits_for_the_guest_to_let_go_of_the_old_one() {
        let scratch = Scratch::new("stick-card");
        let (Some(old_card), Some(new_card)) = (
            LoopDevice::over(&scratch.raw("old.img")),
            LoopDevice::over(&scratch.raw("new.img")),
        ) else {
            return;
        };
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        let old = old_card.stick(Some("READER-SERIAL"));
        rig.media.attach_stick(old.clone(), None, vec![]).unwrap();
        // The watcher reports the old card left and the new one arrived
        // together; the guest ejects a moment later.
        rig.media.stick_pulled(old.diskseq, "was pulled").unwrap();
        let guest = rig.guest_ejects_after(1, Duration::from_millis(100));
        let medium = rig
            .media
            .attach_stick(new_card.stick(Some("READER-SERIAL")), None, vec![])
            .unwrap();
        guest.join().unwrap();
        assert_eq!(rig.media.attached(), [medium]);
        assert_eq!(
            rig.vendor_at(1),
            VIRTIO_BLOCK,
            "in the slot the old card left"
        );
    }

    #[test]
    fn a_stick_whose_node_now_names_another_disk_is_not_attached() {
        let scratch = Scratch::new("stick-seq");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let mut stick = device.stick(Some("SEQ"));
        stick.diskseq += 1;
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        match rig.media.attach_stick(stick.clone(), None, vec![]) {
            Err(MediaError::Gone { detail, .. }) => {
                assert!(detail.contains("another disk"), "{detail}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        stick.devnode = scratch.0.join("vanished");
        assert!(matches!(
            rig.media.attach_stick(stick, None, vec![]),
            Err(MediaError::Gone { .. })
        ));
        assert_eq!(rig.vendor_at(1), u32::MAX, "nothing plugged");
        assert!(!claimed_by_someone(&device.devnode), "no claim left behind");
    }

    #[test]
    fn a_stick_another_program_holds_is_busy() {
        let scratch = Scratch::new("stick-busy");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let holder = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&device.devnode)
            .unwrap();
        let rig = rig(ExternalMediaPolicy::ReadOnly, None, false);
        assert!(matches!(
            rig.media.attach_stick(device.stick(None), None, vec![]),
            Err(MediaError::Busy { .. })
        ));
        assert_eq!(rig.vendor_at(1), u32::MAX);
        drop(holder);
        let medium = rig
            .media
            .attach_stick(device.stick(None), None, vec![])
            .unwrap();
        assert!(medium.id.starts_with("usb-"), "{}", medium.id);
    }

    #[test]
    fn a_stick_with_a_damaged_luks_header_is_refused_and_let_go() {
        let scratch = Scratch::new("stick-hostile");
        let image = scratch.luks("hostile.img");
        // Both header copies' JSON areas overwritten: a checksum mismatch
        // that securevm's own parser refuses before libcryptsetup sees it.
        let file = OpenOptions::new().write(true).open(&image).unwrap();
        for header in [0u64, 0x4000] {
            std::os::unix::fs::FileExt::write_all_at(&file, &[b'}'; 512], header + 0x1000).unwrap();
        }
        drop(file);
        let Some(device) = LoopDevice::over(&image) else {
            return;
        };
        let rig = rig(
            ExternalMediaPolicy::Encrypt,
            Some(scratch.key_file()),
            false,
        );
        let refused = rig
            .media
            .attach_stick(device.stick(Some("HOSTILE")), None, vec![]);
        match refused {
            Err(MediaError::Medium(MediumError::Storage(error))) => {
                assert!(error.to_string().contains("header"), "{error}")
            }
            other => panic!("expected a refusal of the header, got {other:?}"),
        }
        assert_eq!(rig.vendor_at(1), u32::MAX, "nothing plugged");
        assert!(!claimed_by_someone(&device.devnode), "the claim is let go");
    }

    #[test]
    fn a_stick_the_vm_started_with_is_not_attached_again() {
        let scratch = Scratch::new("stick-boot");
        let Some(device) = LoopDevice::over(&scratch.raw("stick.img")) else {
            return;
        };
        let boot_devices = block_device_numbers([device.devnode.as_path(), scratch.0.as_path()]);
        assert_eq!(boot_devices.len(), 1, "only block devices count");
        let rig = rig_over(
            ExternalMediaPolicy::ReadOnly,
            None,
            false,
            false,
            boot_devices,
        );
        assert!(matches!(
            rig.media
                .attach_stick(device.stick(Some("BOOT")), None, vec![]),
            Err(MediaError::BootDevice { .. })
        ));
        assert_eq!(rig.vendor_at(1), u32::MAX);
    }

    #[test]
    fn a_stick_holding_a_partition_the_vm_started_with_is_not_attached() {
        use std::os::unix::fs::MetadataExt;
        let scratch = Scratch::new("stick-boot-partition");
        let (Some(stick), Some(boot)) = (
            LoopDevice::over(&scratch.raw("stick.img")),
            LoopDevice::over(&scratch.raw("boot.img")),
        ) else {
            return;
        };
        let rdev = |path: &Path| std::fs::metadata(path).unwrap().rdev();
        let node = |rdev: u64| format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        // A sysfs in which the VM's boot disk is the first partition of
        // the stick, as when securevm runs from a partition of a stick.
        let sys = scratch.0.join("sys");
        let disk = sys.join("devices/virtual/block/stick");
        let partition = disk.join("stick1");
        std::fs::create_dir_all(&partition).unwrap();
        std::fs::write(
            disk.join("dev"),
            format!("{}\n", node(rdev(&stick.devnode))),
        )
        .unwrap();
        std::fs::write(partition.join("partition"), "1\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(
            &partition,
            sys.join("dev/block").join(node(rdev(&boot.devnode))),
        )
        .unwrap();
        let boot_devices = block_device_numbers_in(&sys, [boot.devnode.as_path()]);
        assert_eq!(
            boot_devices,
            [rdev(&boot.devnode), rdev(&stick.devnode)],
            "the partition and its whole disk"
        );
        let rig = rig_over(
            ExternalMediaPolicy::ReadOnly,
            None,
            false,
            false,
            boot_devices,
        );
        assert!(matches!(
            rig.media
                .attach_stick(stick.stick(Some("BOOT-PART")), None, vec![]),
            Err(MediaError::BootDevice { .. })
        ));
        assert_eq!(rig.vendor_at(1), u32::MAX);
        // On this host's sysfs a loop device is no partition.
        assert_eq!(
            block_device_numbers([stick.devnode.as_path()]),
            [rdev(&stick.devnode)]
        );
    }

    #[test]
    fn a_blank_stick_is_formatted_under_encrypt_and_claimed_again() {
        let scratch = Scratch::new("stick-blank");
        let image = scratch.0.join("blank.img");
        File::create(&image).unwrap().set_len(20 << 20).unwrap();
        let Some(device) = LoopDevice::over(&image) else {
            return;
        };
        let rig = rig_with(ExternalMediaPolicy::Encrypt, Some(scratch.key_file()), true);
        let medium = rig
            .media
            .attach_stick(device.stick(Some("BLANK")), None, vec![]);
        let medium = medium.unwrap();
        assert_eq!(medium.mode, "encrypt");
        assert!(claimed_by_someone(&device.devnode));
        assert!(crate::storage::luks::is_luks(&device.devnode).unwrap());
    }
}
