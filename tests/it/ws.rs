//! The machines WebSocket API (`api-docs/A-machines.md`, contract sections 2, 4.1 and 7)
//! against the real daemon: authentication and permissions, the envelope and payloads, the
//! initial data and periodic broadcasts, machine events, live subscriptions and ownership,
//! token expiry and revocation, the Origin check, limits, shutdown, slow clients and
//! keepalive.
//!
//! Waits are on messages and closes with deadlines, never fixed sleeps. Where a test must
//! show that a socket did *not* get something, it uses a fence: a change to a machine the
//! socket follows, whose `DATA_STATIC` is read back; events reach a socket in the order they
//! happened, so anything sent for an earlier action arrives before the fence.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Daemon, Resp, b64url_encode, jwt_claims, uuid_of};
use crate::wsclient::{Connect, End, Event, INITIAL_TYPES, OP_PING, RawClient, WsClient};

const GLOBAL: &str = "/ws/machines/global";
const ACCOUNT: &str = "/ws/machines/account";
const SUBSCRIBED: &str = "/ws/machines/subscribed";
const ENDPOINTS: [&str; 3] = [SUBSCRIBED, ACCOUNT, GLOBAL];

/// How long any expected message or close may take (generous: tests run in parallel).
const T: Duration = Duration::from_secs(10);
/// Revocation must reach open sockets within 2 s (contract section 2); 1 s of slack for a
/// loaded test machine.
const REVOKE_WITHIN: Duration = Duration::from_secs(3);

const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_TOO_SLOW: u16 = 4008;
const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_FORBIDDEN: u16 = 4403;

const PERIODIC: [&str; 3] = [
    "DATA_DYNAMIC",
    "DATA_DYNAMIC_DISKS",
    "DATA_DYNAMIC_CONNECTIONS",
];
/// The lifecycle event types of `/ws/machines/global`.
pub const LIFECYCLE: [&str; 6] = [
    "BOOTUP_START",
    "BOOTUP_SUCCESS",
    "BOOTUP_FAIL",
    "SHUTDOWN_START",
    "SHUTDOWN_SUCCESS",
    "SHUTDOWN_FAIL",
];

// ----- payloads (contract 4.1, field for field) -----

const PROPERTY_KEYS: [&str; 12] = [
    "uuid",
    "title",
    "tags",
    "description",
    "owner",
    "assigned_clients",
    "backend",
    "kind",
    "vcpu",
    "ram_max",
    "connections",
    "disks",
];

const STATE_KEYS: [&str; 13] = [
    "uuid",
    "active",
    "loading",
    "status",
    "vcpu",
    "cpu_percent",
    "ram_max",
    "ram_used",
    "boot_timestamp",
    "net_rx_bytes",
    "net_tx_bytes",
    "disk_read_bytes",
    "disk_write_bytes",
];

const STATUSES: [&str; 7] = [
    "running",
    "stopped",
    "paused",
    "suspended",
    "booting",
    "shutting_down",
    "error",
];

fn assert_exact_keys(v: &Value, keys: &[&str], what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(got, want, "fields of {what}: {v}");
}

fn assert_uuid_str(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{what} {s:?} is not a UUID: {e}"));
}

fn assert_count(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a non-negative integer: {v}"))
}

fn assert_user_ref(v: &Value, what: &str) {
    assert_exact_keys(v, &["uuid", "username"], what);
    assert_uuid_str(&v["uuid"], what);
    assert!(v["username"].is_string(), "{what}.username: {v}");
}

fn assert_disk(v: &Value, with_usage: bool) {
    let mut keys = vec!["system", "name", "size_bytes", "type"];
    if with_usage {
        keys.push("occupied_bytes");
    }
    assert_exact_keys(v, &keys, "disk");
    assert!(v["system"].is_boolean(), "disk.system: {v}");
    assert!(v["name"].is_string(), "disk.name: {v}");
    assert!(v["type"].is_string(), "disk.type: {v}");
    let size = assert_count(&v["size_bytes"], "disk.size_bytes");
    if with_usage {
        let used = assert_count(&v["occupied_bytes"], "disk.occupied_bytes");
        assert!(used <= size, "disk occupied beyond its size: {v}");
    }
}

