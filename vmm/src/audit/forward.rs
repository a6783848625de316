//! Forwarding audit records from the local log to syslog destinations.
//!
//! The local hash-chained file stays the record of truth and is the spool:
//! a forwarder is a thread of its own
//! ([`crate::seccomp::ThreadKind::AuditForward`]) that
//! reads the file from where it last stopped, turns each record line into
//! an RFC 5424 message whose MSG is the line unchanged, and hands it to a
//! [`Transport`]. A destination that is down or fails mid-stream costs
//! nothing but time: the forwarder backs off, then sends again from the
//! file, from the first record the destination is not known to hold, so
//! every record arrives at least once and in order. How far a destination
//! got is kept in a cursor file beside the log (`LOG.syslog-sent`,
//! `LOG.remote-sent`: a byte offset), so a later session resends what an
//! earlier one could not deliver. A cursor that does not fit the log (the
//! log was moved aside and a new one started) starts from the beginning;
//! repeats are harmless, `securevm audit verify --collected` accepts them.
//!
//! Memory stays bounded: the file is read in pieces of [`READ_CHUNK`]
//! bytes and a line longer than [`MAX_LINE`] (securevm never writes one)
//! is skipped with a warning instead of being buffered.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::confined::{self, Confinement, ThreadError};

/// How much of the log one read takes.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// The longest line forwarded.
pub(crate) const MAX_LINE: usize = 256 * 1024;
/// How long an idle forwarder sleeps before looking at the file again
/// (records also wake it as they are written).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Backoff after a failed delivery: doubling from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const LAST_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between attempts once the session ends, so the few
/// seconds `finish` waits are spent trying.
const FINISHING_BACKOFF: Duration = Duration::from_millis(500);

/// RFC 5424 PRI: facility authpriv (10), severity notice (5).
const PRI: u32 = 10 * 8 + 5;

/// Why a destination did not take a message, and from where to send again.
#[derive(Debug)]
pub(crate) struct Undelivered {
    pub error: io::Error,
    /// The log offset of the first record the destination is not known to
    /// hold; sending starts there again.
    pub resend_from: u64,
}

/// A syslog destination.
pub(crate) trait Transport: Send {
    /// What the destination is, for messages ("syslog /dev/log").
    fn describe(&self) -> String;
    /// Delivers `message`, the record starting at log offset `record_start`.
    fn send(&mut self, record_start: u64, message: &[u8]) -> Result<(), Undelivered>;
    /// The log offset up to which the destination is known to hold every
    /// record, after it took every record before `sent_end`.
    fn held(&self, sent_end: u64) -> u64;
    /// Ends the delivery in order (the session ends); returns whether the
    /// destination can be taken to hold all that was sent.
    fn close(&mut self) -> bool;
}

/// What the RFC 5424 header of each message names.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub hostname: String,
    pub procid: u32,
}

impl Origin {
    /// This host and process (read before the thread's filter is on).
    pub fn of_this_process() -> Origin {
        let mut name = [0u8; 256];
        // SAFETY: gethostname writes at most `name.len()` bytes into the buffer.
        let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let hostname = String::from_utf8_lossy(&name[..end]).into_owned();
        Origin {
            hostname: if ok { hostname } else { String::new() },
            procid: std::process::id(),
        }
    }
}

/// The fields of a record the header repeats.
#[derive(Deserialize)]
struct Header {
    time: String,
    event: String,
}

/// An RFC 5424 field of printable US-ASCII, at most `max` long, or the
/// NILVALUE `-`.
fn header_field(text: &str, max: usize) -> &str {
    let printable =
        !text.is_empty() && text.len() <= max && text.bytes().all(|b| (33..=126).contains(&b));
    if printable {
        text
    } else {
        "-"
    }
}

