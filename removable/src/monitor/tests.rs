//! The monitor on this host's real uevent socket: a kernel event arrives,
//! a forged one from a userspace socket does not.

use super::*;
use crate::sysfs::tests::is_root;
use crate::uevent::Action;

/// Waits up to `within` for a uevent matching `wanted`.
fn wait_for(monitor: &mut Monitor, within: Duration, wanted: impl Fn(&Uevent) -> bool) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match monitor.next(left).unwrap() {
            MonitorEvent::Uevent(event) if wanted(&event) => return true,
            MonitorEvent::Timeout => return false,
            _ => {}
        }
    }
    false
}

#[test]
fn kernel_change_event_arrives() {
    if !is_root() {
        eprintln!("skipped: triggering a uevent needs root");
        return;
    }
    let trigger = "/sys/class/block/loop0/uevent";
    if !std::path::Path::new(trigger).exists() {
        eprintln!("skipped: no loop0 on this host");
        return;
    }
    let mut monitor = Monitor::open().unwrap();
    std::fs::write(trigger, "change").unwrap();
    let seen = wait_for(&mut monitor, Duration::from_secs(10), |event| {
        event.action == Action::Change
            && event.devpath.ends_with("/block/loop0")
            && event.subsystem.as_deref() == Some("block")
            && event.devname.as_deref() == Some("loop0")
            && event.diskseq.is_some()
    });
    assert!(seen, "no change uevent for loop0 within 10 s");
}

#[test]
fn forged_datagram_from_userspace_is_dropped() {
    let mut monitor = Monitor::open().unwrap();
    let port = monitor.port_id().unwrap();
    assert_ne!(port, 0);
    let forged = b"add@/devices/securevm-forged/block/sdq\0ACTION=add\0\
DEVPATH=/devices/securevm-forged/block/sdq\0SUBSYSTEM=block\0DEVTYPE=disk\0DEVNAME=sdq\0DISKSEQ=1\0";
    // SAFETY: socket() takes no pointers; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    assert!(raw >= 0, "{}", io::Error::last_os_error());
    // SAFETY: a descriptor socket() just returned, owned by nobody else.
    let sender = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
    to.nl_family = sa_family(libc::AF_NETLINK);
    to.nl_pid = port;
    for datagram in [&forged[..], &[b'x'; MAX_DATAGRAM + 100][..]] {
        // SAFETY: the buffer and address are live for the call with the
        // lengths given.
        let sent = unsafe {
            libc::sendto(
                sender.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
                (&raw const to).cast(),
                socklen_of::<libc::sockaddr_nl>(),
            )
        };
        if sent < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EPERM) {
                eprintln!("skipped: sending to a netlink port needs CAP_NET_ADMIN");
                return;
            }
            panic!("sendto: {err}");
        }
    }
    let forged_seen = wait_for(&mut monitor, Duration::from_millis(500), |event| {
        event.devpath.contains("securevm-forged")
    });
    assert!(!forged_seen, "a forged uevent was accepted");
    assert_eq!(monitor.dropped_datagrams(), 2);
}

/// A netlink socket to send to the monitor's port from, as any local
/// process can.
fn forger() -> OwnedFd {
    // SAFETY: socket() takes no pointers; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    assert!(raw >= 0, "{}", io::Error::last_os_error());
    // SAFETY: a descriptor socket() just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

#[test]
fn a_stream_of_forged_datagrams_does_not_hold_the_caller_past_its_deadline() {
    let mut monitor = Monitor::open().unwrap();
    let sender = forger();
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
    to.nl_family = sa_family(libc::AF_NETLINK);
    to.nl_pid = monitor.port_id().unwrap();
    let junk = b"junk";
    for _ in 0..100 {
        // SAFETY: the buffer and address are live for the call with the
        // lengths given.
        let sent = unsafe {
            libc::sendto(
                sender.as_raw_fd(),
                junk.as_ptr().cast(),
                junk.len(),
                0,
                (&raw const to).cast(),
                socklen_of::<libc::sockaddr_nl>(),
            )
        };
        assert!(sent >= 0, "sendto: {}", io::Error::last_os_error());
    }
    // The deadline has passed once the first datagram is dropped: the
    // rest stay queued for the next call instead of keeping this one (a
    // kernel uevent queued first may end the call even sooner).
    monitor.next(Duration::ZERO).unwrap();
    assert!(
        monitor.dropped_datagrams() <= 1,
        "{} datagrams dropped in one call past its deadline",
        monitor.dropped_datagrams()
    );
}

#[test]
fn times_out_when_nothing_arrives() {
    let mut monitor = Monitor::open().unwrap();
    // Unrelated kernel events may arrive meanwhile; a quiet 100 ms comes soon.
    for _ in 0..50 {
        let start = Instant::now();
        if monitor.next(Duration::from_millis(100)).unwrap() == MonitorEvent::Timeout {
            assert!(start.elapsed() >= Duration::from_millis(100));
            return;
        }
    }
    panic!("no quiet 100 ms in 50 tries");
}
