//! `--watch-removable`: sticks plugged into the PC are found by securevm
//! itself and handed to the running VM, which judges each by the role.
//!
//! The `removable` crate reads the kernel's uevents and sysfs and says
//! which USB or MMC whole disks arrived, left or changed size; this module
//! runs it on a thread of its own kind (`removable-watch`, filter
//! [`ThreadKind::RemovableWatch`]) and tells a [`StickSink`] (the control
//! API's view of the VM, which holds the role and the media hot-plug
//! thread). The watch thread never opens a disk: it reads sysfs only, and
//! everything that touches a stick happens on the media hot-plug thread.
//!
//! The uevent socket is opened once per process, before any filter, and
//! kept for the next VM when `--on-reboot restart` builds one: no filter
//! after the first boot allows a netlink socket.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use removable::{Change, Removable, Sysfs, Watcher};

use super::hotplug::HostStick;
use crate::confined::{self, Confinement};
use crate::seccomp::ThreadKind;
use crate::sync::lock;

/// How often the thread looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(500);

/// The watcher a stopped watch thread leaves for the next VM's.
static KEPT_WATCHER: Mutex<Option<Watcher>> = Mutex::new(None);

/// What the VM does with the sticks the watch thread reports.
pub trait StickSink: Send + Sync {
    /// A stick is on the host (found at start or just plugged in).
    fn arrived(&self, stick: HostStick);
    /// The stick with `diskseq` left the host.
    fn left(&self, diskseq: u64);
    /// The stick with `diskseq` changed size while present: whatever was
    /// attached must not be used any more.
    fn resized(&self, stick: HostStick, old_size_bytes: u64, new_size_bytes: u64);
}

/// The running watch thread.
pub struct RemovableWatch {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RemovableWatch {
    /// Opens the uevent socket (or takes the one a previous VM kept),
    /// starts the thread, and hands every stick already present to `sink`
    /// from that thread.
    pub fn start(sink: Arc<dyn StickSink>, seccomp: bool) -> io::Result<Self> {
        let kept = lock(&KEPT_WATCHER).take();
        let (watcher, present) = match kept {
            Some(watcher) => {
                let present = watcher.present().into_iter().map(Change::Arrived).collect();
                (watcher, present)
            }
            None => Watcher::start(Sysfs::system())?,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let confinement = Confinement::new(ThreadKind::RemovableWatch, seccomp);
        let thread = confined::spawn("removable-watch", confinement, move || {
            watch(watcher, present, sink.as_ref(), &stopping);
        })
        .map_err(io::Error::other)?;
        Ok(Self {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Ends the thread (within [`STOP_POLL`] and the stick being attached,
    /// if any) and keeps its socket for a next VM.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                log::error!("the removable-media watch thread panicked");
            }
        }
    }
}

impl Drop for RemovableWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(mut watcher: Watcher, present: Vec<Change>, sink: &dyn StickSink, stop: &AtomicBool) {
    report(present, sink);
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        match watcher.next_changes(STOP_POLL) {
            Ok(changes) => {
                failing = false;
                report(changes, sink);
            }
            Err(e) => {
                // Logged once per run of failures; the socket may recover
                // (a signal, memory pressure), and sticks must keep coming.
                if !failing {
                    log::error!("watching the host's removable media: {e}");
                }
                failing = true;
                std::thread::sleep(STOP_POLL);
            }
        }
    }
    *lock(&KEPT_WATCHER) = Some(watcher);
}

fn report(changes: Vec<Change>, sink: &dyn StickSink) {
    for change in changes {
        match change {
            Change::Arrived(stick) => sink.arrived(host_stick(&stick)),
            Change::Left(stick) => sink.left(stick.diskseq),
            Change::Resized {
                stick,
                old_size_bytes,
            } => sink.resized(host_stick(&stick), old_size_bytes, stick.size_bytes),
        }
    }
}

fn host_stick(stick: &Removable) -> HostStick {
    HostStick {
        devnode: stick.devnode.clone(),
        diskseq: stick.diskseq,
        serial: stick.serial.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use removable::Bus;
    use std::path::PathBuf;

    /// Records what the watch reported.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl StickSink for Recorder {
        fn arrived(&self, stick: HostStick) {
            lock(&self.0).push(format!("arrived {} {:?}", stick.diskseq, stick.serial));
        }
        fn left(&self, diskseq: u64) {
            lock(&self.0).push(format!("left {diskseq}"));
        }
        fn resized(&self, stick: HostStick, old_size_bytes: u64, new_size_bytes: u64) {
            lock(&self.0).push(format!(
                "resized {} {old_size_bytes} {new_size_bytes}",
                stick.diskseq
            ));
        }
    }

    fn removable(diskseq: u64, size_bytes: u64) -> Removable {
        Removable {
            name: "sdb".into(),
            devnode: PathBuf::from("/dev/sdb"),
            diskseq,
            size_bytes,
            bus: Bus::Usb,
            serial: Some("AA11".into()),
            vendor: None,
            model: None,
            read_only: false,
        }
    }

    #[test]
    fn every_change_reaches_the_vm_in_order() {
        let sink = Recorder::default();
        report(
            vec![
                Change::Arrived(removable(7, 1 << 20)),
                Change::Resized {
                    stick: removable(7, 1 << 21),
                    old_size_bytes: 1 << 20,
                },
                Change::Left(removable(7, 1 << 21)),
            ],
            &sink,
        );
        assert_eq!(
            *lock(&sink.0),
            [
                "arrived 7 Some(\"AA11\")",
                "resized 7 1048576 2097152",
                "left 7"
            ]
        );
    }

    /// Set in the environment of the child process that runs
    /// [`filtered_rescan_in_child_process`].
    const RESCAN_CHILD: &str = "SECUREVM_TEST_FILTERED_RESCAN_CHILD";

    /// After lost uevents (an overflow) the watch thread rescans every
    /// block device under its own filter: listing `/sys/class/block`,
    /// resolving each disk's `device` link and walking its ancestors.
    #[test]
    fn a_rescan_runs_under_the_watch_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "external_media::watch::tests::filtered_rescan_in_child_process",
            RESCAN_CHILD,
        );
    }

