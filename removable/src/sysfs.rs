//! Which block devices are removable whole disks, and what they say of
//! themselves, read from sysfs.
//!
//! A device counts when `class/block/NAME` is a whole disk (no
//! `partition` file, `DEVTYPE=disk`) whose `device` sits below a USB
//! device or an SD card (never an eMMC, which is soldered in). Fixed disks (SATA, NVMe, virtio), virtual ones
//! (loop, dm, zram) and partitions never do: securevm must never offer the
//! host's own disks to a guest.
//!
//! Identity comes from sysfs, not the `/dev` name the kernel reuses: the
//! serial of the USB device (or MMC card), and the kernel's disk sequence
//! number `DISKSEQ`, which is never reused while the system runs and so
//! tells a stick from the next one that gets the same name.
//!
//! The strings a USB device reports (serial, manufacturer, product) are
//! chosen by the device and therefore hostile: they are read with a size
//! bound and kept only when short printable ASCII, so no escape sequence
//! or newline reaches a log line, a terminal or an audit record.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Largest attribute file read; sysfs attributes fit in a page.
const MAX_ATTRIBUTE: u64 = 4096;
/// Longest device-reported string kept (USB string descriptors hold at
/// most 126 UTF-16 units).
const MAX_STRING: usize = 126;
/// Ancestors of a disk's device examined for its bus: real USB and MMC
/// topologies are about a dozen levels deep.
const MAX_ANCESTORS: usize = 32;
/// Longest block device name accepted (the kernel's `DISK_NAME_LEN` is 32).
const MAX_NAME: usize = 32;
/// `BLKGETDISKSEQ`: `_IOR(0x12, 128, __u64)`.
const BLKGETDISKSEQ: libc::c_ulong = (2 << 30) | (8 << 16) | (0x12 << 8) | 128;

/// The bus a removable disk hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Usb,
    Mmc,
}

/// A removable whole disk present on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removable {
    /// The kernel's name, e.g. `sdb`, `mmcblk0`; only `[A-Za-z0-9_-]`.
    pub name: String,
    /// The device node, `<dev root>/<name>`.
    pub devnode: PathBuf,
    /// The kernel's disk sequence number: unique per medium until reboot.
    pub diskseq: u64,
    pub size_bytes: u64,
    pub bus: Bus,
    /// The USB device's serial, or the MMC card's. For a card in a USB
    /// card reader this is the reader's serial, not the card's.
    pub serial: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub read_only: bool,
}

/// Why a device could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("block device name is not a kernel device name (only A-Z, a-z, 0-9, '_', '-')")]
    InvalidName,
    #[error(
        "the kernel does not report DISKSEQ for {0} (Linux 5.15 or newer is needed: \
         securevm tells removable media apart by their disk sequence number)"
    )]
    KernelTooOld(String),
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} holds {reason}", path.display())]
    BadAttribute { path: PathBuf, reason: &'static str },
}

/// A sysfs tree and the device directory its names refer to.
#[derive(Debug, Clone)]
pub struct Sysfs {
    sys: PathBuf,
    dev: PathBuf,
}

/// What the walk up a disk's device ancestors found.
struct BusInfo {
    bus: Bus,
    serial: Option<String>,
    vendor: Option<String>,
    model: Option<String>,
}

impl Sysfs {
    /// The running system: `/sys` and `/dev`.
    pub fn system() -> Sysfs {
        Sysfs::with_roots(Path::new("/sys"), Path::new("/dev"))
    }

    /// A sysfs tree at `sys` (holding `class/block/...`) whose devices
    /// have nodes under `dev`.
    pub fn with_roots(sys: &Path, dev: &Path) -> Sysfs {
        Sysfs {
            sys: sys.to_path_buf(),
            dev: dev.to_path_buf(),
        }
    }

