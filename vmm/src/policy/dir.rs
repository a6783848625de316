//! `securevm run --policy-dir DIR`: signed policies that configuration
//! management (Ansible, Salt, Puppet) drops into a directory are pushed to
//! the running VM exactly as `securevm ctl push-policy` pushes them
//! ([`LiveVm::apply_signed_policy`]), with or without a control socket.
//!
//! The contract with whoever writes DIR (docs/manual/policy-dir.md):
//! - a policy is two files, `NAME.toml` and `NAME.toml.minisig`; the
//!   signature is renamed into place first and the policy last, and only
//!   the policy's arrival (renamed in: `IN_MOVED_TO`; written in place:
//!   `IN_CLOSE_WRITE`) is acted on;
//! - names starting with a dot are temporary (Ansible's `copy` writes
//!   `.ansible_tmp…NAME.toml` and renames it) and never act;
//! - when the thread starts (the VM booted, or a guest reboot under
//!   `--on-reboot restart` built the next VM) and after the kernel's event
//!   queue overflowed, the policies present are looked at once and the
//!   newest validly signed one above the version in force is pushed:
//!   a policy dropped while the PC was off applies at the next boot,
//!   and the ones already superseded are left alone without a record;
//! - every refusal is audited (`policy-push-refused`); no file is ever
//!   moved or removed, accepted or refused.
//!
//! Whoever can write DIR can push only what the organisation's key signed,
//! and nothing older than what is in force (the state file remembers it
//! across restarts). What a hostile or broken DIR can do is bounded: files
//! are read up to the control API's body limit, symbolic links and
//! anything but a regular file are refused without being opened, a file
//! gone before it is read is skipped, and events are read from the
//! kernel's bounded queue straight into a fixed buffer (an overflow means
//! one rescan, bounded to [`MAX_LISTED_ENTRIES`] entries).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::SignedPolicy;
use crate::api::server::DEFAULT_MAX_BODY;
use crate::api::LiveVm;
use crate::confined::{self, Confinement};
use crate::seccomp::ThreadKind;
use crate::sync::lock;

/// The largest policy or signature file read: what the control API takes
/// for a push.
pub const MAX_POLICY_FILE_BYTES: u64 = DEFAULT_MAX_BODY as u64;

/// How many directory entries a scan looks at, at most.
pub const MAX_LISTED_ENTRIES: usize = 4096;

/// Room for many events per read; the kernel never splits one.
const EVENT_BUFFER_BYTES: usize = 16 * 1024;

/// `struct inotify_event` before its name: wd, mask, cookie, len.
const EVENT_HEADER_BYTES: usize = 16;

/// The events that mean a file was put into place.
const ARRIVAL_MASK: u32 = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;

/// The suffix of a policy file; its signature adds `.minisig`.
const POLICY_SUFFIX: &str = ".toml";

/// An inotify watch on DIR, opened before the thread that reads it (whose
/// filter allows no inotify calls) and before anything in DIR is looked
/// at, so no arrival falls between the scan and the watch.
pub struct PolicyDir {
    /// DIR as given, for messages and audit records only.
    dir: PathBuf,
    /// DIR itself, opened once: files are looked up relative to it, never
    /// by path, so DIR renamed away and replaced (by a link to another
    /// directory, say) does not change which files are read; the watch
    /// follows the same directory.
    handle: OwnedFd,
    inotify: File,
}

impl PolicyDir {
    /// Watches `dir` for files renamed into it or written in it.
    pub fn open(dir: &Path) -> io::Result<PolicyDir> {
        let handle = OwnedFd::from(
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(dir)?,
        );
        // SAFETY: inotify_init1 takes no pointers; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nothing else.
        let inotify = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
        // SAFETY: `path` is NUL-terminated and outlives the call; the
        // descriptor is the inotify instance opened above.
        let watch = unsafe {
            libc::inotify_add_watch(
                inotify.as_raw_fd(),
                path.as_ptr(),
                ARRIVAL_MASK | libc::IN_ONLYDIR,
            )
        };
        if watch < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PolicyDir {
            dir: dir.to_path_buf(),
            handle,
            inotify,
        })
    }
}

