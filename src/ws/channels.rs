//! The channels API (`api-docs/B-channels.md`): `/ws` with a token. Clients subscribe to
//! channels (with filters); events are `{type:"event", channel, data, timestamp}`, encoded
//! once per channel (and per filter where one changes the data) and shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Socket;
use super::conn::{self, Control, Reply, Text};
use crate::db::{AlertRecord, AuditEntry};
use crate::hosts::HostEvent;
use crate::model::{Permission, User, now_iso};
use crate::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Channel {
    HostStatus,
    HostMetrics,
    FleetStatus,
    SystemAlerts,
    UserActivity,
    CommandExecution,
    PackageOperations,
}

impl Channel {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "host_status" => Self::HostStatus,
            "host_metrics" => Self::HostMetrics,
            "fleet_status" => Self::FleetStatus,
            "system_alerts" => Self::SystemAlerts,
            "user_activity" => Self::UserActivity,
            "command_execution" => Self::CommandExecution,
            "package_operations" => Self::PackageOperations,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::HostStatus => "host_status",
            Self::HostMetrics => "host_metrics",
            Self::FleetStatus => "fleet_status",
            Self::SystemAlerts => "system_alerts",
            Self::UserActivity => "user_activity",
            Self::CommandExecution => "command_execution",
            Self::PackageOperations => "package_operations",
        }
    }

    /// The permission a subscription needs (contract section 2 and 7).
    fn needs(self) -> Permission {
        match self {
            Self::UserActivity => Permission::ManageAdminUsers,
            Self::CommandExecution => Permission::ExecuteCommands,
            _ => Permission::ViewAllVms,
        }
    }
}

/// A subscription's filters; absent ones match everything.
#[derive(Clone, Debug, Default)]
struct Filters {
    host_ids: Option<Vec<String>>,
    metrics: Option<Vec<String>>,
    severity: Option<Vec<String>>,
}

/// A filter value: one string or a list of strings; `what` names it in the error.
fn strings(v: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .map(Some)
            .ok_or_else(|| format!("filters.{what} must be a string or a list of strings")),
        Some(_) => Err(format!(
            "filters.{what} must be a string or a list of strings"
        )),
    }
}

/// The metric groups `filters.metrics` may name.
const METRIC_GROUPS: [&str; 5] = ["cpu", "memory", "disk", "load", "network"];
const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

impl Filters {
    /// `filters` is absent, null or an object; its known keys must have the right types and
    /// values (unknown keys are ignored).
    fn parse(v: &Value) -> Result<Self, String> {
        if !(v.is_null() || v.is_object()) {
            return Err("filters must be an object".into());
        }
        let metrics = strings(v.get("metrics"), "metrics")?;
        if let Some(bad) = metrics
            .iter()
            .flatten()
            .find(|m| !METRIC_GROUPS.contains(&m.as_str()))
        {
            return Err(format!(
                "unknown metric group {bad:?} in filters.metrics (known: {})",
                METRIC_GROUPS.join(", ")
            ));
        }
        let severity = strings(v.get("severity"), "severity")?;
        if let Some(bad) = severity
            .iter()
            .flatten()
            .find(|s| !SEVERITIES.contains(&s.as_str()))
        {
            return Err(format!(
                "unknown severity {bad:?} in filters.severity (known: {})",
                SEVERITIES.join(", ")
            ));
        }
        Ok(Self {
            host_ids: strings(v.get("host_id"), "host_id")?,
            metrics,
            severity,
        })
    }

    fn host(&self, id: &str) -> bool {
        self.host_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|h| h == id))
    }
}

struct Sub {
    user: User,
    ctl: Arc<Control>,
    channels: HashMap<Channel, Filters>,
}

#[derive(Default)]
pub struct Hub {
    subs: Mutex<HashMap<u64, Sub>>,
    next: AtomicU64,
}

struct Membership {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}

fn event(channel: Channel, data: &Value) -> Text {
    Text::from(
        json!({"type": "event", "channel": channel.name(), "data": data, "timestamp": now_iso()})
            .to_string(),
    )
}

fn reply(kind: &str, channel: &str, data: Value, id: Option<&Value>) -> Text {
    let mut m = json!({"type": kind, "channel": channel, "data": data, "timestamp": now_iso()});
    if let Some(id) = id {
        m["id"] = id.clone();
    }
    Text::from(m.to_string())
}

