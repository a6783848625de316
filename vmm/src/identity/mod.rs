//! Who is at the keyboard: before any guest instruction runs, one user
//! listed in the signed policy proves who they are, and the [`Identity`]
//! that results selects the role (the storage and network rules) and the
//! disk keyslots, and is written into every audit record.
//!
//! The login loop ([`login`]) is independent of how a credential is
//! checked: an [`Authenticator`] makes one attempt at a time (the
//! passphrase one is [`passphrase_login::PassphraseAuthenticator`]; a smart card
//! plugs in the same way). The loop bounds the attempts (3 at a terminal,
//! 1 from a file), waits longer after each failure (1 s, 2 s, 4 s, ...),
//! records every success and failure in the audit log (never the secret),
//! and after the bound refuses to start with [`LoginError::Refused`],
//! whose message never says whether the user id or the credential was
//! wrong. Authenticators must cost the same for unknown users (the
//! passphrase one verifies against a dummy hash of the same cost).
//!
//! Nothing here touches KVM, so all of it is unit-tested on any host.

pub mod disk;
pub mod enroll;
pub mod passphrase_login;
pub mod session;
pub mod smartcard;

use std::time::Duration;

use guest_policy::{Policy, User};

use crate::audit::{record::looks_like_user_id, Audit, AuditError, Event};
use crate::storage::secret::SecretBuf;

/// Who logged in. Public so that the rest of the VMM (status, audit)
/// can show it; it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The policy's user id.
    pub user_id: String,
    /// The policy role whose rules apply to the session.
    pub role: String,
    /// How the user proved it.
    pub method: AuthMethod,
}

/// How a user authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The passphrase whose Argon2id hash the policy holds.
    Passphrase,
    /// A PKCS#11 smart card holding the key the policy binds to the user.
    SmartCard,
}

impl AuthMethod {
    /// The name used in audit records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Passphrase => "passphrase",
            AuthMethod::SmartCard => "smartcard",
        }
    }
}

/// The secret a user proved their identity with, kept (in locked,
/// zeroized memory) only until the disks are open: it also opens the
/// user's own LUKS keyslot.
#[derive(Debug)]
pub enum Credential {
    Passphrase(SecretBuf),
    SmartCard(Box<smartcard::login::CardCredential>),
}

/// A successful login.
#[derive(Debug)]
pub struct Login {
    pub identity: Identity,
    pub credential: Credential,
}

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// The credential is right for this user.
    Verified(Credential),
    /// Wrong user id or wrong credential (deliberately not saying which).
    Rejected,
}

/// One way of proving who you are.
pub trait Authenticator {
    fn method(&self) -> AuthMethod;
    /// How many attempts the login loop allows.
    fn max_attempts(&self) -> u32;
    /// Reads a credential and checks it against `user` (`None`: the
    /// policy has no such user; the check must then cost the same as for
    /// a real user and reject). An `Err` is a problem reading input, not
    /// a wrong credential.
    fn attempt(&mut self, user_id: &str, user: Option<&User>) -> Result<Attempt, LoginError>;
    /// The user id someone claims for the next attempt, when none was
    /// given beforehand (no `--user`): only an authenticator that asks a
    /// person on securevm's screen can say.
    fn claimed_user(&mut self) -> Result<Option<String>, LoginError> {
        Ok(None)
    }
    /// The last attempt was rejected; `wait` passes before anything else
    /// happens (the next attempt, or the refusal).
    fn rejected(&mut self, _wait: Duration) {}
    /// Why the last attempt was rejected, for the audit log only (the
    /// console never says).
    fn rejection_reason(&self) -> Option<String> {
        None
    }
}

/// The growing wait after failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryDelay {
    /// Wait after the first failure; it doubles after each further one.
    pub first: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryDelay {
    /// The wait after failure number `failures` (1-based).
    pub fn after(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Exit status when login is refused (see `crate::exit`).
pub use crate::exit::EXIT_LOGIN_REFUSED;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("login refused after {attempts} failed attempt(s): the user id or the credential is wrong; the VM was not started")]
    Refused { attempts: u32 },
    #[error("cannot read the credential: {0}")]
    Input(String),
    #[error("the audit log could not record the login, so it is refused: {0}")]
    Audit(#[from] AuditError),
}

/// Text safe to write as the user id someone claimed.
fn claimed(user_id: &str) -> String {
    if looks_like_user_id(user_id) {
        user_id.to_string()
    } else {
        "<not a user id>".to_string()
    }
}

/// Authenticates `user_id` (or, without one, whoever the authenticator
/// asks for at each attempt) against `policy` with `authenticator`,
/// recording each attempt in `audit`; on success the audit log
/// attributes later records to the user.
pub fn login(
    policy: &Policy,
    user_id: Option<&str>,
    authenticator: &mut dyn Authenticator,
    delay: RetryDelay,
    audit: &Audit,
) -> Result<Login, LoginError> {
    let method = authenticator.method();
    let attempts = authenticator.max_attempts().max(1);
    let mut last_claimed = user_id.unwrap_or_default().to_string();
    for attempt in 1..=attempts {
        let claimed_id = match user_id {
            Some(id) => id.to_string(),
            None => authenticator
                .claimed_user()?
                .ok_or_else(|| LoginError::Input("no user id was given".to_string()))?,
        };
        let user = policy.user(&claimed_id);
        match authenticator.attempt(&claimed_id, user)? {
            Attempt::Verified(credential) => {
                // `Verified` is only possible for a user the policy knows.
                let Some(user) = user else {
                    return Err(LoginError::Refused { attempts: attempt });
                };
                audit.set_user(Some(&user.id));
                audit.record(Event::AuthSuccess {
                    method: method.as_str().into(),
                    attempt,
                })?;
                return Ok(Login {
                    identity: Identity {
                        user_id: user.id.clone(),
                        role: user.role.clone(),
                        method,
                    },
                    credential,
                });
            }
            Attempt::Rejected => {
                audit.record(Event::AuthFailure {
                    method: method.as_str().into(),
                    claimed_user: claimed(&claimed_id),
                    attempt,
                    reason: authenticator.rejection_reason(),
                })?;
                eprintln!("securevm: login failed: the user id or the credential is wrong");
                // Also after the last attempt: a script that restarts
                // securevm pays the wait too.
                let wait = delay.after(attempt);
                authenticator.rejected(wait);
                std::thread::sleep(wait);
                last_claimed = claimed_id;
            }
        }
    }
    audit.record(Event::AuthLockout {
        method: method.as_str().into(),
        claimed_user: claimed(&last_claimed),
        attempts,
    })?;
    Err(LoginError::Refused { attempts })
}

#[cfg(test)]
mod enroll_tests;
#[cfg(test)]
mod tests;
