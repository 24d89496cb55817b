//! The VM monitor and console WebSockets (`api-docs/E-vm-monitor-and-console.md`, contract
//! 4.5): `/ws/vms/{name}` and `/ws/vms/{name}/console` against the built-in simulator —
//! the initial messages, status and metrics, commands and their responses, heartbeats,
//! errors and closes, the simulated serial console, its sessions and its audit trail.
//!
//! Also home of [`Sock`], a small JSON WebSocket client shared with `clusters.rs` (the
//! machines client in `wsclient.rs` checks the machines envelope, which these APIs do not
//! use).

use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Daemon, eventually, uuid_of};
use crate::machines::{create_machine, detail, power_ok, status, user_with, wait_status};
use crate::wsclient::is_iso8601_utc;

// ----- a small JSON WebSocket client -----

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a message the server owes us may take (simulated power actions included).
pub const T: Duration = Duration::from_secs(10);

/// The close code a close frame without a status reads as.
const NO_STATUS: u16 = 1005;

/// What reading a socket gave.
#[derive(Debug)]
pub enum Got {
    Msg(Value),
    /// A close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Ended(String),
}

/// One WebSocket connection that speaks JSON text messages. Every message read is checked
/// with `check` (the envelope of the API at hand).
pub struct Sock {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    check: fn(&Value),
    /// Protocol pings received so far (the library answers them while we read).
    pub pings: usize,
    /// The type of every message read so far.
    pub types: Vec<String>,
    /// The endpoint's path: every message is checked against `assets/api/asyncapi.yaml`.
    path: String,
}

/// `ws://ADDR/PATH` with the query pairs, encoded.
pub fn ws_url(d: &Daemon, path: &str, query: &[(&str, &str)]) -> String {
    let mut url = format!("ws://{}{}", d.addr(), path);
    if !query.is_empty() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            q.append_pair(k, v);
        }
        url.push('?');
        url.push_str(&q.finish());
    }
    url
}

