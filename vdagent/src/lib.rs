//! The host side of the spice-vdagent clipboard protocol, without I/O.
//!
//! A desktop guest runs `spice-vdagentd`, which speaks to "the client"
//! over the virtio-serial port `com.redhat.spice.0`; securevm plays that
//! client and connects the guest's clipboard to the VNC viewer's cut
//! text. The clipboard is a data channel out of and into the guest, so
//! the role's policy is enforced here, in one KVM-free place the tests
//! and the fuzzer reach: [`ClipboardBridge`] never asks the guest for data
//! it may not pass on, never offers the guest data it may not have, and
//! reports every refused transfer (its size, never its content) for the
//! audit log.
//!
//! The protocol (spice-protocol's `vd_agent.h`): we announce the
//! capabilities CLIPBOARD_BY_DEMAND and CLIPBOARD_SELECTION. When the
//! guest copies, it sends CLIPBOARD_GRAB with the types it holds; if the
//! policy lets text out we answer CLIPBOARD_REQUEST for UTF-8 text and get
//! CLIPBOARD with the data. When the viewer copies, we send GRAB; when a
//! guest program pastes, the agent sends REQUEST and we answer CLIPBOARD.
//! With both sides announcing CLIPBOARD_SELECTION, clipboard messages
//! start with a selection byte and three reserved bytes; only the
//! CLIPBOARD selection is bridged (X's PRIMARY follows every mouse
//! selection and a viewer has only one clipboard).

pub mod wire;

use wire::{BrokenStream, Frame, Reader, SkipReason};

/// Largest text passed either way, in bytes of UTF-8.
pub const MAX_TEXT: usize = 1 << 20;
/// Largest message kept from the guest: a clipboard of `MAX_TEXT` behind
/// its selection and type words. Larger ones are skipped.
const MAX_MESSAGE_DATA: usize = MAX_TEXT + 8;
/// Bound of the bytes waiting for the guest: one full clipboard, framed,
/// and room for the small messages around it. A message that does not fit
/// is dropped (the guest is not reading its port).
pub const OUTPUT_LIMIT: usize = MAX_TEXT + 64 * 1024;

mod msg {
    pub const CLIPBOARD: u32 = 4;
    pub const ANNOUNCE_CAPABILITIES: u32 = 6;
    pub const CLIPBOARD_GRAB: u32 = 7;
    pub const CLIPBOARD_REQUEST: u32 = 8;
    pub const CLIPBOARD_RELEASE: u32 = 9;
}

mod cap {
    pub const CLIPBOARD_BY_DEMAND: u32 = 5;
    pub const CLIPBOARD_SELECTION: u32 = 6;
}

/// `VD_AGENT_CLIPBOARD_UTF8_TEXT`, the one clipboard type bridged.
const TYPE_UTF8_TEXT: u32 = 1;
/// `VD_AGENT_CLIPBOARD_SELECTION_CLIPBOARD`.
const SELECTION_CLIPBOARD: u8 = 0;
/// A GRAB lists a handful of types (spice defines 7); more is not a
/// clipboard the agent wrote.
const MAX_GRAB_TYPES: usize = 16;

/// What the role allows, from `[roles.NAME.display] clipboard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClipboardPolicy {
    /// Text from the viewer may reach the guest.
    pub to_guest: bool,
    /// Text from the guest may reach the viewer.
    pub from_guest: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToGuest,
    FromGuest,
}

impl Direction {
    /// The name the audit log and the policy use.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToGuest => "to-guest",
            Direction::FromGuest => "from-guest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeEvent {
    /// Text the guest copied, for the viewer (only under `from_guest`).
    GuestText(String),
    /// A transfer the policy refused: the guest offered its clipboard
    /// (`bytes` is 0 when the data was never asked for) or sent data.
    Refused { direction: Direction, bytes: usize },
    /// The guest's stream cannot be framed any more; the bridge reads no
    /// further input.
    Broken(String),
}

/// The policy does not let text from the viewer reach the guest; nothing
/// was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub bytes: usize,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the policy refuses {} bytes of clipboard text to the guest",
            self.bytes
        )
    }
}

impl std::error::Error for Refused {}

/// The clipboard conversation with one guest agent.
pub struct ClipboardBridge {
    policy: ClipboardPolicy,
    reader: Reader,
    broken: bool,
    output: Vec<u8>,
    /// The agent's first capability word, once announced.
    guest_caps: Option<u32>,
    /// Text the viewer offered that the guest may paste.
    offered: Option<String>,
    /// The guest has not yet been told of the offer (it had not announced
    /// its capabilities when the viewer copied).
    grab_pending: bool,
    /// We asked for the guest's text and wait for it.
    request_outstanding: bool,
}

