//! Remembers the IP fragments series whose first fragment the filter
//! passed, so the later fragments (which carry no ports) can follow it.
//! A fragment of a series the filter has not seen start, or of one it
//! refused, is dropped; fragments arriving before their first fragment are
//! therefore dropped too, and the sender's retransmission has to recover.
//! A new policy ends every series (their later fragments cannot be
//! re-checked).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long after its first fragment a series may still send fragments.
pub(crate) const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most fragment series remembered at once.
pub(crate) const MAX_FRAGMENT_SERIES: usize = 1024;

/// Identity of a fragment series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub(crate) source: IpAddr,
    pub(crate) destination: IpAddr,
    pub(crate) protocol: u8,
    pub(crate) identification: u32,
}

/// Allowed fragment series and when they stop being allowed.
#[derive(Debug, Default)]
pub(crate) struct FragmentSeries {
    allowed: HashMap<SeriesKey, Instant>,
}

impl FragmentSeries {
    /// Records a series whose first fragment passed. When the table is full
    /// of live series the new one is not recorded, so its later fragments
    /// are dropped rather than anything being let through.
    pub(crate) fn allow(&mut self, key: SeriesKey, now: Instant) {
        if self.allowed.len() >= MAX_FRAGMENT_SERIES && !self.allowed.contains_key(&key) {
            self.forget_expired(now);
            if self.allowed.len() >= MAX_FRAGMENT_SERIES {
                return;
            }
        }
        self.allowed.insert(key, now + FRAGMENT_TIMEOUT);
    }

    pub(crate) fn is_allowed(&self, key: &SeriesKey, now: Instant) -> bool {
        self.allowed.get(key).is_some_and(|expires| *expires > now)
    }

    pub(crate) fn forget_all(&mut self) {
        self.allowed.clear();
    }

    pub(crate) fn forget_expired(&mut self, now: Instant) {
        self.allowed.retain(|_, expires| *expires > now);
    }
}
