//! The containers backend plugin (`plugins/containers`) loaded into the real daemon, against
//! a real Docker engine: `.ci/run` starts `dockerd` on a private socket and exports it as
//! `ORCHARD_TEST_DOCKER_SOCK`. Without it these tests fail, saying so.
//!
//! The image is made here: a rootfs of Debian's busybox-static, `docker import`ed (no
//! registry is reachable). Every container a test makes carries the label `orchard-it` and
//! is removed when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backend_util::{backend, global, launch_with_settings};
use crate::fixtures::containers_plugin;
use crate::harness::{Daemon, eventually, orchard_command, run_to_exit, stderr_of, stdout_of};
use crate::machines::{detail, list_machines, power, power_ok, wait_status};
use crate::vms::{Got, Sock, type_in, ws_url};
use crate::ws::LIFECYCLE;
use crate::wsclient::WsClient;

/// Generous: tests run in parallel on two cores.
const T: Duration = Duration::from_secs(30);

/// The image every test uses: busybox, running a shell loop that exits at once on SIGTERM.
const IMAGE: &str = "orchard-it-busybox:1";

fn engine_socket() -> String {
    std::env::var("ORCHARD_TEST_DOCKER_SOCK").unwrap_or_else(|_| {
        panic!(
            "ORCHARD_TEST_DOCKER_SOCK is not set: the containers tests need a Docker engine \
             (.ci/run installs docker.io, starts dockerd on a private socket and exports it)"
        )
    })
}

