//! The LUKS helper: libcryptsetup runs in its own process, the
//! `securevm-luks` executable installed beside `securevm`, never in the
//! VMM. libcryptsetup parses headers of untrusted removable media and
//! pulls in a chain of shared libraries (device-mapper, blkid, SELinux,
//! udev, JSON-C, Argon2); keeping all of that out of the process that
//! holds guest memory narrows what a malicious header can reach, and the
//! VMM's resident memory shrinks by the libraries' mapped pages.
//!
//! This module is the VMM's side: the messages, their framing on the
//! helper's stdin and stdout, and the client. A request or reply is one
//! line of JSON that never holds a secret; the secrets a request carries
//! (passphrases, a volume key) and the volume key a reply carries follow
//! it as length-prefixed frames read straight into [`SecretBuf`]s. Both
//! sides read and write the pipes unbuffered, so no stdio or BufReader
//! buffer ever holds a copy of a secret.
//!
//! Each call normally starts a helper and lets it exit afterwards. The
//! media hot-plug thread, which runs under a seccomp filter that cannot
//! start processes, calls [`keep_running`] before its filter is installed;
//! from then on every call of the process goes to that one helper.
//!
//! Every request has a deadline ([`deadline_for`]): a hostile header can
//! ask for key derivation costs that take hours. The helper carries out
//! each request in a worker process it forks, and kills (SIGKILL) and
//! reaps the worker at the deadline, answering [`Reply::TimedOut`]; so
//! the kept helper stays usable and the next request gets a fresh
//! worker. Should the helper itself not answer by the deadline plus
//! [`HELPER_GRACE`], securevm kills and reaps it; a kept helper is then
//! gone for the rest of the session, as no new one can be started.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::secret::SecretBuf;
use crate::sync::Unpoisoned;

/// The helper's file name, looked for beside the running executable.
pub const HELPER_NAME: &str = "securevm-luks";
/// Overrides where the helper is looked for.
pub const HELPER_ENV: &str = "SECUREVM_LUKS_HELPER";
/// Longest JSON line either side accepts: a LUKS2 JSON area is at most
/// 4 MiB, and the token list is a part of it.
const MAX_LINE: usize = 8 << 20;
/// Longest secret frame: passphrases and volume keys are far shorter.
const MAX_SECRET: usize = 64 << 10;
/// Deadline of a request that derives keys (format, unlock, add a
/// keyslot): the header check bounds each derivation to about a minute
/// on a laptop, and a LUKS1 unlock may try all eight keyslots; beyond
/// this the medium is refused rather than the caller kept waiting.
pub const KDF_DEADLINE: Duration = Duration::from_secs(180);
/// Deadline of a request that only reads or writes header metadata
/// (keyslot wipes included): seconds even on a slow stick.
pub const METADATA_DEADLINE: Duration = Duration::from_secs(60);
/// How much longer than a request's deadline securevm waits for the
/// helper's own answer (it kills its worker at the deadline) before it
/// kills the helper.
pub const HELPER_GRACE: Duration = Duration::from_secs(10);

/// Which LUKS version a request opens the image as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LuksVersion {
    Luks1,
    Luks2,
}

/// The key derivation functions securevm creates keyslots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PbkdfKind {
    Argon2id,
    Pbkdf2,
}

/// How a new keyslot stretches its passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pbkdf {
    pub kind: PbkdfKind,
    /// PBKDF2's hash (LUKS2 records one for Argon2 keyslots too).
    pub hash: String,
    /// Target time when benchmarking.
    pub time_ms: u32,
    /// Argon2 passes or PBKDF2 iterations; 0 when benchmarking chooses.
    pub iterations: u32,
    pub max_memory_kib: u32,
    pub parallel_threads: u32,
    /// Let libcryptsetup benchmark the costs instead of using these.
    pub benchmark: bool,
}

