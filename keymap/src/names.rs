//! Key names for `securevm ctl key`: one key or a combination joined by
//! '+', such as `Return`, `F12`, `a` or `ctrl+alt+F2`.
//!
//! Accepted names, compared without regard to case:
//! - the X11 keysym names of function keys: `Return`, `BackSpace`, `Tab`,
//!   `Escape`, `Delete`, `Insert`, `Home`, `End`, `Page_Up` (`Prior`),
//!   `Page_Down` (`Next`), `Left`, `Right`, `Up`, `Down`, `F1`..`F12`,
//!   `Shift_L`/`_R`, `Control_L`/`_R`, `Alt_L`/`_R`, `Super_L`/`_R`,
//!   `Meta_L`/`_R`, `Caps_Lock`, `Num_Lock`, `Scroll_Lock`, `Print`,
//!   `Sys_Req`, `Pause`, `Menu`, `KP_0`..`KP_9`, `KP_Enter`, `KP_Add`,
//!   `KP_Subtract`, `KP_Multiply`, `KP_Divide`, `KP_Decimal`, ... and the
//!   Japanese keys `Zenkaku_Hankaku`, `Henkan`, `Muhenkan`,
//!   `Hiragana_Katakana`;
//! - short forms: `ctrl`, `shift`, `alt`, `super` (also `win`, `meta`) for
//!   the left modifiers, `altgr` for right Alt, `enter`, `esc`, `del`,
//!   `space`, `pgup`, `pgdn`;
//! - one character typed without Shift on a US keyboard: a letter
//!   (either case: `A` is the A key, not Shift+A), a digit, or one of
//!   `` - = [ ] \ ; ' ` , . / ``; and `F13`..`F24`.
//!
//! A '+' key itself cannot be named (it joins names): use `shift+=`.

use crate::codes::*;
use crate::keysym::FUNCTION_KEYSYMS;
use crate::text::us_key;

/// The most keys one combination may hold down together.
pub const MAX_COMBINATION_KEYS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyNameError {
    #[error("unknown key name {0:?}")]
    Unknown(String),
    #[error("empty key name in {0:?}")]
    Empty(String),
    #[error("key {0:?} appears twice in the combination")]
    Repeated(String),
    #[error("more than {MAX_COMBINATION_KEYS} keys in one combination")]
    TooMany,
}

const SHORT_NAMES: &[(&str, u16)] = &[
    ("ctrl", KEY_LEFTCTRL),
    ("control", KEY_LEFTCTRL),
    ("shift", KEY_LEFTSHIFT),
    ("alt", KEY_LEFTALT),
    ("altgr", KEY_RIGHTALT),
    ("super", KEY_LEFTMETA),
    ("win", KEY_LEFTMETA),
    ("meta", KEY_LEFTMETA),
    ("enter", KEY_ENTER),
    ("esc", KEY_ESC),
    ("del", KEY_DELETE),
    ("space", KEY_SPACE),
    ("pgup", KEY_PAGEUP),
    ("pgdn", KEY_PAGEDOWN),
];

const HIGH_FUNCTION_KEYS: [u16; 12] = [
    KEY_F13, KEY_F14, KEY_F15, KEY_F16, KEY_F17, KEY_F18, KEY_F19, KEY_F20, KEY_F21, KEY_F22,
    KEY_F23, KEY_F24,
];

/// The keys of combination `name`, in the order to press them (the
/// caller releases them in reverse).
pub fn key_combination(name: &str) -> Result<Vec<u16>, KeyNameError> {
    let mut keys = Vec::new();
    for part in name.split('+') {
        if part.is_empty() {
            return Err(KeyNameError::Empty(name.to_string()));
        }
        if keys.len() == MAX_COMBINATION_KEYS {
            return Err(KeyNameError::TooMany);
        }
        let key = key_by_name(part).ok_or_else(|| KeyNameError::Unknown(part.to_string()))?;
        if keys.contains(&key) {
            return Err(KeyNameError::Repeated(part.to_string()));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn key_by_name(name: &str) -> Option<u16> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let stroke = us_key(c.to_ascii_lowercase())?;
        return (!stroke.shift).then_some(stroke.code);
    }
    let by_table = SHORT_NAMES
        .iter()
        .map(|&(short, key)| (short, key))
        .chain(FUNCTION_KEYSYMS.iter().map(|&(long, _, key)| (long, key)))
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, key)| key);
    by_table.or_else(|| high_function_key(name))
}

