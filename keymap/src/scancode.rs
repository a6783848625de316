//! Scancodes from QEMU's extended key event (RFB client message 255,
//! subtype 0, negotiated with pseudo-encoding -258) to evdev key codes.
//!
//! The message carries the key's XT (set 1) make code folded into one
//! number, the form QEMU calls a "qnum" (rfbproto, "QEMU Extended Key
//! Event Message"): a one-byte code below 0x80 as it is; a code sent with
//! the 0xe0 prefix as its second byte with the high bit set, so right
//! Ctrl (0xe0 0x1d) is 0x9d. QEMU's own server looks the number up as it
//! is and drops anything beyond that table, so nothing above 0xff is a key.
//! Sending the scancode rather than the keysym is what lets a Japanese
//! keyboard's keys (Henkan, Muhenkan, the yen and ro keys) reach the guest
//! unchanged, whatever layout the viewer's host uses.
//!
//! Codes 0x01..=0x53 match evdev's numbering (evdev took the main block
//! from set 1); the rest follow the scancode assignments Linux's AT
//! keyboard driver and QEMU use.

use crate::codes::*;

/// The evdev key code for the extended key event's `code`, or `None` for
/// a number that is no key.
pub fn evdev_from_qemu_scancode(code: u32) -> Option<u16> {
    let code = u8::try_from(code).ok()?;
    if (0x01..=0x53).contains(&code) {
        return Some(u16::from(code));
    }
    SCANCODE_KEYS
        .iter()
        .find(|&&(scancode, _)| scancode == code)
        .map(|&(_, key)| key)
}

