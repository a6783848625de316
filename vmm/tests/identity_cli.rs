//! Bad credentials and bad audit inputs fed to the `securevm` binary:
//! login refusals must not say which of user id or passphrase was wrong,
//! must exit with the login status (5) before any guest output, and must
//! be in the audit log; bad audit keys and tampered logs are refused.

mod common;

use common::*;

const EXIT_LOGIN_REFUSED: i32 = 5;

struct Setup {
    scratch: Scratch,
    kernel: String,
    policy: String,
    key: String,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let scratch = Scratch::new(name);
        let kernel = tiny_kernel("hello", &scratch).to_str().unwrap().to_owned();
        let (policy, key) = signed_example_policy(&scratch);
        Setup {
            kernel,
            policy: policy.to_str().unwrap().to_owned(),
            key: key.to_str().unwrap().to_owned(),
            scratch,
        }
    }

    /// `securevm run` of the tiny guest under the policy with `extra`.
    fn run(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "run",
            "--kernel",
            &self.kernel,
            "--policy",
            &self.policy,
            "--policy-key",
            &self.key,
        ];
        args.extend(extra);
        securevm(&args)
    }

    /// Logs in as `user` with `passphrase` from a file, auditing into the scratch log.
    fn login(&self, user: &str, passphrase: &str) -> std::process::Output {
        let pass = write_file(&self.scratch, "login.pass", passphrase);
        let audit = audit_args(&self.scratch);
        let mut extra = vec!["--user", user, "--passphrase-file", &pass];
        extra.extend(audit.iter().map(String::as_str));
        self.run(&extra)
    }

    fn audit_log(&self) -> String {
        std::fs::read_to_string(self.scratch.path("audit.jsonl")).unwrap_or_default()
    }

    fn verify(&self, log: &str) -> std::process::Output {
        let path = write_file(&self.scratch, "copy.jsonl", log);
        let key = self.scratch.path("audit.key");
        securevm(&[
            "audit",
            "verify",
            &path,
            "--audit-key",
            key.to_str().unwrap(),
        ])
    }
}

fn assert_login_refused(out: &std::process::Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(EXIT_LOGIN_REFUSED), "stderr: {err}");
    assert!(
        stdout(out).is_empty(),
        "no guest output expected: {}",
        stdout(out)
    );
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.contains(
            "login refused after 1 failed attempt(s): the user id or the credential is wrong"
        ),
        "{err}"
    );
    last
}

