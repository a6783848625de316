//! The desktop's screen (`--display vnc=unix:PATH`): an RFB server on a
//! Unix socket created 0600, served by one display thread for the whole
//! life of the process. Before the guest exists it shows securevm's own
//! login; while the guest runs, the guest's virtio-gpu picture, with the
//! viewer's keys and pointer going to its virtio-input devices and the
//! clipboard through the vdagent port as the role allows; while the
//! session is locked, securevm's lock screen again.
//!
//! The display thread only moves bytes between viewers and the shared
//! [`State`]; the guest's I/O thread draws into it through
//! [`gpu2d::ScanoutSink`], and the login code asks its questions through
//! [`DisplayHandle::ask`].

pub mod config;
pub mod line_editor;
mod png;
mod prompt;
mod route;
pub mod screen;
mod server;
mod state;
mod typing;

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rfb::protocol::Rect;
use vdagent::ClipboardPolicy;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{BoundSocket, SocketError};
use crate::confined::{self, Confinement, ThreadError};
use crate::console::PromptPhrase;
use crate::seccomp::ThreadKind;
use crate::sync::Unpoisoned;

pub use config::{DisplayConfig, DisplayConfigError};
pub use prompt::{Answer, FieldSpec, Question};
pub use route::{clipboard_policy, ClipboardLink, GuestLink};
pub use state::{Canvas, PromptError};

use prompt::Prompt;
use state::{Changes, State};

/// Why the display could not start.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("setting up the display failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Thread(#[from] ThreadError),
    #[error("--display: {0}")]
    Gpu(gpu2d::ConfigError),
}

/// What the display thread and the rest of securevm share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Answers arrived, or the display stopped.
    answered: Condvar,
    /// Tells the display thread that something changed.
    wake: EventFd,
    phrase: PromptPhrase,
}

/// The running display; dropping it ends the thread, which removes the
/// socket.
pub struct Display {
    handle: DisplayHandle,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// What the rest of securevm uses the display through; cheap to clone.
#[derive(Clone)]
pub struct DisplayHandle {
    shared: Arc<Shared>,
}

impl Display {
    /// Binds the socket (0600) and starts the display thread, showing a
    /// black screen of the configured size until something is drawn.
    pub fn start(
        config: &DisplayConfig,
        phrase: PromptPhrase,
        seccomp: bool,
    ) -> Result<Display, DisplayError> {
        let socket = BoundSocket::bind_for("--display", &config.socket)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config.width, config.height)),
            answered: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            phrase,
        });
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let thread = spawn_server(socket, shared.clone(), stop.try_clone()?, seccomp)?;
        log::info!(
            "display: viewers connect to {} ({}x{})",
            config.socket.display(),
            config.width,
            config.height
        );
        Ok(Display {
            handle: DisplayHandle { shared },
            stop,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> DisplayHandle {
        self.handle.clone()
    }
}

fn spawn_server(
    socket: BoundSocket,
    shared: Arc<Shared>,
    stop: EventFd,
    seccomp: bool,
) -> Result<JoinHandle<()>, ThreadError> {
    confined::spawn(
        "display",
        Confinement::new(ThreadKind::Display, seccomp),
        move || server::serve(socket, shared, stop),
    )
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unpoisoned()
    }

    fn wake(&self) {
        let _ = self.wake.write(1);
    }

    fn shown_size(&self) -> (u16, u16) {
        let state = self.lock();
        (state.shown().width, state.shown().height)
    }

    fn take_changes(&self) -> Changes {
        self.lock().take_changes()
    }

    fn stopped(&self) {
        self.lock().stopped = true;
        self.answered.notify_all();
    }

    /// A key for securevm's prompt; false if no prompt is up (the key is
    /// then the guest's to have, if anyone's).
    fn prompt_key(&self, keysym: u32, down: bool) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        if state.own.is_none() {
            return false;
        }
        let Some(prompt) = state.prompt.as_mut() else {
            // securevm's notice or lock screen: the key goes nowhere.
            return true;
        };
        if prompt.key(keysym, down) {
            let answered = prompt.is_answered();
            if let (Some(prompt), Some(own)) = (state.prompt.as_ref(), state.own.as_mut()) {
                prompt.draw(&self.phrase, own);
            }
            let bounds = state.shown().bounds();
            state.add_damage(bounds);
            if answered {
                self.answered.notify_all();
            }
        }
        true
    }

    fn guest_input(&self, event: &rfb::session::Event) {
        let state = self.lock();
        if !state.showing_guest() {
            return;
        }
        if let Some(link) = &state.guest_link {
            link.input(event, (state.guest.width, state.guest.height));
        }
    }

    fn viewer_copied(&self, text: &str) {
        let mut state = self.lock();
        if let Some(link) = state.guest_link.as_mut() {
            link.viewer_copied(text);
        }
    }

    /// The guest's clipboard port to watch, while what the guest copied
    /// may go to viewers: not behind securevm's login or lock screen nor
    /// while the guest is paused or locked (whoever sits at the lock
    /// screen is not the session's user). Meanwhile it waits in the port.
    fn clipboard_fd(&self) -> Option<RawFd> {
        let state = self.lock();
        if !state.showing_guest() {
            return None;
        }
        let link = state.guest_link.as_ref()?;
        if !link.accepts_input() {
            return None;
        }
        link.clipboard.as_ref().map(ClipboardLink::readable_fd)
    }

    fn read_clipboard(&self) -> Vec<String> {
        let mut state = self.lock();
        match state.guest_link.as_mut() {
            Some(link) => link.read_clipboard(),
            None => Vec::new(),
        }
    }

    fn flush_clipboard(&self) {
        let mut state = self.lock();
        if let Some(link) = state.guest_link.as_mut() {
            link.flush_clipboard();
        }
    }
}

