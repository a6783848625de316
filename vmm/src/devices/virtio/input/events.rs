//! The host side of a virtio-input device: the display thread (viewer
//! keys and pointer, `ctl type`/`ctl key`) queues evdev events here, and
//! the device's I/O thread moves them into the guest's buffers. The queue
//! is bounded and never blocks the producer: a batch that does not fit is
//! dropped whole and counted, so the guest sees every batch complete or
//! not at all. What the guest was told is held down is remembered, so that
//! [`InputEvents::release_all`] can let it all go when the display stops
//! feeding the guest (lock, pause, securevm's login screen) and no key
//! stays stuck.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use keymap::codes::{
    BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, EV_ABS, EV_KEY, EV_REL, EV_SYN, KEY_MAX_KEYBOARD, REL_WHEEL,
    SYN_REPORT,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sync::Unpoisoned;

/// Events waiting for the guest at most; a batch that would go beyond is
/// dropped.
pub const QUEUE_CAPACITY: usize = 512;

/// RFB pointer button mask bits (RFC 6143, 7.5.5) and the buttons they
/// are; bits 3 and 4 are the wheel.
const BUTTONS: [(u8, u16); 3] = [(1, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)];
const BUTTON_BITS: u8 = 0b111;
const WHEEL_UP: u8 = 1 << 3;
const WHEEL_DOWN: u8 = 1 << 4;

/// The longest batch [`InputEvents`] builds: a release of every key and
/// button, and its SYN_REPORT.
const LONGEST_BATCH: usize = KEY_MAX_KEYBOARD as usize + BUTTONS.len() + 1;

/// One evdev event as virtio-input carries it (`virtio_input_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    const SYN: Self = Self {
        kind: EV_SYN,
        code: SYN_REPORT,
        value: 0,
    };

    fn key(code: u16, down: bool) -> Self {
        Self {
            kind: EV_KEY,
            code,
            value: u32::from(down),
        }
    }

    /// The 8 bytes the guest reads, little-endian.
    pub fn to_le_bytes(self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0..2].copy_from_slice(&self.kind.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.code.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }
}

/// A cloneable handle on one device's event queue.
#[derive(Clone)]
pub struct InputEvents {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Written after every batch; the I/O thread listens on it.
    ready: EventFd,
}

struct State {
    queue: VecDeque<InputEvent>,
    dropped_batches: u64,
    /// Keys (codes up to [`KEY_MAX_KEYBOARD`]) the guest was told are down.
    held_keys: [u64; 4],
    /// The last button mask the guest was told (RFB bits, wheel bits
    /// included).
    buttons: u8,
    /// The largest pointer position the device advertises.
    pointer_max: (u32, u32),
    /// Built here once, so batches cost no allocation.
    batch: Vec<InputEvent>,
}

impl State {
    fn key_held(&self, code: u16) -> bool {
        let code = usize::from(code);
        self.held_keys[code / 64] & 1 << (code % 64) != 0
    }

    fn set_key_held(&mut self, code: u16, held: bool) {
        let code = usize::from(code);
        if held {
            self.held_keys[code / 64] |= 1 << (code % 64);
        } else {
            self.held_keys[code / 64] &= !(1 << (code % 64));
        }
    }

    /// Queue `self.batch` whole, or count it dropped. Returns whether it
    /// was queued.
    fn push_batch(&mut self) -> bool {
        if self.queue.len() + self.batch.len() > QUEUE_CAPACITY {
            self.dropped_batches += 1;
            crate::rate_limited!(
                log::Level::Warn,
                "virtio-input: the guest is not taking input events; a batch was dropped"
            );
            return false;
        }
        let State { queue, batch, .. } = self;
        queue.extend(batch.iter().copied());
        true
    }

    /// Forget what is queued; keys and buttons in it may now be down in
    /// the guest without their release coming, so they count as held.
    fn clear(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            if event.kind != EV_KEY {
                continue;
            }
            if let Some(&(bit, _)) = BUTTONS.iter().find(|&&(_, code)| code == event.code) {
                self.buttons |= bit;
            } else if event.code <= KEY_MAX_KEYBOARD {
                self.set_key_held(event.code, true);
            }
        }
    }
}

