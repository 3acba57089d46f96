use std::time::Duration;

use crate::protocol::WireTtl;

/// Django's `timeout` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Timeout {
    /// The client's `default_timeout` (300 s unless set).
    #[default]
    Default,
    /// Django `timeout=None`: never expires.
    Never,
    /// Expires after this long; `Duration::ZERO` stores nothing and removes
    /// any old value.
    After(Duration),
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Timeout {
        Timeout::After(d)
    }
}

impl Timeout {
    /// The one place a `Timeout` becomes a TTL. Sub-millisecond durations
    /// round up, so a non-zero timeout never turns into "expire now".
    pub(crate) fn to_wire(self, default: Duration) -> WireTtl {
        match self {
            Timeout::Never => WireTtl::Never,
            Timeout::Default => Timeout::After(default).to_wire(default),
            Timeout::After(d) if d.is_zero() => WireTtl::Millis(0),
            Timeout::After(d) => WireTtl::Millis(d.as_nanos().div_ceil(1_000_000).min(u64::MAX as u128) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_django() {
        let d = Duration::from_secs(300);
        assert_eq!(Timeout::Default.to_wire(d), WireTtl::Millis(300_000));
        assert_eq!(Timeout::Never.to_wire(d), WireTtl::Never);
        assert_eq!(Timeout::After(Duration::ZERO).to_wire(d), WireTtl::Millis(0));
        assert_eq!(Timeout::from(Duration::from_millis(1500)).to_wire(d), WireTtl::Millis(1500));
        assert_eq!(Timeout::After(Duration::from_nanos(1)).to_wire(d), WireTtl::Millis(1));
    }
}
