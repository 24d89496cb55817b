//! What the backend plugin tests (`containers`, `libvirt`) share: a daemon launched with a
//! plugin's settings table, that plugin's entry in `/api/backends`, and the global machines
//! socket past its initial state.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Daemon;
use crate::wsclient::{Connect, WsClient};

/// Writes `[plugins.settings.PLUGIN]` with `body` (TOML lines) to a config file in the
/// daemon's root, passes it with `--config` and launches the daemon.
pub fn launch_with_settings(mut d: Daemon, plugin: &str, body: &str) -> Daemon {
    let config = d.root().join("orchard.toml");
    std::fs::write(&config, format!("[plugins.settings.{plugin}]\n{body}\n"))
        .expect("write the config");
    d.push_arg("--config");
    d.push_arg(&config.to_string_lossy());
    d.launch();
    d
}

/// The `name` backend's entry in `/api/backends`.
pub async fn backend(d: &Daemon, token: &str, name: &str) -> Value {
    let list = d.get("/api/backends", Some(token)).await.expect(200);
    list.as_array()
        .and_then(|l| l.iter().find(|b| b["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} backend in {list}"))
}

/// `/ws/machines/global`, its initial state read (within `timeout`).
pub async fn global(d: &Daemon, token: &str, timeout: Duration) -> WsClient {
    let mut c = Connect::new(d, "/ws/machines/global")
        .access_token(token)
        .open()
        .await;
    c.initial(timeout).await;
    c
}
