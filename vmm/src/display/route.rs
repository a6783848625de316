//! Where the viewer's input and clipboard go while a guest runs: its
//! virtio-input keyboard and tablet, and the spice-vdagent port, each
//! only while the VM's I/O gate is open (not paused, not locked) and
//! the guest's picture is shown. Clipboard transfers are decided by the
//! role's `[display] clipboard` setting inside the vdagent bridge;
//! refusals are audited.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::sync::Unpoisoned;
use std::time::{Duration, Instant};

use keymap::codes::KEY_LEFTSHIFT;
use rfb::session::Event;
use vdagent::{BridgeEvent, ClipboardBridge, ClipboardPolicy, Direction};

use guest_policy::model::Clipboard;

use crate::audit::{Audit, Event as AuditEvent};
use crate::devices::virtio::console::PortEnd;
use crate::devices::virtio::input::InputEvents;
use crate::devices::virtio::IoGate;

/// The running guest's side of the display.
pub struct GuestLink {
    pub keyboard: InputEvents,
    pub tablet: InputEvents,
    pub gate: IoGate,
    pub clipboard: Option<ClipboardLink>,
    pub audit: Audit,
    /// The size the tablet's axes span.
    pub tablet_size: (u32, u32),
    /// Whether a viewer holds a Shift key (for viewers that send only
    /// keysyms: an upper-case letter arrives without its Shift).
    pub shift_held: AtomicBool,
    /// Which key each keysym held down by a keysym-only viewer pressed:
    /// its release lets go of the same key, even if the viewer's layout
    /// makes the up event's keysym another one (a German Shift+7 is '/'
    /// going down and '7' coming up).
    pub keysyms_down: Mutex<Vec<(u32, u16)>>,
}

/// Keysyms remembered as held at once; a viewer that presses more
/// without releasing has its oldest forgotten.
const MAX_KEYSYMS_DOWN: usize = 32;

/// Bytes of the guest's clipboard port read per call. The caller holds
/// the display's state lock, which securevm's lock screen and the
/// guest's screen updates also need; a guest writing as fast as it is
/// read must not keep it. The rest waits in the port, whose fd stays
/// readable, for the display thread's next round.
const CLIPBOARD_READ_PER_CALL: usize = 256 * 1024;

/// Clipboard refusals of one direction are audited at most once per
/// this interval (see [`RefusalTally`]).
const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(1);

const XK_SHIFT_L: u32 = 0xffe1;
const XK_SHIFT_R: u32 = 0xffe2;
/// The last of the modifier keysyms (Shift, Control, Caps/Shift Lock,
/// Meta, Alt, Super, Hyper: 0xffe1..=0xffee).
const XK_HYPER_R: u32 = 0xffee;

/// The vdagent port and the bridge that speaks its protocol.
pub struct ClipboardLink {
    port: PortEnd,
    policy: ClipboardPolicy,
    bridge: ClipboardBridge,
    /// Bytes for the guest the port has not taken yet: one take of the
    /// bridge's output, so at most [`vdagent::OUTPUT_LIMIT`].
    pending: Vec<u8>,
    /// The port's open count the bridge talks to: a guest that opens the
    /// port again (its agent restarted) starts a new conversation.
    opens: u64,
    to_guest_refusals: RefusalTally,
    from_guest_refusals: RefusalTally,
}

/// Refusals of one direction not yet in the audit log. The guest decides
/// how often its agent offers or sends its clipboard (a GRAB is 28
/// bytes), and every record is written and synced to disk while the
/// display's state lock is held: so at most one record is written per
/// [`REFUSAL_AUDIT_INTERVAL`], and the refusals in between add their
/// bytes to the next one.
#[derive(Debug, Default)]
struct RefusalTally {
    last_record: Option<Instant>,
    /// Refusals waiting, and the bytes they refused.
    waiting: u64,
    bytes: u64,
}

impl RefusalTally {
    /// Counts a refusal of `bytes`; returns the bytes to record now, if a
    /// record is due.
    fn add(&mut self, bytes: u64, now: Instant) -> Option<u64> {
        self.waiting += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        self.due(now)
    }

