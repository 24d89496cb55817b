//! `GET /metrics` and the logs (issue 14): the exposition is parsed with PyPI
//! `prometheus_client`'s strict OpenMetrics parser (pinned in `tests/metrics/requirements.txt`,
//! run by `tests/metrics/parse.py` in a virtualenv), scraped while WebSocket traffic, logins,
//! an agent and a slow consumer move the counters; every label value must come from a fixed
//! set. And `log.format = "json"`: every stderr line is one JSON object.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::channels::Chan;
use crate::harness::{Daemon, eventually, python_venv};
use crate::ws::{flood_until_4008, stalled_client};
use crate::wsclient::Connect;

const T: Duration = Duration::from_secs(20);

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample of one scrape.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; fails if there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?}; names: {:?}",
                self.0.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    }

    /// `orchard_logins_total` by result: success, failure, rate_limited.
    fn logins(&self) -> [f64; 3] {
        ["success", "failure", "rate_limited"]
            .map(|result| self.get("orchard_logins_total", &[("result", result)]))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn python() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics");
        python_venv("metrics-venv", &dir.join("requirements.txt")).join("bin/python")
    })
}

/// Parses an exposition with the strict OpenMetrics parser; fails the test if it rejects it.
fn parse(text: &str) -> Scrape {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics/parse.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    Scrape(
        v.into_iter()
            .map(|s| Sample {
                family: s["family"].as_str().expect("family").to_owned(),
                name: s["name"].as_str().expect("name").to_owned(),
                labels: serde_json::from_value(s["labels"].clone()).expect("labels"),
                value: s["value"].as_f64().expect("value"),
            })
            .collect(),
    )
}

