//! Agents (`api-docs/C-agents-and-server-streams.md`, contract 3, 4.3 and 7) against the
//! real daemon and real `orchard agent` processes on loopback: `/api/v1/servers`, the agent
//! socket (auth ok / wrong / revoked / late, metrics in both shapes, `request_id`, one agent
//! per server, a disconnect mid-command), `host_status` / `host_metrics` / `fleet_status`
//! fed by agents, `command_execution` and `package_operations` through an agent, and the
//! per-server metrics and logs streams.
//!
//! Everything waits on messages with deadlines; nothing sleeps for a fixed time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::channels::{self, Chan, Got};
use crate::harness::{Daemon, orchard_command, uuid_of};

/// How long any expected message may take (generous: tests run in parallel).
const T: Duration = Duration::from_secs(20);

/// A daemon with `env` and thresholds that raise no disk or memory alert.
fn daemon(env: &[(&str, &str)]) -> Daemon {
    channels::daemon(&channels::quiet_alerts(env))
}

async fn create_server(d: &Daemon, token: &str, name: &str) -> (String, String) {
    let v = d
        .post("/api/v1/servers", Some(token), &json!({"name": name}))
        .await
        .expect(201);
    let id = v["server_id"].as_str().expect("server_id").to_owned();
    let key = v["api_key"].as_str().expect("api_key").to_owned();
    (id, key)
}

/// A daemon started with `env`, its admin token, and a new server `name` with its key in a
/// file: `(daemon, admin token, server id, key file)`.
async fn with_server(
    env: &[(&str, &str)],
    name: &str,
) -> (Daemon, String, String, std::path::PathBuf) {
    let d = daemon(env);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, name).await;
    let kf = key_file(&d, &key);
    (d, admin, id, kf)
}

// ----- the channels client, with what the agent tests add -----

/// The agent tests' additions to the channels client: the agent socket, the per-server
/// streams and `command`s.
impl Chan {
    /// A raw agent socket, authenticated with `key`; returns it with the `auth_success`.
    async fn agent(d: &Daemon, key: &str) -> (Self, Value) {
        let mut a = Self::open_raw(d, "/api/v1/agents/ws").await;
        a.send(&json!({"type": "auth", "api_key": key})).await;
        let ok = a.next(T).await;
        assert_eq!(ok["type"], "auth_success", "{ok}");
        (a, ok)
    }

    /// A per-server stream socket (`metrics` or `logs`), authenticated.
    async fn stream(d: &Daemon, kind: &str, server_id: &str, token: &str) -> Self {
        let mut s = Self::open_raw(d, &format!("/api/v1/ws/{kind}/{server_id}")).await;
        s.send(&json!({"type": "auth", "token": token})).await;
        let ok = s.next(T).await;
        assert_eq!(ok["type"], "auth_success", "{ok}");
        s
    }

    async fn next(&mut self, within: Duration) -> Value {
        self.expect(within, "any message", |_| true).await
    }

    /// Waits on a `host_status` socket for the host `id` to come online.
    async fn online(&mut self, id: &str) {
        self.expect(T, "online", |v| status_event(v, id, "online"))
            .await;
    }

    /// Runs `command` on the host `host` through `command_execution` (request `id`) and
    /// returns the answer.
    async fn run_command(&mut self, host: &str, command: &str, id: &str) -> Value {
        self.command(
            "command_execution",
            json!({"host_id": host, "command": command}),
            id,
            T,
        )
        .await
    }

    /// Sends a channels `command` and returns the answer with that id.
    async fn command(&mut self, channel: &str, data: Value, id: &str, within: Duration) -> Value {
        self.send(&json!({"type": "command", "channel": channel, "data": data, "id": id}))
            .await;
        self.expect(within, &format!("the answer to {id}"), |v| {
            v["id"] == id && (v["type"] == "response" || v["type"] == "error")
        })
        .await
    }
}

fn event_of(v: &Value, channel: &str) -> bool {
    v["type"] == "event" && v["channel"] == channel
}

fn status_event(v: &Value, host: &str, status: &str) -> bool {
    event_of(v, "host_status") && v["data"]["host_id"] == host && v["data"]["status"] == status
}

/// A channels socket subscribed to `host_status` for the host `id`.
async fn status_watch(d: &Daemon, token: &str, id: &str) -> Chan {
    let mut c = Chan::open(d, token).await;
    c.subscribe("host_status", Some(json!({"host_id": id})))
        .await;
    c
}

// ----- a real agent process -----