    /// The bytes of the refusals waiting, if there are some and the last
    /// record is at least an interval old.
    fn due(&mut self, now: Instant) -> Option<u64> {
        let recent = self
            .last_record
            .is_some_and(|last| now.saturating_duration_since(last) < REFUSAL_AUDIT_INTERVAL);
        if self.waiting == 0 || recent {
            return None;
        }
        self.last_record = Some(now);
        self.waiting = 0;
        Some(std::mem::take(&mut self.bytes))
    }

    /// What waits, whatever the time (the guest is going away).
    fn remaining(&mut self) -> Option<u64> {
        (std::mem::take(&mut self.waiting) > 0).then(|| std::mem::take(&mut self.bytes))
    }
}

fn audit_refusal(audit: &Audit, direction: Direction, bytes: Option<u64>) {
    if let Some(bytes) = bytes {
        audit.record_or_warn(AuditEvent::ClipboardRefused {
            direction: direction.as_str().into(),
            bytes,
        });
    }
}

/// What the bridge lets cross under a role's `[display] clipboard`.
pub fn clipboard_policy(clipboard: Clipboard) -> ClipboardPolicy {
    ClipboardPolicy {
        to_guest: clipboard.allows_to_guest(),
        from_guest: clipboard.allows_from_guest(),
    }
}

impl ClipboardLink {
    /// The role's setting changed (a pushed policy): it holds from the
    /// next byte on, and for a conversation the guest starts again.
    pub fn set_policy(&mut self, policy: ClipboardPolicy) {
        self.policy = policy;
        self.bridge.set_policy(policy);
    }

    pub fn new(port: PortEnd, policy: ClipboardPolicy) -> ClipboardLink {
        ClipboardLink {
            opens: port.guest_opens(),
            port,
            policy,
            bridge: ClipboardBridge::new(policy),
            pending: Vec::new(),
            to_guest_refusals: RefusalTally::default(),
            from_guest_refusals: RefusalTally::default(),
        }
    }

    /// Audits the refusals whose record is due.
    fn audit_due(&mut self, audit: &Audit) {
        let now = Instant::now();
        audit_refusal(audit, Direction::ToGuest, self.to_guest_refusals.due(now));
        audit_refusal(
            audit,
            Direction::FromGuest,
            self.from_guest_refusals.due(now),
        );
    }

    pub fn readable_fd(&self) -> RawFd {
        self.port.readable_fd()
    }

    /// Starts over with a fresh bridge when the guest opened the port
    /// again since the last look.
    fn follow_reopen(&mut self) {
        let opens = self.port.guest_opens();
        if opens != self.opens {
            self.opens = opens;
            self.bridge = ClipboardBridge::new(self.policy);
            self.pending.clear();
        }
    }
}

impl GuestLink {
    /// Whether input may reach the guest now.
    pub fn accepts_input(&self) -> bool {
        !self.gate.is_closed()
    }

    /// Lets go of every key and button the guest sees held: called when
    /// input stops flowing to it (a lock, a pause, securevm's screen).
    pub fn release_all(&self) {
        self.keyboard.release_all();
        self.tablet.release_all();
    }

    /// A key or pointer event from a viewer.
    /// `screen` is the size of the guest's picture the viewer sees; the
    /// tablet's axes span `tablet_size`, the size offered at boot.
    pub fn input(&self, event: &Event, screen: (u16, u16)) {
        if !self.accepts_input() {
            // A pause closes the gate without a release_all; a key let go
            // meanwhile would stay down in the guest after the resume.
            self.release_all();
            return;
        }
        match *event {
            Event::Key {
                down,
                keysym,
                scancode,
            } => {
                if let Some(code) = scancode.and_then(keymap::evdev_from_qemu_scancode) {
                    self.keyboard.key(code, down);
                    return;
                }
                self.keysym_input(keysym, down);
            }
            Event::Pointer { buttons, x, y } => {
                let x = scale(x, screen.0, self.tablet_size.0);
                let y = scale(y, screen.1, self.tablet_size.1);
                self.tablet.pointer(x, y, buttons);
            }
            Event::CutText(_) | Event::UpdateRequested { .. } => {}
        }
    }

