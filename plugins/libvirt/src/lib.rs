//! The libvirt backend: libvirt domains as Orchard machines, through the `virt` crate.
//!
//! # Settings (`[plugins.settings.libvirt]`, all optional)
//! * `uri` (default `qemu:///system`): the libvirt connection. `test:///default` is libvirt's
//!   built-in test driver (no daemon).
//! * `shutdown_timeout_seconds` (default 60): how long a graceful (ACPI) shutdown may take
//!   before the machine is destroyed (forced off).
//! * `reconnect_seconds` (default 5): how often a lost connection is retried.
//! * Creating machines: `pool` (default `default`) holds the new disk, `disk_gib` (default 10;
//!   0 = no disk) sizes it, `disk_image` (a path) makes it a qcow2 overlay on that image
//!   (`disk_image_format`, default `qcow2`), `network` adds a virtio NIC on that libvirt
//!   network, `domain_type` overrides the domain type (`kvm` when the host offers it, else
//!   `qemu`; `test` on the test driver).
//! * `delete_volumes` (`created` by default, `all`, `none`): which disks `delete` removes.
//!
//! # How it works
//! * `init` connects; a connection that cannot be opened fails `init` with the reason (the
//!   daemon shows the backend failed and keeps running). A connection lost later (libvirtd
//!   restarted) is retried every `reconnect_seconds`; meanwhile calls fail with the reason.
//! * Machines are domains (uuid = domain uuid). Properties come from the domain XML: the
//!   title (`<title>`, else the name), `<description>`, vCPUs, memory, disks with format and
//!   capacity, NICs and graphics. Tags live in Orchard's own `<metadata>` element.
//! * State comes in bulk from `virConnectGetAllDomainStats` with the NOWAIT flag.
//! * Lifecycle events come from libvirt's default event loop, run on its own thread; one
//!   worker thread turns them into Orchard's events, under the state lock that every emission
//!   takes (so one machine's events are emitted in order).
//! * Slow actions (start, stop, restart, force off) return at once and finish on a thread of
//!   their own; `shutdown` joins them.
//! * Consoles are `virDomainOpenConsole` on a non-blocking stream whose callback, on the
//!   event thread, forwards output. libvirt's test driver has no consoles: there a session is
//!   a loopback that echoes input, so that the console path can be exercised without a guest.

mod ffi;
mod settings;
mod xml;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orchard_plugin_api::link::{Connection, Reporter};
use orchard_plugin_api::power::{self, OffWording, Pending, is_off};
use orchard_plugin_api::{
    Backend, ConsoleOpened, CreateSpec, Describe, DiskInfo, DiskUsage, Event, Host, InitConfig,
    LogLevel, MachineConnections, MachineDisks, MachineInfo, MachineKind, MachineState,
    MachineStatus, MetadataUpdate, PluginError, PluginResult, PowerAction, capability, check_title,
    check_transition,
};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_vol::StorageVol;
use virt::sys;

use settings::{DeleteVolumes, Settings};

/// The ABI this plugin is built against.
pub const ABI_VERSION: u32 = orchard_plugin_api::ABI_VERSION;

// virDomainEventType and the details used.
const EV_DEFINED: i32 = 0;
const EV_UNDEFINED: i32 = 1;
const EV_STARTED: i32 = 2;
const EV_SUSPENDED: i32 = 3;
const EV_RESUMED: i32 = 4;
const EV_STOPPED: i32 = 5;
const EV_SHUTDOWN: i32 = 6;
const EV_PMSUSPENDED: i32 = 7;
const EV_CRASHED: i32 = 8;
const DEFINED_ADDED: i32 = 0;
const STOPPED_CRASHED: i32 = 2;
const STOPPED_FAILED: i32 = 5;

/// One libvirt connection, with its lifecycle callback.
struct Link {
    conn: Connect,
    callback: i32,
    test_driver: bool,
    domain_type: String,
}

impl Drop for Link {
    fn drop(&mut self) {
        ffi::deregister(&self.conn, self.callback);
    }
}

/// What the worker thread does.
enum Work {
    Lifecycle(ffi::Lifecycle),
    /// A console stream ended on libvirt's side.
    SessionEnded(String),
    /// Free the streams of ended sessions.
    Reap,
    Stop,
}

/// How a force-off words the transition it interrupted.
const FORCED_OFF: OffWording = OffWording {
    boot_interrupted: "boot interrupted: the machine was forced off",
    shutdown_interrupted: "shutdown interrupted: the machine was forced off",
};

#[derive(Default)]
struct Track {
    /// The status last emitted (or seen first).
    last: Option<MachineStatus>,
    pending: Pending,
    /// When it was last seen starting (ISO 8601), while it runs.
    booted_at: Option<String>,
    vcpu: u32,
    ram_max_mib: u64,
    /// CPU time (ns) at an instant, for cpu_percent.
    sample: Option<(Instant, u64)>,
}

enum Channel {
    Stream(ffi::ConsoleStream),
    /// The test driver has no consoles: input is echoed.
    Loopback,
}

struct SessionShared {
    id: String,
    /// Cleared under the lock when the session closes: no output after that.
    open: Mutex<bool>,
}

struct Session {
    uuid: String,
    channel: Channel,
    shared: Arc<SessionShared>,
    /// Input the stream could not take yet.
    pending: Vec<u8>,
}

#[derive(Default)]
struct State {
    tracks: HashMap<String, Track>,
    sessions: HashMap<String, Session>,
    next_generation: u64,
}

