//! The server side of the RFB handshake (RFC 6143 section 7.1 and 7.3),
//! as a sans-I/O state machine: client bytes in, server bytes out.
//!
//! The only security type offered is None: the Unix socket's permissions
//! are the door, and anyone who can open it is the person at the machine.
//! Versions 3.8, 3.7 and 3.3 are spoken (other 3.x minors are read as 3.3,
//! as the RFC asks); anything else is refused with the 3.8 failure message.

use crate::protocol::PixelFormat;
use crate::RfbError;

/// The version the server announces.
pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";

const SECURITY_NONE: u8 = 1;
const VERSION_REFUSED: &str = "unsupported RFB protocol version";
const SECURITY_REFUSED: &str = "only security type None is offered";

/// The protocol version agreed with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3_3,
    V3_7,
    V3_8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Version,
    SecurityType,
    ClientInit,
    Done,
    Failed,
}

/// The handshake's state.
#[derive(Debug)]
pub struct Handshake {
    stage: Stage,
    input: Vec<u8>,
    output: Vec<u8>,
    version: Option<Version>,
    shared: bool,
    width: u16,
    height: u16,
    format: PixelFormat,
    name: Vec<u8>,
}

/// Parses "RFB xxx.yyy\n".
fn parse_version(bytes: &[u8]) -> Option<Version> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("RFB ")?.strip_suffix('\n')?;
    let (major, minor) = rest.split_once('.')?;
    if major.len() != 3 || minor.len() != 3 {
        return None;
    }
    if !major
        .bytes()
        .chain(minor.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let major: u16 = major.parse().ok()?;
    let minor: u16 = minor.parse().ok()?;
    match (major, minor) {
        (3, 7) => Some(Version::V3_7),
        (3, 8..) => Some(Version::V3_8),
        (3, 3..=6) => Some(Version::V3_3),
        _ => None,
    }
}