/// The `host_metrics` data, limited to the metric groups asked for.
fn metrics_data(host_id: &str, m: &crate::hosts::HostMetrics, only: Option<&[String]>) -> Value {
    let want = |g: &str| only.is_none_or(|o| o.iter().any(|x| x == g));
    let mut metrics = serde_json::Map::new();
    if want("cpu") {
        metrics.insert("cpu_usage".into(), json!(m.cpu_usage));
    }
    if want("memory") {
        metrics.insert("memory_usage".into(), json!(m.memory_usage));
    }
    if want("disk") {
        metrics.insert("disk_usage".into(), json!(m.disk_usage));
        metrics.insert("disks".into(), json!(m.disks));
    }
    if want("load") {
        metrics.insert("load_average".into(), json!(m.load_average));
    }
    if want("network") {
        metrics.insert("network".into(), json!(m.network));
    }
    json!({"host_id": host_id, "timestamp": now_iso(), "metrics": metrics})
}

fn alert_data(a: &AlertRecord) -> Value {
    json!({
        "alert_id": a.alert_id,
        "state": a.state,
        "severity": a.severity,
        "title": a.title,
        "message": a.message,
        "host_id": a.host_id,
        "hostname": a.hostname,
        "machine_uuid": a.machine_uuid,
        "category": a.category,
        "timestamp": a.timestamp,
    })
}

