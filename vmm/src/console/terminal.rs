//! The terminal side of the guest console: raw mode while the guest runs
//! (so an interactive login works and Ctrl-C reaches the guest), an input
//! thread that feeds COM1, and the escape sequence Ctrl-A x that stops the
//! VM. Ctrl-A Ctrl-A sends one Ctrl-A to the guest.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use super::gate::ConsoleGate;
use crate::confined::{self, Confinement, ThreadError};
use crate::devices::serial::SerialDevice;
use crate::exit::{ExitNotifier, ExitReason};
use crate::sync::Unpoisoned;

const CTRL_A: u8 = 0x01;

/// Splits console input into bytes for the guest and the quit command.
#[derive(Default)]
pub struct EscapeFilter {
    after_ctrl_a: bool,
}

impl EscapeFilter {
    /// Returns the bytes meant for the guest and whether the user quit.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        // One more than the input: a Ctrl-A held over from the last read
        // comes out as two bytes. The Vec never grows (the input may be a
        // PIN, which must not be left behind in a reallocated buffer).
        let mut guest = Vec::with_capacity(input.len() + 1);
        for &byte in input {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match byte {
                    b'x' | b'X' => return (guest, true),
                    CTRL_A => guest.push(CTRL_A),
                    other => guest.extend_from_slice(&[CTRL_A, other]),
                }
            } else if byte == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                guest.push(byte);
            }
        }
        (guest, false)
    }
}

/// Puts the terminal in raw mode and restores it when dropped.
pub struct RawTerminal {
    fd: i32,
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enable(fd: i32) -> io::Result<Option<RawTerminal>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so that host-side messages still
        // start at the left margin.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Starts the thread that copies stdin to the serial device until EOF,
/// through `gate` (which withholds input while the session is locked and
/// takes the PIN typed to unlock it), in `confinement`.
pub fn spawn_input_thread(
    serial: Arc<Mutex<SerialDevice>>,
    exit: ExitNotifier,
    gate: ConsoleGate,
    confinement: Confinement,
) -> Result<thread::JoinHandle<()>, ThreadError> {
    confined::spawn("console-in", confinement, move || {
        let mut filter = EscapeFilter::default();
        let mut buf = [0u8; 64];
        let mut stdin = io::stdin().lock();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("console input stopped: {e}");
                    break;
                }
            };
            // Input may be a PIN (see ConsoleGate): no copy outlives its use.
            let (bytes, quit) = filter.feed(&buf[..n]);
            let bytes = Zeroizing::new(bytes);
            buf[..n].zeroize();
            deliver(&serial, &gate.filter_input(&bytes));
            if quit {
                exit.request(ExitReason::UserQuit);
                return;
            }
        }
        gate.input_closed();
    })
}

/// Offers `bytes` to the UART, waiting while its FIFO is full (the guest
/// drains it at its own pace; typing never outruns it for long).
fn deliver(serial: &Mutex<SerialDevice>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let accepted = serial.lock().unpoisoned().enqueue_input(bytes);
        bytes = &bytes[accepted..];
        if accepted == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_input_passes_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ls -l\r"), (b"ls -l\r".to_vec(), false));
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ab\x01"), (b"ab".to_vec(), false));
        assert_eq!(f.feed(b"x"), (Vec::new(), true));
    }

    #[test]
    fn ctrl_a_twice_sends_one_and_other_keys_pass() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"\x01\x01"), (vec![CTRL_A], false));
        assert_eq!(f.feed(b"\x01c"), (vec![CTRL_A, b'c'], false));
    }
}
