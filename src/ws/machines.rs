//! The machines API (`api-docs/A-machines.md`): `/ws/machines/subscribed`, `/account` and
//! `/global`. One hub keeps every machines socket with the set of machines it follows; each
//! message is encoded once per audience and the same bytes go to every socket in it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use uuid::Uuid;

use super::Socket;
use super::conn::{self, CloseWith, Control, Reply, Text, code};
use crate::machines::{Machine, MachineEvent, Machines, sees};
use crate::model::{Permission, User, now_iso};
use crate::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Subscribed,
    Account,
    Global,
}

pub fn route(path: &str) -> Option<Kind> {
    match path {
        "/ws/machines/subscribed" => Some(Kind::Subscribed),
        "/ws/machines/account" => Some(Kind::Account),
        "/ws/machines/global" => Some(Kind::Global),
        _ => None,
    }
}

/// `{uuid, type, body, timestamp}` with a pre-encoded body.
/// The machines named by `machine_uuid=` parameters of a query string (others are ignored).
pub fn query_machines(query: &str) -> BTreeSet<Uuid> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "machine_uuid")
        .filter_map(|(_, v)| Uuid::parse_str(&v).ok())
        .collect()
}

fn envelope(kind: &str, body: &str) -> Text {
    let mut s = String::with_capacity(body.len() + 128);
    let _ = write!(
        s,
        r#"{{"uuid":"{}","type":"{}","body":{},"timestamp":"{}"}}"#,
        Uuid::new_v4(),
        kind,
        body,
        now_iso()
    );
    Text::from(s)
}

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A dict `{uuid: fragment}` of pre-encoded fragments.
fn dict<'a>(entries: impl Iterator<Item = (&'a Uuid, &'a str)>) -> String {
    let mut s = String::from("{");
    for (i, (u, frag)) in entries.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#""{u}":{frag}"#);
    }
    s.push('}');
    s
}

/// What a socket gets on joining, in order: DATA_STATIC (`None`), then the three periodic
/// payloads.
const INITIAL: [Option<Periodic>; 4] = [
    None,
    Some(Periodic::Dynamic),
    Some(Periodic::Disks),
    Some(Periodic::Connections),
];

/// One full message (DATA_STATIC for `None`) for `list`.
fn snapshot(which: Option<Periodic>, list: &[&Machine], names: &HashMap<Uuid, String>) -> Text {
    let frags: Vec<(Uuid, String)> = list
        .iter()
        .map(|m| {
            let frag = match which {
                None => encode(&m.properties(names)),
                Some(p) => p.fragment(m),
            };
            (m.uuid, frag)
        })
        .collect();
    let kind = which.map_or("DATA_STATIC", Periodic::kind);
    envelope(kind, &dict(frags.iter().map(|(u, s)| (u, s.as_str()))))
}

/// One socket as the hub sees it.
struct Sub {
    kind: Kind,
    user: User,
    /// Machines given with `?machine_uuid=` (subscribed only).
    extra: BTreeSet<Uuid>,
    /// Stored subscriptions (subscribed only).
    stored: BTreeSet<Uuid>,
    /// The machines this socket follows now (unused for global: all of them).
    set: BTreeSet<Uuid>,
    /// `set` as a shareable key for per-audience encoding.
    key: Arc<[Uuid]>,
    ctl: Arc<Control>,
}

impl Sub {
    fn follows(&self, m: &Uuid) -> bool {
        self.kind == Kind::Global || self.set.contains(m)
    }

    /// Whether the socket was told `m` exists (`/global` sockets: `globally_known`, what the
    /// hub announced).
    fn told_of(&self, m: &Uuid, globally_known: bool) -> bool {
        if self.kind == Kind::Global {
            globally_known
        } else {
            self.set.contains(m)
        }
    }

    fn rekey(&mut self) {
        self.key = self.set.iter().copied().collect();
    }