/// What the helper is asked to do. Each variant names the secret frames
/// that follow it ([`Request::secret_count`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Format the existing file at `path` as LUKS2 (aes-xts-plain64) with
    /// a fresh `key_bytes`-byte volume key and one keyslot.
    /// Secrets: the passphrase. Reply: `Done`.
    Format {
        path: PathBuf,
        sector_size: u32,
        data_offset: u64,
        key_bytes: usize,
        pbkdf: Pbkdf,
    },
    /// The volume key through keyslot `slot` (any slot when unset).
    /// Secrets: the passphrase. Reply: `Unlocked` and the key, or
    /// `WrongKey`.
    VolumeKey {
        path: PathBuf,
        version: LuksVersion,
        slot: Option<u32>,
        key_size: usize,
    },
    /// A LUKS1 header's cipher, data offset and key size. Reply: `Luks1`.
    Luks1Info { path: PathBuf },
    /// Add a keyslot for a new passphrase. Secrets: the volume key, the
    /// new passphrase. Reply: `Number` (the slot).
    AddKeyslot {
        path: PathBuf,
        version: LuksVersion,
        pbkdf: Pbkdf,
    },
    /// The keyslots in use. Reply: `Numbers`.
    ActiveKeyslots { path: PathBuf, version: LuksVersion },
    /// Wipe keyslot `slot`. Reply: `Done`.
    DestroyKeyslot {
        path: PathBuf,
        version: LuksVersion,
        slot: u32,
    },
    /// The LUKS2 tokens in use. Reply: `Tokens`.
    Tokens { path: PathBuf },
    /// Store a new LUKS2 token. Reply: `Number` (the token).
    AddToken {
        path: PathBuf,
        json: serde_json::Value,
    },
    /// Remove a LUKS2 token. Reply: `Done`.
    RemoveToken { path: PathBuf, token: u32 },
}

/// What goes on the wire: a request and how long the helper may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub deadline_ms: u64,
    pub request: Request,
}

/// How long `request` may take: [`kdf_deadline`] for requests that
/// derive keys, [`METADATA_DEADLINE`] for the others.
pub fn deadline_for(request: &Request) -> Duration {
    match request {
        Request::Format { .. } | Request::VolumeKey { .. } | Request::AddKeyslot { .. } => {
            kdf_deadline()
        }
        _ => injected().unwrap_or(METADATA_DEADLINE),
    }
}

/// How long a request that derives keys may take: [`KDF_DEADLINE`].
pub fn kdf_deadline() -> Duration {
    injected().unwrap_or(KDF_DEADLINE)
}

/// The deadline a test set for its thread, if any.
fn injected() -> Option<Duration> {
    #[cfg(test)]
    return tests::INJECTED_DEADLINE.get();
    #[cfg(not(test))]
    None
}

/// A duration as messages show it: seconds, or milliseconds below one.
pub struct Shown(pub Duration);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= Duration::from_secs(1) {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

impl Request {
    /// How many secret frames follow this request.
    pub fn secret_count(&self) -> usize {
        match self {
            Request::Format { .. } | Request::VolumeKey { .. } => 1,
            Request::AddKeyslot { .. } => 2,
            _ => 0,
        }
    }
}

/// The helper's answer. Only `Unlocked` is followed by a secret frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Done,
    Unlocked {
        slot: u32,
    },
    WrongKey,
    Luks1 {
        cipher: String,
        data_offset: u64,
        key_size: usize,
    },
    Number(u32),
    Numbers(Vec<u32>),
    Tokens(Vec<(u32, serde_json::Value)>),
    /// libcryptsetup failed: its errno when it gave one, and its words.
    Failed {
        errno: Option<i32>,
        message: String,
    },
    /// The request's deadline passed; its worker was killed.
    TimedOut {
        deadline_ms: u64,
    },
}

impl Reply {
    /// The error a `Failed` reply stands for.
    pub fn failure(errno: Option<i32>, message: &str) -> io::Error {
        match errno {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::other(message.to_string()),
        }
    }
}

/// Write `message` as one JSON line followed by `secrets` as frames.
pub fn write_message<W: Write>(
    out: &mut W,
    message: &impl Serialize,
    secrets: &[&[u8]],
) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    for secret in secrets {
        let len = u32::try_from(secret.len())
            .ok()
            .filter(|&len| len as usize <= MAX_SECRET)
            .ok_or_else(|| io::Error::other("secret too long for the LUKS helper"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(secret)?;
    }
    out.flush()
}

/// Read one JSON line; `None` at a clean end of input. Byte by byte, so
/// that nothing after the line (a secret frame) is read into a buffer.
pub fn read_message<R: Read, T: DeserializeOwned>(input: &mut R) -> io::Result<Option<T>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() <= MAX_LINE && line.last() != Some(&b'\n') {
        if input.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            if line.len() > MAX_LINE {
                "LUKS helper message too long"
            } else {
                "LUKS helper message cut short"
            },
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Read one secret frame into locked memory.
pub fn read_secret<R: Read>(input: &mut R) -> io::Result<SecretBuf> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_SECRET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "LUKS helper secret frame too long",
        ));
    }
    let mut secret = SecretBuf::zeroed(len);
    input.read_exact(secret.as_mut_bytes())?;
    Ok(secret)
}

