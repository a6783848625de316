//! The gate between the terminal and the guest while a session is locked.
//!
//! When the user's smart card is pulled the vCPUs stop, but the console
//! input thread keeps reading the terminal: what is typed then must not
//! pile up in the UART for the guest to receive on unlock (a locked
//! workstation takes no input). When the card is back its PIN has to be
//! asked again, and the input thread owns the terminal (raw mode, stdin),
//! so the card monitor cannot read the PIN itself: it asks the gate, and
//! the input thread diverts the next line typed into it. The PIN never
//! reaches the guest and is never echoed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::storage::secret::SecretBuf;

/// Longer PINs are cut off: real cards take at most a few dozen digits.
const MAX_PIN_LEN: usize = 256;
const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7f;
const CTRL_C: u8 = 0x03;
const CTRL_U: u8 = 0x15;

/// Why no PIN came from the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinEntryError {
    #[error("no PIN was typed within {0} s")]
    TimedOut(u64),
    #[error("PIN entry cancelled with Ctrl-C")]
    Cancelled,
    #[error("the console has no input (stdin is closed); pass --pin-file FILE to unlock without a terminal")]
    NoInput,
}

/// Shared by the console input thread and whoever locks the session.
#[derive(Clone, Default)]
pub struct ConsoleGate {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConsoleGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleGate")
    }
}

/// Two handles are equal when they are the same gate.
impl PartialEq for ConsoleGate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for ConsoleGate {}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    answered: Condvar,
}

#[derive(Default)]
struct State {
    locked: bool,
    input_closed: bool,
    /// The PIN being typed, while one is asked for.
    capture: Option<Zeroizing<Vec<u8>>>,
    answer: Option<Result<Zeroizing<Vec<u8>>, PinEntryError>>,
}

impl ConsoleGate {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on input is withheld from the guest.
    pub fn lock(&self) {
        self.state().locked = true;
    }

    /// Input reaches the guest again.
    pub fn unlock(&self) {
        let mut state = self.state();
        state.locked = false;
        state.capture = None;
    }

    pub fn is_locked(&self) -> bool {
        self.state().locked
    }

    /// Whether a PIN is being asked for right now.
    pub fn is_asking(&self) -> bool {
        self.state().capture.is_some()
    }

    /// The console input thread's view: of `input`, what goes to the guest.
    /// While a PIN is asked for, input goes into it up to Enter; while the
    /// session is locked, everything else is dropped.
    pub fn filter_input(&self, input: &[u8]) -> Vec<u8> {
        let mut state = self.state();
        if state.capture.is_none() {
            return if state.locked {
                Vec::new()
            } else {
                input.to_vec()
            };
        }
        for &byte in input {
            let Some(pin) = state.capture.as_mut() else {
                break;
            };
            match byte {
                b'\r' | b'\n' => {
                    let pin = state.capture.take().unwrap_or_default();
                    state.answer = Some(Ok(pin));
                }
                CTRL_C => {
                    state.capture = None;
                    state.answer = Some(Err(PinEntryError::Cancelled));
                }
                BACKSPACE | DELETE => {
                    pin.pop();
                }
                CTRL_U => pin.clear(),
                printable if printable >= 0x20 && pin.len() < MAX_PIN_LEN => pin.push(printable),
                _ => {}
            }
        }
        if state.answer.is_some() {
            self.shared.answered.notify_all();
        }
        Vec::new()
    }

    /// The console input thread reached end of input: nobody can type a PIN.
    pub fn input_closed(&self) {
        let mut state = self.state();
        state.input_closed = true;
        if state.capture.take().is_some() {
            state.answer = Some(Err(PinEntryError::NoInput));
        }
        self.shared.answered.notify_all();
    }

