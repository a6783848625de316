//! `securevm-gen-docs OUT`: writes the man pages (OUT/man1, one page per
//! command and subcommand) and the bash, zsh and fish completions
//! (OUT/completions) of `securevm` and `guest-policy`, for
//! `scripts/package`.
//!
//! Both command lines are the binaries' own clap definitions, compiled in
//! here from their source files, so the pages cannot drift from the
//! programs and neither runtime binary carries the generators.

use std::path::Path;
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

#[allow(
    unused,
    reason = "only the command-line definition is used; securevm's main is not run here"
)]
#[path = "../../../vmm/src/main.rs"]
mod securevm_cli;

#[allow(
    unused,
    reason = "only the command-line definition is used; the commands are not run here"
)]
#[path = "../../../guest-policy/src/cli/mod.rs"]
mod guest_policy_cli;

fn main() -> ExitCode {
    let mut arguments = std::env::args_os().skip(1);
    let (Some(out), None) = (arguments.next(), arguments.next()) else {
        eprintln!("usage: securevm-gen-docs OUT_DIR");
        return ExitCode::from(2);
    };
    let out = Path::new(&out);
    for command in [
        securevm_cli::Cli::command(),
        guest_policy_cli::Arguments::command(),
    ] {
        if let Err(e) = write_docs(command, out) {
            eprintln!("securevm-gen-docs: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn write_docs(mut command: Command, out: &Path) -> std::io::Result<()> {
    let man = out.join("man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut man_command = without_help_subcommands(command.clone());
    man_command.build();
    clap_mangen::generate_to(man_command, &man)?;
    command.build();
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}

/// `command` without clap's `help` subcommands, which would each get a
/// page repeating the command's own (`securevm-help-run` beside
/// `securevm-run`); the completions keep them, as the binaries accept them.
fn without_help_subcommands(command: Command) -> Command {
    command
        .disable_help_subcommand(true)
        .mut_subcommands(without_help_subcommands)
}
