//! The VM monitor and console (`api-docs/E-vm-monitor-and-console.md`): `/ws/vms/{name}` and
//! `/ws/vms/{name}/console`, `{name}` being a uuid or a title. Messages are
//! `{type, timestamp, data}`. One hub routes status changes and metrics (encoded once per
//! machine) and console output (per session) to the sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchard_plugin_api::{MachineStatus, PowerAction};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::conn::{self, CloseWith, Control, Reply, Text, code};
use super::{Refusal, Seen, Socket};
use crate::backends::Backend;
use crate::db::AuditEntry;
use crate::machines::{Machine, MachineError, MachineEvent, Machines, controls, sees};
use crate::model::{Permission, User, now_iso};
use crate::state::AppState;

const MIB: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Monitor,
    Console,
}

/// `/ws/vms/{name}` or `/ws/vms/{name}/console`.
pub fn route(path: &str) -> Option<(String, Kind)> {
    let rest = path.strip_prefix("/ws/vms/")?;
    let (name, kind) = match rest.strip_suffix("/console") {
        Some(name) => (name, Kind::Console),
        None => (rest, Kind::Monitor),
    };
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let decoded = form_urlencoded::parse(format!("n={name}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    Some((decoded, kind))
}

/// `{type, timestamp, data}`.
pub fn message(kind: &str, data: Value) -> Text {
    Text::from(json!({"type": kind, "timestamp": now_iso(), "data": data}).to_string())
}

fn error(code_name: &str, msg: &str, request_id: Option<&str>) -> Text {
    let mut data = json!({"code": code_name, "message": msg});
    if let Some(id) = request_id {
        data["requestId"] = json!(id);
    }
    message("error", data)
}

fn seconds_since(iso: &str) -> u64 {
    time::OffsetDateTime::parse(iso, &time::format_description::well_known::Rfc3339)
        .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64)
        .unwrap_or(0)
}

fn status_message(m: &Machine) -> Text {
    let s = m.state_payload();
    let uptime = match (&s.boot_timestamp, s.active) {
        (Some(b), true) => seconds_since(b),
        _ => 0,
    };
    let since = m
        .status_since
        .clone()
        .or_else(|| s.boot_timestamp.clone())
        .unwrap_or_else(now_iso);
    message(
        "status",
        json!({"status": s.status, "lastStateChange": since, "uptime": uptime}),
    )
}

fn metrics_message(m: &Machine) -> Text {
    let s = m.state_payload();
    message(
        "metrics",
        json!({
            "cpu": {"utilization": s.cpu_percent},
            "memory": {"used": s.ram_used * MIB, "total": s.ram_max * MIB},
            "network": {"rxBytes": s.net_rx_bytes, "txBytes": s.net_tx_bytes},
            "disk": {"readBytes": s.disk_read_bytes, "writeBytes": s.disk_write_bytes},
        }),
    )
}

/// One socket as the hub sees it: where its messages go, and whose it is (the registry's
/// latest view of the user, for the access re-checks).
struct Member {
    ctl: Arc<Control>,
    user: Uuid,
    seen: Arc<Seen>,
}

struct ConsoleSub {
    member: Member,
    machine: Uuid,
    /// Trailing bytes of an incomplete UTF-8 sequence, kept for the next chunk.
    carry: Vec<u8>,
}

/// Why a socket of `kind` may no longer stay on `m` for `user` (contract 2: a monitor needs
/// sight of the machine, a console control of it plus ACCESS_CONSOLE); `None` while it may.
fn lost(kind: Kind, user: &User, m: &Machine) -> Option<&'static str> {
    match kind {
        Kind::Monitor if !sees(user, &m.relations) => Some("you no longer have access to this VM"),
        Kind::Console if !controls(user, &m.relations) || !user.has(Permission::AccessConsole) => {
            Some("the console needs control of the VM and ACCESS_CONSOLE")
        }
        _ => None,
    }
}

