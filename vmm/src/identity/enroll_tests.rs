//! Per-user keyslots on real LUKS2 images: enroll, open with the user's
//! login, unenroll one user while the others keep working.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use guest_policy::{signature_path_for, trusted_comment_for, validate, SecretKey, SignatureFile};

use super::disk::{keyslots_of, unlock_for_user, user_tokens, UserDiskError, USER_TOKEN_TYPE};
use super::enroll::{enroll, unenroll, EnrollArgs, EnrollError, UnenrollArgs};
use super::{AuthMethod, Credential, Identity, Login};
use crate::storage::cli::KdfArgs;
use crate::storage::luks::{self, FormatOptions, KdfSettings};
use crate::storage::secret::SecretBuf;
use crate::storage::StorageError;

const EXAMPLE: &str = include_str!("../../../guest-policy/examples/policy.toml");
const EXAMPLE_ALICE_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=1$A5OCxQAsircygJv5dXDVUA$ujqHB/OcTM3cjG0vVXTxYY5evQecWMs/jDY27IHDnWc";
const ADMIN: &str = "the disk's first passphrase";
const ALICE: &str = "alice's long passphrase";
const BOB: &str = "bob's long passphrase";

/// A scratch directory on a real filesystem (libcryptsetup needs one).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = Path::new("/var/tmp").join(format!(
            "securevm-enroll-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// A 1 MiB LUKS2 image with one keyslot for [`ADMIN`], and the example
    /// policy (alice and bob with known passphrases) signed.
    fn setup(&self) -> (PathBuf, PathBuf, PathBuf) {
        let image = self.0.join("disk.img");
        let options = FormatOptions {
            kdf: fast_kdf(),
            ..FormatOptions::default()
        };
        luks::format(&image, 1 << 20, &options, ADMIN.as_bytes()).unwrap();
        let alice = guest_policy::passphrase_hash::hash(ALICE.as_bytes()).unwrap();
        let bob = guest_policy::passphrase_hash::hash(BOB.as_bytes()).unwrap();
        let text = EXAMPLE.replace(EXAMPLE_ALICE_HASH, &alice).replacen(
            "role = \"contractor\"\n",
            &format!("role = \"contractor\"\npassphrase = \"{bob}\"\n"),
            1,
        );
        let policy_path = self.file("policy.toml", &text);
        let key = SecretKey::generate().unwrap();
        let pub_path = self.file("org.pub", &key.public_key().to_text());
        let policy = validate("policy.toml", &text).unwrap().policy;
        let comment = trusted_comment_for(&policy, "policy.toml", SystemTime::now());
        let signature = SignatureFile::sign(&key, text.as_bytes(), &comment).unwrap();
        std::fs::write(signature_path_for(&policy_path), signature.to_text()).unwrap();
        (image, policy_path, pub_path)
    }

    fn enroll_args(
        &self,
        image: &Path,
        policy: &Path,
        key: &Path,
        user: &str,
        pass: &str,
    ) -> EnrollArgs {
        EnrollArgs {
            user: user.into(),
            policy: policy.to_path_buf(),
            policy_key: key.to_path_buf(),
            passphrase_file: Some(self.file("admin.pass", ADMIN)),
            user_passphrase_file: Some(self.file(&format!("{user}.pass"), pass)),
            kdf: KdfArgs {
                kdf_memory: Some(1 << 20),
                kdf_time: Some(4),
                kdf_parallel: 1,
            },
            image: image.to_path_buf(),
        }
    }

    fn unenroll_args(&self, image: &Path, user: &str) -> UnenrollArgs {
        UnenrollArgs {
            user: user.into(),
            passphrase_file: Some(self.file("admin.pass", ADMIN)),
            force: false,
            image: image.to_path_buf(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fast_kdf() -> KdfSettings {
    KdfSettings::Fixed {
        memory_kib: 1024,
        time_cost: 4,
        parallel: 1,
    }
}

fn login_as(user: &str, passphrase: &str) -> Login {
    Login {
        identity: Identity {
            user_id: user.into(),
            role: "staff".into(),
            method: AuthMethod::Passphrase,
        },
        credential: Credential::Passphrase(SecretBuf::from_slice(passphrase.as_bytes())),
    }
}

#[test]
fn each_user_opens_their_own_slot_and_unenrolling_one_keeps_the_other() {
    let scratch = Scratch::new("two-users");
    let (image, policy, key) = scratch.setup();
    let alice_slot = enroll(&scratch.enroll_args(&image, &policy, &key, "alice", ALICE)).unwrap();
    let bob_slot = enroll(&scratch.enroll_args(&image, &policy, &key, "bob", BOB)).unwrap();
    assert_ne!(alice_slot, bob_slot);
    assert_eq!(keyslots_of(&image, "alice").unwrap(), vec![alice_slot]);
    let tokens = luks::tokens(&image).unwrap();
    assert!(tokens
        .iter()
        .any(|(_, json)| json["type"] == USER_TOKEN_TYPE && json["user"] == "bob"));

    let opened = unlock_for_user(&image, &login_as("alice", ALICE)).unwrap();
    assert_eq!(opened.volume.keyslot, alice_slot);
    assert!(opened.own_slot);
    // Bob's passphrase is not tried on alice's slot, and vice versa.
    let err = unlock_for_user(&image, &login_as("alice", BOB)).unwrap_err();
    assert!(matches!(err, UserDiskError::NotEnrolled { .. }), "{err}");

    assert_eq!(
        unenroll(&scratch.unenroll_args(&image, "alice")).unwrap(),
        vec![alice_slot]
    );
    assert!(keyslots_of(&image, "alice").unwrap().is_empty());
    assert!(luks::unlock(&image, ALICE.as_bytes()).is_err());
    assert_eq!(
        unlock_for_user(&image, &login_as("bob", BOB))
            .unwrap()
            .volume
            .keyslot,
        bob_slot
    );
    assert!(luks::unlock(&image, ADMIN.as_bytes()).is_ok());
    assert!(matches!(
        unenroll(&scratch.unenroll_args(&image, "alice")),
        Err(EnrollError::NotEnrolled { .. })
    ));
}

#[test]
fn enrolment_checks_the_user_and_their_passphrase_against_the_policy() {
    let scratch = Scratch::new("checks");
    let (image, policy, key) = scratch.setup();
    let err = enroll(&scratch.enroll_args(&image, &policy, &key, "alice", BOB)).unwrap_err();
    assert!(
        matches!(err, EnrollError::WrongUserPassphrase { .. }),
        "{err}"
    );
    let err = enroll(&scratch.enroll_args(&image, &policy, &key, "mallory", ALICE)).unwrap_err();
    assert!(matches!(err, EnrollError::UnknownUser { .. }), "{err}");
    enroll(&scratch.enroll_args(&image, &policy, &key, "alice", ALICE)).unwrap();
    let err = enroll(&scratch.enroll_args(&image, &policy, &key, "alice", ALICE)).unwrap_err();
    assert!(matches!(err, EnrollError::AlreadyEnrolled { .. }), "{err}");
    let mut wrong_admin = scratch.enroll_args(&image, &policy, &key, "bob", BOB);
    wrong_admin.passphrase_file = Some(scratch.file("bad.pass", "not the disk's"));
    let err = enroll(&wrong_admin).unwrap_err();
    assert!(
        matches!(
            err,
            EnrollError::Storage(StorageError::WrongPassphrase { .. })
        ),
        "{err}"
    );
    assert!(keyslots_of(&image, "bob").unwrap().is_empty());
    let other_key = SecretKey::generate().unwrap();
    let bad_key = scratch.file("other.pub", &other_key.public_key().to_text());
    let err = enroll(&scratch.enroll_args(&image, &policy, &bad_key, "bob", BOB)).unwrap_err();
    assert!(matches!(err, EnrollError::Policy { .. }), "{err}");
}

#[test]
fn a_slot_removed_by_number_leaves_only_a_stale_token_that_unenroll_clears() {
    let scratch = Scratch::new("stale");
    let (image, policy, key) = scratch.setup();
    let slot = enroll(&scratch.enroll_args(&image, &policy, &key, "alice", ALICE)).unwrap();
    luks::remove_key(&image, ADMIN.as_bytes(), Some(slot), false).unwrap();
    let err = unlock_for_user(&image, &login_as("alice", ALICE)).unwrap_err();
    assert!(matches!(err, UserDiskError::NotEnrolled { .. }), "{err}");
    unenroll(&scratch.unenroll_args(&image, "alice")).unwrap();
    assert!(user_tokens(&image).unwrap().is_empty());
}

#[test]
fn without_a_token_any_slot_the_users_passphrase_opens_is_used() {
    let scratch = Scratch::new("shared");
    let (image, _, _) = scratch.setup();
    let slot = luks::add_key(&image, ADMIN.as_bytes(), ALICE.as_bytes(), &fast_kdf()).unwrap();
    let opened = unlock_for_user(&image, &login_as("alice", ALICE)).unwrap();
    assert_eq!(opened.volume.keyslot, slot);
    assert!(!opened.own_slot);
}
