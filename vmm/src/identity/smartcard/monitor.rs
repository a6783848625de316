//! Card removal locks the session. A monitor thread looks for the user's
//! token every poll interval; when it is gone the VM is paused (a
//! callback: the VMM pauses its vCPUs) and the console says so; when it
//! is back, the PIN is asked again and the same key must sign a new
//! challenge before the VM resumes.
//!
//! Each poll loads and initializes the PKCS#11 module afresh and lists
//! the tokens, then finalizes it. Real readers report removal through
//! CKF_TOKEN_PRESENT anyway, but SoftHSM2 (and other modules that read
//! their token list once, at C_Initialize) only notice a token that
//! appeared or vanished on re-initialization; polling by re-initializing
//! works for both. A failed re-authentication is not retried until the
//! card has been pulled and inserted again: a PIN file with a wrong PIN
//! must not run the card's retry counter down to a lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::error::SmartCardError;
use super::login::CardCredential;
use super::token::{self, Module, PinSource, RetryPolicy, TokenSelector};
use super::{login_with_key, CardLogin};
use crate::audit::{Audit, Event};
use crate::console::ConsoleGate;

/// The console line when the card is pulled.
pub const LOCKED_MESSAGE: &str = "securevm: session locked: smart card removed";
/// The console line when the card is back and verified.
pub const UNLOCKED_MESSAGE: &str = "securevm: session unlocked";
/// How often the card is looked for.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// What the monitor calls: pause the VM, resume it, and hear about every
/// event (for the audit log).
pub struct SessionHooks {
    pub pause: Box<dyn Fn() + Send>,
    pub resume: Box<dyn Fn() + Send>,
    pub event: Box<dyn Fn(&MonitorEvent) + Send>,
}

/// What happened to the session.
#[derive(Debug)]
pub enum MonitorEvent {
    /// The card disappeared; the VM was paused.
    Locked,
    /// The card came back and the user proved possession again.
    Unlocked,
    /// The card came back but re-authentication failed; the VM stays
    /// paused until the card is pulled and inserted again.
    ReauthenticationFailed(SmartCardError),
}

/// Which card to watch and how to re-authenticate.
#[derive(Debug, Clone)]
pub struct WatchedCard {
    pub module: PathBuf,
    pub selector: TokenSelector,
    pub fingerprint: [u8; 32],
    pub pins: PinSource,
    pub retry: RetryPolicy,
    pub poll: Duration,
}

impl WatchedCard {
    /// Watch the card of `login`, re-authenticating with `pins`.
    pub fn of(login: &CardLogin, pins: PinSource, retry: RetryPolicy) -> Self {
        Self {
            module: login.token.module().path().to_path_buf(),
            selector: login.selector(),
            fingerprint: login.fingerprint,
            pins,
            retry,
            poll: DEFAULT_POLL,
        }
    }
}

/// The running monitor; stopped (and its thread joined) when dropped.
pub struct RemovalMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unlocked,
    Locked,
    /// Re-authentication failed: wait for the card to go away first.
    LockedUntilReinserted,
}

