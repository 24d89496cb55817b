//! Agent hosts on the daemon's side: the live agent connection of each server (one at a
//! time; a new one replaces the old), jobs sent to agents and correlated by `command_id`
//! (commands, docker commands, package operations), the count of jobs in flight
//! (`fleet_status.pending_operations`), agent metrics into [`Hosts`], and the per-server
//! streams (`/api/v1/ws/metrics/{id}`, `/api/v1/ws/logs/{id}`).
//!
//! Wire shapes (contract 7): the server sends `{type:"command", command_id, command,
//! timeout}`, `{type:"docker_command", command_id, action, container_id}` and
//! `{type:"package_operation", command_id, operation, package, timeout}`; the agent answers
//! `command_response` / `docker_response` / `package_response` (`request_id` accepted for
//! `command_id`), with `package_progress` `{command_id, status, progress, message}` before a
//! package operation's answer, and sends `metrics` and `log` on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::hosts::{DiskMetric, HostEvent, HostMetrics, Hosts, NetMetric};
use crate::model::now_iso;
use crate::ws::conn::{CloseWith, Control, Text, code};

/// The local host's refusal while `agents.local_commands` is off.
pub const LOCAL_REFUSED: &str =
    "the local host does not run commands or package operations (agents.local_commands is off)";

/// Close code for an agent connection replaced by a newer one of the same server.
pub const REPLACED: u16 = 4409;

/// Extra time an agent gets past a job's own timeout to report that it timed out.
const GRACE: Duration = Duration::from_secs(2);

struct Link {
    conn: u64,
    ctl: Arc<Control>,
    /// Jobs in flight: command id → where the agent's messages about it go.
    pending: HashMap<String, mpsc::UnboundedSender<Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Metrics,
    Logs,
}

struct StreamSub {
    server_id: String,
    kind: StreamKind,
    ctl: Arc<Control>,
}

pub struct Agents {
    config: crate::config::Agents,
    hosts: Arc<Hosts>,
    links: Mutex<HashMap<String, Link>>,
    next: AtomicU64,
    ops: watch::Sender<usize>,
    streams: Mutex<HashMap<u64, StreamSub>>,
}

/// A command's result.
#[derive(Clone, Debug)]
pub struct CommandOutcome {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
}

