//! The engine against a plain model: random operation sequences with random
//! clock advances, compared after every step, then closed, reopened (replay)
//! and compared again.

use cachet_storage::testing::{Model, error_name, int};
use cachet_storage::{
    Command, Config, Engine, ExpireWhen, Expiry, Limits, ManualClock, Reply, SyncPolicy, Ttl, UnixMillis, When,
};
use proptest::prelude::*;
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Step {
    Op(Command),
    Advance(u64),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    (0u8..8).prop_map(|k| vec![b'k', b'0' + k])
}

/// Mostly the usual keys, sometimes one over the default key limit, so an
/// item refused (or accepted) by mistake shows.
fn item_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![5 => key(), 1 => Just(vec![b'x'; 1025])]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (-3i64..3).prop_map(int),
        Just(int(i64::MAX)),
        prop::collection::vec(any::<u8>(), 0..12),
        // Counters kept as decimal text (RESP's INCR), canonical or not.
        (-3i64..3).prop_map(|n| n.to_string().into_bytes()),
        Just(i64::MAX.to_string().into_bytes()),
        Just(b"01".to_vec()),
    ]
}

fn ttl() -> impl Strategy<Value = Ttl> {
    prop_oneof![Just(Ttl::Never), Just(Ttl::Millis(0)), (1u64..3000).prop_map(Ttl::Millis)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::Set { key, value, ttl })),
        2 => key().prop_map(|key| Step::Op(Command::Get { key })),
        1 => prop::collection::vec(key(), 0..4).prop_map(|keys| Step::Op(Command::GetMany { keys })),
        1 => (prop::collection::vec((item_key(), value()), 0..4), ttl()).prop_map(|(items, ttl)| Step::Op(Command::SetMany { items, ttl })),
        1 => (item_key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::Set { key, value, ttl })),
        1 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::Add { key, value, ttl })),
        1 => (key(), value(), ttl()).prop_map(|(key, value, ttl)| Step::Op(Command::GetOrAdd { key, value, ttl })),
        1 => key().prop_map(|key| Step::Op(Command::Delete { key })),
        1 => prop::collection::vec(key(), 0..4).prop_map(|keys| Step::Op(Command::DeleteMany { keys })),
        1 => (key(), ttl()).prop_map(|(key, ttl)| Step::Op(Command::Touch { key, ttl })),
        2 => (key(), -2i64..3).prop_map(|(key, delta)| Step::Op(Command::Incr { key, delta })),
        1 => key().prop_map(|key| Step::Op(Command::HasKey { key })),
        1 => key().prop_map(|key| Step::Op(Command::GetWithTtl { key })),
        1 => (key(), key()).prop_map(|(from, to)| Step::Op(Command::Rename { from, to })),
        1 => Just(Step::Op(Command::Clear)),
        1 => (item_key(), value(), expiry(), when(), any::<bool>())
            .prop_map(|(key, value, expiry, when, get)| Step::Op(Command::SetWith { key, value, expiry, when, get })),
        1 => key().prop_map(|key| Step::Op(Command::GetDel { key })),
        1 => key().prop_map(|key| Step::Op(Command::Ttl { key })),
        1 => (key(), ttl(), expire_when()).prop_map(|(key, ttl, when)| Step::Op(Command::Expire { key, ttl, when })),
        1 => key().prop_map(|key| Step::Op(Command::Persist { key })),
        2 => (key(), prop_oneof![-2i64..3, Just(i64::MAX)]).prop_map(|(key, delta)| Step::Op(Command::IncrText { key, delta })),
        1 => (prop::collection::vec((item_key(), value()), 0..3), ttl())
            .prop_map(|(items, ttl)| Step::Op(Command::SetManyIfAbsent { items, ttl })),
        1 => prop_oneof![Just(b"k".to_vec()), Just(b"k1".to_vec()), Just(b"x".to_vec())]
            .prop_map(|prefix| Step::Op(Command::ClearPrefix { prefix })),
        1 => (0u8..2).prop_map(|db| Step::Op(Command::ClearDb { db })),
        1 => Just(Step::Op(Command::DbSizes)),
        3 => (0u64..2000).prop_map(Step::Advance),
    ]
}

fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![ttl().prop_map(Expiry::Ttl), Just(Expiry::Keep)]
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![Just(When::Always), Just(When::Absent), Just(When::Present)]
}

