//! One I/O thread per device: it sleeps in epoll on the queues' kick
//! eventfds and a stop eventfd, and runs the device's queue worker when a
//! queue is kicked. vCPUs only ever signal an eventfd; the thread does the
//! I/O. Stopping writes the stop eventfd and joins.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Runs first on the new I/O thread, e.g. to install its seccomp filter.
/// An error stops the thread before it touches any guest request.
pub type ThreadStartHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The device-specific half of an I/O thread.
pub trait QueueWorker: Send + 'static {
    /// Queue number `queue` (its position in the kick list) was kicked,
    /// or the thread just started: serve what is available.
    fn process_queue(&mut self, queue: usize);
    /// The start hook failed; the device cannot serve.
    fn start_failed(&mut self, reason: &str);
}

const STOP_TOKEN: u64 = u64::MAX;

pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Spawn thread `name` serving `kicks` with `worker`. The epoll set is
    /// built here so that failures reach the caller, not a log line.
    pub fn spawn<W: QueueWorker>(
        name: String,
        kicks: Vec<EventFd>,
        mut worker: W,
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
        let thread_stop = stop.try_clone()?;
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(hook) = start_hook {
                if let Err(reason) = hook() {
                    worker.start_failed(&reason);
                    return;
                }
            }
            serve(&epoll, &thread_stop, &kicks, &mut worker);
        })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Ask the thread to finish and wait for it.
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

fn serve<W: QueueWorker>(epoll: &Epoll, stop: &EventFd, kicks: &[EventFd], worker: &mut W) {
    // Kicks that arrived before the thread existed are not lost: the
    // eventfds stay signalled, but serve each queue once anyway in case a
    // driver filled the ring before DRIVER_OK.
    for queue in 0..kicks.len() {
        worker.process_queue(queue);
    }
    let mut events = vec![EpollEvent::default(); kicks.len() + 1];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(ready) => ready,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("I/O thread cannot wait for events: {e}");
                return;
            }
        };
        for event in &events[..ready] {
            let token = event.data();
            if token == STOP_TOKEN {
                // Draining is unnecessary: the eventfd is dropped with us.
                let _ = stop.read();
                return;
            }
            let Some(kick) = usize::try_from(token).ok().and_then(|q| kicks.get(q)) else {
                continue;
            };
            // EAGAIN here just means another wake-up already drained it.
            let _ = kick.read();
            worker.process_queue(token as usize);
        }
    }
}
