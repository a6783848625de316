//! [`PassphraseAuthenticator`]: a user proves who they are with the
//! passphrase whose Argon2id hash the signed policy holds (PHC string,
//! verified by the `argon2` crate, which compares in constant time).
//!
//! The passphrase comes from the terminal without echo (3 attempts), from
//! securevm's login screen on the display (3 attempts; the user id is
//! typed there too when `--user` is not given), or from
//! `--passphrase-file` (1 attempt; one trailing newline ignored), read by
//! the same code as disk passphrases. A user id the policy does
//! not know, or a user without a passphrase, is verified against a dummy
//! hash with the policy's Argon2 cost, so the time taken does not tell an
//! attacker which user ids exist.

use std::path::PathBuf;

use guest_policy::{Policy, User};

use std::time::Duration;

use super::{Attempt, AuthMethod, Authenticator, Credential, LoginError};
use crate::display::{Answer, DisplayHandle, FieldSpec, Question};
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};
use crate::storage::secret::SecretBuf;

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
    /// securevm's login screen on the display (`--display`): the viewer's
    /// keys, never the guest's.
    Display(DisplayHandle),
}

/// How long the login screen waits for someone to answer.
const DISPLAY_LOGIN_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
const LOGIN_TITLE: &str = "securevm: log in";

pub struct PassphraseAuthenticator {
    input: PassphraseInput,
    dummy_phc: String,
    /// The passphrase typed on the login screen with the user id, for
    /// the attempt that follows.
    typed: Option<SecretBuf>,
    /// The screen says why it asks again.
    retry_message: Option<&'static str>,
}

impl PassphraseAuthenticator {
    pub fn new(policy: &Policy, input: PassphraseInput) -> PassphraseAuthenticator {
        PassphraseAuthenticator {
            input,
            dummy_phc: dummy_phc(policy),
            typed: None,
            retry_message: None,
        }
    }

    /// Asks the login screen for `fields`.
    fn ask(
        &self,
        display: &DisplayHandle,
        fields: Vec<FieldSpec>,
    ) -> Result<Vec<Answer>, LoginError> {
        let question = Question {
            title: LOGIN_TITLE.to_string(),
            fields,
            message: self.retry_message.map(str::to_string),
        };
        display
            .ask(question, DISPLAY_LOGIN_TIMEOUT)
            .map_err(|e| LoginError::Input(e.to_string()))
    }

    /// The passphrase for `user_id`: typed on the screen with the user id,
    /// or asked now.
    fn read(&mut self, user_id: &str) -> Result<SecretBuf, LoginError> {
        let prompt = format!("Passphrase for {user_id}: ");
        let source = match &self.input {
            PassphraseInput::Terminal => PassphraseSource::Terminal {
                prompt: &prompt,
                confirm: false,
            },
            PassphraseInput::File(path) => PassphraseSource::File(path),
            PassphraseInput::Display(display) => {
                if let Some(typed) = self.typed.take() {
                    return Ok(typed);
                }
                let display = display.clone();
                let fields = vec![FieldSpec {
                    label: format!("Passphrase for {user_id}"),
                    secret: true,
                }];
                return match self.ask(&display, fields)?.pop() {
                    Some(Answer::Secret(secret)) => Ok(secret),
                    _ => Err(LoginError::Input(
                        "the login screen gave no passphrase".into(),
                    )),
                };
            }
        };
        read_passphrase(source).map_err(|e| LoginError::Input(e.to_string()))
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
            PassphraseInput::Terminal | PassphraseInput::Display(_) => TERMINAL_ATTEMPTS,
            PassphraseInput::File(_) => FILE_ATTEMPTS,
        }
    }

    fn claimed_user(&mut self) -> Result<Option<String>, LoginError> {
        let PassphraseInput::Display(display) = &self.input else {
            return Ok(None);
        };
        let display = display.clone();
        let fields = vec![
            FieldSpec {
                label: "User".to_string(),
                secret: false,
            },
            FieldSpec {
                label: "Passphrase".to_string(),
                secret: true,
            },
        ];
        let mut answers = self.ask(&display, fields)?.into_iter();
        match (answers.next(), answers.next()) {
            (Some(Answer::Text(user_id)), Some(Answer::Secret(passphrase))) => {
                self.typed = Some(passphrase);
                Ok(Some(user_id))
            }
            _ => Err(LoginError::Input("the login screen gave no answer".into())),
        }
    }

    fn rejected(&mut self, wait: Duration) {
        if let PassphraseInput::Display(display) = &self.input {
            let seconds = wait.as_secs().max(1);
            display.notice(
                LOGIN_TITLE,
                &format!("The user id or the passphrase is wrong. Wait {seconds} s."),
            );
            self.retry_message = Some("The user id or the passphrase was wrong: try again.");
        }
    }

    fn attempt(&mut self, user_id: &str, user: Option<&User>) -> Result<Attempt, LoginError> {
        let passphrase = self.read(user_id)?;
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
