//! The control API against a real VM on the host's /dev/kvm: a tiny guest
//! that prints dots while it runs (tests/guests/spin.S) is paused, resumed
//! and shut down with `securevm ctl`, under the seccomp filters. The
//! guest ignores the power button, so shutdown ends in the forced stop.
//! The clean power-off of a Debian guest is the e2e scenario api-shutdown.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(SECUREVM)
        .arg("ctl")
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pause_resume_status_and_forced_shutdown_of_a_running_vm() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("api-spin");
    let kernel = tiny_kernel("spin", &scratch);
    let socket = scratch.path("api.sock");
    let console = scratch.path("console.out");
    let mut vmm = Vmm(Command::new(SECUREVM)
        .args(["run", "--memory", "64", "--kernel"])
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    let printed = || std::fs::metadata(&console).map_or(0, |m| m.len());
    wait_for("the socket", Duration::from_secs(20), || socket.exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    wait_for("the guest's dots", Duration::from_secs(20), || {
        printed() > 30
    });

    let status = ctl(&socket, &["status"]);
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("state: running"), "{text}");
    assert!(text.contains("policy version: (none)"), "{text}");

    let paused = ctl(&socket, &["pause"]);
    assert_eq!(String::from_utf8_lossy(&paused.stdout).trim(), "paused");
    let frozen = printed();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(printed(), frozen, "the guest ran while paused");
    let json = ctl(&socket, &["status", "--json"]);
    assert!(
        String::from_utf8_lossy(&json.stdout).contains("\"state\": \"paused\""),
        "{json:?}"
    );

    let resumed = ctl(&socket, &["resume"]);
    assert_eq!(String::from_utf8_lossy(&resumed.stdout).trim(), "running");
    wait_for("dots after resume", Duration::from_secs(10), || {
        printed() > frozen
    });

    // Without a policy external media are denied: the hot-plug thread
    // judges the medium under its seccomp filter and refuses it.
    let stick = scratch.path("stick.img");
    std::fs::write(&stick, vec![0u8; 4096]).unwrap();
    let refused = ctl(&socket, &["attach-external", stick.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the policy denies external media"),
        "{refused:?}"
    );
    let not_a_medium = ctl(&socket, &["attach-external", "/dev/null"]);
    assert!(
        String::from_utf8_lossy(&not_a_medium.stderr).contains("neither an image file"),
        "{not_a_medium:?}"
    );
    let unknown = ctl(&socket, &["detach-external", "stick.img"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no external medium 'stick.img'"),
        "{unknown:?}"
    );
    let counted = ctl(&socket, &["status", "--json"]);
    assert!(
        String::from_utf8_lossy(&counted.stdout).contains("\"denied\": 1"),
        "{counted:?}"
    );

    let shutdown = ctl(&socket, &["shutdown", "--timeout", "1"]);
    assert_eq!(shutdown.status.code(), Some(1), "{shutdown:?}");
    assert!(
        String::from_utf8_lossy(&shutdown.stderr)
            .contains("did not power off within 1 s; securevm stopped the VM"),
        "{shutdown:?}"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = vmm.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "securevm kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(vmm.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not power off"), "{stderr}");
    assert!(!socket.exists(), "the socket outlived securevm");
}

#[test]
fn a_file_in_the_sockets_place_is_refused_before_anything_starts() {
    let scratch = Scratch::new("api-file");
    let path = scratch.path("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    // Any existing file passes the kernel's open check, which comes first.
    let out = securevm(&[
        "run",
        "--kernel",
        env!("CARGO_BIN_EXE_securevm"),
        "--api-socket",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a socket; remove it or choose another path"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn ctl_without_a_server_says_what_to_check() {
    let out = Command::new(SECUREVM)
        .args(["ctl", "--api-socket", "/nonexistent/api.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.starts_with("securevm: error: cannot connect"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn an_error_after_binding_leaves_no_socket_behind() {
    let scratch = Scratch::new("api-error");
    let socket = scratch.path("vm.sock");
    let out = securevm(&[
        "run",
        "--kernel",
        "/nonexistent",
        "--api-socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("kernel"), "{}", stderr(&out));
    assert!(!socket.exists());
}
