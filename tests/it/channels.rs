//! The channels API (`api-docs/B-channels.md`, contract sections 2, 4.2, 6 and 7) against the
//! real daemon: `/ws` with a token, the `{type, channel, data, timestamp, id?}` envelope,
//! subscribe / unsubscribe answers, bad messages, permissions (also withdrawn while
//! subscribed), and every channel: `host_status`, `host_metrics` (with filters),
//! `fleet_status`, `system_alerts` (disk, memory and machine boot rules, raise and clear,
//! the severity filter), `user_activity` and `command_execution`.
//!
//! Waits are on messages with deadlines; unrelated messages (periodic metrics, fleet totals)
//! are skipped by type and channel. Where a test must show that something did *not* arrive,
//! it reads for a while and, where the server orders it, uses a `ping` as a fence: the
//! server answers messages in order, so anything it queued earlier arrives before the `pong`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Daemon, Resp, uuid_of};
use crate::wsclient::is_iso8601_utc;

/// How long any expected message may take (generous: tests run in parallel).
const T: Duration = Duration::from_secs(15);
/// How long a socket is watched to show that something does not arrive.
const QUIET: Duration = Duration::from_millis(2500);

const CLOSE_UNAUTHORIZED: u16 = 4401;

/// The channels that need `VIEW_ALL_VMS`.
const HOST_CHANNELS: [&str; 5] = [
    "host_status",
    "host_metrics",
    "fleet_status",
    "system_alerts",
    "package_operations",
];

/// Thresholds (percent) no host reaches: no disk or memory alert, whatever the test machine.
const NO_THRESHOLD_ALERTS: [(&str, &str); 4] = [
    ("ORCHARD_ALERTS_DISK_WARNING", "1000"),
    ("ORCHARD_ALERTS_DISK_CRITICAL", "1001"),
    ("ORCHARD_ALERTS_MEMORY_WARNING", "1000"),
    ("ORCHARD_ALERTS_MEMORY_CRITICAL", "1001"),
];

pub(crate) fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut b = Daemon::builder();
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

/// `env` plus thresholds that raise no disk or memory alert.
pub(crate) fn quiet_alerts<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = NO_THRESHOLD_ALERTS.to_vec();
    v.extend_from_slice(env);
    v
}

// ----- the client -----

/// Where the token goes.
#[derive(Clone, Copy, Debug)]
enum Auth {
    /// `?token=`
    Token,
    /// `?access_token=`
    AccessToken,
    /// `Authorization: Bearer`
    Header,
}

/// What reading a socket gave.
#[derive(Debug)]
pub(crate) enum Got {
    Msg(Value),
    Closed(u16),
    Ended(String),
}

/// One `/ws` channels connection (or, from `open_raw`, any other JSON WebSocket).
pub(crate) struct Chan {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every message read so far, as `type/channel`, for failure messages.
    pub(crate) seen: Vec<String>,
    /// Whether every message must be a channels envelope.
    envelope: bool,
    /// The endpoint's path: every message is checked against `assets/api/asyncapi.yaml`.
    path: String,
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Chan {
    /// A channels socket with the token as `?token=`.
    pub(crate) async fn open(d: &Daemon, token: &str) -> Self {
        Self::open_with(d, token, Auth::Token).await
    }

    /// A JSON socket on `path_and_query` whose messages need not be channels envelopes
    /// (the agent socket, the per-server streams).
    pub(crate) async fn open_raw(d: &Daemon, path_and_query: &str) -> Self {
        let url = format!("ws://{}{path_and_query}", d.addr());
        let req = url.as_str().into_client_request().expect("request");
        Self::connect(req, &url, false).await
    }

    async fn open_with(d: &Daemon, token: &str, how: Auth) -> Self {
        let base = format!("ws://{}/ws", d.addr());
        let url = match how {
            Auth::Token => format!("{base}?token={}", form_encode(token)),
            Auth::AccessToken => format!("{base}?access_token={}", form_encode(token)),
            Auth::Header => base,
        };
        let mut req = url.as_str().into_client_request().expect("request");
        if matches!(how, Auth::Header) {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
            );
        }
        Self::connect(req, &url, true).await
    }