struct Core {
    report: Reporter,
    settings: Settings,
    /// The connection, or why there is none.
    link: Connection<Link>,
    state: Mutex<State>,
    /// Signalled after every lifecycle event and at shutdown.
    changed: Condvar,
    work: Mutex<Sender<Work>>,
    /// Whether the driver accepts the NOWAIT flag for bulk stats.
    nowait: AtomicBool,
    actions: Mutex<Vec<JoinHandle<()>>>,
    halt: (Mutex<bool>, Condvar),
    /// Streams of ended sessions, waiting for the worker to free them.
    graveyard: Mutex<Vec<ffi::ConsoleStream>>,
    this: Weak<Core>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_iso() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn code(e: &virt::error::Error) -> u32 {
    e.code().to_raw()
}

/// A libvirt error as the host should see it.
fn lv(what: &str, e: virt::error::Error) -> PluginError {
    let message = format!("{what}: {}", e.message());
    match code(&e) {
        sys::VIR_ERR_NO_DOMAIN => PluginError::NotFound(message),
        sys::VIR_ERR_OPERATION_INVALID => PluginError::InvalidState(message),
        sys::VIR_ERR_INVALID_ARG | sys::VIR_ERR_XML_ERROR | sys::VIR_ERR_XML_DETAIL => {
            PluginError::InvalidArgument(message)
        }
        _ => PluginError::Failed(message),
    }
}

/// libvirt's state (and reason) as an Orchard status.
fn map_state(state: u32, reason: u32) -> MachineStatus {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => MachineStatus::Running,
        sys::VIR_DOMAIN_PAUSED => MachineStatus::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => MachineStatus::ShuttingDown,
        sys::VIR_DOMAIN_CRASHED => MachineStatus::Error,
        sys::VIR_DOMAIN_PMSUSPENDED => MachineStatus::Suspended,
        sys::VIR_DOMAIN_SHUTOFF
            if matches!(
                reason,
                sys::VIR_DOMAIN_SHUTOFF_CRASHED | sys::VIR_DOMAIN_SHUTOFF_FAILED
            ) =>
        {
            MachineStatus::Error
        }
        _ => MachineStatus::Stopped,
    }
}

/// Picks the machines of a selection (all when empty).
fn selected(uuids: &[String], uuid: &str) -> bool {
    uuids.is_empty() || uuids.iter().any(|u| u == uuid)
}

impl Core {
    fn log(&self, level: LogLevel, message: &str) {
        self.report.log(level, message);
    }

    /// Emits one event (while the state lock is held by the caller); nothing after shutdown.
    fn emit(&self, _st: &mut State, event: Event) {
        self.report.emit(&event);
    }

    /// Emits `state_changed` unless `status` is what was last reported.
    fn status(&self, st: &mut State, uuid: &str, status: MachineStatus) {
        // The host queues the event; the caller's state lock keeps every reader of the
        // track waiting until it is updated below.
        let t = st.tracks.entry(uuid.to_owned()).or_default();
        if !self.report.status(&mut t.last, uuid, status) {
            return;
        }
        if is_off(status) {
            t.booted_at = None;
            t.sample = None;
        } else if t.booted_at.is_none() {
            t.booted_at = Some(now_iso());
        }
    }

    fn link(&self) -> PluginResult<Arc<Link>> {
        self.link
            .get(|why| format!("not connected to libvirt at {}: {why}", self.settings.uri))
    }

    fn domain(&self, link: &Link, uuid: &str) -> PluginResult<Domain> {
        link.conn
            .lookup_domain_by_uuid_string(uuid)
            .map_err(|e| match code(&e) {
                sys::VIR_ERR_NO_DOMAIN | sys::VIR_ERR_INVALID_ARG => {
                    PluginError::NotFound(format!("no machine {uuid}"))
                }
                _ => lv("cannot look the machine up", e),
            })
    }

    /// libvirt's own status of a domain (no overlay).
    fn raw_status(dom: &Domain) -> PluginResult<MachineStatus> {
        let info = dom.info().map_err(|e| lv("cannot read the state", e))?;
        Ok(map_state(info.state.to_raw(), 0))
    }

    /// Opens the connection and registers for lifecycle events.
    fn connect(&self) -> Result<Arc<Link>, String> {
        let uri = &self.settings.uri;
        let conn = Connect::open(Some(uri)).map_err(|e| e.message().to_owned())?;
        // Remote connections notice a dead daemon through keepalives; local drivers refuse
        // them, which is fine.
        let _ = conn.set_keep_alive(5, 3);
        let driver = conn.driver_type().unwrap_or_default();
        let test_driver = driver.eq_ignore_ascii_case("test");
        let domain_type = match &self.settings.domain_type {
            Some(t) => t.clone(),
            None if test_driver => "test".into(),
            None => {
                let caps = conn.capabilities().unwrap_or_default();
                let kvm =
                    caps.contains("<domain type='kvm'") || caps.contains("<domain type=\"kvm\"");
                if kvm && std::path::Path::new("/dev/kvm").exists() {
                    "kvm".into()
                } else {
                    "qemu".into()
                }
            }
        };
        let tx = lock(&self.work).clone();
        let callback = ffi::register_lifecycle(
            &conn,
            Box::new(move |ev| {
                let _ = tx.send(Work::Lifecycle(ev));
            }),
        )
        .map_err(|e| format!("cannot register for domain events: {e}"))?;
        Ok(Arc::new(Link {
            conn,
            callback,
            test_driver,
            domain_type,
        }))
    }

    /// Builds a machine's properties from its XML (and its disks' capacities).
    fn info_of(&self, link: &Link, dom: &Domain) -> PluginResult<MachineInfo> {
        let text = dom
            .xml_desc(0)
            .map_err(|e| lv("cannot read the domain XML", e))?;
        let d = xml::parse(&text).map_err(PluginError::Failed)?;
        let system = d
            .disks
            .iter()
            .enumerate()
            .min_by_key(|(i, disk)| (disk.boot_order.unwrap_or(u32::MAX), *i))
            .map(|(i, _)| i);
        let disks = d
            .disks
            .iter()
            .enumerate()
            .map(|(i, disk)| DiskInfo {
                system: Some(i) == system,
                name: disk.target.clone(),
                size_bytes: self.disk_sizes(link, dom, disk).0,
                kind: disk.format.clone(),
            })
            .collect();
        let mut connections = d.graphics.clone();
        for (i, nic) in d.nics.iter().enumerate() {
            let mut v = nic.mac.clone().unwrap_or_default();
            if let Some(src) = &nic.source {
                v.push_str(&format!(" on {} {src}", nic.kind));
            }
            if let Some(model) = &nic.model {
                v.push_str(&format!(" ({model})"));
            }
            connections.insert(format!("nic{i}"), v.trim().to_owned());
        }
        let info = MachineInfo {
            uuid: d.uuid.clone(),
            title: if d.title.is_empty() {
                d.name.clone()
            } else {
                d.title.clone()
            },
            description: d.description.clone(),
            tags: d.tags.clone(),
            kind: MachineKind::Vm,
            vcpu: d.vcpu,
            ram_max_mib: d.memory_kib / 1024,
            connections: connections.into_iter().collect::<BTreeMap<_, _>>(),
            disks,
        };
        let mut st = lock(&self.state);
        let t = st.tracks.entry(info.uuid.clone()).or_default();
        t.vcpu = info.vcpu;
        t.ram_max_mib = info.ram_max_mib;
        Ok(info)
    }