    /// A key from a viewer that sent its keysym only: the key of the US
    /// layout that types it, with Shift added around the press if the
    /// character needs it and the viewer does not hold Shift itself.
    fn keysym_input(&self, keysym: u32, down: bool) {
        if keysym == XK_SHIFT_L || keysym == XK_SHIFT_R {
            self.shift_held.store(down, Ordering::Relaxed);
        }
        let modifier = (XK_SHIFT_L..=XK_HYPER_R).contains(&keysym);
        let mut keysyms_down = self.keysyms_down.lock().unpoisoned();
        if !down && !modifier {
            // The key this keysym pressed; or, for a keysym that never went
            // down (the viewer's layout changed it on the way up), the one
            // key held, if only one is.
            let index = match keysyms_down.iter().position(|&(held, _)| held == keysym) {
                Some(index) => Some(index),
                None if keysyms_down.len() == 1 => Some(0),
                None => None,
            };
            if let Some(index) = index {
                let (_, code) = keysyms_down.remove(index);
                self.keyboard.key(code, false);
                return;
            }
        }
        let Some((code, needs_shift)) = keymap::evdev_from_keysym(keysym) else {
            log::debug!("display: no key for keysym {keysym:#x}");
            return;
        };
        if down && !modifier && !keysyms_down.iter().any(|&(held, _)| held == keysym) {
            if keysyms_down.len() >= MAX_KEYSYMS_DOWN {
                keysyms_down.remove(0);
            }
            keysyms_down.push((keysym, code));
        }
        drop(keysyms_down);
        let add_shift = down && needs_shift && !self.shift_held.load(Ordering::Relaxed);
        if add_shift {
            self.keyboard.key(KEY_LEFTSHIFT, true);
        }
        self.keyboard.key(code, down);
        if add_shift {
            self.keyboard.key(KEY_LEFTSHIFT, false);
        }
    }

    /// Text a viewer put on its clipboard.
    /// Dropped while the guest is paused or locked: whoever sits at the
    /// lock screen is not the session's user.
    pub fn viewer_copied(&mut self, text: &str) {
        if !self.accepts_input() {
            log::debug!("display: the viewer's clipboard was not offered to a stopped guest");
            return;
        }
        let Some(link) = self.clipboard.as_mut() else {
            return;
        };
        link.follow_reopen();
        if link.bridge.offer_text(text).is_err() {
            let due = link
                .to_guest_refusals
                .add(text.len() as u64, Instant::now());
            audit_refusal(&self.audit, Direction::ToGuest, due);
        }
        flush_port(link);
    }

    /// Reads what the guest's agent sent; returns text the guest copied
    /// that may go to viewers.
    pub fn read_clipboard(&mut self) -> Vec<String> {
        let Some(link) = self.clipboard.as_mut() else {
            return Vec::new();
        };
        link.follow_reopen();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut texts = Vec::new();
        let mut left = CLIPBOARD_READ_PER_CALL;
        while left > 0 {
            let read = link.port.read(&mut buffer[..left.min(64 * 1024)]);
            if read == 0 {
                break;
            }
            left -= read;
            for event in link.bridge.receive(&buffer[..read]) {
                match event {
                    BridgeEvent::GuestText(text) => texts.push(text),
                    BridgeEvent::Refused { direction, bytes } => {
                        let tally = match direction {
                            Direction::ToGuest => &mut link.to_guest_refusals,
                            Direction::FromGuest => &mut link.from_guest_refusals,
                        };
                        let due = tally.add(bytes as u64, Instant::now());
                        audit_refusal(&self.audit, direction, due);
                    }
                    BridgeEvent::Broken(reason) => {
                        crate::rate_limited!(
                            log::Level::Warn,
                            "display: the guest's clipboard agent broke the protocol: {reason}"
                        );
                    }
                }
            }
        }
        flush_port(link);
        texts
    }
}

impl GuestLink {
    /// Sends the guest what the clipboard bridge still holds for it.
    /// Also audits the clipboard refusals whose record is due.
    pub fn flush_clipboard(&mut self) {
        if let Some(link) = self.clipboard.as_mut() {
            link.follow_reopen();
            flush_port(link);
            link.audit_due(&self.audit);
        }
    }
}

impl Drop for GuestLink {
    /// The refusals still waiting for their record get it now.
    fn drop(&mut self) {
        if let Some(link) = self.clipboard.as_mut() {
            let to_guest = link.to_guest_refusals.remaining();
            audit_refusal(&self.audit, Direction::ToGuest, to_guest);
            let from_guest = link.from_guest_refusals.remaining();
            audit_refusal(&self.audit, Direction::FromGuest, from_guest);
        }
    }
}

