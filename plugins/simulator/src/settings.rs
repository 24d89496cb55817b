//! The `[plugins.settings.simulator]` table: every key optional, unknown keys ignored.

use std::time::Duration;

use orchard_plugin_api::{PluginError, PluginResult};
use serde_json::{Map, Value};

/// Largest demo fleet `machines` may ask for.
pub(crate) const MAX_MACHINES: u64 = 100_000;
/// Longest simulated boot or shutdown, in seconds.
pub(crate) const MAX_SECONDS: f64 = 3600.0;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    /// Size of the demo fleet generated when there is no state file yet.
    pub machines: u32,
    /// How long a boot takes.
    pub boot: Duration,
    /// How long a graceful shutdown takes.
    pub shutdown: Duration,
    /// Restarts per second spread over the running fleet (0: none). A load source for
    /// benchmarks: each restart emits the shutdown and boot event pairs.
    pub churn_per_second: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            machines: 8,
            boot: Duration::from_secs(2),
            shutdown: Duration::from_secs(1),
            churn_per_second: 0,
        }
    }
}

impl Settings {
    /// Reads the settings object (`null` reads as `{}`).
    pub(crate) fn from_json(value: &Value) -> PluginResult<Self> {
        let mut settings = Self::default();
        let map = match value {
            Value::Null => return Ok(settings),
            Value::Object(map) => map,
            other => {
                return Err(PluginError::InvalidArgument(format!(
                    "simulator settings must be a table (JSON object), got {}",
                    type_name(other)
                )));
            }
        };
        if let Some(v) = present(map, "machines") {
            settings.machines = v
                .as_u64()
                .filter(|n| *n <= MAX_MACHINES)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    PluginError::InvalidArgument(format!(
                        "simulator setting `machines` must be a whole number from 0 to \
                         {MAX_MACHINES}, got {v}"
                    ))
                })?;
        }
        if let Some(v) = present(map, "boot_seconds") {
            settings.boot = seconds("boot_seconds", v)?;
        }
        if let Some(v) = present(map, "shutdown_seconds") {
            settings.shutdown = seconds("shutdown_seconds", v)?;
        }
        if let Some(v) = present(map, "churn_per_second") {
            settings.churn_per_second = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= 1_000_000)
                .ok_or_else(|| {
                    PluginError::InvalidArgument(format!(
                        "simulator setting `churn_per_second` must be a whole number from 0 \
                         to 1000000, got {v}"
                    ))
                })?;
        }
        Ok(settings)
    }
}

/// A key's value, treating an explicit `null` like an absent key.
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn seconds(key: &str, v: &Value) -> PluginResult<Duration> {
    v.as_f64()
        .filter(|s| s.is_finite() && (0.0..=MAX_SECONDS).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            PluginError::InvalidArgument(format!(
                "simulator setting `{key}` must be a number of seconds from 0 to {MAX_SECONDS}, \
                 got {v}"
            ))
        })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            Settings::from_json(&Value::Null).unwrap(),
            Settings::default()
        );
        assert_eq!(
            Settings::from_json(&json!({})).unwrap(),
            Settings::default()
        );
        let s = Settings::from_json(&json!({
            "machines": 3, "boot_seconds": 0.5, "shutdown_seconds": 2, "colour": "green"
        }))
        .unwrap();
        assert_eq!(s.machines, 3);
        assert_eq!(s.boot, Duration::from_millis(500));
        assert_eq!(s.shutdown, Duration::from_secs(2));
    }

    #[test]
    fn wrong_types_are_invalid_arguments() {
        for bad in [
            json!({"machines": "8"}),
            json!({"machines": -1}),
            json!({"machines": 2.5}),
            json!({"machines": 1_000_000}),
            json!({"boot_seconds": "fast"}),
            json!({"boot_seconds": -1.0}),
            json!({"shutdown_seconds": [1]}),
            json!([1, 2]),
            json!("machines=3"),
        ] {
            match Settings::from_json(&bad) {
                Err(PluginError::InvalidArgument(msg)) => {
                    assert!(msg.contains("simulator"), "{msg}")
                }
                other => panic!("{bad}: expected InvalidArgument, got {other:?}"),
            }
        }
        let err = Settings::from_json(&json!({"machines": "8"})).unwrap_err();
        assert!(err.message().contains("`machines`"), "{err}");
    }
}