fn expire_when() -> impl Strategy<Value = ExpireWhen> {
    prop_oneof![
        Just(ExpireWhen::Always),
        Just(ExpireWhen::NoExpiry),
        Just(ExpireWhen::HasExpiry),
        Just(ExpireWhen::Later),
        Just(ExpireWhen::Sooner),
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
    fn engine_matches_model_and_survives_reopen(
        steps in prop::collection::vec(step(), 1..120),
        segment_bytes in prop_oneof![Just(200u64), Just(64 << 20)],
        // Tiny arena pages make reclaim move items between almost every
        // pair of commands (and values over a quarter page get their own).
        arena_page_bytes in prop_oneof![Just(None), Just(Some(64usize)), Just(Some(256usize))],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(UnixMillis(START));
        let config = Config { sync: SyncPolicy::Never, segment_bytes, arena_page_bytes, ..Config::new(dir.path()) };
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

/// What the model expects of an engine that evicts: the model forgets a key
/// the engine evicted, but remembers its last value, which a restart may
/// bring back only as long as nothing wrote or deleted the key since.
#[derive(Default)]
struct EvictingModel {
    model: Model,
    /// Last value (and expiry) of keys evicted and not written since.
    evicted: std::collections::HashMap<Vec<u8>, (Vec<u8>, u64)>,
}

fn keys_of(cmd: &Command) -> Vec<Vec<u8>> {
    if let Some(key) = cmd.key() {
        return vec![key.to_vec()];
    }
    match cmd {
        Command::GetMany { keys } | Command::DeleteMany { keys } => keys.clone(),
        Command::SetMany { items, .. } | Command::SetManyIfAbsent { items, .. } => {
            items.iter().map(|(k, _)| k.clone()).collect()
        }
        Command::Rename { from, to } => vec![from.clone(), to.clone()],
        Command::Clear
        | Command::Stats
        | Command::Scan { .. }
        | Command::ClearPrefix { .. }
        | Command::ClearDb { .. }
        | Command::DbSizes
        | Command::SetCaps { .. } => vec![],
        // A command that names one key answered above; a new command on
        // several keys must be listed here.
        other => unreachable!("keys_of does not know {other:?}"),
    }
}

fn all_keys() -> Vec<Vec<u8>> {
    (0u8..8).map(|k| vec![b'k', b'0' + k]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With a cap that evicts, the engine answers as the model does once the
    /// model forgets what was evicted; after a restart (with the same cap, or
    /// none) no key has a value it should not: a deleted or overwritten key
    /// never comes back, and without a cap nothing the model holds is lost.
    #[test]
    fn evicting_engine_never_resurrects(
        steps in prop::collection::vec(step(), 1..150),
        cap_again in any::<bool>(),
        arena_page_bytes in prop_oneof![Just(None), Just(Some(64usize))],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(UnixMillis(START));
        let capped = Limits { max_entries: Some(3), ..Limits::default() };
        let config =
            Config { sync: SyncPolicy::Never, segment_bytes: 300, limits: capped, arena_page_bytes, ..Config::new(dir.path()) };
        let engine = Engine::open_with(config.clone(), Arc::new(clock.clone()), |_| {}).unwrap();
        let h = engine.handle();
        let mut m = EvictingModel::default();
        let mut now = START;
        for step in &steps {
            let cmd = match step {
                Step::Advance(ms) => {
                    now += ms;
                    clock.advance(*ms);
                    continue;
                }
                Step::Op(cmd) => cmd,
            };
            // Forget what the engine evicted (has_key changes no eviction state).
            for key in all_keys() {
                let present = matches!(h.call_blocking(Command::HasKey { key: key.clone() }), Ok(Reply::Bool(true)));
                if !present && let Some(entry) = m.model.map.remove(&key) && (entry.1 == 0 || entry.1 > now) {
                    m.evicted.insert(key, entry);
                }
            }
            let before = m.model.clone();
            let want = m.model.apply(cmd, now);
            let got = h.call_blocking(cmd.clone());
            // Whether the command replaced or removed the key's value (a
            // conditional write that did not apply leaves the log as it was).
            let wrote = match &got {
                Ok(Reply::Swapped { stored, .. }) => *stored,
                Ok(Reply::Bool(applied)) if matches!(cmd, Command::SetManyIfAbsent { .. }) => *applied,
                r => r.is_ok(),
            };
            match (want, got) {
                // Making room for the new key evicted the one being renamed.
                (Ok(_), Err(cachet_storage::Error::NotFound)) if matches!(cmd, Command::Rename { .. }) => {
                    m.model = before;
                    if let Command::Rename { from, .. } = cmd
                        && let Some(entry) = m.model.map.remove(from)
                    {
                        m.evicted.insert(from.clone(), entry);
                    }
                    continue;
                }
                (Ok(w), Ok(g)) => prop_assert_eq!(w, g, "{:?}", cmd),
                (Err(w), Err(g)) => prop_assert_eq!(w, error_name(&g), "{:?}", cmd),
                (w, g) => prop_assert!(false, "{:?}: model {:?}, engine {:?}", cmd, w, g),
            }
            // A write, delete or clear supersedes an evicted key's old record.
            match cmd {
                Command::Clear => m.evicted.clear(),
                Command::ClearPrefix { prefix } => m.evicted.retain(|k, _| !k.starts_with(prefix)),
                Command::ClearDb { db } => m.evicted.retain(|k, _| cachet_storage::keyspace::db_of(k).0 != *db),
                c if wrote
                    && c.is_write()
                    && !matches!(
                        c,
                        Command::Touch { .. } | Command::Incr { .. } | Command::Expire { .. } | Command::Persist { .. }
                    ) =>
                {
                    let keys = match c { Command::Rename { to, .. } => vec![to.clone()], c => keys_of(c) };
                    for k in keys {
                        m.evicted.remove(&k);
                    }
                }
                _ => {}
            }
        }
        drop(h);
        engine.shutdown().unwrap();
        let limits = if cap_again { capped } else { Limits::default() };
        let engine = Engine::open_with(Config { limits, ..config }, Arc::new(clock.clone()), |_| {}).unwrap();
        for (key, value) in dump(&engine) {
            let live = |e: &(Vec<u8>, u64)| e.1 == 0 || e.1 > now;
            let allowed = m.model.map.get(&key).filter(|e| live(e)).or(m.evicted.get(&key).filter(|e| live(e)));
            prop_assert_eq!(allowed.map(|e| &e.0), Some(&value), "{:?} came back after a restart", key);
        }
        if !cap_again {
            let back: std::collections::HashMap<_, _> = dump(&engine).into_iter().collect();
            for (key, value, _) in m.model.live_entries(now) {
                prop_assert_eq!(back.get(&key), Some(&value), "{:?} was lost", key);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The core with tiny arena pages, reclaiming after every command (as
    /// the writer does between batches), against the model; then its log
    /// replayed into a state with tiny pages too (replay reclaims as it
    /// goes) holds the same entries.
    #[test]
    fn reclaim_moves_nothing_it_should_not(steps in prop::collection::vec(step(), 1..200), page in prop_oneof![Just(64usize), Just(128usize), Just(4096usize)]) {
        let mut rec = cachet_storage::testing::Recorder::with_page_bytes(START, page);
        let mut model = Model::default();
        let mut now = START;
        for step in &steps {
            match step {
                Step::Advance(ms) => now += ms,
                Step::Op(cmd) => {
                    let want = model.apply(cmd, now);
                    match (want, rec.apply(cmd, now)) {
                        (Ok(w), Ok(g)) => prop_assert_eq!(w, g, "{:?}", cmd),
                        (Err(w), Err(g)) => prop_assert_eq!(w, error_name(&g), "{:?}", cmd),
                        (w, g) => prop_assert!(false, "{:?}: model {:?}, core {:?}", cmd, w, g),
                    }
                }
            }
            let got: Vec<_> = rec.state.entries(now).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
            let mut got = got;
            got.sort();
            prop_assert_eq!(got, model.live_entries(now));
        }
        let mut again = cachet_storage::State::with_page_bytes(Limits::default(), now, page);
        cachet_storage::testing::replay_files(&[("seg-0000000000000001.log", rec.segment())], &mut again, now).unwrap();
        let mut got: Vec<_> = again.entries(now).map(|(k, v, e)| (k.to_vec(), v.to_vec(), e)).collect();
        got.sort();
        prop_assert_eq!(got, model.live_entries(now));
    }
}
