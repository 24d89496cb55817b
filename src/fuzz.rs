//! Entry points for the fuzz targets (`fuzz/`): each hands arbitrary bytes to one decoder of
//! untrusted input, exactly as the daemon runs it, and returns nothing. A decoder may refuse
//! the input; it must never panic, hang or grow without bound.
//!
//! Every entry point is also replayed over the committed corpora (`fuzz/corpus/<target>/`)
//! by an ordinary test (`tests::corpora_replay`), so CI checks them without a sanitizer build.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An entry point: arbitrary bytes in, nothing out.
pub type Entry = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("access_token", access_token),
    ("ws_frames", ws_frames),
    ("ws_upgrade", ws_upgrade),
    ("channels_message", channels_message),
    ("vms_message", vms_message),
    ("agent_message", agent_message),
    ("rest_request", rest_request),
    ("plugin_reply", plugin_reply),
];

/// The access-token check: any string as a bearer token.
pub fn access_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = crate::auth::token::Tokens::new(b"fuzz-secret-fuzz-secret-fuzz-sec", 900, 86_400);
    let _ = tokens.verify(text);
}

/// The WebSocket frame codec (`ws/frame.rs`) reading a client's byte stream: the first byte
/// picks the message limit (so that "too big" is reached too), the rest is what the client
/// sent. Every message read is echoed back, as `/ws/echo` does, until the stream fails.
pub fn ws_frames(data: &[u8]) {
    let Some((&limit, input)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(limit) * 64;
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        use crate::ws::frame::{Incoming, WebSocket};
        let mut ws = WebSocket::new(Replay::new(input), max);
        // Each read consumes at least one byte or ends the stream, so this terminates.
        while let Ok(m) = ws.read().await {
            match m {
                Incoming::Text(t) => ws.queue_text(bytes::Bytes::from(t)),
                Incoming::Binary(b) => ws.queue_binary(bytes::Bytes::from(b)),
                Incoming::Close => break,
                Incoming::Ping | Incoming::Pong => {}
            }
            if ws.flush().await.is_err() {
                break;
            }
        }
    });
}

/// A WebSocket upgrade request: its target and headers (`ws::fuzz_upgrade`).
pub fn ws_upgrade(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::ws::fuzz_upgrade(text);
    }
}

/// A message on the channels API (`/ws` with a token, B).
pub fn channels_message(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::ws::channels::fuzz_message(text);
    }
}

/// A message on `/ws/vms/{name}` and its console (E).
pub fn vms_message(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::ws::vms::fuzz_message(text);
    }
}

/// A message from an agent (C): as the first message (authentication), then as a message of
/// a connected agent, handled by the daemon's real agent registry (metrics into the host
/// list, answers to jobs, logs into the server's log).
pub fn agent_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::ws::agents::parse_auth(text);
    if let Some(agents) = agents() {
        let _ = agents.on_agent_text(FUZZ_SERVER, text);
    }
}

/// A REST request: `METHOD TARGET` on the first line, the body after it (`api::fuzz_request`).
pub fn rest_request(data: &[u8]) {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let (method, target) = head.split_once(' ').unwrap_or((head, "/"));
    crate::api::fuzz_request(method, target, body);
}

/// Anything a plugin returns or emits (`backends::fuzz_reply`).
pub fn plugin_reply(data: &[u8]) {
    crate::backends::fuzz_reply(data);
}

const FUZZ_SERVER: &str = "00000000-0000-4000-8000-00000000f022";

/// The agent registry the agent target feeds, with one connected agent host.
fn agents() -> Option<&'static Arc<crate::agents::Agents>> {
    static AGENTS: OnceLock<Option<Arc<crate::agents::Agents>>> = OnceLock::new();
    AGENTS
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("orchard-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            let hosts = crate::hosts::Hosts::new(&dir).ok()?;
            hosts.add_offline(FUZZ_SERVER, "fuzz-host");
            let agents = crate::agents::Agents::new(crate::config::Agents::default(), hosts);
            agents.attach(FUZZ_SERVER, crate::ws::conn::Control::new(64))?;
            Some(agents)
        })
        .as_ref()
}

/// An in-memory peer: reads come from the input (then end of stream), writes are discarded.
struct Replay<'a> {
    input: &'a [u8],
}

impl<'a> Replay<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input }
    }
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        let (now, rest) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every committed corpus input through its entry point: what the fuzzers found
    /// (and the seeds) must keep passing without a fuzzing build.
    #[test]
    fn corpora_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut total = 0;
        for (name, entry) in TARGETS {
            let dir = root.join(name);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|f| f.unwrap().path())
                .collect();
            assert!(!files.is_empty(), "{name}: the corpus is empty");
            for f in files {
                entry(&std::fs::read(&f).unwrap());
                total += 1;
            }
        }
        assert!(total >= TARGETS.len());
    }

    #[test]
    fn replay_reads_then_ends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            use crate::ws::frame::{FrameError, Incoming, WebSocket};
            // A masked text frame "hi", then the end of the stream.
            let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
            let mut ws = WebSocket::new(Replay::new(&frame), 1024);
            assert_eq!(ws.read().await.unwrap(), Incoming::Text("hi".into()));
            assert!(matches!(ws.read().await, Err(FrameError::Eof)));
        });
    }
}
