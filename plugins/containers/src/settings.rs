//! `[plugins.settings.containers]`: every key optional, unknown keys ignored, a key of the
//! wrong type refused.

use std::time::Duration;

use orchard_plugin_api::{PluginResult, SettingsTable};
use serde_json::Value;

/// Where an engine is looked for when `socket` is not set: Docker's socket, then Podman's
/// (`podman system service`).
pub const DEFAULT_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/podman/podman.sock"];

#[derive(Clone, Debug)]
pub struct Settings {
    /// The engine sockets tried in turn.
    pub sockets: Vec<String>,
    /// How long `stop` waits after SIGTERM before the engine kills the container.
    pub stop_timeout: Duration,
    pub reconnect_interval: Duration,
    /// The bound on one engine call (stats, inspect, list, …).
    pub call_timeout: Duration,
    /// The image new containers are made from when the spec names none (tag `image=REF`).
    pub image: Option<String>,
    /// The command new containers run; unset: the image's own.
    pub command: Option<Vec<String>>,
    /// What a console session runs in the container (with a TTY).
    pub console_command: Vec<String>,
    /// At most this many one-shot stats requests are in flight at once. The engine answers
    /// them all at its next stats-collector tick (about 1 s), so this should cover the
    /// running containers: 16 for 120 containers took ~4 s and sampled 49 of them.
    pub stats_concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sockets: DEFAULT_SOCKETS.map(String::from).to_vec(),
            stop_timeout: Duration::from_secs(10),
            reconnect_interval: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
            image: None,
            command: None,
            console_command: vec!["/bin/sh".into()],
            stats_concurrency: 128,
        }
    }
}

/// A number of seconds from 0 to `max`.
fn seconds(t: &SettingsTable, key: &str, max: f64) -> PluginResult<Option<Duration>> {
    t.seconds(
        key,
        0.0..=max,
        &format!("a number of seconds from 0 to {max}"),
    )
}

impl Settings {
    pub fn from_json(v: &Value) -> PluginResult<Self> {
        let t = SettingsTable::new("containers", v)?;
        let mut s = Self::default();
        if let Some(socket) = t.string("socket")? {
            let path = socket.strip_prefix("unix://").unwrap_or(&socket).to_owned();
            if !path.starts_with('/') {
                return Err(t.bad("socket", "an absolute path (unix://PATH or PATH)"));
            }
            s.sockets = vec![path];
        }
        if let Some(d) = seconds(&t, "stop_timeout_seconds", 3600.0)? {
            s.stop_timeout = Duration::from_secs(d.as_secs());
        }
        if let Some(d) = seconds(&t, "reconnect_seconds", 3600.0)? {
            s.reconnect_interval = d.max(Duration::from_millis(100));
        }
        if let Some(d) = seconds(&t, "call_timeout_seconds", 60.0)? {
            s.call_timeout = d.max(Duration::from_millis(100));
        }
        s.image = t.string("image")?;
        s.command = t.strings("command")?;
        if let Some(c) = t.strings("console_command")? {
            s.console_command = c;
        }
        if let Some(n) = t.whole(
            "stats_concurrency",
            1..=1024,
            "a whole number from 1 to 1024",
        )? {
            s.stats_concurrency = n as usize;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::from_json(&json!({})).unwrap();
        assert_eq!(s.sockets, DEFAULT_SOCKETS);
        assert_eq!(s.stop_timeout, Duration::from_secs(10));
        assert_eq!(s.console_command, ["/bin/sh"]);
        let s = Settings::from_json(&json!({"socket": "unix:///tmp/d.sock",
            "stop_timeout_seconds": 3, "image": "busybox:1", "command": ["sleep", "9"],
            "stats_concurrency": 4, "unknown": 1}))
        .unwrap();
        assert_eq!(s.sockets, ["/tmp/d.sock"]);
        assert_eq!(s.stop_timeout, Duration::from_secs(3));
        assert_eq!(s.image.as_deref(), Some("busybox:1"));
        assert_eq!(s.command.unwrap(), ["sleep", "9"]);
        assert_eq!(s.stats_concurrency, 4);
    }

    #[test]
    fn wrong_types_are_refused() {
        for bad in [
            json!({"socket": 3}),
            json!({"socket": "relative/path"}),
            json!({"stop_timeout_seconds": -1}),
            json!({"command": "sleep 9"}),
            json!({"command": [1]}),
            json!({"stats_concurrency": 0}),
            json!([1]),
        ] {
            assert!(Settings::from_json(&bad).is_err(), "{bad}");
        }
    }
}