impl ClipboardBridge {
    /// A bridge whose output starts with our capabilities, asking for the
    /// agent's.
    pub fn new(policy: ClipboardPolicy) -> Self {
        let mut bridge = ClipboardBridge {
            policy,
            reader: Reader::new(MAX_MESSAGE_DATA),
            broken: false,
            output: Vec::new(),
            guest_caps: None,
            offered: None,
            grab_pending: false,
            request_outstanding: false,
        };
        bridge.announce(true);
        bridge
    }

    pub fn policy(&self) -> ClipboardPolicy {
        self.policy
    }

    /// The role's setting changed (a pushed policy). What the old one let
    /// start and the new one refuses ends now: the viewer's offer is
    /// withdrawn and an outstanding request for the guest's text is
    /// forgotten, so its answer is refused like any other.
    pub fn set_policy(&mut self, policy: ClipboardPolicy) {
        self.policy = policy;
        if !policy.to_guest {
            self.offered = None;
            self.grab_pending = false;
        }
        if !policy.from_guest {
            self.request_outstanding = false;
        }
    }

    /// Bytes for the guest's port, taken out of the bridge (at most
    /// [`OUTPUT_LIMIT`]).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Text the viewer copied. Under `to_guest` it is offered to the guest
    /// (cut to [`MAX_TEXT`] at a character boundary) and sent when a
    /// program there pastes; otherwise nothing is sent.
    pub fn offer_text(&mut self, text: &str) -> Result<(), Refused> {
        if !self.policy.to_guest {
            return Err(Refused { bytes: text.len() });
        }
        let mut end = text.len().min(MAX_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.offered = Some(text[..end].to_owned());
        self.request_outstanding = false;
        self.grab_pending = true;
        self.send_pending_grab();
        Ok(())
    }

    /// Reads bytes from the guest's port.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<BridgeEvent> {
        let mut events = Vec::new();
        if self.broken {
            return events;
        }
        let mut frames = Vec::new();
        let result = self.reader.push(bytes, &mut frames);
        for frame in frames {
            match frame {
                Frame::Message { msg_type, data } => self.handle(msg_type, &data, &mut events),
                Frame::Skipped { msg_type, reason } => {
                    log::debug!("vdagent: skipped a message of type {msg_type}: {reason:?}");
                    self.skipped(msg_type, reason, &mut events);
                }
            }
        }
        if let Err(BrokenStream(reason)) = result {
            self.broken = true;
            events.push(BridgeEvent::Broken(reason));
        }
        events
    }

    /// A skipped CLIPBOARD message is data the guest sent; under
    /// `from_guest = false` that is a refusal like any other.
    fn skipped(&mut self, msg_type: u32, reason: SkipReason, events: &mut Vec<BridgeEvent>) {
        if msg_type == msg::CLIPBOARD {
            self.request_outstanding = false;
            if !self.policy.from_guest {
                let bytes = match reason {
                    SkipReason::TooLarge(size) => usize::try_from(size)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(4),
                    SkipReason::WrongProtocol(_) => 0,
                };
                events.push(BridgeEvent::Refused {
                    direction: Direction::FromGuest,
                    bytes,
                });
            }
        }
    }

    fn handle(&mut self, msg_type: u32, data: &[u8], events: &mut Vec<BridgeEvent>) {
        if msg_type == msg::ANNOUNCE_CAPABILITIES {
            self.capabilities(data);
            return;
        }
        if !matches!(
            msg_type,
            msg::CLIPBOARD | msg::CLIPBOARD_GRAB | msg::CLIPBOARD_REQUEST | msg::CLIPBOARD_RELEASE
        ) {
            return;
        }
        // spice-vdagentd releases with a bare selection byte on a session
        // change, whatever the capabilities.
        let bare_release = msg_type == msg::CLIPBOARD_RELEASE && data.len() == 1;
        if bare_release && data[0] == SELECTION_CLIPBOARD {
            self.request_outstanding = false;
            return;
        }
        let Some(data) = self.clipboard_selection(data) else {
            return;
        };
        match msg_type {
            msg::CLIPBOARD_GRAB => self.guest_grab(data, events),
            msg::CLIPBOARD_REQUEST => self.guest_request(data),
            msg::CLIPBOARD => self.guest_data(data, events),
            _ => self.request_outstanding = false,
        }
    }

    /// Both sides announced CLIPBOARD_SELECTION (so clipboard messages
    /// carry a selection word).
    fn selections(&self) -> bool {
        self.guest_caps
            .is_some_and(|caps| caps & (1 << cap::CLIPBOARD_SELECTION) != 0)
    }

