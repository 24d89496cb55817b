//! Security and connection-fault tests (issue 13): forged and broken tokens on every
//! WebSocket and REST route, live revocation on every socket kind, foreign origins, secrets
//! that must never leak, console and ownership rules, and connection floods, slow and
//! stopped clients; accounts under attack (issue 21: oversized login names, privilege
//! climbing through password resets, password guessing). What each test promises is in `tests/RELIABILITY.md`.
//!
//! The sockets are read with `vms::Sock` accepting every API's message shape, so a test can
//! assert that nothing but the documented refusal came before a close.

mod accounts;
mod faults;
mod origin;
mod ownership;
mod revocation;
mod secrets;
mod tokens;

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Daemon, uuid_of};
use crate::machines::{create_machine, power_ok, wait_status};
pub use crate::vms::{Sock, T};

/// The contract's deadline for closing revoked sockets.
pub const REVOKE_WITHIN: Duration = Duration::from_secs(2);

/// Accepts any message shape: the tests here look at messages themselves.
fn any_shape(_: &Value) {}

/// Opens `path_and_query` on `d` (token-less, or with it in the query); fails the test if
/// the upgrade is refused.
pub async fn open(d: &Daemon, path_and_query: &str) -> Sock {
    Sock::open(
        &format!("ws://{}{path_and_query}", d.addr()),
        None,
        any_shape,
    )
    .await
}

/// Opens `path` with the token as `Authorization: Bearer`.
pub async fn open_bearer(d: &Daemon, path: &str, token: &str) -> Sock {
    Sock::open(&format!("ws://{}{path}", d.addr()), Some(token), any_shape).await
}

/// Creates an agent server; returns its id and API key.
pub async fn create_server(d: &Daemon, admin: &str, name: &str) -> (String, String) {
    let v = d
        .post("/api/v1/servers", Some(admin), &json!({"name": name}))
        .await
        .expect(201);
    let id = v["server_id"].as_str().expect("server_id").to_owned();
    let key = v["api_key"].as_str().expect("api_key").to_owned();
    (id, key)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Every WebSocket endpoint that takes a user's token, by API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A: `/ws/machines/{subscribed,account,global}`.
    Subscribed,
    Account,
    Global,
    /// B: `/ws` with a token.
    Channels,
    /// D: `/ws/clusters` with a token.
    Clusters,
    /// E: `/ws/vms/{name}` and `/ws/vms/{name}/console`.
    Monitor,
    Console,
    /// C: `/api/v1/ws/{metrics,logs}/{server_id}` (token in the first message).
    Metrics,
    Logs,
}

pub const KINDS: [Kind; 9] = [
    Kind::Subscribed,
    Kind::Account,
    Kind::Global,
    Kind::Channels,
    Kind::Clusters,
    Kind::Monitor,
    Kind::Console,
    Kind::Metrics,
    Kind::Logs,
];

/// A daemon with a running VM and an agent server, and its admin token.
pub struct World {
    pub d: Daemon,
    pub admin: String,
    pub vm: String,
    pub vm_uuid: String,
    pub server_id: String,
    pub api_key: String,
}

pub const VM: &str = "sec-vm";

impl World {
    pub async fn new(env: &[(&str, &str)]) -> Self {
        let mut b = Daemon::builder();
        for (k, v) in env {
            b = b.env(k, v);
        }
        let d = b.start();
        let admin = d.admin_token().await;
        let m = create_machine(
            &d,
            &admin,
            &json!({"backend": "simulator", "title": VM, "vcpu": 1, "ram_mib": 256}),
        )
        .await;
        let vm_uuid = uuid_of(&m);
        power_ok(&d, &admin, &vm_uuid, "start").await;
        wait_status(&d, &admin, &vm_uuid, "running").await;
        let v = d
            .post(
                "/api/v1/servers",
                Some(&admin),
                &json!({"name": "sec-host"}),
            )
            .await
            .expect(201);
        let server_id = v["server_id"].as_str().expect("server_id").to_owned();
        let api_key = v["api_key"].as_str().expect("api_key").to_owned();
        Self {
            d,
            admin,
            vm: VM.to_owned(),
            vm_uuid,
            server_id,
            api_key,
        }
    }

