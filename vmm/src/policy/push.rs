//! A policy pushed to a running VM passes the same checks as one given at
//! start ([`super::load`]): signature with the organisation's key,
//! signed version equal to the file's, not expired, and newer than the
//! installed version in `--policy-state`. It must also be newer than the
//! policy in force and list the user logged in on the VM, whose entry
//! gives the role that applies from then on. Every check runs before the
//! state file is written, so a refused policy changes nothing.

use std::path::PathBuf;
use std::time::SystemTime;

use guest_policy::{verify_policy_bytes, PolicyState, PublicKey, VerifiedPolicy};

use super::load::{ActiveRole, PolicyConfig, PolicyLoadError};

/// A pushed policy as it arrived: the exact bytes of the file, its
/// `.minisig` text, and a name used only in messages.
#[derive(Debug, Clone, Copy)]
pub struct SignedPolicy<'a> {
    pub name: &'a str,
    pub policy: &'a [u8],
    pub signature: &'a str,
}

/// Why a pushed policy was refused, worded for the administrator who
/// pushed it; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PushRefused(String);

/// Checks pushed policies for one VM.
#[derive(Debug, Clone)]
pub struct PolicyVerifier {
    public_key: PublicKey,
    state: Option<PathBuf>,
    user: String,
}

impl PolicyVerifier {
    /// Reads the organisation's key now, so a push never depends on a
    /// file that may have changed since the VM started. `user` is the
    /// logged-in user whose role pushed policies decide.
    pub fn new(config: &PolicyConfig, user: &str) -> Result<PolicyVerifier, PolicyLoadError> {
        let text = std::fs::read_to_string(&config.public_key).map_err(|source| {
            PolicyLoadError::KeyUnreadable {
                path: config.public_key.clone(),
                source,
            }
        })?;
        let public_key =
            PublicKey::from_text(&text).map_err(|source| PolicyLoadError::KeyMalformed {
                path: config.public_key.clone(),
                source,
            })?;
        Ok(PolicyVerifier {
            public_key,
            state: config.state.clone(),
            user: user.to_string(),
        })
    }

    /// Accepts `pushed` over the policy `in_force` (recording it in the
    /// state file) and returns the VM's role under it.
    pub fn accept(
        &self,
        pushed: &SignedPolicy<'_>,
        in_force: u64,
        now: SystemTime,
    ) -> Result<ActiveRole, PushRefused> {
        let name = pushed.name;
        let refused = |reason: String| PushRefused(format!("{name}: {reason}"));
        let verified = self.verify(pushed, now)?;
        let version = verified.version();
        if version <= in_force {
            return Err(refused(format!(
                "version {version} is not newer than version {in_force} in force; \
                 refusing to roll back or replay (publish a version above {in_force})"
            )));
        }
        let policy = verified.policy();
        let user = policy.user(&self.user).ok_or_else(|| {
            refused(format!(
                "it has no user '{}', who is logged in on this VM; publish a policy that keeps them",
                self.user
            ))
        })?;
        let role_name = user.role.clone();
        let role = policy.roles.get(&role_name).cloned().ok_or_else(|| {
            refused(format!(
                "user '{}' has role '{role_name}', which it does not define",
                self.user
            ))
        })?;
        if let Some(state_path) = &self.state {
            PolicyState::open(state_path)
                .and_then(|mut state| state.accept(&verified))
                .map_err(|e| refused(e.to_string()))?;
        }
        Ok(ActiveRole {
            name: role_name,
            policy_version: version,
            role,
        })
    }

    /// The version `pushed` is signed for, if its signature and expiry
    /// hold; nothing else is checked and nothing is recorded. Lets a
    /// caller with several candidates offer only the newest.
    pub fn signed_version(
        &self,
        pushed: &SignedPolicy<'_>,
        now: SystemTime,
    ) -> Result<u64, PushRefused> {
        Ok(self.verify(pushed, now)?.version())
    }