    /// Probes block device `name`. `None`: not a removable whole disk (a
    /// partition, a fixed or virtual disk, a reader without a medium, or a
    /// device gone meanwhile).
    pub fn probe(&self, name: &str) -> Result<Option<Removable>, ProbeError> {
        if !is_kernel_name(name) {
            return Err(ProbeError::InvalidName);
        }
        let class = self.sys.join("class/block").join(name);
        let gone = || !class.exists();
        if !class.exists() || class.join("partition").exists() {
            return Ok(None);
        }
        let Some(uevent) = read_or_gone(&class.join("uevent"), gone)? else {
            return Ok(None);
        };
        if !uevent.lines().any(|line| line == "DEVTYPE=disk") {
            return Ok(None);
        }
        let Some(info) = self.bus_of(&class)? else {
            return Ok(None);
        };
        let Some(sectors) = read_number(&class.join("size"), gone)? else {
            return Ok(None);
        };
        let size_bytes = sectors
            .checked_mul(512)
            .ok_or_else(|| ProbeError::BadAttribute {
                path: class.join("size"),
                reason: "a size beyond 2^64 bytes",
            })?;
        // A card reader or optical drive without a medium: nothing to attach.
        if size_bytes == 0 {
            return Ok(None);
        }
        let diskseq = match read_number(&class.join("diskseq"), gone)? {
            Some(diskseq) => diskseq,
            None if gone() => return Ok(None),
            None => return Err(ProbeError::KernelTooOld(name.to_owned())),
        };
        let Some(read_only) = read_number(&class.join("ro"), gone)? else {
            return Ok(None);
        };
        Ok(Some(Removable {
            name: name.to_owned(),
            devnode: self.dev.join(name),
            diskseq,
            size_bytes,
            bus: info.bus,
            serial: info.serial,
            vendor: info.vendor,
            model: info.model,
            read_only: read_only != 0,
        }))
    }