struct Agent {
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Agent {
    fn start(d: &Daemon, key_file: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_with_env(d, key_file, extra, &[])
    }

    fn start_with_env(
        d: &Daemon,
        key_file: &std::path::Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        Self::spawn(&format!("ws://{}", d.addr()), key_file, extra, env)
    }

    fn spawn(
        server: &str,
        key_file: &std::path::Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let mut cmd = orchard_command();
        cmd.arg("agent")
            .arg("--server")
            .arg(server)
            .arg("--api-key-file")
            .arg(key_file)
            .args(["--metrics-interval", "0.5"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn orchard agent");
        let logs = Arc::new(Mutex::new(String::new()));
        let l = logs.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Self { child, logs }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn key_file(d: &Daemon, key: &str) -> std::path::PathBuf {
    let p = d.root().join(format!("key-{}", &key[key.len() - 8..]));
    std::fs::write(&p, format!("{key}\n")).unwrap();
    p
}

/// An executable `name` running `script`, alone in a new directory `dir` under the daemon's
/// root. Returns the directory and a `PATH` that has it first.
fn fake_bin(d: &Daemon, dir: &str, name: &str, script: &str) -> (std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let bin = d.root().join(dir);
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join(name);
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (bin, path)
}

// ----- REST -----

#[tokio::test]
async fn servers_are_created_listed_and_deleted_and_the_key_is_shown_once() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "web-01").await;
    assert!(key.len() >= 40, "a long random key: {key}");
    let list = d.get("/api/v1/servers", Some(&admin)).await.expect(200);
    // The built-in local host comes first, online, and cannot be deleted.
    let local = &list[0];
    assert_eq!(local["local"], true, "{list}");
    assert_eq!(local["status"], "online", "{list}");
    let local_id = local["server_id"].as_str().unwrap().to_owned();
    d.delete(&format!("/api/v1/servers/{local_id}"), Some(&admin))
        .await
        .expect_error(409, "conflict");
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert_eq!(s["name"], "web-01");
    assert_eq!(s["status"], "offline");
    assert!(!list.to_string().contains(&key), "the key is never listed");
    let one = d
        .get(&format!("/api/v1/servers/{id}"), Some(&admin))
        .await
        .expect(200);
    assert_eq!(one["server_id"], id.as_str());
    let stored = std::fs::read(d.data_dir().join("orchard.redb")).unwrap_or_default();
    assert!(
        !stored.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key is stored hashed"
    );

    // Permissions: listing needs VIEW_ALL_VMS, creating and deleting MANAGE_SYSTEM_RESOURCES.
    let viewer = d
        .create_user(
            &admin,
            "viewer",
            "viewer-password-1",
            "client",
            &["VIEW_ALL_VMS"],
        )
        .await;
    let _ = uuid_of(&viewer);
    let vt = d.login("viewer", "viewer-password-1").await;
    d.get("/api/v1/servers", Some(&vt)).await.expect(200);
    d.post("/api/v1/servers", Some(&vt), &json!({"name": "x"}))
        .await
        .expect_error(403, "forbidden");
    d.delete(&format!("/api/v1/servers/{id}"), Some(&vt))
        .await
        .expect_error(403, "forbidden");
    d.get("/api/v1/servers", None)
        .await
        .expect_error(401, "unauthorized");
    d.post("/api/v1/servers", Some(&admin), &json!({"name": ""}))
        .await
        .expect_error(400, "bad_request");

    let r = d
        .delete(&format!("/api/v1/servers/{id}"), Some(&admin))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    d.delete(&format!("/api/v1/servers/{id}"), Some(&admin))
        .await
        .expect_error(404, "not_found");
    let list = d.get("/api/v1/servers", Some(&admin)).await.expect(200);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the local host: {list}"
    );
}

// ----- the agent socket -----

#[tokio::test]
async fn agent_auth_ok_wrong_late_and_revoked() {
    let d = daemon(&[("ORCHARD_AGENTS_AUTH_TIMEOUT", "1")]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "web-01").await;

    // Wrong key: the document's error, then a close.
    let mut a = Chan::open_raw(&d, "/api/v1/agents/ws").await;
    a.send(&json!({"type": "auth", "api_key": "orch_wrong"}))
        .await;
    let e = a.next(T).await;
    assert_eq!(
        e,
        json!({"type": "error", "message": "Invalid or inactive API key"})
    );
    assert_eq!(a.close_code(T).await, 4401);

    // Nothing sent: closed after agents.auth_timeout.
    let mut late = Chan::open_raw(&d, "/api/v1/agents/ws").await;
    assert_eq!(late.close_code(T).await, 4401);

    // Right key.
    let (mut a, ok) = Chan::agent(&d, &key).await;
    assert_eq!(ok["server_id"], id.as_str(), "{ok}");
    assert!(ok["message"].is_string(), "{ok}");
    // A malformed message is answered, and the socket stays.
    a.send(&json!({"type": "nonsense"})).await;
    let e = a.next(T).await;
    assert_eq!(
        e,
        json!({"type": "error", "message": "Invalid message format"})
    );

    // Deleting the server revokes the key and closes the live socket.
    let r = d
        .delete(&format!("/api/v1/servers/{id}"), Some(&admin))
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(a.close_code(T).await, 4401);
    let mut again = Chan::open_raw(&d, "/api/v1/agents/ws").await;
    again.send(&json!({"type": "auth", "api_key": key})).await;
    let e = again.next(T).await;
    assert_eq!(e["message"], "Invalid or inactive API key", "{e}");
    assert_eq!(again.close_code(T).await, 4401);
}

#[tokio::test]
async fn agent_metrics_in_both_shapes_feed_host_channels_and_the_metrics_stream() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("fleet_status", None).await;
    let (id, key) = create_server(&d, &admin, "web-02").await;
    // A new server changes the fleet totals at once.
    c.expect(T, "fleet with the new server", |v| {
        event_of(v, "fleet_status")
            && v["data"]["total_hosts"] == 2
            && v["data"]["offline_hosts"] == 1
    })
    .await;
    c.subscribe("host_status", Some(json!({"host_id": id})))
        .await;
    // Registered but never connected: offline.
    c.expect(T, "the initial offline status", |v| {
        status_event(v, &id, "offline")
    })
    .await;
    c.subscribe("host_metrics", Some(json!({"host_id": id})))
        .await;
    c.subscribe("fleet_status", None).await;
    let mut m = Chan::stream(&d, "metrics", &id, &admin).await;

    let (mut a, _) = Chan::agent(&d, &key).await;
    let e = c
        .expect(T, "host online", |v| status_event(v, &id, "online"))
        .await;
    assert_eq!(e["data"]["previous_status"], "offline", "{e}");
    assert_eq!(e["data"]["hostname"], "web-02", "{e}");

    // Flat shape (the document's), with a server_id that is ignored. The figures are relayed
    // as sent, never rounded (only the UI rounds, for display).
    a.send(
        &json!({"type": "metrics", "server_id": "someone-else", "cpu_percent": 41.75,
        "memory_percent": 62.125,
        "disk_usage": [{"mount": "/", "total_bytes": 1000, "used_bytes": 250},
                       {"mount": "/var", "percent": 33.333}],
        "network": [{"interface": "eth0", "rx_bytes": 10, "tx_bytes": 20}],
        "load_average": [0.5, 0.25, 0.125], "timestamp": "2024-01-01T00:00:00Z"}),
    )
    .await;
    let e = c
        .expect(T, "host_metrics of the agent", |v| {
            event_of(v, "host_metrics")
        })
        .await;
    assert_eq!(e["data"]["host_id"], id.as_str(), "{e}");
    let mm = &e["data"]["metrics"];
    assert_eq!(mm["cpu_usage"], 41.75, "{e}");
    assert_eq!(mm["memory_usage"], 62.125, "{e}");
    assert_eq!(mm["disk_usage"]["/"], 25.0, "{e}");
    assert_eq!(mm["disk_usage"]["/var"], 33.333, "{e}");
    assert_eq!(mm["disks"][0]["total_bytes"], 1000, "{e}");
    assert_eq!(mm["network"][0]["tx_bytes"], 20, "{e}");
    assert_eq!(mm["load_average"], json!([0.5, 0.25, 0.125]), "{e}");
    let s = m
        .expect(T, "a metrics message", |v| v["type"] == "metrics")
        .await;
    assert_eq!(s["data"]["cpu_percent"], 41.75, "{s}");
    assert_eq!(s["data"]["memory_percent"], 62.125, "{s}");
    assert_eq!(s["data"]["disk_usage"]["/var"], 33.333, "{s}");
    assert!(s["timestamp"].is_string(), "{s}");

    // Nested under data.
    a.send(&json!({"type": "metrics", "data": {"cpu_percent": 12.5, "memory_percent": 30}}))
        .await;
    let e = c
        .expect(T, "nested metrics", |v| {
            event_of(v, "host_metrics") && v["data"]["metrics"]["cpu_usage"] == 12.5
        })
        .await;
    assert_eq!(e["data"]["metrics"]["memory_usage"], 30.0, "{e}");
    m.expect(T, "nested metrics on the stream", |v| {
        v["type"] == "metrics" && v["data"]["cpu_percent"] == 12.5
    })
    .await;

    // Fleet totals count the agent host: two hosts, both online.
    c.expect(T, "fleet with the agent online", |v| {
        event_of(v, "fleet_status")
            && v["data"]["total_hosts"] == 2
            && v["data"]["online_hosts"] == 2
    })
    .await;

    // The socket goes away: offline, with previous_status online.
    drop(a);
    let e = c
        .expect(T, "host offline", |v| status_event(v, &id, "offline"))
        .await;
    assert_eq!(e["data"]["previous_status"], "online", "{e}");
}

#[tokio::test]
async fn one_agent_per_server_the_newer_replaces_the_older() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "dup").await;
    let mut c = Chan::open(&d, &admin).await;
    let (mut first, _) = Chan::agent(&d, &key).await;
    let (mut second, _) = Chan::agent(&d, &key).await;
    assert_eq!(first.close_code(T).await, 4409);
    // Still online, and commands go to the newer connection.
    c.subscribe("command_execution", None).await;
    c.send(&json!({"type": "command", "channel": "command_execution",
        "data": {"host_id": id, "command": "true"}, "id": "c1"}))
        .await;
    let job = second
        .expect(T, "the command", |v| v["type"] == "command")
        .await;
    // `request_id` is accepted in place of `command_id`.
    second
        .send(
            &json!({"type": "command_response", "request_id": job["command_id"],
            "exit_code": 0, "stdout": "ok", "stderr": "", "duration_ms": 5}),
        )
        .await;
    let r = c.expect(T, "the response", |v| v["id"] == "c1").await;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["data"]["stdout"], "ok", "{r}");
    assert_eq!(r["data"]["execution_time"], 0.005, "{r}");
}