    /// A clipboard message's data past its selection word, if it is about
    /// the CLIPBOARD selection.
    fn clipboard_selection<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        if !self.selections() {
            return Some(data);
        }
        match data {
            [SELECTION_CLIPBOARD, _, _, _, rest @ ..] => Some(rest),
            _ => None,
        }
    }

    fn capabilities(&mut self, data: &[u8]) {
        let Some((request, caps)) = data.split_first_chunk::<4>() else {
            return;
        };
        let first_word = caps
            .first_chunk::<4>()
            .map_or(0, |word| u32::from_le_bytes(*word));
        // A new announcement is a new agent (or a restarted one): nothing
        // asked of the old one is still wanted.
        self.guest_caps = Some(first_word);
        self.request_outstanding = false;
        if u32::from_le_bytes(*request) != 0 {
            self.announce(false);
        }
        if self.offered.is_some() {
            self.grab_pending = true;
        }
        self.send_pending_grab();
    }

    fn guest_grab(&mut self, types: &[u8], events: &mut Vec<BridgeEvent>) {
        // The guest owns the clipboard now: the viewer's offer is over.
        self.offered = None;
        self.grab_pending = false;
        self.request_outstanding = false;
        if !self.policy.from_guest {
            events.push(BridgeEvent::Refused {
                direction: Direction::FromGuest,
                bytes: 0,
            });
            return;
        }
        let has_text = types
            .chunks_exact(4)
            .take(MAX_GRAB_TYPES)
            .any(|word| word == TYPE_UTF8_TEXT.to_le_bytes());
        if has_text {
            let mut request = self.selection_prefix();
            request.extend_from_slice(&TYPE_UTF8_TEXT.to_le_bytes());
            self.request_outstanding = self.send(msg::CLIPBOARD_REQUEST, &request);
        }
    }

    /// A program in the guest pastes. It gets the viewer's text only if
    /// the viewer offered it (which the policy already allowed); any other
    /// request is answered with no data, so the program does not wait.
    fn guest_request(&mut self, data: &[u8]) {
        let Some(requested) = data
            .first_chunk::<4>()
            .map(|word| u32::from_le_bytes(*word))
        else {
            return;
        };
        let mut reply = self.selection_prefix();
        reply.extend_from_slice(&requested.to_le_bytes());
        if requested == TYPE_UTF8_TEXT && self.policy.to_guest {
            if let Some(text) = &self.offered {
                reply.extend_from_slice(text.as_bytes());
            }
        }
        self.send(msg::CLIPBOARD, &reply);
    }

    fn guest_data(&mut self, data: &[u8], events: &mut Vec<BridgeEvent>) {
        if !self.policy.from_guest {
            events.push(BridgeEvent::Refused {
                direction: Direction::FromGuest,
                bytes: data.len().saturating_sub(4),
            });
            return;
        }
        if !std::mem::take(&mut self.request_outstanding) {
            log::debug!("vdagent: dropped clipboard data nobody asked for");
            return;
        }
        let Some((clip_type, text)) = data.split_first_chunk::<4>() else {
            return;
        };
        if u32::from_le_bytes(*clip_type) != TYPE_UTF8_TEXT {
            return;
        }
        match std::str::from_utf8(text) {
            Ok(text) if text.len() <= MAX_TEXT => {
                events.push(BridgeEvent::GuestText(text.replace('\0', "")));
            }
            _ => log::debug!("vdagent: dropped clipboard text that is not UTF-8"),
        }
    }

    fn selection_prefix(&self) -> Vec<u8> {
        if self.selections() {
            vec![SELECTION_CLIPBOARD, 0, 0, 0]
        } else {
            Vec::new()
        }
    }

    fn send_pending_grab(&mut self) {
        let by_demand = self
            .guest_caps
            .is_some_and(|caps| caps & (1 << cap::CLIPBOARD_BY_DEMAND) != 0);
        if !self.grab_pending || !by_demand {
            return;
        }
        let mut grab = self.selection_prefix();
        grab.extend_from_slice(&TYPE_UTF8_TEXT.to_le_bytes());
        if self.send(msg::CLIPBOARD_GRAB, &grab) {
            self.grab_pending = false;
        }
    }

    fn announce(&mut self, request: bool) {
        let caps: u32 = (1 << cap::CLIPBOARD_BY_DEMAND) | (1 << cap::CLIPBOARD_SELECTION);
        let mut data = u32::from(request).to_le_bytes().to_vec();
        data.extend_from_slice(&caps.to_le_bytes());
        self.send(msg::ANNOUNCE_CAPABILITIES, &data);
    }

    /// Queues a message for the guest if the output has room; whether it
    /// was queued.
    fn send(&mut self, msg_type: u32, data: &[u8]) -> bool {
        match wire::frame_message(msg_type, data) {
            Some(framed) if self.output.len() + framed.len() <= OUTPUT_LIMIT => {
                self.output.extend_from_slice(&framed);
                true
            }
            _ => {
                log::debug!("vdagent: output full, dropped a message of type {msg_type}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
