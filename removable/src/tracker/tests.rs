//! The tracker's state machine over fake sysfs trees, fed uevents as the
//! kernel sends them; and the watcher on this host's real socket.

use super::*;
use crate::sysfs::tests::{is_root, Disk, FakeSys};

fn block_event(action: Action, name: &str, diskseq: Option<u64>) -> Uevent {
    Uevent {
        action,
        devpath: format!("/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host2/target2:0:0/2:0:0:0/block/{name}"),
        subsystem: Some("block".into()),
        devtype: Some("disk".into()),
        devname: Some(name.into()),
        diskseq,
        seqnum: Some(1),
    }
}

fn arrived(changes: &[Change]) -> Vec<(&str, u64)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Arrived(d) => Some((d.name.as_str(), d.diskseq)),
            _ => None,
        })
        .collect()
}

fn left(changes: &[Change]) -> Vec<(&str, u64)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Left(d) => Some((d.name.as_str(), d.diskseq)),
            _ => None,
        })
        .collect()
}

#[test]
fn plug_then_unplug() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    assert!(tracker.rescan().unwrap().is_empty());

    fake.usb_stick(2, Some(b"SERIAL1\n"), &Disk::new("sdb", 30));
    let changes = tracker.apply(&block_event(Action::Add, "sdb", Some(30)));
    assert_eq!(arrived(&changes), [("sdb", 30)]);
    assert_eq!(changes.len(), 1);
    let Change::Arrived(stick) = &changes[0] else {
        unreachable!()
    };
    assert_eq!(stick.serial.as_deref(), Some("SERIAL1"));
    assert_eq!(tracker.present().len(), 1);

    // The same add again (udev-style replay) changes nothing.
    assert!(tracker
        .apply(&block_event(Action::Add, "sdb", Some(30)))
        .is_empty());

    fake.remove("class/block/sdb");
    let changes = tracker.apply(&block_event(Action::Remove, "sdb", Some(30)));
    assert_eq!(left(&changes), [("sdb", 30)]);
    assert_eq!(changes.len(), 1);
    assert!(tracker.present().is_empty());
}

#[test]
fn replug_under_the_same_name_is_a_new_stick() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    let sdb = fake.usb_stick(2, Some(b"OLD\n"), &Disk::new("sdb", 30));
    tracker.apply(&block_event(Action::Add, "sdb", Some(30)));

    // The remove uevent is lost; a new stick gets the same name.
    fake.remove(&sdb);
    fake.remove("class/block/sdb");
    fake.remove("devices/pci0000:00/0000:00:14.0/usb1/1-2");
    fake.usb_stick(2, Some(b"NEW\n"), &Disk::new("sdb", 31));
    let changes = tracker.apply(&block_event(Action::Add, "sdb", Some(31)));
    assert_eq!(left(&changes), [("sdb", 30)]);
    assert_eq!(arrived(&changes), [("sdb", 31)]);
    assert!(matches!(&changes[0], Change::Left(_)), "left comes first");
    // The late remove of the old medium finds nothing to remove.
    assert!(tracker
        .apply(&block_event(Action::Remove, "sdb", Some(30)))
        .is_empty());
    assert_eq!(tracker.present()[0].serial.as_deref(), Some("NEW"));
}

#[test]
fn media_change_in_a_card_reader() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    let sdd = fake.usb_stick(4, Some(b"READER\n"), &Disk::new("sdd", 40));
    tracker.apply(&block_event(Action::Add, "sdd", Some(40)));

    // Another card: same device, same name, new DISKSEQ.
    fake.write(&format!("{sdd}/diskseq"), b"41\n");
    let changes = tracker.apply(&block_event(Action::Change, "sdd", Some(41)));
    assert_eq!(left(&changes), [("sdd", 40)]);
    assert_eq!(arrived(&changes), [("sdd", 41)]);

    // Card pulled: the reader reports no medium.
    fake.write(&format!("{sdd}/size"), b"0\n");
    let changes = tracker.apply(&block_event(Action::Change, "sdd", Some(41)));
    assert_eq!(left(&changes), [("sdd", 41)]);
    assert_eq!(changes.len(), 1);
    assert!(tracker.present().is_empty());
}

#[test]
fn resize_keeps_the_stick() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    let sdb = fake.usb_stick(2, Some(b"S\n"), &Disk::new("sdb", 30));
    tracker.apply(&block_event(Action::Add, "sdb", Some(30)));
    fake.write(&format!("{sdb}/size"), b"4096\n");
    let changes = tracker.apply(&block_event(Action::Change, "sdb", Some(30)));
    assert_eq!(
        changes,
        [Change::Resized {
            stick: tracker.present()[0].clone(),
            old_size_bytes: 2048 * 512,
        }]
    );
    assert_eq!(tracker.present()[0].size_bytes, 4096 * 512);
    // A change that alters nothing is no change.
    assert!(tracker
        .apply(&block_event(Action::Change, "sdb", Some(30)))
        .is_empty());
}