    /// Recomputes the set from the registry (subscribed and account).
    fn recompute(&mut self, all: &HashMap<Uuid, Machine>) {
        self.set = match self.kind {
            Kind::Global => BTreeSet::new(),
            Kind::Account => all
                .values()
                .filter(|m| involved(&self.user, m))
                .map(|m| m.uuid)
                .collect(),
            Kind::Subscribed => self
                .stored
                .iter()
                .chain(self.extra.iter())
                .filter(|u| all.get(u).is_some_and(|m| sees(&self.user, &m.relations)))
                .copied()
                .collect(),
        };
        self.rekey();
    }
}

fn involved(user: &User, m: &Machine) -> bool {
    m.relations.owner == Some(user.uuid) || m.relations.clients.contains(&user.uuid)
}

pub struct Hub {
    machines: Arc<Machines>,
    subs: Mutex<HashMap<u64, Sub>>,
    next: AtomicU64,
    /// The initial messages of a `/global` socket (DATA_STATIC, DATA_DYNAMIC, …_DISKS,
    /// …_CONNECTIONS), encoded once and shared by every socket that joins until something
    /// they show changes; with thousands of machines this is what makes connecting cheap.
    global_initial: Mutex<[Option<Text>; 4]>,
    /// The machines whose existence the hub has announced (`CREATE` / `DELETE` processed),
    /// so that a resync after missed events can tell `/global` sockets what changed.
    known: Mutex<BTreeSet<Uuid>>,
}

/// Removes a socket from the hub when dropped.
pub struct Membership {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}

/// Which payload a periodic message carries.
#[derive(Clone, Copy)]
enum Periodic {
    Dynamic,
    Disks,
    Connections,
}

impl Periodic {
    fn kind(self) -> &'static str {
        match self {
            Self::Dynamic => "DATA_DYNAMIC",
            Self::Disks => "DATA_DYNAMIC_DISKS",
            Self::Connections => "DATA_DYNAMIC_CONNECTIONS",
        }
    }

    fn fragment(self, m: &Machine) -> String {
        match self {
            Self::Dynamic => encode(&m.state_payload()),
            Self::Disks => encode(&m.disks_payload()),
            Self::Connections => encode(&m.connections_payload()),
        }
    }
}

