//! Option haggling against the real server over an in-memory pipe.

mod common;

use std::sync::Arc;

use common::*;
use damocles_nbd::wire::*;
use damocles_nbd::{MemDevice, ServerConfig};
use tokio::io::AsyncWriteExt;

fn cfg() -> ServerConfig {
    let mut c = ServerConfig::new("disk");
    c.description = "test disk".into();
    c
}

fn dev() -> Arc<MemDevice> {
    Arc::new(MemDevice::new(MIB))
}

async fn fixed_client() -> (
    Client,
    tokio::task::JoinHandle<Result<(), damocles_nbd::NbdError>>,
) {
    let (mut c, h) = start(dev(), cfg());
    c.greeting().await;
    c.client_flags(FLAG_C_FIXED_NEWSTYLE).await;
    (c, h)
}

fn types(r: &[OptReply]) -> Vec<u32> {
    r.iter().map(|r| r.rep).collect()
}

#[tokio::test]
async fn list_abort_and_unknown_options() {
    let (mut c, h) = fixed_client().await;
    let r = c.opt(OPT_LIST, &[]).await;
    assert_eq!(types(&r), vec![REP_SERVER, REP_ACK]);
    assert_eq!(&r[0].data[0..4], &4u32.to_be_bytes());
    assert_eq!(&r[0].data[4..8], b"disk");
    assert_eq!(&r[0].data[8..], b"test disk");
    assert_eq!(types(&c.opt(OPT_LIST, b"x").await), vec![REP_ERR_INVALID]);
    for o in [OPT_STARTTLS, OPT_EXTENDED_HEADERS, OPT_PEEK_EXPORT, 12345] {
        assert_eq!(
            types(&c.opt(o, b"junk").await),
            vec![REP_ERR_UNSUP],
            "option {o}"
        );
    }
    assert_eq!(
        types(&c.opt(OPT_STRUCTURED_REPLY, b"x").await),
        vec![REP_ERR_INVALID]
    );
    assert_eq!(types(&c.opt(OPT_ABORT, &[]).await), vec![REP_ACK]);
    assert!(c.closed().await);
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn info_replies() {
    let (mut c, _h) = fixed_client().await;
    let r = c
        .opt(
            OPT_INFO,
            &export_request("disk", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77]),
        )
        .await;
    assert_eq!(
        types(&r),
        vec![REP_INFO, REP_INFO, REP_INFO, REP_INFO, REP_ACK]
    );
    let mut seen = std::collections::HashMap::new();
    for i in &r[..4] {
        seen.insert(
            u16::from_be_bytes([i.data[0], i.data[1]]),
            i.data[2..].to_vec(),
        );
    }
    let export = &seen[&INFO_EXPORT];
    assert_eq!(&export[0..8], &MIB.to_be_bytes());
    let flags = u16::from_be_bytes([export[8], export[9]]);
    for f in [
        FLAG_HAS_FLAGS,
        FLAG_SEND_FLUSH,
        FLAG_SEND_FUA,
        FLAG_SEND_TRIM,
        FLAG_SEND_WRITE_ZEROES,
        FLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x}");
    }
    // DF requires structured replies; not negotiated yet.
    assert_eq!(flags & (FLAG_SEND_DF | FLAG_READ_ONLY), 0);
    assert_eq!(seen[&INFO_NAME], b"disk");
    assert_eq!(seen[&INFO_DESCRIPTION], b"test disk");
    let bs = &seen[&INFO_BLOCK_SIZE];
    assert_eq!(bs.len(), 12);
    assert_eq!(&bs[0..4], &1u32.to_be_bytes());
    assert_eq!(&bs[4..8], &4096u32.to_be_bytes());
    assert_eq!(&bs[8..12], &(32u32 << 20).to_be_bytes());

    // Unknown export, malformed payloads.
    assert_eq!(
        types(&c.opt(OPT_INFO, &export_request("nope", &[])).await),
        vec![REP_ERR_UNKNOWN]
    );
    assert_eq!(
        types(&c.opt(OPT_GO, &export_request("nope", &[])).await),
        vec![REP_ERR_UNKNOWN]
    );
    let mut bad = export_request("disk", &[INFO_NAME]);
    bad.pop();
    assert_eq!(types(&c.opt(OPT_INFO, &bad).await), vec![REP_ERR_INVALID]);
    assert_eq!(
        types(&c.opt(OPT_GO, &[0, 0, 0]).await),
        vec![REP_ERR_INVALID]
    );
    // Structured replies switch on DF.
    c.opt(OPT_STRUCTURED_REPLY, &[]).await;
    let r = c.opt(OPT_GO, &export_request("", &[])).await;
    assert_eq!(r.last().unwrap().rep, REP_ACK);
    let flags = u16::from_be_bytes([r[0].data[10], r[0].data[11]]);
    assert_ne!(flags & FLAG_SEND_DF, 0);
}

