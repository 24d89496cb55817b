//! Hosts: the local hypervisor host (sampled with sysinfo) and the agent hosts, with
//! their status and latest metrics. Every change is published once on a bus that the
//! channels API and the alert rules follow; `fleet_status` totals derive from here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::now_iso;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DiskMetric {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NetMetric {
    pub interface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One sample of a host (contract 7, host_metrics).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostMetrics {
    pub cpu_usage: f64,
    pub memory_usage: f64,
    /// `{mount: percent}`.
    pub disk_usage: BTreeMap<String, f64>,
    pub load_average: [f64; 3],
    pub disks: Vec<DiskMetric>,
    pub network: Vec<NetMetric>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub host_id: String,
    pub hostname: String,
    /// `online` or `offline`.
    pub status: &'static str,
    pub local: bool,
    pub last_seen: Option<String>,
    #[serde(skip)]
    pub metrics: Option<HostMetrics>,
}

#[derive(Clone, Debug)]
pub enum HostEvent {
    Status {
        host_id: String,
        hostname: String,
        status: &'static str,
        previous_status: &'static str,
    },
    Metrics {
        host_id: String,
        hostname: String,
        metrics: Arc<HostMetrics>,
    },
    /// A new agent host was registered (offline until its agent connects).
    Added,
    /// An agent host was deleted (after going offline, if it was online).
    Removed { host_id: String },
}

pub struct Hosts {
    hosts: RwLock<HashMap<String, Host>>,
    events: broadcast::Sender<HostEvent>,
    local_id: String,
}