#[test]
fn change_of_a_vanished_device_is_a_departure() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    fake.usb_stick(2, Some(b"S\n"), &Disk::new("sdb", 30));
    tracker.apply(&block_event(Action::Add, "sdb", Some(30)));
    fake.remove("class/block/sdb");
    let changes = tracker.apply(&block_event(Action::Change, "sdb", Some(30)));
    assert_eq!(left(&changes), [("sdb", 30)]);
}

#[test]
fn partitions_fixed_disks_and_other_subsystems_are_ignored() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    let sdb = fake.usb_stick(2, Some(b"S\n"), &Disk::new("sdb", 30));
    fake.partition(&sdb, "sdb1");
    fake.sata_disk(&Disk::new("sda", 1));
    fake.nvme_disk(&Disk::new("nvme0n1", 2));

    let mut partition = block_event(Action::Add, "sdb1", Some(30));
    partition.devtype = Some("partition".into());
    assert!(tracker.apply(&partition).is_empty());
    // Even a partition event claiming to be a disk is probed, and refused.
    assert!(tracker
        .apply(&block_event(Action::Add, "sdb1", Some(30)))
        .is_empty());
    assert!(tracker
        .apply(&block_event(Action::Add, "sda", Some(1)))
        .is_empty());
    assert!(tracker
        .apply(&block_event(Action::Add, "nvme0n1", Some(2)))
        .is_empty());
    let mut usb = block_event(Action::Add, "sdb", Some(30));
    usb.subsystem = Some("usb".into());
    assert!(tracker.apply(&usb).is_empty());
    let mut bind = block_event(Action::Other, "sdb", Some(30));
    bind.subsystem = Some("block".into());
    assert!(tracker.apply(&bind).is_empty());
    assert!(tracker.present().is_empty());
}

#[test]
fn remove_of_unknown_changes_nothing() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    fake.usb_stick(2, Some(b"S\n"), &Disk::new("sdb", 30));
    tracker.apply(&block_event(Action::Add, "sdb", Some(30)));
    assert!(tracker
        .apply(&block_event(Action::Remove, "sdc", Some(99)))
        .is_empty());
    assert!(tracker
        .apply(&block_event(Action::Remove, "sdc", None))
        .is_empty());
    // A DISKSEQ the tracker does not know never removes by name.
    assert!(tracker
        .apply(&block_event(Action::Remove, "sdb", Some(29)))
        .is_empty());
    assert_eq!(tracker.present().len(), 1);
}

#[test]
fn remove_without_diskseq_falls_back_to_the_name() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    fake.usb_stick(2, Some(b"S\n"), &Disk::new("sdb", 30));
    fake.usb_stick(3, Some(b"T\n"), &Disk::new("sdc", 31));
    tracker.rescan().unwrap();
    let mut event = block_event(Action::Remove, "sdc", None);
    event.devname = None;
    let changes = tracker.apply(&event);
    assert_eq!(left(&changes), [("sdc", 31)]);
    assert_eq!(tracker.present().len(), 1);
}

#[test]
fn invalid_names_in_events_are_refused() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    for name in ["../../etc", "sd\u{1b}[2J", ""] {
        let mut event = block_event(Action::Add, name, None);
        event.devpath = format!("/devices/x/{name}");
        assert!(tracker.apply(&event).is_empty(), "{name:?}");
    }
}

