use super::*;
use crate::display::line_editor::{LineEditor, MAX_LINE_BYTES};

/// A colour none of the screen's own: what is left of the guest's picture.
const GUEST_PIXEL: u32 = 0x00ff_00ff;

fn login<'a>(fields: &'a [Field<'a>], phrase: Option<&'a str>) -> PromptScreen<'a> {
    PromptScreen {
        title: "securevm — log in",
        phrase,
        fields,
        focus: 1,
        message: Some("Wrong passphrase. Wait 2 s."),
    }
}

fn fields<'a>(user: &'a str, secret: FieldValue<'a>) -> [Field<'a>; 2] {
    [
        Field {
            label: "User",
            value: FieldValue::Text(user),
        },
        Field {
            label: "Passphrase",
            value: secret,
        },
    ]
}

fn render(screen: &PromptScreen, width: u32, height: u32) -> Vec<u32> {
    let mut frame = vec![GUEST_PIXEL; width as usize * height as usize];
    let damage = draw(screen, &mut frame, width, height);
    let whole = Rect {
        x: 0,
        y: 0,
        width,
        height,
    };
    if whole.is_empty() {
        assert!(damage.is_empty(), "{damage:?}");
    } else {
        assert_eq!(damage, whole);
    }
    frame
}

fn masked(typed: &str) -> Vec<u32> {
    let mut editor = LineEditor::new(true, MAX_LINE_BYTES);
    for c in typed.chars() {
        editor.key(u32::from(c), true);
    }
    let fields = fields("alice", editor.field_value());
    render(&login(&fields, Some("blue heron at dawn")), 1280, 800)
}

#[test]
fn a_masked_secret_draws_the_same_pixels_whatever_it_holds() {
    assert_eq!(masked("secret"), masked("aaaaaa"));
    assert_ne!(
        masked("secret"),
        masked("secre"),
        "the mask shows the length"
    );
}

#[test]
fn shown_text_changes_the_pixels_where_it_is_drawn() {
    let plain = |user| {
        let fields = fields(user, FieldValue::Masked { chars: 0 });
        render(&login(&fields, Some("blue heron at dawn")), 1280, 800)
    };
    let (secret, other) = (plain("secret"), plain("aaaaaa"));
    let changed: Vec<usize> = (0..secret.len())
        .filter(|&i| secret[i] != other[i])
        .collect();
    assert!(!changed.is_empty());
    // All of the change is in the panel's middle third, where the user
    // field is, none of it at the frame's edge.
    let rows = changed.iter().map(|i| i / 1280);
    assert!(
        rows.clone()
            .all(|row| (800 / 3..800 * 2 / 3).contains(&row)),
        "{:?}",
        rows.min()
    );
}

#[test]
fn the_whole_frame_is_repainted() {
    for (width, height) in [(1280, 800), (640, 480), (3840, 2160), (300, 200)] {
        let fields = fields("alice", FieldValue::Masked { chars: 3 });
        let frame = render(&login(&fields, None), width, height);
        assert!(!frame.contains(&GUEST_PIXEL), "{width}x{height}");
        assert!(frame.iter().any(|&pixel| pixel != BACKGROUND));
    }
}

#[test]
fn the_phrase_is_drawn_and_its_absence_is_shown() {
    let fields = fields("alice", FieldValue::Masked { chars: 0 });
    let heron = render(&login(&fields, Some("blue heron at dawn")), 1280, 800);
    let crane = render(&login(&fields, Some("blue crane at dawn")), 1280, 800);
    let missing = render(&login(&fields, None), 1280, 800);
    assert_ne!(heron, crane);
    assert_ne!(heron, missing);
    assert!(missing.contains(&NO_PHRASE));
    assert!(!heron.contains(&NO_PHRASE));
    assert!(heron.contains(&PHRASE_BORDER));
}

#[test]
fn a_long_phrase_wraps_instead_of_losing_its_end() {
    let phrase = |last: char| {
        let text = format!(
            "{}{last}",
            "a".repeat(crate::console::prompt_phrase::MAX_PHRASE_BYTES - 1)
        );
        let fields = fields("alice", FieldValue::Masked { chars: 0 });
        render(&login(&fields, Some(&text)), 1280, 800)
    };
    assert_ne!(phrase('b'), phrase('c'));
}

