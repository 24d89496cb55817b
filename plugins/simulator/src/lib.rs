//! The simulator backend: a demo fleet of virtual machines and containers with no system
//! dependency, Orchard's zero-configuration default. It behaves like a small hypervisor:
//! machines boot and shut down in the background, report smoothly varying load, fill their
//! disks, and offer a serial console with a fake Linux login.
//!
//! # Settings (`[plugins.settings.simulator]`, all optional)
//! * `machines` (whole number, default 8): size of the demo fleet generated on first start.
//! * `boot_seconds` (number, default 2.0), `shutdown_seconds` (number, default 1.0): how long
//!   a boot and a graceful shutdown take.
//!
//! Unknown keys are ignored; a key of the wrong type fails `init` with `InvalidArgument`.
//!
//! # State
//! `<data_dir>/simulator.json`, rewritten atomically after every change. Once it exists it is
//! the fleet: `machines` no longer matters. A machine saved mid-boot comes back running, one
//! saved mid-shutdown comes back stopped. A file that cannot be read fails `init` and is left
//! untouched.
//!
//! # The demo fleet
//! Machine `i` (from 1) is titled `sim-vm-NN` or, for every third one, `sim-ct-NN` (a
//! container), numbered with at least two digits. Odd-numbered machines start running, the
//! others stopped; machine 2 is tagged `fail-boot` when the fleet has at least 3 machines.
//! Every machine has a system disk (`vda`/qcow2 for VMs, `rootfs`/overlay for containers);
//! machines 2, 6, 10, … also have a data disk. Connections: `ssh` at `10.77.x.y:22`, and for
//! VMs a `vnc` display on the host.
//!
//! # Failure injection
//! A machine tagged `fail-boot` always fails to boot (it ends in `error`); one tagged
//! `fail-shutdown` always fails to shut down gracefully (it stays running).
//!
//! # Threads
//! Calls run on the host's threads under one state lock held briefly. Boots and shutdowns
//! finish on one scheduler thread (a timer queue), stopped by `shutdown`. Events and console
//! output are handed to the host after the lock is released, in the order the changes were
//! made (a ticket taken under the lock orders the emitters).

mod clock;
mod console;
mod fleet;
mod model;
mod settings;
mod store;
mod timers;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orchard_plugin_api::{
    Backend, ConsoleOpened, CreateSpec, Describe, Event, Host, InitConfig, LogLevel,
    MachineConnections, MachineDisks, MachineInfo, MachineKind, MachineState, MachineStatus,
    MetadataUpdate, PluginError, PluginResult, PowerAction, capability, check_title,
    check_transition,
};

use console::Session;
use model::Machine;
use settings::Settings;
use store::Store;
use timers::{Step, Task, Timers};

/// The ABI this plugin is built against.
pub const ABI_VERSION: u32 = orchard_plugin_api::ABI_VERSION;

/// The `error` of a `boot_fail` caused by the `fail-boot` tag.
pub const BOOT_FAILURE: &str = "simulated boot failure";
/// The `error` of a `shutdown_fail` caused by the `fail-shutdown` tag.
pub const SHUTDOWN_FAILURE: &str = "simulated shutdown failure";

const VCPU_RANGE: std::ops::RangeInclusive<u32> = 1..=128;
const RAM_RANGE: std::ops::RangeInclusive<u64> = 64..=1_048_576;

/// Where events, console output and log lines go: the host, or a recorder in tests.
pub(crate) trait Sink: Send + Sync + 'static {
    fn event(&self, event: &Event);
    fn console(&self, session: &str, data: &[u8]);
    fn log(&self, level: LogLevel, message: &str);
}

impl Sink for Host {
    fn event(&self, event: &Event) {
        self.emit(event);
    }

    fn console(&self, session: &str, data: &[u8]) {
        self.console_output(session, data);
    }

    fn log(&self, level: LogLevel, message: &str) {
        Host::log(self, level, message);
    }
}