    fn verify(
        &self,
        pushed: &SignedPolicy<'_>,
        now: SystemTime,
    ) -> Result<VerifiedPolicy, PushRefused> {
        let name = pushed.name;
        verify_policy_bytes(
            name,
            pushed.policy,
            &format!("{name}.minisig"),
            pushed.signature,
            &self.public_key,
            now,
        )
        .map_err(|e| PushRefused(format!("{name}: {e}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::protocol::PolicyUpload;
    use guest_policy::{trusted_comment_for, validate, SecretKey, SignatureFile};

    const EXAMPLE: &str = include_str!("../../../guest-policy/examples/policy.toml");

    /// A key pair, a state file and signed example policies in a scratch
    /// directory.
    pub(crate) struct Fixture {
        pub dir: PathBuf,
        key: SecretKey,
    }

    impl Fixture {
        pub fn new(name: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("securevm-push-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let key = SecretKey::generate().unwrap();
            std::fs::write(dir.join("org.pub"), key.public_key().to_text()).unwrap();
            PolicyState::initialise(&dir.join("policy.state")).unwrap();
            Fixture { dir, key }
        }

        pub fn config(&self) -> PolicyConfig {
            PolicyConfig {
                path: self.dir.join("policy.toml"),
                public_key: self.dir.join("org.pub"),
                state: Some(self.dir.join("policy.state")),
                dir: None,
            }
        }

        /// The example policy at `version`, signed.
        pub fn upload(&self, version: u64) -> PolicyUpload {
            let text = EXAMPLE.replacen("version = 7", &format!("version = {version}"), 1);
            let policy = validate("policy.toml", &text).unwrap().policy;
            let comment = trusted_comment_for(&policy, "policy.toml", SystemTime::now());
            let signature = SignatureFile::sign(&self.key, text.as_bytes(), &comment).unwrap();
            PolicyUpload {
                policy: text,
                signature: signature.to_text(),
                name: Some(format!("policy-{version}.toml")),
            }
        }

        pub fn installed_version(&self) -> Option<u64> {
            PolicyState::open(&self.dir.join("policy.state"))
                .unwrap()
                .installed()
                .map(|i| i.version)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub(crate) fn before_expiry() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000)
    }

    #[test]
    fn a_newer_signed_policy_is_accepted_and_recorded() {
        let f = Fixture::new("newer");
        let verifier = PolicyVerifier::new(&f.config(), "alice").unwrap();
        let role = verifier
            .accept(&f.upload(8).signed(), 7, before_expiry())
            .unwrap();
        assert_eq!(role.policy_version, 8);
        assert_eq!(role.name, "staff");
        assert_eq!(f.installed_version(), Some(8));
    }

    #[test]
    fn rollback_and_replay_are_refused_without_touching_the_state() {
        let f = Fixture::new("rollback");
        let verifier = PolicyVerifier::new(&f.config(), "alice").unwrap();
        for version in [6, 7] {
            let err = verifier
                .accept(&f.upload(version).signed(), 7, before_expiry())
                .unwrap_err();
            assert!(
                err.to_string().contains("not newer than version 7"),
                "{err}"
            );
        }
        assert_eq!(f.installed_version(), None);
    }

    #[test]
    fn the_state_file_refuses_what_it_already_saw() {
        let f = Fixture::new("state");
        let verifier = PolicyVerifier::new(&f.config(), "alice").unwrap();
        verifier
            .accept(&f.upload(9).signed(), 7, before_expiry())
            .unwrap();
        // The VM believes 7 is in force, but the machine already took 9.
        let err = verifier
            .accept(&f.upload(8).signed(), 7, before_expiry())
            .unwrap_err();
        assert!(err.to_string().contains("roll back"), "{err}");
        assert_eq!(f.installed_version(), Some(9));
    }

    #[test]
    fn tampered_unsigned_and_foreign_policies_are_refused() {
        let f = Fixture::new("tampered");
        let verifier = PolicyVerifier::new(&f.config(), "alice").unwrap();
        let mut tampered = f.upload(8);
        tampered.policy = tampered.policy.replace("8000-8080", "1-65535");
        let mut unsigned = f.upload(8);
        unsigned.signature = String::new();
        let other = Fixture::new("tampered-other");
        let foreign = other.upload(8);
        for upload in [tampered, unsigned, foreign] {
            let err = verifier
                .accept(&upload.signed(), 7, before_expiry())
                .unwrap_err();
            assert!(err.to_string().starts_with("policy-8.toml: "), "{err}");
        }
        assert_eq!(f.installed_version(), None);
    }

    #[test]
    fn a_policy_without_the_logged_in_user_is_refused_before_the_state_changes() {
        let f = Fixture::new("no-role");
        let verifier = PolicyVerifier::new(&f.config(), "carol").unwrap();
        let err = verifier
            .accept(&f.upload(8).signed(), 7, before_expiry())
            .unwrap_err();
        assert!(err.to_string().contains("no user 'carol'"), "{err}");
        assert_eq!(f.installed_version(), None);
    }

    #[test]
    fn a_pushed_policy_in_a_newer_format_is_refused_with_the_update_message() {
        let f = Fixture::new("newer-format");
        let verifier = PolicyVerifier::new(&f.config(), "alice").unwrap();
        let next = guest_policy::format::NEWEST_READABLE_FORMAT + 1;
        let text = EXAMPLE.replacen(
            "version = 7",
            &format!("version = 8\nformat = {next}\nscreen = 1"),
            1,
        );
        let signature =
            SignatureFile::sign(&f.key, text.as_bytes(), "securevm-policy version=8").unwrap();
        let upload = PolicyUpload {
            policy: text,
            signature: signature.to_text(),
            name: Some("policy-8.toml".to_string()),
        };
        let err = verifier
            .accept(&upload.signed(), 7, before_expiry())
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "policy-8.toml:18:10: this policy needs policy format {next}, but this securevm/guest-policy reads formats up to {}; update securevm",
                next - 1
            )),
            "{err}"
        );
        assert_eq!(f.installed_version(), None);
    }
}
