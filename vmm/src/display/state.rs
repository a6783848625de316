//! What the display shows and where its input goes, shared between the
//! display thread, the guest's virtio-gpu I/O thread (which draws the
//! guest's picture), the login and lock code (which draws securevm's own
//! screens and waits for what is typed) and the control API (screenshots,
//! typed text).
//!
//! Two pictures exist: the guest's and, while securevm asks for
//! something or the session is locked, securevm's own screen. The viewer
//! sees securevm's screen whenever there is one, and the guest receives
//! no input then: what is typed goes to securevm's prompt or nowhere.

use std::time::Duration;

use rfb::encode::{Cursor, Surface};
use rfb::protocol::Rect;

use super::prompt::Prompt;
use super::route::GuestLink;

/// Largest edge of the guest's picture kept (a larger scanout is shown
/// black): RFB's 16-bit sizes, and memory.
pub const MAX_CANVAS_EDGE: u32 = 8192;
/// Damage rectangles kept before they are merged into one.
const MAX_DAMAGE: usize = 32;

/// A picture as XRGB8888 words, row after row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canvas {
    pub width: u16,
    pub height: u16,
    pub pixels: Vec<u32>,
}

impl Canvas {
    /// A black canvas; edges are clamped to 1..=MAX_CANVAS_EDGE.
    pub fn black(width: u32, height: u32) -> Canvas {
        let clamp = |edge: u32| u16::try_from(edge.clamp(1, MAX_CANVAS_EDGE)).unwrap_or(1);
        let (width, height) = (clamp(width), clamp(height));
        Canvas {
            width,
            height,
            pixels: vec![0; usize::from(width) * usize::from(height)],
        }
    }

    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    #[allow(clippy::redundant_closure)] // the closure shortens the 'static surface's lifetime
    pub fn surface(&self) -> Surface<'_> {
        // The pixel count matches the size by construction.
        Surface::new(
            &self.pixels,
            usize::from(self.width),
            self.width,
            self.height,
        )
        .unwrap_or_else(|| unreachable_surface())
    }

    /// Copies `rect` of `source` (rows of `stride` words, at least as big
    /// as this canvas) into the same place here; parts outside either
    /// are left alone.
    pub fn copy_from(&mut self, rect: Rect, source: &[u32], stride: usize) -> Rect {
        let rect = rect.intersect(&self.bounds());
        let width = usize::from(self.width);
        for row in 0..usize::from(rect.height) {
            let y = usize::from(rect.y) + row;
            let x = usize::from(rect.x);
            let count = usize::from(rect.width);
            let from = y.checked_mul(stride).and_then(|start| start.checked_add(x));
            let Some(src) = from.and_then(|start| source.get(start..start.checked_add(count)?))
            else {
                // The source is shorter than it claimed: what is missing
                // stays as it was.
                return rect;
            };
            let start = y * width + x;
            self.pixels[start..start + count].copy_from_slice(src);
        }
        rect
    }
}

/// A `Surface` over an empty slice, for the impossible case of a canvas
/// whose pixels do not match its size.
fn unreachable_surface() -> Surface<'static> {
    Surface::new(&[], 0, 0, 0).expect("an empty surface is always valid")
}

/// Why [`super::DisplayHandle::ask`] returned without answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("nobody answered on the display within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("the display stopped")]
    Stopped,
}

/// Everything the display thread and its users share, under one lock.
pub struct State {
    pub guest: Canvas,
    /// securevm's own screen, shown instead of the guest's while set.
    pub own: Option<Canvas>,
    /// What changed in the shown picture since the display thread last
    /// looked.
    pub damage: Vec<Rect>,
    /// The shown picture changed size since the display thread last
    /// looked.
    pub resized: bool,
    /// The guest's pointer image, and whether viewers have the pointer
    /// image they should see now (the guest's, or none on securevm's
    /// own screen).
    pub cursor: Option<Cursor>,
    pub cursor_changed: bool,
    /// The size securevm's own screens are drawn at: the one offered, so
    /// a guest that sets a tiny scanout cannot make the login or the
    /// lock screen unreadable.
    own_size: (u32, u32),
    /// A question securevm asks on the screen, with its answers so far.
    pub prompt: Option<Prompt>,
    /// The running guest's input devices and clipboard, while it runs.
    pub guest_link: Option<GuestLink>,
    /// Set when the display thread ends: waiting for answers is over.
    pub stopped: bool,
}

