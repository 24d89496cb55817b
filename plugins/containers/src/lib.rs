//! The containers backend: the containers of a Docker or Podman engine as Orchard machines,
//! through the engine's HTTP API on its unix socket (the `bollard` crate).
//!
//! # Settings (`[plugins.settings.containers]`, all optional)
//! * `socket`: the engine's socket (`/run/x.sock` or `unix:///run/x.sock`). Unset: Docker's
//!   `/var/run/docker.sock`, then Podman's `/run/podman/podman.sock`.
//! * `stop_timeout_seconds` (default 10): how long `stop` waits after SIGTERM before the
//!   engine kills the container.
//! * `reconnect_seconds` (default 2): how often an absent engine is looked for again.
//! * `call_timeout_seconds` (default 5): the bound on one engine call.
//! * `image`: the image of new containers when the create spec's tags name none
//!   (`image=REF`); `command` (array): their command, else the image's own.
//! * `console_command` (default `["/bin/sh"]`): what a console session runs (with a TTY).
//! * `stats_concurrency` (default 128): one-shot stats requests in flight at once.
//!
//! # How it works
//! * The plugin runs its own tokio runtime; each synchronous plugin call hands one future to
//!   it and waits at most `call_timeout_seconds` for the answer.
//! * `init` never fails for want of an engine: without one the backend is "not operational"
//!   and every call says why; a supervisor looks for the engine every `reconnect_seconds` and
//!   reconnects (negotiating the API version) when one appears, then reports what changed.
//! * Machines are containers (kind `container`); the uuid is derived from the container id.
//!   Properties come from `inspect` (cached until an event says the container changed):
//!   title (Orchard's label, else the name), labels as tags, CPU and memory limits (else the
//!   host's), mounts as disks, published ports as connections.
//! * `bulk_state`: one list call, then a one-shot stats request per running container, at
//!   most `stats_concurrency` at once and all within the call bound; CPU use is the change of
//!   CPU time between two polls.
//! * Events: the engine's event stream (type container) is followed by one task, so one
//!   container's events are emitted in order: create/destroy, start/die (boot and shutdown
//!   progress, with failures: an unrequested non-zero exit or an OOM kill), pause/unpause.
//! * Actions: start, stop (SIGTERM, then SIGKILL after the timeout), restart (stop, then
//!   start), suspend = pause, resume = unpause, force off = kill; create from an image with a
//!   name, CPU and memory limits; delete (forced removal).
//! * Consoles: an exec of `console_command` with a TTY, attached; output is forwarded as it
//!   comes, input is queued to the exec's stdin, resize resizes the exec's TTY. Closing a
//!   session types ^C and ^D into it (the engine keeps an exec running without a client).

mod convert;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EventMessage, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::{StreamExt, stream};
use orchard_plugin_api::link::{Connection, Reporter};
use orchard_plugin_api::power::{self, OffWording, Pending, is_off};
use orchard_plugin_api::{
    Backend, ConsoleOpened, CreateSpec, Describe, DiskInfo, Event, Host, InitConfig, LogLevel,
    MachineConnections, MachineInfo, MachineKind, MachineState, MachineStatus, PluginError,
    PluginResult, PowerAction, capability, check_title, check_transition,
};
use tokio::io::AsyncWriteExt;

use convert::Sample;
use settings::Settings;

/// The ABI this plugin is built against.
pub const ABI_VERSION: u32 = orchard_plugin_api::ABI_VERSION;

const MIB: u64 = 1024 * 1024;

/// The least time the supervisor gives an engine to answer its handshake.
const RECONNECT_BOUND: Duration = Duration::from_secs(15);

/// One engine connection.
struct Link {
    docker: Docker,
    socket: String,
    /// Host CPUs and memory (MiB): the limits of a container that has none.
    ncpu: u32,
    mem_mib: u64,
    /// Bumped on every connect, so that a lost stream only drops its own link.
    generation: u64,
}

/// How a kill words the transition it interrupted.
const KILLED: OffWording = OffWording {
    boot_interrupted: "start interrupted: the container was killed",
    shutdown_interrupted: "stop interrupted: the container was killed",
};

#[derive(Default)]
struct Track {
    /// The status last emitted (or seen first).
    last: Option<MachineStatus>,
    pending: Pending,
    /// Someone (not Orchard) sent a signal: the exit that follows is not a failure.
    killed: bool,
    oom: bool,
    /// CPU time (ns) at an instant, for cpu_percent.
    cpu: Option<(Instant, u64)>,
    /// The last stats figures, kept when a sample does not arrive in time.
    figures: Option<(Sample, f64)>,
}

/// What `inspect` said of a container.
#[derive(Clone)]
struct Cached {
    info: MachineInfo,
    started_at: Option<String>,
}

struct Session {
    uuid: String,
    exec_id: String,
    input: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Cleared under the lock when the session closes: no output after that.
    open: Arc<Mutex<bool>>,
    reader: tokio::task::AbortHandle,
}

#[derive(Default)]
struct State {
    tracks: HashMap<String, Track>,
    /// Machine uuid → container id.
    ids: HashMap<String, String>,
    /// Container id → properties.
    cache: HashMap<String, Cached>,
    sessions: HashMap<String, Session>,
}

