//! Machines over REST with the built-in simulator: payload shapes, the demo fleet,
//! visibility and control per user, create/patch/delete, power actions and their state
//! sequences, subscriptions, persistence and live counters.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{DEFAULT_SIM_SHUTDOWN_MS, Daemon, Resp, eventually, uuid_of};

// ----- payload shapes -----

/// The fields of a `MachinePropertiesPayload`, exactly.
pub const PROPERTY_KEYS: [&str; 12] = [
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

/// The fields of a `MachineStatePayload`, exactly.
pub const STATE_KEYS: [&str; 13] = [
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

pub const STATUSES: [&str; 7] = [
    "running",
    "stopped",
    "paused",
    "suspended",
    "booting",
    "shutting_down",
    "error",
];

/// How long a power action of the simulator (at the harness's short boot and shutdown
/// times) may take to show in the state.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Asserts that `v` is an object with exactly these keys.
pub fn assert_keys(v: &Value, keys: &[&str], what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(got, want, "fields of {what}: {v}");
}

fn assert_uuid(v: &Value, what: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{what} {s:?} is not a uuid: {e}"));
    s.to_owned()
}

fn assert_u64(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a non-negative integer: {v}"))
}

fn assert_user_ref(v: &Value, what: &str) {
    assert_keys(v, &["uuid", "username"], what);
    assert_uuid(&v["uuid"], &format!("{what}.uuid"));
    assert!(v["username"].is_string(), "{what}.username: {v}");
}

fn assert_disk(v: &Value, with_usage: bool, what: &str) {
    let mut keys = vec!["system", "name", "size_bytes", "type"];
    if with_usage {
        keys.push("occupied_bytes");
    }
    assert_keys(v, &keys, what);
    assert!(v["system"].is_boolean(), "{what}.system: {v}");
    assert!(v["name"].is_string(), "{what}.name: {v}");
    let size = assert_u64(&v["size_bytes"], &format!("{what}.size_bytes"));
    assert!(v["type"].is_string(), "{what}.type: {v}");
    if with_usage {
        let used = assert_u64(&v["occupied_bytes"], &format!("{what}.occupied_bytes"));
        assert!(used <= size, "{what}: occupied beyond the size: {v}");
    }
}

/// Asserts `v` is a `MachinePropertiesPayload`, every field with its type.
pub fn assert_properties(v: &Value) {
    assert_keys(v, &PROPERTY_KEYS, "machine properties");
    assert_uuid(&v["uuid"], "uuid");
    assert!(
        v["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title: {v}"
    );
    let tags = v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags is not an array: {v}"));
    assert!(tags.iter().all(Value::is_string), "tags: {v}");
    assert!(v["description"].is_string(), "description: {v}");
    if !v["owner"].is_null() {
        assert_user_ref(&v["owner"], "owner");
    }
    let clients = v["assigned_clients"]
        .as_object()
        .unwrap_or_else(|| panic!("assigned_clients is not an object: {v}"));
    for (key, client) in clients {
        assert_user_ref(client, "assigned client");
        assert_eq!(client["uuid"], key.as_str(), "assigned_clients key: {v}");
    }
    assert!(
        v["backend"].as_str().is_some_and(|b| !b.is_empty()),
        "backend: {v}"
    );
    assert!(v["kind"] == "vm" || v["kind"] == "container", "kind: {v}");
    assert!(assert_u64(&v["vcpu"], "vcpu") >= 1, "vcpu: {v}");
    assert!(assert_u64(&v["ram_max"], "ram_max") >= 1, "ram_max: {v}");
    let connections = v["connections"]
        .as_object()
        .unwrap_or_else(|| panic!("connections is not an object: {v}"));
    assert!(
        connections.values().all(Value::is_string),
        "connections: {v}"
    );
    let disks = v["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("disks is not an array: {v}"));
    for d in disks {
        assert_disk(d, false, "disk");
    }
}

/// Asserts `v` is a `MachineStatePayload` with consistent `active` and `loading`.
pub fn assert_state(v: &Value) {
    assert_keys(v, &STATE_KEYS, "machine state");
    assert_uuid(&v["uuid"], "state.uuid");
    let status = v["status"].as_str().unwrap_or_default();
    assert!(STATUSES.contains(&status), "status: {v}");
    assert_eq!(
        v["active"].as_bool(),
        Some(!matches!(status, "stopped" | "error")),
        "active must mean neither stopped nor error: {v}"
    );
    assert_eq!(
        v["loading"].as_bool(),
        Some(matches!(status, "booting" | "shutting_down")),
        "loading must mean booting or shutting_down: {v}"
    );
    assert_u64(&v["vcpu"], "state.vcpu");
    let cpu = v["cpu_percent"]
        .as_f64()
        .unwrap_or_else(|| panic!("cpu_percent is not a number: {v}"));
    assert!(cpu >= 0.0, "cpu_percent: {v}");
    let max = assert_u64(&v["ram_max"], "state.ram_max");
    let used = assert_u64(&v["ram_used"], "state.ram_used");
    assert!(used <= max, "ram_used beyond ram_max: {v}");
    // A status change arrives as an event before the next state poll fills in the rest, so
    // a machine that just came up may not show its boot time yet.
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
        assert_u64(&v[k], k);
    }
}

/// Asserts `v` is the answer of `GET /api/machines/{uuid}`.
pub fn assert_detail(v: &Value) {
    let mut keys: Vec<&str> = PROPERTY_KEYS.to_vec();
    keys.extend(["state", "disks_usage", "active_connections"]);
    assert_keys(v, &keys, "machine detail");
    let props: serde_json::Map<String, Value> = PROPERTY_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), v[*k].clone()))
        .collect();
    assert_properties(&Value::Object(props));
    let uuid = &v["uuid"];
    assert_state(&v["state"]);
    assert_eq!(&v["state"]["uuid"], uuid, "state.uuid: {v}");
    let usage = &v["disks_usage"];
    assert_keys(usage, &["uuid", "disks"], "disks_usage");
    assert_eq!(&usage["uuid"], uuid, "disks_usage.uuid: {v}");
    for d in usage["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("disks_usage.disks is not an array: {v}"))
    {
        assert_disk(d, true, "disks_usage disk");
    }
    let conns = &v["active_connections"];
    assert_keys(conns, &["uuid", "active_connections"], "active_connections");
    assert_eq!(&conns["uuid"], uuid, "active_connections.uuid: {v}");
    assert!(
        conns["active_connections"]
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        "active_connections.active_connections: {v}"
    );
}

// ----- requests -----

pub fn machine_path(uuid: &str) -> String {
    format!("/api/machines/{uuid}")
}

/// `GET /api/machines`; fails the test on anything but 200 and a list.
pub async fn list_machines(d: &Daemon, token: &str) -> Vec<Value> {
    let body = d.get("/api/machines", Some(token)).await.expect(200);
    body.as_array()
        .unwrap_or_else(|| panic!("GET /api/machines is not an array: {body}"))
        .clone()
}

/// `GET /api/machines/{uuid}`; fails the test on anything but 200.
pub async fn detail(d: &Daemon, token: &str, uuid: &str) -> Value {
    d.get(&machine_path(uuid), Some(token)).await.expect(200)
}

pub async fn status(d: &Daemon, token: &str, uuid: &str) -> String {
    detail(d, token, uuid).await["state"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The machine with this title in a list.
pub fn by_title<'a>(list: &'a [Value], title: &str) -> &'a Value {
    list.iter()
        .find(|m| m["title"] == title)
        .unwrap_or_else(|| panic!("no machine titled {title:?} in {list:?}"))
}

pub fn titles(list: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = list
        .iter()
        .map(|m| m["title"].as_str().unwrap_or_default().to_owned())
        .collect();
    t.sort();
    t
}

pub fn uuids(list: &[Value]) -> BTreeSet<String> {
    list.iter().map(uuid_of).collect()
}

pub async fn power(d: &Daemon, token: &str, uuid: &str, action: &str) -> Resp {
    d.post_empty(&format!("/api/machines/{uuid}/{action}"), Some(token))
        .await
}

/// A power action that must be accepted: 202 `{uuid, action, status:"accepted"}`.
pub async fn power_ok(d: &Daemon, token: &str, uuid: &str, action: &str) {
    let body = power(d, token, uuid, action).await.expect(202);
    assert_eq!(body["uuid"], uuid, "202 body of {action}: {body}");
    assert_eq!(body["action"], action, "202 body of {action}: {body}");
    assert_eq!(body["status"], "accepted", "202 body of {action}: {body}");
}

/// Polls the machine's state every 20 ms, recording each status it shows (consecutive
/// repeats collapsed, every state checked for shape), until `done` holds for the sequence.
pub async fn watch(
    d: &Daemon,
    token: &str,
    uuid: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let state = detail(d, token, uuid).await["state"].clone();
        assert_state(&state);
        let s = state["status"].as_str().unwrap_or_default().to_owned();
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; statuses seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the machine shows `want`; returns the statuses seen on the way.
pub async fn wait_status(d: &Daemon, token: &str, uuid: &str, want: &str) -> Vec<String> {
    watch(d, token, uuid, SETTLE, &format!("status {want}"), |s| {
        s.last().is_some_and(|l| l == want)
    })
    .await
}

pub async fn create_machine(d: &Daemon, token: &str, body: &Value) -> Value {
    let m = d.post("/api/machines", Some(token), body).await.expect(201);
    assert_properties(&m);
    m
}

/// Creates a user over REST and logs in; returns (uuid, token).
pub async fn user_with(d: &Daemon, admin: &str, name: &str, perms: &[&str]) -> (String, String) {
    let password = format!("{name}-password");
    let u = d.create_user(admin, name, &password, "client", perms).await;
    (uuid_of(&u), d.login(name, &password).await)
}

fn title_is_demo(title: &str) -> Option<&'static str> {
    let (kind, digits) = if let Some(rest) = title.strip_prefix("sim-vm-") {
        ("vm", rest)
    } else if let Some(rest) = title.strip_prefix("sim-ct-") {
        ("container", rest)
    } else {
        return None;
    };
    (digits.len() >= 2 && digits.chars().all(|c| c.is_ascii_digit())).then_some(kind)
}

/// Asserts `list` is a simulator demo fleet of `n` machines.
fn assert_demo_fleet(list: &[Value], n: usize) {
    assert_eq!(list.len(), n, "demo fleet size: {list:?}");
    for m in list {
        assert_properties(m);
        assert_eq!(m["backend"], "simulator", "{m}");
        let title = m["title"].as_str().unwrap_or_default();
        let kind = title_is_demo(title)
            .unwrap_or_else(|| panic!("{title:?} is not a sim-vm-NN / sim-ct-NN title"));
        assert_eq!(m["kind"], kind, "kind must follow the title: {m}");
    }
    assert_eq!(uuids(list).len(), n, "uuids are unique");
    let t: BTreeSet<String> = titles(list).into_iter().collect();
    assert_eq!(t.len(), n, "titles are unique");
    assert!(
        list.iter().any(|m| m["kind"] == "vm") && list.iter().any(|m| m["kind"] == "container"),
        "the demo fleet mixes VMs and containers: {list:?}"
    );
}

fn fail_boot_machines(list: &[Value]) -> Vec<&Value> {
    list.iter()
        .filter(|m| {
            m["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "fail-boot"))
        })
        .collect()
}

async fn count_running(d: &Daemon, token: &str, list: &[Value]) -> usize {
    let mut running = 0;
    for m in list {
        if status(d, token, &uuid_of(m)).await == "running" {
            running += 1;
        }
    }
    running
}

// ----- tests -----

#[tokio::test]
async fn fresh_daemon_lists_simulator_backend() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let body = d.get("/api/backends", Some(&admin)).await.expect(200);
    let list = body
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/backends is not an array: {body}"));
    assert_eq!(list.len(), 1, "only the built-in simulator: {body}");
    let sim = &list[0];
    for key in [
        "name",
        "version",
        "abi_version",
        "capabilities",
        "status",
        "last_error",
        "source",
    ] {
        assert!(sim.get(key).is_some(), "backend without {key}: {sim}");
    }
    assert_eq!(sim["name"], "simulator", "{sim}");
    assert_eq!(sim["status"], "loaded", "{sim}");
    assert_eq!(sim["source"], "built-in", "{sim}");
    assert_eq!(sim["abi_version"], 1, "{sim}");
    assert!(sim["last_error"].is_null(), "{sim}");
    assert!(
        sim["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{sim}"
    );
    let caps: Vec<&str> = sim["capabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("capabilities is not an array: {sim}"))
        .iter()
        .map(|c| c.as_str().unwrap_or_else(|| panic!("capability: {c}")))
        .collect();
    for cap in ["create", "delete", "metadata", "console", "events"] {
        assert!(
            caps.contains(&cap),
            "simulator lacks capability {cap}: {sim}"
        );
    }

    // VIEW_ALL_VMS is needed; a token is needed.
    let (_, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    d.get("/api/backends", Some(&nobody))
        .await
        .expect_any_error(403);
    d.get("/api/backends", None).await.expect_any_error(401);
    let (_, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;
    d.get("/api/backends", Some(&viewer)).await.expect(200);
}

#[tokio::test]
async fn fresh_daemon_shows_demo_fleet_with_exact_payloads() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let list = list_machines(&d, &admin).await;
    assert_demo_fleet(&list, 8);
    // Nobody owns or is assigned to a demo machine.
    for m in &list {
        assert!(m["owner"].is_null(), "{m}");
        assert_eq!(m["assigned_clients"], json!({}), "{m}");
    }
    let failing = fail_boot_machines(&list);
    assert_eq!(failing.len(), 1, "exactly one fail-boot machine: {list:?}");

    // Every machine's detail has the full shape; about half of them run.
    for m in &list {
        let v = detail(&d, &admin, &uuid_of(m)).await;
        assert_detail(&v);
        for k in PROPERTY_KEYS {
            assert_eq!(v[k], m[k], "detail and list disagree on {k}");
        }
    }
    let running = eventually(
        Duration::from_secs(10),
        "some demo machines running",
        || async {
            let n = count_running(&d, &admin, &list).await;
            (n > 0).then_some(n)
        },
    )
    .await;
    assert!(
        (2..=6).contains(&running),
        "about half of 8 demo machines run, got {running}"
    );
    let fb = status(&d, &admin, &uuid_of(failing[0])).await;
    assert_ne!(fb, "running", "the fail-boot machine cannot be running");

    // Unknown and malformed uuids are 404.
    d.get(
        &machine_path(&uuid::Uuid::new_v4().to_string()),
        Some(&admin),
    )
    .await
    .expect_any_error(404);
    d.get(&machine_path("not-a-uuid"), Some(&admin))
        .await
        .expect_any_error(404);
    d.get("/api/machines", None).await.expect_any_error(401);
}

#[tokio::test]
async fn demo_fleet_size_follows_the_configuration() {
    let d = Daemon::builder()
        .env("ORCHARD_SIMULATOR_MACHINES", "5")
        .start();
    let admin = d.admin_token().await;
    let list = list_machines(&d, &admin).await;
    assert_demo_fleet(&list, 5);
    // Sorted: containers first.
    assert_eq!(
        titles(&list),
        [
            "sim-ct-03",
            "sim-vm-01",
            "sim-vm-02",
            "sim-vm-04",
            "sim-vm-05"
        ]
    );
    assert_eq!(fail_boot_machines(&list).len(), 1);
}

#[tokio::test]
async fn visibility_and_control_per_user() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let all = list_machines(&d, &admin).await;
    let (nobody_id, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    let (carol_id, carol) = user_with(&d, &admin, "carol", &[]).await;
    let (_, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;

    // Two stopped demo machines that can boot.
    let mut stopped = Vec::new();
    for m in &all {
        let fails = fail_boot_machines(std::slice::from_ref(m)).len() == 1;
        if !fails && status(&d, &admin, &uuid_of(m)).await == "stopped" {
            stopped.push(uuid_of(m));
        }
    }
    assert!(stopped.len() >= 2, "need two stopped machines: {all:?}");
    let (owned, assigned) = (stopped[0].clone(), stopped[1].clone());

    // No permissions, no relations: nothing is visible, everything is 404.
    assert_eq!(list_machines(&d, &nobody).await, Vec::<Value>::new());
    d.get(&machine_path(&owned), Some(&nobody))
        .await
        .expect_any_error(404);
    power(&d, &nobody, &owned, "start")
        .await
        .expect_any_error(404);
    d.patch(
        &machine_path(&owned),
        Some(&nobody),
        &json!({"description": "x"}),
    )
    .await
    .expect_any_error(404);
    d.delete(&machine_path(&owned), Some(&nobody))
        .await
        .expect_any_error(404);

    // Ownership by username.
    let p = d
        .request(
            reqwest::Method::PUT,
            &format!("/api/machines/{owned}/owner"),
            Some(&admin),
            Some(&json!({"user": "nobody"})),
        )
        .await
        .expect(200);
    assert_properties(&p);
    assert_eq!(
        p["owner"],
        json!({"uuid": nobody_id, "username": "nobody"}),
        "{p}"
    );
    let seen = list_machines(&d, &nobody).await;
    assert_eq!(uuids(&seen), BTreeSet::from([owned.clone()]));
    assert_eq!(seen[0]["owner"]["username"], "nobody");
    assert_detail(&detail(&d, &nobody, &owned).await);
    power_ok(&d, &nobody, &owned, "start").await;
    wait_status(&d, &nobody, &owned, "running").await;
    let p = d
        .patch(
            &machine_path(&owned),
            Some(&nobody),
            &json!({"description": "mine now"}),
        )
        .await
        .expect(200);
    assert_eq!(p["description"], "mine now");
    // Owning one machine shows nothing else.
    d.get(&machine_path(&assigned), Some(&nobody))
        .await
        .expect_any_error(404);

    // Ownership by uuid, then cleared.
    let p = d
        .request(
            reqwest::Method::PUT,
            &format!("/api/machines/{owned}/owner"),
            Some(&admin),
            Some(&json!({"user": carol_id})),
        )
        .await
        .expect(200);
    assert_eq!(p["owner"]["uuid"], carol_id.as_str(), "{p}");
    assert_eq!(list_machines(&d, &nobody).await, Vec::<Value>::new());
    let p = d
        .request(
            reqwest::Method::PUT,
            &format!("/api/machines/{owned}/owner"),
            Some(&admin),
            Some(&json!({"user": null})),
        )
        .await
        .expect(200);
    assert!(p["owner"].is_null(), "{p}");
    assert_eq!(list_machines(&d, &carol).await, Vec::<Value>::new());

    // Assignment.
    let clients = format!("/api/machines/{assigned}/clients/{carol_id}");
    let p = d
        .request(reqwest::Method::PUT, &clients, Some(&admin), None)
        .await
        .expect(200);
    assert_properties(&p);
    assert_eq!(
        p["assigned_clients"],
        json!({ carol_id.clone(): {"uuid": carol_id, "username": "carol"} }),
        "{p}"
    );
    let seen = list_machines(&d, &carol).await;
    assert_eq!(uuids(&seen), BTreeSet::from([assigned.clone()]));
    assert_detail(&detail(&d, &carol, &assigned).await);
    power_ok(&d, &carol, &assigned, "start").await;
    wait_status(&d, &carol, &assigned, "running").await;
    power_ok(&d, &carol, &assigned, "stop").await;
    wait_status(&d, &carol, &assigned, "stopped").await;
    let p = d.delete(&clients, Some(&admin)).await.expect(200);
    assert_eq!(p["assigned_clients"], json!({}), "{p}");
    assert_eq!(list_machines(&d, &carol).await, Vec::<Value>::new());
    power(&d, &carol, &assigned, "start")
        .await
        .expect_any_error(404);

    // VIEW_ALL_VMS alone: sees everything, controls nothing.
    let seen = list_machines(&d, &viewer).await;
    assert_eq!(uuids(&seen), uuids(&all));
    assert_detail(&detail(&d, &viewer, &assigned).await);
    power(&d, &viewer, &assigned, "start")
        .await
        .expect_any_error(403);
    d.patch(
        &machine_path(&assigned),
        Some(&viewer),
        &json!({"description": "x"}),
    )
    .await
    .expect_any_error(403);
    d.delete(&machine_path(&assigned), Some(&viewer))
        .await
        .expect_any_error(403);
    assert_eq!(status(&d, &admin, &assigned).await, "stopped");

    // Without MANAGE_ALL_VMS: no create, no owner or client changes (even on a machine the
    // user controls).
    let spec = json!({"title": "it-forbidden", "vcpu": 1, "ram_mib": 256});
    for token in [&viewer, &nobody] {
        d.post("/api/machines", Some(token), &spec)
            .await
            .expect_any_error(403);
    }
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{owned}/owner"),
        Some(&viewer),
        Some(&json!({"user": "viewer"})),
    )
    .await
    .expect_any_error(403);
    d.request(reqwest::Method::PUT, &clients, Some(&viewer), None)
        .await
        .expect_any_error(403);
    d.delete(&clients, Some(&viewer))
        .await
        .expect_any_error(403);
    assert!(
        list_machines(&d, &admin)
            .await
            .iter()
            .all(|m| m["title"] != "it-forbidden")
    );

    // Unknown users are 404.
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{owned}/owner"),
        Some(&admin),
        Some(&json!({"user": "no-such-user"})),
    )
    .await
    .expect_any_error(404);
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{owned}/owner"),
        Some(&admin),
        Some(&json!({"user": uuid::Uuid::new_v4().to_string()})),
    )
    .await
    .expect_any_error(404);
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{assigned}/clients/{}", uuid::Uuid::new_v4()),
        Some(&admin),
        None,
    )
    .await
    .expect_any_error(404);
}

/// MANAGE_ALL_VMS controls every machine even without VIEW_ALL_VMS (contract 2): the
/// machine is not listed, yet power, edit, ownership and assignment act on it.
#[tokio::test]
async fn manage_all_vms_alone_controls_unseen_machines() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let all = list_machines(&d, &admin).await;
    let (_, manager) = user_with(&d, &admin, "manager", &["MANAGE_ALL_VMS"]).await;
    let (carol_id, _) = user_with(&d, &admin, "carol", &[]).await;
    let mut target = None;
    for m in &all {
        let fails = fail_boot_machines(std::slice::from_ref(m)).len() == 1;
        if !fails && status(&d, &admin, &uuid_of(m)).await == "stopped" {
            target = Some(uuid_of(m));
            break;
        }
    }
    let target = target.unwrap_or_else(|| panic!("no stopped machine: {all:?}"));

    assert_eq!(list_machines(&d, &manager).await, Vec::<Value>::new());
    d.get(&machine_path(&target), Some(&manager))
        .await
        .expect_any_error(404);
    power_ok(&d, &manager, &target, "start").await;
    wait_status(&d, &admin, &target, "running").await;
    d.patch(
        &machine_path(&target),
        Some(&manager),
        &json!({"description": "managed"}),
    )
    .await
    .expect(200);
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{target}/clients/{carol_id}"),
        Some(&manager),
        None,
    )
    .await
    .expect(200);
    let p = d
        .request(
            reqwest::Method::PUT,
            &format!("/api/machines/{target}/owner"),
            Some(&manager),
            Some(&json!({"user": "carol"})),
        )
        .await
        .expect(200);
    assert_eq!(p["owner"]["username"], "carol", "{p}");
    assert_eq!(p["description"], "managed", "{p}");
    assert!(
        p["assigned_clients"].get(&carol_id).is_some(),
        "carol assigned: {p}"
    );
    // An unknown machine is still a 404.
    power(&d, &manager, &uuid::Uuid::new_v4().to_string(), "start")
        .await
        .expect_any_error(404);
}

