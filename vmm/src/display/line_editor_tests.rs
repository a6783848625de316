use super::*;

const CONTROL_L: u32 = XK_CONTROL_L;

/// Press and release each keysym in turn; the outcomes of the presses.
fn tap(editor: &mut LineEditor, keysyms: &[u32]) -> Vec<EditOutcome> {
    keysyms
        .iter()
        .map(|&keysym| {
            let outcome = editor.key(keysym, true);
            assert_eq!(editor.key(keysym, false), EditOutcome::Ignored);
            outcome
        })
        .collect()
}

fn type_str(editor: &mut LineEditor, text: &str) {
    for c in text.chars() {
        let keysym = match u32::from(c) {
            code @ (0x20..=0x7e | 0xa0..=0xff) => code,
            code => UNICODE_KEYSYM_BASE + code,
        };
        assert_eq!(tap(editor, &[keysym]), [EditOutcome::Edited], "{c:?}");
    }
}

#[test]
fn latin1_and_unicode_keysyms_type_their_characters() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    type_str(&mut editor, "Ab9 é");
    tap(
        &mut editor,
        &[UNICODE_KEYSYM_BASE + 0x3042, UNICODE_KEYSYM_BASE + 0x1f511],
    );
    assert_eq!(editor.text(), "Ab9 éあ🔑");
    assert_eq!(editor.char_count(), 7);
}

#[test]
fn keypad_digits_and_operators_type_what_is_printed_on_them() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    tap(
        &mut editor,
        &[
            0xffb1,
            0xffb0,
            0xffb9,
            0xffae,
            0xffad,
            0xffaa,
            0xffbd,
            XK_KP_SPACE,
        ],
    );
    assert_eq!(editor.text(), "109.-*= ");
}

#[test]
fn only_key_down_edits() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    assert_eq!(editor.key(u32::from(b'a'), false), EditOutcome::Ignored);
    assert_eq!(editor.key(XK_RETURN, false), EditOutcome::Ignored);
    assert_eq!(editor.key(XK_BACKSPACE, false), EditOutcome::Ignored);
    assert_eq!(editor.text(), "");
    assert_eq!(editor.key(u32::from(b'a'), true), EditOutcome::Edited);
    assert_eq!(editor.text(), "a");
}

#[test]
fn control_characters_and_unknown_keysyms_are_ignored() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    let refused = [
        0x00,
        0x1f,
        0x7f,
        0x9b,
        0xff50,                          // Home
        0xffbe,                          // F1
        0x04a4,                          // a legacy kana keysym
        UNICODE_KEYSYM_BASE + 0x07,      // BEL as a Unicode keysym
        UNICODE_KEYSYM_BASE + 0x85,      // NEL
        UNICODE_KEYSYM_BASE + 0xd800,    // a surrogate
        UNICODE_KEYSYM_BASE + 0x11_0000, // past the last code point
        u32::MAX,
    ];
    for keysym in refused {
        assert_eq!(
            editor.key(keysym, true),
            EditOutcome::Ignored,
            "{keysym:#x}"
        );
    }
    assert_eq!(editor.text(), "");
    assert_eq!(editor.char_count(), 0);
}

#[test]
fn backspace_and_delete_remove_the_last_character() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    type_str(&mut editor, "abé");
    assert_eq!(tap(&mut editor, &[XK_BACKSPACE]), [EditOutcome::Edited]);
    assert_eq!(editor.text(), "ab");
    assert_eq!(tap(&mut editor, &[XK_DELETE]), [EditOutcome::Edited]);
    assert_eq!(editor.text(), "a");
    assert_eq!(
        tap(&mut editor, &[XK_BACKSPACE, XK_BACKSPACE]),
        [EditOutcome::Edited, EditOutcome::Ignored]
    );
    assert_eq!(editor.char_count(), 0);
}

#[test]
fn return_keypad_enter_escape_and_tab_end_the_line_their_way() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    type_str(&mut editor, "x");
    assert_eq!(
        tap(
            &mut editor,
            &[XK_RETURN, XK_KP_ENTER, XK_ESCAPE, XK_TAB, XK_ISO_LEFT_TAB]
        ),
        [
            EditOutcome::Submitted,
            EditOutcome::Submitted,
            EditOutcome::Cancelled,
            EditOutcome::NextField,
            EditOutcome::PreviousField
        ]
    );
    assert_eq!(editor.text(), "x", "none of them edits the line");
    editor.key(XK_SHIFT_R, true);
    assert_eq!(editor.key(XK_TAB, true), EditOutcome::PreviousField);
    editor.key(XK_SHIFT_R, false);
    assert_eq!(editor.key(XK_TAB, true), EditOutcome::NextField);
}

