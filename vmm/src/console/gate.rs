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
//!
//! The guest is still on the terminal when the PIN is asked: everything
//! it printed, escape sequences included, is there, and it may have drawn
//! a fake PIN prompt of its own. So while the gate asks, guest output is
//! held back (and announced, then written, once the PIN is in), the
//! terminal's attributes are reset, and the prompt carries the machine's
//! prompt phrase ([`super::prompt_phrase`]), which the guest cannot know.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::output::{HeldOutput, OutputHold};
use super::prompt_phrase::PromptPhrase;
use crate::storage::secret::SecretBuf;
use crate::sync::Unpoisoned;

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
#[derive(Clone)]
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

struct Shared {
    state: Mutex<State>,
    answered: Condvar,
    prompter: Mutex<Prompter>,
}

/// What a PIN prompt needs besides the input: where it is written, the
/// phrase it shows, and the guest output it holds back meanwhile.
struct Prompter {
    output: Box<dyn Write + Send>,
    phrase: PromptPhrase,
    guest_output: OutputHold,
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
    /// A gate whose prompts go to stderr (the terminal), show `phrase`,
    /// and hold `guest_output` back while they wait.
    pub fn new(phrase: PromptPhrase, guest_output: OutputHold) -> Self {
        Self::with_prompt_output(phrase, guest_output, Box::new(io::stderr()))
    }

