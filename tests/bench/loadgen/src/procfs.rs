//! Sampling a process through `/proc`: CPU time (utime + stime of every thread, from
//! `/proc/PID/stat`) and resident memory (`VmRSS` of `/proc/PID/status`).

use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat`'s utime and stime.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime of `pid` ("self" for this process), in milliseconds.
pub fn cpu_ms(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After ')' comes field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 * 1000.0 / clock_ticks() as f64)
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Each core's times from `/proc/stat` (user, nice, system, idle, iowait, irq, softirq,
/// steal), in clock ticks: they show what no process is charged with (softirq work done in
/// ksoftirqd, steal by the hypervisor).
fn core_times() -> Vec<[u64; 8]> {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let mut t = [0u64; 8];
            for (slot, v) in t.iter_mut().zip(l.split_ascii_whitespace().skip(1)) {
                *slot = v.parse().unwrap_or(0);
            }
            t
        })
        .collect()
}

/// CPU and wall time at one instant, for this process and optionally the server.
#[derive(Clone)]
pub struct Mark {
    at: Instant,
    client_ms: f64,
    server_ms: Option<f64>,
    cores: Vec<[u64; 8]>,
}

impl Mark {
    pub fn now(server: Option<&str>) -> Self {
        Self {
            at: Instant::now(),
            client_ms: cpu_ms("self").unwrap_or(0.0),
            server_ms: server.and_then(cpu_ms),
            cores: core_times(),
        }
    }
}

/// What happened between two marks.
pub struct Span {
    pub wall_s: f64,
    pub client_cpu_ms: f64,
    pub server_cpu_ms: Option<f64>,
    /// Per core: busy (all but idle and iowait), softirq and steal, in percent.
    pub cores: Vec<(f64, f64, f64)>,
}

impl Span {
    pub fn between(a: &Mark, b: &Mark) -> Self {
        Self {
            wall_s: b.at.duration_since(a.at).as_secs_f64(),
            client_cpu_ms: b.client_ms - a.client_ms,
            server_cpu_ms: match (a.server_ms, b.server_ms) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            },
            cores: a
                .cores
                .iter()
                .zip(&b.cores)
                .map(|(x, y)| {
                    let d: Vec<f64> = x
                        .iter()
                        .zip(y)
                        .map(|(p, q)| q.saturating_sub(*p) as f64)
                        .collect();
                    let total: f64 = d.iter().sum::<f64>().max(1.0);
                    let at = |i: usize| d.get(i).copied().unwrap_or(0.0);
                    let busy = total - at(3) - at(4);
                    (
                        busy / total * 100.0,
                        at(6) / total * 100.0,
                        at(7) / total * 100.0,
                    )
                })
                .collect(),
        }
    }

    /// `[{busy_pct, softirq_pct, steal_pct}]`, one per core.
    pub fn cores_json(&self) -> serde_json::Value {
        self.cores
            .iter()
            .map(|(b, si, st)| {
                serde_json::json!({
                    "busy_pct": crate::round(*b, 1),
                    "softirq_pct": crate::round(*si, 1),
                    "steal_pct": crate::round(*st, 1),
                })
            })
            .collect()
    }

    /// `cpu0 93 % (softirq 20 %, steal 0 %), cpu1 …` for the human table.
    pub fn cores_text(&self) -> String {
        self.cores
            .iter()
            .enumerate()
            .map(|(i, (b, si, st))| format!("cpu{i} {b:.0} % (softirq {si:.0} %, steal {st:.0} %)"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How busy the client core was: CPU time over wall time, in percent of one core.
    pub fn client_busy_pct(&self) -> f64 {
        pct(self.client_cpu_ms, self.wall_s)
    }

    pub fn server_cpu_pct(&self) -> Option<f64> {
        self.server_cpu_ms.map(|ms| pct(ms, self.wall_s))
    }
}

fn pct(cpu_ms: f64, wall_s: f64) -> f64 {
    if wall_s <= 0.0 {
        0.0
    } else {
        cpu_ms / (wall_s * 1000.0) * 100.0
    }
}
