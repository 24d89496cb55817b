//! Clusters (contract 4.4 and 7, `api-docs/D-cluster-events.md`): the REST API and its
//! validation and permissions, the phase derived from real member states, and the event
//! stream on tokenless `/ws` and on `/ws/clusters` — events, debouncing, refusals, the
//! incoming size limit and keepalive.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Daemon, eventually, uuid_of};
use crate::machines::{create_machine, power_ok, user_with, wait_status};
use crate::vms::{Got, Sock, T, ws_url};
use crate::wsclient::{OP_PING, RawClient, is_iso8601_utc};

const EVENT_TYPES: [&str; 3] = ["cluster.added", "cluster.updated", "cluster.deleted"];
const CLUSTER_KEYS: [&str; 7] = [
    "name",
    "machines",
    "nodes",
    "phase",
    "addons",
    "created_at",
    "updated_at",
];
const PHASES: [&str; 4] = ["Ready", "Degraded", "Stopped", "Empty"];

// ----- setup and helpers -----

fn daemon(env: &[(&str, &str)]) -> Daemon {
    let mut b = Daemon::builder();
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

/// A daemon with short simulated boots and shutdowns, as the phase tests need.
fn quick_daemon(extra: &[(&str, &str)]) -> Daemon {
    let mut env = vec![
        ("ORCHARD_SIMULATOR_BOOT_MS", "300"),
        ("ORCHARD_SIMULATOR_SHUTDOWN_MS", "200"),
    ];
    env.extend_from_slice(extra);
    daemon(&env)
}

/// A new (stopped) simulator machine; returns its uuid.
async fn new_machine(d: &Daemon, admin: &str, title: &str) -> String {
    let m = create_machine(
        d,
        admin,
        &json!({"backend": "simulator", "title": title, "vcpu": 1, "ram_mib": 128}),
    )
    .await;
    uuid_of(&m)
}

fn cluster_path(name: &str) -> String {
    format!("/api/clusters/{name}")
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what} holds a non-string: {v}"))
                .to_owned()
        })
        .collect()
}