struct Core {
    report: Reporter,
    settings: Settings,
    rt: tokio::runtime::Handle,
    /// The engine, or why there is none.
    link: Connection<Link>,
    state: Mutex<State>,
    /// Wakes the supervisor: the link was lost, or the plugin stops.
    wake: tokio::sync::Notify,
    this: Weak<Core>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An engine error as the host should see it.
fn de(what: &str, e: bollard::errors::Error) -> PluginError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            let m = format!("{what}: {}", message.trim());
            match status_code {
                404 => PluginError::NotFound(m),
                304 | 409 => PluginError::InvalidState(m),
                400 => PluginError::InvalidArgument(m),
                _ => PluginError::Failed(m),
            }
        }
        other => PluginError::Failed(format!("{what}: {other}")),
    }
}

/// The status Orchard reports: the engine's, overlaid with a transition under way.
fn effective(raw: MachineStatus, t: Option<&Track>) -> MachineStatus {
    let status = t.map(|t| t.pending).unwrap_or_default().overlay(raw);
    // An exit this plugin reported as a failure stays an error until the next start.
    if status == MachineStatus::Stopped && t.is_some_and(|t| t.last == Some(MachineStatus::Error)) {
        MachineStatus::Error
    } else {
        status
    }
}

fn selected(uuids: &[String], uuid: &str) -> bool {
    uuids.is_empty() || uuids.iter().any(|u| u == uuid)
}

/// Properties from an inspect document.
fn cached_of(c: &ContainerInspectResponse, link: &Link) -> Option<(String, Cached)> {
    let id = c.id.clone()?;
    let config = c.config.as_ref();
    let labels = config.and_then(|c| c.labels.clone()).unwrap_or_default();
    let name = c
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let title = labels
        .get(convert::LABEL_TITLE)
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| if name.is_empty() { id.clone() } else { name });
    let hc = c.host_config.as_ref();
    let vcpu = convert::vcpus(
        hc.and_then(|h| h.nano_cpus),
        hc.and_then(|h| h.cpu_quota),
        hc.and_then(|h| h.cpu_period),
        link.ncpu,
    );
    let ram_max_mib = hc
        .and_then(|h| h.memory)
        .filter(|m| *m > 0)
        .map_or(link.mem_mib, |m| m as u64 / MIB);
    let mut disks = vec![DiskInfo {
        system: true,
        name: "rootfs".into(),
        size_bytes: c.size_root_fs.map_or(0, |s| s.max(0) as u64),
        kind: c
            .graph_driver
            .as_ref()
            .map(|g| g.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "overlay".into()),
    }];
    for m in c.mounts.iter().flatten() {
        disks.push(DiskInfo {
            system: false,
            name: m.destination.clone().unwrap_or_default(),
            size_bytes: 0,
            kind: m.typ.clone().unwrap_or_else(|| "mount".into()),
        });
    }
    // What is published now, else what the container asks for when it runs.
    let running_ports = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    let mut connections = convert::connections(running_ports);
    if connections.is_empty() {
        connections = convert::connections(hc.and_then(|h| h.port_bindings.as_ref()));
    }
    let image = config
        .and_then(|c| c.image.clone())
        .or_else(|| c.image.clone())
        .unwrap_or_default();
    if !image.is_empty() {
        connections.insert("image".into(), image);
    }
    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let started_at = c
        .state
        .as_ref()
        .and_then(|s| s.started_at.clone())
        .filter(|_| running)
        .and_then(|s| normalise_time(&s));
    let info = MachineInfo {
        uuid: convert::machine_uuid(&id),
        title,
        description: labels
            .get(convert::LABEL_DESCRIPTION)
            .cloned()
            .unwrap_or_default(),
        tags: convert::tags_from_labels(&labels),
        kind: MachineKind::Container,
        vcpu,
        ram_max_mib,
        connections: connections.into_iter().collect::<BTreeMap<_, _>>(),
        disks,
    };
    Some((id, Cached { info, started_at }))
}

