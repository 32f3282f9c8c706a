#![no_main]
//! Transmission phase: arbitrary request streams after a valid handshake.

use damocles_nbd::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks_exact(wire::REQUEST_HEADER_LEN) {
        let _ = wire::parse_request_header(chunk.try_into().unwrap());
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = damocles_nbd_fuzz::handshake_prefix(mode & 1 != 0);
    // Optionally fix up the magic of each header so more inputs get past framing.
    if mode & 2 != 0 {
        let mut fixed = rest.to_vec();
        for h in fixed.chunks_mut(wire::REQUEST_HEADER_LEN) {
            if h.len() >= 4 {
                h[..4].copy_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
            }
        }
        stream.extend_from_slice(&fixed);
    } else {
        stream.extend_from_slice(rest);
    }
    damocles_nbd_fuzz::run_stream(&stream);
});
