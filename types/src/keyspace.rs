//! RESP's numbered databases in the engine's one keyspace.
//!
//! Database 0 holds keys as given, so the Rust client's keys (UTF-8 text,
//! which never starts with byte 0xFF) and RESP's database 0 are the same
//! keys. Every other database `n` stores a key behind the two bytes
//! `0xFF n`; a database-0 key that itself starts with 0xFF is stored behind
//! `0xFF 0x00`, so no two (database, key) pairs share a stored key.

/// How many databases RESP's `SELECT` takes (0 to 15), as Redis's default.
pub const DATABASES: u8 = 16;

const MARK: u8 = 0xFF;

/// The stored form of `key` in database `db`.
pub fn db_key(db: u8, key: &[u8]) -> Vec<u8> {
    if db == 0 && key.first() != Some(&MARK) {
        return key.to_vec();
    }
    let mut stored = Vec::with_capacity(key.len() + 2);
    stored.extend_from_slice(&[MARK, db]);
    stored.extend_from_slice(key);
    stored
}

/// The database of a stored key and the key as its client named it.
pub fn db_of(stored: &[u8]) -> (u8, &[u8]) {
    match stored {
        [MARK, db, key @ ..] => (*db, key),
        _ => (0, stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_database_and_key_round_trips_to_a_distinct_stored_key() {
        let keys: [&[u8]; 5] = [b"", b"k", b"\xff", b"\xff\x00k", b"\xff\x03k"];
        let mut seen = std::collections::HashSet::new();
        for db in 0..DATABASES {
            for key in keys {
                let stored = db_key(db, key);
                assert_eq!(db_of(&stored), (db, key));
                assert!(seen.insert(stored), "({db}, {key:?}) collides");
            }
        }
        assert_eq!(db_key(0, b":1:user"), b":1:user", "database 0 is the Rust client's keyspace");
    }
}
