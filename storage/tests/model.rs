//! The engine against a plain model: random operation sequences with random
//! clock advances, compared after every step, then closed, reopened (replay)
//! and compared again.

mod support;

use cachet_storage::{Command, Config, Engine, ManualClock, Reply, SyncPolicy, Ttl, UnixMillis};
use proptest::prelude::*;
use std::sync::Arc;
use support::{Model, error_name, int};

#[derive(Clone, Debug)]
enum Step {
    Op(Command),
    Advance(u64),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    (0u8..8).prop_map(|k| vec![b'k', b'0' + k])
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![(-3i64..3).prop_map(int), Just(int(i64::MAX)), prop::collection::vec(any::<u8>(), 0..12),]
}

fn ttl() -> impl Strategy<Value = Ttl> {
    prop_oneof![Just(Ttl::Never), Just(Ttl::Millis(0)), (1u64..3000).prop_map(Ttl::Millis)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::Set { key, value, ttl })),
        2 => key().prop_map(|key| Step::Op(Command::Get { key })),
        1 => prop::collection::vec(key(), 0..4).prop_map(|keys| Step::Op(Command::GetMany { keys })),
        1 => (prop::collection::vec((key(), value()), 0..4), ttl()).prop_map(|(items, ttl)| Step::Op(Command::SetMany { items, ttl })),
        1 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::Add { key, value, ttl })),
        1 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::GetOrAdd { key, value, ttl })),
        1 => key().prop_map(|key| Step::Op(Command::Delete { key })),
        1 => prop::collection::vec(key(), 0..4).prop_map(|keys| Step::Op(Command::DeleteMany { keys })),
        1 => (key(), ttl()).prop_map(|(key, ttl)| Step::Op(Command::Touch { key, ttl })),
        2 => (key(), -2i64..3).prop_map(|(key, delta)| Step::Op(Command::Incr { key, delta })),
        1 => key().prop_map(|key| Step::Op(Command::HasKey { key })),
        1 => (key(), key()).prop_map(|(from, to)| Step::Op(Command::Rename { from, to })),
        1 => Just(Step::Op(Command::Clear)),
        3 => (0u64..2000).prop_map(Step::Advance),
    ]
}

const START: u64 = 1_700_000_000_000;

fn dump(engine: &Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    // Every key the model could hold, read back through the engine.
    let keys: Vec<Vec<u8>> = (0u8..8).map(|k| vec![b'k', b'0' + k]).collect();
    match engine.handle().call_blocking(Command::GetMany { keys: keys.clone() }).unwrap() {
        Reply::Values(vs) => keys.into_iter().zip(vs).filter_map(|(k, v)| v.map(|v| (k, v))).collect(),
        r => panic!("{r:?}"),
    }
}

fn model_dump(model: &Model, now: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    model.live_entries(now).into_iter().map(|(k, v, _)| (k, v)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model_and_survives_reopen(steps in prop::collection::vec(step(), 1..120), segment_bytes in prop_oneof![Just(200u64), Just(64 << 20)]) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(UnixMillis(START));
        let config = Config { sync: SyncPolicy::Never, segment_bytes, ..Config::new(dir.path()) };
        let engine = Engine::open_with(config.clone(), Arc::new(clock.clone()), |_| {}).unwrap();
        let mut model = Model::default();
        let mut now = START;
        for step in &steps {
            match step {
                Step::Advance(ms) => {
                    now += ms;
                    clock.advance(*ms);
                }
                Step::Op(cmd) => {
                    let want = model.apply(cmd, now);
                    let got = engine.handle().call_blocking(cmd.clone());
                    match (want, got) {
                        (Ok(w), Ok(g)) => prop_assert_eq!(w, g, "{:?}", cmd),
                        (Err(w), Err(g)) => prop_assert_eq!(w, error_name(&g), "{:?}", cmd),
                        (w, g) => prop_assert!(false, "{:?}: model {:?}, engine {:?}", cmd, w, g),
                    }
                }
            }
            prop_assert_eq!(dump(&engine), model_dump(&model, now));
        }
        engine.shutdown().unwrap();
        let engine = Engine::open_with(config, Arc::new(clock.clone()), |_| {}).unwrap();
        prop_assert_eq!(dump(&engine), model_dump(&model, now));
        // Time moves on after the restart: expiries still hold.
        clock.advance(5000);
        prop_assert_eq!(dump(&engine), model_dump(&model, now + 5000));
    }
}
