//! End-to-end tests of the VMM core on the host's /dev/kvm with tiny
//! purpose-built guests (tests/guests/*.S): the 64-bit boot path, the vCPU
//! loop, port and MMIO exits, the serial console, PCI configuration
//! access, power-off, reset and crash reporting. A stock Linux kernel
//! cannot run on this host's nested KVM; those boots are in scripts/e2e.

mod common;

use common::*;

fn run_tiny(name: &str, extra: &[&str]) -> Option<std::process::Output> {
    if !kvm_usable() {
        eprintln!("skipping {name}: /dev/kvm is not usable on this host");
        return None;
    }
    let scratch = Scratch::new(name);
    let kernel = tiny_kernel(name, &scratch);
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "64",
    ];
    args.extend_from_slice(extra);
    Some(securevm(&args))
}

#[test]
fn hello_prints_on_serial_and_powers_off_with_status_0() {
    let Some(out) = run_tiny("hello", &[]) else {
        return;
    };
    assert_eq!(
        stdout(&out),
        "securevm-tiny-guest: hello\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn hello_runs_with_several_vcpus_and_without_seccomp() {
    let Some(out) = run_tiny("hello", &["--cpus", "2", "--no-seccomp"]) else {
        return;
    };
    assert_eq!(
        stdout(&out),
        "securevm-tiny-guest: hello\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("seccomp"),
        "--no-seccomp must say so: {}",
        stderr(&out)
    );
}

#[test]
fn acpi_reset_exits_with_the_reboot_status() {
    let Some(out) = run_tiny("reset", &[]) else {
        return;
    };
    assert_eq!(stdout(&out), "securevm-tiny-guest: reset\n");
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
}

#[test]
fn keyboard_controller_reset_exits_with_the_reboot_status() {
    let Some(out) = run_tiny("kbd_reset", &[]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
}

#[test]
fn triple_fault_dumps_registers_and_exits_with_the_crash_status() {
    let Some(out) = run_tiny("triple_fault", &[]) else {
        return;
    };
    assert_eq!(stdout(&out), "securevm-tiny-guest: faulting\n");
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("triple fault"), "{err}");
    assert!(
        err.contains("rax=0x00000000deadbeef"),
        "register dump missing: {err}"
    );
    assert!(
        !err.contains("reset state"),
        "a dump of real registers is not called the reset state: {err}"
    );
}

#[test]
fn pci_config_space_through_ports_and_ecam() {
    let Some(out) = run_tiny("pci_probe", &[]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = out.stdout;
    let start = text
        .windows(4)
        .position(|w| w == b"PCI[")
        .expect("begin marker")
        + 4;
    let body = &text[start..start + 16];
    assert_eq!(&text[start + 16..start + 18], b"]\n");
    let dword = |i: usize| u32::from_le_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
    let via_ports = dword(0);
    let via_ecam = dword(1);
    assert_eq!(
        via_ports, via_ecam,
        "both access methods see the same device"
    );
    assert_ne!(
        via_ports & 0xffff,
        0xffff,
        "a host bridge must exist at 00:00.0"
    );
    assert_eq!(dword(2), 0xffff_ffff, "an absent device reads all ones");
    assert_eq!(dword(3), 0xffff_ffff, "unmapped MMIO reads all ones");
}

#[test]
fn on_reboot_restart_boots_the_guest_again() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("restart");
    let kernel = tiny_kernel("reset", &scratch);
    // The guest resets forever; the time limit ends it.
    let out = std::process::Command::new("timeout")
        .arg("2")
        .arg(SECUREVM)
        .args([
            "run",
            "--memory",
            "32",
            "--on-reboot",
            "restart",
            "--kernel",
        ])
        .arg(&kernel)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let boots = stdout(&out).matches("securevm-tiny-guest: reset\n").count();
    assert!(
        boots >= 2,
        "the guest booted {boots} time(s): {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(124), "stopped by the time limit");
}

/// Under `--on-reboot restart` the main thread, which builds every new
/// VM, runs under a seccomp filter of its own like every other thread.
#[test]
fn on_reboot_restart_filters_the_main_thread() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("restart-filtered");
    let kernel = tiny_kernel("spin", &scratch);
    let mut child = std::process::Command::new(SECUREVM)
        .args([
            "run",
            "--memory",
            "32",
            "--on-reboot",
            "restart",
            "--kernel",
        ])
        .arg(&kernel)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The main thread's task has the process's id; mode 2 is a filter.
    let status = format!("/proc/{0}/task/{0}/status", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut mode = String::new();
    while std::time::Instant::now() < deadline {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        mode = text
            .lines()
            .find(|line| line.starts_with("Seccomp:"))
            .unwrap_or_default()
            .to_string();
        if mode == "Seccomp:\t2" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(mode, "Seccomp:\t2", "the main thread's seccomp mode");
}

/// Runs the resetting tiny guest with `--on-reboot restart` and `args`
/// for `seconds`; returns how often it booted and the output.
fn restarts(args: &[&std::ffi::OsStr], seconds: u32) -> (usize, std::process::Output) {
    let scratch = Scratch::new("restart-kernel");
    let kernel = tiny_kernel("reset", &scratch);
    let out = std::process::Command::new("timeout")
        .arg(seconds.to_string())
        .arg(SECUREVM)
        .args([
            "run",
            "--memory",
            "32",
            "--on-reboot",
            "restart",
            "--kernel",
        ])
        .arg(&kernel)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let boots = stdout(&out).matches("securevm-tiny-guest: reset\n").count();
    (boots, out)
}

/// The main thread's restart filter allows everything rebuilding a VM
/// with a disk, the control socket and several vCPUs needs.
#[test]
fn on_reboot_restart_rebuilds_disks_and_the_control_socket_under_seccomp() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("restart-devices");
    let disk = scratch.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = scratch.path("api.sock");
    let (boots, out) = restarts(
        &[
            "--cpus".as_ref(),
            "2".as_ref(),
            "--disk".as_ref(),
            disk.as_os_str(),
            "--api-socket".as_ref(),
            socket.as_os_str(),
        ],
        3,
    );
    assert!(boots >= 3, "booted {boots} time(s): {}", stderr(&out));
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
}

/// A LUKS disk is unlocked again at every boot, by the LUKS helper the
/// main thread starts before its restart filter (which allows no new
/// processes); here without a control socket, which would start one too.
#[test]
fn on_reboot_restart_unlocks_a_luks_disk_again_under_seccomp() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("restart-luks");
    let passphrase = scratch.path("disk.pass");
    std::fs::write(&passphrase, "restart test passphrase").unwrap();
    let luks = scratch.path("luks.img");
    let created = securevm(&[
        "disk",
        "create",
        "--size",
        "8M",
        "--kdf-memory",
        "32M",
        "--kdf-time",
        "4",
        "--kdf-parallel",
        "1",
        "--passphrase-file",
        passphrase.to_str().unwrap(),
        luks.to_str().unwrap(),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let (boots, out) = restarts(
        &[
            "--disk".as_ref(),
            luks.as_os_str(),
            "--passphrase-file".as_ref(),
            passphrase.as_os_str(),
        ],
        5,
    );
    assert!(boots >= 2, "booted {boots} time(s): {}", stderr(&out));
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
}
