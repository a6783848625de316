//! Text to keystrokes, for `securevm ctl type`: which key (and whether
//! Shift) produces each character under the guest's keyboard layout. The
//! guest interprets key codes with its own layout, so the caller names
//! that layout; a character the layout has no key for refuses the whole
//! text, so that nothing half-typed reaches the guest.

use crate::codes::*;

/// The most characters one request may type.
pub const MAX_TEXT_CHARS: usize = 4096;

/// The guest's keyboard layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// US English (xkb "us", pc104/105).
    Us,
    /// Japanese JIS 106/109 (xkb "jp").
    Jp,
}

/// A layout name other than "us" or "jp".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown keyboard layout {0:?} (known: us, jp)")]
pub struct UnknownLayout(pub String);

impl std::str::FromStr for Layout {
    type Err = UnknownLayout;

    /// "us" or "jp", in any case.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.eq_ignore_ascii_case("us") {
            Ok(Self::Us)
        } else if name.eq_ignore_ascii_case("jp") {
            Ok(Self::Jp)
        } else {
            Err(UnknownLayout(name.to_string()))
        }
    }
}

/// One key to press and release, with Shift held around it or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStroke {
    pub code: u16,
    pub shift: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("no key types {0:?} in this keyboard layout")]
    NoKey(char),
    #[error("text longer than {MAX_TEXT_CHARS} characters")]
    TooLong,
}

/// The keystrokes that type `text` under `layout`: '\n' is Enter, '\t'
/// is Tab. Refused whole if any character has no key or the text is too
/// long.
pub fn keystrokes_for_text(text: &str, layout: Layout) -> Result<Vec<KeyStroke>, TypeError> {
    if text.chars().nth(MAX_TEXT_CHARS).is_some() {
        return Err(TypeError::TooLong);
    }
    text.chars()
        .map(|c| {
            let stroke = match layout {
                Layout::Us => us_key(c),
                Layout::Jp => jp_key(c),
            };
            stroke.ok_or(TypeError::NoKey(c))
        })
        .collect()
}

const fn plain(code: u16) -> Option<KeyStroke> {
    Some(KeyStroke { code, shift: false })
}

const fn shifted(code: u16) -> Option<KeyStroke> {
    Some(KeyStroke { code, shift: true })
}

/// Keys every layout here shares: letters, digits, space, Enter, Tab, and
/// the punctuation on the lower row's last keys.
fn common_key(c: char) -> Option<KeyStroke> {
    if c.is_ascii_alphabetic() {
        let code = letter_key(c.to_ascii_lowercase())?;
        return Some(KeyStroke {
            code,
            shift: c.is_ascii_uppercase(),
        });
    }
    match c {
        '1'..='9' => {
            let offset = u16::try_from(u32::from(c) - u32::from('1')).ok()?;
            plain(KEY_1 + offset)
        }
        '0' => plain(KEY_0),
        ' ' => plain(KEY_SPACE),
        '\n' => plain(KEY_ENTER),
        '\t' => plain(KEY_TAB),
        ',' => plain(KEY_COMMA),
        '<' => shifted(KEY_COMMA),
        '.' => plain(KEY_DOT),
        '>' => shifted(KEY_DOT),
        '/' => plain(KEY_SLASH),
        '?' => shifted(KEY_SLASH),
        _ => None,
    }
}

fn letter_key(c: char) -> Option<u16> {
    Some(match c {
        'a' => KEY_A,
        'b' => KEY_B,
        'c' => KEY_C,
        'd' => KEY_D,
        'e' => KEY_E,
        'f' => KEY_F,
        'g' => KEY_G,
        'h' => KEY_H,
        'i' => KEY_I,
        'j' => KEY_J,
        'k' => KEY_K,
        'l' => KEY_L,
        'm' => KEY_M,
        'n' => KEY_N,
        'o' => KEY_O,
        'p' => KEY_P,
        'q' => KEY_Q,
        'r' => KEY_R,
        's' => KEY_S,
        't' => KEY_T,
        'u' => KEY_U,
        'v' => KEY_V,
        'w' => KEY_W,
        'x' => KEY_X,
        'y' => KEY_Y,
        'z' => KEY_Z,
        _ => return None,
    })
}

