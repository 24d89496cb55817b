//! `[plugins.settings.containers]`: every key optional, unknown keys ignored, a key of the
//! wrong type refused.

use std::time::Duration;

use orchard_plugin_api::{PluginError, PluginResult};
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

fn bad(key: &str, want: &str) -> PluginError {
    PluginError::InvalidArgument(format!("containers setting {key} must be {want}"))
}

fn string(v: &Value, key: &str) -> PluginResult<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(bad(key, "a non-empty string")),
    }
}

fn strings(v: &Value, key: &str) -> PluginResult<Option<Vec<String>>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| bad(key, "a non-empty array of strings")),
        Some(_) => Err(bad(key, "a non-empty array of strings")),
    }
}

fn seconds(v: &Value, key: &str, max: f64) -> PluginResult<Option<Duration>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= max)
            .map(|s| Some(Duration::from_secs_f64(s)))
            .ok_or_else(|| bad(key, &format!("a number of seconds from 0 to {max}"))),
    }
}

impl Settings {
    pub fn from_json(v: &Value) -> PluginResult<Self> {
        if !v.is_object() && !v.is_null() {
            return Err(PluginError::InvalidArgument(
                "containers settings must be a table".into(),
            ));
        }
        let mut s = Self::default();
        if let Some(socket) = string(v, "socket")? {
            let path = socket.strip_prefix("unix://").unwrap_or(&socket).to_owned();
            if !path.starts_with('/') {
                return Err(bad("socket", "an absolute path (unix://PATH or PATH)"));
            }
            s.sockets = vec![path];
        }
        if let Some(d) = seconds(v, "stop_timeout_seconds", 3600.0)? {
            s.stop_timeout = Duration::from_secs(d.as_secs());
        }
        if let Some(d) = seconds(v, "reconnect_seconds", 3600.0)? {
            s.reconnect_interval = d.max(Duration::from_millis(100));
        }
        if let Some(d) = seconds(v, "call_timeout_seconds", 60.0)? {
            s.call_timeout = d.max(Duration::from_millis(100));
        }
        s.image = string(v, "image")?;
        s.command = strings(v, "command")?;
        if let Some(c) = strings(v, "console_command")? {
            s.console_command = c;
        }
        match v.get("stats_concurrency") {
            None | Some(Value::Null) => {}
            Some(n) => {
                s.stats_concurrency = n
                    .as_u64()
                    .filter(|c| (1..=1024).contains(c))
                    .map(|c| c as usize)
                    .ok_or_else(|| bad("stats_concurrency", "a whole number from 1 to 1024"))?
            }
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
