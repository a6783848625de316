//! [`PassphraseAuthenticator`]: a user proves who they are with the
//! passphrase whose Argon2id hash the signed policy holds (PHC string,
//! verified by the `argon2` crate, which compares in constant time).
//!
//! The passphrase comes from the terminal without echo (3 attempts) or
//! from `--passphrase-file` (1 attempt; one trailing newline ignored),
//! read by the same code as disk passphrases. A user id the policy does
//! not know, or a user without a passphrase, is verified against a dummy
//! hash with the policy's Argon2 cost, so the time taken does not tell an
//! attacker which user ids exist.

use std::path::PathBuf;

use guest_policy::{Policy, User};

use super::{Attempt, AuthMethod, Authenticator, Credential, LoginError};
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};

/// Attempts allowed when a person types the passphrase.
pub const TERMINAL_ATTEMPTS: u32 = 3;
/// Attempts allowed with a passphrase file: it cannot change between tries.
pub const FILE_ATTEMPTS: u32 = 1;

/// The cheapest cost `guest-policy` accepts, for a policy with no
/// passphrase users at all.
const MINIMUM_COST: &str = "m=65536,t=3,p=1";
/// 16 zero bytes and 32 zero bytes in unpadded base64: a well-formed salt
/// and hash that no passphrase produces in practice.
const DUMMY_SALT: &str = "AAAAAAAAAAAAAAAAAAAAAA";
const DUMMY_HASH: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Where the passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseInput {
    Terminal,
    File(PathBuf),
}

pub struct PassphraseAuthenticator {
    input: PassphraseInput,
    dummy_phc: String,
}

impl PassphraseAuthenticator {
    pub fn new(policy: &Policy, input: PassphraseInput) -> PassphraseAuthenticator {
        PassphraseAuthenticator {
            input,
            dummy_phc: dummy_phc(policy),
        }
    }
}

/// A valid Argon2id PHC string with the cost of the policy's first
/// passphrase hash (the cost dominates verification time).
fn dummy_phc(policy: &Policy) -> String {
    let cost = policy
        .users
        .iter()
        .filter_map(|user| user.passphrase_hash.as_deref())
        .find_map(|phc| phc.split('$').nth(3))
        .unwrap_or(MINIMUM_COST);
    format!("$argon2id$v=19${cost}${DUMMY_SALT}${DUMMY_HASH}")
}

#[cfg(test)]
pub(super) fn dummy_phc_for_tests(policy: &Policy) -> String {
    dummy_phc(policy)
}

impl Authenticator for PassphraseAuthenticator {
    fn method(&self) -> AuthMethod {
        AuthMethod::Passphrase
    }

    fn max_attempts(&self) -> u32 {
        match self.input {
            PassphraseInput::Terminal => TERMINAL_ATTEMPTS,
            PassphraseInput::File(_) => FILE_ATTEMPTS,
        }
    }

    fn attempt(&mut self, user_id: &str, user: Option<&User>) -> Result<Attempt, LoginError> {
        let prompt = format!("Passphrase for {user_id}: ");
        let source = match &self.input {
            PassphraseInput::Terminal => PassphraseSource::Terminal {
                prompt: &prompt,
                confirm: false,
            },
            PassphraseInput::File(path) => PassphraseSource::File(path),
        };
        let passphrase = read_passphrase(source).map_err(|e| LoginError::Input(e.to_string()))?;
        let hash = user.and_then(|user| user.passphrase_hash.as_deref());
        let verified = guest_policy::passphrase_hash::verify(
            passphrase.as_bytes(),
            hash.unwrap_or(&self.dummy_phc),
        );
        Ok(if verified && hash.is_some() {
            Attempt::Verified(Credential::Passphrase(passphrase))
        } else {
            Attempt::Rejected
        })
    }
}
