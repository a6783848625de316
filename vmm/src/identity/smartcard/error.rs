//! [`SmartCardError`]: what can go wrong with a PKCS#11 token. Failures of
//! the credentials themselves (wrong PIN, a card or key not bound to the
//! user, a bad signature) share one console wording so that the console
//! never tells an attacker which part was wrong; [`SmartCardError::reason`]
//! names the exact cause for the audit log. No variant carries a PIN or
//! key material.

use std::path::PathBuf;

use crate::storage::StorageError;

/// The one console message for every rejected credential.
pub const REJECTED: &str =
    "authentication failed: the user, smart card or PIN was not accepted; check them and try again";

#[derive(Debug, thiserror::Error)]
pub enum SmartCardError {
    #[error("cannot load the PKCS#11 module {}: {detail}; give the path of the card's PKCS#11 library (e.g. /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so) with --pkcs11-module", path.display())]
    ModuleLoad { path: PathBuf, detail: String },
    #[error("the PKCS#11 module failed during {operation}: {detail}; check that the card reader works (e.g. `pkcs11-tool --module MODULE --list-slots`)")]
    Module {
        operation: &'static str,
        detail: String,
    },
    #[error("no PKCS#11 module given; name the card's module with --pkcs11-module PATH")]
    NoModule,
    #[error("--key-id {0} is not hex; give the key's CKA_ID as `pkcs11-tool --list-objects` shows it, e.g. --key-id 01")]
    InvalidKeyId(String),
    #[error("no smart card found; insert the card (and with --token-label, check the label)")]
    NoToken,
    #[error("{count} smart cards match; name one with --token-label LABEL")]
    AmbiguousToken { count: usize },
    #[error("{REJECTED}")]
    Rejected(Rejection),
    #[error("the card's user PIN is locked after too many wrong PINs; unlock it with the card's PUK or administrator tool, then try again")]
    PinLocked,
    #[error("the smart card was removed during the operation; insert it and try again")]
    Removed,
    #[error("reading the PIN: {0}")]
    Pin(#[source] StorageError),
    #[error("the key on the card is {0}; securevm supports RSA (2048 bits or more) and EC P-256/P-384 keys")]
    UnsupportedKey(String),
    #[error("no RSA key on the card can decrypt; LUKS keyslots bound to a card need an RSA key (systemd-cryptenroll uses the same scheme)")]
    NoDecryptionKey,
    #[error("{count} RSA keys on the card could be used; choose one with --key-id HEX (see `pkcs11-tool --list-objects`)")]
    AmbiguousKey { count: usize },
    #[error("no keyslot of {} is bound to this smart card; enroll one with `securevm disk enroll-card --pkcs11-module MODULE`, or use the passphrase", path.display())]
    NoCardKeyslot { path: PathBuf },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("OpenSSL failed during {operation}: {detail}")]
    Crypto {
        operation: &'static str,
        detail: String,
    },
}

/// Why a credential was rejected: for the audit log, never the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The PIN did not log in.
    WrongPin,
    /// No token matches the user's binding (label, serial, manufacturer).
    TokenNotBound,
    /// The token holds no private key whose public key or certificate has
    /// the bound fingerprint.
    KeyNotBound,
    /// The token signed, but the signature does not verify with the bound
    /// public key.
    BadSignature,
}

impl Rejection {
    /// A short machine-readable reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::WrongPin => "wrong-pin",
            Rejection::TokenNotBound => "token-not-bound",
            Rejection::KeyNotBound => "key-not-bound",
            Rejection::BadSignature => "bad-signature",
        }
    }
}

impl SmartCardError {
    /// The exact cause, for the audit log (never shown on the console for
    /// rejected credentials).
    pub fn reason(&self) -> String {
        match self {
            SmartCardError::Rejected(rejection) => rejection.as_str().to_string(),
            SmartCardError::PinLocked => "pin-locked".to_string(),
            SmartCardError::NoToken => "no-token".to_string(),
            SmartCardError::Removed => "card-removed".to_string(),
            other => format!("error: {other}"),
        }
    }

    pub(crate) fn module(operation: &'static str) -> impl Fn(cryptoki::error::Error) -> Self {
        move |error| classify(operation, error)
    }

    pub(crate) fn crypto(operation: &'static str) -> impl Fn(openssl::error::ErrorStack) -> Self {
        move |error| SmartCardError::Crypto {
            operation,
            detail: error.to_string(),
        }
    }
}

/// Map PKCS#11 return values that mean something to a user onto their
/// variants; everything else is a module failure.
fn classify(operation: &'static str, error: cryptoki::error::Error) -> SmartCardError {
    use cryptoki::error::{Error, RvError};
    match error {
        Error::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _) => {
            SmartCardError::Rejected(Rejection::WrongPin)
        }
        Error::Pkcs11(RvError::PinLocked, _) => SmartCardError::PinLocked,
        Error::Pkcs11(
            RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed,
            _,
        ) => SmartCardError::Removed,
        other => SmartCardError::Module {
            operation,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use cryptoki::error::{Error, RvError};

    #[test]
    fn credential_failures_share_one_console_message() {
        let messages: Vec<String> = [
            Rejection::WrongPin,
            Rejection::TokenNotBound,
            Rejection::KeyNotBound,
            Rejection::BadSignature,
        ]
        .into_iter()
        .map(|r| SmartCardError::Rejected(r).to_string())
        .collect();
        assert!(messages.iter().all(|m| m == REJECTED), "{messages:?}");
    }

    #[test]
    fn audit_reasons_are_distinct() {
        let wrong_pin = SmartCardError::Rejected(Rejection::WrongPin).reason();
        let wrong_key = SmartCardError::Rejected(Rejection::KeyNotBound).reason();
        assert_eq!(wrong_pin, "wrong-pin");
        assert_eq!(wrong_key, "key-not-bound");
        assert_ne!(wrong_pin, wrong_key);
    }

    #[test]
    fn pkcs11_return_values_are_classified() {
        let pin = classify(
            "login",
            Error::Pkcs11(RvError::PinIncorrect, Function::Login),
        );
        assert!(matches!(pin, SmartCardError::Rejected(Rejection::WrongPin)));
        let locked = classify("login", Error::Pkcs11(RvError::PinLocked, Function::Login));
        assert!(matches!(locked, SmartCardError::PinLocked));
        assert!(locked.to_string().contains("locked"));
        let removed = classify(
            "sign",
            Error::Pkcs11(RvError::DeviceRemoved, Function::Sign),
        );
        assert!(matches!(removed, SmartCardError::Removed));
        let other = classify("sign", Error::Pkcs11(RvError::GeneralError, Function::Sign));
        assert!(matches!(other, SmartCardError::Module { .. }));
    }
}
