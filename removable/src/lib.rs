//! The host's removable disks, seen without udev: securevm watches the
//! kernel's uevents itself (a libudev monitor needs udevd, which neither
//! the test harness nor every host runs) and reads sysfs to decide which
//! block devices are whole USB or MMC disks and what they say of
//! themselves (serial, vendor, model, size, `DISKSEQ`).
//!
//! Everything here is hostile input: uevent datagrams can come from any
//! local process unless proven to be the kernel's, and a USB stick chooses
//! its own serial and product strings. Parsers refuse with typed errors,
//! strings a device reports are kept only when they are short printable
//! ASCII, and nothing grows without bound.
//!
//! - [`uevent`]: parse one kernel uevent datagram.
//! - [`sysfs`]: probe a block device by name; scan all of them.
//! - [`monitor`]: the `NETLINK_KOBJECT_UEVENT` socket, kernel senders only.
//! - [`tracker`]: the sticks present, from a scan and the uevents after it.

pub mod monitor;
pub mod sysfs;
pub mod tracker;
pub mod uevent;

pub use monitor::{Monitor, MonitorEvent};
pub use sysfs::{disk_seq, Bus, ProbeError, Removable, Sysfs};
pub use tracker::{Change, Tracker, Watcher};
pub use uevent::{parse_uevent, Action, Uevent, UeventError};
