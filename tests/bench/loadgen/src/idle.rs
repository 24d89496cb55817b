//! `idle`: opens connections in steps (e.g. 1,000 then 10,000), reading and discarding
//! whatever arrives. At 0 connections and after each step it samples the server's RSS, so
//! memory per idle connection is the RSS slope from 0 to N; the ramp gives the
//! connection-setup rate (TCP, upgrade, token check and the initial messages).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::json;

use crate::procfs::{Mark, Span, rss_kib};
use crate::ws::{self, Ws};
use crate::{Common, finish, round, table};

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    url: String,
    #[arg(long)]
    token: Option<String>,
    /// Connections to reach, one step per value: `--count 1000,10000`.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    count: Vec<usize>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Seconds to let the server settle before each RSS sample.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds to hold all connections after the last step.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

#[derive(Default)]
struct State {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    ended: BTreeMap<String, u64>,
}

async fn discard(mut ws: Ws, state: Rc<RefCell<State>>) {
    loop {
        if let Some(end) = ws::end_of(ws.next().await) {
            *state.borrow_mut().ended.entry(end).or_default() += 1;
            return;
        }
    }
}

/// Opens `n` more connections, `concurrency` at a time; returns when all have finished.
async fn open(url: &str, n: usize, concurrency: usize, state: &Rc<RefCell<State>>) {
    let gate = Rc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let done = Rc::new(tokio::sync::Notify::new());
    let target = {
        let s = state.borrow();
        s.connected + s.failed + n
    };
    for _ in 0..n {
        let (url, gate, done, state) = (url.to_owned(), gate.clone(), done.clone(), state.clone());
        tokio::task::spawn_local(async move {
            let opened = {
                let _permit = gate.acquire().await;
                ws::connect(&url).await
            };
            match opened {
                Ok(sock) => {
                    state.borrow_mut().connected += 1;
                    done.notify_one();
                    discard(sock, state).await;
                }
                Err(e) => {
                    let mut s = state.borrow_mut();
                    s.failed += 1;
                    s.first_error.get_or_insert(e);
                    drop(s);
                    done.notify_one();
                }
            }
        });
    }
    loop {
        {
            let s = state.borrow();
            if s.connected + s.failed >= target {
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), done.notified()).await;
    }
}

pub async fn run(args: IdleArgs) -> Result<(), String> {
    let url = ws::with_token(&args.url, args.token.as_deref());
    let pid = args.common.pid();
    let settle = Duration::from_secs_f64(args.settle);
    let state: Rc<RefCell<State>> = Rc::default();
    let mut steps: Vec<usize> = args.count.clone();
    steps.sort_unstable();
    steps.dedup();

    tokio::time::sleep(settle).await;
    let rss0 = pid.as_deref().and_then(rss_kib);
    let mut rows = vec![(
        "server RSS at 0".to_string(),
        rss0.map(|r| format!("{:.1} MiB", r as f64 / 1024.0))
            .unwrap_or_else(|| "-".into()),
    )];
    let mut results = Vec::new();
    let mut have = 0;
    for &step in &steps {
        let more = step.saturating_sub(have);
        let a = Mark::now(pid.as_deref());
        let t0 = Instant::now();
        open(&url, more, args.concurrency, &state).await;
        let ramp = t0.elapsed().as_secs_f64();
        let b = Mark::now(pid.as_deref());
        let span = Span::between(&a, &b);
        have = step;
        tokio::time::sleep(settle).await;
        let rss = pid.as_deref().and_then(rss_kib);
        let (connected, failed) = {
            let s = state.borrow();
            (s.connected, s.failed)
        };
        let per_conn = match (rss0, rss) {
            (Some(r0), Some(r)) if connected > 0 => Some((r as f64 - r0 as f64) / connected as f64),
            _ => None,
        };
        let rate = more as f64 / ramp.max(1e-9);
        rows.push((
            format!("{step} connections"),
            format!(
                "{connected} open, {failed} failed; setup {rate:.0}/s; RSS {}; {} per connection; client core {:.0} %",
                rss.map(|r| format!("{:.1} MiB", r as f64 / 1024.0))
                    .unwrap_or_else(|| "-".into()),
                per_conn
                    .map(|k| format!("{k:.2} KiB"))
                    .unwrap_or_else(|| "-".into()),
                span.client_busy_pct(),
            ),
        ));
        results.push(json!({
            "count": step,
            "connected": connected,
            "failed": failed,
            "ramp_s": round(ramp, 3),
            "connect_per_s": round(rate, 1),
            "server_cpu_ms": span.server_cpu_ms.map(|v| round(v, 1)),
            "server_cpu_us_per_conn": span.server_cpu_ms.map(|v| round(v * 1000.0 / more.max(1) as f64, 1)),
            "client_busy_pct": round(span.client_busy_pct(), 1),
            "rss_kib": rss,
            "kib_per_conn": per_conn.map(|v| round(v, 2)),
        }));
    }
    if args.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    let s = state.borrow();
    if !s.ended.is_empty() {
        rows.push(("ended while idle".into(), format!("{:?}", s.ended)));
    }
    if let Some(e) = &s.first_error {
        rows.push(("first error".into(), e.clone()));
    }
    table(&format!("idle ({})", args.common.label), &rows);
    let v = json!({
        "rss0_kib": rss0,
        "steps": results,
        "ended": s.ended,
        "first_error": s.first_error,
    });
    drop(s);
    finish(&args.common, "idle", v);
    Ok(())
}
