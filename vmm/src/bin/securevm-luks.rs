//! `securevm-luks`: the process in which libcryptsetup runs on behalf of
//! `securevm` (see `securevm::storage::luks_helper` for why and for the
//! wire format). It reads requests on stdin until end of input, carries
//! each out with libcryptsetup and writes the reply on stdout. It makes
//! no decisions: securevm has already checked each header and decides
//! what to ask. Not meant to be run by hand.
//!
//! Each request runs in a worker process forked for it, which is killed
//! when the request's deadline passes: a header can make key derivation
//! take hours, and a helper kept for a whole session (which securevm
//! cannot replace once its threads are filtered) must survive that. This
//! process stays single-threaded and never loads a header itself, so
//! forking it is safe and every worker starts clean.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use libcryptsetup_rs::consts::flags::{CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat, KeyslotInfo};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptParamsLuks2, CryptParamsLuks2Ref, CryptPbkdfType, CryptTokenInfo,
    Either, LibcryptErr, TokenInput,
};
use securevm::storage::luks_helper::{
    read_message, read_secret, set_nonblocking, write_message, DeadlineIo, Envelope, LuksVersion,
    Pbkdf, PbkdfKind, Reply, Request,
};
use securevm::storage::secret::SecretBuf;

/// libcryptsetup never defines more LUKS2 keyslots or tokens than this.
const MAX_SLOTS: u32 = 32;

