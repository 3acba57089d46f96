//! Arbitrary bytes on the daemon's request path: length-delimited framing
//! with the server's limit, then MessagePack decoding of a tarpc request.
//! Nothing may panic.
#![no_main]

use bytes::BytesMut;
use cachet::protocol::{CacheServiceRequest, server_max_frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

fuzz_target!(|data: &[u8]| {
    let _ = rmp_serde::from_slice::<tarpc::ClientMessage<CacheServiceRequest>>(data);
    let mut codec = LengthDelimitedCodec::builder().max_frame_length(server_max_frame(16 << 20)).new_codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let _ = rmp_serde::from_slice::<tarpc::ClientMessage<CacheServiceRequest>>(&frame);
    }
});
