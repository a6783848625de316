//! Loading signed policies and accepting them against the machine state:
//! every way a policy must be refused, with its exact error.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{base_with_version, BASE};
use guest_policy::format::NEWEST_READABLE_FORMAT;
use guest_policy::{
    load_policy, trusted_comment_for, validate, PolicyError, PolicyState, SecretKey, SignatureFile,
    VerifiedPolicy,
};
use tempfile::TempDir;

/// 2026-11-26T00:00:00Z: after `issued` in BASE.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_651_200)
}

struct Fixture {
    directory: TempDir,
    key: SecretKey,
}

impl Fixture {
    fn new() -> Self {
        Self {
            directory: tempfile::tempdir().unwrap(),
            key: SecretKey::generate().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// Writes `text` as `name` and signs it with a correct trusted comment.
    fn signed(&self, name: &str, text: &str) -> PathBuf {
        let policy = validate(name, text).unwrap().policy;
        self.signed_with_comment(name, text, &trusted_comment_for(&policy, name, now()))
    }

    fn signed_with_comment(&self, name: &str, text: &str, comment: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, text).unwrap();
        let signature = SignatureFile::sign(&self.key, text.as_bytes(), comment).unwrap();
        fs::write(signature_path(&path), signature.to_text()).unwrap();
        path
    }

    fn load(&self, path: &Path) -> Result<VerifiedPolicy, PolicyError> {
        load_policy(path, &self.key.public_key(), now())
    }
}

fn signature_path(policy: &Path) -> PathBuf {
    guest_policy::signature_path_for(policy)
}

#[test]
fn a_correctly_signed_policy_loads() {
    let fixture = Fixture::new();
    let path = fixture.signed("policy.toml", BASE);
    let verified = fixture.load(&path).unwrap();
    assert_eq!(verified.version(), 3);
    assert_eq!(verified.key_id(), fixture.key.key_id());
    assert!(verified
        .trusted_comment()
        .starts_with("securevm-policy version=3 "));
    assert_eq!(
        verified
            .policy()
            .role_of("alice")
            .unwrap()
            .network
            .rules
            .len(),
        1
    );
}

#[test]
fn one_byte_changed_after_signing_is_refused() {
    let fixture = Fixture::new();
    let path = fixture.signed("policy.toml", BASE);
    fs::write(&path, BASE.replacen("ports = [443]", "ports = [444]", 1)).unwrap();
    let error = fixture.load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: signature verification failed: the policy file is not exactly what was signed (it was changed after signing, or the signature belongs to another file)",
            signature_path(&path).display()
        )
    );
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let fixture = Fixture::new();
    let path = fixture.signed("policy.toml", BASE);
    let other = SecretKey::generate().unwrap();
    let error = load_policy(&path, &other.public_key(), now()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: the policy was signed by key {}, but the trusted public key is {}; sign it with the organisation's key or configure the right public key",
            signature_path(&path).display(),
            fixture.key.key_id(),
            other.key_id()
        )
    );
}

#[test]
fn a_truncated_signature_file_is_refused() {
    let fixture = Fixture::new();
    let path = fixture.signed("policy.toml", BASE);
    let signature = fs::read_to_string(signature_path(&path)).unwrap();
    let cut_at_line_two = &signature[..signature.find('\n').unwrap() + 30];
    fs::write(signature_path(&path), cut_at_line_two).unwrap();
    let error = fixture.load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: signature file is malformed: expected 4 lines (untrusted comment, signature, trusted comment, global signature), found 2; sign the policy again with `guest-policy sign` or `minisign -S`",
            signature_path(&path).display()
        )
    );
    let lines: Vec<&str> = signature.lines().collect();
    let short_signature = format!(
        "{}\n{}\n{}\n{}\n",
        lines[0],
        &lines[1][..40],
        lines[2],
        lines[3]
    );
    fs::write(signature_path(&path), short_signature).unwrap();
    let error = fixture.load(&path).unwrap_err();
    assert!(
        error.to_string().ends_with("signature file is malformed: the signature on line 2 is 30 bytes, expected 74; sign the policy again with `guest-policy sign` or `minisign -S`"),
        "{error}"
    );
}