fn main() -> ExitCode {
    securevm::exit::install_panic_hook("securevm-luks");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .format_timestamp(None)
        .init();
    if std::env::args_os().len() > 1 {
        eprintln!("securevm-luks: takes no arguments; securevm starts it and talks to it on stdin and stdout");
        return ExitCode::from(2);
    }
    libcryptsetup_rs::set_log_callback::<()>(Some(forward_log), None);
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securevm-luks: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> io::Result<()> {
    // The descriptors themselves, not std's buffered stdin and stdout:
    // their buffers would keep copies of passphrases and keys.
    let mut input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    while let Some(envelope) = read_message::<_, Envelope>(&mut input)? {
        let secrets = (0..envelope.request.secret_count())
            .map(|_| read_secret(&mut input))
            .collect::<io::Result<Vec<SecretBuf>>>()?;
        let deadline = Duration::from_millis(envelope.deadline_ms);
        let (reply, key) = in_worker(&envelope.request, &secrets, deadline)?;
        let frames: Vec<&[u8]> = key.iter().map(SecretBuf::as_bytes).collect();
        write_message(&mut output, &reply, &frames)?;
    }
    Ok(())
}

/// Carry out `request` in a forked worker and relay its reply; kill and
/// reap the worker if it has not replied within `deadline`.
fn in_worker(
    request: &Request,
    secrets: &[SecretBuf],
    deadline: Duration,
) -> io::Result<(Reply, Option<SecretBuf>)> {
    let until = Instant::now() + deadline;
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two descriptors of `ends`.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created both descriptors; nothing else owns them.
    let (replies, reply_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: this process has one thread (libcryptsetup only ever runs in
    // workers), so the child may do anything the parent could.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // A worker must not outlive a helper that securevm killed.
        // SAFETY: PR_SET_PDEATHSIG only sets this process's own signal.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            // SAFETY: as below; the helper is already gone.
            unsafe { libc::_exit(1) };
        }
        drop(replies);
        let (reply, key) = match carry_out(request, secrets) {
            Ok(answer) => answer,
            Err(error) => (failed(error), None),
        };
        let frames: Vec<&[u8]> = key.iter().map(SecretBuf::as_bytes).collect();
        let status = match write_message(&mut File::from(reply_end), &reply, &frames) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        drop(key);
        // SAFETY: ends the worker without running the parent's exit
        // handlers or unwinding into the parent's request loop.
        unsafe { libc::_exit(status) };
    }
    drop(reply_end);
    set_nonblocking(replies.as_fd())?;
    let mut input = DeadlineIo {
        end: replies.as_fd(),
        until,
    };
    let answer = read_message::<_, Reply>(&mut input).and_then(|reply| match reply {
        Some(reply @ Reply::Unlocked { .. }) => Ok((reply, Some(read_secret(&mut input)?))),
        Some(reply) => Ok((reply, None)),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    });
    if answer.is_err() {
        // SAFETY: signals the worker forked above, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let status = reap(pid)?;
    match answer {
        Ok(answer) => Ok(answer),
        Err(error) if error.kind() == io::ErrorKind::TimedOut => Ok((
            Reply::TimedOut {
                deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            },
            None,
        )),
        Err(error) => Ok((
            Reply::Failed {
                errno: None,
                message: format!(
                    "the worker ended without an answer ({error}, wait status {status})"
                ),
            },
            None,
        )),
    }
}

/// Wait for the worker `pid` to end; its wait status.
fn reap(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing its status to `status`.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn carry_out(
    request: &Request,
    secrets: &[SecretBuf],
) -> Result<(Reply, Option<SecretBuf>), LibcryptErr> {
    let done = |_| (Reply::Done, None);
    match request {
        Request::Format {
            path,
            sector_size,
            data_offset,
            key_bytes,
            pbkdf,
        } => format(
            path,
            *sector_size,
            *data_offset,
            *key_bytes,
            pbkdf,
            &secrets[0],
        )
        .map(done),
        Request::VolumeKey {
            path,
            version,
            slot,
            key_size,
        } => {
            let mut device = load(path, *version)?;
            let mut key = SecretBuf::zeroed((*key_size).max(1));
            let passphrase = secrets[0].as_bytes();
            match device
                .volume_key_handle()
                .get(*slot, key.as_mut_bytes(), Some(passphrase))
            {
                Ok((opened, len)) => {
                    key.truncate(len);
                    let slot = u32::try_from(opened).unwrap_or(0);
                    Ok((Reply::Unlocked { slot }, Some(key)))
                }
                Err(LibcryptErr::IOError(e))
                    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOENT)) =>
                {
                    Ok((Reply::WrongKey, None))
                }
                Err(e) => Err(e),
            }
        }
        Request::Luks1Info { path } => {
            let mut device = load(path, LuksVersion::Luks1)?;
            let mut status = device.status_handle();
            let cipher = format!(
                "{}-{}",
                status.get_cipher().unwrap_or_default(),
                status.get_cipher_mode().unwrap_or_default()
            );
            let reply = Reply::Luks1 {
                cipher,
                data_offset: status.get_data_offset().saturating_mul(512),
                key_size: usize::try_from(status.get_volume_key_size()).unwrap_or(0),
            };
            Ok((reply, None))
        }
        Request::AddKeyslot {
            path,
            version,
            pbkdf,
        } => {
            let mut device = load(path, *version)?;
            device
                .settings_handle()
                .set_pbkdf_type(&crypt_pbkdf(pbkdf))?;
            let slot = device.keyslot_handle().add_by_key(
                None,
                Some(Either::Left(secrets[0].as_bytes())),
                secrets[1].as_bytes(),
                CryptVolumeKey::empty(),
            )?;
            Ok((Reply::Number(slot), None))
        }
        Request::ActiveKeyslots { path, version } => {
            let mut device = load(path, *version)?;
            let active = (0..MAX_SLOTS)
                .filter(|&slot| {
                    matches!(
                        device.keyslot_handle().status(slot),
                        Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast)
                    )
                })
                .collect();
            Ok((Reply::Numbers(active), None))
        }
        Request::DestroyKeyslot {
            path,
            version,
            slot,
        } => load(path, *version)?
            .keyslot_handle()
            .destroy(*slot)
            .map(done),
        Request::Tokens { path } => {
            let mut device = load(path, LuksVersion::Luks2)?;
            let mut found = Vec::new();
            for token in 0..MAX_SLOTS {
                let active = !matches!(
                    device.token_handle().status(token),
                    Ok(CryptTokenInfo::Inactive | CryptTokenInfo::Invalid) | Err(_)
                );
                if active {
                    found.push((token, device.token_handle().json_get(token)?));
                }
            }
            Ok((Reply::Tokens(found), None))
        }
        Request::AddToken { path, json } => {
            let token = load(path, LuksVersion::Luks2)?
                .token_handle()
                .json_set(TokenInput::AddToken(json))?;
            Ok((Reply::Number(token), None))
        }
        Request::RemoveToken { path, token } => load(path, LuksVersion::Luks2)?
            .token_handle()
            .json_set(TokenInput::RemoveToken(*token))
            .map(|_| (Reply::Done, None)),
    }
}

