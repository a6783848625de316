//! The spice-vdagent byte stream: `VDIChunkHeader` chunks carrying
//! `VDAgentMessage`s, all little-endian. A message may span chunks and a
//! chunk may hold the end of one message and the start of the next, so the
//! reader treats the client port's chunk data as one stream of messages.
//!
//! The two directions are not symmetric. The agent refuses chunks of more
//! than [`MAX_CHUNK_DATA`] bytes, so we cut what we write; but Linux's
//! `spice-vdagentd` writes each message as one chunk however large, so
//! the reader takes chunks of any size. It never holds a chunk, only the
//! message inside it, and that is bounded: a message that is too large or
//! of another protocol version is skipped by its own size field, which
//! keeps the stream in step without holding its bytes. Only a chunk for a
//! port that does not exist breaks the stream, since nothing after it can
//! be framed with confidence (there is no marker to resynchronise on).

/// Chunk header: `port: u32, size: u32`.
pub const CHUNK_HEADER_LEN: usize = 8;
/// Message header: `protocol: u32, type: u32, opaque: u64, size: u32`.
pub const MESSAGE_HEADER_LEN: usize = 20;
/// Largest chunk data the agent accepts (`VD_AGENT_MAX_DATA_SIZE`), so the
/// largest we write.
pub const MAX_CHUNK_DATA: usize = 2048;
/// `VD_AGENT_PROTOCOL`.
pub const PROTOCOL: u32 = 1;
/// Messages between the agent and the client (us).
pub const CLIENT_PORT: u32 = 1;
/// Messages between the agent and a SPICE server, which we are not; their
/// chunks (and those for port 0, which nobody uses) are framed and
/// dropped.
pub const SERVER_PORT: u32 = 2;

/// What the reader found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Message {
        msg_type: u32,
        data: Vec<u8>,
    },
    /// A message passed over without keeping its data.
    Skipped {
        msg_type: u32,
        reason: SkipReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    WrongProtocol(u32),
    TooLarge(u32),
}

/// The stream cannot be framed any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenStream(pub String);

enum MessageState {
    Header {
        bytes: [u8; MESSAGE_HEADER_LEN],
        filled: usize,
    },
    Body {
        msg_type: u32,
        size: usize,
        data: Vec<u8>,
    },
    Skip {
        remaining: u32,
    },
}

impl MessageState {
    fn header() -> Self {
        MessageState::Header {
            bytes: [0; MESSAGE_HEADER_LEN],
            filled: 0,
        }
    }
}

/// Incremental reader of the agent's stream.
pub struct Reader {
    max_message_data: usize,
    chunk_header: [u8; CHUNK_HEADER_LEN],
    chunk_header_filled: usize,
    chunk_port: u32,
    chunk_remaining: u32,
    message: MessageState,
}

