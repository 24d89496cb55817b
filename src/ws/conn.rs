//! The connection core every WebSocket API runs on: one task per socket that writes queued
//! messages (coalesced: everything pending is queued, then one flush, which `frame.rs` turns
//! into vectored writes of each frame's header and the shared payload bytes — no per-socket
//! copy), the latest periodic snapshot (latest wins), reads and dispatches client messages,
//! keeps the peer alive with pings, and closes with the right code on expiry, revocation,
//! overflow or shutdown.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::frame::{FrameError, Incoming, WebSocket};

/// One pre-encoded UTF-8 text message, shared by every socket it goes to.
pub type Text = Bytes;

/// Close codes shared by every API.
pub mod code {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVER_ERROR: u16 = 1011;
    /// The client did not read fast enough: its send queue filled up.
    pub const TOO_SLOW: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
}

/// What the connection core reports about a socket's stream to the metrics.
pub trait Meter {
    /// The API of the socket, for logs.
    fn api(&self) -> &'static str;
    /// `messages` text messages were written to the peer.
    fn sent(&self, messages: usize);
    /// A close frame with `code` is queued for the peer.
    fn closing(&self, code: u16);
    /// The peer did not keep up and is being dropped (4008).
    fn slow_consumer(&self);
}

#[derive(Clone, Debug)]
pub struct CloseWith {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl CloseWith {
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// The handle producers use to reach one socket. Never blocks.
///
/// The queue is a plain deque behind a mutex, taken whole by the socket task: an idle
/// socket holds no queue allocation at all (a channel would keep a block of slots).
pub struct Control {
    queue: Mutex<Queue>,
    /// The most messages the queue may hold (`ws.send_queue`).
    capacity: usize,
    /// The most payload bytes the queue may hold (`ws.send_queue_bytes`; a payload shared
    /// with other sockets counts in full for each of them).
    capacity_bytes: usize,
    wake: Notify,
    close: Mutex<Option<CloseWith>>,
    closed: AtomicBool,
    /// Set while a write waits for the peer (its receive window is full): the sign of a
    /// client that does not keep up, as opposed to a server that has not run it yet.
    blocked: AtomicBool,
}

/// The messages waiting for one socket, in the order they were queued. The pending periodic
/// snapshot (if any) sits among them at the place it was set: a newer snapshot replaces it
/// and moves to the back, behind everything queued before it (so a `CREATE` or an initial
/// `DATA_STATIC` never arrives after a snapshot that already shows that machine).
#[derive(Default)]
struct Queue {
    items: VecDeque<Text>,
    /// Where the pending snapshot is in `items`.
    snapshot: Option<usize>,
    /// The payload bytes in `items`.
    bytes: usize,
}

impl Queue {
    fn set_snapshot(&mut self, msg: Text) {
        if let Some(i) = self.snapshot.take()
            && let Some(old) = self.items.remove(i)
        {
            self.bytes -= old.len();
        }
        self.bytes += msg.len();
        self.items.push_back(msg);
        self.snapshot = Some(self.items.len() - 1);
    }

    fn take(&mut self) -> VecDeque<Text> {
        self.snapshot = None;
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

/// Messages a socket's empty queue makes room for at its first push.
const BATCH_RESERVE: usize = 16;

impl Control {
    /// A control whose queue holds at most `capacity` messages (of any size).
    pub fn new(capacity: usize) -> std::sync::Arc<Self> {
        Self::bounded(capacity, usize::MAX)
    }

    /// A control bounded as the configuration says (`ws.send_queue`, `ws.send_queue_bytes`).
    pub fn for_config(ws: &crate::config::Ws) -> std::sync::Arc<Self> {
        Self::bounded(
            ws.send_queue,
            usize::try_from(ws.send_queue_bytes).unwrap_or(usize::MAX),
        )
    }

    /// A control whose queue holds at most `capacity` messages and `bytes` payload bytes.
    pub fn bounded(capacity: usize, bytes: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            capacity_bytes: bytes.max(1),
            wake: Notify::new(),
            close: Mutex::new(None),
            closed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        })
    }

    /// Queues a message and wakes the socket.
    pub fn send(&self, msg: Text) -> bool {
        let queued = self.push(msg);
        if queued {
            self.wake.notify_one();
        }
        queued
    }