    /// The child process of `a_rescan_runs_under_the_watch_filter`.
    #[test]
    #[ignore = "runs as the child of a_rescan_runs_under_the_watch_filter"]
    fn filtered_rescan_in_child_process() {
        if std::env::var_os(RESCAN_CHILD).is_none() {
            return a_rescan_runs_under_the_watch_filter();
        }
        let confinement = Confinement::new(ThreadKind::RemovableWatch, true);
        let scanned = Arc::new(Mutex::new(None));
        let result = scanned.clone();
        confined::spawn("removable-watch", confinement, move || {
            let mut tracker = removable::Tracker::new(Sysfs::system());
            *lock(&result) = Some(tracker.rescan().map(|changes| changes.len()));
        })
        .unwrap()
        .join()
        .unwrap();
        let scanned = lock(&scanned).take().expect("the rescan ran");
        eprintln!("rescan under the filter: {scanned:?}");
        assert!(scanned.is_ok(), "{scanned:?}");
    }

    /// Set in the environment of the child process that runs
    /// [`filtered_watch_in_child_process`].
    const FILTERED_CHILD: &str = "SECUREVM_TEST_FILTERED_WATCH_CHILD";

    /// The watch thread receives and judges uevents under its real filter,
    /// stops, and a second start (a restarted VM) takes the kept socket,
    /// in a fresh process running only `filtered_watch_in_child_process`.
    #[test]
    fn the_watch_thread_runs_under_its_filter_and_keeps_its_socket() {
        crate::seccomp::test_support::run_in_fresh_process(
            "external_media::watch::tests::filtered_watch_in_child_process",
            FILTERED_CHILD,
        );
    }

    /// The child process of
    /// `the_watch_thread_runs_under_its_filter_and_keeps_its_socket`.
    #[test]
    #[ignore = "runs as the child of the_watch_thread_runs_under_its_filter_and_keeps_its_socket"]
    fn filtered_watch_in_child_process() {
        if std::env::var_os(FILTERED_CHILD).is_none() {
            return the_watch_thread_runs_under_its_filter_and_keeps_its_socket();
        }
        let sink = Arc::new(Recorder::default());
        let watch = RemovableWatch::start(sink.clone(), true).unwrap();
        // A uevent from the kernel for every block device (as root), which
        // the thread receives and probes in sysfs under its filter.
        let mut announced = 0;
        for entry in std::fs::read_dir("/sys/class/block").unwrap() {
            let uevent = entry.unwrap().path().join("uevent");
            if std::fs::write(uevent, "change").is_ok() {
                announced += 1;
            }
        }
        eprintln!("announced {announced} block devices");
        std::thread::sleep(STOP_POLL * 2);
        watch.stop();
        assert!(lock(&KEPT_WATCHER).is_some(), "the socket is kept");
        let again = RemovableWatch::start(sink, true).unwrap();
        assert!(lock(&KEPT_WATCHER).is_none(), "and taken by the next VM");
        again.stop();
    }
}