fn format(
    path: &Path,
    sector_size: u32,
    data_offset: u64,
    key_bytes: usize,
    pbkdf: &Pbkdf,
    passphrase: &SecretBuf,
) -> Result<(), LibcryptErr> {
    let mut device = CryptInit::init(path)?;
    let params = CryptParamsLuks2 {
        pbkdf: Some(crypt_pbkdf(pbkdf)),
        integrity: None,
        integrity_params: None,
        data_alignment: (data_offset / 512) as usize,
        data_device: None,
        sector_size,
        label: None,
        subsystem: None,
    };
    let mut params_ref: CryptParamsLuks2Ref<'_> = (&params).try_into()?;
    device.context_handle().format(
        EncryptionFormat::Luks2,
        ("aes", "xts-plain64"),
        None,
        Either::Right(key_bytes),
        Some(&mut params_ref),
    )?;
    device.keyslot_handle().add_by_key(
        None,
        None,
        passphrase.as_bytes(),
        CryptVolumeKey::empty(),
    )?;
    Ok(())
}

fn load(path: &Path, version: LuksVersion) -> Result<CryptDevice, LibcryptErr> {
    let mut device = CryptInit::init(path)?;
    let format = match version {
        LuksVersion::Luks1 => EncryptionFormat::Luks1,
        LuksVersion::Luks2 => EncryptionFormat::Luks2,
    };
    device.context_handle().load::<()>(Some(format), None)?;
    Ok(device)
}

fn crypt_pbkdf(pbkdf: &Pbkdf) -> CryptPbkdfType {
    CryptPbkdfType {
        type_: match pbkdf.kind {
            PbkdfKind::Argon2id => CryptKdf::Argon2Id,
            PbkdfKind::Pbkdf2 => CryptKdf::Pbkdf2,
        },
        hash: Some(pbkdf.hash.clone()),
        time_ms: pbkdf.time_ms,
        iterations: pbkdf.iterations,
        max_memory_kb: pbkdf.max_memory_kib,
        parallel_threads: pbkdf.parallel_threads,
        flags: if pbkdf.benchmark {
            CryptPbkdf::empty()
        } else {
            CryptPbkdf::NO_BENCHMARK
        },
    }
}

fn failed(error: LibcryptErr) -> Reply {
    match error {
        LibcryptErr::IOError(e) => Reply::Failed {
            errno: e.raw_os_error(),
            message: e.to_string(),
        },
        other => Reply::Failed {
            errno: None,
            message: other.to_string(),
        },
    }
}

/// libcryptsetup's CRYPT_LOG_NORMAL and CRYPT_LOG_ERROR.
const LOG_NORMAL: c_int = 0;
const LOG_ERROR: c_int = 1;

/// Send libcryptsetup's messages to the log (stderr, shared with securevm).
unsafe extern "C" fn forward_log(level: c_int, message: *const c_char, _user: *mut c_void) {
    if message.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string valid for the
    // duration of the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let text = text.trim_end();
    match level {
        LOG_ERROR => log::warn!("libcryptsetup: {text}"),
        LOG_NORMAL => log::info!("libcryptsetup: {text}"),
        _ => log::debug!("libcryptsetup: {text}"),
    }
}