fn le32(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

impl Reader {
    /// A reader that keeps messages of up to `max_message_data` bytes.
    pub fn new(max_message_data: usize) -> Self {
        Reader {
            max_message_data,
            chunk_header: [0; CHUNK_HEADER_LEN],
            chunk_header_filled: 0,
            chunk_port: 0,
            chunk_remaining: 0,
            message: MessageState::header(),
        }
    }

    /// Reads `bytes`, appending what completes to `frames`.
    pub fn push(&mut self, mut bytes: &[u8], frames: &mut Vec<Frame>) -> Result<(), BrokenStream> {
        while !bytes.is_empty() {
            if self.chunk_remaining == 0 {
                let take = (CHUNK_HEADER_LEN - self.chunk_header_filled).min(bytes.len());
                self.chunk_header[self.chunk_header_filled..][..take]
                    .copy_from_slice(&bytes[..take]);
                self.chunk_header_filled += take;
                bytes = &bytes[take..];
                if self.chunk_header_filled == CHUNK_HEADER_LEN {
                    self.chunk_header_filled = 0;
                    self.start_chunk()?;
                }
                continue;
            }
            let take = usize::try_from(self.chunk_remaining)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            if self.chunk_port == CLIENT_PORT {
                self.push_message_bytes(&bytes[..take], frames);
            }
            // `take` is at most `chunk_remaining`, a u32.
            self.chunk_remaining -= u32::try_from(take).unwrap_or(self.chunk_remaining);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn start_chunk(&mut self) -> Result<(), BrokenStream> {
        let port = le32(&self.chunk_header[..4]);
        if port > SERVER_PORT {
            return Err(BrokenStream(format!("chunk for unknown port {port}")));
        }
        self.chunk_port = port;
        self.chunk_remaining = le32(&self.chunk_header[4..]);
        Ok(())
    }

    fn push_message_bytes(&mut self, mut bytes: &[u8], frames: &mut Vec<Frame>) {
        while !bytes.is_empty() {
            match &mut self.message {
                MessageState::Header {
                    bytes: header,
                    filled,
                } => {
                    let take = (MESSAGE_HEADER_LEN - *filled).min(bytes.len());
                    header[*filled..][..take].copy_from_slice(&bytes[..take]);
                    *filled += take;
                    bytes = &bytes[take..];
                    if *filled == MESSAGE_HEADER_LEN {
                        let header = *header;
                        self.start_message(&header, frames);
                    }
                }
                MessageState::Body {
                    msg_type,
                    size,
                    data,
                } => {
                    let take = (*size - data.len()).min(bytes.len());
                    data.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if data.len() == *size {
                        frames.push(Frame::Message {
                            msg_type: *msg_type,
                            data: std::mem::take(data),
                        });
                        self.message = MessageState::header();
                    }
                }
                MessageState::Skip { remaining } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    // `take` is at most `remaining`, a u32.
                    *remaining -= u32::try_from(take).unwrap_or(*remaining);
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        self.message = MessageState::header();
                    }
                }
            }
        }
    }

    fn start_message(&mut self, header: &[u8; MESSAGE_HEADER_LEN], frames: &mut Vec<Frame>) {
        let protocol = le32(&header[..4]);
        let msg_type = le32(&header[4..8]);
        let size = le32(&header[16..20]);
        let skip = if protocol != PROTOCOL {
            Some(SkipReason::WrongProtocol(protocol))
        } else if usize::try_from(size).map_or(true, |size| size > self.max_message_data) {
            Some(SkipReason::TooLarge(size))
        } else {
            None
        };
        if let Some(reason) = skip {
            frames.push(Frame::Skipped { msg_type, reason });
            self.message = if size == 0 {
                MessageState::header()
            } else {
                MessageState::Skip { remaining: size }
            };
            return;
        }
        let size = usize::try_from(size).unwrap_or(0);
        if size == 0 {
            frames.push(Frame::Message {
                msg_type,
                data: Vec::new(),
            });
            self.message = MessageState::header();
        } else {
            self.message = MessageState::Body {
                msg_type,
                size,
                data: Vec::new(),
            };
        }
    }
}

/// The framed bytes of one message to the agent: its header and data cut
/// into client-port chunks the agent accepts. `None` if the data does not
/// fit the protocol's 32-bit size.
pub fn frame_message(msg_type: u32, data: &[u8]) -> Option<Vec<u8>> {
    let size = u32::try_from(data.len()).ok()?;
    let mut message = Vec::with_capacity(MESSAGE_HEADER_LEN + data.len());
    message.extend_from_slice(&PROTOCOL.to_le_bytes());
    message.extend_from_slice(&msg_type.to_le_bytes());
    message.extend_from_slice(&0u64.to_le_bytes());
    message.extend_from_slice(&size.to_le_bytes());
    message.extend_from_slice(data);
    let chunks = message.len().div_ceil(MAX_CHUNK_DATA);
    let mut framed = Vec::with_capacity(message.len() + chunks * CHUNK_HEADER_LEN);
    for chunk in message.chunks(MAX_CHUNK_DATA) {
        framed.extend_from_slice(&CLIENT_PORT.to_le_bytes());
        // A chunk is at most MAX_CHUNK_DATA long.
        let len = u32::try_from(chunk.len()).ok()?;
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(chunk);
    }
    Some(framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(port: u32, data: &[u8]) -> Vec<u8> {
        let mut out = port.to_le_bytes().to_vec();
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn message(protocol: u32, msg_type: u32, size: u32, data: &[u8]) -> Vec<u8> {
        let mut out = protocol.to_le_bytes().to_vec();
        out.extend_from_slice(&msg_type.to_le_bytes());
        out.extend_from_slice(&7u64.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn frame_message_reads_back_byte_by_byte() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let framed = frame_message(4, &data).unwrap();
        // 5020 message bytes: chunks of 2048, 2048 and 924.
        assert_eq!(framed.len(), 5020 + 3 * CHUNK_HEADER_LEN);
        let mut reader = Reader::new(1 << 20);
        let mut frames = Vec::new();
        for byte in &framed {
            reader
                .push(std::slice::from_ref(byte), &mut frames)
                .unwrap();
        }
        assert_eq!(frames, vec![Frame::Message { msg_type: 4, data }]);
    }

    #[test]
    fn a_chunk_may_hold_two_messages_and_server_chunks_are_dropped() {
        let mut data = message(1, 8, 4, &[1, 0, 0, 0]);
        data.extend(message(1, 9, 0, &[]));
        let mut stream = chunk(SERVER_PORT, &message(1, 4, 2, b"no"));
        stream.extend(chunk(CLIENT_PORT, &data));
        let mut frames = Vec::new();
        Reader::new(64).push(&stream, &mut frames).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Message {
                    msg_type: 8,
                    data: vec![1, 0, 0, 0]
                },
                Frame::Message {
                    msg_type: 9,
                    data: vec![]
                },
            ]
        );
    }

    #[test]
    fn oversize_and_wrong_protocol_messages_are_skipped_in_step() {
        let mut stream = Vec::new();
        for part in message(1, 4, 100, &[b'x'; 100]).chunks(30) {
            stream.extend(chunk(CLIENT_PORT, part));
        }
        stream.extend(chunk(CLIENT_PORT, &message(2, 4, 3, b"abc")));
        stream.extend(chunk(CLIENT_PORT, &message(1, 9, 0, &[])));
        let mut frames = Vec::new();
        Reader::new(64).push(&stream, &mut frames).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Skipped {
                    msg_type: 4,
                    reason: SkipReason::TooLarge(100)
                },
                Frame::Skipped {
                    msg_type: 4,
                    reason: SkipReason::WrongProtocol(2)
                },
                Frame::Message {
                    msg_type: 9,
                    data: vec![]
                },
            ]
        );
    }

    #[test]
    fn a_huge_skipped_message_is_not_held() {
        let mut reader = Reader::new(64);
        let mut frames = Vec::new();
        let header = message(1, 4, u32::MAX, &[]);
        reader
            .push(&chunk(CLIENT_PORT, &header), &mut frames)
            .unwrap();
        for _ in 0..100 {
            reader
                .push(&chunk(CLIENT_PORT, &[0; MAX_CHUNK_DATA]), &mut frames)
                .unwrap();
        }
        assert!(matches!(reader.message, MessageState::Skip { .. }));
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn a_message_in_one_large_chunk_is_read_as_the_agent_writes_it() {
        let data = vec![b'y'; 5000];
        let mut stream = chunk(CLIENT_PORT, &message(1, 4, 5000, &data));
        // Too large to keep, in one chunk too: skipped, the stream in step.
        stream.extend(chunk(CLIENT_PORT, &message(1, 4, 70_000, &[b'z'; 70_000])));
        stream.extend(chunk(0, b"port zero"));
        stream.extend(chunk(CLIENT_PORT, &message(1, 9, 0, &[])));
        let mut frames = Vec::new();
        let mut reader = Reader::new(65_536);
        for piece in stream.chunks(1000) {
            reader.push(piece, &mut frames).unwrap();
        }
        assert_eq!(
            frames,
            vec![
                Frame::Message { msg_type: 4, data },
                Frame::Skipped {
                    msg_type: 4,
                    reason: SkipReason::TooLarge(70_000)
                },
                Frame::Message {
                    msg_type: 9,
                    data: vec![]
                },
            ]
        );
    }

    #[test]
    fn a_chunk_for_an_unknown_port_breaks_the_stream() {
        let mut frames = Vec::new();
        let port = [3u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
        assert!(Reader::new(64).push(&port, &mut frames).is_err());
        assert!(frames.is_empty());
    }
}
