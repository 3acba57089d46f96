//! Engine operation sequences with clock advances against the model; then
//! the log is cut at an arbitrary byte (a crash) and replayed: the state
//! must equal the model after some prefix of the operations.
#![no_main]

use arbitrary::Arbitrary;
use cachet_storage::testing::Recorder;
use cachet_storage::testing::{Model, error_name, int};
use cachet_storage::{Command, Limits, State, Ttl, testing};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Set(u8, u8, Option<u16>),
    SetInt(u8, i8),
    Add(u8, u8, Option<u16>),
    GetOrAdd(u8, u8),
    Delete(u8),
    Touch(u8, Option<u16>),
    Incr(u8, i8),
    Rename(u8, u8),
    Get(u8),
    Advance(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    cut: u16,
}

const START: u64 = 1_700_000_000_000;

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'0' + k % 6]
}

fn ttl(t: Option<u16>) -> Ttl {
    t.map_or(Ttl::Never, |ms| Ttl::Millis(ms as u64 % 2000))
}

fuzz_target!(|input: Input| {
    if input.ops.len() > 64 {
        return;
    }
    let mut rec = Recorder::new(START);
    let mut model = Model::default();
    let mut now = START;
    // (log length after the op, model then)
    let mut snaps = vec![(rec.segment().len() as u64, model.clone())];
    for op in &input.ops {
        let cmd = match *op {
            Op::Advance(ms) => {
                now += ms as u64;
                continue;
            }
            Op::Set(k, v, t) => Command::Set { key: key(k), value: vec![v; (v % 5) as usize], ttl: ttl(t) },
            Op::SetInt(k, n) => Command::Set { key: key(k), value: int(n as i64), ttl: Ttl::Never },
            Op::Add(k, v, t) => Command::Add { key: key(k), value: vec![v], ttl: ttl(t) },
            Op::GetOrAdd(k, v) => Command::GetOrAdd { key: key(k), value: vec![v], ttl: Ttl::Never },
            Op::Delete(k) => Command::Delete { key: key(k) },
            Op::Touch(k, t) => Command::Touch { key: key(k), ttl: ttl(t) },
            Op::Incr(k, d) => Command::Incr { key: key(k), delta: d as i64 },
            Op::Rename(a, b) => Command::Rename { from: key(a), to: key(b) },
            Op::Get(k) => Command::Get { key: key(k) },
        };
        // A rename writes the new key, then deletes the old one: a cut between
        // the two leaves both, a duplicate and never a loss.
        let before = (rec.segment().len() as u64, model.clone());
        let want = model.apply(&cmd, now);
        let got = rec.apply(&cmd, now);
        if let (Command::Rename { from, to }, Ok(_)) = (&cmd, &got)
            && from != to
        {
            let (len, mut mid) = before;
            let entry = mid.map[from].clone();
            let mid_len = len + cachet_storage::record::set_record_len(to.len(), entry.0.len()) as u64;
            mid.map.insert(to.clone(), entry);
            snaps.push((mid_len, mid));
        }
        match (&want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{cmd:?}"),
            (Err(w), Err(g)) => assert_eq!(*w, error_name(g), "{cmd:?}"),
            _ => panic!("{cmd:?}: model {want:?}, engine {got:?}"),
        }
        snaps.push((rec.segment().len() as u64, model.clone()));
    }
    let bytes = rec.segment();
    let cut = input.cut as usize % (bytes.len() + 1);
    let mut state = State::new(Limits::default(), now);
    testing::replay_files(&[("seg-0000000000000001.log", &bytes[..cut])], &mut state, now)
        .expect("a cut log always opens");
    let mut got: Vec<_> = state.entries(now).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
    got.sort();
    let ok =
        snaps.iter().any(|(len, m)| *len <= cut as u64 && m.live_entries(now) == got) || (cut < 32 && got.is_empty());
    assert!(ok, "cut at {cut} of {} replayed to a state no prefix had: {got:?}", bytes.len());
});
