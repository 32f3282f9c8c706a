#![no_main]
//! Option haggling: the pure parsers and state machine, then the same bytes
//! as a real client stream.

use damocles_nbd::wire;
use std::sync::Arc;

use damocles_nbd::{Export, Exports, MemDevice, Negotiator, OptionOutcome, ServerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_export_request(data);
    let _ = wire::parse_meta_context_request(data);
    let _ = wire::parse_string(data);

    // Sans-I/O: [client flags u32] then options as [opt u8][len u8][data].
    if data.len() >= 4 {
        // Two exports, so the empty name is refused and names matter.
        let exports = Exports::new();
        for name in ["x", "y"] {
            let mut e = Export::new(name, Arc::new(MemDevice::new(1 << 20)));
            e.read_only = data[0] & 1 != 0;
            e.description = format!("export {name}");
            let _ = exports.add(e);
        }
        let mut n = Negotiator::new(&ServerConfig::default(), exports);
        if n.client_flags(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
            .is_ok()
        {
            let mut rest = &data[4..];
            let mut out = Vec::new();
            while rest.len() >= 2 {
                let (opt, len) = (u32::from(rest[0]), usize::from(rest[1]).min(rest.len() - 2));
                let body = &rest[2..2 + len];
                rest = &rest[2 + len..];
                out.clear();
                match n.handle_option(opt, body, false, &mut out) {
                    OptionOutcome::Continue => {}
                    _ => break,
                }
            }
        }
    }

    // Stream: the greeting is always sent, whatever the client does.
    let mut stream = damocles_nbd_fuzz::handshake_prefix(false);
    stream.truncate(4);
    stream.extend_from_slice(data);
    let out = damocles_nbd_fuzz::run_stream(&stream);
    assert_eq!(&out[..8], b"NBDMAGIC");
});
