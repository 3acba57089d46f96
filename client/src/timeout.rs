use std::time::Duration;

use cachet_types::Ttl;

/// Django's `timeout` argument: a [`Ttl`], or "the client's default".
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
    /// The one place a `Timeout` becomes the [`Ttl`] that the wire and the
    /// engine carry.
    pub(crate) fn resolve(self, default: Duration) -> Ttl {
        match self {
            Timeout::Never => Ttl::Never,
            Timeout::Default => Ttl::after(default),
            Timeout::After(d) => Ttl::after(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_django() {
        let d = Duration::from_secs(300);
        assert_eq!(Timeout::Default.resolve(d), Ttl::Millis(300_000));
        assert_eq!(Timeout::Never.resolve(d), Ttl::Never);
        assert_eq!(Timeout::After(Duration::ZERO).resolve(d), Ttl::Millis(0));
        assert_eq!(Timeout::from(Duration::from_millis(1500)).resolve(d), Ttl::Millis(1500));
        assert_eq!(Timeout::After(Duration::from_nanos(1)).resolve(d), Ttl::Millis(1));
    }
}