#[test]
fn overflow_rescan_diffs_against_what_was_known() {
    let fake = FakeSys::new();
    fake.usb_stick(2, Some(b"A\n"), &Disk::new("sdb", 30));
    fake.usb_stick(3, Some(b"B\n"), &Disk::new("sdc", 31));
    let sdd = fake.usb_stick(4, Some(b"C\n"), &Disk::new("sdd", 32));
    let mut tracker = Tracker::new(fake.sysfs());
    let initial = tracker.rescan().unwrap();
    assert_eq!(arrived(&initial), [("sdb", 30), ("sdc", 31), ("sdd", 32)]);

    // While events were lost: sdb left, sdd was resized, sde arrived,
    // and sdc was replaced by another stick under the same name.
    fake.remove("class/block/sdb");
    fake.write(&format!("{sdd}/size"), b"8192\n");
    fake.usb_stick(5, Some(b"D\n"), &Disk::new("sde", 33));
    fake.remove("class/block/sdc");
    fake.remove("devices/pci0000:00/0000:00:14.0/usb1/1-3");
    fake.usb_stick(3, Some(b"B2\n"), &Disk::new("sdc", 34));
    let changes = tracker.rescan().unwrap();
    assert_eq!(left(&changes), [("sdb", 30), ("sdc", 31)]);
    assert_eq!(arrived(&changes), [("sdc", 34), ("sde", 33)]);
    let resized: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Resized {
                stick,
                old_size_bytes,
            } => Some((stick.name.as_str(), stick.size_bytes, *old_size_bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(resized, [("sdd", 8192 * 512, 2048 * 512)]);
    assert_eq!(changes.len(), 5);
    // A second rescan finds nothing new.
    assert!(tracker.rescan().unwrap().is_empty());
}

#[test]
fn tracked_sticks_are_capped() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::with_capacity(fake.sysfs(), 2);
    for (port, name) in [(2, "sdb"), (3, "sdc"), (4, "sdd")] {
        fake.usb_stick(port, None, &Disk::new(name, u64::from(port)));
    }
    let changes = tracker.rescan().unwrap();
    assert_eq!(arrived(&changes), [("sdb", 2), ("sdc", 3)]);
    assert!(tracker
        .apply(&block_event(Action::Add, "sdd", Some(4)))
        .is_empty());
    assert_eq!(tracker.present().len(), 2);
    // Room again once one leaves.
    fake.remove("class/block/sdb");
    tracker.apply(&block_event(Action::Remove, "sdb", Some(2)));
    let changes = tracker.apply(&block_event(Action::Add, "sdd", Some(4)));
    assert_eq!(arrived(&changes), [("sdd", 4)]);
    assert_eq!(MAX_TRACKED, 64);
}

#[test]
fn many_plug_cycles_leave_nothing_behind() {
    let fake = FakeSys::new();
    let mut tracker = Tracker::new(fake.sysfs());
    for seq in 100..200 {
        let sdb = fake.usb_stick(2, Some(b"CYCLE\n"), &Disk::new("sdb", seq));
        assert_eq!(
            arrived(&tracker.apply(&block_event(Action::Add, "sdb", Some(seq)))),
            [("sdb", seq)]
        );
        fake.remove(&sdb);
        fake.remove("class/block/sdb");
        fake.remove("devices/pci0000:00/0000:00:14.0/usb1/1-2");
        assert_eq!(
            left(&tracker.apply(&block_event(Action::Remove, "sdb", Some(seq)))),
            [("sdb", seq)]
        );
    }
    assert!(tracker.present().is_empty());
}

/// On this host (no USB sticks): the watcher starts, sees loop0's change
/// uevent go by, and reports no change for it.
#[test]
fn watcher_on_the_real_socket_ignores_loop_devices() {
    if !is_root() {
        eprintln!("skipped: triggering a uevent needs root");
        return;
    }
    let (mut watcher, initial) = Watcher::start(Sysfs::system()).unwrap();
    assert_eq!(initial.len(), watcher.present().len());
    assert!(initial.iter().all(|c| matches!(c, Change::Arrived(_))));
    let trigger = "/sys/class/block/loop0/uevent";
    if std::path::Path::new(trigger).exists() {
        std::fs::write(trigger, "change").unwrap();
    }
    let changes = watcher.next_changes(Duration::from_millis(300)).unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(watcher.dropped_datagrams(), 0);
    assert!(watcher.as_raw_fd() >= 0);
}

/// Uevents that change nothing, however many are queued, do not keep
/// `next_changes` past its deadline (the watch thread must get its turn
/// to see that the VM stops).
#[test]
fn uevents_that_change_nothing_do_not_hold_the_caller_past_its_deadline() {
    if !is_root() {
        eprintln!("skipped: triggering a uevent needs root");
        return;
    }
    let (mut watcher, _) = Watcher::start(Sysfs::system()).unwrap();
    let triggers: Vec<_> = (0..8)
        .map(|n| format!("/sys/class/block/loop{n}/uevent"))
        .filter(|path| std::path::Path::new(path).exists())
        .collect();
    if triggers.len() < 2 {
        eprintln!("skipped: fewer than two loop devices on this host");
        return;
    }
    for _ in 0..4 {
        for trigger in &triggers {
            std::fs::write(trigger, "change").unwrap();
        }
    }
    // The kernel queues the events as the writes return; one more look
    // makes sure the first is there.
    std::thread::sleep(Duration::from_millis(100));
    let changes = watcher.next_changes(Duration::ZERO).unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert!(
        matches!(
            watcher.monitor.next(Duration::ZERO).unwrap(),
            MonitorEvent::Uevent(_)
        ),
        "the queued uevents were all read past the deadline"
    );
}
