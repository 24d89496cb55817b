//! Backend plugins loaded at run time: broken libraries are reported and do not take the
//! daemon down, a C plugin and the simulator as a `.so` work, a panicking or hanging plugin
//! is marked failed while everything else keeps serving, and `orchard plugin check`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixtures::{c_plugin, example_c, panic_plugin, simulator_plugin};
use crate::harness::{
    Daemon, EXIT_TIMEOUT, eventually, orchard_command, run_to_exit, stderr_of, stdout_of, uuid_of,
};
use crate::machines::{
    assert_detail, assert_properties, by_title, detail, list_machines, power, power_ok, status,
    wait_status,
};

async fn backends(d: &Daemon, token: &str) -> Vec<Value> {
    let body = d.get("/api/backends", Some(token)).await.expect(200);
    let list = body
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/backends is not an array: {body}"))
        .clone();
    for b in &list {
        assert_backend_shape(b);
    }
    list
}

fn assert_backend_shape(b: &Value) {
    assert!(b["name"].is_string(), "name: {b}");
    assert!(b["version"].is_string(), "version: {b}");
    assert!(b["abi_version"].is_u64(), "abi_version: {b}");
    assert!(
        b["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().all(Value::is_string)),
        "capabilities: {b}"
    );
    assert!(
        b["status"] == "loaded" || b["status"] == "failed",
        "status: {b}"
    );
    assert!(
        b.get("last_error")
            .is_some_and(|e| e.is_null() || e.is_string()),
        "last_error: {b}"
    );
    assert!(
        b["source"].as_str().is_some_and(|s| !s.is_empty()),
        "source: {b}"
    );
}

fn by_name<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend named {name:?} in {list:?}"))
}

fn by_source<'a>(list: &'a [Value], source: &Path) -> &'a Value {
    let source = source.display().to_string();
    list.iter()
        .find(|b| b["source"] == source.as_str())
        .unwrap_or_else(|| panic!("no backend loaded from {source} in {list:?}"))
}

