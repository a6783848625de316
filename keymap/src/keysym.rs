//! X11 keysyms (what a VNC viewer sends when it does not speak QEMU's
//! extended key event) to evdev key codes, for a guest with a US layout.
//!
//! A keysym names the character or function, not the key, so this only
//! works when the guest's layout puts that character where a US keyboard
//! does; viewers used with a Japanese keyboard should send scancodes
//! (see [`crate::evdev_from_qemu_scancode`]). The Japanese function keys
//! (Henkan, Muhenkan, ...) and the yen sign have keys of their own and are
//! mapped to them.

use crate::codes::*;
use crate::text::us_key;

/// Keysyms that name a function key, by their X11 name (keysymdef.h
/// without the `XK_` prefix): the name, the keysym, the key.
pub(crate) const FUNCTION_KEYSYMS: &[(&str, u32, u16)] = &[
    ("BackSpace", 0xff08, KEY_BACKSPACE),
    ("Tab", 0xff09, KEY_TAB),
    ("Return", 0xff0d, KEY_ENTER),
    ("Pause", 0xff13, KEY_PAUSE),
    ("Scroll_Lock", 0xff14, KEY_SCROLLLOCK),
    ("Sys_Req", 0xff15, KEY_SYSRQ),
    ("Escape", 0xff1b, KEY_ESC),
    ("Delete", 0xffff, KEY_DELETE),
    // A JIS keyboard's Hankaku/Zenkaku key sends the grave key's scancode;
    // the guest's Japanese layout makes it Zenkaku_Hankaku (shifted: Kanji).
    ("Kanji", 0xff21, KEY_GRAVE),
    ("Muhenkan", 0xff22, KEY_MUHENKAN),
    ("Henkan", 0xff23, KEY_HENKAN),
    ("Henkan_Mode", 0xff23, KEY_HENKAN),
    ("Hiragana", 0xff25, KEY_HIRAGANA),
    ("Katakana", 0xff26, KEY_KATAKANA),
    ("Hiragana_Katakana", 0xff27, KEY_KATAKANAHIRAGANA),
    ("Zenkaku_Hankaku", 0xff2a, KEY_GRAVE),
    ("Eisu_toggle", 0xff30, KEY_CAPSLOCK),
    ("Home", 0xff50, KEY_HOME),
    ("Left", 0xff51, KEY_LEFT),
    ("Up", 0xff52, KEY_UP),
    ("Right", 0xff53, KEY_RIGHT),
    ("Down", 0xff54, KEY_DOWN),
    ("Prior", 0xff55, KEY_PAGEUP),
    ("Page_Up", 0xff55, KEY_PAGEUP),
    ("Next", 0xff56, KEY_PAGEDOWN),
    ("Page_Down", 0xff56, KEY_PAGEDOWN),
    ("End", 0xff57, KEY_END),
    ("Print", 0xff61, KEY_SYSRQ),
    ("Insert", 0xff63, KEY_INSERT),
    ("Menu", 0xff67, KEY_COMPOSE),
    ("Num_Lock", 0xff7f, KEY_NUMLOCK),
    ("KP_Enter", 0xff8d, KEY_KPENTER),
    ("KP_Home", 0xff95, KEY_KP7),
    ("KP_Left", 0xff96, KEY_KP4),
    ("KP_Up", 0xff97, KEY_KP8),
    ("KP_Right", 0xff98, KEY_KP6),
    ("KP_Down", 0xff99, KEY_KP2),
    ("KP_Prior", 0xff9a, KEY_KP9),
    ("KP_Page_Up", 0xff9a, KEY_KP9),
    ("KP_Next", 0xff9b, KEY_KP3),
    ("KP_Page_Down", 0xff9b, KEY_KP3),
    ("KP_End", 0xff9c, KEY_KP1),
    ("KP_Begin", 0xff9d, KEY_KP5),
    ("KP_Insert", 0xff9e, KEY_KP0),
    ("KP_Delete", 0xff9f, KEY_KPDOT),
    ("KP_Multiply", 0xffaa, KEY_KPASTERISK),
    ("KP_Add", 0xffab, KEY_KPPLUS),
    ("KP_Separator", 0xffac, KEY_KPCOMMA),
    ("KP_Subtract", 0xffad, KEY_KPMINUS),
    ("KP_Decimal", 0xffae, KEY_KPDOT),
    ("KP_Divide", 0xffaf, KEY_KPSLASH),
    ("KP_0", 0xffb0, KEY_KP0),
    ("KP_1", 0xffb1, KEY_KP1),
    ("KP_2", 0xffb2, KEY_KP2),
    ("KP_3", 0xffb3, KEY_KP3),
    ("KP_4", 0xffb4, KEY_KP4),
    ("KP_5", 0xffb5, KEY_KP5),
    ("KP_6", 0xffb6, KEY_KP6),
    ("KP_7", 0xffb7, KEY_KP7),
    ("KP_8", 0xffb8, KEY_KP8),
    ("KP_9", 0xffb9, KEY_KP9),
    ("KP_Equal", 0xffbd, KEY_KPEQUAL),
    ("F1", 0xffbe, KEY_F1),
    ("F2", 0xffbf, KEY_F2),
    ("F3", 0xffc0, KEY_F3),
    ("F4", 0xffc1, KEY_F4),
    ("F5", 0xffc2, KEY_F5),
    ("F6", 0xffc3, KEY_F6),
    ("F7", 0xffc4, KEY_F7),
    ("F8", 0xffc5, KEY_F8),
    ("F9", 0xffc6, KEY_F9),
    ("F10", 0xffc7, KEY_F10),
    ("F11", 0xffc8, KEY_F11),
    ("F12", 0xffc9, KEY_F12),
    ("Shift_L", 0xffe1, KEY_LEFTSHIFT),
    ("Shift_R", 0xffe2, KEY_RIGHTSHIFT),
    ("Control_L", 0xffe3, KEY_LEFTCTRL),
    ("Control_R", 0xffe4, KEY_RIGHTCTRL),
    ("Caps_Lock", 0xffe5, KEY_CAPSLOCK),
    ("Meta_L", 0xffe7, KEY_LEFTMETA),
    ("Meta_R", 0xffe8, KEY_RIGHTMETA),
    ("Alt_L", 0xffe9, KEY_LEFTALT),
    ("Alt_R", 0xffea, KEY_RIGHTALT),
    ("Super_L", 0xffeb, KEY_LEFTMETA),
    ("Super_R", 0xffec, KEY_RIGHTMETA),
    ("ISO_Level3_Shift", 0xfe03, KEY_RIGHTALT),
];

