//! The set of removable disks present on the host, kept from one scan and
//! the kernel uevents after it.
//!
//! Sticks are keyed by `DISKSEQ`, never by name: the kernel hands `sdb` to
//! the next stick as soon as the last one is gone, and a card reader keeps
//! its name when the card in it changes. [`Tracker`] is the state machine
//! (fed uevents, probing a [`Sysfs`]); [`Watcher`] adds the socket.
//!
//! Memory is bounded: past [`MAX_TRACKED`] sticks new ones are refused
//! with a warning.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::monitor::{Monitor, MonitorEvent};
use crate::sysfs::{ProbeError, Removable, Sysfs};
use crate::uevent::{Action, Uevent};

/// Most sticks tracked at once; more than any PC has ports for.
pub const MAX_TRACKED: usize = 64;
/// Most datagrams read in one [`Watcher::next_changes`] once the first
/// change is known, so a storm of uevents cannot keep the caller away.
const MAX_DRAIN: usize = 256;

/// A change in the set of removable disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Arrived(Removable),
    Left(Removable),
    /// Same medium (same `DISKSEQ`), new size.
    Resized {
        stick: Removable,
        old_size_bytes: u64,
    },
}

/// The removable disks known, updated from uevents and rescans.
#[derive(Debug)]
pub struct Tracker {
    sysfs: Sysfs,
    known: BTreeMap<u64, Removable>,
    capacity: usize,
}

impl Tracker {
    /// An empty tracker over `sysfs`, holding at most [`MAX_TRACKED`].
    pub fn new(sysfs: Sysfs) -> Tracker {
        Tracker::with_capacity(sysfs, MAX_TRACKED)
    }

    /// An empty tracker holding at most `capacity` sticks.
    pub fn with_capacity(sysfs: Sysfs, capacity: usize) -> Tracker {
        Tracker {
            sysfs,
            known: BTreeMap::new(),
            capacity,
        }
    }

    /// The sticks present, ordered by `DISKSEQ` (plug order).
    pub fn present(&self) -> Vec<Removable> {
        self.known.values().cloned().collect()
    }

    /// Scans sysfs and returns what differs from what was known.
    pub fn rescan(&mut self) -> Result<Vec<Change>, ProbeError> {
        let found = self.sysfs.removable_disks()?;
        let mut changes = Vec::new();
        let still_there: Vec<u64> = found.iter().map(|disk| disk.diskseq).collect();
        let gone: Vec<u64> = self
            .known
            .keys()
            .filter(|seq| !still_there.contains(seq))
            .copied()
            .collect();
        for seq in gone {
            if let Some(old) = self.known.remove(&seq) {
                changes.push(Change::Left(old));
            }
        }
        for disk in found {
            changes.extend(self.update(disk));
        }
        Ok(changes)
    }

    /// Applies one uevent; only whole-disk block events matter.
    pub fn apply(&mut self, event: &Uevent) -> Vec<Change> {
        if event.subsystem.as_deref() != Some("block") || event.devtype.as_deref() != Some("disk") {
            return Vec::new();
        }
        let Some(name) = event_name(event) else {
            return Vec::new();
        };
        match event.action {
            Action::Add | Action::Change => self.reprobe(name),
            Action::Remove => self.remove(name, event.diskseq),
            Action::Other => Vec::new(),
        }
    }

    /// Probes `name` and reconciles what is there now with what was known
    /// under that name.
    fn reprobe(&mut self, name: &str) -> Vec<Change> {
        match self.sysfs.probe(name) {
            Ok(Some(disk)) => self.update(disk),
            Ok(None) => self.remove(name, None),
            Err(ProbeError::InvalidName) => {
                log::debug!("removable: ignoring block device {name:?}: not a kernel name");
                Vec::new()
            }
            Err(err) => {
                log::warn!("removable: cannot probe block device {name:?}: {err}");
                Vec::new()
            }
        }
    }

