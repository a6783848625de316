//! The host side of a virtio-net device: a TAP interface opened through
//! /dev/net/tun. Every frame read or written carries the 12-byte
//! `virtio_net_hdr_v1` in front (IFF_VNET_HDR with TUNSETVNETHDRSZ 12),
//! the format the guest uses, so checksum and segmentation offloads can
//! be passed through later without copying. Until then the TAP is told
//! explicitly that we take no offloads (TUNSETOFFLOAD 0), so the host
//! kernel only ever hands us complete, checksummed frames.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::NetBackend;
use super::VNET_HDR_LEN;
use crate::narrow::const_narrow;

const TUN_PATH: &str = "/dev/net/tun";
/// Interface names are at most IFNAMSIZ - 1 bytes (one for the NUL).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP name: {0}")]
    InvalidName(#[from] InterfaceNameError),
    #[error(
        "{TUN_PATH} does not exist: load the tun driver (modprobe tun) or, in a container, \
         pass the device in"
    )]
    TunMissing,
    #[error(
        "not allowed to use TAP {name}: run securevm with CAP_NET_ADMIN, or create the TAP \
         for this user first (ip tuntap add {name} mode tap user $USER)"
    )]
    PermissionDenied { name: String },
    #[error("TAP {name} is already in use by another process; give each VM its own TAP")]
    Busy { name: String },
    #[error(
        "{name} exists but is not a single-queue TAP device (perhaps a TUN device, a \
         multi_queue TAP or another kind of interface); choose another name"
    )]
    NotATap { name: String },
    #[error("cannot open {TUN_PATH}: {0}")]
    Open(#[source] io::Error),
    #[error("cannot set up TAP {name} ({step}): {source}")]
    Setup {
        name: String,
        step: &'static str,
        source: io::Error,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterfaceNameError {
    #[error("the interface name is empty")]
    Empty,
    #[error("interface name '{0}' is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    #[error("interface name '{0}' may not contain '/', ':', whitespace or control characters")]
    BadCharacter(String),
    #[error("'{0}' cannot be an interface name")]
    Reserved(String),
}

/// The kernel's rules for interface names (`dev_valid_name`), checked
/// up front so a bad name gets a clear message instead of EINVAL.
pub fn check_interface_name(name: &str) -> Result<(), InterfaceNameError> {
    if name.is_empty() {
        return Err(InterfaceNameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(InterfaceNameError::TooLong(name.to_string()));
    }
    if name == "." || name == ".." {
        return Err(InterfaceNameError::Reserved(name.to_string()));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(InterfaceNameError::BadCharacter(name.to_string()));
    }
    Ok(())
}

/// An open TAP interface (non-blocking). A TAP created here disappears
/// when it is closed; an existing (persistent) one stays.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Attach to TAP `name`, creating it if no interface has that name.
    pub fn open(name: &str) -> Result<Self, TapError> {
        check_interface_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::TunMissing,
                io::ErrorKind::PermissionDenied => TapError::PermissionDenied {
                    name: name.to_string(),
                },
                _ => TapError::Open(e),
            })?;
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: const_narrow!(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR => libc::c_short),
            _pad: [0; 22],
        };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which
        // `IfReq` matches in layout and size (40 bytes); the fd is ours.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if result < 0 {
            let error = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match error.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EINVAL) => TapError::NotATap { name },
                _ => TapError::Setup {
                    name,
                    step: "TUNSETIFF",
                    source: error,
                },
            });
        }
        let header_len = const_narrow!(VNET_HDR_LEN => libc::c_int);
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        if result < 0 {
            return Err(TapError::Setup {
                name: name.to_string(),
                step: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        let result =
            unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if result < 0 {
            return Err(TapError::Setup {
                name: name.to_string(),
                step: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        let end = request
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(request.name.len());
        let actual = String::from_utf8_lossy(&request.name[..end]).into_owned();
        Ok(Self { file, name: actual })
    }

    /// The interface name the kernel reports.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn read_frame(&self, buffer: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buffer)
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert_eq!(check_interface_name("svm0"), Ok(()));
        assert_eq!(check_interface_name("a-15-byte-name1"), Ok(()));
        assert_eq!(check_interface_name(""), Err(InterfaceNameError::Empty));
        assert!(matches!(
            check_interface_name("a-16-byte-name12"),
            Err(InterfaceNameError::TooLong(_))
        ));
        for bad in ["a/b", "a:b", "a b", "a\tb", "a\u{7}"] {
            assert!(
                matches!(
                    check_interface_name(bad),
                    Err(InterfaceNameError::BadCharacter(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_interface_name(".."),
            Err(InterfaceNameError::Reserved(_))
        ));
    }

    #[test]
    fn open_refuses_a_bad_name_before_touching_the_system() {
        let error = Tap::open("svm/0").unwrap_err();
        assert!(matches!(error, TapError::InvalidName(_)));
        assert!(error.to_string().contains("'/'"), "{error}");
    }

    #[test]
    fn ifreq_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
