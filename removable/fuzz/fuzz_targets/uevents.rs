//! Kernel uevent datagrams, the bytes securevm reads from the netlink
//! uevent socket (any local process can reach the parser if the sender
//! checks ever fail), parsed and then fed to the removable-disk tracker
//! over an empty sysfs.
//!
//! Invariants, beyond "no panic":
//! - only datagrams of 1..=MAX_DATAGRAM bytes that are not udevd's
//!   `libudev` format parse;
//! - a parsed event's DEVPATH is non-empty, starts with '/', is what the
//!   header names after '@', and appears in the datagram as a whole
//!   `DEVPATH=` field;
//! - the action is the header's: `add@`, `remove@`, `change@` map to their
//!   actions, anything else to `Other`;
//! - every kept value appears in the datagram as a whole `KEY=VALUE` field;
//! - with no block device present, no uevent makes the tracker report a
//!   change or track a stick.
//!
//! Input: the datagram itself.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use removable::uevent::MAX_DATAGRAM;
use removable::{parse_uevent, Action, Sysfs, Tracker};

/// Whether `data` holds `key=value` as one NUL-delimited field.
fn has_field(data: &[u8], key: &str, value: &str) -> bool {
    let field = format!("{key}={value}");
    data.split(|&b| b == 0).any(|part| part == field.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Ok(event) = parse_uevent(data) else {
        return;
    };
    assert!(!data.is_empty() && data.len() <= MAX_DATAGRAM);
    assert!(!data.starts_with(b"libudev\0"));
    assert!(event.devpath.starts_with('/'));
    let header = data.split(|&b| b == 0).next().unwrap();
    let (action, devpath) = header.split_at(header.iter().position(|&b| b == b'@').unwrap());
    assert_eq!(&devpath[1..], event.devpath.as_bytes());
    let expected = match action {
        b"add" => Action::Add,
        b"remove" => Action::Remove,
        b"change" => Action::Change,
        _ => Action::Other,
    };
    assert_eq!(event.action, expected);
    assert!(has_field(data, "DEVPATH", &event.devpath));
    for (key, value) in [
        ("SUBSYSTEM", &event.subsystem),
        ("DEVTYPE", &event.devtype),
        ("DEVNAME", &event.devname),
    ] {
        if let Some(value) = value {
            assert!(has_field(data, key, value), "{key}");
        }
    }
    for (key, value) in [("DISKSEQ", event.diskseq), ("SEQNUM", event.seqnum)] {
        if let Some(value) = value {
            let text = data
                .split(|&b| b == 0)
                .find_map(|part| part.strip_prefix(format!("{key}=").as_bytes()))
                .unwrap();
            let text = std::str::from_utf8(text).unwrap();
            assert_eq!(text.parse::<u64>().unwrap(), value, "{key}");
        }
    }

    // A sysfs root that does not exist: nothing is ever present.
    let empty = Sysfs::with_roots(
        Path::new("/nonexistent/securevm-fuzz/sys"),
        Path::new("/nonexistent/securevm-fuzz/dev"),
    );
    let mut tracker = Tracker::new(empty);
    assert!(tracker.apply(&event).is_empty());
    assert!(tracker.present().is_empty());
});
