//! `/ws/echo` (only with `ws.test_echo`): every text or binary message is sent back as it
//! came, through the same framing, limits and close handling as every API. It exists so that
//! the Autobahn conformance cases (`tests/conformance/`) exercise the production stack.

use std::time::Duration;

use bytes::Bytes;

use super::Socket;
use super::conn::code;
use super::frame::{FrameError, Incoming};

pub async fn serve(mut ws: Socket, unauthenticated: crate::ws::Unauthenticated) {
    drop(unauthenticated);
    loop {
        match ws.read().await {
            Ok(Incoming::Text(t)) => ws.queue_text(Bytes::from(t)),
            Ok(Incoming::Binary(b)) => ws.queue_binary(Bytes::from(b)),
            Ok(Incoming::Ping | Incoming::Pong) => {}
            Ok(Incoming::Close) => {
                let _ = ws.flush().await;
                return;
            }
            Err(FrameError::Protocol(c, why)) => return close(ws, c, why).await,
            Err(FrameError::TooBig) => return close(ws, code::TOO_BIG, "message too big").await,
            Err(FrameError::Eof | FrameError::Io(_)) => return,
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn close(mut ws: Socket, c: u16, why: &str) {
    ws.queue_close(c, why);
    if ws.flush().await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.drain_until_closed()).await;
    }
}
