//! Bad input to `securevm run`: each case must give a one-line error that
//! names the problem and what to do, exit with status 1 (2 for usage
//! errors), never panic, and write nothing.

mod common;

use common::*;

fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("securevm: error: "), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(stdout(out).is_empty(), "no guest output expected");
}

fn hello(scratch: &Scratch) -> String {
    tiny_kernel("hello", scratch).to_str().unwrap().to_owned()
}

#[test]
fn missing_kernel() {
    let out = securevm(&["run", "--kernel", "/nonexistent/vmlinuz"]);
    assert_one_line_error(&out, "/nonexistent/vmlinuz");
    assert!(stderr(&out).contains("does not exist"));
}

#[test]
fn unreadable_kernel() {
    // A directory cannot be read as a file, even by root.
    let scratch = Scratch::new("unreadable-kernel");
    let out = securevm(&["run", "--kernel", scratch.0.to_str().unwrap()]);
    assert_one_line_error(&out, "kernel");
}

#[test]
fn missing_initrd() {
    let scratch = Scratch::new("missing-initrd");
    let kernel = hello(&scratch);
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        "/nonexistent/initrd.img",
    ]);
    assert_one_line_error(&out, "/nonexistent/initrd.img");
}

#[test]
fn missing_disk() {
    let scratch = Scratch::new("missing-disk");
    let kernel = hello(&scratch);
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--disk",
        "/nonexistent/disk.img",
    ]);
    assert_one_line_error(&out, "/nonexistent/disk.img");
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let scratch = Scratch::new("not-a-kernel");
    let path = scratch.path("notes.txt");
    std::fs::write(&path, "these are not the bytes of a kernel\n".repeat(100)).unwrap();
    let out = securevm(&["run", "--kernel", path.to_str().unwrap()]);
    assert_one_line_error(&out, "not a Linux kernel");
}

#[test]
fn truncated_bzimage() {
    let scratch = Scratch::new("truncated");
    let mut image = bzimage(&assemble("hello", &scratch));
    // Keep the setup header but cut the setup sectors short.
    image.truncate(0x300);
    let path = scratch.path("truncated.bzImage");
    std::fs::write(&path, image).unwrap();
    let out = securevm(&["run", "--kernel", path.to_str().unwrap()]);
    assert_one_line_error(&out, "truncated");
}

#[test]
fn memory_too_small_for_the_kernel() {
    let scratch = Scratch::new("small-memory");
    // A kernel whose image is larger than the guest RAM.
    let payload = vec![0x90u8; 40 << 20];
    let path = scratch.path("big.bzImage");
    std::fs::write(&path, bzimage(&payload)).unwrap();
    let out = securevm(&["run", "--kernel", path.to_str().unwrap(), "--memory", "32"]);
    assert_one_line_error(&out, "--memory");
}

#[test]
fn memory_below_the_minimum() {
    let scratch = Scratch::new("tiny-memory");
    let kernel = hello(&scratch);
    let out = securevm(&["run", "--kernel", &kernel, "--memory", "1"]);
    assert_one_line_error(&out, "--memory");
}

#[test]
fn more_vcpus_than_allowed() {
    let scratch = Scratch::new("vcpus");
    let kernel = hello(&scratch);
    let out = securevm(&["run", "--kernel", &kernel, "--cpus", "4000"]);
    assert_one_line_error(&out, "--cpus");
}

#[test]
fn kvm_device_absent() {
    let scratch = Scratch::new("no-kvm");
    let kernel = hello(&scratch);
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--kvm-device",
        "/nonexistent/kvm",
    ]);
    assert_one_line_error(&out, "scripts/nested");
}

