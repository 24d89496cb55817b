//! A small rules engine: thresholds on host metrics (disk per mount, memory), host offline,
//! and machine boot failures. Each raise and clear is stored through `db/` first, then
//! announced on the `system_alerts` bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::config::AlertRules;
use crate::db::{AlertRecord, Db};
use crate::hosts::{HostEvent, Hosts};
use crate::machines::{MachineEvent, Machines};
use crate::model::now_iso;

struct Active {
    record: AlertRecord,
}

pub struct Alerts {
    db: Db,
    rules: AlertRules,
    active: Mutex<HashMap<String, Active>>,
    events: broadcast::Sender<Arc<AlertRecord>>,
}

/// What a rule concluded for one subject.
struct Finding {
    key: String,
    severity: Option<&'static str>,
    title: String,
    message: String,
    category: &'static str,
    host: Option<(String, String)>,
    machine: Option<Uuid>,
}

fn level(value: f64, warning: f64, critical: f64) -> Option<&'static str> {
    if value >= critical {
        Some("critical")
    } else if value >= warning {
        Some("warning")
    } else {
        None
    }
}

impl Alerts {
    /// Resumes the alerts still raised when the daemon last stopped, so that they are cleared
    /// (not raised a second time) when their condition ends. A boot alert of a machine that
    /// no longer exists is cleared at once.
    pub async fn load(
        db: Db,
        rules: AlertRules,
        machines: &Machines,
    ) -> crate::error::Result<Arc<Self>> {
        let raised = db.run(|db| db.raised_alerts()).await?;
        let me = Arc::new(Self {
            db,
            rules,
            active: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
        });
        for record in raised {
            let gone = record
                .machine_uuid
                .as_deref()
                .and_then(|m| Uuid::parse_str(m).ok())
                .is_some_and(|m| machines.get(m).is_none());
            match record.subject.clone() {
                Some(subject) if !gone => {
                    me.lock().insert(subject, Active { record });
                }
                // Without a subject (older records) no rule can ever clear it: clear it now.
                _ => {
                    let mut cleared = record;
                    cleared.state = "cleared".into();
                    cleared.timestamp = now_iso();
                    me.store(cleared).await;
                }
            }
        }
        Ok(me)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AlertRecord>> {
        self.events.subscribe()
    }

    /// Hosts with at least one active alert.
    pub fn hosts_with_alerts(&self) -> usize {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let hosts: std::collections::HashSet<&str> = active
            .values()
            .filter_map(|a| a.record.host_id.as_deref())
            .collect();
        hosts.len()
    }

    pub fn active(&self) -> Vec<AlertRecord> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|a| a.record.clone())
            .collect()
    }

    /// Follows hosts and machines and applies the rules, one event at a time.
    pub fn start(self: &Arc<Self>, hosts: &Arc<Hosts>, machines: &Arc<Machines>) {
        let me = self.clone();
        let mut host_rx = hosts.subscribe();
        let mut machine_rx = machines.subscribe();
        let machines = machines.clone();
        let local = hosts.local();
        tokio::spawn(async move {
            loop {
                let findings = tokio::select! {
                    e = host_rx.recv() => match e {
                        Ok(e) => me.on_host(&e),
                        Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    e = machine_rx.recv() => match e {
                        Ok(e) => me.on_machine(&e, &machines, &local),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "alerts missed machine events; rechecking");
                            me.recheck_boot_alerts(&machines, &local)
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                };
                for f in findings {
                    me.apply(f).await;
                }
            }
        });
    }

    fn on_host(&self, e: &HostEvent) -> Vec<Finding> {
        let r = &self.rules;
        match e {
            HostEvent::Metrics {
                host_id,
                hostname,
                metrics,
            } => {
                // A mount with an active alert that the sample no longer has is cleared.
                let prefix = format!("disk:{host_id}:");
                let vanished: Vec<Finding> = self
                    .lock()
                    .iter()
                    .filter(|(k, _)| {
                        k.strip_prefix(&prefix)
                            .is_some_and(|mount| !metrics.disk_usage.contains_key(mount))
                    })
                    .map(|(k, a)| Finding {
                        key: k.clone(),
                        severity: None,
                        title: a.record.title.clone(),
                        message: a.record.message.clone(),
                        category: "disk_space",
                        host: Some((host_id.clone(), hostname.clone())),
                        machine: None,
                    })
                    .collect();
                let mut out: Vec<Finding> = metrics
                    .disk_usage
                    .iter()
                    .map(|(mount, pct)| Finding {
                        key: format!("disk:{host_id}:{mount}"),
                        severity: level(*pct, r.disk_warning, r.disk_critical),
                        title: "High disk usage".into(),
                        message: format!("Disk usage on {mount} is {pct:.0}%"),
                        category: "disk_space",
                        host: Some((host_id.clone(), hostname.clone())),
                        machine: None,
                    })
                    .collect();
                out.push(Finding {
                    key: format!("memory:{host_id}"),
                    severity: level(metrics.memory_usage, r.memory_warning, r.memory_critical),
                    title: "High memory usage".into(),
                    message: format!("Memory usage is {:.0}%", metrics.memory_usage),
                    category: "memory",
                    host: Some((host_id.clone(), hostname.clone())),
                    machine: None,
                });
                out.extend(vanished);
                out
            }
            HostEvent::Added => Vec::new(),
            HostEvent::Removed { host_id } => {
                // A deleted host's alerts end with it.
                let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
                active
                    .iter()
                    .filter(|(_, a)| a.record.host_id.as_deref() == Some(host_id.as_str()))
                    .map(|(key, a)| Finding {
                        key: key.clone(),
                        severity: None,
                        title: a.record.title.clone(),
                        message: a.record.message.clone(),
                        category: "host_status",
                        host: None,
                        machine: None,
                    })
                    .collect()
            }
            HostEvent::Status {
                host_id,
                hostname,
                status,
                ..
            } => vec![Finding {
                key: format!("offline:{host_id}"),
                severity: (*status == "offline").then_some("critical"),
                title: "Host offline".into(),
                message: format!("{hostname} is offline"),
                category: "host_status",
                host: Some((host_id.clone(), hostname.clone())),
                machine: None,
            }],
        }
    }

    fn on_machine(
        &self,
        e: &MachineEvent,
        machines: &Machines,
        local: &(String, String),
    ) -> Vec<Finding> {
        let (uuid, severity, message) = match e {
            MachineEvent::BootFail { uuid, error } => (*uuid, Some("warning"), error.clone()),
            MachineEvent::BootSuccess { uuid } | MachineEvent::Deleted { uuid } => {
                (*uuid, None, String::new())
            }
            _ => return Vec::new(),
        };
        let title = machines
            .get(uuid)
            .map(|m| m.info.title)
            .unwrap_or_else(|| uuid.to_string());
        vec![Finding {
            key: format!("boot:{uuid}"),
            severity,
            title: "Machine failed to boot".into(),
            message: format!("{title}: {message}"),
            category: "machine_boot",
            host: Some(local.clone()),
            machine: Some(uuid),
        }]
    }

    /// After missed machine events: the boot alerts of machines deleted or running since
    /// are cleared, as their missed events would have. (A missed boot failure is not
    /// recovered: it is an event, not a state the registry keeps.)
    fn recheck_boot_alerts(&self, machines: &Machines, local: &(String, String)) -> Vec<Finding> {
        let raised: Vec<Uuid> = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter_map(|k| k.strip_prefix("boot:"))
            .filter_map(|u| Uuid::parse_str(u).ok())
            .collect();
        raised
            .into_iter()
            .filter(|u| {
                machines.get(*u).is_none_or(|m| {
                    m.state
                        .is_some_and(|s| s.status == orchard_plugin_api::MachineStatus::Running)
                })
            })
            .flat_map(|uuid| self.on_machine(&MachineEvent::Deleted { uuid }, machines, local))
            .collect()
    }

    /// Raises, changes or clears the alert of one subject.
    async fn apply(&self, f: Finding) {
        let current = {
            let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            active.get(&f.key).map(|a| a.record.clone())
        };
        if current.as_ref().map(|c| c.severity.as_str()) == f.severity {
            return;
        }
        if let Some(mut old) = current {
            old.state = "cleared".into();
            old.timestamp = now_iso();
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&f.key);
            self.store(old).await;
        }
        if let Some(severity) = f.severity {
            let record = AlertRecord {
                alert_id: Uuid::new_v4().to_string(),
                state: "raised".into(),
                severity: severity.into(),
                title: f.title,
                message: f.message,
                category: f.category.into(),
                host_id: f.host.as_ref().map(|h| h.0.clone()),
                hostname: f.host.map(|h| h.1),
                machine_uuid: f.machine.map(|m| m.to_string()),
                subject: Some(f.key.clone()),
                timestamp: now_iso(),
            };
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    f.key,
                    Active {
                        record: record.clone(),
                    },
                );
            self.store(record).await;
        }
    }

    /// Stores, then announces.
    async fn store(&self, record: AlertRecord) {
        let r = record.clone();
        match self.db.run(move |db| db.append_alert(&r)).await {
            Ok(()) => {
                let _ = self.events.send(Arc::new(record));
            }
            Err(e) => tracing::error!(error = %e, "cannot store an alert"),
        }
    }

    pub async fn history(&self, limit: usize) -> crate::error::Result<Vec<AlertRecord>> {
        Ok(self.db.run(move |db| db.recent_alerts(limit)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(50.0, 85.0, 95.0), None);
        assert_eq!(level(85.0, 85.0, 95.0), Some("warning"));
        assert_eq!(level(99.0, 85.0, 95.0), Some("critical"));
    }
}
