//! Hit ratio of the engine's S3-FIFO against an exact LRU on a Zipf(0.99)
//! trace over 1M keys with the cache sized at 10% of them, and the eviction
//! throughput. Run: `cargo bench -p cachet-benches --bench evict`.

use std::collections::HashMap;
use std::time::Instant;

use cachet_benches::{Rng, Zipf};
use cachet_storage::{Command, Limits, NullSink, Reply, State, Ttl, testing};

const KEYS: usize = 1_000_000;
const CAPACITY: usize = KEYS / 10;
const REQUESTS: usize = 10_000_000;
const NOW: u64 = 1_700_000_000_000;

/// An exact LRU over key ids: a doubly linked list in a slab, and a map.
struct Lru {
    map: HashMap<u64, usize>,
    nodes: Vec<(u64, usize, usize)>, // key, prev, next
    head: usize,
    tail: usize,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn new() -> Lru {
        Lru { map: HashMap::with_capacity(CAPACITY), nodes: Vec::with_capacity(CAPACITY), head: NIL, tail: NIL }
    }
    fn unlink(&mut self, i: usize) {
        let (_, p, n) = self.nodes[i];
        if p != NIL {
            self.nodes[p].2 = n
        } else {
            self.head = n
        }
        if n != NIL { self.nodes[n].1 = p } else { self.tail = p }
    }
    fn push_front(&mut self, i: usize) {
        self.nodes[i].1 = NIL;
        self.nodes[i].2 = self.head;
        if self.head != NIL {
            self.nodes[self.head].1 = i
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i
        }
    }
    /// Returns whether `key` was a hit; inserts it on a miss.
    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.map.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        let i = if self.nodes.len() < CAPACITY {
            self.nodes.push((key, NIL, NIL));
            self.nodes.len() - 1
        } else {
            let victim = self.tail;
            self.unlink(victim);
            self.map.remove(&self.nodes[victim].0);
            self.nodes[victim].0 = key;
            victim
        };
        self.map.insert(key, i);
        self.push_front(i);
        false
    }
}

fn trace() -> Vec<u64> {
    let z = Zipf::new(KEYS, 0.99);
    let mut rng = Rng::new(42);
    // Ranks are scattered over ids so that hot keys are not also the first inserted.
    (0..REQUESTS).map(|_| (z.sample(rng.unit()) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % KEYS as u64).collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let trace = trace();
    let mut lru = Lru::new();
    let t = Instant::now();
    let lru_hits = trace.iter().filter(|&&k| lru.access(k)).count();
    let lru_time = t.elapsed();

    let mut state = State::new(Limits { max_entries: Some(CAPACITY as u64), ..Limits::default() }, NOW);
    let mut sink = NullSink;
    let mut hits = 0usize;
    let t = Instant::now();
    for &k in &trace {
        let key = k.to_le_bytes().to_vec();
        match testing::apply(&mut state, &Command::Get { key: key.clone() }, NOW, &mut sink).unwrap() {
            Reply::Value(Some(_)) => hits += 1,
            _ => {
                testing::apply(&mut state, &Command::Set { key, value: vec![0; 8], ttl: Ttl::Never }, NOW, &mut sink)
                    .unwrap();
            }
        }
    }
    let s3_time = t.elapsed();
    let evicted = match testing::apply(&mut state, &Command::Stats, NOW, &mut sink).unwrap() {
        Reply::Stats(s) => s.evicted,
        _ => 0,
    };
    println!("Zipf(0.99), {KEYS} keys, {REQUESTS} requests, cache of {CAPACITY} entries:");
    println!(
        "  exact LRU hit ratio: {:.4}  ({:.1} M requests/s)",
        lru_hits as f64 / REQUESTS as f64,
        REQUESTS as f64 / lru_time.as_secs_f64() / 1e6
    );
    println!(
        "  S3-FIFO   hit ratio: {:.4}  (engine core, get + set on miss: {:.2} M requests/s, {evicted} evictions)",
        hits as f64 / REQUESTS as f64,
        REQUESTS as f64 / s3_time.as_secs_f64() / 1e6
    );

    // Eviction throughput: a full cache taking only new keys, so every set evicts.
    let t = Instant::now();
    let n = 1_000_000u64;
    for i in 0..n {
        let key = (u64::MAX - i).to_le_bytes().to_vec();
        testing::apply(&mut state, &Command::Set { key, value: vec![0; 8], ttl: Ttl::Never }, NOW, &mut sink).unwrap();
    }
    println!("  sets into a full cache (each evicts): {:.2} M/s", n as f64 / t.elapsed().as_secs_f64() / 1e6);
}
