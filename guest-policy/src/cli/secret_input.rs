//! Reading passphrases: without echo from a terminal, or one line from
//! standard input when it is not a terminal (for scripts and tests).

use std::io::{self, BufRead, IsTerminal};

use zeroize::Zeroizing;

/// Reads one passphrase; on a terminal it asks twice when `confirm` is set.
pub(super) fn read_passphrase(prompt: &str, confirm: bool) -> io::Result<Zeroizing<String>> {
    if io::stdin().is_terminal() {
        let first = Zeroizing::new(rpassword::prompt_password(prompt)?);
        if confirm {
            let second = Zeroizing::new(rpassword::prompt_password("Repeat passphrase: ")?);
            if first != second {
                return Err(io::Error::other("the two passphrases differ"));
            }
        }
        return Ok(first);
    }
    let mut line = Zeroizing::new(String::new());
    io::stdin().lock().read_line(&mut line)?;
    let trimmed = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    Ok(trimmed)
}