/// A u32 length followed by the string (a failure reason or the name).
fn push_string(out: &mut Vec<u8>, text: &[u8]) {
    let length = u32::try_from(text.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(text);
}

impl Handshake {
    /// Starts a handshake; the server's version is queued at once. The
    /// desktop name is sent as Latin-1 (other characters become '?') and
    /// truncated to 255 bytes.
    pub fn new(width: u16, height: u16, name: &str) -> Handshake {
        let name = name
            .chars()
            .take(255)
            .map(|c| u8::try_from(c).unwrap_or(b'?'))
            .collect();
        Handshake {
            stage: Stage::Version,
            input: Vec::with_capacity(12),
            output: SERVER_VERSION.to_vec(),
            version: None,
            shared: false,
            width,
            height,
            format: PixelFormat::XRGB8888,
            name,
        }
    }

    /// Changes the size ServerInit will announce (before it is sent).
    pub fn set_size(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The ClientInit shared-flag (valid once done).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The pixel format announced in ServerInit.
    pub fn server_format(&self) -> PixelFormat {
        self.format
    }

    /// Takes the bytes to send to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Consumes client bytes and returns how many were used; bytes after
    /// the handshake's end are left for the message decoder. A refusal
    /// queues its failure message (if the version has one) and errors.
    pub fn receive(&mut self, data: &[u8]) -> Result<usize, RfbError> {
        let mut used = 0;
        while used < data.len() && self.stage != Stage::Done {
            let wanted = match self.stage {
                Stage::Version => 12,
                Stage::SecurityType | Stage::ClientInit => 1,
                Stage::Done => break,
                Stage::Failed => return Err(RfbError::Closed),
            };
            let take = (wanted - self.input.len()).min(data.len() - used);
            self.input.extend_from_slice(&data[used..used + take]);
            used += take;
            if self.input.len() < wanted {
                break;
            }
            let input = std::mem::take(&mut self.input);
            if let Err(error) = self.step(&input) {
                self.stage = Stage::Failed;
                return Err(error);
            }
        }
        Ok(used)
    }

    fn step(&mut self, input: &[u8]) -> Result<(), RfbError> {
        match self.stage {
            Stage::Version => {
                let Some(version) = parse_version(input) else {
                    // The 3.8 form of a refusal: no security types, then why.
                    self.output.push(0);
                    push_string(&mut self.output, VERSION_REFUSED.as_bytes());
                    return Err(RfbError::BadVersion);
                };
                self.version = Some(version);
                if version == Version::V3_3 {
                    // The server decides the security type in 3.3.
                    self.output
                        .extend_from_slice(&u32::from(SECURITY_NONE).to_be_bytes());
                    self.stage = Stage::ClientInit;
                } else {
                    self.output.extend_from_slice(&[1, SECURITY_NONE]);
                    self.stage = Stage::SecurityType;
                }
            }
            Stage::SecurityType => {
                let chosen = input[0];
                if chosen != SECURITY_NONE {
                    if self.version == Some(Version::V3_8) {
                        self.output.extend_from_slice(&1u32.to_be_bytes());
                        push_string(&mut self.output, SECURITY_REFUSED.as_bytes());
                    }
                    return Err(RfbError::UnsupportedSecurity(chosen));
                }
                // 3.7 sends no SecurityResult for None; 3.8 always does.
                if self.version == Some(Version::V3_8) {
                    self.output.extend_from_slice(&0u32.to_be_bytes());
                }
                self.stage = Stage::ClientInit;
            }
            Stage::ClientInit => {
                self.shared = input[0] != 0;
                self.push_server_init();
                self.stage = Stage::Done;
            }
            Stage::Done | Stage::Failed => {}
        }
        Ok(())
    }

    fn push_server_init(&mut self) {
        self.output.extend_from_slice(&self.width.to_be_bytes());
        self.output.extend_from_slice(&self.height.to_be_bytes());
        self.output.extend_from_slice(&self.format.to_bytes());
        let name = std::mem::take(&mut self.name);
        push_string(&mut self.output, &name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECTED_SERVER_INIT: [u8; 28] = [
        0x05, 0x00, 0x03, 0x20, // 1280 x 800
        32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0, // XRGB8888
        0, 0, 0, 4, b't', b'e', b's', b't',
    ];

    #[test]
    fn version_3_8_with_security_none_is_byte_exact() {
        let mut handshake = Handshake::new(1280, 800, "test");
        assert_eq!(handshake.take_output(), b"RFB 003.008\n");
        assert_eq!(handshake.receive(b"RFB 003.008\n"), Ok(12));
        assert_eq!(handshake.take_output(), [1, 1]);
        assert_eq!(handshake.receive(&[1]), Ok(1));
        assert_eq!(handshake.take_output(), [0, 0, 0, 0]);
        // ClientInit (shared) followed by the first client message.
        assert_eq!(handshake.receive(&[1, 3, 0]), Ok(1));
        assert!(handshake.is_done());
        assert!(handshake.shared());
        assert_eq!(handshake.take_output(), EXPECTED_SERVER_INIT);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_bytes() {
        let mut handshake = Handshake::new(1280, 800, "test");
        let mut output = handshake.take_output();
        for byte in b"RFB 003.008\n\x01\x00" {
            assert_eq!(handshake.receive(std::slice::from_ref(byte)), Ok(1));
            output.extend(handshake.take_output());
        }
        let mut expected = b"RFB 003.008\n\x01\x01\0\0\0\0".to_vec();
        expected.extend_from_slice(&EXPECTED_SERVER_INIT);
        assert_eq!(output, expected);
        assert!(!handshake.shared());
        assert_eq!(handshake.version(), Some(Version::V3_8));
    }

    #[test]
    fn versions_3_7_and_3_3_follow_their_own_flows() {
        let mut v37 = Handshake::new(1280, 800, "test");
        v37.take_output();
        assert_eq!(v37.receive(b"RFB 003.007\n\x01\x00"), Ok(14));
        let mut expected = vec![1, 1];
        expected.extend_from_slice(&EXPECTED_SERVER_INIT);
        assert_eq!(v37.take_output(), expected);
        assert!(v37.is_done());

        let mut v33 = Handshake::new(1280, 800, "test");
        v33.take_output();
        assert_eq!(v33.receive(b"RFB 003.003\n\x00"), Ok(13));
        let mut expected = vec![0, 0, 0, 1];
        expected.extend_from_slice(&EXPECTED_SERVER_INIT);
        assert_eq!(v33.take_output(), expected);
        assert_eq!(v33.version(), Some(Version::V3_3));
    }

    #[test]
    fn a_bad_version_is_refused_with_the_3_8_failure_reason() {
        for bad in [
            &b"RFB 004.000\n"[..],
            b"RFB 003.00x\n",
            b"HTTP/1.1 GET",
            b"RFB 003.002\n",
            b"RFB 003.008\r",
        ] {
            let mut handshake = Handshake::new(1, 1, "x");
            handshake.take_output();
            assert_eq!(handshake.receive(bad), Err(RfbError::BadVersion), "{bad:?}");
            let mut expected = vec![0, 0, 0, 0, u8::try_from(VERSION_REFUSED.len()).unwrap()];
            expected.extend_from_slice(VERSION_REFUSED.as_bytes());
            assert_eq!(handshake.take_output(), expected);
            assert_eq!(handshake.receive(b"\x01"), Err(RfbError::Closed));
        }
    }

    #[test]
    fn a_security_type_other_than_none_is_refused() {
        let mut handshake = Handshake::new(1, 1, "x");
        handshake.take_output();
        handshake.receive(b"RFB 003.008\n").unwrap();
        handshake.take_output();
        assert_eq!(
            handshake.receive(&[2]),
            Err(RfbError::UnsupportedSecurity(2))
        );
        let mut expected = vec![
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            u8::try_from(SECURITY_REFUSED.len()).unwrap(),
        ];
        expected.extend_from_slice(SECURITY_REFUSED.as_bytes());
        assert_eq!(handshake.take_output(), expected);
    }

    #[test]
    fn the_name_is_latin_1_and_short() {
        let long: String = std::iter::repeat_n('é', 300).chain(['€']).collect();
        let mut handshake = Handshake::new(2, 2, &long);
        handshake.receive(b"RFB 003.008\n\x01\x01").unwrap();
        let output = handshake.take_output();
        let name = &output[output.len() - 255..];
        assert_eq!(
            &output[output.len() - 259..output.len() - 255],
            &[0, 0, 0, 255]
        );
        assert!(name.iter().all(|&b| b == 0xe9));
    }
}