#[tokio::test]
async fn an_agent_gone_mid_command_fails_it_cleanly() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "flaky").await;
    let (mut a, _) = Chan::agent(&d, &key).await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("fleet_status", None).await;
    c.send(&json!({"type": "command", "channel": "command_execution",
        "data": {"host_id": id, "command": "sleep 100", "timeout": 30}, "id": "c1"}))
        .await;
    let job = a.expect(T, "the command", |v| v["type"] == "command").await;
    assert_eq!(job["command"], "sleep 100", "{job}");
    assert_eq!(job["timeout"], 30, "{job}");
    assert!(job["command_id"].is_string(), "{job}");
    c.expect(T, "a pending operation", |v| {
        event_of(v, "fleet_status") && v["data"]["pending_operations"] == 1
    })
    .await;
    drop(a);
    let r = c.expect(T, "the failure", |v| v["id"] == "c1").await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["data"]["code"], "COMMAND_FAILED", "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap()
            .contains("disconnected"),
        "{r}"
    );
    c.expect(T, "no pending operation", |v| {
        event_of(v, "fleet_status") && v["data"]["pending_operations"] == 0
    })
    .await;
}

#[tokio::test]
async fn agent_messages_are_limited_to_one_mebibyte() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (_, key) = create_server(&d, &admin, "big").await;
    let (mut a, _) = Chan::agent(&d, &key).await;
    // Under the limit is fine (a command output of half a mebibyte).
    let half = "x".repeat(512 * 1024);
    a.send(&json!({"type": "log", "level": "INFO", "message": half}))
        .await;
    let over = "x".repeat(1024 * 1024 + 16);
    a.send(&json!({"type": "log", "level": "INFO", "message": over}))
        .await;
    assert_eq!(a.close_code(T).await, 1009);
}