    /// Queues a message without waking the socket (a producer queuing a burst calls
    /// [`Control::wake`] once at the end, so the burst goes out in one write).
    ///
    /// The queue is the socket's memory, bounded in messages and in bytes. Backlog alone is
    /// not slowness: when the daemon itself is behind (a burst, an overloaded core), every
    /// queue grows, the next write takes all of it at once, and larger writes cost less per
    /// message, so the writers catch up. A client whose socket stops taking bytes is dropped
    /// when a write has waited for it for `ws.write_deadline`; its queue meanwhile fills
    /// first, since the others drain. A queue that reaches either bound is closed with
    /// [`code::TOO_SLOW`] rather than allowed to grow memory or skip events silently.
    pub fn push(&self, msg: Text) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.items.len() >= self.capacity || q.bytes + msg.len() > self.capacity_bytes {
            drop(q);
            let why = if self.blocked.load(Ordering::Relaxed) {
                "client too slow: send queue full"
            } else {
                "send queue full"
            };
            self.close(CloseWith::new(code::TOO_SLOW, why));
            return false;
        }
        if q.items.capacity() == 0 {
            // The first message of a batch: room for a burst in one allocation (the deque is
            // taken whole and freed after each write, so growing 4, 8, 16… cost every batch
            // several reallocations).
            q.items.reserve(BATCH_RESERVE);
        }
        q.bytes += msg.len();
        q.items.push_back(msg);
        true
    }

    /// Wakes the socket if it has something queued.
    pub fn wake(&self) {
        let pending = !self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .is_empty();
        if pending {
            self.wake.notify_one();
        }
    }