fn last_error(b: &Value) -> String {
    b["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("a failed backend says why: {b}"))
        .to_owned()
}

/// The simulator is still there and works: listed, loaded, and a stopped demo machine boots.
/// Waits (at most `within`) for backend `name` to be marked failed; returns its entry.
async fn failed_backend(d: &Daemon, admin: &str, name: &str, within: Duration) -> Value {
    eventually(within, &format!("{name} to be failed"), || async {
        let list = backends(d, admin).await;
        let b = by_name(&list, name).clone();
        (b["status"] == "failed").then_some(b)
    })
    .await
}

async fn assert_simulator_works(d: &Daemon, token: &str) {
    let list = backends(d, token).await;
    let sim = by_name(&list, "simulator");
    assert_eq!(sim["status"], "loaded", "{sim}");
    let machines = list_machines(d, token).await;
    let demo: Vec<&Value> = machines
        .iter()
        .filter(|m| m["backend"] == "simulator")
        .collect();
    assert_eq!(demo.len(), 8, "the demo fleet: {machines:?}");
    let mut target = None;
    for m in &demo {
        let fails = m["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "fail-boot"));
        if !fails && status(d, token, &uuid_of(m)).await == "stopped" {
            target = Some(uuid_of(m));
            break;
        }
    }
    let target = target.unwrap_or_else(|| panic!("no stopped demo machine: {machines:?}"));
    power_ok(d, token, &target, "start").await;
    wait_status(d, token, &target, "running").await;
}

#[tokio::test]
async fn broken_plugins_are_reported_failed_and_the_daemon_keeps_working() {
    let names = ["wrong_abi", "no_symbol", "bad_describe", "init_fails"];
    let mut builder = Daemon::builder();
    for n in names {
        builder = builder.plugin(&c_plugin(n));
    }
    let d = builder.start();
    d.wait_healthy().await;
    let admin = d.admin_token().await;
    let list = backends(&d, &admin).await;
    assert_eq!(
        list.len(),
        5,
        "four broken plugins and the simulator: {list:?}"
    );
    for n in names {
        let path = d.plugins_dir().join(format!("lib{n}.so"));
        let b = by_source(&list, &path);
        assert_eq!(b["status"], "failed", "{n}: {b}");
        let reason = last_error(b);
        assert!(!reason.trim().is_empty(), "{n}: empty reason: {b}");
        match n {
            "wrong_abi" => {
                let numbers: Vec<&str> = reason
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|t| !t.is_empty())
                    .collect();
                assert!(
                    numbers.contains(&"999") && numbers.contains(&"1"),
                    "wrong_abi: the reason names both ABI versions: {reason}"
                );
                assert_eq!(b["abi_version"], 999, "the ABI the plugin declared: {b}");
            }
            "no_symbol" => assert!(
                reason.contains("orchard_plugin_v1"),
                "no_symbol: the reason names the missing symbol: {reason}"
            ),
            "bad_describe" => assert!(
                reason.to_lowercase().contains("describe"),
                "bad_describe: the reason says the describe output is bad: {reason}"
            ),
            _ => {
                assert_eq!(b["name"], "init-fails", "{b}");
                assert!(
                    reason.contains("simulated init failure"),
                    "init_fails: the reason carries init's message: {reason}"
                );
            }
        }
    }
    // None of them contributes machines or shows up as loaded.
    let loaded: Vec<&Value> = list.iter().filter(|b| b["status"] == "loaded").collect();
    assert_eq!(loaded.len(), 1, "{list:?}");
    assert!(
        list_machines(&d, &admin)
            .await
            .iter()
            .all(|m| m["backend"] == "simulator")
    );
    assert_eq!(d.get("/healthz", None).await.status, 200);
    assert_simulator_works(&d, &admin).await;
}

#[tokio::test]
async fn c_example_plugin_loads_and_powers_machines() {
    let d = Daemon::builder().plugin(&example_c()).start();
    let admin = d.admin_token().await;
    let list = backends(&d, &admin).await;
    let b = by_name(&list, "example-c");
    assert_eq!(b["status"], "loaded", "{b}");
    assert!(b["last_error"].is_null(), "{b}");
    assert_eq!(
        b["source"],
        d.plugins_dir()
            .join("libexample_c.so")
            .display()
            .to_string(),
        "{b}"
    );
    assert_eq!(b["abi_version"], 1, "{b}");
    assert_eq!(by_name(&list, "simulator")["status"], "loaded");

    let machines = list_machines(&d, &admin).await;
    let ours: Vec<&Value> = machines
        .iter()
        .filter(|m| m["backend"] == "example-c")
        .collect();
    assert_eq!(ours.len(), 2, "{machines:?}");
    let one = by_title(&machines, "c-example-1").clone();
    let two = by_title(&machines, "c-example-2").clone();
    for m in [&one, &two] {
        assert_properties(m);
        assert_eq!(m["backend"], "example-c", "{m}");
        assert_detail(&detail(&d, &admin, &uuid_of(m)).await);
    }
    assert_eq!(machines.len(), 10, "two C machines and the demo fleet");

    let (u1, u2) = (uuid_of(&one), uuid_of(&two));
    let s1 = eventually(Duration::from_secs(5), "c-example-1 polled", || async {
        let s = status(&d, &admin, &u1).await;
        (s == "stopped").then_some(s)
    })
    .await;
    assert_eq!(s1, "stopped");
    power_ok(&d, &admin, &u1, "start").await;
    wait_status(&d, &admin, &u1, "running").await;
    power(&d, &admin, &u1, "start").await.expect_any_error(409);
    power_ok(&d, &admin, &u1, "stop").await;
    wait_status(&d, &admin, &u1, "stopped").await;
    // c-example-2 runs from the start: starting it is refused.
    wait_status(&d, &admin, &u2, "running").await;
    power(&d, &admin, &u2, "start").await.expect_any_error(409);
    assert_eq!(
        by_name(&backends(&d, &admin).await, "example-c")["status"],
        "loaded"
    );
}

#[tokio::test]
async fn panicking_plugin_is_marked_failed_and_the_daemon_serves() {
    let d = Daemon::builder().plugin(&panic_plugin()).start();
    let admin = d.admin_token().await;
    let b = failed_backend(&d, &admin, "panicky", Duration::from_secs(10)).await;
    let reason = last_error(&b);
    assert!(
        reason.contains("simulated panic in bulk_state"),
        "the reason carries the panic message: {b}"
    );
    assert_eq!(
        b["source"],
        d.plugins_dir()
            .join("liborchard_fixture_panic.so")
            .display()
            .to_string()
    );
    assert_eq!(d.get("/healthz", None).await.status, 200);
    assert_simulator_works(&d, &admin).await;
    // It stays failed: a failed plugin is not called again.
    let list = backends(&d, &admin).await;
    assert_eq!(by_name(&list, "panicky")["status"], "failed");
    assert_eq!(d.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn garbage_returning_plugin_is_marked_failed_and_the_daemon_serves() {
    let d = Daemon::builder().plugin(&c_plugin("garbage")).start();
    let admin = d.admin_token().await;
    let b = failed_backend(&d, &admin, "garbage", Duration::from_secs(10)).await;
    let reason = last_error(&b);
    assert!(
        reason.contains("bulk_state returned malformed JSON"),
        "the reason names the call and the malformed reply: {b}"
    );
    // Each malformed event was ignored with a warning (six of them, one not even UTF-8).
    let logs = d.logs();
    let ignored = logs
        .lines()
        .filter(|l| l.contains("plugin sent a malformed event; ignored") && l.contains("garbage"))
        .count();
    assert_eq!(ignored, 6, "one warning per malformed event:\n{logs}");
    assert_eq!(d.get("/healthz", None).await.status, 200);
    assert_simulator_works(&d, &admin).await;
    // It stays failed, and its machine cannot be driven.
    let list = backends(&d, &admin).await;
    assert_eq!(by_name(&list, "garbage")["status"], "failed");
    let machines = list_machines(&d, &admin).await;
    if let Some(g) = machines.iter().find(|m| m["backend"] == "garbage") {
        power(&d, &admin, &uuid_of(g), "start")
            .await
            .expect_any_error(503);
    }
    assert_eq!(d.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn hanging_plugin_times_out_and_the_daemon_serves() {
    let mut d = Daemon::builder()
        .env("ORCHARD_PLUGINS_CALL_TIMEOUT", "1")
        .plugin(&c_plugin("hang"))
        .build();
    // Startup calls bulk_state once; it may wait for that call's timeout, not for ever.
    let launched = Instant::now();
    d.launch();
    assert!(
        launched.elapsed() < Duration::from_secs(8),
        "start with a hanging plugin took {:?}",
        launched.elapsed()
    );
    let healthz = Instant::now();
    assert_eq!(d.get("/healthz", None).await.status, 200);
    assert!(
        healthz.elapsed() < Duration::from_secs(3),
        "/healthz took {:?}",
        healthz.elapsed()
    );
    let admin = d.admin_token().await;
    let b = failed_backend(&d, &admin, "hang", Duration::from_secs(5)).await;
    let reason = last_error(&b).to_lowercase();
    assert!(
        reason.contains("time") || reason.contains("exceeded"),
        "the reason says the call timed out: {b}"
    );
    // Calls to the hung backend fail fast instead of piling up.
    let machines = list_machines(&d, &admin).await;
    if let Some(h) = machines.iter().find(|m| m["backend"] == "hang") {
        let started = Instant::now();
        let r = power(&d, &admin, &uuid_of(h), "start").await;
        assert!(r.status >= 400, "power on a failed backend: {r:?}");
        r.expect_any_error(r.status);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "power on a failed backend took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(d.get("/healthz", None).await.status, 200);
    assert_simulator_works(&d, &admin).await;
    assert_eq!(d.get("/healthz", None).await.status, 200);
    // The blocked thread never returns; shutting down must not wait for it.
    let status = d.terminate();
    assert!(status.success(), "daemon exited with {status:?}");
}

#[tokio::test]
async fn simulator_plugin_file_takes_precedence_over_built_in() {
    let d = Daemon::builder().plugin(&simulator_plugin()).start();
    let admin = d.admin_token().await;
    let list = backends(&d, &admin).await;
    let sims: Vec<&Value> = list.iter().filter(|b| b["name"] == "simulator").collect();
    assert_eq!(sims.len(), 1, "one simulator: {list:?}");
    let sim = sims[0];
    assert_eq!(sim["status"], "loaded", "{sim}");
    assert_eq!(
        sim["source"],
        d.plugins_dir()
            .join("liborchard_plugin_simulator.so")
            .display()
            .to_string(),
        "{sim}"
    );
    assert_eq!(list.len(), 1, "{list:?}");
    assert_simulator_works(&d, &admin).await;
}

// ----- orchard plugin check -----

fn plugin_check(path: &Path, extra: &[&str]) -> Output {
    let mut cmd = orchard_command();
    cmd.arg("plugin").arg("check").arg(path).args(extra);
    run_to_exit(cmd, None, EXIT_TIMEOUT)
}

/// The report lines (stdout), each checked to start with `ok`, `FAIL` or `skip`.
fn report_lines(out: &Output) -> Vec<String> {
    let stdout = stdout_of(out);
    let lines: Vec<String> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    for l in &lines {
        assert!(
            l.starts_with("ok") || l.starts_with("FAIL") || l.starts_with("skip"),
            "a report line starts with ok, FAIL or skip: {l:?}\nstdout:\n{stdout}"
        );
    }
    lines
}

fn assert_check_passed(out: &Output) -> Vec<String> {
    let lines = report_lines(out);
    assert!(
        out.status.success(),
        "plugin check failed ({:?}):\n{}\nstderr:\n{}",
        out.status,
        stdout_of(out),
        stderr_of(out)
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("FAIL")),
        "FAIL lines:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ok")),
        "no ok lines:\n{}",
        lines.join("\n")
    );
    lines
}

#[test]
fn plugin_check_passes_the_c_example() {
    let out = plugin_check(&example_c(), &["--timeout", "5"]);
    assert_check_passed(&out);
}

#[test]
fn plugin_check_exercises_the_simulator_plugin() {
    let out = plugin_check(
        &simulator_plugin(),
        &[
            "--settings",
            r#"{"machines": 3, "boot_seconds": 0.2, "shutdown_seconds": 0.2}"#,
            "--timeout",
            "5",
        ],
    );
    let lines = assert_check_passed(&out);
    for step in [
        "create",
        "power start",
        "power suspend",
        "power resume",
        "power restart",
        "power stop",
        "power force_off",
        "console_resize",
        "console_write",
        "console output",
        "delete",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ok") && l.contains(step)),
            "no ok line for {step}:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn plugin_check_fails_on_wrong_abi() {
    let out = plugin_check(&c_plugin("wrong_abi"), &["--timeout", "5"]);
    let lines = report_lines(&out);
    assert!(
        !out.status.success(),
        "a wrong ABI must fail the check:\n{}",
        stdout_of(&out)
    );
    let all = format!("{}\n{}", stdout_of(&out), stderr_of(&out));
    assert!(
        lines.iter().any(|l| l.starts_with("FAIL")) || all.lines().any(|l| l.starts_with("FAIL")),
        "a FAIL line:\n{all}"
    );
    assert!(!all.contains("panicked"), "{all}");
}
