//! The bridge against a scripted agent: what the policy lets through in
//! each direction, and how hostile streams are survived.

use super::*;
use wire::{frame_message, Frame, Reader, CLIENT_PORT, MAX_CHUNK_DATA};

const BOTH: ClipboardPolicy = ClipboardPolicy {
    to_guest: true,
    from_guest: true,
};
const NONE: ClipboardPolicy = ClipboardPolicy {
    to_guest: false,
    from_guest: false,
};

fn word(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

/// The agent's capabilities message: BY_DEMAND, and SELECTION if asked.
fn agent_caps(request: bool, selection: bool) -> Vec<u8> {
    let mut caps = 1 << cap::CLIPBOARD_BY_DEMAND;
    if selection {
        caps |= 1 << cap::CLIPBOARD_SELECTION;
    }
    let data = [word(u32::from(request)), word(caps)].concat();
    frame_message(msg::ANNOUNCE_CAPABILITIES, &data).unwrap()
}

fn text_clipboard(text: &[u8]) -> Vec<u8> {
    frame_message(msg::CLIPBOARD, &[&word(TYPE_UTF8_TEXT)[..], text].concat()).unwrap()
}

fn grab(types: &[u32]) -> Vec<u8> {
    let data: Vec<u8> = types.iter().flat_map(|t| word(*t)).collect();
    frame_message(msg::CLIPBOARD_GRAB, &data).unwrap()
}

fn request_text() -> Vec<u8> {
    frame_message(msg::CLIPBOARD_REQUEST, &word(TYPE_UTF8_TEXT)).unwrap()
}

/// The messages the bridge has queued for the guest.
fn sent(bridge: &mut ClipboardBridge) -> Vec<(u32, Vec<u8>)> {
    let output = bridge.take_output();
    assert!(output.len() <= OUTPUT_LIMIT);
    let mut frames = Vec::new();
    Reader::new(usize::MAX).push(&output, &mut frames).unwrap();
    frames
        .into_iter()
        .map(|frame| match frame {
            Frame::Message { msg_type, data } => (msg_type, data),
            other => panic!("the bridge wrote {other:?}"),
        })
        .collect()
}

/// A bridge that has exchanged capabilities with an agent.
fn connected(policy: ClipboardPolicy, selection: bool) -> ClipboardBridge {
    let mut bridge = ClipboardBridge::new(policy);
    assert!(bridge.receive(&agent_caps(false, selection)).is_empty());
    bridge.take_output();
    bridge
}

#[test]
fn starts_by_announcing_and_answers_an_announcement() {
    let mut bridge = ClipboardBridge::new(NONE);
    let ours = [word(1), word(0b110_0000)].concat();
    assert_eq!(sent(&mut bridge), vec![(msg::ANNOUNCE_CAPABILITIES, ours)]);
    assert!(bridge.receive(&agent_caps(true, false)).is_empty());
    let reply = [word(0), word(0b110_0000)].concat();
    assert_eq!(sent(&mut bridge), vec![(msg::ANNOUNCE_CAPABILITIES, reply)]);
    assert!(bridge.receive(&agent_caps(false, false)).is_empty());
    assert!(sent(&mut bridge).is_empty());
}

#[test]
fn guest_text_reaches_the_viewer_when_allowed() {
    let mut bridge = connected(BOTH, false);
    assert!(bridge.receive(&grab(&[2, TYPE_UTF8_TEXT])).is_empty());
    assert_eq!(
        sent(&mut bridge),
        vec![(msg::CLIPBOARD_REQUEST, word(TYPE_UTF8_TEXT).to_vec())]
    );
    assert_eq!(
        bridge.receive(&text_clipboard("héllo\0 wörld".as_bytes())),
        vec![BridgeEvent::GuestText("héllo wörld".into())]
    );
    // The request is spent: a second copy of the data is dropped.
    assert!(bridge.receive(&text_clipboard(b"again")).is_empty());
}

#[test]
fn guest_text_is_never_asked_for_when_refused() {
    let mut bridge = connected(NONE, false);
    assert_eq!(
        bridge.receive(&grab(&[TYPE_UTF8_TEXT])),
        vec![BridgeEvent::Refused {
            direction: Direction::FromGuest,
            bytes: 0
        }]
    );
    assert!(sent(&mut bridge).is_empty(), "no request sent");
    assert_eq!(
        bridge.receive(&text_clipboard(b"secret")),
        vec![BridgeEvent::Refused {
            direction: Direction::FromGuest,
            bytes: 6
        }]
    );
    let to_guest_only = ClipboardPolicy {
        to_guest: true,
        from_guest: false,
    };
    let mut bridge = connected(to_guest_only, false);
    assert_eq!(bridge.receive(&grab(&[TYPE_UTF8_TEXT])).len(), 1);
    assert!(sent(&mut bridge).is_empty());
}

#[test]
fn unsolicited_or_bad_guest_text_is_dropped() {
    let mut bridge = connected(BOTH, false);
    assert!(bridge.receive(&text_clipboard(b"unasked")).is_empty());
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    assert!(bridge.receive(&text_clipboard(b"\xff\xfe")).is_empty());
    // Data of another type answers the request without text.
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    let png = frame_message(msg::CLIPBOARD, &[word(2), word(0)].concat()).unwrap();
    assert!(bridge.receive(&png).is_empty());
    assert!(bridge.receive(&text_clipboard(b"late")).is_empty());
    // A grab without text asks for nothing.
    sent(&mut bridge);
    bridge.receive(&grab(&[2, 3]));
    assert!(sent(&mut bridge).is_empty());
}

#[test]
fn viewer_text_reaches_the_guest_when_allowed() {
    let mut bridge = ClipboardBridge::new(BOTH);
    bridge.take_output();
    // Offered before the agent announced: the grab waits for it.
    bridge.offer_text("from the viewer").unwrap();
    assert!(sent(&mut bridge).is_empty());
    bridge.receive(&agent_caps(false, false));
    assert_eq!(
        sent(&mut bridge),
        vec![(msg::CLIPBOARD_GRAB, word(TYPE_UTF8_TEXT).to_vec())]
    );
    for _ in 0..2 {
        assert!(bridge.receive(&request_text()).is_empty());
        let reply = [&word(TYPE_UTF8_TEXT)[..], b"from the viewer"].concat();
        assert_eq!(sent(&mut bridge), vec![(msg::CLIPBOARD, reply)]);
    }
    // The guest copies something else: the viewer's offer is over.
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    sent(&mut bridge);
    bridge.receive(&request_text());
    assert_eq!(
        sent(&mut bridge),
        vec![(msg::CLIPBOARD, word(TYPE_UTF8_TEXT).to_vec())]
    );
}

#[test]
fn viewer_text_is_refused_and_never_sent() {
    let from_guest_only = ClipboardPolicy {
        to_guest: false,
        from_guest: true,
    };
    for policy in [NONE, from_guest_only] {
        let mut bridge = connected(policy, false);
        assert_eq!(bridge.offer_text("secret"), Err(Refused { bytes: 6 }));
        assert!(sent(&mut bridge).is_empty());
        // A guest asking anyway gets an empty answer.
        bridge.receive(&request_text());
        assert_eq!(
            sent(&mut bridge),
            vec![(msg::CLIPBOARD, word(TYPE_UTF8_TEXT).to_vec())]
        );
    }
}

#[test]
fn viewer_text_is_cut_at_a_character_boundary() {
    let mut bridge = connected(BOTH, false);
    let text = format!("a{}", "é".repeat(MAX_TEXT / 2));
    bridge.offer_text(&text).unwrap();
    bridge.receive(&request_text());
    let messages = sent(&mut bridge);
    let (msg_type, data) = messages.last().unwrap();
    assert_eq!(*msg_type, msg::CLIPBOARD);
    assert_eq!(data.len(), 4 + MAX_TEXT - 1);
    assert!(std::str::from_utf8(&data[4..]).is_ok());
}

#[test]
fn selection_word_when_both_announce_it() {
    let mut bridge = connected(BOTH, true);
    let primary = [vec![1, 0, 0, 0], word(TYPE_UTF8_TEXT).to_vec()].concat();
    bridge.receive(&frame_message(msg::CLIPBOARD_GRAB, &primary).unwrap());
    assert!(sent(&mut bridge).is_empty(), "PRIMARY is not bridged");
    let clipboard = [vec![0, 0, 0, 0], word(TYPE_UTF8_TEXT).to_vec()].concat();
    bridge.receive(&frame_message(msg::CLIPBOARD_GRAB, &clipboard).unwrap());
    assert_eq!(
        sent(&mut bridge),
        vec![(msg::CLIPBOARD_REQUEST, clipboard.clone())]
    );
    let data = [&clipboard[..], b"text"].concat();
    assert_eq!(
        bridge.receive(&frame_message(msg::CLIPBOARD, &data).unwrap()),
        vec![BridgeEvent::GuestText("text".into())]
    );
    bridge.offer_text("x").unwrap();
    assert_eq!(sent(&mut bridge), vec![(msg::CLIPBOARD_GRAB, clipboard)]);
    // Too short to hold the selection word: ignored.
    bridge.receive(&frame_message(msg::CLIPBOARD_REQUEST, &[0, 0]).unwrap());
    assert!(sent(&mut bridge).is_empty());
}

#[test]
fn a_release_ends_the_wait_for_guest_text() {
    for (selection, release) in [
        (false, vec![]),
        (true, vec![0, 0, 0, 0]),
        (true, vec![0]),
        (false, vec![0]),
    ] {
        let mut bridge = connected(BOTH, selection);
        let prefix: &[u8] = if selection { &[0, 0, 0, 0] } else { &[] };
        let grab = [prefix, &word(TYPE_UTF8_TEXT)[..]].concat();
        bridge.receive(&frame_message(msg::CLIPBOARD_GRAB, &grab).unwrap());
        bridge.receive(&frame_message(msg::CLIPBOARD_RELEASE, &release).unwrap());
        let data = [prefix, &word(TYPE_UTF8_TEXT)[..], b"late"].concat();
        assert!(
            bridge
                .receive(&frame_message(msg::CLIPBOARD, &data).unwrap())
                .is_empty(),
            "{selection} {release:?}"
        );
    }
}

#[test]
fn chunked_guest_text_is_reassembled() {
    let mut bridge = connected(BOTH, false);
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    let text = "0123456789".repeat(700);
    let stream = text_clipboard(text.as_bytes());
    assert!(stream.len() > 3 * MAX_CHUNK_DATA);
    let mut events = Vec::new();
    for piece in stream.chunks(333) {
        events.extend(bridge.receive(piece));
    }
    assert_eq!(events, vec![BridgeEvent::GuestText(text)]);
}

/// A message as Linux's agent writes it: one chunk, however large.
fn one_chunk(msg_type: u32, data: &[u8]) -> Vec<u8> {
    let mut message = [word(1), word(msg_type), [0; 4], [0; 4]].concat();
    message.extend_from_slice(&word(u32::try_from(data.len()).unwrap()));
    message.extend_from_slice(data);
    let mut stream = [
        word(CLIENT_PORT),
        word(u32::try_from(message.len()).unwrap()),
    ]
    .concat();
    stream.extend(message);
    stream
}

#[test]
fn guest_text_in_one_large_chunk_arrives_and_oversize_is_skipped() {
    let mut bridge = connected(BOTH, false);
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    let text = "z".repeat(100_000);
    let data = [&word(TYPE_UTF8_TEXT)[..], text.as_bytes()].concat();
    assert_eq!(
        bridge.receive(&one_chunk(msg::CLIPBOARD, &data)),
        vec![BridgeEvent::GuestText(text)]
    );
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    let huge = vec![b'x'; MAX_MESSAGE_DATA + 1];
    let mut stream = one_chunk(msg::CLIPBOARD, &huge);
    stream.extend(one_chunk(msg::CLIPBOARD_GRAB, &word(TYPE_UTF8_TEXT)));
    stream.extend(one_chunk(
        msg::CLIPBOARD,
        &[&word(TYPE_UTF8_TEXT)[..], b"ok"].concat(),
    ));
    let mut events = Vec::new();
    for piece in stream.chunks(65_536) {
        events.extend(bridge.receive(piece));
    }
    assert_eq!(events, vec![BridgeEvent::GuestText("ok".into())]);
}

#[test]
fn oversize_messages_are_skipped_and_the_stream_stays_in_step() {
    let mut bridge = connected(NONE, false);
    let huge = vec![b'x'; MAX_MESSAGE_DATA];
    assert_eq!(
        bridge.receive(&text_clipboard(&huge)),
        vec![BridgeEvent::Refused {
            direction: Direction::FromGuest,
            bytes: MAX_MESSAGE_DATA
        }]
    );
    assert_eq!(bridge.receive(&grab(&[TYPE_UTF8_TEXT])).len(), 1);

    let mut bridge = connected(BOTH, false);
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    assert!(bridge.receive(&text_clipboard(&huge)).is_empty());
    // Just over the text limit, though the message is kept: dropped.
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    assert!(bridge
        .receive(&text_clipboard(&huge[..=MAX_TEXT]))
        .is_empty());
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    assert_eq!(
        bridge.receive(&text_clipboard(b"ok")),
        vec![BridgeEvent::GuestText("ok".into())]
    );
}

#[test]
fn wrong_protocol_messages_are_ignored() {
    let mut bridge = connected(BOTH, false);
    let mut stream = grab(&[TYPE_UTF8_TEXT]);
    stream[CHUNK_HEADER_LEN_FOR_TESTS] = 2;
    assert!(bridge.receive(&stream).is_empty());
    assert!(sent(&mut bridge).is_empty());
    bridge.receive(&grab(&[TYPE_UTF8_TEXT]));
    assert_eq!(sent(&mut bridge).len(), 1);
}

const CHUNK_HEADER_LEN_FOR_TESTS: usize = wire::CHUNK_HEADER_LEN;

#[test]
fn garbage_breaks_the_stream_once() {
    let mut bridge = connected(BOTH, false);
    let garbage = [word(7), word(16)].concat();
    let events = bridge.receive(&garbage);
    assert!(matches!(&events[..], [BridgeEvent::Broken(_)]));
    assert!(bridge.receive(&grab(&[TYPE_UTF8_TEXT])).is_empty());
    assert!(bridge.receive(&[0xff; 64]).is_empty());
    assert!(sent(&mut bridge).is_empty());
}

#[test]
fn short_and_unknown_messages_are_ignored() {
    let mut bridge = connected(BOTH, false);
    for msg_type in [0, 1, 2, 3, 5, 10, 99, u32::MAX] {
        let data = frame_message(msg_type, &[1, 2, 3]).unwrap();
        assert!(bridge.receive(&data).is_empty());
    }
    for msg_type in [
        msg::ANNOUNCE_CAPABILITIES,
        msg::CLIPBOARD_REQUEST,
        msg::CLIPBOARD,
    ] {
        assert!(bridge
            .receive(&frame_message(msg_type, &[1]).unwrap())
            .is_empty());
    }
    assert!(sent(&mut bridge).is_empty());
}

#[test]
fn output_stays_bounded_when_the_guest_never_reads() {
    let mut bridge = connected(BOTH, false);
    bridge.offer_text(&"x".repeat(MAX_TEXT)).unwrap();
    for _ in 0..4 {
        bridge.receive(&request_text());
    }
    let output = bridge.take_output();
    assert!(output.len() <= OUTPUT_LIMIT);
    assert!(output.len() > MAX_TEXT);
}

#[test]
fn a_narrowed_policy_withdraws_the_viewers_offer_and_the_pending_request() {
    let mut bridge = connected(BOTH, false);
    bridge.offer_text("offered under both").unwrap();
    assert_eq!(sent(&mut bridge).len(), 1, "the grab for the viewer's text");
    assert!(bridge.receive(&grab(&[TYPE_UTF8_TEXT])).is_empty());
    assert_eq!(
        sent(&mut bridge).len(),
        1,
        "the request for the guest's text"
    );
    bridge.offer_text("offered again").unwrap();
    sent(&mut bridge);

    bridge.set_policy(NONE);
    assert_eq!(bridge.policy(), NONE);
    // A paste in the guest gets no data, though the text was offered
    // while the old policy allowed it.
    assert!(bridge.receive(&request_text()).is_empty());
    assert_eq!(
        sent(&mut bridge),
        vec![(msg::CLIPBOARD, word(TYPE_UTF8_TEXT).to_vec())]
    );
    // The guest's answer to a request made under the old policy is refused.
    assert_eq!(
        bridge.receive(&text_clipboard(b"late")),
        vec![BridgeEvent::Refused {
            direction: Direction::FromGuest,
            bytes: 4
        }]
    );
    assert_eq!(
        bridge.offer_text("after the push"),
        Err(Refused { bytes: 14 })
    );
}

#[test]
fn a_widened_policy_lets_the_next_transfers_through() {
    let mut bridge = connected(NONE, false);
    assert!(bridge.offer_text("before").is_err());
    bridge.set_policy(BOTH);
    bridge.offer_text("after").unwrap();
    assert!(bridge.receive(&request_text()).is_empty());
    let answers = sent(&mut bridge);
    assert_eq!(
        answers.last(),
        Some(&(
            msg::CLIPBOARD,
            [&word(TYPE_UTF8_TEXT)[..], b"after"].concat()
        ))
    );
    assert!(bridge.receive(&grab(&[TYPE_UTF8_TEXT])).is_empty());
    assert_eq!(
        sent(&mut bridge),
        vec![(msg::CLIPBOARD_REQUEST, word(TYPE_UTF8_TEXT).to_vec())]
    );
    assert_eq!(
        bridge.receive(&text_clipboard(b"from the guest")),
        vec![BridgeEvent::GuestText("from the guest".into())]
    );
}
