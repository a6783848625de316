//! What a VNC viewer or `securevm ctl type`/`ctl key` sends, turned into
//! the Linux evdev key codes a virtio-input keyboard reports: QEMU's
//! extended key event scancodes, X11 keysyms, text under a US or Japanese
//! (JIS) layout, and key names. No I/O; kept out of the VMM crate so that
//! it builds and tests without KVM.

pub mod codes;
mod keysym;
mod names;
mod scancode;
mod text;

pub use keysym::evdev_from_keysym;
pub use names::{key_combination, KeyNameError, MAX_COMBINATION_KEYS};
pub use scancode::evdev_from_qemu_scancode;
pub use text::{keystrokes_for_text, KeyStroke, Layout, TypeError, UnknownLayout, MAX_TEXT_CHARS};
