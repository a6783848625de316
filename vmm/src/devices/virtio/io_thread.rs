//! One I/O thread per device. It is started when the device is created,
//! before any seccomp filter exists, so that vCPU threads never need to
//! create threads; it then sleeps in epoll on the queues' kick eventfds,
//! a stop eventfd and a resume eventfd. At DRIVER_OK the transport hands
//! it a queue worker, at reset takes it away again; kicks in between are
//! served by that worker. vCPUs only ever signal an eventfd; this thread
//! does the I/O.
//!
//! Work is done in bounded units: one call of the worker serves a bounded
//! part of one queue (or of one event source) and says whether more is
//! left; the thread holds the worker's lock only for that unit and comes
//! back for the rest by itself, after looking at its other events. So a
//! vCPU that resets the device (and must take the worker away) waits for
//! at most one unit, however much the guest queued. Each unit starts only
//! through the VM's [`IoGate`]: while the VM is paused or locked, nothing
//! new is served, and the gate's resume eventfd brings the thread back to
//! every queue when it opens.
//!
//! A worker may also want to be woken by fds of its own (a network
//! device's TAP). It names them in [`QueueWorker::event_sources`]; the
//! thread adds and removes them from its epoll set itself after every
//! round, so that only this thread ever needs `epoll_ctl` (vCPU threads,
//! which install and remove workers, are not allowed it), and so that a
//! worker can stop listening (nothing to deliver into) and start again.
//! While the gate is closed no source is watched: what arrives waits in
//! the kernel (a TAP's queue, a socket's buffer).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::io_gate::IoGate;
use crate::confined::{self, Confinement};
use crate::sync::Unpoisoned;

/// How far one call of [`QueueWorker::process_queue`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing is left that the worker can serve now.
    Done,
    /// The call stopped at its bound with work left: call again.
    More,
}

/// The device-specific half of an I/O thread, built at DRIVER_OK.
pub trait QueueWorker: Send {
    /// Queue `queue` (the driver's queue number) was kicked, or the
    /// device just started or resumed: serve a bounded part of what is
    /// available, and say whether more is left.
    fn process_queue(&mut self, queue: usize) -> Progress;

    /// Other fds that should wake this worker right now (read readiness,
    /// level-triggered). Asked again after every round of events.
    fn event_sources(&self) -> &[EventSource] {
        &[]
    }

    /// An fd from [`QueueWorker::event_sources`] is readable; `token` is
    /// the one it was listed with. Only called for listed sources. Serve
    /// a bounded part: a source still readable wakes the thread again.
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

/// The worker, and how many control threads wait to take its lock.
#[derive(Default)]
struct WorkerSlot {
    worker: Mutex<Option<Box<dyn QueueWorker>>>,
    /// Threads (vCPUs installing or removing the worker) waiting for the
    /// lock. The I/O thread lets them go first between two units: an
    /// unfair mutex would otherwise let it take the lock back at once.
    contenders: AtomicUsize,
}

type WorkerGuard<'a> = MutexGuard<'a, Option<Box<dyn QueueWorker>>>;

impl WorkerSlot {
    fn lock(&self) -> WorkerGuard<'_> {
        self.worker.lock().unpoisoned()
    }

    /// For control threads: the lock, ahead of the I/O thread's next unit.
    fn lock_first(&self) -> WorkerGuard<'_> {
        self.contenders.fetch_add(1, Ordering::SeqCst);
        let guard = self.lock();
        self.contenders.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// For the I/O thread: the lock, once no control thread waits for it.
    fn lock_for_unit(&self) -> WorkerGuard<'_> {
        while self.contenders.load(Ordering::SeqCst) > 0 {
            std::thread::yield_now();
        }
        self.lock()
    }
}