#[test]
fn a_missing_signature_file_is_refused() {
    let fixture = Fixture::new();
    let path = fixture.path("policy.toml");
    fs::write(&path, BASE).unwrap();
    let error = fixture.load(&path).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "cannot read {}: ",
            signature_path(&path).display()
        )),
        "{error}"
    );
}

#[test]
fn a_trusted_comment_with_another_version_is_refused() {
    let fixture = Fixture::new();
    let path = fixture.signed_with_comment("policy.toml", BASE, "securevm-policy version=4");
    let error = fixture.load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the signature was made for policy version 4, but the file says version = 3; sign this exact file again"
    );
}

#[test]
fn a_trusted_comment_without_version_is_refused() {
    let fixture = Fixture::new();
    let path = fixture.signed_with_comment("policy.toml", BASE, "timestamp:1 file:policy.toml");
    let error = fixture.load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the signature's trusted comment \"timestamp:1 file:policy.toml\" carries no version=N; sign with `guest-policy sign`, or with `minisign -S -t \"securevm-policy version=N\"`"
    );
}

#[test]
fn an_expired_policy_is_refused() {
    let fixture = Fixture::new();
    let text = BASE.replacen(
        "issued = 2026-11-01T09:00:00Z",
        "issued = 2026-11-01T09:00:00Z\nexpires = 2026-11-20T00:00:00Z",
        1,
    );
    let path = fixture.signed("policy.toml", &text);
    let error = fixture.load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        "policy version 3 expired at 2026-11-20T00:00:00Z; publish a new version with a later expiry"
    );
}

#[test]
fn a_signed_but_invalid_policy_is_refused() {
    let fixture = Fixture::new();
    let text = BASE.replacen("ports = [443]", "ports = [70000]", 1);
    let path = fixture.signed_with_comment("policy.toml", &text, "securevm-policy version=3");
    let error = fixture.load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:28:10: port 70000 is out of range; ports are 1-65535 or a range like \"8000-8080\"",
            path.display()
        )
    );
}

#[test]
fn first_installation_needs_an_initialised_state() {
    let fixture = Fixture::new();
    let verified = fixture.load(&fixture.signed("policy.toml", BASE)).unwrap();
    let state_path = fixture.path("policy.state");
    let error = PolicyState::open(&state_path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "state file {} does not exist; if this machine never had a policy, initialise the state explicitly (`guest-policy verify --init-state`); otherwise restore it, since without it rollback cannot be detected",
            state_path.display()
        )
    );
    let mut state = PolicyState::initialise(&state_path).unwrap();
    assert_eq!(state.installed(), None);
    state.accept(&verified).unwrap();
    let reopened = PolicyState::open(&state_path).unwrap();
    let installed = reopened.installed().unwrap();
    assert_eq!(
        (installed.version, installed.key_id),
        (3, fixture.key.key_id())
    );
    let error = PolicyState::initialise(&state_path).unwrap_err();
    assert!(matches!(error, PolicyError::StateExists { .. }), "{error}");
}

#[test]
fn rollback_and_replay_are_refused_and_newer_versions_accepted() {
    let fixture = Fixture::new();
    let state_path = fixture.path("policy.state");
    let mut state = PolicyState::initialise(&state_path).unwrap();
    let v5 = fixture
        .load(&fixture.signed("v5.toml", &base_with_version(5)))
        .unwrap();
    let v4 = fixture
        .load(&fixture.signed("v4.toml", &base_with_version(4)))
        .unwrap();
    let v6 = fixture
        .load(&fixture.signed("v6.toml", &base_with_version(6)))
        .unwrap();
    state.accept(&v5).unwrap();
    assert_eq!(
        state.accept(&v4).unwrap_err().to_string(),
        "policy version 4 is older than the installed version 5; refusing to roll back (publish a version above 5)"
    );
    assert_eq!(
        state.accept(&v5).unwrap_err().to_string(),
        "policy version 5 is already installed; refusing to install it again (publish a higher version to change the policy)"
    );
    assert_eq!(
        PolicyState::open(&state_path)
            .unwrap()
            .installed()
            .unwrap()
            .version,
        5
    );
    state.accept(&v6).unwrap();
    let reopened = PolicyState::open(&state_path).unwrap();
    assert_eq!(reopened.installed().unwrap().version, 6);
    assert_eq!(
        reopened.check(&v5).unwrap_err().to_string(),
        "policy version 5 is older than the installed version 6; refusing to roll back (publish a version above 6)"
    );
}

