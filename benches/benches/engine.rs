//! Engine micro-benchmarks: set/get through the channel (1 and 4 submitting
//! threads, many requests in flight so the writer batches), one lookup or
//! overwrite at a time (`lone`, nothing to overlap misses with), replay of a
//! 1M-record log, the record codec, the timer wheel, expiry of 1M entries as
//! the writer does it, and MessagePack values.

use std::time::{Duration, Instant};

use cachet_benches::{key16, value100, write_log};
use cachet_storage::record::{self, Record, SegmentId, Seq};
use cachet_storage::{
    Command, Config, Encoding, Engine, Limits, NullSink, State, SyncPolicy, Ttl, UnixMillis, Wheel, testing,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

// The daemon's allocator, so the figures match what cachetd does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 100_000;
/// The clock, in unix ms, for what runs on a `State` directly.
const NOW: u64 = 1_700_000_000_000;
/// Requests each submitting thread keeps in flight.
const WINDOW: usize = 256;

fn drive(engine: &Engine, threads: u64, ops: u64, get: bool) {
    std::thread::scope(|s| {
        for t in 0..threads {
            let h = engine.handle();
            s.spawn(move || {
                let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
                for i in 0..ops / threads {
                    let k = (i * 7919 + t) % KEYS;
                    let cmd = if get {
                        Command::Get { key: key16(k) }
                    } else {
                        Command::Set { key: key16(k), value: value100(k), ttl: Ttl::Millis(300_000) }
                    };
                    pending.push_back(h.submit(cmd).unwrap());
                    if pending.len() == WINDOW {
                        pending.pop_front().unwrap().blocking_recv().unwrap().unwrap();
                    }
                }
                for rx in pending {
                    rx.blocking_recv().unwrap().unwrap();
                }
            });
        }
    });
}

fn channel_ops(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config { sync: SyncPolicy::EverySec, ..Config::new(dir.path()) }).unwrap();
    drive(&engine, 1, KEYS, false);
    let mut g = c.benchmark_group("engine");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let ops = 200_000;
    g.throughput(Throughput::Elements(ops));
    for threads in [1, 4] {
        g.bench_function(format!("set_{threads}_threads"), |b| b.iter(|| drive(&engine, threads, ops, false)));
        g.bench_function(format!("get_{threads}_threads"), |b| b.iter(|| drive(&engine, threads, ops, true)));
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_1_blocking_roundtrip", |b| {
        let h = engine.handle();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            h.call_blocking(Command::Set { key: key16(i % KEYS), value: value100(i), ttl: Ttl::Never }).unwrap()
        })
    });
    g.finish();
}

/// One lookup at a time, as a connection that waits for each reply gets
/// them (50 x 1): nothing to overlap a lookup's cache misses with. Keys in
/// a pseudo-random order over tables of 100K and 1M entries.
fn lone_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("lone");
    g.throughput(Throughput::Elements(1));
    for keys in [100_000u64, 1_000_000] {
        // No reply budget: it is the writer's, renewed per batch.
        let mut state = State::new(Limits { max_reply_bytes: usize::MAX, ..Limits::default() }, NOW);
        let mut sink = NullSink;
        for k in 0..keys {
            let set = Command::Set { key: key16(k), value: value100(k), ttl: Ttl::Never };
            testing::apply(&mut state, &set, NOW, &mut sink).unwrap();
        }
        let gets: Vec<Command> = (0..keys).map(|k| Command::Get { key: key16(k * 7919 % keys) }).collect();
        let mut i = 0;
        g.bench_function(format!("get_{}k", keys / 1000), |b| {
            b.iter(|| {
                i = (i + 1) % gets.len();
                testing::apply(&mut state, &gets[i], NOW, &mut sink).expect("a get")
            })
        });
        // An overwrite, then the arena's reclaim slice, as the writer runs
        // it between batches (here every batch is one SET): the steady
        // state of a SET load, where reclaim moves live items to free pages.
        let sets: Vec<Command> = (0..keys)
            .map(|k| Command::Set { key: key16(k * 7919 % keys), value: value100(k), ttl: Ttl::Never })
            .collect();
        g.bench_function(format!("set_{}k", keys / 1000), |b| {
            b.iter(|| {
                i = (i + 1) % sets.len();
                testing::apply(&mut state, &sets[i], NOW, &mut sink).expect("a set");
                state.reclaim();
            })
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let n = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), n);
    let bytes: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let mut g = c.benchmark_group("replay");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n));
    // Each open is timed alone and its engine shut before the next: the
    // data directory takes one engine at a time.
    let open = |iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            let engine = Engine::open(Config::new(dir.path())).unwrap();
            total += t.elapsed();
            assert_eq!(engine.replay_report().records, n);
            drop(engine);
        }
        total
    };
    g.bench_function("open_1M_records", |b| b.iter_custom(open));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("open_1M_records_bytes", |b| b.iter_custom(open));
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let (key, value) = (key16(1), value100(1));
    let set = Record::Set { key: &key, value: &value, expires: UnixMillis(0), encoding: Encoding::MessagePack };
    let mut buf = Vec::with_capacity(1 << 20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_set", |b| {
        b.iter(|| {
            if buf.len() > 1 << 19 {
                buf.clear();
            }
            record::encode(&mut buf, SegmentId(1), Seq(1), &set)
        })
    });
    let mut one = Vec::new();
    record::encode(&mut one, SegmentId(1), Seq(1), &set);
    g.bench_function("decode_set", |b| b.iter(|| record::decode(&one, SegmentId(1)).unwrap().2));
    g.finish();
}

