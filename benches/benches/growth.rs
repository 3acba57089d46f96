//! The longest single set while the index grows from empty to 3M entries
//! (16-byte keys, 100-byte values), in the engine's core with no I/O: the
//! sets that rebuild the hash table stall the writer, and every request
//! with it, for as long as they take. Prints each set over 2 ms with the
//! entry count at which it came, then the longest. Run:
//! `cargo bench -p cachet-benches --bench growth`.

use std::time::Instant;

use cachet_benches::{key16, value100};
use cachet_storage::{Command, Limits, NullSink, State, Ttl, testing};

fn main() {
    const N: u64 = 3_000_000;
    const NOW: u64 = 1_700_000_000_000;
    let mut state = State::new(Limits::default(), NOW);
    let mut sink = NullSink;
    let mut longest = (0.0, 0);
    let all = Instant::now();
    for i in 0..N {
        let set = Command::Set { key: key16(i), value: value100(i), ttl: Ttl::Never };
        let started = Instant::now();
        testing::apply(&mut state, &set, NOW, &mut sink).expect("a set within the limits");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if ms > 2.0 {
            println!("growth: set at {i} entries took {ms:.1} ms");
        }
        if ms > longest.0 {
            longest = (ms, i);
        }
    }
    let total = all.elapsed().as_secs_f64();
    println!(
        "growth: longest set {:.1} ms, at {} entries, of {N}; {:.0} ns a set on average",
        longest.0,
        longest.1,
        total * 1e9 / N as f64
    );
}