#[test]
fn kvm_device_not_permitted() {
    // /dev/kvm opened by an unprivileged user: drop to `nobody` when root.
    if running_as_root() && std::path::Path::new("/dev/kvm").exists() {
        let scratch = Scratch::new("kvm-denied");
        let kernel = hello(&scratch);
        std::fs::set_permissions(
            &scratch.0,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(SECUREVM)
            .args(["run", "--kernel", &kernel])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        if stat_mode("/dev/kvm") & 0o006 == 0o006 {
            eprintln!("skipping: /dev/kvm is world-accessible here");
            return;
        }
        assert_one_line_error(&out, "permission denied");
    } else {
        eprintln!("skipping: needs root to impersonate an unprivileged user");
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn stat_mode(path: &str) -> u32 {
    std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(path).unwrap())
}

#[test]
fn disk_size_not_a_multiple_of_512() {
    let scratch = Scratch::new("odd-disk");
    let kernel = hello(&scratch);
    let disk = scratch.path("odd.img");
    std::fs::write(&disk, vec![0xa5u8; 1000]).unwrap();
    let out = securevm(&["run", "--kernel", &kernel, "--disk", disk.to_str().unwrap()]);
    assert_one_line_error(&out, "multiple of 512");
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        vec![0xa5u8; 1000],
        "disk unchanged"
    );
}

#[test]
fn unknown_disk_option_is_a_usage_error() {
    let out = securevm(&["run", "--kernel", "k", "--disk", "a.img,rw"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown disk option 'rw'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_stop_timeout_out_of_range_or_not_a_number_is_a_usage_error() {
    for (value, why) in [
        ("0", "0 is not in 1..=3600"),
        ("3601", "3601 is not in 1..=3600"),
        ("30s", "invalid digit"),
        ("-5", "unexpected argument"),
    ] {
        let out = securevm(&["run", "--kernel", "k", "--stop-timeout", value]);
        assert_eq!(out.status.code(), Some(2), "{value}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--stop-timeout") || value == "-5",
            "{value}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(why), "{value}: {}", stderr(&out));
    }
}

/// A LUKS2 disk with a cheap KDF so that tests stay fast.
fn luks_disk(scratch: &Scratch, passphrase: &str) -> std::path::PathBuf {
    let disk = scratch.path("secret.img");
    let pass = scratch.path("create.pass");
    std::fs::write(&pass, passphrase).unwrap();
    let out = std::process::Command::new(SECUREVM)
        .args([
            "disk",
            "create",
            "--size",
            "8M",
            "--kdf-memory",
            "32M",
            "--kdf-time",
            "4",
        ])
        .arg("--passphrase-file")
        .arg(&pass)
        .arg(&disk)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "disk create: {}", stderr(&out));
    disk
}

#[test]
fn wrong_passphrase_for_an_encrypted_disk() {
    let scratch = Scratch::new("wrong-pass");
    let kernel = hello(&scratch);
    let disk = luks_disk(&scratch, "right horse battery");
    let before = std::fs::read(&disk).unwrap();
    let wrong = scratch.path("wrong.pass");
    std::fs::write(&wrong, "wrong horse battery").unwrap();
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--disk",
        disk.to_str().unwrap(),
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "passphrase");
    assert!(
        !stderr(&out).contains("wrong horse"),
        "secret leaked: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&disk).unwrap(), before, "image unchanged");
}

#[test]
fn the_right_passphrase_opens_an_encrypted_disk() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("right-pass");
    let kernel = hello(&scratch);
    let disk = luks_disk(&scratch, "right horse battery");
    let pass = scratch.path("run.pass");
    std::fs::write(&pass, "right horse battery\n").unwrap();
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--disk",
        disk.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "securevm-tiny-guest: hello\n");
}

#[test]
fn external_media_denied_by_policy_are_reported_and_not_attached() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("external-deny");
    let kernel = hello(&scratch);
    let stick = scratch.path("stick.img");
    std::fs::write(&stick, vec![0x42u8; 1 << 20]).unwrap();
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--external",
        stick.to_str().unwrap(),
        "--external-policy",
        "deny",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("external medium") && stderr(&out).contains("not attached"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&stick).unwrap(), vec![0x42u8; 1 << 20]);
}

/// The example policy, signed by a fresh key: (policy path, public key path).
#[test]
fn a_tampered_policy_is_refused_before_the_guest_starts() {
    let scratch = Scratch::new("tampered-policy");
    let kernel = hello(&scratch);
    let (policy, key) = signed_example_policy(&scratch);
    let mut bytes = std::fs::read(&policy).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&policy, bytes).unwrap();
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--policy",
        policy.to_str().unwrap(),
        "--policy-key",
        key.to_str().unwrap(),
        "--user",
        "alice",
    ]);
    assert_one_line_error(&out, "policy");
}