/// Asserts `v` is a cluster view: exactly its fields, nodes matching the members in order,
/// a known phase consistent with the nodes, ISO timestamps.
fn assert_cluster(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("a cluster is not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = CLUSTER_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "cluster fields: {v}");
    assert!(v["name"].is_string(), "name: {v}");
    let machines = strings(&v["machines"], "machines");
    strings(&v["addons"], "addons");
    let nodes = v["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes is not an array: {v}"));
    let node_uuids: Vec<String> = nodes
        .iter()
        .map(|n| {
            let o = n
                .as_object()
                .unwrap_or_else(|| panic!("a node is not an object: {v}"));
            let mut k: Vec<&str> = o.keys().map(String::as_str).collect();
            k.sort_unstable();
            assert_eq!(k, ["status", "title", "uuid"], "node fields: {n}");
            assert!(
                n["title"].is_string() && n["status"].is_string(),
                "node: {n}"
            );
            n["uuid"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(node_uuids, machines, "one node per member, in order: {v}");
    let phase = v["phase"].as_str().unwrap_or_default();
    assert!(PHASES.contains(&phase), "phase: {v}");
    let running = nodes.iter().filter(|n| n["status"] == "running").count();
    let expected = match (nodes.len(), running) {
        (0, _) => "Empty",
        (n, r) if n == r => "Ready",
        (_, 0) => "Stopped",
        _ => "Degraded",
    };
    assert_eq!(phase, expected, "phase follows the nodes: {v}");
    for k in ["created_at", "updated_at"] {
        let ts = v[k].as_str().unwrap_or_default();
        assert!(is_iso8601_utc(ts), "{k} is not ISO 8601 UTC: {v}");
    }
}

async fn create_cluster(d: &Daemon, token: &str, body: &Value) -> Value {
    let c = d.post("/api/clusters", Some(token), body).await.expect(201);
    assert_cluster(&c);
    assert_eq!(c["name"], body["name"], "created cluster: {c}");
    c
}

async fn get_cluster(d: &Daemon, token: &str, name: &str) -> Value {
    let c = d.get(&cluster_path(name), Some(token)).await.expect(200);
    assert_cluster(&c);
    c
}

async fn list_clusters(d: &Daemon, token: &str) -> Vec<Value> {
    let body = d.get("/api/clusters", Some(token)).await.expect(200);
    let list = body
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/clusters is not a list: {body}"))
        .clone();
    for c in &list {
        assert_cluster(c);
    }
    list
}

fn names(list: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = list
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    n.sort();
    n
}

/// Waits until the cluster shows `phase`; returns the view.
async fn wait_phase(d: &Daemon, token: &str, name: &str, phase: &str) -> Value {
    eventually(T, &format!("cluster {name} in phase {phase}"), || async {
        let c = get_cluster(d, token, name).await;
        (c["phase"] == phase).then_some(c)
    })
    .await
}

// ----- the event stream -----

/// Cluster-stream messages: `{type, data}`, events carrying `data.name`.
fn check_event(v: &Value) {
    assert!(v.is_object(), "message is not an object: {v}");
    let ty = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("message without a type: {v}"));
    assert!(v["data"].is_object(), "message without a data object: {v}");
    if ty.starts_with("cluster.") {
        assert!(EVENT_TYPES.contains(&ty), "unknown event type: {v}");
        assert!(
            v["data"]["name"].is_string(),
            "a cluster event names its cluster: {v}"
        );
    }
}

fn is_event(v: &Value, ty: &str, name: &str) -> bool {
    v["type"] == ty && v["data"]["name"] == name
}

/// Tokenless `/ws`.
async fn open_anonymous(d: &Daemon) -> Sock {
    Sock::open(&ws_url(d, "/ws", &[]), None, check_event).await
}

async fn open_clusters(d: &Daemon, token: Option<&str>) -> Sock {
    let query: Vec<(&str, &str)> = token.map(|t| ("token", t)).into_iter().collect();
    Sock::open(&ws_url(d, "/ws/clusters", &query), None, check_event).await
}

/// Makes sure every socket receives events: creates probe clusters until one probe's
/// `cluster.added` reached them all (a socket joins the stream shortly after its upgrade).
async fn sync(d: &Daemon, admin: &str, socks: &mut [&mut Sock]) {
    for attempt in 0..20 {
        let name = format!(
            "sync-{attempt}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        create_cluster(d, admin, &json!({ "name": name })).await;
        let mut all = true;
        for s in socks.iter_mut() {
            if !saw_within(s, Duration::from_secs(1), |v| {
                is_event(v, "cluster.added", &name)
            })
            .await
            {
                all = false;
            }
        }
        if all {
            return;
        }
    }
    panic!("the event sockets never received a probe event");
}

/// Reads until a message for which `want` holds (true) or `within` passes (false); fails
/// the test if the socket ends.
async fn saw_within(s: &mut Sock, within: Duration, want: impl Fn(&Value) -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match s.next_until(deadline).await {
            None => return false,
            Some(Got::Msg(v)) if want(&v) => return true,
            Some(Got::Msg(_)) => {}
            other => panic!("the event socket ended: {other:?}"),
        }
    }
}

/// Proves the socket is alive and subscribed: a new probe cluster's event arrives.
async fn roundtrip(d: &Daemon, admin: &str, s: &mut Sock) {
    let name = format!("probe-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    create_cluster(d, admin, &json!({ "name": name })).await;
    s.recv_where(T, "the probe's cluster.added", |v| {
        is_event(v, "cluster.added", &name)
    })
    .await;
}

// ----- REST -----

#[tokio::test]
async fn create_get_and_list() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let a = new_machine(&d, &admin, "it-cl-a").await;
    let b = new_machine(&d, &admin, "it-cl-b").await;

    let c = create_cluster(
        &d,
        &admin,
        &json!({"name": "web", "machines": [a, b], "addons": ["dns", "ingress"]}),
    )
    .await;
    assert_eq!(strings(&c["machines"], "machines"), [a.clone(), b.clone()]);
    assert_eq!(strings(&c["addons"], "addons"), ["dns", "ingress"]);
    let nodes = c["nodes"].as_array().expect("nodes");
    assert_eq!(nodes[0]["title"], "it-cl-a", "{c}");
    assert_eq!(nodes[1]["title"], "it-cl-b", "{c}");
    for n in nodes {
        assert_eq!(n["status"], "stopped", "a new machine is stopped: {c}");
    }
    assert_eq!(c["phase"], "Stopped", "{c}");

    let bare = create_cluster(&d, &admin, &json!({"name": "bare"})).await;
    assert_eq!(bare["machines"], json!([]), "{bare}");
    assert_eq!(bare["nodes"], json!([]), "{bare}");
    assert_eq!(bare["addons"], json!([]), "{bare}");
    assert_eq!(bare["phase"], "Empty", "{bare}");

    let got = get_cluster(&d, &admin, "web").await;
    assert_eq!(got, c, "GET returns what POST did");
    let list = list_clusters(&d, &admin).await;
    assert_eq!(names(&list), ["bare", "web"]);
    assert_eq!(
        list.iter().find(|x| x["name"] == "web").expect("web"),
        &c,
        "the list shows the same view"
    );
}

#[tokio::test]
async fn names_are_validated() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let long_ok = "a".repeat(63);
    let too_long = "a".repeat(64);
    for bad in [
        "",
        "-web",
        "Web",
        "web_1",
        "web 1",
        "web.1",
        "wéb",
        "web/1",
        too_long.as_str(),
    ] {
        let r = d
            .post("/api/clusters", Some(&admin), &json!({ "name": bad }))
            .await;
        r.expect_any_error(400);
    }
    for good in ["0", "a-", "9-x-1", long_ok.as_str()] {
        create_cluster(&d, &admin, &json!({ "name": good })).await;
    }
    let list = list_clusters(&d, &admin).await;
    assert_eq!(list.len(), 4, "only the valid names were created: {list:?}");
}

#[tokio::test]
async fn duplicates_and_unknown_machines_are_refused() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let a = new_machine(&d, &admin, "it-cl-dup").await;
    create_cluster(&d, &admin, &json!({"name": "one", "machines": [a]})).await;
    d.post("/api/clusters", Some(&admin), &json!({"name": "one"}))
        .await
        .expect_any_error(409);

    let unknown = uuid::Uuid::new_v4().to_string();
    for machines in [json!([unknown]), json!(["not-a-uuid"]), json!([a, unknown])] {
        d.post(
            "/api/clusters",
            Some(&admin),
            &json!({"name": "two", "machines": machines}),
        )
        .await
        .expect_any_error(400);
        d.patch(
            &cluster_path("one"),
            Some(&admin),
            &json!({ "machines": machines }),
        )
        .await
        .expect_any_error(400);
    }
    assert_eq!(names(&list_clusters(&d, &admin).await), ["one"]);
    let one = get_cluster(&d, &admin, "one").await;
    assert_eq!(
        strings(&one["machines"], "machines"),
        [a],
        "a refused PATCH changes nothing"
    );
}

