//! `guest-policy`: write, check, sign and verify securevm policy files.
//!
//! Exit codes: 0 success, 1 the policy or a key was invalid or refused (or
//! a file could not be used), 2 the command line was wrong.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let arguments = cli::Arguments::parse();
    match cli::run(arguments) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}