impl InputEvents {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::with_capacity(QUEUE_CAPACITY),
                    dropped_batches: 0,
                    held_keys: [0; 4],
                    buttons: 0,
                    pointer_max: (u32::MAX, u32::MAX),
                    batch: Vec::with_capacity(LONGEST_BATCH),
                }),
                ready: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unpoisoned()
    }

    fn wake(&self) {
        if let Err(e) = self.shared.ready.write(1) {
            log::debug!("virtio-input: cannot wake the I/O thread: {e}");
        }
    }

    /// How many more events the queue takes now (the guest takes them
    /// out as it reads).
    pub fn room(&self) -> usize {
        QUEUE_CAPACITY.saturating_sub(self.lock().queue.len())
    }

    /// Key `code` (evdev, 1..=248) went down or up. Other codes are no
    /// key of our keyboard and are ignored.
    pub fn key(&self, code: u16, down: bool) {
        if !(1..=KEY_MAX_KEYBOARD).contains(&code) {
            log::debug!("virtio-input: key code {code} ignored");
            return;
        }
        let mut state = self.lock();
        state.batch.clear();
        state.batch.push(InputEvent::key(code, down));
        state.batch.push(InputEvent::SYN);
        if state.push_batch() {
            state.set_key_held(code, down);
            drop(state);
            self.wake();
        }
    }

    /// The pointer is at (`x`, `y`) (screen pixels) with RFB button mask
    /// `buttons`: bit 0 left, 1 middle, 2 right; bits 3 and 4 are the
    /// wheel, which viewers press and release for each step up or down,
    /// so a step is reported when its bit becomes set.
    pub fn pointer(&self, x: u32, y: u32, buttons: u8) {
        let mut state = self.lock();
        let (x_max, y_max) = state.pointer_max;
        let (x, y) = (x.min(x_max), y.min(y_max));
        let changed = (state.buttons ^ buttons) & BUTTON_BITS;
        state.batch.clear();
        state.batch.push(InputEvent {
            kind: EV_ABS,
            code: keymap::codes::ABS_X,
            value: x,
        });
        state.batch.push(InputEvent {
            kind: EV_ABS,
            code: keymap::codes::ABS_Y,
            value: y,
        });
        for (bit, code) in BUTTONS {
            if changed & bit != 0 {
                state.batch.push(InputEvent::key(code, buttons & bit != 0));
            }
        }
        for (bit, step) in [(WHEEL_UP, 1i32), (WHEEL_DOWN, -1)] {
            if buttons & bit != 0 && state.buttons & bit == 0 {
                state.batch.push(InputEvent {
                    kind: EV_REL,
                    code: REL_WHEEL,
                    // The wire carries the i32 as its two's complement.
                    value: step.cast_unsigned(),
                });
            }
        }
        state.batch.push(InputEvent::SYN);
        if state.push_batch() {
            state.buttons = buttons & (BUTTON_BITS | WHEEL_UP | WHEEL_DOWN);
            drop(state);
            self.wake();
        }
    }

    /// Release every key and button the guest may think is down. Never
    /// dropped: if the queue has no room, what is queued goes first (the
    /// guest is not reading it anyway).
    pub fn release_all(&self) {
        let mut state = self.lock();
        state.batch.clear();
        if state.queue.len() + LONGEST_BATCH > QUEUE_CAPACITY {
            state.clear();
        }
        for code in 1..=KEY_MAX_KEYBOARD {
            if state.key_held(code) {
                state.batch.push(InputEvent::key(code, false));
            }
        }
        for (bit, code) in BUTTONS {
            if state.buttons & bit != 0 {
                state.batch.push(InputEvent::key(code, false));
            }
        }
        if state.batch.is_empty() {
            return;
        }
        state.batch.push(InputEvent::SYN);
        if state.push_batch() {
            state.held_keys = [0; 4];
            state.buttons = 0;
            drop(state);
            self.wake();
        }
    }

    /// Drop what is queued and not yet delivered. Call it before
    /// [`InputEvents::release_all`], which then also releases the keys
    /// whose release was dropped.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Batches dropped because the queue was full.
    pub fn dropped_batches(&self) -> u64 {
        self.lock().dropped_batches
    }

    /// Events waiting for the guest.
    /// Whether the guest was last sent key `code` going down.
    #[cfg(test)]
    pub fn is_held(&self, code: u16) -> bool {
        self.lock().key_held(code)
    }

    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Positions beyond these are clamped to them (the tablet's axes).
    pub(super) fn set_pointer_max(&self, x_max: u32, y_max: u32) {
        self.lock().pointer_max = (x_max, y_max);
    }

    /// The fd the I/O thread listens on.
    pub(super) fn ready_fd(&self) -> RawFd {
        self.shared.ready.as_raw_fd()
    }

    /// Consume the wake-up (the I/O thread, before delivering).
    pub(super) fn take_wakeup(&self) {
        // EAGAIN (nothing written since) is fine: the queue is the truth.
        let _ = self.shared.ready.read();
    }

    /// Ask the I/O thread to come back (it stopped at its bound).
    pub(super) fn wake_again(&self) {
        self.wake();
    }

    /// Hand queued events to `deliver` in order, at most `limit`; each
    /// one it accepts (returns true for) leaves the queue. Stops at the
    /// first it refuses. Returns how many were delivered.
    pub(super) fn deliver(
        &self,
        limit: usize,
        mut deliver: impl FnMut(InputEvent) -> bool,
    ) -> usize {
        let mut state = self.lock();
        let mut delivered = 0;
        while delivered < limit {
            let Some(&event) = state.queue.front() else {
                break;
            };
            if !deliver(event) {
                break;
            }
            state.queue.pop_front();
            delivered += 1;
        }
        delivered
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }
}