#[test]
fn a_stale_state_handle_decides_against_the_file_not_its_memory() {
    // Two pushes that opened the state before either accepted: the second
    // must see the first's version, or both would install.
    let fixture = Fixture::new();
    let state_path = fixture.path("policy.state");
    PolicyState::initialise(&state_path).unwrap();
    let mut first = PolicyState::open(&state_path).unwrap();
    let mut second = PolicyState::open(&state_path).unwrap();
    let v7 = fixture
        .load(&fixture.signed("v7.toml", &base_with_version(7)))
        .unwrap();
    let v6 = fixture
        .load(&fixture.signed("v6.toml", &base_with_version(6)))
        .unwrap();
    first.accept(&v7).unwrap();
    assert_eq!(
        second.accept(&v6).unwrap_err().to_string(),
        "policy version 6 is older than the installed version 7; refusing to roll back (publish a version above 7)"
    );
    assert_eq!(
        PolicyState::open(&state_path)
            .unwrap()
            .installed()
            .unwrap()
            .version,
        7
    );
}

#[test]
fn a_policy_from_another_key_is_refused_by_the_state() {
    let first = Fixture::new();
    let state_path = first.path("policy.state");
    let mut state = PolicyState::initialise(&state_path).unwrap();
    state
        .accept(&first.load(&first.signed("policy.toml", BASE)).unwrap())
        .unwrap();
    let second = Fixture::new();
    let newer = second
        .load(&second.signed("policy.toml", &base_with_version(9)))
        .unwrap();
    assert_eq!(
        state.accept(&newer).unwrap_err().to_string(),
        format!(
            "policy is signed by key {}, but this machine accepted policies from key {}; a key change needs the state file to be re-initialised by an administrator",
            second.key.key_id(),
            first.key.key_id()
        )
    );
}

#[test]
fn a_corrupt_state_file_is_refused() {
    let fixture = Fixture::new();
    let state_path = fixture.path("policy.state");
    fs::write(
        &state_path,
        "format=1\nversion=seven\nkey_id=0123456789ABCDEF\naccepted_at=1\n",
    )
    .unwrap();
    assert_eq!(
        PolicyState::open(&state_path).unwrap_err().to_string(),
        format!(
            "state file {} is corrupt: version is not a number; restore it from a backup or re-initialise it deliberately",
            state_path.display()
        )
    );
    fs::write(&state_path, [0xff, 0xfe, 0x00]).unwrap();
    assert!(matches!(
        PolicyState::open(&state_path).unwrap_err(),
        PolicyError::StateCorrupt { .. }
    ));
    fs::write(&state_path, "").unwrap();
    assert!(matches!(
        PolicyState::open(&state_path).unwrap_err(),
        PolicyError::StateCorrupt { .. }
    ));
}

#[test]
fn an_unwritable_state_file_is_an_error_and_changes_nothing() {
    let fixture = Fixture::new();
    let state_path = fixture.path("policy.state");
    let mut state = PolicyState::initialise(&state_path).unwrap();
    let before = fs::read(&state_path).unwrap();
    // Tests run as root, so permissions would not stop the write; a
    // directory where the temporary file must go stops anyone.
    fs::create_dir(fixture.path("policy.state.tmp")).unwrap();
    let verified = fixture.load(&fixture.signed("policy.toml", BASE)).unwrap();
    let error = state.accept(&verified).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "cannot write state file {}: ",
            state_path.display()
        )) && error
            .to_string()
            .ends_with("; the previously recorded state is unchanged"),
        "{error}"
    );
    assert_eq!(state.installed(), None);
    assert_eq!(fs::read(&state_path).unwrap(), before);
}

