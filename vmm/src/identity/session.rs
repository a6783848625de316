//! What happens before the guest exists: open the audit log, accept the
//! signed policy, log the user in and select their role. Each step is
//! recorded (durably) before the next one acts on it, and any failure
//! stops `securevm run` before KVM is touched.
//!
//! Without `--policy` there are no users: no login, and an audit log only
//! with `--audit-log`. With a policy, `--user` is required and the role
//! is the user's; the audit log is `--audit-log` or the policy's sink,
//! and it needs `--audit-key`.

use std::path::PathBuf;
use std::time::SystemTime;

use guest_policy::Policy;

use super::passphrase_login::{PassphraseAuthenticator, PassphraseInput};
use super::smartcard::login::SmartCardAuthenticator;
use super::smartcard::PinSource;
use super::{login, Authenticator, Login, LoginError, RetryDelay};
use crate::audit::{Audit, AuditError, AuditSetupError, Event};
use crate::config::VmConfig;
use crate::display::DisplayHandle;
use crate::policy::{accept_policy, role_for_user, ActiveRole, PolicyLoadError};

/// The state of a started session.
#[derive(Debug)]
pub struct Session {
    pub audit: Audit,
    /// The logged-in user's role; `None` without a policy.
    pub role: Option<ActiveRole>,
    /// The login; `None` without a policy.
    pub login: Option<Login>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    AuditSetup(#[from] AuditSetupError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("policy {} lists the users who may log in: pass --user ID, or --display to have it typed on the login screen (the role comes from the user)", path.display())]
    NoUser { path: PathBuf },
}

impl SessionError {
    /// Whether this is a refused login (its own exit status).
    pub fn is_login_refused(&self) -> bool {
        matches!(self, SessionError::Login(LoginError::Refused { .. }))
    }
}

/// The authenticator for this run: the smart card of `--pkcs11-module`,
/// else the passphrase from `--passphrase-file`, or asked on the display's
/// login screen (`--display`), or on the terminal.
fn authenticator_for(
    config: &VmConfig,
    policy: &Policy,
    display: Option<&DisplayHandle>,
) -> Box<dyn Authenticator> {
    if let Some(card) = &config.card {
        let mut card = card.clone();
        if let (PinSource::Terminal, Some(display)) = (&card.pins, display) {
            card.pins = PinSource::Display(display.clone());
        }
        return Box::new(SmartCardAuthenticator::new(card));
    }
    let input = match (&config.passphrase_file, display) {
        (Some(path), _) => PassphraseInput::File(path.clone()),
        (None, Some(display)) => PassphraseInput::Display(display.clone()),
        (None, None) => PassphraseInput::Terminal,
    };
    Box::new(PassphraseAuthenticator::new(policy, input))
}

/// Opens the audit log, accepts the policy, logs the user in (on the
/// `display`'s login screen when there is one).
pub fn start_session(
    config: &VmConfig,
    delay: RetryDelay,
    display: Option<&DisplayHandle>,
) -> Result<Session, SessionError> {
    let mut audit = match &config.audit.log {
        Some(path) => Audit::open(path, config.audit.key.as_deref())?,
        None => Audit::disabled(),
    };
    let Some(policy_config) = &config.policy else {
        return Ok(Session {
            audit,
            role: None,
            login: None,
        });
    };
    // On the display's login screen the user id may be typed.
    let user_id = config.user.as_deref();
    if user_id.is_none() && display.is_none() {
        return Err(SessionError::NoUser {
            path: policy_config.path.clone(),
        });
    }
    let accepted = match accept_policy(policy_config, SystemTime::now()) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            audit.record(Event::PolicyRefused {
                reason: refusal.to_string(),
            })?;
            return Err(refusal.into());
        }
    };
    audit = audit.open_policy_sink(&accepted.policy.audit, &config.audit, config.seccomp)?;
    audit.record(Event::PolicyAccepted {
        version: accepted.version,
        organisation: accepted.policy.meta.organisation.clone(),
    })?;
    let mut authenticator = authenticator_for(config, &accepted.policy, display);
    let login = login(
        &accepted.policy,
        user_id,
        authenticator.as_mut(),
        delay,
        &audit,
    )?;
    let role = role_for_user(&accepted, &policy_config.path, &login.identity.user_id)?;
    audit.record(Event::RoleSelected {
        role: role.name.clone(),
        policy_version: role.policy_version,
    })?;
    log::info!(
        "user '{}' logged in ({}); policy version {}, role '{}' applies",
        login.identity.user_id,
        login.identity.method.as_str(),
        role.policy_version,
        role.name
    );
    Ok(Session {
        audit,
        role: Some(role),
        login: Some(login),
    })
}