impl State {
    pub fn new(width: u32, height: u32) -> State {
        State {
            guest: Canvas::black(width, height),
            own: None,
            damage: Vec::new(),
            resized: false,
            cursor: None,
            cursor_changed: false,
            own_size: (width, height),
            prompt: None,
            guest_link: None,
            stopped: false,
        }
    }

    /// The picture viewers see.
    pub fn shown(&self) -> &Canvas {
        self.own.as_ref().unwrap_or(&self.guest)
    }

    pub fn showing_guest(&self) -> bool {
        self.own.is_none()
    }

    pub fn add_damage(&mut self, rect: Rect) {
        let rect = rect.intersect(&self.shown().bounds());
        if rect.is_empty() {
            return;
        }
        self.damage.push(rect);
        if self.damage.len() > MAX_DAMAGE {
            let merged = self.damage.iter().fold(Rect::default(), |a, r| a.union(r));
            self.damage = vec![merged];
        }
    }

    /// The whole shown picture changed (and perhaps its size).
    fn replace_shown(&mut self, previous_size: (u16, u16)) {
        let bounds = self.shown().bounds();
        if (bounds.width, bounds.height) != previous_size {
            self.resized = true;
        }
        self.damage = vec![bounds];
    }

    /// Shows securevm's own screen (a canvas of the offered size, with
    /// no pointer image of the guest's over it), drawn by `draw`.
    pub fn show_own(&mut self, draw: impl FnOnce(&mut Canvas)) {
        let previous = (self.shown().width, self.shown().height);
        let mut canvas = Canvas::black(self.own_size.0, self.own_size.1);
        draw(&mut canvas);
        self.own = Some(canvas);
        self.cursor_changed = true;
        self.replace_shown(previous);
    }

    /// Shows the guest's picture (and pointer image) again.
    pub fn show_guest(&mut self) {
        if self.own.is_none() {
            return;
        }
        let previous = (self.shown().width, self.shown().height);
        self.own = None;
        self.cursor_changed = true;
        self.replace_shown(previous);
    }

    /// The guest's scanout now has this size (or is off: a black screen
    /// of the old size).
    pub fn set_guest_size(&mut self, size: Option<(u32, u32)>) {
        let previous = (self.shown().width, self.shown().height);
        let (width, height) = match size {
            Some((w, h)) if w <= MAX_CANVAS_EDGE && h <= MAX_CANVAS_EDGE => (w, h),
            Some((w, h)) => {
                // Every flush of such a scanout comes here again.
                crate::rate_limited!(
                    log::Level::Warn,
                    "display: the guest's {w}x{h} screen is too large to show"
                );
                (u32::from(self.guest.width), u32::from(self.guest.height))
            }
            None => (u32::from(self.guest.width), u32::from(self.guest.height)),
        };
        self.guest = Canvas::black(width, height);
        if self.showing_guest() {
            self.replace_shown(previous);
        }
    }

    /// The guest drew `rect` of its scanout: `source` holds its whole
    /// picture, `stride` words a row.
    pub fn guest_drew(&mut self, rect: Rect, source: &[u32], stride: usize) {
        let changed = self.guest.copy_from(rect, source, stride);
        if self.showing_guest() {
            self.add_damage(changed);
        }
    }

    /// Takes what changed since the last call: the damage, and whether
    /// the size and the cursor changed.
    pub fn take_changes(&mut self) -> Changes {
        let cursor = if std::mem::take(&mut self.cursor_changed) {
            let guest = self.cursor.clone().filter(|_| self.showing_guest());
            Some(guest.unwrap_or_else(blank_cursor))
        } else {
            None
        };
        Changes {
            damage: std::mem::take(&mut self.damage),
            resized: std::mem::take(&mut self.resized),
            cursor,
        }
    }
}

/// A pointer image that shows nothing: on securevm's own screens, and
/// when the guest hides its pointer.
fn blank_cursor() -> Cursor {
    Cursor {
        width: 1,
        height: 1,
        hotspot_x: 0,
        hotspot_y: 0,
        pixels: vec![0],
    }
}

