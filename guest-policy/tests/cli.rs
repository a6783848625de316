//! Drives the built `guest-policy` binary: every subcommand, exit codes, and
//! interoperability with Debian's `minisign` in both directions.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use guest_policy::format::NEWEST_READABLE_FORMAT;
use tempfile::TempDir;

const EXAMPLE: &str = include_str!("../examples/policy.toml");

fn guest_policy(directory: &Path, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guest-policy"))
        .current_dir(directory)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("run guest-policy")
}

fn with_stdin(directory: &Path, arguments: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_guest-policy"))
        .current_dir(directory)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run guest-policy");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn workspace() -> TempDir {
    let directory = tempfile::tempdir().unwrap();
    fs::write(directory.path().join("policy.toml"), EXAMPLE).unwrap();
    directory
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn keygen_writes_a_private_key_file_and_never_prints_it() {
    let directory = workspace();
    let output = guest_policy(directory.path(), &["keygen", "--out", "org"]);
    assert_exit(&output, 0);
    let secret = fs::read_to_string(directory.path().join("org.key")).unwrap();
    let mode = fs::metadata(directory.path().join("org.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret_line = secret.lines().nth(1).unwrap();
    assert!(!text(&output.stdout).contains(secret_line));
    assert!(!text(&output.stderr).contains(secret_line));
    assert!(fs::read_to_string(directory.path().join("org.pub"))
        .unwrap()
        .starts_with("untrusted comment: minisign public key "));

    let again = guest_policy(directory.path(), &["keygen", "--out", "org"]);
    assert_exit(&again, 1);
    assert!(text(&again.stderr).contains("org.key already exists; pass --force to replace it"));
    assert_eq!(
        fs::read_to_string(directory.path().join("org.key")).unwrap(),
        secret
    );

    assert_exit(
        &guest_policy(directory.path(), &["keygen", "--out", "org", "--force"]),
        0,
    );
    assert_ne!(
        fs::read_to_string(directory.path().join("org.key")).unwrap(),
        secret
    );
}

#[test]
fn sign_verify_and_state_through_the_cli() {
    let directory = workspace();
    let dir = directory.path();
    assert_exit(&guest_policy(dir, &["keygen", "--out", "org"]), 0);
    let signed = guest_policy(dir, &["sign", "--key", "org.key", "policy.toml"]);
    assert_exit(&signed, 0);
    let signature = fs::read_to_string(dir.join("policy.toml.minisig")).unwrap();
    assert!(signature.contains("\ntrusted comment: securevm-policy version=7 timestamp="));
    assert!(signature.contains(" file=policy.toml\n"));

    let verified = guest_policy(dir, &["verify", "--pubkey", "org.pub", "policy.toml"]);
    assert_exit(&verified, 0);
    assert!(text(&verified.stdout).contains("good signature from key"));

    let no_state = guest_policy(
        dir,
        &[
            "verify",
            "--pubkey",
            "org.pub",
            "--state",
            "state",
            "policy.toml",
        ],
    );
    assert_exit(&no_state, 1);
    assert!(text(&no_state.stderr).contains("state file state does not exist"));

    let first = guest_policy(
        dir,
        &[
            "verify",
            "--pubkey",
            "org.pub",
            "--state",
            "state",
            "--init-state",
            "policy.toml",
        ],
    );
    assert_exit(&first, 0);
    assert!(text(&first.stdout).contains("accepted version 7; recorded in state"));

    let replay = guest_policy(
        dir,
        &[
            "verify",
            "--pubkey",
            "org.pub",
            "--state",
            "state",
            "policy.toml",
        ],
    );
    assert_exit(&replay, 1);
    assert!(text(&replay.stderr).contains("policy version 7 is already installed"));

    let tampered = EXAMPLE.replacen("ports = [443]", "ports = [444]", 1);
    fs::write(dir.join("policy.toml"), tampered).unwrap();
    let refused = guest_policy(dir, &["verify", "--pubkey", "org.pub", "policy.toml"]);
    assert_exit(&refused, 1);
    assert!(text(&refused.stderr).contains("signature verification failed"));
}

#[test]
fn sign_refuses_an_invalid_policy() {
    let directory = workspace();
    let dir = directory.path();
    assert_exit(&guest_policy(dir, &["keygen", "--out", "org"]), 0);
    fs::write(
        dir.join("bad.toml"),
        EXAMPLE.replacen("ports = [53]", "ports = [70000]", 1),
    )
    .unwrap();
    let output = guest_policy(dir, &["sign", "--key", "org.key", "bad.toml"]);
    assert_exit(&output, 1);
    assert!(
        text(&output.stderr).contains(
            "bad.toml:118:10: port 70000 is out of range; ports are 1-65535 or a range like \"8000-8080\""
        ),
        "{}",
        text(&output.stderr)
    );
    assert!(!dir.join("bad.toml.minisig").exists());
}

#[test]
fn lint_accepts_the_example_and_reports_errors_and_warnings() {
    let directory = workspace();
    let dir = directory.path();
    let good = guest_policy(dir, &["lint", "policy.toml"]);
    assert_exit(&good, 0);
    assert_eq!(
        text(&good.stdout),
        "policy.toml: valid, version 7, 0 warning(s)\n"
    );

    fs::write(
        dir.join("typo.toml"),
        EXAMPLE.replacen("default = \"deny\"", "defualt = \"deny\"", 1),
    )
    .unwrap();
    let typo = guest_policy(dir, &["lint", "typo.toml"]);
    assert_exit(&typo, 1);
    assert!(
        text(&typo.stderr).contains(
            "unknown key `defualt`; valid keys here are `default`, `dns_resolvers`, `rules`, `vpn`"
        ),
        "{}",
        text(&typo.stderr)
    );

    let shadowing_rule = "\n[[roles.staff.network.rules]]\naction = \"deny\"\ndirection = \"out\"\nprotocol = \"udp\"\nremote = [\"192.0.2.53\"]\nports = [53]\n";
    let shadowed = EXAMPLE.replacen(
        "\n[roles.contractor]",
        &format!("{shadowing_rule}\n[roles.contractor]"),
        1,
    );
    fs::write(dir.join("shadowed.toml"), shadowed).unwrap();
    let warned = guest_policy(dir, &["lint", "shadowed.toml"]);
    assert_exit(&warned, 0);
    assert!(
        text(&warned.stderr).contains("warning: rule 5 of role \"staff\" can never match: rule 1"),
        "{}",
        text(&warned.stderr)
    );
}

#[test]
fn show_summarises_each_role() {
    let directory = workspace();
    let output = guest_policy(directory.path(), &["show", "policy.toml"]);
    assert_exit(&output, 0);
    let summary = text(&output.stdout);
    assert!(summary.contains("Role staff\n"));
    assert!(summary.contains("Member: alice (Alice Example), logs in with passphrase"));
    assert!(summary.contains("External media: attached read-only"));
    assert!(summary.contains("1. allow outgoing UDP with 192.0.2.53/32 on port 53 (DNS)"));
    assert!(summary.contains("VPN: WireGuard to 198.51.100.1:51820"));
}

#[test]
fn usage_errors_exit_with_2() {
    let directory = workspace();
    assert_exit(&guest_policy(directory.path(), &["sign", "policy.toml"]), 2);
    assert_exit(&guest_policy(directory.path(), &["frobnicate"]), 2);
}

#[test]
fn hash_passphrase_reads_stdin_and_prints_a_minimum_cost_argon2id_hash() {
    let directory = workspace();
    let output = with_stdin(
        directory.path(),
        &["hash-passphrase"],
        b"correct horse battery staple\n",
    );
    assert_exit(&output, 0);
    let phc = text(&output.stdout);
    let phc = phc.trim_end();
    assert!(phc.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"), "{phc}");
    assert_eq!(guest_policy::passphrase_hash::check_phc(phc), Ok(()));
    assert!(guest_policy::passphrase_hash::verify(
        b"correct horse battery staple",
        phc
    ));

    let empty = with_stdin(directory.path(), &["hash-passphrase"], b"\n");
    assert_exit(&empty, 1);
    assert!(text(&empty.stderr).contains("the passphrase is empty"));
}

/// True when Debian's `minisign` is installed; otherwise says why the test
/// is skipped.
fn minisign_available(test: &str) -> bool {
    let found = Command::new("minisign")
        .arg("-v")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        println!(
            "SKIPPED {test}: the minisign binary is not installed (apt-get install -y minisign)"
        );
    }
    found
}

fn minisign(directory: &Path, arguments: &[&str]) -> Output {
    Command::new("minisign")
        .current_dir(directory)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("run minisign")
}

#[test]
fn minisign_interop_our_signature_verifies_with_minisign() {
    if !minisign_available("minisign_interop_our_signature_verifies_with_minisign") {
        return;
    }
    let directory = workspace();
    let dir = directory.path();
    assert_exit(&guest_policy(dir, &["keygen", "--out", "org"]), 0);
    assert_exit(
        &guest_policy(dir, &["sign", "--key", "org.key", "policy.toml"]),
        0,
    );
    let verified = minisign(dir, &["-V", "-p", "org.pub", "-m", "policy.toml"]);
    assert_exit(&verified, 0);
    assert!(text(&verified.stdout).contains("Trusted comment: securevm-policy version=7 "));

    fs::write(
        dir.join("policy.toml"),
        EXAMPLE.replacen("version = 7", "version = 8", 1),
    )
    .unwrap();
    assert_exit(
        &minisign(dir, &["-V", "-p", "org.pub", "-m", "policy.toml"]),
        1,
    );
}

#[test]
fn minisign_interop_minisign_signature_verifies_with_ours() {
    if !minisign_available("minisign_interop_minisign_signature_verifies_with_ours") {
        return;
    }
    let directory = workspace();
    let dir = directory.path();
    assert_exit(
        &minisign(dir, &["-G", "-W", "-p", "m.pub", "-s", "m.key"]),
        0,
    );
    let signed = minisign(
        dir,
        &[
            "-S",
            "-s",
            "m.key",
            "-m",
            "policy.toml",
            "-t",
            "securevm-policy version=7 file=policy.toml",
        ],
    );
    assert_exit(&signed, 0);
    let verified = guest_policy(dir, &["verify", "--pubkey", "m.pub", "policy.toml"]);
    assert_exit(&verified, 0);
    assert!(text(&verified.stdout).contains("policy version 7"));

    let wrong_version = minisign(
        dir,
        &[
            "-S",
            "-s",
            "m.key",
            "-m",
            "policy.toml",
            "-t",
            "securevm-policy version=6",
        ],
    );
    assert_exit(&wrong_version, 0);
    let refused = guest_policy(dir, &["verify", "--pubkey", "m.pub", "policy.toml"]);
    assert_exit(&refused, 1);
    assert!(text(&refused.stderr)
        .contains("the signature was made for policy version 6, but the file says version = 7"));
}

#[test]
fn minisign_interop_keys_work_in_both_tools() {
    if !minisign_available("minisign_interop_keys_work_in_both_tools") {
        return;
    }
    let directory = workspace();
    let dir = directory.path();
    // minisign's unencrypted key, used by our signer.
    assert_exit(
        &minisign(dir, &["-G", "-W", "-p", "m.pub", "-s", "m.key"]),
        0,
    );
    assert_exit(
        &guest_policy(dir, &["sign", "--key", "m.key", "policy.toml"]),
        0,
    );
    assert_exit(
        &minisign(dir, &["-V", "-p", "m.pub", "-m", "policy.toml"]),
        0,
    );
    // Our key, used by minisign's signer.
    assert_exit(&guest_policy(dir, &["keygen", "--out", "org"]), 0);
    assert_exit(
        &minisign(
            dir,
            &[
                "-S",
                "-s",
                "org.key",
                "-m",
                "policy.toml",
                "-t",
                "securevm-policy version=7",
            ],
        ),
        0,
    );
    assert_exit(
        &guest_policy(dir, &["verify", "--pubkey", "org.pub", "policy.toml"]),
        0,
    );
}

#[test]
#[ignore = "scrypt at minisign's default cost (1 GiB) takes minutes in a debug build; run with --release -- --ignored"]
fn minisign_interop_encrypted_minisign_key() {
    if !minisign_available("minisign_interop_encrypted_minisign_key") {
        return;
    }
    let directory = workspace();
    let dir = directory.path();
    let mut generate = Command::new("minisign")
        .current_dir(dir)
        .args(["-G", "-p", "e.pub", "-s", "e.key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run minisign");
    generate
        .stdin
        .take()
        .unwrap()
        .write_all(b"pw\npw\n")
        .unwrap();
    assert_exit(&generate.wait_with_output().unwrap(), 0);

    let wrong = with_stdin(dir, &["sign", "--key", "e.key", "policy.toml"], b"nope\n");
    assert_exit(&wrong, 1);
    assert!(text(&wrong.stderr).contains("wrong passphrase, or the key file is damaged"));
    let signed = with_stdin(dir, &["sign", "--key", "e.key", "policy.toml"], b"pw\n");
    assert_exit(&signed, 0);
    assert_exit(
        &minisign(dir, &["-V", "-p", "e.pub", "-m", "policy.toml"]),
        0,
    );
}

#[test]
#[ignore = "scrypt at minisign's default cost (1 GiB) takes minutes in a debug build; run with --release -- --ignored"]
fn minisign_interop_encrypted_key_from_keygen() {
    if !minisign_available("minisign_interop_encrypted_key_from_keygen") {
        return;
    }
    let directory = workspace();
    let dir = directory.path();
    assert_exit(
        &with_stdin(dir, &["keygen", "--out", "org", "--encrypt"], b"pw\n"),
        0,
    );
    assert!(fs::read_to_string(dir.join("org.key"))
        .unwrap()
        .starts_with("untrusted comment: minisign encrypted secret key\n"));
    let mut sign = Command::new("minisign")
        .current_dir(dir)
        .args([
            "-S",
            "-s",
            "org.key",
            "-m",
            "policy.toml",
            "-t",
            "securevm-policy version=7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run minisign");
    sign.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    assert_exit(&sign.wait_with_output().unwrap(), 0);
    assert_exit(
        &guest_policy(dir, &["verify", "--pubkey", "org.pub", "policy.toml"]),
        0,
    );
    assert_exit(
        &with_stdin(dir, &["sign", "--key", "org.key", "policy.toml"], b"pw\n"),
        0,
    );
    assert_exit(
        &minisign(dir, &["-V", "-p", "org.pub", "-m", "policy.toml"]),
        0,
    );
}

#[test]
fn every_command_refuses_a_newer_format_with_the_update_message() {
    let directory = workspace();
    let dir = directory.path();
    assert_exit(&guest_policy(dir, &["keygen", "--out", "org"]), 0);
    let next = NEWEST_READABLE_FORMAT + 1;
    let newer = EXAMPLE.replacen("version = 7", &format!("version = 7\nformat = {next}"), 1);
    let with_new_key = newer.replacen(
        "[audit]",
        "[display]\nresolution = \"1920x1080\"\n\n[audit]",
        1,
    );
    fs::write(dir.join("newer.toml"), newer).unwrap();
    fs::write(dir.join("new-key.toml"), with_new_key).unwrap();
    let update = format!("18:10: this policy needs policy format {next}, but this securevm/guest-policy reads formats up to {NEWEST_READABLE_FORMAT}; update securevm (and guest-policy) on every machine to a release that reads format {next} before pushing this policy");
    for file in ["newer.toml", "new-key.toml"] {
        for command in [
            &["lint", file][..],
            &["lint", "--oldest-format", "1", file],
            &["show", file],
            &[
                "sign",
                "--key",
                "org.key",
                "--signature",
                "out.minisig",
                file,
            ],
        ] {
            let output = guest_policy(dir, command);
            assert_exit(&output, 1);
            assert!(
                text(&output.stderr).contains(&format!("{file}:{update}")),
                "{command:?}: {}",
                text(&output.stderr)
            );
        }
        assert!(!dir.join("out.minisig").exists());
    }
}

#[test]
fn verify_refuses_a_newer_format_signed_elsewhere() {
    let directory = workspace();
    let dir = directory.path();
    assert_exit(&guest_policy(dir, &["keygen", "--out", "org"]), 0);
    // Signed with the library, as a newer guest-policy would sign it.
    let next = NEWEST_READABLE_FORMAT + 1;
    let newer = EXAMPLE.replacen("version = 7", &format!("version = 7\nformat = {next}"), 1);
    let key_text = fs::read_to_string(dir.join("org.key")).unwrap();
    let key = guest_policy::SecretKey::from_text(&key_text, || None).unwrap();
    let signature =
        guest_policy::SignatureFile::sign(&key, newer.as_bytes(), "securevm-policy version=7")
            .unwrap();
    fs::write(dir.join("newer.toml"), &newer).unwrap();
    fs::write(dir.join("newer.toml.minisig"), signature.to_text()).unwrap();
    let output = guest_policy(dir, &["verify", "--pubkey", "org.pub", "newer.toml"]);
    assert_exit(&output, 1);
    assert!(
        text(&output.stderr).contains(&format!("newer.toml:18:10: this policy needs policy format {next}, but this securevm/guest-policy reads formats up to {NEWEST_READABLE_FORMAT}; update securevm (and guest-policy)")),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn lint_oldest_format_accepts_a_policy_the_fleet_reads() {
    let directory = workspace();
    let dir = directory.path();
    let explicit = EXAMPLE.replacen("version = 7", "version = 7\nformat = 1", 1);
    fs::write(dir.join("explicit.toml"), explicit).unwrap();
    for file in ["policy.toml", "explicit.toml"] {
        for oldest in ["1", "2"] {
            let output = guest_policy(dir, &["lint", "--oldest-format", oldest, file]);
            assert_exit(&output, 0);
            assert_eq!(text(&output.stderr), "", "{file} --oldest-format {oldest}");
            assert_eq!(
                text(&output.stdout),
                format!("{file}: valid, version 7, 0 warning(s)\n")
            );
        }
    }
    let zero = guest_policy(dir, &["lint", "--oldest-format", "0", "policy.toml"]);
    assert_exit(&zero, 2);
}

#[test]
fn a_policy_watching_removable_media_is_format_2_for_lint_and_show() {
    let directory = workspace();
    let dir = directory.path();
    let watching = EXAMPLE.replacen(
        "external_media = \"encrypt\"",
        "external_media = \"encrypt\"\nwatch_removable = true",
        1,
    );
    fs::write(dir.join("undeclared.toml"), &watching).unwrap();
    let refused = guest_policy(dir, &["lint", "undeclared.toml"]);
    assert_exit(&refused, 1);
    assert!(
        text(&refused.stderr).contains("undeclared.toml:1:1: [roles.NAME.storage] watch_removable needs policy format 2, but the policy declares format 1; write format = 2 in [policy]"),
        "{}",
        text(&refused.stderr)
    );

    let declared = watching.replacen("version = 7", "version = 7\nformat = 2", 1);
    fs::write(dir.join("watching.toml"), declared).unwrap();
    let fleet_on_1 = guest_policy(dir, &["lint", "--oldest-format", "1", "watching.toml"]);
    assert_exit(&fleet_on_1, 0);
    assert_eq!(
        text(&fleet_on_1.stderr),
        "watching.toml:18:10: warning: this policy needs policy format 2, but the oldest securevm in the fleet reads format 1; machines still on that release would refuse it: update securevm everywhere first, then push this policy\n"
    );
    let fleet_on_2 = guest_policy(dir, &["lint", "--oldest-format", "2", "watching.toml"]);
    assert_exit(&fleet_on_2, 0);
    assert_eq!(text(&fleet_on_2.stderr), "");

    let shown = guest_policy(dir, &["show", "watching.toml"]);
    assert_exit(&shown, 0);
    let summary = text(&shown.stdout);
    let watched =
        "    watched: USB and MMC sticks plugged into the machine are judged as they arrive\n";
    assert_eq!(summary.matches(watched).count(), 1, "{summary}");
    assert!(
        summary.contains(&format!(
            "  External media: attached, everything written is encrypted\n    only media with serial 4C530001230517105083, AA00000000001234\n{watched}"
        )),
        "{summary}"
    );
    let unwatched = guest_policy(dir, &["show", "policy.toml"]);
    assert!(!text(&unwatched.stdout).contains("watched:"));
}

#[test]
fn show_prints_the_clipboard_of_a_role_with_a_display_table() {
    let directory = workspace();
    let dir = directory.path();
    let policy = EXAMPLE
        .replacen("version = 7", "version = 7\nformat = 3", 1)
        .replacen(
            "\n[roles.staff.network]",
            "\n[roles.staff.display]\nclipboard = \"from-guest\"\n\n[roles.staff.network]",
            1,
        );
    fs::write(dir.join("desktop.toml"), policy).unwrap();
    let shown = guest_policy(dir, &["show", "desktop.toml"]);
    assert_exit(&shown, 0);
    let summary = text(&shown.stdout);
    let line = "  Clipboard: text from the guest may be pasted in the viewer\n";
    assert_eq!(summary.matches("Clipboard:").count(), 1, "{summary}");
    assert!(summary.contains(line), "{summary}");
    let plain = guest_policy(dir, &["show", "policy.toml"]);
    assert!(!text(&plain.stdout).contains("Clipboard:"));
}