/// What one inotify event means here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DirEvent {
    /// A policy file (`NAME.toml`, no leading dot) was put into place.
    PolicyArrived(String),
    /// The kernel's queue overflowed: arrivals may have been lost.
    Overflowed,
    /// The watch ended (DIR removed or its file system unmounted).
    WatchGone,
}

/// The name of a policy file whose arrival triggers a push, or `None` for
/// anything else: signatures, temporary names (a leading dot), names that
/// are not UTF-8, a bare `.toml`.
fn policy_file_name(name: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(name).ok()?;
    let stem = name.strip_suffix(POLICY_SUFFIX)?;
    (!stem.is_empty() && !name.starts_with('.')).then_some(name)
}

/// Parses what one read of the inotify descriptor returned; a truncated
/// last event (never produced by the kernel) is ignored.
fn parse_events(mut bytes: &[u8]) -> Vec<DirEvent> {
    let mut events = Vec::new();
    while bytes.len() >= EVENT_HEADER_BYTES {
        let field = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let (mask, name_len) = (field(4), field(12) as usize);
        let Some(name) = bytes.get(EVENT_HEADER_BYTES..EVENT_HEADER_BYTES + name_len) else {
            break;
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if mask & libc::IN_Q_OVERFLOW != 0 {
            events.push(DirEvent::Overflowed);
        } else if mask & libc::IN_IGNORED != 0 {
            events.push(DirEvent::WatchGone);
        } else if mask & ARRIVAL_MASK != 0 && mask & libc::IN_ISDIR == 0 {
            if let Some(name) = policy_file_name(name) {
                events.push(DirEvent::PolicyArrived(name.to_string()));
            }
        }
        bytes = &bytes[EVENT_HEADER_BYTES + name_len..];
    }
    events
}

/// Why a policy in DIR could not even be read.
#[derive(Debug, thiserror::Error)]
enum ReadRefusal {
    #[error("gone before it could be read")]
    Vanished,
    #[error("{0} is a symbolic link; policies in the directory must be regular files")]
    Link(String),
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{name} has {size} bytes; a policy or signature file may have at most {MAX_POLICY_FILE_BYTES}")]
    TooLarge { name: String, size: u64 },
    #[error(
        "{0} is missing: the signature must be renamed into place before the policy (the policy \
         stays in place; drop it again after its signature)"
    )]
    SignatureMissing(String),
    #[error("{0} is not text")]
    SignatureNotText(String),
    #[error("reading {name}: {source}")]
    Io { name: String, source: io::Error },
}

/// `text` with its control characters escaped: whoever writes DIR picks
/// the file names, and a newline in one would forge a line of the log.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A policy and its signature as read from DIR.
struct PolicyFiles {
    /// DIR/NAME.toml, as messages and audit records show it.
    shown: String,
    policy: Vec<u8>,
    signature: String,
}

impl PolicyFiles {
    fn signed(&self) -> SignedPolicy<'_> {
        SignedPolicy {
            name: &self.shown,
            policy: &self.policy,
            signature: &self.signature,
        }
    }
}

/// Reads DIR's files and pushes the policies among them to the VM.
struct Watcher {
    dir: PolicyDir,
    vm: Arc<LiveVm>,
}