/// Keysyms 0x0100_0000 + U are the Unicode character U.
const UNICODE_KEYSYM_BASE: u32 = 0x0100_0000;
/// The yen sign (Latin-1), which has a key of its own on JIS keyboards.
const KEYSYM_YEN: u32 = 0xa5;

/// The key for `keysym` on a US keyboard, and whether Shift must be held
/// to get it (a capital letter, or a character on a key's upper half).
/// `None` for keysyms with no key here.
pub fn evdev_from_keysym(keysym: u32) -> Option<(u16, bool)> {
    if keysym == KEYSYM_YEN {
        return Some((KEY_YEN, false));
    }
    let latin = if keysym >= UNICODE_KEYSYM_BASE {
        keysym - UNICODE_KEYSYM_BASE
    } else {
        keysym
    };
    if (0x20..0x7f).contains(&latin) {
        let stroke = us_key(char::from_u32(latin)?)?;
        return Some((stroke.code, stroke.shift));
    }
    FUNCTION_KEYSYMS
        .iter()
        .find(|&&(_, sym, _)| sym == keysym)
        .map(|&(_, _, key)| (key, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_latin1() {
        assert_eq!(evdev_from_keysym(0x61), Some((KEY_A, false)));
        assert_eq!(evdev_from_keysym(0x41), Some((KEY_A, true)));
        assert_eq!(evdev_from_keysym(0x20), Some((KEY_SPACE, false)));
        assert_eq!(evdev_from_keysym(0x31), Some((KEY_1, false)));
        assert_eq!(evdev_from_keysym(0x21), Some((KEY_1, true)));
        assert_eq!(evdev_from_keysym(0x40), Some((KEY_2, true)));
        assert_eq!(evdev_from_keysym(0x5c), Some((KEY_BACKSLASH, false)));
        assert_eq!(evdev_from_keysym(0x7c), Some((KEY_BACKSLASH, true)));
        assert_eq!(evdev_from_keysym(0x7e), Some((KEY_GRAVE, true)));
        assert_eq!(evdev_from_keysym(0x3a), Some((KEY_SEMICOLON, true)));
        // The same characters as Unicode keysyms.
        assert_eq!(evdev_from_keysym(0x0100_0061), Some((KEY_A, false)));
    }

    #[test]
    fn function_keys() {
        assert_eq!(evdev_from_keysym(0xff0d), Some((KEY_ENTER, false)));
        assert_eq!(evdev_from_keysym(0xff08), Some((KEY_BACKSPACE, false)));
        assert_eq!(evdev_from_keysym(0xff09), Some((KEY_TAB, false)));
        assert_eq!(evdev_from_keysym(0xff1b), Some((KEY_ESC, false)));
        assert_eq!(evdev_from_keysym(0xffff), Some((KEY_DELETE, false)));
        assert_eq!(evdev_from_keysym(0xff55), Some((KEY_PAGEUP, false)));
        assert_eq!(evdev_from_keysym(0xff54), Some((KEY_DOWN, false)));
        assert_eq!(evdev_from_keysym(0xffbe), Some((KEY_F1, false)));
        assert_eq!(evdev_from_keysym(0xffc9), Some((KEY_F12, false)));
        assert_eq!(evdev_from_keysym(0xffe2), Some((KEY_RIGHTSHIFT, false)));
        assert_eq!(evdev_from_keysym(0xffe4), Some((KEY_RIGHTCTRL, false)));
        assert_eq!(evdev_from_keysym(0xffeb), Some((KEY_LEFTMETA, false)));
        assert_eq!(evdev_from_keysym(0xffe5), Some((KEY_CAPSLOCK, false)));
        assert_eq!(evdev_from_keysym(0xffb7), Some((KEY_KP7, false)));
        assert_eq!(evdev_from_keysym(0xff8d), Some((KEY_KPENTER, false)));
    }

    #[test]
    fn japanese_keysyms() {
        assert_eq!(evdev_from_keysym(0xff2a), Some((KEY_GRAVE, false)));
        assert_eq!(evdev_from_keysym(0xff23), Some((KEY_HENKAN, false)));
        assert_eq!(evdev_from_keysym(0xff22), Some((KEY_MUHENKAN, false)));
        assert_eq!(
            evdev_from_keysym(0xff27),
            Some((KEY_KATAKANAHIRAGANA, false))
        );
        assert_eq!(evdev_from_keysym(0xa5), Some((KEY_YEN, false)));
    }

    #[test]
    fn keysyms_without_a_key() {
        for keysym in [
            0,
            0x1f,
            0x7f,
            0xa4,
            0xe9,
            0xff00,
            0xfffe,
            0x0100_00e9,
            u32::MAX,
        ] {
            assert_eq!(evdev_from_keysym(keysym), None, "{keysym:#x}");
        }
    }
}
