//! The control socket's server: binds the Unix socket safely (mode 0600
//! from the start, stale sockets replaced, anything else refused), then
//! serves it with one acceptor thread and a fixed pool of workers. When
//! every worker is busy a new client gets 503 at once, so many clients
//! cost no more threads; each request must arrive before a deadline, so a
//! stalled client frees its worker. The socket file is removed on stop.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::controller::VmController;
use super::http::{read_request, write_response, ReadError};
use super::protocol::ApiError;
use super::routes::{error_response, handle};
use crate::confined::{self, Confinement, ThreadError};
use crate::sync::Unpoisoned;

/// Requests served at the same time.
pub const DEFAULT_WORKERS: usize = 4;
/// Most bytes of a request body (a policy file with its signature).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// How long a client may take to send its whole request.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a new client may wait for room in the workers' queue.
const BUSY_GRACE: Duration = Duration::from_millis(100);
/// How long a response may take to reach a client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "{flag} {path}: the file exists and is not a socket; remove it or choose another path"
    )]
    NotASocket { flag: &'static str, path: String },
    #[error("{flag} {path}: another process is listening on it (another securevm?); stop it or choose another path")]
    InUse { flag: &'static str, path: String },
    #[error("{flag} {path}: removing the stale socket failed: {source}")]
    RemoveStale {
        flag: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{flag} {path}: cannot create the socket: {source}")]
    Bind {
        flag: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{flag} {path}: cannot check the existing file: {source}")]
    Inspect {
        flag: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("starting the control API threads failed: {0}")]
    Spawn(io::Error),
    #[error("starting the control API threads failed: {0}")]
    Thread(#[from] ThreadError),
}

/// A bound control socket, not yet served.
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Identity of our socket file, so only our own file is removed.
    inode: (u64, u64),
}

impl BoundSocket {
    /// Creates the control socket at `path` (`--api-socket`).
    pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
        BoundSocket::bind_for("--api-socket", path)
    }

    /// Creates the socket at `path`, readable and writable by the owner
    /// only; errors name the option `flag` that gave the path. An
    /// existing socket that nobody listens on (left by a killed securevm)
    /// is replaced; anything else at `path` is an error.
    pub fn bind_for(flag: &'static str, path: &Path) -> Result<BoundSocket, SocketError> {
        let shown = path.display().to_string();
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse { flag, path: shown }),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("{flag} {shown}: replacing a stale socket nobody listens on");
                    std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                        flag,
                        path: shown.clone(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(SocketError::Inspect {
                        flag,
                        path: shown,
                        source,
                    })
                }
            },
            Ok(_) => return Err(SocketError::NotASocket { flag, path: shown }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SocketError::Inspect {
                    flag,
                    path: shown,
                    source,
                })
            }
        }
        // The socket file takes its mode from the umask at bind time: with
        // 0177 it is born 0600, so there is no moment when others could
        // connect. Called before securevm starts its other threads.
        // SAFETY: umask only changes the process's file-creation mask.
        let previous = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(previous) };
        let listener = bound.map_err(|source| SocketError::Bind {
            flag,
            path: shown.clone(),
            source,
        })?;
        let metadata = std::fs::symlink_metadata(path).map_err(|source| SocketError::Inspect {
            flag,
            path: shown.clone(),
            source,
        })?;
        debug_assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        listener
            .set_nonblocking(true)
            .map_err(|source| SocketError::Bind {
                flag,
                path: shown,
                source,
            })?;
        Ok(BoundSocket {
            listener,
            path: path.to_owned(),
            inode: (metadata.dev(), metadata.ino()),
        })
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Limits and hooks of a server.
#[derive(Clone)]
pub struct ServerConfig {
    pub workers: usize,
    pub max_body: usize,
    pub request_deadline: Duration,
    /// What each server thread confines itself to before it serves.
    pub confinement: Confinement,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: DEFAULT_WORKERS,
            max_body: DEFAULT_MAX_BODY,
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            confinement: Confinement::Unfiltered,
        }
    }
}

/// A running server; [`ApiServer::stop`] (or dropping it) ends it and
/// removes the socket.
pub struct ApiServer {
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves `socket` with `controller` on new threads.
    pub fn start(
        socket: BoundSocket,
        config: ServerConfig,
        controller: Arc<dyn VmController>,
    ) -> Result<ApiServer, SocketError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(SocketError::Spawn)?;
        let stop_for_acceptor = stop.try_clone().map_err(SocketError::Spawn)?;
        // A connection waits in this queue for a free worker; beyond it, 503.
        let (sender, receiver) = sync_channel::<UnixStream>(config.workers.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(config.workers + 1);
        for index in 0..config.workers.max(1) {
            let receiver = receiver.clone();
            let controller = controller.clone();
            let config = config.clone();
            let worker = confined::spawn(
                format!("api-worker{index}"),
                config.confinement,
                move || {
                    serve_connections(&receiver, controller.as_ref(), &config);
                },
            )?;
            threads.push(worker);
        }
        let acceptor = confined::spawn("api-accept", config.confinement, move || {
            accept_loop(&socket.listener, &stop_for_acceptor, &sender);
            // Dropping `socket` here removes the file.
            drop(socket);
        })?;
        threads.push(acceptor);
        Ok(ApiServer { stop, threads })
    }

    /// Stops accepting, lets running requests finish (each is bounded by
    /// its deadline), removes the socket file.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.write(1);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn accept_loop(listener: &UnixListener, stop: &EventFd, workers: &SyncSender<UnixStream>) {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!(
                "the control API stopped: poll failed: {}",
                io::Error::last_os_error()
            );
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        match listener.accept() {
            // accept4 without SOCK_NONBLOCK: the client's socket blocks,
            // whatever the listener does.
            Ok((stream, _)) => match hand_over(workers, stream) {
                Ok(()) => {}
                Err(TrySendError::Full(mut stream)) => {
                    let busy = ApiError::Busy(
                        "the control API is busy with other requests; try again".into(),
                    );
                    write_response(&mut stream, &error_response(&busy), WRITE_TIMEOUT);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => log::warn!("control API: accepting a client failed: {e}"),
        }
    }
}

/// Queues a connection for the workers, waiting up to [`BUSY_GRACE`] for
/// room so that a moment's congestion is not reported as busy.
fn hand_over(
    workers: &SyncSender<UnixStream>,
    mut stream: UnixStream,
) -> Result<(), TrySendError<UnixStream>> {
    let deadline = Instant::now() + BUSY_GRACE;
    loop {
        match workers.try_send(stream) {
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                stream = back;
                thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn serve_connections(
    receiver: &Mutex<Receiver<UnixStream>>,
    controller: &dyn VmController,
    config: &ServerConfig,
) {
    loop {
        let next = receiver.lock().unpoisoned().recv();
        let Ok(mut stream) = next else { return };
        let deadline = Instant::now() + config.request_deadline;
        let response = match read_request(&mut stream, deadline, config.max_body) {
            Ok(request) => handle(&request, controller),
            Err(ReadError::Refused(error)) => error_response(&error),
            Err(ReadError::Disconnected) => continue,
        };
        write_response(&mut stream, &response, WRITE_TIMEOUT);
    }
}

/// The socket file goes with the socket, whether it was served or not (an
/// error after binding), if it is still the file this process created.
impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path) {
            if (metadata.dev(), metadata.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