// ----- real `orchard agent` processes -----

#[tokio::test]
async fn a_real_agent_reports_metrics_and_runs_commands_when_allowed() {
    let (d, admin, id, kf) = with_server(&[], "real").await;
    let mut c = status_watch(&d, &admin, &id).await;
    c.subscribe("host_metrics", Some(json!({"host_id": id})))
        .await;
    c.subscribe("command_execution", None).await;
    let mut m = Chan::stream(&d, "metrics", &id, &admin).await;
    let agent = Agent::start(&d, &kf, &["--allow-commands"]);

    c.expect(T, "the agent's host online", |v| {
        status_event(v, &id, "online")
    })
    .await;
    let e = c
        .expect(T, "the agent's metrics", |v| event_of(v, "host_metrics"))
        .await;
    let mm = &e["data"]["metrics"];
    assert!(
        mm["cpu_usage"].is_number() && mm["memory_usage"].as_f64().unwrap() > 0.0,
        "{e}"
    );
    assert!(mm["load_average"].is_array(), "{e}");
    let s = m
        .expect(T, "metrics on the stream", |v| v["type"] == "metrics")
        .await;
    assert!(s["data"]["memory_percent"].as_f64().unwrap() > 0.0, "{s}");

    let r = c
        .run_command(&id, "echo hello; echo oops >&2; exit 3", "run-1")
        .await;
    assert_eq!(r["type"], "response", "{r}; agent log:\n{}", agent.logs());
    assert_eq!(r["channel"], "command_execution");
    let data = &r["data"];
    assert_eq!(data["status"], "completed", "{r}");
    assert_eq!(data["exit_code"], 3, "a non-zero exit is a response: {r}");
    assert_eq!(data["stdout"], "hello\n", "{r}");
    assert_eq!(data["stderr"], "oops\n", "{r}");
    assert_eq!(data["host_id"], id.as_str(), "{r}");
    assert!(data["execution_id"].is_string(), "{r}");
    assert!(data["execution_time"].is_number(), "{r}");

    // Audited.
    let activity = d.get("/api/activity", Some(&admin)).await.expect(200);
    assert!(
        activity
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "command.execute"
                && e["target"] == id.as_str()
                && e["detail"].as_str().unwrap_or("").contains("echo hello")),
        "{activity}"
    );

    // The output went to the sender only.
    let mut other = Chan::open(&d, &admin).await;
    other.subscribe("command_execution", None).await;
    let r = c.run_command(&id, "echo again", "run-2").await;
    assert_eq!(r["data"]["stdout"], "again\n", "{r}");
    other.send(&json!({"type": "ping", "id": "fence"})).await;
    let before = other
        .collect_until(T, "the fence", |v| {
            v["type"] == "pong" && v["id"] == "fence"
        })
        .await;
    assert!(
        !before
            .iter()
            .any(|v| v["id"] == "run-2" || v["data"]["stdout"].is_string()),
        "another socket saw the output: {before:?}"
    );
}

#[tokio::test]
async fn an_agent_without_allow_commands_refuses_them() {
    let (d, admin, id, kf) = with_server(&[], "careful").await;
    let mut c = status_watch(&d, &admin, &id).await;
    let _agent = Agent::start(&d, &kf, &[]);
    c.online(&id).await;
    let r = c.run_command(&id, "touch /tmp/never", "r").await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["data"]["code"], "COMMAND_FAILED", "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-commands"),
        "a clear refusal: {r}"
    );
    // Package operations are refused the same way.
    let r = c
        .command(
            "package_operations",
            json!({"host_id": id, "operation": "install", "package": "nginx"}),
            "p",
            T,
        )
        .await;
    assert_eq!(r["data"]["code"], "COMMAND_FAILED", "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-commands"),
        "{r}"
    );
}

#[tokio::test]
async fn a_command_times_out_after_agents_command_timeout() {
    let (d, admin, id, kf) = with_server(&[("ORCHARD_AGENTS_COMMAND_TIMEOUT", "1")], "slow").await;
    let mut c = status_watch(&d, &admin, &id).await;
    let _agent = Agent::start(&d, &kf, &["--allow-commands"]);
    c.online(&id).await;
    // The client asks for more; the configured limit wins.
    let r = c
        .command(
            "command_execution",
            json!({"host_id": id, "command": "sleep 30", "timeout": 60}),
            "slow-1",
            T,
        )
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["data"]["code"], "COMMAND_FAILED", "{r}");
    assert!(
        r["data"]["message"].as_str().unwrap().contains("timed out"),
        "{r}"
    );
}

