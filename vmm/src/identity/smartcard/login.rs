//! The smart card as one of the identity framework's login methods:
//! [`SmartCardAuthenticator`] makes one attempt per call (the framework
//! bounds the attempts and waits between them), and a verified card
//! becomes a [`CardCredential`], which opens the user's card-bound disk
//! keyslots and is what the removal monitor watches.

use std::sync::Mutex;

use guest_policy::User;

use super::error::{Rejection, SmartCardError};
use super::monitor::WatchedCard;
use super::token::{self, Module, PinSource, RetryPolicy};
use super::{authenticate, login_with_key, open_token, CardLogin, CardOptions};
use crate::identity::{Attempt, AuthMethod, Authenticator, Credential, LoginError};
use crate::sync::Unpoisoned;

/// PIN attempts at a terminal; a PIN file gets one (it cannot change).
pub const TERMINAL_ATTEMPTS: u32 = 3;

/// A card that proved possession of the user's bound key.
pub struct CardCredential {
    /// The logged-in token, until it is handed over (the removal monitor
    /// re-initializes the module, so the login must be finalized first).
    login: Mutex<Option<CardLogin>>,
    /// How to find and re-authenticate the same card later.
    pub card: WatchedCard,
}

impl std::fmt::Debug for CardCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardCredential")
            .field("token", &self.card.selector)
            .finish_non_exhaustive()
    }
}

impl CardCredential {
    pub fn new(login: CardLogin, pins: PinSource, retry: RetryPolicy) -> Self {
        let card = WatchedCard::of(&login, pins, retry);
        Self {
            login: Mutex::new(Some(login)),
            card,
        }
    }

    /// Run `f` with the logged-in card; after [`Self::take_login`] (a
    /// restarted guest) the card is logged in again with the same PIN
    /// source and must answer a fresh challenge with the same key.
    pub fn with_login<T>(
        &self,
        f: impl FnOnce(&CardLogin) -> Result<T, SmartCardError>,
    ) -> Result<T, SmartCardError> {
        let mut slot = self.login.lock().unpoisoned();
        if slot.is_none() {
            *slot = Some(relogin(&self.card)?);
        }
        match slot.as_ref() {
            Some(login) => f(login),
            None => Err(SmartCardError::NoToken),
        }
    }

    /// Hand the login over (and with it, the module) to be finalized.
    pub fn take_login(&self) -> Option<CardLogin> {
        self.login.lock().unpoisoned().take()
    }
}

fn relogin(card: &WatchedCard) -> Result<CardLogin, SmartCardError> {
    let module = Module::load(&card.module)?;
    let (slot, token) = token::find_token(&module, &card.selector)?;
    let logged_in = token::log_in(module, slot, token, &card.pins, card.retry)?;
    login_with_key(logged_in, &card.fingerprint)
}

/// Logs policy users in with their smart card.
pub struct SmartCardAuthenticator {
    options: CardOptions,
    last_rejection: Option<Rejection>,
}

impl SmartCardAuthenticator {
    pub fn new(options: CardOptions) -> Self {
        Self {
            options,
            last_rejection: None,
        }
    }

    /// Why the last attempt was rejected, for the audit log.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection
    }

    fn one_attempt(&self, user: Option<&User>) -> Result<CardLogin, SmartCardError> {
        let once = CardOptions {
            retry: RetryPolicy {
                max_attempts: 1,
                ..self.options.retry
            },
            ..self.options.clone()
        };
        match user.and_then(|user| user.smartcard.as_ref()) {
            Some(binding) => authenticate(&once, binding),
            // An unknown user, or one without a card: the PIN is still
            // asked, so the console cannot tell which part was wrong.
            None => {
                open_token(&once)?;
                Err(SmartCardError::Rejected(Rejection::TokenNotBound))
            }
        }
    }
}

impl Authenticator for SmartCardAuthenticator {
    fn method(&self) -> AuthMethod {
        AuthMethod::SmartCard
    }

    fn max_attempts(&self) -> u32 {
        match self.options.pins {
            PinSource::Terminal | PinSource::Console(_) | PinSource::Display(_) => {
                TERMINAL_ATTEMPTS
            }
            PinSource::File(_) => 1,
        }
    }

    fn attempt(&mut self, _user_id: &str, user: Option<&User>) -> Result<Attempt, LoginError> {
        self.last_rejection = None;
        match self.one_attempt(user) {
            Ok(login) => Ok(Attempt::Verified(Credential::SmartCard(Box::new(
                CardCredential::new(login, self.options.pins.clone(), self.options.retry),
            )))),
            Err(SmartCardError::Rejected(rejection)) => {
                log::info!("smart card login rejected: {}", rejection.as_str());
                self.last_rejection = Some(rejection);
                Ok(Attempt::Rejected)
            }
            Err(e) => Err(LoginError::Input(e.to_string())),
        }
    }

    fn rejection_reason(&self) -> Option<String> {
        self.last_rejection.map(|r| r.as_str().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn options(pins: PinSource) -> CardOptions {
        CardOptions {
            module: PathBuf::from("/nonexistent/pkcs11.so"),
            token_label: None,
            pins,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn a_pin_file_gets_one_attempt_a_terminal_three() {
        let file = SmartCardAuthenticator::new(options(PinSource::File("/p".into())));
        assert_eq!(file.max_attempts(), 1);
        let terminal = SmartCardAuthenticator::new(options(PinSource::Terminal));
        assert_eq!(terminal.max_attempts(), TERMINAL_ATTEMPTS);
        assert_eq!(terminal.method(), AuthMethod::SmartCard);
    }

    #[test]
    fn a_missing_module_is_an_input_error_not_a_rejection() {
        let mut authenticator = SmartCardAuthenticator::new(options(PinSource::Terminal));
        let result = authenticator.attempt("alice", None);
        assert!(matches!(result, Err(LoginError::Input(_))), "{result:?}");
        assert_eq!(authenticator.rejection_reason(), None);
    }
}