    /// Replaces the pending periodic snapshot (latest wins); it goes out after everything
    /// queued before it.
    pub fn set_latest(&self, msg: Text) {
        if self.is_closed() {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_snapshot(msg);
        self.wake.notify_one();
    }

    /// Asks the socket to close; the first request wins (`true` for it).
    pub fn close(&self, with: CloseWith) -> bool {
        let mut c = self.close.lock().unwrap_or_else(|p| p.into_inner());
        let first = c.is_none();
        if first {
            *c = Some(with);
        }
        drop(c);
        self.wake.notify_one();
        first
    }

    /// The code of a pending close request, without taking it.
    pub(crate) fn close_requested(&self) -> Option<u16> {
        self.close
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.code)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn take_close(&self) -> Option<CloseWith> {
        self.close.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Everything pending, in order.
    fn take_batch(&self) -> VecDeque<Text> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Timings and limits of one socket.
#[derive(Clone, Debug)]
pub struct Options {
    pub ping_interval: Duration,
    /// Silence after which the peer is dropped.
    pub idle_timeout: Duration,
    pub write_deadline: Duration,
    /// Close with 4401 at this instant (the token's `exp`).
    pub expires_at: Option<Instant>,
    /// The message an API sends just before a close frame with this code, if any (E's
    /// `AUTH_ERROR` before 4401/4403, whether the close comes from expiry, revocation or a
    /// lost permission).
    pub farewell: Option<fn(&CloseWith) -> Option<Text>>,
}

/// What a handler wants after a client message.
pub enum Reply {
    Continue,
}

/// Runs one socket until it closes. `on_text` handles each text message (it may queue
/// replies through the control); binary messages are refused with 1003.
pub async fn run<S>(
    mut ws: WebSocket<S>,
    ctl: std::sync::Arc<Control>,
    opts: Options,
    mut shutdown: watch::Receiver<bool>,
    mut on_text: impl FnMut(&str) -> Reply + Send,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + Meter,
{
    let mut ping =
        tokio::time::interval_at(Instant::now() + opts.ping_interval, opts.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The peer is dropped exactly when `idle_timeout` of silence has passed, not at the next
    // ping tick after it.
    let silence = tokio::time::sleep(opts.idle_timeout);
    tokio::pin!(silence);
    let expiry = async {
        match opts.expires_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let close = loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Some(CloseWith::new(code::GOING_AWAY, "server shutting down"));
                }
            }
            () = &mut expiry => break Some(CloseWith::new(code::UNAUTHORIZED, "token expired")),
            () = ctl.wake.notified() => {
                // Messages queued before a close request still go out (an `error` explaining
                // the close, say) — except to a client that is too slow to take them.
                let close = ctl.take_close();
                if close.as_ref().is_none_or(|c| c.code != code::TOO_SLOW) {
                    let batch = ctl.take_batch();
                    if !batch.is_empty() {
                        let n = batch.len();
                        match Box::pin(write(&mut ws, &ctl, batch, opts.write_deadline)).await {
                            Wrote::Done => ws.get_ref().sent(n),
                            Wrote::Failed => break None,
                            Wrote::TooSlow => break ctl.take_close(),
                        }
                    }
                }
                if close.is_some() {
                    break close;
                }
            }
            () = &mut silence => {
                tracing::debug!("websocket peer silent; dropped");
                break None;
            }
            incoming = ws.read() => {
                silence.as_mut().reset(Instant::now() + opts.idle_timeout);
                match incoming {
                    Ok(Incoming::Text(t)) => match on_text(&t) {
                        Reply::Continue => {}
                    },
                    Ok(Incoming::Binary(_)) => {
                        break Some(CloseWith::new(1003, "binary messages are not accepted"));
                    }
                    Ok(Incoming::Close) => {
                        // The peer's close was answered (queued): send it, finish.
                        let _ = tokio::time::timeout(opts.write_deadline, Box::pin(ws.flush())).await;
                        break None;
                    }
                    Ok(Incoming::Ping) | Ok(Incoming::Pong) => {
                        if ws.has_pending()
                            && !matches!(tokio::time::timeout(opts.write_deadline, Box::pin(ws.flush())).await, Ok(Ok(())))
                        {
                            break None;
                        }
                    }
                    Err(FrameError::TooBig) => break Some(CloseWith::new(code::TOO_BIG, "message too big")),
                    Err(FrameError::Protocol(c, why)) => break Some(CloseWith::new(c, why)),
                    Err(_) => break None,
                }
            }
            _ = ping.tick() => {
                ws.queue_ping();
                if !matches!(tokio::time::timeout(opts.write_deadline, Box::pin(ws.flush())).await, Ok(Ok(()))) {
                    break None;
                }
            }
        }
    };
    ctl.closed.store(true, Ordering::Relaxed);
    drop(ctl.take_batch());
    if let Some(c) = close {
        if c.code == code::TOO_SLOW {
            // Nothing more for a client that cannot keep up: only the rest of the frame in
            // progress, then the close. It arrives if the client reads again within the
            // write deadline; one that has stopped reading altogether is dropped then.
            ws.discard_unsent();
            ws.get_ref().slow_consumer();
            tracing::info!(
                api = ws.get_ref().api(),
                queue = ctl.capacity,
                reason = %c.reason,
                "websocket client too slow (send queue full); closing 4008"
            );
        }
        if let Some(m) = opts.farewell.and_then(|f| f(&c)) {
            ws.queue_text(m);
        }
        ws.get_ref().closing(c.code);
        ws.queue_close(c.code, &c.reason);
        if matches!(
            tokio::time::timeout(opts.write_deadline, Box::pin(ws.flush())).await,
            Ok(Ok(()))
        ) {
            // Let the peer answer the close so the frame is not lost to a reset.
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.drain_until_closed()).await;
        }
    }
}

/// How a write ended.
enum Wrote {
    Done,
    /// The connection failed or the write deadline passed.
    Failed,
    /// The queue overflowed while the write waited for the peer (a 4008 close is pending).
    TooSlow,
}

/// Queues the batch and flushes once, within the write deadline. While the write waits for
/// the peer, the control is marked blocked; an overflow meanwhile ends the wait at once, so
/// that the 4008 close can be queued behind the frame in progress.
async fn write<S>(
    ws: &mut WebSocket<S>,
    ctl: &Control,
    batch: VecDeque<Text>,
    deadline: Duration,
) -> Wrote
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for m in batch {
        ws.queue_text(m);
    }
    let ended = |r: std::io::Result<()>| {
        if r.is_ok() {
            Wrote::Done
        } else {
            Wrote::Failed
        }
    };
    let mut flush = Box::pin(ws.flush());
    if let Some(done) = futures_util::future::poll_immediate(&mut flush).await {
        return ended(done);
    }
    ctl.blocked.store(true, Ordering::Relaxed);
    let until = Instant::now() + deadline;
    // A wake for new messages is passed on to the main loop once this write is done.
    let mut rewake = false;
    let wrote = loop {
        tokio::select! {
            // An overflow first: nothing more is written once it happened.
            biased;
            () = ctl.wake.notified() => {
                if ctl.close_requested() == Some(code::TOO_SLOW) {
                    break Wrote::TooSlow;
                }
                rewake = true;
            }
            done = &mut flush => break ended(done),
            () = tokio::time::sleep_until(until) => break Wrote::Failed,
        }
    };
    ctl.blocked.store(false, Ordering::Relaxed);
    if rewake {
        ctl.wake.notify_one();
    }
    wrote
}

/// Sends one close frame on a socket that never entered [`run`] (refused after upgrade).
pub async fn refuse<S>(mut ws: WebSocket<S>, first: Option<Text>, with: CloseWith)
where
    S: AsyncRead + AsyncWrite + Unpin + Meter,
{
    let deadline = Duration::from_secs(5);
    if let Some(m) = first {
        ws.queue_text(m);
    }
    ws.get_ref().closing(with.code);
    ws.queue_close(with.code, &with.reason);
    if matches!(tokio::time::timeout(deadline, ws.flush()).await, Ok(Ok(()))) {
        // Give the peer a moment to answer the close so the frame is not lost to a reset.
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.drain_until_closed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Meter for tokio::io::DuplexStream {
        fn api(&self) -> &'static str {
            "test"
        }
        fn sent(&self, _: usize) {}
        fn closing(&self, _: u16) {}
        fn slow_consumer(&self) {}
    }

    fn texts(batch: VecDeque<Text>) -> Vec<String> {
        batch
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn an_overflow_during_a_blocked_write_closes_4008_right_after_the_frame_in_progress() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(64);
        let ctl = Control::new(3);
        let opts = Options {
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            write_deadline: Duration::from_secs(10),
            expires_at: None,
            farewell: None,
        };
        let (_stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run(
            WebSocket::new(server, 1024),
            ctl.clone(),
            opts,
            shutdown,
            |_| Reply::Continue,
        ));
        let msg = |c: u8| Text::from(vec![c; 100]);
        for c in [b'a', b'b', b'c'] {
            ctl.send(msg(c));
        }
        // The client reads nothing: the write of the first frame blocks.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !ctl.blocked.load(Ordering::Relaxed) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the write blocks on the peer");
        // The queue takes three more; the fourth is one too many.
        for c in [b'd', b'e', b'f'] {
            assert!(ctl.push(msg(c)));
        }
        assert!(!ctl.push(msg(b'g')));
        // Reading again, the client gets the frame in progress, then the close at once.
        let reason = "client too slow: send queue full";
        let mut got = vec![0u8; 102 + 4 + reason.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..2], &[0x81, 100]);
        assert!(got[2..102].iter().all(|&b| b == b'a'));
        assert_eq!(got[102], 0x88, "the close follows the frame in progress");
        assert_eq!(&got[104..106], &code::TOO_SLOW.to_be_bytes());
        drop(client);
        task.await.unwrap();
    }

