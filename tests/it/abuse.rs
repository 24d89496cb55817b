//! Hostile input on authenticated sockets, sent as raw frames: every case ends in an error
//! message or a close with the right code, never a panic, and memory stays bounded (the
//! daemon answers and keeps serving afterwards).

use std::time::Duration;

use crate::harness::Daemon;
use crate::wsclient::RawClient;

const T: Duration = Duration::from_secs(10);
const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;

async fn channels(d: &Daemon, token: &str) -> RawClient {
    RawClient::handshake(d, &format!("/ws?token={token}")).await
}

/// The daemon still serves a fresh socket and logged no panic.
async fn still_serving(d: &Daemon, token: &str) {
    let mut c = channels(d, token).await;
    let ping = RawClient::frame(true, OP_TEXT, br#"{"type":"ping"}"#, None);
    assert!(c.send_raw(&ping).await, "a fresh socket accepts a message");
    assert!(
        c.read_text_until(T, |t| t.contains("\"pong\"")).await,
        "a fresh socket is answered: {:?}",
        c.texts
    );
    assert!(!d.logs().contains("panicked"), "{}", d.logs());
}

async fn expect_close(c: &mut RawClient, code: u16, what: &str) {
    assert!(
        c.read_until_dropped(T).await,
        "{what}: the connection must end"
    );
    assert_eq!(c.close_code, Some(code), "{what}: close code");
}

#[tokio::test]
async fn a_hundred_thousand_tiny_continuation_frames_close_1009() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let mut c = channels(&d, &token).await;
    // A text message started, then 100,000 one-byte continuations: 100 KB in all, over the
    // 64 KiB limit, in one burst.
    let mut burst = RawClient::frame(false, OP_TEXT, b"[", None);
    let cont = RawClient::frame(false, OP_CONT, b"1", None);
    for _ in 0..100_000 {
        burst.extend_from_slice(&cont);
    }
    c.send_raw(&burst).await;
    expect_close(&mut c, 1009, "100,000 continuation frames").await;
    still_serving(&d, &token).await;
}

#[tokio::test]
async fn a_frame_announcing_exabytes_closes_1009_without_waiting_for_them() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let mut c = channels(&d, &token).await;
    c.send_raw(&RawClient::frame(true, OP_TEXT, b"", Some(1 << 62)))
        .await;
    expect_close(&mut c, 1009, "a 2^62-byte frame header").await;
    still_serving(&d, &token).await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let mut c = channels(&d, &token).await;
    c.send_raw(&RawClient::frame(
        true,
        OP_TEXT,
        b"{\"type\":\"\xff\xfe\"}",
        None,
    ))
    .await;
    expect_close(&mut c, 1007, "invalid UTF-8").await;
    still_serving(&d, &token).await;
}

#[tokio::test]
async fn unmasked_and_reserved_bit_frames_close_1002() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let mut c = channels(&d, &token).await;
    // An unmasked frame: clear the mask bit and drop the key.
    let mut f = RawClient::frame(true, OP_TEXT, b"", None);
    f[1] &= 0x7f;
    f.truncate(2);
    c.send_raw(&f).await;
    expect_close(&mut c, 1002, "an unmasked client frame").await;

    let mut c = channels(&d, &token).await;
    let mut f = RawClient::frame(true, OP_TEXT, b"{}", None);
    f[0] |= 0x40;
    c.send_raw(&f).await;
    expect_close(&mut c, 1002, "a frame with RSV1 set").await;
    still_serving(&d, &token).await;
}

#[tokio::test]
async fn deep_nesting_and_wrong_types_are_invalid_message_and_the_socket_stays_open() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let mut c = channels(&d, &token).await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_object = format!(
        "{{\"type\":\"subscribe\",\"channel\":\"host_status\",\"filters\":{}1{}}}",
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let bad: Vec<String> = vec![
        deep,
        deep_object,
        r#"{"type":5}"#.into(),
        r#"{"type":"subscribe","channel":7}"#.into(),
        r#"{"type":"subscribe","channel":"host_status","filters":"all"}"#.into(),
        r#"{"type":"subscribe","channel":"host_metrics","filters":{"metrics":["cpu_usage"]}}"#
            .into(),
        r#"{"type":"subscribe","channel":"system_alerts","filters":{"severity":[3]}}"#.into(),
        r#"{"type":["subscribe"]}"#.into(),
        "null".into(),
        "\"just a string\"".into(),
        "{\"type\":\"subscribe\"".into(),
    ];
    for (i, msg) in bad.iter().enumerate() {
        c.texts.clear();
        assert!(
            c.send_raw(&RawClient::frame(true, OP_TEXT, msg.as_bytes(), None))
                .await,
            "message {i}: the socket is still open"
        );
        assert!(
            c.read_text_until(T, |t| t.contains("INVALID_MESSAGE"))
                .await,
            "message {i} ({} bytes) gets INVALID_MESSAGE: {:?}",
            msg.len(),
            c.texts
        );
    }
    assert_eq!(c.close_code, None, "the socket stayed open");
    still_serving(&d, &token).await;
}
