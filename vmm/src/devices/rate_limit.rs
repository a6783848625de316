//! Rate-limited logging for messages a guest can trigger at will (port
//! and MMIO writes, device resets, BAR placement, failed activations).
//! Without a limit a guest could fill the log and the terminal and burn
//! host CPU formatting messages. Each call site of [`rate_limited!`] logs
//! its first [`BURST`] messages of every [`INTERVAL`]; the next one it
//! logs after that says how many were suppressed in between.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::Unpoisoned;

/// Messages a call site logs per interval.
pub const BURST: u32 = 5;
/// Length of one interval.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The limit of one call site.
pub struct LogLimit {
    state: Mutex<State>,
}

struct State {
    interval_start: Option<Instant>,
    logged_in_interval: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                interval_start: None,
                logged_in_interval: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a message may be logged at `now`: `Some` with the number
    /// of messages suppressed since the last one logged, or `None` when
    /// this one is suppressed.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unpoisoned();
        let interval_over = state
            .interval_start
            .is_none_or(|start| now.saturating_duration_since(start) >= INTERVAL);
        if interval_over {
            state.interval_start = Some(now);
            state.logged_in_interval = 0;
        }
        if state.logged_in_interval < BURST {
            state.logged_in_interval += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::log!` under a limit of its own call site (see the module
/// comment): `rate_limited!(log::Level::Warn, "format", args...)`.
#[macro_export]
macro_rules! rate_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::devices::rate_limit::LogLimit =
            $crate::devices::rate_limit::LogLimit::new();
        let level: log::Level = $level;
        if log::log_enabled!(level) {
            match LIMIT.admit(std::time::Instant::now()) {
                Some(0) => log::log!(level, $($arg)+),
                Some(suppressed) => log::log!(
                    level,
                    "{} ({suppressed} similar messages suppressed)",
                    format_args!($($arg)+)
                ),
                None => {}
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_messages_are_counted_not_logged() {
        let limit = LogLimit::new();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit(start + Duration::from_secs(1)), None);
        }
        assert_eq!(
            limit.admit(start + INTERVAL - Duration::from_millis(1)),
            None
        );
        // The next interval's first message reports what was suppressed.
        assert_eq!(limit.admit(start + INTERVAL), Some(1001));
        for _ in 1..BURST {
            assert_eq!(limit.admit(start + INTERVAL), Some(0));
        }
        assert_eq!(limit.admit(start + INTERVAL), None);
    }

    #[test]
    fn a_quiet_call_site_logs_everything() {
        let limit = LogLimit::new();
        let start = Instant::now();
        for minute in 0..20u32 {
            assert_eq!(limit.admit(start + INTERVAL * minute), Some(0));
        }
    }

    #[test]
    fn the_macro_logs_a_bounded_number_of_messages() {
        crate::storage::test_support::captured_warnings();
        let marker = "rate-limit-macro-test";
        for round in 0..1000 {
            rate_limited!(log::Level::Warn, "{marker} {round}");
        }
        let logged = crate::storage::test_support::captured_warnings()
            .iter()
            .filter(|line| line.starts_with(marker))
            .count();
        assert_eq!(logged, BURST as usize);
    }
}