    /// Every removable whole disk in `class/block`, sorted by name. A
    /// device that cannot be probed is skipped with a warning, except on
    /// a kernel too old to report `DISKSEQ`, which is an error.
    pub fn removable_disks(&self) -> Result<Vec<Removable>, ProbeError> {
        let dir = self.sys.join("class/block");
        let entries = fs::read_dir(&dir).map_err(|source| ProbeError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut disks = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ProbeError::Io {
                path: dir.clone(),
                source,
            })?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().filter(|name| is_kernel_name(name)) else {
                // Old drivers' names ("cciss!c0d0"): fixed disks, never sticks.
                log::debug!("removable: skipping a block device with an unexpected name");
                continue;
            };
            match self.probe(name) {
                Ok(Some(disk)) => disks.push(disk),
                Ok(None) => {}
                Err(err @ ProbeError::KernelTooOld(_)) => return Err(err),
                Err(err) => log::warn!("removable: skipping {name}: {err}"),
            }
        }
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(disks)
    }

    /// Walks up from the disk's `device` to the first USB device (not an
    /// interface: it has `idVendor`) or MMC card; `None` for any other
    /// bus or a device without a `device` link (loop, dm, zram).
    fn bus_of(&self, class: &Path) -> Result<Option<BusInfo>, ProbeError> {
        let device = class.join("device");
        let Ok(real) = fs::canonicalize(&device) else {
            return Ok(None);
        };
        let root = fs::canonicalize(&self.sys).unwrap_or_else(|_| self.sys.clone());
        for ancestor in real.ancestors().take(MAX_ANCESTORS) {
            if ancestor == root || !ancestor.starts_with(&root) {
                break;
            }
            match subsystem_of(ancestor).as_deref() {
                Some("usb") if ancestor.join("idVendor").exists() => {
                    return Ok(Some(BusInfo {
                        bus: Bus::Usb,
                        serial: read_string(&ancestor.join("serial")),
                        vendor: read_string(&ancestor.join("manufacturer"))
                            .or_else(|| read_string(&device.join("vendor"))),
                        model: read_string(&ancestor.join("product"))
                            .or_else(|| read_string(&device.join("model"))),
                    }));
                }
                // Only SD cards: an eMMC (type `MMC`) is soldered in, the
                // host's own disk, and its boot areas (`mmcblk0boot0`) are
                // whole disks under the same card that nobody holds.
                Some("mmc") if !is_sd_card(ancestor) => return Ok(None),
                Some("mmc") => {
                    return Ok(Some(BusInfo {
                        bus: Bus::Mmc,
                        serial: read_string(&ancestor.join("serial")),
                        vendor: read_string(&ancestor.join("manfid")),
                        model: read_string(&ancestor.join("name")),
                    }));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// The kernel's block device names: short, `[A-Za-z0-9_-]`, so a name is
/// safe to join to a path (no `/`, no `..`).
fn is_kernel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether the MMC card at `card` is an SD memory card (`SD`, or `SDcombo`
/// with SDIO functions besides).
fn is_sd_card(card: &Path) -> bool {
    matches!(
        read_string(&card.join("type")).as_deref(),
        Some("SD" | "SDcombo")
    )
}

/// The last component of the target of `dir/subsystem`.
fn subsystem_of(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join("subsystem")).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

/// Reads at most `MAX_ATTRIBUTE` bytes of `path`; `None` when longer.
fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut contents = Vec::new();
    File::open(path)?
        .take(MAX_ATTRIBUTE + 1)
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > MAX_ATTRIBUTE {
        return Ok(None);
    }
    Ok(Some(contents))
}

/// Reads a text attribute the kernel writes. `Ok(None)` when it is
/// missing (or the device vanished: `ENODEV`) and `gone()` says the
/// device is no longer there, or when the file is missing outright.
fn read_or_gone(path: &Path, gone: impl Fn() -> bool) -> Result<Option<String>, ProbeError> {
    match read_bounded(path) {
        Ok(Some(bytes)) => {
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| ProbeError::BadAttribute {
                    path: path.to_path_buf(),
                    reason: "text that is not UTF-8",
                })
        }
        Ok(None) => Err(ProbeError::BadAttribute {
            path: path.to_path_buf(),
            reason: "more than 4 KiB",
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ENODEV) && gone() => Ok(None),
        Err(source) => Err(ProbeError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A decimal attribute (`size`, `diskseq`, `ro`); `Ok(None)` when missing.
fn read_number(path: &Path, gone: impl Fn() -> bool) -> Result<Option<u64>, ProbeError> {
    let Some(text) = read_or_gone(path, gone)? else {
        return Ok(None);
    };
    let digits = text.strip_suffix('\n').unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProbeError::BadAttribute {
            path: path.to_path_buf(),
            reason: "something other than a decimal number",
        });
    }
    digits
        .parse()
        .map(Some)
        .map_err(|_| ProbeError::BadAttribute {
            path: path.to_path_buf(),
            reason: "a number beyond 64 bits",
        })
}

/// A string a device reports, kept only if it is safe to show anywhere.
fn read_string(path: &Path) -> Option<String> {
    let bytes = read_bounded(path).ok()??;
    sanitize(&bytes)
}

/// One trailing newline stripped, spaces trimmed, then 1..=126 printable
/// ASCII characters or nothing.
fn sanitize(bytes: &[u8]) -> Option<String> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).ok()?.trim_matches(' ');
    let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
    (printable && (1..=MAX_STRING).contains(&text.len())).then(|| text.to_owned())
}

/// The disk sequence number of an open block device (`BLKGETDISKSEQ`),
/// to check that the node opened is the medium a uevent or scan named.
pub fn disk_seq(file: &File) -> io::Result<u64> {
    let mut seq: u64 = 0;
    // SAFETY: BLKGETDISKSEQ writes one u64 through the pointer, which
    // points to a live, aligned u64; the descriptor is owned by `file`.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETDISKSEQ, &mut seq as *mut u64) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seq)
}

#[cfg(test)]
pub(crate) mod tests;
