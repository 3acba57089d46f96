//! Placing keys on servers by rendezvous (highest-random-weight) hashing:
//! each key goes to the server with the highest `hash(server, key)`, so
//! adding or removing one of N servers moves only about 1/N of the keys.
//!
//! The hash is 64-bit FNV-1a over the server address, a 0xff separator (a
//! byte no UTF-8 string contains) and the full key, finished with a
//! splitmix64 mix for avalanche. It is defined here byte by byte, so it is
//! the same in every process, version and platform (std's hasher is not).

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

pub(crate) fn score(server: &str, key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in server.as_bytes().iter().chain(std::iter::once(&0xff)).chain(key) {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    // splitmix64 finalizer
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Index of the server a key belongs to.
pub(crate) fn pick(servers: &[impl AsRef<str>], key: &[u8]) -> usize {
    if servers.len() == 1 {
        return 0;
    }
    (0..servers.len())
        .max_by_key(|&i| (score(servers[i].as_ref(), key), std::cmp::Reverse(i)))
        .expect("at least one server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_vectors() {
        // These values are part of the placement contract: changing them
        // moves keys between servers in every deployment.
        let v = [score("a", b""), score("127.0.0.1:7311", b":1:k"), score("unix:/run/cachet.sock", b"x:2:y")];
        assert_eq!(v, FIXED);
    }

    const FIXED: [u64; 3] = [0x193f_1020_af07_6db5, 0x7daa_feb2_81d7_3e39, 0x2e80_6f92_8cdd_07b1];

    #[test]
    fn spreads_evenly_and_moves_a_third() {
        let three = ["10.0.0.1:7311", "10.0.0.2:7311", "10.0.0.3:7311"];
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!(":1:key{i}");
            let a = pick(&three, key.as_bytes());
            counts[a] += 1;
            let b = pick(&three[..2], key.as_bytes());
            if a < 2 {
                assert_eq!(a, b, "a key not on the removed server moved");
            } else {
                moved += 1;
            }
        }
        for c in counts {
            assert!((3000..3667).contains(&c), "{counts:?}");
        }
        assert!((3000..3667).contains(&moved));
    }
}
