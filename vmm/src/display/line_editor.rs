//! [`LineEditor`]: one field of securevm's own login or lock screen (a user
//! id, a passphrase, a PIN), edited by the key events a VNC viewer sends.
//!
//! RFB names keys by X11 keysym, not by character: Latin-1 printable
//! keysyms are the character's code, any other character arrives as
//! `0x0100_0000 + codepoint`, and editing keys have their own keysyms.
//! Only key-down events edit. The Control keys' state is tracked from both
//! down and up events, because Ctrl-U clears the line (as at the terminal
//! prompt, `console::gate`) and no Ctrl chord may type its letter.
//!
//! A secret field keeps what is typed in a [`SecretBuf`] sized for the
//! longest line up front, so its bytes never move through a growing
//! `Vec` or `String` that would leave copies behind; the only way out is
//! [`LineEditor::take_secret`], and the screen only ever learns how many
//! characters there are ([`LineEditor::field_value`]).

use zeroize::Zeroize;

use crate::display::screen::FieldValue;
use crate::storage::secret::SecretBuf;

/// Longest line in bytes of UTF-8, the same cap as a PIN typed at the
/// terminal.
pub const MAX_LINE_BYTES: usize = 256;

const XK_BACKSPACE: u32 = 0xff08;
const XK_TAB: u32 = 0xff09;
const XK_RETURN: u32 = 0xff0d;
const XK_ESCAPE: u32 = 0xff1b;
const XK_KP_SPACE: u32 = 0xff80;
const XK_KP_ENTER: u32 = 0xff8d;
const XK_KP_MULTIPLY: u32 = 0xffaa;
const XK_KP_9: u32 = 0xffb9;
const XK_KP_EQUAL: u32 = 0xffbd;
const XK_ISO_LEFT_TAB: u32 = 0xfe20;
const XK_SHIFT_L: u32 = 0xffe1;
const XK_SHIFT_R: u32 = 0xffe2;
const XK_CONTROL_L: u32 = 0xffe3;
const XK_CONTROL_R: u32 = 0xffe4;
const XK_DELETE: u32 = 0xffff;
const UNICODE_KEYSYM_BASE: u32 = 0x0100_0000;
/// What KP_Multiply (0xffaa) up to KP_9 (0xffb9) type, in keysym order.
const KEYPAD_CHARS: &[u8; 16] = b"*+,-./0123456789";

/// What a key event did to the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOutcome {
    /// The line changed: redraw the field.
    Edited,
    /// Return or keypad Enter: the line is complete.
    Submitted,
    /// Escape or Ctrl-C: the person gave up on this prompt.
    Cancelled,
    /// Tab: move to the next field.
    NextField,
    /// Shift-Tab: move to the previous field.
    PreviousField,
    /// Nothing to do (a key-up, a modifier, a key with no meaning here,
    /// or a character that no longer fits).
    Ignored,
}

/// Which modifier keys are held, left and right counted apart so that
/// releasing one while the other is still down keeps the chord.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modifiers {
    control_left: bool,
    control_right: bool,
    shift_left: bool,
    shift_right: bool,
}

impl Modifiers {
    fn control(self) -> bool {
        self.control_left || self.control_right
    }

    fn shift(self) -> bool {
        self.shift_left || self.shift_right
    }

    /// Record a modifier key's press or release; false if `keysym` is not
    /// a modifier tracked here.
    fn update(&mut self, keysym: u32, down: bool) -> bool {
        let held = match keysym {
            XK_CONTROL_L => &mut self.control_left,
            XK_CONTROL_R => &mut self.control_right,
            XK_SHIFT_L => &mut self.shift_left,
            XK_SHIFT_R => &mut self.shift_right,
            _ => return false,
        };
        *held = down;
        true
    }
}

enum Line {
    Plain(String),
    /// `len` bytes of `buf` hold the typed UTF-8; the rest stays zero.
    Secret {
        buf: SecretBuf,
        len: usize,
    },
}

pub struct LineEditor {
    line: Line,
    max_bytes: usize,
    chars: usize,
    modifiers: Modifiers,
}

impl LineEditor {
    /// An empty line holding at most `max_len` bytes of UTF-8 (never more
    /// than [`MAX_LINE_BYTES`]). A `secret` line is never shown: the
    /// screen gets only its length.
    pub fn new(secret: bool, max_len: usize) -> Self {
        let max_bytes = max_len.min(MAX_LINE_BYTES);
        let line = if secret {
            Line::Secret {
                buf: SecretBuf::zeroed(max_bytes),
                len: 0,
            }
        } else {
            Line::Plain(String::with_capacity(max_bytes))
        };
        Self {
            line,
            max_bytes,
            chars: 0,
            modifiers: Modifiers::default(),
        }
    }

