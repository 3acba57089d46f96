//! The one place keys are built, like Django's `make_key`: `prefix:version:key`.

/// memcached refuses keys over 250 bytes; Django warns about them.
const MEMCACHED_MAX_KEY: usize = 250;

pub(crate) fn make_key(prefix: &str, version: i64, key: &str) -> String {
    let full = format!("{prefix}:{version}:{key}");
    warn_if_unportable(&full);
    full
}

/// Django's `CacheKeyWarning`: the key is sent anyway, but it would not work
/// with memcached.
fn warn_if_unportable(key: &str) {
    if key.len() > MEMCACHED_MAX_KEY {
        tracing::warn!(
            key_len = key.len(),
            "cache key is over {MEMCACHED_MAX_KEY} bytes, which memcached would refuse"
        );
    }
    if key.chars().any(|c| c.is_control() || c == ' ') {
        tracing::warn!(key, "cache key contains spaces or control characters, which memcached would refuse");
    }
}

/// The user's part of a full key (for `get_many`'s result map).
pub(crate) fn user_part<'a>(full: &'a str, prefix: &str, version: i64) -> &'a str {
    let head = format!("{prefix}:{version}:");
    full.strip_prefix(head.as_str()).unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_like_django() {
        assert_eq!(make_key("", 1, "k"), ":1:k");
        assert_eq!(make_key("app", 2, "k"), "app:2:k");
        assert_eq!(user_part("app:2:k:x", "app", 2), "k:x");
    }
}
