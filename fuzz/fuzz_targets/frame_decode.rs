//! Arbitrary bytes on the daemon's request path: the framing the daemon
//! reads (`next_frame`, with the server's limit), then its frame decoding
//! and the request's deadline. Nothing may panic. (Plain rmp-serde decoding
//! of a tarpc request can panic on a huge deadline: this target found it;
//! the daemon decodes the deadline as the time left and refuses one out of
//! range, and that is what is fuzzed here.)
#![no_main]

use bytes::BytesMut;
use cachet::protocol::{CacheServiceRequest, Incoming, decode_frame, next_frame, server_max_frame};
use libfuzzer_sys::fuzz_target;

fn decode(frame: &[u8]) {
    if let Ok(m) = decode_frame::<Incoming<CacheServiceRequest>>(frame) {
        let _ = m.into_request(std::time::Instant::now(), tarpc::context::current());
    }
}

fuzz_target!(|data: &[u8]| {
    decode(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = next_frame(&mut buf, server_max_frame(16 << 20)) {
        decode(&frame);
    }
});