#[test]
fn wrong_passphrase_and_unknown_user_get_the_same_answer() {
    let setup = Setup::new("wrong-credentials");
    let wrong = assert_login_refused(&setup.login("alice", "not alice's passphrase"));
    let unknown = assert_login_refused(&setup.login("mallory", ALICE_PASSPHRASE));
    // Someone else's right passphrase under a real user id is refused alike.
    let swapped = assert_login_refused(&setup.login("bob", ALICE_PASSPHRASE));
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, swapped);
    let log = setup.audit_log();
    assert_eq!(log.matches(r#""event":"auth-failure""#).count(), 3, "{log}");
    assert_eq!(log.matches(r#""event":"auth-lockout""#).count(), 3, "{log}");
    assert!(
        !log.contains(ALICE_PASSPHRASE) && !log.contains("not alice's"),
        "{log}"
    );
    assert!(!log.contains("vm-start"), "{log}");
    let out = setup.verify(&log);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("records verify"), "{}", stdout(&out));
}

#[test]
fn a_policy_with_users_needs_user() {
    let setup = Setup::new("no-user");
    let out = setup.run(&[]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--user"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_policy_audit_log_needs_the_audit_key() {
    let setup = Setup::new("no-audit-key");
    let pass = write_file(&setup.scratch, "alice.pass", ALICE_PASSPHRASE);
    let out = setup.run(&["--user", "alice", "--passphrase-file", &pass]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--audit-key"), "{}", stderr(&out));
}

#[test]
fn audit_keys_readable_by_others_or_of_the_wrong_size_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new("bad-audit-key");
    let key = setup.scratch.path("audit.key");
    let log = setup.scratch.path("audit.jsonl");
    let out = securevm(&["audit", "init-key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = securevm(&["audit", "init-key", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("never overwrites"),
        "{}",
        stderr(&again)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pass = write_file(&setup.scratch, "alice.pass", ALICE_PASSPHRASE);
    let args = |key: &str| {
        setup.run(&[
            "--user",
            "alice",
            "--passphrase-file",
            &pass,
            "--audit-log",
            log.to_str().unwrap(),
            "--audit-key",
            key,
        ])
    };
    let out = args(key.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("readable by group or others"),
        "{}",
        stderr(&out)
    );
    let short = setup.scratch.path("short.key");
    std::fs::write(&short, b"0123456789abcdef").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = args(short.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("16 bytes, not 32"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn the_policy_sink_syslog_is_refused_not_dropped() {
    let setup = Setup::new("syslog-sink");
    let policy = std::fs::read_to_string(&setup.policy).unwrap().replace(
        "sink = \"file\"\npath = \"/var/log/securevm/audit.jsonl\"",
        "sink = \"syslog\"",
    );
    let (policy_path, key_path) = resign(&setup.scratch, &policy);
    let pass = write_file(&setup.scratch, "alice.pass", ALICE_PASSPHRASE);
    let key = setup.scratch.path("audit.key");
    securevm(&["audit", "init-key", key.to_str().unwrap()]);
    let out = securevm(&[
        "run",
        "--kernel",
        &setup.kernel,
        "--policy",
        &policy_path,
        "--policy-key",
        &key_path,
        "--user",
        "alice",
        "--passphrase-file",
        &pass,
        "--audit-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("syslog, which securevm does not support yet; pass --audit-log"),
        "{}",
        stderr(&out)
    );
}

/// Signs `text` with a fresh key; returns the policy and key paths.
fn resign(scratch: &Scratch, text: &str) -> (String, String) {
    use guest_policy::{
        signature_path_for, trusted_comment_for, validate, SecretKey, SignatureFile,
    };
    let key = SecretKey::generate().unwrap();
    let policy_path = scratch.path("resigned.toml");
    let pub_path = scratch.path("resigned.pub");
    std::fs::write(&policy_path, text).unwrap();
    std::fs::write(&pub_path, key.public_key().to_text()).unwrap();
    let policy = validate("policy.toml", text).unwrap().policy;
    let comment = trusted_comment_for(&policy, "policy.toml", std::time::SystemTime::now());
    let signature = SignatureFile::sign(&key, text.as_bytes(), &comment).unwrap();
    std::fs::write(signature_path_for(&policy_path), signature.to_text()).unwrap();
    (
        policy_path.to_str().unwrap().to_owned(),
        pub_path.to_str().unwrap().to_owned(),
    )
}

#[test]
fn audit_verify_names_each_kind_of_tampering() {
    let setup = Setup::new("tampered");
    for user in ["alice", "mallory", "bob"] {
        setup.login(user, "wrong");
    }
    let log = setup.audit_log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 8, "{log}");
    let out = setup.verify(&log);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("audit: all {} records verify", lines.len())
    );
    let rebuild = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let mut edited = lines.clone();
    let changed = lines[2].replace("\"attempt\":1", "\"attempt\":2");
    assert_ne!(changed, lines[2]);
    edited[2] = &changed;
    let mut removed = lines.clone();
    removed.remove(3);
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    let cut = &log[..log.len() - 25];
    for (what, copy, expected) in [
        ("edited", rebuild(&edited), "line 3 (seq 3): record altered"),
        (
            "removed",
            rebuild(&removed),
            "line 4 (seq 5): record(s) removed",
        ),
        (
            "swapped",
            rebuild(&swapped),
            "line 4 (seq 5): records reordered",
        ),
        ("truncated", cut.to_owned(), "the log is truncated"),
    ] {
        let out = setup.verify(&copy);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(stdout(&out).contains(expected), "{what}: {}", stdout(&out));
    }
    let other_key = setup.scratch.path("other.key");
    securevm(&["audit", "init-key", other_key.to_str().unwrap()]);
    let path = write_file(&setup.scratch, "copy.jsonl", &log);
    let out = securevm(&[
        "audit",
        "verify",
        &path,
        "--audit-key",
        other_key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("line 1 (seq 1): record altered"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_login_is_audited_through_to_the_vm_stop() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let setup = Setup::new("session");
    let out = setup.login("alice", ALICE_PASSPHRASE);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let log = setup.audit_log();
    for event in [
        "log-opened",
        "policy-accepted",
        "auth-success",
        "role-selected",
        "vm-start",
        "vm-stop",
    ] {
        assert!(
            log.contains(&format!("\"event\":\"{event}\"")),
            "{event}: {log}"
        );
    }
    assert!(log.contains(r#""role":"staff""#), "{log}");
    assert!(
        log.lines().last().unwrap().contains(r#""user":"alice""#),
        "{log}"
    );
    let out = setup.verify(&log);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// A prompt phrase file holding `content`, mode 0600.
fn private_phrase_file(scratch: &Scratch, content: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch.path("prompt-phrase");
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn a_prompt_phrase_file_others_can_read_stops_securevm_before_any_prompt() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new("phrase-open");
    let audit = audit_args(&setup.scratch);
    let phrase = private_phrase_file(&setup.scratch, "violet harbour lamp\n");
    std::fs::set_permissions(&phrase, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut args = vec![
        "run",
        "--kernel",
        &setup.kernel,
        "--policy",
        &setup.policy,
        "--policy-key",
        &setup.key,
        "--user",
        "alice",
        "--prompt-phrase",
        phrase.to_str().unwrap(),
    ];
    args.extend(audit.iter().map(String::as_str));
    let (output, code, prompts, _) = run_on_terminal(&args, &[]);
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(prompts, 0, "{output}");
    assert!(output.contains("mode 0644"), "{output}");
    assert!(
        output.contains(&format!("chmod 600 {}", phrase.display())),
        "{output}"
    );
    assert!(
        !output.contains("violet harbour lamp"),
        "the refused phrase was shown: {output}"
    );
}

/// A logged-in session with `--on-reboot restart` builds each new VM
/// under the main thread's restart filter: the policy key is read again
/// and every boot is audited.
#[test]
fn a_logged_in_session_restarts_under_seccomp_and_audits_each_boot() {
    if !kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable on this host");
        return;
    }
    let setup = Setup::new("restart-session");
    let kernel = tiny_kernel("reset", &setup.scratch);
    let pass = write_file(&setup.scratch, "login.pass", ALICE_PASSPHRASE);
    let out = std::process::Command::new("timeout")
        .arg("5")
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
        .args(["--policy", &setup.policy, "--policy-key", &setup.key])
        .args(["--user", "alice", "--passphrase-file", &pass])
        .args(audit_args(&setup.scratch))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "stderr: {}", stderr(&out));
    let log = setup.audit_log();
    let boots = log.matches(r#""event":"vm-start""#).count();
    assert!(boots >= 2, "{boots} boot(s): {log}\n{}", stderr(&out));
}

/// Runs `securevm` with a pseudo-terminal as its controlling terminal,
/// answering each passphrase prompt with the next of `answers`; returns
/// what it printed, its exit status, the prompts seen and the time taken.
fn run_on_terminal(
    args: &[&str],
    answers: &[&str],
) -> (String, Option<i32>, usize, std::time::Duration) {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::process::CommandExt;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the locals; the name,
    // termios and window-size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just created and are owned here.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut command = std::process::Command::new(SECUREVM);
    command
        .args(args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe; they make the pty
    // (the child's stdin) its controlling terminal, which /dev/tty opens.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = std::time::Instant::now();
    let mut child = command.spawn().unwrap();
    // Only the child may hold the terminal open, or reading never ends.
    drop(command);
    drop(slave);
    let mut output = String::new();
    let mut prompts = 0;
    let mut buffer = [0u8; 1024];
    // Reading the master fails with EIO once the child has closed the pty.
    while let Ok(n) = master.read(&mut buffer) {
        if n == 0 {
            break;
        }
        output.push_str(&String::from_utf8_lossy(&buffer[..n]));
        while output.matches("Passphrase for").count() > prompts {
            // Give the prompt time to switch echo off before answering.
            std::thread::sleep(std::time::Duration::from_millis(300));
            if let Some(answer) = answers.get(prompts) {
                master.write_all(format!("{answer}\n").as_bytes()).unwrap();
            }
            prompts += 1;
        }
    }
    let status = child.wait().unwrap();
    (output, status.code(), prompts, start.elapsed())
}

#[test]
fn three_tries_at_the_terminal_with_growing_waits_then_refusal() {
    let setup = Setup::new("terminal");
    let audit = audit_args(&setup.scratch);
    let mut args = vec![
        "run",
        "--kernel",
        &setup.kernel,
        "--policy",
        &setup.policy,
        "--policy-key",
        &setup.key,
        "--user",
        "alice",
    ];
    args.extend(audit.iter().map(String::as_str));
    let phrase = private_phrase_file(&setup.scratch, "violet harbour lamp\n");
    args.extend(["--prompt-phrase", phrase.to_str().unwrap()]);
    let (output, code, prompts, elapsed) =
        run_on_terminal(&args, &["wrong one", "wrong two", "wrong three"]);
    assert_eq!(code, Some(EXIT_LOGIN_REFUSED), "{output}");
    assert_eq!(prompts, 3, "{output}");
    assert_eq!(
        output
            .matches("[securevm: violet harbour lamp] Passphrase for alice: ")
            .count(),
        3,
        "every prompt shows the prompt phrase: {output}"
    );
    assert!(
        output.contains("login refused after 3 failed attempt(s)"),
        "{output}"
    );
    assert!(
        !output.contains("wrong two"),
        "the passphrase was echoed: {output}"
    );
    // Waits of 1 s, 2 s and 4 s after the three failures.
    assert!(elapsed >= std::time::Duration::from_secs(7), "{elapsed:?}");
    let log = setup.audit_log();
    assert_eq!(log.matches(r#""event":"auth-failure""#).count(), 3, "{log}");
}
