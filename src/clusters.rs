//! Clusters (contract 4.4): named groups of machines whose `nodes` and `phase` derive from
//! the members' state. Membership is stored through `db/` and cached here; every change is
//! published as `cluster.added` / `cluster.updated` / `cluster.deleted`, and a member's status
//! change marks its clusters updated, debounced so that a burst gives one event per cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use orchard_plugin_api::MachineStatus;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::{AuditEntry, ClusterRecord, Db};
use crate::error::{Error, Result};
use crate::machines::{MachineEvent, Machines};
use crate::model::now_iso;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEvent {
    /// `cluster.added`, `cluster.updated` or `cluster.deleted`.
    pub kind: &'static str,
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub uuid: String,
    pub title: String,
    pub status: MachineStatus,
}

/// A cluster as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    pub name: String,
    pub machines: Vec<String>,
    pub nodes: Vec<Node>,
    pub phase: &'static str,
    pub addons: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `Empty` (no members), `Ready` (all running), `Stopped` (none running), else `Degraded`.
pub fn phase(statuses: &[MachineStatus]) -> &'static str {
    let running = statuses
        .iter()
        .filter(|s| **s == MachineStatus::Running)
        .count();
    match (statuses.len(), running) {
        (0, _) => "Empty",
        (n, r) if r == n => "Ready",
        (_, 0) => "Stopped",
        _ => "Degraded",
    }
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub struct Clusters {
    db: Db,
    machines: Arc<Machines>,
    cache: RwLock<BTreeMap<String, ClusterRecord>>,
    events: broadcast::Sender<ClusterEvent>,
    writes: tokio::sync::Mutex<()>,
}

impl Clusters {
    pub async fn load(db: Db, machines: Arc<Machines>) -> Result<Arc<Self>> {
        let records = db.run(|db| db.clusters()).await?;
        let cache = records.into_iter().map(|c| (c.name.clone(), c)).collect();
        Ok(Arc::new(Self {
            db,
            machines,
            cache: RwLock::new(cache),
            events: broadcast::channel(1024).0,
            writes: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    fn publish(&self, kind: &'static str, name: &str) {
        let _ = self.events.send(ClusterEvent {
            kind,
            name: name.to_owned(),
        });
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ClusterRecord>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self, rec: &ClusterRecord) -> ClusterView {
        let nodes: Vec<Node> = self.machines.with_all(|all| {
            rec.machines
                .iter()
                .filter_map(|u| Uuid::parse_str(u).ok().and_then(|u| all.get(&u)))
                .map(|m| Node {
                    uuid: m.uuid.to_string(),
                    title: m.info.title.clone(),
                    status: m
                        .state
                        .as_ref()
                        .map(|s| s.status)
                        .unwrap_or(MachineStatus::Stopped),
                })
                .collect()
        });
        let statuses: Vec<MachineStatus> = nodes.iter().map(|n| n.status).collect();
        // A member the registry no longer has (deleted, its removal from the stored list still
        // in flight) is shown in neither list, so `machines` and `nodes` always agree.
        let machines = nodes.iter().map(|n| n.uuid.clone()).collect();
        ClusterView {
            name: rec.name.clone(),
            machines,
            phase: phase(&statuses),
            nodes,
            addons: rec.addons.clone(),
            created_at: rec.created_at.clone(),
            updated_at: rec.updated_at.clone(),
        }
    }

    pub fn list(&self) -> Vec<ClusterView> {
        self.cache().values().map(|c| self.view(c)).collect()
    }

    pub fn get(&self, name: &str) -> Result<ClusterView> {
        self.cache()
            .get(name)
            .map(|c| self.view(c))
            .ok_or_else(|| Error::not_found(format!("no cluster {name:?}")))
    }

    /// Checks a member list: existing machines, no repeats (kept in the order given).
    fn members(&self, list: Vec<String>) -> Result<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for raw in list {
            let uuid = Uuid::parse_str(&raw)
                .ok()
                .filter(|u| self.machines.get(*u).is_some())
                .ok_or_else(|| Error::bad_request(format!("no machine {raw}")))?;
            if seen.insert(uuid) {
                out.push(uuid.to_string());
            }
        }
        Ok(out)
    }

    fn addons(list: Vec<String>) -> Result<Vec<String>> {
        if list.len() > 64 || list.iter().any(|a| a.is_empty() || a.len() > 64) {
            return Err(Error::bad_request("at most 64 addons of 1-64 characters"));
        }
        Ok(list)
    }

    pub async fn create(
        &self,
        name: String,
        machines: Vec<String>,
        addons: Vec<String>,
        audit: AuditEntry,
    ) -> Result<ClusterView> {
        if !valid_name(&name) {
            return Err(Error::bad_request(
                "cluster names match ^[a-z0-9][a-z0-9-]{0,62}$",
            ));
        }
        let _w = self.writes.lock().await;
        let now = now_iso();
        let rec = ClusterRecord {
            name: name.clone(),
            machines: self.members(machines)?,
            addons: Self::addons(addons)?,
            created_at: now.clone(),
            updated_at: now,
        };
        let stored = rec.clone();
        let audit = audit.target(name.clone());
        self.db
            .run(move |db| db.create_cluster(&stored, audit))
            .await?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), rec.clone());
        self.publish("cluster.added", &name);
        Ok(self.view(&rec))
    }

    /// Replaces the lists given.
    pub async fn update(
        &self,
        name: &str,
        machines: Option<Vec<String>>,
        addons: Option<Vec<String>>,
        audit: AuditEntry,
    ) -> Result<ClusterView> {
        let _w = self.writes.lock().await;
        let mut rec = self
            .cache()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no cluster {name:?}")))?;
        if let Some(m) = machines {
            rec.machines = self.members(m)?;
        }
        if let Some(a) = addons {
            rec.addons = Self::addons(a)?;
        }
        rec.updated_at = now_iso();
        self.store(rec.clone(), Some(audit.target(name.to_owned())))
            .await?;
        Ok(self.view(&rec))
    }

    /// Stores, then announces the update.
    async fn store(&self, rec: ClusterRecord, audit: Option<AuditEntry>) -> Result<()> {
        let name = rec.name.clone();
        self.save(rec, audit).await?;
        self.publish("cluster.updated", &name);
        Ok(())
    }

    async fn save(&self, rec: ClusterRecord, audit: Option<AuditEntry>) -> Result<()> {
        let stored = rec.clone();
        self.db
            .run(move |db| db.update_cluster(&stored, audit))
            .await?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.name.clone(), rec);
        Ok(())
    }