    /// Apply one RFB key event.
    pub fn key(&mut self, keysym: u32, down: bool) -> EditOutcome {
        if self.modifiers.update(keysym, down) || !down {
            return EditOutcome::Ignored;
        }
        if self.modifiers.control() {
            return match keysym {
                0x75 | 0x55 => self.clear(),
                0x63 | 0x43 => EditOutcome::Cancelled,
                _ => EditOutcome::Ignored,
            };
        }
        match keysym {
            XK_RETURN | XK_KP_ENTER => EditOutcome::Submitted,
            XK_ESCAPE => EditOutcome::Cancelled,
            XK_TAB if self.modifiers.shift() => EditOutcome::PreviousField,
            XK_TAB => EditOutcome::NextField,
            XK_ISO_LEFT_TAB => EditOutcome::PreviousField,
            // With no cursor to move, the end of the line is the only
            // place to delete from, as with DEL at the terminal prompt.
            XK_BACKSPACE | XK_DELETE => self.pop(),
            _ => match typed_char(keysym) {
                Some(c) => self.push(c),
                None => EditOutcome::Ignored,
            },
        }
    }

    /// The typed text of a plain line; empty for a secret one.
    pub fn text(&self) -> &str {
        match &self.line {
            Line::Plain(text) => text,
            Line::Secret { .. } => "",
        }
    }

    /// How many characters are typed.
    pub fn char_count(&self) -> usize {
        self.chars
    }

    pub fn is_secret(&self) -> bool {
        matches!(self.line, Line::Secret { .. })
    }

    /// What the screen may draw for this line: the text, or for a secret
    /// only its length.
    pub fn field_value(&self) -> FieldValue<'_> {
        match &self.line {
            Line::Plain(text) => FieldValue::Text(text),
            Line::Secret { .. } => FieldValue::Masked { chars: self.chars },
        }
    }

    /// Hand the typed bytes over and leave the line empty (and, for a
    /// secret, its buffer zeroed).
    pub fn take_secret(&mut self) -> SecretBuf {
        let taken = match &mut self.line {
            Line::Plain(text) => {
                let taken = SecretBuf::from_slice(text.as_bytes());
                text.zeroize();
                taken
            }
            Line::Secret { buf, len } => {
                let taken = SecretBuf::from_slice(&buf.as_bytes()[..*len]);
                buf.as_mut_bytes()[..*len].fill(0);
                *len = 0;
                taken
            }
        };
        self.chars = 0;
        taken
    }

    /// The modifier keys this editor believes are held, to hand to the
    /// editor that gets the focus next ([`LineEditor::set_modifiers`]):
    /// a Control held while Tab moves the focus is still held there.
    pub fn modifiers(&self) -> Modifiers {
        self.modifiers
    }

    pub fn set_modifiers(&mut self, modifiers: Modifiers) {
        self.modifiers = modifiers;
    }

    fn push(&mut self, c: char) -> EditOutcome {
        let mut encoded = [0u8; 4];
        let encoded = c.encode_utf8(&mut encoded).as_bytes();
        let fits = |len: usize| {
            len.checked_add(encoded.len())
                .is_some_and(|total| total <= self.max_bytes)
        };
        match &mut self.line {
            Line::Plain(text) if fits(text.len()) => text.push(c),
            Line::Secret { buf, len } if fits(*len) => {
                buf.as_mut_bytes()[*len..*len + encoded.len()].copy_from_slice(encoded);
                *len += encoded.len();
            }
            _ => return EditOutcome::Ignored,
        }
        self.chars += 1;
        EditOutcome::Edited
    }

    fn pop(&mut self) -> EditOutcome {
        match &mut self.line {
            Line::Plain(text) => {
                if text.pop().is_none() {
                    return EditOutcome::Ignored;
                }
            }
            Line::Secret { buf, len } => {
                let bytes = &mut buf.as_mut_bytes()[..*len];
                // UTF-8 continuation bytes are 0b10xx_xxxx: the last
                // character starts at the last byte that is not one.
                let Some(start) = bytes.iter().rposition(|&b| b & 0xc0 != 0x80) else {
                    return EditOutcome::Ignored;
                };
                bytes[start..].fill(0);
                *len = start;
            }
        }
        self.chars = self.chars.saturating_sub(1);
        EditOutcome::Edited
    }

    fn clear(&mut self) -> EditOutcome {
        match &mut self.line {
            Line::Plain(text) => text.zeroize(),
            Line::Secret { buf, len } => {
                buf.as_mut_bytes()[..*len].fill(0);
                *len = 0;
            }
        }
        self.chars = 0;
        EditOutcome::Edited
    }
}

/// The character a keysym types, if it types a printable one: Latin-1
/// keysyms are their code, Unicode keysyms carry theirs, and the keypad's
/// digits and operators (how many people type a PIN) are mapped to the
/// characters printed on them.
fn typed_char(keysym: u32) -> Option<char> {
    let code = match keysym {
        0x20..=0x7e | 0xa0..=0xff => keysym,
        XK_KP_SPACE => u32::from(b' '),
        XK_KP_MULTIPLY..=XK_KP_9 => {
            let index = usize::try_from(keysym - XK_KP_MULTIPLY).ok()?;
            u32::from(*KEYPAD_CHARS.get(index)?)
        }
        XK_KP_EQUAL => u32::from(b'='),
        _ => keysym.checked_sub(UNICODE_KEYSYM_BASE)?,
    };
    char::from_u32(code).filter(|c| !c.is_control())
}

#[cfg(test)]
#[path = "line_editor_tests.rs"]
mod tests;