/// `MachinePropertiesPayload`.
fn assert_props(v: &Value) {
    assert_exact_keys(v, &PROPERTY_KEYS, "MachinePropertiesPayload");
    assert_uuid_str(&v["uuid"], "uuid");
    assert!(
        v["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title: {v}"
    );
    assert!(
        v["tags"]
            .as_array()
            .is_some_and(|t| t.iter().all(Value::is_string)),
        "tags: {v}"
    );
    assert!(v["description"].is_string(), "description: {v}");
    if !v["owner"].is_null() {
        assert_user_ref(&v["owner"], "owner");
    }
    let clients = v["assigned_clients"]
        .as_object()
        .unwrap_or_else(|| panic!("assigned_clients is not an object: {v}"));
    for (key, c) in clients {
        assert_user_ref(c, "assigned client");
        assert_eq!(c["uuid"], key.as_str(), "assigned_clients key: {v}");
    }
    assert!(
        v["backend"].as_str().is_some_and(|b| !b.is_empty()),
        "backend: {v}"
    );
    assert!(v["kind"] == "vm" || v["kind"] == "container", "kind: {v}");
    assert_count(&v["vcpu"], "vcpu");
    assert_count(&v["ram_max"], "ram_max");
    assert!(v["connections"].is_object(), "connections: {v}");
    for d in v["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("disks is not an array: {v}"))
    {
        assert_disk(d, false);
    }
}

/// `MachineStatePayload`.
fn assert_state(v: &Value) {
    assert_exact_keys(v, &STATE_KEYS, "MachineStatePayload");
    assert_uuid_str(&v["uuid"], "uuid");
    let status = v["status"].as_str().unwrap_or_default();
    assert!(STATUSES.contains(&status), "status: {v}");
    assert!(v["active"].is_boolean(), "active: {v}");
    assert!(v["loading"].is_boolean(), "loading: {v}");
    assert_count(&v["vcpu"], "vcpu");
    assert!(v["cpu_percent"].is_number(), "cpu_percent: {v}");
    assert_count(&v["ram_max"], "ram_max");
    assert_count(&v["ram_used"], "ram_used");
    assert!(
        v["boot_timestamp"].is_null() || v["boot_timestamp"].is_string(),
        "boot_timestamp: {v}"
    );
    for k in [
        "net_rx_bytes",
        "net_tx_bytes",
        "disk_read_bytes",
        "disk_write_bytes",
    ] {
        assert_count(&v[k], k);
    }
}

/// `MachineDisksPayload`.
fn assert_disks(v: &Value) {
    assert_exact_keys(v, &["uuid", "disks"], "MachineDisksPayload");
    assert_uuid_str(&v["uuid"], "uuid");
    for d in v["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("disks is not an array: {v}"))
    {
        assert_disk(d, true);
    }
}

/// `MachineConnectionsPayload`.
fn assert_connections(v: &Value) {
    assert_exact_keys(
        v,
        &["uuid", "active_connections"],
        "MachineConnectionsPayload",
    );
    assert_uuid_str(&v["uuid"], "uuid");
    assert!(
        v["active_connections"].is_array(),
        "active_connections: {v}"
    );
}

/// Checks a `dict[UUID, payload]` body (each key is its entry's uuid) and returns its keys.
fn dict(body: &Value, check: fn(&Value)) -> BTreeSet<String> {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("body is not a dict: {body}"));
    for (key, entry) in obj {
        check(entry);
        assert_eq!(
            entry["uuid"],
            key.as_str(),
            "dict key vs entry uuid: {body}"
        );
    }
    obj.keys().cloned().collect()
}

/// The checker of a periodic message type's entries.
fn checker(ty: &str) -> fn(&Value) {
    match ty {
        "DATA_STATIC" => assert_props,
        "DATA_DYNAMIC" => assert_state,
        "DATA_DYNAMIC_DISKS" => assert_disks,
        "DATA_DYNAMIC_CONNECTIONS" => assert_connections,
        other => panic!("no dict payload for {other}"),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn is_type(v: &Value, ty: &str) -> bool {
    v["type"] == ty
}

fn has_entry(v: &Value, uuid: &str) -> bool {
    v["body"].get(uuid).is_some()
}

// ----- daemon and REST -----

/// A daemon with the short simulated boot and shutdown times, plus `env`.
fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut b = Daemon::builder()
        .env("ORCHARD_SIMULATOR_BOOT_MS", "300")
        .env("ORCHARD_SIMULATOR_SHUTDOWN_MS", "200");
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

fn assert_2xx(r: &Resp, what: &str) {
    assert!(
        (200..300).contains(&r.status),
        "{what}: HTTP {} {}",
        r.status,
        r.text
    );
}

async fn put(d: &Daemon, path: &str, token: &str, body: Option<&Value>) -> Resp {
    d.request(Method::PUT, path, Some(token), body).await
}

async fn subscribe(d: &Daemon, token: &str, machine: &str) {
    let r = put(d, &format!("/api/subscriptions/{machine}"), token, None).await;
    assert_2xx(&r, "PUT /api/subscriptions");
}

async fn unsubscribe(d: &Daemon, token: &str, machine: &str) {
    let r = d
        .delete(&format!("/api/subscriptions/{machine}"), Some(token))
        .await;
    assert_2xx(&r, "DELETE /api/subscriptions");
}

async fn stored_subscriptions(d: &Daemon, token: &str) -> BTreeSet<String> {
    let v = d.get("/api/subscriptions", Some(token)).await.expect(200);
    v.as_array()
        .unwrap_or_else(|| panic!("GET /api/subscriptions is not a list: {v}"))
        .iter()
        .map(|u| u.as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn set_owner(d: &Daemon, admin: &str, machine: &str, user: Option<&str>) {
    let r = put(
        d,
        &format!("/api/machines/{machine}/owner"),
        admin,
        Some(&json!({ "user": user })),
    )
    .await;
    assert_2xx(&r, "PUT owner");
}

async fn assign(d: &Daemon, admin: &str, machine: &str, user: &str, assigned: bool) {
    let path = format!("/api/machines/{machine}/clients/{user}");
    let r = if assigned {
        put(d, &path, admin, None).await
    } else {
        d.delete(&path, Some(admin)).await
    };
    assert_2xx(&r, "PUT/DELETE clients");
}

async fn create(d: &Daemon, token: &str, title: &str, tags: &[&str]) -> Value {
    let m = d
        .post(
            "/api/machines",
            Some(token),
            &json!({"title": title, "vcpu": 1, "ram_mib": 256, "tags": tags}),
        )
        .await
        .expect(201);
    assert_props(&m);
    m
}

async fn patch_machine(d: &Daemon, token: &str, uuid: &str, body: &Value) -> Value {
    d.patch(&format!("/api/machines/{uuid}"), Some(token), body)
        .await
        .expect(200)
}

async fn power(d: &Daemon, token: &str, uuid: &str, action: &str) {
    let r = d
        .post_empty(&format!("/api/machines/{uuid}/{action}"), Some(token))
        .await;
    assert_eq!(r.status, 202, "{action}: {}", r.text);
}

async fn machines(d: &Daemon, token: &str) -> Vec<Value> {
    let v = d.get("/api/machines", Some(token)).await.expect(200);
    v.as_array()
        .unwrap_or_else(|| panic!("GET /api/machines is not a list: {v}"))
        .clone()
}

/// Demo machines that boot normally.
async fn plain_demo_machines(d: &Daemon, token: &str) -> Vec<String> {
    machines(d, token)
        .await
        .iter()
        .filter(|m| {
            !m["tags"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t.as_str().is_some_and(|t| t.starts_with("fail-")))
            })
        })
        .map(uuid_of)
        .collect()
}

/// A client user with these permissions: (uuid, token).
async fn client_user(d: &Daemon, admin: &str, name: &str, perms: &[&str]) -> (String, String) {
    let password = format!("{name}-password-1");
    let u = d.create_user(admin, name, &password, "client", perms).await;
    (uuid_of(&u), d.login(name, &password).await)
}

async fn open(d: &Daemon, path: &str, token: &str) -> WsClient {
    Connect::new(d, path).access_token(token).open().await
}

/// Opens a socket and reads its four initial messages.
async fn open_ready(d: &Daemon, path: &str, token: &str) -> WsClient {
    let mut c = open(d, path, token).await;
    c.initial(T).await;
    c
}

/// A subscribed socket that also follows `machines` through `?machine_uuid=`.
async fn open_subscribed_with(d: &Daemon, token: &str, machines: &[&str]) -> WsClient {
    let mut c = Connect::new(d, SUBSCRIBED).access_token(token);
    for m in machines {
        c = c.query("machine_uuid", m);
    }
    c.open().await
}

/// Gives `machine` a fresh description and reads `c` up to the `DATA_STATIC` carrying it;
/// returns the messages before it.
async fn fence(c: &mut WsClient, d: &Daemon, token: &str, machine: &str) -> Vec<Value> {
    let marker = format!("fence {}", uuid::Uuid::new_v4());
    patch_machine(d, token, machine, &json!({ "description": marker })).await;
    let mut seen = c
        .collect_until(T, "the fence DATA_STATIC", |v| {
            is_type(v, "DATA_STATIC") && v["body"][machine]["description"] == marker.as_str()
        })
        .await;
    seen.pop();
    seen
}

/// The next message that is not a periodic broadcast.
async fn next_event(c: &mut WsClient) -> Value {
    c.next_matching(T, "an event", |v| !PERIODIC.iter().any(|p| is_type(v, p)))
        .await
}

/// Reads the lifecycle events of `machine` up to a success or failure of `last_phase`
/// (`BOOTUP` or `SHUTDOWN`); checks their bodies and returns their types in order.
async fn lifecycle(c: &mut WsClient, machine: &str, last_phase: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let v = c
            .next_matching(T, &format!("{last_phase} events of {machine}"), |v| {
                LIFECYCLE.iter().any(|t| is_type(v, t)) && v["body"]["uuid"] == machine
            })
            .await;
        let ty = v["type"].as_str().unwrap_or_default().to_owned();
        if ty.ends_with("_FAIL") {
            assert_exact_keys(&v["body"], &["uuid", "error"], &ty);
            assert!(
                v["body"]["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{ty} without an error: {v}"
            );
        } else {
            assert_exact_keys(&v["body"], &["uuid"], &ty);
        }
        let done = ty == format!("{last_phase}_SUCCESS") || ty == format!("{last_phase}_FAIL");
        seen.push(ty);
        if done {
            return seen;
        }
    }
}

/// The keys of the next `count` DATA_DYNAMIC messages.
async fn next_dynamic_keys(c: &mut WsClient, count: usize) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for _ in 0..count {
        let v = c.next_of_type("DATA_DYNAMIC", T).await;
        out.push(dict(&v["body"], assert_state));
    }
    out
}

// ----- connecting and authentication -----

#[tokio::test]
async fn initial_data_arrives_in_order_with_exact_payloads() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let list = machines(&d, &admin).await;
    let all: BTreeSet<String> = list.iter().map(uuid_of).collect();
    assert!(all.len() >= 3, "demo fleet: {list:?}");

    let mut g = open(&d, GLOBAL, &admin).await;
    let init = g.initial(T).await;
    assert_eq!(g.types, INITIAL_TYPES, "the first messages, in order");
    for (ty, body) in init.by_type() {
        assert_eq!(dict(body, checker(ty)), all, "global {ty}");
    }
    for m in &list {
        assert_eq!(
            &init.statik[uuid_of(m)],
            m,
            "DATA_STATIC entry vs GET /api/machines"
        );
    }

    // Then DATA_DYNAMIC every `machines.dynamic_interval` (1 s): consecutive ones about a
    // second apart (checked loosely: over three intervals, and no gap beyond 3 s).
    let mut at = Vec::new();
    let mut ids = BTreeSet::new();
    for _ in 0..4 {
        let v = g.next_of_type("DATA_DYNAMIC", T).await;
        at.push(Instant::now());
        assert_eq!(dict(&v["body"], assert_state), all);
        ids.insert(v["uuid"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(ids.len(), 4, "every message has its own uuid");
    let span = at[3].duration_since(at[0]);
    assert!(
        span >= Duration::from_millis(1500) && span <= Duration::from_secs(6),
        "three DATA_DYNAMIC intervals took {span:?}; expected about 3 s"
    );
    for w in at.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap <= Duration::from_secs(3), "DATA_DYNAMIC {gap:?} apart");
    }

    // The account socket follows what the user owns; the subscribed one what it subscribes.
    let mine = create(&d, &admin, "ws-initial-owned", &[]).await;
    let mine = uuid_of(&mine);
    let mut a = open(&d, ACCOUNT, &admin).await;
    let init = a.initial(T).await;
    for (ty, body) in init.by_type() {
        assert_eq!(dict(body, checker(ty)), set(&[&mine]), "account {ty}");
    }
    let followed = uuid_of(&list[0]);
    let mut s = open_subscribed_with(&d, &admin, &[&followed]).await;
    let init = s.initial(T).await;
    for (ty, body) in init.by_type() {
        assert_eq!(
            dict(body, checker(ty)),
            set(&[&followed]),
            "subscribed {ty}"
        );
    }
    assert_eq!(next_dynamic_keys(&mut s, 1).await, [set(&[&followed])]);
}

#[tokio::test]
async fn token_is_accepted_as_access_token_token_or_bearer_header() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    for path in ENDPOINTS {
        for (how, connect) in [
            (
                "?access_token=",
                Connect::new(&d, path).access_token(&admin),
            ),
            ("?token=", Connect::new(&d, path).token_param(&admin)),
            (
                "Authorization: Bearer",
                Connect::new(&d, path).bearer(&admin),
            ),
        ] {
            let mut c = connect.open().await;
            let first = c.next_event(T).await;
            assert!(
                matches!(&first, Some(Event::Json(v)) if v["type"] == "DATA_STATIC"),
                "{path} with the token as {how}: {first:?}"
            );
        }
    }
}

/// A token whose payload was changed after signing.
fn tampered(token: &str) -> String {
    let mut claims = jwt_claims(token);
    claims["exp"] = json!(claims["exp"].as_u64().unwrap_or(0) + 3600);
    let parts: Vec<&str> = token.split('.').collect();
    let payload = b64url_encode(claims.to_string().as_bytes());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

#[tokio::test]
async fn missing_or_bad_token_is_accepted_then_closed_4401() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let forged = tampered(&admin);
    for path in ENDPOINTS {
        let cases = [
            ("no token", Connect::new(&d, path)),
            (
                "garbage ?access_token=",
                Connect::new(&d, path).access_token("not-a-token"),
            ),
            (
                "empty ?access_token=",
                Connect::new(&d, path).access_token(""),
            ),
            (
                "garbage ?token=",
                Connect::new(&d, path).token_param("x.y.z"),
            ),
            ("tampered bearer", Connect::new(&d, path).bearer(&forged)),
            (
                "empty bearer",
                Connect::new(&d, path).header("Authorization", "Bearer "),
            ),
        ];
        for (what, connect) in cases {
            // The upgrade itself succeeds; then the server closes with 4401.
            let mut c = connect.open().await;
            match c.wait_end(T).await {
                End::Closed(code) => assert_eq!(code, CLOSE_UNAUTHORIZED, "{path}, {what}"),
                End::Dropped(why) => panic!("{path}, {what}: ended without a close frame: {why}"),
            }
            assert!(
                c.types.is_empty(),
                "{path}, {what}: data before the close: {:?}",
                c.types
            );
        }
    }
}

#[tokio::test]
async fn global_needs_view_all_vms_else_closed_4403() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (_, plain) = client_user(&d, &admin, "plain", &[]).await;
    let (_, viewer) = client_user(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;

    let mut g = open(&d, GLOBAL, &plain).await;
    g.expect_close(CLOSE_FORBIDDEN, T).await;
    assert!(g.types.is_empty(), "data before the 4403: {:?}", g.types);
    // The same user's other streams are fine (and show nothing: they own nothing).
    for path in [ACCOUNT, SUBSCRIBED] {
        let mut c = open(&d, path, &plain).await;
        let init = c.initial(T).await;
        assert_eq!(dict(&init.statik, assert_props), BTreeSet::new(), "{path}");
    }
    let all: BTreeSet<String> = machines(&d, &admin).await.iter().map(uuid_of).collect();
    let mut g = open(&d, GLOBAL, &viewer).await;
    let init = g.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), all);
}

