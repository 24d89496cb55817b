//! WebSocket protocol conformance: the Autobahn cases (PyPI `kosoku`, pinned in
//! `tests/conformance/requirements.txt`) against `/ws/echo`, a test-only endpoint on the
//! production framing (`ws.test_echo`). Every case outside 12.x/13.x (compression, which we
//! do not offer) must be OK, NON-STRICT or INFORMATIONAL, and no case may do worse than in
//! the committed baseline (`tests/conformance/baseline.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, python_venv, run_to_exit};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `kosoku` command: `ORCHARD_KOSOKU` if set, else a virtualenv under cargo's scratch
/// space, created with the pinned requirements on first use.
fn kosoku() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ORCHARD_KOSOKU") {
            return PathBuf::from(p);
        }
        python_venv(
            "conformance-venv",
            &manifest_dir().join("tests/conformance/requirements.txt"),
        )
        .join("bin/kosoku")
    })
}

fn rank(behavior: &str) -> Option<u8> {
    match behavior {
        "OK" => Some(0),
        "NON-STRICT" => Some(1),
        "INFORMATIONAL" => Some(1),
        _ => None,
    }
}

fn results(index: &Path) -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(index)
        .unwrap_or_else(|e| panic!("no report at {}: {e}", index.display()));
    let v: Value = serde_json::from_str(&text).expect("index.json is JSON");
    let agent = v
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("index.json has no agent: {text}"));
    agent
        .iter()
        .map(|(case, r)| {
            let b = r["behavior"].as_str().unwrap_or("?").to_owned();
            let c = r["behaviorClose"].as_str().unwrap_or("?").to_owned();
            (case.clone(), (b, c))
        })
        .collect()
}

#[test]
fn autobahn_cases_pass_against_the_production_framing() {
    let kosoku = kosoku();
    // Large messages (9.x send up to 16 MiB) need the limit raised; everything else is the
    // default configuration.
    let d = Daemon::builder()
        .env("ORCHARD_WS_TEST_ECHO", "true")
        .env("ORCHARD_WS_MAX_MESSAGE", "20000000")
        .start();
    let out_dir = d.root().join("autobahn");
    let mut cmd = Command::new(kosoku);
    cmd.args([
        "-m",
        "fuzzingclient",
        "-x",
        "12.*",
        "-x",
        "13.*",
        "-p",
        "2",
        "-o",
    ])
    .arg(&out_dir)
    .arg(format!("ws://{}/ws/echo", d.addr()));
    let run = run_to_exit(cmd, None, Duration::from_secs(600));
    let got = results(&out_dir.join("index.json"));

    let baseline: BTreeMap<String, (String, String)> = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir().join("tests/conformance/baseline.json"))
            .expect("the baseline"),
    )
    .expect("the baseline is JSON");
    let mut problems = Vec::new();
    for (case, (want_b, want_c)) in &baseline {
        match got.get(case) {
            None => problems.push(format!("{case}: not run")),
            Some((b, c)) => {
                for (what, now, was) in [("behavior", b, want_b), ("close", c, want_c)] {
                    match (rank(now), rank(was)) {
                        (Some(n), Some(w)) if n <= w => {}
                        _ => problems.push(format!("{case}: {what} {now} (baseline {was})")),
                    }
                }
            }
        }
    }
    for case in got.keys().filter(|c| !baseline.contains_key(*c)) {
        problems.push(format!("{case}: not in the baseline"));
    }
    assert!(
        problems.is_empty(),
        "Autobahn cases regressed:\n{}\nkosoku stdout:\n{}\nstderr:\n{}",
        problems.join("\n"),
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(got.len() >= 300, "the whole suite ran: {} cases", got.len());
    assert!(!d.logs().contains("panicked"), "{}", d.logs());
}

#[tokio::test]
async fn the_echo_endpoint_is_off_by_default() {
    let d = Daemon::start();
    let r = crate::wsclient::Connect::new(&d, "/ws/echo")
        .try_connect()
        .await;
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 404, "{resp:?}")
        }
        Ok(_) => panic!("/ws/echo must not exist without ws.test_echo"),
        Err(e) => panic!("unexpected: {e}"),
    }
}
