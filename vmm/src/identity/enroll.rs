//! `securevm disk enroll --user ID` and `securevm disk unenroll --user ID`:
//! give a policy user their own LUKS2 keyslot, opened by their login
//! passphrase, or take it away without touching anyone else's.
//!
//! Enrolling needs a passphrase the image already opens with (as any new
//! keyslot does) and the user's passphrase, which must match the hash in
//! the signed policy: a slot the user could not log in with would be
//! useless. The slot is recorded in a `securevm-user` token (see
//! [`super::disk`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use guest_policy::{load_policy, PolicyError, PublicKey, SigningError};

use super::disk::{keyslots_of, user_token_json, user_tokens};
use crate::storage::cli::KdfArgs;
use crate::storage::luks;
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};
use crate::storage::secret::SecretBuf;
use crate::storage::StorageError;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum EnrollCommand {
    /// Add a keyslot for a policy user, opened by their login passphrase.
    Enroll(EnrollArgs),
    /// Remove a user's keyslot; the other users' slots keep working.
    Unenroll(UnenrollArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// The policy user to enroll.
    #[arg(long, value_name = "ID")]
    pub user: String,
    /// The signed policy that lists the user (its signature is FILE.minisig).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The organisation's public key that must have signed the policy.
    #[arg(long, value_name = "PUB")]
    pub policy_key: PathBuf,
    /// A passphrase the image already opens with, from FILE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The user's login passphrase, from FILE.
    #[arg(long, value_name = "FILE")]
    pub user_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UnenrollArgs {
    /// The user whose keyslot is removed.
    #[arg(long, value_name = "ID")]
    pub user: String,
    /// Any passphrase of the image (authorises the change), from FILE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Allow removing the image's last keyslot (the data becomes unrecoverable).
    #[arg(long)]
    pub force: bool,
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot read the policy public key {}: {source}", path.display())]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the policy public key {}: {source}", path.display())]
    KeyMalformed { path: PathBuf, source: SigningError },
    #[error("policy {}: {source}", path.display())]
    Policy { path: PathBuf, source: PolicyError },
    #[error("policy {} has no user '{user}'; check the id (`guest-policy show POLICY` lists the users)", path.display())]
    UnknownUser { path: PathBuf, user: String },
    #[error(
        "user '{user}' has no passphrase in the policy, so there is nothing to open a keyslot with"
    )]
    NoPassphrase { user: String },
    #[error("that is not user '{user}''s passphrase according to the policy; enroll the passphrase the user logs in with")]
    WrongUserPassphrase { user: String },
    #[error("user '{user}' already has keyslot(s) {slots:?} in {}; `securevm disk unenroll --user {user}` first to replace them", path.display())]
    AlreadyEnrolled {
        path: PathBuf,
        user: String,
        slots: Vec<u32>,
    },
    #[error("{} has no keyslot enrolled for user '{user}'", path.display())]
    NotEnrolled { path: PathBuf, user: String },
}

/// Runs `securevm disk enroll|unenroll`.
pub fn run_enroll_command(command: &EnrollCommand) -> Result<(), EnrollError> {
    match command {
        EnrollCommand::Enroll(args) => {
            let slot = enroll(args)?;
            println!(
                "enrolled user {} in keyslot {slot} of {}",
                args.user,
                args.image.display()
            );
        }
        EnrollCommand::Unenroll(args) => {
            let slots = unenroll(args)?;
            println!(
                "removed keyslot(s) {slots:?} of user {} from {}",
                args.user,
                args.image.display()
            );
        }
    }
    Ok(())
}

fn passphrase(file: Option<&Path>, prompt: &str) -> Result<SecretBuf, StorageError> {
    read_passphrase(match file {
        Some(path) => PassphraseSource::File(path),
        None => PassphraseSource::Terminal {
            prompt,
            confirm: false,
        },
    })
}

/// Adds the user's keyslot and its token; returns the slot number.
pub fn enroll(args: &EnrollArgs) -> Result<u32, EnrollError> {
    let key_text =
        std::fs::read_to_string(&args.policy_key).map_err(|source| EnrollError::KeyUnreadable {
            path: args.policy_key.clone(),
            source,
        })?;
    let key = PublicKey::from_text(&key_text).map_err(|source| EnrollError::KeyMalformed {
        path: args.policy_key.clone(),
        source,
    })?;
    let policy = load_policy(&args.policy, &key, SystemTime::now())
        .map_err(|source| EnrollError::Policy {
            path: args.policy.clone(),
            source,
        })?
        .into_policy();
    let user = policy
        .user(&args.user)
        .ok_or_else(|| EnrollError::UnknownUser {
            path: args.policy.clone(),
            user: args.user.clone(),
        })?;
    if user.passphrase_hash.is_none() {
        return Err(EnrollError::NoPassphrase {
            user: args.user.clone(),
        });
    }
    let existing = keyslots_of(&args.image, &args.user)?;
    if !existing.is_empty() {
        return Err(EnrollError::AlreadyEnrolled {
            path: args.image.clone(),
            user: args.user.clone(),
            slots: existing,
        });
    }
    let kdf = args.kdf.settings()?;
    let user_pass = passphrase(
        args.user_passphrase_file.as_deref(),
        &format!("Passphrase of user {}: ", args.user),
    )?;
    if !user.verify_passphrase(user_pass.as_bytes()) {
        return Err(EnrollError::WrongUserPassphrase {
            user: args.user.clone(),
        });
    }
    let current = passphrase(
        args.passphrase_file.as_deref(),
        "Existing disk passphrase: ",
    )?;
    let slot = luks::add_key(&args.image, current.as_bytes(), user_pass.as_bytes(), &kdf)?;
    if let Err(e) = luks::add_token(&args.image, &user_token_json(&args.user, slot)) {
        // A slot nobody knows belongs to the user could never be removed
        // by `unenroll`; take it back.
        let _ = luks::remove_key(&args.image, current.as_bytes(), Some(slot), false);
        return Err(e.into());
    }
    Ok(slot)
}

/// Removes the user's keyslots and their tokens; returns the slots.
pub fn unenroll(args: &UnenrollArgs) -> Result<Vec<u32>, EnrollError> {
    let tokens: Vec<_> = user_tokens(&args.image)?
        .into_iter()
        .filter(|token| token.user == args.user)
        .collect();
    if tokens.is_empty() {
        return Err(EnrollError::NotEnrolled {
            path: args.image.clone(),
            user: args.user.clone(),
        });
    }
    let authority = passphrase(
        args.passphrase_file.as_deref(),
        "Any passphrase of the image: ",
    )?;
    let mut removed = Vec::new();
    for token in &tokens {
        for &slot in &token.keyslots {
            match luks::remove_key(&args.image, authority.as_bytes(), Some(slot), args.force) {
                // Already gone (e.g. `disk remove-key --slot`): only the
                // token is left to clean up.
                Ok(_) | Err(StorageError::NoSuchKeyslot { .. }) => removed.push(slot),
                Err(e) => return Err(e.into()),
            }
        }
        luks::remove_token(&args.image, token.token)?;
    }
    Ok(removed)
}