/// A pipe end read or written until a deadline. It must be non-blocking
/// ([`set_nonblocking`]): a read or write that would block waits in
/// poll(2) for the time left, and then fails with `TimedOut`.
pub struct DeadlineIo<'a> {
    pub end: BorrowedFd<'a>,
    pub until: Instant,
}

impl DeadlineIo<'_> {
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        loop {
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let mut fd = libc::pollfd {
                fd: self.end.as_raw_fd(),
                events,
                revents: 0,
            };
            // Rounded up, so that a wait never ends early and spins.
            let timeout = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
            // SAFETY: polls one valid descriptor through a pollfd that
            // lives across the call.
            match unsafe { libc::poll(&mut fd, 1, timeout) } {
                -1 => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                0 => {}
                // Ready or hung up: the next read or write says which.
                _ => return Ok(()),
            }
        }
    }

    /// Retry `attempt` (one read or write syscall) until it does not
    /// report EAGAIN, waiting for `events` in between.
    fn retry(
        &self,
        events: libc::c_short,
        mut attempt: impl FnMut() -> isize,
    ) -> io::Result<usize> {
        loop {
            let done = attempt();
            if done >= 0 {
                return Ok(done as usize);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => self.wait(events)?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
        }
    }
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.end.as_raw_fd();
        // SAFETY: reads into `buf`, which is valid for its length.
        self.retry(libc::POLLIN, || unsafe {
            libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
        })
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.end.as_raw_fd();
        // SAFETY: writes from `buf`, which is valid for its length.
        self.retry(libc::POLLOUT, || unsafe {
            libc::write(fd, buf.as_ptr().cast(), buf.len())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Make reads and writes on `fd` fail with EAGAIN rather than block.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL only reads this descriptor's flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes this descriptor's flags.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A running helper.
pub struct LuksHelper {
    child: Child,
    requests: Option<ChildStdin>,
    replies: ChildStdout,
    /// Killed after a deadline or a broken exchange: never asked again.
    stopped: bool,
    /// [`HELPER_GRACE`], shorter in tests.
    grace: Duration,
}

impl LuksHelper {
    /// Start the helper found by [`helper_path`].
    pub fn spawn() -> io::Result<Self> {
        Self::spawn_program(&helper_path()?)
    }

    /// Start `path` as the helper.
    pub fn spawn_program(path: &Path) -> io::Result<Self> {
        let mut command = Command::new(path);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: the closure only makes one raw syscall, which is safe
        // between fork and exec.
        unsafe {
            command.pre_exec(close_other_fds_on_exec);
        }
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start the LUKS helper {}: {e}", path.display()),
            )
        })?;
        let mut helper = Self {
            requests: child.stdin.take(),
            replies: child.stdout.take().expect("stdout was piped"),
            child,
            stopped: false,
            grace: HELPER_GRACE,
        };
        if let Err(e) = helper.pipes_nonblocking() {
            helper.stop();
            return Err(e);
        }
        Ok(helper)
    }

    fn pipes_nonblocking(&self) -> io::Result<()> {
        set_nonblocking(self.replies.as_fd())?;
        match &self.requests {
            Some(requests) => set_nonblocking(requests.as_fd()),
            None => Ok(()),
        }
    }

    /// Send `request` with its secrets and `deadline` for the work; return
    /// the reply (`TimedOut` when the helper's worker ran out of time)
    /// and, for `Unlocked`, the volume key. When the helper itself does
    /// not answer within `deadline` plus [`HELPER_GRACE`], or the
    /// exchange breaks, the helper is killed and reaped and the call fails.
    pub fn call(
        &mut self,
        request: &Request,
        secrets: &[&[u8]],
        deadline: Duration,
    ) -> io::Result<(Reply, Option<SecretBuf>)> {
        if secrets.len() != request.secret_count() {
            return Err(io::Error::other(format!(
                "a LUKS helper request needs {} secrets, got {}",
                request.secret_count(),
                secrets.len()
            )));
        }
        if self.stopped {
            return Err(io::Error::other(
                "the LUKS helper was stopped after an earlier request",
            ));
        }
        let result = self.exchange(request, secrets, deadline);
        if result.is_err() {
            self.stop();
        }
        result.map_err(|error| {
            if error.kind() == io::ErrorKind::TimedOut {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the LUKS helper did not finish within {} and was killed; the medium was refused",
                        Shown(deadline + self.grace)
                    ),
                )
            } else {
                helper_gone(error)
            }
        })
    }

    fn exchange(
        &mut self,
        request: &Request,
        secrets: &[&[u8]],
        deadline: Duration,
    ) -> io::Result<(Reply, Option<SecretBuf>)> {
        let until = Instant::now() + deadline + self.grace;
        let requests = self
            .requests
            .as_ref()
            .ok_or_else(|| io::Error::other("the LUKS helper's input is closed"))?;
        let envelope = Envelope {
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            request: request.clone(),
        };
        let mut output = DeadlineIo {
            end: requests.as_fd(),
            until,
        };
        write_message(&mut output, &envelope, secrets)?;
        let mut input = DeadlineIo {
            end: self.replies.as_fd(),
            until,
        };
        let reply: Reply = read_message(&mut input)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let key = match reply {
            Reply::Unlocked { .. } => Some(read_secret(&mut input)?),
            _ => None,
        };
        Ok((reply, key))
    }

    /// Kill and reap the helper, so that no zombie is left.
    fn stop(&mut self) {
        self.stopped = true;
        drop(self.requests.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the helper was stopped and must not be asked again.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

impl Drop for LuksHelper {
    fn drop(&mut self) {
        // End of input is the helper's signal to exit.
        drop(self.requests.take());
        let _ = self.child.wait();
    }
}

/// The helper inherits stdin, stdout and stderr and nothing else: not the
/// VM's KVM, TAP or eventfd descriptors, whatever their close-on-exec flag.
fn close_other_fds_on_exec() -> io::Result<()> {
    // SAFETY: close_range only changes descriptor flags of this process.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn helper_gone(error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("the LUKS helper stopped answering ({error}); its messages are above"),
    )
}

/// Where the helper is: `$SECUREVM_LUKS_HELPER`, else `securevm-luks`
/// beside the running executable (or, for cargo's test executables in
/// `target/*/deps`, one directory up, where cargo puts binaries).
pub fn helper_path() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os(HELPER_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![dir.join(HELPER_NAME)];
    if dir.file_name().is_some_and(|name| name == "deps") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join(HELPER_NAME));
        }
    }
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the LUKS helper {HELPER_NAME} is not beside {}; install it with securevm \
                     (cargo build --release -p securevm builds both) or set {HELPER_ENV}",
                    exe.display()
                ),
            )
        })
}

