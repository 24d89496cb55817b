//! The machine payloads of contract section 4.1, field for field. Shared by REST and the
//! machines WebSocket API.

use std::collections::{BTreeMap, HashMap};

use orchard_plugin_api::{DiskInfo, DiskUsage, MachineKind, MachineStatus};
use serde::Serialize;
use uuid::Uuid;

use super::Machine;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UserRef {
    pub uuid: String,
    pub username: String,
}

/// `MachinePropertiesPayload`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PropertiesPayload {
    pub uuid: String,
    pub title: String,
    pub tags: Vec<String>,
    pub description: String,
    pub owner: Option<UserRef>,
    pub assigned_clients: BTreeMap<String, UserRef>,
    pub backend: String,
    pub kind: MachineKind,
    pub vcpu: u32,
    /// MiB.
    pub ram_max: u64,
    pub connections: BTreeMap<String, String>,
    pub disks: Vec<DiskInfo>,
}

/// `MachineStatePayload`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatePayload {
    pub uuid: String,
    pub active: bool,
    pub loading: bool,
    pub status: MachineStatus,
    pub vcpu: u32,
    pub cpu_percent: f64,
    /// MiB.
    pub ram_max: u64,
    /// MiB.
    pub ram_used: u64,
    pub boot_timestamp: Option<String>,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
}

/// `MachineDisksPayload`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DisksPayload {
    pub uuid: String,
    pub disks: Vec<DiskUsage>,
}

/// `MachineConnectionsPayload`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConnectionsPayload {
    pub uuid: String,
    pub active_connections: Vec<String>,
}

fn user_ref(uuid: Uuid, names: &HashMap<Uuid, String>) -> Option<UserRef> {
    names.get(&uuid).map(|name| UserRef {
        uuid: uuid.to_string(),
        username: name.clone(),
    })
}

/// Whether a status counts as powered on, and as in transition.
pub fn active_loading(status: MachineStatus) -> (bool, bool) {
    use MachineStatus::*;
    let active = !matches!(status, Stopped | Error);
    let loading = matches!(status, Booting | ShuttingDown);
    (active, loading)
}

impl Machine {
    pub fn properties(&self, names: &HashMap<Uuid, String>) -> PropertiesPayload {
        let i = &self.info;
        PropertiesPayload {
            uuid: self.uuid.to_string(),
            title: i.title.clone(),
            tags: i.tags.clone(),
            description: i.description.clone(),
            owner: self.relations.owner.and_then(|u| user_ref(u, names)),
            assigned_clients: self
                .relations
                .clients
                .iter()
                .filter_map(|u| user_ref(*u, names).map(|r| (u.to_string(), r)))
                .collect(),
            backend: self.backend.to_string(),
            kind: i.kind,
            vcpu: i.vcpu,
            ram_max: i.ram_max_mib,
            connections: i.connections.clone(),
            disks: i.disks.clone(),
        }
    }

    /// The latest state; a machine not polled yet reads as stopped with zeros.
    pub fn state_payload(&self) -> StatePayload {
        match &self.state {
            Some(s) => {
                let (active, loading) = active_loading(s.status);
                StatePayload {
                    uuid: self.uuid.to_string(),
                    active,
                    loading,
                    status: s.status,
                    vcpu: s.vcpu,
                    cpu_percent: s.cpu_percent,
                    ram_max: s.ram_max_mib,
                    ram_used: s.ram_used_mib,
                    boot_timestamp: s.boot_timestamp.clone(),
                    net_rx_bytes: s.net_rx_bytes,
                    net_tx_bytes: s.net_tx_bytes,
                    disk_read_bytes: s.disk_read_bytes,
                    disk_write_bytes: s.disk_write_bytes,
                }
            }
            None => StatePayload {
                uuid: self.uuid.to_string(),
                active: false,
                loading: false,
                status: MachineStatus::Stopped,
                vcpu: self.info.vcpu,
                cpu_percent: 0.0,
                ram_max: self.info.ram_max_mib,
                ram_used: 0,
                boot_timestamp: None,
                net_rx_bytes: 0,
                net_tx_bytes: 0,
                disk_read_bytes: 0,
                disk_write_bytes: 0,
            },
        }
    }

    pub fn disks_payload(&self) -> DisksPayload {
        DisksPayload {
            uuid: self.uuid.to_string(),
            disks: match &self.disks {
                Some(d) => d.clone(),
                None => self
                    .info
                    .disks
                    .iter()
                    .map(|d| DiskUsage {
                        system: d.system,
                        name: d.name.clone(),
                        size_bytes: d.size_bytes,
                        kind: d.kind.clone(),
                        occupied_bytes: 0,
                    })
                    .collect(),
            },
        }
    }

    pub fn connections_payload(&self) -> ConnectionsPayload {
        ConnectionsPayload {
            uuid: self.uuid.to_string(),
            active_connections: self.connections.clone(),
        }
    }
}
