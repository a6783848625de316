//! The subcommands. Each one prints what it did on success and returns a
//! [`CliError`] (exit code 1) when the input is invalid or refused.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use guest_policy::atomic::replace_file_with_mode;
use guest_policy::format;
use guest_policy::signing::{MINISIGN_MEMLIMIT, MINISIGN_OPSLIMIT};
use guest_policy::summary::summarise;
use guest_policy::{
    load_policy_with_signature, passphrase_hash, signature_path_for, trusted_comment_for, validate,
    Diagnostic, PolicyError, PolicyState, PublicKey, SecretKey, SignatureFile, SigningError,
    VerifiedPolicy,
};
use zeroize::Zeroizing;

use super::secret_input::read_passphrase;
use super::{Arguments, Command};

/// A failed command; the message is printed after `error: `.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{}: {source}", path.display())]
    Key { path: PathBuf, source: SigningError },
    #[error("{} already exists; pass --force to replace it (the old key is lost)", .0.display())]
    KeyExists(PathBuf),
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Passphrase(String),
    #[error("signing failed: {0}")]
    Sign(SigningError),
}

pub(crate) fn run(arguments: Arguments) -> Result<(), CliError> {
    match arguments.command {
        Command::Keygen {
            out,
            force,
            encrypt,
        } => keygen(&out, force, encrypt),
        Command::Sign {
            key,
            signature,
            policy,
        } => sign(&key, signature, &policy),
        Command::Verify {
            pubkey,
            signature,
            state,
            init_state,
            check_only,
            policy,
        } => {
            let verified = verify(&pubkey, signature, &policy)?;
            match state {
                Some(state) => record(&verified, &state, init_state, check_only),
                None => Ok(()),
            }
        }
        Command::Lint {
            oldest_format,
            policy,
        } => lint(&policy, oldest_format),
        Command::Show { policy } => show(&policy),
        Command::HashPassphrase => hash_passphrase(),
    }
}

fn keygen(base: &Path, force: bool, encrypt: bool) -> Result<(), CliError> {
    let secret_path = with_suffix(base, ".key");
    let public_path = with_suffix(base, ".pub");
    if !force {
        for path in [&secret_path, &public_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(CliError::KeyExists(path.clone()));
            }
        }
    }
    let key = SecretKey::generate().map_err(CliError::Sign)?;
    let secret_text = if encrypt {
        let passphrase =
            read_passphrase("Passphrase for the new key: ", true).map_err(|error| {
                CliError::Passphrase(format!("cannot read the passphrase: {error}"))
            })?;
        if passphrase.is_empty() {
            return Err(CliError::Passphrase(
                "the passphrase is empty; leave out --encrypt for an unencrypted key".to_string(),
            ));
        }
        key.to_encrypted_text(passphrase.as_bytes(), MINISIGN_OPSLIMIT, MINISIGN_MEMLIMIT)
            .map_err(CliError::Sign)?
    } else {
        key.to_unencrypted_text().map_err(CliError::Sign)?
    };
    write_new_file(&secret_path, secret_text.as_bytes(), 0o600, force)?;
    write_new_file(
        &public_path,
        key.public_key().to_text().as_bytes(),
        0o644,
        force,
    )?;
    println!(
        "wrote {} (secret, mode 0600) and {} (public); key id {}",
        secret_path.display(),
        public_path.display(),
        key.key_id()
    );
    Ok(())
}

/// Creates a file that must not exist yet (O_EXCL), unless `replace` is set;
/// a replaced file is removed first so it gets the new mode, never the old one.
fn write_new_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CliError> {
    let file_error = |action, source| CliError::File {
        action,
        path: path.to_path_buf(),
        source,
    };
    if replace {
        match fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(file_error("replace", error))
            }
            _ => {}
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| match error.kind() {
            io::ErrorKind::AlreadyExists => CliError::KeyExists(path.to_path_buf()),
            _ => file_error("create", error),
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|error| file_error("write", error))
}

