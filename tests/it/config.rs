//! Configuration values (`tests/RELIABILITY.md`, "Configuration"): a loose data directory is
//! tightened.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::harness::Daemon;

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