#[test]
fn ctrl_u_clears_ctrl_c_cancels_and_no_ctrl_chord_types() {
    let mut editor = LineEditor::new(true, MAX_LINE_BYTES);
    type_str(&mut editor, "wrong");
    editor.key(CONTROL_L, true);
    assert_eq!(tap(&mut editor, &[u32::from(b'a')]), [EditOutcome::Ignored]);
    assert_eq!(tap(&mut editor, &[u32::from(b'u')]), [EditOutcome::Edited]);
    assert_eq!(editor.char_count(), 0);
    assert_eq!(
        tap(&mut editor, &[u32::from(b'c')]),
        [EditOutcome::Cancelled]
    );
    editor.key(CONTROL_L, false);
    type_str(&mut editor, "u");
    assert_eq!(editor.take_secret().as_bytes(), b"u");
}

#[test]
fn control_stays_held_until_both_control_keys_are_up() {
    let mut editor = LineEditor::new(false, MAX_LINE_BYTES);
    type_str(&mut editor, "ab");
    editor.key(XK_CONTROL_L, true);
    editor.key(XK_CONTROL_R, true);
    editor.key(XK_CONTROL_L, false);
    assert_eq!(editor.key(u32::from(b'U'), true), EditOutcome::Edited);
    assert_eq!(editor.text(), "");
    editor.key(XK_CONTROL_R, false);
    assert_eq!(editor.key(u32::from(b'U'), true), EditOutcome::Edited);
    assert_eq!(editor.text(), "U");
}

#[test]
fn modifiers_move_with_the_focus() {
    let mut first = LineEditor::new(false, MAX_LINE_BYTES);
    let mut second = LineEditor::new(false, MAX_LINE_BYTES);
    type_str(&mut second, "typed");
    first.key(XK_CONTROL_R, true);
    second.set_modifiers(first.modifiers());
    assert_eq!(second.key(u32::from(b'u'), true), EditOutcome::Edited);
    assert_eq!(second.text(), "");
}

#[test]
fn the_line_is_capped_in_bytes_and_never_splits_a_character() {
    let mut editor = LineEditor::new(false, 5);
    type_str(&mut editor, "abcé");
    assert_eq!(editor.key(u32::from(b'z'), true), EditOutcome::Ignored);
    assert_eq!(
        editor.key(UNICODE_KEYSYM_BASE + 0x3042, true),
        EditOutcome::Ignored
    );
    assert_eq!(editor.text(), "abcé");
    assert_eq!(editor.char_count(), 4);

    let mut secret = LineEditor::new(true, usize::MAX);
    for _ in 0..MAX_LINE_BYTES + 40 {
        secret.key(u32::from(b'7'), true);
    }
    assert_eq!(secret.char_count(), MAX_LINE_BYTES);
    assert_eq!(secret.take_secret().len(), MAX_LINE_BYTES);
}

#[test]
fn a_secret_is_never_shown_only_counted() {
    let mut editor = LineEditor::new(true, MAX_LINE_BYTES);
    assert!(editor.is_secret());
    type_str(&mut editor, "héあ");
    assert_eq!(editor.text(), "");
    assert_eq!(editor.field_value(), FieldValue::Masked { chars: 3 });
}

#[test]
fn secret_backspace_removes_a_whole_multibyte_character_and_wipes_it() {
    let mut editor = LineEditor::new(true, MAX_LINE_BYTES);
    type_str(&mut editor, "aあ");
    assert_eq!(tap(&mut editor, &[XK_BACKSPACE]), [EditOutcome::Edited]);
    let Line::Secret { buf, len } = &editor.line else {
        panic!("a secret editor keeps a secret line");
    };
    assert_eq!(*len, 1);
    assert!(buf.as_bytes()[1..].iter().all(|&b| b == 0));
    type_str(&mut editor, "b");
    assert_eq!(editor.take_secret().as_bytes(), b"ab");
}

#[test]
fn take_secret_hands_over_the_bytes_and_leaves_the_line_empty_and_wiped() {
    let mut editor = LineEditor::new(true, MAX_LINE_BYTES);
    type_str(&mut editor, "pässword");
    let secret = editor.take_secret();
    assert_eq!(secret.as_bytes(), "pässword".as_bytes());
    assert_eq!(editor.char_count(), 0);
    let Line::Secret { buf, len } = &editor.line else {
        panic!("a secret editor keeps a secret line");
    };
    assert_eq!(*len, 0);
    assert!(buf.as_bytes().iter().all(|&b| b == 0));
    assert!(editor.take_secret().is_empty());

    let mut user = LineEditor::new(false, MAX_LINE_BYTES);
    type_str(&mut user, "alice");
    assert_eq!(user.take_secret().as_bytes(), b"alice");
    assert_eq!(user.text(), "");
}

#[test]
fn ctrl_u_wipes_a_secret() {
    let mut editor = LineEditor::new(true, MAX_LINE_BYTES);
    type_str(&mut editor, "hunter2");
    editor.key(XK_CONTROL_L, true);
    editor.key(u32::from(b'u'), true);
    let Line::Secret { buf, len } = &editor.line else {
        panic!("a secret editor keeps a secret line");
    };
    assert_eq!(*len, 0);
    assert!(buf.as_bytes().iter().all(|&b| b == 0));
}