const STOP_TOKEN: u64 = u64::MAX;
const RESUME_TOKEN: u64 = u64::MAX - 1;
/// Worker event sources carry their token above this, clear of queue
/// numbers.
const SOURCE_TOKEN_BASE: u64 = 1 << 32;
/// Sources a worker may register at once; the rest are ignored.
const MAX_EVENT_SOURCES: usize = 8;

pub struct IoThread {
    stop: EventFd,
    worker: Arc<WorkerSlot>,
    /// Written by the gate when it opens; the gate holds it weakly, so it
    /// forgets this thread once the thread is gone.
    _resume: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Start thread `name` listening on `kicks` (index = queue number),
    /// starting its units through `gate`. Returns once the thread is in
    /// `confinement`; if it cannot be, the device cannot be created.
    pub fn spawn(
        name: String,
        kicks: Vec<EventFd>,
        gate: IoGate,
        confinement: Confinement,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let resume = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            resume.as_raw_fd(),
            EpollEvent::new(EventSet::IN, RESUME_TOKEN),
        )?;
        for (index, kick) in kicks.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index as u64),
            )?;
        }
        gate.add_waker(&resume);
        let worker = Arc::new(WorkerSlot::default());
        let thread = ServeState {
            epoll,
            stop: stop.try_clone()?,
            resume: resume.try_clone()?,
            kicks,
            worker: worker.clone(),
            gate,
        };
        let handle =
            confined::spawn(name, confinement, move || thread.serve()).map_err(io::Error::other)?;
        Ok(Self {
            stop,
            worker,
            _resume: resume,
            handle: Some(handle),
        })
    }

    /// Serve kicks with `worker` from now on.
    pub fn serve(&self, worker: Box<dyn QueueWorker>) {
        *self.worker.lock_first() = Some(worker);
    }

    /// Stop serving: waits for the unit in progress (not for what else
    /// the guest queued), then drops the worker (and with it the queues
    /// and guest memory it held).
    pub fn idle(&self) {
        let worker = self.worker.lock_first().take();
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

/// What the I/O thread owns.
struct ServeState {
    epoll: Epoll,
    stop: EventFd,
    resume: EventFd,
    kicks: Vec<EventFd>,
    worker: Arc<WorkerSlot>,
    gate: IoGate,
}

impl ServeState {
    fn serve(&self) {
        let mut events = vec![EpollEvent::default(); self.kicks.len() + 2 + MAX_EVENT_SOURCES];
        let mut registered = SourceSet::new();
        // Queues with work left (kicked, or cut off at a unit's bound).
        let mut pending = vec![false; self.kicks.len()];
        loop {
            // With work left, only look for events (a stop, a reset, other
            // queues) before going on; else sleep until something comes.
            let timeout = if pending.contains(&true) && !self.gate.is_closed() {
                0
            } else {
                -1
            };
            let ready = match self.epoll.wait(timeout, &mut events) {
                Ok(ready) => ready,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("I/O thread cannot wait for events: {e}");
                    return;
                }
            };
            for event in &events[..ready] {
                match event.data() {
                    STOP_TOKEN => {
                        let _ = self.stop.read();
                        return;
                    }
                    RESUME_TOKEN => {
                        // Kicks read while the gate was closed were not
                        // served: look at every queue.
                        let _ = self.resume.read();
                        pending.fill(true);
                    }
                    token if token >= SOURCE_TOKEN_BASE => {
                        self.serve_source((token - SOURCE_TOKEN_BASE) as u32);
                    }
                    token => {
                        let Some(queue) = usize::try_from(token)
                            .ok()
                            .filter(|&q| q < self.kicks.len())
                        else {
                            continue;
                        };
                        // EAGAIN here just means another wake-up already
                        // drained it.
                        let _ = self.kicks[queue].read();
                        pending[queue] = true;
                    }
                }
            }
            for (queue, left) in pending.iter_mut().enumerate() {
                if *left {
                    match self.serve_queue(queue) {
                        Some(progress) => *left = progress == Progress::More,
                        // Closed: keep it for when the gate opens.
                        None => break,
                    }
                }
            }
            let slot = self.worker.lock_for_unit();
            let wanted = match slot.as_ref() {
                Some(worker) if !self.gate.is_closed() => worker.event_sources(),
                _ => &[][..],
            };
            registered.update(&self.epoll, wanted);
        }
    }

    /// One unit on `queue`; `None` when the gate is closed. Without a
    /// worker (before DRIVER_OK, after reset) kicks are dropped, as a
    /// reset device ignores notifications.
    fn serve_queue(&self, queue: usize) -> Option<Progress> {
        let _unit = self.gate.enter()?;
        let mut slot = self.worker.lock_for_unit();
        Some(
            slot.as_mut()
                .map_or(Progress::Done, |worker| worker.process_queue(queue)),
        )
    }

    fn serve_source(&self, source: u32) {
        // A closed gate unwatches every source at the end of this round.
        let Some(_unit) = self.gate.enter() else {
            return;
        };
        let mut slot = self.worker.lock_for_unit();
        // A source the worker dropped in this same round, or one left from
        // a worker that is gone, is not delivered.
        if let Some(worker) = slot.as_mut() {
            if worker.event_sources().iter().any(|s| s.token == source) {
                worker.process_event(source);
            }
        }
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
        fn process_queue(&mut self, _queue: usize) -> Progress {
            self.listening = true;
            Progress::Done
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

    /// Serves `units` units of one endless queue, each `unit_time` long,
    /// and counts them.
    struct EndlessQueue {
        units: Arc<AtomicUsize>,
        unit_time: Duration,
        left: usize,
    }

    impl QueueWorker for EndlessQueue {
        fn process_queue(&mut self, _queue: usize) -> Progress {
            self.units.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.unit_time);
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                Progress::Done
            } else {
                Progress::More
            }
        }
    }

    fn endless_thread(
        name: &str,
        gate: IoGate,
        left: usize,
        unit_time: Duration,
    ) -> (IoThread, EventFd, Arc<AtomicUsize>) {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let thread = IoThread::spawn(
            name.into(),
            vec![kick.try_clone().unwrap()],
            gate,
            Confinement::Unfiltered,
        )
        .unwrap();
        let units = Arc::new(AtomicUsize::new(0));
        thread.serve(Box::new(EndlessQueue {
            units: units.clone(),
            unit_time,
            left,
        }));
        (thread, kick, units)
    }

    #[test]
    fn work_left_is_served_without_another_kick() {
        let (_thread, kick, units) =
            endless_thread("io-more", IoGate::default(), 50, Duration::ZERO);
        kick.write(1).unwrap();
        wait_until(&units, 50);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(units.load(Ordering::SeqCst), 50, "served past Done");
    }

    #[test]
    fn idle_waits_for_one_unit_while_work_is_left() {
        let (thread, kick, units) = endless_thread(
            "io-idle",
            IoGate::default(),
            usize::MAX,
            Duration::from_millis(2),
        );
        kick.write(1).unwrap();
        wait_until(&units, 3);
        let before = units.load(Ordering::SeqCst);
        thread.idle();
        let during = units.load(Ordering::SeqCst) - before;
        assert!(during <= 2, "idle waited for {during} units");
    }

    #[test]
    fn a_closed_gate_holds_work_until_it_opens() {
        let gate = IoGate::default();
        gate.close();
        let (_thread, kick, units) = endless_thread("io-gate", gate.clone(), 5, Duration::ZERO);
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(units.load(Ordering::SeqCst), 0, "served while closed");
        gate.open();
        wait_until(&units, 5);
    }

    #[test]
    fn worker_sources_are_watched_only_while_wanted() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let thread = IoThread::spawn(
            "io-test".into(),
            vec![kick.try_clone().unwrap()],
            IoGate::default(),
            Confinement::Unfiltered,
        )
        .unwrap();
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