#[tokio::test]
async fn upgrade_on_unknown_ws_path_is_404() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    for path in [
        "/ws/machines/nope",
        "/ws/machines",
        "/ws/machines/global/extra",
        "/ws/no-such-api",
    ] {
        let status = Connect::new(&d, path)
            .access_token(&admin)
            .refused_status()
            .await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn origin_must_be_own_or_allowed() {
    let d = daemon(&[("ORCHARD_HTTP_ALLOWED_ORIGINS", "https://ui.example")]);
    let admin = d.admin_token().await;
    let port = d.addr().port();
    for path in ENDPOINTS {
        for origin in [
            "http://evil.example".to_owned(),
            format!("http://evil.example:{port}"),
            "http://127.0.0.1:1".to_owned(),
            "https://ui.example.evil".to_owned(),
        ] {
            let status = Connect::new(&d, path)
                .access_token(&admin)
                .origin(&origin)
                .refused_status()
                .await;
            assert_eq!(status, 403, "{path} with Origin {origin}");
        }
        for origin in [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
            "https://ui.example".to_owned(),
        ] {
            let mut c = Connect::new(&d, path)
                .access_token(&admin)
                .origin(&origin)
                .open()
                .await;
            c.initial(T).await;
        }
        // No Origin at all (a native client) is fine too.
        open_ready(&d, path, &admin).await;
    }
}

// ----- events -----

#[tokio::test]
async fn create_reaches_global_and_the_creators_account_never_subscribed() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let demo = plain_demo_machines(&d, &admin).await;
    let fence_machine = demo[0].clone();
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    let mut a = open_ready(&d, ACCOUNT, &admin).await;
    let mut s = open_subscribed_with(&d, &admin, &[&fence_machine]).await;
    s.initial(T).await;
    let (_, maker) = client_user(&d, &admin, "maker", &["MANAGE_ALL_VMS"]).await;
    let mut ma = open_ready(&d, ACCOUNT, &maker).await;

    let m = create(&d, &admin, "ws-created", &["t1"]).await;
    for (name, c) in [("global", &mut g), ("admin's account", &mut a)] {
        let ev = next_event(c).await;
        assert_eq!(ev["type"], "CREATE", "{name}: {ev}");
        assert_props(&ev["body"]);
        assert_eq!(ev["body"], m, "{name}: CREATE body is the bare properties");
    }
    // Not on subscribed (nor, as the maker's socket shows below, on another user's account).
    let before = fence(&mut s, &d, &admin, &fence_machine).await;
    assert!(
        !before.iter().any(|v| is_type(v, "CREATE")),
        "CREATE on /subscribed: {before:?}"
    );
    assert!(!s.types.iter().any(|t| t == "CREATE"), "{:?}", s.types);
    // Creating does not subscribe anyone.
    assert!(stored_subscriptions(&d, &admin).await.is_empty());
    // Later DATA_DYNAMIC of the creator's account include the new machine.
    let uuid = uuid_of(&m);
    let keys = next_dynamic_keys(&mut a, 2).await;
    assert!(
        keys[1].contains(&uuid),
        "account DATA_DYNAMIC without the created machine: {keys:?}"
    );

    // A client user who may create gets CREATE on their own account socket (and nothing
    // for the admin's machine before it), and global too.
    let m2 = create(&d, &maker, "ws-created-by-client", &[]).await;
    let ev = next_event(&mut ma).await;
    assert_eq!(ev["type"], "CREATE", "{ev}");
    assert_eq!(ev["body"], m2);
    assert_eq!(ev["body"]["owner"]["username"], "maker");
    let ev = g.next_of_type("CREATE", T).await;
    assert_eq!(ev["body"], m2);
}