/// The RFC 5424 message for one record line: `<PRI>1 TIMESTAMP HOSTNAME
/// securevm PROCID MSGID - MSG`, MSGID the record's event and MSG the line
/// as written. `None` for a line that is no record (a line cut by a crash).
pub(crate) fn syslog_message(origin: &Origin, line: &[u8]) -> Option<Vec<u8>> {
    let header: Header = serde_json::from_slice(line).ok()?;
    let mut message = format!(
        "<{PRI}>1 {} {} securevm {} {} - ",
        header_field(&header.time, 32),
        header_field(&origin.hostname, 255),
        origin.procid,
        header_field(&header.event, 32),
    )
    .into_bytes();
    message.extend_from_slice(line);
    Some(message)
}

/// Reads whole lines from the log from a byte offset on.
pub(crate) struct Tail {
    file: File,
    offset: u64,
}

impl Tail {
    pub fn new(file: File, offset: u64) -> Tail {
        Tail { file, offset }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn rewind(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// The next whole line (without its newline) and the offset it starts
    /// at; `None` at the end of what is written (a line still being
    /// written is read again next time). An over-long line is skipped.
    pub fn next_line(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let start = self.offset;
            let mut position = start;
            let mut line = Vec::new();
            let mut too_long = false;
            let end = loop {
                let read = self.file.read_at(&mut chunk, position)?;
                if read == 0 {
                    return Ok(None);
                }
                let piece = &chunk[..read];
                if let Some(newline) = piece.iter().position(|&b| b == b'\n') {
                    if !too_long {
                        line.extend_from_slice(&piece[..newline]);
                    }
                    break position + newline as u64 + 1;
                }
                if !too_long {
                    line.extend_from_slice(piece);
                    if line.len() > MAX_LINE {
                        too_long = true;
                        line = Vec::new();
                    }
                }
                position += read as u64;
            };
            self.offset = end;
            if too_long || line.len() > MAX_LINE {
                log::warn!(
                    "audit forwarding: the log line at offset {start} is longer than {MAX_LINE} bytes; it is not forwarded"
                );
                continue;
            }
            return Ok(Some((start, line)));
        }
    }
}

/// Where a destination got to, kept beside the log.
pub(crate) struct Cursor {
    file: File,
}

impl Cursor {
    /// Opens (or creates, mode 0600) the cursor at `path`; returns it with
    /// the offset to start from in a log of `log_len` bytes whose content
    /// is read through `log`.
    pub fn open(path: &Path, log: &File, log_len: u64) -> io::Result<(Cursor, u64)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        let mut text = [0u8; 24];
        let read = file.read_at(&mut text, 0)?;
        let saved = std::str::from_utf8(&text[..read])
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let fits = saved <= log_len && (saved == 0 || ends_a_line(log, saved)?);
        Ok((Cursor { file }, if fits { saved } else { 0 }))
    }

    pub fn save(&self, offset: u64) -> io::Result<()> {
        // Fixed width, so a shorter number never leaves digits of a longer one.
        self.file
            .write_all_at(format!("{offset:020}\n").as_bytes(), 0)
    }
}

fn ends_a_line(log: &File, offset: u64) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    Ok(log.read_at(&mut byte, offset - 1)? == 1 && byte[0] == b'\n')
}

/// A running forwarder: its thread, how to wake and stop it.
pub(crate) struct Forwarder {
    describe: String,
    wake: SyncSender<()>,
    stopping: Arc<AtomicBool>,
    done: Receiver<()>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("to", &self.describe)
            .finish()
    }
}

/// What one forwarder thread needs, all opened before its filter is on.
pub(crate) struct ForwardJob {
    pub name: &'static str,
    pub tail: Tail,
    pub cursor: Cursor,
    pub transport: Box<dyn Transport>,
    pub origin: Origin,
}

impl ForwardJob {
    /// Opens the log at `log_path` for reading and the cursor `LOG.NAME-sent`.
    pub fn open(
        name: &'static str,
        log_path: &Path,
        transport: Box<dyn Transport>,
    ) -> io::Result<ForwardJob> {
        let log = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(log_path)?;
        let log_len = log.metadata()?.len();
        let (cursor, offset) = Cursor::open(&cursor_path(log_path, name), &log, log_len)?;
        Ok(ForwardJob {
            name,
            tail: Tail::new(log, offset),
            cursor,
            transport,
            origin: Origin::of_this_process(),
        })
    }
}