/// Scancodes beyond the main block and their keys.
const SCANCODE_KEYS: &[(u8, u16)] = &[
    (0x54, KEY_SYSRQ),
    (0x55, KEY_F16),
    (0x56, KEY_102ND),
    (0x57, KEY_F11),
    (0x58, KEY_F12),
    (0x59, KEY_KPEQUAL),
    (0x5a, KEY_F20),
    (0x5b, KEY_LINEFEED),
    (0x5c, KEY_KPJPCOMMA),
    (0x5d, KEY_F13),
    (0x5e, KEY_F14),
    (0x5f, KEY_F15),
    (0x63, KEY_PHONE),
    (0x64, KEY_OPEN),
    (0x65, KEY_PASTE),
    (0x66, KEY_SETUP),
    (0x67, KEY_FILE),
    (0x68, KEY_SENDFILE),
    (0x69, KEY_DELETEFILE),
    (0x6a, KEY_MSDOS),
    (0x6b, KEY_ROTATE_DISPLAY),
    (0x6c, KEY_EJECTCD),
    (0x6d, KEY_F23),
    (0x6f, KEY_F24),
    (0x70, KEY_KATAKANAHIRAGANA),
    (0x71, KEY_EXIT),
    (0x72, KEY_MOVE),
    (0x73, KEY_RO),
    (0x74, KEY_F21),
    (0x75, KEY_SCROLLUP),
    (0x76, KEY_ZENKAKUHANKAKU),
    (0x77, KEY_HIRAGANA),
    (0x78, KEY_KATAKANA),
    (0x79, KEY_HENKAN),
    (0x7b, KEY_MUHENKAN),
    (0x7d, KEY_YEN),
    (0x7e, KEY_KPCOMMA),
    // 0xe0-prefixed keys.
    (0x81, KEY_CONFIG),
    (0x82, KEY_WWW),
    (0x83, KEY_F17),
    (0x84, KEY_F19),
    (0x85, KEY_AGAIN),
    (0x86, KEY_PROPS),
    (0x87, KEY_UNDO),
    (0x88, KEY_EDIT),
    (0x89, KEY_NEW),
    (0x8a, KEY_REDO),
    (0x8b, KEY_SCALE),
    (0x8c, KEY_FRONT),
    (0x8d, KEY_HANJA),
    (0x8e, KEY_FORWARDMAIL),
    (0x8f, KEY_SCROLLDOWN),
    (0x90, KEY_PREVIOUSSONG),
    (0x92, KEY_COFFEE),
    (0x93, KEY_XFER),
    (0x94, KEY_ALTERASE),
    (0x97, KEY_PROG2),
    (0x98, KEY_REWIND),
    (0x99, KEY_NEXTSONG),
    (0x9c, KEY_KPENTER),
    (0x9d, KEY_RIGHTCTRL),
    (0x9e, KEY_MENU),
    (0x9f, KEY_PROG1),
    (0xa0, KEY_MUTE),
    (0xa1, KEY_CALC),
    (0xa2, KEY_PLAYPAUSE),
    (0xa3, KEY_CLOSECD),
    (0xa4, KEY_STOPCD),
    (0xa5, KEY_SUSPEND),
    (0xa6, KEY_CYCLEWINDOWS),
    (0xa8, KEY_PLAYCD),
    (0xa9, KEY_PAUSECD),
    (0xab, KEY_PROG3),
    (0xac, KEY_PROG4),
    (0xad, KEY_ALL_APPLICATIONS),
    (0xae, KEY_VOLUMEDOWN),
    (0xaf, KEY_CLOSE),
    (0xb0, KEY_VOLUMEUP),
    (0xb1, KEY_RECORD),
    (0xb2, KEY_HOMEPAGE),
    (0xb3, KEY_PLAY),
    (0xb4, KEY_FASTFORWARD),
    (0xb5, KEY_KPSLASH),
    (0xb6, KEY_BASSBOOST),
    // Print Screen: 0xe0 0x37 (0x54 above is Alt+Print, SysRq).
    (0xb7, KEY_SYSRQ),
    (0xb8, KEY_RIGHTALT),
    (0xb9, KEY_PRINT),
    (0xba, KEY_HP),
    (0xbb, KEY_CAMERA),
    (0xbc, KEY_CUT),
    (0xbd, KEY_SOUND),
    (0xbe, KEY_QUESTION),
    (0xbf, KEY_EMAIL),
    (0xc0, KEY_CHAT),
    (0xc1, KEY_FIND),
    (0xc2, KEY_CONNECT),
    (0xc3, KEY_FINANCE),
    (0xc4, KEY_SPORT),
    (0xc5, KEY_SHOP),
    (0xc6, KEY_PAUSE),
    (0xc7, KEY_HOME),
    (0xc8, KEY_UP),
    (0xc9, KEY_PAGEUP),
    (0xca, KEY_CANCEL),
    (0xcb, KEY_LEFT),
    (0xcc, KEY_BRIGHTNESSDOWN),
    (0xcd, KEY_RIGHT),
    (0xce, KEY_KPPLUSMINUS),
    (0xcf, KEY_END),
    (0xd0, KEY_DOWN),
    (0xd1, KEY_PAGEDOWN),
    (0xd2, KEY_INSERT),
    (0xd3, KEY_DELETE),
    (0xd4, KEY_BRIGHTNESSUP),
    (0xd5, KEY_SAVE),
    (0xd6, KEY_SWITCHVIDEOMODE),
    (0xd7, KEY_KBDILLUMTOGGLE),
    (0xd8, KEY_KBDILLUMDOWN),
    (0xd9, KEY_KBDILLUMUP),
    (0xda, KEY_SEND),
    (0xdb, KEY_LEFTMETA),
    (0xdc, KEY_RIGHTMETA),
    (0xdd, KEY_COMPOSE),
    (0xde, KEY_POWER),
    (0xdf, KEY_SLEEP),
    (0xe3, KEY_WAKEUP),
    (0xe4, KEY_REPLY),
    (0xe5, KEY_SEARCH),
    (0xe6, KEY_BOOKMARKS),
    (0xe7, KEY_REFRESH),
    (0xe8, KEY_STOP),
    (0xe9, KEY_FORWARD),
    (0xea, KEY_BACK),
    (0xeb, KEY_COMPUTER),
    (0xec, KEY_MAIL),
    (0xed, KEY_MEDIA),
    (0xef, KEY_MACRO),
    (0xf0, KEY_DOCUMENTS),
    (0xf1, KEY_BATTERY),
    (0xf2, KEY_BLUETOOTH),
    (0xf3, KEY_WLAN),
    (0xf4, KEY_UWB),
    (0xf5, KEY_HELP),
    (0xf6, KEY_KPLEFTPAREN),
    (0xf7, KEY_F18),
    (0xf8, KEY_COPY),
    (0xf9, KEY_F22),
    (0xfb, KEY_KPRIGHTPAREN),
    (0xfd, KEY_EJECTCLOSECD),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_codes_are_the_main_block() {
        assert_eq!(evdev_from_qemu_scancode(0x01), Some(KEY_ESC));
        assert_eq!(evdev_from_qemu_scancode(0x1e), Some(KEY_A));
        assert_eq!(evdev_from_qemu_scancode(0x1c), Some(KEY_ENTER));
        assert_eq!(evdev_from_qemu_scancode(0x1d), Some(KEY_LEFTCTRL));
        assert_eq!(evdev_from_qemu_scancode(0x38), Some(KEY_LEFTALT));
        assert_eq!(evdev_from_qemu_scancode(0x53), Some(KEY_KPDOT));
        assert_eq!(evdev_from_qemu_scancode(0x57), Some(KEY_F11));
        assert_eq!(evdev_from_qemu_scancode(0x58), Some(KEY_F12));
    }

    #[test]
    fn prefixed_codes_carry_the_high_bit() {
        assert_eq!(evdev_from_qemu_scancode(0x9d), Some(KEY_RIGHTCTRL));
        assert_eq!(evdev_from_qemu_scancode(0xb8), Some(KEY_RIGHTALT));
        assert_eq!(evdev_from_qemu_scancode(0x9c), Some(KEY_KPENTER));
        assert_eq!(evdev_from_qemu_scancode(0xc8), Some(KEY_UP));
        assert_eq!(evdev_from_qemu_scancode(0xd0), Some(KEY_DOWN));
        assert_eq!(evdev_from_qemu_scancode(0xcb), Some(KEY_LEFT));
        assert_eq!(evdev_from_qemu_scancode(0xcd), Some(KEY_RIGHT));
        assert_eq!(evdev_from_qemu_scancode(0xd3), Some(KEY_DELETE));
        assert_eq!(evdev_from_qemu_scancode(0xdb), Some(KEY_LEFTMETA));
        assert_eq!(evdev_from_qemu_scancode(0xb5), Some(KEY_KPSLASH));
    }

    #[test]
    fn japanese_keys() {
        assert_eq!(evdev_from_qemu_scancode(0x70), Some(KEY_KATAKANAHIRAGANA));
        assert_eq!(evdev_from_qemu_scancode(0x73), Some(KEY_RO));
        assert_eq!(evdev_from_qemu_scancode(0x79), Some(KEY_HENKAN));
        assert_eq!(evdev_from_qemu_scancode(0x7b), Some(KEY_MUHENKAN));
        assert_eq!(evdev_from_qemu_scancode(0x7d), Some(KEY_YEN));
        // The JIS Hankaku/Zenkaku key sits where the grave key is.
        assert_eq!(evdev_from_qemu_scancode(0x29), Some(KEY_GRAVE));
    }

    #[test]
    fn no_key_is_refused() {
        for code in [0, 0x60, 0x7a, 0x80, 0xe0, 0xff, 0x100, 0xe01d, u32::MAX] {
            assert_eq!(evdev_from_qemu_scancode(code), None, "{code:#x}");
        }
    }

    #[test]
    fn every_key_is_one_a_keyboard_advertises() {
        for code in 0..=0xffu32 {
            if let Some(key) = evdev_from_qemu_scancode(code) {
                assert!((1..=KEY_MAX_KEYBOARD).contains(&key), "{code:#x} -> {key}");
            }
        }
    }
}
