//! Crash safety of key changes: a key change must leave an image that
//! opens with the old or the new key whatever instant it is interrupted.
//! Two angles: torn header states built by hand (one header copy from
//! before the change, the other from after, or half-written), and real
//! `SIGKILL`s of a process in the middle of `add_key` / `remove_key`.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::error::StorageError;
use super::header;
use super::luks::{self, add_key, remove_key, unlock};
use super::test_support::*;

const MIB: u64 = 1 << 20;
const NEW: &[u8] = b"the new passphrase";
const CHILD_ENV: &str = "SECUREVM_CRASH_TEST_IMAGE";
const CHILD_OP_ENV: &str = "SECUREVM_CRASH_TEST_OP";

/// Opens with `passphrase`: Ok(true), refuses it: Ok(false); anything
/// else (damaged, unreadable) is an Err.
fn opens_with(path: &Path, passphrase: &[u8]) -> Result<bool, StorageError> {
    match unlock(path, passphrase) {
        Ok(_) => Ok(true),
        Err(StorageError::WrongPassphrase { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn header_size(path: &Path) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    header::read_luks2(&file).unwrap().header_size
}

fn copy_range(from: &Path, to: &Path, offset: u64, len: u64) {
    let source = std::fs::File::open(from).unwrap();
    let target = OpenOptions::new().write(true).open(to).unwrap();
    let mut buffer = vec![0u8; len as usize];
    source.read_exact_at(&mut buffer, offset).unwrap();
    target.write_all_at(&buffer, offset).unwrap();
}

#[test]
fn torn_header_updates_open_with_the_old_or_the_new_key() {
    let before = new_volume("before.img", MIB, 4096);
    let after = scratch_path("after.img");
    std::fs::copy(&before, &after).unwrap();
    add_key(&after, PASSPHRASE, NEW, &FAST_KDF).unwrap();
    let size = header_size(&after);

    // Killed after one copy was rewritten but before the other: every
    // combination of old and new copies, plus a half-written copy.
    let half = size / 2;
    let cases: [(&str, &Path, u64, u64); 4] = [
        ("old primary, new secondary", &before, 0, size),
        ("new primary, old secondary", &before, size, size),
        ("half-written primary", &before, half, size - half),
        ("half-written secondary", &before, size + half, size - half),
    ];
    for (what, old_source, offset, len) in cases {
        let torn = scratch_path("torn.img");
        std::fs::copy(&after, &torn).unwrap();
        copy_range(old_source, &torn, offset, len);
        let old_opens = opens_with(&torn, PASSPHRASE).unwrap_or_else(|e| panic!("{what}: {e}"));
        let new_opens = opens_with(&torn, NEW).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            old_opens,
            "{what}: the old passphrase no longer opens the disk"
        );
        println!("{what}: old key opens, new key opens: {new_opens}");
    }
}

#[test]
fn torn_key_removal_keeps_the_remaining_key() {
    let before = new_volume("rm-before.img", MIB, 4096);
    add_key(&before, PASSPHRASE, NEW, &FAST_KDF).unwrap();
    let after = scratch_path("rm-after.img");
    std::fs::copy(&before, &after).unwrap();
    remove_key(&after, NEW, None, false).unwrap();
    let size = header_size(&after);
    for (offset, len) in [(0, size), (size, size), (size / 2, size / 2)] {
        let torn = scratch_path("rm-torn.img");
        std::fs::copy(&after, &torn).unwrap();
        copy_range(&before, &torn, offset, len);
        assert!(opens_with(&torn, PASSPHRASE).unwrap());
        opens_with(&torn, NEW).unwrap();
    }
}

/// Run `op` in a child process on a copy of `base` and SIGKILL it after
/// `delay`, or let it finish when `delay` is `None`; returns the copy.
fn kill_during(op: &str, base: &Path, delay: Option<Duration>) -> ScratchPath {
    let image = scratch_path("killed.img");
    std::fs::copy(base, &image).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storage::crash_tests::child_key_change",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &image)
        .env(CHILD_OP_ENV, op)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    match delay {
        Some(delay) => {
            std::thread::sleep(delay);
            let _ = child.kill();
            child.wait().unwrap();
        }
        None => assert!(child.wait().unwrap().success(), "{op} failed unkilled"),
    }
    image
}

#[test]
fn killed_key_changes_leave_an_openable_disk() {
    let base = new_volume("kill-base.img", MIB, 4096);
    let with_two = scratch_path("kill-two.img");
    std::fs::copy(&base, &with_two).unwrap();
    add_key(&with_two, PASSPHRASE, NEW, &FAST_KDF).unwrap();
    let mut outcomes = Vec::new();
    for delay_ms in [0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256] {
        let delay = Some(Duration::from_millis(delay_ms));
        let added = kill_during("add", &base, delay);
        assert!(
            opens_with(&added, PASSPHRASE).unwrap(),
            "add killed at {delay_ms} ms"
        );
        let new_opens = opens_with(&added, NEW).unwrap();
        let removed = kill_during("remove", &with_two, delay);
        assert!(
            opens_with(&removed, PASSPHRASE).unwrap(),
            "remove killed at {delay_ms} ms"
        );
        let new_still_opens = opens_with(&removed, NEW).unwrap();
        outcomes.push((delay_ms, new_opens, new_still_opens));
    }
    println!("(delay ms, add completed, removed key still opens): {outcomes:?}");
    // However loaded the machine, changes left to finish take effect.
    let added = kill_during("add", &base, None);
    assert!(opens_with(&added, PASSPHRASE).unwrap() && opens_with(&added, NEW).unwrap());
    let removed = kill_during("remove", &with_two, None);
    assert!(opens_with(&removed, PASSPHRASE).unwrap() && !opens_with(&removed, NEW).unwrap());
}

/// The child side of [`killed_key_changes_leave_an_openable_disk`]; does
/// nothing unless started by it.
#[test]
#[ignore = "helper process for killed_key_changes_leave_an_openable_disk"]
fn child_key_change() {
    let (Ok(image), Ok(op)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_OP_ENV)) else {
        return;
    };
    let image = Path::new(&image);
    match op.as_str() {
        "add" => {
            add_key(image, PASSPHRASE, NEW, &FAST_KDF).unwrap();
        }
        _ => {
            luks::remove_key(image, NEW, None, false).unwrap();
        }
    }
}