#[test]
fn a_role_cannot_be_chosen_on_the_command_line() {
    let scratch = Scratch::new("role-flag");
    let kernel = hello(&scratch);
    let (policy, key) = signed_example_policy(&scratch);
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--policy",
        policy.to_str().unwrap(),
        "--policy-key",
        key.to_str().unwrap(),
        "--user",
        "bob",
        "--role",
        "staff",
    ]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "--role is not accepted: the role comes from the policy's entry for the user"
        ),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn the_role_decides_what_happens_to_external_media() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("role-media");
    let kernel = hello(&scratch);
    let (policy, key) = signed_example_policy(&scratch);
    let stick = scratch.path("stick.img");
    std::fs::write(&stick, vec![0x42u8; 1 << 20]).unwrap();
    let pass = write_file(&scratch, "bob.pass", BOB_PASSPHRASE);
    let audit = audit_args(&scratch);
    let mut args = vec![
        "run",
        "--kernel",
        &kernel,
        "--policy",
        policy.to_str().unwrap(),
        "--policy-key",
        key.to_str().unwrap(),
        "--user",
        "bob",
        "--passphrase-file",
        &pass,
        "--external",
        stick.to_str().unwrap(),
    ];
    args.extend(audit.iter().map(String::as_str));
    let out = securevm(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(std::fs::read(&stick).unwrap(), vec![0x42u8; 1 << 20]);
}

#[test]
fn the_command_line_cannot_override_the_roles_media_rule() {
    let scratch = Scratch::new("override-role");
    let kernel = hello(&scratch);
    let (policy, key) = signed_example_policy(&scratch);
    let out = securevm(&[
        "run",
        "--kernel",
        &kernel,
        "--policy",
        policy.to_str().unwrap(),
        "--policy-key",
        key.to_str().unwrap(),
        "--user",
        "bob",
        "--external-policy",
        "encrypt",
    ]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_missing_luks_helper_is_named_and_leaves_no_half_made_image() {
    let scratch = Scratch::new("no-helper-create");
    let pass = scratch.path("create.pass");
    std::fs::write(&pass, "right horse battery").unwrap();
    let disk = scratch.path("new.img");
    let out = std::process::Command::new(SECUREVM)
        .args(["disk", "create", "--size", "8M"])
        .arg("--passphrase-file")
        .arg(&pass)
        .arg(&disk)
        .env("SECUREVM_LUKS_HELPER", "/nonexistent/securevm-luks")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        "cannot start the LUKS helper /nonexistent/securevm-luks",
    );
    assert!(!disk.exists(), "a half-made image was left behind");
}

#[test]
fn a_missing_luks_helper_stops_an_encrypted_boot() {
    let scratch = Scratch::new("no-helper-run");
    let kernel = hello(&scratch);
    let disk = luks_disk(&scratch, "right horse battery");
    let before = std::fs::read(&disk).unwrap();
    let pass = scratch.path("run.pass");
    std::fs::write(&pass, "right horse battery").unwrap();
    let out = std::process::Command::new(SECUREVM)
        .args(["run", "--kernel", &kernel, "--disk"])
        .arg(&disk)
        .arg("--passphrase-file")
        .arg(&pass)
        .env("SECUREVM_LUKS_HELPER", "/nonexistent/securevm-luks")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&out, "LUKS helper");
    assert_eq!(std::fs::read(&disk).unwrap(), before, "image unchanged");
}

#[test]
fn policy_dir_needs_a_policy() {
    let scratch = Scratch::new("policy-dir-alone");
    let out = securevm(&[
        "run",
        "--kernel",
        "k",
        "--policy-dir",
        scratch.0.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--policy <FILE>"), "{}", stderr(&out));
}

#[test]
fn policy_dir_must_be_an_existing_directory() {
    let scratch = Scratch::new("policy-dir-missing");
    let file = scratch.path("a-file");
    std::fs::write(&file, "").unwrap();
    for (dir, says) in [
        ("/nonexistent/policies", "No such file or directory"),
        (file.to_str().unwrap(), "is not a directory"),
    ] {
        let out = securevm(&[
            "run",
            "--kernel",
            "k",
            "--policy",
            "p.toml",
            "--policy-key",
            "k.pub",
            "--user",
            "alice",
            "--policy-dir",
            dir,
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        assert!(
            err.contains("--policy-dir") && err.contains(dir) && err.contains(says),
            "{err}"
        );
    }
}

/// Without a state file the version a drop pushed is forgotten at the next
/// start, and whoever writes DIR could push back any older signed policy
/// still above `--policy`'s version: the rollback protection needs it.
#[test]
fn policy_dir_needs_a_policy_state() {
    let scratch = Scratch::new("policy-dir-no-state");
    let out = securevm(&[
        "run",
        "--kernel",
        "k",
        "--policy",
        "p.toml",
        "--policy-key",
        "k.pub",
        "--user",
        "alice",
        "--policy-dir",
        scratch.0.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("--policy-state <FILE>"), "{err}");
}
