//! Hostile-input property tests: arbitrary client byte streams must never
//! panic the server and must always let the connection terminate.

use std::sync::Arc;
use std::time::Duration;

use damocles_nbd::wire::*;
use damocles_nbd::{serve_connection, MemDevice, ServerConfig};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn handshake_prefix(structured: bool) -> Vec<u8> {
    let mut v = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let mut opt = |o: u32, d: &[u8]| {
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&o.to_be_bytes());
        v.extend_from_slice(&(d.len() as u32).to_be_bytes());
        v.extend_from_slice(d);
    };
    if structured {
        opt(OPT_STRUCTURED_REPLY, &[]);
        let mut m = 0u32.to_be_bytes().to_vec();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        opt(OPT_SET_META_CONTEXT, &m);
    }
    opt(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    v
}

/// Run the server against `input` and return what it sent back.
fn run(input: Vec<u8>) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut cfg = ServerConfig::new("");
        cfg.max_request = 1 << 16;
        cfg.max_inflight_bytes = 1 << 17;
        cfg.handshake_timeout = Duration::from_secs(5);
        let srv = tokio::spawn(serve_connection(
            server,
            Arc::new(MemDevice::new(1 << 20)),
            Arc::new(cfg),
        ));
        let (mut r, mut w) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out).await;
            out
        });
        // The server may hang up early; that is fine.
        let _ = w.write_all(&input).await;
        let _ = w.shutdown().await;
        let res = tokio::time::timeout(Duration::from_secs(20), srv).await;
        let joined = res.expect("server did not terminate");
        assert!(joined.is_ok(), "server task panicked: {joined:?}");
        drop(w);
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("reader hung")
            .unwrap()
    })
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        0u16..10,
        prop_oneof![
            Just(0u16),
            Just(CMD_FLAG_FUA),
            Just(CMD_FLAG_NO_HOLE),
            Just(CMD_FLAG_DF),
            Just(CMD_FLAG_REQ_ONE),
            any::<u16>()
        ],
        prop_oneof![Just(0u64), 0u64..(1 << 20) + 10, any::<u64>()],
        prop_oneof![
            Just(0u32),
            0u32..5000,
            (1u32 << 20) - 10..(1 << 20) + 10,
            any::<u32>()
        ],
        any::<u64>(),
    )
        .prop_map(|(cmd, flags, offset, len, cookie)| {
            let h = RequestHeader {
                flags,
                command: cmd,
                cookie,
                offset,
                len,
            };
            let mut v = encode_request_header(&h).to_vec();
            if cmd == CMD_WRITE && len <= 8192 {
                v.resize(v.len() + len as usize, 0xa5);
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        run(bytes);
    }

    #[test]
    fn random_options(opts in proptest::collection::vec((0u32..14, proptest::collection::vec(any::<u8>(), 0..64)), 0..8), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut v = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        for (o, d) in opts {
            v.extend_from_slice(&IHAVEOPT.to_be_bytes());
            v.extend_from_slice(&o.to_be_bytes());
            v.extend_from_slice(&(d.len() as u32).to_be_bytes());
            v.extend_from_slice(&d);
        }
        v.extend_from_slice(&tail);
        let out = run(v);
        // The greeting always goes out first.
        prop_assert_eq!(&out[..8], b"NBDMAGIC");
    }

    #[test]
    fn random_requests(structured in any::<bool>(), reqs in proptest::collection::vec(request(), 0..24), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut v = handshake_prefix(structured);
        for r in reqs {
            v.extend_from_slice(&r);
        }
        v.extend_from_slice(&tail);
        run(v);
    }
}

#[test]
fn harness_reaches_transmission() {
    // Guards the property tests above: a valid read after the prefix is answered.
    for structured in [false, true] {
        let mut v = handshake_prefix(structured);
        let h = RequestHeader {
            flags: 0,
            command: CMD_READ,
            cookie: 0x5151,
            offset: 0,
            len: 8,
        };
        v.extend_from_slice(&encode_request_header(&h));
        let out = run(v);
        let magic = if structured {
            STRUCTURED_REPLY_MAGIC
        } else {
            SIMPLE_REPLY_MAGIC
        };
        let tail = &out[out.len() - if structured { 36 } else { 24 }..];
        assert_eq!(&tail[..4], &magic.to_be_bytes());
        assert!(out.windows(8).any(|w| w == 0x5151u64.to_be_bytes()));
    }
}