    /// Records `disk` as present: a known medium may have been resized; a
    /// different medium under a known name replaces it.
    fn update(&mut self, disk: Removable) -> Vec<Change> {
        if let Some(known) = self.known.get_mut(&disk.diskseq) {
            let old_size_bytes = known.size_bytes;
            *known = disk.clone();
            if old_size_bytes == disk.size_bytes {
                return Vec::new();
            }
            return vec![Change::Resized {
                stick: disk,
                old_size_bytes,
            }];
        }
        let mut changes = self.remove(&disk.name, None);
        if self.known.len() >= self.capacity {
            log::warn!(
                "removable: already tracking {} removable disks; ignoring {}",
                self.known.len(),
                disk.name
            );
            return changes;
        }
        self.known.insert(disk.diskseq, disk.clone());
        changes.push(Change::Arrived(disk));
        changes
    }

    /// Forgets the stick with `diskseq`, or when that is unknown to the
    /// event, the one named `name`.
    fn remove(&mut self, name: &str, diskseq: Option<u64>) -> Vec<Change> {
        let seq = match diskseq {
            Some(seq) => Some(seq),
            None => self
                .known
                .values()
                .find(|disk| disk.name == name)
                .map(|disk| disk.diskseq),
        };
        seq.and_then(|seq| self.known.remove(&seq))
            .map(Change::Left)
            .into_iter()
            .collect()
    }
}

/// The kernel name of the event's device: `DEVNAME`, else the last part
/// of `DEVPATH`. Checked by the probe before any path is built from it.
fn event_name(event: &Uevent) -> Option<&str> {
    match event.devname.as_deref() {
        Some(devname) => Some(devname),
        None => event.devpath.rsplit('/').next().filter(|n| !n.is_empty()),
    }
}

/// A [`Tracker`] fed by the kernel's uevent socket.
#[derive(Debug)]
pub struct Watcher {
    monitor: Monitor,
    tracker: Tracker,
}

impl Watcher {
    /// Opens the monitor first, then scans, so nothing plugged in between
    /// is missed; returns the sticks present now as `Arrived` changes.
    pub fn start(sysfs: Sysfs) -> io::Result<(Watcher, Vec<Change>)> {
        let monitor = Monitor::open()?;
        let mut tracker = Tracker::new(sysfs);
        let changes = tracker.rescan().map_err(io::Error::other)?;
        Ok((Watcher { monitor, tracker }, changes))
    }

    /// Waits up to `timeout` for uevents and returns the changes they make
    /// (empty when none did). Once a change is seen, the uevents already
    /// queued are read too, without further waiting. On an overflow of the
    /// socket's buffer it rescans and returns the difference.
    pub fn next_changes(&mut self, timeout: Duration) -> io::Result<Vec<Change>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut changes = Vec::new();
        let mut drained = 0;
        loop {
            let wait = if changes.is_empty() {
                deadline.map_or(Duration::MAX, |d| {
                    d.saturating_duration_since(Instant::now())
                })
            } else {
                Duration::ZERO
            };
            match self.monitor.next(wait)? {
                MonitorEvent::Uevent(event) => changes.extend(self.tracker.apply(&event)),
                MonitorEvent::Overflow => {
                    log::warn!("removable: uevents were lost; rescanning block devices");
                    changes.extend(self.tracker.rescan().map_err(io::Error::other)?);
                }
                MonitorEvent::Timeout => return Ok(changes),
            }
            if !changes.is_empty() {
                drained += 1;
                if drained >= MAX_DRAIN {
                    return Ok(changes);
                }
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                // Uevents that change nothing (other devices, other
                // subsystems) may never pause; the caller must get its
                // turn to stop.
                return Ok(changes);
            }
        }
    }

    /// The sticks present now.
    pub fn present(&self) -> Vec<Removable> {
        self.tracker.present()
    }

    /// Uevent datagrams dropped as not the kernel's or unparseable.
    pub fn dropped_datagrams(&self) -> u64 {
        self.monitor.dropped_datagrams()
    }

    /// The uevent socket, for callers that poll several descriptors.
    pub fn as_raw_fd(&self) -> RawFd {
        self.monitor.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