/// `LOG.NAME-sent`.
pub(crate) fn cursor_path(log_path: &Path, name: &str) -> PathBuf {
    let mut path = log_path.as_os_str().to_owned();
    path.push(format!(".{name}-sent"));
    PathBuf::from(path)
}

impl Forwarder {
    /// Starts the thread `audit-NAME` forwarding `job`.
    pub fn start(job: ForwardJob, confinement: Confinement) -> Result<Forwarder, ThreadError> {
        let (wake, woken) = mpsc::sync_channel(1);
        let (finished, done) = mpsc::sync_channel(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let describe = job.transport.describe();
        let stop = stopping.clone();
        confined::spawn(format!("audit-{}", job.name), confinement, move || {
            forward(job, &woken, &stop);
            let _ = finished.send(());
        })?;
        Ok(Forwarder {
            describe,
            wake,
            stopping,
            done,
        })
    }

    /// A record was written.
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// Delivers what the log holds, closes the destination and ends the
    /// thread; gives up waiting after `limit` (the records stay in the
    /// log and the cursor says where the next session resumes). Returns
    /// whether everything was delivered.
    pub fn finish(&self, limit: Duration) -> bool {
        self.stopping.store(true, Ordering::Release);
        self.wake();
        match self.done.recv_timeout(limit) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => {
                log::warn!(
                    "audit forwarding to {}: not all records were delivered within {}s; the next session resends them from the log",
                    self.describe,
                    limit.as_secs()
                );
                false
            }
            Err(RecvTimeoutError::Disconnected) => false,
        }
    }
}

/// The forwarder thread's loop.
fn forward(mut job: ForwardJob, woken: &Receiver<()>, stopping: &AtomicBool) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let stop_seen = stopping.load(Ordering::Acquire);
        let delivered = deliver_written(&mut job).and_then(|()| {
            if !stop_seen {
                return Ok(());
            }
            if job.transport.close() {
                save_cursor(&job, job.tail.offset());
                return Ok(());
            }
            Err(Undelivered {
                error: io::Error::other("the destination did not confirm the end of the stream"),
                resend_from: job.transport.held(job.tail.offset()),
            })
        });
        match delivered {
            Ok(()) => {
                if failing {
                    log::info!(
                        "audit forwarding to {}: delivering again",
                        job.transport.describe()
                    );
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
                if stop_seen {
                    return;
                }
                match woken.recv_timeout(IDLE_WAIT) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            Err(undelivered) => {
                if !failing {
                    log::warn!(
                        "audit forwarding to {}: {}; records stay in the local log and are sent again, retrying with backoff",
                        job.transport.describe(),
                        undelivered.error
                    );
                    failing = true;
                }
                job.tail.rewind(undelivered.resend_from);
                let wait = if stop_seen {
                    backoff.min(FINISHING_BACKOFF)
                } else {
                    backoff
                };
                let deadline = Instant::now() + wait;
                backoff = (backoff * 2).min(LAST_BACKOFF);
                // Sleep out the backoff; a stop asked for meanwhile gets
                // one more attempt at once (then `finish` stops waiting).
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    if stopping.load(Ordering::Acquire) && !stop_seen {
                        break;
                    }
                    if woken.recv_timeout(left) == Err(RecvTimeoutError::Disconnected) {
                        return;
                    }
                }
            }
        }
    }
}

/// Sends every whole record written so far.
fn deliver_written(job: &mut ForwardJob) -> Result<(), Undelivered> {
    let read_error = |error, at| Undelivered {
        error,
        resend_from: at,
    };
    let mut delivered_any = false;
    loop {
        let at = job.tail.offset();
        let Some((start, line)) = job.tail.next_line().map_err(|e| read_error(e, at))? else {
            break;
        };
        let Some(message) = syslog_message(&job.origin, &line) else {
            continue;
        };
        if let Err(undelivered) = job.transport.send(start, &message) {
            save_cursor(job, job.transport.held(start));
            return Err(undelivered);
        }
        delivered_any = true;
    }
    if delivered_any {
        save_cursor(job, job.transport.held(job.tail.offset()));
    }
    Ok(())
}