impl Sock {
    /// Opens `url`, optionally with `Authorization: Bearer`; fails the test if the upgrade is
    /// refused.
    pub async fn open(url: &str, bearer: Option<&str>, check: fn(&Value)) -> Self {
        let mut req = url.into_client_request().expect("a WebSocket request");
        if let Some(token) = bearer {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
            );
        }
        let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("WebSocket connect to {url} timed out"))
            .unwrap_or_else(|e| match e {
                tungstenite::Error::Http(resp) => panic!(
                    "WebSocket upgrade to {url} refused with HTTP {}",
                    resp.status()
                ),
                e => panic!("WebSocket connect to {url} failed: {e}"),
            });
        Self {
            ws,
            check,
            pings: 0,
            types: Vec::new(),
            path: crate::apidocs::path_of(url),
        }
    }

    /// The next message, close or end before `deadline`; `None` on timeout.
    pub async fn next_until(&mut self, deadline: Instant) -> Option<Got> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Got::Ended("stream ended".into())),
                Ok(Some(Err(e))) => return Some(Got::Ended(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("message is not JSON ({e}): {t}"));
                    (self.check)(&v);
                    crate::apidocs::check_message(&self.path, &v);
                    self.types
                        .push(v["type"].as_str().unwrap_or_default().to_owned());
                    return Some(Got::Msg(v));
                }
                Message::Binary(b) => panic!("unexpected binary message of {} bytes", b.len()),
                Message::Ping(_) => self.pings += 1,
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    return Some(Got::Closed(frame.map_or(NO_STATUS, |f| u16::from(f.code))));
                }
            }
        }
    }

    /// The next message; fails the test on timeout, close or end.
    pub async fn recv(&mut self, within: Duration) -> Value {
        match self.next_until(Instant::now() + within).await {
            Some(Got::Msg(v)) => v,
            other => panic!(
                "expected a message within {within:?}, got {other:?}; types so far: {:?}",
                self.types
            ),
        }
    }

    /// The next message for which `want` holds, skipping others; fails the test on timeout,
    /// close or end.
    pub async fn recv_where(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut seen = self.collect_until(within, what, want).await;
        seen.pop().expect("collect_until returns the match last")
    }

    /// The next message of type `ty`, skipping others.
    pub async fn recv_type(&mut self, ty: &str, within: Duration) -> Value {
        self.recv_where(within, &format!("a {ty:?} message"), |v| v["type"] == ty)
            .await
    }

    /// Messages up to and including the first for which `want` holds; fails the test on
    /// timeout, close or end.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.next_until(deadline).await {
                Some(Got::Msg(v)) => {
                    let done = want(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                other => panic!(
                    "waiting {within:?} for {what}: got {other:?} after {seen:?}; types so far: {:?}",
                    self.types
                ),
            }
        }
    }

    /// Expects the socket to end with a close frame carrying `code` within `within`; returns
    /// the messages read before it.
    pub async fn expect_close(&mut self, code: u16, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.next_until(deadline).await {
                Some(Got::Msg(v)) => seen.push(v),
                Some(Got::Closed(got)) => {
                    assert_eq!(got, code, "close code; messages before it: {seen:?}");
                    return seen;
                }
                Some(Got::Ended(why)) => panic!(
                    "expected close {code}; the connection ended without a close frame ({why}) \
                     after {seen:?}"
                ),
                None => {
                    panic!("expected close {code} within {within:?}; still open after {seen:?}")
                }
            }
        }
    }

    /// Reads for `duration`, failing the test if the socket closes or ends meanwhile;
    /// returns the messages read.
    pub async fn open_for(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = Instant::now() + duration;
        let mut seen = Vec::new();
        loop {
            match self.next_until(deadline).await {
                None => return seen,
                Some(Got::Msg(v)) => seen.push(v),
                other => panic!("the socket ended within {duration:?}: {other:?} after {seen:?}"),
            }
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a text message");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Closes from our side (1000) and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = Instant::now() + T;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

// ----- the E envelope -----

/// Every status the monitor may report (E's five plus 4.1's two).
const STATUSES: [&str; 7] = [
    "running",
    "stopped",
    "paused",
    "suspended",
    "error",
    "booting",
    "shutting_down",
];

const MIB: u64 = 1024 * 1024;

/// Asserts `v` is `{type, timestamp, data}` with an ISO 8601 UTC timestamp.
fn check_envelope(v: &Value) {
    assert!(v.is_object(), "message is not an object: {v}");
    assert!(
        v["type"].as_str().is_some_and(|t| !t.is_empty()),
        "message without a type: {v}"
    );
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("message without a timestamp: {v}"));
    assert!(
        is_iso8601_utc(ts),
        "timestamp {ts:?} is not ISO 8601 UTC with Z: {v}"
    );
    assert!(v["data"].is_object(), "message without a data object: {v}");
}

fn assert_status_data(data: &Value) -> String {
    let s = data["status"]
        .as_str()
        .unwrap_or_else(|| panic!("status.status is not a string: {data}"));
    assert!(STATUSES.contains(&s), "unknown status {s:?}: {data}");
    let since = data["lastStateChange"]
        .as_str()
        .unwrap_or_else(|| panic!("status.lastStateChange is not a string: {data}"));
    assert!(
        is_iso8601_utc(since),
        "lastStateChange {since:?} is not ISO 8601 UTC: {data}"
    );
    assert!(
        data["uptime"].is_u64(),
        "status.uptime is not a non-negative integer: {data}"
    );
    s.to_owned()
}

fn assert_metrics_data(data: &Value) {
    let cpu = data["cpu"]["utilization"]
        .as_f64()
        .unwrap_or_else(|| panic!("metrics.cpu.utilization is not a number: {data}"));
    assert!(cpu >= 0.0, "negative cpu utilization: {data}");
    let int = |a: &str, b: &str| {
        data[a][b]
            .as_u64()
            .unwrap_or_else(|| panic!("metrics.{a}.{b} is not a non-negative integer: {data}"))
    };
    let used = int("memory", "used");
    let total = int("memory", "total");
    assert!(used <= total, "memory used beyond total: {data}");
    int("network", "rxBytes");
    int("network", "txBytes");
    int("disk", "readBytes");
    int("disk", "writeBytes");
}

fn is_type(v: &Value, ty: &str) -> bool {
    v["type"] == ty
}

fn is_status(v: &Value, status: &str) -> bool {
    is_type(v, "status") && v["data"]["status"] == status
}

/// The statuses reported by the `status` messages among `msgs`, in order.
fn statuses(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .filter(|v| is_type(v, "status"))
        .map(|v| assert_status_data(&v["data"]))
        .collect()
}

/// The `response` to `request_id`.
fn is_response_to(v: &Value, request_id: &str) -> bool {
    is_type(v, "response") && v["data"]["requestId"] == request_id
}

fn assert_response(v: &Value) {
    assert!(
        v["data"]["requestId"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "response without a requestId: {v}"
    );
    assert!(v["data"]["success"].is_boolean(), "response.success: {v}");
    assert!(v["data"]["message"].is_string(), "response.message: {v}");
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "expected an error message: {v}");
    assert_eq!(v["data"]["code"], code, "error code: {v}");
}

// ----- setup -----

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut b = Daemon::builder();
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

/// A new (stopped) simulator VM owned by the admin; returns its uuid.
async fn new_vm(d: &Daemon, admin: &str, title: &str) -> String {
    let m = create_machine(
        d,
        admin,
        &json!({"backend": "simulator", "title": title, "vcpu": 1, "ram_mib": 256}),
    )
    .await;
    assert_eq!(m["title"], title, "created machine: {m}");
    uuid_of(&m)
}

/// A new VM, started over REST and running.
async fn running_vm(d: &Daemon, admin: &str, title: &str) -> String {
    let uuid = new_vm(d, admin, title).await;
    power_ok(d, admin, &uuid, "start").await;
    wait_status(d, admin, &uuid, "running").await;
    uuid
}

fn monitor_path(name: &str) -> String {
    format!("/ws/vms/{name}")
}

fn console_path(name: &str) -> String {
    format!("/ws/vms/{name}/console")
}

/// Opens `path` with `?token=`.
async fn open(d: &Daemon, path: &str, token: &str) -> Sock {
    Sock::open(&ws_url(d, path, &[("token", token)]), None, check_envelope).await
}

/// Reads the `connection` message and checks it names `title`.
async fn expect_connection(s: &mut Sock, title: &str) {
    let v = s.recv(T).await;
    assert_eq!(v["type"], "connection", "the first message: {v}");
    assert_eq!(v["data"]["status"], "connected", "connection: {v}");
    assert_eq!(v["data"]["vm"], title, "connection.vm is the title: {v}");
}

/// Reads the connect sequence of a monitor: `connection`, then `status` and `metrics`.
/// Returns (status data, metrics data).
async fn expect_monitor_start(s: &mut Sock, title: &str) -> (Value, Value) {
    expect_connection(s, title).await;
    let a = s.recv(T).await;
    let b = s.recv(T).await;
    let (st, me) = match (a["type"].as_str(), b["type"].as_str()) {
        (Some("status"), Some("metrics")) => (a, b),
        (Some("metrics"), Some("status")) => (b, a),
        _ => panic!("after `connection` a monitor sends `status` and `metrics`; got {a} and {b}"),
    };
    assert_status_data(&st["data"]);
    assert_metrics_data(&me["data"]);
    (st["data"].clone(), me["data"].clone())
}

/// Opens a monitor with `?token=` and reads its connect sequence.
async fn open_monitor(d: &Daemon, name: &str, title: &str, token: &str) -> Sock {
    let mut s = open(d, &monitor_path(name), token).await;
    expect_monitor_start(&mut s, title).await;
    s
}

fn command(action: &str, request_id: Option<&str>) -> Value {
    let mut data = json!({ "action": action });
    if let Some(id) = request_id {
        data["requestId"] = json!(id);
    }
    json!({"type": "command", "timestamp": "2024-05-23T12:34:56Z", "data": data})
}

/// Sends a command and reads up to its response; returns every message up to and including
/// the response.
async fn run_command(s: &mut Sock, action: &str, request_id: &str) -> Vec<Value> {
    s.send_json(&command(action, Some(request_id))).await;
    let msgs = s
        .collect_until(T, &format!("the response to {action}"), |v| {
            is_response_to(v, request_id)
        })
        .await;
    let resp = msgs.last().expect("the response");
    assert_response(resp);
    msgs
}

async fn heartbeat_roundtrip(s: &mut Sock) {
    s.send_json(&json!({"type": "heartbeat", "timestamp": "2024-05-23T12:34:56Z", "data": {}}))
        .await;
    s.recv_type("heartbeat", T).await;
}

/// A socket is refused after the upgrade: one `error` with `code`, then a close with
/// `close`.
async fn expect_refusal(s: &mut Sock, code: &str, close: u16) {
    let before = s.expect_close(close, T).await;
    assert!(
        before
            .iter()
            .any(|v| v["type"] == "error" && v["data"]["code"] == code),
        "expected an error {code} before close {close}; got {before:?}"
    );
    assert!(
        !before.iter().any(|v| v["type"] == "connection"),
        "a refused socket must not be `connected`: {before:?}"
    );
}

// ----- monitor: connect -----

#[tokio::test]
async fn monitor_connects_by_title_or_uuid_with_any_token_form() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-mon-a").await;

    // By title, ?token=.
    let mut s = open(&d, &monitor_path("it-mon-a"), &admin).await;
    let (st, me) = expect_monitor_start(&mut s, "it-mon-a").await;
    assert_eq!(st["status"], "running", "status of a running VM: {st}");
    // Bytes: the memory total is the machine's RAM (MiB in REST) in bytes.
    let state = detail(&d, &admin, &uuid).await["state"].clone();
    let ram_max = state["ram_max"].as_u64().expect("ram_max");
    assert_eq!(
        me["memory"]["total"].as_u64(),
        Some(ram_max * MIB),
        "metrics.memory.total is in bytes (REST ram_max {ram_max} MiB): {me}"
    );
    s.close().await;

    // By uuid, ?access_token=.
    let mut s = Sock::open(
        &ws_url(&d, &monitor_path(&uuid), &[("access_token", &admin)]),
        None,
        check_envelope,
    )
    .await;
    expect_monitor_start(&mut s, "it-mon-a").await;
    s.close().await;

    // By uuid, Authorization: Bearer.
    let mut s = Sock::open(
        &ws_url(&d, &monitor_path(&uuid), &[]),
        Some(&admin),
        check_envelope,
    )
    .await;
    expect_monitor_start(&mut s, "it-mon-a").await;
    s.close().await;

    // A stopped machine reports stopped.
    new_vm(&d, &admin, "it-mon-b").await;
    let mut s = open(&d, &monitor_path("it-mon-b"), &admin).await;
    let (st, _) = expect_monitor_start(&mut s, "it-mon-b").await;
    assert_eq!(st["status"], "stopped", "status of a stopped VM: {st}");
}