#[tokio::test]
async fn a_killed_agent_goes_offline_and_a_restarted_one_comes_back() {
    let (d, admin, id, kf) = with_server(&[], "phoenix").await;
    let mut c = status_watch(&d, &admin, &id).await;
    c.subscribe("system_alerts", None).await;
    let mut agent = Agent::start(&d, &kf, &[]);
    c.online(&id).await;
    agent.kill();
    let e = c
        .expect(T, "offline", |v| status_event(v, &id, "offline"))
        .await;
    assert_eq!(e["data"]["previous_status"], "online", "{e}");
    // The host-offline rule applies to agent hosts as to the local one.
    c.expect(T, "a host offline alert", |v| {
        event_of(v, "system_alerts")
            && v["data"]["host_id"] == id.as_str()
            && v["data"]["category"] == "host_status"
            && v["data"]["state"] == "raised"
    })
    .await;
    let _agent = Agent::start(&d, &kf, &[]);
    let e = c
        .expect(T, "online again", |v| status_event(v, &id, "online"))
        .await;
    assert_eq!(e["data"]["previous_status"], "offline", "{e}");
}

#[tokio::test]
async fn the_agent_reconnects_after_the_daemon_restarts() {
    let mut d = daemon(&[]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "patient").await;
    let kf = key_file(&d, &key);
    // The same port after the restart, so the agent finds it again.
    let addr = d.addr().to_string();
    d.set_listen(&addr);
    let agent = Agent::start(&d, &kf, &[]);
    let online = |d: &Daemon, admin: String, id: String| {
        let client = d.client.clone();
        let url = d.url(&format!("/api/v1/servers/{id}"));
        async move {
            let v: Value = client
                .get(&url)
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["status"] == "online").then_some(())
        }
    };
    crate::harness::eventually(T, "the agent online", || {
        online(&d, admin.clone(), id.clone())
    })
    .await;
    d.restart();
    // A fresh HTTP client: the old one's pooled connections went with the old process.
    d.client = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin = d.admin_token().await;
    crate::harness::eventually(Duration::from_secs(40), "the agent back online", || {
        online(&d, admin.clone(), id.clone())
    })
    .await;
    assert!(agent.logs().contains("reconnecting"), "{}", agent.logs());
}

