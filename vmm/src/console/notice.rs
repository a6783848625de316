//! Messages for the person at the terminal while the guest runs.
//!
//! They share the terminal (or a log file) with the guest's console output,
//! which another thread writes as the guest produces it. `eprintln!` on
//! std's unbuffered stderr writes each formatted piece separately, so guest
//! bytes could land inside a message; [`notice!`] formats the whole line
//! first and writes it at once.

use std::fmt;
use std::io::Write;

/// Writes `message` and a newline to stderr in one write.
pub fn write_line(message: fmt::Arguments) {
    let mut line = message.to_string();
    line.push('\n');
    // Nowhere to report a failed write to the terminal.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `eprintln!` in one write: see the module comment.
#[macro_export]
macro_rules! notice {
    ($($arg:tt)*) => {
        $crate::console::notice::write_line(format_args!($($arg)*))
    };
}