#[tokio::test]
async fn create_patch_delete_roundtrip() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let me = d.me(&admin).await;
    let before = list_machines(&d, &admin).await;

    let m = create_machine(
        &d,
        &admin,
        &json!({
            "title": "it-box",
            "vcpu": 2,
            "ram_mib": 512,
            "description": "made by a test",
            "tags": ["it", "round-trip"],
            "kind": "container",
        }),
    )
    .await;
    let uuid = uuid_of(&m);
    assert_eq!(m["title"], "it-box");
    assert_eq!(m["vcpu"], 2);
    assert_eq!(m["ram_max"], 512);
    assert_eq!(m["description"], "made by a test");
    assert_eq!(m["tags"], json!(["it", "round-trip"]));
    assert_eq!(m["kind"], "container");
    assert_eq!(m["backend"], "simulator");
    assert_eq!(
        m["owner"],
        json!({"uuid": me["uuid"], "username": "admin"}),
        "the creator owns the machine: {m}"
    );
    assert_eq!(m["assigned_clients"], json!({}));
    assert!(uuids(&before).iter().all(|u| *u != uuid));

    let v = detail(&d, &admin, &uuid).await;
    assert_detail(&v);
    assert_eq!(
        v["state"]["status"], "stopped",
        "a new machine is stopped: {v}"
    );
    assert_eq!(v["state"]["active"], false);
    let after = list_machines(&d, &admin).await;
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(by_title(&after, "it-box"), &m);

    // Defaults: no description, tags or kind given; an explicit backend.
    let plain = create_machine(
        &d,
        &admin,
        &json!({"backend": "simulator", "title": "it-plain", "vcpu": 1, "ram_mib": 64}),
    )
    .await;
    assert_eq!(plain["description"], "");
    assert_eq!(plain["tags"], json!([]));
    assert_eq!(plain["backend"], "simulator");

    // A manager who is not the admin owns what they create.
    let (mgr_id, mgr) = user_with(&d, &admin, "manager", &["MANAGE_ALL_VMS"]).await;
    let theirs = create_machine(
        &d,
        &mgr,
        &json!({"title": "it-theirs", "vcpu": 1, "ram_mib": 128}),
    )
    .await;
    assert_eq!(
        theirs["owner"],
        json!({"uuid": mgr_id, "username": "manager"})
    );
    assert_eq!(
        uuids(&list_machines(&d, &mgr).await),
        BTreeSet::from([uuid_of(&theirs)])
    );

    // PATCH each field, then all of them.
    let p = d
        .patch(
            &machine_path(&uuid),
            Some(&admin),
            &json!({"title": "it-box-2"}),
        )
        .await
        .expect(200);
    assert_properties(&p);
    assert_eq!(p["title"], "it-box-2");
    assert_eq!(p["description"], "made by a test");
    let p = d
        .patch(
            &machine_path(&uuid),
            Some(&admin),
            &json!({"description": "changed", "tags": ["x"]}),
        )
        .await
        .expect(200);
    assert_eq!(p["title"], "it-box-2");
    assert_eq!(p["description"], "changed");
    assert_eq!(p["tags"], json!(["x"]));
    assert_eq!(p["owner"]["username"], "admin");
    let v = detail(&d, &admin, &uuid).await;
    assert_eq!(v["title"], "it-box-2");
    assert_eq!(v["tags"], json!(["x"]));
    let listed = list_machines(&d, &admin).await;
    assert_eq!(by_title(&listed, "it-box-2")["description"], "changed");
    assert!(listed.iter().all(|m| m["title"] != "it-box"));
    // The old title is free again.
    create_machine(
        &d,
        &admin,
        &json!({"title": "it-box", "vcpu": 1, "ram_mib": 128}),
    )
    .await;

    // DELETE.
    d.delete(&machine_path(&uuid), Some(&admin))
        .await
        .expect(204);
    d.get(&machine_path(&uuid), Some(&admin))
        .await
        .expect_any_error(404);
    assert!(
        uuids(&list_machines(&d, &admin).await)
            .iter()
            .all(|u| *u != uuid)
    );
    d.delete(&machine_path(&uuid), Some(&admin))
        .await
        .expect_any_error(404);
    d.patch(
        &machine_path(&uuid),
        Some(&admin),
        &json!({"title": "gone"}),
    )
    .await
    .expect_any_error(404);
    power(&d, &admin, &uuid, "start")
        .await
        .expect_any_error(404);
    // A demo machine can be deleted too.
    let demo = uuid_of(by_title(&listed, "sim-vm-01"));
    d.delete(&machine_path(&demo), Some(&admin))
        .await
        .expect(204);
    d.get(&machine_path(&demo), Some(&admin))
        .await
        .expect_any_error(404);
}