#[tokio::test]
async fn monitor_sends_metrics_every_interval() {
    let d = daemon(&[("ORCHARD_VMS_METRICS_INTERVAL", "1")]);
    let admin = d.admin_token().await;
    running_vm(&d, &admin, "it-metrics").await;
    let mut s = open_monitor(&d, "it-metrics", "it-metrics", &admin).await;
    for _ in 0..2 {
        let m = s.recv_type("metrics", Duration::from_secs(4)).await;
        assert_metrics_data(&m["data"]);
    }
}

#[tokio::test]
async fn monitor_reports_every_status_change() {
    let d = daemon(&[
        ("ORCHARD_SIMULATOR_BOOT_MS", "300"),
        ("ORCHARD_SIMULATOR_SHUTDOWN_MS", "200"),
    ]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-status").await;
    let mut s = open_monitor(&d, &uuid, "it-status", &admin).await;

    power_ok(&d, &admin, &uuid, "start").await;
    let on_start = s
        .collect_until(T, "status running", |v| is_status(v, "running"))
        .await;
    power_ok(&d, &admin, &uuid, "stop").await;
    let on_stop = s
        .collect_until(T, "status stopped", |v| is_status(v, "stopped"))
        .await;
    assert_eq!(
        (statuses(&on_start), statuses(&on_stop)),
        (
            vec!["booting".to_owned(), "running".to_owned()],
            vec!["shutting_down".to_owned(), "stopped".to_owned()]
        ),
        "status messages on start, then on stop"
    );
}

// ----- monitor: commands -----

#[tokio::test]
async fn command_cycle_start_then_stop() {
    let d = daemon(&[
        ("ORCHARD_SIMULATOR_BOOT_MS", "300"),
        ("ORCHARD_SIMULATOR_SHUTDOWN_MS", "200"),
    ]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-cycle").await;
    let mut s = open_monitor(&d, "it-cycle", "it-cycle", &admin).await;

    let on_start = run_command(&mut s, "start", "cmd-start-1").await;
    let resp = on_start.last().expect("response");
    assert_eq!(resp["data"]["success"], true, "start: {resp}");
    assert_eq!(
        status(&d, &admin, &uuid).await,
        "running",
        "start is answered once the machine runs"
    );

    let on_stop = run_command(&mut s, "stop", "cmd-stop-1").await;
    let resp = on_stop.last().expect("response");
    assert_eq!(resp["data"]["success"], true, "stop: {resp}");
    assert_eq!(
        status(&d, &admin, &uuid).await,
        "stopped",
        "stop is answered once the machine is stopped"
    );

    assert_eq!(
        (statuses(&on_start), statuses(&on_stop)),
        (
            vec!["booting".to_owned(), "running".to_owned()],
            vec!["shutting_down".to_owned(), "stopped".to_owned()]
        ),
        "status messages before the start response, then before the stop response"
    );
}

#[tokio::test]
async fn command_restart_is_answered_when_running_again() {
    let d = daemon(&[
        ("ORCHARD_SIMULATOR_BOOT_MS", "300"),
        ("ORCHARD_SIMULATOR_SHUTDOWN_MS", "200"),
    ]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-restart").await;
    let mut s = open_monitor(&d, "it-restart", "it-restart", &admin).await;

    let msgs = run_command(&mut s, "restart", "cmd-restart").await;
    let resp = msgs.last().expect("response");
    assert_eq!(resp["data"]["success"], true, "restart: {resp}");
    let seen = statuses(&msgs);
    assert_eq!(
        seen.last().map(String::as_str),
        Some("running"),
        "the restart response comes after the machine runs again; statuses: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s != "running"),
        "a restart passes through another status first; statuses: {seen:?}"
    );
    assert_eq!(status(&d, &admin, &uuid).await, "running");
}

#[tokio::test]
async fn command_suspend_and_resume() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-suspend").await;
    let mut s = open_monitor(&d, "it-suspend", "it-suspend", &admin).await;

    let msgs = run_command(&mut s, "suspend", "cmd-suspend").await;
    assert_eq!(
        msgs.last().expect("response")["data"]["success"],
        true,
        "{msgs:?}"
    );
    let st = status(&d, &admin, &uuid).await;
    assert!(
        st == "suspended" || st == "paused",
        "after suspend the machine is suspended or paused, not {st:?}"
    );

    let msgs = run_command(&mut s, "resume", "cmd-resume").await;
    assert_eq!(
        msgs.last().expect("response")["data"]["success"],
        true,
        "{msgs:?}"
    );
    assert_eq!(status(&d, &admin, &uuid).await, "running");
}

#[tokio::test]
async fn command_without_request_id_gets_a_generated_one() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-noid").await;
    let mut s = open_monitor(&d, "it-noid", "it-noid", &admin).await;
    s.send_json(&command("start", None)).await;
    let resp = s.recv_type("response", T).await;
    assert_response(&resp);
    assert_eq!(resp["data"]["success"], true, "start: {resp}");
}

#[tokio::test]
async fn refused_command_is_answered_with_failure() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-refused").await;
    let mut s = open_monitor(&d, "it-refused", "it-refused", &admin).await;
    let msgs = run_command(&mut s, "start", "cmd-already").await;
    let resp = msgs.last().expect("response");
    assert_eq!(
        resp["data"]["success"], false,
        "starting a running VM: {resp}"
    );
    assert!(
        resp["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a failure says why: {resp}"
    );
    heartbeat_roundtrip(&mut s).await;
    assert_eq!(status(&d, &admin, &uuid).await, "running");
}

#[tokio::test]
async fn invalid_commands_are_errors_and_the_socket_stays_open() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-invalid").await;
    let mut s = open_monitor(&d, "it-invalid", "it-invalid", &admin).await;

    s.send_json(&command("explode", Some("cmd-bad"))).await;
    let e = s.recv_type("error", T).await;
    assert_error(&e, "INVALID_COMMAND");
    assert_eq!(
        e["data"]["requestId"], "cmd-bad",
        "the error echoes requestId: {e}"
    );

    s.send_text("{not json".to_owned()).await;
    let e = s.recv_type("error", T).await;
    assert_error(&e, "INVALID_COMMAND");

    heartbeat_roundtrip(&mut s).await;
    assert_eq!(status(&d, &admin, &uuid).await, "stopped");
}