    /// As [`ConsoleGate::new`], with prompts written to `output`.
    pub fn with_prompt_output(
        phrase: PromptPhrase,
        guest_output: OutputHold,
        output: Box<dyn Write + Send>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                answered: Condvar::new(),
                prompter: Mutex::new(Prompter {
                    output,
                    phrase,
                    guest_output,
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unpoisoned()
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

    /// Ask for a PIN on the console: hold guest output back, print
    /// `prompt` after the prompt phrase, then wait up to `timeout` for a
    /// line typed at the terminal. Held guest output follows the answer,
    /// announced.
    pub fn read_pin(&self, prompt: &str, timeout: Duration) -> Result<SecretBuf, PinEntryError> {
        if self.state().input_closed {
            return Err(PinEntryError::NoInput);
        }
        let mut prompter = self.shared.prompter.lock().unpoisoned();
        prompter.guest_output.begin();
        // The terminal is in raw mode: start at the left margin.
        let shown = Zeroizing::new(format!("\r\n{}", prompter.phrase.decorate(prompt).as_str()));
        prompter.write(shown.as_bytes());
        let answer = self.wait_for_pin(timeout);
        prompter.write(b"\r\n");
        let Prompter {
            output,
            guest_output,
            ..
        } = &mut *prompter;
        guest_output.end(|held| {
            if let Some(notice) = held_output_notice(held) {
                write_prompt_output(output.as_mut(), notice.as_bytes());
            }
        });
        answer
    }

    fn wait_for_pin(&self, timeout: Duration) -> Result<SecretBuf, PinEntryError> {
        let mut state = self.state();
        if state.input_closed {
            return Err(PinEntryError::NoInput);
        }
        // Room for the longest PIN up front: a growing Vec would leave
        // copies of the digits typed so far in freed, unwiped memory.
        state.capture = Some(Zeroizing::new(Vec::with_capacity(MAX_PIN_LEN)));
        state.answer = None;
        let deadline = Instant::now() + timeout;
        while state.answer.is_none() {
            let now = Instant::now();
            if now >= deadline {
                state.capture = None;
                return Err(PinEntryError::TimedOut(timeout.as_secs()));
            }
            state = self
                .shared
                .answered
                .wait_timeout(state, deadline - now)
                .unpoisoned()
                .0;
        }
        let answer = state.answer.take().unwrap_or(Err(PinEntryError::NoInput));
        answer.map(|pin| SecretBuf::from_slice(&pin))
    }
}

impl Prompter {
    fn write(&mut self, bytes: &[u8]) {
        write_prompt_output(self.output.as_mut(), bytes);
    }
}

/// One write, so nothing else lands inside the line.
fn write_prompt_output(output: &mut dyn Write, bytes: &[u8]) {
    // Nowhere to report a failed write to the terminal.
    let _ = output.write_all(bytes).and_then(|()| output.flush());
}

/// The line that tells the person guest output was held back (none when
/// there was nothing to hold).
fn held_output_notice(held: HeldOutput) -> Option<String> {
    match held {
        HeldOutput {
            bytes: 0,
            dropped: 0,
        } => None,
        HeldOutput { bytes, dropped: 0 } => Some(format!(
            "securevm: {bytes} bytes of guest console output were held back during the prompt and follow now\r\n"
        )),
        HeldOutput { bytes, dropped } => Some(format!(
            "securevm: {bytes} bytes of guest console output were held back during the prompt and follow now; {dropped} more did not fit and were dropped\r\n"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::output::ConsoleWriter;
    use crate::console::prompt_phrase::TERMINAL_SANE;
    use std::thread;

    const PHRASE: &str = "blue heron at dawn";

    /// Output that both the guest console writer and the gate's prompts
    /// write to, like the terminal they share.
    #[derive(Clone, Default)]
    struct Terminal(Arc<Mutex<Vec<u8>>>);

    impl Write for Terminal {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Terminal {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        fn wait_for(&self, what: &str) {
            for _ in 0..2000 {
                if self.text().contains(what) {
                    return;
                }
                thread::sleep(Duration::from_millis(1));
            }
            panic!("{what:?} never reached the terminal: {:?}", self.text());
        }
    }

    /// A gate with the test phrase over a guest console that writes to
    /// `terminal`, as do the prompts; the writer must outlive the gate's use.
    fn gate_on(terminal: &Terminal) -> (ConsoleGate, ConsoleWriter, impl Write) {
        let (writer, sink) =
            ConsoleWriter::spawn(terminal.clone(), crate::confined::Confinement::Unfiltered)
                .unwrap();
        let gate = ConsoleGate::with_prompt_output(
            PromptPhrase::parse(PHRASE.as_bytes()).unwrap(),
            writer.hold(),
            Box::new(terminal.clone()),
        );
        (gate, writer, sink)
    }

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
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
        assert_eq!(gate.filter_input(b"ls\r"), b"ls\r");
    }

    #[test]
    fn input_is_dropped_while_locked_and_flows_after_unlock() {
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
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
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
        gate.lock();
        assert_eq!(typed_pin(&gate, &[b"12", b"34\r"]).unwrap(), b"1234");
        // What follows the PIN is withheld too: the session is still locked.
        assert!(gate.filter_input(b"after").is_empty());
    }

    #[test]
    fn backspace_and_ctrl_u_edit_the_pin_and_control_bytes_are_ignored() {
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
        assert_eq!(typed_pin(&gate, &[b"19\x7f2\x08\x0034\n"]).unwrap(), b"134");
        assert_eq!(
            typed_pin(&gate, &[b"wrong\x15", b"5678\r"]).unwrap(),
            b"5678"
        );
    }

    #[test]
    fn ctrl_c_cancels() {
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
        assert_eq!(
            typed_pin(&gate, &[b"12\x03"]),
            Err(PinEntryError::Cancelled)
        );
    }

    #[test]
    fn over_long_input_is_cut_at_the_limit() {
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
        let mut long = vec![b'7'; MAX_PIN_LEN + 50];
        long.push(b'\r');
        assert_eq!(typed_pin(&gate, &[&long]).unwrap().len(), MAX_PIN_LEN);
    }

    #[test]
    fn no_input_is_an_error_at_once_or_while_waiting() {
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
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
        let terminal = Terminal::default();
        let (gate, _writer, _guest) = gate_on(&terminal);
        assert_eq!(
            gate.read_pin("PIN: ", Duration::from_millis(20)).map(drop),
            Err(PinEntryError::TimedOut(0))
        );
        // The abandoned prompt does not swallow later input.
        assert_eq!(gate.filter_input(b"a"), b"a");
    }

    #[test]
    fn a_guest_cannot_forge_or_break_into_the_pin_prompt() {
        let terminal = Terminal::default();
        let (gate, mut writer, mut guest) = gate_on(&terminal);
        guest.write_all(b"guest login: ").unwrap();
        terminal.wait_for("guest login: ");
        let asker = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.read_pin("PIN for smart card 'work': ", Duration::from_secs(10))
                    .map(|pin| pin.as_bytes().to_vec())
            })
        };
        while !gate.is_asking() {
            thread::sleep(Duration::from_millis(1));
        }
        // The guest clears the line and draws its own prompt over the real one.
        let forged = "\x1b[2K\r\x1b[8mPIN for smart card 'work': ";
        guest.write_all(forged.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(100));
        let real_prompt =
            format!("\r\n{TERMINAL_SANE}[securevm: {PHRASE}] PIN for smart card 'work': ");
        assert_eq!(
            terminal.text(),
            format!("guest login: {real_prompt}"),
            "guest output reached the terminal during the prompt"
        );
        let to_guest = gate.filter_input(b"4321\r");
        assert!(to_guest.is_empty(), "the PIN reached the guest");
        assert_eq!(asker.join().unwrap().unwrap(), b"4321");
        terminal.wait_for(forged);
        writer.finish();
        assert_eq!(
            terminal.text(),
            format!(
                "guest login: {real_prompt}\r\nsecurevm: {} bytes of guest console output were held back during the prompt and follow now\r\n{forged}",
                forged.len()
            )
        );
        // Only securevm's own prompt carries the phrase.
        assert_eq!(terminal.text().matches(PHRASE).count(), 1);
    }

    #[test]
    fn guest_output_flows_again_after_a_prompt_nobody_answers() {
        let terminal = Terminal::default();
        let (gate, _writer, mut guest) = gate_on(&terminal);
        let asker = {
            let gate = gate.clone();
            thread::spawn(move || gate.read_pin("PIN: ", Duration::from_millis(200)).map(drop))
        };
        while !gate.is_asking() {
            thread::sleep(Duration::from_millis(1));
        }
        guest.write_all(b"held").unwrap();
        assert_eq!(asker.join().unwrap(), Err(PinEntryError::TimedOut(0)));
        terminal.wait_for("follow now\r\nheld");
        guest.write_all(b" then live").unwrap();
        terminal.wait_for("held then live");
    }
}
