//! The TAP backend against the real kernel: creating and attaching TAPs,
//! the errors a user sees for the usual mistakes, and the 12-byte virtio
//! header on frames in both directions (checked with a packet socket on
//! the interface). Needs root and /dev/net/tun; each test says so and
//! skips without them.

// Test code narrows small known values; a wrong one fails the test.
#![allow(clippy::cast_possible_truncation)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use securevm::devices::virtio::net::{NetBackend, Tap, TapError, VNET_HDR_LEN};

const TEST_ETHERTYPE: u16 = 0x88b5;

fn tap_usable() -> bool {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun is absent");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to create TAP devices");
        return false;
    }
    true
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100_000)
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().unwrap().success()
}

/// A persistent tun/tap interface made with `ip tuntap`, deleted on drop.
struct PersistentInterface {
    name: String,
    mode: &'static str,
}

impl PersistentInterface {
    fn create(name: String, mode: &'static str) -> Self {
        assert!(ip(&["tuntap", "add", &name, "mode", mode]));
        Self { name, mode }
    }
}

impl Drop for PersistentInterface {
    fn drop(&mut self) {
        ip(&["tuntap", "del", &self.name, "mode", self.mode]);
    }
}

#[test]
fn bad_names_are_refused_with_the_reason() {
    for (name, reason) in [
        ("", "empty"),
        ("a-name-of-16-byt", "longer than 15 bytes"),
        ("svm/0", "'/'"),
        ("svm 0", "whitespace"),
    ] {
        let error = Tap::open(name).unwrap_err();
        assert!(
            matches!(error, TapError::InvalidName(_)),
            "{name:?}: {error:?}"
        );
        assert!(error.to_string().contains(reason), "{name:?}: {error}");
    }
}

/// Set in the copy of this test binary that runs as an unprivileged user.
const AS_NOBODY: &str = "SECUREVM_TEST_TAP_AS_NOBODY";

/// Run as `nobody`, opening a TAP must fail with advice on privileges,
/// whether /dev/net/tun itself or creating the interface is refused.
#[test]
fn an_unprivileged_user_is_told_what_privilege_is_missing() {
    if std::env::var_os(AS_NOBODY).is_some() {
        let error = Tap::open(&unique_name("svmq")).unwrap_err();
        println!("TAP-ERROR: {error}");
        assert!(
            matches!(error, TapError::PermissionDenied { .. }),
            "{error:?}"
        );
        return;
    }
    if !tap_usable() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_unprivileged_user_is_told_what_privilege_is_missing",
            "--nocapture",
        ])
        .env(AS_NOBODY, "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("TAP-ERROR: not allowed to use TAP"),
        "{stdout}"
    );
    assert!(stdout.contains("CAP_NET_ADMIN"), "{stdout}");
}

#[test]
fn an_interface_that_is_not_a_tap_is_refused() {
    if !tap_usable() {
        return;
    }
    let error = Tap::open("lo").unwrap_err();
    assert!(matches!(error, TapError::NotATap { .. }), "{error:?}");
    let tun = PersistentInterface::create(unique_name("svmn"), "tun");
    let error = Tap::open(&tun.name).unwrap_err();
    assert!(matches!(error, TapError::NotATap { .. }), "{error:?}");
    assert!(error.to_string().contains("choose another name"), "{error}");
}

#[test]
fn an_existing_tap_is_attached_once_and_outlives_us() {
    if !tap_usable() {
        return;
    }
    let persistent = PersistentInterface::create(unique_name("svmp"), "tap");
    let tap = Tap::open(&persistent.name).unwrap();
    assert_eq!(tap.name(), persistent.name);
    let error = Tap::open(&persistent.name).unwrap_err();
    assert!(matches!(error, TapError::Busy { .. }), "{error:?}");
    assert!(error.to_string().contains("its own TAP"), "{error}");
    drop(tap);
    assert!(
        ip(&["link", "show", &persistent.name]),
        "a TAP we did not create stays after we close it"
    );
    let again = Tap::open(&persistent.name).unwrap();
    assert_eq!(again.name(), persistent.name);
}

#[test]
fn a_tap_we_create_goes_away_with_us() {
    if !tap_usable() {
        return;
    }
    let name = unique_name("svmc");
    let tap = Tap::open(&name).unwrap();
    assert!(ip(&["link", "show", &name]));
    drop(tap);
    assert!(!ip(&["link", "show", &name]));
}

#[test]
fn frames_carry_a_twelve_byte_virtio_header_both_ways() {
    if !tap_usable() {
        return;
    }
    let name = unique_name("svmf");
    let tap = Tap::open(&name).unwrap();
    assert!(ip(&["link", "set", &name, "up"]));
    let socket = PacketSocket::bind(&name);

    let mut frame = vec![0u8; 64];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame[14..].fill(0x5a);
    let mut written = vec![0u8; VNET_HDR_LEN];
    written.extend_from_slice(&frame);
    assert_eq!(tap.write_frame(&written).unwrap(), written.len());
    assert!(
        socket.wait_for(&frame),
        "the host did not see exactly the frame after the header"
    );

    let mut reply = frame.clone();
    reply[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    reply[63] = 0xa5;
    socket.send(&reply);
    let mut buffer = vec![0u8; 65_562];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tap.read_frame(&mut buffer) {
            Ok(len) if buffer[VNET_HDR_LEN..len] == reply[..] => {
                assert_eq!(&buffer[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
                break;
            }
            // The host's own traffic (IPv6 solicitations) may come first.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reading the TAP: {e}"),
        }
        assert!(Instant::now() < deadline, "the frame never reached the TAP");
    }
}

/// An AF_PACKET socket on one interface, for the test EtherType only.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn bind(interface: &str) -> Self {
        let protocol = TEST_ETHERTYPE.to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(interface).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0);
        let mut address = Self::address(ifindex);
        address.sll_protocol = protocol;
        // SAFETY: `address` is a sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                raw,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(bound, 0, "{}", io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO reads one timeval of the size given.
        let set = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(set, 0);
        Self { fd, ifindex }
    }

    fn address(ifindex: i32) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex;
        address
    }

    fn wait_for(&self, expected: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: receives at most buffer.len() bytes into buffer.
            let len = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if len > 0 && buffer[..len as usize] == *expected {
                return true;
            }
        }
        false
    }

    fn send(&self, frame: &[u8]) {
        let mut address = Self::address(self.ifindex);
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sends frame.len() bytes from frame to a valid address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
    }
}