#[tokio::test]
async fn create_and_patch_validation() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let before = list_machines(&d, &admin).await;
    let ok = json!({"title": "it-valid", "vcpu": 2, "ram_mib": 256});

    // Duplicate titles: a demo machine's, then one created here.
    let mut dup = ok.clone();
    dup["title"] = json!("sim-vm-01");
    d.post("/api/machines", Some(&admin), &dup)
        .await
        .expect_any_error(409);
    let m = create_machine(&d, &admin, &ok).await;
    d.post("/api/machines", Some(&admin), &ok)
        .await
        .expect_any_error(409);

    // Bad values.
    let long = "x".repeat(129);
    let cases = [
        (
            "empty title",
            json!({"title": "", "vcpu": 1, "ram_mib": 256}),
        ),
        (
            "title too long",
            json!({"title": long, "vcpu": 1, "ram_mib": 256}),
        ),
        (
            "title with newline",
            json!({"title": "a\nb", "vcpu": 1, "ram_mib": 256}),
        ),
        (
            "vcpu 0",
            json!({"title": "it-bad", "vcpu": 0, "ram_mib": 256}),
        ),
        (
            "vcpu 129",
            json!({"title": "it-bad", "vcpu": 129, "ram_mib": 256}),
        ),
        (
            "ram 63",
            json!({"title": "it-bad", "vcpu": 1, "ram_mib": 63}),
        ),
        ("ram 0", json!({"title": "it-bad", "vcpu": 1, "ram_mib": 0})),
        ("no title", json!({"vcpu": 1, "ram_mib": 256})),
        ("no vcpu", json!({"title": "it-bad", "ram_mib": 256})),
        (
            "vcpu a string",
            json!({"title": "it-bad", "vcpu": "2", "ram_mib": 256}),
        ),
        (
            "bad kind",
            json!({"title": "it-bad", "vcpu": 1, "ram_mib": 256, "kind": "pod"}),
        ),
        (
            "unknown backend",
            json!({"backend": "no-such-backend", "title": "it-bad", "vcpu": 1, "ram_mib": 256}),
        ),
    ];
    for (what, body) in cases {
        let r = d.post("/api/machines", Some(&admin), &body).await;
        assert_eq!(r.status, 400, "{what}: {body} gave {} {}", r.status, r.text);
        r.expect_any_error(400);
    }
    // Limits themselves are fine.
    create_machine(
        &d,
        &admin,
        &json!({"title": "it-edge", "vcpu": 128, "ram_mib": 64}),
    )
    .await;
    let after = list_machines(&d, &admin).await;
    assert_eq!(
        after.len(),
        before.len() + 2,
        "only the two valid creations happened: {:?}",
        titles(&after)
    );

    // PATCH: duplicate title, empty body, bad values.
    let path = machine_path(&uuid_of(&m));
    d.patch(&path, Some(&admin), &json!({"title": "sim-vm-01"}))
        .await
        .expect_any_error(409);
    d.patch(&path, Some(&admin), &json!({"title": "it-edge"}))
        .await
        .expect_any_error(409);
    d.patch(&path, Some(&admin), &json!({}))
        .await
        .expect_any_error(400);
    d.request(reqwest::Method::PATCH, &path, Some(&admin), None)
        .await
        .expect_any_error(400);
    d.patch(&path, Some(&admin), &json!({"title": ""}))
        .await
        .expect_any_error(400);
    d.patch(&path, Some(&admin), &json!({"tags": "not-a-list"}))
        .await
        .expect_any_error(400);
    // Renaming to its own title is no conflict.
    d.patch(&path, Some(&admin), &json!({"title": "it-valid"}))
        .await
        .expect(200);
    assert_eq!(detail(&d, &admin, &uuid_of(&m)).await["title"], "it-valid");
}