#[tokio::test]
async fn permissions_are_enforced() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    create_cluster(&d, &admin, &json!({"name": "guarded"})).await;
    let (_, nobody) = user_with(&d, &admin, "nobody", &[]).await;
    let (_, viewer) = user_with(&d, &admin, "viewer", &["VIEW_ALL_VMS"]).await;
    let path = cluster_path("guarded");

    d.get("/api/clusters", None).await.expect_any_error(401);
    d.get(&path, None).await.expect_any_error(401);
    d.get("/api/clusters", Some(&nobody))
        .await
        .expect_any_error(403);
    d.get(&path, Some(&nobody)).await.expect_any_error(403);

    assert_eq!(names(&list_clusters(&d, &viewer).await), ["guarded"]);
    get_cluster(&d, &viewer, "guarded").await;
    for token in [&nobody, &viewer] {
        d.post("/api/clusters", Some(token), &json!({"name": "mine"}))
            .await
            .expect_any_error(403);
        d.patch(&path, Some(token), &json!({"addons": ["x"]}))
            .await
            .expect_any_error(403);
        d.delete(&path, Some(token)).await.expect_any_error(403);
    }
    let c = get_cluster(&d, &admin, "guarded").await;
    assert_eq!(
        c["addons"],
        json!([]),
        "refused requests change nothing: {c}"
    );
    assert_eq!(names(&list_clusters(&d, &admin).await), ["guarded"]);
}