#[tokio::test]
async fn the_logs_stream_carries_agent_lines_and_the_daemons_events() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "chatty").await;
    let (other_id, _) = create_server(&d, &admin, "other").await;
    let kf = key_file(&d, &key);
    let log = d.root().join("app.log");
    std::fs::write(&log, "old line, never sent\n").unwrap();
    let mut logs = Chan::stream(&d, "logs", &id, &admin).await;
    let mut other = Chan::stream(&d, "logs", &other_id, &admin).await;
    let _agent = Agent::start(
        &d,
        &kf,
        &["--allow-commands", "--log-file", log.to_str().unwrap()],
    );
    let e = logs
        .expect(T, "the connect event", |v| {
            v["type"] == "log" && v["data"]["message"] == "agent connected"
        })
        .await;
    assert_eq!(e["data"]["level"], "INFO", "{e}");
    assert!(
        e["timestamp"].is_string() && e["data"]["timestamp"].is_string(),
        "{e}"
    );

    // Appended lines are forwarded (the agent may take a moment to start following).
    let deadline = Instant::now() + T;
    let mut n = 0;
    let got = loop {
        n += 1;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "ERROR something broke {n}").unwrap();
        let until = (Instant::now() + Duration::from_secs(2)).min(deadline);
        match logs.next_until(until).await {
            Some(Got::Msg(v)) if v["type"] == "log" && v["data"]["source"] == "agent" => break v,
            Some(Got::Msg(_)) | None if Instant::now() < deadline => {}
            other => panic!("no forwarded line: {other:?}"),
        }
    };
    assert!(
        got["data"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ERROR something broke"),
        "{got}"
    );
    assert_eq!(got["data"]["level"], "ERROR", "{got}");
    assert_eq!(got["data"]["origin"], log.to_str().unwrap(), "{got}");
    assert!(!logs.seen.is_empty());

    // A command run on the host is logged there.
    let mut c = Chan::open(&d, &admin).await;
    let r = c.run_command(&id, "true", "x").await;
    assert_eq!(r["type"], "response", "{r}");
    logs.expect(T, "the command's log line", |v| {
        v["type"] == "log"
            && v["data"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("runs: true")
    })
    .await;
    // Nothing of it reached another server's stream.
    other.send(&json!({"type": "ping"})).await;
    let before = other
        .collect_until(T, "a pong", |v| v["type"] == "pong")
        .await;
    assert_eq!(before.len(), 1, "another server's stream got {before:?}");
}

#[tokio::test]
async fn per_server_streams_need_a_valid_token_first() {
    let d = daemon(&[("ORCHARD_HOSTS_METRICS_INTERVAL", "1")]);
    let admin = d.admin_token().await;
    let (id, _) = create_server(&d, &admin, "s").await;
    let mut s = Chan::open_raw(&d, &format!("/api/v1/ws/metrics/{id}")).await;
    s.send(&json!({"type": "auth", "token": "not-a-token"}))
        .await;
    let e = s.next(T).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(s.close_code(T).await, 4401);
    let (_, nobody) = {
        let u = d
            .create_user(&admin, "nobody", "nobody-password-1", "client", &[])
            .await;
        (u, d.login("nobody", "nobody-password-1").await)
    };
    let mut s = Chan::open_raw(&d, &format!("/api/v1/ws/logs/{id}")).await;
    s.send(&json!({"type": "auth", "token": nobody})).await;
    assert_eq!(s.next(T).await["type"], "error");
    assert_eq!(s.close_code(T).await, 4403);
    let _ = Chan::stream(&d, "logs", &id, &admin).await;
    // Like every WebSocket, the token may also come with the request.
    let mut q = Chan::open_raw(&d, &format!("/api/v1/ws/logs/{id}?token={admin}")).await;
    assert_eq!(q.next(T).await["type"], "auth_success");
    q.send(&json!({"type": "auth", "token": admin})).await;
    assert_eq!(q.next(T).await["type"], "auth_success");
    // Unknown server: an error, then 4404.
    let mut s = Chan::open_raw(&d, "/api/v1/ws/metrics/no-such-server").await;
    s.send(&json!({"type": "auth", "token": admin})).await;
    assert_eq!(s.next(T).await["type"], "error");
    assert_eq!(s.close_code(T).await, 4404);
    // The local host is a server too: its stream carries the daemon's own samples.
    let list = d.get("/api/v1/servers", Some(&admin)).await.expect(200);
    let local = list[0]["server_id"].as_str().unwrap().to_owned();
    let mut m = Chan::stream(&d, "metrics", &local, &admin).await;
    m.expect(T, "the local host's metrics", |v| v["type"] == "metrics")
        .await;
}

#[tokio::test]
async fn package_operations_run_through_the_agent_with_progress() {
    let (d, admin, id, kf) = with_server(&[], "pkg").await;
    // A stand-in apt-get first on the agent's PATH, speaking apt's status protocol.
    let (bin, path) = fake_bin(
        &d,
        "fake-bin",
        "apt-get",
        "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\necho 'dlstatus:1:40:Retrieving file 1 of 1'\necho 'pmstatus:nginx:50:Unpacking nginx'\necho 'pmstatus:nginx:100:Installed nginx'\n",
    );
    let mut c = status_watch(&d, &admin, &id).await;
    c.subscribe("package_operations", Some(json!({"host_id": id})))
        .await;
    let _agent = Agent::start_with_env(&d, &kf, &["--allow-commands"], &[("PATH", path)]);
    c.online(&id).await;

    // Without MANAGE_SYSTEM_RESOURCES: refused.
    let u = d
        .create_user(
            &admin,
            "ops",
            "ops-password-123",
            "client",
            &["VIEW_ALL_VMS", "EXECUTE_COMMANDS"],
        )
        .await;
    let _ = uuid_of(&u);
    let ops = d.login("ops", "ops-password-123").await;
    let mut o = Chan::open(&d, &ops).await;
    let r = o
        .command(
            "package_operations",
            json!({"host_id": id, "operation": "install", "package": "nginx"}),
            "no",
            T,
        )
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert!(
        r["data"]["message"]
            .as_str()
            .unwrap()
            .contains("MANAGE_SYSTEM_RESOURCES"),
        "{r}"
    );

    c.send(&json!({"type": "command", "channel": "package_operations",
        "data": {"host_id": id, "operation": "install", "package": "nginx"}, "id": "p1"}))
        .await;
    let e = c
        .expect(T, "progress", |v| {
            event_of(v, "package_operations") && v["data"]["message"] == "Unpacking nginx"
        })
        .await;
    let data = &e["data"];
    assert_eq!(data["status"], "in_progress", "{e}");
    assert_eq!(data["progress"], 75.0, "{e}");
    assert_eq!(data["operation"], "install", "{e}");
    assert_eq!(data["package"], "nginx", "{e}");
    assert_eq!(data["host_id"], id.as_str(), "{e}");
    assert_eq!(data["hostname"], "pkg", "{e}");
    let r = c.expect(T, "the final answer", |v| v["id"] == "p1").await;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["data"]["status"], "completed", "{r}");
    assert_eq!(r["data"]["progress"], 100, "{r}");
    let args = std::fs::read_to_string(bin.join("args")).unwrap();
    assert!(
        args.contains("install") && args.trim_end().ends_with("nginx"),
        "{args}"
    );
}

#[tokio::test]
async fn the_local_host_runs_commands_only_with_agents_local_commands() {
    for (allowed, env) in [(false, "false"), (true, "true")] {
        let d = daemon(&[("ORCHARD_AGENTS_LOCAL_COMMANDS", env)]);
        let admin = d.admin_token().await;
        let list = d.get("/api/v1/servers", Some(&admin)).await.expect(200);
        let local = list[0]["server_id"].as_str().unwrap().to_owned();
        let mut c = Chan::open(&d, &admin).await;
        let r = c.run_command(&local, "echo local", "l").await;
        if allowed {
            assert_eq!(r["type"], "response", "{r}");
            assert_eq!(r["data"]["stdout"], "local\n", "{r}");
            assert_eq!(r["data"]["exit_code"], 0, "{r}");
        } else {
            assert_eq!(r["data"]["code"], "COMMAND_FAILED", "{r}");
            assert!(
                r["data"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("agents.local_commands"),
                "{r}"
            );
        }
    }
}

#[tokio::test]
async fn docker_commands_reach_the_docker_engine_api_through_the_agent() {
    let (d, admin, id, kf) = with_server(&[], "docker-host").await;
    // A stand-in Docker Engine on a unix socket: records the request line, answers 204.
    let sock = d.root().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let Ok(n) = s.read(&mut buf).await else { break };
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&got);
            let _ = seen_tx.send(head.lines().next().unwrap_or("").to_owned());
            let _ = s
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let mut c = status_watch(&d, &admin, &id).await;
    let _agent = Agent::start_with_env(
        &d,
        &kf,
        &["--allow-commands"],
        &[("DOCKER_HOST", format!("unix://{}", sock.display()))],
    );
    c.online(&id).await;
    let r = c
        .command(
            "command_execution",
            json!({"host_id": id, "docker": {"action": "restart", "container_id": "web_1"}}),
            "d1",
            T,
        )
        .await;
    assert_eq!(r["type"], "response", "{r}");
    assert_eq!(r["data"]["success"], true, "{r}");
    assert_eq!(r["data"]["message"], "Container restarted", "{r}");
    let line = tokio::time::timeout(T, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "POST /containers/web_1/restart HTTP/1.1");
    // A container id that could escape the path is refused before any request.
    let r = c
        .command(
            "command_execution",
            json!({"host_id": id, "docker": {"action": "start", "container_id": "../x"}}),
            "d2",
            T,
        )
        .await;
    assert_eq!(r["data"]["code"], "COMMAND_FAILED", "{r}");
}

