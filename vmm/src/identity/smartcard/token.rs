//! Loading a PKCS#11 module, finding the token (card) a user means, and
//! logging in to it with the PIN. The PIN is read into locked memory,
//! handed to the token and wiped; it never goes anywhere else.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use secrecy::SecretBox;

use super::error::{Rejection, SmartCardError};
use crate::console::ConsoleGate;
use crate::display::{Answer, DisplayHandle, FieldSpec, Question};
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};
use crate::storage::secret::SecretBuf;
use crate::storage::StorageError;

/// An initialized PKCS#11 module; finalized when dropped.
pub struct Module {
    context: Option<Pkcs11>,
    path: PathBuf,
}

impl Module {
    /// Load and initialize the module at `path`.
    pub fn load(path: &Path) -> Result<Self, SmartCardError> {
        let load_error = |detail: String| SmartCardError::ModuleLoad {
            path: path.to_path_buf(),
            detail,
        };
        if !path.exists() {
            return Err(load_error("no such file".to_string()));
        }
        let context = Pkcs11::new(path).map_err(|e| load_error(e.to_string()))?;
        context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| load_error(e.to_string()))?;
        Ok(Self {
            context: Some(context),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn context(&self) -> &Pkcs11 {
        // Only Drop takes the context out.
        self.context
            .as_ref()
            .expect("the module context lives until drop")
    }

    /// Every slot that holds a token, with the token's identification.
    pub fn tokens(&self) -> Result<Vec<(Slot, TokenDescription)>, SmartCardError> {
        let context = self.context();
        let slots = context
            .get_slots_with_token()
            .map_err(SmartCardError::module("listing the card slots"))?;
        let mut tokens = Vec::new();
        for slot in slots {
            match context.get_token_info(slot) {
                Ok(info) if info.token_initialized() => tokens.push((
                    slot,
                    TokenDescription {
                        label: info.label().trim_end().to_string(),
                        serial: info.serial_number().trim_end().to_string(),
                        manufacturer: info.manufacturer_id().trim_end().to_string(),
                        model: info.model().trim_end().to_string(),
                    },
                )),
                Ok(_) => {}
                // A card pulled between the two calls is simply not there.
                Err(e) => log::debug!("skipping slot {slot}: {e}"),
            }
        }
        Ok(tokens)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(context) = self.context.take() {
            if let Err(e) = context.finalize() {
                log::debug!("finalizing the PKCS#11 module: {e}");
            }
        }
    }
}

/// A token's identification as PKCS#11 reports it (padding removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDescription {
    pub label: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
}

/// Which token to use: every given attribute must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSelector {
    pub label: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
}

impl TokenSelector {
    pub fn matches(&self, token: &TokenDescription) -> bool {
        let same = |wanted: &Option<String>, actual: &str| {
            wanted.as_deref().is_none_or(|wanted| wanted == actual)
        };
        same(&self.label, &token.label)
            && same(&self.serial, &token.serial)
            && same(&self.manufacturer, &token.manufacturer)
    }

    /// The selector of a policy binding. `--token-label` only chooses
    /// among tokens when the binding names no label: it never overrides
    /// the administrator's binding.
    pub fn for_binding(
        binding: &guest_policy::model::SmartCardBinding,
        label: Option<&str>,
    ) -> Self {
        Self {
            label: binding
                .token_label
                .clone()
                .or_else(|| label.map(str::to_string)),
            serial: binding.token_serial.clone(),
            manufacturer: binding.manufacturer.clone(),
        }
    }
}

/// The one token that `selector` picks among those present.
pub fn find_token(
    module: &Module,
    selector: &TokenSelector,
) -> Result<(Slot, TokenDescription), SmartCardError> {
    let mut matching: Vec<_> = module
        .tokens()?
        .into_iter()
        .filter(|(_, token)| selector.matches(token))
        .collect();
    match matching.len() {
        0 => Err(SmartCardError::NoToken),
        1 => Ok(matching.remove(0)),
        count => Err(SmartCardError::AmbiguousToken { count }),
    }
}

/// Where PINs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// Ask on the controlling terminal, without echo.
    Terminal,
    /// Read this file (one trailing newline ignored), for automation.
    File(PathBuf),
    /// Ask on the guest console while the VM runs (the console input
    /// thread owns the terminal then): re-authentication after the card
    /// was pulled and inserted again.
    Console(ConsoleGate),
    /// Ask on securevm's screen on the display (`--display`), at login
    /// and when the card is back after a lock: the viewer's keys, never
    /// the guest's.
    Display(DisplayHandle),
}

/// How long securevm's screen waits for a PIN: a person may come back to
/// a locked machine much later.
const DISPLAY_PIN_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a PIN asked on the console may take to be typed.
const CONSOLE_PIN_TIMEOUT: Duration = Duration::from_secs(120);

impl PinSource {
    /// Read one PIN for `token`.
    pub fn read(&self, token: &TokenDescription) -> Result<SecretBuf, SmartCardError> {
        let prompt = format!("PIN for smart card '{}': ", token.label);
        let source = match self {
            PinSource::Terminal => PassphraseSource::Terminal {
                prompt: &prompt,
                confirm: false,
            },
            PinSource::File(path) => PassphraseSource::File(path),
            PinSource::Console(gate) => {
                return gate
                    .read_pin(&prompt, CONSOLE_PIN_TIMEOUT)
                    .map_err(|e| SmartCardError::Pin(StorageError::Passphrase(e.to_string())));
            }
            PinSource::Display(display) => return read_pin_on_display(display, token),
        };
        read_passphrase(source).map_err(SmartCardError::Pin)
    }

