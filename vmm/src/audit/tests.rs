//! The audit log end to end on files: chaining across sessions, crash
//! recovery, and each kind of tampering `audit verify` must catch.

use std::path::PathBuf;

use super::key::AuditKey;
use super::record::{encode, Event, GENESIS_MAC};
use super::verify::{report, report_collected, verify_log, Problem, Verdict};
use super::writer::{AuditError, AuditLog};

const KEY: [u8; 32] = [0x5a; 32];

fn key() -> AuditKey {
    AuditKey::from_bytes(KEY)
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("securevm-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn log(&self) -> PathBuf {
        self.0.join("audit.jsonl")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn failure(attempt: u32) -> Event {
    Event::AuthFailure {
        method: "passphrase".into(),
        claimed_user: "alice".into(),
        attempt,
        reason: None,
    }
}

/// A log of six records written by `AuditLog` (log-opened + five).
fn six_records(scratch: &Scratch) -> Vec<u8> {
    let log = AuditLog::open(&scratch.log(), key()).unwrap();
    for attempt in 1..=3 {
        log.record(failure(attempt)).unwrap();
    }
    log.set_user(Some("alice"));
    log.record(Event::AuthSuccess {
        method: "passphrase".into(),
        attempt: 4,
    })
    .unwrap();
    log.record(Event::VmStop {
        reason: "powered off".into(),
    })
    .unwrap();
    drop(log);
    std::fs::read(scratch.log()).unwrap()
}

fn lines(content: &[u8]) -> Vec<String> {
    String::from_utf8(content.to_vec())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut text = lines.join("\n");
    text.push('\n');
    text.into_bytes()
}

fn problem(content: &[u8]) -> Problem {
    match verify_log(content, &key()) {
        Verdict::Broken(problem) => problem,
        other => panic!("expected a problem, got {other:?}"),
    }
}

#[test]
fn an_untouched_log_verifies_and_names_the_user() {
    let scratch = Scratch::new("intact");
    let content = six_records(&scratch);
    let (text, ok) = report(&content, &key());
    assert!(ok, "{text}");
    assert_eq!(text, "audit: all 6 records verify");
    let all = lines(&content);
    assert!(all[0].contains(r#""user":null"#), "{}", all[0]);
    assert!(all[4].contains(r#""user":"alice""#), "{}", all[4]);
    assert!(all[1].contains(r#""event":"auth-failure""#), "{}", all[1]);
}

#[test]
fn a_second_session_continues_the_chain() {
    let scratch = Scratch::new("continue");
    six_records(&scratch);
    let log = AuditLog::open(&scratch.log(), key()).unwrap();
    log.record(failure(1)).unwrap();
    drop(log);
    let content = std::fs::read(scratch.log()).unwrap();
    assert_eq!(
        report(&content, &key()),
        ("audit: all 8 records verify".into(), true)
    );
    assert!(lines(&content)[7].contains(r#""seq":8"#));
}

#[test]
fn an_edited_field_is_detected() {
    let scratch = Scratch::new("edit");
    let mut all = lines(&six_records(&scratch));
    all[2] = all[2].replace(r#""claimed_user":"alice""#, r#""claimed_user":"mallory""#);
    assert_eq!(problem(&join(&all)), Problem::Altered { line: 3, seq: 3 });
    let (text, ok) = report(&join(&all), &key());
    assert!(!ok);
    assert!(text.contains("line 3 (seq 3): record altered"), "{text}");
}

#[test]
fn a_deleted_middle_record_is_detected() {
    let scratch = Scratch::new("delete");
    let mut all = lines(&six_records(&scratch));
    all.remove(2);
    assert_eq!(
        problem(&join(&all)),
        Problem::Removed {
            line: 3,
            seq: 4,
            expected: 3
        }
    );
}

#[test]
fn swapped_records_are_detected() {
    let scratch = Scratch::new("swap");
    let mut all = lines(&six_records(&scratch));
    all.swap(2, 3);
    assert_eq!(
        problem(&join(&all)),
        Problem::Reordered {
            line: 3,
            seq: 4,
            expected: 3
        }
    );
    let (text, _) = report(&join(&all), &key());
    assert!(text.contains("reordered"), "{text}");
}

#[test]
fn a_record_cut_in_the_middle_of_the_log_is_detected() {
    let scratch = Scratch::new("cut-middle");
    let mut all = lines(&six_records(&scratch));
    let half = all[2].len() / 2;
    all[2].truncate(half);
    assert_eq!(problem(&join(&all)), Problem::NotARecord { line: 3 });
}

#[test]
fn a_truncated_file_is_reported_by_verify() {
    let scratch = Scratch::new("cut-end");
    let content = six_records(&scratch);
    let cut = &content[..content.len() - 20];
    let (text, ok) = report(cut, &key());
    assert!(!ok);
    assert!(
        text.contains("line 6: the log is truncated: the last record (after seq 5)"),
        "{text}"
    );
}

#[test]
fn the_wrong_key_fails_at_the_first_record() {
    let scratch = Scratch::new("wrong-key");
    let content = six_records(&scratch);
    let other = AuditKey::from_bytes([1; 32]);
    let (text, ok) = report(&content, &other);
    assert!(!ok);
    assert!(text.contains("line 1 (seq 1): record altered"), "{text}");
}

#[test]
fn a_chain_rebuilt_without_the_key_fails() {
    let scratch = Scratch::new("forged");
    let content = six_records(&scratch);
    // The forger drops record 3 and re-chains everything after it with a
    // key of their own: every MAC is well-formed, none verifies.
    let forger = AuditKey::from_bytes([0x77; 32]);
    let mut prev = GENESIS_MAC;
    let mut forged = Vec::new();
    for (seq, event) in [
        Event::LogOpened {
            recovered_torn_line: None,
            torn_sha256: None,
        },
        failure(1),
        failure(3),
    ]
    .iter()
    .enumerate()
    {
        let (line, mac) = encode(
            &forger,
            seq as u64 + 1,
            std::time::SystemTime::now(),
            None,
            event,
            &prev,
        )
        .unwrap();
        forged.push(line);
        prev = mac;
    }
    assert_eq!(
        problem(&join(&forged)),
        Problem::Altered { line: 1, seq: 1 }
    );
    // Keeping the genuine first records and forging only the tail fails
    // at the first forged one.
    let mut mixed = lines(&content)[..2].to_vec();
    mixed.push(forged[2].clone());
    assert!(matches!(
        problem(&join(&mixed)),
        Problem::Altered { line: 3, .. }
    ));
}

#[test]
fn a_crash_mid_write_is_recovered_and_stays_visible() {
    let scratch = Scratch::new("torn");
    let content = six_records(&scratch);
    let torn = &content[..content.len() - 30];
    std::fs::write(scratch.log(), torn).unwrap();
    let log = AuditLog::open(&scratch.log(), key()).unwrap();
    log.record(failure(1)).unwrap();
    drop(log);
    let recovered = std::fs::read(scratch.log()).unwrap();
    let (text, ok) = report(&recovered, &key());
    assert!(ok, "{text}");
    assert!(
        text.contains("line 6 was cut by a crash; record seq 6 acknowledges it"),
        "{text}"
    );
    assert!(text.ends_with("audit: all 7 records verify"), "{text}");
    // Changing the cut line afterwards breaks the acknowledgement.
    let mut all = lines(&recovered);
    all[5].push('x');
    assert_eq!(problem(&join(&all)), Problem::NotARecord { line: 6 });
}

#[test]
fn a_tampered_log_is_not_appended_to() {
    let scratch = Scratch::new("refuse");
    let mut all = lines(&six_records(&scratch));
    all.remove(1);
    std::fs::write(scratch.log(), join(&all)).unwrap();
    let err = AuditLog::open(&scratch.log(), key()).unwrap_err();
    assert!(matches!(err, AuditError::Tampered { .. }), "{err}");
    assert_eq!(std::fs::read(scratch.log()).unwrap(), join(&all));
}

#[test]
fn a_log_in_use_is_refused() {
    let scratch = Scratch::new("locked");
    let _first = AuditLog::open(&scratch.log(), key()).unwrap();
    let err = AuditLog::open(&scratch.log(), key()).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
}

#[test]
fn records_from_several_threads_form_one_chain() {
    let scratch = Scratch::new("threads");
    let log = std::sync::Arc::new(AuditLog::open(&scratch.log(), key()).unwrap());
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for attempt in 0..10 {
                    log.record(failure(attempt)).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let content = std::fs::read(scratch.log()).unwrap();
    assert_eq!(
        report(&content, &key()),
        ("audit: all 41 records verify".into(), true)
    );
}

#[test]
fn a_record_whose_newline_was_cut_is_continued_on_a_new_line() {
    let scratch = Scratch::new("no-newline");
    let content = six_records(&scratch);
    std::fs::write(scratch.log(), &content[..content.len() - 1]).unwrap();
    let log = AuditLog::open(&scratch.log(), key()).unwrap();
    log.record(failure(1)).unwrap();
    drop(log);
    let content = std::fs::read(scratch.log()).unwrap();
    assert_eq!(
        report(&content, &key()),
        ("audit: all 8 records verify".into(), true)
    );
}

/// The lines of a log, each with its newline.
fn lines_of(content: &[u8]) -> Vec<Vec<u8>> {
    content
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn a_collected_copy_with_exact_repeats_verifies() {
    let scratch = Scratch::new("collected-repeats");
    let lines = lines_of(&six_records(&scratch));
    // Records 2 to 4 sent again after a reconnect.
    let copy: Vec<u8> = [&lines[..4], &lines[1..]].concat().concat();
    let (text, whole) = report_collected(&copy, &key());
    assert!(whole, "{text}");
    assert_eq!(
        text,
        "audit: all 6 records verify (3 exact repeats), up to seq 6, no gap"
    );
    // The machine's own check refuses the repeats: they are for copies only.
    assert!(!report(&copy, &key()).1);
}

#[test]
fn a_collected_copy_reports_every_gap_and_every_change() {
    let scratch = Scratch::new("collected-gaps");
    let lines = lines_of(&six_records(&scratch));
    let copy: Vec<u8> = [&lines[1..2], &lines[3..4], &lines[5..]].concat().concat();
    let (text, whole) = report_collected(&copy, &key());
    assert!(!whole);
    assert_eq!(
        text,
        "audit: line 1 (seq 2): gap: seq 1 to 1 are missing\n\
         audit: line 2 (seq 4): gap: seq 3 to 3 are missing\n\
         audit: line 3 (seq 6): gap: seq 5 to 5 are missing\n\
         audit: 3 problem(s) in 3 records (0 exact repeats), up to seq 6"
    );
    let edited = String::from_utf8(lines[2].clone())
        .unwrap()
        .replace("\"attempt\":2", "\"attempt\":9");
    let copy: Vec<u8> = [
        lines[..3].concat(),
        edited.into_bytes(),
        lines[3..].concat(),
    ]
    .concat();
    let (text, whole) = report_collected(&copy, &key());
    assert!(!whole);
    assert!(
        text.starts_with("audit: line 4 (seq 3): record altered"),
        "{text}"
    );
    let copy: Vec<u8> = [lines.concat(), b"not a record\n".to_vec()].concat();
    let (text, whole) = report_collected(&copy, &key());
    assert!(!whole);
    assert!(
        text.starts_with("audit: line 7: not an audit record"),
        "{text}"
    );
}

mod policy_forwarding {
    use super::*;
    use crate::audit::{Audit, AuditConfig, AuditSetupError, RemoteSetupError};
    use guest_policy::{AuditForward, AuditSink, RemoteCollector};
    use std::os::unix::net::UnixDatagram;

    fn config(scratch: &Scratch) -> AuditConfig {
        let key_path = scratch.0.join("audit.key");
        AuditKey::create(&key_path).unwrap();
        AuditConfig {
            key: Some(key_path),
            syslog_socket: Some(scratch.0.join("log.sock")),
            ..AuditConfig::default()
        }
    }

    #[test]
    fn the_policy_s_syslog_forwarding_applies_to_the_log_given_on_the_command_line() {
        let scratch = Scratch::new("policy-syslog");
        let config = config(&scratch);
        let daemon = UnixDatagram::bind(scratch.0.join("log.sock")).unwrap();
        daemon
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let policy = guest_policy::Audit {
            sink: AuditSink::File("/var/log/securevm/audit.jsonl".into()),
            forward: vec![AuditForward::Syslog],
        };
        let audit = Audit::open(&scratch.log(), config.key.as_deref()).unwrap();
        let audit = audit.open_policy_sink(&policy, &config, false).unwrap();
        audit.finish_forwarding();
        let mut message = vec![0u8; 4096];
        let len = daemon.recv(&mut message).unwrap();
        let first = lines(&std::fs::read(scratch.log()).unwrap())[0].clone();
        assert!(message[..len].ends_with(first.as_bytes()));
    }

    #[test]
    fn an_unusable_collector_or_an_old_syslog_sink_is_refused_at_start() {
        let scratch = Scratch::new("policy-remote");
        let config = config(&scratch);
        let policy = guest_policy::Audit {
            sink: AuditSink::File(scratch.log()),
            forward: vec![AuditForward::Remote(RemoteCollector {
                host: "127.0.0.1".into(),
                port: 6514,
                ca_file: scratch.0.join("missing-ca.pem"),
                server_name: "collector.test".into(),
            })],
        };
        let error = Audit::disabled()
            .open_policy_sink(&policy, &config, false)
            .unwrap_err();
        assert!(
            matches!(error, AuditSetupError::Remote(RemoteSetupError::Ca { .. })),
            "{error}"
        );
        // A format 1-3 `sink = "syslog"` means what it did: refused
        // without --audit-log, never silently forwarded.
        let old = guest_policy::Audit {
            sink: AuditSink::Syslog,
            forward: vec![],
        };
        let error = Audit::disabled()
            .open_policy_sink(&old, &config, false)
            .unwrap_err();
        assert!(error.to_string().contains("--audit-log"), "{error}");
    }
}