#[tokio::test]
async fn the_agent_forwards_journal_entries_with_their_priority() {
    let (d, admin, id, kf) = with_server(&[], "journald").await;
    // A stand-in journalctl first on the agent's PATH: two entries, then it follows on.
    let (_, path) = fake_bin(
        &d,
        "fake-journal",
        "journalctl",
        "#!/bin/sh\necho '{\"MESSAGE\":\"disk almost full\",\"PRIORITY\":\"4\",\"SYSLOG_IDENTIFIER\":\"monitor\"}'\necho 'not json'\nexec sleep 5\n",
    );
    let mut logs = Chan::stream(&d, "logs", &id, &admin).await;
    let _agent = Agent::start_with_env(&d, &kf, &["--journal"], &[("PATH", path)]);
    let e = logs
        .expect(T, "the journal entry", |v| {
            v["type"] == "log" && v["data"]["message"] == "disk almost full"
        })
        .await;
    assert_eq!(e["data"]["level"], "WARNING", "{e}");
    assert_eq!(e["data"]["origin"], "monitor", "{e}");
    assert_eq!(e["data"]["source"], "agent", "{e}");
}

/// A stand-in server: accepts agents on loopback and hands each socket to the test.
async fn fake_server() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<WebSocketStream<TcpStream>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = tx.send(ws);
            }
        }
    });
    (url, rx)
}

async fn next_text<S>(ws: &mut WebSocketStream<S>, want: &str) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                // Whatever the real agent sends must be what the daemon documents receiving.
                if let Err(e) = crate::apidocs::received_message_conforms("/api/v1/agents/ws", &v) {
                    panic!("the agent sent what assets/api/asyncapi.yaml does not allow: {e}");
                }
                if v["type"] == want {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {want}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_agent_survives_bad_server_messages_and_reconnects_with_a_fresh_auth() {
    let root = tempfile::tempdir().unwrap();
    let kf = root.path().join("key");
    std::fs::write(&kf, "orch_test_key\n").unwrap();
    let (url, mut conns) = fake_server().await;
    let agent = Agent::spawn(&url, &kf, &[], &[]);

    let mut ws = tokio::time::timeout(T, conns.recv())
        .await
        .unwrap()
        .unwrap();
    let auth = next_text(&mut ws, "auth").await;
    assert_eq!(auth["api_key"], "orch_test_key", "{auth}");
    ws.send(Message::text(
        r#"{"type":"auth_success","server_id":"s1","message":"ok"}"#,
    ))
    .await
    .unwrap();
    let m = next_text(&mut ws, "metrics").await;
    assert_eq!(m["server_id"], "s1", "{m}");
    assert!(
        m["cpu_percent"].is_number() && m["memory_percent"].is_number(),
        "{m}"
    );
    assert!(m["disk_usage"].is_array() && m["network"].is_array(), "{m}");
    for bad in [
        "not json",
        "[1,2,3]",
        r#"{"type":5}"#,
        r#"{"type":"command"}"#,
        r#"{"type":"command","command_id":{"x":1},"command":7,"timeout":-1}"#,
        r#"{"type":"docker_command","command_id":"d"}"#,
        r#"{"type":"package_operation","command_id":"p","operation":"x"}"#,
        r#"{"type":"something_new"}"#,
    ] {
        ws.send(Message::text(bad)).await.unwrap();
    }
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    // Still alive: it answers a real command (with the refusal: no --allow-commands).
    ws.send(Message::text(
        r#"{"type":"command","command_id":"c1","command":"true","timeout":5}"#,
    ))
    .await
    .unwrap();
    let r = loop {
        let r = next_text(&mut ws, "command_response").await;
        if r["command_id"] == "c1" {
            break r;
        }
    };
    assert!(
        r["error"].as_str().unwrap().contains("--allow-commands"),
        "{r}"
    );

    // The server goes away: the agent reconnects and authenticates again.
    drop(ws);
    let mut ws = tokio::time::timeout(Duration::from_secs(30), conns.recv())
        .await
        .expect("a reconnect")
        .unwrap();
    let auth = next_text(&mut ws, "auth").await;
    assert_eq!(auth["api_key"], "orch_test_key", "{auth}");
    // A refusal is not fatal either: it tries again later.
    ws.send(Message::text(
        r#"{"type":"error","message":"Invalid or inactive API key"}"#,
    ))
    .await
    .unwrap();
    drop(ws);
    let mut ws = tokio::time::timeout(Duration::from_secs(30), conns.recv())
        .await
        .expect("another reconnect")
        .unwrap();
    next_text(&mut ws, "auth").await;
    let logs = agent.logs();
    assert!(logs.contains("Invalid or inactive API key"), "{logs}");
    assert!(
        !logs.contains("orch_test_key"),
        "the key is never logged: {logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn the_agent_speaks_wss_and_verifies_the_server_against_ca_file() {
    let root = tempfile::tempdir().unwrap();
    let kf = root.path().join("key");
    std::fs::write(&kf, "orch_tls_key\n").unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = root.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![ck.cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut conns) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            if let Ok(ws) = tokio_tungstenite::accept_async(tls).await {
                let _ = tx.send(ws);
            }
        }
    });
    let url = format!("wss://localhost:{port}");

    // Verified against --ca-file: authenticates over TLS.
    let ca_arg = ca.to_str().unwrap().to_owned();
    let trusting = Agent::spawn(&url, &kf, &["--ca-file", &ca_arg], &[]);
    let mut ws = tokio::time::timeout(T, conns.recv())
        .await
        .unwrap()
        .unwrap();
    let auth = next_text(&mut ws, "auth").await;
    assert_eq!(auth["api_key"], "orch_tls_key", "{auth}");
    drop(ws);
    drop(trusting);

    // Without it the self-signed certificate is refused, and nothing is sent.
    let doubting = Agent::spawn(&url, &kf, &[], &[]);
    crate::harness::eventually(T, "a refused certificate in the agent's log", || {
        let logs = doubting.logs();
        async move { logs.contains("TLS handshake").then_some(()) }
    })
    .await;
    assert!(
        conns.try_recv().is_err(),
        "no WebSocket without a verified server"
    );
}