#[tokio::test]
async fn patch_sends_single_entry_data_static() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let m = uuid_of(&create(&d, &admin, "ws-patch-me", &[]).await);
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    let mut a = open_ready(&d, ACCOUNT, &admin).await;
    let mut s = open_subscribed_with(&d, &admin, &[&m]).await;
    s.initial(T).await;

    let after = patch_machine(
        &d,
        &admin,
        &m,
        &json!({"title": "ws-patched", "description": "new words", "tags": ["a", "b"]}),
    )
    .await;
    for (name, c) in [
        ("global", &mut g),
        ("account", &mut a),
        ("subscribed", &mut s),
    ] {
        let ev = next_event(c).await;
        assert_eq!(ev["type"], "DATA_STATIC", "{name}: {ev}");
        assert_eq!(
            dict(&ev["body"], assert_props),
            set(&[&m]),
            "{name}: one entry"
        );
        let entry = &ev["body"][&m];
        assert_eq!(entry["title"], "ws-patched", "{name}");
        assert_eq!(entry["description"], "new words", "{name}");
        assert_eq!(entry["tags"], json!(["a", "b"]), "{name}");
        assert_eq!(entry, &after, "{name}: entry vs the PATCH answer");
    }
}

/// Applies what a socket read as a client of the API does: `CREATE` adds a machine, `DELETE`
/// removes one, and a `DATA_STATIC` entry describes one it has. Fails on a `CREATE` of a
/// machine it has, a `DELETE` of one it does not, or an entry of one it does not have.
fn apply_machine_set(view: &mut BTreeSet<String>, read: &[Value], socket: &str) {
    for v in read {
        match v["type"].as_str().unwrap_or_default() {
            "CREATE" => {
                let u = uuid_of(&v["body"]);
                assert!(view.insert(u.clone()), "{socket}: a second CREATE of {u}");
            }
            "DELETE" => {
                let u = uuid_of(&v["body"]);
                assert!(
                    view.remove(&u),
                    "{socket}: DELETE of {u}, which it does not have"
                );
            }
            "DATA_STATIC" => {
                for u in dict(&v["body"], assert_props) {
                    assert!(
                        view.contains(&u),
                        "{socket}: a DATA_STATIC entry of {u}, which it does not have"
                    );
                }
            }
            _ => {}
        }
    }
}

