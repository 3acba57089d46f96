//! Memory per entry, measured with a counting allocator: the bytes the
//! engine's state holds for N entries with 16-byte keys and 100-byte values,
//! divided by N. Run: `cargo bench -p cachet-benches --bench memory`.

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
    let (arena_held, arena_used) = state.arena_bytes();
    let held = LIVE.load(Ordering::Relaxed) - before + arena_held;
    let reported = state.memory_bytes();
    drop(state);
    (held as f64 / n as f64, reported, arena_used)
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
}
