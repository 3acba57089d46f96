//! The one place keys are built, like Django's `make_key`: `prefix:version:key`.

/// memcached refuses keys over 250 bytes; Django warns about them.
const MEMCACHED_MAX_KEY: usize = 250;

/// What every key `make_key` builds for `prefix` starts with, whatever its
/// version: the scope of `Cache::clear_prefix`.
pub(crate) fn key_scope(prefix: &str) -> String {
    format!("{prefix}:")
}

pub(crate) fn make_key(prefix: &str, version: i64, key: &str) -> String {
    // Built by hand, not with `format!`: this runs on every call, and the
    // formatting machinery was 1.4% of the client's CPU per `get`.
    let mut digits = itoa::Buffer::new();
    let version = digits.format(version);
    let mut full = String::with_capacity(prefix.len() + version.len() + key.len() + 2);
    for part in [prefix, ":", version, ":", key] {
        full.push_str(part);
    }
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
    if !is_memcached_safe(key) {
        tracing::warn!(key, "cache key contains spaces or control characters, which memcached would refuse");
    }
}

/// memcached's rule, byte by byte: nothing below 33 (controls and space)
/// and no 127 (DEL). Bytes 128-255, U+0080-U+009F included, are accepted.
fn is_memcached_safe(key: &str) -> bool {
    key.bytes().all(|b| b >= 33 && b != 127)
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
        assert_eq!(make_key("p", -12, "k"), "p:-12:k");
        assert_eq!(make_key("p", i64::MIN, ""), format!("p:{}:", i64::MIN));
        assert_eq!(user_part("app:2:k:x", "app", 2), "k:x");
    }

    #[test]
    fn warns_exactly_where_memcached_refuses() {
        assert!(is_memcached_safe(":1:plain-key_!~"));
        assert!(is_memcached_safe(":1:caf\u{e9}\u{85}\u{9f}"), "U+0080-U+009F are fine for memcached");
        for bad in [":1:a b", ":1:a\tb", ":1:a\u{7f}", ":1:\u{0}"] {
            assert!(!is_memcached_safe(bad), "{bad:?}");
        }
    }
}
