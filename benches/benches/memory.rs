//! Memory per entry, measured with a counting allocator plus the maps the
//! index makes outside the heap (arena pages, hash table): the bytes the
//! engine's state holds for N entries with 16-byte keys and 100-byte values,
//! divided by N; and under a `max_memory` cap, flooded with several times
//! the cap in sets, what the state really holds against the cap. Run:
//! `cargo bench -p cachet-benches --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cachet_benches::{key16, value100};
use cachet_storage::{Command, Limits, NullSink, State, Ttl, testing};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn measure(n: u64, ttl: Ttl) -> (f64, usize, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut state = State::new(Limits::default(), 1_700_000_000_000);
    let mut sink = NullSink;
    for i in 0..n {
        testing::apply(
            &mut state,
            &Command::Set { key: key16(i), value: value100(i), ttl },
            1_700_000_000_000,
            &mut sink,
        )
        .unwrap();
    }
    // Arena pages are maps of their own, outside the allocator.
    let (mapped, arena_used) = state.mapped_bytes();
    let held = LIVE.load(Ordering::Relaxed) - before + mapped;
    let reported = state.memory_bytes();
    drop(state);
    (held as f64 / n as f64, reported, arena_used)
}

/// Floods a state capped at `cap` bytes with sets of `size`-byte values
/// over four times the cap in keys, reclaiming every 64 sets (as the
/// writer does between batches); returns what `max_memory` counts and
/// what the state holds (heap plus arena pages), both over the cap.
fn capped(cap: u64, size: usize) -> (f64, f64) {
    let before = LIVE.load(Ordering::Relaxed);
    let limits = Limits { max_memory: Some(cap), ..Limits::default() };
    let mut state = State::new(limits, 1_700_000_000_000);
    let mut sink = NullSink;
    let keys = cap as usize * 4 / (size + 64);
    let value = vec![7u8; size];
    for i in 0..keys * 3 {
        // A permutation-like walk over the keys, so sets mix inserts and overwrites.
        let k = (i * 7_919) % keys;
        let cmd = Command::Set { key: format!("key:{k:012}").into_bytes(), value: value.clone(), ttl: Ttl::Never };
        testing::apply(&mut state, &cmd, 1_700_000_000_000, &mut sink).unwrap();
        if i % 64 == 63 {
            state.reclaim();
        }
    }
    let (mapped, _) = state.mapped_bytes();
    let held = LIVE.load(Ordering::Relaxed) - before + mapped;
    let counted = state.memory_bytes();
    drop(state);
    (counted as f64 / cap as f64, held as f64 / cap as f64)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for n in [100_000u64, 1_000_000] {
        for (name, ttl) in [("no expiry", Ttl::Never), ("300 s TTL", Ttl::Millis(300_000))] {
            let (per, reported, arena) = measure(n, ttl);
            println!(
                "memory: {n} entries, 16-byte keys, 100-byte values, {name}: {per:.1} bytes/entry allocated \
                 (key+value = 116; arena items {:.1}), engine reports {:.1}",
                arena as f64 / n as f64,
                reported as f64 / n as f64
            );
        }
    }
    let cap = 64u64 << 20;
    for size in [100usize, 1024, 65536] {
        let (counted, held) = capped(cap, size);
        println!(
            "memory: max_memory 64 MiB, a flood of {size}-byte values: max_memory counts {counted:.2}x the cap, \
             the state holds {held:.2}x"
        );
    }
}
