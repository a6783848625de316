//! The display thread end to end over its real Unix socket, with a
//! minimal RFB viewer: the login question is drawn and answered from the
//! viewer's keys, the socket is private and removed at the end, and a
//! viewer that breaks the protocol is dropped while others are served.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::console::PromptPhrase;

const XK_RETURN: u32 = 0xff0d;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("securevm-display-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(dir: &std::path::Path) -> (Display, PathBuf) {
    start_confined(dir, false)
}

fn start_confined(dir: &std::path::Path, seccomp: bool) -> (Display, PathBuf) {
    let socket = dir.join("display.sock");
    let config = DisplayConfig {
        socket: socket.clone(),
        width: 640,
        height: 400,
        max_mem: 64 << 20,
    };
    let phrase = PromptPhrase::parse(b"blue heron").unwrap();
    (Display::start(&config, phrase, seccomp).unwrap(), socket)
}

/// A viewer that speaks just enough RFB 3.8 (security None, Raw).
struct Viewer {
    stream: UnixStream,
    width: u16,
    height: u16,
}

impl Viewer {
    fn connect(socket: &std::path::Path) -> Viewer {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut version = [0u8; 12];
        stream.read_exact(&mut version).unwrap();
        assert_eq!(&version, b"RFB 003.008\n");
        stream.write_all(b"RFB 003.008\n").unwrap();
        let mut types = [0u8; 2];
        stream.read_exact(&mut types).unwrap();
        assert_eq!(types, [1, 1]);
        stream.write_all(&[1]).unwrap();
        let mut result = [0u8; 4];
        stream.read_exact(&mut result).unwrap();
        assert_eq!(result, [0; 4]);
        stream.write_all(&[1]).unwrap();
        let mut init = [0u8; 24];
        stream.read_exact(&mut init).unwrap();
        let width = u16::from_be_bytes([init[0], init[1]]);
        let height = u16::from_be_bytes([init[2], init[3]]);
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len as usize];
        stream.read_exact(&mut name).unwrap();
        Viewer {
            stream,
            width,
            height,
        }
    }

    /// Asks for the whole screen and returns its pixels (32-bit words
    /// as the server's default format puts them).
    fn capture(&mut self) -> Vec<u32> {
        let mut request = vec![3, 0];
        for value in [0, 0, self.width, self.height] {
            request.extend_from_slice(&value.to_be_bytes());
        }
        self.stream.write_all(&request).unwrap();
        let mut pixels = vec![0u32; usize::from(self.width) * usize::from(self.height)];
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 0, "a FramebufferUpdate");
        let rects = u16::from_be_bytes([header[2], header[3]]);
        for _ in 0..rects {
            let mut rect = [0u8; 12];
            self.stream.read_exact(&mut rect).unwrap();
            let field = |i: usize| usize::from(u16::from_be_bytes([rect[i], rect[i + 1]]));
            let (x, y, w, h) = (field(0), field(2), field(4), field(6));
            assert_eq!(
                i32::from_be_bytes([rect[8], rect[9], rect[10], rect[11]]),
                0
            );
            let mut data = vec![0u8; w * h * 4];
            self.stream.read_exact(&mut data).unwrap();
            for row in 0..h {
                for col in 0..w {
                    let at = (row * w + col) * 4;
                    let word =
                        u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                    pixels[(y + row) * usize::from(self.width) + x + col] = word;
                }
            }
        }
        pixels
    }

    fn key(&mut self, keysym: u32) {
        for down in [1u8, 0] {
            let mut event = vec![4, down, 0, 0];
            event.extend_from_slice(&keysym.to_be_bytes());
            self.stream.write_all(&event).unwrap();
        }
    }

    fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            self.key(u32::from(c));
        }
        self.key(XK_RETURN);
    }
}

fn question() -> Question {
    Question {
        title: "securevm: log in".into(),
        fields: vec![
            FieldSpec {
                label: "User".into(),
                secret: false,
            },
            FieldSpec {
                label: "Passphrase".into(),
                secret: true,
            },
        ],
        message: None,
    }
}