/// With `machines.event_buffer` = 1 the hub misses events in any burst and resynchronises.
/// Bursts of concurrent creates, deletes and ownership changes run until the daemon reports
/// that it fell behind; then the messages each socket read, applied in order, must give the
/// registry's set of machines exactly, without a duplicate or an unknown machine on the way.
#[tokio::test]
async fn after_missed_events_every_socket_is_resynchronised_to_the_registry() {
    let d = daemon(&[("ORCHARD_MACHINES_EVENT_BUFFER", "1")]);
    let admin = d.admin_token().await;
    let admin_uuid = uuid_of(&d.me(&admin).await);
    let demo = plain_demo_machines(&d, &admin).await;
    let mut g = open(&d, GLOBAL, &admin).await;
    let mut a = open(&d, ACCOUNT, &admin).await;
    let mut view_g = dict(&g.initial(T).await.statik, assert_props);
    let mut view_a = dict(&a.initial(T).await.statik, assert_props);

    let mut made: Vec<String> = Vec::new();
    let mut lagged = false;
    for round in 0..40 {
        let titles: Vec<String> = (0..6).map(|i| format!("burst-{round}-{i}")).collect();
        let paths: Vec<String> = made.iter().map(|u| format!("/api/machines/{u}")).collect();
        let creates = join_all(titles.iter().map(|t| create(&d, &admin, t, &[])));
        let deletes = join_all(paths.iter().map(|p| d.delete(p, Some(&admin))));
        let owner = (round % 2 == 0).then_some(admin_uuid.as_str());
        let owners = join_all(demo.iter().take(3).map(|m| set_owner(&d, &admin, m, owner)));
        let (created, deleted, _) = tokio::join!(creates, deletes, owners);
        for r in &deleted {
            assert_2xx(r, "DELETE machine");
        }
        made = created.iter().map(uuid_of).collect();
        if d.logs().contains("machines hub fell behind") {
            lagged = true;
            break;
        }
    }
    assert!(lagged, "40 bursts and the hub never fell behind one event");

    let fence_machine = made[0].clone();
    let marker = format!("fence {}", uuid::Uuid::new_v4());
    patch_machine(
        &d,
        &admin,
        &fence_machine,
        &json!({ "description": marker }),
    )
    .await;
    let fenced = |v: &Value| {
        is_type(v, "DATA_STATIC") && v["body"][&fence_machine]["description"] == marker.as_str()
    };
    let read_g = g.collect_until(T, "the fence on global", fenced).await;
    let read_a = a.collect_until(T, "the fence on account", fenced).await;
    apply_machine_set(&mut view_g, &read_g, "global");
    apply_machine_set(&mut view_a, &read_a, "account");

    let all = machines(&d, &admin).await;
    let registry: BTreeSet<String> = all.iter().map(uuid_of).collect();
    assert_eq!(view_g, registry, "global after the resync");
    let owned: BTreeSet<String> = all
        .iter()
        .filter(|m| {
            m["owner"]["uuid"] == admin_uuid.as_str()
                || m["assigned_clients"].get(&admin_uuid).is_some()
        })
        .map(uuid_of)
        .collect();
    assert_eq!(view_a, owned, "account after the resync");
    assert!(
        read_g
            .iter()
            .any(|v| is_type(v, "DATA_STATIC") && dict(&v["body"], assert_props).len() > 1),
        "global got no full DATA_STATIC after falling behind"
    );
}

#[tokio::test]
async fn delete_sends_delete_and_subscribed_socket_stays_open() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let keep = plain_demo_machines(&d, &admin).await[0].clone();
    let m = uuid_of(&create(&d, &admin, "ws-delete-me", &[]).await);
    subscribe(&d, &admin, &m).await;
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    let mut a = open_ready(&d, ACCOUNT, &admin).await;
    let mut s = open_subscribed_with(&d, &admin, &[&keep]).await;
    let init = s.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), set(&[&m, &keep]));

    let r = d.delete(&format!("/api/machines/{m}"), Some(&admin)).await;
    assert_2xx(&r, "DELETE machine");
    for (name, c) in [
        ("global", &mut g),
        ("account", &mut a),
        ("subscribed", &mut s),
    ] {
        let ev = next_event(c).await;
        assert_eq!(ev["type"], "DELETE", "{name}: {ev}");
        assert_eq!(ev["body"], json!({ "uuid": m }), "{name}: DELETE body");
    }
    // The subscribed socket stays open; its later DATA_DYNAMIC leave the machine out (the
    // first one after DELETE may have been prepared before it).
    let keys = next_dynamic_keys(&mut s, 3).await;
    for k in &keys[1..] {
        assert_eq!(
            k,
            &set(&[&keep]),
            "subscribed DATA_DYNAMIC after DELETE: {keys:?}"
        );
    }
    let keys = next_dynamic_keys(&mut g, 2).await;
    assert!(
        !keys[1].contains(&m),
        "global DATA_DYNAMIC after DELETE: {keys:?}"
    );
}