impl Watcher {
    /// Reads one batch of the events queued now and acts on it; whether
    /// there was one. One batch only: whoever writes DIR can keep the
    /// queue from ever emptying (a rename storm), and the caller must get
    /// back to its poll to see a stop.
    fn drain_once(&self, buffer: &mut [u8]) -> bool {
        loop {
            let read = match (&self.dir.inotify).read(buffer) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    log::error!("watching {}: {e}", self.dir.dir.display());
                    return false;
                }
            };
            // A name dropped twice in one batch is looked at once.
            let mut offered: Vec<String> = Vec::new();
            for event in parse_events(&buffer[..read]) {
                match event {
                    DirEvent::PolicyArrived(name) => {
                        if !offered.contains(&name) {
                            self.offer(&name);
                            offered.push(name);
                        }
                    }
                    DirEvent::Overflowed => {
                        log::warn!(
                            "{}: too many files arrived at once; looking at all of them",
                            self.dir.dir.display()
                        );
                        self.offer_present();
                    }
                    DirEvent::WatchGone => log::error!(
                        "{} was removed or unmounted; policies dropped there are no longer \
                         pushed until securevm starts again",
                        self.dir.dir.display()
                    ),
                }
            }
            return true;
        }
    }

    /// Pushes the policy `name` that just arrived.
    fn offer(&self, name: &str) {
        match self.read(name) {
            Ok(files) => self.push(&files),
            Err(ReadRefusal::Vanished) => log::info!(
                "{}: {} went away before it could be read; nothing pushed",
                self.dir.dir.display(),
                printable(name)
            ),
            Err(refusal) => self.refuse(name, &refusal),
        }
    }

    /// Pushes the newest validly signed policy present that is newer than
    /// the one in force; refuses (and audits) the ones that cannot be read
    /// or are not validly signed, and leaves the older ones alone.
    fn offer_present(&self) {
        let mut names = match self.present_policy_names() {
            Ok(names) => names,
            Err(e) => {
                log::error!("listing {}: {e}", self.dir.dir.display());
                return;
            }
        };
        names.sort_unstable();
        let in_force = self.vm.policy_version_in_force();
        let mut newest: Option<(u64, PolicyFiles)> = None;
        for name in names {
            let files = match self.read(&name) {
                Ok(files) => files,
                Err(ReadRefusal::Vanished) => continue,
                Err(refusal) => {
                    self.refuse(&name, &refusal);
                    continue;
                }
            };
            match self.vm.signed_policy_version(&files.signed()) {
                Err(refusal) => {
                    log::warn!("{refusal} (left in place)");
                    self.vm.refuse_policy(&refusal.to_string());
                }
                Ok(version) if version <= in_force => log::info!(
                    "{}: version {version} is not newer than version {in_force} in force; \
                     left alone",
                    files.shown
                ),
                Ok(version) => {
                    if newest.as_ref().is_none_or(|(known, _)| version > *known) {
                        newest = Some((version, files));
                    }
                }
            }
        }
        if let Some((_, files)) = newest {
            self.push(&files);
        }
    }

    fn push(&self, files: &PolicyFiles) {
        match self.vm.apply_signed_policy(&files.signed()) {
            Ok(applied) => log::info!(
                "{}: version {} applied (left in place)",
                files.shown,
                applied.version
            ),
            Err(refusal) => log::warn!("{refusal} (refused; left in place)"),
        }
    }

    fn refuse(&self, name: &str, refusal: &ReadRefusal) {
        let reason = format!(
            "{}: {refusal}",
            printable(&self.dir.dir.join(name).display().to_string())
        );
        log::warn!("{reason} (refused; left in place)");
        self.vm.refuse_policy(&reason);
    }

    /// The policy file names in DIR, from at most [`MAX_LISTED_ENTRIES`]
    /// entries.
    fn present_policy_names(&self) -> io::Result<Vec<String>> {
        // A descriptor of its own: the stream owns and closes it, and
        // reads from its own offset.
        // SAFETY: the path is a NUL-terminated literal; the directory
        // descriptor is open for as long as `self`; the result is checked.
        let fd = unsafe {
            libc::openat(
                self.dir.handle.as_raw_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a directory descriptor nothing else owns; on
        // success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let error = io::Error::last_os_error();
            // SAFETY: `fd` is still ours: fdopendir failed.
            unsafe { libc::close(fd) };
            return Err(error);
        }
        let mut names = Vec::new();
        let mut result = Ok(());
        for _ in 0..MAX_LISTED_ENTRIES {
            // SAFETY: errno is this thread's; readdir sets it only on an
            // error, so it is cleared to tell an error from the end.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is open until the closedir below.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(0) {
                    result = Err(error);
                }
                break;
            }
            // SAFETY: readdir returned an entry whose name is
            // NUL-terminated and valid until the next readdir on `stream`.
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
            if let Some(name) = policy_file_name(name.to_bytes()) {
                names.push(name.to_string());
            }
        }
        // SAFETY: `stream` is open and not used after this.
        unsafe { libc::closedir(stream) };
        result.map(|()| names)
    }

    /// Reads `name` and its signature.
    fn read(&self, name: &str) -> Result<PolicyFiles, ReadRefusal> {
        let signature_name = format!("{name}.minisig");
        let policy = read_bounded(&self.dir.handle, name)?;
        let signature = match read_bounded(&self.dir.handle, &signature_name) {
            Err(ReadRefusal::Vanished) => {
                return Err(ReadRefusal::SignatureMissing(signature_name))
            }
            other => other?,
        };
        let signature = String::from_utf8(signature)
            .map_err(|_| ReadRefusal::SignatureNotText(signature_name))?;
        Ok(PolicyFiles {
            shown: printable(&self.dir.dir.join(name).display().to_string()),
            policy,
            signature,
        })
    }
}