#[test]
fn a_long_field_shows_its_end() {
    let user = |last: char| {
        let text = format!("{}{last}", "x".repeat(250));
        let fields = fields(&text, FieldValue::Masked { chars: 0 });
        render(&login(&fields, Some("p")), 1280, 800)
    };
    assert_ne!(user('1'), user('2'));
}

#[test]
fn japanese_text_is_drawn_with_its_own_glyphs() {
    let phrase = |text| {
        let fields = fields("alice", FieldValue::Masked { chars: 0 });
        render(&login(&fields, Some(text)), 1280, 800)
    };
    assert!(unifont::get_glyph('あ').is_some() && unifont::get_glyph('桜').is_some());
    let kana = phrase("あいう");
    assert_ne!(kana, phrase("あいえ"));
    assert_ne!(
        kana,
        phrase("\u{1f600}\u{1f600}\u{1f600}"),
        "not replacement boxes"
    );
}

#[test]
fn characters_the_font_lacks_become_the_same_box() {
    let screen = |text| {
        let fields = fields(text, FieldValue::Masked { chars: 0 });
        render(&login(&fields, Some("p")), 1280, 800)
    };
    // Beyond the Basic Multilingual Plane: an emoji and a private-use
    // character.
    let emoji = screen("a\u{1f600}");
    assert_eq!(emoji, screen("a\u{10fffd}"));
    assert_ne!(emoji, screen("a"), "the box is drawn");
}

#[test]
fn control_characters_are_never_drawn_and_take_no_room() {
    let screen = |title| {
        let fields = fields("alice", FieldValue::Masked { chars: 0 });
        let screen = PromptScreen {
            title,
            ..login(&fields, Some("p"))
        };
        render(&screen, 1280, 800)
    };
    assert_eq!(
        screen("ab"),
        screen("a\u{1b}\u{7}\u{0}\r\n\t\u{7f}\u{85}\u{9b}b")
    );
    assert_ne!(
        screen("ab"),
        screen("a b"),
        "a printable character does change it"
    );
}

#[test]
fn the_focused_field_is_marked() {
    let fields = fields("alice", FieldValue::Masked { chars: 2 });
    let focus = |focus| {
        render(
            &PromptScreen {
                focus,
                ..login(&fields, Some("p"))
            },
            1280,
            800,
        )
    };
    assert_ne!(focus(0), focus(1));
    assert!(focus(1).contains(&FOCUS));
    assert!(
        !focus(2).contains(&FOCUS),
        "out of range: no field has the focus"
    );
    assert!(!focus(usize::MAX).contains(&FOCUS));
}

#[test]
fn any_frame_size_draws_without_panicking_inside_the_frame() {
    let long = "w".repeat(4000);
    let many: Vec<Field> = (0..200)
        .map(|_| Field {
            label: &long,
            value: FieldValue::Masked { chars: usize::MAX },
        })
        .collect();
    let screens = [
        login(&many, Some(&long)),
        PromptScreen {
            title: &long,
            phrase: Some("漢字の合言葉"),
            fields: &[],
            focus: 0,
            message: Some(&long),
        },
    ];
    let sizes = [
        (0, 0),
        (1, 1),
        (0, 1),
        (1, 0),
        (0, 5000),
        (7, 3),
        (1, 5000),
        (5000, 1),
        (100, 50),
        (639, 479),
        (640, 480),
        (1280, 800),
        (1920, 1080),
        (3840, 2160),
    ];
    for screen in &screens {
        for (width, height) in sizes {
            let frame = render(screen, width, height);
            assert!(!frame.contains(&GUEST_PIXEL), "{width}x{height}");
        }
    }
}