#[tokio::test]
async fn heartbeat_is_answered() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-beat").await;
    let mut s = open_monitor(&d, "it-beat", "it-beat", &admin).await;
    heartbeat_roundtrip(&mut s).await;
    heartbeat_roundtrip(&mut s).await;
}

#[tokio::test]
async fn command_without_control_is_auth_error() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-viewonly").await;
    let (_, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;

    let mut s = open_monitor(&d, "it-viewonly", "it-viewonly", &viewer).await;
    s.send_json(&command("start", Some("cmd-viewer"))).await;
    let e = s
        .recv_where(T, "an error or response", |v| {
            is_type(v, "error") || is_type(v, "response")
        })
        .await;
    assert_error(&e, "AUTH_ERROR");
    assert_eq!(
        e["data"]["requestId"], "cmd-viewer",
        "the error echoes requestId: {e}"
    );
    heartbeat_roundtrip(&mut s).await;
    assert_eq!(
        status(&d, &admin, &uuid).await,
        "stopped",
        "a refused command does nothing"
    );
}

#[tokio::test]
async fn server_sends_heartbeats_and_pings() {
    let d = daemon(&[("ORCHARD_VMS_PING_INTERVAL", "1")]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-ping").await;
    let mut s = open_monitor(&d, "it-ping", "it-ping", &admin).await;
    for _ in 0..2 {
        s.recv_type("heartbeat", Duration::from_secs(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.pings < 2 {
        match s.next_until(deadline).await {
            Some(Got::Msg(_)) => {}
            other => panic!("waiting for protocol pings: {other:?}; pings: {}", s.pings),
        }
    }
}

// ----- monitor: refusals and endings -----

#[tokio::test]
async fn bad_or_missing_token_is_auth_error_4401() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    running_vm(&d, &admin, "it-auth").await;
    for path in [monitor_path("it-auth"), console_path("it-auth")] {
        let mut s = Sock::open(&ws_url(&d, &path, &[]), None, check_envelope).await;
        expect_refusal(&mut s, "AUTH_ERROR", 4401).await;
        let mut s = open(&d, &path, "garbage.token.here").await;
        expect_refusal(&mut s, "AUTH_ERROR", 4401).await;
        let mut s = Sock::open(&ws_url(&d, &path, &[]), Some("nope"), check_envelope).await;
        expect_refusal(&mut s, "AUTH_ERROR", 4401).await;
    }
}

#[tokio::test]
async fn unknown_vm_is_vm_not_found_1000() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let random = uuid::Uuid::new_v4().to_string();
    for name in ["no-such-vm", random.as_str()] {
        let mut s = open(&d, &monitor_path(name), &admin).await;
        expect_refusal(&mut s, "VM_NOT_FOUND", 1000).await;
    }
}

#[tokio::test]
async fn unseen_vm_is_vm_not_found_1000() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-hidden").await;
    let (_, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    for name in ["it-hidden", uuid.as_str()] {
        let mut s = open(&d, &monitor_path(name), &nobody).await;
        expect_refusal(&mut s, "VM_NOT_FOUND", 1000).await;
    }
}

#[tokio::test]
async fn deleting_a_monitored_vm_ends_with_vm_not_found() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-doomed").await;
    let mut s = open_monitor(&d, "it-doomed", "it-doomed", &admin).await;
    let r = d
        .delete(&format!("/api/machines/{uuid}"), Some(&admin))
        .await;
    assert!(
        (200..300).contains(&r.status),
        "DELETE machine: {} {}",
        r.status,
        r.text
    );
    expect_vm_not_found_close(&mut s, "it-doomed").await;
}

/// A monitor of a deleted machine: `VM_NOT_FOUND`, then close 1000.
async fn expect_vm_not_found_close(s: &mut Sock, title: &str) {
    let before = s.expect_close(1000, T).await;
    let e = before
        .iter()
        .find(|v| is_type(v, "error"))
        .unwrap_or_else(|| panic!("{title}: no error before the close: {before:?}"));
    assert_error(e, "VM_NOT_FOUND");
}

/// With `machines.event_buffer` = 1 the vms hub misses events in any burst and rechecks its
/// sockets against the registry. Monitored machines deleted all at once still end every
/// monitor with `VM_NOT_FOUND`, whichever `Deleted` events the hub missed; bursts repeat
/// until it missed some while deleting.
#[tokio::test]
async fn after_missed_events_monitors_of_deleted_machines_still_end() {
    let d = daemon(&[("ORCHARD_MACHINES_EVENT_BUFFER", "1")]);
    let admin = d.admin_token().await;
    let lags = |d: &Daemon| d.logs().matches("vms hub fell behind").count();
    for round in 0..20 {
        let titles: Vec<String> = (0..6).map(|i| format!("doomed-{round}-{i}")).collect();
        let mut paths = Vec::new();
        let mut monitors = Vec::new();
        for t in &titles {
            paths.push(format!("/api/machines/{}", new_vm(&d, &admin, t).await));
            monitors.push(open_monitor(&d, t, t, &admin).await);
        }
        let before = lags(&d);
        for r in join_all(paths.iter().map(|p| d.delete(p, Some(&admin)))).await {
            assert!(
                (200..300).contains(&r.status),
                "DELETE machine: {} {}",
                r.status,
                r.text
            );
        }
        for (s, t) in monitors.iter_mut().zip(&titles) {
            expect_vm_not_found_close(s, t).await;
        }
        if lags(&d) > before {
            return;
        }
    }
    panic!("20 bursts of deletes and the vms hub never fell behind");
}

// ----- console -----

/// Reads console output into `buf` until `done(buf)` holds; fails the test on timeout,
/// close or an `eof`.
async fn console_until(s: &mut Sock, buf: &mut String, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + T;
    while !done(buf) {
        match s.next_until(deadline).await {
            Some(Got::Msg(v)) if is_type(&v, "console") => {
                assert_eq!(v["data"]["eof"], false, "console output: {v}");
                let content = v["data"]["content"]
                    .as_str()
                    .unwrap_or_else(|| panic!("console.content is not a string: {v}"));
                buf.push_str(content);
            }
            Some(Got::Msg(_)) => {}
            other => panic!("waiting for {what} on the console: {other:?}; output so far: {buf:?}"),
        }
    }
}

/// Types `text` into a console socket (`console_input`).
pub async fn type_in(s: &mut Sock, text: &str) {
    s.send_json(&json!({
        "type": "console_input",
        "timestamp": "2024-05-23T12:34:56Z",
        "data": {"content": text},
    }))
    .await;
}

/// Opens a console and reads `connection`.
async fn open_console(d: &Daemon, name: &str, title: &str, token: &str) -> Sock {
    let mut s = open(d, &console_path(name), token).await;
    expect_connection(&mut s, title).await;
    s
}

/// Reads the banner, logs in as root with `password`; returns the output after the login.
async fn log_in(s: &mut Sock, password: &str) -> String {
    let mut buf = String::new();
    console_until(s, &mut buf, "the login prompt", |b| b.ends_with("login: ")).await;
    let mut out = String::new();
    type_in(s, "root\r").await;
    console_until(s, &mut out, "the echo of the user name", |b| {
        b.contains("root")
    })
    .await;
    type_in(s, &format!("{password}\r")).await;
    console_until(s, &mut out, "a shell prompt", |b| {
        b.ends_with("# ") || b.ends_with("$ ")
    })
    .await;
    out
}

fn lines(text: &str) -> Vec<String> {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn console_login_and_shell_commands() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    running_vm(&d, &admin, "it-console").await;
    let mut s = open_console(&d, "it-console", "it-console", &admin).await;
    log_in(&mut s, "hunter2").await;

    let mut out = String::new();
    type_in(&mut s, "uname -a\r").await;
    console_until(&mut s, &mut out, "the uname line", |b| {
        lines(b).iter().any(|l| l.contains("Linux it-console"))
    })
    .await;
    assert!(out.contains("uname -a"), "typed text is echoed: {out:?}");

    let mut out = String::new();
    type_in(&mut s, "echo hello-orchard\r").await;
    console_until(&mut s, &mut out, "hello-orchard", |b| {
        lines(b).iter().any(|l| l == "hello-orchard")
    })
    .await;
    assert!(
        out.contains("echo hello-orchard"),
        "typed text is echoed: {out:?}"
    );
}

#[tokio::test]
async fn console_needs_control_and_access_console() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-guarded").await;
    let (_, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS", "ACCESS_CONSOLE"]).await;
    let (_, manager) = user_with(&d, &admin, "manager", &["VIEW_ALL_VMS", "MANAGE_ALL_VMS"]).await;
    for (who, token) in [("viewer", &viewer), ("manager", &manager)] {
        let mut s = open(&d, &console_path(&uuid), token).await;
        let before = s.expect_close(4403, T).await;
        assert!(
            before
                .iter()
                .any(|v| is_type(v, "error") && v["data"]["code"] == "AUTH_ERROR"),
            "{who}: AUTH_ERROR before 4403; got {before:?}"
        );
    }
    // With both, it opens.
    let (_, operator) = user_with(
        &d,
        &admin,
        "operator",
        &["VIEW_ALL_VMS", "MANAGE_ALL_VMS", "ACCESS_CONSOLE"],
    )
    .await;
    open_console(&d, &uuid, "it-guarded", &operator).await;
}

#[tokio::test]
async fn console_on_a_stopped_vm_is_vm_not_running() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-cold").await;
    let mut s = open(&d, &console_path("it-cold"), &admin).await;
    expect_refusal(&mut s, "VM_NOT_RUNNING", 1000).await;
}