fn save_cursor(job: &ForwardJob, offset: u64) {
    if let Err(e) = job.cursor.save(offset) {
        log::warn!(
            "audit forwarding to {}: cannot save how far it got ({e}); a later session may send records again",
            job.transport.describe()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::key::AuditKey;
    use crate::audit::syslog::SyslogSocket;
    use crate::audit::writer::AuditLog;
    use crate::audit::Event;
    use crate::seccomp::ThreadKind;
    use std::os::unix::net::UnixDatagram;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("securevm-forward-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn origin() -> Origin {
        Origin {
            hostname: "pc-17".into(),
            procid: 4242,
        }
    }

    #[test]
    fn a_record_becomes_an_rfc_5424_message_with_the_line_unchanged() {
        let line = br#"{"event":"vm-start","mac":"ab","prev":"cd","seq":2,"time":"2026-12-06T10:00:00.123Z","user":"alice"}"#;
        let message = syslog_message(&origin(), line).unwrap();
        let mut expected =
            b"<85>1 2026-12-06T10:00:00.123Z pc-17 securevm 4242 vm-start - ".to_vec();
        expected.extend_from_slice(line);
        assert_eq!(message, expected);
        // Header fields that are not printable ASCII become the NILVALUE;
        // the message keeps the line as it is.
        let odd = Origin {
            hostname: "two words".into(),
            procid: 1,
        };
        let line = br#"{"event":"x y","time":""}"#;
        let message = syslog_message(&odd, line).unwrap();
        assert!(
            message.starts_with(b"<85>1 - - securevm 1 - - {"),
            "{}",
            String::from_utf8_lossy(&message)
        );
        assert!(message.ends_with(line));
        assert_eq!(syslog_message(&origin(), b"{\"event\":\"cut"), None);
        assert_eq!(syslog_message(&origin(), b"[]"), None);
    }

    #[test]
    fn the_tail_gives_whole_lines_and_skips_over_long_ones() {
        let scratch = Scratch::new("tail");
        let path = scratch.0.join("log");
        let long = "y".repeat(MAX_LINE + 1);
        std::fs::write(&path, format!("first\n{long}\nthird\npartial")).unwrap();
        let mut tail = Tail::new(File::open(&path).unwrap(), 0);
        assert_eq!(tail.next_line().unwrap(), Some((0, b"first".to_vec())));
        let third_at = (6 + long.len() + 1) as u64;
        assert_eq!(
            tail.next_line().unwrap(),
            Some((third_at, b"third".to_vec()))
        );
        assert_eq!(tail.next_line().unwrap(), None);
        assert_eq!(tail.offset(), third_at + 6);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, b" now whole\n").unwrap();
        assert_eq!(
            tail.next_line().unwrap(),
            Some((third_at + 6, b"partial now whole".to_vec()))
        );
    }

    #[test]
    fn a_cursor_that_does_not_fit_the_log_starts_from_the_beginning() {
        let scratch = Scratch::new("cursor");
        let log_path = scratch.0.join("audit.jsonl");
        std::fs::write(&log_path, "one\ntwo\n").unwrap();
        let log = File::open(&log_path).unwrap();
        let cursor_path = cursor_path(&log_path, "syslog");
        assert!(cursor_path.ends_with("audit.jsonl.syslog-sent"));
        let (cursor, start) = Cursor::open(&cursor_path, &log, 8).unwrap();
        assert_eq!(start, 0);
        cursor.save(4).unwrap();
        assert_eq!(Cursor::open(&cursor_path, &log, 8).unwrap().1, 4);
        for (saved, log_len) in [(3, 8), (9, 8), (4, 3)] {
            cursor.save(saved).unwrap();
            assert_eq!(
                Cursor::open(&cursor_path, &log, log_len).unwrap().1,
                0,
                "{saved}"
            );
        }
        std::fs::write(&cursor_path, "not a number").unwrap();
        assert_eq!(Cursor::open(&cursor_path, &log, 8).unwrap().1, 0);
    }

    /// A test syslog daemon: a datagram socket bound at `path`.
    fn daemon(path: &Path) -> UnixDatagram {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
    }

    fn received(daemon: &UnixDatagram) -> String {
        let mut buffer = vec![0u8; 65536];
        let len = daemon.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..len].to_vec()).unwrap()
    }

    /// Every record of the log reaches the daemon, unchanged, in order,
    /// though the daemon's socket appears only after the first records;
    /// then the cursor lets the next session send only its own.
    fn forwarding_survives_a_missing_daemon(confinement: Confinement) {
        let scratch = Scratch::new(&format!("syslog-{confinement:?}"));
        let log_path = scratch.0.join("audit.jsonl");
        let socket_path = scratch.0.join("log.sock");
        let key = || AuditKey::from_bytes([3; 32]);
        let log = AuditLog::open(&log_path, key()).unwrap();
        let transport = SyslogSocket::new(socket_path.clone()).unwrap();
        let job = ForwardJob::open("syslog", &log_path, Box::new(transport)).unwrap();
        log.add_forwarder(Forwarder::start(job, confinement).unwrap());
        log.record(Event::VmStop {
            reason: "one".into(),
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let daemon = daemon(&socket_path);
        log.record(Event::VmStop {
            reason: "two".into(),
        })
        .unwrap();
        log.finish_forwarding(Duration::from_secs(20));
        let lines: Vec<String> = std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 3);
        for line in &lines {
            let message = received(&daemon);
            assert!(message.ends_with(&format!(" - {line}")), "{message}");
            assert!(message.starts_with("<85>1 "), "{message}");
        }
        drop(log);
        let log = AuditLog::open(&log_path, key()).unwrap();
        let transport = SyslogSocket::new(socket_path.clone()).unwrap();
        let job = ForwardJob::open("syslog", &log_path, Box::new(transport)).unwrap();
        log.add_forwarder(Forwarder::start(job, confinement).unwrap());
        log.finish_forwarding(Duration::from_secs(20));
        let message = received(&daemon);
        assert!(
            message.contains(r#""event":"log-opened""#) && message.contains(r#""seq":4"#),
            "{message}"
        );
        daemon.set_nonblocking(true).unwrap();
        assert!(
            daemon.recv(&mut [0u8; 16]).is_err(),
            "a record was sent twice"
        );
    }

    #[test]
    fn every_record_reaches_syslog_once_the_daemon_listens() {
        forwarding_survives_a_missing_daemon(Confinement::Unfiltered);
    }

    /// Set in the environment of the child process that runs
    /// [`filtered_forwarding_in_child_process`].
    const FILTERED_CHILD: &str = "SECUREVM_TEST_FILTERED_AUDIT_FORWARD_CHILD";

    /// The same, with the forwarder under its real filter, in a fresh process.
    #[test]
    fn the_forwarder_runs_under_its_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "audit::forward::tests::filtered_forwarding_in_child_process",
            FILTERED_CHILD,
        );
    }

    #[test]
    #[ignore = "runs as the child of the_forwarder_runs_under_its_filter"]
    fn filtered_forwarding_in_child_process() {
        if std::env::var_os(FILTERED_CHILD).is_none() {
            return the_forwarder_runs_under_its_filter();
        }
        // As securevm's main does: a thread ending under its filter must
        // not make glibc read /proc/sys/vm/overcommit_memory to trim its arena.
        // SAFETY: mallopt only tunes the allocator.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        forwarding_survives_a_missing_daemon(Confinement::Seccomp(ThreadKind::AuditForward));
    }
}
