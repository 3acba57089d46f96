//! Arbitrary bytes as a data directory's segments: replay must never panic
//! or over-allocate, and every value it yields must be bytes that a record
//! with a valid CRC carried (so they appear in the input).
#![no_main]

use cachet_storage::record::{SegmentId, segment_header};
use cachet_storage::{Limits, State, testing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // Up to three segments, split at 0xfe; with mode bit 0, each gets a
    // valid header so that fuzzing reaches the records.
    // A fourth part, if any, is the MANIFEST (its parser and the checks of
    // the segments against it are fuzzed too).
    for (i, part) in rest.split(|b| *b == 0xfe).take(4).enumerate() {
        if i == 3 {
            files.push(("MANIFEST".into(), part.to_vec()));
            break;
        }
        let id = SegmentId(u32::try_from(i).expect("at most 3 segments") + 1);
        let mut bytes = if mode & 1 == 1 { segment_header(id).to_vec() } else { Vec::new() };
        bytes.extend_from_slice(part);
        files.push((format!("seg-{:016}.log", id.0), bytes));
    }
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let now = 1_700_000_000_000;
    let mut state =
        State::new(Limits { max_key_bytes: usize::MAX, max_value_bytes: usize::MAX, ..Limits::default() }, now);
    if testing::replay_files(&files, &mut state, now).is_ok() {
        for (key, value, _) in state.entries(now) {
            assert!(contains(rest, key) && contains(rest, value), "replay yielded bytes no record carried");
        }
    }
});

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