fn docker(args: &[&str]) -> Output {
    let sock = engine_socket();
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{sock}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI (apt docker.io): {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker run -d --name NAME --label orchard-it OPTIONS… IMAGE COMMAND…` (the test image).
fn run_container(name: &str, options: &[&str], command: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--label", "orchard-it"];
    args.extend_from_slice(options);
    args.push(image());
    args.extend_from_slice(command);
    docker_ok(&args);
}

/// Imports the busybox image once per test run.
fn image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing (apt busybox-static): the test image is made from it"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).expect("rootfs");
        std::fs::create_dir_all(root.join("tmp")).expect("rootfs");
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(busybox)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if !applet.is_empty() && applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        let tar = dir.path().join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {out:?}");
        docker_ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#,
            "--change",
            "ENV PATH=/bin",
            &tar.to_string_lossy(),
            IMAGE,
        ]);
    });
    IMAGE
}

/// A name no other test uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Removes the named containers when the test ends, however it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Never panics (it may run while a failed test unwinds).
        let Ok(sock) = std::env::var("ORCHARD_TEST_DOCKER_SOCK") else {
            return;
        };
        for name in &self.0 {
            let _ = Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{sock}"))
                .args(["rm", "-f", name])
                .output();
        }
    }
}

/// A daemon with the containers plugin only and these `[plugins.settings.containers]` lines
/// (the engine's socket unless `settings` names one).
fn daemon_with(settings: &str) -> Daemon {
    let d = Daemon::builder()
        .plugin(&containers_plugin())
        .env("ORCHARD_PLUGINS_BUILTIN_SIMULATOR", "false")
        .env("ORCHARD_MACHINES_CONNECTIONS_INTERVAL", "1")
        .build();
    let socket = if settings.contains("socket") {
        String::new()
    } else {
        format!("socket = \"{}\"\n", engine_socket())
    };
    let body = format!("{socket}stop_timeout_seconds = 5\n{settings}");
    launch_with_settings(d, "containers", &body)
}

/// What most tests start with: a fresh name (its container removed at the end), a daemon,
/// an admin token and the global machines socket.
struct Setup {
    name: String,
    d: Daemon,
    admin: String,
    g: WsClient,
    _cleanup: Cleanup,
}

async fn setup(prefix: &str) -> Setup {
    let name = unique(prefix);
    let cleanup = Cleanup(vec![name.clone()]);
    let d = daemon_with("");
    let admin = d.admin_token().await;
    let g = global(&d, &admin, T).await;
    Setup {
        name,
        d,
        admin,
        g,
        _cleanup: cleanup,
    }
}

/// The lifecycle event types of `uuid`, in order, up to the first that ends `phase`.
async fn events_until_end_of(c: &mut WsClient, uuid: &str, phase: &str) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    while !seen.iter().any(|(t, _): &(String, Value)| {
        t == &format!("{phase}_SUCCESS") || t == &format!("{phase}_FAIL")
    }) {
        let v = c
            .next_matching(T, &format!("the end of {phase} of {uuid}"), |v| {
                LIFECYCLE.iter().any(|t| v["type"] == *t) && v["body"]["uuid"] == uuid
            })
            .await;
        seen.push((
            v["type"].as_str().unwrap_or_default().to_owned(),
            v["body"].clone(),
        ));
    }
    seen
}

/// Expects `phase` of `uuid` to start and fail; returns the failure's reason.
async fn failure_of(c: &mut WsClient, uuid: &str, phase: &str) -> String {
    let events = events_until_end_of(c, uuid, phase).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, [format!("{phase}_START"), format!("{phase}_FAIL")]);
    events[1].1["error"].as_str().unwrap_or_default().to_owned()
}

async fn types_until_end_of(c: &mut WsClient, uuid: &str, phase: &str) -> Vec<String> {
    events_until_end_of(c, uuid, phase)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// Asks for `action` and returns the lifecycle events up to the end of `phase`.
async fn act(s: &mut Setup, uuid: &str, action: &str, phase: &str) -> Vec<String> {
    power_ok(&s.d, &s.admin, uuid, action).await;
    types_until_end_of(&mut s.g, uuid, phase).await
}

async fn machine_titled(d: &Daemon, token: &str, title: &str) -> Value {
    eventually(T, &format!("{title} in the machine list"), || async {
        list_machines(d, token)
            .await
            .into_iter()
            .find(|m| m["title"] == title)
    })
    .await
}

async fn create(d: &Daemon, token: &str, title: &str, extra_tags: &[&str]) -> Value {
    let mut tags = vec![format!("image={}", image()), "orchard-it".to_owned()];
    tags.extend(extra_tags.iter().map(|t| (*t).to_owned()));
    d.post(
        "/api/machines",
        Some(token),
        &json!({"backend": "containers", "title": title, "vcpu": 1, "ram_mib": 64,
                "description": "made by a test", "tags": tags}),
    )
    .await
    .expect(201)
}

#[tokio::test]
async fn lists_containers_with_properties_and_state() {
    let name = unique("orchard-it-props");
    let _c = Cleanup(vec![name.clone()]);
    let port = 20_000 + (std::process::id() % 20_000);
    let volume = tempfile::tempdir().expect("tempdir");
    let (publish, mount) = (
        format!("{port}:80"),
        format!("{}:/data", volume.path().display()),
    );
    run_container(
        &name,
        &[
            "--label", "env=it", "--cpus", "1", "--memory", "96m", "-p", &publish, "-v", &mount,
        ],
        &[],
    );
    let id = docker_ok(&["inspect", "--format", "{{.Id}}", &name]);
    let d = daemon_with("");
    let admin = d.admin_token().await;
    let b = backend(&d, &admin, "containers").await;
    assert_eq!(b["status"], "loaded", "{b}");
    for cap in ["create", "delete", "console", "events"] {
        assert!(
            b["capabilities"]
                .as_array()
                .is_some_and(|c| c.iter().any(|x| x == cap)),
            "capability {cap}: {b}"
        );
    }
    let m = machine_titled(&d, &admin, &name).await;
    assert_eq!(m["kind"], "container", "{m}");
    assert_eq!(m["backend"], "containers", "{m}");
    assert_eq!(m["vcpu"], 1, "{m}");
    assert_eq!(m["ram_max"], 96, "{m}");
    assert_eq!(
        m["tags"],
        json!(["env=it", "orchard-it"]),
        "labels as tags: {m}"
    );
    assert_eq!(
        m["connections"]["80/tcp"],
        format!("0.0.0.0:{port}"),
        "the published port: {m}"
    );
    // Podman names a local image localhost/….
    assert!(
        m["connections"]["image"]
            .as_str()
            .is_some_and(|i| i.ends_with(IMAGE)),
        "{m}"
    );
    let disks = m["disks"].as_array().expect("disks");
    assert!(
        disks
            .iter()
            .any(|d| d["system"] == true && d["name"] == "rootfs"),
        "{m}"
    );
    assert!(
        disks
            .iter()
            .any(|d| d["system"] == false && d["name"] == "/data" && d["type"] == "bind"),
        "the mount as a disk: {m}"
    );
    // The uuid is derived from the container id alone: the same for a second daemon.
    let uuid = m["uuid"].as_str().expect("uuid").to_owned();
    let other = daemon_with("");
    let token = other.admin_token().await;
    let again = machine_titled(&other, &token, &name).await;
    assert_eq!(
        again["uuid"],
        uuid.as_str(),
        "stable uuid for container {id}"
    );

    let state = eventually(T, "the first bulk state", || async {
        let s = detail(&d, &admin, &uuid).await["state"].clone();
        (s["status"] == "running").then_some(s)
    })
    .await;
    assert_eq!(state["vcpu"], 1, "{state}");
    assert_eq!(state["ram_max"], 96, "{state}");
    assert!(
        state["boot_timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{state}"
    );
}

#[tokio::test]
async fn every_action_emits_its_lifecycle_events() {
    let mut s = setup("orchard-it-actions").await;
    let (admin, title) = (s.admin.clone(), s.name.clone());

    let m = create(&s.d, &admin, &title, &["role=web"]).await;
    let uuid = m["uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(m["kind"], "container", "{m}");
    assert_eq!(m["vcpu"], 1, "{m}");
    assert_eq!(m["ram_max"], 64, "{m}");
    assert_eq!(m["description"], "made by a test", "{m}");
    assert_eq!(m["tags"], json!(["orchard-it", "role=web"]), "{m}");
    // The limits are the engine's own.
    let limits = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
        &title,
    ]);
    assert_eq!(limits, format!("1000000000 {}", 64 << 20));
    s.g.next_matching(T, "CREATE of the new container", |v| {
        v["type"] == "CREATE" && v["body"]["uuid"] == uuid.as_str()
    })
    .await;
    wait_status(&s.d, &admin, &uuid, "stopped").await;

    let boot = ["BOOTUP_START", "BOOTUP_SUCCESS"];
    let down = ["SHUTDOWN_START", "SHUTDOWN_SUCCESS"];
    assert_eq!(act(&mut s, &uuid, "start", "BOOTUP").await, boot);
    wait_status(&s.d, &admin, &uuid, "running").await;

    power_ok(&s.d, &admin, &uuid, "suspend").await;
    wait_status(&s.d, &admin, &uuid, "paused").await;
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.Status}}", &title]),
        "paused"
    );
    power(&s.d, &admin, &uuid, "suspend")
        .await
        .expect_any_error(409);
    power_ok(&s.d, &admin, &uuid, "resume").await;
    wait_status(&s.d, &admin, &uuid, "running").await;

    assert_eq!(
        act(&mut s, &uuid, "restart", "BOOTUP").await,
        [down, boot].concat()
    );
    wait_status(&s.d, &admin, &uuid, "running").await;

    // A stop is SIGTERM, which the image's shell answers by exiting: well within the timeout.
    let before = Instant::now();
    assert_eq!(act(&mut s, &uuid, "stop", "SHUTDOWN").await, down);
    assert!(before.elapsed() < Duration::from_secs(5), "a graceful stop");
    wait_status(&s.d, &admin, &uuid, "stopped").await;
    power(&s.d, &admin, &uuid, "stop")
        .await
        .expect_any_error(409);

    // A stop of a paused container unpauses it first.
    act(&mut s, &uuid, "start", "BOOTUP").await;
    power_ok(&s.d, &admin, &uuid, "suspend").await;
    wait_status(&s.d, &admin, &uuid, "paused").await;
    assert_eq!(act(&mut s, &uuid, "stop", "SHUTDOWN").await, down);

    // Force off is a kill.
    act(&mut s, &uuid, "start", "BOOTUP").await;
    power_ok(&s.d, &admin, &uuid, "force_off").await;
    wait_status(&s.d, &admin, &uuid, "stopped").await;
    let exit = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &title]);
    assert_eq!(exit, "137", "killed with SIGKILL");

    s.d.delete(&format!("/api/machines/{uuid}"), Some(&admin))
        .await
        .expect(204);
    s.g.next_matching(T, "DELETE of the container", |v| {
        v["type"] == "DELETE" && v["body"]["uuid"] == uuid.as_str()
    })
    .await;
    let list = list_machines(&s.d, &admin).await;
    assert!(list.iter().all(|m| m["uuid"] != uuid.as_str()), "{list:?}");
    let gone = docker(&["inspect", &title]);
    assert!(
        !gone.status.success(),
        "the container is removed from the engine"
    );
}

#[tokio::test]
async fn engine_side_changes_become_events_and_failures() {
    let Setup {
        name,
        d,
        admin,
        mut g,
        ..
    } = setup("orchard-it-outside").await;
    // Made, started and exiting with an error behind Orchard's back.
    run_container(&name, &[], &["/bin/sh", "-c", "sleep 1; exit 3"]);
    let created = g
        .next_matching(T, "CREATE of the outside container", |v| {
            v["type"] == "CREATE" && v["body"]["title"] == name.as_str()
        })
        .await;
    let uuid = created["body"]["uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(
        types_until_end_of(&mut g, &uuid, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_SUCCESS"]
    );
    let error = failure_of(&mut g, &uuid, "SHUTDOWN").await;
    assert!(
        error.contains("code 3"),
        "the exit code in the failure: {error}"
    );
    wait_status(&d, &admin, &uuid, "error").await;
    // A start clears it; a stop from outside is no failure.
    power_ok(&d, &admin, &uuid, "start").await;
    types_until_end_of(&mut g, &uuid, "BOOTUP").await;
    docker_ok(&["kill", &name]);
    assert_eq!(
        types_until_end_of(&mut g, &uuid, "SHUTDOWN").await,
        ["SHUTDOWN_START", "SHUTDOWN_SUCCESS"]
    );
    wait_status(&d, &admin, &uuid, "stopped").await;
    docker_ok(&["rm", &name]);
    g.next_matching(T, "DELETE of the removed container", |v| {
        v["type"] == "DELETE" && v["body"]["uuid"] == uuid.as_str()
    })
    .await;
}

#[tokio::test]
async fn create_refuses_bad_specs() {
    let d = daemon_with("");
    let admin = d.admin_token().await;
    let post = |body: Value| {
        let d = &d;
        let admin = &admin;
        async move { d.post("/api/machines", Some(admin), &body).await }
    };
    let title = unique("orchard-it-bad");
    let image_tag = format!("image={}", image());
    post(
        json!({"backend": "containers", "title": title, "vcpu": 1000, "ram_mib": 64,
                "tags": [image_tag]}),
    )
    .await
    .expect_any_error(400);
    post(json!({"backend": "containers", "title": title, "vcpu": 1, "ram_mib": 64}))
        .await
        .expect_any_error(400);
    post(
        json!({"backend": "containers", "title": title, "vcpu": 1, "ram_mib": 64,
                "kind": "vm", "tags": [image_tag]}),
    )
    .await
    .expect_any_error(400);
    post(
        json!({"backend": "containers", "title": title, "vcpu": 1, "ram_mib": 64,
                "tags": ["image=orchard-it-no-such-image:1"]}),
    )
    .await
    .expect_any_error(400);
    let out = docker(&["inspect", &title]);
    assert!(!out.status.success(), "nothing was made");
}

#[tokio::test]
async fn stats_while_a_container_burns_cpu() {
    let burner = unique("orchard-it-burn");
    let idle = unique("orchard-it-idle");
    let _c = Cleanup(vec![burner.clone(), idle.clone()]);
    run_container(
        &burner,
        &["--cpus", "1", "--memory", "64m"],
        &["/bin/sh", "-c", "while :; do :; done"],
    );
    run_container(&idle, &[], &[]);
    let d = daemon_with("");
    let admin = d.admin_token().await;
    let hot = machine_titled(&d, &admin, &burner).await["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let cold = machine_titled(&d, &admin, &idle).await["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let state = eventually(T, "the burner's CPU use over 30 %", || async {
        let s = detail(&d, &admin, &hot).await["state"].clone();
        (s["cpu_percent"].as_f64().unwrap_or(0.0) > 30.0).then_some(s)
    })
    .await;
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["ram_max"], 64, "{state}");
    let cpu = eventually(T, "a CPU figure for the idle container", || async {
        let s = detail(&d, &admin, &cold).await["state"].clone();
        s["cpu_percent"]
            .as_f64()
            .filter(|_| s["status"] == "running")
    })
    .await;
    assert!(cpu < 20.0, "the idle container is idle: {cpu}");
}

async fn open_console(d: &Daemon, name: &str, token: &str) -> Sock {
    let url = ws_url(d, &format!("/ws/vms/{name}/console"), &[("token", token)]);
    let mut s = Sock::open(&url, None, |v| {
        assert!(
            v["type"].is_string() && v["data"].is_object(),
            "envelope: {v}"
        )
    })
    .await;
    let first = s.recv(T).await;
    assert_eq!(first["type"], "connection", "{first}");
    s
}

/// Reads console output until `want` appears in it.
async fn console_shows(s: &mut Sock, buf: &mut String, want: &str) {
    let deadline = Instant::now() + T;
    while !buf.contains(want) {
        match s.next_until(deadline).await {
            Some(Got::Msg(v)) if v["type"] == "console" => {
                buf.push_str(v["data"]["content"].as_str().unwrap_or_default())
            }
            Some(Got::Msg(_)) => {}
            other => panic!("waiting for {want:?} on the console: {other:?}; so far {buf:?}"),
        }
    }
}

#[tokio::test]
async fn console_round_trip_with_resize() {
    let title = unique("orchard-it-console");
    let _c = Cleanup(vec![title.clone()]);
    let d = daemon_with("");
    let admin = d.admin_token().await;
    let m = create(&d, &admin, &title, &[]).await;
    let uuid = m["uuid"].as_str().expect("uuid").to_owned();
    power_ok(&d, &admin, &uuid, "start").await;
    wait_status(&d, &admin, &uuid, "running").await;

    let mut s = open_console(&d, &title, &admin).await;
    s.send_json(
        &json!({"type": "console_resize", "timestamp": "2024-05-23T12:34:56Z",
                        "data": {"cols": 101, "rows": 33}}),
    )
    .await;
    let mut buf = String::new();
    // The shell inside the container computes the answer: it did not come from the input.
    type_in(&mut s, "echo orchard-$((6*7)); stty size\r").await;
    console_shows(&mut s, &mut buf, "orchard-42").await;
    console_shows(&mut s, &mut buf, "33 101").await;

    // A console closed by its client ends its shell in the container.
    let shells = || {
        docker_ok(&["top", &title, "-o", "pid,args"])
            .lines()
            .filter(|l| l.trim().ends_with(" /bin/sh"))
            .count()
    };
    let other = open_console(&d, &title, &admin).await;
    eventually(T, "the second console's shell", || async {
        (shells() == 2).then_some(())
    })
    .await;
    other.close().await;
    eventually(T, "the closed console's shell to exit", || async {
        (shells() == 1).then_some(())
    })
    .await;

    // The container stops: the session ends.
    power_ok(&d, &admin, &uuid, "stop").await;
    s.expect_close(1000, T).await;
}

#[tokio::test]
async fn not_operational_without_an_engine_and_reconnects_when_it_comes_and_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock: PathBuf = dir.path().join("docker.sock");
    let name = unique("orchard-it-late");
    let _c = Cleanup(vec![name.clone()]);
    let d = daemon_with(&format!(
        "socket = \"{}\"\nreconnect_seconds = 0.2",
        sock.display()
    ));
    let admin = d.admin_token().await;
    let b = eventually(T, "the reason on the backend", || async {
        let b = backend(&d, &admin, "containers").await;
        b["last_error"].is_string().then_some(b)
    })
    .await;
    assert_eq!(b["status"], "loaded", "it keeps looking for an engine: {b}");
    let why = b["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("not operational") && why.contains(&sock.display().to_string()),
        "the reason names the problem: {b}"
    );
    d.get("/healthz", None).await.expect(200);
    let r = d
        .post(
            "/api/machines",
            Some(&admin),
            &json!({"backend": "containers", "title": name, "vcpu": 1, "ram_mib": 64,
                    "tags": [format!("image={}", image())]}),
        )
        .await;
    assert!(r.status >= 500, "no engine, no create: {}", r.json());

    // The engine appears at the configured path: the plugin connects and lists.
    docker_ok(&["create", "--name", &name, "--label", "orchard-it", image()]);
    let proxy = Proxy::start(&sock);
    let m = machine_titled(&d, &admin, &name).await;
    assert_eq!(m["kind"], "container", "{m}");
    let uuid = m["uuid"].as_str().expect("uuid").to_owned();
    power_ok(&d, &admin, &uuid, "start").await;
    wait_status(&d, &admin, &uuid, "running").await;

    // The engine goes away (every connection to it drops): calls fail (at once), and say
    // why once the plugin has seen its event stream end.
    drop(proxy);
    eventually(T, "calls saying the backend is not operational", || async {
        let r = power(&d, &admin, &uuid, "stop").await;
        assert_ne!(r.status, 202, "a stop without an engine: {}", r.json());
        let why = r.json().to_string();
        (why.contains("not operational") && why.contains(&sock.display().to_string())).then_some(())
    })
    .await;
    // …and it comes back: the plugin reconnects and the container can be driven again.
    let _proxy = Proxy::start(&sock);
    eventually(T, "the plugin to reconnect", || async {
        (power(&d, &admin, &uuid, "stop").await.status == 202).then_some(())
    })
    .await;
    wait_status(&d, &admin, &uuid, "stopped").await;
}

/// A stand-in for an engine that comes and goes: forwards connections on `path` to the
/// test engine's socket; dropping it closes the socket and every connection through it.
struct Proxy {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Proxy {
    fn start(path: &Path) -> Self {
        let listener = tokio::net::UnixListener::bind(path).expect("bind the proxy socket");
        let target = engine_socket();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        Self {
            task,
            path: path.to_owned(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn plugin_check_passes_against_the_engine() {
    let settings = json!({"socket": engine_socket(), "image": image(), "stop_timeout_seconds": 5});
    let mut cmd = orchard_command();
    cmd.args(["plugin", "check"])
        .arg(containers_plugin())
        .arg("--settings")
        .arg(settings.to_string());
    let out = run_to_exit(cmd, None, Duration::from_secs(120));
    let report = stdout_of(&out);
    assert!(
        out.status.success() && !report.contains("FAIL"),
        "plugin check:\n{report}\nstderr:\n{}",
        stderr_of(&out)
    );
    let wanted = [
        "create",
        "event machine_created",
        "power suspend",
        "restart: event boot_success",
        "console output",
        "console_resize",
        "power force_off",
        "delete",
    ];
    for step in wanted {
        assert!(
            report.contains(&format!("ok    {step}")),
            "{step:?} in:\n{report}"
        );
    }
}

#[tokio::test]
async fn a_start_the_engine_refuses_is_a_boot_failure() {
    let mut s = setup("orchard-it-badstart").await;
    let name = s.name.clone();
    docker_ok(&[
        "create",
        "--name",
        &name,
        "--label",
        "orchard-it",
        image(),
        "/nonexistent",
    ]);
    let uuid = machine_titled(&s.d, &s.admin, &name).await["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    power_ok(&s.d, &s.admin, &uuid, "start").await;
    let error = failure_of(&mut s.g, &uuid, "BOOTUP").await;
    assert!(
        error.contains("/nonexistent"),
        "the engine's reason: {error}"
    );
    wait_status(&s.d, &s.admin, &uuid, "stopped").await;
}