impl Member {
    /// Ends a monitor whose machine was deleted: `VM_NOT_FOUND`, then close 1000.
    fn machine_deleted(&self) {
        self.ctl
            .send(error("VM_NOT_FOUND", "the machine was deleted", None));
        self.ctl.close(CloseWith::new(1000, "machine deleted"));
    }

    /// Ends a console: `eof`, then close 1000 with `why`.
    fn console_ended(&self, why: &'static str) {
        self.ctl
            .send(message("console", json!({"content": "", "eof": true})));
        self.ctl.close(CloseWith::new(1000, why));
    }

    /// Closes the socket (4403, after an `AUTH_ERROR`) if `user` lost access to `m`.
    fn recheck(&self, kind: Kind, user: &User, m: &Machine) {
        if let Some(why) = lost(kind, user, m) {
            self.ctl.close(CloseWith::new(code::FORBIDDEN, why));
        }
    }
}

/// E's `AUTH_ERROR` before a 4401 (expired or revoked token) or 4403 (access lost) close.
fn farewell(c: &CloseWith) -> Option<Text> {
    matches!(c.code, code::UNAUTHORIZED | code::FORBIDDEN)
        .then(|| error("AUTH_ERROR", &c.reason, None))
}

/// Output that arrived for a session before its socket joined (the banner a backend sends
/// while `console_open` is still returning), kept briefly and bounded.
struct Early {
    since: std::time::Instant,
    data: Vec<u8>,
}

const EARLY_MAX_BYTES: usize = 64 * 1024;
const EARLY_MAX_SESSIONS: usize = 256;
const EARLY_TTL: Duration = Duration::from_secs(10);

pub struct Hub {
    machines: Arc<Machines>,
    monitors: Mutex<HashMap<Uuid, HashMap<u64, Member>>>,
    consoles: Mutex<HashMap<Arc<str>, ConsoleSub>>,
    early: Mutex<HashMap<Arc<str>, Early>>,
    next: AtomicU64,
}

struct Membership {
    hub: Arc<Hub>,
    id: u64,
    machine: Uuid,
    session: Option<Arc<str>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut mons = self.hub.lock_monitors();
        if let Some(set) = mons.get_mut(&self.machine) {
            set.remove(&self.id);
            if set.is_empty() {
                mons.remove(&self.machine);
            }
        }
        drop(mons);
        if let Some(s) = &self.session {
            self.hub.lock_consoles().remove(s);
        }
    }
}

