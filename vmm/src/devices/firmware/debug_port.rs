//! The ports firmware writes diagnostics to: the debug console at 0x402
//! (QEMU's isa-debugcon protocol, which OVMF's DEBUG builds print their
//! log through) and POST codes at 0x80. Both are sinks; the debug
//! console's bytes go to the `--firmware-log` file when there is one.
//!
//! The guest may write to these ports at will once its OS runs, so the log
//! is bounded three ways: at most [`PENDING_LIMIT`] bytes wait in memory
//! (written out at each newline or when full, on the vCPU that wrote them:
//! a `write` to a regular file, not a wait on a device), at most
//! [`FIRMWARE_LOG_LIMIT`] bytes reach the file, and the first failed write
//! (a full disk: `ENOSPC`) ends the log with one warning; the guest runs on
//! either way.

use std::io::Write;

use crate::devices::bus::BusDevice;

/// Ports each sink decodes.
pub const DEBUG_PORT_LEN: u64 = 1;
/// What a read of the debug console returns: how OVMF detects it.
pub const DEBUG_CONSOLE_READBACK: u8 = 0xe9;
/// Bytes held before they are written to the log.
pub const PENDING_LIMIT: usize = 4096;
/// Bytes written to the log file at most; later output is dropped.
pub const FIRMWARE_LOG_LIMIT: u64 = 64 << 20;

/// The line written after the last bytes that fit [`FIRMWARE_LOG_LIMIT`].
const LIMIT_NOTICE: &[u8] = b"\n[securevm: firmware log limit reached; further output dropped]\n";

/// Port 0x402. Every byte written, whatever the access width (OVMF writes
/// its messages with `rep outsb`, one exit for a whole string), is one
/// character of the log.
pub struct DebugConsole<W: Write + Send> {
    log: Option<LogFile<W>>,
}

struct LogFile<W> {
    out: W,
    pending: Vec<u8>,
    written: u64,
}

impl<W: Write + Send> DebugConsole<W> {
    /// A console whose output goes to `log`, or is dropped without one.
    pub fn new(log: Option<W>) -> Self {
        Self {
            log: log.map(|out| LogFile {
                out,
                pending: Vec::with_capacity(PENDING_LIMIT),
                written: 0,
            }),
        }
    }

    fn push(&mut self, byte: u8) {
        let Some(log) = &mut self.log else { return };
        log.pending.push(byte);
        if byte == b'\n' || log.pending.len() >= PENDING_LIMIT {
            self.write_pending();
        }
    }

    /// Write out what is pending; on a failure or at the size limit the
    /// log ends (see the module comment).
    fn write_pending(&mut self) {
        let Some(log) = &mut self.log else { return };
        let room = FIRMWARE_LOG_LIMIT.saturating_sub(log.written);
        let fits =
            usize::try_from(room).map_or(log.pending.len(), |room| room.min(log.pending.len()));
        let over_limit = fits < log.pending.len();
        let mut result = log.out.write_all(&log.pending[..fits]);
        if over_limit && result.is_ok() {
            result = log.out.write_all(LIMIT_NOTICE);
        }
        log.written = log.written.saturating_add(fits as u64);
        log.pending.clear();
        if let Err(e) = result {
            log::warn!("writing the firmware log failed ({e}); further firmware output is dropped");
            self.log = None;
        } else if over_limit {
            log::warn!(
                "the firmware log reached its limit of {FIRMWARE_LOG_LIMIT} bytes; further firmware output is dropped"
            );
            self.log = None;
        }
    }
}

impl<W: Write + Send> BusDevice for DebugConsole<W> {
    /// Every byte reads as the readback value (a `rep insb` reads the port
    /// once per byte).
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(DEBUG_CONSOLE_READBACK);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        for &byte in data {
            self.push(byte);
        }
    }
}

impl<W: Write + Send> Drop for DebugConsole<W> {
    /// A last line without a newline still reaches the file.
    fn drop(&mut self) {
        self.write_pending();
    }
}

/// Port 0x80: POST codes are swallowed; reads see no device (0xff).
pub struct PostCodeSink;