#[tokio::test]
async fn patch_replaces_given_lists_and_delete_removes() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let a = new_machine(&d, &admin, "it-cl-pa").await;
    let b = new_machine(&d, &admin, "it-cl-pb").await;
    let c = create_cluster(
        &d,
        &admin,
        &json!({"name": "patchy", "machines": [a], "addons": ["dns"]}),
    )
    .await;
    let path = cluster_path("patchy");

    let p = d
        .patch(&path, Some(&admin), &json!({"machines": [b, a]}))
        .await
        .expect(200);
    assert_cluster(&p);
    assert_eq!(strings(&p["machines"], "machines"), [b.clone(), a.clone()]);
    assert_eq!(
        strings(&p["addons"], "addons"),
        ["dns"],
        "addons untouched: {p}"
    );
    assert_eq!(p["created_at"], c["created_at"], "{p}");
    assert!(
        p["updated_at"].as_str() >= c["updated_at"].as_str(),
        "updated_at moves forward: {c} -> {p}"
    );

    let p = d
        .patch(
            &path,
            Some(&admin),
            &json!({"addons": ["metrics", "ingress"]}),
        )
        .await
        .expect(200);
    assert_cluster(&p);
    assert_eq!(
        strings(&p["machines"], "machines"),
        [b.clone(), a.clone()],
        "{p}"
    );
    assert_eq!(strings(&p["addons"], "addons"), ["metrics", "ingress"]);

    let p = d
        .patch(&path, Some(&admin), &json!({"machines": [], "addons": []}))
        .await
        .expect(200);
    assert_cluster(&p);
    assert_eq!(p["machines"], json!([]), "{p}");
    assert_eq!(p["addons"], json!([]), "{p}");
    assert_eq!(p["phase"], "Empty", "{p}");
    assert_eq!(
        get_cluster(&d, &admin, "patchy").await,
        p,
        "GET shows the PATCH"
    );

    let r = d.delete(&path, Some(&admin)).await;
    assert_eq!(r.status, 204, "DELETE: {}", r.text);
    d.get(&path, Some(&admin)).await.expect_any_error(404);
    assert!(list_clusters(&d, &admin).await.is_empty());

    let missing = cluster_path("nope");
    d.get(&missing, Some(&admin)).await.expect_any_error(404);
    d.patch(&missing, Some(&admin), &json!({"addons": []}))
        .await
        .expect_any_error(404);
    d.delete(&missing, Some(&admin)).await.expect_any_error(404);
    d.delete(&path, Some(&admin)).await.expect_any_error(404);
}

#[tokio::test]
async fn phase_follows_member_states() {
    let d = quick_daemon(&[]);
    let admin = d.admin_token().await;
    let a = new_machine(&d, &admin, "it-ph-a").await;
    let b = new_machine(&d, &admin, "it-ph-b").await;

    create_cluster(&d, &admin, &json!({"name": "phases"})).await;
    wait_phase(&d, &admin, "phases", "Empty").await;
    d.patch(
        &cluster_path("phases"),
        Some(&admin),
        &json!({"machines": [a, b]}),
    )
    .await
    .expect(200);
    wait_phase(&d, &admin, "phases", "Stopped").await;

    power_ok(&d, &admin, &a, "start").await;
    wait_status(&d, &admin, &a, "running").await;
    let c = wait_phase(&d, &admin, "phases", "Degraded").await;
    assert_eq!(c["nodes"][0]["status"], "running", "{c}");
    assert_eq!(c["nodes"][1]["status"], "stopped", "{c}");

    power_ok(&d, &admin, &b, "start").await;
    wait_status(&d, &admin, &b, "running").await;
    wait_phase(&d, &admin, "phases", "Ready").await;

    power_ok(&d, &admin, &a, "stop").await;
    wait_status(&d, &admin, &a, "stopped").await;
    wait_phase(&d, &admin, "phases", "Degraded").await;

    power_ok(&d, &admin, &b, "stop").await;
    wait_status(&d, &admin, &b, "stopped").await;
    wait_phase(&d, &admin, "phases", "Stopped").await;
}

#[tokio::test]
async fn deleting_a_member_removes_it() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let a = new_machine(&d, &admin, "it-del-a").await;
    let b = new_machine(&d, &admin, "it-del-b").await;
    create_cluster(
        &d,
        &admin,
        &json!({"name": "shrinking", "machines": [a, b]}),
    )
    .await;
    let mut s = open_anonymous(&d).await;
    sync(&d, &admin, &mut [&mut s]).await;

    let r = d.delete(&format!("/api/machines/{a}"), Some(&admin)).await;
    assert!(
        (200..300).contains(&r.status),
        "DELETE machine: {} {}",
        r.status,
        r.text
    );
    let c = eventually(T, "the deleted machine to leave the cluster", || async {
        let c = get_cluster(&d, &admin, "shrinking").await;
        (strings(&c["machines"], "machines") == [b.clone()]).then_some(c)
    })
    .await;
    assert_eq!(c["nodes"].as_array().map(Vec::len), Some(1), "{c}");
    s.recv_where(T, "cluster.updated for the membership change", |v| {
        is_event(v, "cluster.updated", "shrinking")
    })
    .await;
}