fn connections(v: &Value) -> Vec<Value> {
    v["active_connections"]["active_connections"]
        .as_array()
        .unwrap_or_else(|| panic!("no active_connections.active_connections: {v}"))
        .clone()
}

#[tokio::test]
async fn console_session_is_listed_while_open() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-session").await;
    assert!(connections(&detail(&d, &admin, &uuid).await).is_empty());

    let s = open_console(&d, "it-session", "it-session", &admin).await;
    eventually(T, "the console session in active_connections", || async {
        (!connections(&detail(&d, &admin, &uuid).await).is_empty()).then_some(())
    })
    .await;
    s.close().await;
    eventually(T, "active_connections to empty after the close", || async {
        connections(&detail(&d, &admin, &uuid).await)
            .is_empty()
            .then_some(())
    })
    .await;
}

/// An open console is one of the machine's active connections on the machines API too:
/// `DATA_DYNAMIC_CONNECTIONS` of `/ws/machines/global` lists it while it is open.
#[tokio::test]
async fn console_session_reaches_data_dynamic_connections() {
    let d = daemon(&[("ORCHARD_MACHINES_CONNECTIONS_INTERVAL", "1")]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-conn-ws").await;
    let mut g = crate::wsclient::Connect::new(&d, "/ws/machines/global")
        .access_token(&admin)
        .open()
        .await;
    let sessions = |v: &Value| {
        v["body"][uuid.as_str()]["active_connections"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let first = g.next_of_type("DATA_DYNAMIC_CONNECTIONS", T).await;
    assert_eq!(sessions(&first), 0, "no console yet: {first}");

    let s = open_console(&d, "it-conn-ws", "it-conn-ws", &admin).await;
    g.next_matching(T, "the console in DATA_DYNAMIC_CONNECTIONS", |v| {
        v["type"] == "DATA_DYNAMIC_CONNECTIONS" && sessions(v) == 1
    })
    .await;
    s.close().await;
    g.next_matching(T, "the console gone from DATA_DYNAMIC_CONNECTIONS", |v| {
        v["type"] == "DATA_DYNAMIC_CONNECTIONS" && sessions(v) == 0
    })
    .await;
}

/// `stop` on a machine whose shutdown fails is answered `success:false` with the reason,
/// and the machine keeps running.
#[tokio::test]
async fn a_failed_shutdown_is_answered_as_failed() {
    let d = daemon(&[("ORCHARD_SIMULATOR_SHUTDOWN_MS", "200")]);
    let admin = d.admin_token().await;
    let m = create_machine(
        &d,
        &admin,
        &json!({"title": "it-stubborn-e", "vcpu": 1, "ram_mib": 128, "tags": ["fail-shutdown"]}),
    )
    .await;
    let uuid = uuid_of(&m);
    power_ok(&d, &admin, &uuid, "start").await;
    wait_status(&d, &admin, &uuid, "running").await;
    let mut s = open_monitor(&d, "it-stubborn-e", "it-stubborn-e", &admin).await;
    let msgs = run_command(&mut s, "stop", "cmd-stubborn").await;
    let resp = msgs.last().expect("response");
    assert_eq!(resp["data"]["success"], false, "a failed shutdown: {resp}");
    assert!(
        resp["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a failure says why: {resp}"
    );
    assert_eq!(status(&d, &admin, &uuid).await, "running");
}

#[tokio::test]
async fn stopping_the_vm_ends_the_console() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-eof").await;
    let mut s = open_console(&d, "it-eof", "it-eof", &admin).await;
    let mut buf = String::new();
    console_until(&mut s, &mut buf, "the banner", |b| b.contains("login: ")).await;
    power_ok(&d, &admin, &uuid, "stop").await;
    let before = s.expect_close(1000, T).await;
    let last_console = before
        .iter()
        .rev()
        .find(|v| is_type(v, "console"))
        .unwrap_or_else(|| panic!("no console message before the close: {before:?}"));
    assert_eq!(
        last_console["data"]["eof"], true,
        "the console ends with eof:true before the close: {before:?}"
    );
}

#[tokio::test]
async fn console_is_audited_without_its_content() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    running_vm(&d, &admin, "it-audit").await;
    let secret = "pw-5ecret-4e1b";
    let marker = "typed-marker-93f1";
    let mut s = open_console(&d, "it-audit", "it-audit", &admin).await;
    log_in(&mut s, secret).await;
    let mut out = String::new();
    type_in(&mut s, &format!("echo {marker}\r")).await;
    console_until(&mut s, &mut out, "the marker", |b| {
        lines(b).iter().any(|l| l == marker)
    })
    .await;
    s.close().await;

    let activity = eventually(
        T,
        "console.open and console.close in the activity",
        || async {
            let body = d.get("/api/activity", Some(&admin)).await.expect(200);
            let actions: Vec<&str> = body
                .as_array()
                .unwrap_or_else(|| panic!("activity is not a list: {body}"))
                .iter()
                .filter_map(|e| e["action"].as_str())
                .collect();
            (actions.contains(&"console.open") && actions.contains(&"console.close"))
                .then(|| body.clone())
        },
    )
    .await;
    let text = activity.to_string();
    for needle in [secret, marker] {
        assert!(
            !text.contains(needle),
            "the activity must not contain console content ({needle}): {text}"
        );
    }
    let logs = d.logs();
    for needle in [secret, marker] {
        assert!(
            !logs.contains(needle),
            "the daemon log must not contain console content ({needle})"
        );
    }
}

// ----- access follows the user's current permissions and the machine's relations -----

/// Access changes reach open sockets within 2 s (contract 2); 1 s of slack for a loaded
/// test machine.
const REVOKE_WITHIN: Duration = Duration::from_secs(3);

async fn set_permissions(d: &Daemon, admin: &str, user: &str, perms: &[&str]) {
    let r = d
        .patch(
            &format!("/api/users/{user}"),
            Some(admin),
            &json!({ "permissions": perms }),
        )
        .await;
    assert!(
        (200..300).contains(&r.status),
        "PATCH permissions: {} {}",
        r.status,
        r.text
    );
}

async fn assign(d: &Daemon, admin: &str, machine: &str, user: &str, assigned: bool) {
    let path = format!("/api/machines/{machine}/clients/{user}");
    let method = if assigned {
        reqwest::Method::PUT
    } else {
        reqwest::Method::DELETE
    };
    let r = d.request(method, &path, Some(admin), None).await;
    assert!(
        (200..300).contains(&r.status),
        "assignment: {} {}",
        r.status,
        r.text
    );
}

/// The socket ends within [`REVOKE_WITHIN`] with `close`, the last message before it being
/// an `AUTH_ERROR`.
async fn expect_auth_error_then(s: &mut Sock, close: u16, what: &str) {
    let before = s.expect_close(close, REVOKE_WITHIN).await;
    let last = before
        .last()
        .unwrap_or_else(|| panic!("{what}: no message before close {close}"));
    assert_error(last, "AUTH_ERROR");
}

#[tokio::test]
async fn withdrawing_view_all_vms_closes_the_monitors_it_opened_4403() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-seen").await;
    let own = new_vm(&d, &admin, "it-assigned").await;
    let (viewer_id, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;
    assign(&d, &admin, &own, &viewer_id, true).await;
    let mut seen = open_monitor(&d, "it-seen", "it-seen", &viewer).await;
    let mut assigned = open_monitor(&d, "it-assigned", "it-assigned", &viewer).await;

    set_permissions(&d, &admin, &viewer_id, &[]).await;
    expect_auth_error_then(&mut seen, 4403, "monitor seen through VIEW_ALL_VMS").await;
    // The assigned machine is still seen: its monitor stays, and is still served.
    heartbeat_roundtrip(&mut assigned).await;
    assigned.open_for(Duration::from_millis(1500)).await;
    // And the monitor cannot be opened again.
    let mut again = open(&d, &monitor_path("it-seen"), &viewer).await;
    expect_refusal(&mut again, "VM_NOT_FOUND", 1000).await;
}

#[tokio::test]
async fn a_command_after_manage_all_vms_is_withdrawn_is_auth_error() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = new_vm(&d, &admin, "it-demoted").await;
    let (op_id, op) = user_with(&d, &admin, "operator", &["VIEW_ALL_VMS", "MANAGE_ALL_VMS"]).await;
    let mut s = open_monitor(&d, "it-demoted", "it-demoted", &op).await;

    set_permissions(&d, &admin, &op_id, &["VIEW_ALL_VMS"]).await;
    s.send_json(&command("start", Some("cmd-demoted"))).await;
    let e = s
        .recv_where(T, "an error or response", |v| {
            is_type(v, "error") || is_type(v, "response")
        })
        .await;
    assert_error(&e, "AUTH_ERROR");
    assert_eq!(e["data"]["requestId"], "cmd-demoted", "{e}");
    // Still seen, so the monitor stays open; the machine did not start.
    heartbeat_roundtrip(&mut s).await;
    assert_eq!(status(&d, &admin, &uuid).await, "stopped");

    // Granting it again works at once, on the same socket.
    set_permissions(&d, &admin, &op_id, &["VIEW_ALL_VMS", "MANAGE_ALL_VMS"]).await;
    let msgs = run_command(&mut s, "start", "cmd-promoted").await;
    let resp = msgs.last().expect("the response");
    assert_eq!(resp["data"]["success"], true, "{resp}");
}

#[tokio::test]
async fn withdrawing_control_or_access_console_closes_the_console_4403() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-console-perms").await;
    let all = ["VIEW_ALL_VMS", "MANAGE_ALL_VMS", "ACCESS_CONSOLE"];
    let (op_id, op) = user_with(&d, &admin, "operator", &all).await;

    for (lost, left) in [
        ("MANAGE_ALL_VMS", ["VIEW_ALL_VMS", "ACCESS_CONSOLE"]),
        ("ACCESS_CONSOLE", ["VIEW_ALL_VMS", "MANAGE_ALL_VMS"]),
    ] {
        set_permissions(&d, &admin, &op_id, &all).await;
        let mut console = open_console(&d, &uuid, "it-console-perms", &op).await;
        let mut monitor = open_monitor(&d, &uuid, "it-console-perms", &op).await;
        set_permissions(&d, &admin, &op_id, &left).await;
        expect_auth_error_then(&mut console, 4403, &format!("console without {lost}")).await;
        // The monitor needs sight only: it stays.
        heartbeat_roundtrip(&mut monitor).await;
    }
}

