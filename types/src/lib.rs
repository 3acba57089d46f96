//! The types shared by cachet's client, its wire protocol and its storage
//! engine, so that one concept has one type from `Cache::set` to the log.

#![deny(missing_docs)]

pub mod keyspace;

use std::time::Duration;

/// The latest deadline an entry can have, in unix ms: 2^43 - 1, in the
/// year 2248 (the engine keeps deadlines in 43 bits). A longer TTL is
/// capped to it.
pub const MAX_DEADLINE: u64 = (1 << 43) - 1;

/// How long a write keeps its value, once resolved: the type the client
/// sends, the wire carries and the engine applies. (The client's `Timeout`
/// adds only "the client's default", which it resolves to a `Ttl`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Ttl {
    /// Never expires (Django `timeout=None`).
    Never,
    /// Expires this many milliseconds from now; 0 stores nothing and removes
    /// any old value (Django `timeout=0`).
    Millis(u64),
}

impl Ttl {
    /// A duration from now. Sub-millisecond parts round up, so a non-zero
    /// duration never becomes "expire now"; a duration past `u64::MAX` ms
    /// saturates.
    pub fn after(d: Duration) -> Ttl {
        Ttl::Millis(u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }

    /// The absolute deadline (unix ms) this TTL gives a write at `now`:
    /// `None` for "expire now" (store nothing), `Some(0)` for never. A
    /// deadline past [`MAX_DEADLINE`] is capped to it.
    pub fn deadline(self, now: u64) -> Option<u64> {
        match self {
            Ttl::Never => Some(0),
            Ttl::Millis(0) => None,
            Ttl::Millis(ms) => Some(now.saturating_add(ms).clamp(1, MAX_DEADLINE)),
        }
    }

    /// What is left at `now` of an entry expiring at `expires` (0 = never);
    /// at least 1 ms, since an entry still held has not expired.
    pub fn remaining(expires: u64, now: u64) -> Ttl {
        if expires == 0 { Ttl::Never } else { Ttl::Millis(expires.saturating_sub(now).max(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_milliseconds() {
        assert_eq!(Ttl::after(Duration::ZERO), Ttl::Millis(0));
        assert_eq!(Ttl::after(Duration::from_nanos(1)), Ttl::Millis(1));
        assert_eq!(Ttl::after(Duration::from_millis(1500)), Ttl::Millis(1500));
        assert_eq!(Ttl::after(Duration::MAX), Ttl::Millis(u64::MAX));
    }

    #[test]
    fn deadlines() {
        assert_eq!(Ttl::Never.deadline(10), Some(0));
        assert_eq!(Ttl::Millis(0).deadline(10), None);
        assert_eq!(Ttl::Millis(5).deadline(10), Some(15));
        assert_eq!(Ttl::Millis(u64::MAX).deadline(10), Some(MAX_DEADLINE));
        // A deadline is never 0 (which means "never") even at time 0.
        assert_eq!(Ttl::Millis(1).deadline(0), Some(1));
        assert_eq!(Ttl::remaining(0, 10), Ttl::Never);
        assert_eq!(Ttl::remaining(15, 10), Ttl::Millis(5));
        assert_eq!(Ttl::remaining(10, 10), Ttl::Millis(1));
    }
}