/// The simulator backend.
pub struct Simulator {
    core: Arc<Core>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    churn: Mutex<Option<JoinHandle<()>>>,
}

orchard_plugin_api::export_backend!(Simulator);

/// Something to hand to the host once the state lock is released.
enum Out {
    Event(Event),
    Console(String, Vec<u8>),
}

/// What a change of state leads to, collected under the lock and carried out after it.
#[derive(Default)]
struct Effects {
    out: Vec<Out>,
    persist: bool,
    /// The change is only a status change: its write may wait up to [`PERSIST_EVERY`].
    lazy: bool,
    timers: Vec<(Duration, Task)>,
    /// Wait for every emission ordered before this change, even with nothing to emit.
    barrier: bool,
}

impl Effects {
    fn event(&mut self, event: Event) {
        self.out.push(Out::Event(event));
    }

    fn status(&mut self, uuid: &str, status: MachineStatus) {
        self.event(Event::StateChanged {
            uuid: uuid.to_owned(),
            status,
        });
    }

    fn console(&mut self, session: &str, data: impl Into<Vec<u8>>) {
        self.out.push(Out::Console(session.to_owned(), data.into()));
    }
}

struct State {
    /// In creation order.
    machines: Vec<Machine>,
    /// uuid → position in `machines`.
    index: HashMap<String, usize>,
    sessions: HashMap<String, Session>,
    /// Numbers the addresses of created machines.
    next_seq: u64,
    /// Number of the latest snapshot taken for the state file.
    generation: u64,
    /// Next emission ticket (see [`Gate`]).
    next_ticket: u64,
    /// When the state file was last written, and whether a late write is scheduled.
    last_persist: Option<Instant>,
    flush_scheduled: bool,
}

/// Status changes (power transitions) reach the state file at most this often: a fleet under
/// heavy churn would otherwise rewrite and fsync it hundreds of times a second. Creations,
/// deletions and metadata are written at once.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

impl State {
    fn find(&self, uuid: &str) -> PluginResult<usize> {
        self.index
            .get(uuid)
            .copied()
            .ok_or_else(|| PluginError::NotFound(format!("no machine {uuid}")))
    }

    fn machine(&mut self, uuid: &str) -> PluginResult<&mut Machine> {
        let i = self.find(uuid)?;
        self.machines
            .get_mut(i)
            .ok_or_else(|| PluginError::NotFound(format!("no machine {uuid}")))
    }
}

/// Lets emitters through one at a time, in ticket order.
#[derive(Default)]
struct Gate {
    serving: Mutex<u64>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self, ticket: u64, f: impl FnOnce()) {
        struct Done<'a>(&'a Gate);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                *self
                    .0
                    .serving
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) += 1;
                self.0.cv.notify_all();
            }
        }
        let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
        while *serving != ticket {
            serving = self
                .cv
                .wait(serving)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(serving);
        let _done = Done(self);
        f();
    }
}

struct Core {
    sink: Box<dyn Sink>,
    settings: Settings,
    store: Store,
    state: Mutex<State>,
    timers: Timers,
    gate: Gate,
}