/// The key for `c` on a US keyboard.
pub(crate) fn us_key(c: char) -> Option<KeyStroke> {
    common_key(c).or(match c {
        '!' => shifted(KEY_1),
        '@' => shifted(KEY_2),
        '#' => shifted(KEY_3),
        '$' => shifted(KEY_4),
        '%' => shifted(KEY_5),
        '^' => shifted(KEY_6),
        '&' => shifted(KEY_7),
        '*' => shifted(KEY_8),
        '(' => shifted(KEY_9),
        ')' => shifted(KEY_0),
        '-' => plain(KEY_MINUS),
        '_' => shifted(KEY_MINUS),
        '=' => plain(KEY_EQUAL),
        '+' => shifted(KEY_EQUAL),
        '[' => plain(KEY_LEFTBRACE),
        '{' => shifted(KEY_LEFTBRACE),
        ']' => plain(KEY_RIGHTBRACE),
        '}' => shifted(KEY_RIGHTBRACE),
        '\\' => plain(KEY_BACKSLASH),
        '|' => shifted(KEY_BACKSLASH),
        ';' => plain(KEY_SEMICOLON),
        ':' => shifted(KEY_SEMICOLON),
        '\'' => plain(KEY_APOSTROPHE),
        '"' => shifted(KEY_APOSTROPHE),
        '`' => plain(KEY_GRAVE),
        '~' => shifted(KEY_GRAVE),
        _ => None,
    })
}