    async fn connect(
        req: tungstenite::handshake::client::Request,
        url: &str,
        envelope: bool,
    ) -> Self {
        let ws = match tokio::time::timeout(T, tokio_tungstenite::connect_async(req)).await {
            Err(_) => panic!("WebSocket connect to {url} timed out"),
            Ok(Err(tungstenite::Error::Http(resp))) => panic!(
                "WebSocket upgrade to {url} refused with HTTP {}: {}",
                resp.status(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            ),
            Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
            Ok(Ok((ws, _))) => ws,
        };
        Self {
            ws,
            seen: Vec::new(),
            envelope,
            path: crate::apidocs::path_of(url),
        }
    }

    pub(crate) async fn next_until(&mut self, deadline: Instant) -> Option<Got> {
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
                    if self.envelope {
                        assert_envelope(&v);
                    }
                    crate::apidocs::check_message(&self.path, &v);
                    self.seen.push(format!(
                        "{}/{}",
                        v["type"].as_str().unwrap_or_default(),
                        v["channel"].as_str().unwrap_or_default()
                    ));
                    return Some(Got::Msg(v));
                }
                Message::Binary(b) => panic!("unexpected binary message of {} bytes", b.len()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    return Some(Got::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                }
            }
        }
    }

    /// The next message for which `want` holds, skipping others; fails the test on timeout,
    /// close or end.
    pub(crate) async fn expect(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        self.collect_until(within, what, want)
            .await
            .pop()
            .unwrap_or_default()
    }

    /// Messages up to and including the first for which `want` holds.
    pub(crate) async fn collect_until(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            match self.next_until(deadline).await {
                Some(Got::Msg(v)) => {
                    let done = want(&v);
                    out.push(v);
                    if done {
                        return out;
                    }
                }
                other => panic!(
                    "waiting {within:?} for {what}: got {other:?}; read so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The next event of `channel`.
    async fn event(&mut self, channel: &str, within: Duration) -> Value {
        self.expect(within, &format!("a {channel} event"), |v| {
            is_event(v, channel)
        })
        .await
    }

    /// Reads for `duration`; fails the test if the socket ends. Returns what was read.
    async fn read_for(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        loop {
            match self.next_until(deadline).await {
                None => return out,
                Some(Got::Msg(v)) => out.push(v),
                other => panic!(
                    "socket ended within {duration:?}: {other:?}; read so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// How the socket ends (a close code), skipping messages.
    pub(crate) async fn close_code(&mut self, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            match self.next_until(deadline).await {
                Some(Got::Msg(_)) => {}
                Some(Got::Closed(code)) => return code,
                Some(Got::Ended(why)) => panic!(
                    "the connection ended without a close frame ({why}); read so far: {:?}",
                    self.seen
                ),
                None => panic!(
                    "expected a close frame within {within:?}; read so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send a text message");
    }

    pub(crate) async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends `ping` and returns every message read before the `pong` (the fence).
    async fn ping(&mut self) -> Vec<Value> {
        self.send(&json!({"type": "ping"})).await;
        let mut before = self
            .collect_until(T, "a pong", |v| v["type"] == "pong")
            .await;
        before.pop();
        before
    }

    /// Sends a subscribe (or unsubscribe) with `id` and returns the answer carrying that id
    /// (a response or an error), skipping other messages.
    async fn request(
        &mut self,
        kind: &str,
        channel: &str,
        id: &Value,
        filters: Option<Value>,
    ) -> Value {
        let mut m = json!({"type": kind, "channel": channel, "id": id});
        if let Some(f) = filters {
            m["filters"] = f;
        }
        self.send(&m).await;
        self.expect(
            T,
            &format!("the answer to {kind} {channel} (id {id})"),
            |v| &v["id"] == id && (v["type"] == "response" || v["type"] == "error"),
        )
        .await
    }

    /// Subscribes and requires `{"type":"response","data":{"subscribed":true}}`.
    pub(crate) async fn subscribe(&mut self, channel: &str, filters: Option<Value>) -> Value {
        let id = json!(format!("sub-{channel}"));
        let r = self.request("subscribe", channel, &id, filters).await;
        assert_subscribed(&r, channel, true);
        r
    }

    /// Subscribes and requires the `SUBSCRIPTION_FAILED` refusal.
    async fn subscribe_refused(&mut self, channel: &str) {
        let id = json!(format!("refused-{channel}"));
        let r = self.request("subscribe", channel, &id, None).await;
        assert_subscription_failed(&r, channel);
        assert_eq!(r["id"], id, "the refusal echoes the id: {r}");
    }
}

/// `{type, channel, data, timestamp, id?}`, with an ISO 8601 UTC timestamp.
fn assert_envelope(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("message is not an object: {v}"));
    for k in obj.keys() {
        assert!(
            ["type", "channel", "data", "timestamp", "id"].contains(&k.as_str()),
            "unexpected envelope field {k:?}: {v}"
        );
    }
    assert!(
        v["type"].as_str().is_some_and(|t| !t.is_empty()),
        "envelope type: {v}"
    );
    assert!(v["channel"].is_string(), "envelope channel: {v}");
    assert!(obj.contains_key("data"), "envelope without data: {v}");
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("envelope timestamp is not a string: {v}"));
    assert!(
        is_iso8601_utc(ts),
        "timestamp {ts:?} is not ISO 8601 UTC: {v}"
    );
}

fn is_event(v: &Value, channel: &str) -> bool {
    v["type"] == "event" && v["channel"] == channel
}

fn is_error_code(v: &Value, code: &str) -> bool {
    v["type"] == "error" && v["data"]["code"] == code
}

fn assert_subscribed(r: &Value, channel: &str, subscribed: bool) {
    assert_eq!(
        r["type"], "response",
        "answer to (un)subscribe {channel}: {r}"
    );
    assert_eq!(r["channel"], channel, "{r}");
    assert_eq!(r["data"]["subscribed"], subscribed, "{r}");
}

fn assert_subscription_failed(r: &Value, channel: &str) {
    assert_eq!(r["type"], "error", "refusal of {channel}: {r}");
    assert_eq!(r["channel"], "subscription", "{r}");
    assert_eq!(r["data"]["code"], "SUBSCRIPTION_FAILED", "{r}");
    assert_eq!(r["data"]["requested_channel"], channel, "{r}");
    assert!(
        r["data"]["message"].is_string(),
        "refusal without a message: {r}"
    );
}

fn assert_uuid(v: &Value, what: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{what} {s:?} is not a UUID: {e}"));
    s.to_owned()
}

fn assert_iso(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(is_iso8601_utc(s), "{what} {s:?} is not ISO 8601 UTC");
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ----- REST helpers -----

/// A user with `permissions` and a token of theirs.
async fn user_with(d: &Daemon, admin: &str, name: &str, permissions: &[&str]) -> (String, String) {
    let password = format!("{name}-password-123");
    let u = d
        .create_user(admin, name, &password, "client", permissions)
        .await;
    let token = d.login(name, &password).await;
    (uuid_of(&u), token)
}

/// The local host's id, from `host_status`.
async fn local_host_id(d: &Daemon, token: &str) -> String {
    let mut c = Chan::open(d, token).await;
    c.subscribe("host_status", None).await;
    let e = c.event("host_status", T).await;
    assert_uuid(&e["data"]["host_id"], "host_status host_id")
}

/// The demo fleet's machine that always fails to boot.
async fn fail_boot_machine(d: &Daemon, token: &str) -> String {
    let list = d.get("/api/machines", Some(token)).await.expect(200);
    let m = list
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/machines is not a list: {list}"))
        .iter()
        .find(|m| {
            m["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "fail-boot"))
        })
        .unwrap_or_else(|| panic!("the demo fleet has no fail-boot machine: {list}"))
        .clone();
    uuid_of(&m)
}

async fn alerts(d: &Daemon, token: &str) -> Value {
    let v = d.get("/api/alerts", Some(token)).await.expect(200);
    assert!(
        v["active"].is_array(),
        "GET /api/alerts without active[]: {v}"
    );
    assert!(
        v["history"].is_array(),
        "GET /api/alerts without history[]: {v}"
    );
    v
}

fn with_id<'a>(list: &'a Value, alert_id: &str) -> Vec<&'a Value> {
    list.as_array()
        .map(|a| a.iter().filter(|x| x["alert_id"] == alert_id).collect())
        .unwrap_or_default()
}

async fn login_with_agent(d: &Daemon, username: &str, password: &str, agent: &str) -> Resp {
    d.send(
        d.client
            .post(d.url("/api/auth/login"))
            .header("User-Agent", agent)
            .json(&json!({"username": username, "password": password})),
    )
    .await
}

// ----- connecting, the envelope, bad messages -----

#[tokio::test]
async fn token_in_query_access_token_or_header_opens_the_channels_api() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    for how in [Auth::Token, Auth::AccessToken, Auth::Header] {
        let mut c = Chan::open_with(&d, &admin, how).await;
        c.send(&json!({"type": "ping", "id": "p1"})).await;
        let pong = c.expect(T, "a pong", |v| v["type"] == "pong").await;
        assert_eq!(pong["id"], "p1", "{how:?}: {pong}");
        c.subscribe("host_status", None).await;
        let e = c.event("host_status", T).await;
        assert_eq!(e["data"]["status"], "online", "{how:?}: {e}");
    }
}

#[tokio::test]
async fn invalid_token_gets_auth_failed_then_close_4401() {
    let d = daemon(&[]);
    for how in [Auth::Token, Auth::AccessToken, Auth::Header] {
        let mut c = Chan::open_with(&d, "not.a.valid-token", how).await;
        let first = match c.next_until(Instant::now() + T).await {
            Some(Got::Msg(v)) => v,
            other => panic!("{how:?}: expected an AUTH_FAILED message, got {other:?}"),
        };
        assert_eq!(first["type"], "error", "{how:?}: {first}");
        assert_eq!(first["data"]["code"], "AUTH_FAILED", "{how:?}: {first}");
        assert_eq!(c.close_code(T).await, CLOSE_UNAUTHORIZED, "{how:?}");
    }
}

#[tokio::test]
async fn subscribe_and_unsubscribe_answers_echo_the_id() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;

    let r = c
        .request("subscribe", "fleet_status", &json!(7), None)
        .await;
    assert_subscribed(&r, "fleet_status", true);
    assert_eq!(r["id"], 7, "numeric id echoed: {r}");

    let r = c
        .request("subscribe", "host_status", &json!("req-abc"), None)
        .await;
    assert_subscribed(&r, "host_status", true);
    assert_eq!(r["id"], "req-abc", "string id echoed: {r}");

    let r = c
        .request("unsubscribe", "host_status", &json!("u-1"), None)
        .await;
    assert_subscribed(&r, "host_status", false);
    assert_eq!(r["id"], "u-1", "{r}");

    let r = c
        .request("unsubscribe", "fleet_status", &json!(8), None)
        .await;
    assert_subscribed(&r, "fleet_status", false);
    assert_eq!(r["id"], 8, "{r}");

    // Without an id, the answer comes all the same.
    c.send(&json!({"type": "subscribe", "channel": "host_metrics"}))
        .await;
    let r = c
        .expect(T, "the answer to subscribe host_metrics", |v| {
            v["type"] == "response" && v["channel"] == "host_metrics"
        })
        .await;
    assert_subscribed(&r, "host_metrics", true);
    assert!(
        r.get("id").is_none_or(Value::is_null),
        "no id was given, none is echoed: {r}"
    );
}

#[tokio::test]
async fn unsubscribe_stops_the_channels_events() {
    let d = daemon(&quiet_alerts(&[
        ("ORCHARD_FLEET_INTERVAL", "1"),
        ("ORCHARD_HOSTS_METRICS_INTERVAL", "1"),
    ]));
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("fleet_status", None).await;
    c.subscribe("host_metrics", None).await;
    // Both flow: the initial fleet event, then periodic ones.
    c.event("fleet_status", T).await;
    c.event("fleet_status", T).await;
    c.event("host_metrics", T).await;

    let r = c
        .request("unsubscribe", "fleet_status", &json!("u"), None)
        .await;
    assert_subscribed(&r, "fleet_status", false);
    let after = c.read_for(QUIET).await;
    assert!(
        !after.iter().any(|v| is_event(v, "fleet_status")),
        "fleet_status events after unsubscribing: {after:?}"
    );
    assert!(
        after.iter().any(|v| is_event(v, "host_metrics")),
        "host_metrics (still subscribed) kept coming: {after:?}"
    );
}

#[tokio::test]
async fn bad_messages_get_invalid_message_and_the_socket_stays_open() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;

    let cases: [(&str, String); 5] = [
        (
            "an unknown channel",
            json!({"type": "subscribe", "channel": "no_such_channel", "id": 1}).to_string(),
        ),
        (
            "an unknown message type",
            json!({"type": "frobnicate", "channel": "host_status", "id": 2}).to_string(),
        ),
        ("malformed JSON", "{\"type\": \"subscribe\", ".to_owned()),
        ("a JSON non-object", "[1, 2, 3]".to_owned()),
        (
            "unsubscribe from an unknown channel",
            json!({"type": "unsubscribe", "channel": "nope"}).to_string(),
        ),
    ];
    for (what, text) in cases {
        c.send_text(&text).await;
        let e = c
            .expect(T, &format!("the error for {what}"), |v| {
                v["type"] == "error"
            })
            .await;
        assert_eq!(e["data"]["code"], "INVALID_MESSAGE", "{what}: {e}");
        // Still open and answering.
        c.ping().await;
    }
    // And still serving subscriptions.
    c.subscribe("host_status", None).await;
    c.event("host_status", T).await;
}

// ----- permissions -----

#[tokio::test]
async fn host_channels_need_view_all_vms_and_commands_need_execute_commands() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (_, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    let (_, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;

    let mut c = Chan::open(&d, &nobody).await;
    for ch in HOST_CHANNELS {
        c.subscribe_refused(ch).await;
    }
    c.subscribe_refused("command_execution").await;
    c.subscribe_refused("user_activity").await;
    // A refusal leaves the socket open.
    c.ping().await;

    let mut c = Chan::open(&d, &viewer).await;
    for ch in HOST_CHANNELS {
        c.subscribe(ch, None).await;
    }
    c.subscribe_refused("command_execution").await;
    c.subscribe_refused("user_activity").await;
    c.ping().await;
}

#[tokio::test]
async fn user_activity_is_for_admins_only() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    // Everything but MANAGE_ADMIN_USERS, user management of clients included (an
    // administrator: clients cannot hold user-management permissions).
    d.create_user(
        &admin,
        "manager",
        "manager-password-123",
        "administrator",
        &[
            "VIEW_ALL_VMS",
            "MANAGE_ALL_VMS",
            "MANAGE_CLIENT_USERS",
            "CHANGE_CLIENT_PASSWORD",
            "EXECUTE_COMMANDS",
        ],
    )
    .await;
    let manager = d.login("manager", "manager-password-123").await;
    let mut c = Chan::open(&d, &manager).await;
    c.subscribe_refused("user_activity").await;
    c.subscribe("command_execution", None).await;
    c.ping().await;

    let mut a = Chan::open(&d, &admin).await;
    a.subscribe("user_activity", None).await;
}

#[tokio::test]
async fn withdrawing_view_all_vms_ends_host_subscriptions_but_not_the_socket() {
    let d = daemon(&quiet_alerts(&[
        ("ORCHARD_FLEET_INTERVAL", "1"),
        ("ORCHARD_HOSTS_METRICS_INTERVAL", "1"),
    ]));
    let admin = d.admin_token().await;
    let (uuid, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;
    let mut c = Chan::open(&d, &viewer).await;
    c.subscribe("host_status", None).await;
    c.subscribe("host_metrics", None).await;
    c.subscribe("fleet_status", None).await;
    c.event("host_metrics", T).await;
    c.event("fleet_status", T).await;

    d.patch(
        &format!("/api/users/{uuid}"),
        Some(&admin),
        &json!({"permissions": []}),
    )
    .await
    .expect(200);

    // One refusal per host channel the socket held.
    let mut lost = BTreeSet::new();
    let deadline = Instant::now() + T;
    while lost.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = c
            .expect(
                left,
                "SUBSCRIPTION_FAILED for the withdrawn channels",
                |v| is_error_code(v, "SUBSCRIPTION_FAILED"),
            )
            .await;
        assert_eq!(e["channel"], "subscription", "{e}");
        let ch = e["data"]["requested_channel"]
            .as_str()
            .unwrap_or_else(|| panic!("no requested_channel: {e}"))
            .to_owned();
        lost.insert(ch);
    }
    assert_eq!(lost, set(&["host_status", "host_metrics", "fleet_status"]));

    // No more of their events, and the socket stays open.
    let after = c.read_for(QUIET).await;
    let leaked: Vec<&Value> = after
        .iter()
        .filter(|v| v["type"] == "event" && HOST_CHANNELS.iter().any(|ch| v["channel"] == *ch))
        .collect();
    assert!(
        leaked.is_empty(),
        "host events after the withdrawal: {leaked:?}"
    );
    c.ping().await;
    c.subscribe_refused("host_metrics").await;
}

// ----- host_status, host_metrics, fleet_status -----

#[tokio::test]
async fn host_status_sends_the_local_host_on_subscribe() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("host_status", None).await;
    let e = c.event("host_status", T).await;
    let data = &e["data"];
    assert_uuid(&data["host_id"], "host_id");
    assert!(
        data["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "hostname: {e}"
    );
    assert_eq!(data["status"], "online", "{e}");
    assert!(
        data.get("previous_status").is_some(),
        "no previous_status: {e}"
    );
    // Exactly one host on a fresh daemon: nothing more before the fence.
    let more = c.ping().await;
    assert!(
        !more.iter().any(|v| is_event(v, "host_status")),
        "more than one host: {more:?}"
    );
}

fn assert_full_metrics(e: &Value, host_id: &str) {
    let data = &e["data"];
    assert_eq!(data["host_id"], host_id, "{e}");
    let m = &data["metrics"];
    for k in ["cpu_usage", "memory_usage"] {
        let x = m[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number: {e}"));
        assert!((0.0..=100.0).contains(&x), "{k} = {x} is not a percentage");
    }
    let usage = m["disk_usage"]
        .as_object()
        .unwrap_or_else(|| panic!("disk_usage is not an object: {e}"));
    assert!(!usage.is_empty(), "no disk in disk_usage: {e}");
    for (mount, pct) in usage {
        let p = pct
            .as_f64()
            .unwrap_or_else(|| panic!("disk_usage[{mount}] is not a number: {e}"));
        assert!((0.0..=100.0).contains(&p), "disk_usage[{mount}] = {p}");
    }
    let load = m["load_average"]
        .as_array()
        .unwrap_or_else(|| panic!("load_average is not an array: {e}"));
    assert_eq!(load.len(), 3, "load_average: {e}");
    assert!(load.iter().all(Value::is_number), "load_average: {e}");
    let disks = m["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("disks is not an array: {e}"));
    assert!(!disks.is_empty(), "no disks: {e}");
    let mut mounts = BTreeSet::new();
    for disk in disks {
        let mount = disk["mount"]
            .as_str()
            .unwrap_or_else(|| panic!("disk without a mount: {disk}"));
        let total = disk["total_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("total_bytes: {disk}"));
        let used = disk["used_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("used_bytes: {disk}"));
        assert!(used <= total, "used > total: {disk}");
        mounts.insert(mount.to_owned());
    }
    let usage_mounts: BTreeSet<String> = usage.keys().cloned().collect();
    assert_eq!(
        mounts, usage_mounts,
        "disks and disk_usage name the same mounts: {e}"
    );
    let network = m["network"]
        .as_array()
        .unwrap_or_else(|| panic!("network is not an array: {e}"));
    assert!(!network.is_empty(), "no network interface: {e}");
    for n in network {
        assert!(n["interface"].is_string(), "interface: {n}");
        assert!(n["rx_bytes"].is_u64(), "rx_bytes: {n}");
        assert!(n["tx_bytes"].is_u64(), "tx_bytes: {n}");
    }
}

#[tokio::test]
async fn host_metrics_arrive_every_interval_with_every_metric_group() {
    let d = daemon(&quiet_alerts(&[("ORCHARD_HOSTS_METRICS_INTERVAL", "1")]));
    let admin = d.admin_token().await;
    let host = local_host_id(&d, &admin).await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("host_metrics", None).await;
    let first = c.event("host_metrics", T).await;
    assert_full_metrics(&first, &host);
    // Every second, not the 5 s default: two more within 5 s.
    let start = Instant::now();
    for _ in 0..2 {
        let e = c.event("host_metrics", T).await;
        assert_full_metrics(&e, &host);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "two samples took {:?} with hosts.metrics_interval = 1",
        start.elapsed()
    );
}

#[tokio::test]
async fn host_metrics_filter_metrics_limits_the_groups() {
    let d = daemon(&quiet_alerts(&[("ORCHARD_HOSTS_METRICS_INTERVAL", "1")]));
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("host_metrics", Some(json!({"metrics": ["cpu"]})))
        .await;
    for _ in 0..2 {
        let e = c.event("host_metrics", T).await;
        assert_eq!(keys(&e["data"]["metrics"]), set(&["cpu_usage"]), "{e}");
        assert!(e["data"]["metrics"]["cpu_usage"].is_number(), "{e}");
        assert_uuid(&e["data"]["host_id"], "host_id");
    }
}

#[tokio::test]
async fn host_metrics_filter_host_id_selects_the_host() {
    let d = daemon(&quiet_alerts(&[("ORCHARD_HOSTS_METRICS_INTERVAL", "1")]));
    let admin = d.admin_token().await;
    let host = local_host_id(&d, &admin).await;
    let other = uuid::Uuid::new_v4().to_string();

    let mut elsewhere = Chan::open(&d, &admin).await;
    elsewhere
        .subscribe("host_metrics", Some(json!({"host_id": other})))
        .await;
    let mut here = Chan::open(&d, &admin).await;
    here.subscribe("host_metrics", Some(json!({"host_id": host})))
        .await;

    for _ in 0..3 {
        let e = here.event("host_metrics", T).await;
        assert_eq!(e["data"]["host_id"], host, "{e}");
    }
    // Three samples went out meanwhile; none of them to the other host's subscriber.
    let got = elsewhere.read_for(Duration::from_millis(1000)).await;
    assert!(
        !got.iter().any(|v| is_event(v, "host_metrics")),
        "host_metrics for {host} reached a subscriber filtering on {other}: {got:?}"
    );
}

fn assert_fleet(e: &Value) {
    let data = &e["data"];
    for k in [
        "total_hosts",
        "online_hosts",
        "offline_hosts",
        "hosts_with_alerts",
        "pending_operations",
    ] {
        assert!(data[k].is_u64(), "{k} is not a count: {e}");
    }
    assert_iso(&data["last_updated"], "last_updated");
    assert_eq!(data["total_hosts"], 1, "a fresh daemon has one host: {e}");
    assert_eq!(data["online_hosts"], 1, "{e}");
    assert_eq!(data["offline_hosts"], 0, "{e}");
}

#[tokio::test]
async fn fleet_status_is_sent_on_subscribe() {
    // A period far beyond the test: whatever arrives is the subscription's own event.
    let d = daemon(&quiet_alerts(&[("ORCHARD_FLEET_INTERVAL", "3600")]));
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("fleet_status", None).await;
    let e = c.event("fleet_status", Duration::from_secs(5)).await;
    assert_fleet(&e);
    assert_eq!(
        e["data"]["hosts_with_alerts"], 0,
        "no alert rule fires: {e}"
    );
    assert_eq!(e["data"]["pending_operations"], 0, "{e}");
}

#[tokio::test]
async fn fleet_status_repeats_every_interval() {
    let d = daemon(&quiet_alerts(&[("ORCHARD_FLEET_INTERVAL", "1")]));
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("fleet_status", None).await;
    assert_fleet(&c.event("fleet_status", T).await);
    let start = Instant::now();
    for _ in 0..3 {
        assert_fleet(&c.event("fleet_status", T).await);
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "three periodic events took {:?} with fleet.interval = 1",
        start.elapsed()
    );
}

// ----- system_alerts -----

fn assert_alert(e: &Value) {
    let a = &e["data"];
    assert_uuid(&a["alert_id"], "alert_id");
    for k in ["title", "message", "category", "severity", "state"] {
        assert!(
            a[k].as_str().is_some_and(|s| !s.is_empty()),
            "alert without {k}: {e}"
        );
    }
    assert!(
        a["severity"] == "warning" || a["severity"] == "critical" || a["severity"] == "info",
        "severity: {e}"
    );
    assert!(
        a["state"] == "raised" || a["state"] == "cleared",
        "state: {e}"
    );
}

fn is_alert(v: &Value, category: &str, state: &str) -> bool {
    is_event(v, "system_alerts") && v["data"]["category"] == category && v["data"]["state"] == state
}

/// Waits until `GET /api/alerts` lists an active alert of `category`; returns it.
async fn wait_active(d: &Daemon, token: &str, category: &str) -> Value {
    crate::harness::eventually(T, &format!("an active {category} alert"), || async {
        alerts(d, token).await["active"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["category"] == category).cloned())
    })
    .await
}

const DISK_ALERT_ENV: [(&str, &str); 5] = [
    ("ORCHARD_HOSTS_METRICS_INTERVAL", "1"),
    ("ORCHARD_ALERTS_DISK_WARNING", "0.01"),
    ("ORCHARD_ALERTS_DISK_CRITICAL", "0.02"),
    ("ORCHARD_ALERTS_MEMORY_WARNING", "1000"),
    ("ORCHARD_ALERTS_MEMORY_CRITICAL", "1001"),
];

#[tokio::test]
async fn a_disk_alert_is_raised_and_sent_at_once_to_new_subscribers() {
    let d = daemon(&DISK_ALERT_ENV);
    let admin = d.admin_token().await;
    let host = local_host_id(&d, &admin).await;

    // A live subscriber sees it raised.
    let mut live = Chan::open(&d, &admin).await;
    live.subscribe("system_alerts", None).await;
    let raised = live
        .expect(T, "a raised disk alert", |v| {
            is_alert(v, "disk_space", "raised")
        })
        .await;
    assert_alert(&raised);
    let a = &raised["data"];
    assert_eq!(a["severity"], "critical", "{raised}");
    assert_eq!(a["host_id"], host, "{raised}");
    assert!(
        a["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "hostname: {raised}"
    );
    let active = wait_active(&d, &admin, "disk_space").await;
    assert_eq!(active["severity"], "critical", "{active}");

    // A new subscriber gets the active alert right after the answer.
    let mut late = Chan::open(&d, &admin).await;
    late.subscribe("system_alerts", None).await;
    let e = late
        .expect(Duration::from_secs(3), "the active disk alert", |v| {
            is_alert(v, "disk_space", "raised")
        })
        .await;
    assert_alert(&e);
    assert_eq!(e["data"]["severity"], "critical", "{e}");
    assert_eq!(e["data"]["host_id"], host, "{e}");

    // And fleet_status counts the host.
    let mut f = Chan::open(&d, &admin).await;
    f.subscribe("fleet_status", None).await;
    let fleet = f.event("fleet_status", T).await;
    assert_eq!(fleet["data"]["hosts_with_alerts"], 1, "{fleet}");
}

#[tokio::test]
async fn a_memory_warning_is_raised() {
    let d = daemon(&[
        ("ORCHARD_HOSTS_METRICS_INTERVAL", "1"),
        ("ORCHARD_ALERTS_DISK_WARNING", "1000"),
        ("ORCHARD_ALERTS_DISK_CRITICAL", "1001"),
        ("ORCHARD_ALERTS_MEMORY_WARNING", "0.01"),
        ("ORCHARD_ALERTS_MEMORY_CRITICAL", "1000"),
    ]);
    let admin = d.admin_token().await;
    let host = local_host_id(&d, &admin).await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("system_alerts", None).await;
    let e = c
        .expect(T, "a memory alert", |v| is_alert(v, "memory", "raised"))
        .await;
    assert_alert(&e);
    assert_eq!(e["data"]["severity"], "warning", "{e}");
    assert_eq!(e["data"]["host_id"], host, "{e}");
}

/// `fleet_status` is sent on change as well as on its period: with a period of an hour, a
/// machine's failed boot (an alert on the local host) still gives an event at once.
#[tokio::test]
async fn fleet_status_is_sent_when_the_totals_change() {
    let d = daemon(&quiet_alerts(&[
        ("ORCHARD_FLEET_INTERVAL", "3600"),
        ("ORCHARD_SIMULATOR_BOOT_MS", "200"),
    ]));
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("fleet_status", None).await;
    let first = c.event("fleet_status", T).await;
    assert_eq!(first["data"]["hosts_with_alerts"], 0, "{first}");

    let machine = fail_boot_machine(&d, &admin).await;
    let r = d
        .post_empty(&format!("/api/machines/{machine}/start"), Some(&admin))
        .await;
    assert_eq!(r.status, 202, "start: {}", r.text);
    let e = c
        .expect(T, "fleet_status with the alerted host", |v| {
            is_event(v, "fleet_status") && v["data"]["hosts_with_alerts"] == 1
        })
        .await;
    assert_eq!(e["data"]["online_hosts"], 1, "{e}");
}

/// An alert still raised when the daemon stops is resumed on the next start: when its
/// condition has ended it is cleared under its own id, and it is never raised a second time.
#[tokio::test]
async fn a_raised_alert_survives_a_restart_and_clears_under_its_id() {
    let mut d = daemon(&[
        ("ORCHARD_HOSTS_METRICS_INTERVAL", "1"),
        ("ORCHARD_ALERTS_DISK_WARNING", "1000"),
        ("ORCHARD_ALERTS_DISK_CRITICAL", "1001"),
        ("ORCHARD_ALERTS_MEMORY_WARNING", "0.01"),
        ("ORCHARD_ALERTS_MEMORY_CRITICAL", "1000"),
    ]);
    let admin = d.admin_token().await;
    let raised = wait_active(&d, &admin, "memory").await;
    let id = raised["alert_id"].as_str().unwrap_or_default().to_owned();
    assert!(!id.is_empty(), "{raised}");

    // Still raised across a restart with the same rules: the same alert stays active.
    d.restart();
    let admin = d.admin_token().await;
    let again = wait_active(&d, &admin, "memory").await;
    assert_eq!(
        again["alert_id"],
        id.as_str(),
        "the same alert resumes: {again}"
    );

    // Now the condition ends (no threshold can be reached): it clears under its own id.
    d.set_env("ORCHARD_ALERTS_MEMORY_WARNING", "1000");
    d.set_env("ORCHARD_ALERTS_MEMORY_CRITICAL", "1001");
    d.restart();
    let admin = d.admin_token().await;
    let history = crate::harness::eventually(T, "the memory alert to clear", || async {
        let a = alerts(&d, &admin).await;
        let cleared = a["history"].as_array().is_some_and(|h| {
            h.iter()
                .any(|x| x["alert_id"] == id.as_str() && x["state"] == "cleared")
        });
        cleared.then_some(a)
    })
    .await;
    let active = history["active"].as_array().cloned().unwrap_or_default();
    assert!(
        active.iter().all(|x| x["category"] != "memory"),
        "no memory alert is active: {history}"
    );
    let raises = history["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|x| x["category"] == "memory" && x["state"] == "raised")
                .count()
        })
        .unwrap_or_default();
    assert_eq!(raises, 1, "raised once, never again: {history}");
}

#[tokio::test]
async fn severity_filter_receives_only_that_severity() {
    let mut env = DISK_ALERT_ENV.to_vec();
    env.push(("ORCHARD_SIMULATOR_BOOT_MS", "200"));
    let d = daemon(&env);
    let admin = d.admin_token().await;
    let mut warnings = Chan::open(&d, &admin).await;
    warnings
        .subscribe("system_alerts", Some(json!({"severity": ["warning"]})))
        .await;
    // The critical disk alert is raised (and active) while the filtered socket listens.
    wait_active(&d, &admin, "disk_space").await;

    let machine = fail_boot_machine(&d, &admin).await;
    let r = d
        .post_empty(&format!("/api/machines/{machine}/start"), Some(&admin))
        .await;
    assert_eq!(r.status, 202, "start: {}", r.text);
    let seen = warnings
        .collect_until(T, "the machine_boot warning", |v| {
            is_alert(v, "machine_boot", "raised")
        })
        .await;
    let alerts: Vec<&Value> = seen
        .iter()
        .filter(|v| is_event(v, "system_alerts"))
        .collect();
    assert!(
        alerts.iter().all(|v| v["data"]["severity"] == "warning"),
        "a severity [warning] subscriber got other severities: {alerts:?}"
    );

    // A new subscriber with the filter gets the active warning, never the critical one.
    let mut late = Chan::open(&d, &admin).await;
    late.subscribe("system_alerts", Some(json!({"severity": ["warning"]})))
        .await;
    let first = late.read_for(Duration::from_secs(2)).await;
    let alerts: Vec<&Value> = first
        .iter()
        .filter(|v| is_event(v, "system_alerts"))
        .collect();
    assert!(
        alerts
            .iter()
            .any(|v| v["data"]["category"] == "machine_boot"),
        "the active machine_boot warning on subscribe: {first:?}"
    );
    assert!(
        alerts.iter().all(|v| v["data"]["severity"] == "warning"),
        "a severity [warning] subscriber got other severities on subscribe: {alerts:?}"
    );
}

/// Machines with a raised boot alert deleted all at once, while the alerts listener misses
/// machine events (`machines.event_buffer` = 1 after a restart; the alerts were raised
/// before it with the normal buffer and resume on start): every alert still clears.
#[tokio::test]
async fn boot_alerts_of_deleted_machines_clear_even_when_their_events_were_missed() {
    let mut d = daemon(&quiet_alerts(&[("ORCHARD_SIMULATOR_BOOT_MS", "100")]));
    let admin = d.admin_token().await;
    let mut machines = Vec::new();
    for i in 0..8 {
        let m = d
            .post(
                "/api/machines",
                Some(&admin),
                &json!({"title": format!("fails-{i}"), "vcpu": 1, "ram_mib": 256,
                    "tags": ["fail-boot"]}),
            )
            .await
            .expect(201);
        let uuid = uuid_of(&m);
        let r = d
            .post_empty(&format!("/api/machines/{uuid}/start"), Some(&admin))
            .await;
        assert_eq!(r.status, 202, "start: {}", r.text);
        machines.push(uuid);
    }
    let active_boot_alerts = |a: &Value| -> BTreeSet<String> {
        a["active"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["category"] == "machine_boot")
            .filter_map(|x| x["machine_uuid"].as_str().map(str::to_owned))
            .collect()
    };
    let wanted: BTreeSet<String> = machines.iter().cloned().collect();
    crate::harness::eventually(T, "a boot alert for every machine", || async {
        let raised = active_boot_alerts(&alerts(&d, &admin).await);
        wanted.is_subset(&raised).then_some(())
    })
    .await;

    d.set_env("ORCHARD_MACHINES_EVENT_BUFFER", "1");
    d.restart();
    let admin = d.admin_token().await;
    let paths: Vec<String> = machines
        .iter()
        .map(|u| format!("/api/machines/{u}"))
        .collect();
    for r in futures_util::future::join_all(paths.iter().map(|p| d.delete(p, Some(&admin)))).await {
        assert!(
            (200..300).contains(&r.status),
            "delete: {} {}",
            r.status,
            r.text
        );
    }
    crate::harness::eventually(
        T,
        "every boot alert of the deleted machines cleared",
        || async {
            let left = active_boot_alerts(&alerts(&d, &admin).await);
            left.is_disjoint(&wanted).then_some(())
        },
    )
    .await;
    assert!(
        d.logs().contains("alerts missed machine events"),
        "the alerts listener kept up with 8 deletes at once: nothing was missed"
    );
}

#[tokio::test]
async fn a_boot_failure_raises_a_warning_and_deleting_the_machine_clears_it() {
    let d = daemon(&quiet_alerts(&[("ORCHARD_SIMULATOR_BOOT_MS", "200")]));
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("system_alerts", None).await;

    let machine = fail_boot_machine(&d, &admin).await;
    let r = d
        .post_empty(&format!("/api/machines/{machine}/start"), Some(&admin))
        .await;
    assert_eq!(r.status, 202, "start: {}", r.text);
    let raised = c
        .expect(T, "a raised machine_boot alert", |v| {
            is_alert(v, "machine_boot", "raised")
        })
        .await;
    assert_alert(&raised);
    assert_eq!(raised["data"]["severity"], "warning", "{raised}");
    let id = raised["data"]["alert_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let listed = alerts(&d, &admin).await;
    let active = with_id(&listed["active"], &id);
    assert_eq!(active.len(), 1, "the alert is active: {listed}");
    assert_eq!(active[0]["state"], "raised", "{listed}");
    assert_eq!(active[0]["category"], "machine_boot", "{listed}");
    let history = with_id(&listed["history"], &id);
    assert!(
        history.iter().any(|a| a["state"] == "raised"),
        "the history holds the raise: {listed}"
    );

    let r = d
        .delete(&format!("/api/machines/{machine}"), Some(&admin))
        .await;
    assert!(
        (200..300).contains(&r.status),
        "delete: HTTP {} {}",
        r.status,
        r.text
    );
    let cleared = c
        .expect(T, "the machine_boot alert cleared", |v| {
            is_alert(v, "machine_boot", "cleared")
        })
        .await;
    assert_eq!(
        cleared["data"]["alert_id"],
        id.as_str(),
        "same alert: {cleared}"
    );

    let listed = alerts(&d, &admin).await;
    assert!(
        with_id(&listed["active"], &id).is_empty(),
        "a cleared alert is no longer active: {listed}"
    );
    let states: BTreeSet<String> = with_id(&listed["history"], &id)
        .iter()
        .filter_map(|a| a["state"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(states, set(&["raised", "cleared"]), "history: {listed}");
}

#[tokio::test]
async fn alert_history_needs_view_all_vms() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (_, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    d.get("/api/alerts", Some(&nobody))
        .await
        .expect_any_error(403);
    d.get("/api/alerts", None).await.expect_any_error(401);
    alerts(&d, &admin).await;
}

// ----- user_activity -----

const AGENT: &str = "orchard-channels-test/1.0 (integration)";

fn is_activity(v: &Value, action: &str) -> bool {
    is_event(v, "user_activity") && v["data"]["action"] == action
}

/// True when some string field of `v` is exactly `s`.
fn mentions(v: &Value, s: &str) -> bool {
    v.as_object()
        .is_some_and(|o| o.values().any(|x| x.as_str() == Some(s)))
}

#[tokio::test]
async fn user_activity_reports_logins_failures_user_changes_and_logouts() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let admin_id = uuid_of(&d.me(&admin).await);
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("user_activity", None).await;

    // Someone logs in (the admin, from another client).
    let r = login_with_agent(&d, "admin", d.admin_password(), AGENT).await;
    r.expect(200);
    let e = c.expect(T, "a login", |v| is_activity(v, "login")).await;
    let a = &e["data"];
    assert_eq!(a["username"], "admin", "{e}");
    assert_eq!(a["user_id"], admin_id.as_str(), "{e}");
    assert_eq!(a["ip_address"], "127.0.0.1", "{e}");
    assert_eq!(a["user_agent"], AGENT, "{e}");
    assert_iso(&a["timestamp"], "timestamp");

    // A bad password.
    let r = login_with_agent(&d, "admin", "wrong-password-1", AGENT).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let e = c
        .expect(T, "a failed login", |v| is_activity(v, "login_failed"))
        .await;
    assert_eq!(e["data"]["username"], "admin", "{e}");
    assert_eq!(e["data"]["ip_address"], "127.0.0.1", "{e}");
    assert_eq!(e["data"]["user_agent"], AGENT, "{e}");
    assert_iso(&e["data"]["timestamp"], "timestamp");

    // User changes, made by the admin.
    let u = d
        .create_user(
            &admin,
            "carol",
            "carol-password-123",
            "client",
            &["VIEW_ALL_VMS"],
        )
        .await;
    let carol = uuid_of(&u);
    let e = c
        .expect(T, "user.create", |v| is_activity(v, "user.create"))
        .await;
    assert_eq!(e["data"]["username"], "admin", "the actor: {e}");
    assert_eq!(e["data"]["user_id"], admin_id.as_str(), "{e}");
    assert!(mentions(&e["data"], "carol"), "names the new user: {e}");

    // Carol logs in and out (her logout revokes only her tokens).
    let carol_token = d.login("carol", "carol-password-123").await;
    let e = c
        .expect(T, "carol's login", |v| is_activity(v, "login"))
        .await;
    assert_eq!(e["data"]["username"], "carol", "{e}");
    assert_eq!(e["data"]["user_id"], carol.as_str(), "{e}");
    let r = d.post_empty("/api/auth/logout", Some(&carol_token)).await;
    assert!(
        (200..300).contains(&r.status),
        "logout: HTTP {} {}",
        r.status,
        r.text
    );
    let e = c.expect(T, "a logout", |v| is_activity(v, "logout")).await;
    assert_eq!(e["data"]["username"], "carol", "{e}");
    assert_eq!(e["data"]["user_id"], carol.as_str(), "{e}");

    d.patch(
        &format!("/api/users/{carol}"),
        Some(&admin),
        &json!({"permissions": []}),
    )
    .await
    .expect(200);
    let e = c
        .expect(T, "user.update", |v| is_activity(v, "user.update"))
        .await;
    assert_eq!(e["data"]["username"], "admin", "{e}");
    assert!(mentions(&e["data"], "carol"), "names the changed user: {e}");

    let r = d.delete(&format!("/api/users/{carol}"), Some(&admin)).await;
    assert!(
        (200..300).contains(&r.status),
        "delete: HTTP {} {}",
        r.status,
        r.text
    );
    let e = c
        .expect(T, "user.delete", |v| is_activity(v, "user.delete"))
        .await;
    assert_eq!(e["data"]["username"], "admin", "{e}");
    assert!(mentions(&e["data"], "carol"), "names the deleted user: {e}");

    // Each announced entry was committed to the audit log first: the REST history has
    // them all as soon as the last event has arrived, newest first.
    let history = d.get("/api/activity", Some(&admin)).await.expect(200);
    let actions: Vec<&str> = history
        .as_array()
        .unwrap_or_else(|| panic!("activity is an array: {history}"))
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    for want in [
        "user.delete",
        "user.update",
        "logout",
        "user.create",
        "login_failed",
        "login",
    ] {
        assert!(
            actions.contains(&want),
            "{want} in /api/activity: {actions:?}"
        );
    }
    assert_eq!(
        actions.first(),
        Some(&"user.delete"),
        "newest first: {actions:?}"
    );
    let failed = history
        .as_array()
        .and_then(|h| h.iter().find(|a| a["action"] == "login_failed"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed["ip"], "127.0.0.1", "{failed}");
    assert_eq!(failed["user_agent"], AGENT, "{failed}");
    assert!(
        !history.to_string().contains("wrong-password-1"),
        "no password in the audit log"
    );

    // The history is for MANAGE_ADMIN_USERS only.
    let viewer_pw = "viewer-password-123";
    d.create_user(&admin, "viewer", viewer_pw, "client", &["VIEW_ALL_VMS"])
        .await;
    let viewer = d.login("viewer", viewer_pw).await;
    d.get("/api/activity", Some(&viewer))
        .await
        .expect_any_error(403);
}

// ----- command_execution -----

#[tokio::test]
async fn a_command_without_an_agent_fails_with_command_failed() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let host = local_host_id(&d, &admin).await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("command_execution", None).await;
    c.send(&json!({
        "type": "command",
        "channel": "command_execution",
        "data": {"host_id": host, "command": "uname"},
        "id": "r1",
    }))
    .await;
    let e = c
        .expect(T, "the answer to the command", |v| v["id"] == "r1")
        .await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["channel"], "command_execution", "{e}");
    assert_eq!(e["data"]["code"], "COMMAND_FAILED", "{e}");
    assert!(e["data"]["message"].is_string(), "{e}");
    // The socket carries on.
    c.ping().await;
}
