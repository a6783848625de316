//! `securevm run` with a role that forces a WireGuard VPN: without the
//! machine's key, with a key file others can read, or with a file that
//! holds no key, securevm refuses to start (one line saying what to do)
//! before it touches KVM or the TAP. A key for a role without a VPN is
//! only a warning.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;

/// `wg genkey` output.
const KEY: &str = "wH8ZmucixAZfmOdsNaNth3ymtmTnI46DHE3cohF5+Ho=\n";

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

fn key_file(scratch: &Scratch, text: &str, mode: u32) -> PathBuf {
    let path = scratch.path("vpn.key");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `securevm run` logged in as `user` of the example policy (alice: role
/// staff, no VPN; bob: role contractor, whose VPN gives this machine the
/// tunnel address 198.51.100.200), with one NIC (a TAP name no test
/// creates) unless `net` is empty, and `extra` arguments.
fn run_as(scratch: &Scratch, user: &str, net: &str, extra: &[&str]) -> std::process::Output {
    let kernel = tiny_kernel("hello", scratch);
    let (policy, key) = signed_example_policy(scratch);
    let passphrase = if user == "bob" {
        BOB_PASSPHRASE
    } else {
        ALICE_PASSPHRASE
    };
    let pass = write_file(scratch, "user.pass", passphrase);
    let audit = audit_args(scratch);
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--policy-key",
        key.to_str().unwrap(),
        "--user",
        user,
        "--passphrase-file",
        &pass,
    ];
    if !net.is_empty() {
        args.extend(["--net", net]);
    }
    args.extend_from_slice(extra);
    args.extend(audit.iter().map(String::as_str));
    securevm(&args)
}

const VPN_NET: &str = "tap=svmvpncli0,ip=198.51.100.200";

#[test]
fn a_vpn_role_without_the_machine_key_is_refused() {
    let scratch = Scratch::new("vpn-no-key");
    let out = run_as(&scratch, "bob", VPN_NET, &[]);
    assert_one_line_error(&out, "--vpn-key");
    assert!(
        stderr(&out).contains("198.51.100.1:51820"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let scratch = Scratch::new("vpn-key-0644");
    let key = key_file(&scratch, KEY, 0o644);
    let out = run_as(
        &scratch,
        "bob",
        VPN_NET,
        &["--vpn-key", key.to_str().unwrap()],
    );
    assert_one_line_error(&out, "chmod 600");
}

#[test]
fn a_file_without_a_key_is_refused() {
    let scratch = Scratch::new("vpn-key-malformed");
    let key = key_file(&scratch, "this is not a wireguard key\n", 0o600);
    let out = run_as(
        &scratch,
        "bob",
        VPN_NET,
        &["--vpn-key", key.to_str().unwrap()],
    );
    assert_one_line_error(&out, "does not hold a WireGuard private key");
}

#[test]
fn a_guest_without_its_tunnel_address_is_refused() {
    let scratch = Scratch::new("vpn-no-address");
    let key = key_file(&scratch, KEY, 0o600);
    let out = run_as(
        &scratch,
        "bob",
        "tap=svmvpncli0,ip=192.0.2.10",
        &["--vpn-key", key.to_str().unwrap()],
    );
    assert_one_line_error(&out, "198.51.100.200/32");
}

#[test]
fn a_key_for_a_role_without_a_vpn_is_only_a_warning() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let scratch = Scratch::new("vpn-key-unused");
    let key = key_file(&scratch, KEY, 0o600);
    let out = run_as(&scratch, "alice", "", &["--vpn-key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("--vpn-key is ignored"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "securevm-tiny-guest: hello\n");
}
