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

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::secret::SecretBuf;

/// The helper's file name, looked for beside the running executable.
pub const HELPER_NAME: &str = "securevm-luks";
/// Overrides where the helper is looked for.
pub const HELPER_ENV: &str = "SECUREVM_LUKS_HELPER";
/// Longest JSON line either side accepts: a LUKS2 JSON area is at most
/// 4 MiB, and the token list is a part of it.
const MAX_LINE: usize = 8 << 20;
/// Longest secret frame: passphrases and volume keys are far shorter.
const MAX_SECRET: usize = 64 << 10;

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

/// A running helper.
pub struct LuksHelper {
    child: Child,
    requests: Option<ChildStdin>,
    replies: ChildStdout,
}

impl LuksHelper {
    /// Start the helper found by [`helper_path`].
    pub fn spawn() -> io::Result<Self> {
        let path = helper_path()?;
        let mut command = Command::new(&path);
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
        let requests = child.stdin.take();
        let replies = child.stdout.take().expect("stdout was piped");
        Ok(Self {
            child,
            requests,
            replies,
        })
    }

    /// Send `request` with its secrets; return the reply and, for
    /// `Unlocked`, the volume key.
    pub fn call(
        &mut self,
        request: &Request,
        secrets: &[&[u8]],
    ) -> io::Result<(Reply, Option<SecretBuf>)> {
        if secrets.len() != request.secret_count() {
            return Err(io::Error::other(format!(
                "a LUKS helper request needs {} secrets, got {}",
                request.secret_count(),
                secrets.len()
            )));
        }
        let requests = self
            .requests
            .as_mut()
            .ok_or_else(|| io::Error::other("the LUKS helper's input is closed"))?;
        write_message(requests, request, secrets).map_err(helper_gone)?;
        let reply: Reply = read_message(&mut self.replies)?
            .ok_or_else(|| helper_gone(io::ErrorKind::UnexpectedEof.into()))?;
        let key = match reply {
            Reply::Unlocked { .. } => Some(read_secret(&mut self.replies)?),
            _ => None,
        };
        Ok((reply, key))
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

/// The helper kept for the rest of the process, once [`keep_running`] ran.
static KEPT: Mutex<Option<LuksHelper>> = Mutex::new(None);

/// Start a helper that serves every later call of this process, so that
/// threads whose seccomp filter forbids starting processes can still
/// reach libcryptsetup. Call it before installing such a filter.
pub fn keep_running() -> io::Result<()> {
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if kept.is_none() {
        *kept = Some(LuksHelper::spawn()?);
    }
    Ok(())
}

/// Run one request on the kept helper, or on a helper started for it.
pub fn call(request: &Request, secrets: &[&[u8]]) -> io::Result<(Reply, Option<SecretBuf>)> {
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match kept.as_mut() {
        Some(helper) => helper.call(request, secrets),
        None => {
            drop(kept);
            LuksHelper::spawn()?.call(request, secrets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(helper.call(&request, &[b"stray"]).is_err());
    }
}