#[test]
fn a_state_in_a_missing_directory_cannot_be_initialised() {
    let fixture = Fixture::new();
    let state_path = fixture.path("no-such-directory/policy.state");
    let error = PolicyState::initialise(&state_path).unwrap_err();
    assert!(matches!(error, PolicyError::StateWrite { .. }), "{error}");
}

#[test]
fn a_signed_policy_in_a_newer_format_is_refused_with_the_update_message() {
    let fixture = Fixture::new();
    let next = NEWEST_READABLE_FORMAT + 1;
    let newer = BASE.replacen("version = 3", &format!("version = 3\nformat = {next}"), 1);
    let with_new_key = newer.replacen(
        "[audit]",
        "[display]\nresolution = \"1920x1080\"\n\n[audit]",
        1,
    );
    for (name, text) in [("newer.toml", newer), ("new-key.toml", with_new_key)] {
        let path = fixture.signed_with_comment(name, &text, "securevm-policy version=3");
        let error = fixture.load(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}:4:10: this policy needs policy format {next}, but this securevm/guest-policy reads formats up to {NEWEST_READABLE_FORMAT}; update securevm (and guest-policy) on every machine to a release that reads format {next} before pushing this policy",
                path.display()
            )
        );
    }
}

#[test]
fn a_policy_declaring_format_1_loads_like_one_without_the_key() {
    let fixture = Fixture::new();
    let text = BASE.replacen("version = 3", "version = 3\nformat = 1", 1);
    let path = fixture.signed("policy.toml", &text);
    let verified = fixture.load(&path).unwrap();
    assert_eq!(verified.policy().meta.format, 1);
    let path = fixture.signed("plain.toml", BASE);
    assert_eq!(fixture.load(&path).unwrap().policy().meta.format, 1);
}

/// Keys and signatures written before guest-policy used the `minisign`
/// crate (`tests/fixtures/`): a key pair and a signature from the hand-written
/// code, a legacy signature from `minisign -S -l`, and an encrypted key
/// (passphrase "fixture", low scrypt cost).
mod made_before_the_minisign_crate {
    use super::*;
    use guest_policy::{verify_policy_bytes, PublicKey};
    use zeroize::Zeroizing;

    fn fixture(name: &str) -> String {
        fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn signatures_still_verify() {
        let key = PublicKey::from_text(&fixture("pre-minisign-crate.pub")).unwrap();
        let policy = fixture("policy.toml");
        for signature in ["policy.toml.minisig", "policy.toml.legacy.minisig"] {
            let verified = verify_policy_bytes(
                "policy.toml",
                policy.as_bytes(),
                signature,
                &fixture(signature),
                &key,
                now(),
            )
            .unwrap();
            assert_eq!(verified.version(), 3);
            assert_eq!(verified.key_id(), key.key_id());
        }
    }

    #[test]
    fn secret_keys_still_load_and_sign() {
        let public = PublicKey::from_text(&fixture("pre-minisign-crate.pub")).unwrap();
        let key = SecretKey::from_text(&fixture("pre-minisign-crate.key"), || None).unwrap();
        assert_eq!(key.public_key(), public);
        let signature = SignatureFile::sign(&key, b"m", "securevm-policy version=1").unwrap();
        assert_eq!(signature.verify(&public, b"m"), Ok(()));

        let encrypted = fixture("pre-minisign-crate-encrypted.key");
        let public = PublicKey::from_text(&fixture("pre-minisign-crate-encrypted.pub")).unwrap();
        let wrong = SecretKey::from_text(&encrypted, || Some(Zeroizing::new("x".to_string())));
        assert_eq!(
            wrong.unwrap_err(),
            guest_policy::SigningError::WrongPassphrase
        );
        let key = SecretKey::from_text(&encrypted, || Some(Zeroizing::new("fixture".to_string())))
            .unwrap();
        assert_eq!(key.public_key(), public);
    }
}
