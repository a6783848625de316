//! The signed machine policy as `securevm run` uses it: verified with the
//! organisation's public key, checked against the installed-version state
//! (no rollback, no policy from another key), and narrowed to the role
//! whose rules apply to this session: the role of the user who logged in
//! (`crate::identity`). Every valid policy lists its users, so the role
//! always comes from an authenticated user; there is no way to pick a role
//! on the command line (`--role` is refused), which would bypass login.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use guest_policy::{load_policy, Policy, PolicyError, PolicyState, PublicKey, Role, SigningError};

/// `--policy FILE --policy-key PUB [--policy-state FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub path: PathBuf,
    pub public_key: PathBuf,
    /// Where the installed version is recorded; without it only the
    /// signature and expiry are checked.
    pub state: Option<PathBuf>,
    /// `--policy-dir DIR`: newer signed policies dropped there are pushed
    /// to the running VM (`super::dir`).
    pub dir: Option<PathBuf>,
}

/// A policy whose signature, expiry and version were accepted.
#[derive(Debug, Clone)]
pub struct AcceptedPolicy {
    pub version: u64,
    pub policy: Policy,
}

/// The rules in force for this VM.
#[derive(Debug, Clone)]
pub struct ActiveRole {
    pub name: String,
    pub policy_version: u64,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("cannot read the policy public key {}: {source}", path.display())]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the policy public key {}: {source}", path.display())]
    KeyMalformed { path: PathBuf, source: SigningError },
    #[error("policy {}: {source}", path.display())]
    Refused { path: PathBuf, source: PolicyError },
    #[error("policy {} has no role '{role}'; its roles are: {known}", path.display())]
    UnknownRole {
        path: PathBuf,
        role: String,
        known: String,
    },
}

/// Verifies the policy and records it as installed (when a state file is
/// given); booting again under the installed version is fine.
pub fn accept_policy(
    config: &PolicyConfig,
    now: SystemTime,
) -> Result<AcceptedPolicy, PolicyLoadError> {
    let key = read_public_key(&config.public_key)?;
    let refused = |source| PolicyLoadError::Refused {
        path: config.path.clone(),
        source,
    };
    let verified = load_policy(&config.path, &key, now).map_err(refused)?;
    if let Some(state_path) = &config.state {
        let mut state = PolicyState::open(state_path).map_err(refused)?;
        // Booting again under the installed policy is not a replay.
        let already_installed = state
            .installed()
            .is_some_and(|i| i.version == verified.version() && i.key_id == verified.key_id());
        if !already_installed {
            state.accept(&verified).map_err(refused)?;
        }
    }
    Ok(AcceptedPolicy {
        version: verified.version(),
        policy: verified.into_policy(),
    })
}

