//! Command-line pieces for smart cards: the options that name a card
//! (`--pkcs11-module`, `--token-label`, `--pin-file`) and
//! `securevm disk enroll-card`, which binds a new LUKS2 keyslot to a card.

use std::path::PathBuf;

use super::error::SmartCardError;
use super::token::{PinSource, RetryPolicy};
use super::{disk, open_token, CardOptions};
use crate::storage::passphrase_input::{read_passphrase, PassphraseSource};

/// The options that name a smart card.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CardArgs {
    /// The card's PKCS#11 module, e.g. /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    /// (or /usr/lib/softhsm/libsofthsm2.so for SoftHSM2 test tokens).
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,
    /// Use the token with this label when several are present.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub token_label: Option<String>,
    /// Read the card PIN from FILE (one trailing newline ignored) instead
    /// of asking on the terminal.
    #[arg(long, value_name = "FILE", requires = "pkcs11_module")]
    pub pin_file: Option<PathBuf>,
}

impl CardArgs {
    /// The card options, when a module was given.
    pub fn options(&self) -> Option<CardOptions> {
        let module = self.pkcs11_module.clone()?;
        Some(CardOptions {
            module,
            token_label: self.token_label.clone(),
            pins: match &self.pin_file {
                Some(file) => PinSource::File(file.clone()),
                None => PinSource::Terminal,
            },
            retry: RetryPolicy::default(),
        })
    }
}

/// `securevm disk enroll-card`: a keyslot the card opens, in systemd-cryptenroll's layout.
#[derive(Debug, Clone, clap::Args)]
pub struct CardEnrollArgs {
    #[command(flatten)]
    pub card: CardArgs,
    /// The RSA key to use, by its PKCS#11 CKA_ID in hex (as `pkcs11-tool
    /// --list-objects` shows it), when the card holds several.
    #[arg(long, value_name = "HEX")]
    pub key_id: Option<String>,
    /// A passphrase the image already opens with, from FILE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

/// Run `securevm disk enroll-card`; returns the line to print.
pub fn run_enroll(args: &CardEnrollArgs) -> Result<String, SmartCardError> {
    let Some(options) = args.card.options() else {
        return Err(SmartCardError::NoModule);
    };
    let key_id = args.key_id.as_deref().map(parse_hex).transpose()?;
    let passphrase = read_passphrase(match &args.passphrase_file {
        Some(file) => PassphraseSource::File(file),
        None => PassphraseSource::Terminal {
            prompt: "Existing passphrase: ",
            confirm: false,
        },
    })?;
    let card = open_token(&options)?;
    let key = disk::decryption_key(&card, key_id.as_deref())?;
    let enrolled = disk::enroll(&args.image, passphrase.as_bytes(), &card, &key)?;
    Ok(format!(
        "added keyslot {} to {}, opened by the smart card '{}' ({})",
        enrolled.keyslot,
        args.image.display(),
        card.token().label,
        enrolled.uri
    ))
}

fn parse_hex(text: &str) -> Result<Vec<u8>, SmartCardError> {
    let bad = || SmartCardError::InvalidKeyId(text.to_string());
    let digits = text.replace(':', "");
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_hex() {
        assert_eq!(parse_hex("01").unwrap(), vec![1]);
        assert_eq!(parse_hex("a0:ff").unwrap(), vec![0xa0, 0xff]);
        assert!(parse_hex("1").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("").is_err());
    }

    #[test]
    fn card_options_need_a_module() {
        assert!(CardArgs::default().options().is_none());
        let args = CardArgs {
            pkcs11_module: Some("/m.so".into()),
            token_label: None,
            pin_file: Some("/pin".into()),
        };
        let options = args.options().unwrap();
        assert_eq!(options.pins, PinSource::File("/pin".into()));
    }
}