// ----- events -----

#[tokio::test]
async fn events_on_create_patch_and_delete() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut anon = open_anonymous(&d).await;
    let mut plain = open_clusters(&d, None).await;
    let mut authed = open_clusters(&d, Some(&admin)).await;
    sync(&d, &admin, &mut [&mut anon, &mut plain, &mut authed]).await;

    create_cluster(&d, &admin, &json!({"name": "evt"})).await;
    d.patch(
        &cluster_path("evt"),
        Some(&admin),
        &json!({"addons": ["dns"]}),
    )
    .await
    .expect(200);
    let r = d.delete(&cluster_path("evt"), Some(&admin)).await;
    assert_eq!(r.status, 204, "DELETE: {}", r.text);

    for s in [&mut anon, &mut plain, &mut authed] {
        let mut seen = Vec::new();
        for ty in EVENT_TYPES {
            let v = s
                .recv_where(T, &format!("{ty} for evt"), |v| v["data"]["name"] == "evt")
                .await;
            assert_eq!(v["type"], ty, "events in order; so far {seen:?}: {v}");
            seen.push(v);
        }
    }
}

#[tokio::test]
async fn member_status_changes_give_debounced_updates() {
    let d = quick_daemon(&[]);
    let admin = d.admin_token().await;
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(new_machine(&d, &admin, &format!("it-burst-{i}")).await);
    }
    let outsider = new_machine(&d, &admin, "it-outsider").await;
    // Every member has run once, so each start below is two status changes (booting,
    // running).
    for action in ["start", "stop"] {
        join_all(members.iter().map(|m| power_ok(&d, &admin, m, action))).await;
        let want = if action == "start" {
            "running"
        } else {
            "stopped"
        };
        for m in &members {
            wait_status(&d, &admin, m, want).await;
        }
    }
    create_cluster(&d, &admin, &json!({"name": "burst", "machines": members})).await;
    let mut s = open_anonymous(&d).await;
    sync(&d, &admin, &mut [&mut s]).await;

    // All members at once (eight status changes), and a machine in no cluster.
    join_all(
        members
            .iter()
            .chain([&outsider])
            .map(|m| power_ok(&d, &admin, m, "start")),
    )
    .await;
    for m in members.iter().chain([&outsider]) {
        wait_status(&d, &admin, m, "running").await;
    }
    let first = s
        .recv_where(T, "an event for burst", |v| v["data"]["name"] == "burst")
        .await;
    let mut events = vec![first];
    events.extend(s.open_for(Duration::from_secs(1)).await);
    for e in &events {
        assert!(
            is_event(e, "cluster.updated", "burst"),
            "only updates of burst: {e}"
        );
    }
    // Four `booting` changes at once, then four `running` 300 ms later (boot time), with a
    // 250 ms debounce: one event per wave.
    assert!(
        events.len() <= 2,
        "8 member status changes in two waves are debounced into one event per wave: {events:?}"
    );

    // Running members keep producing metrics; that alone is no event.
    let quiet = s.open_for(Duration::from_secs(2)).await;
    assert!(quiet.is_empty(), "no events without changes: {quiet:?}");
}

#[tokio::test]
async fn a_member_stopping_is_an_update() {
    let d = quick_daemon(&[]);
    let admin = d.admin_token().await;
    let a = new_machine(&d, &admin, "it-one-a").await;
    power_ok(&d, &admin, &a, "start").await;
    wait_status(&d, &admin, &a, "running").await;
    create_cluster(&d, &admin, &json!({"name": "single", "machines": [a]})).await;
    let mut s = open_clusters(&d, Some(&admin)).await;
    sync(&d, &admin, &mut [&mut s]).await;
    let quiet = s.open_for(Duration::from_secs(2)).await;
    assert!(quiet.is_empty(), "no events without changes: {quiet:?}");

    power_ok(&d, &admin, &a, "stop").await;
    s.recv_where(T, "cluster.updated for single", |v| {
        is_event(v, "cluster.updated", "single")
    })
    .await;
    wait_phase(&d, &admin, "single", "Stopped").await;
}