    /// (capacity, allocation) of a disk: from its storage volume, else from the domain.
    fn disk_sizes(&self, link: &Link, dom: &Domain, disk: &xml::Disk) -> (u64, u64) {
        if let Some(path) = &disk.source
            && let Ok(vol) = link.conn.lookup_storage_vol_by_path(path)
            && let Ok(info) = vol.info()
        {
            return (info.capacity, info.allocation);
        }
        match dom.block_info(&disk.target, 0) {
            Ok(b) => (b.capacity, b.allocation),
            Err(_) => (0, 0),
        }
    }

    fn all_domains(&self, link: &Link) -> PluginResult<Vec<Domain>> {
        link.conn
            .list_all_domains(0)
            .map_err(|e| lv("cannot list domains", e))
    }

    // ---- events ----

    fn on_lifecycle(&self, ev: ffi::Lifecycle) {
        let ffi::Lifecycle {
            uuid,
            event,
            detail,
        } = ev;
        // Look-ups first, without the state lock.
        let info = match event {
            EV_DEFINED | EV_UNDEFINED => self.link().ok().and_then(|l| {
                let dom = l.conn.lookup_domain_by_uuid_string(&uuid).ok()?;
                self.info_of(&l, &dom).ok()
            }),
            _ => None,
        };
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        match event {
            EV_DEFINED => {
                if let Some(machine) = info {
                    let e = if detail == DEFINED_ADDED {
                        Event::MachineCreated { machine }
                    } else {
                        Event::MachineUpdated { machine }
                    };
                    self.emit(st, e);
                }
            }
            EV_UNDEFINED => match info {
                // A running transient domain is still there.
                Some(machine) => self.emit(st, Event::MachineUpdated { machine }),
                None => {
                    self.end_sessions_of(st, &uuid);
                    st.tracks.remove(&uuid);
                    self.emit(st, Event::MachineDeleted { uuid });
                }
            },
            EV_STARTED => self.started(st, &uuid),
            EV_SUSPENDED => self.status(st, &uuid, MachineStatus::Paused),
            EV_RESUMED => self.status(st, &uuid, MachineStatus::Running),
            EV_PMSUSPENDED => self.status(st, &uuid, MachineStatus::Suspended),
            EV_CRASHED => self.status(st, &uuid, MachineStatus::Error),
            EV_SHUTDOWN => {
                // The guest shut itself down: a shutdown nobody asked for.
                let t = st.tracks.entry(uuid.clone()).or_default();
                if t.pending == Pending::None {
                    self.begin_shutdown(st, &uuid, false);
                }
            }
            EV_STOPPED => {
                let failed = matches!(detail, STOPPED_CRASHED | STOPPED_FAILED);
                self.stopped_now(st, &uuid, failed);
            }
            _ => {}
        }
        drop(guard);
        self.changed.notify_all();
    }

    /// The domain runs now: closes a boot under way, or reports an unrequested one whole.
    fn started(&self, st: &mut State, uuid: &str) {
        let t = st.tracks.entry(uuid.to_owned()).or_default();
        let pending = std::mem::take(&mut t.pending);
        t.booted_at = Some(now_iso());
        self.apply(st, uuid, power::started(pending, uuid));
    }

    /// The domain is off now: closes what was under way.
    fn stopped_now(&self, st: &mut State, uuid: &str, failed: bool) {
        let t = st.tracks.entry(uuid.to_owned()).or_default();
        let pending = std::mem::take(&mut t.pending);
        let off = if failed {
            MachineStatus::Error
        } else {
            MachineStatus::Stopped
        };
        self.end_sessions_of(st, uuid);
        let boot_failure = || "the machine stopped while booting".to_owned();
        let steps = power::stopped(pending, uuid, off, boot_failure, &FORCED_OFF);
        self.apply(st, uuid, steps);
    }

    /// Takes the tracker's steps; a restart due begins a boot and starts the domain.
    fn apply(&self, st: &mut State, uuid: &str, steps: Vec<power::Step>) {
        let status = |st: &mut State, s| self.status(st, uuid, s);
        if power::apply(steps, st, |st, e| self.emit(st, e), status) {
            self.begin_boot(st, uuid);
            self.spawn_start(uuid.to_owned());
        }
    }

    fn begin_boot(&self, st: &mut State, uuid: &str) {
        let (pending, steps) = power::begin_boot(uuid);
        st.tracks.entry(uuid.to_owned()).or_default().pending = pending;
        self.apply(st, uuid, steps);
    }

    /// Returns the shutdown's generation, which its waiting thread checks.
    fn begin_shutdown(&self, st: &mut State, uuid: &str, restart: bool) -> u64 {
        st.next_generation += 1;
        let generation = st.next_generation;
        let (pending, steps) = power::begin_shutdown(uuid, restart, generation);
        st.tracks.entry(uuid.to_owned()).or_default().pending = pending;
        self.apply(st, uuid, steps);
        generation
    }

