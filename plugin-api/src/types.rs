//! The JSON documents that cross the ABI. Field names are the wire format: do not rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the JSON protocol carried over the ABI (bumped for incompatible changes to
/// these documents).
pub const PROTOCOL_VERSION: u32 = 1;

/// Capability names a plugin may advertise in [`Describe::capabilities`].
pub mod capability {
    pub const CREATE: &str = "create";
    pub const DELETE: &str = "delete";
    pub const METADATA: &str = "metadata";
    pub const DISKS: &str = "disks";
    pub const CONNECTIONS: &str = "connections";
    pub const CONSOLE: &str = "console";
    pub const EVENTS: &str = "events";
}

/// The handshake answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Describe {
    /// Backend name, unique on a host (`simulator`, `libvirt`, …): `[a-z0-9-]{1,32}`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    pub protocol_version: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl Describe {
    /// A backend of this protocol version: `Describe::new("name", env!("CARGO_PKG_VERSION"),
    /// &[capability::EVENTS])`.
    pub fn new(name: &str, version: &str, capabilities: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// What `init` receives.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InitConfig {
    /// A directory reserved for this plugin's state (created by the host).
    pub data_dir: String,
    /// The `[plugins.settings.<name>]` table of the host configuration, or `{}`.
    #[serde(default)]
    pub settings: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    Vm,
    Container,
}

/// Static properties of a machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Stable across restarts.
    pub uuid: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub kind: MachineKind,
    pub vcpu: u32,
    /// Maximum memory in MiB.
    pub ram_max_mib: u64,
    /// How to reach the machine, e.g. `{"ssh": "10.0.0.5:22", "vnc": "127.0.0.1:5901"}`.
    #[serde(default)]
    pub connections: BTreeMap<String, String>,
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The disk the machine boots from.
    pub system: bool,
    pub name: String,
    pub size_bytes: u64,
    /// `qcow2`, `raw`, `overlay`, …
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineStatus {
    Running,
    Stopped,
    Paused,
    Suspended,
    Booting,
    ShuttingDown,
    Error,
}

impl MachineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Paused => "paused",
            Self::Suspended => "suspended",
            Self::Booting => "booting",
            Self::ShuttingDown => "shutting_down",
            Self::Error => "error",
        }
    }
}

/// Dynamic state of a machine. Counters are cumulative since boot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    pub uuid: String,
    pub status: MachineStatus,
    pub vcpu: u32,
    pub cpu_percent: f64,
    pub ram_max_mib: u64,
    pub ram_used_mib: u64,
    /// ISO 8601 UTC with `Z`, when running.
    #[serde(default)]
    pub boot_timestamp: Option<String>,
    #[serde(default)]
    pub net_rx_bytes: u64,
    #[serde(default)]
    pub net_tx_bytes: u64,
    #[serde(default)]
    pub disk_read_bytes: u64,
    #[serde(default)]
    pub disk_write_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub system: bool,
    pub name: String,
    pub size_bytes: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub occupied_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineDisks {
    pub uuid: String,
    pub disks: Vec<DiskUsage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineConnections {
    pub uuid: String,
    /// Open connections the backend knows of (console sessions, VNC clients, …).
    pub active_connections: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Start,
    Stop,
    Restart,
    Suspend,
    Resume,
    ForceOff,
}

impl PowerAction {
    pub fn to_raw(self) -> u32 {
        use crate::abi::*;
        match self {
            Self::Start => POWER_START,
            Self::Stop => POWER_STOP,
            Self::Restart => POWER_RESTART,
            Self::Suspend => POWER_SUSPEND,
            Self::Resume => POWER_RESUME,
            Self::ForceOff => POWER_FORCE_OFF,
        }
    }

    pub fn from_raw(raw: u32) -> Option<Self> {
        use crate::abi::*;
        Some(match raw {
            POWER_START => Self::Start,
            POWER_STOP => Self::Stop,
            POWER_RESTART => Self::Restart,
            POWER_SUSPEND => Self::Suspend,
            POWER_RESUME => Self::Resume,
            POWER_FORCE_OFF => Self::ForceOff,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::ForceOff => "force_off",
        }
    }
}

/// What `create` receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateSpec {
    pub title: String,
    pub vcpu: u32,
    pub ram_mib: u64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The kind wanted, when the backend offers both.
    #[serde(default)]
    pub kind: Option<MachineKind>,
}

/// What `update_metadata` receives; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsoleOpened {
    pub session: String,
}

/// Events a plugin emits through `HostV1::emit_event`.
///
/// A power action emits `*_start` then exactly one of `*_success` / `*_fail`; a restart
/// emits the shutdown pair then the boot pair. `state_changed` reports any change of
/// status, including ones nobody asked for (a guest powering itself off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    MachineCreated {
        machine: MachineInfo,
    },
    MachineUpdated {
        machine: MachineInfo,
    },
    MachineDeleted {
        uuid: String,
    },
    StateChanged {
        uuid: String,
        status: MachineStatus,
    },
    BootStart {
        uuid: String,
    },
    BootSuccess {
        uuid: String,
    },
    BootFail {
        uuid: String,
        error: String,
    },
    ShutdownStart {
        uuid: String,
    },
    ShutdownSuccess {
        uuid: String,
    },
    ShutdownFail {
        uuid: String,
        error: String,
    },
    /// The console session ended on the machine's side (the machine stopped, …).
    ConsoleClosed {
        session: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_wire_format() {
        let e = Event::BootFail {
            uuid: "u".into(),
            error: "no disk".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"boot_fail","uuid":"u","error":"no disk"}"#
        );
        let s: MachineStatus = serde_json::from_str("\"shutting_down\"").unwrap();
        assert_eq!(s, MachineStatus::ShuttingDown);
        for a in [
            PowerAction::Start,
            PowerAction::Stop,
            PowerAction::Restart,
            PowerAction::Suspend,
            PowerAction::Resume,
            PowerAction::ForceOff,
        ] {
            assert_eq!(PowerAction::from_raw(a.to_raw()), Some(a));
        }
        assert_eq!(PowerAction::from_raw(99), None);
    }

    #[test]
    fn disk_type_field_is_named_type() {
        let d = DiskInfo {
            system: true,
            name: "vda".into(),
            size_bytes: 1,
            kind: "qcow2".into(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["type"], "qcow2");
    }
}