    #[test]
    fn the_queue_is_bounded_in_messages_and_in_bytes_blocked_or_not() {
        let by_count = Control::bounded(3, usize::MAX);
        for m in ["a", "b", "c"] {
            assert!(by_count.push(Text::from(m)));
        }
        assert!(!by_count.push(Text::from("d")), "a fourth message");
        assert_eq!(by_count.close_requested(), Some(code::TOO_SLOW));
        let by_bytes = Control::bounded(100, 10);
        assert!(by_bytes.push(Text::from("12345")));
        // A periodic snapshot counts too, and replacing it gives its bytes back.
        by_bytes.set_latest(Text::from("123"));
        by_bytes.set_latest(Text::from("1234"));
        assert!(by_bytes.push(Text::from("1")), "5 + 4 + 1 bytes fit");
        assert!(!by_bytes.push(Text::from("1")), "an 11th byte does not");
        assert_eq!(by_bytes.close_requested(), Some(code::TOO_SLOW));
        // Taking the batch empties the queue: the bound is on what waits, not on the total.
        let ctl = Control::bounded(2, 8);
        for _ in 0..10 {
            assert!(ctl.push(Text::from("1234")));
            assert!(ctl.push(Text::from("5678")));
            assert_eq!(ctl.take_batch().len(), 2);
        }
    }

    #[test]
    fn a_snapshot_goes_after_what_was_queued_before_it() {
        let ctl = Control::new(16);
        for m in ["STATIC", "DYNAMIC0", "DISKS", "CONNECTIONS"] {
            ctl.push(Text::from(m));
        }
        ctl.set_latest(Text::from("DYNAMIC1"));
        assert_eq!(
            texts(ctl.take_batch()),
            ["STATIC", "DYNAMIC0", "DISKS", "CONNECTIONS", "DYNAMIC1"]
        );
        assert!(ctl.take_batch().is_empty());
    }

    #[test]
    fn the_latest_snapshot_replaces_the_pending_one_behind_newer_messages() {
        let ctl = Control::new(16);
        ctl.push(Text::from("A"));
        ctl.set_latest(Text::from("SNAP1"));
        ctl.push(Text::from("CREATE"));
        ctl.set_latest(Text::from("SNAP2"));
        ctl.push(Text::from("B"));
        assert_eq!(texts(ctl.take_batch()), ["A", "CREATE", "SNAP2", "B"]);
        // After a take, a new snapshot starts afresh.
        ctl.set_latest(Text::from("SNAP3"));
        ctl.set_latest(Text::from("SNAP4"));
        assert_eq!(texts(ctl.take_batch()), ["SNAP4"]);
    }
}
