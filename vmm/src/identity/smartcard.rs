//! Smart-card login over PKCS#11 (real cards through OpenSC, tests through
//! SoftHSM2): load the module, find the user's token, log in with the PIN
//! and prove possession of the private key the signed policy binds to the
//! user, by having the token sign a fresh random challenge that we verify.
//! The PIN goes only to the token and the key never leaves it. No KVM in
//! here.
//!
//! - [`authenticate`]: the whole login, returning a [`CardLogin`];
//! - [`disk`]: LUKS2 keyslots unlocked by the card, in the
//!   `systemd-pkcs11` token layout of `systemd-cryptenroll`;
//! - [`monitor`]: pauses the VM when the card is pulled, resumes it when
//!   the card is back and the PIN verifies again.

pub mod challenge;
pub mod cli;
pub mod disk;
pub mod error;
pub mod keys;
pub mod login;
pub mod monitor;
pub mod token;

use std::path::PathBuf;

use guest_policy::model::SmartCardBinding;

pub use error::{Rejection, SmartCardError, REJECTED};
pub use keys::TokenKey;
pub use token::{LoggedIn, Module, PinSource, RetryPolicy, TokenDescription, TokenSelector};

/// `--pkcs11-module PATH [--token-label L] [--pin-file F]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardOptions {
    pub module: PathBuf,
    pub token_label: Option<String>,
    pub pins: PinSource,
    pub retry: RetryPolicy,
}

/// A user proven to hold the bound card: the logged-in token and the key
/// that answered the challenge.
#[derive(Debug)]
pub struct CardLogin {
    pub token: LoggedIn,
    pub key: TokenKey,
    /// The policy fingerprint the key matched.
    pub fingerprint: [u8; 32],
}

impl CardLogin {
    /// What to look for when the card comes back after removal.
    pub fn selector(&self) -> TokenSelector {
        let token = self.token.token();
        TokenSelector {
            label: Some(token.label.clone()),
            serial: Some(token.serial.clone()),
            manufacturer: Some(token.manufacturer.clone()),
        }
    }
}

/// Log the user bound by `binding` in with their card: find the token,
/// log in with the PIN, find the key with the bound fingerprint, and
/// verify its signature over a fresh challenge.
///
/// When no present token matches the binding, the only token there is
/// still asked for its PIN before the refusal, so the console cannot tell
/// a wrong card from a wrong PIN.
pub fn authenticate(
    options: &CardOptions,
    binding: &SmartCardBinding,
) -> Result<CardLogin, SmartCardError> {
    let module = Module::load(&options.module)?;
    let bound = TokenSelector::for_binding(binding, options.token_label.as_deref());
    let (slot, token, token_bound) = match token::find_token(&module, &bound) {
        Ok((slot, token)) => (slot, token, true),
        Err(SmartCardError::NoToken) => {
            let any = TokenSelector {
                label: options.token_label.clone(),
                ..Default::default()
            };
            let (slot, token) = token::find_token(&module, &any)?;
            (slot, token, false)
        }
        Err(e) => return Err(e),
    };
    let logged_in = token::log_in(module, slot, token, &options.pins, options.retry)?;
    if !token_bound {
        return Err(SmartCardError::Rejected(Rejection::TokenNotBound));
    }
    login_with_key(logged_in, &binding.public_key_sha256)
}

/// The second half of [`authenticate`]: on a logged-in token, find the
/// key with `fingerprint` and have it sign a fresh challenge.
pub fn login_with_key(
    logged_in: LoggedIn,
    fingerprint: &[u8; 32],
) -> Result<CardLogin, SmartCardError> {
    let key = keys::find_bound_key(logged_in.session(), fingerprint)?;
    challenge::prove_possession(
        logged_in.module(),
        logged_in.slot(),
        logged_in.session(),
        &key,
    )?;
    Ok(CardLogin {
        token: logged_in,
        key,
        fingerprint: *fingerprint,
    })
}

/// Log in to the token `options` names without a policy binding (disk
/// enrollment and unlocking by card alone).
pub fn open_token(options: &CardOptions) -> Result<LoggedIn, SmartCardError> {
    let module = Module::load(&options.module)?;
    let selector = TokenSelector {
        label: options.token_label.clone(),
        ..Default::default()
    };
    let (slot, token) = token::find_token(&module, &selector)?;
    token::log_in(module, slot, token, &options.pins, options.retry)
}

/// Log in to the token `options` names when no policy binds a key to the
/// user (disks opened by the card alone): the card's first usable key (by
/// CKA_ID) answers the challenge, and card removal later asks that same
/// key again.
pub fn login_without_policy(options: &CardOptions) -> Result<CardLogin, SmartCardError> {
    let logged_in = open_token(options)?;
    let mut keys = keys::private_keys(logged_in.session())?;
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let fingerprint = keys
        .first()
        .map(|key| key.spki_sha256)
        .ok_or(SmartCardError::Rejected(Rejection::KeyNotBound))?;
    login_with_key(logged_in, &fingerprint)
}