fn sign(key_path: &Path, signature: Option<PathBuf>, policy_path: &Path) -> Result<(), CliError> {
    let key_text = Zeroizing::new(read_text(key_path)?);
    let mut passphrase_error = None;
    let key = SecretKey::from_text(&key_text, || {
        read_passphrase("Passphrase for the secret key: ", false)
            .map_err(|error| passphrase_error = Some(error))
            .ok()
    })
    .map_err(|source| match passphrase_error.take() {
        Some(error) => CliError::Passphrase(format!("cannot read the passphrase: {error}")),
        None => CliError::Key {
            path: key_path.to_path_buf(),
            source,
        },
    })?;
    let bytes = fs::read(policy_path).map_err(|source| PolicyError::Read {
        path: policy_path.to_path_buf(),
        source,
    })?;
    let name = policy_path.display().to_string();
    let text =
        std::str::from_utf8(&bytes).map_err(|_| PolicyError::NotUtf8 { file: name.clone() })?;
    let validated = validate(&name, text).map_err(PolicyError::Invalid)?;
    print_warnings(&validated.warnings);
    let file_name = policy_path
        .file_name()
        .map_or_else(|| name.clone(), |file| file.to_string_lossy().into_owned());
    let comment = trusted_comment_for(&validated.policy, &file_name, SystemTime::now());
    let signature_file = SignatureFile::sign(&key, &bytes, &comment).map_err(CliError::Sign)?;
    let signature_path = signature.unwrap_or_else(|| signature_path_for(policy_path));
    let signature_text = signature_file.to_text();
    replace_file_with_mode(&signature_path, signature_text.as_bytes(), 0o644).map_err(
        |source| CliError::File {
            action: "write",
            path: signature_path.clone(),
            source,
        },
    )?;
    println!(
        "signed {name} (version {}) with key {}; wrote {}",
        validated.policy.meta.version,
        key.key_id(),
        signature_path.display()
    );
    Ok(())
}

fn verify(
    pubkey_path: &Path,
    signature: Option<PathBuf>,
    policy_path: &Path,
) -> Result<VerifiedPolicy, CliError> {
    let public_key =
        PublicKey::from_text(&read_text(pubkey_path)?).map_err(|source| CliError::Key {
            path: pubkey_path.to_path_buf(),
            source,
        })?;
    let signature_path = signature.unwrap_or_else(|| signature_path_for(policy_path));
    let verified =
        load_policy_with_signature(policy_path, &signature_path, &public_key, SystemTime::now())?;
    print_warnings(verified.warnings());
    println!(
        "{}: good signature from key {}, policy version {} (trusted comment: {})",
        policy_path.display(),
        verified.key_id(),
        verified.version(),
        verified.trusted_comment()
    );
    Ok(verified)
}

fn record(
    verified: &VerifiedPolicy,
    state_path: &Path,
    init_state: bool,
    check_only: bool,
) -> Result<(), CliError> {
    let mut state = match PolicyState::open(state_path) {
        Err(PolicyError::StateMissing { .. }) if init_state && !check_only => {
            println!("initialising state file {}", state_path.display());
            PolicyState::initialise(state_path)?
        }
        other => other?,
    };
    if check_only {
        state.check(verified)?;
        println!("version {} would be accepted", verified.version());
        return Ok(());
    }
    state.accept(verified)?;
    println!(
        "accepted version {}; recorded in {}",
        verified.version(),
        state_path.display()
    );
    Ok(())
}

fn lint(policy_path: &Path, oldest_format: Option<u32>) -> Result<(), CliError> {
    let (text, mut validated) = validate_file(policy_path)?;
    let name = policy_path.display().to_string();
    if let Some(warning) =
        oldest_format.and_then(|oldest| format::rollout_warning(&name, &text, oldest))
    {
        validated.warnings.insert(0, warning);
    }
    print_warnings(&validated.warnings);
    println!(
        "{}: valid, version {}, {} warning(s)",
        policy_path.display(),
        validated.policy.meta.version,
        validated.warnings.len()
    );
    Ok(())
}

fn show(policy_path: &Path) -> Result<(), CliError> {
    let (_, validated) = validate_file(policy_path)?;
    print_warnings(&validated.warnings);
    print!("{}", summarise(&validated.policy));
    Ok(())
}

fn hash_passphrase() -> Result<(), CliError> {
    let passphrase = read_passphrase("Passphrase: ", true)
        .map_err(|error| CliError::Passphrase(format!("cannot read the passphrase: {error}")))?;
    if passphrase.is_empty() {
        return Err(CliError::Passphrase(
            "the passphrase is empty; type one, or pipe it on standard input".to_string(),
        ));
    }
    let phc = passphrase_hash::hash(passphrase.as_bytes())
        .map_err(|error| CliError::Passphrase(format!("hashing failed: {error}")))?;
    println!("{phc}");
    Ok(())
}

/// The policy text and what validating it found.
fn validate_file(policy_path: &Path) -> Result<(String, guest_policy::Validated), CliError> {
    let name = policy_path.display().to_string();
    let bytes = fs::read(policy_path).map_err(|source| PolicyError::Read {
        path: policy_path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 { file: name.clone() })?;
    let validated = validate(&name, &text).map_err(PolicyError::Invalid)?;
    Ok((text, validated))
}

fn print_warnings(warnings: &[Diagnostic]) {
    for warning in warnings {
        eprintln!("{warning}");
    }
}

fn read_text(path: &Path) -> Result<String, CliError> {
    fs::read_to_string(path).map_err(|source| CliError::File {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