    /// The path of `kind`'s endpoint (without a query).
    pub fn path(&self, kind: Kind) -> String {
        match kind {
            Kind::Subscribed => "/ws/machines/subscribed".into(),
            Kind::Account => "/ws/machines/account".into(),
            Kind::Global => "/ws/machines/global".into(),
            Kind::Channels => "/ws".into(),
            Kind::Clusters => "/ws/clusters".into(),
            Kind::Monitor => format!("/ws/vms/{}", self.vm),
            Kind::Console => format!("/ws/vms/{}/console", self.vm),
            Kind::Metrics => format!("/api/v1/ws/metrics/{}", self.server_id),
            Kind::Logs => format!("/api/v1/ws/logs/{}", self.server_id),
        }
    }

    /// Opens `kind` with `token` the way its API takes it (`?access_token=`, or the first
    /// message on C's streams), without waiting for anything.
    pub async fn open(&self, kind: Kind, token: &str) -> Sock {
        let path = self.path(kind);
        match kind {
            Kind::Metrics | Kind::Logs => {
                let mut ws = open(&self.d, &path).await;
                ws.send_json(&json!({"type": "auth", "token": token})).await;
                ws
            }
            _ => open(&self.d, &format!("{path}?access_token={}", enc(token))).await,
        }
    }

    /// Opens `kind` with a valid `token` and waits until the socket is admitted (its first
    /// data, or a round trip that proves it).
    pub async fn open_ready(&self, kind: Kind, token: &str) -> Sock {
        let mut ws = self.open(kind, token).await;
        self.ready(kind, &mut ws).await;
        ws
    }

    pub async fn ready(&self, kind: Kind, ws: &mut Sock) {
        match kind {
            Kind::Subscribed | Kind::Account | Kind::Global => {
                ws.recv_where(T, "DATA_STATIC", |v| v["type"] == "DATA_STATIC")
                    .await;
            }
            Kind::Channels => {
                ws.send_json(&json!({"type": "ping", "id": "ready"})).await;
                ws.recv_where(T, "pong", |v| v["type"] == "pong").await;
            }
            Kind::Clusters => {
                // Admitted once it receives an event: create a cluster and await it.
                let name = format!("ready-{}", std::process::id() ^ rand_u32());
                let r = self
                    .d
                    .post(
                        "/api/clusters",
                        Some(&self.admin),
                        &json!({"name": name, "machines": []}),
                    )
                    .await;
                assert!((200..300).contains(&r.status), "create cluster: {}", r.text);
                ws.recv_where(T, "the cluster.added event", |v| {
                    v["type"] == "cluster.added" && v["data"]["name"] == name.as_str()
                })
                .await;
            }
            Kind::Monitor | Kind::Console => {
                ws.recv_where(T, "connection", |v| v["type"] == "connection")
                    .await;
            }
            Kind::Metrics | Kind::Logs => {
                ws.recv_where(T, "auth_success", |v| v["type"] == "auth_success")
                    .await;
            }
        }
    }
}

/// A fresh number for unique names.
fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(2_654_435_761)
}

/// Whether `v` is one of the refusal messages `kind`'s API documents before a 4401/4403 —
/// never data.
pub fn is_refusal(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Subscribed | Kind::Account | Kind::Global | Kind::Clusters => false,
        Kind::Channels => v["type"] == "error" && v["data"]["code"] == "AUTH_FAILED",
        Kind::Monitor | Kind::Console => v["type"] == "error" && v["data"]["code"] == "AUTH_ERROR",
        Kind::Metrics | Kind::Logs => v["type"] == "error",
    }
}

/// The daemon's PID (found by its unique data directory on its command line).
pub fn daemon_pid(d: &Daemon) -> u32 {
    let needle = d.data_dir_str();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.contains(&needle) {
            return pid;
        }
    }
    panic!("no `orchard serve` process with data dir {needle}");
}

/// A field of `/proc/<pid>/status` in kB (VmRSS) or as a count (Threads).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