    /// Whether asking again can give a different PIN.
    fn can_retry(&self) -> bool {
        matches!(
            self,
            PinSource::Terminal | PinSource::Console(_) | PinSource::Display(_)
        )
    }
}

fn read_pin_on_display(
    display: &DisplayHandle,
    token: &TokenDescription,
) -> Result<SecretBuf, SmartCardError> {
    let question = Question {
        title: "securevm: smart card".to_string(),
        fields: vec![FieldSpec {
            label: format!("PIN for smart card '{}'", token.label),
            secret: true,
        }],
        message: None,
    };
    let failed = |reason: String| SmartCardError::Pin(StorageError::Passphrase(reason));
    match display.ask(question, DISPLAY_PIN_TIMEOUT) {
        Ok(mut answers) => match answers.pop() {
            Some(Answer::Secret(pin)) => Ok(pin),
            _ => Err(failed("the screen gave no PIN".to_string())),
        },
        Err(e) => Err(failed(e.to_string())),
    }
}

/// How many PINs one login may try, and how long to wait after each
/// wrong one (doubling). The card keeps its own counter and locks itself;
/// securevm never tries a PIN once the card says it is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            first_delay: Duration::from_secs(1),
        }
    }
}

/// A session on a token, logged in as the user. Fields drop in order:
/// the session closes before the module is finalized.
pub struct LoggedIn {
    pub(crate) session: Session,
    pub(crate) slot: Slot,
    pub(crate) token: TokenDescription,
    pub(crate) module: Module,
}

impl LoggedIn {
    pub fn token(&self) -> &TokenDescription {
        &self.token
    }

    pub fn slot(&self) -> Slot {
        self.slot
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }
}

/// Open a session on `slot` and log in with PINs from `pins`, at most
/// `retry.max_attempts` of them (one for a PIN file). Every wrong PIN
/// prints the same message as any other rejected credential.
pub fn log_in(
    module: Module,
    slot: Slot,
    token: TokenDescription,
    pins: &PinSource,
    retry: RetryPolicy,
) -> Result<LoggedIn, SmartCardError> {
    let attempts = if pins.can_retry() {
        retry.max_attempts.max(1)
    } else {
        1
    };
    let mut delay = retry.first_delay;
    for attempt in 1..=attempts {
        check_pin_state(&module, slot)?;
        let session = module
            .context()
            .open_ro_session(slot)
            .map_err(SmartCardError::module("opening a session"))?;
        let pin = pins.read(&token)?;
        let raw: RawAuthPin = SecretBox::new(Box::new(pin.as_bytes().to_vec()));
        drop(pin);
        match session.login_with_raw(UserType::User, &raw) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {
                return Ok(LoggedIn {
                    session,
                    slot,
                    token,
                    module,
                })
            }
            Err(e) => {
                let error = SmartCardError::module("logging in")(e);
                if !matches!(error, SmartCardError::Rejected(Rejection::WrongPin))
                    || attempt == attempts
                {
                    return Err(error);
                }
                crate::notice!("securevm: {error}");
                thread::sleep(delay);
                delay = delay.saturating_mul(2);
            }
        }
    }
    Err(SmartCardError::Rejected(Rejection::WrongPin))
}

/// Refuse to try a PIN on a locked card, and warn when the card is close
/// to locking itself.
fn check_pin_state(module: &Module, slot: Slot) -> Result<(), SmartCardError> {
    let info = module
        .context()
        .get_token_info(slot)
        .map_err(SmartCardError::module("reading the card state"))?;
    if info.user_pin_locked() {
        return Err(SmartCardError::PinLocked);
    }
    if info.user_pin_final_try() {
        crate::notice!(
            "securevm: warning: the card allows one more PIN try before it locks itself"
        );
    } else if info.user_pin_count_low() {
        crate::notice!("securevm: warning: a wrong PIN was entered on this card before; few tries remain before it locks itself");
    }
    Ok(())
}

impl std::fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIn")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("path", &self.path).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(label: &str, serial: &str) -> TokenDescription {
        TokenDescription {
            label: label.into(),
            serial: serial.into(),
            manufacturer: "SoftHSM project".into(),
            model: "SoftHSM v2".into(),
        }
    }

    #[test]
    fn selector_matches_every_given_attribute() {
        let alice = token("Alice", "0001");
        assert!(TokenSelector::default().matches(&alice));
        let by_label = TokenSelector {
            label: Some("Alice".into()),
            ..Default::default()
        };
        assert!(by_label.matches(&alice));
        assert!(!by_label.matches(&token("Bob", "0001")));
        let by_both = TokenSelector {
            label: Some("Alice".into()),
            serial: Some("0002".into()),
            manufacturer: None,
        };
        assert!(!by_both.matches(&alice));
    }

    #[test]
    fn command_line_label_never_overrides_a_binding() {
        let mut binding = guest_policy::model::SmartCardBinding {
            token_label: Some("Alice".into()),
            token_serial: Some("0001".into()),
            manufacturer: None,
            public_key_sha256: [0; 32],
        };
        let selector = TokenSelector::for_binding(&binding, Some("Mallory"));
        assert_eq!(selector.label.as_deref(), Some("Alice"));
        assert_eq!(selector.serial.as_deref(), Some("0001"));
        binding.token_label = None;
        let selector = TokenSelector::for_binding(&binding, Some("Alice 2"));
        assert_eq!(selector.label.as_deref(), Some("Alice 2"));
    }

    #[test]
    fn a_missing_module_is_reported_with_its_path() {
        let error = Module::load(Path::new("/nonexistent/pkcs11.so")).expect_err("no module there");
        let text = error.to_string();
        assert!(text.contains("/nonexistent/pkcs11.so"), "{text}");
        assert!(text.contains("--pkcs11-module"), "{text}");
    }
}
