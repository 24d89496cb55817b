//! `report`: the JSON lines of one run (`--json-out` of every measurement) as one Markdown
//! table: each figure for Orchard and every peer, each peer's figure also as a ratio to the
//! floor, and Orchard's as a ratio to the floor and to each peer.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::say;

#[derive(Args)]
pub struct ReportArgs {
    /// The JSON lines written by the run.
    #[arg(long)]
    input: PathBuf,
    /// Servers in column order; the first is the one under test, `floor` the physical floor.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "orchard,floor,warp,node,python"
    )]
    servers: Vec<String>,
}

type Get = fn(&Value) -> Option<Cell>;

enum Cell {
    Num(f64),
    Text(String),
}

struct Row {
    /// `{first}`, `{last}`: the idle steps; `{clients}`: the stream scenarios' clients.
    figure: &'static str,
    goal: &'static str,
    scenario: &'static str,
    get: Get,
}

fn num(v: Option<f64>) -> Option<Cell> {
    v.map(Cell::Num)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    at(v, path).and_then(Value::as_f64)
}

/// The first idle step (fewest connections).
fn first_step(v: &Value) -> Option<&Value> {
    v.get("steps")?.as_array()?.first()
}

/// The last idle step (most connections), when there is more than one.
fn last_step(v: &Value) -> Option<&Value> {
    let steps = v.get("steps")?.as_array()?;
    if steps.len() < 2 {
        return None;
    }
    steps.last()
}