fn wall_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries out `fx`: takes a snapshot for the state file and an emission ticket under
    /// the lock, releases it, then emits and writes.
    fn commit(&self, mut st: MutexGuard<'_, State>, fx: Effects) {
        let Effects {
            out,
            persist,
            lazy,
            mut timers,
            barrier,
        } = fx;
        let now = Instant::now();
        let since = st.last_persist.map(|t| now.duration_since(t));
        let write_now = persist && (!lazy || since.is_none_or(|d| d >= PERSIST_EVERY));
        if persist && !write_now && !st.flush_scheduled {
            st.flush_scheduled = true;
            let wait = PERSIST_EVERY.saturating_sub(since.unwrap_or_default());
            timers.push((
                wait,
                Task {
                    uuid: String::new(),
                    token: 0,
                    step: Step::Flush,
                },
            ));
        }
        let snapshot = write_now.then(|| {
            st.generation += 1;
            st.last_persist = Some(now);
            st.flush_scheduled = false;
            let bytes = store::encode(&st.machines, st.next_seq, now);
            (st.generation, bytes)
        });
        for (delay, task) in timers {
            self.timers.schedule(delay, task);
        }
        let ticket = (barrier || !out.is_empty()).then(|| {
            st.next_ticket += 1;
            st.next_ticket - 1
        });
        drop(st);
        if let Some(ticket) = ticket {
            self.gate.pass(ticket, || {
                for o in &out {
                    match o {
                        Out::Event(e) => self.sink.event(e),
                        Out::Console(session, data) => self.sink.console(session, data),
                    }
                }
            });
        }
        if let Some((generation, bytes)) = snapshot
            && let Err(e) = bytes.and_then(|b| self.store.write(generation, &b))
        {
            self.sink.log(LogLevel::Error, &format!("simulator: {e}"));
        }
    }

    /// stopped/error → booting; the boot finishes on the scheduler thread.
    fn begin_boot(&self, m: &mut Machine, fx: &mut Effects) {
        m.token += 1;
        m.status = MachineStatus::Booting;
        let uuid = m.info.uuid.clone();
        fx.event(Event::BootStart { uuid: uuid.clone() });
        fx.status(&uuid, MachineStatus::Booting);
        fx.timers.push((
            self.settings.boot,
            Task {
                uuid,
                token: m.token,
                step: Step::Boot,
            },
        ));
    }

    /// running/paused/suspended → shutting down; it finishes on the scheduler thread.
    fn begin_shutdown(&self, m: &mut Machine, now: Instant, restart: bool, fx: &mut Effects) {
        m.token += 1;
        m.status = MachineStatus::ShuttingDown;
        m.run.thaw(now);
        let uuid = m.info.uuid.clone();
        fx.event(Event::ShutdownStart { uuid: uuid.clone() });
        fx.status(&uuid, MachineStatus::ShuttingDown);
        let what = if restart { "reboot" } else { "power off" };
        let notice = format!(
            "\r\n\r\nBroadcast message from root@{} (ttyS0):\r\n\r\nThe system will {what} \
             now!\r\n\r\n",
            m.info.title
        );
        for s in &m.sessions {
            fx.console(s, notice.as_bytes());
        }
        fx.timers.push((
            self.settings.shutdown,
            Task {
                uuid,
                token: m.token,
                step: Step::Shutdown { restart },
            },
        ));
    }
}

/// The machine is off now: `state_changed{stopped}`.
fn power_down(m: &mut Machine, now: Instant, fx: &mut Effects) {
    m.token += 1;
    m.status = MachineStatus::Stopped;
    m.run.end(now);
    fx.status(&m.info.uuid, MachineStatus::Stopped);
}

/// Ends the console sessions of a machine that went away: an optional last line of output,
/// then `console_closed` for each.
fn close_sessions(
    sessions: &mut HashMap<String, Session>,
    m: &mut Machine,
    last_words: Option<&[u8]>,
    fx: &mut Effects,
) {
    for session in std::mem::take(&mut m.sessions) {
        sessions.remove(&session);
        if let Some(text) = last_words {
            fx.console(&session, text);
        }
        fx.event(Event::ConsoleClosed { session });
    }
}