    /// Ask for a PIN on the console: print `prompt`, then wait up to
    /// `timeout` for a line typed at the terminal.
    pub fn read_pin(&self, prompt: &str, timeout: Duration) -> Result<SecretBuf, PinEntryError> {
        let mut state = self.state();
        if state.input_closed {
            return Err(PinEntryError::NoInput);
        }
        // Room for the longest PIN up front: a growing Vec would leave
        // copies of the digits typed so far in freed, unwiped memory.
        state.capture = Some(Zeroizing::new(Vec::with_capacity(MAX_PIN_LEN)));
        state.answer = None;
        // The terminal is in raw mode: start at the left margin.
        eprint!("\r\n{prompt}");
        let deadline = Instant::now() + timeout;
        while state.answer.is_none() {
            let now = Instant::now();
            if now >= deadline {
                state.capture = None;
                eprint!("\r\n");
                return Err(PinEntryError::TimedOut(timeout.as_secs()));
            }
            state = self
                .shared
                .answered
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        eprint!("\r\n");
        let answer = state.answer.take().unwrap_or(Err(PinEntryError::NoInput));
        answer.map(|pin| SecretBuf::from_slice(&pin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// Ask for a PIN on another thread and feed `typed` once it waits.
    fn typed_pin(gate: &ConsoleGate, typed: &[&[u8]]) -> Result<Vec<u8>, PinEntryError> {
        let asker = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.read_pin("PIN: ", Duration::from_secs(10))
                    .map(|pin| pin.as_bytes().to_vec())
            })
        };
        while gate.state().capture.is_none() {
            thread::sleep(Duration::from_millis(1));
        }
        for chunk in typed {
            assert!(
                gate.filter_input(chunk).is_empty(),
                "PIN input leaked to the guest"
            );
        }
        asker.join().unwrap()
    }

    #[test]
    fn input_passes_while_unlocked() {
        let gate = ConsoleGate::new();
        assert_eq!(gate.filter_input(b"ls\r"), b"ls\r");
    }

    #[test]
    fn input_is_dropped_while_locked_and_flows_after_unlock() {
        let gate = ConsoleGate::new();
        gate.lock();
        assert!(gate.is_locked());
        assert!(gate
            .filter_input(b"secret typed at a locked screen")
            .is_empty());
        gate.unlock();
        assert_eq!(gate.filter_input(b"x"), b"x");
    }

    #[test]
    fn a_line_typed_becomes_the_pin_and_never_reaches_the_guest() {
        let gate = ConsoleGate::new();
        gate.lock();
        assert_eq!(typed_pin(&gate, &[b"12", b"34\r"]).unwrap(), b"1234");
        // What follows the PIN is withheld too: the session is still locked.
        assert!(gate.filter_input(b"after").is_empty());
    }

    #[test]
    fn backspace_and_ctrl_u_edit_the_pin_and_control_bytes_are_ignored() {
        let gate = ConsoleGate::new();
        assert_eq!(typed_pin(&gate, &[b"19\x7f2\x08\x0034\n"]).unwrap(), b"134");
        assert_eq!(
            typed_pin(&gate, &[b"wrong\x15", b"5678\r"]).unwrap(),
            b"5678"
        );
    }

    #[test]
    fn ctrl_c_cancels() {
        let gate = ConsoleGate::new();
        assert_eq!(
            typed_pin(&gate, &[b"12\x03"]),
            Err(PinEntryError::Cancelled)
        );
    }

    #[test]
    fn over_long_input_is_cut_at_the_limit() {
        let gate = ConsoleGate::new();
        let mut long = vec![b'7'; MAX_PIN_LEN + 50];
        long.push(b'\r');
        assert_eq!(typed_pin(&gate, &[&long]).unwrap().len(), MAX_PIN_LEN);
    }

    #[test]
    fn no_input_is_an_error_at_once_or_while_waiting() {
        let gate = ConsoleGate::new();
        let asker = {
            let gate = gate.clone();
            thread::spawn(move || gate.read_pin("PIN: ", Duration::from_secs(10)).map(drop))
        };
        while gate.state().capture.is_none() {
            thread::sleep(Duration::from_millis(1));
        }
        gate.input_closed();
        assert_eq!(asker.join().unwrap(), Err(PinEntryError::NoInput));
        assert_eq!(
            gate.read_pin("PIN: ", Duration::from_secs(10)).map(drop),
            Err(PinEntryError::NoInput)
        );
    }

    #[test]
    fn nobody_typing_times_out() {
        let gate = ConsoleGate::new();
        assert_eq!(
            gate.read_pin("PIN: ", Duration::from_millis(20)).map(drop),
            Err(PinEntryError::TimedOut(0))
        );
        // The abandoned prompt does not swallow later input.
        assert_eq!(gate.filter_input(b"a"), b"a");
    }
}