    /// A transition that could not even begin: back to what libvirt says, with the failure.
    fn abort_transition(&self, uuid: &str, error: String) {
        let actual = self
            .link()
            .ok()
            .and_then(|l| self.domain(&l, uuid).ok())
            .and_then(|d| Self::raw_status(&d).ok());
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let Some(t) = st.tracks.get_mut(uuid) else {
            return;
        };
        let pending = std::mem::take(&mut t.pending);
        if let Some(actual) = actual {
            self.status(st, uuid, actual);
        }
        match power::aborted(pending, uuid, error) {
            Ok(event) => self.emit(st, event),
            Err(error) => self.log(LogLevel::Warn, &format!("machine {uuid}: {error}")),
        }
        drop(guard);
        self.changed.notify_all();
    }

    // ---- actions ----

    fn spawn_action(&self, name: &str, f: impl FnOnce(&Core) + Send + 'static) {
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name(format!("orchard-libvirt-{name}"))
            .spawn(move || f(&me));
        let mut actions = lock(&self.actions);
        actions.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => actions.push(h),
            Err(e) => self.log(LogLevel::Error, &format!("cannot start a thread: {e}")),
        }
    }

    fn spawn_start(&self, uuid: String) {
        self.spawn_action("start", move |core| {
            let result = core
                .link()
                .and_then(|l| core.domain(&l, &uuid))
                .and_then(|d| d.create().map_err(|e| lv("cannot start", e)));
            if let Err(e) = result {
                core.abort_transition(&uuid, e.message().to_owned());
            }
        });
    }

    fn spawn_shutdown(&self, uuid: String, generation: u64) {
        self.spawn_action("stop", move |core| core.shutdown_domain(&uuid, generation));
    }

    /// ACPI shutdown; after the timeout, destroy.
    fn shutdown_domain(&self, uuid: &str, generation: u64) {
        let dom = match self.link().and_then(|l| self.domain(&l, uuid)) {
            Ok(d) => d,
            Err(e) => return self.abort_transition(uuid, e.message().to_owned()),
        };
        // A paused guest cannot react to the power button.
        if matches!(Self::raw_status(&dom), Ok(MachineStatus::Paused)) {
            let _ = dom.resume();
        }
        if let Err(e) = dom.shutdown() {
            return self.abort_transition(uuid, lv("cannot shut down", e).message().to_owned());
        }
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        let still_pending = |st: &State| {
            matches!(
                st.tracks.get(uuid).map(|t| t.pending),
                Some(Pending::Shutdown { generation: g, .. }) if g == generation
            )
        };
        let mut st = lock(&self.state);
        loop {
            if self.report.is_stopped() || !still_pending(&st) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(st);
        self.log(
            LogLevel::Warn,
            &format!(
                "machine {uuid} did not shut down within {} s; forcing it off",
                self.settings.shutdown_timeout.as_secs_f64()
            ),
        );
        if let Err(e) = dom.destroy()
            && code(&e) != sys::VIR_ERR_OPERATION_INVALID
        {
            self.abort_transition(uuid, lv("cannot force off", e).message().to_owned());
        }
    }

    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()> {
        let link = self.link()?;
        let dom = self.domain(&link, uuid)?;
        let raw = Self::raw_status(&dom)?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let pending = st.tracks.get(uuid).map(|t| t.pending).unwrap_or_default();
        check_transition(pending.overlay(raw), action)?;
        match action {
            PowerAction::Start => {
                self.begin_boot(st, uuid);
                drop(guard);
                self.spawn_start(uuid.to_owned());
            }
            PowerAction::Stop | PowerAction::Restart => {
                let generation = self.begin_shutdown(st, uuid, action == PowerAction::Restart);
                drop(guard);
                self.spawn_shutdown(uuid.to_owned(), generation);
            }
            PowerAction::Suspend => {
                drop(guard);
                dom.suspend().map_err(|e| lv("cannot suspend", e))?;
            }
            PowerAction::Resume => {
                drop(guard);
                let r = if raw == MachineStatus::Suspended {
                    dom.pm_wakeup(0)
                } else {
                    dom.resume()
                };
                r.map_err(|e| lv("cannot resume", e))?;
            }
            PowerAction::ForceOff => {
                st.tracks.entry(uuid.to_owned()).or_default().pending = pending.force_off();
                drop(guard);
                let u = uuid.to_owned();
                self.spawn_action("force-off", move |core| {
                    let r = core.link().and_then(|l| core.domain(&l, &u));
                    match r.and_then(|d| d.destroy().map_err(|e| lv("cannot force off", e))) {
                        Ok(()) => {}
                        Err(e) => core.abort_transition(&u, e.message().to_owned()),
                    }
                });
            }
        }
        Ok(())
    }

    // ---- consoles ----

    /// Ends a machine's console sessions from its side (`console_closed` for each).
    fn end_sessions_of(&self, st: &mut State, uuid: &str) {
        let ids: Vec<String> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.uuid == uuid)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.end_session(st, &id);
        }
    }

    fn end_session(&self, st: &mut State, id: &str) {
        if let Some(s) = st.sessions.remove(id) {
            *lock(&s.shared.open) = false;
            self.emit(
                st,
                Event::ConsoleClosed {
                    session: id.to_owned(),
                },
            );
            // The stream is freed by the worker, outside every lock and off the event thread.
            if let Channel::Stream(stream) = s.channel {
                lock(&self.graveyard).push(stream);
                let _ = lock(&self.work).send(Work::Reap);
            }
        }
    }

    /// Sends what a session's stream could not take before.
    fn flush(&self, id: &str) {
        let mut st = lock(&self.state);
        let Some(s) = st.sessions.get_mut(id) else {
            return;
        };
        let Channel::Stream(stream) = &s.channel else {
            return;
        };
        while !s.pending.is_empty() {
            match stream.send(&s.pending) {
                Ok(ffi::Sent::Bytes(n)) if n > 0 => {
                    s.pending.drain(..n.min(s.pending.len()));
                }
                Ok(_) => return,
                Err(_) => {
                    s.pending.clear();
                    break;
                }
            }
        }
        stream.want_writable(false);
    }

    fn stream_handler(
        &self,
        shared: Arc<SessionShared>,
    ) -> Box<dyn Fn(ffi::StreamEvent) + Send + Sync> {
        let host = *self.report.host();
        let tx = lock(&self.work).clone();
        let weak = self.this.clone();
        Box::new(move |ev| match ev {
            ffi::StreamEvent::Data(data) => {
                let open = lock(&shared.open);
                if *open {
                    host.console_output(&shared.id, &data);
                }
            }
            ffi::StreamEvent::Writable => {
                if let Some(core) = weak.upgrade() {
                    core.flush(&shared.id);
                }
            }
            ffi::StreamEvent::Closed => {
                let _ = tx.send(Work::SessionEnded(shared.id.clone()));
            }
        })
    }
}

