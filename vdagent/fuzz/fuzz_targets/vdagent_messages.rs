//! The guest agent's side of the clipboard conversation: whatever bytes
//! `spice-vdagentd` (or anything in the guest holding its port) writes,
//! fed to a `vdagent::ClipboardBridge` in arbitrary pieces, raw or as
//! well-framed messages of the clipboard types, with the viewer offering
//! text and the output drained in between.
//!
//! Invariants, beyond "no panic":
//! - under `from_guest = false` no guest text is ever produced and the
//!   guest is never asked for its clipboard (no CLIPBOARD_REQUEST);
//! - under `to_guest = false` the viewer's offer is refused and no GRAB
//!   and no clipboard data (beyond the selection and type words) reach
//!   the guest;
//! - guest text is at most `MAX_TEXT` bytes and holds no NUL;
//! - the output never exceeds `OUTPUT_LIMIT` and reads back as the agent
//!   reads it: client-port chunks the agent accepts, protocol 1;
//! - once the stream is reported broken, no further event comes.
//!
//! Input: byte 0 picks the policy; then operations, each an opcode byte
//! and its operands: feed the next N raw bytes, feed a framed message
//! (type, data) in pieces, offer text, drain the output.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vdagent::wire::{frame_message, Frame, Reader};
use vdagent::{BridgeEvent, ClipboardBridge, ClipboardPolicy, MAX_TEXT, OUTPUT_LIMIT};

const CLIPBOARD: u32 = 4;
const CLIPBOARD_GRAB: u32 = 7;
const CLIPBOARD_REQUEST: u32 = 8;
/// The message types worth building well-framed: clipboard data,
/// capabilities, grab, request, release, and one the bridge ignores.
const TYPES: [u32; 6] = [CLIPBOARD, 6, CLIPBOARD_GRAB, CLIPBOARD_REQUEST, 9, 2];

/// Reads operands from the input, zero once it runs out.
struct Input<'a> {
    data: &'a [u8],
    /// Megabyte-sized operations cost milliseconds under the sanitizer;
    /// one per input keeps the executions per second up.
    large_done: bool,
}

impl<'a> Input<'a> {
    /// Whether this input may still have its one large operation.
    fn large_left(&mut self) -> bool {
        !std::mem::replace(&mut self.large_done, true)
    }

    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        first
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// The agent's reading of everything the bridge sent.
struct Agent {
    reader: Reader,
    policy: ClipboardPolicy,
}

impl Agent {
    fn read(&mut self, output: &[u8]) {
        assert!(output.len() <= OUTPUT_LIMIT, "output of {}", output.len());
        let mut frames = Vec::new();
        self.reader
            .push(output, &mut frames)
            .expect("the bridge writes chunks the agent accepts");
        for frame in frames {
            let Frame::Message { msg_type, data } = frame else {
                panic!("the bridge wrote {frame:?}");
            };
            if !self.policy.from_guest {
                assert_ne!(msg_type, CLIPBOARD_REQUEST, "asked for a refused clipboard");
            }
            if !self.policy.to_guest {
                assert_ne!(msg_type, CLIPBOARD_GRAB, "offered a refused clipboard");
                if msg_type == CLIPBOARD {
                    assert!(data.len() <= 8, "sent {} bytes of clipboard", data.len());
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input {
        data,
        large_done: false,
    };
    let policy_bits = input.byte();
    let policy = ClipboardPolicy {
        to_guest: policy_bits & 1 != 0,
        from_guest: policy_bits & 2 != 0,
    };
    let mut bridge = ClipboardBridge::new(policy);
    let mut agent = Agent {
        reader: Reader::new(usize::MAX),
        policy,
    };
    let mut broken = false;
    while !input.data.is_empty() {
        let events = match input.byte() % 8 {
            0..=3 => {
                let length = usize::from(input.byte());
                bridge.receive(input.bytes(length))
            }
            4 | 5 => {
                let msg_type = TYPES[usize::from(input.byte()) % TYPES.len()];
                let length = usize::from(input.byte()) * 3;
                // Now and then a message around the size limit, cheaply:
                // a run of one repeated byte.
                let repeat = match input.byte() {
                    255 if input.large_left() => MAX_TEXT + 9,
                    254 if input.large_left() => MAX_TEXT - 8,
                    _ => 0,
                };
                let mut data = input.bytes(length).to_vec();
                data.resize(data.len() + repeat, b'a');
                let framed = frame_message(msg_type, &data).unwrap();
                // At most 64 pieces, so a large message is not a million calls.
                let piece = (1 + usize::from(input.byte()) * 32).max(framed.len() / 64);
                let mut events = Vec::new();
                for part in framed.chunks(piece) {
                    events.extend(bridge.receive(part));
                }
                events
            }
            6 => {
                let repeat = match input.byte() {
                    255 if input.large_left() => MAX_TEXT / 4 + 1,
                    small => usize::from(small),
                };
                let text = "\u{e9}ab".repeat(repeat);
                let offered = bridge.offer_text(&text);
                assert_eq!(offered.is_ok(), policy.to_guest);
                Vec::new()
            }
            _ => {
                agent.read(&bridge.take_output());
                Vec::new()
            }
        };
        for event in events {
            assert!(!broken, "an event after the stream broke: {event:?}");
            match event {
                BridgeEvent::GuestText(text) => {
                    assert!(policy.from_guest, "guest text under from_guest = false");
                    assert!(text.len() <= MAX_TEXT && !text.contains('\0'));
                }
                BridgeEvent::Refused { .. } => {}
                BridgeEvent::Broken(_) => broken = true,
            }
        }
    }
    agent.read(&bridge.take_output());
});
