//! `stream`: N clients read everything for S seconds. Reports messages and bytes per second,
//! delivery latency (receive time minus the message's own `timestamp`) for periodic ticks
//! (`DATA_DYNAMIC`) and for events separately, the server's CPU over the window (per tick and
//! per delivered message), its RSS, and how busy this client was. With `--slow-percent`, that
//! share of clients never reads after connecting; at the end they read again to find out
//! how the server treated them (close code, end without close, reset, or still served).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::hist::Histogram;
use crate::lifecycle::Lifecycle;
use crate::procfs::{Mark, Span, rss_kib};
use crate::raw;
use crate::ts::{message_type, now_ns, timestamp_ns};
use crate::ws::{self, Ws};
use crate::{Common, finish, round, table};

#[derive(Args)]
pub struct StreamArgs {
    #[command(flatten)]
    common: Common,
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws/machines/global
    #[arg(long)]
    url: String,
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Length of the measuring window.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seconds between the last connection and the window (initial messages drain).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Share of clients (percent) that stop reading after connecting.
    #[arg(long, default_value_t = 0.0)]
    slow_percent: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Send SIGUSR2 to the server once every client is connected (peers started with
    /// `flood … wait` begin flooding then, so that connecting is not starved).
    #[arg(long)]
    start_signal: bool,
    /// Read buffer of each connection, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Read with the minimal parser of `raw.rs` instead of tungstenite (the fast clients).
    #[arg(long)]
    raw: bool,
}

#[derive(Default)]
struct Class {
    msgs: u64,
    bytes: u64,
    hist: Histogram,
}

impl Class {
    fn to_json(&self, secs: f64) -> serde_json::Value {
        let mut v = self.hist.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("msgs".into(), self.msgs.into());
            o.insert("bytes".into(), self.bytes.into());
            o.insert(
                "avg_bytes".into(),
                round(self.bytes as f64 / self.msgs.max(1) as f64, 1).into(),
            );
            o.insert(
                "msgs_per_s".into(),
                round(self.msgs as f64 / secs, 1).into(),
            );
        }
        v
    }
}