impl Core {
    /// A scheduled step is due.
    fn fire(&self, task: Task) {
        let mut guard = self.lock();
        if task.step == Step::Flush {
            if guard.flush_scheduled {
                let fx = Effects {
                    persist: true,
                    ..Effects::default()
                };
                self.commit(guard, fx);
            }
            return;
        }
        let st = &mut *guard;
        let Some(m) = st
            .index
            .get(&task.uuid)
            .and_then(|&i| st.machines.get_mut(i))
        else {
            return;
        };
        if m.token != task.token {
            return;
        }
        let now = Instant::now();
        let wall = clock::now_ms();
        let mut fx = Effects {
            persist: true,
            lazy: true,
            ..Effects::default()
        };
        let uuid = m.info.uuid.clone();
        match task.step {
            Step::Boot if m.status == MachineStatus::Booting => {
                if m.fail_boot {
                    m.status = MachineStatus::Error;
                    fx.status(&uuid, MachineStatus::Error);
                    fx.event(Event::BootFail {
                        uuid,
                        error: BOOT_FAILURE.into(),
                    });
                } else {
                    m.status = MachineStatus::Running;
                    m.run.boot(now, wall);
                    fx.status(&uuid, MachineStatus::Running);
                    fx.event(Event::BootSuccess { uuid });
                }
            }
            Step::Shutdown { restart } if m.status == MachineStatus::ShuttingDown => {
                if m.fail_shutdown {
                    m.status = MachineStatus::Running;
                    fx.status(&uuid, MachineStatus::Running);
                    fx.event(Event::ShutdownFail {
                        uuid,
                        error: SHUTDOWN_FAILURE.into(),
                    });
                } else {
                    power_down(m, now, &mut fx);
                    fx.event(Event::ShutdownSuccess { uuid });
                    let last: &[u8] = if restart {
                        b"[  OK  ] Reached target System Reboot.\r\nreboot: Restarting system\r\n"
                    } else {
                        b"[  OK  ] Reached target System Power Off.\r\nreboot: Power down\r\n"
                    };
                    close_sessions(&mut st.sessions, m, Some(last), &mut fx);
                    if restart {
                        self.begin_boot(m, &mut fx);
                    }
                }
            }
            _ => return,
        }
        self.commit(guard, fx);
    }

    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let i = st.find(uuid)?;
        let Some(m) = st.machines.get_mut(i) else {
            return Err(PluginError::NotFound(format!("no machine {uuid}")));
        };
        check_transition(m.status, action)?;
        let now = Instant::now();
        let wall = clock::now_ms();
        let mut fx = Effects {
            persist: true,
            lazy: true,
            ..Effects::default()
        };
        match action {
            PowerAction::Start => self.begin_boot(m, &mut fx),
            PowerAction::Stop => self.begin_shutdown(m, now, false, &mut fx),
            PowerAction::Restart => self.begin_shutdown(m, now, true, &mut fx),
            PowerAction::Suspend => {
                m.run.freeze(now, wall_secs(wall));
                m.status = MachineStatus::Suspended;
                fx.status(uuid, MachineStatus::Suspended);
            }
            PowerAction::Resume => {
                m.run.thaw(now);
                m.status = MachineStatus::Running;
                fx.status(uuid, MachineStatus::Running);
            }
            PowerAction::ForceOff => {
                let interrupted = m.status;
                power_down(m, now, &mut fx);
                // Close the boot or shutdown that was under way.
                match interrupted {
                    MachineStatus::Booting => fx.event(Event::BootFail {
                        uuid: uuid.to_owned(),
                        error: "boot interrupted: the machine was forced off".into(),
                    }),
                    MachineStatus::ShuttingDown => fx.event(Event::ShutdownFail {
                        uuid: uuid.to_owned(),
                        error: "shutdown interrupted: the machine was forced off".into(),
                    }),
                    _ => {}
                }
                close_sessions(&mut st.sessions, m, None, &mut fx);
                self.timers.cancel(uuid);
            }
        }
        self.commit(guard, fx);
        Ok(())
    }

    /// The churn load: restarts `rate` running machines per second, round robin, in small
    /// batches every 10 ms, until the scheduler stops.
    fn churn(&self, rate: u32) {
        let step = Duration::from_millis(10);
        let mut owed = 0.0_f64;
        let mut next = 0usize;
        while !self.timers.is_stopped() {
            std::thread::sleep(step);
            owed += f64::from(rate) * step.as_secs_f64();
            while owed >= 1.0 {
                owed -= 1.0;
                let pick = {
                    let st = self.lock();
                    let n = st.machines.len();
                    (0..n)
                        .map(|k| (next + k) % n.max(1))
                        .find(|&i| {
                            st.machines.get(i).is_some_and(|m| {
                                m.status == MachineStatus::Running
                                    && !m.fail_boot
                                    && !m.fail_shutdown
                            })
                        })
                        .and_then(|i| st.machines.get(i).map(|m| (i, m.info.uuid.clone())))
                };
                let Some((i, uuid)) = pick else { break };
                next = i + 1;
                let _ = self.power(&uuid, PowerAction::Restart);
            }
        }
    }

    /// Machines picked by a selection (all when empty), mapped by `f`, under the lock.
    fn select<T>(&self, uuids: &[String], f: impl Fn(&Machine) -> T) -> Vec<T> {
        let st = self.lock();
        if uuids.is_empty() {
            st.machines.iter().map(f).collect()
        } else {
            uuids
                .iter()
                .filter_map(|u| st.index.get(u.as_str()))
                .filter_map(|&i| st.machines.get(i))
                .map(f)
                .collect()
        }
    }
}

