//! The console: the one terminal that the guest's serial console and
//! securevm's own prompts and messages share. Everything that decides what
//! reaches that terminal, and when, lives here; the UART itself is a
//! device (`devices::serial`) that only hands bytes in and out.
//!
//! - `terminal`: raw mode while the guest runs, the input thread feeding
//!   COM1, and Ctrl-A x;
//! - `output`: guest output through a bounded buffer and its own writer
//!   thread, which can be held back while securevm asks for something;
//! - `gate`: the gate between terminal and guest while a session is
//!   locked, and PIN entry on the console;
//! - `prompt_phrase`: the administrator's phrase that marks a prompt as
//!   securevm's, which the guest cannot forge;
//! - `notice`: securevm's messages, each written in one piece between the
//!   guest's bytes.

pub mod gate;
pub mod notice;
pub mod output;
pub mod prompt_phrase;
pub mod terminal;

pub use gate::ConsoleGate;
pub use output::ConsoleWriter;
pub use prompt_phrase::{PhraseError, PromptPhrase};
pub use terminal::{spawn_input_thread, RawTerminal};
