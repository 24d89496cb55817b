//! `loadgen`: the load client of Orchard's fan-out benchmarks (`tests/bench/README.md`).
//!
//! Every subcommand prints a human table and, last, one JSON line (also appended to
//! `--json-out` when given). It runs on one core beside the server, so it does little per
//! message: no JSON parsing (only `type` and `timestamp` are read from the raw text), one
//! shared histogram, no per-message allocation of its own.

mod hist;
mod idle;
mod lifecycle;
mod logins;
mod procfs;
mod raw;
mod report;
mod stream;
mod ts;
mod ws;

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load client for Orchard's WebSocket benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every measuring subcommand shares.
#[derive(Args, Clone)]
pub struct Common {
    /// The server's process id: its CPU time and RSS are sampled from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for the server under test, carried into the JSON (`orchard`, `node`, …).
    #[arg(long, default_value = "server")]
    label: String,
    /// A name for the scenario, carried into the JSON (defaults to the subcommand).
    #[arg(long)]
    scenario: Option<String>,
    /// Append the final JSON line to this file too.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

impl Common {
    pub fn pid(&self) -> Option<String> {
        self.server_pid.map(|p| p.to_string())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Open N connections, hold them, read and discard: setup rate and RSS per connection.
    Idle(idle::IdleArgs),
    /// N clients read everything for S seconds: throughput, latency, server CPU.
    Stream(stream::StreamArgs),
    /// Concurrent logins while probing /healthz every 10 ms.
    Logins(logins::LoginArgs),
    /// Log in and print the access token.
    Token(logins::TokenArgs),
    /// CPU use of a process over a window (e.g. the daemon with no clients).
    Cpu(CpuArgs),
    /// Turn the JSON lines of a run into the Markdown table.
    Report(report::ReportArgs),
}

#[derive(Args)]
struct CpuArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
}

/// Writes one line to stdout (a broken pipe is not worth a panic).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Prints a two-column table.
pub fn table(title: &str, rows: &[(String, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    say(&format!("== {title}"));
    for (k, v) in rows {
        say(&format!("  {k:<w$}  {v}"));
    }
}

/// Prints the JSON line, tags it with label and scenario, and appends it to `--json-out`.
pub fn finish(common: &Common, default_scenario: &str, mut v: serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert("label".into(), common.label.clone().into());
        o.insert(
            "scenario".into(),
            common
                .scenario
                .clone()
                .unwrap_or_else(|| default_scenario.to_owned())
                .into(),
        );
    }
    let line = v.to_string();
    say(&line);
    if let Some(path) = &common.json_out {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("loadgen: cannot append to {}: {e}", path.display());
        }
    }
}

pub fn round(v: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (v * p).round() / p
}

async fn cpu(args: CpuArgs) -> Result<(), String> {
    let pid = args.common.pid().ok_or("cpu needs --server-pid")?;
    let a = procfs::Mark::now(Some(&pid));
    tokio::time::sleep(std::time::Duration::from_secs_f64(args.seconds)).await;
    let b = procfs::Mark::now(Some(&pid));
    let span = procfs::Span::between(&a, &b);
    let pct = span
        .server_cpu_pct()
        .ok_or("cannot read the server's /proc/PID/stat")?;
    let rss = procfs::rss_kib(&pid);
    table(
        &format!(
            "server CPU over {:.0} s ({})",
            span.wall_s, args.common.label
        ),
        &[
            ("CPU, % of one core".into(), format!("{pct:.2}")),
            (
                "CPU ms".into(),
                format!("{:.0}", span.server_cpu_ms.unwrap_or(0.0)),
            ),
            (
                "RSS MiB".into(),
                format!("{:.1}", rss.unwrap_or(0) as f64 / 1024.0),
            ),
        ],
    );
    finish(
        &args.common,
        "cpu",
        serde_json::json!({
            "seconds": round(span.wall_s, 2),
            "server_cpu_ms": round(span.server_cpu_ms.unwrap_or(0.0), 1),
            "server_cpu_pct": round(pct, 3),
            "server_rss_kib": rss,
            "cores": span.cores_json(),
        }),
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async move {
        match cli.command {
            Command::Idle(a) => idle::run(a).await,
            Command::Stream(a) => stream::run(a).await,
            Command::Logins(a) => logins::run(a).await,
            Command::Token(a) => logins::token(a).await,
            Command::Cpu(a) => cpu(a).await,
            Command::Report(a) => report::run(&a),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