impl BusDevice for PostCodeSink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose bytes the test can see, failing once `capacity` is
    /// used up as a full disk would.
    #[derive(Clone)]
    struct Disk {
        bytes: Arc<Mutex<Vec<u8>>>,
        capacity: usize,
        writes: Arc<Mutex<usize>>,
    }

    impl Disk {
        fn with_capacity(capacity: usize) -> Self {
            Self {
                bytes: Arc::default(),
                capacity,
                writes: Arc::default(),
            }
        }
        fn contents(&self) -> Vec<u8> {
            self.bytes.lock().unwrap().clone()
        }
        fn write_calls(&self) -> usize {
            *self.writes.lock().unwrap()
        }
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            *self.writes.lock().unwrap() += 1;
            let mut bytes = self.bytes.lock().unwrap();
            let room = self.capacity - bytes.len();
            if room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let taken = room.min(buf.len());
            bytes.extend_from_slice(&buf[..taken]);
            Ok(taken)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_log_as_they_end() {
        let disk = Disk::with_capacity(usize::MAX);
        let mut console = DebugConsole::new(Some(disk.clone()));
        // One `rep outsb` with a line and a half, then byte writes.
        console.write(0, b"PlatformPei\nMemDet");
        assert_eq!(disk.contents(), b"PlatformPei\n");
        for byte in b"ect\n" {
            console.write(0, &[*byte]);
        }
        assert_eq!(disk.contents(), b"PlatformPei\nMemDetect\n");
        console.write(0, b"no newline");
        drop(console);
        assert_eq!(disk.contents(), b"PlatformPei\nMemDetect\nno newline");
    }

    #[test]
    fn a_line_without_end_is_written_in_bounded_pieces() {
        let disk = Disk::with_capacity(usize::MAX);
        let mut console = DebugConsole::new(Some(disk.clone()));
        console.write(0, &vec![b'x'; PENDING_LIMIT * 3 + 5]);
        assert_eq!(disk.contents().len(), PENDING_LIMIT * 3);
        assert!(console.log.as_ref().unwrap().pending.capacity() <= PENDING_LIMIT);
    }

    #[test]
    fn reads_return_the_debugcon_readback() {
        let mut console = DebugConsole::<Disk>::new(None);
        let mut byte = [0u8];
        console.read(0, &mut byte);
        assert_eq!(byte, [0xe9]);
        let mut string = [0u8; 3];
        console.read(0, &mut string);
        assert_eq!(string, [0xe9; 3]);
        console.read(0, &mut []);
    }

    #[test]
    fn without_a_log_output_is_swallowed() {
        let mut console = DebugConsole::<Disk>::new(None);
        console.write(0, &vec![b'y'; 3 * PENDING_LIMIT]);
        console.write(0, b"\n");
        assert!(console.log.is_none());
    }

    #[test]
    fn a_full_disk_ends_the_log_without_stopping_the_guest() {
        crate::storage::test_support::captured_warnings();
        let disk = Disk::with_capacity(10);
        let mut console = DebugConsole::new(Some(disk.clone()));
        console.write(0, b"first line\nsecond line\n");
        assert_eq!(disk.contents(), b"first line");
        let calls = disk.write_calls();
        // Later output is not even attempted.
        console.write(0, b"third line\n");
        drop(console);
        assert_eq!(disk.write_calls(), calls);
        let warnings = crate::storage::test_support::captured_warnings();
        assert!(warnings
            .iter()
            .any(|line| line.starts_with("writing the firmware log failed")));
    }

    #[test]
    fn the_log_stops_at_its_size_limit() {
        let disk = Disk::with_capacity(usize::MAX);
        let mut console = DebugConsole::new(Some(disk.clone()));
        console.log.as_mut().unwrap().written = FIRMWARE_LOG_LIMIT - 4;
        console.write(0, b"abcdefgh\n");
        console.write(0, b"more\n");
        let mut expected = b"abcd".to_vec();
        expected.extend_from_slice(LIMIT_NOTICE);
        assert_eq!(disk.contents(), expected);
        assert!(console.log.is_none());
    }

    #[test]
    fn writes_at_other_offsets_are_ignored() {
        let disk = Disk::with_capacity(usize::MAX);
        let mut console = DebugConsole::new(Some(disk.clone()));
        console.write(1, b"x\n");
        console.write(u64::MAX, b"y\n");
        console.write(0, &[]);
        drop(console);
        assert!(disk.contents().is_empty());
    }

    #[test]
    fn post_codes_are_swallowed() {
        let mut sink = PostCodeSink;
        sink.write(0, &[0x55]);
        sink.write(u64::MAX, &[1, 2, 3, 4]);
        let mut data = [0u8; 4];
        sink.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