// ---- the worker and the supervisor ----

impl Core {
    fn work(&self, rx: Receiver<Work>) {
        while let Ok(w) = rx.recv() {
            match w {
                Work::Lifecycle(ev) => self.on_lifecycle(ev),
                Work::SessionEnded(id) => {
                    let mut st = lock(&self.state);
                    self.end_session(&mut st, &id);
                }
                Work::Reap => {
                    let dead = std::mem::take(&mut *lock(&self.graveyard));
                    drop(dead);
                }
                Work::Stop => break,
            }
        }
        drop(std::mem::take(&mut *lock(&self.graveyard)));
    }

    /// Watches the connection; replaces a dead one.
    fn supervise(&self) {
        let mut last_try: Option<Instant> = None;
        loop {
            {
                let (m, cv) = &self.halt;
                let halted = lock(m);
                let halted = if *halted {
                    halted
                } else {
                    cv.wait_timeout(halted, Duration::from_secs(1))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0)
                };
                if *halted {
                    return;
                }
            }
            match self.link.current() {
                Some(l) if l.conn.is_alive().unwrap_or(false) => continue,
                Some(_) => {
                    let reason = format!("the connection to {} was lost", self.settings.uri);
                    self.log(LogLevel::Warn, &format!("{reason}; reconnecting"));
                    // This thread alone replaces the link: the one it found is current.
                    let old = self.link.lost(reason, |_| true);
                    {
                        let mut st = lock(&self.state);
                        let ids: Vec<String> = st
                            .sessions
                            .iter()
                            .filter(|(_, s)| matches!(s.channel, Channel::Stream(_)))
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in ids {
                            self.end_session(&mut st, &id);
                        }
                    }
                    drop(old);
                    last_try = None;
                }
                None => {}
            }
            if last_try.is_some_and(|t| t.elapsed() < self.settings.reconnect_interval) {
                continue;
            }
            last_try = Some(Instant::now());
            match self.connect() {
                Ok(link) => {
                    self.link.up(link.clone());
                    self.log(
                        LogLevel::Info,
                        &format!("reconnected to {}", self.settings.uri),
                    );
                    self.resync(&link);
                }
                Err(e) => self.link.failed(e),
            }
        }
    }

    /// After a reconnect: what changed while the connection was down, as events.
    fn resync(&self, link: &Link) {
        let Ok(doms) = self.all_domains(link) else {
            return;
        };
        let mut states = Vec::new();
        for d in &doms {
            if let (Ok(uuid), Ok(s)) = (d.uuid_string(), Self::raw_status(d)) {
                states.push((uuid, s));
            }
        }
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        for (uuid, raw) in states {
            let pending = st.tracks.get(&uuid).map(|t| t.pending).unwrap_or_default();
            match pending.settled_by(raw) {
                Some(true) => self.started(st, &uuid),
                Some(false) => self.stopped_now(st, &uuid, raw == MachineStatus::Error),
                None => self.status(st, &uuid, pending.overlay(raw)),
            }
        }
        drop(guard);
        self.changed.notify_all();
    }
}

/// The libvirt backend.
pub struct Libvirt {
    core: Arc<Core>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

orchard_plugin_api::export_backend!(Libvirt);

const STATS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_VCPU
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK;

impl Libvirt {
    fn start(config: InitConfig, host: Host) -> PluginResult<Self> {
        let settings = Settings::from_json(&config.settings)?;
        ffi::loop_acquire().map_err(PluginError::Failed)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let core = Arc::new_cyclic(|this| Core {
            report: Reporter::new(host, "libvirt"),
            settings,
            link: Connection::new("not connected yet"),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            work: Mutex::new(tx),
            nowait: AtomicBool::new(true),
            actions: Mutex::new(Vec::new()),
            halt: (Mutex::new(false), Condvar::new()),
            graveyard: Mutex::new(Vec::new()),
            this: this.clone(),
        });
        let link = match core.connect() {
            Ok(l) => l,
            Err(e) => {
                ffi::loop_release();
                return Err(PluginError::Failed(format!(
                    "libvirt is not operational: cannot connect to {}: {e}",
                    core.settings.uri
                )));
            }
        };
        // What every domain is now, so that only changes are reported.
        if let Ok(doms) = core.all_domains(&link) {
            let mut st = lock(&core.state);
            for d in doms {
                if let (Ok(uuid), Ok(status)) = (d.uuid_string(), Core::raw_status(&d)) {
                    let t = st.tracks.entry(uuid).or_default();
                    t.last = Some(status);
                    if !is_off(status) {
                        t.booted_at = Some(now_iso());
                    }
                }
            }
        }
        core.log(
            LogLevel::Info,
            &format!(
                "connected to {} (domain type {} for new machines)",
                core.settings.uri, link.domain_type
            ),
        );
        core.link.up(link);
        let mut threads = Vec::new();
        let w = Arc::clone(&core);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| PluginError::Failed(format!("cannot start a thread: {e}")))
        };
        let started = spawn("orchard-libvirt-worker", Box::new(move || w.work(rx)));
        let s = Arc::clone(&core);
        let started = started.and_then(|h| {
            threads.push(h);
            spawn("orchard-libvirt-watch", Box::new(move || s.supervise()))
        });
        let plugin = Self {
            core,
            threads: Mutex::new(threads),
        };
        match started {
            Ok(h) => lock(&plugin.threads).push(h),
            Err(e) => {
                plugin.stop();
                return Err(e);
            }
        }
        Ok(plugin)
    }

    /// Stops every thread and closes the connection (idempotent).
    fn stop(&self) {
        let core = &self.core;
        if !core.report.stop() {
            return;
        }
        *lock(&core.halt.0) = true;
        core.halt.1.notify_all();
        core.changed.notify_all();
        let _ = lock(&core.work).send(Work::Stop);
        for h in std::mem::take(&mut *lock(&self.threads)) {
            let _ = h.join();
        }
        for h in std::mem::take(&mut *lock(&core.actions)) {
            let _ = h.join();
        }
        let sessions: Vec<Session> = lock(&core.state).sessions.drain().map(|(_, s)| s).collect();
        for s in &sessions {
            *lock(&s.shared.open) = false;
        }
        drop(sessions);
        drop(std::mem::take(&mut *lock(&core.graveyard)));
        drop(core.link.close());
        ffi::loop_release();
    }

    fn stats(&self, link: &Link, stats: u32) -> PluginResult<Vec<ffi::Stats>> {
        let core = &self.core;
        if core.nowait.load(Ordering::Relaxed) {
            match ffi::all_domain_stats(
                &link.conn,
                stats,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            ) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    core.log(
                        LogLevel::Info,
                        &format!("bulk stats without NOWAIT (the driver refused it: {e})"),
                    );
                    core.nowait.store(false, Ordering::Relaxed);
                }
            }
        }
        ffi::all_domain_stats(&link.conn, stats, 0)
            .map_err(|e| PluginError::Failed(format!("cannot read domain stats: {e}")))
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sum(s: &ffi::Stats, count_key: &str, prefix: &str, suffix: &str) -> u64 {
    let n = s.u64(count_key).unwrap_or(0);
    (0..n)
        .filter_map(|i| s.u64(&format!("{prefix}.{i}.{suffix}")))
        .fold(0u64, u64::saturating_add)
}

