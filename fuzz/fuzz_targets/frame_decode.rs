//! Arbitrary bytes on the daemon's request path: length-delimited framing
//! with the server's limit, then the daemon's frame decoding. Nothing may
//! panic. (Plain rmp-serde decoding of a tarpc request can panic on a huge
//! deadline: this target found it; the daemon's decoder turns it into an
//! error, and that is what is fuzzed here.)
#![no_main]

use bytes::BytesMut;
use cachet::protocol::{CacheServiceRequest, decode_frame, server_max_frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<tarpc::ClientMessage<CacheServiceRequest>>(data);
    let mut codec = LengthDelimitedCodec::builder().max_frame_length(server_max_frame(16 << 20)).new_codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let _ = decode_frame::<tarpc::ClientMessage<CacheServiceRequest>>(&frame);
    }
});