/// `position` on an axis of `screen` pixels, as a position on an axis of
/// `axis` pixels (the guest may show another size than the one offered).
fn scale(position: u16, screen: u16, axis: u32) -> u32 {
    if u32::from(screen) == axis || screen <= 1 {
        return u32::from(position).min(axis.saturating_sub(1));
    }
    let scaled = u64::from(position) * u64::from(axis.saturating_sub(1)) / u64::from(screen - 1);
    u32::try_from(scaled)
        .unwrap_or(u32::MAX)
        .min(axis.saturating_sub(1))
}

/// Moves what the bridge has for the guest into the port, as far as the
/// port takes it; the rest waits for the next call.
/// The bridge's output is taken only once what it gave before is all in
/// the port: it bounds what it holds and drops messages beyond, so a
/// guest that never takes its bytes but keeps asking for the clipboard
/// cannot make `pending` grow.
fn flush_port(link: &mut ClipboardLink) {
    if link.pending.is_empty() {
        link.pending = link.bridge.take_output();
    }
    let written = link.port.write(&link.pending);
    link.pending.drain(..written.min(link.pending.len()));
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::devices::virtio::console::{port_channel, PortDevice, PORT_BUFFER_LIMIT};

    const KEY_A_SCANCODE: u32 = 0x1e;

    /// A running guest's link with an open clipboard port whose guest
    /// side the test plays.
    pub(in crate::display) fn link(policy: ClipboardPolicy) -> (GuestLink, PortDevice) {
        let (device, end) = port_channel().unwrap();
        device.guest_opens_for_test();
        let link = GuestLink {
            keyboard: InputEvents::new().unwrap(),
            tablet: InputEvents::new().unwrap(),
            gate: IoGate::default(),
            clipboard: Some(ClipboardLink::new(end, policy)),
            audit: Audit::disabled(),
            tablet_size: (640, 400),
            shift_held: AtomicBool::new(false),
            keysyms_down: Mutex::new(Vec::new()),
        };
        (link, device)
    }

    fn key_a(down: bool) -> Event {
        Event::Key {
            down,
            keysym: u32::from('a'),
            scancode: Some(KEY_A_SCANCODE),
        }
    }

    #[test]
    fn a_keysym_only_viewer_releases_the_key_it_pressed() {
        use keymap::codes::{KEY_7, KEY_SLASH};
        let (link, _port) = link(ClipboardPolicy::default());
        let key = |keysym: char, down| Event::Key {
            down,
            keysym: u32::from(keysym),
            scancode: None,
        };
        // A German layout's Shift+7: '/' goes down, '7' comes up.
        link.input(&key('/', true), (640, 400));
        assert!(link.keyboard.is_held(KEY_SLASH));
        link.input(&key('7', false), (640, 400));
        assert!(
            !link.keyboard.is_held(KEY_SLASH),
            "the key '/' pressed is let go"
        );
        assert!(!link.keyboard.is_held(KEY_7));
        // Two keys held: each release lets go of its own.
        link.input(&key('a', true), (640, 400));
        link.input(&key('b', true), (640, 400));
        link.input(&key('a', false), (640, 400));
        assert!(!link.keyboard.is_held(keymap::codes::KEY_A));
        assert!(link.keyboard.is_held(keymap::codes::KEY_B));
    }

    #[test]
    fn a_key_let_go_while_paused_is_released_in_the_guest() {
        let (link, _port) = link(ClipboardPolicy::default());
        link.input(&key_a(true), (640, 400));
        assert_eq!(link.keyboard.queued(), 2, "key down and SYN");
        // `ctl pause`: the viewer's release of the key cannot reach the
        // guest now, yet the guest must not find it held on resume.
        link.gate.close();
        link.input(&key_a(false), (640, 400));
        link.gate.open();
        assert_eq!(
            link.keyboard.queued(),
            4,
            "a release of the held key is queued for the guest"
        );
        // Nothing is held any more: another release adds nothing.
        link.gate.close();
        link.input(&key_a(false), (640, 400));
        assert_eq!(link.keyboard.queued(), 4);
    }

    #[test]
    fn a_guest_that_never_takes_its_port_bytes_cannot_grow_the_hosts_queue() {
        let policy = ClipboardPolicy {
            to_guest: true,
            from_guest: false,
        };
        let (mut link, port) = link(policy);
        link.viewer_copied(&"x".repeat(vdagent::MAX_TEXT));
        // Each paste request is answered with the whole clipboard; the
        // guest asks again and again and never reads the answers.
        let request = vdagent::wire::frame_message(8, &1u32.to_le_bytes()).unwrap();
        for _ in 0..6 {
            assert_eq!(port.guest_writes_for_test(&request), request.len());
            assert!(link.read_clipboard().is_empty());
        }
        let pending = link.clipboard.as_ref().unwrap().pending.len();
        assert!(
            pending <= vdagent::OUTPUT_LIMIT,
            "{pending} bytes held for a guest that takes none"
        );
    }

    #[test]
    fn one_read_of_the_clipboard_port_takes_a_bounded_share() {
        let (mut link, port) = link(ClipboardPolicy::default());
        // One chunk and one message as long as the protocol allows, which
        // the bridge skips: the guest can keep the port full of it.
        let mut stream = Vec::new();
        for word in [
            vdagent::wire::CLIENT_PORT,
            u32::MAX,
            1,
            4,
            0,
            0,
            u32::MAX - 64,
        ] {
            stream.extend_from_slice(&word.to_le_bytes());
        }
        stream.resize(PORT_BUFFER_LIMIT, 0);
        assert_eq!(port.guest_writes_for_test(&stream), PORT_BUFFER_LIMIT);
        link.read_clipboard();
        let room = port.guest_writes_for_test(&stream);
        assert!(
            room <= CLIPBOARD_READ_PER_CALL,
            "one call read {room} bytes while the guest kept writing"
        );
    }

    #[test]
    fn text_copied_while_the_guest_is_locked_never_reaches_it() {
        let policy = ClipboardPolicy {
            to_guest: true,
            from_guest: true,
        };
        let (mut link, port) = link(policy);
        link.gate.close();
        link.viewer_copied("typed at the lock screen");
        link.gate.open();
        // After the unlock a program in the guest pastes.
        let request = vdagent::wire::frame_message(8, &1u32.to_le_bytes()).unwrap();
        port.guest_writes_for_test(&request);
        link.read_clipboard();
        let sent = port.guest_reads_for_test();
        assert!(!sent.is_empty(), "the paste request was answered");
        assert!(
            !sent.windows(11).any(|w| w == b"lock screen"),
            "the guest received text copied while it was locked"
        );
        // Once running, the viewer's copies reach it again.
        link.viewer_copied("after the unlock");
        port.guest_writes_for_test(&request);
        link.read_clipboard();
        let sent = port.guest_reads_for_test();
        assert!(sent.windows(6).any(|w| w == b"unlock"));
    }

    #[test]
    fn a_guest_offering_its_clipboard_in_a_loop_is_audited_once_per_interval() {
        let dir = std::env::temp_dir().join(format!(
            "securevm-route-{}-refusal-audit",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("audit.key");
        crate::audit::AuditKey::create(&key).unwrap();
        let log = dir.join("audit.jsonl");
        let refusals = || {
            std::fs::read_to_string(&log)
                .unwrap()
                .matches("clipboard-refused")
                .count()
        };
        let (mut link, port) = link(ClipboardPolicy::default());
        link.audit = Audit::open(&log, Some(&key)).unwrap();
        // Under "none" each GRAB is a refusal, and each record is synced
        // to disk: the guest must not choose how many are written.
        let grab = vdagent::wire::frame_message(7, &1u32.to_le_bytes()).unwrap();
        port.guest_writes_for_test(&grab.repeat(200));
        link.read_clipboard();
        link.flush_clipboard();
        assert_eq!(refusals(), 1);
        drop(link);
        assert_eq!(
            refusals(),
            2,
            "the refusals held back are recorded at the end"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pointer_positions_follow_the_shown_size_onto_the_tablet() {
        assert_eq!(scale(639, 1280, 1280), 639);
        assert_eq!(scale(1023, 1024, 1280), 1279);
        assert_eq!(scale(0, 1024, 1280), 0);
        assert_eq!(scale(511, 1024, 2048), 1022);
        assert_eq!(scale(5000, 1280, 1280), 1279);
        assert_eq!(scale(3, 1, 1280), 3);
        assert_eq!(scale(3, 0, 0), 0);
    }
}