impl Backend for Libvirt {
    fn describe() -> Describe {
        Describe::new(
            "libvirt",
            env!("CARGO_PKG_VERSION"),
            &[
                capability::CREATE,
                capability::DELETE,
                capability::METADATA,
                capability::DISKS,
                capability::CONNECTIONS,
                capability::CONSOLE,
                capability::EVENTS,
            ],
        )
    }

    fn init(config: InitConfig, host: Host) -> PluginResult<Self> {
        Self::start(config, host)
    }

    fn list_machines(&self) -> PluginResult<Vec<MachineInfo>> {
        let link = self.core.link()?;
        let mut out = Vec::new();
        for d in self.core.all_domains(&link)? {
            match self.core.info_of(&link, &d) {
                Ok(i) => out.push(i),
                // Undefined between the listing and the look-up.
                Err(PluginError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn get_properties(&self, uuid: &str) -> PluginResult<MachineInfo> {
        let link = self.core.link()?;
        let dom = self.core.domain(&link, uuid)?;
        self.core.info_of(&link, &dom)
    }

    fn bulk_state(&self, uuids: &[String]) -> PluginResult<Vec<MachineState>> {
        let core = &self.core;
        let link = core.link()?;
        let records = self.stats(&link, STATS)?;
        // Properties of machines not seen yet (vCPUs and memory when stats lack them).
        let unknown: Vec<String> = {
            let st = lock(&core.state);
            records
                .iter()
                .filter(|r| selected(uuids, &r.uuid))
                .filter(|r| st.tracks.get(&r.uuid).is_none_or(|t| t.ram_max_mib == 0))
                .map(|r| r.uuid.clone())
                .collect()
        };
        for u in unknown {
            if let Ok(d) = core.domain(&link, &u) {
                let _ = core.info_of(&link, &d);
            }
        }
        let now = Instant::now();
        let mut st = lock(&core.state);
        let mut out = Vec::new();
        for r in records.iter().filter(|r| selected(uuids, &r.uuid)) {
            let raw = map_state(
                r.u64("state.state").unwrap_or(0) as u32,
                r.u64("state.reason").unwrap_or(0) as u32,
            );
            let t = st.tracks.entry(r.uuid.clone()).or_default();
            let status = t.pending.overlay(raw);
            let active = !is_off(raw);
            let vcpu = r
                .u64("vcpu.current")
                .map(|v| v as u32)
                .filter(|v| *v > 0)
                .unwrap_or(t.vcpu);
            let ram_max_mib = r
                .u64("balloon.maximum")
                .map(|k| k / 1024)
                .filter(|m| *m > 0)
                .unwrap_or(t.ram_max_mib);
            let mut cpu_percent = 0.0;
            if let (true, Some(cpu)) = (active, r.u64("cpu.time")) {
                if let Some((then, before)) = t.sample {
                    let wall = now.duration_since(then).as_nanos() as f64;
                    if wall > 0.0 && cpu >= before {
                        cpu_percent = ((cpu - before) as f64 / wall / f64::from(vcpu.max(1))
                            * 100.0)
                            .clamp(0.0, 100.0);
                    }
                }
                t.sample = Some((now, cpu));
            }
            let ram_used_mib = if active {
                match (r.u64("balloon.available"), r.u64("balloon.unused")) {
                    (Some(a), Some(u)) if a >= u => (a - u) / 1024,
                    _ => {
                        r.u64("balloon.rss")
                            .or_else(|| r.u64("balloon.current"))
                            .unwrap_or(0)
                            .min(ram_max_mib.saturating_mul(1024))
                            / 1024
                    }
                }
            } else {
                0
            };
            if active && t.booted_at.is_none() {
                t.booted_at = Some(now_iso());
            }
            out.push(MachineState {
                uuid: r.uuid.clone(),
                status,
                vcpu,
                cpu_percent,
                ram_max_mib,
                ram_used_mib,
                boot_timestamp: if active { t.booted_at.clone() } else { None },
                net_rx_bytes: sum(r, "net.count", "net", "rx.bytes"),
                net_tx_bytes: sum(r, "net.count", "net", "tx.bytes"),
                disk_read_bytes: sum(r, "block.count", "block", "rd.bytes"),
                disk_write_bytes: sum(r, "block.count", "block", "wr.bytes"),
            });
        }
        Ok(out)
    }

    fn disks(&self, uuids: &[String]) -> PluginResult<Vec<MachineDisks>> {
        let core = &self.core;
        let link = core.link()?;
        let stats = self.stats(&link, sys::VIR_DOMAIN_STATS_BLOCK)?;
        let mut out = Vec::new();
        for d in core.all_domains(&link)? {
            let Ok(uuid) = d.uuid_string() else { continue };
            if !selected(uuids, &uuid) {
                continue;
            }
            let Ok(text) = d.xml_desc(0) else { continue };
            let Ok(parsed) = xml::parse(&text) else {
                continue;
            };
            let info = core.info_of(&link, &d)?;
            let rec = stats.iter().find(|s| s.uuid == uuid);
            let disks = info
                .disks
                .iter()
                .zip(parsed.disks.iter())
                .map(|(di, px)| {
                    // Live figures for a running domain, else the volume's.
                    let live = rec.and_then(|r| {
                        let n = r.u64("block.count").unwrap_or(0);
                        (0..n).find_map(|i| {
                            let name = r.params.get(&format!("block.{i}.name"))?;
                            (*name == ffi::Value::Str(px.target.clone()))
                                .then(|| r.u64(&format!("block.{i}.allocation")))
                                .flatten()
                        })
                    });
                    let occupied = live.unwrap_or_else(|| core.disk_sizes(&link, &d, px).1);
                    DiskUsage {
                        system: di.system,
                        name: di.name.clone(),
                        size_bytes: di.size_bytes,
                        kind: di.kind.clone(),
                        occupied_bytes: occupied,
                    }
                })
                .collect();
            out.push(MachineDisks { uuid, disks });
        }
        Ok(out)
    }

    fn connections(&self, uuids: &[String]) -> PluginResult<Vec<MachineConnections>> {
        let link = self.core.link()?;
        let doms = self.core.all_domains(&link)?;
        let st = lock(&self.core.state);
        Ok(doms
            .iter()
            .filter_map(|d| d.uuid_string().ok())
            .filter(|u| selected(uuids, u))
            .map(|uuid| MachineConnections {
                active_connections: st
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.uuid == uuid)
                    .map(|(id, _)| format!("console:{}", id.get(..8).unwrap_or(id)))
                    .collect(),
                uuid,
            })
            .collect())
    }

    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()> {
        self.core.power(uuid, action)
    }

    fn create(&self, spec: CreateSpec) -> PluginResult<MachineInfo> {
        check_title(&spec.title)?;
        if !(1..=512).contains(&spec.vcpu) {
            return Err(PluginError::InvalidArgument(
                "vcpu must be from 1 to 512".into(),
            ));
        }
        if !(16..=16_777_216).contains(&spec.ram_mib) {
            return Err(PluginError::InvalidArgument(
                "ram_mib must be from 16 to 16777216".into(),
            ));
        }
        if spec.kind == Some(MachineKind::Container) {
            return Err(PluginError::InvalidArgument(
                "the libvirt backend makes virtual machines only".into(),
            ));
        }
        let core = &self.core;
        let s = &core.settings;
        let link = core.link()?;
        let base = xml::name_from_title(&spec.title);
        let name = (1..1000)
            .map(|i| {
                if i == 1 {
                    base.clone()
                } else {
                    format!("{base}-{i}")
                }
            })
            .find(|n| link.conn.lookup_domain_by_name(n).is_err())
            .ok_or_else(|| PluginError::InvalidArgument("no free domain name".into()))?;
        let mut volume: Option<StorageVol> = None;
        if s.disk_image.is_some() || s.disk_gib > 0 {
            let pool_name = s.pool.clone().unwrap_or_else(|| {
                if link.test_driver {
                    "default-pool".into()
                } else {
                    "default".into()
                }
            });
            let pool = link
                .conn
                .lookup_storage_pool_by_name(&pool_name)
                .map_err(|e| lv(&format!("storage pool {pool_name}"), e))?;
            let backing = s
                .disk_image
                .as_deref()
                .map(|p| (p, s.disk_image_format.as_str()));
            let vxml = xml::volume_xml(&format!("{name}.qcow2"), s.disk_gib.max(1), backing);
            volume = Some(
                StorageVol::create_xml(&pool, &vxml, 0)
                    .map_err(|e| lv("cannot create the disk", e))?,
            );
        }
        let path = match &volume {
            Some(v) => Some(v.path().map_err(|e| lv("cannot read the disk's path", e))?),
            None => None,
        };
        let created: Vec<String> = path.iter().cloned().collect();
        let dxml = xml::domain_xml(&xml::Template {
            domain_type: &link.domain_type,
            name: &name,
            title: &spec.title,
            description: &spec.description,
            tags: &spec.tags,
            vcpu: spec.vcpu,
            ram_mib: spec.ram_mib,
            disk: path.as_deref().map(|p| (p, "qcow2")),
            created_volumes: &created,
            network: s.network.as_deref(),
        });
        let dom = match link.conn.define_domain_xml(&dxml) {
            Ok(d) => d,
            Err(e) => {
                if let Some(v) = &volume {
                    let _ = v.delete(0);
                }
                return Err(lv("cannot define the machine", e));
            }
        };
        let info = core.info_of(&link, &dom)?;
        lock(&core.state)
            .tracks
            .entry(info.uuid.clone())
            .or_default()
            .last = Some(MachineStatus::Stopped);
        Ok(info)
    }

    fn delete(&self, uuid: &str) -> PluginResult<()> {
        let core = &self.core;
        let link = core.link()?;
        let dom = core.domain(&link, uuid)?;
        let text = dom
            .xml_desc(0)
            .map_err(|e| lv("cannot read the domain XML", e))?;
        let parsed = xml::parse(&text).map_err(PluginError::Failed)?;
        if dom.is_active().unwrap_or(false)
            && let Err(e) = dom.destroy()
            && code(&e) != sys::VIR_ERR_OPERATION_INVALID
        {
            return Err(lv("cannot stop the machine", e));
        }
        if dom.is_persistent().unwrap_or(true) {
            let full = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            let r = dom
                .undefine_flags(full)
                .or_else(|_| {
                    dom.undefine_flags(
                        sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
                    )
                })
                .or_else(|_| dom.undefine());
            if let Err(e) = r
                && code(&e) != sys::VIR_ERR_NO_DOMAIN
            {
                return Err(lv("cannot delete the machine", e));
            }
        }
        let paths: Vec<String> = match core.settings.delete_volumes {
            DeleteVolumes::None => Vec::new(),
            DeleteVolumes::Created => parsed.created_volumes.clone(),
            DeleteVolumes::All => parsed
                .disks
                .iter()
                .filter_map(|d| d.source.clone())
                .collect(),
        };
        for p in paths {
            match link.conn.lookup_storage_vol_by_path(&p) {
                Ok(v) => {
                    if let Err(e) = v.delete(0) {
                        core.log(LogLevel::Warn, &format!("cannot remove volume {p}: {e}"));
                    }
                }
                Err(e) => core.log(LogLevel::Warn, &format!("volume {p} not found: {e}")),
            }
        }
        Ok(())
    }

    fn update_metadata(&self, uuid: &str, update: MetadataUpdate) -> PluginResult<MachineInfo> {
        if let Some(t) = &update.title {
            check_title(t)?;
        }
        let core = &self.core;
        let link = core.link()?;
        let dom = core.domain(&link, uuid)?;
        let mut flags = 0;
        if dom.is_persistent().unwrap_or(true) {
            flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        if dom.is_active().unwrap_or(false) {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        if let Some(title) = &update.title {
            dom.set_metadata(
                sys::VIR_DOMAIN_METADATA_TITLE as i32,
                Some(title),
                None,
                None,
                flags,
            )
            .map_err(|e| lv("cannot set the title", e))?;
        }
        if let Some(d) = &update.description {
            dom.set_metadata(
                sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32,
                Some(d),
                None,
                None,
                flags,
            )
            .map_err(|e| lv("cannot set the description", e))?;
        }
        if let Some(tags) = &update.tags {
            let text = dom
                .xml_desc(0)
                .map_err(|e| lv("cannot read the domain XML", e))?;
            let parsed = xml::parse(&text).map_err(PluginError::Failed)?;
            let element = xml::metadata_element(tags, &parsed.created_volumes);
            dom.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(&element),
                Some(xml::NS_KEY),
                Some(xml::NS),
                flags,
            )
            .map_err(|e| lv("cannot set the tags", e))?;
        }
        let info = core.info_of(&link, &dom)?;
        let mut st = lock(&core.state);
        core.emit(
            &mut st,
            Event::MachineUpdated {
                machine: info.clone(),
            },
        );
        Ok(info)
    }

    fn console_open(&self, uuid: &str) -> PluginResult<ConsoleOpened> {
        let core = &self.core;
        let link = core.link()?;
        let dom = core.domain(&link, uuid)?;
        if Core::raw_status(&dom)? != MachineStatus::Running {
            return Err(PluginError::InvalidState("machine is not running".into()));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let shared = Arc::new(SessionShared {
            id: id.clone(),
            open: Mutex::new(true),
        });
        let channel = if link.test_driver {
            Channel::Loopback
        } else {
            let alias = dom
                .xml_desc(0)
                .ok()
                .and_then(|t| xml::parse(&t).ok())
                .and_then(|d| d.console_alias);
            let handler = core.stream_handler(shared.clone());
            let stream = ffi::ConsoleStream::open(&link.conn, &dom, alias.as_deref(), handler)
                .map_err(|e| PluginError::Failed(format!("cannot open the console: {e}")))?;
            Channel::Stream(stream)
        };
        let loopback = matches!(channel, Channel::Loopback);
        let mut st = lock(&core.state);
        st.sessions.insert(
            id.clone(),
            Session {
                uuid: uuid.to_owned(),
                channel,
                shared,
                pending: Vec::new(),
            },
        );
        if loopback {
            core.report.host().console_output(
                &id,
                b"\r\n[libvirt test driver: no guest console; this session echoes input]\r\n",
            );
        }
        Ok(ConsoleOpened { session: id })
    }

    fn console_write(&self, session: &str, data: &[u8]) -> PluginResult<()> {
        let mut st = lock(&self.core.state);
        let s = st
            .sessions
            .get_mut(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        match &s.channel {
            Channel::Loopback => {
                let mut echo = Vec::with_capacity(data.len());
                for &b in data {
                    if b == b'\r' {
                        echo.extend_from_slice(b"\r\n");
                    } else {
                        echo.push(b);
                    }
                }
                if *lock(&s.shared.open) {
                    self.core.report.host().console_output(session, &echo);
                }
            }
            Channel::Stream(stream) => {
                if s.pending.len() + data.len() > 1 << 20 {
                    return Err(PluginError::Failed(
                        "the console is not taking input".into(),
                    ));
                }
                s.pending.extend_from_slice(data);
                while !s.pending.is_empty() {
                    match stream.send(&s.pending) {
                        Ok(ffi::Sent::Bytes(n)) if n > 0 => {
                            s.pending.drain(..n.min(s.pending.len()));
                        }
                        Ok(_) => {
                            stream.want_writable(true);
                            break;
                        }
                        Err(e) => {
                            s.pending.clear();
                            return Err(PluginError::Failed(format!("console write failed: {e}")));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn console_resize(&self, session: &str, _cols: u16, _rows: u16) -> PluginResult<()> {
        // A serial console has no size to set; the guest's stty decides.
        if lock(&self.core.state).sessions.contains_key(session) {
            Ok(())
        } else {
            Err(PluginError::NotFound(format!(
                "no console session {session}"
            )))
        }
    }

    fn console_close(&self, session: &str) -> PluginResult<()> {
        let s = lock(&self.core.state)
            .sessions
            .remove(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        // Output being forwarded finishes before this; none follows.
        *lock(&s.shared.open) = false;
        drop(s);
        Ok(())
    }

    fn shutdown(&self) {
        self.stop();
    }
}