impl Simulator {
    /// Starts the simulator with its output going to `sink`.
    pub(crate) fn start(config: InitConfig, sink: Box<dyn Sink>) -> PluginResult<Self> {
        let settings = Settings::from_json(&config.settings)?;
        if config.data_dir.trim().is_empty() {
            return Err(PluginError::InvalidArgument(
                "simulator: data_dir is empty".into(),
            ));
        }
        let dir = PathBuf::from(&config.data_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| PluginError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        let store = Store::new(&dir);
        let now = Instant::now();
        let wall = clock::now_ms();
        let (machines, next_seq, how) = match store::load(store.path(), now, wall)? {
            Some(loaded) => (loaded.machines, loaded.next_seq, "loaded"),
            None => (
                fleet::generate(settings.machines, now, wall),
                u64::from(settings.machines) + 1,
                "generated a demo fleet of",
            ),
        };
        // Saved at once: a new fleet keeps its uuids, a loaded one its settled statuses.
        store.write(1, &store::encode(&machines, next_seq, now)?)?;
        sink.log(
            LogLevel::Info,
            &format!(
                "simulator: {how} {} machines ({})",
                machines.len(),
                store.path().display()
            ),
        );
        let index = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.info.uuid.clone(), i))
            .collect();
        let core = Arc::new(Core {
            sink,
            settings,
            store,
            state: Mutex::new(State {
                machines,
                index,
                sessions: HashMap::new(),
                next_seq,
                generation: 1,
                next_ticket: 0,
                last_persist: None,
                flush_scheduled: false,
            }),
            timers: Timers::default(),
            gate: Gate::default(),
        });
        let worker = Arc::clone(&core);
        let scheduler = std::thread::Builder::new()
            .name("orchard-sim".into())
            .spawn(move || {
                while let Some(task) = worker.timers.next() {
                    worker.fire(task);
                }
            })
            .map_err(|e| {
                PluginError::Failed(format!("cannot start the simulator's scheduler: {e}"))
            })?;
        let churn = match core.settings.churn_per_second {
            0 => None,
            rate => {
                let worker = Arc::clone(&core);
                Some(
                    std::thread::Builder::new()
                        .name("orchard-sim-churn".into())
                        .spawn(move || worker.churn(rate))
                        .map_err(|e| {
                            PluginError::Failed(format!("cannot start the churn thread: {e}"))
                        })?,
                )
            }
        };
        Ok(Self {
            core,
            scheduler: Mutex::new(Some(scheduler)),
            churn: Mutex::new(churn),
        })
    }

    /// Stops and joins the scheduler thread; pending boots and shutdowns stay where they are
    /// (and settle on the next start).
    fn stop_scheduler(&self) {
        self.core.timers.stop();
        // Status changes still waiting for their late write are saved now.
        let guard = self.core.lock();
        if guard.flush_scheduled {
            let fx = Effects {
                persist: true,
                ..Effects::default()
            };
            self.core.commit(guard, fx);
        } else {
            drop(guard);
        }
        for slot in [&self.scheduler, &self.churn] {
            let handle = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(handle) = handle {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop_scheduler();
    }
}

impl Backend for Simulator {
    fn describe() -> Describe {
        Describe::new(
            "simulator",
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
        Self::start(config, Box::new(host))
    }

    fn list_machines(&self) -> PluginResult<Vec<MachineInfo>> {
        Ok(self.core.select(&[], |m| m.info.clone()))
    }

    fn get_properties(&self, uuid: &str) -> PluginResult<MachineInfo> {
        let mut st = self.core.lock();
        st.machine(uuid).map(|m| m.info.clone())
    }

    fn bulk_state(&self, uuids: &[String]) -> PluginResult<Vec<MachineState>> {
        let now = Instant::now();
        let wall = wall_secs(clock::now_ms());
        Ok(self.core.select(uuids, |m| m.state(now, wall)))
    }

    fn disks(&self, uuids: &[String]) -> PluginResult<Vec<MachineDisks>> {
        let now = Instant::now();
        Ok(self.core.select(uuids, |m| MachineDisks {
            uuid: m.info.uuid.clone(),
            disks: m.disk_usage(now),
        }))
    }

    fn connections(&self, uuids: &[String]) -> PluginResult<Vec<MachineConnections>> {
        Ok(self.core.select(uuids, |m| MachineConnections {
            uuid: m.info.uuid.clone(),
            active_connections: m.sessions.clone(),
        }))
    }

    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()> {
        self.core.power(uuid, action)
    }

    fn create(&self, spec: CreateSpec) -> PluginResult<MachineInfo> {
        check_title(&spec.title)?;
        if !VCPU_RANGE.contains(&spec.vcpu) {
            return Err(PluginError::InvalidArgument(format!(
                "vcpu must be from {} to {}",
                VCPU_RANGE.start(),
                VCPU_RANGE.end()
            )));
        }
        if !RAM_RANGE.contains(&spec.ram_mib) {
            return Err(PluginError::InvalidArgument(format!(
                "ram_mib must be from {} to {}",
                RAM_RANGE.start(),
                RAM_RANGE.end()
            )));
        }
        let kind = spec.kind.unwrap_or(MachineKind::Vm);
        let mut st = self.core.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let info = MachineInfo {
            uuid: uuid::Uuid::new_v4().to_string(),
            title: spec.title,
            description: spec.description,
            tags: spec.tags,
            kind,
            vcpu: spec.vcpu,
            ram_max_mib: spec.ram_mib,
            connections: fleet::connections(seq, kind),
            disks: vec![fleet::system_disk(kind, fleet::created_disk_gib(kind))],
        };
        let position = st.machines.len();
        st.index.insert(info.uuid.clone(), position);
        st.machines
            .push(Machine::new(info.clone(), MachineStatus::Stopped));
        let mut fx = Effects {
            persist: true,
            ..Effects::default()
        };
        fx.event(Event::MachineCreated {
            machine: info.clone(),
        });
        self.core.commit(st, fx);
        Ok(info)
    }

    fn delete(&self, uuid: &str) -> PluginResult<()> {
        let mut guard = self.core.lock();
        let st = &mut *guard;
        let i = st.find(uuid)?;
        let mut m = st.machines.remove(i);
        st.index.remove(uuid);
        for (j, later) in st.machines.iter().enumerate().skip(i) {
            if let Some(slot) = st.index.get_mut(&later.info.uuid) {
                *slot = j;
            }
        }
        self.core.timers.cancel(uuid);
        let mut fx = Effects {
            persist: true,
            ..Effects::default()
        };
        close_sessions(&mut st.sessions, &mut m, None, &mut fx);
        fx.event(Event::MachineDeleted {
            uuid: uuid.to_owned(),
        });
        self.core.commit(guard, fx);
        Ok(())
    }

    fn update_metadata(&self, uuid: &str, update: MetadataUpdate) -> PluginResult<MachineInfo> {
        if let Some(title) = &update.title {
            check_title(title)?;
        }
        let mut st = self.core.lock();
        let m = st.machine(uuid)?;
        if let Some(title) = update.title {
            m.info.title = title;
        }
        if let Some(description) = update.description {
            m.info.description = description;
        }
        if let Some(tags) = update.tags {
            m.info.tags = tags;
        }
        m.info_changed();
        let info = m.info.clone();
        let mut fx = Effects {
            persist: true,
            ..Effects::default()
        };
        fx.event(Event::MachineUpdated {
            machine: info.clone(),
        });
        self.core.commit(st, fx);
        Ok(info)
    }

    fn console_open(&self, uuid: &str) -> PluginResult<ConsoleOpened> {
        let mut guard = self.core.lock();
        let st = &mut *guard;
        let i = st.find(uuid)?;
        let Some(m) = st.machines.get_mut(i) else {
            return Err(PluginError::NotFound(format!("no machine {uuid}")));
        };
        if m.status != MachineStatus::Running {
            return Err(PluginError::InvalidState("machine is not running".into()));
        }
        let session = uuid::Uuid::new_v4().to_string();
        m.sessions.push(session.clone());
        let banner = console::banner(&m.info.title);
        st.sessions
            .insert(session.clone(), Session::new(m.info.uuid.clone()));
        let mut fx = Effects::default();
        fx.console(&session, banner);
        self.core.commit(guard, fx);
        Ok(ConsoleOpened { session })
    }

    fn console_write(&self, session: &str, data: &[u8]) -> PluginResult<()> {
        let mut guard = self.core.lock();
        let st = &mut *guard;
        let s = st
            .sessions
            .get_mut(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        // A frozen guest reads nothing.
        let Some(m) = st
            .index
            .get(&s.machine)
            .and_then(|&i| st.machines.get(i))
            .filter(|m| m.is_active())
        else {
            return Ok(());
        };
        let wall = clock::now_ms();
        let guest = console::Guest {
            title: &m.info.title,
            uptime_secs: m.run.active(Instant::now()),
            cpu_percent: m.profile.cpu(wall_secs(wall)),
            vcpu: m.info.vcpu,
            wall_ms: wall,
        };
        let output = s.input(data, &guest);
        let mut fx = Effects::default();
        if !output.is_empty() {
            fx.console(session, output);
        }
        self.core.commit(guard, fx);
        Ok(())
    }

    fn console_resize(&self, session: &str, cols: u16, rows: u16) -> PluginResult<()> {
        let mut st = self.core.lock();
        let s = st
            .sessions
            .get_mut(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        s.cols = cols;
        s.rows = rows;
        Ok(())
    }

    fn console_close(&self, session: &str) -> PluginResult<()> {
        let mut guard = self.core.lock();
        let st = &mut *guard;
        let s = st
            .sessions
            .remove(session)
            .ok_or_else(|| PluginError::NotFound(format!("no console session {session}")))?;
        if let Some(m) = st
            .index
            .get(&s.machine)
            .and_then(|&i| st.machines.get_mut(i))
        {
            m.sessions.retain(|x| x != session);
        }
        // Output already on its way out for this session goes before we return; none after.
        let fx = Effects {
            barrier: true,
            ..Effects::default()
        };
        self.core.commit(guard, fx);
        Ok(())
    }

    fn shutdown(&self) {
        self.stop_scheduler();
    }
}
