//! The login loop with scripted and real (Argon2id) authenticators.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use guest_policy::{Policy, User};

use super::passphrase_login::{PassphraseAuthenticator, PassphraseInput, FILE_ATTEMPTS};
use super::*;
use crate::audit::{Audit, AuditKey};

const EXAMPLE: &str = include_str!("../../../guest-policy/examples/policy.toml");
const EXAMPLE_ALICE_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=1$A5OCxQAsircygJv5dXDVUA$ujqHB/OcTM3cjG0vVXTxYY5evQecWMs/jDY27IHDnWc";
const ALICE_PASSPHRASE: &[u8] = b"alice's long passphrase";

/// The example policy with alice's hash replaced by one of a known
/// passphrase (bob has a smart card only).
fn policy() -> Policy {
    let hash = guest_policy::passphrase_hash::hash(ALICE_PASSPHRASE).unwrap();
    let text = EXAMPLE.replace(EXAMPLE_ALICE_HASH, &hash);
    guest_policy::validate("policy.toml", &text).unwrap().policy
}

const NO_WAIT: RetryDelay = RetryDelay {
    first: Duration::ZERO,
    max: Duration::ZERO,
};

/// Answers from a script: `true` verifies, `false` rejects.
struct Scripted {
    answers: VecDeque<bool>,
    attempts: u32,
    seen_users: Vec<Option<String>>,
}

impl Scripted {
    fn new(answers: &[bool], attempts: u32) -> Scripted {
        Scripted {
            answers: answers.iter().copied().collect(),
            attempts,
            seen_users: Vec::new(),
        }
    }
}

impl Authenticator for Scripted {
    fn method(&self) -> AuthMethod {
        AuthMethod::Passphrase
    }

    fn max_attempts(&self) -> u32 {
        self.attempts
    }

    fn attempt(&mut self, _: &str, user: Option<&User>) -> Result<Attempt, LoginError> {
        self.seen_users.push(user.map(|u| u.id.clone()));
        Ok(match self.answers.pop_front() {
            Some(true) => Attempt::Verified(Credential::Passphrase(SecretBuf::from_slice(b"x"))),
            _ => Attempt::Rejected,
        })
    }
}

struct AuditScratch(PathBuf);