/// What the display thread sends to viewers after a change.
#[derive(Debug, Default)]
pub struct Changes {
    pub damage: Vec<Rect>,
    pub resized: bool,
    pub cursor: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_drawing_is_copied_and_damages_the_view() {
        let mut state = State::new(4, 2);
        let source: Vec<u32> = (0..8).collect();
        state.guest_drew(Rect::new(1, 0, 2, 2), &source, 4);
        assert_eq!(state.guest.pixels, vec![0, 1, 2, 0, 0, 5, 6, 0]);
        assert_eq!(state.take_changes().damage, vec![Rect::new(1, 0, 2, 2)]);
        assert!(state.take_changes().damage.is_empty());
    }

    #[test]
    fn a_short_or_oversized_source_is_cut_not_trusted() {
        let mut state = State::new(4, 2);
        // Claims a 4-wide picture but holds one row only.
        state.guest_drew(Rect::new(0, 0, 4, 2), &[7; 4], 4);
        assert_eq!(state.guest.pixels, vec![7, 7, 7, 7, 0, 0, 0, 0]);
        // A rectangle beyond the canvas is clipped.
        state.guest_drew(Rect::new(3, 1, 100, 100), &[9; 100_000], 500);
        assert_eq!(state.guest.pixels[7], 9);
    }

    #[test]
    fn the_own_screen_hides_the_guest_and_takes_no_guest_damage() {
        let mut state = State::new(4, 2);
        state.show_own(|canvas| canvas.pixels.fill(0xffffff));
        state.take_changes();
        state.guest_drew(Rect::new(0, 0, 4, 2), &[3; 8], 4);
        assert!(state.take_changes().damage.is_empty());
        assert_eq!(state.shown().pixels, vec![0xffffff; 8]);
        state.show_guest();
        let changes = state.take_changes();
        assert_eq!(changes.damage, vec![Rect::new(0, 0, 4, 2)]);
        assert_eq!(state.shown().pixels, vec![3; 8]);
    }

    #[test]
    fn a_new_guest_size_resizes_the_view_and_huge_ones_are_refused() {
        let mut state = State::new(4, 2);
        state.set_guest_size(Some((8, 8)));
        let changes = state.take_changes();
        assert!(changes.resized);
        assert_eq!(changes.damage, vec![Rect::new(0, 0, 8, 8)]);
        state.set_guest_size(Some((100_000, 8)));
        assert_eq!((state.guest.width, state.guest.height), (8, 8));
    }

    #[test]
    fn a_guest_flushing_a_huge_screen_cannot_flood_the_log() {
        let mut state = State::new(4, 2);
        crate::storage::test_support::captured_warnings();
        for _ in 0..50 {
            state.set_guest_size(Some((100_001, 8)));
        }
        let logged = crate::storage::test_support::captured_warnings()
            .iter()
            .filter(|message| message.contains("100001x8"))
            .count();
        assert!(
            logged <= crate::devices::rate_limit::BURST as usize,
            "{logged} warnings"
        );
    }

    #[test]
    fn securevm_screens_keep_the_offered_size_and_hide_the_guest_pointer() {
        let mut state = State::new(640, 400);
        state.set_guest_size(Some((1, 1)));
        state.cursor = Some(Cursor {
            width: 2,
            height: 1,
            hotspot_x: 0,
            hotspot_y: 0,
            pixels: vec![0xff00_0000, 0xff00_0000],
        });
        state.cursor_changed = true;
        state.show_own(|_| {});
        assert_eq!((state.shown().width, state.shown().height), (640, 400));
        let changes = state.take_changes();
        assert!(changes.resized);
        assert_eq!(changes.cursor, Some(blank_cursor()));
        state.show_guest();
        let changes = state.take_changes();
        assert_eq!((state.shown().width, state.shown().height), (1, 1));
        assert_eq!(changes.cursor.map(|c| c.width), Some(2));
    }

    #[test]
    fn damage_stays_bounded() {
        let mut state = State::new(100, 100);
        for i in 0..200u16 {
            state.add_damage(Rect::new(i % 100, i % 100, 1, 1));
        }
        assert!(state.damage.len() <= MAX_DAMAGE);
    }
}
