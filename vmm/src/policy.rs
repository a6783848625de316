//! The signed machine policy as `securevm run` uses it: verified with the
//! organisation's public key, checked against the installed-version state
//! (no rollback, no policy from another key), and narrowed to the role
//! whose rules apply to this session. Until ID management selects the
//! role from the authenticated user, `--role` names it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use guest_policy::{load_policy, PolicyError, PolicyState, PublicKey, Role, SigningError};

/// `--policy FILE --policy-key PUB [--policy-state FILE] --role NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub path: PathBuf,
    pub public_key: PathBuf,
    /// Where the installed version is recorded; without it only the
    /// signature and expiry are checked.
    pub state: Option<PathBuf>,
    pub role: String,
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

/// Verifies and accepts the policy, then returns the named role's rules.
pub fn load_role(config: &PolicyConfig, now: SystemTime) -> Result<ActiveRole, PolicyLoadError> {
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
    let policy_version = verified.version();
    let policy = verified.into_policy();
    let role =
        policy
            .roles
            .get(&config.role)
            .cloned()
            .ok_or_else(|| PolicyLoadError::UnknownRole {
                path: config.path.clone(),
                role: config.role.clone(),
                known: policy.roles.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
    Ok(ActiveRole {
        name: config.role.clone(),
        policy_version,
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

    const EXAMPLE: &str = include_str!("../../guest-policy/examples/policy.toml");

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

        fn config(&self, path: PathBuf, role: &str, state: bool) -> PolicyConfig {
            PolicyConfig {
                path,
                public_key: self.dir.join("org.pub"),
                state: state.then(|| self.dir.join("policy.state")),
                role: role.into(),
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
    fn the_named_role_is_selected() {
        let f = Fixture::new("select");
        let active =
            load_role(&f.config(f.signed(7), "contractor", false), before_expiry()).unwrap();
        assert_eq!(active.name, "contractor");
        assert_eq!(active.policy_version, 7);
        assert_ne!(active.role.storage.external_media, ExternalMedia::Encrypt);
    }

    #[test]
    fn an_unknown_role_lists_the_known_ones() {
        let f = Fixture::new("unknown-role");
        let err = load_role(&f.config(f.signed(7), "admin", false), before_expiry()).unwrap_err();
        assert!(
            err.to_string()
                .contains("no role 'admin'; its roles are: contractor, staff"),
            "{err}"
        );
    }

    #[test]
    fn the_installed_version_boots_again_but_rollback_is_refused() {
        let f = Fixture::new("state");
        PolicyState::initialise(&f.dir.join("policy.state")).unwrap();
        load_role(&f.config(f.signed(8), "staff", true), before_expiry()).unwrap();
        load_role(&f.config(f.signed(8), "staff", true), before_expiry()).unwrap();
        let err = load_role(&f.config(f.signed(7), "staff", true), before_expiry()).unwrap_err();
        assert!(err.to_string().contains("refusing to roll back"), "{err}");
    }

    #[test]
    fn a_policy_signed_by_another_key_is_refused() {
        let f = Fixture::new("other-key");
        let path = f.signed(7);
        let other = SecretKey::generate().unwrap();
        std::fs::write(f.dir.join("org.pub"), other.public_key().to_text()).unwrap();
        let err = load_role(&f.config(path, "staff", false), before_expiry()).unwrap_err();
        assert!(matches!(err, PolicyLoadError::Refused { .. }), "{err}");
    }

    #[test]
    fn an_unreadable_key_is_reported() {
        let f = Fixture::new("no-key");
        let mut config = f.config(f.signed(7), "staff", false);
        config.public_key = f.dir.join("missing.pub");
        let err = load_role(&config, before_expiry()).unwrap_err();
        assert!(
            matches!(err, PolicyLoadError::KeyUnreadable { .. }),
            "{err}"
        );
    }
}