/// Which helper the calls of this process go to.
enum Helpers {
    /// A helper started for each call.
    PerCall,
    /// The one [`keep_running`] started.
    Kept(LuksHelper),
    /// The kept helper was stopped, and why: starting another is not
    /// possible under the filters installed since.
    KeptStopped(String),
}

static HELPERS: Mutex<Helpers> = Mutex::new(Helpers::PerCall);

/// Start a helper that serves every later call of this process, so that
/// threads whose seccomp filter forbids starting processes can still
/// reach libcryptsetup. Call it before installing such a filter.
pub fn keep_running() -> io::Result<()> {
    let mut helpers = HELPERS.lock().unpoisoned();
    if !matches!(*helpers, Helpers::Kept(_)) {
        *helpers = Helpers::Kept(LuksHelper::spawn()?);
    }
    Ok(())
}

/// Run one request, within `deadline`, on the kept helper or on a helper
/// started for it.
pub fn call(
    request: &Request,
    secrets: &[&[u8]],
    deadline: Duration,
) -> io::Result<(Reply, Option<SecretBuf>)> {
    let mut helpers = HELPERS.lock().unpoisoned();
    match &mut *helpers {
        Helpers::PerCall => {
            drop(helpers);
            LuksHelper::spawn()?.call(request, secrets, deadline)
        }
        Helpers::Kept(helper) => {
            let result = helper.call(request, secrets, deadline);
            if let (true, Err(error)) = (helper.is_stopped(), &result) {
                *helpers = Helpers::KeptStopped(error.to_string());
            }
            result
        }
        Helpers::KeptStopped(why) => Err(io::Error::other(format!(
            "the LUKS helper was stopped earlier ({why}); encrypted media are refused until \
             securevm restarts"
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::luks::{self, FormatOptions, KdfSettings};
    use crate::storage::test_support::*;
    use std::cell::Cell;

    thread_local! {
        /// Replaces every deadline of [`deadline_for`] on this thread.
        pub(crate) static INJECTED_DEADLINE: Cell<Option<Duration>> = const { Cell::new(None) };
    }

    /// A volume whose Argon2 (64 MiB, 4 passes) takes far longer than a
    /// few milliseconds.
    pub(crate) fn slow_volume(name: &str) -> ScratchPath {
        let path = scratch_path(name);
        let options = FormatOptions {
            kdf: KdfSettings::Fixed {
                memory_kib: 64 << 10,
                time_cost: 4,
                parallel: 1,
            },
            ..FormatOptions::default()
        };
        luks::format(&path, 1 << 20, &options, PASSPHRASE).unwrap();
        path
    }

    fn children_of(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap()
    }

    #[test]
    fn a_helper_that_misses_its_deadline_is_killed_and_reaped_and_a_fresh_one_works() {
        let script = scratch_path("hung-helper.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let mut hung = LuksHelper::spawn_program(&script).unwrap();
        hung.grace = Duration::from_millis(50);
        let pid = hung.child.id();
        let request = Request::Tokens {
            path: PathBuf::from("/nonexistent"),
        };
        let started = Instant::now();
        let err = hung
            .call(&request, &[], Duration::from_millis(100))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("did not finish within 150 ms")
                && text.contains("the medium was refused"),
            "{text}"
        );
        assert!(hung.is_stopped());
        // Reaped: not even a zombie is left.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "helper {pid} still exists"
        );
        assert!(hung.call(&request, &[], Duration::from_secs(60)).is_err());

        let volume = new_volume("after-hang.img", 1 << 20, 4096);
        let mut fresh = LuksHelper::spawn().unwrap();
        let request = Request::Tokens {
            path: volume.to_path_buf(),
        };
        let (reply, _) = fresh.call(&request, &[], Duration::from_secs(60)).unwrap();
        assert_eq!(reply, Reply::Tokens(Vec::new()));
    }

    #[test]
    fn a_worker_past_its_deadline_is_killed_and_the_helper_serves_the_next_request() {
        let volume = slow_volume("slow.img");
        let mut helper = LuksHelper::spawn().expect("cargo test builds securevm-luks");
        let pid = helper.child.id();
        let request = Request::VolumeKey {
            path: volume.to_path_buf(),
            version: LuksVersion::Luks2,
            slot: Some(0),
            key_size: 64,
        };
        let started = Instant::now();
        let (reply, key) = helper
            .call(&request, &[PASSPHRASE], Duration::from_millis(5))
            .unwrap();
        assert_eq!(reply, Reply::TimedOut { deadline_ms: 5 });
        assert!(key.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!helper.is_stopped());
        // The worker is reaped before the answer: no child, no zombie.
        assert_eq!(children_of(pid).trim(), "");

        let (reply, key) = helper
            .call(&request, &[PASSPHRASE], Duration::from_secs(120))
            .unwrap();
        assert_eq!(reply, Reply::Unlocked { slot: 0 });
        assert_eq!(key.unwrap().len(), 64);
    }

    fn round_trip(request: &Request, secrets: &[&[u8]]) -> (Request, Vec<Vec<u8>>) {
        let mut wire = Vec::new();
        write_message(&mut wire, request, secrets).unwrap();
        let mut input = io::Cursor::new(wire);
        let back: Request = read_message(&mut input).unwrap().unwrap();
        let frames = (0..back.secret_count())
            .map(|_| read_secret(&mut input).unwrap().as_bytes().to_vec())
            .collect();
        assert_eq!(input.position() as usize, input.get_ref().len());
        (back, frames)
    }

    #[test]
    fn requests_and_their_secrets_cross_the_pipe_intact() {
        let request = Request::AddKeyslot {
            path: PathBuf::from("/images/a disk.img"),
            version: LuksVersion::Luks2,
            pbkdf: Pbkdf {
                kind: PbkdfKind::Argon2id,
                hash: "sha256".into(),
                time_ms: 2000,
                iterations: 0,
                max_memory_kib: 1 << 20,
                parallel_threads: 4,
                benchmark: true,
            },
        };
        let key = [0xa5u8; 64];
        let (back, frames) = round_trip(&request, &[&key, b"new pass\nwith newline"]);
        assert_eq!(back, request);
        assert_eq!(
            frames,
            vec![key.to_vec(), b"new pass\nwith newline".to_vec()]
        );
    }

    #[test]
    fn the_json_line_never_holds_a_secret() {
        let mut wire = Vec::new();
        let request = Request::VolumeKey {
            path: PathBuf::from("/d.img"),
            version: LuksVersion::Luks2,
            slot: Some(3),
            key_size: 64,
        };
        write_message(&mut wire, &request, &[b"hunter2"]).unwrap();
        let line_end = wire.iter().position(|&b| b == b'\n').unwrap();
        let line = String::from_utf8(wire[..line_end].to_vec()).unwrap();
        assert!(!line.contains("hunter2"), "{line}");
        assert_eq!(&wire[line_end + 1..line_end + 5], &7u32.to_le_bytes());
    }

    #[test]
    fn truncated_and_oversized_input_is_an_error_not_a_panic() {
        let mut cut = io::Cursor::new(b"{\"op\":\"tokens\"".to_vec());
        let err = read_message::<_, Request>(&mut cut).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut garbage = io::Cursor::new(b"not json\n".to_vec());
        assert!(read_message::<_, Request>(&mut garbage).is_err());

        let mut huge = io::Cursor::new(vec![b' '; MAX_LINE + 10]);
        let err = read_message::<_, Request>(&mut huge).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");

        let mut frame = io::Cursor::new(((MAX_SECRET + 1) as u32).to_le_bytes().to_vec());
        assert!(read_secret(&mut frame).is_err());

        let mut short = io::Cursor::new([8u8, 0, 0, 0, 1, 2].to_vec());
        assert_eq!(
            read_secret(&mut short).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );

        assert!(read_message::<_, Request>(&mut io::Cursor::new(Vec::new()))
            .unwrap()
            .is_none());
    }

    /// Waits until process `pid` blocks in read(2), which the helper does
    /// only once it is up and waiting for a request.
    fn wait_until_reading(pid: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                .expect("read /proc/PID/syscall of our own child");
            if syscall.starts_with("0 ") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the helper never waited for a request: {syscall}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn the_helper_inherits_no_descriptor_beyond_stdin_stdout_and_stderr() {
        // SAFETY: creates a descriptor without close-on-exec, closed below.
        let leaky = unsafe { libc::eventfd(0, 0) };
        assert!(leaky >= 3);
        let helper = LuksHelper::spawn().expect("cargo test builds securevm-luks");
        let pid = helper.child.id();
        // Looked at once the helper is up: earlier, its loader may hold a
        // library open for a moment.
        wait_until_reading(pid);
        let target = |fd: u32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(leaky) };
        fds.sort();
        assert_eq!(fds[..3], [0, 1, 2]);
        // Beyond those, only the helper's own unbuffered copies of its
        // request and reply pipes.
        let (requests, replies) = (target(0), target(1));
        for &fd in &fds[3..] {
            let open = target(fd);
            assert!(
                open == requests || open == replies,
                "fd {fd} of the helper is {open:?}, not one of its pipes (fds: {fds:?})"
            );
        }
    }

    #[test]
    fn a_request_with_the_wrong_number_of_secrets_is_refused_before_sending() {
        let mut helper = LuksHelper::spawn().expect("cargo test builds securevm-luks");
        let request = Request::Tokens {
            path: PathBuf::from("/nonexistent"),
        };
        assert!(helper
            .call(&request, &[b"stray"], Duration::from_secs(60))
            .is_err());
    }
}