#[tokio::test]
async fn clusters_stream_refuses_a_bad_token() {
    let d = daemon(&[]);
    let url = ws_url(&d, "/ws/clusters", &[("token", "garbage")]);
    let mut s = Sock::open(&url, None, check_event).await;
    s.expect_close(4401, T).await;
}

#[tokio::test]
async fn anonymous_events_can_be_turned_off() {
    let d = daemon(&[("ORCHARD_CLUSTERS_ANONYMOUS_EVENTS", "false")]);
    let admin = d.admin_token().await;
    let mut s = open_anonymous(&d).await;
    let before = s.expect_close(4401, T).await;
    assert!(
        before
            .iter()
            .any(|v| v["type"] == "error" && v["data"]["code"] == "AUTH_FAILED"),
        "an AUTH_FAILED error before 4401: {before:?}"
    );
    // `/ws/clusters` without a token is refused too.
    let mut s = open_clusters(&d, None).await;
    s.expect_close(4401, T).await;
    // A token still opens the stream.
    let mut s = open_clusters(&d, Some(&admin)).await;
    sync(&d, &admin, &mut [&mut s]).await;
}

#[tokio::test]
async fn ws_with_an_invalid_token_is_the_channels_api() {
    let d = daemon(&[]);
    for (query, bearer) in [
        (vec![("token", "not-a-jwt")], None),
        (vec![("access_token", "not-a-jwt")], None),
        (vec![], Some("not-a-jwt")),
    ] {
        let mut s = Sock::open(&ws_url(&d, "/ws", &query), bearer, check_event).await;
        let before = s.expect_close(4401, T).await;
        assert!(
            before
                .iter()
                .any(|v| v["type"] == "error" && v["data"]["code"] == "AUTH_FAILED"),
            "an AUTH_FAILED error before 4401 ({query:?}, {bearer:?}): {before:?}"
        );
    }
}

#[tokio::test]
async fn oversized_incoming_message_closes_1009() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut s = open_anonymous(&d).await;
    sync(&d, &admin, &mut [&mut s]).await;
    s.send_text("x".repeat(512)).await;
    roundtrip(&d, &admin, &mut s).await;
    s.send_text("x".repeat(513)).await;
    s.expect_close(1009, T).await;
}

#[tokio::test]
async fn incoming_limit_is_configurable() {
    let d = daemon(&[("ORCHARD_CLUSTERS_MAX_MESSAGE", "100")]);
    let admin = d.admin_token().await;
    let mut s = open_clusters(&d, None).await;
    sync(&d, &admin, &mut [&mut s]).await;
    s.send_text("y".repeat(100)).await;
    roundtrip(&d, &admin, &mut s).await;
    s.send_text("y".repeat(101)).await;
    s.expect_close(1009, T).await;
}

#[tokio::test]
async fn a_client_answering_pings_stays_connected() {
    let d = daemon(&[
        ("ORCHARD_CLUSTERS_PING_INTERVAL", "1"),
        ("ORCHARD_CLUSTERS_PONG_WAIT", "2"),
    ]);
    let admin = d.admin_token().await;
    let mut s = open_anonymous(&d).await;
    sync(&d, &admin, &mut [&mut s]).await;
    let seen = s.open_for(Duration::from_secs(5)).await;
    assert!(seen.is_empty(), "no events without changes: {seen:?}");
    assert!(s.pings >= 3, "pings every second; got {}", s.pings);
    roundtrip(&d, &admin, &mut s).await;
}

#[tokio::test]
async fn a_silent_client_is_dropped() {
    let d = daemon(&[
        ("ORCHARD_CLUSTERS_PING_INTERVAL", "1"),
        ("ORCHARD_CLUSTERS_PONG_WAIT", "2"),
    ]);
    let mut raw = RawClient::handshake(&d, "/ws").await;
    assert!(
        raw.read_until_dropped(Duration::from_secs(10)).await,
        "a client that never answers pings is dropped after the pong wait"
    );
    assert!(
        raw.opcodes.contains(&OP_PING),
        "the server pinged first: {:?}",
        raw.opcodes
    );
}
