//! The machine registry: the latest properties and state of every machine of every backend,
//! kept fresh by bulk polling and plugin events, plus who owns, is assigned to and subscribes
//! to what (persisted through `db/`, cached here). Clients read the registry; they never
//! cause backend calls of their own.
//!
//! Every change is published once on the [`MachineEvent`] bus for the WebSocket APIs.

pub mod payload;
mod poller;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use orchard_plugin_api::{
    CreateSpec, DiskUsage, Event, MachineInfo, MachineState, MachineStatus, MetadataUpdate,
    PowerAction,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::backends::{Backend, BackendError, Backends};
use crate::db::{AuditEntry, Db, Relations};
use crate::model::{Permission, User};

pub use poller::spawn as spawn_poller;

/// One machine as the registry knows it.
#[derive(Clone, Debug)]
pub struct Machine {
    pub uuid: Uuid,
    pub backend: Arc<str>,
    pub info: MachineInfo,
    pub state: Option<MachineState>,
    pub disks: Option<Vec<DiskUsage>>,
    /// Open connections (console sessions, …) as the backend reports them.
    pub connections: Vec<String>,
    pub relations: Relations,
    /// Bumped by every status event, so that a poll that started before the event does not
    /// overwrite the newer status with its older one.
    pub status_epoch: u64,
    /// When the status last changed (ISO 8601), as far as this daemon saw it.
    pub status_since: Option<String>,
}

/// What happened to machines, published once for every listener.
#[derive(Clone, Debug)]
pub enum MachineEvent {
    Created(Arc<Machine>),
    /// Properties changed (title, description, tags, …).
    Updated(Arc<Machine>),
    Deleted {
        uuid: Uuid,
    },
    /// Owner or clients changed (each listener compares with what it had told its sockets).
    RelationsChanged {
        machine: Arc<Machine>,
    },
    StatusChanged {
        uuid: Uuid,
        status: MachineStatus,
    },
    BootStart {
        uuid: Uuid,
    },
    BootSuccess {
        uuid: Uuid,
    },
    BootFail {
        uuid: Uuid,
        error: String,
    },
    ShutdownStart {
        uuid: Uuid,
    },
    ShutdownSuccess {
        uuid: Uuid,
    },
    ShutdownFail {
        uuid: Uuid,
        error: String,
    },
    SubscriptionChanged {
        user: Uuid,
        machine: Uuid,
        subscribed: bool,
    },
    ConsoleOutput {
        session: Arc<str>,
        data: bytes::Bytes,
    },
    ConsoleClosed {
        session: Arc<str>,
    },
}

/// Why a machine operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("no machine {0}")]
    NotFound(String),
    #[error("a machine titled {0:?} already exists")]
    TitleTaken(String),
    #[error("no backend named {0:?}")]
    NoBackend(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

pub struct Machines {
    machines: RwLock<HashMap<Uuid, Machine>>,
    usernames: RwLock<HashMap<Uuid, String>>,
    pub backends: Backends,
    events: broadcast::Sender<MachineEvent>,
    db: Db,
    /// Serialises creates and renames so that title uniqueness holds.
    titles: tokio::sync::Mutex<()>,
    /// Relations of machines being created, by title, so that the plugin's
    /// `machine_created` event (which may arrive before `create` returns) carries the owner.
    pending: std::sync::Mutex<HashMap<String, Relations>>,
}

/// A user sees a machine they own or are assigned to, or every machine with VIEW_ALL_VMS.
pub fn sees(user: &User, rel: &Relations) -> bool {
    user.has(Permission::ViewAllVms) || involved(user.uuid, rel)
}

/// A user controls a machine they own or are assigned to, or every machine with
/// MANAGE_ALL_VMS.
pub fn controls(user: &User, rel: &Relations) -> bool {
    user.has(Permission::ManageAllVms) || involved(user.uuid, rel)
}

fn involved(user: Uuid, rel: &Relations) -> bool {
    rel.owner == Some(user) || rel.clients.contains(&user)
}

/// Stores polled states. A machine whose status changed by event since the poll began keeps
/// that newer status. Returns the status changes seen, and whether unknown machines showed up.
fn apply_states(
    all: &mut HashMap<Uuid, Machine>,
    states: Vec<MachineState>,
    epochs: &HashMap<Uuid, u64>,
) -> (Vec<(Uuid, MachineStatus)>, bool) {
    let mut changes = Vec::new();
    let mut unknown = false;
    for s in states {
        let Ok(uuid) = Uuid::parse_str(&s.uuid) else {
            continue;
        };
        let Some(m) = all.get_mut(&uuid) else {
            unknown = true;
            continue;
        };
        if epochs.get(&uuid) != Some(&m.status_epoch) {
            // A status event arrived while this poll ran: the event is newer.
            continue;
        }
        let before = m.state.as_ref().map(|x| x.status);
        if before.is_some() && before != Some(s.status) {
            changes.push((uuid, s.status));
            m.status_since = Some(crate::model::now_iso());
        }
        m.state = Some(s);
    }
    (changes, unknown)
}

fn title_is_valid(title: &str) -> bool {
    let t = title.trim();
    !t.is_empty() && t.len() <= 128 && t == title && !title.chars().any(char::is_control)
}

impl Machines {
    pub fn new(
        backends: Backends,
        db: Db,
        usernames: HashMap<Uuid, String>,
        event_buffer: usize,
    ) -> Self {
        let (events, _) = broadcast::channel(event_buffer.max(1));
        Self {
            machines: RwLock::new(HashMap::new()),
            usernames: RwLock::new(usernames),
            backends,
            events,
            db,
            titles: tokio::sync::Mutex::new(()),
            pending: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<MachineEvent> {
        self.events.subscribe()
    }

    fn publish(&self, e: MachineEvent) {
        let _ = self.events.send(e);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Machine>> {
        self.machines.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Machine>> {
        self.machines.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn usernames(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, String>> {
        self.usernames.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn note_user(&self, uuid: Uuid, username: &str) {
        self.usernames
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uuid, username.to_owned());
    }

    /// A user was deleted: drop them from every machine's relations (the database already
    /// did the same in the deleting transaction).
    pub fn forget_user(&self, user: Uuid) {
        self.usernames
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&user);
        let mut changed = Vec::new();
        {
            let mut all = self.write();
            for m in all.values_mut() {
                if involved(user, &m.relations) {
                    if m.relations.owner == Some(user) {
                        m.relations.owner = None;
                    }
                    m.relations.clients.remove(&user);
                    changed.push(Arc::new(m.clone()));
                }
            }
        }
        for machine in changed {
            self.publish(MachineEvent::RelationsChanged { machine });
        }
    }

    pub fn get(&self, uuid: Uuid) -> Option<Machine> {
        self.read().get(&uuid).cloned()
    }

    /// Resolves a machine by uuid, then by title.
    pub fn find(&self, name: &str) -> Option<Machine> {
        let all = self.read();
        if let Ok(u) = Uuid::parse_str(name)
            && let Some(m) = all.get(&u)
        {
            return Some(m.clone());
        }
        all.values().find(|m| m.info.title == name).cloned()
    }

    /// Refreshes one machine's open connections (after a console opened or closed).
    pub async fn refresh_connections(&self, uuid: Uuid) {
        let Ok((backend, _)) = self.backend_of(uuid) else {
            return;
        };
        if let Ok(list) = backend.connections(&[uuid.to_string()]).await {
            let mut all = self.write();
            for c in list {
                if let Some(m) = Uuid::parse_str(&c.uuid).ok().and_then(|u| all.get_mut(&u)) {
                    m.connections = c.active_connections;
                }
            }
        }
    }

    /// Opens a console on a machine's backend; the session id routes its output.
    pub async fn console_open(&self, uuid: Uuid) -> Result<(Arc<Backend>, String), MachineError> {
        let (backend, _) = self.backend_of(uuid)?;
        let opened = backend.console_open(uuid.to_string()).await?;
        Ok((backend, opened.session))
    }

    /// Runs `f` over every machine under the read lock (no cloning).
    pub fn with_all<R>(&self, f: impl FnOnce(&HashMap<Uuid, Machine>) -> R) -> R {
        f(&self.read())
    }

    /// The machines `user` sees, sorted by title.
    pub fn visible_to(&self, user: &User) -> Vec<Machine> {
        let mut v: Vec<Machine> = self
            .read()
            .values()
            .filter(|m| sees(user, &m.relations))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.info.title.cmp(&b.info.title));
        v
    }

    fn title_taken(&self, title: &str, except: Option<Uuid>) -> bool {
        self.read()
            .values()
            .any(|m| m.info.title == title && Some(m.uuid) != except)
    }

    fn backend_of(&self, uuid: Uuid) -> Result<(Arc<Backend>, Machine), MachineError> {
        let m = self
            .get(uuid)
            .ok_or_else(|| MachineError::NotFound(uuid.to_string()))?;
        let b = self
            .backends
            .get(&m.backend)
            .cloned()
            .ok_or_else(|| MachineError::NoBackend(m.backend.to_string()))?;
        Ok((b, m))
    }

    /// Inserts a machine the registry did not know; publishes `Created` once.
    fn insert_new(
        &self,
        backend: &str,
        info: MachineInfo,
        relations: Option<Relations>,
    ) -> Option<Arc<Machine>> {
        let uuid = Uuid::parse_str(&info.uuid).ok()?;
        let relations = relations.or_else(|| {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&info.title)
                .cloned()
        });
        let mut all = self.write();
        if all.contains_key(&uuid) {
            return None;
        }
        let m = Machine {
            uuid,
            backend: Arc::from(backend),
            info,
            state: None,
            disks: None,
            connections: Vec::new(),
            relations: relations.unwrap_or_default(),
            status_epoch: 0,
            status_since: None,
        };
        let snapshot = Arc::new(m.clone());
        all.insert(uuid, m);
        drop(all);
        self.publish(MachineEvent::Created(snapshot.clone()));
        Some(snapshot)
    }

    fn replace_info(&self, info: MachineInfo) {
        let Ok(uuid) = Uuid::parse_str(&info.uuid) else {
            return;
        };
        let snapshot = {
            let mut all = self.write();
            let Some(m) = all.get_mut(&uuid) else {
                return;
            };
            if m.info == info {
                return;
            }
            m.info = info;
            Arc::new(m.clone())
        };
        self.publish(MachineEvent::Updated(snapshot));
    }

    /// Removes a machine; publishes `Deleted` once and forgets its relations in the store.
    async fn remove(&self, uuid: Uuid) {
        let removed = self.write().remove(&uuid).is_some();
        if removed {
            self.publish(MachineEvent::Deleted { uuid });
            if let Err(e) = self.db.run(move |db| db.forget_machine(uuid)).await {
                tracing::error!(%uuid, error = %e, "cannot forget a deleted machine's relations");
            }
        }
    }

    fn set_status(&self, uuid: Uuid, status: MachineStatus) {
        let changed = {
            let mut all = self.write();
            let Some(m) = all.get_mut(&uuid) else {
                return;
            };
            let info = &m.info;
            // A machine not polled yet has no state: its first status is a change too.
            let first = m.state.is_none();
            let s = m.state.get_or_insert_with(|| MachineState {
                uuid: info.uuid.clone(),
                status,
                vcpu: info.vcpu,
                cpu_percent: 0.0,
                ram_max_mib: info.ram_max_mib,
                ram_used_mib: 0,
                boot_timestamp: None,
                net_rx_bytes: 0,
                net_tx_bytes: 0,
                disk_read_bytes: 0,
                disk_write_bytes: 0,
            });
            let changed = first || s.status != status;
            s.status = status;
            m.status_epoch += 1;
            if changed {
                m.status_since = Some(crate::model::now_iso());
            }
            // Keep the figures consistent with the new status until the refresh that
            // follows every status change brings the backend's own.
            match status {
                MachineStatus::Stopped | MachineStatus::Error => {
                    s.cpu_percent = 0.0;
                    s.ram_used_mib = 0;
                    s.boot_timestamp = None;
                    s.net_rx_bytes = 0;
                    s.net_tx_bytes = 0;
                    s.disk_read_bytes = 0;
                    s.disk_write_bytes = 0;
                }
                _ => {
                    if s.boot_timestamp.is_none() {
                        s.boot_timestamp = Some(crate::model::now_iso());
                    }
                }
            }
            changed
        };
        if changed {
            self.publish(MachineEvent::StatusChanged { uuid, status });
        }
    }

    /// Loads relations from the store and takes every backend's first inventory.
    pub async fn initial_sync(&self) {
        let relations = match self.db.run(|db| db.all_relations()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read machine relations");
                HashMap::new()
            }
        };
        for backend in self.backends.loaded.clone() {
            match backend.list_machines().await {
                Ok(list) => {
                    let mut all = self.write();
                    for info in list {
                        let Ok(uuid) = Uuid::parse_str(&info.uuid) else {
                            tracing::warn!(backend = backend.name(), uuid = %info.uuid, "machine with an invalid uuid ignored");
                            continue;
                        };
                        all.insert(
                            uuid,
                            Machine {
                                uuid,
                                backend: Arc::from(backend.name()),
                                info,
                                state: None,
                                disks: None,
                                connections: Vec::new(),
                                relations: relations.get(&uuid).cloned().unwrap_or_default(),
                                status_epoch: 0,
                                status_since: None,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(backend = backend.name(), error = %e, "cannot list machines")
                }
            }
            self.poll_state(&backend).await;
            self.poll_disks(&backend).await;
            self.poll_connections(&backend).await;
        }
    }

    /// One bulk state call for a backend; `false` when it failed.
    pub async fn poll_state(&self, backend: &Backend) -> bool {
        let epochs = self.epochs(|m| &*m.backend == backend.name());
        match backend.bulk_state(&[]).await {
            Ok(states) => {
                let (changes, unknown) = apply_states(&mut self.write(), states, &epochs);
                for (uuid, status) in changes {
                    self.publish(MachineEvent::StatusChanged { uuid, status });
                }
                if unknown {
                    self.reconcile(backend).await;
                }
                true
            }
            Err(e) => {
                tracing::warn!(backend = backend.name(), error = %e, "bulk state failed");
                false
            }
        }
    }

    /// Refreshes one machine's state (after a status change).
    pub async fn refresh_state(&self, uuid: Uuid) {
        let Ok((backend, _)) = self.backend_of(uuid) else {
            return;
        };
        let epochs = self.epochs(|m| m.uuid == uuid);
        if let Ok(states) = backend.bulk_state(&[uuid.to_string()]).await {
            let changes = apply_states(&mut self.write(), states, &epochs).0;
            for (uuid, status) in changes {
                self.publish(MachineEvent::StatusChanged { uuid, status });
            }
        }
    }

    fn epochs(&self, pick: impl Fn(&Machine) -> bool) -> HashMap<Uuid, u64> {
        self.read()
            .values()
            .filter(|m| pick(m))
            .map(|m| (m.uuid, m.status_epoch))
            .collect()
    }

    /// One bulk disks call; `false` when it failed (unsupported is not a failure).
    pub async fn poll_disks(&self, backend: &Backend) -> bool {
        match backend.disks(&[]).await {
            Ok(list) => {
                let mut all = self.write();
                for d in list {
                    if let Some(m) = Uuid::parse_str(&d.uuid).ok().and_then(|u| all.get_mut(&u)) {
                        m.disks = Some(d.disks);
                    }
                }
                true
            }
            Err(BackendError::Unsupported(_)) => true,
            Err(e) => {
                tracing::warn!(backend = backend.name(), error = %e, "disks poll failed");
                false
            }
        }
    }

    /// One bulk connections call; `false` when it failed (unsupported is not a failure).
    pub async fn poll_connections(&self, backend: &Backend) -> bool {
        match backend.connections(&[]).await {
            Ok(list) => {
                let mut all = self.write();
                for c in list {
                    if let Some(m) = Uuid::parse_str(&c.uuid).ok().and_then(|u| all.get_mut(&u)) {
                        m.connections = c.active_connections;
                    }
                }
                true
            }
            Err(BackendError::Unsupported(_)) => true,
            Err(e) => {
                tracing::warn!(backend = backend.name(), error = %e, "connections poll failed");
                false
            }
        }
    }

    /// Brings the registry in line with the backend's own list (machines created or removed
    /// behind our back).
    pub async fn reconcile(&self, backend: &Backend) {
        let list = match backend.list_machines().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(backend = backend.name(), error = %e, "list refresh failed");
                return;
            }
        };
        let listed: std::collections::HashSet<Uuid> = list
            .iter()
            .filter_map(|i| Uuid::parse_str(&i.uuid).ok())
            .collect();
        let gone: Vec<Uuid> = self
            .read()
            .values()
            .filter(|m| &*m.backend == backend.name() && !listed.contains(&m.uuid))
            .map(|m| m.uuid)
            .collect();
        for uuid in gone {
            self.remove(uuid).await;
        }
        for info in list {
            let known = Uuid::parse_str(&info.uuid)
                .ok()
                .is_some_and(|u| self.read().contains_key(&u));
            if known {
                self.replace_info(info);
            } else {
                self.insert_new(backend.name(), info, None);
            }
        }
    }

    /// Applies one plugin event.
    pub async fn apply(&self, backend: &str, event: Event) {
        let id = |s: &str| Uuid::parse_str(s).ok();
        match event {
            Event::MachineCreated { machine } => {
                self.insert_new(backend, machine, None);
            }
            Event::MachineUpdated { machine } => self.replace_info(machine),
            Event::MachineDeleted { uuid } => {
                if let Some(u) = id(&uuid) {
                    self.remove(u).await;
                }
            }
            Event::StateChanged { uuid, status } => {
                if let Some(u) = id(&uuid) {
                    self.set_status(u, status);
                }
            }
            Event::BootStart { uuid } => {
                self.lifecycle(&uuid, |uuid| MachineEvent::BootStart { uuid })
            }
            Event::BootSuccess { uuid } => {
                self.lifecycle(&uuid, |uuid| MachineEvent::BootSuccess { uuid })
            }
            Event::BootFail { uuid, error } => {
                self.lifecycle(&uuid, |uuid| MachineEvent::BootFail { uuid, error })
            }
            Event::ShutdownStart { uuid } => {
                self.lifecycle(&uuid, |uuid| MachineEvent::ShutdownStart { uuid })
            }
            Event::ShutdownSuccess { uuid } => {
                self.lifecycle(&uuid, |uuid| MachineEvent::ShutdownSuccess { uuid })
            }
            Event::ShutdownFail { uuid, error } => {
                self.lifecycle(&uuid, |uuid| MachineEvent::ShutdownFail { uuid, error })
            }
            Event::ConsoleClosed { session } => self.publish(MachineEvent::ConsoleClosed {
                session: Arc::from(session),
            }),
        }
    }

    fn lifecycle(&self, uuid: &str, make: impl FnOnce(Uuid) -> MachineEvent) {
        if let Ok(u) = Uuid::parse_str(uuid)
            && self.read().contains_key(&u)
        {
            self.publish(make(u));
        }
    }

    pub fn console_output(&self, session: String, data: Vec<u8>) {
        self.publish(MachineEvent::ConsoleOutput {
            session: Arc::from(session),
            data: bytes::Bytes::from(data),
        });
    }

    // ---- operations requested by users (authorisation is the caller's) ----

    /// Creates a machine on `backend` (default: the simulator, else the first backend that
    /// can create); `owner` owns it.
    pub async fn create(
        &self,
        backend: Option<&str>,
        spec: CreateSpec,
        owner: &User,
        audit: AuditEntry,
    ) -> Result<Machine, MachineError> {
        let backend = match backend {
            Some(name) => self
                .backends
                .get(name)
                .cloned()
                .ok_or_else(|| MachineError::NoBackend(name.to_owned()))?,
            None => self
                .backends
                .get("simulator")
                .filter(|b| !b.is_failed())
                .or_else(|| {
                    self.backends.loaded.iter().find(|b| {
                        !b.is_failed() && b.has_capability(orchard_plugin_api::capability::CREATE)
                    })
                })
                .cloned()
                .ok_or_else(|| MachineError::NoBackend("(any that can create)".into()))?,
        };
        let _titles = self.titles.lock().await;
        if self.title_taken(&spec.title, None) {
            return Err(MachineError::TitleTaken(spec.title));
        }
        let relations = Relations {
            owner: Some(owner.uuid),
            clients: Default::default(),
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.title.clone(), relations.clone());
        let created = backend.create(&spec).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.title);
        let info = created?;
        let uuid = Uuid::parse_str(&info.uuid).map_err(|_| {
            MachineError::Backend(BackendError::Failed {
                name: backend.name().to_owned(),
                message: format!("created machine has an invalid uuid {:?}", info.uuid),
            })
        })?;
        let owner_id = owner.uuid;
        let audit = audit.target(uuid.to_string());
        self.db
            .run(move |db| db.set_owner(uuid, Some(owner_id), Some(audit)))
            .await?;
        if self
            .insert_new(backend.name(), info, Some(relations.clone()))
            .is_none()
        {
            // The plugin's `machine_created` event got here first: record the owner.
            self.change_relations(uuid, |r| *r = relations.clone());
        }
        self.get(uuid)
            .ok_or_else(|| MachineError::NotFound(uuid.to_string()))
    }

    fn change_relations(&self, uuid: Uuid, f: impl FnOnce(&mut Relations)) {
        let event = {
            let mut all = self.write();
            let Some(m) = all.get_mut(&uuid) else {
                return;
            };
            let before = m.relations.clone();
            f(&mut m.relations);
            if before == m.relations {
                return;
            }
            MachineEvent::RelationsChanged {
                machine: Arc::new(m.clone()),
            }
        };
        self.publish(event);
    }

    pub async fn update(
        &self,
        uuid: Uuid,
        update: MetadataUpdate,
    ) -> Result<Machine, MachineError> {
        let (backend, _) = self.backend_of(uuid)?;
        let _titles = self.titles.lock().await;
        if let Some(t) = &update.title
            && self.title_taken(t, Some(uuid))
        {
            return Err(MachineError::TitleTaken(t.clone()));
        }
        let info = backend.update_metadata(uuid.to_string(), &update).await?;
        self.replace_info(info);
        self.get(uuid)
            .ok_or_else(|| MachineError::NotFound(uuid.to_string()))
    }

    pub async fn delete(&self, uuid: Uuid) -> Result<(), MachineError> {
        let (backend, _) = self.backend_of(uuid)?;
        backend.delete(uuid.to_string()).await?;
        self.remove(uuid).await;
        Ok(())
    }

    pub async fn power(&self, uuid: Uuid, action: PowerAction) -> Result<(), MachineError> {
        let (backend, _) = self.backend_of(uuid)?;
        backend.power(uuid.to_string(), action).await?;
        Ok(())
    }

    pub async fn set_owner(
        &self,
        uuid: Uuid,
        owner: Option<Uuid>,
        audit: AuditEntry,
    ) -> Result<Machine, MachineError> {
        if self.get(uuid).is_none() {
            return Err(MachineError::NotFound(uuid.to_string()));
        }
        self.db
            .run(move |db| db.set_owner(uuid, owner, Some(audit)))
            .await?;
        self.change_relations(uuid, |r| r.owner = owner);
        self.get(uuid)
            .ok_or_else(|| MachineError::NotFound(uuid.to_string()))
    }

    pub async fn set_client(
        &self,
        uuid: Uuid,
        user: Uuid,
        assigned: bool,
        audit: AuditEntry,
    ) -> Result<Machine, MachineError> {
        if self.get(uuid).is_none() {
            return Err(MachineError::NotFound(uuid.to_string()));
        }
        self.db
            .run(move |db| db.set_client(uuid, user, assigned, Some(audit)))
            .await?;
        self.change_relations(uuid, |r| {
            if assigned {
                r.clients.insert(user);
            } else {
                r.clients.remove(&user);
            }
        });
        self.get(uuid)
            .ok_or_else(|| MachineError::NotFound(uuid.to_string()))
    }

    pub async fn subscriptions(&self, user: Uuid) -> Result<Vec<Uuid>, MachineError> {
        Ok(self.db.run(move |db| db.subscriptions(user)).await?)
    }

    pub async fn set_subscription(
        &self,
        user: Uuid,
        machine: Uuid,
        subscribed: bool,
    ) -> Result<(), MachineError> {
        let changed = self
            .db
            .run(move |db| db.set_subscription(user, machine, subscribed))
            .await?;
        if changed {
            self.publish(MachineEvent::SubscriptionChanged {
                user,
                machine,
                subscribed,
            });
        }
        Ok(())
    }

    pub fn title_ok(title: &str) -> bool {
        title_is_valid(title)
    }
}