#[tokio::test]
async fn start_and_stop_send_bootup_and_shutdown_events() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let m = uuid_of(&create(&d, &admin, "ws-power", &[]).await);
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    let mut a = open_ready(&d, ACCOUNT, &admin).await;
    let mut s = open_subscribed_with(&d, &admin, &[&m]).await;
    s.initial(T).await;

    power(&d, &admin, &m, "start").await;
    for (name, c) in [
        ("global", &mut g),
        ("account", &mut a),
        ("subscribed", &mut s),
    ] {
        assert_eq!(
            lifecycle(c, &m, "BOOTUP").await,
            ["BOOTUP_START", "BOOTUP_SUCCESS"],
            "{name}"
        );
    }
    power(&d, &admin, &m, "stop").await;
    for (name, c) in [
        ("global", &mut g),
        ("account", &mut a),
        ("subscribed", &mut s),
    ] {
        assert_eq!(
            lifecycle(c, &m, "SHUTDOWN").await,
            ["SHUTDOWN_START", "SHUTDOWN_SUCCESS"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn restart_sends_shutdown_then_bootup() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let m = uuid_of(&create(&d, &admin, "ws-restart", &[]).await);
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    power(&d, &admin, &m, "start").await;
    assert_eq!(
        lifecycle(&mut g, &m, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_SUCCESS"]
    );

    power(&d, &admin, &m, "restart").await;
    assert_eq!(
        lifecycle(&mut g, &m, "BOOTUP").await,
        [
            "SHUTDOWN_START",
            "SHUTDOWN_SUCCESS",
            "BOOTUP_START",
            "BOOTUP_SUCCESS"
        ]
    );
}

#[tokio::test]
async fn fail_boot_sends_bootup_start_then_bootup_fail_with_error() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let demo = machines(&d, &admin)
        .await
        .into_iter()
        .find(|m| {
            m["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "fail-boot"))
        })
        .unwrap_or_else(|| panic!("the demo fleet has no fail-boot machine"));
    let demo = uuid_of(&demo);
    let created = uuid_of(&create(&d, &admin, "ws-fail-boot", &["fail-boot"]).await);
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    let mut a = open_ready(&d, ACCOUNT, &admin).await;

    power(&d, &admin, &demo, "start").await;
    assert_eq!(
        lifecycle(&mut g, &demo, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_FAIL"]
    );
    power(&d, &admin, &created, "start").await;
    assert_eq!(
        lifecycle(&mut g, &created, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_FAIL"]
    );
    assert_eq!(
        lifecycle(&mut a, &created, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_FAIL"]
    );
}

// ----- what a socket follows, live -----

#[tokio::test]
async fn subscribed_follows_stored_subscriptions_live() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let demo = plain_demo_machines(&d, &admin).await;
    let (f, m) = (demo[0].clone(), demo[1].clone());
    let mut s = open_subscribed_with(&d, &admin, &[&f]).await;
    let init = s.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), set(&[&f]));

    // Subscribing: the machine's full entry arrives at once.
    subscribe(&d, &admin, &m).await;
    let statik = next_event(&mut s).await;
    assert_eq!(statik["type"], "DATA_STATIC", "{statik}");
    assert_eq!(
        dict(&statik["body"], assert_props),
        set(&[&m]),
        "single entry"
    );
    let rest: Vec<Value> = machines(&d, &admin).await;
    let listed = rest
        .iter()
        .find(|x| uuid_of(x) == m)
        .cloned()
        .unwrap_or_default();
    assert_eq!(statik["body"][&m], listed);
    let entry = s
        .collect_until(T, "the added machine's DATA_DYNAMIC_CONNECTIONS", |v| {
            is_type(v, "DATA_DYNAMIC_CONNECTIONS") && has_entry(v, &m)
        })
        .await;
    for ty in PERIODIC {
        let found = entry.iter().find(|v| is_type(v, ty) && has_entry(v, &m));
        let found = found.unwrap_or_else(|| panic!("no {ty} for the added machine in {entry:?}"));
        dict(&found["body"], checker(ty));
    }
    // Later DATA_DYNAMIC include it.
    let keys = next_dynamic_keys(&mut s, 2).await;
    for k in &keys {
        assert_eq!(k, &set(&[&f, &m]), "DATA_DYNAMIC after subscribing");
    }

    // A socket opened now starts with the stored subscription.
    let mut s2 = open(&d, SUBSCRIBED, &admin).await;
    let init = s2.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), set(&[&m]));

    // Unsubscribing: later DATA_DYNAMIC exclude it, on both sockets.
    unsubscribe(&d, &admin, &m).await;
    fence(&mut s, &d, &admin, &f).await;
    for k in next_dynamic_keys(&mut s, 2).await {
        assert_eq!(k, set(&[&f]), "DATA_DYNAMIC after unsubscribing");
    }
    // (`s2` has no fence, and may hold broadcasts from before: it must drop the machine
    // within a few seconds, and for good.)
    s2.next_matching(T, "a DATA_DYNAMIC without the unsubscribed machine", |v| {
        is_type(v, "DATA_DYNAMIC") && !has_entry(v, &m)
    })
    .await;
    for k in next_dynamic_keys(&mut s2, 2).await {
        assert_eq!(k, BTreeSet::new(), "second socket after unsubscribing");
    }
    assert!(stored_subscriptions(&d, &admin).await.is_empty());
}

#[tokio::test]
async fn machine_uuid_query_adds_machines_for_that_socket_only() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let demo = plain_demo_machines(&d, &admin).await;
    let (m1, m2, m3) = (demo[0].clone(), demo[1].clone(), demo[2].clone());

    let mut a = open_subscribed_with(&d, &admin, &[&m1, &m2]).await;
    let init = a.initial(T).await;
    for (ty, body) in init.by_type() {
        assert_eq!(dict(body, checker(ty)), set(&[&m1, &m2]), "{ty}");
    }
    let mut b = open(&d, SUBSCRIBED, &admin).await;
    let init = b.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), BTreeSet::new());
    assert!(
        stored_subscriptions(&d, &admin).await.is_empty(),
        "the query stores nothing"
    );
    assert_eq!(next_dynamic_keys(&mut a, 1).await, [set(&[&m1, &m2])]);
    assert_eq!(next_dynamic_keys(&mut b, 1).await, [BTreeSet::new()]);

    // A change to m1 reaches `a` only (`b` is fenced by a stored subscription to m3, which
    // both sockets then follow).
    patch_machine(&d, &admin, &m1, &json!({"description": "only for a"})).await;
    let ev = next_event(&mut a).await;
    assert_eq!(ev["type"], "DATA_STATIC");
    assert_eq!(dict(&ev["body"], assert_props), set(&[&m1]));
    subscribe(&d, &admin, &m3).await;
    let ev = next_event(&mut b).await;
    assert_eq!(
        ev["type"], "DATA_STATIC",
        "b got something for m1 first: {ev}"
    );
    assert_eq!(dict(&ev["body"], assert_props), set(&[&m3]));
    let ev = next_event(&mut a).await;
    assert_eq!(dict(&ev["body"], assert_props), set(&[&m3]));

    // Stored subscriptions and the query combine.
    let mut c = open_subscribed_with(&d, &admin, &[&m1]).await;
    let init = c.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), set(&[&m1, &m3]));

    // The query cannot reach machines the user does not see.
    let (_, plain) = client_user(&d, &admin, "plain", &[]).await;
    let mut p = open_subscribed_with(&d, &plain, &[&m1]).await;
    let init = p.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), BTreeSet::new());
    assert_eq!(next_dynamic_keys(&mut p, 1).await, [BTreeSet::new()]);
}

#[tokio::test]
async fn account_follows_ownership_and_assignment_live() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let admin_uuid = uuid_of(&d.me(&admin).await);
    let (cu, ct) = client_user(&d, &admin, "carol", &[]).await;
    let mut ca = open(&d, ACCOUNT, &ct).await;
    let init = ca.initial(T).await;
    assert_eq!(dict(&init.statik, assert_props), BTreeSet::new());
    let mut aa = open_ready(&d, ACCOUNT, &admin).await;

    let m = uuid_of(&create(&d, &admin, "ws-owned", &[]).await);
    assert_eq!(next_event(&mut aa).await["type"], "CREATE");

    // Owner: admin -> carol.
    set_owner(&d, &admin, &m, Some(&cu)).await;
    let ev = next_event(&mut ca).await;
    assert_eq!(ev["type"], "CREATE", "carol became owner: {ev}");
    assert_props(&ev["body"]);
    assert_eq!(ev["body"]["uuid"], m.as_str());
    assert_eq!(ev["body"]["owner"]["uuid"], cu.as_str());
    let ev = next_event(&mut aa).await;
    assert_eq!(ev["type"], "DELETE", "admin no longer owner: {ev}");
    assert_eq!(ev["body"], json!({ "uuid": m }));
    let keys = next_dynamic_keys(&mut ca, 2).await;
    assert_eq!(
        keys[1],
        set(&[&m]),
        "carol's DATA_DYNAMIC now include it: {keys:?}"
    );

    // Owner: carol -> admin (someone else).
    set_owner(&d, &admin, &m, Some(&admin_uuid)).await;
    let ev = next_event(&mut ca).await;
    assert_eq!(ev["type"], "DELETE", "carol no longer owner: {ev}");
    assert_eq!(ev["body"], json!({ "uuid": m }));
    assert_eq!(next_event(&mut aa).await["type"], "CREATE");
    let keys = next_dynamic_keys(&mut ca, 2).await;
    assert_eq!(
        keys[1],
        BTreeSet::new(),
        "carol's DATA_DYNAMIC after losing it: {keys:?}"
    );

    // Owner: -> carol, then removed.
    set_owner(&d, &admin, &m, Some(&cu)).await;
    assert_eq!(next_event(&mut ca).await["type"], "CREATE");
    set_owner(&d, &admin, &m, None).await;
    let ev = next_event(&mut ca).await;
    assert_eq!(ev["type"], "DELETE", "owner removed: {ev}");
    assert_eq!(ev["body"], json!({ "uuid": m }));

    // Assignment.
    assign(&d, &admin, &m, &cu, true).await;
    let ev = next_event(&mut ca).await;
    assert_eq!(ev["type"], "CREATE", "carol assigned: {ev}");
    assert!(ev["body"]["assigned_clients"].get(&cu).is_some(), "{ev}");
    assign(&d, &admin, &m, &cu, false).await;
    let ev = next_event(&mut ca).await;
    assert_eq!(ev["type"], "DELETE", "carol unassigned: {ev}");
    assert_eq!(ev["body"], json!({ "uuid": m }));
}