fn activity_data(e: &AuditEntry) -> Value {
    json!({
        "user_id": e.actor_id,
        "username": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
        "ip_address": e.ip,
        "user_agent": e.user_agent,
        "timestamp": e.timestamp,
    })
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sub>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `make()`'s message (encoded once) to every subscriber of `channel` whose
    /// filters `accept`.
    fn fan_out(&self, channel: Channel, accept: impl Fn(&Filters) -> bool, msg: Text) {
        for sub in self.lock().values() {
            if let Some(f) = sub.channels.get(&channel)
                && accept(f)
            {
                sub.ctl.send(msg.clone());
            }
        }
    }

    pub fn start(self: &Arc<Self>, state: &AppState) {
        let hub = self.clone();
        let st = state.clone();
        let mut hosts = state.hosts.subscribe();
        tokio::spawn(async move {
            loop {
                match hosts.recv().await {
                    Ok(HostEvent::Status {
                        host_id,
                        hostname,
                        status,
                        previous_status,
                    }) => {
                        let data = json!({"host_id": host_id, "hostname": hostname, "status": status,
                            "previous_status": previous_status, "timestamp": now_iso()});
                        hub.fan_out(
                            Channel::HostStatus,
                            |f| f.host(&host_id),
                            event(Channel::HostStatus, &data),
                        );
                        hub.fleet(&st);
                    }
                    Ok(HostEvent::Metrics {
                        host_id, metrics, ..
                    }) => {
                        let shared = event(
                            Channel::HostMetrics,
                            &metrics_data(&host_id, &metrics, None),
                        );
                        for sub in hub.lock().values() {
                            let Some(f) = sub.channels.get(&Channel::HostMetrics) else {
                                continue;
                            };
                            if !f.host(&host_id) {
                                continue;
                            }
                            match &f.metrics {
                                None => sub.ctl.send(shared.clone()),
                                Some(only) => sub.ctl.send(event(
                                    Channel::HostMetrics,
                                    &metrics_data(&host_id, &metrics, Some(only)),
                                )),
                            };
                        }
                    }
                    Ok(HostEvent::Added | HostEvent::Removed { .. }) => hub.fleet(&st),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let hub = self.clone();
        let st = state.clone();
        let mut alerts = state.alerts.subscribe();
        tokio::spawn(async move {
            loop {
                match alerts.recv().await {
                    Ok(a) => {
                        let msg = event(Channel::SystemAlerts, &alert_data(&a));
                        let severity = a.severity.clone();
                        hub.fan_out(
                            Channel::SystemAlerts,
                            |f| f.severity.as_ref().is_none_or(|s| s.contains(&severity)),
                            msg,
                        );
                        hub.fleet(&st);
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let hub = self.clone();
        let mut activity = state.activity.subscribe();
        tokio::spawn(async move {
            loop {
                match activity.recv().await {
                    Ok(e) => hub.fan_out(
                        Channel::UserActivity,
                        |_| true,
                        event(Channel::UserActivity, &activity_data(&e)),
                    ),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        // Jobs starting and finishing change `pending_operations`.
        let hub = self.clone();
        let st = state.clone();
        let mut ops = state.agents.watch_operations();
        tokio::spawn(async move {
            while ops.changed().await.is_ok() {
                hub.fleet(&st);
            }
        });
        let hub = self.clone();
        let st = state.clone();
        let period = Duration::from_secs(state.config.fleet.interval.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                hub.fleet(&st);
            }
        });
    }

    fn fleet(&self, state: &AppState) {
        let data = state.hosts.fleet(
            state.alerts.hosts_with_alerts(),
            state.agents.pending_operations(),
        );
        self.fan_out(
            Channel::FleetStatus,
            |_| true,
            event(Channel::FleetStatus, &data),
        );
    }

    /// Permissions changed: drop subscriptions the user may no longer hold.
    pub fn user_changed(&self, user: &User) {
        for sub in self
            .lock()
            .values_mut()
            .filter(|s| s.user.uuid == user.uuid)
        {
            sub.user = user.clone();
            let lost: Vec<Channel> = sub
                .channels
                .keys()
                .filter(|c| !user.has(c.needs()))
                .copied()
                .collect();
            for c in lost {
                sub.channels.remove(&c);
                sub.ctl.send(reply(
                    "error",
                    "subscription",
                    json!({"code": "SUBSCRIPTION_FAILED", "message": format!("permission withdrawn for channel '{}'", c.name()), "requested_channel": c.name()}),
                    None,
                ));
            }
        }
    }
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    filters: Value,
    #[serde(default)]
    id: Option<Value>,
}

fn invalid(message: &str, id: Option<&Value>) -> Text {
    reply(
        "error",
        "system",
        json!({"code": "INVALID_MESSAGE", "message": message}),
        id,
    )
}

pub async fn serve(
    state: AppState,
    ws: Socket,
    credential: super::Credential,
    unauthenticated: crate::ws::Unauthenticated,
) {
    let ctl = Control::for_config(&state.config.ws);
    let admitted = super::admit(&state, credential, None, &ctl).await;
    drop(unauthenticated);
    let (actor, registration) = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            refusal.refuse(ws, super::auth_failed()).await;
            return;
        }
    };
    let hub = state.channels_hub.clone();
    let id = hub.next.fetch_add(1, Ordering::Relaxed);
    hub.lock().insert(
        id,
        Sub {
            user: actor.user.clone(),
            ctl: ctl.clone(),
            channels: HashMap::new(),
        },
    );
    let _membership = Membership {
        hub: hub.clone(),
        id,
    };
    registration.settle(&state);
    let opts = super::options(&state, Some(actor.claims.exp));
    let shutdown = state.ws.shutdown.subscribe();
    let st = state.clone();
    let c = ctl.clone();
    conn::run(ws, ctl, opts, shutdown, move |text| {
        on_text(&st, &hub, id, &c, text);
        Reply::Continue
    })
    .await;
}

/// Decodes one incoming message (the handler's first step, and the fuzz target's).
fn parse_message(text: &str) -> serde_json::Result<Incoming> {
    serde_json::from_str(text)
}

/// The stateless part of handling a message, for the fuzz target (`crate::fuzz`): decoding,
/// then the channel name, the filters and a command's fields as `on_text` reads them.
pub fn fuzz_message(text: &str) {
    let Ok(msg) = parse_message(text) else {
        return;
    };
    let _ = msg.channel.as_deref().and_then(Channel::parse);
    let _ = Filters::parse(&msg.filters);
    let _ = command_timeout(&msg.data, Duration::from_secs(3600));
    if let Some(package) = msg.data.get("package").and_then(Value::as_str) {
        let _ = crate::agent::packages::valid_package(package);
    }
}

fn on_text(state: &AppState, hub: &Arc<Hub>, id: u64, ctl: &Arc<Control>, text: &str) {
    let msg: Incoming = match parse_message(text) {
        Ok(m) => m,
        Err(e) => {
            ctl.send(invalid(&format!("malformed message: {e}"), None));
            return;
        }
    };
    let mid = msg.id.as_ref();
    match msg.kind.as_str() {
        "ping" => {
            ctl.send(reply("pong", "system", json!({}), mid));
        }
        "subscribe" | "unsubscribe" => {
            let name = msg.channel.as_deref().unwrap_or("");
            let Some(channel) = Channel::parse(name) else {
                ctl.send(invalid(&format!("unknown channel {name:?}"), mid));
                return;
            };
            let mut subs = hub.lock();
            let Some(sub) = subs.get_mut(&id) else { return };
            if msg.kind == "unsubscribe" {
                sub.channels.remove(&channel);
                ctl.send(reply(
                    "response",
                    channel.name(),
                    json!({"subscribed": false}),
                    mid,
                ));
                return;
            }
            if !sub.user.has(channel.needs()) {
                ctl.send(reply(
                    "error",
                    "subscription",
                    json!({"code": "SUBSCRIPTION_FAILED",
                        "message": format!("Insufficient permissions for channel '{}'", channel.name()),
                        "requested_channel": channel.name()}),
                    mid,
                ));
                return;
            }
            let filters = match Filters::parse(&msg.filters) {
                Ok(f) => f,
                Err(why) => {
                    ctl.send(invalid(&why, mid));
                    return;
                }
            };
            // The response and the first events are queued before the hub lock is released,
            // so no live event of this channel can overtake them.
            ctl.send(reply(
                "response",
                channel.name(),
                json!({"subscribed": true}),
                mid,
            ));
            initial(state, channel, &filters, ctl);
            sub.channels.insert(channel, filters);
            drop(subs);
        }
        "command" => {
            let user = hub.lock().get(&id).map(|s| s.user.clone());
            let Some(user) = user else { return };
            if msg.channel.as_deref() == Some("package_operations") {
                package_operation(state, hub, user, ctl.clone(), msg.data, msg.id);
            } else {
                command(state, user, ctl.clone(), msg.data, msg.id);
            }
        }
        other => {
            ctl.send(invalid(&format!("unknown message type {other:?}"), mid));
        }
    }
}

fn command_failed(
    channel: &str,
    message: &str,
    host: &Value,
    execution_id: &str,
    id: Option<&Value>,
) -> Text {
    reply(
        "error",
        channel,
        json!({"code": "COMMAND_FAILED", "message": message, "host_id": host,
            "execution_id": execution_id}),
        id,
    )
}

/// One job asked for on a socket (a command or a package operation): its execution id, its
/// host and the request it answers.
struct Job {
    channel: &'static str,
    execution_id: String,
    /// `data.host_id` as given (echoed in failures).
    host: Value,
    host_id: String,
    id: Option<Value>,
    ctl: Arc<Control>,
}

impl Job {
    /// What every job checks first: the permission it needs, then `data.host_id`; a failure
    /// is answered on the socket.
    fn start(
        channel: &'static str,
        (needs, refusal): (Permission, &str),
        user: &User,
        ctl: Arc<Control>,
        data: &Value,
        id: Option<Value>,
    ) -> Option<Self> {
        let mut job = Self {
            channel,
            execution_id: uuid::Uuid::new_v4().to_string(),
            host: data.get("host_id").cloned().unwrap_or(Value::Null),
            host_id: String::new(),
            id,
            ctl,
        };
        if !user.has(needs) {
            job.fail(refusal);
            return None;
        }
        let Some(host_id) = job.host.as_str().map(str::to_owned) else {
            job.fail("data.host_id is required");
            return None;
        };
        job.host_id = host_id;
        Some(job)
    }

    fn fail(&self, message: &str) {
        self.ctl.send(command_failed(
            self.channel,
            message,
            &self.host,
            &self.execution_id,
            self.id.as_ref(),
        ));
    }

    fn respond(&self, data: Value) {
        self.ctl
            .send(reply("response", self.channel, data, self.id.as_ref()));
    }

    /// Audits the job before it runs; false (answered as failed) when that cannot be done.
    async fn audited(&self, state: &AppState, entry: AuditEntry) -> bool {
        match state.record(entry, false).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, channel = self.channel, "cannot audit a job; not run");
                self.fail(if self.channel == "command_execution" {
                    "the command could not be recorded; not run"
                } else {
                    "the operation could not be recorded; not run"
                });
                false
            }
        }
    }
}

/// `command` on `command_execution`: runs through the host's agent (or, when allowed, on the
/// local host); the answer goes to this socket only. Every command is audited first.
fn command(state: &AppState, user: User, ctl: Arc<Control>, data: Value, id: Option<Value>) {
    let Some(job) = Job::start(
        "command_execution",
        (
            Permission::ExecuteCommands,
            "Insufficient permissions: commands need EXECUTE_COMMANDS",
        ),
        &user,
        ctl,
        &data,
        id,
    ) else {
        return;
    };
    let docker = data.get("docker").cloned();
    let command = data
        .get("command")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if docker.is_none() && command.trim().is_empty() {
        job.fail("data.command is required");
        return;
    }
    let timeout = command_timeout(&data, state.agents.command_timeout());
    let st = state.clone();
    tokio::spawn(async move {
        let host_id = job.host_id.clone();
        let hostname = st.hosts.hostname(&host_id).unwrap_or_default();
        let what = match &docker {
            Some(d) => format!(
                "docker {} {}",
                d["action"].as_str().unwrap_or(""),
                d["container_id"].as_str().unwrap_or("")
            ),
            None => command.clone(),
        };
        let audit = AuditEntry::new(user.username.clone(), "command.execute")
            .actor_id(user.uuid)
            .target(host_id.clone())
            .detail(what.chars().take(1024).collect::<String>());
        if !job.audited(&st, audit).await {
            return;
        }
        st.agents.log(
            &host_id,
            "INFO",
            &format!("{} runs: {}", user.username, what),
        );
        let started = std::time::Instant::now();
        let mut out = json!({"execution_id": job.execution_id, "host_id": host_id,
            "hostname": hostname, "command": what});
        let result = match &docker {
            Some(d) => st
                .agents
                .docker(
                    &host_id,
                    d["action"].as_str().unwrap_or(""),
                    d["container_id"].as_str().unwrap_or(""),
                )
                .await
                .map(|(success, message)| {
                    out["status"] = json!(if success { "completed" } else { "failed" });
                    out["success"] = json!(success);
                    out["message"] = json!(message);
                    out["execution_time"] = json!(started.elapsed().as_secs_f64());
                }),
            None => st
                .agents
                .command(&host_id, &command, timeout)
                .await
                .map(|o| {
                    out["status"] = json!("completed");
                    out["exit_code"] = json!(o.exit_code);
                    out["stdout"] = json!(o.stdout);
                    out["stderr"] = json!(o.stderr);
                    let ms = if o.duration_ms > 0 {
                        o.duration_ms as f64
                    } else {
                        started.elapsed().as_secs_f64() * 1000.0
                    };
                    out["execution_time"] = json!((ms / 1000.0 * 1000.0).round() / 1000.0);
                }),
        };
        match result {
            Ok(()) => {
                st.agents
                    .log(&host_id, "INFO", &format!("command finished: {what}"));
                job.respond(out);
            }
            Err(e) => {
                st.agents
                    .log(&host_id, "WARNING", &format!("command failed: {what}: {e}"));
                job.fail(&e);
            }
        }
    });
}

/// A command's `data.timeout` (seconds, rounded up), at most `max`; `max` when absent, not
/// positive, or too large for a `Duration`.
fn command_timeout(data: &Value, max: Duration) -> Duration {
    data.get("timeout")
        .and_then(Value::as_f64)
        .filter(|t| *t > 0.0)
        .and_then(|t| Duration::try_from_secs_f64(t.ceil()).ok())
        .map_or(max, |t| t.min(max))
}

/// `command` on `package_operations`: `{host_id, operation, package}`; progress events go to
/// the channel's subscribers (filter `host_id`), the final answer to this socket as well.
fn package_operation(
    state: &AppState,
    hub: &Arc<Hub>,
    user: User,
    ctl: Arc<Control>,
    data: Value,
    id: Option<Value>,
) {
    let Some(job) = Job::start(
        "package_operations",
        (
            Permission::ManageSystemResources,
            "Insufficient permissions: package operations need MANAGE_SYSTEM_RESOURCES",
        ),
        &user,
        ctl,
        &data,
        id,
    ) else {
        return;
    };
    let operation = data.get("operation").and_then(Value::as_str).unwrap_or("");
    if !["install", "update", "remove"].contains(&operation) {
        job.fail("data.operation must be install, update or remove");
        return;
    }
    let operation = operation.to_owned();
    let package = data
        .get("package")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !crate::agent::packages::valid_package(&package) {
        job.fail("data.package is not a valid package name");
        return;
    }
    let st = state.clone();
    let hub = hub.clone();
    tokio::spawn(async move {
        let host_id = job.host_id.clone();
        let hostname = st.hosts.hostname(&host_id).unwrap_or_default();
        let audit = AuditEntry::new(user.username.clone(), format!("package.{operation}"))
            .actor_id(user.uuid)
            .target(host_id.clone())
            .detail(package.clone());
        if !job.audited(&st, audit).await {
            return;
        }
        let base = json!({"execution_id": job.execution_id, "host_id": host_id, "hostname": hostname,
            "operation": operation, "package": package});
        let emit = |p: &Value| {
            let mut d = base.clone();
            for k in ["status", "progress", "message"] {
                d[k] = p.get(k).cloned().unwrap_or(Value::Null);
            }
            d
        };
        st.agents.log(
            &host_id,
            "INFO",
            &format!("{} starts: {operation} {package}", user.username),
        );
        let h = hub.clone();
        let hid = host_id.clone();
        let result = st
            .agents
            .package(&host_id, &operation, &package, |p| {
                let d = emit(p);
                h.fan_out(
                    Channel::PackageOperations,
                    |f| f.host(&hid),
                    event(Channel::PackageOperations, &d),
                );
            })
            .await;
        match result {
            Ok(done) => {
                let mut d = emit(&done);
                d["exit_code"] = done.get("exit_code").cloned().unwrap_or(Value::Null);
                hub.fan_out(
                    Channel::PackageOperations,
                    |f| f.host(&host_id),
                    event(Channel::PackageOperations, &d),
                );
                st.agents.log(
                    &host_id,
                    "INFO",
                    &format!("{operation} {package}: {}", d["status"]),
                );
                job.respond(d);
            }
            Err(e) => {
                let mut d = base.clone();
                d["status"] = json!("failed");
                d["message"] = json!(e);
                hub.fan_out(
                    Channel::PackageOperations,
                    |f| f.host(&host_id),
                    event(Channel::PackageOperations, &d),
                );
                st.agents.log(
                    &host_id,
                    "WARNING",
                    &format!("{operation} {package} failed: {e}"),
                );
                job.fail(&e);
            }
        }
    });
}

/// What a new subscriber gets at once: the current fleet totals, the latest metrics, the
/// hosts' current status.
fn initial(state: &AppState, channel: Channel, f: &Filters, ctl: &Control) {
    match channel {
        Channel::FleetStatus => {
            let data = state.hosts.fleet(
                state.alerts.hosts_with_alerts(),
                state.agents.pending_operations(),
            );
            ctl.send(event(channel, &data));
        }
        Channel::HostMetrics => {
            for h in state
                .hosts
                .list()
                .into_iter()
                .filter(|h| f.host(&h.host_id))
            {
                if let Some(m) = &h.metrics {
                    ctl.send(event(
                        channel,
                        &metrics_data(&h.host_id, m, f.metrics.as_deref()),
                    ));
                }
            }
        }
        Channel::SystemAlerts => {
            for a in state.alerts.active() {
                if f.severity.as_ref().is_none_or(|s| s.contains(&a.severity)) {
                    ctl.send(event(channel, &alert_data(&a)));
                }
            }
        }
        Channel::HostStatus => {
            for h in state
                .hosts
                .list()
                .into_iter()
                .filter(|h| f.host(&h.host_id))
            {
                let data = json!({"host_id": h.host_id, "hostname": h.hostname, "status": h.status,
                    "previous_status": h.status, "timestamp": now_iso()});
                ctl.send(event(channel, &data));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_timeout_is_clamped_and_never_panics() {
        let max = Duration::from_secs(300);
        let t = |v: Value| command_timeout(&json!({ "timeout": v }), max);
        assert_eq!(t(json!(2.2)), Duration::from_secs(3));
        assert_eq!(t(json!(1000)), max);
        assert_eq!(t(json!(-1)), max);
        assert_eq!(t(json!("5")), max);
        // Found by fuzzing: too large for a Duration (this used to panic).
        assert_eq!(t(json!(1e300)), max);
        assert_eq!(t(json!(f64::MAX)), max);
        assert_eq!(command_timeout(&json!({}), max), max);
    }
}