#[test]
fn a_frame_shorter_than_its_size_is_drawn_only_where_it_exists() {
    let fields = fields("alice", FieldValue::Masked { chars: 3 });
    let screen = login(&fields, Some("p"));
    // 2.5 rows of a 10x10 frame: two whole rows are drawn.
    let mut frame = vec![GUEST_PIXEL; 25];
    let damage = draw(&screen, &mut frame, 10, 10);
    assert_eq!(
        damage,
        Rect {
            x: 0,
            y: 0,
            width: 10,
            height: 2
        }
    );
    assert!(!frame[..20].contains(&GUEST_PIXEL));
    assert!(frame[20..].iter().all(|&pixel| pixel == GUEST_PIXEL));

    let mut huge_claim = vec![GUEST_PIXEL; 8];
    assert!(draw(&screen, &mut huge_claim, u32::MAX, u32::MAX).is_empty());
    assert!(draw(&screen, &mut [], 1280, 800).is_empty());
}

#[test]
fn rects_clip_without_overflow() {
    let far = Rect {
        x: u32::MAX - 1,
        y: u32::MAX - 1,
        width: u32::MAX,
        height: u32::MAX,
    };
    let frame = Rect {
        x: 0,
        y: 0,
        width: 100,
        height: 100,
    };
    assert_eq!(far.intersect(frame), Rect::default());
    assert_eq!(frame.intersect(far), Rect::default());
    let beside = Rect {
        x: 100,
        y: 0,
        width: 5,
        height: 5,
    };
    assert_eq!(
        beside.intersect(frame),
        Rect::default(),
        "empty, at the origin"
    );
    let overlap = Rect {
        x: 90,
        y: 95,
        width: u32::MAX,
        height: 3,
    };
    assert_eq!(
        overlap.intersect(frame),
        Rect {
            x: 90,
            y: 95,
            width: 10,
            height: 3
        }
    );
    assert!(frame.inset(u32::MAX).is_empty());
}

#[test]
fn wrap_breaks_at_spaces_and_wrap_and_tail_count_fullwidth_characters_as_two_columns() {
    assert_eq!(wrap("abcdef", 4, 3), ["abcd", "ef"]);
    assert_eq!(wrap("ab cd ef", 5, 3), ["ab cd", "ef"]);
    assert_eq!(wrap("abc defgh", 4, 3), ["abc", "defg", "h"]);
    assert_eq!(wrap("a  b", 2, 3), ["a", "b"]);
    assert_eq!(wrap("  ab", 1, 5), ["a", "b"], "no blank line");
    assert_eq!(wrap("あいう", 4, 3), ["あい", "う"]);
    assert_eq!(wrap("abcdefghij", 2, 2), ["ab", "cd"]);
    assert_eq!(wrap("a\u{7}b", 2, 1), ["a\u{7}b"]);
    assert!(wrap("", 4, 3).is_empty());
    assert_eq!(tail("abcあい", 5), "cあい");
    assert_eq!(tail("abc", 5), "abc");
    assert_eq!(tail("abc", 0), "");
}

fn write_png(frame: &[u32], width: u32, height: u32, path: &std::path::Path) {
    let rgb: Vec<u8> = frame
        .iter()
        .flat_map(|pixel| pixel.to_be_bytes()[1..].to_vec())
        .collect();
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&rgb)
        .unwrap();
    eprintln!("wrote {}", path.display());
}

/// Writes the screens as PNG files for people to look at: the 1280x800
/// login and a 640x480 lock screen without a phrase, into
/// `$SECUREVM_SCREEN_DIR` (default: the temporary directory), with
/// `cargo test -p securevm --lib display::screen -- --ignored`.
#[test]
#[ignore = "writes pictures for people to look at"]
fn write_screens_as_png() {
    let dir = std::env::var_os("SECUREVM_SCREEN_DIR")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let fields = fields("alice", FieldValue::Masked { chars: 8 });
    let screen = login(&fields, Some("青い鷺、夜明けに — blue heron at dawn"));
    let frame = render(&screen, 1280, 800);
    write_png(&frame, 1280, 800, &dir.join("login.png"));

    let card = [Field {
        label: "PIN",
        value: FieldValue::Masked { chars: 0 },
    }];
    let lock = PromptScreen {
        title: "securevm — locked",
        phrase: None,
        fields: &card,
        focus: 0,
        message: Some("Locked: insert your card"),
    };
    let frame = render(&lock, 640, 480);
    write_png(&frame, 640, 480, &dir.join("lock-640x480.png"));
}