impl DisplayHandle {
    /// Puts `question` on the screen and waits until it is answered or
    /// `timeout` passes. The guest receives no input meanwhile.
    pub fn ask(&self, question: Question, timeout: Duration) -> Result<Vec<Answer>, PromptError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if let Some(link) = &state.guest_link {
            link.release_all();
        }
        let prompt = Prompt::new(question);
        let phrase = &shared.phrase;
        state.show_own(|canvas| prompt.draw(phrase, canvas));
        state.prompt = Some(prompt);
        shared.wake();
        let deadline = Instant::now() + timeout;
        loop {
            if state.stopped {
                state.prompt = None;
                return Err(PromptError::Stopped);
            }
            if let Some(prompt) = state.prompt.as_mut().filter(|p| p.is_answered()) {
                let answers = prompt.take_answers();
                state.prompt = None;
                return Ok(answers);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.prompt = None;
                return Err(PromptError::TimedOut(timeout));
            }
            state = shared.answered.wait_timeout(state, left).unpoisoned().0;
        }
    }

    /// Shows securevm's screen with `message` and no fields (a wait after
    /// a failed login, the lock screen); the guest receives no input.
    pub fn notice(&self, title: &str, message: &str) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if let Some(link) = &state.guest_link {
            link.release_all();
        }
        state.prompt = None;
        let phrase = &shared.phrase;
        state.show_own(|canvas| prompt::draw_screen(canvas, title, phrase, &[], 0, Some(message)));
        shared.wake();
    }

    /// Shows the guest's picture again and lets input reach it.
    pub fn show_guest(&self) {
        let mut state = self.shared.lock();
        state.prompt = None;
        state.show_guest();
        self.shared.wake();
    }

    /// The running guest's input devices and clipboard port.
    pub fn attach_guest(&self, link: GuestLink) {
        self.shared.lock().guest_link = Some(link);
        self.shared.wake();
    }

    /// A pushed policy changed what the role lets cross the clipboard.
    pub fn set_clipboard_policy(&self, policy: ClipboardPolicy) {
        let mut state = self.shared.lock();
        if let Some(clipboard) = state
            .guest_link
            .as_mut()
            .and_then(|link| link.clipboard.as_mut())
        {
            clipboard.set_policy(policy);
        }
    }

    /// The guest stopped: its devices are gone, its picture goes black.
    pub fn detach_guest(&self) {
        let mut state = self.shared.lock();
        state.guest_link = None;
        state.set_guest_size(None);
        self.shared.wake();
    }

    /// The picture viewers see now, as a PNG file.
    pub fn screenshot(&self) -> Result<png::Screenshot, png::EncodingError> {
        let canvas = self.shared.lock().shown().clone();
        png::encode(&canvas)
    }

    /// Runs `act` on the guest's link if input may reach the guest now
    /// (its picture is shown, it is neither paused nor locked).
    fn with_guest_input<T>(&self, act: impl FnOnce(&GuestLink) -> T) -> Result<T, InputRefused> {
        let state = self.shared.lock();
        if !state.showing_guest() {
            return Err(InputRefused::OwnScreen);
        }
        let link = state.guest_link.as_ref().ok_or(InputRefused::NoGuest)?;
        if !link.accepts_input() {
            return Err(InputRefused::Stopped);
        }
        Ok(act(link))
    }
}

/// Why typed keys did not reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputRefused {
    #[error("securevm's own screen is shown (login or lock): keys do not reach the guest now")]
    OwnScreen,
    #[error("no guest is running")]
    NoGuest,
    #[error("the guest is paused or locked: keys do not reach it now; resume it first")]
    Stopped,
    #[error("the guest stopped taking keys (its keyboard queue stayed full); {typed} of the keys were typed")]
    NotTaken { typed: usize },
}

impl gpu2d::ScanoutSink for DisplayHandle {
    fn set_scanout(&self, size: Option<(u32, u32)>) {
        self.shared.lock().set_guest_size(size);
        self.shared.wake();
    }

    fn flush(&self, damage: gpu2d::Rect, frame: gpu2d::Frame<'_>) {
        let clamp = |value: u32| u16::try_from(value).unwrap_or(u16::MAX);
        let rect = Rect::new(
            clamp(damage.x),
            clamp(damage.y),
            clamp(damage.width),
            clamp(damage.height),
        );
        let mut state = self.shared.lock();
        if (u32::from(state.guest.width), u32::from(state.guest.height))
            != (frame.width, frame.height)
        {
            state.set_guest_size(Some((frame.width, frame.height)));
        }
        state.guest_drew(rect, frame.pixels, frame.stride);
        drop(state);
        self.shared.wake();
    }

    fn set_cursor(&self, cursor: Option<gpu2d::CursorImage>) {
        let mut state = self.shared.lock();
        state.cursor = cursor.and_then(|image| {
            Some(rfb::encode::Cursor {
                width: u16::try_from(image.width).ok()?,
                height: u16::try_from(image.height).ok()?,
                hotspot_x: u16::try_from(image.hot_x).ok()?,
                hotspot_y: u16::try_from(image.hot_y).ok()?,
                pixels: image.pixels,
            })
        });
        // A hidden pointer reaches viewers too (as a blank image).
        state.cursor_changed = true;
        drop(state);
        self.shared.wake();
    }

    fn move_cursor(&self, _x: u32, _y: u32) {
        // Viewers draw the cursor where their own pointer is.
    }
}

/// Two handles are equal when they reach the same display.
impl PartialEq for DisplayHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for DisplayHandle {}

impl std::fmt::Debug for DisplayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DisplayHandle")
    }
}

#[cfg(test)]
mod tests;
