//! Arbitrary server replies as the client decodes them: the tarpc response
//! envelope, and cached values read back as common types. Nothing may panic.
#![no_main]

use std::collections::HashMap;

use cachet::protocol::CacheServiceResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cachet::protocol::decode_frame::<tarpc::Response<CacheServiceResponse>>(data);
    let _ = rmp_serde::from_slice::<String>(data);
    let _ = rmp_serde::from_slice::<i64>(data);
    let _ = rmp_serde::from_slice::<serde_bytes::ByteBuf>(data);
    let _ = rmp_serde::from_slice::<HashMap<String, Vec<Option<f64>>>>(data);
    let _ = rmp_serde::from_slice::<(u8, bool, Vec<String>)>(data);
});