/// The engine's RFC 3339 time (nanoseconds) as ISO 8601 UTC to the second.
fn normalise_time(s: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    if t.year() < 1971 {
        return None;
    }
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()?
        .format(&Rfc3339)
        .ok()
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
        let t = st.tracks.entry(uuid.to_owned()).or_default();
        if self.report.status(&mut t.last, uuid, status) && is_off(status) {
            t.cpu = None;
            t.figures = None;
        }
    }

    fn stopped(&self) -> bool {
        self.report.is_stopped()
    }

    fn link(&self) -> PluginResult<Arc<Link>> {
        self.link
            .get(|why| format!("the containers backend is not operational: {why}"))
    }

    /// Runs `fut` on the plugin's runtime and waits for it, at most the call bound.
    fn run<T: Send + 'static>(
        &self,
        what: &str,
        fut: impl Future<Output = PluginResult<T>> + Send + 'static,
    ) -> PluginResult<T> {
        let bound = self.settings.call_timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(tokio::time::timeout(bound, fut).await);
        });
        match rx.recv_timeout(bound + Duration::from_millis(500)) {
            Ok(Ok(r)) => r,
            _ => Err(PluginError::Failed(format!(
                "{what}: the container engine did not answer within {} s",
                bound.as_secs_f64()
            ))),
        }
    }

    fn me(&self) -> PluginResult<Arc<Core>> {
        self.this
            .upgrade()
            .ok_or_else(|| PluginError::Failed("the plugin is shutting down".into()))
    }

    /// The container id of a machine (after a fresh list when it is not known yet).
    async fn resolve(&self, link: &Link, uuid: &str) -> PluginResult<String> {
        if let Some(id) = lock(&self.state).ids.get(uuid) {
            return Ok(id.clone());
        }
        self.list_ids(link).await?;
        lock(&self.state)
            .ids
            .get(uuid)
            .cloned()
            .ok_or_else(|| PluginError::NotFound(format!("no machine {uuid}")))
    }

    /// Lists every container: (uuid, id, engine status).
    async fn list_ids(&self, link: &Link) -> PluginResult<Vec<(String, String, MachineStatus)>> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        let list = link
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| de("cannot list containers", e))?;
        let out: Vec<(String, String, MachineStatus)> = list
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                Some((
                    convert::machine_uuid(&id),
                    id,
                    convert::status_of_summary(c.state),
                ))
            })
            .collect();
        let mut st = lock(&self.state);
        st.ids = out
            .iter()
            .map(|(u, id, _)| (u.clone(), id.clone()))
            .collect();
        let live: std::collections::HashSet<&String> = out.iter().map(|(_, id, _)| id).collect();
        st.cache.retain(|id, _| live.contains(id));
        Ok(out)
    }

    async fn inspect_raw(link: &Link, id: &str) -> PluginResult<ContainerInspectResponse> {
        link.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| de("cannot inspect the container", e))
    }

    async fn inspect(&self, link: &Link, id: &str) -> PluginResult<Cached> {
        let c = Self::inspect_raw(link, id).await?;
        let (id, cached) = cached_of(&c, link).ok_or_else(|| {
            PluginError::Failed("the engine returned a container without an id".into())
        })?;
        let mut st = lock(&self.state);
        st.ids.insert(cached.info.uuid.clone(), id.clone());
        st.cache.insert(id, cached.clone());
        Ok(cached)
    }

    /// Properties of these containers: cached, else inspected (a few at a time).
    async fn infos(&self, link: &Link, ids: Vec<String>) -> PluginResult<Vec<Cached>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        {
            let st = lock(&self.state);
            for id in ids {
                match st.cache.get(&id) {
                    Some(c) => out.push(c.clone()),
                    None => missing.push(id),
                }
            }
        }
        let fetched: Vec<PluginResult<Cached>> = stream::iter(missing)
            .map(|id| async move { self.inspect(link, &id).await })
            .buffer_unordered(self.settings.stats_concurrency)
            .collect()
            .await;
        for f in fetched {
            match f {
                Ok(c) => out.push(c),
                // Removed between the listing and the look-up.
                Err(PluginError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    // ---- events ----

    async fn on_event(&self, link: &Link, ev: EventMessage) {
        let Some(actor) = ev.actor else { return };
        let Some(id) = actor.id else { return };
        let attrs = actor.attributes.unwrap_or_default();
        let action = ev.action.unwrap_or_default();
        let uuid = convert::machine_uuid(&id);
        // Look-ups first, without the state lock.
        let info = match action.as_str() {
            "create" | "start" | "rename" | "update" => {
                lock(&self.state).cache.remove(&id);
                self.inspect(link, &id).await.ok()
            }
            _ => None,
        };
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        match action.as_str() {
            "create" => {
                st.ids.insert(uuid.clone(), id.clone());
                st.tracks.entry(uuid.clone()).or_default().last = Some(MachineStatus::Stopped);
                if let Some(c) = info {
                    self.emit(st, Event::MachineCreated { machine: c.info });
                }
            }
            "rename" | "update" => {
                if let Some(c) = info {
                    self.emit(st, Event::MachineUpdated { machine: c.info });
                }
            }
            "destroy" => {
                self.end_sessions_of(st, &uuid);
                st.tracks.remove(&uuid);
                st.ids.remove(&uuid);
                st.cache.remove(&id);
                self.emit(st, Event::MachineDeleted { uuid });
            }
            "start" => self.started(st, &uuid),
            "die" => {
                let code = attrs
                    .get("exitCode")
                    .and_then(|c| c.parse::<i64>().ok())
                    .unwrap_or(0);
                self.stopped_now(st, &uuid, code);
            }
            "kill" => st.tracks.entry(uuid).or_default().killed = true,
            "oom" => st.tracks.entry(uuid).or_default().oom = true,
            "pause" => self.status(st, &uuid, MachineStatus::Paused),
            "unpause" => self.status(st, &uuid, MachineStatus::Running),
            _ => {}
        }
    }

    /// The container runs now: closes a boot under way, or reports an unrequested one whole.
    fn started(&self, st: &mut State, uuid: &str) {
        let t = st.tracks.entry(uuid.to_owned()).or_default();
        let pending = std::mem::take(&mut t.pending);
        t.killed = false;
        t.oom = false;
        self.apply(st, uuid, power::started(pending, uuid));
    }

    /// The container exited with `code`: closes what was under way.
    fn stopped_now(&self, st: &mut State, uuid: &str, code: i64) {
        let t = st.tracks.entry(uuid.to_owned()).or_default();
        let pending = std::mem::take(&mut t.pending);
        let killed = std::mem::take(&mut t.killed);
        let oom = std::mem::take(&mut t.oom);
        let failure = if oom {
            Some(format!(
                "the container was killed for want of memory (exit code {code})"
            ))
        } else if code != 0 && !killed && pending == Pending::None {
            Some(format!("the container exited with code {code}"))
        } else {
            None
        };
        self.end_sessions_of(st, uuid);
        let off = if failure.is_some() && pending == Pending::None {
            MachineStatus::Error
        } else {
            MachineStatus::Stopped
        };
        if pending == Pending::None {
            // Nobody here asked: the container's own exit, or a stop from outside.
            let u = uuid.to_owned();
            self.emit(st, Event::ShutdownStart { uuid: u.clone() });
            self.status(st, uuid, MachineStatus::ShuttingDown);
            self.status(st, uuid, off);
            match failure {
                Some(error) => self.emit(st, Event::ShutdownFail { uuid: u, error }),
                None => self.emit(st, Event::ShutdownSuccess { uuid: u }),
            }
            return;
        }
        let boot_failure = || {
            failure.unwrap_or_else(|| {
                format!("the container stopped while starting (exit code {code})")
            })
        };
        let steps = power::stopped(pending, uuid, off, boot_failure, &KILLED);
        self.apply(st, uuid, steps);
    }

    /// Takes the tracker's steps; a restart due begins a boot and starts the container.
    fn apply(&self, st: &mut State, uuid: &str, steps: Vec<power::Step>) {
        if power::apply(
            steps,
            st,
            |st, e| self.emit(st, e),
            |st, s| self.status(st, uuid, s),
        ) {
            self.begin_boot(st, uuid);
            self.spawn_start(uuid.to_owned());
        }
    }

    fn begin_boot(&self, st: &mut State, uuid: &str) {
        let (pending, steps) = power::begin_boot(uuid);
        st.tracks.entry(uuid.to_owned()).or_default().pending = pending;
        self.apply(st, uuid, steps);
    }

    fn begin_shutdown(&self, st: &mut State, uuid: &str, restart: bool) {
        // No generation: the engine itself kills a container that does not stop in time.
        let (pending, steps) = power::begin_shutdown(uuid, restart, 0);
        st.tracks.entry(uuid.to_owned()).or_default().pending = pending;
        self.apply(st, uuid, steps);
    }

    /// A transition that could not even begin: back to what the engine says, with the
    /// failure.
    async fn abort_transition(&self, uuid: &str, error: String) {
        let actual = match self.link() {
            Ok(l) => self.list_ids(&l).await.ok().and_then(|list| {
                list.into_iter()
                    .find(|(u, _, _)| u == uuid)
                    .map(|(_, _, s)| s)
            }),
            Err(_) => None,
        };
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
    }

    // ---- actions ----

    /// Runs a slow action on the runtime; a failure closes the transition.
    fn spawn_action<F>(&self, uuid: String, f: impl FnOnce(Arc<Core>, Arc<Link>, String) -> F)
    where
        F: Future<Output = PluginResult<()>> + Send + 'static,
    {
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let link = match self.link() {
            Ok(l) => l,
            Err(e) => {
                self.rt.spawn(async move {
                    me.abort_transition(&uuid, e.message().to_owned()).await;
                });
                return;
            }
        };
        let fut = f(me.clone(), link, uuid.clone());
        self.rt.spawn(async move {
            if let Err(e) = fut.await {
                me.abort_transition(&uuid, e.message().to_owned()).await;
            }
        });
    }

    fn spawn_start(&self, uuid: String) {
        self.spawn_action(uuid, |core, link, uuid| async move {
            let id = core.resolve(&link, &uuid).await?;
            link.docker
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .map_err(|e| de("cannot start the container", e))
        });
    }

    fn spawn_stop(&self, uuid: String, paused: bool) {
        let t = self.settings.stop_timeout.as_secs().min(i32::MAX as u64) as i32;
        self.spawn_action(uuid, move |core, link, uuid| async move {
            let id = core.resolve(&link, &uuid).await?;
            if paused {
                // A frozen process cannot take the signal.
                link.docker
                    .unpause_container(&id)
                    .await
                    .map_err(|e| de("cannot unpause the container", e))?;
            }
            let opts = StopContainerOptionsBuilder::default().t(t).build();
            link.docker
                .stop_container(&id, Some(opts))
                .await
                .map_err(|e| de("cannot stop the container", e))
        });
    }

    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()> {
        let link = self.link()?;
        let me = self.me()?;
        let (l, u) = (link.clone(), uuid.to_owned());
        let (id, raw) = self.run("power", async move {
            let id = me.resolve(&l, &u).await?;
            let c = Core::inspect_raw(&l, &id).await?;
            let raw = convert::status_of_inspect(c.state.and_then(|s| s.status));
            Ok((id, raw))
        })?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let track = st.tracks.get(uuid);
        let pending = track.map(|t| t.pending).unwrap_or_default();
        check_transition(effective(raw, track), action)?;
        match action {
            PowerAction::Start => {
                self.begin_boot(st, uuid);
                drop(guard);
                self.spawn_start(uuid.to_owned());
            }
            PowerAction::Stop | PowerAction::Restart => {
                self.begin_shutdown(st, uuid, action == PowerAction::Restart);
                drop(guard);
                self.spawn_stop(uuid.to_owned(), raw == MachineStatus::Paused);
            }
            PowerAction::Suspend | PowerAction::Resume => {
                drop(guard);
                let docker = link.docker.clone();
                self.run(action.as_str(), async move {
                    if action == PowerAction::Suspend {
                        docker
                            .pause_container(&id)
                            .await
                            .map_err(|e| de("cannot pause the container", e))
                    } else {
                        docker
                            .unpause_container(&id)
                            .await
                            .map_err(|e| de("cannot unpause the container", e))
                    }
                })?;
            }
            PowerAction::ForceOff => {
                st.tracks.entry(uuid.to_owned()).or_default().pending = pending.force_off();
                drop(guard);
                self.spawn_action(uuid.to_owned(), move |_, link, _| async move {
                    let opts = KillContainerOptionsBuilder::default()
                        .signal("SIGKILL")
                        .build();
                    link.docker
                        .kill_container(&id, Some(opts))
                        .await
                        .map_err(|e| de("cannot kill the container", e))
                });
            }
        }
        Ok(())
    }

    // ---- state ----

    async fn bulk_state(&self, link: &Link, uuids: &[String]) -> PluginResult<Vec<MachineState>> {
        let started = Instant::now();
        let list: Vec<_> = self
            .list_ids(link)
            .await?
            .into_iter()
            .filter(|(u, _, _)| selected(uuids, u))
            .collect();
        let infos = self
            .infos(link, list.iter().map(|(_, id, _)| id.clone()).collect())
            .await?;
        let by_uuid: HashMap<&str, &Cached> =
            infos.iter().map(|c| (c.info.uuid.as_str(), c)).collect();
        // One-shot stats of the running ones, a bounded number at once, all within most of
        // the call bound (a sample that misses it keeps the last figures).
        let deadline = tokio::time::Instant::from_std(started + self.settings.call_timeout * 3 / 4);
        let running: Vec<(String, String)> = list
            .iter()
            .filter(|(_, _, s)| *s == MachineStatus::Running)
            .map(|(u, id, _)| (u.clone(), id.clone()))
            .collect();
        let docker = &link.docker;
        let samples: Vec<(String, Option<Sample>, Instant)> = stream::iter(running)
            .map(|(uuid, id)| async move {
                let opts = StatsOptionsBuilder::default()
                    .stream(false)
                    .one_shot(true)
                    .build();
                let mut s = docker.stats(&id, Some(opts));
                let got = tokio::time::timeout_at(deadline, s.next()).await;
                let sample = match got {
                    Ok(Some(Ok(r))) => Some(convert::sample(&r)),
                    _ => None,
                };
                (uuid, sample, Instant::now())
            })
            .buffer_unordered(self.settings.stats_concurrency)
            .collect()
            .await;
        let samples: HashMap<String, (Option<Sample>, Instant)> =
            samples.into_iter().map(|(u, s, at)| (u, (s, at))).collect();
        let took = samples.values().filter(|(s, _)| s.is_some()).count();
        self.log(
            LogLevel::Debug,
            &format!(
                "bulk_state: {} containers, {took} stats samples in {} ms",
                list.len(),
                started.elapsed().as_millis()
            ),
        );
        let mut st = lock(&self.state);
        let mut out = Vec::with_capacity(list.len());
        for (uuid, _, raw) in &list {
            let Some(c) = by_uuid.get(uuid.as_str()) else {
                continue;
            };
            let vcpu = c.info.vcpu;
            let t = st.tracks.entry(uuid.clone()).or_default();
            let active = !is_off(*raw);
            let mut figures = if active { t.figures } else { None };
            if let Some((Some(s), at)) = samples.get(uuid) {
                let pct = match t.cpu {
                    Some((then, before)) => convert::cpu_percent(
                        before,
                        s.cpu_ns,
                        at.duration_since(then).as_nanos(),
                        vcpu,
                    ),
                    None => 0.0,
                };
                t.cpu = Some((*at, s.cpu_ns));
                figures = Some((*s, pct));
                t.figures = figures;
            }
            let (s, cpu_percent) = figures.unwrap_or_default();
            let status = effective(*raw, Some(t));
            out.push(MachineState {
                uuid: uuid.clone(),
                status,
                vcpu,
                cpu_percent: if *raw == MachineStatus::Running {
                    cpu_percent
                } else {
                    0.0
                },
                ram_max_mib: c.info.ram_max_mib,
                ram_used_mib: (s.mem_used / MIB).min(c.info.ram_max_mib),
                boot_timestamp: if active {
                    c.started_at.clone().or_else(|| Some(now_iso()))
                } else {
                    None
                },
                net_rx_bytes: s.net_rx,
                net_tx_bytes: s.net_tx,
                disk_read_bytes: s.disk_read,
                disk_write_bytes: s.disk_write,
            });
        }
        Ok(out)
    }

    // ---- consoles ----

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

    /// Ends a session from the container's side (`console_closed`).
    fn end_session(&self, st: &mut State, id: &str) {
        if let Some(s) = st.sessions.remove(id) {
            *lock(&s.open) = false;
            s.reader.abort();
            self.emit(
                st,
                Event::ConsoleClosed {
                    session: id.to_owned(),
                },
            );
        }
    }

    async fn console_open(self: Arc<Self>, link: Arc<Link>, uuid: String) -> PluginResult<String> {
        let id = self.resolve(&link, &uuid).await?;
        let c = Self::inspect_raw(&link, &id).await?;
        let state = c.state.as_ref();
        if !state.and_then(|s| s.running).unwrap_or(false)
            || state.and_then(|s| s.paused).unwrap_or(false)
        {
            return Err(PluginError::InvalidState("machine is not running".into()));
        }
        let exec = link
            .docker
            .create_exec(
                &id,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(true),
                    env: Some(vec!["TERM=xterm".to_owned()]),
                    cmd: Some(self.settings.console_command.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| de("cannot open a console", e))?;
        let started = link
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: true,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| de("cannot start the console", e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(PluginError::Failed("the console did not attach".into()));
        };
        let session = uuid::Uuid::new_v4().to_string();
        let open = Arc::new(Mutex::new(true));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
        self.rt.spawn(async move {
            while let Some(data) = rx.recv().await {
                if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
            // The session was closed. The engine keeps an exec running when its client goes
            // away, so the shell is asked to end as a user would: ^C (whatever runs in the
            // foreground), then ^D (end of input at an empty line).
            for key in [b"\x03", b"\x04"] {
                if input.write_all(key).await.is_err() || input.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = input.shutdown().await;
        });
        let (host, sid, o) = (*self.report.host(), session.clone(), open.clone());
        let weak = self.this.clone();
        // Registered before the reader runs, so that an early end finds the session.
        let mut st = lock(&self.state);
        let reader = self.rt.spawn(async move {
            while let Some(Ok(chunk)) = output.next().await {
                let bytes = chunk.into_bytes();
                let open = lock(&o);
                if *open {
                    host.console_output(&sid, &bytes);
                }
            }
            if let Some(core) = weak.upgrade() {
                let mut st = lock(&core.state);
                core.end_session(&mut st, &sid);
            }
        });
        st.sessions.insert(
            session.clone(),
            Session {
                uuid,
                exec_id: exec.id,
                input: tx,
                open,
                reader: reader.abort_handle(),
            },
        );
        Ok(session)
    }

    // ---- the supervisor ----

    /// Connects to the first engine that answers.
    /// `bound` limits the handshake with each socket (version and host figures).
    async fn connect(&self, generation: u64, bound: Duration) -> Result<Link, String> {
        let s = &self.settings;
        // The client's own bound covers a whole stop (SIGTERM, the wait, SIGKILL).
        let client_timeout = s.stop_timeout.as_secs() + s.call_timeout.as_secs() + 30;
        let mut errors = Vec::new();
        for socket in &s.sockets {
            let docker = match Docker::connect_with_unix(
                socket,
                client_timeout,
                bollard::API_DEFAULT_VERSION,
            ) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("{socket}: {e}"));
                    continue;
                }
            };
            let negotiated = tokio::time::timeout(bound, async {
                let docker = docker.negotiate_version().await?;
                let info = docker.info().await?;
                Ok::<_, bollard::errors::Error>((docker, info))
            })
            .await;
            match negotiated {
                Ok(Ok((docker, info))) => {
                    return Ok(Link {
                        docker,
                        socket: socket.clone(),
                        ncpu: info.ncpu.filter(|n| *n > 0).map_or(1, |n| n as u32),
                        mem_mib: info
                            .mem_total
                            .filter(|m| *m > 0)
                            .map_or(0, |m| m as u64 / MIB),
                        generation,
                    });
                }
                Ok(Err(e)) => errors.push(format!("{socket}: {e}")),
                Err(_) => errors.push(format!(
                    "{socket}: no answer within {} s",
                    bound.as_secs_f64()
                )),
            }
        }
        Err(format!(
            "no container engine answers ({})",
            errors.join("; ")
        ))
    }

    /// Keeps a link: connects, follows its events, and starts over when it is lost.
    async fn supervise(self: Arc<Self>, mut first: Option<Arc<Link>>) {
        let mut generation = 1;
        loop {
            if self.stopped() {
                return;
            }
            let link = match first.take() {
                Some(l) => Ok(l),
                // A busy engine (Podman computes its `info` afresh) may take longer than one
                // call may; the supervisor can wait.
                None => self
                    .connect(generation, self.settings.call_timeout.max(RECONNECT_BOUND))
                    .await
                    .map(Arc::new),
            };
            match link {
                Ok(link) => {
                    generation += 1;
                    self.follow(link).await;
                }
                Err(e) => {
                    self.link.failed(e);
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.reconnect_interval) => {}
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
    }

    /// Serves one link until its event stream ends.
    async fn follow(&self, link: Arc<Link>) {
        let filters = HashMap::from([("type", vec!["container"])]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        let mut events = link.docker.events(Some(opts));
        // Subscribed first, then caught up: no change is missed in between.
        self.link.up(link.clone());
        self.log(
            LogLevel::Info,
            &format!(
                "connected to the engine at {} (API {})",
                link.socket,
                link.docker.client_version()
            ),
        );
        self.resync(&link).await;
        let reason = loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => self.on_event(&link, ev).await,
                    Some(Err(e)) => break format!("the engine's event stream failed: {e}"),
                    None => break "the engine closed its event stream".to_owned(),
                },
                _ = self.wake.notified() => break "the plugin is stopping".to_owned(),
            }
            if self.stopped() {
                break "the plugin is stopping".to_owned();
            }
        };
        let reason = format!("lost the engine at {}: {reason}", link.socket);
        if !self.stopped() {
            self.log(LogLevel::Warn, &format!("{reason}; reconnecting"));
        }
        drop(self.link.lost(reason, |l| l.generation == link.generation));
        let mut st = lock(&self.state);
        let ids: Vec<String> = st.sessions.keys().cloned().collect();
        for id in ids {
            self.end_session(&mut st, &id);
        }
        st.cache.clear();
    }

    /// After a (re)connect: what changed while there was no link, as events.
    async fn resync(&self, link: &Link) {
        let Ok(list) = self.list_ids(link).await else {
            return;
        };
        let infos = self
            .infos(link, list.iter().map(|(_, id, _)| id.clone()).collect())
            .await
            .unwrap_or_default();
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        for c in infos {
            let uuid = c.info.uuid.clone();
            let known = st.tracks.contains_key(&uuid);
            if !known {
                let raw = list
                    .iter()
                    .find(|(u, _, _)| *u == uuid)
                    .map_or(MachineStatus::Stopped, |(_, _, s)| *s);
                st.tracks.entry(uuid.clone()).or_default().last = Some(raw);
                self.emit(st, Event::MachineCreated { machine: c.info });
            }
        }
        for (uuid, _, raw) in &list {
            let t = st.tracks.entry(uuid.clone()).or_default();
            match t.pending.settled_by(*raw) {
                Some(true) => self.started(st, uuid),
                Some(false) => self.stopped_now(st, uuid, 0),
                None => {
                    let s = effective(*raw, st.tracks.get(uuid));
                    self.status(st, uuid, s)
                }
            }
        }
        let listed: std::collections::HashSet<&String> = list.iter().map(|(u, _, _)| u).collect();
        let gone: Vec<String> = st
            .tracks
            .keys()
            .filter(|u| !listed.contains(u))
            .cloned()
            .collect();
        for uuid in gone {
            st.tracks.remove(&uuid);
            self.emit(st, Event::MachineDeleted { uuid });
        }
    }
}

/// The containers backend.
pub struct Containers {
    core: Arc<Core>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

orchard_plugin_api::export_backend!(Containers);

impl Containers {
    fn start(config: InitConfig, host: Host) -> PluginResult<Self> {
        let settings = Settings::from_json(&config.settings)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orchard-containers")
            .enable_all()
            .build()
            .map_err(|e| PluginError::Failed(format!("cannot start a runtime: {e}")))?;
        let core = Arc::new_cyclic(|this| Core {
            report: Reporter::new(host, "containers"),
            settings,
            rt: runtime.handle().clone(),
            link: Connection::new("not connected yet"),
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            this: this.clone(),
        });
        // One first attempt, so that the first inventory sees the engine when it is there.
        let c = core.clone();
        let first = runtime.block_on(async move {
            let first = c.connect(0, c.settings.call_timeout).await;
            let first = match first {
                Ok(l) => Some(l),
                Err(e) => {
                    c.log(
                        LogLevel::Warn,
                        &format!(
                            "not operational yet: {e}; retrying every {} s",
                            c.settings.reconnect_interval.as_secs_f64()
                        ),
                    );
                    c.link.failed(e);
                    None
                }
            };
            let first = first.map(Arc::new);
            if let Some(l) = &first {
                // What every container is now, so that only changes are reported.
                if let Ok(list) = c.list_ids(l).await {
                    let mut st = lock(&c.state);
                    for (uuid, _, raw) in list {
                        st.tracks.entry(uuid).or_default().last = Some(raw);
                    }
                }
                // Usable as soon as init returns; the supervisor subscribes to its events
                // and catches up with what changed in between.
                c.link.up(l.clone());
            }
            first
        });
        let c = core.clone();
        runtime.spawn(c.supervise(first));
        Ok(Self {
            core,
            runtime: Mutex::new(Some(runtime)),
        })
    }

    fn stop(&self) {
        let core = &self.core;
        if !core.report.stop() {
            return;
        }
        core.wake.notify_waiters();
        core.wake.notify_one();
        let sessions: Vec<Session> = lock(&core.state).sessions.drain().map(|(_, s)| s).collect();
        for s in &sessions {
            *lock(&s.open) = false;
            s.reader.abort();
        }
        drop(sessions);
        if let Some(rt) = lock(&self.runtime).take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        drop(core.link.close());
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Backend for Containers {
    fn describe() -> Describe {
        Describe::new(
            "containers",
            env!("CARGO_PKG_VERSION"),
            &[
                capability::CREATE,
                capability::DELETE,
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
        let core = self.core.me()?;
        self.core.run("list_machines", async move {
            let list = core.list_ids(&link).await?;
            let infos = core
                .infos(&link, list.into_iter().map(|(_, id, _)| id).collect())
                .await?;
            Ok(infos.into_iter().map(|c| c.info).collect())
        })
    }

    fn get_properties(&self, uuid: &str) -> PluginResult<MachineInfo> {
        let link = self.core.link()?;
        let core = self.core.me()?;
        let uuid = uuid.to_owned();
        self.core.run("get_properties", async move {
            let id = core.resolve(&link, &uuid).await?;
            Ok(core
                .infos(&link, vec![id])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| PluginError::NotFound(format!("no machine {uuid}")))?
                .info)
        })
    }

    fn bulk_state(&self, uuids: &[String]) -> PluginResult<Vec<MachineState>> {
        let link = self.core.link()?;
        let core = self.core.me()?;
        let uuids = uuids.to_vec();
        self.core.run(
            "bulk_state",
            async move { core.bulk_state(&link, &uuids).await },
        )
    }

    fn connections(&self, uuids: &[String]) -> PluginResult<Vec<MachineConnections>> {
        self.core.link()?;
        let st = lock(&self.core.state);
        Ok(st
            .ids
            .keys()
            .filter(|u| selected(uuids, u))
            .map(|uuid| MachineConnections {
                active_connections: st
                    .sessions
                    .iter()
                    .filter(|(_, s)| &s.uuid == uuid)
                    .map(|(id, _)| format!("console:{}", id.get(..8).unwrap_or(id)))
                    .collect(),
                uuid: uuid.clone(),
            })
            .collect())
    }

    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()> {
        self.core.power(uuid, action)
    }

    fn create(&self, spec: CreateSpec) -> PluginResult<MachineInfo> {
        check_title(&spec.title)?;
        if !(1..=1024).contains(&spec.vcpu) {
            return Err(PluginError::InvalidArgument(
                "vcpu must be from 1 to 1024".into(),
            ));
        }
        if !(6..=16_777_216).contains(&spec.ram_mib) {
            return Err(PluginError::InvalidArgument(
                "ram_mib must be from 6 to 16777216".into(),
            ));
        }
        if spec.kind == Some(MachineKind::Vm) {
            return Err(PluginError::InvalidArgument(
                "the containers backend makes containers only".into(),
            ));
        }
        let core = self.core.me()?;
        let link = core.link()?;
        let (mut labels, image) = convert::labels_from_tags(&spec.tags);
        let image = image
            .or_else(|| core.settings.image.clone())
            .ok_or_else(|| {
                PluginError::InvalidArgument(
                    "no image: give a tag image=REF or set [plugins.settings.containers] image"
                        .into(),
                )
            })?;
        labels.insert(convert::LABEL_TITLE.into(), spec.title.clone());
        if !spec.description.is_empty() {
            labels.insert(convert::LABEL_DESCRIPTION.into(), spec.description.clone());
        }
        if link.ncpu > 0 && spec.vcpu > link.ncpu {
            return Err(PluginError::InvalidArgument(format!(
                "vcpu must be at most {} (the host's CPUs)",
                link.ncpu
            )));
        }
        let body = ContainerCreateBody {
            image: Some(image),
            labels: Some(labels),
            cmd: core.settings.command.clone(),
            host_config: Some(HostConfig {
                nano_cpus: Some(i64::from(spec.vcpu) * 1_000_000_000),
                memory: Some((spec.ram_mib * MIB) as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let base = convert::container_name(&spec.title);
        let c = core.clone();
        let id = self.core.run("create", async move {
            let mut last = None;
            for i in 1..=20 {
                let name = if i == 1 {
                    base.clone()
                } else {
                    format!("{base}-{i}")
                };
                let opts = CreateContainerOptionsBuilder::default().name(&name).build();
                match link.docker.create_container(Some(opts), body.clone()).await {
                    Ok(r) => {
                        let cached = c.inspect(&link, &r.id).await?;
                        lock(&c.state)
                            .tracks
                            .entry(cached.info.uuid.clone())
                            .or_default()
                            .last = Some(MachineStatus::Stopped);
                        return Ok(cached.info);
                    }
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        message,
                    }) => last = Some(message),
                    // A missing image is a bad spec, not a missing machine.
                    Err(e) => {
                        return Err(match de("cannot create the container", e) {
                            PluginError::NotFound(m) => PluginError::InvalidArgument(m),
                            other => other,
                        });
                    }
                }
            }
            Err(PluginError::InvalidArgument(format!(
                "no free container name: {}",
                last.unwrap_or_default()
            )))
        })?;
        Ok(id)
    }

    fn delete(&self, uuid: &str) -> PluginResult<()> {
        let core = self.core.me()?;
        let link = core.link()?;
        let uuid = uuid.to_owned();
        self.core.run("delete", async move {
            let id = core.resolve(&link, &uuid).await?;
            let opts = RemoveContainerOptionsBuilder::default().force(true).build();
            link.docker
                .remove_container(&id, Some(opts))
                .await
                .map_err(|e| de("cannot remove the container", e))
        })
    }

    fn console_open(&self, uuid: &str) -> PluginResult<ConsoleOpened> {
        let core = self.core.me()?;
        let link = core.link()?;
        let uuid = uuid.to_owned();
        let session = self.core.run("console_open", async move {
            core.console_open(link, uuid).await
        })?;
        Ok(ConsoleOpened { session })
    }

    fn console_write(&self, session: &str, data: &[u8]) -> PluginResult<()> {
        let st = lock(&self.core.state);
        let s = st
            .sessions
            .get(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        s.input
            .try_send(data.to_vec())
            .map_err(|_| PluginError::Failed("the console is not taking input".into()))
    }

    fn console_resize(&self, session: &str, cols: u16, rows: u16) -> PluginResult<()> {
        let link = self.core.link()?;
        let exec = lock(&self.core.state)
            .sessions
            .get(session)
            .map(|s| s.exec_id.clone())
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        self.core.run("console_resize", async move {
            link.docker
                .resize_exec(
                    &exec,
                    ResizeExecOptions {
                        height: rows,
                        width: cols,
                    },
                )
                .await
                .map_err(|e| de("cannot resize the console", e))
        })
    }

    fn console_close(&self, session: &str) -> PluginResult<()> {
        let s = lock(&self.core.state)
            .sessions
            .remove(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        // Output being forwarded finishes before this; none follows. Dropping the input
        // makes the writer end the shell (see `console_open`).
        *lock(&s.open) = false;
        s.reader.abort();
        drop(s);
        Ok(())
    }

    fn shutdown(&self) {
        self.stop();
    }
}
