//! Benchmark peer: a plain warp 0.4 broadcast server, the baseline of Orchard's own stack.
//!
//! `warp-peer PORT tick SIZE` sends one SIZE-byte `DATA_DYNAMIC`-shaped message per second to
//! every client; `warp-peer PORT flood RATE SIZE` sends RATE small event messages per second
//! (in batches every 10 ms; with a trailing `wait`, from the first SIGUSR2 on);
//! `warp-peer PORT idle` sends nothing. Every message is
//! serialized once and shared through a tokio broadcast channel (a clone is a reference
//! count); each client task feeds everything pending, then flushes once. TCP_NODELAY is on
//! (warp's own `serve().run()` leaves Nagle's algorithm on), so connections are accepted
//! here and served through `warp::service`. The WebSocket settings are warp's defaults.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;
use warp::Filter;
use warp::ws::{Message, WebSocket, Ws};

#[derive(Clone, Copy)]
enum Mode {
    Idle,
    Tick { size: usize },
    Flood { rate: f64, size: usize, wait: bool },
}

fn usage() -> String {
    "usage: warp-peer PORT (tick SIZE | flood RATE SIZE [wait] | idle)".into()
}

fn parse_args() -> Result<(u16, Mode), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<f64, String> {
        a.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(usage)
    };
    let port = a.first().and_then(|p| p.parse().ok()).ok_or_else(usage)?;
    let mode = match a.get(1).map(String::as_str) {
        Some("tick") => Mode::Tick {
            size: num(2)? as usize,
        },
        Some("flood") => Mode::Flood {
            rate: num(2)?,
            size: num(3)? as usize,
            wait: a.get(4).is_some_and(|w| w == "wait"),
        },
        Some("idle") => Mode::Idle,
        _ => return Err(usage()),
    };
    Ok((port, mode))
}

/// RFC 3339 UTC with nanoseconds, e.g. `2024-05-01T12:34:56.123456789Z`.
fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A random-enough version 4 UUID (xorshift; benchmark identifiers only).
fn uuid(state: &mut u64) -> String {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let (a, b) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The envelope `{uuid, type, body, timestamp}` around a pre-encoded body.
fn envelope(id: &str, kind: &str, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 160);
    s.push_str(r#"{"uuid":""#);
    s.push_str(id);
    s.push_str(r#"","type":""#);
    s.push_str(kind);
    s.push_str(r#"","body":"#);
    s.push_str(body);
    s.push_str(r#","timestamp":""#);
    s.push_str(&timestamp());
    s.push_str(r#""}"#);
    s
}

/// `{"pad":"aaa…"}` sized so that the whole `DATA_DYNAMIC` message is `size` bytes.
fn tick_body(size: usize) -> String {
    let pad = size.saturating_sub(120 + "DATA_DYNAMIC".len());
    format!(r#"{{"pad":"{}"}}"#, "a".repeat(pad))
}

const EVENTS: [&str; 4] = [
    "SHUTDOWN_START",
    "SHUTDOWN_SUCCESS",
    "BOOTUP_START",
    "BOOTUP_SUCCESS",
];

/// `{"uuid":"…"}`, padded so that the whole event message is about `size` bytes.
fn event_body(machine: &str, kind: &str, size: usize) -> String {
    let base = 110 + kind.len() + 47;
    if size > base + 9 {
        format!(
            r#"{{"uuid":"{machine}","pad":"{}"}}"#,
            "a".repeat(size - base - 9)
        )
    } else {
        format!(r#"{{"uuid":"{machine}"}}"#)
    }
}

async fn produce(mode: Mode, tx: broadcast::Sender<Message>) {
    let mut rng = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    match mode {
        Mode::Idle => std::future::pending().await,
        Mode::Tick { size } => {
            let body = tick_body(size);
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let id = uuid(&mut rng);
                let _ = tx.send(Message::text(envelope(&id, "DATA_DYNAMIC", &body)));
            }
        }
        Mode::Flood { rate, size, wait } => {
            let machines: Vec<String> = (0..64).map(|_| uuid(&mut rng)).collect();
            if wait {
                match signal(SignalKind::user_defined2()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => eprintln!("cannot wait for SIGUSR2: {e}"),
                }
            }
            let mut every = tokio::time::interval(Duration::from_millis(10));
            let mut last = Instant::now();
            let mut owed = 0.0;
            let mut n = 0usize;
            loop {
                every.tick().await;
                let now = Instant::now();
                owed += rate * now.duration_since(last).as_secs_f64();
                last = now;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let kind = EVENTS[n % 4];
                    let machine = &machines[(n / 4) % machines.len()];
                    n += 1;
                    let id = uuid(&mut rng);
                    let body = event_body(machine, kind, size);
                    let _ = tx.send(Message::text(envelope(&id, kind, &body)));
                }
            }
        }
    }
}

/// One client: everything pending is fed, then one flush. A client that lagged behind the
/// channel has lost messages: it is closed (4008) rather than silently skipped.
async fn client(mut ws: WebSocket, mut rx: broadcast::Receiver<Message>) {
    loop {
        tokio::select! {
            m = rx.recv() => {
                let first = match m {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = ws.send(Message::close_with(4008u16, "too slow")).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if ws.feed(first).await.is_err() {
                    return;
                }
                while let Ok(m) = rx.try_recv() {
                    if ws.feed(m).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(m)) if !m.is_close() => {}
                _ => return,
            },
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (port, mode) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (tx, _) = broadcast::channel::<Message>(1024);
    tokio::spawn(produce(mode, tx.clone()));
    let routes = warp::ws().map(move |ws: Ws| {
        let rx = tx.subscribe();
        ws.on_upgrade(move |socket| client(socket, rx))
    });
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("listening on 127.0.0.1:{port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(warp::service(routes.clone()));
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}