#[test]
fn the_login_is_drawn_and_answered_from_the_viewers_keys() {
    let dir = scratch("login");
    let (display, socket) = start(&dir);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let handle = display.handle();
    let asking = std::thread::spawn(move || handle.ask(question(), Duration::from_secs(20)));
    let mut viewer = Viewer::connect(&socket);
    assert_eq!((viewer.width, viewer.height), (640, 400));
    // The question is up once the screen is no longer one colour.
    let mut pixels = viewer.capture();
    for _ in 0..50 {
        if pixels.iter().any(|&p| p != pixels[0]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        pixels = viewer.capture();
    }
    assert!(pixels.iter().any(|&p| p != pixels[0]), "the login is drawn");
    viewer.type_text("alice");
    viewer.type_text("s3cret");
    let answers = asking.join().unwrap().unwrap();
    match answers.as_slice() {
        [Answer::Text(user), Answer::Secret(secret)] => {
            assert_eq!(user, "alice");
            assert_eq!(secret.as_bytes(), b"s3cret");
        }
        other => panic!("unexpected answers {other:?}"),
    }
    // A screenshot is a PNG of the screen's size.
    let shot = display.handle().screenshot().unwrap();
    assert_eq!((shot.width, shot.height), (640, 400));
    assert_eq!(&shot.png[1..4], b"PNG");
    drop(viewer);
    drop(display);
    assert!(!socket.exists(), "the socket is removed at the end");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nobody_answering_times_out_and_a_broken_viewer_is_dropped() {
    let dir = scratch("timeout");
    let (display, socket) = start(&dir);
    let mut broken = UnixStream::connect(&socket).unwrap();
    broken.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let result = display.handle().ask(question(), Duration::from_millis(200));
    assert!(matches!(result, Err(PromptError::TimedOut(_))));
    // The display still serves a proper viewer.
    let mut viewer = Viewer::connect(&socket);
    assert_eq!(viewer.capture().len(), 640 * 400);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_typed_while_a_question_is_up_never_reach_the_guest_link() {
    let dir = scratch("keys");
    let (display, _socket) = start(&dir);
    let handle = display.handle();
    // No guest: keys go to the prompt or nowhere, and typing through the
    // API is refused.
    handle.notice("securevm", "Starting the machine...");
    assert_eq!(
        handle.press_combination(&[keymap::codes::KEY_LEFTSHIFT]),
        Err(InputRefused::OwnScreen)
    );
    handle.show_guest();
    assert_eq!(
        handle.press_combination(&[keymap::codes::KEY_LEFTSHIFT]),
        Err(InputRefused::NoGuest)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_the_guest_copied_waits_while_securevm_s_screen_is_up_or_the_guest_is_stopped() {
    let dir = scratch("clipboard-wait");
    let (display, _socket) = start(&dir);
    let handle = display.handle();
    let policy = vdagent::ClipboardPolicy {
        to_guest: true,
        from_guest: true,
    };
    let (link, _port) = route::tests::link(policy);
    let gate = link.gate.clone();
    handle.attach_guest(link);
    handle.show_guest();
    assert!(handle.shared.clipboard_fd().is_some());
    handle.notice("securevm: locked", "Insert the card to unlock.");
    assert!(
        handle.shared.clipboard_fd().is_none(),
        "the guest's clipboard is not read behind the lock screen"
    );
    handle.show_guest();
    gate.close();
    assert!(
        handle.shared.clipboard_fd().is_none(),
        "nor while the guest is paused"
    );
    gate.open();
    assert!(handle.shared.clipboard_fd().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pushed_clipboard_setting_holds_for_the_running_guest() {
    let dir = scratch("clipboard-push");
    let (display, _socket) = start(&dir);
    let handle = display.handle();
    let (link, port) = route::tests::link(vdagent::ClipboardPolicy::default());
    handle.attach_guest(link);
    handle.show_guest();
    let paste = vdagent::wire::frame_message(8, &1u32.to_le_bytes()).unwrap();
    let pasted = |text: &[u8]| {
        port.guest_writes_for_test(&paste);
        handle.shared.read_clipboard();
        handle.shared.flush_clipboard();
        let sent = port.guest_reads_for_test();
        sent.windows(text.len()).any(|w| w == text)
    };
    handle.shared.viewer_copied("under none");
    assert!(!pasted(b"under none"));

    handle.set_clipboard_policy(vdagent::ClipboardPolicy {
        to_guest: true,
        from_guest: true,
    });
    handle.shared.viewer_copied("under both");
    assert!(pasted(b"under both"), "the widened setting lets text in");

    handle.set_clipboard_policy(vdagent::ClipboardPolicy::default());
    assert!(
        !pasted(b"under both"),
        "text offered under the old setting is withdrawn"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_combination_waits_for_room_for_all_its_releases() {
    use keymap::codes::{KEY_A, KEY_F2, KEY_LEFTALT, KEY_LEFTCTRL};
    let dir = scratch("combination");
    let (display, _socket) = start(&dir);
    let handle = display.handle();
    let (link, _port) = route::tests::link(vdagent::ClipboardPolicy::default());
    let keyboard = link.keyboard.clone();
    handle.attach_guest(link);
    handle.show_guest();
    // A slow guest: its queue has room for one typed stroke, not for
    // a three-key combination.
    while keyboard.room() > 8 {
        keyboard.key(KEY_A, true);
        keyboard.key(KEY_A, false);
    }
    assert_eq!(keyboard.room(), 8);
    let reader = keyboard.clone();
    let draining = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        reader.clear();
    });
    handle
        .press_combination(&[KEY_LEFTCTRL, KEY_LEFTALT, KEY_F2])
        .unwrap();
    draining.join().unwrap();
    assert_eq!(
        keyboard.dropped_batches(),
        0,
        "no release was dropped, so no key stays held in the guest"
    );
    assert_eq!(keyboard.queued(), 12);
    let _ = std::fs::remove_dir_all(&dir);
}

const SECCOMP_CHILD_ENV: &str = "SECUREVM_DISPLAY_SECCOMP_CHILD";

#[test]
fn the_display_thread_runs_under_its_seccomp_filter() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "display::tests::seccomp_child", "--nocapture"])
        .env(SECCOMP_CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{:?}\n{text}", output.status);
    assert!(text.contains("seccomp child: the display served"), "{text}");
}

/// What the filtered display thread does in a real run: accept viewers,
/// serve them, take a login, drop a broken viewer, remove its socket.
#[test]
fn seccomp_child() {
    if std::env::var_os(SECCOMP_CHILD_ENV).is_none() {
        return;
    }
    let dir = scratch("seccomp");
    let (display, socket) = start_confined(&dir, true);
    let handle = display.handle();
    let asking = std::thread::spawn(move || handle.ask(question(), Duration::from_secs(20)));
    let mut broken = UnixStream::connect(&socket).unwrap();
    broken.write_all(b"RFB 009.009\n").unwrap();
    let mut viewer = Viewer::connect(&socket);
    assert_eq!(viewer.capture().len(), 640 * 400);
    viewer.type_text("alice");
    viewer.type_text("pw");
    assert!(asking.join().unwrap().is_ok());
    drop(display);
    assert!(!socket.exists());
    let _ = std::fs::remove_dir_all(&dir);
    println!("seccomp child: the display served");
}
