//! Configuration values (`tests/RELIABILITY.md`, "Configuration"): out of range is one line
//! and exit 1 before anything exists; a loose data directory is tightened.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::harness::{Daemon, stderr_of};

/// Zero and extreme values, from the environment and from the file: `serve` (and `user list`)
/// exit 1 with one line on stderr naming the key, and the data directory was not created.
#[tokio::test]
async fn out_of_range_values_stop_before_the_data_dir_is_created() {
    // (how it is set, the key the line must name)
    let cases: [(&str, &str, &str); 7] = [
        (
            "env",
            "ORCHARD_HTTP_MAX_BODY_BYTES=0",
            "http.max_body_bytes",
        ),
        (
            "env",
            "ORCHARD_MACHINES_EVENT_BUFFER=1000000000000000",
            "machines.event_buffer",
        ),
        ("env", "ORCHARD_LOG_LEVEL=bogus", "log.level"),
        (
            "env",
            "ORCHARD_AUTH_HASH_CONCURRENCY=1000000000000000",
            "auth.hash_concurrency",
        ),
        ("file", "[ws]\nsend_queue = 0\n", "ws.send_queue"),
        (
            "file",
            "[http]\nheader_timeout = 0\n",
            "http.header_timeout",
        ),
        (
            "file",
            "[alerts]\ndisk_warning = -5.0\n",
            "alerts.disk_warning",
        ),
    ];
    let mut failures = Vec::new();
    for (n, (how, setting, key)) in cases.iter().enumerate() {
        let mut builder = Daemon::builder();
        if *how == "env" {
            let (var, value) = setting.split_once('=').unwrap();
            builder = builder.env(var, value);
        }
        let d = builder.build();
        let fresh = d.root().join(format!("fresh-{n}"));
        let fresh_arg = fresh.to_string_lossy().into_owned();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &fresh_arg];
        let config = d.root().join("orchard.toml");
        let config_arg = config.to_string_lossy().into_owned();
        if *how == "file" {
            fs::write(&config, setting).unwrap();
            args.extend(["--config", &config_arg]);
        }
        let runs = [
            args.clone(),
            // The offline commands read the same configuration.
            [&["user", "list"][..], &args[3..]].concat(),
        ];
        for run in runs {
            let out = d.cli(&run, None);
            let stderr = stderr_of(&out);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let ok = out.status.code() == Some(1)
                && lines.len() == 1
                && lines[0].starts_with("orchard: error: ")
                && lines[0].contains(key)
                && !fresh.exists();
            if !ok {
                failures.push(format!(
                    "{setting:?} ({}): exit {:?}, data dir created: {}, stderr:\n{stderr}",
                    run[0],
                    out.status.code(),
                    fresh.exists()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A data directory that exists with mode 0755 is set to 0700 at start, and the log says so.
#[tokio::test]
async fn an_existing_open_data_dir_is_tightened_to_0700_and_logged() {
    let mut d = Daemon::builder().build();
    fs::set_permissions(d.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    d.launch();
    let mode = fs::metadata(d.data_dir()).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "data dir mode after start: {mode:04o}");
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("mode 0755") && l.contains("0700"))
        .unwrap_or_else(|| panic!("no log line about the data dir's mode; log:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&d.data_dir_str()),
        "the line names the directory: {line}"
    );
}
