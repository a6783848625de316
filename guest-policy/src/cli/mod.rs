//! Command-line arguments and dispatch to the subcommands.

mod commands;
mod secret_input;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub(crate) use commands::run;

/// Write, check, sign and verify securevm policy files.
#[derive(Debug, Parser)]
#[command(name = "guest-policy", version, about)]
pub(crate) struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a signing key pair: NAME.key (secret, mode 0600) and NAME.pub.
    Keygen {
        /// Base name of the key files.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
        /// Encrypt the secret key with a passphrase (scrypt, as `minisign -G`
        /// does; about 1 GiB of memory and a few seconds per use).
        #[arg(long)]
        encrypt: bool,
    },
    /// Sign a policy that validates; writes POLICY.minisig.
    Sign {
        /// Secret key file (minisign format).
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
        /// Where to write the signature (default: POLICY.minisig).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The policy file.
        policy: PathBuf,
    },
    /// Verify a policy's signature, contents, version and expiry; with
    /// --state also check and record acceptance against the machine state.
    Verify {
        /// Trusted public key file (minisign format).
        #[arg(long, value_name = "NAME.pub")]
        pubkey: PathBuf,
        /// Signature file (default: POLICY.minisig).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// State file recording the installed version; the policy is
        /// accepted and recorded unless --check-only is given.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Create the state file if it does not exist (first installation).
        #[arg(long, requires = "state")]
        init_state: bool,
        /// Check against the state file without recording.
        #[arg(long, requires = "state")]
        check_only: bool,
        /// The policy file.
        policy: PathBuf,
    },
    /// Check a policy for errors and warnings without a signature.
    Lint {
        /// The policy format the oldest securevm in the fleet reads; warn
        /// if the policy needs a newer one (see docs/policy-format.md).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        oldest_format: Option<u32>,
        /// The policy file.
        policy: PathBuf,
    },
    /// Summarise a policy per role: who may do what.
    Show {
        /// The policy file.
        policy: PathBuf,
    },
    /// Read a passphrase (without echo on a terminal, else one line of
    /// stdin) and print its Argon2id PHC string for the users table.
    HashPassphrase,
}