/// The key for `c` on a JIS keyboard (xkb "jp"; the key names are the US
/// keys at the same positions, plus KEY_YEN right of '^' and KEY_RO left
/// of right Shift).
fn jp_key(c: char) -> Option<KeyStroke> {
    common_key(c).or(match c {
        '!' => shifted(KEY_1),
        '"' => shifted(KEY_2),
        '#' => shifted(KEY_3),
        '$' => shifted(KEY_4),
        '%' => shifted(KEY_5),
        '&' => shifted(KEY_6),
        '\'' => shifted(KEY_7),
        '(' => shifted(KEY_8),
        ')' => shifted(KEY_9),
        '-' => plain(KEY_MINUS),
        '=' => shifted(KEY_MINUS),
        '^' => plain(KEY_EQUAL),
        // Printed on the '^' key; xkb's "jp" also puts it on Shift+0,
        // which other JIS layouts leave empty.
        '~' => shifted(KEY_EQUAL),
        '|' => shifted(KEY_YEN),
        '@' => plain(KEY_LEFTBRACE),
        '`' => shifted(KEY_LEFTBRACE),
        '[' => plain(KEY_RIGHTBRACE),
        '{' => shifted(KEY_RIGHTBRACE),
        ';' => plain(KEY_SEMICOLON),
        '+' => shifted(KEY_SEMICOLON),
        ':' => plain(KEY_APOSTROPHE),
        '*' => shifted(KEY_APOSTROPHE),
        // The key right of ':' reports the US backslash key's code.
        ']' => plain(KEY_BACKSLASH),
        '}' => shifted(KEY_BACKSLASH),
        '\\' => plain(KEY_RO),
        '_' => shifted(KEY_RO),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stroke(c: char, layout: Layout) -> (u16, bool) {
        let strokes = keystrokes_for_text(&c.to_string(), layout).unwrap();
        assert_eq!(strokes.len(), 1);
        (strokes[0].code, strokes[0].shift)
    }

    #[test]
    fn us_layout() {
        let cases = [
            ('a', KEY_A, false),
            ('Z', KEY_Z, true),
            ('1', KEY_1, false),
            ('9', KEY_9, false),
            ('0', KEY_0, false),
            ('!', KEY_1, true),
            ('@', KEY_2, true),
            ('#', KEY_3, true),
            ('^', KEY_6, true),
            ('&', KEY_7, true),
            ('*', KEY_8, true),
            ('(', KEY_9, true),
            (')', KEY_0, true),
            ('-', KEY_MINUS, false),
            ('_', KEY_MINUS, true),
            ('=', KEY_EQUAL, false),
            ('+', KEY_EQUAL, true),
            ('[', KEY_LEFTBRACE, false),
            ('}', KEY_RIGHTBRACE, true),
            ('\\', KEY_BACKSLASH, false),
            ('|', KEY_BACKSLASH, true),
            (';', KEY_SEMICOLON, false),
            (':', KEY_SEMICOLON, true),
            ('\'', KEY_APOSTROPHE, false),
            ('"', KEY_APOSTROPHE, true),
            ('`', KEY_GRAVE, false),
            ('~', KEY_GRAVE, true),
            ('<', KEY_COMMA, true),
            ('.', KEY_DOT, false),
            ('?', KEY_SLASH, true),
            (' ', KEY_SPACE, false),
            ('\n', KEY_ENTER, false),
            ('\t', KEY_TAB, false),
        ];
        for (c, code, shift) in cases {
            assert_eq!(stroke(c, Layout::Us), (code, shift), "{c:?}");
        }
    }

    #[test]
    fn jp_layout() {
        let cases = [
            ('a', KEY_A, false),
            ('Q', KEY_Q, true),
            ('5', KEY_5, false),
            ('!', KEY_1, true),
            ('"', KEY_2, true),
            ('#', KEY_3, true),
            ('&', KEY_6, true),
            ('\'', KEY_7, true),
            ('(', KEY_8, true),
            (')', KEY_9, true),
            ('-', KEY_MINUS, false),
            ('=', KEY_MINUS, true),
            ('^', KEY_EQUAL, false),
            ('~', KEY_EQUAL, true),
            ('|', KEY_YEN, true),
            ('@', KEY_LEFTBRACE, false),
            ('`', KEY_LEFTBRACE, true),
            ('[', KEY_RIGHTBRACE, false),
            ('{', KEY_RIGHTBRACE, true),
            (';', KEY_SEMICOLON, false),
            ('+', KEY_SEMICOLON, true),
            (':', KEY_APOSTROPHE, false),
            ('*', KEY_APOSTROPHE, true),
            (']', KEY_BACKSLASH, false),
            ('}', KEY_BACKSLASH, true),
            ('\\', KEY_RO, false),
            ('_', KEY_RO, true),
            (',', KEY_COMMA, false),
            ('>', KEY_DOT, true),
            ('/', KEY_SLASH, false),
            ('?', KEY_SLASH, true),
            ('\n', KEY_ENTER, false),
        ];
        for (c, code, shift) in cases {
            assert_eq!(stroke(c, Layout::Jp), (code, shift), "{c:?}");
        }
    }

    #[test]
    fn every_printable_ascii_character_has_a_key_in_both_layouts() {
        for byte in 0x20u8..0x7f {
            let c = char::from(byte);
            for layout in [Layout::Us, Layout::Jp] {
                assert!(
                    keystrokes_for_text(&c.to_string(), layout).is_ok(),
                    "{c:?} {layout:?}"
                );
            }
        }
    }

    #[test]
    fn a_whole_text() {
        let strokes = keystrokes_for_text("Hi!\n", Layout::Us).unwrap();
        let expected = [
            KeyStroke {
                code: KEY_H,
                shift: true,
            },
            KeyStroke {
                code: KEY_I,
                shift: false,
            },
            KeyStroke {
                code: KEY_1,
                shift: true,
            },
            KeyStroke {
                code: KEY_ENTER,
                shift: false,
            },
        ];
        assert_eq!(strokes, expected);
    }

    #[test]
    fn a_character_without_a_key_refuses_the_whole_text() {
        assert_eq!(
            keystrokes_for_text("abcé", Layout::Us),
            Err(TypeError::NoKey('é'))
        );
        assert_eq!(
            keystrokes_for_text("日本", Layout::Jp),
            Err(TypeError::NoKey('日'))
        );
        assert_eq!(
            keystrokes_for_text("a\rb", Layout::Us),
            Err(TypeError::NoKey('\r'))
        );
        assert_eq!(
            keystrokes_for_text("\u{7f}", Layout::Jp),
            Err(TypeError::NoKey('\u{7f}'))
        );
    }

    #[test]
    fn layout_names() {
        assert_eq!("us".parse(), Ok(Layout::Us));
        assert_eq!("JP".parse(), Ok(Layout::Jp));
        assert_eq!("de".parse::<Layout>(), Err(UnknownLayout("de".into())));
        assert_eq!("".parse::<Layout>(), Err(UnknownLayout(String::new())));
    }

    #[test]
    fn text_length_is_capped() {
        let longest = "a".repeat(MAX_TEXT_CHARS);
        assert_eq!(
            keystrokes_for_text(&longest, Layout::Us).unwrap().len(),
            MAX_TEXT_CHARS
        );
        let too_long = "a".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(
            keystrokes_for_text(&too_long, Layout::Us),
            Err(TypeError::TooLong)
        );
        assert_eq!(keystrokes_for_text("", Layout::Us), Ok(Vec::new()));
    }
}