impl Hosts {
    /// The registry with the local host (its id kept in `<data-dir>/host-id`).
    pub fn new(data_dir: &Path) -> std::io::Result<Arc<Self>> {
        let path = data_dir.join("host-id");
        let local_id = match std::fs::read_to_string(&path) {
            Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => s.trim().to_owned(),
            _ => {
                let id = uuid::Uuid::new_v4().to_string();
                std::fs::write(&path, format!("{id}\n"))?;
                id
            }
        };
        let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into());
        let mut hosts = HashMap::new();
        hosts.insert(
            local_id.clone(),
            Host {
                host_id: local_id.clone(),
                hostname,
                status: "online",
                local: true,
                last_seen: Some(now_iso()),
                metrics: None,
            },
        );
        Ok(Arc::new(Self {
            hosts: RwLock::new(hosts),
            events: broadcast::channel(1024).0,
            local_id,
        }))
    }

    /// The local host's id and hostname (machines of local backends run there).
    pub fn local(&self) -> (String, String) {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let name = hosts
            .get(&self.local_id)
            .map(|h| h.hostname.clone())
            .unwrap_or_default();
        (self.local_id.clone(), name)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    pub fn list(&self) -> Vec<Host> {
        let mut v: Vec<Host> = self
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        v
    }

    /// Records a sample of `host_id` and publishes it.
    pub fn record_metrics(&self, host_id: &str, metrics: HostMetrics) {
        let metrics = Arc::new(metrics);
        let hostname = {
            let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
            let Some(h) = hosts.get_mut(host_id) else {
                return;
            };
            h.metrics = Some((*metrics).clone());
            h.last_seen = Some(now_iso());
            h.hostname.clone()
        };
        let _ = self.events.send(HostEvent::Metrics {
            host_id: host_id.to_owned(),
            hostname,
            metrics,
        });
    }

    /// Whether `host_id` is the built-in local host.
    pub fn is_local(&self, host_id: &str) -> bool {
        host_id == self.local_id
    }

    /// The hostname of a known host.
    pub fn hostname(&self, host_id: &str) -> Option<String> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts.get(host_id).map(|h| h.hostname.clone())
    }

    /// Registers an agent host as offline (start-up, or a new server that has not connected
    /// yet); no status event, only [`HostEvent::Added`] for the fleet totals.
    pub fn add_offline(&self, host_id: &str, hostname: &str) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        if hosts.contains_key(host_id) {
            return;
        }
        hosts.insert(
            host_id.to_owned(),
            Host {
                host_id: host_id.to_owned(),
                hostname: hostname.to_owned(),
                status: "offline",
                local: false,
                last_seen: None,
                metrics: None,
            },
        );
        drop(hosts);
        let _ = self.events.send(HostEvent::Added);
    }

    /// Forgets an agent host (never the local one).
    pub fn remove(&self, host_id: &str) {
        if host_id == self.local_id {
            return;
        }
        let removed = self
            .hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host_id);
        if removed.is_some() {
            let _ = self.events.send(HostEvent::Removed {
                host_id: host_id.to_owned(),
            });
        }
    }

    /// Adds or updates a host and publishes a status change when there is one.
    pub fn set_status(&self, host_id: &str, hostname: &str, status: &'static str) {
        let previous = {
            let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
            let h = hosts.entry(host_id.to_owned()).or_insert_with(|| Host {
                host_id: host_id.to_owned(),
                hostname: hostname.to_owned(),
                status: "offline",
                local: false,
                last_seen: None,
                metrics: None,
            });
            h.hostname = hostname.to_owned();
            let previous = h.status;
            h.status = status;
            if status == "online" {
                h.last_seen = Some(now_iso());
            }
            previous
        };
        if previous != status {
            let _ = self.events.send(HostEvent::Status {
                host_id: host_id.to_owned(),
                hostname: hostname.to_owned(),
                status,
                previous_status: previous,
            });
        }
    }

    /// Samples the local host every `period` (CPU, memory, disks, network, load; no
    /// process scans).
    pub fn start_local_sampler(self: &Arc<Self>, period: Duration) {
        let me = self.clone();
        // Its own thread: sampling sleeps between samples and must not hold up shutdown.
        let spawned = std::thread::Builder::new()
            .name("orchard-sampler".into())
            .spawn(move || {
                let Some(mut sampler) = Sampler::new() else {
                    tracing::warn!("cannot read this host's figures; local metrics are off");
                    return;
                };
                loop {
                    std::thread::sleep(period.max(Duration::from_millis(250)));
                    let m = sampler.sample();
                    let id = me.local_id.clone();
                    me.record_metrics(&id, m);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the local host sampler");
        }
    }

    /// `fleet_status` totals; `hosts_with_alerts` and `pending_operations` come from the
    /// callers that know them.
    pub fn fleet(&self, hosts_with_alerts: usize, pending_operations: usize) -> serde_json::Value {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let online = hosts.values().filter(|h| h.status == "online").count();
        serde_json::json!({
            "total_hosts": hosts.len(),
            "online_hosts": online,
            "offline_hosts": hosts.len() - online,
            "hosts_with_alerts": hosts_with_alerts,
            "pending_operations": pending_operations,
            "last_updated": now_iso(),
        })
    }
}

/// This machine's figures, read with sysinfo (the daemon's local host and `orchard agent`).
pub struct Sampler {
    sys: sysinfo::System,
    disks: Option<sysinfo::Disks>,
    nets: Option<sysinfo::Networks>,
}

impl Sampler {
    pub fn new() -> Option<Self> {
        let mut sys = sysinfo::System::new().ok()?;
        sys.refresh_cpu_usage();
        Some(Self {
            sys,
            disks: sysinfo::Disks::new_with_refreshed_list().ok(),
            nets: sysinfo::Networks::new_with_refreshed_list().ok(),
        })
    }

    /// One sample; CPU usage is over the time since the previous one.
    pub fn sample(&mut self) -> HostMetrics {
        let sys = &mut self.sys;
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let total = sys.total_memory().max(1);
        let mut m = HostMetrics {
            cpu_usage: round(f64::from(sys.global_cpu_usage())),
            memory_usage: round(sys.used_memory() as f64 * 100.0 / total as f64),
            disk_usage: BTreeMap::new(),
            load_average: sysinfo::System::load_average()
                .map(|l| [l.one, l.five, l.fifteen])
                .unwrap_or_default(),
            disks: Vec::new(),
            network: Vec::new(),
        };
        if let Some(d) = self.disks.as_mut() {
            d.refresh(true);
            for disk in d.iter() {
                let total = disk.total_space();
                if total == 0 {
                    continue;
                }
                let mount = disk.mount_point().to_string_lossy().into_owned();
                let used = total.saturating_sub(disk.available_space());
                m.disk_usage
                    .insert(mount.clone(), round(used as f64 * 100.0 / total as f64));
                m.disks.push(DiskMetric {
                    mount,
                    total_bytes: total,
                    used_bytes: used,
                });
            }
        }
        if let Some(n) = self.nets.as_mut() {
            n.refresh(true);
            for (name, data) in n.iter() {
                m.network.push(NetMetric {
                    interface: name.to_string_lossy().into_owned(),
                    rx_bytes: data.total_received(),
                    tx_bytes: data.total_transmitted(),
                });
            }
            m.network.sort_by(|a, b| a.interface.cmp(&b.interface));
        }
        m
    }
}

pub fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
