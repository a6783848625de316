//! Getting passphrases from a person (the terminal, without echo) or
//! from a file for automation. A passphrase file is used byte for byte
//! except that ONE trailing newline ("\n" or "\r\n") is removed, so
//! `echo secret > file` and `printf secret > file` give the same key.
//! Passphrases live in [`SecretBuf`]s and are never logged.

use std::path::Path;

use zeroize::Zeroize;

use super::error::StorageError;
use super::secret::SecretBuf;
use crate::console::PromptPhrase;

/// Where a passphrase comes from.
#[derive(Debug, Clone, Copy)]
pub enum PassphraseSource<'a> {
    /// Ask on the controlling terminal with this prompt.
    Terminal { prompt: &'a str, confirm: bool },
    /// Read from this file.
    File(&'a Path),
}

/// Read one passphrase from `source`; empty passphrases are refused.
pub fn read_passphrase(source: PassphraseSource<'_>) -> Result<SecretBuf, StorageError> {
    let secret = match source {
        PassphraseSource::File(path) => from_file(path)?,
        PassphraseSource::Terminal { prompt, confirm } => {
            let first = from_terminal(prompt)?;
            if confirm {
                let again = from_terminal("Repeat the passphrase: ")?;
                if again.as_bytes() != first.as_bytes() {
                    return Err(StorageError::Passphrase(
                        "the two passphrases differ; try again".to_string(),
                    ));
                }
            }
            first
        }
    };
    if secret.is_empty() {
        return Err(StorageError::Passphrase(
            "the passphrase is empty; give a non-empty one".to_string(),
        ));
    }
    Ok(secret)
}

fn from_file(path: &Path) -> Result<SecretBuf, StorageError> {
    let mut bytes = std::fs::read(path).map_err(StorageError::io(path))?;
    let mut secret = SecretBuf::from_slice(&bytes);
    bytes.zeroize();
    let len = strip_one_newline(secret.as_bytes());
    secret.truncate(len);
    Ok(secret)
}

/// Length of `bytes` without one trailing "\n" or "\r\n".
fn strip_one_newline(bytes: &[u8]) -> usize {
    match bytes {
        [.., b'\r', b'\n'] => bytes.len() - 2,
        [.., b'\n'] => bytes.len() - 1,
        _ => bytes.len(),
    }
}

/// Asks on the terminal, after the machine's prompt phrase (see
/// [`crate::console::prompt_phrase`]); a phrase file that is not private stops the
/// prompt before anything is asked.
fn from_terminal(prompt: &str) -> Result<SecretBuf, StorageError> {
    let phrase =
        PromptPhrase::load_configured().map_err(|e| StorageError::Passphrase(e.to_string()))?;
    let mut text = rpassword::prompt_password(phrase.decorate(prompt).as_str()).map_err(|e| {
        StorageError::Passphrase(format!(
            "{e}; without a terminal, pass --passphrase-file FILE instead"
        ))
    })?;
    let secret = SecretBuf::from_slice(text.as_bytes());
    text.zeroize();
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::scratch_path;

    fn read_file_with(content: &[u8]) -> Result<SecretBuf, StorageError> {
        let path = scratch_path("pass");
        std::fs::write(&path, content).unwrap();
        read_passphrase(PassphraseSource::File(&path))
    }

    #[test]
    fn one_trailing_newline_is_removed() {
        assert_eq!(read_file_with(b"secret\n").unwrap().as_bytes(), b"secret");
        assert_eq!(read_file_with(b"secret\r\n").unwrap().as_bytes(), b"secret");
        assert_eq!(
            read_file_with(b"secret\n\n").unwrap().as_bytes(),
            b"secret\n"
        );
        assert_eq!(read_file_with(b" s p ").unwrap().as_bytes(), b" s p ");
    }

    #[test]
    fn empty_or_missing_passphrase_files_are_refused() {
        assert!(matches!(
            read_file_with(b"\n"),
            Err(StorageError::Passphrase(_))
        ));
        let missing = Path::new("/var/tmp/securevm-no-such-passphrase-file");
        assert!(matches!(
            read_passphrase(PassphraseSource::File(missing)),
            Err(StorageError::Io { .. })
        ));
    }
}
