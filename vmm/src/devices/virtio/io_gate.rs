//! What a pause or a session lock means for the device I/O threads.
//!
//! The vCPU control closes the gate when the VM is paused or locked and
//! opens it when neither holds any more. An I/O thread starts each
//! bounded unit of work (see `io_thread`) only through the gate: while it
//! is closed, the unit in progress completes and nothing new is taken
//! from the guest's rings or handed to the guest, so a paused or locked
//! guest neither moves disk data nor sends or receives frames. Opening
//! wakes every I/O thread to serve what waited meanwhile, without the
//! guest having to notify again.
//!
//! Closing never times out into opening: whoever closes may wait, with a
//! deadline, for the units in progress to finish, and a missed deadline is
//! that caller's error while the gate stays closed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::sync::Unpoisoned;

/// Shared by the vCPU control and every device I/O thread of one VM;
/// cheap to clone. A new gate is open.
#[derive(Clone, Default)]
pub struct IoGate {
    shared: Arc<GateShared>,
}

#[derive(Default)]
struct GateShared {
    state: Mutex<GateState>,
    /// Signalled when the last unit in progress ends.
    idle: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Units of work in progress right now.
    busy: usize,
    /// How to wake each I/O thread when the gate opens; a thread that
    /// ended has dropped its half.
    wakers: Vec<Weak<EventFd>>,
}

/// One unit of work let through the gate; it ends when dropped.
pub struct Unit<'a> {
    gate: &'a IoGate,
}

impl IoGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.shared.state.lock().unpoisoned()
    }

    /// From now on no new unit starts, until [`IoGate::open`].
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Lets units start again and wakes every I/O thread.
    pub fn open(&self) {
        let mut state = self.lock();
        state.closed = false;
        state.wakers.retain(|waker| match waker.upgrade() {
            Some(waker) => {
                if let Err(e) = waker.write(1) {
                    log::error!("cannot wake a device I/O thread after a resume: {e}");
                }
                true
            }
            None => false,
        });
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until no unit is in progress while the gate is closed. False
    /// when units are still running at `deadline`; the gate stays closed
    /// either way. True at once if the gate is (or becomes) open.
    pub fn wait_quiet(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while state.closed && state.busy > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .idle
                .wait_timeout(state, deadline - now)
                .unpoisoned()
                .0;
        }
        true
    }

    /// `waker` is written whenever the gate opens, for as long as its
    /// owner (an I/O thread) holds it.
    pub(super) fn add_waker(&self, waker: &Arc<EventFd>) {
        let mut state = self.lock();
        state.wakers.retain(|w| w.strong_count() > 0);
        state.wakers.push(Arc::downgrade(waker));
    }

    /// Starts a unit of work, unless the gate is closed.
    pub(crate) fn enter(&self) -> Option<Unit<'_>> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        state.busy += 1;
        Some(Unit { gate: self })
    }
}

impl Drop for Unit<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.busy -= 1;
        if state.busy == 0 {
            self.gate.shared.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn a_closed_gate_lets_no_unit_start_and_waits_for_the_running_one() {
        let gate = IoGate::default();
        let running = gate.enter().expect("a new gate is open");
        gate.close();
        assert!(gate.enter().is_none(), "no unit starts while closed");
        assert!(
            !gate.wait_quiet(Instant::now() + Duration::from_millis(20)),
            "a unit is still running"
        );
        assert!(gate.is_closed(), "a missed deadline does not open the gate");
        drop(running);
        assert!(gate.wait_quiet(Instant::now() + Duration::from_millis(20)));
        assert!(gate.enter().is_none());
    }

    #[test]
    fn opening_wakes_the_threads_that_are_still_there() {
        let gate = IoGate::default();
        let kept = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let gone = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        gate.add_waker(&kept);
        gate.add_waker(&gone);
        drop(gone);
        gate.close();
        assert!(kept.read().is_err(), "closing wakes nobody");
        gate.open();
        assert_eq!(kept.read().unwrap(), 1);
        assert_eq!(gate.lock().wakers.len(), 1, "an ended thread is forgotten");
        assert!(gate.enter().is_some());
    }
}
