//! The RESP request parser (`daemon/src/front/resp/parse.rs`, included
//! as is): no input crashes it or makes it allocate past its bounds, and
//! the commands it finds do not depend on how the bytes were split into
//! reads. Seeded with real redis-cli and redis-py traffic
//! (`capture_resp_seeds.sh`).

#![no_main]

#[path = "../../daemon/src/front/resp/parse.rs"]
#[allow(dead_code)]
mod parse;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use parse::{Bounds, next_command};

const BOUNDS: Bounds = Bounds { max_bulk: 4096, max_args: 64, max_command: 16 << 10 };

/// Every command in `input` fed in pieces of `step` bytes, until the end or
/// the first protocol error.
fn commands(input: &[u8], step: usize) -> (Vec<Vec<Bytes>>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match next_command(&mut buf, &BOUNDS) {
                Ok(Some(cmd)) => {
                    assert!(!cmd.is_empty() && cmd.len() <= BOUNDS.max_args.max(1 << 16));
                    assert!(cmd.iter().all(|a| a.len() <= BOUNDS.max_bulk.max(64 << 10)));
                    out.push(cmd);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.starts_with("Protocol error"), "{e}");
                    return (out, true);
                }
            }
        }
        assert!(buf.len() <= BOUNDS.max_command + input.len().min(64 << 10), "buffer grew past its bound");
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let whole = commands(input, input.len());
    let pieces = commands(input, usize::from(split % 17) + 1);
    // Split reads find the same commands as one read; an error may only
    // show earlier when the bytes arrive whole (a bound on an unfinished
    // command is checked once it is all there).
    let n = whole.0.len().min(pieces.0.len());
    assert_eq!(whole.0[..n], pieces.0[..n]);
    if !whole.1 && !pieces.1 {
        assert_eq!(whole.0, pieces.0);
    }
});