// ----- token expiry and revocation -----

#[tokio::test]
async fn expired_token_closes_open_sockets_4401() {
    let d = daemon(&[
        ("ORCHARD_AUTH_TOKEN_TTL", "2"),
        ("ORCHARD_AUTH_SESSION_MAX", "60"),
    ]);
    let admin = d.admin_token().await;
    let mut sockets = Vec::new();
    for path in ENDPOINTS {
        sockets.push((path, open_ready(&d, path, &admin).await));
    }
    for (path, c) in &mut sockets {
        match c.wait_end(Duration::from_secs(8)).await {
            End::Closed(code) => assert_eq!(code, CLOSE_UNAUTHORIZED, "{path}"),
            End::Dropped(why) => panic!("{path}: ended without a close frame: {why}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Revoke {
    Logout,
    PasswordChange,
    Disable,
    Delete,
}

/// A user's open sockets (all three streams) close with 4401 within 2 s of `how`; another
/// user's socket is untouched; the old token no longer opens a socket.
async fn revocation_closes_sockets(how: Revoke) {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (cu, ct) = client_user(&d, &admin, "revoked", &["VIEW_ALL_VMS"]).await;
    let mut theirs = Vec::new();
    for path in ENDPOINTS {
        theirs.push((path, open_ready(&d, path, &ct).await));
    }
    let mut other = open_ready(&d, GLOBAL, &admin).await;

    let user = format!("/api/users/{cu}");
    let r = match how {
        Revoke::Logout => d.post_empty("/api/auth/logout", Some(&ct)).await,
        Revoke::PasswordChange => {
            d.patch(
                &user,
                Some(&admin),
                &json!({"password": "a-brand-new-password-1"}),
            )
            .await
        }
        Revoke::Disable => {
            d.patch(&user, Some(&admin), &json!({"disabled": true}))
                .await
        }
        Revoke::Delete => d.delete(&user, Some(&admin)).await,
    };
    assert_2xx(&r, &format!("{how:?}"));
    let t0 = Instant::now();
    for (path, c) in &mut theirs {
        let left = REVOKE_WITHIN.saturating_sub(t0.elapsed());
        match c.wait_end(left).await {
            End::Closed(code) => assert_eq!(code, CLOSE_UNAUTHORIZED, "{how:?}: {path}"),
            End::Dropped(why) => panic!("{how:?}: {path} ended without a close frame: {why}"),
        }
    }
    other.stays_open_for(Duration::from_millis(1500)).await;
    let mut again = open(&d, ACCOUNT, &ct).await;
    again.expect_close(CLOSE_UNAUTHORIZED, T).await;
    assert!(
        again.types.is_empty(),
        "{how:?}: data for a revoked token: {:?}",
        again.types
    );
}

#[tokio::test]
async fn logout_closes_the_users_sockets_4401() {
    revocation_closes_sockets(Revoke::Logout).await;
}

#[tokio::test]
async fn password_change_closes_the_users_sockets_4401() {
    revocation_closes_sockets(Revoke::PasswordChange).await;
}

#[tokio::test]
async fn disabling_a_user_closes_their_sockets_4401() {
    revocation_closes_sockets(Revoke::Disable).await;
}

#[tokio::test]
async fn deleting_a_user_closes_their_sockets_4401() {
    revocation_closes_sockets(Revoke::Delete).await;
}

#[tokio::test]
async fn removing_view_all_vms_closes_global_4403() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (cu, ct) = client_user(&d, &admin, "watcher", &["VIEW_ALL_VMS"]).await;
    let mut g = open_ready(&d, GLOBAL, &ct).await;
    let mut a = open_ready(&d, ACCOUNT, &ct).await;

    let r = d
        .patch(
            &format!("/api/users/{cu}"),
            Some(&admin),
            &json!({"permissions": []}),
        )
        .await;
    assert_2xx(&r, "PATCH permissions");
    match g.wait_end(REVOKE_WITHIN).await {
        End::Closed(code) => assert_eq!(code, CLOSE_FORBIDDEN),
        End::Dropped(why) => panic!("global ended without a close frame: {why}"),
    }
    // The account stream did not need the permission: it stays.
    a.stays_open_for(Duration::from_millis(1500)).await;
    let mut again = open(&d, GLOBAL, &ct).await;
    again.expect_close(CLOSE_FORBIDDEN, T).await;
}

// ----- limits, shutdown, slow clients, keepalive -----

#[tokio::test]
async fn oversize_incoming_message_closes_1009() {
    let d = daemon(&[("ORCHARD_WS_MAX_MESSAGE", "1024")]);
    let admin = d.admin_token().await;
    let mut c = open_ready(&d, GLOBAL, &admin).await;
    // A small message is fine.
    c.send_text(json!({"type": "hello"}).to_string()).await;
    c.next_of_type("DATA_DYNAMIC", T).await;
    let big = json!({"type": "hello", "pad": "x".repeat(4096)}).to_string();
    c.send_text(big).await;
    c.expect_close(CLOSE_TOO_BIG, T).await;
}

#[tokio::test]
async fn sigterm_closes_sockets_1001_and_exits_0() {
    let mut d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut g = open_ready(&d, GLOBAL, &admin).await;
    let mut a = open_ready(&d, ACCOUNT, &admin).await;
    let mut s = open_ready(&d, SUBSCRIBED, &admin).await;

    let stopping = tokio::task::spawn_blocking(move || {
        let status = d.terminate();
        (d, status)
    });
    let (cg, ca, cs) = tokio::join!(g.wait_end(T), a.wait_end(T), s.wait_end(T));
    let (d, status) = stopping.await.expect("terminate");
    for (name, end) in [("global", cg), ("account", ca), ("subscribed", cs)] {
        assert_eq!(end, End::Closed(CLOSE_GOING_AWAY), "{name}");
    }
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        d.logs()
    );
}

/// Whether the daemon still holds its side of the connection from `client_port` open
/// (`/proc/net/tcp`: local port = the daemon's, state 01 = ESTABLISHED); `None` when the
/// table cannot be read.
fn server_side_established(server_port: u16, client_port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let found = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port))
            .then(|| f[3] == "01")
    });
    Some(found.unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_disconnected_while_a_reader_gets_every_event() {
    let d = daemon(&[
        ("ORCHARD_WS_SEND_QUEUE", "8"),
        ("ORCHARD_WS_WRITE_DEADLINE", "2"),
    ]);
    let admin = d.admin_token().await;
    let m = uuid_of(&create(&d, &admin, "ws-slow-target", &[]).await);

    // The slow client reads its initial messages, then never reads again.
    let mut slow = Connect::new(&d, GLOBAL)
        .access_token(&admin)
        .recv_buffer(4096)
        .open()
        .await;
    slow.initial(T).await;

    // The reader reads everything, in its own task.
    let mut reader = open_ready(&d, GLOBAL, &admin).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Value)>();
    let reading = tokio::spawn(async move {
        loop {
            let ev = reader.next_event(T).await;
            let (msg, last) = match ev {
                Some(Event::Json(v)) => (v, false),
                other => (json!({"type": "ENDED", "body": format!("{other:?}")}), true),
            };
            if tx.send((Instant::now(), msg)).is_err() || last {
                return;
            }
        }
    });
    let mut dynamic_at: Vec<Instant> = Vec::new();
    let mut next_from_reader = async |dynamic_at: &mut Vec<Instant>| -> Value {
        let (at, v) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("the reader got nothing for 10 s")
            .expect("reader task gone");
        assert_ne!(
            v["type"], "ENDED",
            "the reading client lost its socket: {v}"
        );
        if is_type(&v, "DATA_DYNAMIC") {
            dynamic_at.push(at);
        }
        v
    };

    // Dozens of 4 KiB events at a time, until the daemon has dropped the slow client.
    let description = |i: usize| format!("{i:06}{}", "x".repeat(4090));
    let started = Instant::now();
    let (mut sent, mut received) = (0usize, 0usize);
    let gone = loop {
        for _ in 0..25 {
            sent += 1;
            patch_machine(&d, &admin, &m, &json!({"description": description(sent)})).await;
        }
        while received < sent {
            let v = next_from_reader(&mut dynamic_at).await;
            if is_type(&v, "DATA_STATIC") && has_entry(&v, &m) {
                received += 1;
                assert_eq!(
                    v["body"][&m]["description"],
                    description(received),
                    "the reader must get every event, in order"
                );
            }
        }
        match server_side_established(d.addr().port(), slow.local_port) {
            Some(open) if !open => break true,
            None if sent >= 1500 => break true,
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(90) {
            break false;
        }
    };
    assert!(
        gone,
        "the daemon still holds a client that stopped reading, after {sent} events of 4 KiB"
    );

    // The reader's DATA_DYNAMIC cadence went on throughout, and goes on.
    let before = dynamic_at.len();
    while dynamic_at.len() < before + 2 {
        next_from_reader(&mut dynamic_at).await;
    }
    let widest = dynamic_at
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    assert!(
        widest <= Duration::from_secs(3),
        "the reader went {widest:?} without DATA_DYNAMIC"
    );
    reading.abort();

    // The slow client, reading again, finds its socket ended: it read nothing for longer than
    // the 2 s write deadline, so the 4008 close (queued behind the frame in progress) could
    // not reach it and the connection was dropped; 4008 is accepted should it have got
    // through. The 4008 itself is shown by the next test.
    let end = slow.wait_end(Duration::from_secs(30)).await;
    match end {
        End::Closed(code) => assert_eq!(code, CLOSE_TOO_SLOW, "slow client close code"),
        End::Dropped(_) => {}
    }
    let got = slow.types.iter().filter(|t| *t == "DATA_STATIC").count();
    assert!(got < sent, "the slow client got all {sent} events");
}

#[tokio::test]
async fn keepalive_pings_keep_answering_clients_and_drop_silent_ones() {
    let d = daemon(&[
        ("ORCHARD_WS_PING_INTERVAL", "1"),
        ("ORCHARD_WS_IDLE_TIMEOUT", "2"),
    ]);
    let admin = d.admin_token().await;
    let mut live = open_ready(&d, GLOBAL, &admin).await;
    let mut raw = RawClient::handshake(&d, &format!("{ACCOUNT}?access_token={admin}")).await;
    let t0 = Instant::now();
    let silent = async {
        let dropped = raw.read_until_dropped(Duration::from_secs(15)).await;
        (dropped, t0.elapsed())
    };
    let (_, (dropped, after)) = tokio::join!(live.stays_open_for(Duration::from_secs(6)), silent);
    assert!(
        dropped,
        "a client that never answers is still connected after 15 s"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "silent client dropped after {after:?}, before the 2 s idle timeout"
    );
    assert!(
        raw.opcodes.contains(&OP_PING),
        "the silent client got no ping: opcodes {:?}",
        raw.opcodes
    );
    assert!(
        live.pings >= 3,
        "{} pings in 6 s at a 1 s interval",
        live.pings
    );
    // Still connected after 6 s (three idle timeouts): and still served.
    live.next_of_type("DATA_DYNAMIC", T).await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_when_the_silence_deadline_passes_not_at_the_next_ping() {
    // Pings every 30 s, silence allowed for 2 s: the silent client must go at ~2 s, long
    // before the first ping tick could notice it.
    let d = daemon(&[
        ("ORCHARD_WS_PING_INTERVAL", "30"),
        ("ORCHARD_WS_IDLE_TIMEOUT", "2"),
    ]);
    let admin = d.admin_token().await;
    let mut raw = RawClient::handshake(&d, &format!("{ACCOUNT}?access_token={admin}")).await;
    let t0 = Instant::now();
    let dropped = raw.read_until_dropped(Duration::from_secs(20)).await;
    let after = t0.elapsed();
    assert!(
        dropped,
        "a client silent for 20 s (idle timeout 2 s, ping interval 30 s) is still connected"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "silent client dropped after {after:?}, before the 2 s idle timeout"
    );
    assert!(
        !raw.opcodes.contains(&OP_PING),
        "dropped at a ping tick, not at the silence deadline: opcodes {:?}",
        raw.opcodes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_that_reads_again_within_the_write_deadline_gets_4008() {
    // Write deadline 10 s (the default): a client that stopped reading, and reads again soon
    // after the daemon gave up on it, must find a 4008 close, not a cut connection.
    let d = daemon(&[("ORCHARD_WS_SEND_QUEUE", "8")]);
    let admin = d.admin_token().await;
    let (mut slow, m) = stalled_client(&d, &admin, "ws-slow-4008").await;
    let sent = flood_until_4008(&d, &admin, &m).await;
    slow.expect_close(CLOSE_TOO_SLOW, T).await;
    let got = slow.types.iter().filter(|t| *t == "DATA_STATIC").count();
    assert!(got < sent, "the slow client got all {sent} events");
}

/// A new machine `title` and a `/ws/machines/global` client (small receive buffer) that has
/// read its initial messages and will read nothing more until asked.
pub(crate) async fn stalled_client(d: &Daemon, admin: &str, title: &str) -> (WsClient, String) {
    let m = uuid_of(&create(d, admin, title, &[]).await);
    let mut slow = Connect::new(d, GLOBAL)
        .access_token(admin)
        .recv_buffer(4096)
        .open()
        .await;
    slow.initial(T).await;
    (slow, m)
}

/// 4 KiB edits of `machine`, 25 at a time, until the daemon reports closing a slow client
/// (4008; with `ws.send_queue` 8, a [`stalled_client`] is one); returns how many were sent.
pub(crate) async fn flood_until_4008(d: &Daemon, admin: &str, machine: &str) -> usize {
    let started = Instant::now();
    let mut sent = 0usize;
    while !d.logs().contains("closing 4008") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no 4008 for a client that stopped reading, after {sent} events of 4 KiB"
        );
        for _ in 0..25 {
            sent += 1;
            let description = format!("{sent:06}{}", "x".repeat(4090));
            patch_machine(d, admin, machine, &json!({ "description": description })).await;
        }
    }
    sent
}