fn high_function_key(name: &str) -> Option<u16> {
    let number: usize = name.strip_prefix(['f', 'F'])?.parse().ok()?;
    HIGH_FUNCTION_KEYS.get(number.checked_sub(13)?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_keys() {
        assert_eq!(key_combination("Return"), Ok(vec![KEY_ENTER]));
        assert_eq!(key_combination("return"), Ok(vec![KEY_ENTER]));
        assert_eq!(key_combination("Super_L"), Ok(vec![KEY_LEFTMETA]));
        assert_eq!(key_combination("a"), Ok(vec![KEY_A]));
        assert_eq!(key_combination("A"), Ok(vec![KEY_A]));
        assert_eq!(key_combination("5"), Ok(vec![KEY_5]));
        assert_eq!(key_combination("/"), Ok(vec![KEY_SLASH]));
        assert_eq!(key_combination("F12"), Ok(vec![KEY_F12]));
        assert_eq!(key_combination("f1"), Ok(vec![KEY_F1]));
        assert_eq!(key_combination("F13"), Ok(vec![KEY_F13]));
        assert_eq!(key_combination("F24"), Ok(vec![KEY_F24]));
        assert_eq!(key_combination("esc"), Ok(vec![KEY_ESC]));
        assert_eq!(key_combination("Page_Down"), Ok(vec![KEY_PAGEDOWN]));
        assert_eq!(key_combination("KP_Enter"), Ok(vec![KEY_KPENTER]));
        assert_eq!(key_combination("Henkan"), Ok(vec![KEY_HENKAN]));
        assert_eq!(key_combination("Muhenkan"), Ok(vec![KEY_MUHENKAN]));
    }

    #[test]
    fn combinations_keep_their_order() {
        assert_eq!(
            key_combination("ctrl+alt+f2"),
            Ok(vec![KEY_LEFTCTRL, KEY_LEFTALT, KEY_F2])
        );
        assert_eq!(
            key_combination("Control_R+Shift+Tab"),
            Ok(vec![KEY_RIGHTCTRL, KEY_LEFTSHIFT, KEY_TAB])
        );
        assert_eq!(
            key_combination("ctrl+alt+Delete"),
            Ok(vec![KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE])
        );
        assert_eq!(
            key_combination("shift+="),
            Ok(vec![KEY_LEFTSHIFT, KEY_EQUAL])
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(
            key_combination("Retrun"),
            Err(KeyNameError::Unknown("Retrun".into()))
        );
        assert_eq!(
            key_combination("F25"),
            Err(KeyNameError::Unknown("F25".into()))
        );
        assert_eq!(
            key_combination("F0"),
            Err(KeyNameError::Unknown("F0".into()))
        );
        assert_eq!(
            key_combination("f-1"),
            Err(KeyNameError::Unknown("f-1".into()))
        );
        // A character that needs Shift is not a key of its own.
        assert_eq!(key_combination("!"), Err(KeyNameError::Unknown("!".into())));
        assert_eq!(key_combination("é"), Err(KeyNameError::Unknown("é".into())));
        assert_eq!(key_combination(""), Err(KeyNameError::Empty(String::new())));
        assert_eq!(
            key_combination("ctrl+"),
            Err(KeyNameError::Empty("ctrl+".into()))
        );
        assert_eq!(key_combination("+"), Err(KeyNameError::Empty("+".into())));
        assert_eq!(
            key_combination("ctrl+Control_L"),
            Err(KeyNameError::Repeated("Control_L".into()))
        );
        assert_eq!(
            key_combination("a+b+c+d+e+f"),
            Ok(vec![KEY_A, KEY_B, KEY_C, KEY_D, KEY_E, KEY_F])
        );
        assert_eq!(key_combination("a+b+c+d+e+f+g"), Err(KeyNameError::TooMany));
    }
}