#[tokio::test]
async fn power_actions_and_state_sequences() {
    // Long enough transitions that polling sees them.
    let d = Daemon::builder()
        .env("ORCHARD_SIMULATOR_BOOT_MS", "800")
        .env("ORCHARD_SIMULATOR_SHUTDOWN_MS", "600")
        .start();
    let admin = d.admin_token().await;
    let m = create_machine(
        &d,
        &admin,
        &json!({"title": "it-power", "vcpu": 1, "ram_mib": 256}),
    )
    .await;
    let u = uuid_of(&m);
    assert_eq!(status(&d, &admin, &u).await, "stopped");

    // Invalid transitions from stopped.
    for action in ["stop", "suspend", "resume"] {
        power(&d, &admin, &u, action).await.expect_any_error(409);
    }
    assert_eq!(status(&d, &admin, &u).await, "stopped");

    // start: booting → running.
    power_ok(&d, &admin, &u, "start").await;
    let seen = wait_status(&d, &admin, &u, "running").await;
    assert!(
        seen.iter().any(|s| s == "booting"),
        "start passes through booting: {seen:?}"
    );
    assert!(!seen.iter().any(|s| s == "error"), "{seen:?}");
    // The next state poll brings the boot time (ISO 8601, UTC).
    let ts = eventually(Duration::from_secs(5), "a boot_timestamp", || async {
        let v = detail(&d, &admin, &u).await;
        v["state"]["boot_timestamp"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        ts.ends_with('Z') && ts.contains('T'),
        "boot_timestamp is ISO 8601 UTC: {ts:?}"
    );
    power(&d, &admin, &u, "start").await.expect_any_error(409);
    power(&d, &admin, &u, "resume").await.expect_any_error(409);

    // stop: shutting_down → stopped.
    power_ok(&d, &admin, &u, "stop").await;
    let seen = wait_status(&d, &admin, &u, "stopped").await;
    assert!(
        seen.iter().any(|s| s == "shutting_down"),
        "stop passes through shutting_down: {seen:?}"
    );
    power(&d, &admin, &u, "stop").await.expect_any_error(409);

    // restart: goes down and comes back to running.
    power_ok(&d, &admin, &u, "start").await;
    wait_status(&d, &admin, &u, "running").await;
    power_ok(&d, &admin, &u, "restart").await;
    let seen = watch(&d, &admin, &u, SETTLE, "restart back to running", |s| {
        s.iter().any(|x| x != "running") && s.last().is_some_and(|l| l == "running")
    })
    .await;
    assert!(
        seen.iter().any(|s| s == "shutting_down" || s == "booting"),
        "restart shows a transition: {seen:?}"
    );
    assert!(!seen.iter().any(|s| s == "error"), "{seen:?}");

    // suspend → suspended; resume → running.
    power_ok(&d, &admin, &u, "suspend").await;
    wait_status(&d, &admin, &u, "suspended").await;
    let v = detail(&d, &admin, &u).await;
    assert_eq!(
        v["state"]["active"], true,
        "suspended counts as active: {v}"
    );
    assert_eq!(v["state"]["loading"], false, "{v}");
    power(&d, &admin, &u, "suspend").await.expect_any_error(409);
    power_ok(&d, &admin, &u, "resume").await;
    wait_status(&d, &admin, &u, "running").await;

    // force_off: stopped, without a graceful shutdown.
    power_ok(&d, &admin, &u, "force_off").await;
    let seen = wait_status(&d, &admin, &u, "stopped").await;
    assert!(!seen.iter().any(|s| s == "error"), "{seen:?}");
    let v = detail(&d, &admin, &u).await;
    assert_eq!(v["state"]["active"], false, "{v}");

    // Unknown actions and machines.
    power(&d, &admin, &u, "explode").await.expect_any_error(404);
    power(&d, &admin, &uuid::Uuid::new_v4().to_string(), "start")
        .await
        .expect_any_error(404);
    power(&d, &admin, "not-a-uuid", "start")
        .await
        .expect_any_error(404);
}

#[tokio::test]
async fn fail_boot_machine_ends_in_error() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let list = list_machines(&d, &admin).await;
    let failing = fail_boot_machines(&list);
    assert_eq!(failing.len(), 1, "{list:?}");
    let u = uuid_of(failing[0]);
    power_ok(&d, &admin, &u, "start").await;
    let seen = wait_status(&d, &admin, &u, "error").await;
    assert!(!seen.iter().any(|s| s == "running"), "{seen:?}");
    let v = detail(&d, &admin, &u).await;
    assert_detail(&v);
    assert_eq!(v["state"]["active"], false, "{v}");
    assert_eq!(v["state"]["loading"], false, "{v}");

    // A created machine with the tag fails the same way.
    let m = create_machine(
        &d,
        &admin,
        &json!({"title": "it-fail-boot", "vcpu": 1, "ram_mib": 128, "tags": ["fail-boot"]}),
    )
    .await;
    power_ok(&d, &admin, &uuid_of(&m), "start").await;
    wait_status(&d, &admin, &uuid_of(&m), "error").await;
}

#[tokio::test]
async fn fail_shutdown_machine_keeps_running() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let m = create_machine(
        &d,
        &admin,
        &json!({"title": "it-stubborn", "vcpu": 1, "ram_mib": 128, "tags": ["fail-shutdown"]}),
    )
    .await;
    let u = uuid_of(&m);
    power_ok(&d, &admin, &u, "start").await;
    wait_status(&d, &admin, &u, "running").await;
    power_ok(&d, &admin, &u, "stop").await;
    // Done once the shutdown visibly failed (shutting_down, then running again), or once
    // well past the shutdown time with the machine still running.
    let started = Instant::now();
    let grace = Duration::from_millis(DEFAULT_SIM_SHUTDOWN_MS * 3 + 2000);
    let seen = watch(
        &d,
        &admin,
        &u,
        SETTLE,
        "the failed shutdown to settle",
        |s| {
            let running = s.last().is_some_and(|l| l == "running");
            let went_down = s.iter().any(|x| x == "shutting_down");
            running && (went_down || started.elapsed() > grace)
        },
    )
    .await;
    assert!(
        !seen.iter().any(|s| s == "stopped"),
        "a fail-shutdown machine never stops: {seen:?}"
    );
    assert_eq!(status(&d, &admin, &u).await, "running");
    // force_off still works.
    power_ok(&d, &admin, &u, "force_off").await;
    wait_status(&d, &admin, &u, "stopped").await;
}