fn wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("wheel");
    g.sample_size(10);
    let n = 1_000_000u64;
    g.throughput(Throughput::Elements(n));
    g.bench_function("insert_1M", |b| {
        b.iter_batched(
            || Wheel::<u32>::new(0),
            |mut w| {
                for i in 0..n {
                    w.insert(1 + (i * 2_654_435_761) % 3_600_000, i as u32);
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("insert_and_expire_1M", |b| {
        b.iter(|| {
            let mut w = Wheel::<u32>::new(0);
            for i in 0..n {
                w.insert(1 + (i * 2_654_435_761) % 3_600_000, i as u32);
            }
            let mut out = Vec::with_capacity(n as usize);
            w.poll(3_600_001, |i| Some(1 + (*i as u64 * 2_654_435_761) % 3_600_000), &mut out);
            assert_eq!(out.len(), n as usize);
        })
    });
    g.bench_function("insert_and_cancel_1M", |b| {
        b.iter(|| {
            let mut w = Wheel::<u32>::new(0);
            for i in 0..n {
                w.insert(1 + (i * 2_654_435_761) % 3_600_000, i as u32);
            }
            let mut out = Vec::new();
            // Every timer was cancelled: the poll drops them all.
            w.poll(3_600_001, |_| None, &mut out);
            assert!(out.is_empty());
        })
    });
    g.finish();
}

/// 1M entries with TTLs spread over 300 s (Django's default timeout), set
/// in an order unrelated to their deadlines, as a cache's slots are reused;
/// then the clock moves on 1 ms at a time to past the last deadline, and
/// after each step the writer's expiry call runs with its budget (1000).
/// One element is one entry expired.
fn expiry(c: &mut Criterion) {
    let mut g = c.benchmark_group("expiry");
    g.sample_size(10);
    let n = 1_000_000u64;
    let start = 1_700_000_000_000u64;
    g.throughput(Throughput::Elements(n));
    g.bench_function("steady_1M_over_300s", |b| {
        b.iter_batched(
            || {
                let mut state = State::new(Limits::default(), start);
                for i in 0..n {
                    let ttl = Ttl::Millis(1 + (i * 2_654_435_761) % 300_000);
                    let set = Command::Set { key: key16(i), value: value100(i), ttl };
                    testing::apply(&mut state, &set, start, &mut NullSink).unwrap();
                }
                state
            },
            |mut state| {
                let mut removed = 0;
                for now in start + 1..=start + 300_001 {
                    removed += testing::expire(&mut state, now, 1000);
                }
                assert_eq!(removed, n as usize);
                state
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn msgpack(c: &mut Criterion) {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        email: String,
        tags: Vec<String>,
        score: f64,
    }
    let p = Profile {
        id: 42,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        tags: vec!["a".into(), "b".into()],
        score: 9.5,
    };
    let bytes = rmp_serde::to_vec_named(&p).unwrap();
    let mut g = c.benchmark_group("msgpack");
    g.bench_function("encode_struct", |b| b.iter(|| rmp_serde::to_vec_named(&p).unwrap()));
    g.bench_function("decode_struct", |b| b.iter(|| rmp_serde::from_slice::<Profile>(&bytes).unwrap().id));
    g.bench_function("encode_i64", |b| b.iter(|| rmp_serde::to_vec(&123_456i64).unwrap()));
    g.finish();
}

criterion_group!(benches, channel_ops, lone_ops, replay, codec, wheel, expiry, msgpack);
criterion_main!(benches);