/// Counts one job in flight while alive.
pub struct OpGuard {
    ops: watch::Sender<usize>,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.ops.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Removes a per-server stream subscriber when dropped.
pub struct StreamMembership {
    agents: Arc<Agents>,
    id: u64,
}

impl Drop for StreamMembership {
    fn drop(&mut self) {
        self.agents.lock_streams().remove(&self.id);
    }
}

/// A message of the per-server streams and the agent socket: `{type, data, timestamp}`.
pub fn stream_message(kind: &str, data: &Value) -> Text {
    Text::from(json!({"type": kind, "data": data, "timestamp": now_iso()}).to_string())
}

/// `{type:"error", message}` (document C).
pub fn error_message(message: &str) -> Text {
    Text::from(json!({"type": "error", "message": message}).to_string())
}

impl Agents {
    pub fn new(config: crate::config::Agents, hosts: Arc<Hosts>) -> Arc<Self> {
        Arc::new(Self {
            config,
            hosts,
            links: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            ops: watch::channel(0).0,
            streams: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StreamSub>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.config.command_timeout.max(1))
    }

    /// Jobs in flight, for `fleet_status`.
    pub fn pending_operations(&self) -> usize {
        *self.ops.borrow()
    }

    pub fn watch_operations(&self) -> watch::Receiver<usize> {
        self.ops.subscribe()
    }

    fn op(&self) -> OpGuard {
        self.ops.send_modify(|n| *n += 1);
        OpGuard {
            ops: self.ops.clone(),
        }
    }

    pub fn is_connected(&self, server_id: &str) -> bool {
        self.lock().contains_key(server_id)
    }

    /// An authenticated agent connection of `server_id`; returns its connection id, or
    /// `None` when the server was deleted meanwhile. An older connection of the same server
    /// is closed ([`REPLACED`]); its jobs in flight fail.
    pub fn attach(&self, server_id: &str, ctl: Arc<Control>) -> Option<u64> {
        let hostname = self.hosts.hostname(server_id)?;
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self.lock().insert(
            server_id.to_owned(),
            Link {
                conn,
                ctl,
                pending: HashMap::new(),
            },
        );
        if let Some(old) = old {
            old.ctl.close(CloseWith::new(
                REPLACED,
                "replaced by a newer connection of this server",
            ));
        }
        self.hosts.set_status(server_id, &hostname, "online");
        self.log(server_id, "INFO", "agent connected");
        Some(conn)
    }

    /// The connection `conn` of `server_id` ended: unless a newer one replaced it, the host
    /// goes offline and its jobs in flight fail.
    pub fn detach(&self, server_id: &str, conn: u64) {
        let removed = {
            let mut links = self.lock();
            match links.get(server_id) {
                Some(l) if l.conn == conn => links.remove(server_id),
                _ => None,
            }
        };
        if removed.is_some()
            && let Some(hostname) = self.hosts.hostname(server_id)
        {
            self.hosts.set_status(server_id, &hostname, "offline");
            self.log(server_id, "WARNING", "agent disconnected");
        }
    }

    /// The server was deleted: its agent socket closes (4401), its streams end, and the host
    /// leaves the fleet.
    pub fn revoke(&self, server_id: &str) {
        if let Some(link) = self.lock().remove(server_id) {
            link.ctl
                .close(CloseWith::new(code::UNAUTHORIZED, "API key revoked"));
        }
        if let Some(hostname) = self.hosts.hostname(server_id) {
            self.hosts.set_status(server_id, &hostname, "offline");
        }
        self.hosts.remove(server_id);
        for s in self
            .lock_streams()
            .values()
            .filter(|s| s.server_id == server_id)
        {
            s.ctl.send(error_message("the server was deleted"));
            s.ctl.close(CloseWith::new(1000, "server deleted"));
        }
    }

    /// Handles one message of an authenticated agent; returns a reply for it, if any.
    pub fn on_agent_text(&self, server_id: &str, text: &str) -> Option<Text> {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
            return Some(error_message("Invalid message format"));
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "metrics" => {
                let body = match msg.get("data") {
                    Some(Value::Object(d)) => d,
                    _ => &msg,
                };
                self.hosts.record_metrics(server_id, parse_metrics(body));
                None
            }
            "command_response" | "docker_response" | "package_response" | "package_progress" => {
                let id = msg
                    .get("command_id")
                    .or_else(|| msg.get("request_id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let Some(id) = id else {
                    return Some(error_message("Invalid message format"));
                };
                let last = kind != "package_progress";
                let mut links = self.lock();
                let link = links.get_mut(server_id)?;
                let tx = if last {
                    link.pending.remove(&id)
                } else {
                    link.pending.get(&id).cloned()
                };
                drop(links);
                match tx {
                    Some(tx) => {
                        let _ = tx.send(Value::Object(msg));
                    }
                    None => tracing::debug!(server_id, "answer to an unknown or finished job"),
                }
                None
            }
            "log" => {
                let body = match msg.get("data") {
                    Some(Value::Object(d)) => d,
                    _ => &msg,
                };
                let level = body.get("level").and_then(Value::as_str).unwrap_or("INFO");
                let message = body.get("message").and_then(Value::as_str).unwrap_or("");
                let ts = body
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(now_iso);
                let origin = body.get("source").and_then(Value::as_str);
                let mut data = json!({"level": level, "message": message, "timestamp": ts,
                    "source": "agent"});
                if let Some(o) = origin {
                    data["origin"] = json!(o);
                }
                self.publish(
                    server_id,
                    &[StreamKind::Logs],
                    &stream_message("log", &data),
                );
                None
            }
            "heartbeat" | "pong" | "auth" => None,
            "ping" => Some(Text::from(json!({"type": "pong"}).to_string())),
            _ => Some(error_message("Invalid message format")),
        }
    }

    /// Sends a job to the agent of `host_id` and returns where its answers arrive.
    fn send_job(
        &self,
        host_id: &str,
        mut job: Map<String, Value>,
    ) -> Result<(String, mpsc::UnboundedReceiver<Value>), String> {
        let id = uuid::Uuid::new_v4().to_string();
        job.insert("command_id".into(), json!(id));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut links = self.lock();
        let Some(link) = links.get_mut(host_id) else {
            return Err(if self.hosts.hostname(host_id).is_some() {
                "Host not reachable: its agent is not connected".into()
            } else {
                format!("no host {host_id}")
            });
        };
        link.pending.insert(id.clone(), tx);
        link.ctl.send(Text::from(Value::Object(job).to_string()));
        Ok((id, rx))
    }

    fn forget(&self, host_id: &str, id: &str) {
        if let Some(link) = self.lock().get_mut(host_id) {
            link.pending.remove(id);
        }
    }

    /// Sends `job` to the host's agent and waits (`timeout` and a grace) for its one answer.
    async fn job_answer(
        &self,
        host_id: &str,
        job: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let (id, mut rx) = self.send_job(host_id, job)?;
        let got = tokio::time::timeout(timeout + GRACE, rx.recv()).await;
        self.forget(host_id, &id);
        match got {
            Err(_) => Err(format!("timed out after {} s", timeout.as_secs())),
            Ok(None) => Err("the agent disconnected before answering".into()),
            Ok(Some(v)) => Ok(v),
        }
    }

    fn local_allowed(&self, host_id: &str) -> Option<Result<(), String>> {
        if !self.hosts.is_local(host_id) {
            return None;
        }
        Some(if self.config.local_commands {
            Ok(())
        } else {
            Err(LOCAL_REFUSED.into())
        })
    }

    /// Runs a shell command on a host. A non-zero exit is an outcome; `Err` is a failure
    /// (host not connected, refused, timed out, agent gone).
    pub async fn command(
        &self,
        host_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, String> {
        let _op = self.op();
        if let Some(allowed) = self.local_allowed(host_id) {
            allowed?;
            let o = crate::agent::exec::run_shell(command, timeout).await?;
            return Ok(CommandOutcome {
                exit_code: o.exit_code,
                stdout: o.stdout,
                stderr: o.stderr,
                duration_ms: o.duration_ms,
            });
        }
        let mut job = Map::new();
        job.insert("type".into(), json!("command"));
        job.insert("command".into(), json!(command));
        job.insert("timeout".into(), json!(timeout.as_secs()));
        let v = self.job_answer(host_id, job, timeout).await?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            return Err(e.as_str().map_or_else(|| e.to_string(), str::to_owned));
        }
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(CommandOutcome {
            exit_code: v.get("exit_code").and_then(Value::as_i64).unwrap_or(-1),
            stdout: text("stdout")
                .or_else(|| text("output"))
                .unwrap_or_default(),
            stderr: text("stderr").unwrap_or_default(),
            duration_ms: v.get("duration_ms").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// A docker action on a host's container: `{success, message}`.
    pub async fn docker(
        &self,
        host_id: &str,
        action: &str,
        container_id: &str,
    ) -> Result<(bool, String), String> {
        let _op = self.op();
        let timeout = self.command_timeout();
        if let Some(allowed) = self.local_allowed(host_id) {
            allowed?;
            return crate::agent::docker::run(action, container_id, timeout).await;
        }
        let mut job = Map::new();
        job.insert("type".into(), json!("docker_command"));
        job.insert("action".into(), json!(action));
        job.insert("container_id".into(), json!(container_id));
        let v = self.job_answer(host_id, job, timeout).await?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(e.to_owned());
        }
        Ok((
            v.get("success").and_then(Value::as_bool).unwrap_or(false),
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    /// Installs, updates or removes a package on a host; `progress` gets each
    /// `{status, progress, message}` on the way. Returns the final `{status, progress,
    /// message, exit_code}`.
    pub async fn package(
        &self,
        host_id: &str,
        operation: &str,
        package: &str,
        mut progress: impl FnMut(&Value) + Send,
    ) -> Result<Value, String> {
        let _op = self.op();
        let timeout = Duration::from_secs(self.config.package_timeout.max(1));
        if let Some(allowed) = self.local_allowed(host_id) {
            allowed?;
            return crate::agent::packages::run(operation, package, timeout, &mut progress).await;
        }
        let mut job = Map::new();
        job.insert("type".into(), json!("package_operation"));
        job.insert("operation".into(), json!(operation));
        job.insert("package".into(), json!(package));
        job.insert("timeout".into(), json!(timeout.as_secs()));
        let (id, mut rx) = self.send_job(host_id, job)?;
        let deadline = tokio::time::Instant::now() + timeout + GRACE;
        let result = loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => break Err(format!("timed out after {} s", timeout.as_secs())),
                Ok(None) => break Err("the agent disconnected before answering".into()),
                Ok(Some(v)) if v["type"] == "package_progress" => progress(&v),
                Ok(Some(v)) => {
                    if let Some(e) = v.get("error").and_then(Value::as_str) {
                        break Err(e.to_owned());
                    }
                    break Ok(v);
                }
            }
        };
        self.forget(host_id, &id);
        result
    }

    /// Adds a per-server stream subscriber.
    pub fn subscribe_stream(
        self: &Arc<Self>,
        server_id: &str,
        kind: StreamKind,
        ctl: Arc<Control>,
    ) -> StreamMembership {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock_streams().insert(
            id,
            StreamSub {
                server_id: server_id.to_owned(),
                kind,
                ctl,
            },
        );
        StreamMembership {
            agents: self.clone(),
            id,
        }
    }

    fn publish(&self, server_id: &str, kinds: &[StreamKind], msg: &Text) {
        for s in self.lock_streams().values() {
            if s.server_id == server_id && kinds.contains(&s.kind) {
                s.ctl.send(msg.clone());
            }
        }
    }

    /// A log line of the daemon's own about a server (connects, commands, alerts).
    pub fn log(&self, server_id: &str, level: &str, message: &str) {
        let data = json!({"level": level, "message": message, "timestamp": now_iso(),
            "source": "orchard"});
        self.publish(
            server_id,
            &[StreamKind::Logs],
            &stream_message("log", &data),
        );
    }

    /// Feeds the per-server streams from host metrics and alerts.
    pub fn start(
        self: &Arc<Self>,
        mut hosts: broadcast::Receiver<HostEvent>,
        mut alerts: broadcast::Receiver<Arc<crate::db::AlertRecord>>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match hosts.recv().await {
                    Ok(HostEvent::Metrics {
                        host_id, metrics, ..
                    }) => {
                        let msg = stream_message("metrics", &metrics_view(&host_id, &metrics));
                        me.publish(&host_id, &[StreamKind::Metrics], &msg);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match alerts.recv().await {
                    Ok(a) => {
                        let Some(host) = a.host_id.as_deref() else {
                            continue;
                        };
                        let data = serde_json::to_value(&*a).unwrap_or_default();
                        let msg = stream_message("alert", &data);
                        me.publish(host, &[StreamKind::Metrics, StreamKind::Logs], &msg);
                        let level = if a.state == "cleared" {
                            "INFO"
                        } else if a.severity == "critical" {
                            "CRITICAL"
                        } else {
                            "WARNING"
                        };
                        me.log(
                            host,
                            level,
                            &format!("alert {}: {}: {}", a.state, a.title, a.message),
                        );
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

/// The per-server stream's metrics data (document C's field names).
pub fn metrics_view(host_id: &str, m: &HostMetrics) -> Value {
    json!({
        "server_id": host_id,
        "cpu_percent": m.cpu_usage,
        "memory_percent": m.memory_usage,
        "disk_usage": m.disk_usage,
        "disks": m.disks,
        "network": m.network,
        "load_average": m.load_average,
    })
}

fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('%').parse().ok(),
        _ => None,
    }
}

fn first<'a>(o: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| o.get(*k))
}

/// A percentage as the agent sent it (never rounded: only the UI rounds, for display), kept
/// within 0–100; a value that is not a finite number counts as 0.
fn pct(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// An agent's metrics, leniently: the document's flat names (`cpu_percent`,
/// `memory_percent`, `disk_usage`, `network`) or ours (`cpu_usage`, ...); `disk_usage` as
/// `{mount: percent}` or a list of `{mount, percent | total_bytes + used_bytes}`.
pub fn parse_metrics(o: &Map<String, Value>) -> HostMetrics {
    let mut m = HostMetrics {
        cpu_usage: pct(num(first(o, &["cpu_percent", "cpu_usage", "cpu"])).unwrap_or(0.0)),
        memory_usage: pct(
            num(first(o, &["memory_percent", "memory_usage", "memory"])).unwrap_or(0.0)
        ),
        disk_usage: BTreeMap::new(),
        load_average: [0.0; 3],
        disks: Vec::new(),
        network: Vec::new(),
    };
    match o.get("load_average") {
        Some(Value::Array(a)) => {
            for (i, v) in a.iter().take(3).enumerate() {
                m.load_average[i] = num(Some(v)).unwrap_or(0.0);
            }
        }
        Some(Value::Object(l)) => {
            for (i, k) in ["one", "five", "fifteen"].iter().enumerate() {
                m.load_average[i] = num(l.get(*k)).unwrap_or(0.0);
            }
        }
        _ => {}
    }
    fn disk(m: &mut HostMetrics, d: &Map<String, Value>) {
        let Some(mount) = first(d, &["mount", "mountpoint", "path", "device"])
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        let total = first(d, &["total_bytes", "total"]).and_then(Value::as_u64);
        let used = first(d, &["used_bytes", "used"]).and_then(Value::as_u64);
        let percent =
            num(first(d, &["percent", "usage_percent", "used_percent"])).or_else(|| {
                match (total, used) {
                    (Some(t), Some(u)) if t > 0 => Some(u as f64 * 100.0 / t as f64),
                    _ => None,
                }
            });
        if let Some(p) = percent {
            m.disk_usage.insert(mount.clone(), pct(p));
        }
        if let (Some(total_bytes), Some(used_bytes)) = (total, used)
            && !m.disks.iter().any(|x| x.mount == mount)
        {
            m.disks.push(DiskMetric {
                mount,
                total_bytes,
                used_bytes,
            });
        }
    }
    for key in ["disk_usage", "disks"] {
        match o.get(key) {
            Some(Value::Array(a)) => {
                for d in a.iter().filter_map(Value::as_object) {
                    disk(&mut m, d);
                }
            }
            Some(Value::Object(map)) => {
                for (mount, v) in map {
                    if let Some(p) = num(Some(v)) {
                        m.disk_usage.insert(mount.clone(), pct(p));
                    } else if let Some(d) = v.as_object() {
                        let mut d = d.clone();
                        d.insert("mount".into(), json!(mount));
                        disk(&mut m, &d);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(a)) = o.get("network") {
        for n in a.iter().filter_map(Value::as_object) {
            let Some(interface) = first(n, &["interface", "name"]).and_then(Value::as_str) else {
                continue;
            };
            m.network.push(NetMetric {
                interface: interface.to_owned(),
                rx_bytes: first(n, &["rx_bytes", "bytes_recv"])
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                tx_bytes: first(n, &["tx_bytes", "bytes_sent"])
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            });
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_relayed_unrounded_within_range() {
        let m = parse_metrics(
            json!({"cpu_percent": 41.75, "memory_percent": "nan",
                "disk_usage": {"/": 150, "/home": -3, "/var": 33.333}})
            .as_object()
            .unwrap(),
        );
        assert_eq!((m.cpu_usage, m.memory_usage), (41.75, 0.0));
        assert_eq!(m.disk_usage.get("/"), Some(&100.0));
        assert_eq!(m.disk_usage.get("/home"), Some(&0.0));
        assert_eq!(m.disk_usage.get("/var"), Some(&33.333));
    }

    #[test]
    fn metrics_shapes() {
        let flat = json!({"type": "metrics", "cpu_percent": 45.2, "memory_percent": 62.5,
            "disk_usage": [{"mount": "/", "total_bytes": 200, "used_bytes": 50}, {"mount": "/var", "percent": 80}],
            "network": [{"interface": "eth0", "rx_bytes": 1, "tx_bytes": 2}],
            "load_average": [1.0, 2.0, 3.0]});
        let m = parse_metrics(flat.as_object().unwrap());
        assert_eq!((m.cpu_usage, m.memory_usage), (45.2, 62.5));
        assert_eq!(m.disk_usage.get("/"), Some(&25.0));
        assert_eq!(m.disk_usage.get("/var"), Some(&80.0));
        assert_eq!(m.disks.len(), 1);
        assert_eq!(m.network[0].tx_bytes, 2);
        assert_eq!(m.load_average, [1.0, 2.0, 3.0]);
        let other = json!({"cpu_usage": "12.5", "disk_usage": {"/": 40.0}});
        let m = parse_metrics(other.as_object().unwrap());
        assert_eq!(m.cpu_usage, 12.5);
        assert_eq!(m.disk_usage.get("/"), Some(&40.0));
    }
}
