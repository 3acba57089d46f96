//! `SCAN`: a walk over the index by slot number, and Redis's glob patterns.

use super::State;

impl State {
    /// Visits up to `count` slots from `cursor`; returns the cursor to go on
    /// from (0 when every slot has been visited) and the live keys matching
    /// `pattern`. An entry keeps its slot while it lives, so a key present
    /// for the whole walk is found at least once.
    pub(super) fn scan(
        &self,
        cursor: u64,
        count: usize,
        pattern: Option<&[u8]>,
        db: Option<u8>,
        now: u64,
    ) -> (u64, Vec<Vec<u8>>) {
        let end = self.index.slot_count();
        let start = u32::try_from(cursor).unwrap_or(end).min(end);
        let stop = start.saturating_add(u32::try_from(count.max(1)).unwrap_or(u32::MAX)).min(end);
        let keys = (start..stop)
            .filter_map(|slot| self.index.occupied(slot))
            .filter(|e| e.is_live_at(now))
            .filter_map(|e| match db {
                None => Some(e.key()),
                Some(db) => {
                    let (of, key) = crate::keyspace::db_of(e.key());
                    (of == db).then_some(key)
                }
            })
            .filter(|k| pattern.is_none_or(|p| glob_match(p, k)))
            .map(<[u8]>::to_vec)
            .collect();
        (if stop >= end { 0 } else { u64::from(stop) }, keys)
    }
}

/// Whether `s` matches the Redis glob `p`: `*`, `?`, `[abc]`, `[^a-z]`,
/// and `\` to take the next byte literally.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative matching with one backtrack point (the last `*`), linear in
    // practice and never recursive, so a hostile pattern cannot blow the
    // stack.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    let (matched, next) = class(p, pi, s[si]);
                    if matched {
                        pi = next;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class that opens at `p[at] == b'['`; returns
/// whether it matched and where the pattern goes on. An unclosed class
/// runs to the end of the pattern, as in Redis.
fn class(p: &[u8], at: usize, c: u8) -> (bool, usize) {
    let mut i = at + 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < p.len() && p[i] != b']' {
        if p[i] == b'\\' && i + 1 < p.len() {
            matched |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let (lo, hi) = if p[i] <= p[i + 2] { (p[i], p[i + 2]) } else { (p[i + 2], p[i]) };
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    (matched != negate, (i + 1).min(p.len()))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_as_in_redis() {
        let yes: &[(&[u8], &[u8])] = &[
            (b"*", b""),
            (b"*", b"anything"),
            (b"h?llo", b"hello"),
            (b"h*llo", b"heeeello"),
            (b"h[ae]llo", b"hallo"),
            (b"h[^e]llo", b"hallo"),
            (b"h[a-b]llo", b"hbllo"),
            (b"user:*:name", b"user:42:name"),
            (b"a\\*b", b"a*b"),
            (b":1:*", b":1:k"),
        ];
        let no: &[(&[u8], &[u8])] = &[
            (b"h?llo", b"hllo"),
            (b"h[ae]llo", b"hillo"),
            (b"h[^e]llo", b"hello"),
            (b"a\\*b", b"axb"),
            (b"user:*:name", b"user:42:mail"),
            (b"", b"x"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p, s), "{p:?} should match {s:?}");
        }
        for (p, s) in no {
            assert!(!glob_match(p, s), "{p:?} should not match {s:?}");
        }
        // A pathological pattern finishes.
        assert!(!glob_match(&[b'*'; 64].iter().chain(b"x").copied().collect::<Vec<_>>(), &[b'a'; 4096]));
    }
}
