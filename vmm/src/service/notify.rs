//! The sd_notify protocol: newline-separated `KEY=VALUE` lines in one
//! datagram to the Unix socket named by `NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading '@'). Written here rather than
//! linking libsystemd: the protocol is one `write`, and a connected
//! socket lets the main thread send under its seccomp filter, which
//! allows `write` but neither `socket`, `connect` nor `sendto`. The socket
//! never blocks: a manager that stops reading (or whatever a hostile
//! NOTIFY_SOCKET names) loses a notification, it never stalls the VM.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The process's connection to the service manager, if it has one.
static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

/// A datagram socket connected to the service manager's notify socket.
#[derive(Debug)]
pub struct Notifier {
    /// The connected socket as a file: `write` sends one datagram.
    socket: File,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "{NOTIFY_SOCKET}={address:?} is neither an absolute path nor an abstract name (@NAME)"
    )]
    Unsupported { address: String },
    #[error("cannot connect to {NOTIFY_SOCKET}={address:?}: {source}")]
    Connect { address: String, source: io::Error },
}

impl Notifier {
    /// Connects to the socket `address` names (`/path` or `@abstract`).
    pub fn connect(address: &OsStr) -> Result<Notifier, NotifyError> {
        let shown = || address.to_string_lossy().into_owned();
        let bytes = address.as_bytes();
        let socket_address = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(b'/') => SocketAddr::from_pathname(address),
            _ => return Err(NotifyError::Unsupported { address: shown() }),
        }
        .map_err(|source| NotifyError::Connect {
            address: shown(),
            source,
        })?;
        let socket = UnixDatagram::unbound()
            .and_then(|socket| socket.connect_addr(&socket_address).map(|()| socket))
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .map_err(|source| NotifyError::Connect {
                address: shown(),
                source,
            })?;
        Ok(Notifier {
            socket: File::from(OwnedFd::from(socket)),
        })
    }

    /// Sends `state` (e.g. `READY=1`) as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let written = (&self.socket).write(state.as_bytes())?;
        if written == state.len() {
            Ok(())
        } else {
            Err(io::Error::other("the notification was cut short"))
        }
    }
}

/// Connects to the service manager if `NOTIFY_SOCKET` names one. Once per
/// process, before any seccomp filter (it creates a socket). A socket
/// that cannot be reached is reported and then ignored: the VM runs, and
/// a `Type=notify` unit fails its start on its own timeout, saying why.
pub fn init_from_env() {
    NOTIFIER.get_or_init(|| {
        let address = std::env::var_os(NOTIFY_SOCKET)?;
        match Notifier::connect(&address) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                log::warn!("not notifying the service manager: {e}");
                None
            }
        }
    });
}

/// Tells the service manager `state`, if securevm runs under one. A
/// failure is logged and changes nothing else.
pub fn send(state: &str) {
    if let Some(Some(notifier)) = NOTIFIER.get() {
        if let Err(e) = notifier.send(state) {
            log::warn!("telling the service manager {state:?} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn receive(listener: &UnixDatagram) -> String {
        let mut buffer = [0u8; 256];
        let length = listener.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..length].to_vec()).unwrap()
    }

    #[test]
    fn a_state_arrives_as_one_datagram_on_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("securevm-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        notifier
            .send("READY=1\nSTATUS=The guest is running")
            .unwrap();
        notifier.send("STOPPING=1").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=The guest is running");
        assert_eq!(receive(&listener), "STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        let name = format!("securevm-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let address = std::ffi::OsString::from_vec(format!("@{name}").into_bytes());
        Notifier::connect(&address)
            .unwrap()
            .send("READY=1")
            .unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn a_listener_that_never_reads_does_not_block_the_sender() {
        let name = format!("securevm-notify-deaf-{}", std::process::id());
        let _listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let address = std::ffi::OsString::from_vec(format!("@{name}").into_bytes());
        let notifier = Notifier::connect(&address).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Far more than the receiver's queue holds (net.unix.max_dgram_qlen).
            let refused = (0..10_000).any(|_| notifier.send("STATUS=x").is_err());
            done.send(refused).unwrap();
        });
        let refused = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("sending to a full notify socket blocked");
        assert!(refused, "the full queue refused nothing");
    }

    #[test]
    fn other_addresses_are_refused_with_the_reason() {
        for address in ["", "relative/path", "vsock:2:1234"] {
            let error = Notifier::connect(OsStr::new(address)).unwrap_err();
            assert!(
                matches!(error, NotifyError::Unsupported { .. }),
                "{address}: {error}"
            );
        }
        let missing = std::env::temp_dir().join("securevm-no-such-notify-socket");
        let error = Notifier::connect(missing.as_os_str()).unwrap_err();
        assert!(matches!(error, NotifyError::Connect { .. }), "{error}");
        assert!(error.to_string().contains("securevm-no-such-notify-socket"));
    }
}
