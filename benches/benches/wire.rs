//! The daemon's decoding of one tarpc request frame (a batch of one GET, as
//! the client sends a lone call): tarpc's own `ClientMessage`, which reads
//! the clock while decoding the deadline, against cachet's `Incoming`, which
//! keeps the time left and adds it to one clock reading per round.
//! Run: `cargo bench -p cachet-benches --bench wire`.

use std::time::{Duration, Instant};

use cachet::protocol::{Bytes, CacheServiceRequest, Incoming, Op, decode_frame};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// The daemon's allocator, so the figures match what cachetd does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn frame() -> Vec<u8> {
    let mut context = tarpc::context::current();
    context.deadline = Instant::now() + Duration::from_secs(10);
    let message = CacheServiceRequest::Batch { ops: vec![Op::Get(Bytes::from_static(b"key:000000012345"))] };
    rmp_serde::to_vec(&tarpc::ClientMessage::Request(tarpc::Request { context, id: 12345, message }))
        .expect("a request encodes")
}

fn decode(c: &mut Criterion) {
    let frame = frame();
    let mut g = c.benchmark_group("decode_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tarpc_client_message", |b| {
        b.iter(|| match rmp_serde::from_slice::<tarpc::ClientMessage<CacheServiceRequest>>(&frame).expect("decodes") {
            tarpc::ClientMessage::Request(r) => r.context.deadline > Instant::now(),
            _ => false,
        })
    });
    let base = tarpc::context::current();
    g.bench_function("incoming", |b| {
        let now = Instant::now();
        b.iter(|| {
            let m = decode_frame::<Incoming<CacheServiceRequest>>(&frame).expect("decodes");
            m.into_request(now, base).expect("in range").is_some_and(|r| r.context.deadline > now)
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
