//! `securevm run --firmware`: the boot flags that do not fit together are
//! one-line usage errors, bad firmware files one-line errors before any
//! guest exists, and on the host's /dev/kvm a tiny PVH "firmware"
//! (tests/guests/pvh_firmware.S) is entered with a start info it can read.
//! The real CloudHv firmware cannot run on this host's nested KVM; its
//! boots are in scripts/e2e.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// Exit status of a guest reboot (`securevm::exit::EXIT_REBOOT`).
const EXIT_REBOOT: i32 = 3;
const LOAD_ADDRESS: u64 = 0x10_0000;

fn assert_one_line(out: &Output, status: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(status), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("securevm: error: "), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(stdout(out).is_empty(), "no guest output expected");
}

/// `code` as CloudHv's firmware is packaged: an ELF64 for machine i386
/// with one segment at 1 MiB and a Xen PVH note whose entry is its start.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let note_start = 64 + 2 * 56u64;
    let code_start = note_start + 20;
    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    image.extend_from_slice(&1u32.to_le_bytes());
    image.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // e_entry
    image.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 2, 64, 0, 0] {
        image.extend_from_slice(&half.to_le_bytes());
    }
    let code_len = u64::try_from(code.len()).unwrap();
    for (p_type, offset, address, size) in [
        (1u32, code_start, LOAD_ADDRESS, code_len),
        (4, note_start, 0, 20),
    ] {
        image.extend_from_slice(&p_type.to_le_bytes());
        image.extend_from_slice(&7u32.to_le_bytes());
        for field in [offset, address, address, size, size, 4] {
            image.extend_from_slice(&field.to_le_bytes());
        }
    }
    for word in [4u32, 4, 18] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.extend_from_slice(b"Xen\0");
    image.extend_from_slice(&u32::try_from(LOAD_ADDRESS).unwrap().to_le_bytes());
    image.extend_from_slice(code);
    image
}

fn tiny_firmware(scratch: &Scratch) -> PathBuf {
    let path = scratch.path("pvh_firmware.elf");
    std::fs::write(&path, pvh_elf(&assemble32("pvh_firmware", scratch))).unwrap();
    path
}

fn run_firmware(path: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--firmware", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    securevm(&args)
}

#[test]
fn initrd_and_cmdline_are_refused_with_firmware() {
    let scratch = Scratch::new("firmware-initrd");
    let firmware = tiny_firmware(&scratch);
    let out = run_firmware(&firmware, &["--initrd", "/boot/initrd.img"]);
    assert_one_line(&out, 2, "--initrd cannot be used with --firmware");
    assert!(stderr(&out).contains("disk's own bootloader"));
    let out = run_firmware(&firmware, &["--cmdline", "console=ttyS0"]);
    assert_one_line(&out, 2, "--cmdline cannot be used with --firmware");
}

#[test]
fn kernel_and_firmware_exclude_each_other() {
    let scratch = Scratch::new("firmware-and-kernel");
    let firmware = tiny_firmware(&scratch);
    let kernel = tiny_kernel("hello", &scratch);
    let out = run_firmware(&firmware, &["--kernel", kernel.to_str().unwrap()]);
    assert_one_line(&out, 2, "--kernel and --firmware exclude each other");
    let out = securevm(&["run", "--memory", "256"]);
    assert_one_line(&out, 2, "nothing to boot");
}

#[test]
fn firmware_log_needs_firmware() {
    let scratch = Scratch::new("firmware-log-kernel");
    let kernel = tiny_kernel("hello", &scratch);
    let log = scratch.path("fw.log");
    let out = securevm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--firmware-log",
        log.to_str().unwrap(),
    ]);
    assert_one_line(&out, 2, "--firmware-log");
    assert!(!log.exists(), "a refused run creates no log");
}

#[test]
fn missing_firmware() {
    let out = run_firmware(Path::new("/nonexistent/CLOUDHV.fd"), &[]);
    assert_one_line(
        &out,
        1,
        "the firmware /nonexistent/CLOUDHV.fd does not exist",
    );
}

#[test]
fn bad_firmware_files_are_refused_before_any_guest() {
    let scratch = Scratch::new("bad-firmware");
    let good = pvh_elf(&[0xf4; 16]);
    let mut wrong_machine = good.clone();
    wrong_machine[18] = 62;
    let mut no_pvh_note = good.clone();
    // The note's type: 17 is another Xen note, not the PVH entry.
    no_pvh_note[64 + 2 * 56 + 8] = 17;
    let mut outside_ram = good.clone();
    // p_paddr of the loadable segment: where flash firmware sits.
    outside_ram[64 + 24..64 + 32].copy_from_slice(&0xffc0_0000u64.to_le_bytes());
    for (name, bytes, needle) in [
        ("empty", Vec::new(), "the firmware file is empty"),
        (
            "flash",
            vec![0xffu8; 4096],
            "the firmware file is not an ELF image",
        ),
        ("short", good[..40].to_vec(), "truncated"),
        ("cut", good[..good.len() - 4].to_vec(), "truncated"),
        ("kernel", wrong_machine, "give it with --kernel"),
        (
            "headers-cut",
            good[..64 + 56].to_vec(),
            "program headers end",
        ),
        ("no-note", no_pvh_note, "no PVH entry note"),
        ("outside", outside_ram, "outside the guest RAM"),
    ] {
        let path = scratch.path(name);
        std::fs::write(&path, bytes).unwrap();
        let out = run_firmware(&path, &[]);
        assert_one_line(&out, 1, needle);
    }
}

#[test]
fn too_little_memory_for_firmware() {
    let scratch = Scratch::new("firmware-memory");
    let firmware = tiny_firmware(&scratch);
    let out = run_firmware(&firmware, &["--memory", "64"]);
    assert_one_line(&out, 1, "give --memory 128");
}

#[test]
fn the_firmware_is_entered_with_its_start_info_and_the_log_is_private() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("firmware-boot");
    let firmware = tiny_firmware(&scratch);
    let log = scratch.path("fw.log");
    std::fs::write(&log, "a previous boot's log\n").unwrap();
    let out = run_firmware(
        &firmware,
        &["--memory", "128", "--firmware-log", log.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(EXIT_REBOOT),
        "stderr: {}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("pvh-firmware: start info ok"),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let metadata = std::fs::metadata(&log).unwrap();
    assert_eq!(metadata.len(), 0, "the log is truncated at each boot");
    let fresh = scratch.path("fresh.log");
    let out = run_firmware(
        &firmware,
        &["--memory", "128", "--firmware-log", fresh.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(EXIT_REBOOT));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_unwritable_firmware_log_is_an_error() {
    let scratch = Scratch::new("firmware-log-dir");
    let firmware = tiny_firmware(&scratch);
    let out = run_firmware(&firmware, &["--firmware-log", "/nonexistent/dir/fw.log"]);
    assert_one_line(
        &out,
        1,
        "cannot create the firmware log /nonexistent/dir/fw.log",
    );
}