impl Hub {
    pub fn new(machines: Arc<Machines>) -> Arc<Self> {
        Arc::new(Self {
            machines,
            subs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            global_initial: Mutex::new([None, None, None, None]),
            known: Mutex::new(BTreeSet::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sub>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the hub's event pump and periodic broadcasts.
    pub fn start(self: &Arc<Self>, state: &AppState) {
        let hub = self.clone();
        let mut events = self.machines.subscribe();
        *self.known() = self.machines.with_all(|all| all.keys().copied().collect());
        let coalesce = Duration::from_millis(state.config.ws.coalesce_ms);
        tokio::spawn(async move {
            loop {
                // Queue events quietly for up to `ws.coalesce_ms` after the first of a burst,
                // then wake each socket once: the burst leaves in one write per socket
                // (write coalescing in place of Nagle's algorithm, which is off).
                let mut next = events.recv().await;
                let until = tokio::time::Instant::now() + coalesce;
                loop {
                    match next {
                        Ok(e) => hub.on_event(&e),
                        Err(RecvError::Lagged(n)) => {
                            tracing::error!(
                                missed = n,
                                "machines hub fell behind; resending full state"
                            );
                            hub.resync();
                        }
                        Err(RecvError::Closed) => return,
                    }
                    next = match events.try_recv() {
                        Ok(e) => Ok(e),
                        Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(TryRecvError::Closed) => Err(RecvError::Closed),
                        Err(TryRecvError::Empty) if coalesce.is_zero() => break,
                        Err(TryRecvError::Empty) => tokio::select! {
                            e = events.recv() => e,
                            () = tokio::time::sleep_until(until) => break,
                        },
                    };
                }
                hub.wake_all();
            }
        });
        let m = &state.config.machines;
        for (period, which) in [
            (m.dynamic_interval, Periodic::Dynamic),
            (m.connections_interval, Periodic::Connections),
            (m.disks_interval, Periodic::Disks),
        ] {
            let hub = self.clone();
            let period = Duration::from_secs(period.max(1));
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    hub.broadcast(which);
                }
            });
        }
    }

    /// Adds a socket and queues its initial DATA_STATIC, DATA_DYNAMIC, DATA_DYNAMIC_DISKS and
    /// DATA_DYNAMIC_CONNECTIONS, under the hub lock so that no event slips in between.
    pub fn join(
        self: &Arc<Self>,
        kind: Kind,
        user: User,
        extra: BTreeSet<Uuid>,
        stored: BTreeSet<Uuid>,
        ctl: Arc<Control>,
    ) -> Membership {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut sub = Sub {
            kind,
            user,
            extra,
            stored,
            set: BTreeSet::new(),
            key: Arc::from([]),
            ctl,
        };
        let mut subs = self.lock();
        self.machines.with_all(|all| {
            sub.recompute(all);
            let names = self.machines.usernames();
            if kind == Kind::Global {
                let mut cache = self
                    .global_initial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let mut list: Vec<&Machine> = all.values().collect();
                list.sort_by_key(|m| m.uuid);
                for (slot, which) in cache.iter_mut().zip(INITIAL) {
                    let msg = slot.get_or_insert_with(|| snapshot(which, &list, &names));
                    sub.ctl.send(msg.clone());
                }
                return;
            }
            let chosen: Vec<&Machine> = sub.set.iter().filter_map(|u| all.get(u)).collect();
            for which in INITIAL {
                sub.ctl.send(snapshot(which, &chosen, &names));
            }
        });
        subs.insert(id, sub);
        Membership {
            hub: self.clone(),
            id,
        }
    }

    /// One periodic broadcast: each machine's fragment is encoded once, each audience's
    /// message once, and shared by every socket of that audience.
    fn broadcast(&self, which: Periodic) {
        let subs = self.lock();
        if subs.is_empty() {
            // Nothing to send; a socket joining later must not start from an old snapshot.
            *self
                .global_initial
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = [None, None, None, None];
            return;
        }
        self.machines.with_all(|all| {
            let mut frags: HashMap<Uuid, String> = HashMap::new();
            let mut frag = |m: &Machine| -> String {
                frags
                    .entry(m.uuid)
                    .or_insert_with(|| which.fragment(m))
                    .clone()
            };
            let mut global: Option<Text> = None;
            let mut by_set: HashMap<Arc<[Uuid]>, Text> = HashMap::new();
            for sub in subs.values() {
                let msg = match sub.kind {
                    Kind::Global => global
                        .get_or_insert_with(|| {
                            let mut list: Vec<(&Uuid, String)> =
                                all.iter().map(|(u, m)| (u, frag(m))).collect();
                            list.sort_by(|a, b| a.0.cmp(b.0));
                            envelope(
                                which.kind(),
                                &dict(list.iter().map(|(u, s)| (*u, s.as_str()))),
                            )
                        })
                        .clone(),
                    _ => by_set
                        .entry(sub.key.clone())
                        .or_insert_with(|| {
                            let list: Vec<(&Uuid, String)> = sub
                                .key
                                .iter()
                                .filter_map(|u| all.get(u).map(|m| (u, frag(m))))
                                .collect();
                            envelope(
                                which.kind(),
                                &dict(list.iter().map(|(u, s)| (*u, s.as_str()))),
                            )
                        })
                        .clone(),
                };
                match which {
                    Periodic::Dynamic => sub.ctl.set_latest(msg),
                    _ => {
                        sub.ctl.send(msg);
                    }
                }
            }
            // A socket joining later starts from this snapshot.
            let slot = match which {
                Periodic::Dynamic => 1,
                Periodic::Disks => 2,
                Periodic::Connections => 3,
            };
            self.global_initial
                .lock()
                .unwrap_or_else(|p| p.into_inner())[slot] = global;
        });
    }

    fn wake_all(&self) {
        for sub in self.lock().values() {
            sub.ctl.wake();
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeSet<Uuid>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After missed events: every socket learns what changed in its set of machines
    /// (`DELETE` for those gone, `CREATE` for new ones where the endpoint sends it), then gets
    /// a full `DATA_STATIC`; the next periodic messages carry the current state, which
    /// supersedes any progress event that was missed.
    fn resync(&self) {
        let mut subs = self.lock();
        *self
            .global_initial
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = [None, None, None, None];
        self.machines.with_all(|all| {
            let names = self.machines.usernames();
            let current: BTreeSet<Uuid> = all.keys().copied().collect();
            let before = std::mem::replace(&mut *self.known(), current.clone());
            let delete = |u: &Uuid| envelope("DELETE", &encode(&serde_json::json!({ "uuid": u })));
            let create = |u: &Uuid| {
                all.get(u)
                    .map(|m| envelope("CREATE", &encode(&m.properties(&names))))
            };
            for sub in subs.values_mut() {
                let (gone, added): (Vec<Uuid>, Vec<Uuid>) = match sub.kind {
                    Kind::Global => (
                        before.difference(&current).copied().collect(),
                        current.difference(&before).copied().collect(),
                    ),
                    Kind::Account | Kind::Subscribed => {
                        let was = sub.set.clone();
                        sub.recompute(all);
                        let gone = was.difference(&sub.set).copied();
                        let gone = if sub.kind == Kind::Subscribed {
                            // `subscribed` sends DELETE for deleted machines only.
                            gone.filter(|u| !current.contains(u)).collect()
                        } else {
                            gone.collect()
                        };
                        let added = if sub.kind == Kind::Account {
                            sub.set.difference(&was).copied().collect()
                        } else {
                            Vec::new()
                        };
                        (gone, added)
                    }
                };
                for u in &gone {
                    sub.ctl.push(delete(u));
                }
                for u in &added {
                    if let Some(m) = create(u) {
                        sub.ctl.push(m);
                    }
                }
                let list: Vec<&Machine> = all.values().filter(|m| sub.follows(&m.uuid)).collect();
                sub.ctl.send(snapshot(None, &list, &names));
            }
        });
    }

    /// A user's permissions or identity changed: refresh their sockets' view.
    pub fn user_changed(&self, user: &User) {
        let mut subs = self.lock();
        self.machines.with_all(|all| {
            for sub in subs.values_mut().filter(|s| s.user.uuid == user.uuid) {
                sub.user = user.clone();
                sub.recompute(all);
            }
        });
    }

    fn on_event(&self, e: &MachineEvent) {
        if matches!(
            e,
            MachineEvent::Created(_)
                | MachineEvent::Updated(_)
                | MachineEvent::Deleted { .. }
                | MachineEvent::RelationsChanged { .. }
        ) {
            // Everything a joining global socket gets at once must match the new set.
            *self
                .global_initial
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = [None, None, None, None];
        }
        // What `/global` sockets were told exists. After a resync, events still buffered may
        // be older than what the resync announced: a socket is told of a machine's creation,
        // deletion or change only against what it was told, never twice, never of a machine
        // it does not know.
        let globally_known = match e {
            MachineEvent::Created(m) => self.known().insert(m.uuid),
            MachineEvent::Deleted { uuid } => self.known().remove(uuid),
            MachineEvent::Updated(m) => self.known().contains(&m.uuid),
            MachineEvent::RelationsChanged { machine } => self.known().contains(&machine.uuid),
            _ => false,
        };
        let mut subs = self.lock();
        match e {
            MachineEvent::Created(m) => {
                let body = encode(&m.properties(&self.machines.usernames()));
                let msg = envelope("CREATE", &body);
                for sub in subs.values_mut() {
                    let tell = match sub.kind {
                        Kind::Global => globally_known,
                        Kind::Account => involved(&sub.user, m) && sub.set.insert(m.uuid),
                        Kind::Subscribed => false,
                    };
                    if tell {
                        sub.rekey();
                        sub.ctl.push(msg.clone());
                    }
                }
            }
            MachineEvent::Updated(m) => {
                let body = dict(std::iter::once((
                    &m.uuid,
                    encode(&m.properties(&self.machines.usernames())).as_str(),
                )));
                let msg = envelope("DATA_STATIC", &body);
                for sub in subs.values() {
                    if sub.told_of(&m.uuid, globally_known) {
                        sub.ctl.push(msg.clone());
                    }
                }
            }
            MachineEvent::Deleted { uuid } => {
                let msg = envelope("DELETE", &encode(&serde_json::json!({ "uuid": uuid })));
                for sub in subs.values_mut() {
                    let tell = match sub.kind {
                        Kind::Global => globally_known,
                        Kind::Account | Kind::Subscribed => sub.set.remove(uuid),
                    };
                    if tell {
                        sub.rekey();
                        sub.ctl.push(msg.clone());
                    }
                }
            }
            MachineEvent::RelationsChanged { machine } => {
                let names = self.machines.usernames();
                let props = encode(&machine.properties(&names));
                drop(names);
                let statik = envelope(
                    "DATA_STATIC",
                    &dict(std::iter::once((&machine.uuid, props.as_str()))),
                );
                let create = envelope("CREATE", &props);
                let delete = envelope(
                    "DELETE",
                    &encode(&serde_json::json!({ "uuid": machine.uuid })),
                );
                for sub in subs.values_mut() {
                    match sub.kind {
                        Kind::Global => {
                            if globally_known {
                                sub.ctl.push(statik.clone());
                            }
                        }
                        Kind::Account => {
                            // What the socket was told (after a resync, `before` may be older
                            // than that).
                            let was = sub.set.contains(&machine.uuid);
                            let now = involved(&sub.user, machine);
                            match (was, now) {
                                (false, true) => {
                                    sub.set.insert(machine.uuid);
                                    sub.rekey();
                                    sub.ctl.push(create.clone());
                                }
                                (true, false) => {
                                    sub.set.remove(&machine.uuid);
                                    sub.rekey();
                                    sub.ctl.push(delete.clone());
                                }
                                (true, true) => {
                                    sub.ctl.push(statik.clone());
                                }
                                (false, false) => {}
                            }
                        }
                        Kind::Subscribed => {
                            let wanted = sub.stored.contains(&machine.uuid)
                                || sub.extra.contains(&machine.uuid);
                            let visible = wanted && sees(&sub.user, &machine.relations);
                            let had = sub.set.contains(&machine.uuid);
                            if visible && !had {
                                sub.set.insert(machine.uuid);
                                sub.rekey();
                                send_entry(sub, machine, &props);
                            } else if !visible && had {
                                sub.set.remove(&machine.uuid);
                                sub.rekey();
                            } else if visible {
                                sub.ctl.push(statik.clone());
                            }
                        }
                    }
                }
            }
            MachineEvent::SubscriptionChanged {
                user,
                machine,
                subscribed,
            } => {
                let target = self.machines.get(*machine);
                let names = self.machines.usernames();
                for sub in subs
                    .values_mut()
                    .filter(|s| s.kind == Kind::Subscribed && s.user.uuid == *user)
                {
                    if *subscribed {
                        sub.stored.insert(*machine);
                        if let Some(m) = &target
                            && sees(&sub.user, &m.relations)
                            && sub.set.insert(*machine)
                        {
                            sub.rekey();
                            send_entry(sub, m, &encode(&m.properties(&names)));
                        }
                    } else {
                        sub.stored.remove(machine);
                        if !sub.extra.contains(machine) && sub.set.remove(machine) {
                            sub.rekey();
                        }
                    }
                }
            }
            MachineEvent::BootStart { uuid } => lifecycle(&subs, "BOOTUP_START", uuid, None),
            MachineEvent::BootSuccess { uuid } => lifecycle(&subs, "BOOTUP_SUCCESS", uuid, None),
            MachineEvent::BootFail { uuid, error } => {
                lifecycle(&subs, "BOOTUP_FAIL", uuid, Some(error))
            }
            MachineEvent::ShutdownStart { uuid } => lifecycle(&subs, "SHUTDOWN_START", uuid, None),
            MachineEvent::ShutdownSuccess { uuid } => {
                lifecycle(&subs, "SHUTDOWN_SUCCESS", uuid, None)
            }
            MachineEvent::ShutdownFail { uuid, error } => {
                lifecycle(&subs, "SHUTDOWN_FAIL", uuid, Some(error))
            }
            MachineEvent::StatusChanged { .. }
            | MachineEvent::ConsoleOutput { .. }
            | MachineEvent::ConsoleClosed { .. } => {}
        }
    }
}

/// The full entry of a machine newly followed by a subscribed socket.
fn send_entry(sub: &Sub, m: &Machine, props: &str) {
    sub.ctl.push(envelope(
        "DATA_STATIC",
        &dict(std::iter::once((&m.uuid, props))),
    ));
    for p in [Periodic::Dynamic, Periodic::Disks, Periodic::Connections] {
        let frag = p.fragment(m);
        sub.ctl.push(envelope(
            p.kind(),
            &dict(std::iter::once((&m.uuid, frag.as_str()))),
        ));
    }
}

fn lifecycle(subs: &HashMap<u64, Sub>, kind: &str, uuid: &Uuid, error: Option<&String>) {
    let body = match error {
        Some(e) => encode(&serde_json::json!({ "uuid": uuid, "error": e })),
        None => encode(&serde_json::json!({ "uuid": uuid })),
    };
    let msg = envelope(kind, &body);
    for sub in subs.values().filter(|s| s.follows(uuid)) {
        sub.ctl.push(msg.clone());
    }
}

/// Serves one machines socket from upgrade to close.
pub async fn serve(
    state: AppState,
    ws: Socket,
    kind: Kind,
    credential: super::Credential,
    query: Option<String>,
    unauthenticated: crate::ws::Unauthenticated,
) {
    let needs = (kind == Kind::Global).then_some(Permission::ViewAllVms);
    let ctl = Control::for_config(&state.config.ws);
    let admitted = super::admit(&state, credential, needs, &ctl).await;
    drop(unauthenticated);
    let (actor, registration) = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            conn::refuse(ws, None, refusal.close()).await;
            return;
        }
    };
    if needs.is_some_and(|p| !actor.has(p)) {
        conn::refuse(
            ws,
            None,
            CloseWith::new(code::FORBIDDEN, "this stream needs VIEW_ALL_VMS"),
        )
        .await;
        return;
    }
    let extra = query.as_deref().map(query_machines).unwrap_or_default();
    drop(query);
    let stored: BTreeSet<Uuid> = if kind == Kind::Subscribed {
        let user = actor.user.uuid;
        match state.db.run(move |db| db.subscriptions(user)).await {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read subscriptions");
                conn::refuse(ws, None, CloseWith::new(code::SERVER_ERROR, "server error")).await;
                return;
            }
        }
    } else {
        BTreeSet::new()
    };
    let _membership = state
        .machines_hub
        .join(kind, actor.user.clone(), extra, stored, ctl.clone());
    registration.settle(&state);
    let opts = super::options(&state, Some(actor.claims.exp));
    let shutdown = state.ws.shutdown.subscribe();
    conn::run(ws, ctl, opts, shutdown, |_| Reply::Continue).await;
}