/// `GET /metrics` (anyone: no token), parsed.
async fn scrape(d: &Daemon) -> Scrape {
    let r = d.get("/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    parse(&r.text)
}

const APIS: [&str; 7] = [
    "machines", "channels", "agents", "vms", "console", "clusters", "echo",
];

/// Every label of every sample is one the daemon documents, with a value from its fixed set:
/// no user name, token, machine or server id can become a label.
fn assert_bounded_labels(s: &Scrape, secrets: &[&str]) {
    for sample in &s.0 {
        assert!(
            sample.family.starts_with("orchard_") || sample.family.starts_with("process_"),
            "unprefixed metric {}",
            sample.family
        );
        for (k, v) in &sample.labels {
            let ok = match k.as_str() {
                "api" => APIS.contains(&v.as_str()),
                "code" => v == "other" || (v.len() == 4 && v.bytes().all(|b| b.is_ascii_digit())),
                "result" => ["success", "failure", "rate_limited"].contains(&v.as_str()),
                "poll" => ["state", "connections", "disks"].contains(&v.as_str()),
                "reason" => ["evicted", "per_ip", "full"].contains(&v.as_str()),
                "plugin" => v == "simulator",
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                _ => false,
            };
            assert!(ok, "unexpected label {k}={v:?} on {}", sample.name);
            for secret in secrets {
                assert!(
                    !v.contains(secret),
                    "{secret:?} in label {k} of {}",
                    sample.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_sockets_logins_agents_alerts_and_slow_consumers() {
    let d = Daemon::builder()
        .env("ORCHARD_WS_SEND_QUEUE", "8")
        .env("ORCHARD_AUTH_LOGIN_MAX_FAILURES", "2")
        // No threshold alert from this machine's own figures: the only alert is the agent
        // host going offline.
        .env("ORCHARD_ALERTS_DISK_WARNING", "1000")
        .env("ORCHARD_ALERTS_DISK_CRITICAL", "1001")
        .env("ORCHARD_ALERTS_MEMORY_WARNING", "1000")
        .env("ORCHARD_ALERTS_MEMORY_CRITICAL", "1001")
        .start();
    let before = scrape(&d).await;
    for api in APIS {
        assert_eq!(before.get("orchard_ws_connections", &[("api", api)]), 0.0);
        assert_eq!(
            before.get("orchard_ws_messages_sent_total", &[("api", api)]),
            0.0
        );
    }
    assert_eq!(before.logins(), [0.0, 0.0, 0.0]);
    assert_eq!(
        before.get("orchard_backend_up", &[("plugin", "simulator")]),
        1.0
    );
    assert_eq!(before.get("orchard_agent_hosts_online", &[]), 0.0);
    assert_eq!(before.get("orchard_alerts_active", &[]), 0.0);
    assert!(before.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(before.get("process_open_fds", &[]) >= 3.0);
    assert!(before.get("process_start_time_seconds", &[]) > 1.6e9);
    // The first start committed its writes.
    assert!(before.get("orchard_db_commit_duration_seconds_count", &[]) >= 1.0);
    // The state poll runs every second (`machines.dynamic_interval`).
    eventually(T, "a timed state poll of the simulator", || async {
        let s = scrape(&d).await;
        let polls = s.find(
            "orchard_backend_poll_duration_seconds_count",
            &[("plugin", "simulator"), ("poll", "state")],
        );
        let errors = s.find(
            "orchard_backend_poll_errors_total",
            &[("plugin", "simulator"), ("poll", "state")],
        );
        (polls >= Some(1.0) && errors == Some(0.0)).then_some(())
    })
    .await;

    // Logins: one success, two failures, then the limiter refuses that name.
    let admin = d.admin_token().await;
    for _ in 0..2 {
        assert_eq!(d.try_login("nobody", "wrong-password").await.status, 401);
    }
    assert_eq!(d.try_login("nobody", "wrong-password").await.status, 429);

    // Sockets on three APIs, one refused with 4401, and an agent.
    let mut machines = Connect::new(&d, "/ws/machines/global")
        .access_token(&admin)
        .open()
        .await;
    machines.initial(T).await;
    let channels = Connect::new(&d, "/ws").access_token(&admin).open().await;
    let clusters = Connect::new(&d, "/ws/clusters")
        .access_token(&admin)
        .open()
        .await;
    let mut refused = Connect::new(&d, "/ws/machines/global")
        .access_token("not-a-token")
        .open()
        .await;
    refused.expect_close(4401, T).await;
    let server = d
        .post(
            "/api/v1/servers",
            Some(&admin),
            &json!({"name": "metrics-host"}),
        )
        .await
        .expect(201);
    let mut agent = Chan::open_raw(&d, "/api/v1/agents/ws").await;
    agent
        .send(&json!({"type": "auth", "api_key": server["api_key"]}))
        .await;
    agent
        .expect(T, "auth_success", |v| v["type"] == "auth_success")
        .await;

    // A message is counted once its write returns, which can be a moment after the peer
    // has read it.
    let during = eventually(T, "the agent's auth_success counted", || async {
        let s = scrape(&d).await;
        (s.get("orchard_ws_messages_sent_total", &[("api", "agents")]) >= 1.0).then_some(s)
    })
    .await;
    for api in ["machines", "channels", "clusters", "agents"] {
        assert!(
            during.get("orchard_ws_connections", &[("api", api)]) >= 1.0,
            "{api} connections"
        );
    }
    assert_eq!(during.get("orchard_agent_hosts_online", &[]), 1.0);
    assert_eq!(during.get("orchard_alerts_active", &[]), 0.0);
    assert!(during.get("orchard_ws_messages_sent_total", &[("api", "machines")]) >= 4.0);
    assert!(during.get("orchard_ws_sent_bytes_total", &[("api", "machines")]) > 100.0);
    assert!(during.get("orchard_ws_messages_sent_total", &[("api", "agents")]) >= 1.0);
    assert!(
        during.get(
            "orchard_ws_closes_total",
            &[("api", "machines"), ("code", "4401")]
        ) >= 1.0
    );
    assert_eq!(
        during.logins(),
        [1.0, 2.0, 1.0],
        "success, failure, rate_limited"
    );
    assert!(
        during.get("orchard_db_commit_duration_seconds_count", &[])
            > before.get("orchard_db_commit_duration_seconds_count", &[])
    );

    // The counters keep moving while the stream flows.
    let sent = during.get("orchard_ws_messages_sent_total", &[("api", "machines")]);
    machines.next_of_type("DATA_DYNAMIC", T).await;
    eventually(T, "more machines messages counted", || async {
        let s = scrape(&d).await;
        (s.get("orchard_ws_messages_sent_total", &[("api", "machines")]) > sent).then_some(())
    })
    .await;

    // A client that stops reading is dropped as a slow consumer.
    let (_slow, m) = stalled_client(&d, &admin, "metrics-slow").await;
    flood_until_4008(&d, &admin, &m).await;
    let after = eventually(T, "the slow consumer and its 4008 counted", || async {
        let s = scrape(&d).await;
        let slow = s.get("orchard_ws_slow_consumers_total", &[("api", "machines")]);
        let closes = s.find(
            "orchard_ws_closes_total",
            &[("api", "machines"), ("code", "4008")],
        );
        (slow >= 1.0 && closes >= Some(1.0)).then_some(s)
    })
    .await;

    // Gone sockets are no longer open connections.
    drop((channels, clusters, agent));
    eventually(T, "closed sockets leave the gauges", || async {
        let s = scrape(&d).await;
        let open = |api| s.get("orchard_ws_connections", &[("api", api)]);
        (open("channels") == 0.0 && open("clusters") == 0.0 && open("agents") == 0.0).then_some(())
    })
    .await;
    // The agent host is offline, which raises its "Host offline" alert.
    eventually(T, "the agent host offline, with its alert", || async {
        let s = scrape(&d).await;
        let online = s.get("orchard_agent_hosts_online", &[]);
        (online == 0.0 && s.get("orchard_alerts_active", &[]) == 1.0).then_some(())
    })
    .await;

    let server_id = server["server_id"].as_str().expect("server_id");
    let key = server["api_key"].as_str().expect("api_key");
    let me = d.me(&admin).await;
    let admin_uuid = me["uuid"].as_str().expect("uuid");
    for s in [&before, &during, &after] {
        assert_bounded_labels(
            s,
            &[
                &admin, key, server_id, admin_uuid, &m, "admin", "nobody", "metrics-",
            ],
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_startup_summary() {
    let mut d = Daemon::builder().env("ORCHARD_LOG_FORMAT", "json").start();
    // A failed login and a bad WebSocket add lines of other kinds.
    assert_eq!(d.try_login("admin", "wrong-password").await.status, 401);
    let mut c = Connect::new(&d, "/ws/machines/global")
        .access_token("not-a-token")
        .open()
        .await;
    c.expect_close(4401, T).await;
    assert!(d.terminate().success());
    let logs = d.logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}\n{logs}"));
            assert!(v.is_object(), "not an object: {l}");
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
            v
        })
        .collect();
    assert!(lines.len() >= 4, "{logs}");
    let summary = lines
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        })
        .unwrap_or_else(|| panic!("no start-up summary in\n{logs}"));
    let listener = summary["listener"].as_str().unwrap_or_default();
    assert!(listener.starts_with("http://127.0.0.1:"), "{summary}");
    assert_eq!(summary["plugins"], "simulator=loaded", "{summary}");
    assert_eq!(summary["data_dir"], d.data_dir_str(), "{summary}");
    assert!(
        !logs.contains(crate::harness::ADMIN_PASSWORD) && !logs.contains("wrong-password"),
        "a password in the logs"
    );
}
