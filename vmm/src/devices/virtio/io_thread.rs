//! One I/O thread per device. It is started when the device is created,
//! before any seccomp filter exists, so that vCPU threads never need to
//! create threads; it then sleeps in epoll on the queues' kick eventfds
//! and a stop eventfd. At DRIVER_OK the transport hands it a queue worker,
//! at reset takes it away again; kicks in between are served by that
//! worker. vCPUs only ever signal an eventfd; this thread does the I/O.
//!
//! A worker may also want to be woken by fds of its own (a network
//! device's TAP). It names them in [`QueueWorker::event_sources`]; the
//! thread adds and removes them from its epoll set itself after every
//! batch, so that only this thread ever needs `epoll_ctl` (vCPU threads,
//! which install and remove workers, are not allowed it), and so that a
//! worker can stop listening (nothing to deliver into) and start again.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Runs first on the new I/O thread, e.g. to install its seccomp filter.
/// If it fails, the thread ends and the device cannot be created.
pub type ThreadStartHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The device-specific half of an I/O thread, built at DRIVER_OK.
pub trait QueueWorker: Send {
    /// Queue `queue` (the driver's queue number) was kicked, or the
    /// device just started: serve what is available.
    fn process_queue(&mut self, queue: usize);

    /// Other fds that should wake this worker right now (read readiness,
    /// level-triggered). Asked again after every batch of events.
    fn event_sources(&self) -> &[EventSource] {
        &[]
    }

    /// An fd from [`QueueWorker::event_sources`] is readable; `token` is
    /// the one it was listed with. Only called for listed sources.
    fn process_event(&mut self, token: u32) {
        log::debug!("I/O thread: unexpected event source {token}");
    }
}

/// An fd a worker listens on, and the token its events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSource {
    pub fd: RawFd,
    pub token: u32,
}

type WorkerSlot = Arc<Mutex<Option<Box<dyn QueueWorker>>>>;

const STOP_TOKEN: u64 = u64::MAX;
/// Worker event sources carry their token above this, clear of queue
/// numbers.
const SOURCE_TOKEN_BASE: u64 = 1 << 32;
/// Sources a worker may register at once; the rest are ignored.
const MAX_EVENT_SOURCES: usize = 8;

pub struct IoThread {
    stop: EventFd,
    worker: WorkerSlot,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Start thread `name` listening on `kicks` (index = queue number).
    /// Returns once `start_hook` has run on it; its error is returned.
    pub fn spawn(
        name: String,
        kicks: Vec<EventFd>,
        start_hook: Option<ThreadStartHook>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (index, kick) in kicks.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index as u64),
            )?;
        }
        let worker: WorkerSlot = Arc::new(Mutex::new(None));
        let thread_worker = worker.clone();
        let thread_stop = stop.try_clone()?;
        let (started, start_result) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let hook_result = start_hook.map_or(Ok(()), |hook| hook());
                let hook_ok = hook_result.is_ok();
                // The spawner waits for this; if it is gone there is no
                // one to serve.
                if started.send(hook_result).is_err() || !hook_ok {
                    return;
                }
                serve(&epoll, &thread_stop, &kicks, &thread_worker);
            })?;
        match start_result.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                worker,
                handle: Some(handle),
            }),
            Ok(Err(reason)) => {
                let _ = handle.join();
                Err(io::Error::other(format!(
                    "I/O thread {name} could not start: {reason}"
                )))
            }
            Err(_) => {
                let _ = handle.join();
                Err(io::Error::other(format!(
                    "I/O thread {name} died while starting"
                )))
            }
        }
    }

    /// Serve kicks with `worker` from now on.
    pub fn serve(&self, worker: Box<dyn QueueWorker>) {
        *lock(&self.worker) = Some(worker);
    }

    /// Stop serving: waits for a batch in progress, then drops the worker
    /// (and with it the queues and guest memory it held).
    pub fn idle(&self) {
        let worker = lock(&self.worker).take();
        drop(worker);
    }

    /// End the thread and wait for it.
    pub fn stop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot stop I/O thread: {e}");
            return;
        }
        if handle.join().is_err() {
            log::error!("a device I/O thread panicked");
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(slot: &WorkerSlot) -> MutexGuard<'_, Option<Box<dyn QueueWorker>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(epoll: &Epoll, stop: &EventFd, kicks: &[EventFd], worker: &WorkerSlot) {
    let mut events = vec![EpollEvent::default(); kicks.len() + 1 + MAX_EVENT_SOURCES];
    let mut registered = SourceSet::new();
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(ready) => ready,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("I/O thread cannot wait for events: {e}");
                return;
            }
        };
        let mut slot = lock(worker);
        for event in &events[..ready] {
            let token = event.data();
            if token == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            if token >= SOURCE_TOKEN_BASE {
                let source = (token - SOURCE_TOKEN_BASE) as u32;
                // A source the worker dropped in this same batch, or one
                // left from a worker that is gone, is not delivered.
                if let Some(worker) = slot.as_mut() {
                    if worker.event_sources().iter().any(|s| s.token == source) {
                        worker.process_event(source);
                    }
                }
                continue;
            }
            let Some(kick) = usize::try_from(token).ok().and_then(|q| kicks.get(q)) else {
                continue;
            };
            // EAGAIN here just means another wake-up already drained it.
            let _ = kick.read();
            // Without a worker (before DRIVER_OK, after reset) kicks are
            // dropped, as a reset device ignores notifications.
            if let Some(worker) = slot.as_mut() {
                worker.process_queue(token as usize);
            }
        }
        let wanted = slot.as_ref().map_or(&[][..], |w| w.event_sources());
        registered.update(epoll, wanted);
    }
}

