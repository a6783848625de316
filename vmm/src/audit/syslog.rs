//! The local syslog destination: each message one datagram to the syslog
//! socket (`/dev/log` unless the machine names another), where journald
//! or rsyslog takes it. A datagram the socket took is the daemon's; one it
//! refused (no daemon listening, socket missing) is sent again later.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use super::forward::{Transport, Undelivered};

/// The socket syslog daemons listen on.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

pub(crate) struct SyslogSocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl SyslogSocket {
    /// An unbound datagram socket (created before the thread's filter);
    /// each message is addressed to `path`, so a daemon restarted on a new
    /// socket file is reached again.
    pub fn new(path: PathBuf) -> std::io::Result<SyslogSocket> {
        Ok(SyslogSocket {
            path,
            socket: UnixDatagram::unbound()?,
        })
    }
}

impl Transport for SyslogSocket {
    fn describe(&self) -> String {
        format!("syslog {}", self.path.display())
    }

    fn send(&mut self, record_start: u64, message: &[u8]) -> Result<(), Undelivered> {
        match self.socket.send_to(message, &self.path) {
            Ok(sent) if sent == message.len() => Ok(()),
            Ok(_) => Err(Undelivered {
                error: std::io::Error::other("the syslog socket took part of a message"),
                resend_from: record_start,
            }),
            Err(error) => Err(Undelivered {
                error,
                resend_from: record_start,
            }),
        }
    }

    fn held(&self, sent_end: u64) -> u64 {
        sent_end
    }

    fn close(&mut self) -> bool {
        true
    }
}