impl AuditScratch {
    fn new(name: &str) -> (AuditScratch, Audit) {
        let dir =
            std::env::temp_dir().join(format!("securevm-login-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("audit.key");
        AuditKey::create(&key).unwrap();
        let audit = Audit::open(&dir.join("audit.jsonl"), Some(&key)).unwrap();
        (AuditScratch(dir), audit)
    }

    fn records(&self) -> String {
        std::fs::read_to_string(self.0.join("audit.jsonl")).unwrap()
    }
}

impl Drop for AuditScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_verified_user_gets_their_role_and_later_records_name_them() {
    let (scratch, audit) = AuditScratch::new("success");
    let policy = policy();
    let mut auth = Scripted::new(&[false, true], 3);
    let login = login(&policy, Some("bob"), &mut auth, NO_WAIT, &audit).unwrap();
    assert_eq!(
        login.identity,
        Identity {
            user_id: "bob".into(),
            role: "contractor".into(),
            method: AuthMethod::Passphrase,
        }
    );
    audit
        .record(crate::audit::Event::VmStop {
            reason: "test".into(),
        })
        .unwrap();
    let records = scratch.records();
    let lines: Vec<&str> = records.lines().collect();
    assert_eq!(lines.len(), 4, "{records}");
    assert!(lines[1].contains(r#""event":"auth-failure""#) && lines[1].contains(r#""user":null"#));
    assert!(lines[2].contains(r#""event":"auth-success""#) && lines[2].contains(r#""user":"bob""#));
    assert!(lines[3].contains(r#""user":"bob""#));
}

#[test]
fn the_retry_bound_refuses_without_saying_what_was_wrong() {
    let (scratch, audit) = AuditScratch::new("lockout");
    let policy = policy();
    let mut known = Scripted::new(&[], 3);
    let err = login(&policy, Some("alice"), &mut known, NO_WAIT, &audit).unwrap_err();
    assert_eq!(known.seen_users.len(), 3);
    let mut unknown = Scripted::new(&[], 3);
    let other = login(&policy, Some("mallory"), &mut unknown, NO_WAIT, &audit).unwrap_err();
    assert_eq!(unknown.seen_users, vec![None, None, None]);
    assert!(matches!(err, LoginError::Refused { attempts: 3 }));
    assert_eq!(err.to_string(), other.to_string());
    assert!(!err.to_string().contains("alice"));
    let records = scratch.records();
    assert_eq!(records.matches(r#""event":"auth-failure""#).count(), 6);
    assert_eq!(records.matches(r#""event":"auth-lockout""#).count(), 2);
    assert!(records.contains(r#""claimed_user":"mallory""#));
}

/// A person at securevm's login screen: each attempt claims the next user
/// id of `claims`, and the script decides as [`Scripted`] does.
struct AtTheScreen {
    claims: VecDeque<Option<&'static str>>,
    inner: Scripted,
    waits: Vec<Duration>,
}

impl Authenticator for AtTheScreen {
    fn method(&self) -> AuthMethod {
        AuthMethod::Passphrase
    }

    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }

    fn attempt(&mut self, user_id: &str, user: Option<&User>) -> Result<Attempt, LoginError> {
        self.inner.attempt(user_id, user)
    }

    fn claimed_user(&mut self) -> Result<Option<String>, LoginError> {
        Ok(self.claims.pop_front().flatten().map(str::to_string))
    }

    fn rejected(&mut self, wait: Duration) {
        self.waits.push(wait);
    }
}

#[test]
fn without_a_user_id_each_attempt_claims_one_and_the_last_claim_is_locked_out() {
    let (scratch, audit) = AuditScratch::new("claims");
    let policy = policy();
    // mallory (unknown), then bob with a wrong passphrase, then bob right.
    let mut auth = AtTheScreen {
        claims: [Some("mallory"), Some("bob"), Some("bob")].into(),
        inner: Scripted::new(&[false, false, true], 3),
        waits: Vec::new(),
    };
    let delay = RetryDelay {
        first: Duration::from_millis(1),
        max: Duration::from_millis(2),
    };
    let login = login(&policy, None, &mut auth, delay, &audit).unwrap();
    assert_eq!(login.identity.user_id, "bob");
    assert_eq!(
        auth.inner.seen_users,
        vec![None, Some("bob".into()), Some("bob".into())]
    );
    // The screen was told of each failure and its wait.
    assert_eq!(auth.waits, vec![delay.after(1), delay.after(2)]);
    let records = scratch.records();
    assert!(records.contains(r#""claimed_user":"mallory""#), "{records}");
    // All attempts failing: the lockout names the last claim.
    let mut refused = AtTheScreen {
        claims: [Some("alice"), Some("mallory")].into(),
        inner: Scripted::new(&[], 2),
        waits: Vec::new(),
    };
    assert!(matches!(
        login_fn(&policy, &mut refused, &audit),
        Err(LoginError::Refused { attempts: 2 })
    ));
    let records = scratch.records();
    let lockout = records.lines().last().unwrap();
    assert!(
        lockout.contains(r#""event":"auth-lockout""#) && lockout.contains("mallory"),
        "{lockout}"
    );
    // An authenticator that cannot ask for a user id is an input error.
    let mut silent = AtTheScreen {
        claims: [None].into(),
        inner: Scripted::new(&[true], 1),
        waits: Vec::new(),
    };
    assert!(matches!(
        login_fn(&policy, &mut silent, &audit),
        Err(LoginError::Input(_))
    ));
}

fn login_fn(
    policy: &Policy,
    auth: &mut dyn Authenticator,
    audit: &Audit,
) -> Result<Login, LoginError> {
    login(policy, None, auth, NO_WAIT, audit)
}

#[test]
fn a_passphrase_typed_as_the_user_id_never_reaches_the_log() {
    let (scratch, audit) = AuditScratch::new("typo");
    let mut auth = Scripted::new(&[], 1);
    login(&policy(), Some("Correct Horse"), &mut auth, NO_WAIT, &audit).unwrap_err();
    let records = scratch.records();
    assert!(!records.contains("Correct Horse"), "{records}");
    assert!(records.contains("<not a user id>"), "{records}");
}

#[test]
fn delays_grow_and_are_capped() {
    let delay = RetryDelay::default();
    assert_eq!(delay.after(1), Duration::from_secs(1));
    assert_eq!(delay.after(2), Duration::from_secs(2));
    assert_eq!(delay.after(3), Duration::from_secs(4));
    assert_eq!(delay.after(40), Duration::from_secs(30));
}

fn passphrase_file(name: &str, content: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("securevm-login-{}-{name}", std::process::id()));
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn the_policy_hash_decides_and_unknown_users_are_rejected() {
    let policy = policy();
    let alice = policy.user("alice");
    let right = passphrase_file("right", b"alice's long passphrase\n");
    let wrong = passphrase_file("wrong", b"alice's long passphrase!\n");
    let mut auth = PassphraseAuthenticator::new(&policy, PassphraseInput::File(right.clone()));
    assert_eq!(auth.max_attempts(), FILE_ATTEMPTS);
    assert!(matches!(
        auth.attempt("alice", alice).unwrap(),
        Attempt::Verified(Credential::Passphrase(ref p)) if p.as_bytes() == ALICE_PASSPHRASE
    ));
    // The right passphrase under another (unknown, or card-only) user id
    // does not verify.
    assert!(matches!(
        auth.attempt("mallory", None).unwrap(),
        Attempt::Rejected
    ));
    assert!(matches!(
        auth.attempt("bob", policy.user("bob")).unwrap(),
        Attempt::Rejected
    ));
    let mut auth = PassphraseAuthenticator::new(&policy, PassphraseInput::File(wrong.clone()));
    assert!(matches!(
        auth.attempt("alice", alice).unwrap(),
        Attempt::Rejected
    ));
    let missing = PassphraseInput::File(PathBuf::from("/var/tmp/securevm-no-such-pass"));
    let err = PassphraseAuthenticator::new(&policy, missing)
        .attempt("alice", alice)
        .unwrap_err();
    assert!(matches!(err, LoginError::Input(_)), "{err}");
    let _ = std::fs::remove_file(right);
    let _ = std::fs::remove_file(wrong);
}

#[test]
fn unknown_users_cost_a_full_argon2_verification() {
    let policy = policy();
    let dummy = super::passphrase_login::dummy_phc_for_tests(&policy);
    assert_eq!(guest_policy::passphrase_hash::check_phc(&dummy), Ok(()));
    let alice_cost = policy
        .user("alice")
        .unwrap()
        .passphrase_hash
        .as_deref()
        .unwrap();
    assert_eq!(dummy.split('$').nth(3), alice_cost.split('$').nth(3));
    // Same order of time as verifying alice (both run Argon2 at m=64 MiB).
    // The fastest of interleaved tries: one try alone measures whatever
    // else the machine does (a parallel `cargo test` once made alice's
    // first try 4.4 times an unknown user's), the fastest the work itself.
    let file = passphrase_file("timing", b"not it");
    let mut auth = PassphraseAuthenticator::new(&policy, PassphraseInput::File(file.clone()));
    let mut time = |user_id: &str| {
        let start = std::time::Instant::now();
        auth.attempt(user_id, policy.user(user_id)).unwrap();
        start.elapsed()
    };
    let (mut known, mut unknown) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..3 {
        known = known.min(time("alice"));
        unknown = unknown.min(time("nobody"));
    }
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "alice {known:?} vs unknown {unknown:?} (fastest of 3 each)"
    );
    let _ = std::fs::remove_file(file);
}
