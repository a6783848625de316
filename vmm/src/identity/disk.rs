//! Disk keys per user: which LUKS2 keyslot belongs to which policy user,
//! and opening a disk with the logged-in user's own credential.
//!
//! A user's keyslot is recorded as a LUKS2 token in the header, in the
//! JSON area libcryptsetup manages (`cryptsetup luksDump` shows it; other
//! tools ignore unknown token types):
//! `{"type":"securevm-user","keyslots":["1"],"user":"alice"}`.
//! So `securevm disk unenroll --user alice` removes exactly alice's slot,
//! and at `securevm run` alice's passphrase is tried on her slot only.

use std::path::Path;

use serde_json::{json, Value};

use super::{smartcard, Credential, Login};
use crate::storage::luks::{self, UnlockedVolume};
use crate::storage::StorageError;

/// The LUKS2 token type that binds a keyslot to a policy user.
pub const USER_TOKEN_TYPE: &str = "securevm-user";

/// A user's token in an image header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    /// The token's number in the header.
    pub token: u32,
    pub user: String,
    pub keyslots: Vec<u32>,
}

/// The token JSON for `user`'s `keyslot`.
pub fn user_token_json(user: &str, keyslot: u32) -> Value {
    json!({
        "type": USER_TOKEN_TYPE,
        "keyslots": [keyslot.to_string()],
        "user": user,
    })
}

fn parse_user_token(token: u32, json: &Value) -> Option<UserToken> {
    if json.get("type")?.as_str()? != USER_TOKEN_TYPE {
        return None;
    }
    Some(UserToken {
        token,
        user: json.get("user")?.as_str()?.to_string(),
        keyslots: json
            .get("keyslots")?
            .as_array()?
            .iter()
            .filter_map(|slot| slot.as_str()?.parse().ok())
            .collect(),
    })
}

/// Every securevm user token in the image's header.
pub fn user_tokens(path: &Path) -> Result<Vec<UserToken>, StorageError> {
    Ok(luks::tokens(path)?
        .iter()
        .filter_map(|(token, json)| parse_user_token(*token, json))
        .collect())
}

/// The keyslots enrolled for `user`.
pub fn keyslots_of(path: &Path, user: &str) -> Result<Vec<u32>, StorageError> {
    Ok(user_tokens(path)?
        .into_iter()
        .filter(|token| token.user == user)
        .flat_map(|token| token.keyslots)
        .collect())
}

/// How a disk was opened for a user.
#[derive(Debug)]
pub struct UserUnlock {
    pub volume: UnlockedVolume,
    /// Whether the keyslot is one enrolled for the user (a token names
    /// it), rather than a shared slot their passphrase also opens.
    pub own_slot: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UserDiskError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    SmartCard(#[from] super::smartcard::SmartCardError),
    #[error("{} has no keyslot for user '{user}'; an administrator adds one with `securevm disk enroll --user {user} --policy POLICY --policy-key PUB {}`", path.display(), path.display())]
    NotEnrolled {
        path: std::path::PathBuf,
        user: String,
    },
}

/// Opens the LUKS image at `path` with the credential of `login`: the
/// user's enrolled keyslots when the header names some, otherwise any
/// keyslot their passphrase opens.
pub fn unlock_for_user(path: &Path, login: &Login) -> Result<UserUnlock, UserDiskError> {
    let user = &login.identity.user_id;
    let passphrase = match &login.credential {
        Credential::Passphrase(passphrase) => passphrase,
        Credential::SmartCard(card) => {
            // The card's keyslots carry systemd-pkcs11 tokens naming the card.
            let volume = card.with_login(|card| smartcard::disk::unlock(path, &card.token))?;
            return Ok(UserUnlock {
                volume,
                own_slot: true,
            });
        }
    };
    let own = keyslots_of(path, user)?;
    let result = if own.is_empty() {
        luks::unlock(path, passphrase.as_bytes())
    } else {
        luks::unlock_keyslots(path, passphrase.as_bytes(), &own)
    };
    match result {
        Ok(volume) => Ok(UserUnlock {
            volume,
            own_slot: !own.is_empty(),
        }),
        Err(StorageError::WrongPassphrase { .. }) => Err(UserDiskError::NotEnrolled {
            path: path.to_path_buf(),
            user: user.clone(),
        }),
        Err(e) => Err(e.into()),
    }
}
