//! `logins`: many logins at once while `/healthz` is probed every 10 ms on its own
//! connection. Password hashing is deliberately expensive; the question is whether the
//! daemon stays responsive meanwhile. `token`: one login, the token printed.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::hist::Histogram;
use crate::procfs::{Mark, Span};
use crate::{Common, finish, round, say, table};

#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    common: Common,
    /// Base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    http: String,
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Logins in all (default: one per concurrent client).
    #[arg(long)]
    total: Option<usize>,
    #[arg(long, default_value = "admin")]
    user: String,
    /// The environment variable holding the password.
    #[arg(long)]
    password_env: String,
    /// Seconds of probing alone before the logins start (the baseline).
    #[arg(long, default_value_t = 1.0)]
    baseline: f64,
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long)]
    http: String,
    #[arg(long, default_value = "admin")]
    user: String,
    #[arg(long)]
    password_env: String,
}

fn password(var: &str) -> Result<String, String> {
    std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
}

async fn login(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    pass: &str,
) -> Result<String, String> {
    let r = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": user, "password": pass}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("login: HTTP {status}: {body}"));
    }
    body.get("access_token")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "login: no access_token in the answer".into())
}

pub async fn token(args: TokenArgs) -> Result<(), String> {
    let pass = password(&args.password_env)?;
    let client = reqwest::Client::new();
    let t = login(&client, args.http.trim_end_matches('/'), &args.user, &pass).await?;
    say(&t);
    Ok(())
}

#[derive(Default)]
struct Probe {
    /// 0: baseline, 1: during the logins, 2: stop.
    phase: u8,
    before: Histogram,
    during: Histogram,
    errors: u64,
}

pub async fn run(args: LoginArgs) -> Result<(), String> {
    let pass = password(&args.password_env)?;
    let base = args.http.trim_end_matches('/').to_owned();
    let pid = args.common.pid();
    let probe: Rc<RefCell<Probe>> = Rc::default();
    let prober = {
        let probe = probe.clone();
        let url = format!("{base}/healthz");
        tokio::task::spawn_local(async move {
            let client = reqwest::Client::new();
            let mut every = tokio::time::interval(Duration::from_millis(10));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if probe.borrow().phase >= 2 {
                    return;
                }
                let t0 = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let ns = t0.elapsed().as_nanos() as i64;
                let mut p = probe.borrow_mut();
                if !ok {
                    p.errors += 1;
                }
                match p.phase {
                    0 => p.before.record(ns),
                    1 => p.during.record(ns),
                    _ => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(args.baseline)).await;

    let total = args.total.unwrap_or(args.concurrency);
    let workers = args.concurrency.max(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .build()
        .map_err(|e| e.to_string())?;
    let results: Rc<RefCell<(Histogram, u64, Option<String>)>> = Rc::default();
    let next = Rc::new(RefCell::new(0usize));
    probe.borrow_mut().phase = 1;
    let a = Mark::now(pid.as_deref());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, base, user, pass, results, next) = (
            client.clone(),
            base.clone(),
            args.user.clone(),
            pass.clone(),
            results.clone(),
            next.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                {
                    let mut n = next.borrow_mut();
                    if *n >= total {
                        return;
                    }
                    *n += 1;
                }
                let t0 = Instant::now();
                let r = login(&client, &base, &user, &pass).await;
                let mut res = results.borrow_mut();
                match r {
                    Ok(_) => res.0.record(t0.elapsed().as_nanos() as i64),
                    Err(e) => {
                        res.1 += 1;
                        res.2.get_or_insert(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let b = Mark::now(pid.as_deref());
    probe.borrow_mut().phase = 2;
    let _ = prober.await;
    let span = Span::between(&a, &b);
    let p = probe.borrow();
    let res = results.borrow();
    let ok = res.0.count();
    let ms = |h: &Histogram, q: f64| h.quantile(q) as f64 / 1e6;
    let rows = vec![
        (
            "logins ok / failed".to_string(),
            format!("{ok} / {} in {elapsed:.2} s", res.1),
        ),
        (
            "login throughput".into(),
            format!("{:.1}/s", ok as f64 / elapsed),
        ),
        (
            "login latency p50/p99/max".into(),
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                ms(&res.0, 0.5),
                ms(&res.0, 0.99),
                ms(&res.0, 1.0)
            ),
        ),
        (
            "healthz before: p50/p99/max".into(),
            format!(
                "{:.2} / {:.2} / {:.2} ms ({} probes)",
                ms(&p.before, 0.5),
                ms(&p.before, 0.99),
                ms(&p.before, 1.0),
                p.before.count()
            ),
        ),
        (
            "healthz during: p50/p99/max".into(),
            format!(
                "{:.2} / {:.2} / {:.2} ms ({} probes, {} errors)",
                ms(&p.during, 0.5),
                ms(&p.during, 0.99),
                ms(&p.during, 1.0),
                p.during.count(),
                p.errors
            ),
        ),
        (
            "server CPU during".into(),
            format!("{:.1} % of a core", span.server_cpu_pct().unwrap_or(0.0)),
        ),
        (
            "client core busy".into(),
            format!("{:.1} %", span.client_busy_pct()),
        ),
    ];
    table(&format!("logins ({})", args.common.label), &rows);
    let v = json!({
        "concurrency": workers,
        "total": total,
        "ok": ok,
        "failed": res.1,
        "first_error": res.2,
        "seconds": round(elapsed, 3),
        "logins_per_s": round(ok as f64 / elapsed, 2),
        "login": res.0.to_json(),
        "healthz_before": p.before.to_json(),
        "healthz": p.during.to_json(),
        "healthz_errors": p.errors,
        "server_cpu_pct": span.server_cpu_pct().map(|v| round(v, 1)),
        "client_busy_pct": round(span.client_busy_pct(), 1),
    });
    drop(p);
    drop(res);
    finish(&args.common, "logins", v);
    Ok(())
}