#[tokio::test]
async fn meta_contexts() {
    let (mut c, _h) = fixed_client().await;
    // Before structured replies: invalid.
    assert_eq!(
        types(
            &c.opt(OPT_LIST_META_CONTEXT, &meta_request("disk", &[]))
                .await
        ),
        vec![REP_ERR_INVALID]
    );
    c.opt(OPT_STRUCTURED_REPLY, &[]).await;
    for q in [
        &[][..],
        &["base:"][..],
        &["base:allocation"][..],
        &["x-foo:bar", "base:"][..],
    ] {
        let r = c.opt(OPT_LIST_META_CONTEXT, &meta_request("", q)).await;
        assert_eq!(types(&r), vec![REP_META_CONTEXT, REP_ACK], "{q:?}");
        assert_eq!(&r[0].data[0..4], &0u32.to_be_bytes());
        assert_eq!(&r[0].data[4..], b"base:allocation");
    }
    let r = c
        .opt(
            OPT_LIST_META_CONTEXT,
            &meta_request("", &["x-foo:bar", "base:nothing"]),
        )
        .await;
    assert_eq!(types(&r), vec![REP_ACK]);
    let r = c
        .opt(OPT_LIST_META_CONTEXT, &meta_request("", &["nocolon"]))
        .await;
    assert_eq!(types(&r), vec![REP_ERR_INVALID]);
    let r = c
        .opt(OPT_LIST_META_CONTEXT, &meta_request("nope", &[]))
        .await;
    assert_eq!(types(&r), vec![REP_ERR_UNKNOWN]);
    let mut trunc = meta_request("", &["base:allocation"]);
    trunc.truncate(trunc.len() - 1);
    assert_eq!(
        types(&c.opt(OPT_SET_META_CONTEXT, &trunc).await),
        vec![REP_ERR_INVALID]
    );
    // SET: "base:" selects nothing; base:allocation gets a nonzero id.
    assert_eq!(
        types(
            &c.opt(OPT_SET_META_CONTEXT, &meta_request("disk", &["base:"]))
                .await
        ),
        vec![REP_ACK]
    );
    let r = c
        .opt(
            OPT_SET_META_CONTEXT,
            &meta_request("disk", &["base:allocation"]),
        )
        .await;
    assert_eq!(types(&r), vec![REP_META_CONTEXT, REP_ACK]);
    assert_eq!(&r[0].data[4..], b"base:allocation");
}

#[tokio::test]
async fn oversized_option_is_skipped() {
    let (mut c, _h) = fixed_client().await;
    let big = vec![7u8; 200 << 10];
    assert_eq!(types(&c.opt(OPT_GO, &big).await), vec![REP_ERR_TOO_BIG]);
    // Framing is preserved: the next option works.
    assert_eq!(
        types(&c.opt(OPT_LIST, &[]).await),
        vec![REP_SERVER, REP_ACK]
    );
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    for no_zeroes in [false, true] {
        let (mut c, _h) = start(dev(), cfg());
        c.greeting().await;
        c.client_flags(FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 })
            .await;
        c.send_opt(OPT_EXPORT_NAME, b"disk").await;
        let mut b = vec![0u8; 10 + if no_zeroes { 0 } else { 124 }];
        tokio::io::AsyncReadExt::read_exact(&mut c.s, &mut b)
            .await
            .unwrap();
        assert_eq!(&b[0..8], &MIB.to_be_bytes());
        assert!(b[10..].iter().all(|&x| x == 0));
        // Transmission works right after.
        assert_eq!(c.write(0, b"hello").await, 0);
        assert_eq!(c.read(0, 5).await.data, b"hello");
    }
}

#[tokio::test]
async fn non_fixed_newstyle_client() {
    // Only EXPORT_NAME is allowed; anything else ends the session.
    let (mut c, h) = start(dev(), cfg());
    c.greeting().await;
    c.client_flags(0).await;
    c.send_opt(OPT_LIST, &[]).await;
    assert!(c.closed().await);
    assert!(h.await.unwrap().is_err());

    let (mut c, _h) = start(dev(), cfg());
    c.greeting().await;
    c.client_flags(0).await;
    c.send_opt(OPT_EXPORT_NAME, b"").await;
    let mut b = vec![0u8; 134];
    tokio::io::AsyncReadExt::read_exact(&mut c.s, &mut b)
        .await
        .unwrap();
    assert_eq!(&b[0..8], &MIB.to_be_bytes());
}

#[tokio::test]
async fn fatal_handshake_errors_close_the_connection() {
    // Unknown client flags.
    let (mut c, h) = start(dev(), cfg());
    c.greeting().await;
    c.client_flags(FLAG_C_FIXED_NEWSTYLE | 0x80).await;
    assert!(c.closed().await);
    assert!(h.await.unwrap().is_err());
    // Bad option magic.
    let (mut c, h) = fixed_client().await;
    c.s.write_all(&[0u8; 16]).await.unwrap();
    assert!(c.closed().await);
    assert!(h.await.unwrap().is_err());
    // EXPORT_NAME of an unknown export cannot be answered: disconnect.
    let (mut c, h) = fixed_client().await;
    c.send_opt(OPT_EXPORT_NAME, b"nope").await;
    assert!(c.closed().await);
    assert!(h.await.unwrap().is_err());
    // EOF before the client flags.
    let (mut c, h) = start(dev(), cfg());
    c.greeting().await;
    drop(c);
    assert!(h.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn handshake_times_out() {
    let mut cfg = cfg();
    cfg.handshake_timeout = std::time::Duration::from_secs(5);
    let (mut c, h) = start(dev(), cfg);
    c.greeting().await;
    let r = h.await.unwrap();
    assert!(
        matches!(r, Err(damocles_nbd::NbdError::HandshakeTimeout)),
        "{r:?}"
    );
}
