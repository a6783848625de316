//! `ctl type` and `ctl key`: key strokes for the guest's keyboard, fed no
//! faster than the guest takes them (the keyboard's queue is bounded and
//! drops what does not fit), and only while input may reach the guest.

use std::time::{Duration, Instant};

use keymap::KeyStroke;

use super::{DisplayHandle, InputRefused};

/// Left Shift's evdev code.
const KEY_LEFTSHIFT: u16 = 42;
/// How long one key stroke may wait for room in the keyboard's queue.
const ROOM_TIMEOUT: Duration = Duration::from_secs(5);
/// Events one stroke needs at most (shift and key, down and up, each
/// with its SYN_REPORT).
const EVENTS_PER_STROKE: usize = 8;
/// Events one key of a combination needs (down and up, each with its
/// SYN_REPORT).
const EVENTS_PER_COMBINATION_KEY: usize = 4;

impl DisplayHandle {
    /// Types `strokes` on the guest's keyboard.
    pub fn type_keystrokes(&self, strokes: &[KeyStroke]) -> Result<(), InputRefused> {
        for (typed, stroke) in strokes.iter().enumerate() {
            self.wait_for_room(typed, EVENTS_PER_STROKE)?;
            self.with_guest_input(|link| {
                if stroke.shift {
                    link.keyboard.key(KEY_LEFTSHIFT, true);
                }
                link.keyboard.key(stroke.code, true);
                link.keyboard.key(stroke.code, false);
                if stroke.shift {
                    link.keyboard.key(KEY_LEFTSHIFT, false);
                }
            })?;
        }
        Ok(())
    }

    /// Presses `codes` in order, then releases them in reverse. Room for
    /// all of it is awaited first: a release dropped for want of room
    /// would leave its key held in the guest.
    pub fn press_combination(&self, codes: &[u16]) -> Result<(), InputRefused> {
        self.wait_for_room(0, codes.len() * EVENTS_PER_COMBINATION_KEY)?;
        self.with_guest_input(|link| {
            for &code in codes {
                link.keyboard.key(code, true);
            }
            for &code in codes.iter().rev() {
                link.keyboard.key(code, false);
            }
        })
    }

    /// Waits until the keyboard's queue has room for `events` more.
    fn wait_for_room(&self, typed: usize, events: usize) -> Result<(), InputRefused> {
        let deadline = Instant::now() + ROOM_TIMEOUT;
        loop {
            let room = self.with_guest_input(|link| link.keyboard.room())?;
            if room >= events {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(InputRefused::NotTaken { typed });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