impl RemovalMonitor {
    /// Start watching. The module must not be initialized elsewhere in
    /// the process any more (drop the [`CardLogin`] first): the monitor
    /// initializes and finalizes it on every poll.
    ///
    /// The thread runs the card's PKCS#11 module (arbitrary vendor code
    /// that opens files, maps libraries and talks to pcscd), so it gets no
    /// seccomp filter of its own; spawn it before the main thread installs
    /// its filter, which it would otherwise inherit. It never touches guest
    /// memory or anything the guest controls.
    pub fn spawn(card: WatchedCard, hooks: SessionHooks) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("card-monitor".to_string())
            .spawn(move || watch(&card, &hooks, &thread_stop))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop watching and wait for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RemovalMonitor {
    fn drop(&mut self) {
        self.halt();
    }
}

fn watch(card: &WatchedCard, hooks: &SessionHooks, stop: &AtomicBool) {
    let mut state = State::Unlocked;
    while sleep_unless_stopped(card.poll, stop) {
        let present = is_present(card);
        state = match (state, present) {
            (State::Unlocked, false) => {
                (hooks.pause)();
                crate::notice!("{LOCKED_MESSAGE}");
                (hooks.event)(&MonitorEvent::Locked);
                State::Locked
            }
            (State::Locked, true) => match reauthenticate(card) {
                Ok(()) => {
                    (hooks.resume)();
                    crate::notice!("{UNLOCKED_MESSAGE}");
                    (hooks.event)(&MonitorEvent::Unlocked);
                    State::Unlocked
                }
                Err(error) => {
                    crate::notice!("securevm: {error}; the session stays locked: remove the card and insert it again to retry");
                    (hooks.event)(&MonitorEvent::ReauthenticationFailed(error));
                    State::LockedUntilReinserted
                }
            },
            (State::LockedUntilReinserted, false) => State::Locked,
            (unchanged, _) => unchanged,
        };
    }
}

/// Sleep `period` in short steps; false once `stop` is set.
fn sleep_unless_stopped(period: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + period;
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// Whether the watched token is present. A module that fails to load or
/// list counts as "card absent": the session locks rather than stays open.
fn is_present(card: &WatchedCard) -> bool {
    match Module::load(&card.module).and_then(|module| token::find_token(&module, &card.selector)) {
        Ok(_) => true,
        Err(SmartCardError::NoToken) => false,
        Err(e) => {
            log::warn!("card monitor: {e}");
            false
        }
    }
}

fn reauthenticate(card: &WatchedCard) -> Result<(), SmartCardError> {
    let module = Module::load(&card.module)?;
    let (slot, token) = token::find_token(&module, &card.selector)?;
    let logged_in = token::log_in(module, slot, token, &card.pins, card.retry)?;
    login_with_key(logged_in, &card.fingerprint).map(drop)
}

/// Watch the card of `user`'s session: finalize its login (the monitor
/// re-initializes the module), pause and resume the VM with `pause` and
/// `resume` (the vCPU control), and record every lock, unlock and failed
/// re-authentication in `audit`. While the session is locked, `console`
/// withholds what is typed from the guest; a PIN that was asked on the
/// terminal at login is asked through it when the card is back.
pub fn watch_session(
    card: &CardCredential,
    user: &str,
    audit: Audit,
    console: ConsoleGate,
    pause: Box<dyn Fn() + Send>,
    resume: Box<dyn Fn() + Send>,
) -> std::io::Result<RemovalMonitor> {
    drop(card.take_login());
    let mut watched = card.card.clone();
    if watched.pins == PinSource::Terminal {
        watched.pins = PinSource::Console(console.clone());
    }
    let unlock_console = console.clone();
    let pause = Box::new(move || {
        console.lock();
        pause();
    });
    let resume = Box::new(move || {
        unlock_console.unlock();
        resume();
    });
    let user = user.to_string();
    let event = Box::new(move |event: &MonitorEvent| {
        audit.record_or_warn(match event {
            MonitorEvent::Locked => Event::SessionLocked {
                reason: "smart card removed".to_string(),
            },
            MonitorEvent::Unlocked => Event::SessionUnlocked {
                method: "smartcard".to_string(),
            },
            MonitorEvent::ReauthenticationFailed(error) => Event::AuthFailure {
                method: "smartcard".to_string(),
                claimed_user: user.clone(),
                attempt: 1,
                reason: Some(error.reason()),
            },
        })
    });
    RemovalMonitor::spawn(
        watched,
        SessionHooks {
            pause,
            resume,
            event,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_stops_promptly() {
        let stop = AtomicBool::new(true);
        let started = Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(5), &stop));
        assert!(started.elapsed() < Duration::from_secs(1));
        let running = AtomicBool::new(false);
        assert!(sleep_unless_stopped(Duration::from_millis(10), &running));
    }

    #[test]
    fn a_module_that_cannot_load_counts_as_a_removed_card() {
        let card = WatchedCard {
            module: PathBuf::from("/nonexistent/pkcs11.so"),
            selector: TokenSelector::default(),
            fingerprint: [0; 32],
            pins: PinSource::Terminal,
            retry: RetryPolicy::default(),
            poll: DEFAULT_POLL,
        };
        assert!(!is_present(&card));
    }
}