/// Reads the regular file `name` in the directory `dir`, at most
/// [`MAX_POLICY_FILE_BYTES`], never following a link nor opening anything
/// else (a FIFO would block, a device could act on being opened).
fn read_bounded(dir: &OwnedFd, name: &str) -> Result<Vec<u8>, ReadRefusal> {
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ReadRefusal::Vanished
        } else {
            ReadRefusal::Io {
                name: name.to_string(),
                source,
            }
        }
    };
    // Names from the kernel or a listing never hold a NUL.
    let c_name = CString::new(name).map_err(|_| ReadRefusal::NotRegular(name.to_string()))?;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c_name` is NUL-terminated, `stat` has room for the answer,
    // and the directory descriptor is open; the result is checked.
    let looked_up = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if looked_up != 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    // SAFETY: fstatat succeeded, so it filled `stat`.
    match unsafe { stat.assume_init() }.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFLNK => return Err(ReadRefusal::Link(name.to_string())),
        _ => return Err(ReadRefusal::NotRegular(name.to_string())),
    }
    // Replaced by a link or a FIFO since: O_NOFOLLOW fails on the link,
    // O_NONBLOCK keeps the FIFO from blocking and fstat refuses it.
    // SAFETY: as for fstatat above; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ELOOP) => ReadRefusal::Link(name.to_string()),
            _ => io_error(error),
        });
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        return Err(ReadRefusal::NotRegular(name.to_string()));
    }
    let too_large = |size| ReadRefusal::TooLarge {
        name: name.to_string(),
        size,
    };
    if metadata.len() > MAX_POLICY_FILE_BYTES {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // One byte past the limit tells a file that grew since fstat.
    file.take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The running `policy-dir` thread.
pub struct PolicyDirWatch {
    stop: Arc<EventFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PolicyDirWatch {
    /// Starts the thread, which first looks at the policies already in
    /// `dir` and then pushes each that arrives to `vm`.
    pub fn start(dir: PolicyDir, vm: Arc<LiveVm>, seccomp: bool) -> io::Result<PolicyDirWatch> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let stopping = stop.clone();
        let confinement = Confinement::new(ThreadKind::PolicyDir, seccomp);
        let thread = confined::spawn("policy-dir", confinement, move || {
            run(&Watcher { dir, vm }, &stopping);
        })
        .map_err(io::Error::other)?;
        Ok(PolicyDirWatch {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Ends the thread once the push under way, if any, is done.
    pub fn stop(&self) {
        if let Err(e) = self.stop.write(1) {
            log::error!("stopping the policy-dir thread: {e}");
            return;
        }
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                log::error!("the policy-dir thread panicked");
            }
        }
    }
}

impl Drop for PolicyDirWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(watcher: &Watcher, stop: &EventFd) {
    watcher.offer_present();
    let mut buffer = vec![0; EVENT_BUFFER_BYTES];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: watcher.dir.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!(
                "waiting for policies in {}: {error}",
                watcher.dir.dir.display()
            );
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            watcher.drain_once(&mut buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::live::tests::{harness, Harness};
    use crate::api::VmController;
    use std::time::{Duration, Instant};

    /// One raw inotify event as the kernel lays it out.
    fn raw_event(mask: u32, name: &str) -> Vec<u8> {
        // Padded with NULs to a multiple of 16, as the kernel does.
        let name_len = if name.is_empty() {
            0
        } else {
            (name.len() + 1).next_multiple_of(16)
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1i32.to_ne_bytes());
        bytes.extend_from_slice(&mask.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&u32::try_from(name_len).unwrap().to_ne_bytes());
        let mut padded = name.as_bytes().to_vec();
        padded.resize(name_len, 0);
        bytes.extend_from_slice(&padded);
        bytes
    }

    #[test]
    fn file_names_cannot_forge_log_lines() {
        assert_eq!(
            printable("/srv/policies/a\nsecurevm: forged.toml"),
            "/srv/policies/a\\nsecurevm: forged.toml"
        );
        assert_eq!(printable("日本\u{1b}[31m.toml"), "日本\\u{1b}[31m.toml");
    }

    #[test]
    fn only_a_policy_put_into_place_under_its_own_name_triggers() {
        let bytes: Vec<u8> = [
            raw_event(libc::IN_MOVED_TO, "site.toml"),
            raw_event(libc::IN_CLOSE_WRITE, "lab.toml"),
            // Ansible's temporary file, written in DIR then renamed.
            raw_event(libc::IN_CLOSE_WRITE, ".ansible_tmp3x9_site.toml"),
            raw_event(libc::IN_MOVED_TO, ".site.toml"),
            raw_event(libc::IN_MOVED_TO, "site.toml.minisig"),
            raw_event(libc::IN_MOVED_TO, "site.toml~"),
            raw_event(libc::IN_MOVED_TO, ".toml"),
            raw_event(libc::IN_MOVED_TO | libc::IN_ISDIR, "dir.toml"),
            raw_event(libc::IN_CREATE, "created.toml"),
            raw_event(libc::IN_Q_OVERFLOW, ""),
            raw_event(libc::IN_IGNORED, ""),
        ]
        .concat();
        assert_eq!(
            parse_events(&bytes),
            vec![
                DirEvent::PolicyArrived("site.toml".into()),
                DirEvent::PolicyArrived("lab.toml".into()),
                DirEvent::Overflowed,
                DirEvent::WatchGone,
            ]
        );
        // A name that is not UTF-8 is nobody's policy.
        assert_eq!(policy_file_name(b"\xff.toml"), None);
    }

    #[test]
    fn a_truncated_event_is_ignored() {
        let mut bytes = raw_event(libc::IN_MOVED_TO, "site.toml");
        bytes.truncate(EVENT_HEADER_BYTES + 3);
        assert_eq!(parse_events(&bytes), vec![]);
        assert_eq!(parse_events(&bytes[..7]), vec![]);
    }

    /// A live VM under version 7 and a watched, empty drop directory.
    struct Rig {
        h: Harness,
        drop_dir: PathBuf,
        watcher: Watcher,
        buffer: Vec<u8>,
    }

    impl Rig {
        fn new(name: &str) -> Rig {
            let h = harness(&format!("dir-{name}"));
            let drop_dir = h._fixture.dir.join("drop");
            std::fs::create_dir(&drop_dir).unwrap();
            let watcher = Watcher {
                dir: PolicyDir::open(&drop_dir).unwrap(),
                vm: h.vm.clone(),
            };
            Rig {
                h,
                drop_dir,
                watcher,
                buffer: vec![0; EVENT_BUFFER_BYTES],
            }
        }

        /// Writes `bytes` under a temporary name and renames it to `name`,
        /// as Ansible's `copy` does.
        fn drop_file(&self, name: &str, bytes: &[u8]) {
            let temporary = self.drop_dir.join(format!(".ansible_tmp_{name}"));
            std::fs::write(&temporary, bytes).unwrap();
            std::fs::rename(&temporary, self.drop_dir.join(name)).unwrap();
        }

        /// Signature first, policy last: the documented order.
        fn drop_policy(&self, name: &str, version: u64) {
            let upload = self.h._fixture.upload(version);
            self.drop_file(&format!("{name}.minisig"), upload.signature.as_bytes());
            self.drop_file(name, upload.policy.as_bytes());
        }

        fn drain(&mut self) {
            while self.watcher.drain_once(&mut self.buffer) {}
        }

        fn version(&self) -> Option<u64> {
            self.h.vm.status().policy_version
        }

        fn audited(&self) -> Vec<serde_json::Value> {
            std::fs::read_to_string(self.h._fixture.dir.join("audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .filter(|record: &serde_json::Value| {
                    record["event"].as_str().unwrap().starts_with("policy-push")
                })
                .collect()
        }

        fn refusals(&self) -> Vec<String> {
            self.audited()
                .iter()
                .filter(|r| r["event"] == "policy-push-refused")
                .map(|r| r["reason"].as_str().unwrap().to_string())
                .collect()
        }
    }

    #[test]
    fn an_ansible_style_drop_is_pushed_once_the_policy_arrives_and_stays_in_place() {
        let mut rig = Rig::new("ansible");
        let upload = rig.h._fixture.upload(8);
        rig.drop_file("site.toml.minisig", upload.signature.as_bytes());
        // The policy's temporary file is written, not yet renamed.
        let temporary = rig.drop_dir.join(".ansible_tmp_site.toml");
        std::fs::write(&temporary, upload.policy.as_bytes()).unwrap();
        rig.drain();
        assert_eq!(rig.version(), Some(7));
        assert!(rig.audited().is_empty());
        std::fs::rename(&temporary, rig.drop_dir.join("site.toml")).unwrap();
        rig.drain();
        assert_eq!(rig.version(), Some(8));
        assert_eq!(rig.h.vm.status().network[0].rules_generation, 2);
        assert_eq!(rig.h._fixture.installed_version(), Some(8));
        let audited = rig.audited();
        assert_eq!(audited.len(), 1);
        assert_eq!(audited[0]["event"], "policy-pushed");
        assert_eq!(audited[0]["version"], 8);
        assert!(rig.drop_dir.join("site.toml").exists());
        assert!(rig.drop_dir.join("site.toml.minisig").exists());
    }

    #[test]
    fn a_policy_written_in_place_triggers_when_closed() {
        let mut rig = Rig::new("in-place");
        let upload = rig.h._fixture.upload(8);
        std::fs::write(rig.drop_dir.join("site.toml.minisig"), &upload.signature).unwrap();
        std::fs::write(rig.drop_dir.join("site.toml"), &upload.policy).unwrap();
        rig.drain();
        assert_eq!(rig.version(), Some(8));
    }

    #[test]
    fn a_policy_before_its_signature_is_refused_audited_and_left() {
        let mut rig = Rig::new("order");
        let upload = rig.h._fixture.upload(8);
        rig.drop_file("site.toml", upload.policy.as_bytes());
        rig.drain();
        assert_eq!(rig.version(), Some(7));
        let refusals = rig.refusals();
        assert_eq!(refusals.len(), 1);
        assert!(
            refusals[0].contains("site.toml.minisig is missing"),
            "{refusals:?}"
        );
        // The signature arriving afterwards triggers nothing.
        rig.drop_file("site.toml.minisig", upload.signature.as_bytes());
        rig.drain();
        assert_eq!(rig.version(), Some(7));
        assert_eq!(rig.audited().len(), 1);
        assert!(rig.drop_dir.join("site.toml").exists());
        // Dropping the policy again, after its signature, pushes it.
        rig.drop_policy("site.toml", 8);
        rig.drain();
        assert_eq!(rig.version(), Some(8));
    }

    #[test]
    fn older_and_tampered_policies_are_refused_audited_and_left() {
        let mut rig = Rig::new("older");
        rig.drop_policy("site.toml", 9);
        rig.drain();
        assert_eq!(rig.version(), Some(9));
        rig.drop_policy("old.toml", 8);
        rig.drain();
        let mut tampered = rig.h._fixture.upload(10);
        tampered.policy = tampered.policy.replace("8000-8080", "1-65535");
        assert_ne!(tampered.policy, rig.h._fixture.upload(10).policy);
        rig.drop_file("bad.toml.minisig", tampered.signature.as_bytes());
        rig.drop_file("bad.toml", tampered.policy.as_bytes());
        rig.drain();
        assert_eq!(rig.version(), Some(9));
        assert_eq!(rig.h._fixture.installed_version(), Some(9));
        let refusals = rig.refusals();
        assert_eq!(refusals.len(), 2, "{refusals:?}");
        assert!(
            refusals[0].contains("old.toml") && refusals[0].contains("not newer than version 9")
        );
        assert!(refusals[1].contains("bad.toml"), "{refusals:?}");
        for name in [
            "old.toml",
            "old.toml.minisig",
            "bad.toml",
            "bad.toml.minisig",
        ] {
            assert!(rig.drop_dir.join(name).exists(), "{name}");
        }
    }

    #[test]
    fn links_special_files_and_oversized_files_are_refused_unread() {
        let mut rig = Rig::new("hostile");
        let upload = rig.h._fixture.upload(8);
        let elsewhere = rig.h._fixture.dir.join("elsewhere.toml");
        std::fs::write(&elsewhere, &upload.policy).unwrap();
        rig.drop_file("link.toml.minisig", upload.signature.as_bytes());
        std::os::unix::fs::symlink(&elsewhere, rig.drop_dir.join("link.toml")).unwrap();
        // A symlink's creation is no arrival; offer it as a rename would.
        rig.watcher.offer("link.toml");
        // A FIFO would block a plain open forever.
        let fifo = CString::new(rig.drop_dir.join("fifo.toml").as_os_str().as_bytes()).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        rig.watcher.offer("fifo.toml");
        rig.drop_file("big.toml.minisig", upload.signature.as_bytes());
        let big = vec![b'#'; usize::try_from(MAX_POLICY_FILE_BYTES).unwrap() + 1];
        rig.drop_file("big.toml", &big);
        rig.drain();
        assert_eq!(rig.version(), Some(7));
        let refusals = rig.refusals();
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(refusals[0].contains("symbolic link"), "{refusals:?}");
        assert!(refusals[1].contains("not a regular file"), "{refusals:?}");
        assert!(refusals[2].contains("at most 1048576"), "{refusals:?}");
    }

    /// Whoever can write DIR's parent renames DIR away and puts a link to
    /// another directory in its place: the watch still follows the
    /// renamed directory, and securevm must read the files of the
    /// directory the event came from, never what the link leads to.
    #[test]
    fn a_directory_replaced_by_a_link_is_not_followed() {
        let mut rig = Rig::new("replaced");
        let fixture_dir = rig.h._fixture.dir.clone();
        let elsewhere = fixture_dir.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let outside = rig.h._fixture.upload(8);
        std::fs::write(elsewhere.join("site.toml.minisig"), &outside.signature).unwrap();
        std::fs::write(elsewhere.join("site.toml"), &outside.policy).unwrap();
        std::fs::write(elsewhere.join("unsigned.toml"), &outside.policy).unwrap();
        let moved = fixture_dir.join("moved");
        std::fs::rename(&rig.drop_dir, &moved).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &rig.drop_dir).unwrap();
        let inside = rig.h._fixture.upload(9);
        for (name, bytes) in [
            ("site.toml.minisig", inside.signature.as_bytes()),
            ("site.toml", inside.policy.as_bytes()),
        ] {
            let temporary = moved.join(format!(".tmp_{name}"));
            std::fs::write(&temporary, bytes).unwrap();
            std::fs::rename(&temporary, moved.join(name)).unwrap();
        }
        rig.drain();
        assert_eq!(rig.version(), Some(9), "{:?}", rig.audited());
        // A scan (a restart of the thread, an overflow) lists the same
        // directory: the unsigned policy behind the link is not seen.
        rig.h.vm.refuse_policy("marker");
        rig.watcher.offer_present();
        assert_eq!(rig.refusals(), vec!["marker".to_string()]);
    }

    #[test]
    fn a_policy_gone_before_it_is_read_changes_nothing() {
        let mut rig = Rig::new("vanished");
        rig.drop_policy("site.toml", 8);
        std::fs::remove_file(rig.drop_dir.join("site.toml")).unwrap();
        rig.drain();
        assert_eq!(rig.version(), Some(7));
        assert!(rig.audited().is_empty());
    }

    #[test]
    fn at_start_only_the_newest_valid_policy_above_the_one_in_force_is_pushed() {
        let rig = Rig::new("present");
        rig.drop_policy("a.toml", 8);
        rig.drop_policy("b.toml", 9);
        rig.drop_policy("same.toml", 7);
        rig.drop_file("bad.toml", b"version = 12\n");
        rig.drop_file("bad.toml.minisig", b"not a signature");
        rig.watcher.offer_present();
        assert_eq!(rig.version(), Some(9));
        let audited = rig.audited();
        assert_eq!(audited.len(), 2, "{audited:?}");
        assert!(audited[0]["reason"].as_str().unwrap().contains("bad.toml"));
        assert_eq!(
            (&audited[1]["event"], &audited[1]["version"]),
            (&"policy-pushed".into(), &9.into())
        );
        // Looking again (a restart, an overflow) finds nothing newer and
        // records only the file that is still bad.
        rig.watcher.offer_present();
        assert_eq!(rig.audited().len(), 3);
        assert_eq!(rig.version(), Some(9));
    }

    /// Waits until `check` holds, for at most ten seconds.
    fn eventually(check: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The thread looks at DIR when it starts, pushes each arrival, and
    /// `confinement` lets it do all of that; it ends when stopped.
    fn thread_pushes_and_stops(name: &str, seccomp: bool) {
        let rig = Rig::new(name);
        rig.drop_policy("a.toml", 8);
        let watch = PolicyDirWatch::start(
            PolicyDir::open(&rig.drop_dir).unwrap(),
            rig.h.vm.clone(),
            seccomp,
        )
        .unwrap();
        assert!(eventually(|| rig.version() == Some(8)));
        rig.drop_policy("b.toml", 9);
        assert!(eventually(|| rig.version() == Some(9)));
        rig.drop_policy("c.toml", 8);
        assert!(eventually(|| rig.refusals().len() == 1));
        assert_eq!(rig.h._fixture.installed_version(), Some(9));
        watch.stop();
    }

    /// Whoever writes DIR renames a tampered policy of the largest size in
    /// and out without pause (each arrival is read, checked, refused and
    /// audited, far slower than a rename): the queue never empties, yet a
    /// stop (`ctl shutdown`, a guest reboot under `--on-reboot restart`)
    /// still ends the thread promptly.
    #[test]
    fn a_rename_storm_does_not_keep_the_thread_from_stopping() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let rig = Rig::new("storm");
        let watch = PolicyDirWatch::start(
            PolicyDir::open(&rig.drop_dir).unwrap(),
            rig.h.vm.clone(),
            false,
        )
        .unwrap();
        let storming = Arc::new(AtomicBool::new(true));
        let storm = {
            let storming = storming.clone();
            let (hidden, shown) = (rig.drop_dir.join(".a.toml"), rig.drop_dir.join("a.toml"));
            let upload = rig.h._fixture.upload(8);
            let mut tampered = upload.policy.into_bytes();
            tampered.resize(usize::try_from(MAX_POLICY_FILE_BYTES).unwrap(), b'#');
            std::fs::write(&hidden, tampered).unwrap();
            let signature = rig.drop_dir.join("a.toml.minisig");
            std::fs::write(signature, upload.signature).unwrap();
            std::thread::spawn(move || {
                while storming.load(Ordering::Relaxed) {
                    std::fs::rename(&hidden, &shown).unwrap();
                    std::fs::rename(&shown, &hidden).unwrap();
                }
            })
        };
        assert!(eventually(|| !rig.refusals().is_empty()));
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let stopper = std::thread::spawn(move || {
            watch.stop();
            stopped_tx.send(()).unwrap();
        });
        let stopped_in_time = stopped.recv_timeout(Duration::from_secs(5)).is_ok();
        storming.store(false, Ordering::Relaxed);
        storm.join().unwrap();
        stopper.join().unwrap();
        assert!(stopped_in_time, "the thread kept draining the storm");
    }

    #[test]
    fn the_thread_pushes_what_is_present_and_what_arrives_until_stopped() {
        thread_pushes_and_stops("thread", false);
    }

    /// Set in the child process of the test below.
    const SECCOMP_CHILD_ENV: &str = "SECUREVM_POLICY_DIR_SECCOMP_CHILD";

    /// The thread under its real filter, in a process of its own: a
    /// syscall the filter lacks ends the child with status 31.
    #[test]
    fn the_thread_runs_under_its_seccomp_filter() {
        crate::seccomp::test_support::run_in_fresh_process(
            "policy::dir::tests::seccomp_child",
            SECCOMP_CHILD_ENV,
        );
    }

    #[test]
    #[ignore = "run by the_thread_runs_under_its_seccomp_filter in a fresh process"]
    fn seccomp_child() {
        assert!(std::env::var_os(SECCOMP_CHILD_ENV).is_some());
        thread_pushes_and_stops("seccomp", true);
    }
}
