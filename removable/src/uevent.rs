//! Kernel uevent datagrams, as the kernel multicasts them on
//! `NETLINK_KOBJECT_UEVENT`: a header `ACTION@DEVPATH`, then `KEY=VALUE`
//! fields, each terminated by a NUL byte.
//!
//! The parser is strict because the socket is reachable by other local
//! processes and the monitor's sender checks are the only thing between
//! them and this code: anything the kernel would never send (no header, a
//! header that disagrees with its fields, a repeated key, a number with a
//! sign, non-UTF-8 text, an oversized datagram, udev's own `libudev`
//! format) is refused with a typed error. Keys securevm does not use are
//! ignored. Error messages never quote the datagram's text.

use std::str;

/// Largest datagram accepted. The kernel builds uevents in a buffer of
/// `UEVENT_BUFFER_SIZE` (2048) bytes; four times that leaves room for any
/// future growth while still refusing absurd input.
pub const MAX_DATAGRAM: usize = 8192;

/// Magic prefix of the datagrams udevd re-broadcasts to its own monitors
/// (netlink group 2); securevm listens to the kernel only.
const LIBUDEV_MAGIC: &[u8] = b"libudev\0";

/// What happened to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Change,
    /// `bind`, `unbind`, `move`, `online`, `offline` and any action the
    /// kernel may add later.
    Other,
}

impl Action {
    fn from_name(name: &str) -> Action {
        match name {
            "add" => Action::Add,
            "remove" => Action::Remove,
            "change" => Action::Change,
            _ => Action::Other,
        }
    }
}