#[tokio::test]
async fn unassigning_a_user_closes_their_monitor_and_console_4403() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let uuid = running_vm(&d, &admin, "it-unassigned").await;
    let (client_id, client) = user_with(&d, &admin, "client", &["ACCESS_CONSOLE"]).await;
    assign(&d, &admin, &uuid, &client_id, true).await;
    let mut monitor = open_monitor(&d, "it-unassigned", "it-unassigned", &client).await;
    let mut console = open_console(&d, "it-unassigned", "it-unassigned", &client).await;
    let mut admins = open_monitor(&d, "it-unassigned", "it-unassigned", &admin).await;

    assign(&d, &admin, &uuid, &client_id, false).await;
    expect_auth_error_then(&mut monitor, 4403, "monitor after unassignment").await;
    expect_auth_error_then(&mut console, 4403, "console after unassignment").await;
    heartbeat_roundtrip(&mut admins).await;
}

#[tokio::test]
async fn revocation_sends_auth_error_before_4401() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    running_vm(&d, &admin, "it-revoked").await;
    let (_, op) = user_with(
        &d,
        &admin,
        "operator",
        &["VIEW_ALL_VMS", "MANAGE_ALL_VMS", "ACCESS_CONSOLE"],
    )
    .await;
    let mut monitor = open_monitor(&d, "it-revoked", "it-revoked", &op).await;
    let mut console = open_console(&d, "it-revoked", "it-revoked", &op).await;
    let r = d.post_empty("/api/auth/logout", Some(&op)).await;
    assert!((200..300).contains(&r.status), "logout: {}", r.status);
    expect_auth_error_then(&mut monitor, 4401, "monitor after logout").await;
    expect_auth_error_then(&mut console, 4401, "console after logout").await;
}

