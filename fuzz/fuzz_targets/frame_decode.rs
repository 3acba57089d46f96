//! Arbitrary bytes on the daemon's request path: the framing the daemon
//! reads (`next_frame`, with the server's limit), then its frame decoding.
//! Nothing may panic. (Plain rmp-serde decoding of a tarpc request can
//! panic on a huge deadline: this target found it; the daemon's decoder
//! turns it into an error, and that is what is fuzzed here.)
#![no_main]

use bytes::BytesMut;
use cachet::protocol::{CacheServiceRequest, decode_frame, next_frame, server_max_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<tarpc::ClientMessage<CacheServiceRequest>>(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = next_frame(&mut buf, server_max_frame(16 << 20)) {
        let _ = decode_frame::<tarpc::ClientMessage<CacheServiceRequest>>(&frame);
    }
});