/// `GET /api/subscriptions`: the uuid strings, in the order given.
async fn subscriptions(d: &Daemon, token: String) -> Vec<String> {
    let body = d.get("/api/subscriptions", Some(&token)).await.expect(200);
    body.as_array()
        .unwrap_or_else(|| panic!("subscriptions are not an array: {body}"))
        .iter()
        .map(|u| {
            u.as_str()
                .unwrap_or_else(|| panic!("not a uuid string: {u}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn subscriptions_put_list_delete() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let all = list_machines(&d, &admin).await;
    let (a, b) = (uuid_of(&all[0]), uuid_of(&all[1]));
    let subs = |token: String| subscriptions(&d, token);
    let sub_path = |u: &str| format!("/api/subscriptions/{u}");
    assert_eq!(subs(admin.clone()).await, Vec::<String>::new());

    for u in [&a, &b, &a] {
        let r = d
            .request(reqwest::Method::PUT, &sub_path(u), Some(&admin), None)
            .await;
        assert_eq!(r.status, 204, "PUT subscription: {}", r.text);
    }
    let mut got = subs(admin.clone()).await;
    got.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(got, want, "each machine once");

    let r = d.delete(&sub_path(&a), Some(&admin)).await;
    assert_eq!(r.status, 204, "DELETE subscription: {}", r.text);
    assert_eq!(subs(admin.clone()).await, vec![b.clone()]);

    // Unseen, unknown and malformed machines are 404 for PUT.
    let (nobody_id, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    d.request(reqwest::Method::PUT, &sub_path(&b), Some(&nobody), None)
        .await
        .expect_any_error(404);
    d.request(
        reqwest::Method::PUT,
        &sub_path(&uuid::Uuid::new_v4().to_string()),
        Some(&admin),
        None,
    )
    .await
    .expect_any_error(404);
    d.request(reqwest::Method::PUT, &sub_path("nope"), Some(&admin), None)
        .await
        .expect_any_error(404);
    assert_eq!(subs(nobody.clone()).await, Vec::<String>::new());
    d.get("/api/subscriptions", None)
        .await
        .expect_any_error(401);

    // Once the machine is theirs they may subscribe; lists are per user.
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{b}/owner"),
        Some(&admin),
        Some(&json!({"user": nobody_id})),
    )
    .await
    .expect(200);
    let r = d
        .request(reqwest::Method::PUT, &sub_path(&b), Some(&nobody), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(subs(nobody.clone()).await, vec![b.clone()]);
    assert_eq!(subs(admin.clone()).await, vec![b.clone()]);
    let r = d.delete(&sub_path(&b), Some(&nobody)).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(subs(nobody.clone()).await, Vec::<String>::new());
    assert_eq!(subs(admin).await, vec![b]);
}

/// (uuid, title, backend, kind) of every machine, sorted.
fn identity(list: &[Value]) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|m| {
            (
                uuid_of(m),
                m["title"].as_str().unwrap_or_default().to_owned(),
                m["backend"].as_str().unwrap_or_default().to_owned(),
                m["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn machines_relations_and_subscriptions_persist_across_restart() {
    let mut d = Daemon::start();
    let admin = d.admin_token().await;
    let (carol_id, _) = user_with(&d, &admin, "carol", &[]).await;
    let created = create_machine(
        &d,
        &admin,
        &json!({"title": "it-persist", "vcpu": 3, "ram_mib": 768, "tags": ["keep"]}),
    )
    .await;
    let cu = uuid_of(&created);
    d.request(
        reqwest::Method::PUT,
        &format!("/api/machines/{cu}/clients/{carol_id}"),
        Some(&admin),
        None,
    )
    .await
    .expect(200);
    let before = list_machines(&d, &admin).await;
    let demo = uuid_of(by_title(&before, "sim-vm-01"));
    for u in [&cu, &demo] {
        let r = d
            .request(
                reqwest::Method::PUT,
                &format!("/api/subscriptions/{u}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
    }
    let subs_before = d.get("/api/subscriptions", Some(&admin)).await.expect(200);

    d.restart();
    let admin = d.admin_token().await;
    let after = list_machines(&d, &admin).await;
    assert_eq!(
        identity(&after),
        identity(&before),
        "uuids and titles survive a restart"
    );
    let c = by_title(&after, "it-persist");
    assert_eq!(c["owner"]["username"], "admin", "{c}");
    assert_eq!(
        c["assigned_clients"],
        json!({ carol_id.clone(): {"uuid": carol_id, "username": "carol"} }),
        "{c}"
    );
    assert_eq!(c["vcpu"], 3);
    assert_eq!(c["ram_max"], 768);
    assert_eq!(c["tags"], json!(["keep"]));
    let carol = d.login("carol", "carol-password").await;
    assert_eq!(
        uuids(&list_machines(&d, &carol).await),
        BTreeSet::from([cu.clone()])
    );
    let subs_after = d.get("/api/subscriptions", Some(&admin)).await.expect(200);
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|u| u.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(set(&subs_after), set(&subs_before));
    assert_eq!(set(&subs_after), BTreeSet::from([cu, demo]));
}

#[tokio::test]
async fn counters_grow_for_a_running_machine() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let list = list_machines(&d, &admin).await;
    let running = eventually(
        Duration::from_secs(10),
        "a running demo machine",
        || async {
            for m in &list {
                let v = detail(&d, &admin, &uuid_of(m)).await;
                if v["state"]["status"] == "running" {
                    return Some(v);
                }
            }
            None
        },
    )
    .await;
    assert_detail(&running);
    let u = uuid_of(&running);
    let counters = [
        "net_rx_bytes",
        "net_tx_bytes",
        "disk_read_bytes",
        "disk_write_bytes",
    ];
    let first: Vec<u64> = counters
        .iter()
        .map(|k| running["state"][*k].as_u64().unwrap_or_default())
        .collect();
    let last = eventually(Duration::from_secs(10), "every counter to grow", || async {
        let v = detail(&d, &admin, &u).await;
        let now: Vec<u64> = counters
            .iter()
            .map(|k| v["state"][*k].as_u64().unwrap_or_default())
            .collect();
        now.iter().zip(&first).all(|(n, f)| n > f).then_some(v)
    })
    .await;
    assert_detail(&last);
    assert_eq!(last["state"]["status"], "running");
    let cpu = last["state"]["cpu_percent"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=100.0).contains(&cpu), "cpu_percent: {last}");
    assert!(
        last["state"]["ram_used"].as_u64().unwrap_or_default() > 0,
        "{last}"
    );
}