/// Splits `data` (after `carry`) into valid UTF-8 text and an incomplete tail.
fn decode(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let bytes = std::mem::take(carry);
    match std::str::from_utf8(&bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            let (ok, tail) = bytes.split_at(e.valid_up_to());
            *carry = tail.to_vec();
            String::from_utf8_lossy(ok).into_owned()
        }
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

impl Hub {
    pub fn new(machines: Arc<Machines>) -> Arc<Self> {
        Arc::new(Self {
            machines,
            monitors: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
            early: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    fn lock_monitors(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, HashMap<u64, Member>>> {
        self.monitors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_consoles(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, ConsoleSub>> {
        self.consoles.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(self: &Arc<Self>, state: &AppState) {
        let hub = self.clone();
        let mut rx = self.machines.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => hub.on_event(&e),
                    Err(RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "vms hub fell behind; rechecking its sockets");
                        hub.resync();
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let hub = self.clone();
        let period = Duration::from_secs(state.config.vms.metrics_interval.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                hub.per_machine(metrics_message);
            }
        });
        let hub = self.clone();
        let period = Duration::from_secs(state.config.vms.ping_interval.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                let beat = message("heartbeat", json!({}));
                for set in hub.lock_monitors().values() {
                    for mon in set.values() {
                        mon.ctl.send(beat.clone());
                    }
                }
                for sub in hub.lock_consoles().values() {
                    sub.member.ctl.send(beat.clone());
                }
            }
        });
    }

    /// One message per monitored machine, encoded once, to each of its monitors.
    fn per_machine(&self, make: fn(&Machine) -> Text) {
        let mons = self.lock_monitors();
        for (uuid, set) in mons.iter() {
            if let Some(m) = self.machines.get(*uuid) {
                let msg = make(&m);
                for mon in set.values() {
                    mon.ctl.send(msg.clone());
                }
            }
        }
    }

    fn on_event(&self, e: &MachineEvent) {
        match e {
            MachineEvent::StatusChanged { uuid, .. } => {
                // Most machines have no monitor: encode nothing for them (under churn this
                // ran for every status change).
                if self
                    .lock_monitors()
                    .get(uuid)
                    .is_none_or(|set| set.is_empty())
                {
                    return;
                }
                let Some(m) = self.machines.get(*uuid) else {
                    return;
                };
                let msg = status_message(&m);
                if let Some(set) = self.lock_monitors().get(uuid) {
                    for mon in set.values() {
                        mon.ctl.send(msg.clone());
                    }
                }
            }
            MachineEvent::Deleted { uuid } => {
                if let Some(set) = self.lock_monitors().get(uuid) {
                    set.values().for_each(Member::machine_deleted);
                }
            }
            MachineEvent::RelationsChanged { machine } => {
                // Ownership or assignment changed: whoever no longer sees (monitor) or
                // controls (console) the machine loses its socket.
                if let Some(set) = self.lock_monitors().get(&machine.uuid) {
                    for mon in set.values() {
                        if let Some(user) = mon.seen.user() {
                            mon.recheck(Kind::Monitor, &user, machine);
                        }
                    }
                }
                for sub in self
                    .lock_consoles()
                    .values()
                    .filter(|s| s.machine == machine.uuid)
                {
                    if let Some(user) = sub.member.seen.user() {
                        sub.member.recheck(Kind::Console, &user, machine);
                    }
                }
            }
            MachineEvent::ConsoleOutput { session, data } => {
                let mut consoles = self.lock_consoles();
                if let Some(sub) = consoles.get_mut(session) {
                    let text = decode(&mut sub.carry, data);
                    if !text.is_empty() {
                        sub.member
                            .ctl
                            .send(message("console", json!({"content": text, "eof": false})));
                    }
                } else {
                    drop(consoles);
                    let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
                    early.retain(|_, e| e.since.elapsed() < EARLY_TTL);
                    if early.len() < EARLY_MAX_SESSIONS || early.contains_key(session) {
                        let e = early.entry(session.clone()).or_insert_with(|| Early {
                            since: std::time::Instant::now(),
                            data: Vec::new(),
                        });
                        let room = EARLY_MAX_BYTES.saturating_sub(e.data.len());
                        e.data.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
            MachineEvent::ConsoleClosed { session } => {
                if let Some(sub) = self.lock_consoles().get(session) {
                    sub.member.console_ended("console closed");
                }
            }
            _ => {}
        }
    }

    /// After missed events: every monitor gets its machine's current status, and every
    /// socket is checked against the registry as the missed events would have: a deleted
    /// machine ends its monitors (`VM_NOT_FOUND`) and consoles (`eof`), lost access closes
    /// 4403. Console output among the missed events is gone (as from a serial line).
    fn resync(&self) {
        for (uuid, set) in self.lock_monitors().iter() {
            let Some(m) = self.machines.get(*uuid) else {
                set.values().for_each(Member::machine_deleted);
                continue;
            };
            let msg = status_message(&m);
            for mon in set.values() {
                mon.ctl.send(msg.clone());
                if let Some(user) = mon.seen.user() {
                    mon.recheck(Kind::Monitor, &user, &m);
                }
            }
        }
        for sub in self.lock_consoles().values() {
            let Some(m) = self.machines.get(sub.machine) else {
                sub.member.console_ended("machine deleted");
                continue;
            };
            if let Some(user) = sub.member.seen.user() {
                sub.member.recheck(Kind::Console, &user, &m);
            }
        }
    }

    /// A user's account changed: their sockets whose access it withdrew close (4403).
    pub fn user_changed(&self, user: &User) {
        for (uuid, set) in self.lock_monitors().iter() {
            let Some(m) = self.machines.get(*uuid) else {
                continue;
            };
            for mon in set.values().filter(|mon| mon.user == user.uuid) {
                mon.recheck(Kind::Monitor, user, &m);
            }
        }
        for sub in self
            .lock_consoles()
            .values()
            .filter(|s| s.member.user == user.uuid)
        {
            if let Some(m) = self.machines.get(sub.machine) {
                sub.member.recheck(Kind::Console, user, &m);
            }
        }
    }

    fn join(
        self: &Arc<Self>,
        machine: Uuid,
        ctl: &Arc<Control>,
        user: Uuid,
        seen: &Arc<Seen>,
        session: Option<Arc<str>>,
    ) -> Membership {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let member = Member {
            ctl: ctl.clone(),
            user,
            seen: seen.clone(),
        };
        match &session {
            Some(s) => {
                let mut consoles = self.lock_consoles();
                let mut sub = ConsoleSub {
                    member,
                    machine,
                    carry: Vec::new(),
                };
                let early = self
                    .early
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(s);
                if let Some(e) = early {
                    let text = decode(&mut sub.carry, &e.data);
                    if !text.is_empty() {
                        ctl.send(message("console", json!({"content": text, "eof": false})));
                    }
                }
                consoles.insert(s.clone(), sub);
            }
            None => {
                self.lock_monitors()
                    .entry(machine)
                    .or_default()
                    .insert(id, member);
            }
        }
        Membership {
            hub: self.clone(),
            id,
            machine,
            session,
        }
    }
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// Refuses a socket with one `error` message, then a close.
async fn refuse(ws: Socket, code_name: &str, msg: &str, close: u16) {
    conn::refuse(
        ws,
        Some(error(code_name, msg, None)),
        CloseWith::new(close, msg.to_owned()),
    )
    .await;
}

pub async fn serve(
    state: AppState,
    ws: Socket,
    name: String,
    kind: Kind,
    credential: super::Credential,
    unauthenticated: crate::ws::Unauthenticated,
) {
    let ctl = Control::for_config(&state.config.ws);
    let needs = (kind == Kind::Console).then_some(Permission::AccessConsole);
    let admitted = super::admit(&state, credential, needs, &ctl).await;
    drop(unauthenticated);
    let (actor, registration) = match admitted {
        Ok(a) => a,
        Err(Refusal::BadToken) => {
            refuse(
                ws,
                "AUTH_ERROR",
                "invalid or missing token",
                code::UNAUTHORIZED,
            )
            .await;
            return;
        }
        Err(Refusal::ServerError) => {
            refuse(ws, "UNKNOWN_ERROR", "server error", code::SERVER_ERROR).await;
            return;
        }
    };
    let machines = state.machines.clone();
    let Some(m) = machines
        .find(&name)
        .filter(|m| sees(&actor.user, &m.relations))
    else {
        refuse(ws, "VM_NOT_FOUND", &format!("no VM {name}"), 1000).await;
        return;
    };
    let title = m.info.title.clone();
    let uuid = m.uuid;
    let mut session: Option<(Arc<Backend>, Arc<str>)> = None;
    if kind == Kind::Console {
        if !controls(&actor.user, &m.relations) || !actor.has(Permission::AccessConsole) {
            refuse(
                ws,
                "AUTH_ERROR",
                "the console needs control of the VM and ACCESS_CONSOLE",
                code::FORBIDDEN,
            )
            .await;
            return;
        }
        let running = m
            .state
            .as_ref()
            .is_some_and(|s| s.status == MachineStatus::Running);
        if !running {
            refuse(
                ws,
                "VM_NOT_RUNNING",
                "cannot connect to console: VM is not running",
                1000,
            )
            .await;
            return;
        }
        match machines.console_open(uuid).await {
            Ok((backend, s)) => session = Some((backend, Arc::from(s))),
            Err(MachineError::Backend(crate::backends::BackendError::InvalidState(msg))) => {
                refuse(ws, "VM_NOT_RUNNING", &msg, 1000).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "console open failed");
                refuse(ws, "UNKNOWN_ERROR", "the console could not be opened", 1000).await;
                return;
            }
        }
        audit(&state, &actor.user.username, "console.open", uuid).await;
        let m2 = machines.clone();
        tokio::spawn(async move { m2.refresh_connections(uuid).await });
    }
    ctl.send(message(
        "connection",
        json!({"status": "connected", "vm": title}),
    ));
    if kind == Kind::Monitor {
        ctl.send(status_message(&m));
        ctl.send(metrics_message(&m));
    }
    let seen = registration.seen();
    let _membership = state.vms_hub.join(
        uuid,
        &ctl,
        actor.user.uuid,
        &seen,
        session.as_ref().map(|(_, s)| s.clone()),
    );
    registration.settle(&state);
    // A change to the user or the machine's relations that the hub saw before this socket
    // joined it: check once more, now that later ones reach it.
    if let (Some(user), Some(m)) = (seen.user(), machines.get(uuid))
        && let Some(why) = lost(kind, &user, &m)
    {
        ctl.close(CloseWith::new(code::FORBIDDEN, why));
    }
    // Console input goes through one ordered queue to the backend.
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<ConsoleInput>(64);
    if let Some((backend, s)) = session.clone() {
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                let result = match input {
                    ConsoleInput::Data(d) => backend.console_write(s.to_string(), d).await,
                    ConsoleInput::Resize(c, r) => backend.console_resize(s.to_string(), c, r).await,
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "console input failed");
                }
            }
        });
    }
    let mut opts = super::options(&state, Some(actor.claims.exp));
    opts.ping_interval = Duration::from_secs(state.config.vms.ping_interval.max(1));
    opts.farewell = Some(farewell);
    let shutdown = state.ws.shutdown.subscribe();
    let handler = Handler {
        state: state.clone(),
        seen,
        uuid,
        kind,
        ctl: ctl.clone(),
        input: input_tx,
    };
    conn::run(ws, ctl, opts, shutdown, move |text| handler.on_text(text)).await;
    if let Some((backend, s)) = session {
        let _ = backend.console_close(s.to_string()).await;
        audit(&state, &actor.user.username, "console.close", uuid).await;
        machines.refresh_connections(uuid).await;
    }
}

enum ConsoleInput {
    Data(Vec<u8>),
    Resize(u16, u16),
}

struct Handler {
    state: AppState,
    /// The user as of their latest change (never the snapshot taken at connect).
    seen: Arc<Seen>,
    uuid: Uuid,
    kind: Kind,
    ctl: Arc<Control>,
    input: tokio::sync::mpsc::Sender<ConsoleInput>,
}

impl Handler {
    fn on_text(&self, text: &str) -> Reply {
        let msg: Incoming = match parse_message(text) {
            Ok(m) => m,
            Err(e) => {
                self.ctl.send(error(
                    "INVALID_COMMAND",
                    &format!("malformed message: {e}"),
                    None,
                ));
                return Reply::Continue;
            }
        };
        match (msg.kind.as_str(), self.kind) {
            ("heartbeat", _) => {
                self.ctl.send(message("heartbeat", json!({})));
            }
            ("command", _) => self.command(&msg.data),
            ("console_input", Kind::Console) => match msg
                .data
                .get("content")
                .and_then(Value::as_str)
            {
                Some(content) => {
                    if self
                        .input
                        .try_send(ConsoleInput::Data(content.as_bytes().to_vec()))
                        .is_err()
                    {
                        self.ctl
                            .send(error("UNKNOWN_ERROR", "console input backlog full", None));
                    }
                }
                None => {
                    self.ctl.send(error(
                        "INVALID_COMMAND",
                        "console_input needs data.content",
                        None,
                    ));
                }
            },
            ("console_resize", Kind::Console) => match console_size(&msg.data) {
                Some((c, r)) => {
                    let _ = self.input.try_send(ConsoleInput::Resize(c, r));
                }
                None => {
                    self.ctl.send(error(
                        "INVALID_COMMAND",
                        "console_resize needs data.cols and data.rows",
                        None,
                    ));
                }
            },
            (other, _) => {
                self.ctl.send(error(
                    "INVALID_COMMAND",
                    &format!("unknown message type {other:?}"),
                    None,
                ));
            }
        }
        Reply::Continue
    }

    fn command(&self, data: &Value) {
        let request_id = data
            .get("requestId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("req-{}", Uuid::new_v4()));
        let action = match power_action(data) {
            Ok(a) => a,
            Err(what) => {
                self.ctl
                    .send(error("INVALID_COMMAND", &what, Some(&request_id)));
                return;
            }
        };
        let machines = self.state.machines.clone();
        let Some(m) = machines.get(self.uuid) else {
            self.ctl.send(error(
                "VM_NOT_FOUND",
                "the machine no longer exists",
                Some(&request_id),
            ));
            return;
        };
        let Some(user) = self.seen.user() else {
            return;
        };
        if !controls(&user, &m.relations) {
            self.ctl.send(error(
                "AUTH_ERROR",
                "controlling this VM needs ownership, assignment or MANAGE_ALL_VMS",
                Some(&request_id),
            ));
            return;
        }
        let ctl = self.ctl.clone();
        let uuid = self.uuid;
        let state = self.state.clone();
        let username = user.username;
        let timeout = Duration::from_secs(self.state.config.vms.command_timeout.max(1));
        tokio::spawn(async move {
            let (success, text) = carry_out(&machines, uuid, action, timeout).await;
            if success {
                audit(
                    &state,
                    &username,
                    &format!("machine.{}", action.as_str()),
                    uuid,
                )
                .await;
            }
            ctl.send(message(
                "response",
                json!({"requestId": request_id, "success": success, "message": text}),
            ));
        });
    }
}

/// Decodes one incoming message (the handler's first step, and the fuzz target's).
fn parse_message(text: &str) -> serde_json::Result<Incoming> {
    serde_json::from_str(text)
}

/// A `command`'s `data.action`.
fn power_action(data: &Value) -> Result<PowerAction, String> {
    match data.get("action").and_then(Value::as_str) {
        Some("start") => Ok(PowerAction::Start),
        Some("stop") => Ok(PowerAction::Stop),
        Some("restart") => Ok(PowerAction::Restart),
        Some("suspend") => Ok(PowerAction::Suspend),
        Some("resume") => Ok(PowerAction::Resume),
        Some(a) => Err(format!("unknown action {a:?}")),
        None => Err("data.action is required".into()),
    }
}

/// A `console_resize`'s `data.cols` and `data.rows`: both 1..=65535.
fn console_size(data: &Value) -> Option<(u16, u16)> {
    let dim = |k: &str| {
        data.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u16::try_from(v).ok())
            .filter(|v| *v > 0)
    };
    Some((dim("cols")?, dim("rows")?))
}

/// The stateless part of handling a message, for the fuzz target (`crate::fuzz`): decoding,
/// then a command's action and a resize's size as `on_text` reads them.
pub fn fuzz_message(text: &str) {
    if let Ok(msg) = parse_message(text) {
        let _ = power_action(&msg.data);
        let _ = console_size(&msg.data);
    }
}

/// Whether `action`, issued when the machine's status epoch was `epoch`, shows as complete
/// in the registry's view `m` of the machine: `Some(Ok)` done, `Some(Err)` failed, `None`
/// not yet (or not to be told from the status alone). Used when events may have been missed.
fn settled(action: PowerAction, epoch: u64, m: Option<&Machine>) -> Option<Result<(), String>> {
    let Some(m) = m else {
        return Some(Err("the machine was deleted".to_owned()));
    };
    let status = m.state.as_ref().map(|s| s.status)?;
    let moved = m.status_epoch > epoch;
    let done = match action {
        PowerAction::Start | PowerAction::Resume => status == MachineStatus::Running,
        PowerAction::Stop | PowerAction::ForceOff => status == MachineStatus::Stopped,
        // Running before and after: only a status change in between tells it happened.
        PowerAction::Restart => moved && status == MachineStatus::Running,
        PowerAction::Suspend => {
            matches!(status, MachineStatus::Suspended | MachineStatus::Paused)
        }
    };
    if done {
        Some(Ok(()))
    } else if moved && status == MachineStatus::Error {
        Some(Err("the machine is in error".to_owned()))
    } else {
        None
    }
}

/// Runs an action and waits, at most `timeout`, for it to complete: `(success, message)`.
async fn carry_out(
    machines: &Machines,
    uuid: Uuid,
    action: PowerAction,
    timeout: Duration,
) -> (bool, String) {
    let mut rx = machines.subscribe();
    let epoch = machines.get(uuid).map_or(0, |m| m.status_epoch);
    if let Err(e) = machines.power(uuid, action).await {
        return (false, format!("Command '{}' failed: {e}", action.as_str()));
    }
    let done = async {
        // After missed events the outcome may be among them: the registry's current status
        // decides then, and on every status change after.
        let mut lagged = false;
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "a VM command missed machine events; re-checking"
                    );
                    lagged = true;
                    if let Some(outcome) = settled(action, epoch, machines.get(uuid).as_ref()) {
                        return outcome;
                    }
                    continue;
                }
                Err(RecvError::Closed) => return Err("the server is shutting down".to_owned()),
            };
            use MachineEvent as E;
            if lagged
                && matches!(&e, E::StatusChanged { uuid: u, .. } if *u == uuid)
                && let Some(outcome) = settled(action, epoch, machines.get(uuid).as_ref())
            {
                return outcome;
            }
            match (action, e) {
                (PowerAction::Start | PowerAction::Restart, E::BootSuccess { uuid: u })
                    if u == uuid =>
                {
                    return Ok(());
                }
                (PowerAction::Start | PowerAction::Restart, E::BootFail { uuid: u, error })
                    if u == uuid =>
                {
                    return Err(error);
                }
                (PowerAction::Stop | PowerAction::Restart, E::ShutdownFail { uuid: u, error })
                    if u == uuid =>
                {
                    return Err(error);
                }
                (PowerAction::Stop, E::ShutdownSuccess { uuid: u }) if u == uuid => return Ok(()),
                (
                    PowerAction::Suspend,
                    E::StatusChanged {
                        uuid: u,
                        status: MachineStatus::Suspended | MachineStatus::Paused,
                    },
                ) if u == uuid => return Ok(()),
                (
                    PowerAction::Resume,
                    E::StatusChanged {
                        uuid: u,
                        status: MachineStatus::Running,
                    },
                ) if u == uuid => return Ok(()),
                (_, E::Deleted { uuid: u }) if u == uuid => {
                    return Err("the machine was deleted".to_owned());
                }
                _ => {}
            }
        }
    };
    // Suspend and resume may complete before we listen (the plugin reports synchronously):
    // the registry already shows the result then.
    if let Some(m) = machines.get(uuid) {
        let status = m.state.as_ref().map(|s| s.status);
        let already = match action {
            PowerAction::Suspend => matches!(
                status,
                Some(MachineStatus::Suspended | MachineStatus::Paused)
            ),
            PowerAction::Resume => status == Some(MachineStatus::Running),
            _ => false,
        };
        if already {
            return (
                true,
                format!("Command '{}' completed successfully", action.as_str()),
            );
        }
    }
    match tokio::time::timeout(timeout, done).await {
        Ok(Ok(())) => (
            true,
            format!("Command '{}' completed successfully", action.as_str()),
        ),
        Ok(Err(reason)) => (
            false,
            format!("Command '{}' failed: {reason}", action.as_str()),
        ),
        Err(_) => (
            false,
            format!("Command '{}' did not complete in time", action.as_str()),
        ),
    }
}

