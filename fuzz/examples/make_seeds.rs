//! Writes the seed corpora under fuzz/corpus/<target>/ from real data: a log
//! written by the engine, request frames and replies as the wire carries them.
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`

use cachet::protocol::{Bytes, CacheServiceRequest, CacheServiceResponse, Op, OpReply, Ttl, WireError};
use cachet_storage::{Command, Config, Engine, SyncPolicy};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    // A real log: every record type.
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(Config { sync: SyncPolicy::Never, ..Config::new(tmp.path()) }).unwrap();
    let h = engine.handle();
    for cmd in [
        Command::Set { key: b"a".to_vec(), value: b"one".to_vec(), ttl: Ttl::Never },
        Command::Set { key: b"n".to_vec(), value: vec![5], ttl: Ttl::Millis(100_000) },
        Command::Incr { key: b"n".to_vec(), delta: 2 },
        Command::Touch { key: b"a".to_vec(), ttl: Ttl::Millis(50_000) },
        Command::Delete { key: b"n".to_vec() },
        Command::Rename { from: b"a".to_vec(), to: b"b".to_vec() },
    ] {
        h.call_blocking(cmd).unwrap();
    }
    drop(h);
    engine.shutdown().unwrap();
    let log = std::fs::read(tmp.path().join("seg-0000000000000001.log")).unwrap();
    let mut raw = vec![0u8];
    raw.extend_from_slice(&log);
    write("replay", "whole-segment", &raw);
    let mut records = vec![1u8];
    records.extend_from_slice(&log[32..]);
    write("replay", "records-only", &records);

    // Engine op sequences: a few arbitrary byte strings.
    for (i, seed) in [
        &b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"[..],
        b"\x06\x01\x01\x07\x01\x02\x09\xff\xff\x00",
        b"0123456789abcdef",
    ]
    .iter()
    .enumerate()
    {
        write("engine_ops", &format!("seed-{i}"), seed);
    }

    // Request frames as the client sends them.
    let reqs = [
        CacheServiceRequest::Batch { ops: vec![Op::Get(Bytes::from(b":1:k".to_vec()))] },
        CacheServiceRequest::Batch {
            ops: vec![Op::Set(
                Bytes::from(b":1:k".to_vec()),
                Bytes::from(vec![0xa3, b'a', b'b', b'c']),
                Ttl::Millis(300_000),
            )],
        },
        CacheServiceRequest::Hello { token: Some("t".into()) },
    ];
    for (i, req) in reqs.into_iter().enumerate() {
        let msg = tarpc::ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: i as u64,
            message: req,
        });
        let body = rmp_serde::to_vec(&msg).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend(body);
        write("frame_decode", &format!("request-{i}"), &frame);
    }

    // Replies as the server sends them.
    let resps = [
        CacheServiceResponse::Batch(Ok(vec![
            Ok(OpReply::Value(Some(Bytes::from(vec![0x05])))),
            Err(WireError::NotAnInteger),
        ])),
        CacheServiceResponse::GetMany(Ok(vec![None, Some(Bytes::from(b"x".to_vec()))])),
    ];
    for (i, r) in resps.into_iter().enumerate() {
        let msg = tarpc::Response { request_id: i as u64, message: Ok(r) };
        write("client_decode", &format!("response-{i}"), &rmp_serde::to_vec(&msg).unwrap());
    }
    println!("seeds written under fuzz/corpus/");
}