fn ends(v: &Value, key: &str) -> Option<Cell> {
    let o = v.get(key)?.as_object()?;
    if o.is_empty() {
        return Some(Cell::Text("none".into()));
    }
    Some(Cell::Text(
        o.iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            figure: "memory per idle connection, KiB (RSS slope 0 → {first})",
            goal: "≤ 6 KiB",
            scenario: "idle",
            get: |v| num(first_step(v).and_then(|s| f(s, &["kib_per_conn"]))),
        },
        Row {
            figure: "memory per idle connection, KiB (RSS slope 0 → {last})",
            goal: "≤ 6 KiB",
            scenario: "idle",
            get: |v| num(last_step(v).and_then(|s| f(s, &["kib_per_conn"]))),
        },
        Row {
            figure: "server RSS with {last} idle clients, MB",
            goal: "< 100 MB",
            scenario: "idle",
            get: |v| {
                num(last_step(v)
                    .and_then(|s| f(s, &["rss_kib"]))
                    .map(|k| k * 1024.0 / 1e6))
            },
        },
        Row {
            figure: "connection setup incl. token check, connections/s (ramp to {first})",
            goal: "",
            scenario: "idle",
            get: |v| num(first_step(v).and_then(|s| f(s, &["connect_per_s"]))),
        },
        Row {
            figure: "server CPU per connection setup, µs (ramp to {first})",
            goal: "",
            scenario: "idle",
            get: |v| num(first_step(v).and_then(|s| f(s, &["server_cpu_us_per_conn"]))),
        },
        Row {
            figure: "tick (DATA_DYNAMIC, size below) × {clients} clients: server CPU per tick, ms",
            goal: "≤ 1.1× floor",
            scenario: "tick",
            get: |v| num(f(v, &["server_cpu_ms_per_tick"])),
        },
        Row {
            figure: "tick: delivery p50, ms",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["tick", "p50_ms"])),
        },
        Row {
            figure: "tick: delivery p99, ms",
            goal: "≤ 1.1× floor",
            scenario: "tick",
            get: |v| num(f(v, &["tick", "p99_ms"])),
        },
        Row {
            figure: "tick: delivery max, ms",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["tick", "max_ms"])),
        },
        Row {
            figure: "tick: ticks delivered per second (all clients)",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["tick", "msgs_per_s"])),
        },
        Row {
            figure: "tick: tick size, bytes",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["tick", "avg_bytes"])),
        },
        Row {
            figure: "tick: delivered MB/s",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["bytes_per_s"]).map(|b| b / 1e6)),
        },
        Row {
            figure: "tick: connection setup with initial state, connections/s",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["connect_per_s"])),
        },
        Row {
            figure: "tick: client core busy, %",
            goal: "",
            scenario: "tick",
            get: |v| num(f(v, &["client_busy_pct"])),
        },
        Row {
            figure: "flood of small events × {clients} clients: delivered per server CPU-second",
            goal: "≥ 2,000,000",
            scenario: "flood",
            get: |v| num(f(v, &["msgs_per_server_cpu_s"])),
        },
        Row {
            figure: "flood: delivered messages/s",
            goal: "",
            scenario: "flood",
            get: |v| num(f(v, &["event", "msgs_per_s"])),
        },
        Row {
            figure: "flood: server CPU, % of one core",
            goal: "",
            scenario: "flood",
            get: |v| num(f(v, &["server_cpu_pct"])),
        },
        Row {
            figure: "flood: latency p50, ms",
            goal: "",
            scenario: "flood",
            get: |v| num(f(v, &["event", "p50_ms"])),
        },
        Row {
            figure: "flood: latency p99, ms",
            goal: "< 10 ms",
            scenario: "flood",
            get: |v| num(f(v, &["event", "p99_ms"])),
        },
        Row {
            figure: "flood: latency max, ms",
            goal: "",
            scenario: "flood",
            get: |v| num(f(v, &["event", "max_ms"])),
        },
        Row {
            figure: "flood: message size, bytes",
            goal: "",
            scenario: "flood",
            get: |v| num(f(v, &["event", "avg_bytes"])),
        },
        Row {
            figure: "flood: client core busy, %",
            goal: "",
            scenario: "flood",
            get: |v| num(f(v, &["client_busy_pct"])),
        },
        Row {
            figure: "flood: clients closed by the server during the run",
            goal: "",
            scenario: "flood",
            get: |v| ends(v, "ended"),
        },
        Row {
            figure: "slow consumers (some stop reading), tick: the others' p99, ms",
            goal: "= tick p99",
            scenario: "slow",
            get: |v| num(f(v, &["tick", "p99_ms"])),
        },
        Row {
            figure: "slow consumers: server CPU per tick, ms",
            goal: "",
            scenario: "slow",
            get: |v| num(f(v, &["server_cpu_ms_per_tick"])),
        },
        Row {
            figure: "slow consumers: server RSS growth over the window (max − start), MB",
            goal: "bounded",
            scenario: "slow",
            get: |v| {
                let start = f(v, &["server_rss_kib", "start"])?;
                let max = f(v, &["server_rss_kib", "max"])?;
                num(Some((max - start) * 1024.0 / 1e6))
            },
        },
        Row {
            figure: "slow consumers: how the slow clients ended",
            goal: "",
            scenario: "slow",
            get: |v| ends(v, "slow_ends"),
        },
        Row {
            figure: "concurrent logins: /healthz p99, ms",
            goal: "< 50 ms",
            scenario: "logins",
            get: |v| num(f(v, &["healthz", "p99_ms"])),
        },
        Row {
            figure: "concurrent logins: /healthz p50 / max, ms",
            goal: "",
            scenario: "logins",
            get: |v| {
                Some(Cell::Text(format!(
                    "{} / {}",
                    fmt(f(v, &["healthz", "p50_ms"])?),
                    fmt(f(v, &["healthz", "max_ms"])?)
                )))
            },
        },
        Row {
            figure: "concurrent logins: logins/s",
            goal: "",
            scenario: "logins",
            get: |v| num(f(v, &["logins_per_s"])),
        },
        Row {
            figure: "simulator polling (fleet as for the tick), no clients: CPU, % of one core",
            goal: "< 5 %",
            scenario: "poll",
            get: |v| num(f(v, &["server_cpu_pct"])),
        },
    ]
}