/// The worker sources currently in the epoll set. Its storage is
/// reserved once, so switching a source on and off does not allocate.
struct SourceSet {
    sources: Vec<EventSource>,
}

impl SourceSet {
    fn new() -> Self {
        Self {
            sources: Vec::with_capacity(MAX_EVENT_SOURCES),
        }
    }

    fn update(&mut self, epoll: &Epoll, wanted: &[EventSource]) {
        let wanted = &wanted[..wanted.len().min(MAX_EVENT_SOURCES)];
        if self.sources == wanted {
            return;
        }
        for old in &self.sources {
            if !wanted.contains(old) {
                // Fails harmlessly when the fd was closed (epoll forgot it).
                let _ = epoll.ctl(ControlOperation::Delete, old.fd, EpollEvent::default());
            }
        }
        self.sources.retain(|old| wanted.contains(old));
        for new in wanted {
            if self.sources.contains(new) {
                continue;
            }
            let event = EpollEvent::new(EventSet::IN, SOURCE_TOKEN_BASE + u64::from(new.token));
            let added = epoll
                .ctl(ControlOperation::Add, new.fd, event)
                .or_else(|_| epoll.ctl(ControlOperation::Modify, new.fd, event));
            match added {
                Ok(()) => self.sources.push(*new),
                Err(e) => log::error!("I/O thread cannot watch fd {}: {e}", new.fd),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// Listens on `source` after each kick, and stops after one event,
    /// without draining it: the fd stays readable throughout.
    struct OneShotListener {
        sources: [EventSource; 1],
        listening: bool,
        events: Arc<AtomicUsize>,
    }

    impl QueueWorker for OneShotListener {
        fn process_queue(&mut self, _queue: usize) {
            self.listening = true;
        }

        fn event_sources(&self) -> &[EventSource] {
            if self.listening {
                &self.sources
            } else {
                &[]
            }
        }

        fn process_event(&mut self, token: u32) {
            assert_eq!(token, 7);
            self.events.fetch_add(1, Ordering::SeqCst);
            self.listening = false;
        }
    }

    /// CPU time (user + system, in clock ticks) the thread named `name`
    /// used; how tests tell a sleeping thread from a spinning one.
    pub(crate) fn thread_cpu_ticks(name: &str) -> u64 {
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(path.join("stat")).unwrap();
                // utime and stime are fields 14 and 15; count from the
                // end of the parenthesised thread name (field 2).
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                let fields: Vec<&str> = rest.split(' ').collect();
                return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            }
        }
        panic!("no thread named {name}");
    }

    fn wait_until(events: &AtomicUsize, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "event {count} never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn worker_sources_are_watched_only_while_wanted() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let thread =
            IoThread::spawn("io-test".into(), vec![kick.try_clone().unwrap()], None).unwrap();
        let source = EventFd::new(EFD_NONBLOCK).unwrap();
        source.write(1).unwrap();
        let events = Arc::new(AtomicUsize::new(0));
        thread.serve(Box::new(OneShotListener {
            sources: [EventSource {
                fd: source.as_raw_fd(),
                token: 7,
            }],
            listening: false,
            events: events.clone(),
        }));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(events.load(Ordering::SeqCst), 0, "not listening yet");

        kick.write(1).unwrap();
        wait_until(&events, 1);
        let before = thread_cpu_ticks("io-test");
        std::thread::sleep(Duration::from_millis(300));
        let spent = thread_cpu_ticks("io-test") - before;
        assert!(
            spent <= 2,
            "the thread spun on a source nobody wants: {spent} ticks"
        );
        assert_eq!(
            events.load(Ordering::SeqCst),
            1,
            "a readable source the worker dropped must not wake it again"
        );
        kick.write(1).unwrap();
        wait_until(&events, 2);

        thread.idle();
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(events.load(Ordering::SeqCst), 2, "no worker, no events");
    }
}