/// One parsed kernel uevent: the fields securevm uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: Action,
    /// The kobject path under `/sys`, e.g. `/devices/.../block/sdb`;
    /// never empty, always starts with `/`.
    pub devpath: String,
    pub subsystem: Option<String>,
    pub devtype: Option<String>,
    /// The device node's name relative to `/dev` (`sdb`), for devices
    /// that have one.
    pub devname: Option<String>,
    pub diskseq: Option<u64>,
    pub seqnum: Option<u64>,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UeventError {
    #[error("empty uevent datagram")]
    Empty,
    #[error("uevent datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    #[error("libudev datagram (udevd's format), not a kernel uevent")]
    Libudev,
    #[error("uevent header is not ACTION@DEVPATH")]
    NoHeader,
    #[error("uevent field is not valid UTF-8")]
    NotUtf8,
    #[error("uevent field is not KEY=VALUE")]
    MalformedField,
    #[error("uevent key {0} appears twice")]
    DuplicateKey(&'static str),
    #[error("uevent lacks {0}")]
    MissingKey(&'static str),
    #[error("uevent header disagrees with its {0} field")]
    HeaderMismatch(&'static str),
    #[error("uevent {0} is not a decimal number")]
    BadNumber(&'static str),
    #[error("uevent DEVPATH does not start with '/'")]
    BadDevpath,
}

/// The keys whose values are kept; each may appear at most once.
#[derive(Default)]
struct Fields<'a> {
    action: Option<&'a str>,
    devpath: Option<&'a str>,
    subsystem: Option<&'a str>,
    devtype: Option<&'a str>,
    devname: Option<&'a str>,
    diskseq: Option<&'a str>,
    seqnum: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// Records `value` for `key`; unknown keys are ignored.
    fn set(&mut self, key: &str, value: &'a str) -> Result<(), UeventError> {
        let (slot, name) = match key {
            "ACTION" => (&mut self.action, "ACTION"),
            "DEVPATH" => (&mut self.devpath, "DEVPATH"),
            "SUBSYSTEM" => (&mut self.subsystem, "SUBSYSTEM"),
            "DEVTYPE" => (&mut self.devtype, "DEVTYPE"),
            "DEVNAME" => (&mut self.devname, "DEVNAME"),
            "DISKSEQ" => (&mut self.diskseq, "DISKSEQ"),
            "SEQNUM" => (&mut self.seqnum, "SEQNUM"),
            _ => return Ok(()),
        };
        if slot.replace(value).is_some() {
            return Err(UeventError::DuplicateKey(name));
        }
        Ok(())
    }
}

/// Parses one datagram as received from the kernel's uevent socket.
pub fn parse_uevent(datagram: &[u8]) -> Result<Uevent, UeventError> {
    if datagram.is_empty() {
        return Err(UeventError::Empty);
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(UeventError::TooLarge(datagram.len()));
    }
    if datagram.starts_with(LIBUDEV_MAGIC) {
        return Err(UeventError::Libudev);
    }
    // Every field ends in NUL; the last one may lack it.
    let body = datagram.strip_suffix(b"\0").unwrap_or(datagram);
    let mut parts = body.split(|&b| b == 0);
    let header = parts.next().ok_or(UeventError::NoHeader)?;
    let header = str::from_utf8(header).map_err(|_| UeventError::NotUtf8)?;
    let (header_action, header_devpath) = header.split_once('@').ok_or(UeventError::NoHeader)?;
    if header_action.is_empty() || header_devpath.is_empty() {
        return Err(UeventError::NoHeader);
    }
    let mut fields = Fields::default();
    for part in parts {
        let part = str::from_utf8(part).map_err(|_| UeventError::NotUtf8)?;
        let (key, value) = part.split_once('=').ok_or(UeventError::MalformedField)?;
        if key.is_empty() {
            return Err(UeventError::MalformedField);
        }
        fields.set(key, value)?;
    }
    let action = fields.action.ok_or(UeventError::MissingKey("ACTION"))?;
    let devpath = fields.devpath.ok_or(UeventError::MissingKey("DEVPATH"))?;
    if action != header_action {
        return Err(UeventError::HeaderMismatch("ACTION"));
    }
    if devpath != header_devpath {
        return Err(UeventError::HeaderMismatch("DEVPATH"));
    }
    if !devpath.starts_with('/') {
        return Err(UeventError::BadDevpath);
    }
    Ok(Uevent {
        action: Action::from_name(action),
        devpath: devpath.to_owned(),
        subsystem: fields.subsystem.map(str::to_owned),
        devtype: fields.devtype.map(str::to_owned),
        devname: fields.devname.map(str::to_owned),
        diskseq: parse_number(fields.diskseq, "DISKSEQ")?,
        seqnum: parse_number(fields.seqnum, "SEQNUM")?,
    })
}

/// A plain decimal number as the kernel prints it: digits only (no sign,
/// no spaces), within `u64`.
fn parse_number(value: Option<&str>, key: &'static str) -> Result<Option<u64>, UeventError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UeventError::BadNumber(key));
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| UeventError::BadNumber(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A USB stick's disk appearing, as `udevadm monitor --kernel
    /// --property` shows it on Linux 6.x.
    const ADD_SDB: &[u8] = b"add@/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb\0\
ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb\0\
SUBSYSTEM=block\0MAJOR=8\0MINOR=16\0DEVNAME=sdb\0DEVTYPE=disk\0DISKSEQ=23\0SEQNUM=4711\0";

    fn datagram(fields: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for field in fields {
            out.extend_from_slice(field.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn parses_a_kernel_block_add() {
        let event = parse_uevent(ADD_SDB).unwrap();
        assert_eq!(event.action, Action::Add);
        assert!(event.devpath.ends_with("/block/sdb"));
        assert_eq!(event.subsystem.as_deref(), Some("block"));
        assert_eq!(event.devtype.as_deref(), Some("disk"));
        assert_eq!(event.devname.as_deref(), Some("sdb"));
        assert_eq!(event.diskseq, Some(23));
        assert_eq!(event.seqnum, Some(4711));
    }

    #[test]
    fn maps_actions() {
        for (name, action) in [
            ("add", Action::Add),
            ("remove", Action::Remove),
            ("change", Action::Change),
            ("bind", Action::Other),
            ("unbind", Action::Other),
            ("move", Action::Other),
            ("online", Action::Other),
            ("offline", Action::Other),
        ] {
            let header = format!("{name}@/devices/x");
            let action_field = format!("ACTION={name}");
            let event =
                parse_uevent(&datagram(&[&header, &action_field, "DEVPATH=/devices/x"])).unwrap();
            assert_eq!(event.action, action, "{name}");
        }
    }

    #[test]
    fn optional_fields_may_be_absent_and_trailing_nul_is_optional() {
        let event = parse_uevent(b"change@/devices/x\0ACTION=change\0DEVPATH=/devices/x").unwrap();
        assert_eq!(event.action, Action::Change);
        assert_eq!(event.subsystem, None);
        assert_eq!(event.devtype, None);
        assert_eq!(event.devname, None);
        assert_eq!(event.diskseq, None);
        assert_eq!(event.seqnum, None);
    }

    #[test]
    fn ignores_unknown_keys() {
        let event = parse_uevent(&datagram(&[
            "add@/devices/x",
            "ACTION=add",
            "DEVPATH=/devices/x",
            "ID_FS_TYPE=vfat",
            "PARTN=1",
        ]))
        .unwrap();
        assert_eq!(event.devpath, "/devices/x");
    }

    #[test]
    fn refuses_empty_and_oversized() {
        assert_eq!(parse_uevent(b""), Err(UeventError::Empty));
        let mut big = datagram(&["add@/devices/x", "ACTION=add", "DEVPATH=/devices/x"]);
        big.resize(MAX_DATAGRAM + 1, b'a');
        assert_eq!(
            parse_uevent(&big),
            Err(UeventError::TooLarge(MAX_DATAGRAM + 1))
        );
    }

    #[test]
    fn refuses_libudev_datagrams() {
        let mut udev = b"libudev\0".to_vec();
        udev.extend_from_slice(&[0xfe, 0xed, 0xca, 0xfe, 0, 0, 0, 40]);
        assert_eq!(parse_uevent(&udev), Err(UeventError::Libudev));
    }

    #[test]
    fn refuses_bad_headers() {
        for header in ["ACTION=add", "add", "@/devices/x", "add@", ""] {
            let input = datagram(&[header, "ACTION=add", "DEVPATH=/devices/x"]);
            assert_eq!(
                parse_uevent(&input),
                Err(UeventError::NoHeader),
                "{header:?}"
            );
        }
    }

    #[test]
    fn refuses_header_disagreeing_with_fields() {
        let input = datagram(&["remove@/devices/x", "ACTION=add", "DEVPATH=/devices/x"]);
        assert_eq!(
            parse_uevent(&input),
            Err(UeventError::HeaderMismatch("ACTION"))
        );
        let input = datagram(&["add@/devices/y", "ACTION=add", "DEVPATH=/devices/x"]);
        assert_eq!(
            parse_uevent(&input),
            Err(UeventError::HeaderMismatch("DEVPATH"))
        );
    }

    #[test]
    fn refuses_missing_action_or_devpath() {
        let input = datagram(&["add@/devices/x", "ACTION=add"]);
        assert_eq!(
            parse_uevent(&input),
            Err(UeventError::MissingKey("DEVPATH"))
        );
        let input = datagram(&["add@/devices/x", "DEVPATH=/devices/x"]);
        assert_eq!(parse_uevent(&input), Err(UeventError::MissingKey("ACTION")));
    }

    #[test]
    fn refuses_relative_devpath() {
        let input = datagram(&["add@devices/x", "ACTION=add", "DEVPATH=devices/x"]);
        assert_eq!(parse_uevent(&input), Err(UeventError::BadDevpath));
    }

    #[test]
    fn refuses_non_utf8() {
        let mut input = b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SERIAL=".to_vec();
        input.extend_from_slice(&[0xff, 0xfe, 0]);
        assert_eq!(parse_uevent(&input), Err(UeventError::NotUtf8));
        let input = b"add@/devices/\xc3\0ACTION=add\0DEVPATH=/devices/x\0";
        assert_eq!(parse_uevent(input), Err(UeventError::NotUtf8));
    }

    #[test]
    fn refuses_malformed_fields() {
        for field in ["NOEQUALS", "=value", ""] {
            let input = datagram(&["add@/devices/x", "ACTION=add", field, "DEVPATH=/devices/x"]);
            assert_eq!(
                parse_uevent(&input),
                Err(UeventError::MalformedField),
                "{field:?}"
            );
        }
    }

    #[test]
    fn refuses_duplicate_keys() {
        let input = datagram(&[
            "add@/devices/x",
            "ACTION=add",
            "DEVPATH=/devices/x",
            "DISKSEQ=1",
            "DISKSEQ=2",
        ]);
        assert_eq!(
            parse_uevent(&input),
            Err(UeventError::DuplicateKey("DISKSEQ"))
        );
        let input = datagram(&[
            "add@/devices/x",
            "ACTION=add",
            "ACTION=add",
            "DEVPATH=/devices/x",
        ]);
        assert_eq!(
            parse_uevent(&input),
            Err(UeventError::DuplicateKey("ACTION"))
        );
    }

    #[test]
    fn refuses_bad_numbers() {
        for value in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x10",
            "18446744073709551616",
            "1.5",
        ] {
            let diskseq = format!("DISKSEQ={value}");
            let input = datagram(&[
                "add@/devices/x",
                "ACTION=add",
                "DEVPATH=/devices/x",
                &diskseq,
            ]);
            assert_eq!(
                parse_uevent(&input),
                Err(UeventError::BadNumber("DISKSEQ")),
                "{value:?}"
            );
            let seqnum = format!("SEQNUM={value}");
            let input = datagram(&[
                "add@/devices/x",
                "ACTION=add",
                "DEVPATH=/devices/x",
                &seqnum,
            ]);
            assert_eq!(
                parse_uevent(&input),
                Err(UeventError::BadNumber("SEQNUM")),
                "{value:?}"
            );
        }
        let input = datagram(&[
            "add@/devices/x",
            "ACTION=add",
            "DEVPATH=/devices/x",
            "DISKSEQ=18446744073709551615",
        ]);
        assert_eq!(parse_uevent(&input).unwrap().diskseq, Some(u64::MAX));
    }

    #[test]
    fn never_panics_on_truncations_of_a_real_datagram() {
        for len in 0..=ADD_SDB.len() {
            let _ = parse_uevent(&ADD_SDB[..len]);
        }
    }
}