    pub async fn delete(&self, name: &str, audit: AuditEntry) -> Result<()> {
        let _w = self.writes.lock().await;
        let owned = name.to_owned();
        let audit = audit.target(owned.clone());
        self.db
            .run(move |db| db.delete_cluster(&owned, audit))
            .await?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.publish("cluster.deleted", name);
        Ok(())
    }

    /// The clusters `machine` belongs to.
    fn of(&self, machine: &Uuid) -> Vec<String> {
        let id = machine.to_string();
        self.cache()
            .values()
            .filter(|c| c.machines.contains(&id))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Follows the machines: a member's status or title change, or a deleted member leaving,
    /// marks its clusters dirty. Dirty clusters are announced once the changes pause for
    /// `debounce` (at the latest `4 × debounce` after the first change), so a burst of member
    /// changes gives one `cluster.updated` per cluster.
    pub fn start(self: &Arc<Self>, debounce: Duration) {
        let me = self.clone();
        let mut rx = self.machines.subscribe();
        let debounce = debounce.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut dirty: BTreeSet<String> = BTreeSet::new();
            // (quiet deadline, hard deadline) while something is dirty.
            let mut due: Option<(Instant, Instant)> = None;
            loop {
                let wake = due.map(|(quiet, hard)| quiet.min(hard));
                tokio::select! {
                    e = rx.recv() => {
                        let touched = match e {
                            Ok(MachineEvent::StatusChanged { uuid, .. }) => me.of(&uuid),
                            Ok(MachineEvent::Updated(m)) => me.of(&m.uuid),
                            Ok(MachineEvent::Deleted { uuid }) => me.drop_member(uuid).await,
                            Ok(_) => Vec::new(),
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                me.cache().keys().cloned().collect()
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        };
                        if !touched.is_empty() {
                            dirty.extend(touched);
                            let now = Instant::now();
                            let hard = due.map_or(now + debounce * 4, |(_, hard)| hard);
                            due = Some((now + debounce, hard));
                        }
                    }
                    _ = sleep_until(wake), if wake.is_some() => {
                        due = None;
                        for name in std::mem::take(&mut dirty) {
                            // A cluster deleted meanwhile has nothing left to update.
                            if me.cache().contains_key(&name) {
                                me.publish("cluster.updated", &name);
                            }
                        }
                    }
                }
            }
        });
    }

    /// Removes a deleted machine from every cluster holding it (stored first); returns those
    /// clusters, whose update the caller announces.
    async fn drop_member(&self, machine: Uuid) -> Vec<String> {
        let _w = self.writes.lock().await;
        let id = machine.to_string();
        let affected: Vec<ClusterRecord> = self
            .cache()
            .values()
            .filter(|c| c.machines.contains(&id))
            .cloned()
            .collect();
        let mut changed = Vec::new();
        for mut rec in affected {
            rec.machines.retain(|m| *m != id);
            rec.updated_at = now_iso();
            let name = rec.name.clone();
            match self.save(rec, None).await {
                Ok(()) => changed.push(name),
                Err(e) => {
                    tracing::error!(error = %e, "cannot remove a deleted machine from its cluster")
                }
            }
        }
        changed
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineStatus::*;

    #[test]
    fn phases() {
        assert_eq!(phase(&[]), "Empty");
        assert_eq!(phase(&[Running, Running]), "Ready");
        assert_eq!(phase(&[Stopped, Error]), "Stopped");
        assert_eq!(phase(&[Running, Stopped]), "Degraded");
        assert_eq!(phase(&[Booting]), "Stopped");
    }

    #[test]
    fn names() {
        assert!(valid_name("prod-1"));
        assert!(valid_name("0"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Prod"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(valid_name(&"a".repeat(63)));
    }
}