#[tokio::test]
async fn the_agent_refuses_plain_ws_beyond_loopback() {
    let root = tempfile::tempdir().unwrap();
    let kf = root.path().join("key");
    std::fs::write(&kf, "k\n").unwrap();
    for server in ["ws://example.invalid:8080", "http://192.0.2.1"] {
        let mut cmd = orchard_command();
        cmd.args(["agent", "--server", server, "--api-key-file"])
            .arg(&kf);
        let out = crate::harness::run_to_exit(cmd, None, crate::harness::EXIT_TIMEOUT);
        let err = crate::harness::assert_clean_failure(&out);
        assert!(err.contains("loopback"), "{server}: {err}");
    }
}

#[tokio::test]
async fn alerts_about_a_server_reach_its_streams() {
    let d = daemon(&[]);
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "watched").await;
    let mut logs = Chan::stream(&d, "logs", &id, &admin).await;
    let mut metrics = Chan::stream(&d, "metrics", &id, &admin).await;
    let (a, _) = Chan::agent(&d, &key).await;
    logs.expect(T, "the connect line", |v| {
        v["type"] == "log" && v["data"]["message"] == "agent connected"
    })
    .await;
    drop(a);
    let alert = |v: &Value| {
        v["type"] == "alert"
            && v["data"]["category"] == "host_status"
            && v["data"]["state"] == "raised"
            && v["data"]["host_id"] == id.as_str()
    };
    logs.expect(T, "the disconnect line", |v| {
        v["type"] == "log" && v["data"]["message"] == "agent disconnected"
    })
    .await;
    let e = logs.expect(T, "the offline alert", alert).await;
    assert_eq!(e["data"]["severity"], "critical", "{e}");
    logs.expect(T, "the alert's log line", |v| {
        v["type"] == "log"
            && v["data"]["level"] == "CRITICAL"
            && v["data"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("Host offline")
    })
    .await;
    metrics
        .expect(T, "the offline alert on the metrics stream", alert)
        .await;
}

#[tokio::test]
async fn threshold_rules_apply_to_agent_metrics() {
    let d = Daemon::builder()
        .env("ORCHARD_ALERTS_DISK_WARNING", "80")
        .env("ORCHARD_ALERTS_DISK_CRITICAL", "90")
        .env("ORCHARD_ALERTS_MEMORY_WARNING", "1000")
        .env("ORCHARD_ALERTS_MEMORY_CRITICAL", "1001")
        .start();
    let admin = d.admin_token().await;
    let (id, key) = create_server(&d, &admin, "full-disk").await;
    let mut c = Chan::open(&d, &admin).await;
    c.subscribe("system_alerts", None).await;
    let (mut a, _) = Chan::agent(&d, &key).await;
    a.send(
        &json!({"type": "metrics", "cpu_percent": 1, "memory_percent": 2,
        "disk_usage": [{"mount": "/data", "percent": 95}]}),
    )
    .await;
    let is_disk = |v: &Value, state: &str| {
        event_of(v, "system_alerts")
            && v["data"]["host_id"] == id.as_str()
            && v["data"]["category"] == "disk_space"
            && v["data"]["state"] == state
    };
    let e = c.expect(T, "a disk alert", |v| is_disk(v, "raised")).await;
    assert_eq!(e["data"]["severity"], "critical", "{e}");
    assert_eq!(e["data"]["hostname"], "full-disk", "{e}");
    assert!(
        e["data"]["message"].as_str().unwrap().contains("/data"),
        "{e}"
    );
    a.send(
        &json!({"type": "metrics", "data": {"cpu_percent": 1, "memory_percent": 2,
        "disk_usage": {"/data": 10}}}),
    )
    .await;
    c.expect(T, "the alert cleared", |v| is_disk(v, "cleared"))
        .await;
}