#[tokio::test]
async fn expiry_sends_auth_error_before_4401() {
    let d = daemon(&[
        ("ORCHARD_AUTH_TOKEN_TTL", "2"),
        ("ORCHARD_AUTH_SESSION_MAX", "60"),
    ]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-expiring").await;
    let mut s = open_monitor(&d, "it-expiring", "it-expiring", &admin).await;
    let before = s.expect_close(4401, Duration::from_secs(8)).await;
    let last = before
        .last()
        .unwrap_or_else(|| panic!("no message before the expiry close"));
    assert_error(last, "AUTH_ERROR");
}

#[tokio::test]
async fn a_command_that_outlasts_vms_command_timeout_is_answered_as_failed() {
    // Boots take 8 s here, commands may take 1 s.
    let d = daemon(&[
        ("ORCHARD_VMS_COMMAND_TIMEOUT", "1"),
        ("ORCHARD_SIMULATOR_BOOT_MS", "8000"),
    ]);
    let admin = d.admin_token().await;
    new_vm(&d, &admin, "it-slow-boot").await;
    let mut s = open_monitor(&d, "it-slow-boot", "it-slow-boot", &admin).await;
    s.send_json(&command("start", Some("cmd-slow"))).await;
    let resp = s
        .recv_where(Duration::from_secs(6), "the response to start", |v| {
            is_response_to(v, "cmd-slow")
        })
        .await;
    assert_response(&resp);
    assert_eq!(resp["data"]["success"], false, "{resp}");
    assert!(
        resp["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not complete in time")),
        "{resp}"
    );
}
