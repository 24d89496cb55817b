//! `[plugins.settings.libvirt]`: every key optional, unknown keys ignored, a key of the wrong
//! type refused.

use std::ops::Bound;
use std::time::Duration;

use orchard_plugin_api::{PluginResult, SettingsTable};
use serde_json::Value;

/// What `delete` removes besides the domain definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteVolumes {
    /// The volumes this plugin created for the machine (the default).
    Created,
    /// Every disk that is a libvirt storage volume.
    All,
    /// Nothing: the disks stay.
    None,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub uri: String,
    pub shutdown_timeout: Duration,
    pub reconnect_interval: Duration,
    /// The pool for new disks; unset: `default` (`default-pool` on the test driver).
    pub pool: Option<String>,
    pub disk_gib: u64,
    pub disk_image: Option<String>,
    pub disk_image_format: String,
    pub network: Option<String>,
    pub domain_type: Option<String>,
    pub delete_volumes: DeleteVolumes,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            shutdown_timeout: Duration::from_secs(60),
            reconnect_interval: Duration::from_secs(5),
            pool: None,
            disk_gib: 10,
            disk_image: None,
            disk_image_format: "qcow2".into(),
            network: None,
            domain_type: None,
            delete_volumes: DeleteVolumes::Created,
        }
    }
}

/// A number of seconds above 0 (at most a day).
fn seconds(t: &SettingsTable, key: &str) -> PluginResult<Option<Duration>> {
    let above_zero = (Bound::Excluded(0.0), Bound::Included(86_400.0));
    t.seconds(key, above_zero, "a number of seconds above 0")
}

impl Settings {
    pub fn from_json(v: &Value) -> PluginResult<Self> {
        let t = SettingsTable::new("libvirt", v)?;
        let mut s = Self::default();
        if let Some(uri) = t.string("uri")? {
            s.uri = uri;
        }
        if let Some(d) = seconds(&t, "shutdown_timeout_seconds")? {
            s.shutdown_timeout = d;
        }
        if let Some(d) = seconds(&t, "reconnect_seconds")? {
            s.reconnect_interval = d;
        }
        s.pool = t.string("pool")?;
        let disk_gib = "a whole number of GiB (0 = no disk)";
        if let Some(g) = t.whole("disk_gib", 0..=65_536, disk_gib)? {
            s.disk_gib = g;
        }
        s.disk_image = t.string("disk_image")?;
        if let Some(f) = t.string("disk_image_format")? {
            s.disk_image_format = f;
        }
        s.network = t.string("network")?;
        s.domain_type = t.string("domain_type")?;
        if let Some(d) = t.string("delete_volumes")? {
            s.delete_volumes = match d.as_str() {
                "created" => DeleteVolumes::Created,
                "all" => DeleteVolumes::All,
                "none" => DeleteVolumes::None,
                _ => return Err(t.bad("delete_volumes", "\"created\", \"all\" or \"none\"")),
            };
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
        assert_eq!(s.uri, "qemu:///system");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(60));
        let s = Settings::from_json(&json!({"uri": "test:///default",
            "shutdown_timeout_seconds": 0.5, "disk_gib": 0, "delete_volumes": "none",
            "unknown": 1}))
        .unwrap();
        assert_eq!(s.uri, "test:///default");
        assert_eq!(s.shutdown_timeout, Duration::from_millis(500));
        assert_eq!(s.disk_gib, 0);
        assert_eq!(s.delete_volumes, DeleteVolumes::None);
    }

    #[test]
    fn wrong_types_are_refused() {
        for bad in [
            json!({"uri": 3}),
            json!({"shutdown_timeout_seconds": -1}),
            json!({"disk_gib": "big"}),
            json!({"delete_volumes": "some"}),
            json!([1]),
        ] {
            assert!(Settings::from_json(&bad).is_err(), "{bad}");
        }
    }
}