#[derive(Default)]
struct Shared {
    recording: bool,
    /// `DATA_DYNAMIC`: the periodic tick.
    tick: Class,
    /// Anything not `DATA_*`: events (`BOOTUP_*`, `SHUTDOWN_*`, …).
    event: Class,
    /// The other `DATA_*` snapshots (static, disks, connections).
    other: Class,
    tick_stamps: HashSet<i64>,
    /// The window, in Unix nanoseconds: ticks are counted by when the server sent them.
    window: (i64, i64),
    no_timestamp: u64,
    /// Fast clients that ended, by how (during the whole run).
    ended: BTreeMap<String, u64>,
    /// The lifecycle check of every fast client, from its connection on: events checked,
    /// events that did not follow their machine's previous one (a missed or reordered
    /// event), and the clients that had any such gap.
    lifecycle_events: u64,
    lifecycle_gaps: u64,
    clients_with_gaps: u64,
    connected: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Shared {
    fn on_message(&mut self, data: &[u8]) {
        if !self.recording {
            return;
        }
        let now = now_ns();
        let ty = message_type(data);
        let is_tick = ty == Some(&b"DATA_DYNAMIC"[..]);
        let class = match ty {
            _ if is_tick => &mut self.tick,
            Some(t) if t.starts_with(b"DATA_") => &mut self.other,
            _ => &mut self.event,
        };
        class.msgs += 1;
        class.bytes += data.len() as u64;
        match timestamp_ns(data) {
            Some(t) => {
                class.hist.record(now - t);
                if is_tick {
                    self.tick_stamps.insert(t);
                }
            }
            None => self.no_timestamp += 1,
        }
    }
}

type SharedRef = Rc<RefCell<Shared>>;

/// A client connection: through tungstenite, or the minimal reader (`--raw`).
enum Opened {
    Ws(Box<Ws>),
    Raw(tokio::net::TcpStream),
}

/// Records one message and checks its lifecycle order for this client.
fn account(shared: &SharedRef, check: &mut Lifecycle, d: &[u8]) {
    let (events, gaps) = (check.events, check.gaps);
    if let Some(kind) = message_type(d) {
        check.see(kind, d);
    }
    let mut s = shared.borrow_mut();
    s.on_message(d);
    s.lifecycle_events += check.events - events;
    if check.gaps > gaps {
        s.lifecycle_gaps += check.gaps - gaps;
        if gaps == 0 {
            s.clients_with_gaps += 1;
        }
    }
}

/// Reads, records and checks the lifecycle order until the socket ends.
async fn reader(mut ws: Ws, shared: SharedRef) {
    let mut check = Lifecycle::default();
    loop {
        let item = ws.next().await;
        match &item {
            Some(Ok(Message::Text(t))) => account(&shared, &mut check, t.as_bytes()),
            Some(Ok(Message::Binary(b))) => account(&shared, &mut check, b),
            _ => {}
        }
        if let Some(end) = ws::end_of(item) {
            *shared.borrow_mut().ended.entry(end).or_default() += 1;
            return;
        }
    }
}

/// The same with the minimal reader of `raw.rs` (`--raw`).
async fn raw_reader(tcp: tokio::net::TcpStream, buf: usize, shared: SharedRef) {
    let mut check = Lifecycle::default();
    let end = raw::read_all(tcp, buf, |d| account(&shared, &mut check, d)).await;
    *shared.borrow_mut().ended.entry(end).or_default() += 1;
}

/// After the window: a slow client reads again for up to `limit` to see how it was treated.
async fn slow_end(mut ws: Ws, limit: Duration) -> String {
    let work = async {
        loop {
            if let Some(end) = ws::end_of(ws.next().await) {
                return end;
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| "open (still served)".into())
}

pub async fn run(args: StreamArgs) -> Result<(), String> {
    ws::set_read_buffer(args.read_buffer);
    let url = ws::with_token(&args.url, args.token.as_deref());
    let pid = args.common.pid();
    let shared: SharedRef = Rc::default();
    let n = args.count;
    let slow_n = ((n as f64) * args.slow_percent / 100.0).round() as usize;
    let is_slow = |i: usize| slow_n > 0 && (i * slow_n) % n < slow_n;
    let slow_socks: Rc<RefCell<Vec<Ws>>> = Rc::default();
    let gate = Rc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let done = Rc::new(tokio::sync::Notify::new());
    let ramp_start = Instant::now();
    for i in 0..n {
        let (url, shared, gate, done, slow_socks) = (
            url.clone(),
            shared.clone(),
            gate.clone(),
            done.clone(),
            slow_socks.clone(),
        );
        let slow = is_slow(i);
        let (raw_mode, read_buffer) = (args.raw, args.read_buffer);
        tokio::task::spawn_local(async move {
            let opened = {
                let _permit = gate.acquire().await;
                if slow {
                    ws::connect_slow(&url)
                        .await
                        .map(|w| Opened::Ws(Box::new(w)))
                } else if raw_mode {
                    raw::connect(&url).await.map(Opened::Raw)
                } else {
                    ws::connect(&url).await.map(|w| Opened::Ws(Box::new(w)))
                }
            };
            match opened {
                Ok(sock) => {
                    shared.borrow_mut().connected += 1;
                    done.notify_one();
                    match sock {
                        Opened::Ws(sock) if slow => slow_socks.borrow_mut().push(*sock),
                        Opened::Ws(sock) => reader(*sock, shared).await,
                        Opened::Raw(tcp) => raw_reader(tcp, read_buffer, shared).await,
                    }
                }
                Err(e) => {
                    let mut s = shared.borrow_mut();
                    s.failed += 1;
                    s.first_error.get_or_insert(e);
                    drop(s);
                    done.notify_one();
                }
            }
        });
    }
    // A server saturated while clients connect may never finish accepting: measure with the
    // clients that made it (the rest count as failed).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        {
            let mut s = shared.borrow_mut();
            if s.connected + s.failed >= n {
                break;
            }
            if Instant::now() > deadline {
                s.failed = n - s.connected;
                s.first_error
                    .get_or_insert_with(|| "not connected within 120 s".into());
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), done.notified()).await;
    }
    if args.start_signal
        && let Some(p) = args.common.server_pid
    {
        // SAFETY: kill(2) with a plain signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(p as libc::pid_t, libc::SIGUSR2);
        }
    }
    let ramp_s = ramp_start.elapsed().as_secs_f64();
    let (connected, failed, first_error) = {
        let s = shared.borrow();
        (s.connected, s.failed, s.first_error.clone())
    };
    if connected == 0 {
        return Err(format!(
            "no connection opened: {}",
            first_error.unwrap_or_default()
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    let rss_start = pid.as_deref().and_then(rss_kib);
    let mut rss_max = rss_start.unwrap_or(0);
    {
        let mut s = shared.borrow_mut();
        s.recording = true;
        s.window.0 = now_ns();
    }
    let a = Mark::now(pid.as_deref());
    let window = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    while start.elapsed() < window {
        let left = window.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if let Some(r) = pid.as_deref().and_then(rss_kib) {
            rss_max = rss_max.max(r);
        }
    }
    let b = Mark::now(pid.as_deref());
    {
        let mut s = shared.borrow_mut();
        s.recording = false;
        s.window.1 = now_ns();
    }
    let span = Span::between(&a, &b);
    let rss_end = pid.as_deref().and_then(rss_kib);

    // Slow clients read again and tell how they ended.
    let mut slow_ends: BTreeMap<String, u64> = BTreeMap::new();
    let socks: Vec<Ws> = slow_socks.borrow_mut().drain(..).collect();
    let slow_connected = socks.len();
    let mut waits = Vec::new();
    for sock in socks {
        waits.push(tokio::task::spawn_local(slow_end(
            sock,
            Duration::from_secs(3),
        )));
    }
    for w in waits {
        let end = w.await.unwrap_or_else(|e| format!("task failed: {e}"));
        *slow_ends.entry(end).or_default() += 1;
    }

    let s = shared.borrow();
    let secs = span.wall_s;
    let delivered = s.tick.msgs + s.event.msgs + s.other.msgs;
    let bytes = s.tick.bytes + s.event.bytes + s.other.bytes;
    // Ticks the server sent within the window (late ones from before it do not count).
    let ticks = s
        .tick_stamps
        .iter()
        .filter(|&&t| t >= s.window.0 && t <= s.window.1)
        .count();
    let cpu_ms = span.server_cpu_ms;
    let per_tick = cpu_ms.filter(|_| ticks > 0).map(|ms| ms / ticks as f64);
    let per_cpu_s = cpu_ms
        .filter(|&ms| ms > 0.0)
        .map(|ms| delivered as f64 / (ms / 1000.0));
    let fast = connected - slow_connected;
    let mut v = json!({
        "clients": n,
        "connected": connected,
        "failed": failed,
        "slow": slow_connected,
        "seconds": round(secs, 2),
        "connect_s": round(ramp_s, 3),
        "connect_per_s": round(connected as f64 / ramp_s.max(1e-9), 1),
        "msgs": delivered,
        "msgs_per_s": round(delivered as f64 / secs, 1),
        "bytes_per_s": round(bytes as f64 / secs, 0),
        "tick": s.tick.to_json(secs),
        "event": s.event.to_json(secs),
        "other": s.other.to_json(secs),
        "ticks": ticks,
        "no_timestamp": s.no_timestamp,
        "server_cpu_ms": cpu_ms.map(|v| round(v, 1)),
        "server_cpu_pct": span.server_cpu_pct().map(|v| round(v, 2)),
        "server_cpu_ms_per_tick": per_tick.map(|v| round(v, 2)),
        "msgs_per_server_cpu_s": per_cpu_s.map(|v| round(v, 0)),
        "server_rss_kib": {"start": rss_start, "max": rss_max, "end": rss_end},
        "client_cpu_ms": round(span.client_cpu_ms, 1),
        "client_busy_pct": round(span.client_busy_pct(), 1),
        "cores": span.cores_json(),
        "ended": s.ended,
        "slow_ends": slow_ends,
        "lifecycle": {
            "events": s.lifecycle_events,
            "gaps": s.lifecycle_gaps,
            "clients_with_gaps": s.clients_with_gaps,
        },
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), first_error) {
        o.insert("first_error".into(), e.into());
    }

    let ms = |h: &Histogram, q: f64| format!("{:.2}", h.quantile(q) as f64 / 1e6);
    let mut rows = vec![
        (
            "clients (fast + slow), failed".to_string(),
            format!("{fast} + {slow_connected}, {failed}"),
        ),
        (
            "connection setup".into(),
            format!(
                "{:.0}/s ({ramp_s:.2} s)",
                connected as f64 / ramp_s.max(1e-9)
            ),
        ),
        ("window".into(), format!("{secs:.1} s")),
        (
            "delivered".into(),
            format!(
                "{:.0} msg/s, {:.1} MB/s",
                delivered as f64 / secs,
                bytes as f64 / secs / 1e6
            ),
        ),
    ];
    for (name, c) in [("ticks", &s.tick), ("events", &s.event)] {
        if c.msgs > 0 {
            rows.push((
                format!("{name}: msgs, avg bytes"),
                format!("{}, {:.0}", c.msgs, c.bytes as f64 / c.msgs as f64),
            ));
            rows.push((
                format!("{name}: latency p50/p99/max ms"),
                format!(
                    "{} / {} / {}",
                    ms(&c.hist, 0.5),
                    ms(&c.hist, 0.99),
                    ms(&c.hist, 1.0)
                ),
            ));
        }
    }
    if let Some(cpu) = cpu_ms {
        rows.push((
            "server CPU".into(),
            format!(
                "{cpu:.0} ms ({:.1} % of a core)",
                span.server_cpu_pct().unwrap_or(0.0)
            ),
        ));
    }
    if let Some(t) = per_tick {
        rows.push((
            "server CPU per tick".into(),
            format!("{t:.1} ms ({ticks} ticks)"),
        ));
    }
    if let Some(m) = per_cpu_s {
        rows.push(("delivered per server CPU-s".into(), format!("{m:.0}")));
    }
    if let Some(r) = rss_start {
        rows.push((
            "server RSS start / max / end".into(),
            format!(
                "{:.1} / {:.1} / {:.1} MiB",
                r as f64 / 1024.0,
                rss_max as f64 / 1024.0,
                rss_end.unwrap_or(0) as f64 / 1024.0
            ),
        ));
    }
    rows.push((
        "client core busy".into(),
        format!("{:.1} %", span.client_busy_pct()),
    ));
    rows.push(("cores (from /proc/stat)".into(), span.cores_text()));
    if !s.ended.is_empty() {
        rows.push(("fast clients ended".into(), format!("{:?}", s.ended)));
    }
    if s.lifecycle_events > 0 {
        rows.push((
            "lifecycle events checked, gaps, clients with gaps".into(),
            format!(
                "{}, {}, {}",
                s.lifecycle_events, s.lifecycle_gaps, s.clients_with_gaps
            ),
        ));
    }
    if slow_connected > 0 {
        rows.push(("slow clients ended".into(), format!("{slow_ends:?}")));
    }
    table(&format!("stream ({})", args.common.label), &rows);
    drop(s);
    finish(&args.common, "stream", v);
    Ok(())
}
