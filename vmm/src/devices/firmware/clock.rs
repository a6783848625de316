//! The host clocks the firmware devices read: UTC for the real-time clock,
//! a monotonic clock for the ACPI PM timer and for how long the RTC holds a
//! reading. Behind a trait so that tests drive time instead of sleeping.

use std::time::{Duration, Instant, SystemTime};

/// A source of both clocks.
pub trait Clock: Send {
    /// Time since the Unix epoch, UTC.
    fn utc(&self) -> Duration;
    /// Time since a fixed origin; never goes back, whatever the host's
    /// wall clock does.
    fn monotonic(&self) -> Duration;
}

/// The host's clocks. The monotonic origin is this value's creation, so a
/// device's counter starts near zero when the VM is built.
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn utc(&self) -> Duration {
        // A host clock set before 1970 reads as the epoch: the guest sees
        // an old but valid date rather than a wrapped one.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(test)]
pub mod test_clock {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A clock that moves only when a test says so; clones share the time.
    #[derive(Clone)]
    pub struct ManualClock(Arc<Mutex<(Duration, Duration)>>);

    impl ManualClock {
        /// Starts at `utc` with the monotonic clock at zero.
        pub fn at(utc: Duration) -> Self {
            Self(Arc::new(Mutex::new((utc, Duration::ZERO))))
        }

        /// Moves both clocks forward by `by`.
        pub fn advance(&self, by: Duration) {
            let mut times = self.0.lock().unwrap();
            times.0 += by;
            times.1 += by;
        }

        /// Sets the wall clock alone, as a host clock step would.
        pub fn set_utc(&self, utc: Duration) {
            self.0.lock().unwrap().0 = utc;
        }

        pub fn set_monotonic(&self, monotonic: Duration) {
            self.0.lock().unwrap().1 = monotonic;
        }
    }

    impl Clock for ManualClock {
        fn utc(&self) -> Duration {
            self.0.lock().unwrap().0
        }
        fn monotonic(&self) -> Duration {
            self.0.lock().unwrap().1
        }
    }
}
