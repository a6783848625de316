//! The RFB 3.8 (VNC) server protocol core, without I/O.
//!
//! securevm shows the guest's screen and its own login screen to the
//! person at the machine through an RFB server on a Unix socket. This
//! crate holds the protocol only: the handshake, the parser of client
//! messages, the Raw and ZRLE encoders with the cursor and desktop-size
//! pseudo-encodings, and a session that ties them together. The caller
//! owns the socket and the framebuffer, so nothing here blocks, and a
//! client's bytes are parsed with bounds: a malicious or buggy viewer gets
//! a protocol error (the connection is closed), never a panic or an
//! unbounded allocation.

pub mod encode;
pub mod handshake;
pub mod protocol;
pub mod session;

/// Why a connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RfbError {
    #[error("the client's protocol version is not RFB 3.3, 3.7 or 3.8")]
    BadVersion,
    #[error("the client chose security type {0}; only None (1) is offered")]
    UnsupportedSecurity(u8),
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    #[error("unknown QEMU client message subtype {0}")]
    UnknownQemuMessage(u8),
    #[error("unusable pixel format: {0}")]
    BadPixelFormat(&'static str),
    #[error("the connection already failed")]
    Closed,
}