async fn audit(state: &AppState, username: &str, action: &str, machine: Uuid) {
    let entry = AuditEntry::new(username.to_owned(), action).target(machine.to_string());
    if let Err(e) = state.record(entry, action.starts_with("console.")).await {
        tracing::error!(error = %e, "cannot write an audit entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/ws/vms/web-1"),
            Some(("web-1".into(), Kind::Monitor))
        );
        assert_eq!(
            route("/ws/vms/web%201/console"),
            Some(("web 1".into(), Kind::Console))
        );
        assert_eq!(route("/ws/vms/"), None);
        assert_eq!(route("/ws/vms/a/b"), None);
    }

    fn machine(status: &str, epoch: u64) -> Machine {
        let info = serde_json::from_value(json!({
            "uuid": "u", "title": "t", "kind": "vm", "vcpu": 1, "ram_max_mib": 1,
        }))
        .unwrap();
        let state = serde_json::from_value(json!({
            "uuid": "u", "status": status, "vcpu": 1, "cpu_percent": 0.0, "ram_max_mib": 1,
            "ram_used_mib": 0, "boot_timestamp": null, "net_rx_bytes": 0, "net_tx_bytes": 0,
            "disk_read_bytes": 0, "disk_write_bytes": 0,
        }))
        .unwrap();
        Machine {
            uuid: Uuid::new_v4(),
            backend: Arc::from("sim"),
            info,
            state: Some(state),
            disks: None,
            connections: Vec::new(),
            relations: Default::default(),
            status_epoch: epoch,
            status_since: None,
        }
    }

    #[test]
    fn after_missed_events_the_registry_status_tells_the_outcome() {
        use PowerAction as A;
        let done = |a, epoch, m: &Machine| settled(a, epoch, Some(m));
        assert_eq!(done(A::Start, 1, &machine("running", 3)), Some(Ok(())));
        assert_eq!(done(A::Start, 1, &machine("booting", 2)), None);
        assert!(matches!(
            done(A::Start, 1, &machine("error", 2)),
            Some(Err(_))
        ));
        assert_eq!(done(A::Stop, 1, &machine("stopped", 2)), Some(Ok(())));
        assert_eq!(done(A::Stop, 1, &machine("shutting_down", 2)), None);
        assert_eq!(done(A::Suspend, 1, &machine("suspended", 2)), Some(Ok(())));
        assert_eq!(done(A::Resume, 1, &machine("running", 2)), Some(Ok(())));
        // A restart is done once the machine is running again after a change, not before.
        assert_eq!(done(A::Restart, 1, &machine("running", 1)), None);
        assert_eq!(done(A::Restart, 1, &machine("running", 4)), Some(Ok(())));
        assert!(matches!(settled(A::Start, 1, None), Some(Err(_))));
    }

    #[test]
    fn utf8_is_carried_across_chunks() {
        let mut carry = Vec::new();
        let bytes = "é".as_bytes();
        assert_eq!(decode(&mut carry, &bytes[..1]), "");
        assert_eq!(decode(&mut carry, &bytes[1..]), "é");
        assert!(carry.is_empty());
        assert_eq!(decode(&mut carry, b"ok\xff"), "ok\u{fffd}");
    }
}