/// Three significant digits or so, thousands separated.
pub fn fmt(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    // Thousands separators on the integer part.
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// The figure's name with `{first}`, `{last}` and `{clients}` filled in from the records.
fn figure(name: &str, records: &HashMap<(String, String), Value>) -> String {
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    let mut clients = Vec::new();
    for ((_, scenario), v) in records {
        if scenario == "idle" {
            firsts.extend(first_step(v).and_then(|s| s.get("count")?.as_u64()));
            lasts.extend(last_step(v).and_then(|s| s.get("count")?.as_u64()));
        } else if let Some(n) = v.get("clients").and_then(Value::as_u64) {
            clients.push(n);
        }
    }
    let show = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.dedup();
        v.iter()
            .map(|n| fmt(*n as f64))
            .collect::<Vec<_>>()
            .join("/")
    };
    name.replace("{first}", &show(firsts))
        .replace("{last}", &show(lasts))
        .replace("{clients}", &show(clients))
}

fn ratio(a: f64, b: f64) -> Option<String> {
    (b.abs() > f64::EPSILON).then(|| format!("{:.2}×", a / b))
}

pub fn run(args: &ReportArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let mut records: HashMap<(String, String), Value> = HashMap::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let label = v.get("label").and_then(Value::as_str).unwrap_or("");
        let scenario = v.get("scenario").and_then(Value::as_str).unwrap_or("");
        records.insert((label.to_owned(), scenario.to_owned()), v);
    }
    let servers = &args.servers;
    let Some(main) = servers.first() else {
        return Err("no servers given".into());
    };
    let others: Vec<&String> = servers.iter().skip(1).collect();
    let mut header = vec!["figure".to_string(), "goal".into()];
    header.extend(servers.iter().cloned());
    header.extend(others.iter().map(|o| format!("{main} ÷ {o}")));
    say(&format!("| {} |", header.join(" | ")));
    say(&format!(
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 2 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for row in rows() {
        let cells: Vec<Option<Result<Cell, String>>> = servers
            .iter()
            .map(|s| {
                let rec = records.get(&(s.clone(), row.scenario.to_owned()))?;
                if let Some(why) = rec.get("skipped").and_then(Value::as_str) {
                    return Some(Err(why.to_owned()));
                }
                (row.get)(rec).map(Ok)
            })
            .collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let value = |i: usize| match cells.get(i) {
            Some(Some(Ok(Cell::Num(v)))) => Some(*v),
            _ => None,
        };
        let floor_at = servers.iter().position(|s| s == "floor");
        let floor = floor_at.and_then(value);
        let mut line = vec![figure(row.figure, &records), row.goal.to_string()];
        for (i, c) in cells.iter().enumerate() {
            line.push(match c {
                None => "–".into(),
                Some(Err(_)) => "not run".into(),
                Some(Ok(Cell::Text(t))) => t.clone(),
                Some(Ok(Cell::Num(v))) => match floor {
                    Some(fl) if Some(i) != floor_at => match ratio(*v, fl) {
                        Some(r) => format!("{} ({r} floor)", fmt(*v)),
                        None => fmt(*v),
                    },
                    _ => fmt(*v),
                },
            });
        }
        for i in 1..servers.len() {
            line.push(
                match (value(0), value(i)) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => None,
                }
                .unwrap_or_else(|| "–".into()),
            );
        }
        say(&format!("| {} |", line.join(" | ")));
    }
    // Why a scenario did not run, once per server and scenario.
    let mut skipped: Vec<String> = records
        .iter()
        .filter_map(|((label, scenario), v)| {
            let why = v.get("skipped")?.as_str()?;
            Some(format!("* {label}, {scenario}: not run: {why}"))
        })
        .collect();
    skipped.sort();
    if !skipped.is_empty() {
        say("");
        for s in skipped {
            say(&s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fmt;

    #[test]
    fn formats_numbers() {
        assert_eq!(fmt(1_234_567.8), "1,234,568");
        assert_eq!(fmt(123.4), "123");
        assert_eq!(fmt(12.34), "12.3");
        assert_eq!(fmt(1.234), "1.23");
        assert_eq!(fmt(-4321.0), "-4,321");
    }
}