/// The rules of the role the policy gives `user_id` (an authenticated user).
pub fn role_for_user(
    accepted: &AcceptedPolicy,
    path: &Path,
    user_id: &str,
) -> Result<ActiveRole, PolicyLoadError> {
    let policy = &accepted.policy;
    let name = policy
        .user(user_id)
        .map(|user| user.role.clone())
        .unwrap_or_default();
    let role = policy
        .roles
        .get(&name)
        .cloned()
        .ok_or_else(|| PolicyLoadError::UnknownRole {
            path: path.to_path_buf(),
            role: name.clone(),
            known: policy.roles.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
    Ok(ActiveRole {
        name,
        policy_version: accepted.version,
        role,
    })
}

fn read_public_key(path: &Path) -> Result<PublicKey, PolicyLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyLoadError::KeyUnreadable {
        path: path.to_owned(),
        source,
    })?;
    PublicKey::from_text(&text).map_err(|source| PolicyLoadError::KeyMalformed {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_policy::{trusted_comment_for, validate, ExternalMedia, SecretKey, SignatureFile};

    const EXAMPLE: &str = include_str!("../../../guest-policy/examples/policy.toml");

    struct Fixture {
        dir: PathBuf,
        key: SecretKey,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("securevm-policy-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let key = SecretKey::generate().unwrap();
            std::fs::write(dir.join("org.pub"), key.public_key().to_text()).unwrap();
            Fixture { dir, key }
        }

        /// Writes the example policy with `version` and signs it.
        fn signed(&self, version: u64) -> PathBuf {
            let text = EXAMPLE.replacen("version = 7", &format!("version = {version}"), 1);
            let path = self.dir.join(format!("policy-{version}.toml"));
            std::fs::write(&path, &text).unwrap();
            let policy = validate("policy.toml", &text).unwrap().policy;
            let comment = trusted_comment_for(&policy, "policy.toml", SystemTime::now());
            let signature = SignatureFile::sign(&self.key, text.as_bytes(), &comment).unwrap();
            std::fs::write(guest_policy::signature_path_for(&path), signature.to_text()).unwrap();
            path
        }

        fn config(&self, path: PathBuf, state: bool) -> PolicyConfig {
            PolicyConfig {
                path,
                public_key: self.dir.join("org.pub"),
                state: state.then(|| self.dir.join("policy.state")),
                dir: None,
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn before_expiry() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000)
    }

    #[test]
    fn the_users_role_is_selected() {
        let f = Fixture::new("select");
        let config = f.config(f.signed(7), false);
        let accepted = accept_policy(&config, before_expiry()).unwrap();
        let bob = role_for_user(&accepted, &config.path, "bob").unwrap();
        assert_eq!(bob.name, "contractor");
        assert_eq!(bob.policy_version, 7);
        assert_ne!(bob.role.storage.external_media, ExternalMedia::Encrypt);
        let alice = role_for_user(&accepted, &config.path, "alice").unwrap();
        assert_eq!(alice.name, "staff");
        assert_eq!(alice.role.storage.external_media, ExternalMedia::Encrypt);
    }

    #[test]
    fn a_user_the_policy_does_not_know_gets_no_role() {
        let f = Fixture::new("unknown-user");
        let config = f.config(f.signed(7), false);
        let accepted = accept_policy(&config, before_expiry()).unwrap();
        let err = role_for_user(&accepted, &config.path, "mallory").unwrap_err();
        assert!(matches!(err, PolicyLoadError::UnknownRole { .. }), "{err}");
    }

    #[test]
    fn the_installed_version_boots_again_but_rollback_is_refused() {
        let f = Fixture::new("state");
        PolicyState::initialise(&f.dir.join("policy.state")).unwrap();
        accept_policy(&f.config(f.signed(8), true), before_expiry()).unwrap();
        accept_policy(&f.config(f.signed(8), true), before_expiry()).unwrap();
        let err = accept_policy(&f.config(f.signed(7), true), before_expiry()).unwrap_err();
        assert!(err.to_string().contains("refusing to roll back"), "{err}");
    }

    #[test]
    fn a_policy_signed_by_another_key_is_refused() {
        let f = Fixture::new("other-key");
        let path = f.signed(7);
        let other = SecretKey::generate().unwrap();
        std::fs::write(f.dir.join("org.pub"), other.public_key().to_text()).unwrap();
        let err = accept_policy(&f.config(path, false), before_expiry()).unwrap_err();
        assert!(matches!(err, PolicyLoadError::Refused { .. }), "{err}");
    }

    #[test]
    fn a_policy_in_a_newer_format_is_refused_with_the_update_message() {
        let f = Fixture::new("newer-format");
        let next = guest_policy::format::NEWEST_READABLE_FORMAT + 1;
        let text = EXAMPLE.replacen(
            "version = 7",
            &format!("version = 7\nformat = {next}\nscreen = 1"),
            1,
        );
        let path = f.dir.join("policy.toml");
        std::fs::write(&path, &text).unwrap();
        let signature =
            SignatureFile::sign(&f.key, text.as_bytes(), "securevm-policy version=7").unwrap();
        std::fs::write(guest_policy::signature_path_for(&path), signature.to_text()).unwrap();
        let err = accept_policy(&f.config(path, false), before_expiry()).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "needs policy format {next}, but this securevm/guest-policy reads formats up to {}; update securevm",
                next - 1
            )),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_key_is_reported() {
        let f = Fixture::new("no-key");
        let mut config = f.config(f.signed(7), false);
        config.public_key = f.dir.join("missing.pub");
        let err = accept_policy(&config, before_expiry()).unwrap_err();
        assert!(
            matches!(err, PolicyLoadError::KeyUnreadable { .. }),
            "{err}"
        );
    }
}
