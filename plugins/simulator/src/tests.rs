//! Behaviour tests: a fake host records what the simulator emits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use orchard_plugin_api::{
    Backend, CreateSpec, Event, InitConfig, LogLevel, MachineInfo, MachineKind, MachineStatus,
    MetadataUpdate, PluginError, PowerAction,
};
use serde_json::{Value, json};

use crate::{BOOT_FAILURE, SHUTDOWN_FAILURE, Simulator, Sink};

const WAIT: Duration = Duration::from_secs(10);

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("orchard-sim-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Recorded {
    events: Vec<Event>,
    console: Vec<(String, Vec<u8>)>,
    logs: Vec<String>,
}

/// The fake host.
#[derive(Default)]
struct Recorder {
    rec: Mutex<Recorded>,
    cv: Condvar,
}

struct Tap(Arc<Recorder>);

impl Sink for Tap {
    fn event(&self, event: &Event) {
        self.0.rec.lock().unwrap().events.push(event.clone());
        self.0.cv.notify_all();
    }

    fn console(&self, session: &str, data: &[u8]) {
        self.0
            .rec
            .lock()
            .unwrap()
            .console
            .push((session.to_owned(), data.to_vec()));
        self.0.cv.notify_all();
    }

    fn log(&self, _level: LogLevel, message: &str) {
        self.0.rec.lock().unwrap().logs.push(message.to_owned());
    }
}

impl Recorder {
    /// Waits until `done` holds for the recorded events; returns them.
    fn wait(&self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + WAIT;
        let mut rec = self.rec.lock().unwrap();
        while !done(&rec.events) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {what}: {:#?}", rec.events));
            rec = self.cv.wait_timeout(rec, left).unwrap().0;
        }
        rec.events.clone()
    }

    /// Waits for an event matching `want`.
    fn wait_for(&self, what: &str, want: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.wait(what, |events| events.iter().any(&want))
    }

    fn events(&self) -> Vec<Event> {
        self.rec.lock().unwrap().events.clone()
    }

    fn clear(&self) {
        let mut rec = self.rec.lock().unwrap();
        rec.events.clear();
        rec.console.clear();
    }

    /// Everything printed on `session`, as text.
    fn output(&self, session: &str) -> String {
        let rec = self.rec.lock().unwrap();
        let bytes: Vec<u8> = rec
            .console
            .iter()
            .filter(|(s, _)| s == session)
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        String::from_utf8(bytes).unwrap()
    }
}

fn event_uuid(e: &Event) -> Option<&str> {
    match e {
        Event::MachineCreated { machine } | Event::MachineUpdated { machine } => {
            Some(&machine.uuid)
        }
        Event::MachineDeleted { uuid }
        | Event::StateChanged { uuid, .. }
        | Event::BootStart { uuid }
        | Event::BootSuccess { uuid }
        | Event::BootFail { uuid, .. }
        | Event::ShutdownStart { uuid }
        | Event::ShutdownSuccess { uuid }
        | Event::ShutdownFail { uuid, .. } => Some(uuid),
        Event::ConsoleClosed { .. } => None,
    }
}

fn of(events: &[Event], uuid: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| event_uuid(e) == Some(uuid))
        .cloned()
        .collect()
}

fn start_in(dir: &Path, settings: Value) -> Result<(Simulator, Arc<Recorder>), PluginError> {
    let rec = Arc::new(Recorder::default());
    let sim = Simulator::start(
        InitConfig {
            data_dir: dir.to_string_lossy().into_owned(),
            settings,
        },
        Box::new(Tap(Arc::clone(&rec))),
    )?;
    Ok((sim, rec))
}

/// A simulator with quick transitions in a fresh directory.
fn quick(machines: u32) -> (TempDir, Simulator, Arc<Recorder>) {
    let dir = TempDir::new();
    let (sim, rec) = start_in(
        dir.path(),
        json!({"machines": machines, "boot_seconds": 0.05, "shutdown_seconds": 0.05}),
    )
    .unwrap();
    (dir, sim, rec)
}

fn status(sim: &Simulator, uuid: &str) -> MachineStatus {
    sim.bulk_state(&[uuid.to_owned()]).unwrap()[0].status
}

/// The first machine with `status` that is not tagged for failure injection.
fn pick(sim: &Simulator, want: MachineStatus) -> MachineInfo {
    let states = sim.bulk_state(&[]).unwrap();
    sim.list_machines()
        .unwrap()
        .into_iter()
        .zip(states)
        .find(|(m, s)| s.status == want && !m.tags.iter().any(|t| t.starts_with("fail-")))
        .map(|(m, _)| m)
        .unwrap_or_else(|| panic!("no {want:?} machine"))
}

fn state_changed(uuid: &str, status: MachineStatus) -> Event {
    Event::StateChanged {
        uuid: uuid.into(),
        status,
    }
}

fn boot_events(uuid: &str) -> Vec<Event> {
    vec![
        Event::BootStart { uuid: uuid.into() },
        state_changed(uuid, MachineStatus::Booting),
        state_changed(uuid, MachineStatus::Running),
        Event::BootSuccess { uuid: uuid.into() },
    ]
}

fn shutdown_events(uuid: &str) -> Vec<Event> {
    vec![
        Event::ShutdownStart { uuid: uuid.into() },
        state_changed(uuid, MachineStatus::ShuttingDown),
        state_changed(uuid, MachineStatus::Stopped),
        Event::ShutdownSuccess { uuid: uuid.into() },
    ]
}

fn spec(title: &str) -> CreateSpec {
    CreateSpec {
        title: title.into(),
        vcpu: 2,
        ram_mib: 2048,
        description: "made in a test".into(),
        tags: vec!["t".into()],
        kind: None,
    }
}

fn invalid_argument<T: std::fmt::Debug>(r: Result<T, PluginError>) -> String {
    match r {
        Err(PluginError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn invalid_state<T: std::fmt::Debug>(r: Result<T, PluginError>) -> String {
    match r {
        Err(PluginError::InvalidState(m)) => m,
        other => panic!("expected InvalidState, got {other:?}"),
    }
}

fn not_found<T: std::fmt::Debug>(r: Result<T, PluginError>) {
    assert!(
        matches!(r, Err(PluginError::NotFound(_))),
        "expected NotFound, got {r:?}"
    );
}

#[test]
fn describe_advertises_everything() {
    let d = Simulator::describe();
    assert_eq!(d.name, "simulator");
    assert_eq!(d.protocol_version, orchard_plugin_api::PROTOCOL_VERSION);
    for c in [
        "create",
        "delete",
        "metadata",
        "disks",
        "connections",
        "console",
        "events",
    ] {
        assert!(d.capabilities.iter().any(|x| x == c), "{c}");
    }
}

#[test]
fn demo_fleet_is_generated_saved_and_reloaded() {
    let dir = TempDir::new();
    let (sim, rec) = start_in(dir.path(), json!({"machines": 6})).unwrap();
    let fleet = sim.list_machines().unwrap();
    let titles: Vec<&str> = fleet.iter().map(|m| m.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "sim-vm-01",
            "sim-vm-02",
            "sim-ct-03",
            "sim-vm-04",
            "sim-vm-05",
            "sim-ct-06"
        ]
    );
    assert_eq!(fleet[2].kind, MachineKind::Container);
    for m in &fleet {
        assert_eq!(uuid::Uuid::parse_str(&m.uuid).unwrap().get_version_num(), 4);
    }
    let states = sim.bulk_state(&[]).unwrap();
    let running = states
        .iter()
        .filter(|s| s.status == MachineStatus::Running)
        .count();
    assert_eq!(running, 3);
    let fail: Vec<_> = fleet
        .iter()
        .filter(|m| m.tags.iter().any(|t| t == "fail-boot"))
        .collect();
    assert_eq!(fail.len(), 1);
    assert_eq!(status(&sim, &fail[0].uuid), MachineStatus::Stopped);
    assert!(dir.path().join("simulator.json").is_file());
    assert!(rec.rec.lock().unwrap().logs[0].contains("generated"));
    assert!(rec.events().is_empty());
    sim.shutdown();
    drop(sim);

    // The file wins over `machines` from now on.
    let (again, _) = start_in(dir.path(), json!({"machines": 2})).unwrap();
    assert_eq!(again.list_machines().unwrap(), fleet);
    let statuses: Vec<_> = again
        .bulk_state(&[])
        .unwrap()
        .into_iter()
        .map(|s| (s.uuid, s.status, s.boot_timestamp))
        .collect();
    let before: Vec<_> = states
        .into_iter()
        .map(|s| (s.uuid, s.status, s.boot_timestamp))
        .collect();
    assert_eq!(statuses, before);
}

#[test]
fn transitions_in_flight_settle_on_reload() {
    let dir = TempDir::new();
    let settings = json!({"machines": 4, "boot_seconds": 600, "shutdown_seconds": 600});
    let (sim, _) = start_in(dir.path(), settings.clone()).unwrap();
    let booting = pick(&sim, MachineStatus::Stopped).uuid;
    let stopping = pick(&sim, MachineStatus::Running).uuid;
    sim.power(&booting, PowerAction::Start).unwrap();
    sim.power(&stopping, PowerAction::Stop).unwrap();
    assert_eq!(status(&sim, &booting), MachineStatus::Booting);
    assert_eq!(status(&sim, &stopping), MachineStatus::ShuttingDown);
    sim.update_metadata(
        &booting,
        MetadataUpdate {
            title: Some("renamed".into()),
            description: Some("d".into()),
            tags: Some(vec!["x".into()]),
        },
    )
    .unwrap();
    sim.shutdown();
    drop(sim);

    let (again, _) = start_in(dir.path(), settings).unwrap();
    let s = &again.bulk_state(std::slice::from_ref(&booting)).unwrap()[0];
    assert_eq!(s.status, MachineStatus::Running);
    assert!(s.boot_timestamp.as_deref().unwrap().ends_with('Z'));
    assert_eq!(status(&again, &stopping), MachineStatus::Stopped);
    let m = again.get_properties(&booting).unwrap();
    assert_eq!((m.title.as_str(), m.description.as_str()), ("renamed", "d"));
    assert_eq!(m.tags, ["x"]);
}

#[test]
fn corrupt_state_file_is_refused_and_kept() {
    let dir = TempDir::new();
    let file = dir.path().join("simulator.json");
    std::fs::write(&file, b"{\"version\":1,\"machines\":[{\"oops\"").unwrap();
    let err = start_in(dir.path(), json!({})).err().unwrap();
    assert!(matches!(err, PluginError::Failed(_)), "{err:?}");
    assert!(err.message().contains("simulator.json"), "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"{\"version\":1,\"machines\":[{\"oops\""
    );
}

#[test]
fn bad_settings_fail_init() {
    let dir = TempDir::new();
    let err = start_in(dir.path(), json!({"boot_seconds": "soon"}))
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::InvalidArgument(_)), "{err:?}");
    assert!(!dir.path().join("simulator.json").exists());
}

#[test]
fn bulk_state_of_all_and_of_a_selection() {
    let (_dir, sim, _) = quick(5);
    let fleet = sim.list_machines().unwrap();
    let all = sim.bulk_state(&[]).unwrap();
    assert_eq!(
        all.iter().map(|s| &s.uuid).collect::<Vec<_>>(),
        fleet.iter().map(|m| &m.uuid).collect::<Vec<_>>()
    );
    let picked = sim
        .bulk_state(&[
            fleet[3].uuid.clone(),
            "not-a-machine".into(),
            fleet[0].uuid.clone(),
        ])
        .unwrap();
    assert_eq!(picked.len(), 2);
    assert_eq!(picked[0].uuid, fleet[3].uuid);
    assert_eq!(picked[1].uuid, fleet[0].uuid);
    for (m, s) in fleet.iter().zip(&all) {
        assert_eq!((s.vcpu, s.ram_max_mib), (m.vcpu, m.ram_max_mib));
        match s.status {
            MachineStatus::Running => {
                assert!((0.0..=100.0).contains(&s.cpu_percent));
                assert!(s.ram_used_mib > 0 && s.ram_used_mib < s.ram_max_mib);
                assert!(s.net_rx_bytes > 0 && s.disk_write_bytes > 0);
                let ts = s.boot_timestamp.as_deref().unwrap();
                assert!(ts.len() == 20 && ts.ends_with('Z'), "{ts}");
            }
            MachineStatus::Stopped => {
                assert_eq!(s.cpu_percent, 0.0);
                assert_eq!(s.ram_used_mib, 0);
                assert_eq!(s.net_rx_bytes + s.net_tx_bytes, 0);
                assert_eq!(s.disk_read_bytes + s.disk_write_bytes, 0);
                assert_eq!(s.boot_timestamp, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(sim.bulk_state(&["nope".into()]).unwrap().is_empty());
}

#[test]
fn counters_of_a_running_machine_only_grow() {
    let (_dir, sim, _) = quick(3);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    let sel = [uuid];
    let mut last = sim.bulk_state(&sel).unwrap().remove(0);
    let first = last.clone();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(15));
        let s = sim.bulk_state(&sel).unwrap().remove(0);
        assert!(s.net_rx_bytes >= last.net_rx_bytes);
        assert!(s.net_tx_bytes >= last.net_tx_bytes);
        assert!(s.disk_read_bytes >= last.disk_read_bytes);
        assert!(s.disk_write_bytes >= last.disk_write_bytes);
        assert!(s.ram_used_mib < s.ram_max_mib);
        assert_eq!(s.boot_timestamp, first.boot_timestamp);
        last = s;
    }
    assert!(last.net_rx_bytes > first.net_rx_bytes);
    assert!(last.disk_read_bytes > first.disk_read_bytes);
}

#[test]
fn start_emits_the_boot_sequence() {
    let (_dir, sim, rec) = quick(4);
    let uuid = pick(&sim, MachineStatus::Stopped).uuid;
    sim.power(&uuid, PowerAction::Start).unwrap();
    assert_eq!(status(&sim, &uuid), MachineStatus::Booting);
    let events = rec.wait_for("boot_success", |e| matches!(e, Event::BootSuccess { .. }));
    assert_eq!(of(&events, &uuid), boot_events(&uuid));
    let s = &sim.bulk_state(std::slice::from_ref(&uuid)).unwrap()[0];
    assert_eq!(s.status, MachineStatus::Running);
    assert!(s.boot_timestamp.is_some());
}

#[test]
fn stop_emits_the_shutdown_sequence() {
    let (_dir, sim, rec) = quick(4);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    sim.power(&uuid, PowerAction::Stop).unwrap();
    let events = rec.wait_for("shutdown_success", |e| {
        matches!(e, Event::ShutdownSuccess { .. })
    });
    assert_eq!(of(&events, &uuid), shutdown_events(&uuid));
    let s = &sim.bulk_state(std::slice::from_ref(&uuid)).unwrap()[0];
    assert_eq!(s.status, MachineStatus::Stopped);
    assert_eq!(s.boot_timestamp, None);
    assert_eq!(s.net_rx_bytes, 0);
}

#[test]
fn restart_is_a_shutdown_then_a_boot() {
    let (_dir, sim, rec) = quick(4);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    let booted = sim.bulk_state(std::slice::from_ref(&uuid)).unwrap()[0]
        .boot_timestamp
        .clone();
    sim.power(&uuid, PowerAction::Restart).unwrap();
    let events = rec.wait_for("boot_success", |e| matches!(e, Event::BootSuccess { .. }));
    let mut want = shutdown_events(&uuid);
    want.extend(boot_events(&uuid));
    assert_eq!(of(&events, &uuid), want);
    let s = &sim.bulk_state(std::slice::from_ref(&uuid)).unwrap()[0];
    assert_eq!(s.status, MachineStatus::Running);
    assert_ne!(s.boot_timestamp, booted);
}

#[test]
fn suspend_and_resume_freeze_and_thaw() {
    let (_dir, sim, rec) = quick(3);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    let sel = [uuid.clone()];
    sim.power(&uuid, PowerAction::Suspend).unwrap();
    assert_eq!(
        rec.events(),
        [state_changed(&uuid, MachineStatus::Suspended)]
    );
    let a = sim.bulk_state(&sel).unwrap().remove(0);
    std::thread::sleep(Duration::from_millis(20));
    let b = sim.bulk_state(&sel).unwrap().remove(0);
    assert_eq!(a.status, MachineStatus::Suspended);
    assert_eq!(a.cpu_percent, 0.0);
    assert!(a.boot_timestamp.is_some());
    assert!(a.net_rx_bytes > 0);
    assert_eq!(
        (a.net_rx_bytes, a.disk_write_bytes, a.ram_used_mib),
        (b.net_rx_bytes, b.disk_write_bytes, b.ram_used_mib)
    );
    // A suspended machine cannot be suspended, restarted or have a console opened.
    invalid_state(sim.power(&uuid, PowerAction::Suspend));
    invalid_state(sim.power(&uuid, PowerAction::Restart));
    invalid_state(sim.console_open(&uuid));

    rec.clear();
    sim.power(&uuid, PowerAction::Resume).unwrap();
    assert_eq!(rec.events(), [state_changed(&uuid, MachineStatus::Running)]);
    std::thread::sleep(Duration::from_millis(20));
    let c = sim.bulk_state(&sel).unwrap().remove(0);
    assert!(c.net_rx_bytes > b.net_rx_bytes);
    assert_eq!(c.boot_timestamp, a.boot_timestamp);
}

#[test]
fn force_off_is_immediate_and_closes_an_interrupted_boot() {
    let dir = TempDir::new();
    let (sim, rec) = start_in(
        dir.path(),
        json!({"machines": 4, "boot_seconds": 0.2, "shutdown_seconds": 0.2}),
    )
    .unwrap();
    let running = pick(&sim, MachineStatus::Running).uuid;
    sim.power(&running, PowerAction::ForceOff).unwrap();
    assert_eq!(
        rec.events(),
        [state_changed(&running, MachineStatus::Stopped)]
    );
    assert_eq!(status(&sim, &running), MachineStatus::Stopped);

    rec.clear();
    sim.power(&running, PowerAction::Start).unwrap();
    sim.power(&running, PowerAction::ForceOff).unwrap();
    let want = vec![
        Event::BootStart {
            uuid: running.clone(),
        },
        state_changed(&running, MachineStatus::Booting),
        state_changed(&running, MachineStatus::Stopped),
        Event::BootFail {
            uuid: running.clone(),
            error: "boot interrupted: the machine was forced off".into(),
        },
    ];
    assert_eq!(rec.events(), want);
    // The cancelled boot never completes.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(rec.events(), want);
    assert_eq!(status(&sim, &running), MachineStatus::Stopped);
}

#[test]
fn invalid_transitions_are_refused_without_events() {
    let (_dir, sim, rec) = quick(4);
    let running = pick(&sim, MachineStatus::Running).uuid;
    let stopped = pick(&sim, MachineStatus::Stopped).uuid;
    assert_eq!(
        invalid_state(sim.power(&running, PowerAction::Start)),
        "machine is already running"
    );
    invalid_state(sim.power(&running, PowerAction::Resume));
    assert_eq!(
        invalid_state(sim.power(&stopped, PowerAction::Stop)),
        "machine is already stopped"
    );
    invalid_state(sim.power(&stopped, PowerAction::Restart));
    invalid_state(sim.power(&stopped, PowerAction::Suspend));
    invalid_state(sim.power(&stopped, PowerAction::Resume));
    invalid_state(sim.power(&stopped, PowerAction::ForceOff));
    not_found(sim.power("no-such-machine", PowerAction::Start));
    assert!(rec.events().is_empty());

    // Mid-transition, only force_off is accepted.
    sim.power(&stopped, PowerAction::Start).unwrap();
    if status(&sim, &stopped) == MachineStatus::Booting {
        assert_eq!(
            invalid_state(sim.power(&stopped, PowerAction::Start)),
            "machine is already booting"
        );
    }
    rec.wait_for("boot_success", |e| matches!(e, Event::BootSuccess { .. }));
}

#[test]
fn fail_boot_ends_in_error_and_can_be_retried() {
    let (_dir, sim, rec) = quick(4);
    let uuid = sim
        .list_machines()
        .unwrap()
        .into_iter()
        .find(|m| m.tags.iter().any(|t| t == "fail-boot"))
        .unwrap()
        .uuid;
    sim.power(&uuid, PowerAction::Start).unwrap();
    let events = rec.wait_for("boot_fail", |e| matches!(e, Event::BootFail { .. }));
    assert_eq!(
        of(&events, &uuid),
        [
            Event::BootStart { uuid: uuid.clone() },
            state_changed(&uuid, MachineStatus::Booting),
            state_changed(&uuid, MachineStatus::Error),
            Event::BootFail {
                uuid: uuid.clone(),
                error: BOOT_FAILURE.into()
            },
        ]
    );
    let s = &sim.bulk_state(std::slice::from_ref(&uuid)).unwrap()[0];
    assert_eq!(s.status, MachineStatus::Error);
    assert_eq!((s.cpu_percent, s.boot_timestamp.clone()), (0.0, None));
    invalid_state(sim.power(&uuid, PowerAction::Stop));
    // Starting from error is allowed (and fails again).
    rec.clear();
    sim.power(&uuid, PowerAction::Start).unwrap();
    rec.wait_for("boot_fail", |e| matches!(e, Event::BootFail { .. }));
    // Untagged, it boots.
    sim.update_metadata(
        &uuid,
        MetadataUpdate {
            tags: Some(vec![]),
            ..Default::default()
        },
    )
    .unwrap();
    rec.clear();
    sim.power(&uuid, PowerAction::Start).unwrap();
    let events = rec.wait_for("boot_success", |e| matches!(e, Event::BootSuccess { .. }));
    assert_eq!(of(&events, &uuid), boot_events(&uuid));
}

#[test]
fn fail_shutdown_keeps_the_machine_running() {
    let (_dir, sim, rec) = quick(4);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    sim.update_metadata(
        &uuid,
        MetadataUpdate {
            tags: Some(vec!["fail-shutdown".into()]),
            ..Default::default()
        },
    )
    .unwrap();
    rec.clear();
    sim.power(&uuid, PowerAction::Stop).unwrap();
    let events = rec.wait_for("shutdown_fail", |e| matches!(e, Event::ShutdownFail { .. }));
    assert_eq!(
        of(&events, &uuid),
        [
            Event::ShutdownStart { uuid: uuid.clone() },
            state_changed(&uuid, MachineStatus::ShuttingDown),
            state_changed(&uuid, MachineStatus::Running),
            Event::ShutdownFail {
                uuid: uuid.clone(),
                error: SHUTDOWN_FAILURE.into()
            },
        ]
    );
    assert_eq!(status(&sim, &uuid), MachineStatus::Running);
    // A failed restart does not boot.
    rec.clear();
    sim.power(&uuid, PowerAction::Restart).unwrap();
    rec.wait_for("shutdown_fail", |e| matches!(e, Event::ShutdownFail { .. }));
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        !rec.events()
            .iter()
            .any(|e| matches!(e, Event::BootStart { .. }))
    );
    // Force off still works.
    sim.power(&uuid, PowerAction::ForceOff).unwrap();
    assert_eq!(status(&sim, &uuid), MachineStatus::Stopped);
}

#[test]
fn create_update_and_delete() {
    let (dir, sim, rec) = quick(2);
    let made = sim.create(spec("new-one")).unwrap();
    assert_eq!(made.title, "new-one");
    assert_eq!(made.kind, MachineKind::Vm);
    assert_eq!((made.vcpu, made.ram_max_mib), (2, 2048));
    assert_eq!(made.disks.len(), 1);
    assert!(made.disks[0].system);
    assert_eq!(made.disks[0].kind, "qcow2");
    assert_eq!(
        rec.events(),
        [Event::MachineCreated {
            machine: made.clone()
        }]
    );
    assert_eq!(sim.list_machines().unwrap().last(), Some(&made));
    assert_eq!(status(&sim, &made.uuid), MachineStatus::Stopped);
    let ct = sim
        .create(CreateSpec {
            kind: Some(MachineKind::Container),
            ..spec("a container")
        })
        .unwrap();
    assert_eq!(ct.disks[0].kind, "overlay");
    assert_ne!(ct.connections["ssh"], made.connections["ssh"]);

    for bad in [
        CreateSpec {
            vcpu: 0,
            ..spec("x")
        },
        CreateSpec {
            vcpu: 129,
            ..spec("x")
        },
        CreateSpec {
            ram_mib: 63,
            ..spec("x")
        },
        CreateSpec {
            ram_mib: 1_048_577,
            ..spec("x")
        },
        spec(""),
        spec("   "),
        spec(&"t".repeat(129)),
    ] {
        invalid_argument(sim.create(bad));
    }
    assert!(sim.create(spec(&"\u{e9}".repeat(128))).is_ok());

    rec.clear();
    let updated = sim
        .update_metadata(
            &made.uuid,
            MetadataUpdate {
                title: Some("renamed".into()),
                description: None,
                tags: Some(vec!["a".into(), "b".into()]),
            },
        )
        .unwrap();
    assert_eq!(updated.title, "renamed");
    assert_eq!(updated.description, "made in a test");
    assert_eq!(updated.tags, ["a", "b"]);
    assert_eq!(
        rec.events(),
        [Event::MachineUpdated {
            machine: updated.clone()
        }]
    );
    assert_eq!(sim.get_properties(&made.uuid).unwrap(), updated);
    invalid_argument(sim.update_metadata(
        &made.uuid,
        MetadataUpdate {
            title: Some(String::new()),
            ..Default::default()
        },
    ));
    not_found(sim.update_metadata("nope", MetadataUpdate::default()));

    rec.clear();
    sim.delete(&made.uuid).unwrap();
    assert_eq!(
        rec.events(),
        [Event::MachineDeleted {
            uuid: made.uuid.clone()
        }]
    );
    not_found(sim.get_properties(&made.uuid));
    not_found(sim.delete(&made.uuid));
    assert!(
        sim.bulk_state(std::slice::from_ref(&made.uuid))
            .unwrap()
            .is_empty()
    );
    // Positions after the deleted one still resolve.
    assert_eq!(sim.get_properties(&ct.uuid).unwrap(), ct);
    assert_eq!(status(&sim, &ct.uuid), MachineStatus::Stopped);

    // And it all persisted.
    sim.shutdown();
    drop(sim);
    let (again, _) = start_in(dir.path(), json!({})).unwrap();
    let titles: Vec<String> = again
        .list_machines()
        .unwrap()
        .into_iter()
        .map(|m| m.title)
        .collect();
    assert_eq!(titles.len(), 4);
    assert!(titles.contains(&"a container".to_owned()));
    assert!(!titles.contains(&"renamed".to_owned()));
}

#[test]
fn delete_cancels_transitions_and_closes_consoles() {
    let (_dir, sim, rec) = quick(4);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    let session = sim.console_open(&uuid).unwrap().session;
    sim.power(&uuid, PowerAction::Stop).unwrap();
    rec.clear();
    sim.delete(&uuid).unwrap();
    assert_eq!(
        rec.events(),
        [
            Event::ConsoleClosed {
                session: session.clone()
            },
            Event::MachineDeleted { uuid: uuid.clone() },
        ]
    );
    not_found(sim.console_write(&session, b"ls\r"));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(rec.events().len(), 2);
}

#[test]
fn console_login_command_and_logout() {
    let (_dir, sim, rec) = quick(4);
    let m = pick(&sim, MachineStatus::Running);
    let title = m.title.clone();
    let session = sim.console_open(&m.uuid).unwrap().session;
    assert_eq!(
        uuid::Uuid::parse_str(&session).unwrap().get_version_num(),
        4
    );
    assert_eq!(
        rec.output(&session),
        format!("\r\nOrchard simulator \u{2014} {title} ttyS0\r\n\r\n{title} login: ")
    );
    assert_eq!(
        sim.connections(std::slice::from_ref(&m.uuid)).unwrap()[0].active_connections,
        vec![session.clone()]
    );

    rec.clear();
    sim.console_write(&session, b"root\r").unwrap();
    assert_eq!(rec.output(&session), "root\r\nPassword: ");
    rec.clear();
    sim.console_write(&session, b"hunter2\r").unwrap();
    let motd = rec.output(&session);
    assert!(!motd.contains("hunter2"));
    assert!(motd.ends_with(&format!("root@{title}:~# ")), "{motd}");

    rec.clear();
    // Typed one key at a time, as a terminal sends it.
    for b in b"uname -a\r" {
        sim.console_write(&session, &[*b]).unwrap();
    }
    assert_eq!(
        rec.output(&session),
        format!("uname -a\r\nLinux {title} 6.1.0-orchard-sim x86_64 GNU/Linux\r\nroot@{title}:~# ")
    );

    rec.clear();
    sim.console_resize(&session, 120, 40).unwrap();
    sim.console_write(&session, b"stty size\r").unwrap();
    assert!(rec.output(&session).contains("\r\n40 120\r\n"));

    rec.clear();
    sim.console_write(&session, b"exit\r").unwrap();
    assert!(rec.output(&session).ends_with(&format!(
        "logout\r\n\r\nOrchard simulator \u{2014} {title} ttyS0\r\n\r\n{title} login: "
    )));

    sim.console_close(&session).unwrap();
    assert!(
        sim.connections(std::slice::from_ref(&m.uuid)).unwrap()[0]
            .active_connections
            .is_empty()
    );
    not_found(sim.console_write(&session, b"x"));
    not_found(sim.console_resize(&session, 1, 1));
    not_found(sim.console_close(&session));
    // Closing from the host's side is not reported back.
    assert!(rec.events().is_empty());

    let stopped = pick(&sim, MachineStatus::Stopped).uuid;
    assert_eq!(
        invalid_state(sim.console_open(&stopped)),
        "machine is not running"
    );
    not_found(sim.console_open("nope"));
}

#[test]
fn stopping_a_machine_closes_its_consoles() {
    let (_dir, sim, rec) = quick(3);
    let uuid = pick(&sim, MachineStatus::Running).uuid;
    let a = sim.console_open(&uuid).unwrap().session;
    let b = sim.console_open(&uuid).unwrap().session;
    assert_eq!(
        sim.connections(&[])
            .unwrap()
            .iter()
            .map(|c| c.active_connections.len())
            .sum::<usize>(),
        2
    );
    sim.power(&uuid, PowerAction::Stop).unwrap();
    let events = rec.wait_for(
        "console_closed",
        |e| matches!(e, Event::ConsoleClosed { session } if *session == b),
    );
    let mut want = shutdown_events(&uuid);
    want.push(Event::ConsoleClosed { session: a.clone() });
    want.push(Event::ConsoleClosed { session: b.clone() });
    assert_eq!(events, want);
    assert!(rec.output(&a).contains("reboot: Power down\r\n"));
    not_found(sim.console_write(&a, b"x"));
    assert!(
        sim.connections(std::slice::from_ref(&uuid)).unwrap()[0]
            .active_connections
            .is_empty()
    );

    // A forced stop closes them too.
    rec.clear();
    sim.power(&uuid, PowerAction::Start).unwrap();
    rec.wait_for("boot_success", |e| matches!(e, Event::BootSuccess { .. }));
    let c = sim.console_open(&uuid).unwrap().session;
    rec.clear();
    sim.power(&uuid, PowerAction::ForceOff).unwrap();
    assert_eq!(
        rec.events(),
        [
            state_changed(&uuid, MachineStatus::Stopped),
            Event::ConsoleClosed { session: c }
        ]
    );
}

#[test]
fn disks_report_plausible_usage() {
    let (_dir, sim, _) = quick(6);
    let fleet = sim.list_machines().unwrap();
    let disks = sim.disks(&[]).unwrap();
    assert_eq!(disks.len(), fleet.len());
    for (m, d) in fleet.iter().zip(&disks) {
        assert_eq!(m.uuid, d.uuid);
        assert_eq!(m.disks.len(), d.disks.len());
        for (info, usage) in m.disks.iter().zip(&d.disks) {
            assert_eq!(
                (info.system, &info.name, info.size_bytes, &info.kind),
                (usage.system, &usage.name, usage.size_bytes, &usage.kind)
            );
            assert!(usage.occupied_bytes > 0 && usage.occupied_bytes < usage.size_bytes);
        }
    }
    let one = sim.disks(&[fleet[1].uuid.clone(), "x".into()]).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].uuid, fleet[1].uuid);
}

#[test]
fn concurrent_callers_see_ordered_events() {
    let (_dir, sim, rec) = quick(4);
    let sim = Arc::new(sim);
    let uuid = pick(&sim, MachineStatus::Stopped).uuid;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sim = Arc::clone(&sim);
            let uuid = uuid.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let action = if (i + t) % 2 == 0 {
                        PowerAction::Start
                    } else {
                        PowerAction::ForceOff
                    };
                    let _ = sim.power(&uuid, action);
                    let _ = sim.bulk_state(&[]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _ = sim.power(&uuid, PowerAction::ForceOff);
    let last_status = |events: &[Event]| {
        events.iter().rev().find_map(|e| match e {
            Event::StateChanged { status, .. } => Some(*status),
            _ => None,
        })
    };
    let events = rec.events();
    assert_eq!(last_status(&events), Some(MachineStatus::Stopped));
    assert_eq!(status(&sim, &uuid), MachineStatus::Stopped);
    // Every boot_start is closed by exactly one success or failure, in order.
    let mut open = false;
    for e in of(&events, &uuid) {
        match e {
            Event::BootStart { .. } => {
                assert!(!open);
                open = true;
            }
            Event::BootSuccess { .. } | Event::BootFail { .. } => {
                assert!(open);
                open = false;
            }
            _ => {}
        }
    }
    assert!(!open);
}

#[test]
fn bulk_state_on_a_large_fleet() {
    let (_dir, sim, _) = quick(2000);
    let all = sim.bulk_state(&[]).unwrap();
    assert_eq!(all.len(), 2000);
    let fleet = sim.list_machines().unwrap();
    assert_eq!(fleet[1999].title, "sim-vm-2000");
    let some: Vec<String> = fleet.iter().step_by(100).map(|m| m.uuid.clone()).collect();
    assert_eq!(sim.bulk_state(&some).unwrap().len(), 20);
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(sim.bulk_state(&[]).unwrap().len(), 2000);
    }
    // Not asserted (machines vary); printed for whoever runs with --nocapture.
    eprintln!("bulk_state x2000: {:?} per call", started.elapsed() / 10);
}

/// Through the real exported table, as the daemon calls it.
mod abi {
    use std::ffi::c_void;
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    use orchard_plugin_api::abi::{self, Buf, HostV1, Instance, Slice};
    use serde_json::{Value, json};

    static EVENTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());
    static SIGNAL: Condvar = Condvar::new();
    static CONSOLE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    extern "C" fn emit_event(_ctx: *mut c_void, json: Slice) {
        // SAFETY: the plugin passes a slice valid for the duration of this callback.
        let bytes = unsafe { json.as_bytes() };
        let event: Value = serde_json::from_slice(bytes).unwrap();
        EVENTS.lock().unwrap().push(event);
        SIGNAL.notify_all();
    }

    extern "C" fn console_output(_ctx: *mut c_void, _session: Slice, data: Slice) {
        // SAFETY: as above.
        let bytes = unsafe { data.as_bytes() };
        CONSOLE.lock().unwrap().extend_from_slice(bytes);
    }

    extern "C" fn log(_ctx: *mut c_void, _level: u32, _message: Slice) {}

    /// Takes the bytes of a buffer the plugin produced and gives it back.
    fn take(table: &abi::PluginV1, buf: Buf) -> Vec<u8> {
        let bytes = if buf.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin filled `buf` with `len` initialised bytes it owns until
            // `free_buf`.
            unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
        };
        // SAFETY: `buf` came from this plugin and is freed exactly once.
        unsafe { (table.free_buf.unwrap())(buf) };
        bytes
    }

    #[test]
    fn exported_table_round_trip() {
        let dir = super::TempDir::new();
        let table_ptr = crate::orchard_plugin_v1();
        assert!(!table_ptr.is_null());
        // SAFETY: the entry function returns a pointer to a static table.
        let table = unsafe { &*table_ptr };
        assert_eq!(table.abi_version, abi::ABI_VERSION);

        let mut out = Buf::EMPTY;
        assert_eq!((table.describe.unwrap())(&mut out), abi::OK);
        let describe: Value = serde_json::from_slice(&take(table, out)).unwrap();
        assert_eq!(describe["name"], "simulator");
        assert_eq!(describe["capabilities"].as_array().unwrap().len(), 7);

        let host = HostV1 {
            ctx: std::ptr::null_mut(),
            emit_event,
            console_output,
            log,
        };
        let config = serde_json::to_vec(&json!({
            "data_dir": dir.path().to_string_lossy(),
            "settings": {"machines": 5, "boot_seconds": 0.05, "shutdown_seconds": 0.05}
        }))
        .unwrap();
        let mut instance: Instance = std::ptr::null_mut();
        let mut out = Buf::EMPTY;
        // SAFETY: every pointer is valid for the call; `host` outlives `destroy` below.
        let rc =
            unsafe { (table.init.unwrap())(Slice::new(&config), &host, &mut instance, &mut out) };
        assert_eq!(
            rc,
            abi::OK,
            "{}",
            String::from_utf8_lossy(&take(table, out))
        );
        assert!(!instance.is_null());

        let mut out = Buf::EMPTY;
        // SAFETY: `instance` came from `init` and is not destroyed yet.
        let rc = unsafe { (table.list_machines.unwrap())(instance, &mut out) };
        assert_eq!(rc, abi::OK);
        let machines: Vec<Value> = serde_json::from_slice(&take(table, out)).unwrap();
        assert_eq!(machines.len(), 5);

        let mut out = Buf::EMPTY;
        // SAFETY: as above; the selection slice lives for the call.
        let rc = unsafe { (table.bulk_state.unwrap())(instance, Slice::new(b"[]"), &mut out) };
        assert_eq!(rc, abi::OK);
        let states: Vec<Value> = serde_json::from_slice(&take(table, out)).unwrap();
        assert_eq!(states.len(), 5);
        let stopped = states
            .iter()
            .zip(&machines)
            .find(|(s, m)| {
                s["status"] == "stopped"
                    && !m["tags"].as_array().unwrap().contains(&json!("fail-boot"))
            })
            .map(|(s, _)| s["uuid"].as_str().unwrap().to_owned())
            .unwrap();

        let mut out = Buf::EMPTY;
        let sel = serde_json::to_vec(&[&stopped]).unwrap();
        // SAFETY: as above.
        let rc = unsafe { (table.bulk_state.unwrap())(instance, Slice::new(&sel), &mut out) };
        assert_eq!(rc, abi::OK);
        let one: Vec<Value> = serde_json::from_slice(&take(table, out)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0]["boot_timestamp"], Value::Null);

        // An invalid transition maps to ERR_INVALID_STATE with a message.
        let mut out = Buf::EMPTY;
        // SAFETY: as above.
        let rc = unsafe {
            (table.power.unwrap())(
                instance,
                Slice::new(stopped.as_bytes()),
                abi::POWER_STOP,
                &mut out,
            )
        };
        assert_eq!(rc, abi::ERR_INVALID_STATE);
        assert_eq!(take(table, out), b"machine is already stopped");

        let mut out = Buf::EMPTY;
        // SAFETY: as above.
        let rc = unsafe {
            (table.power.unwrap())(
                instance,
                Slice::new(stopped.as_bytes()),
                abi::POWER_START,
                &mut out,
            )
        };
        assert_eq!(rc, abi::OK);
        take(table, out);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = EVENTS.lock().unwrap();
        while !events.iter().any(|e| e["type"] == "boot_success") {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no boot_success: {events:?}");
            events = SIGNAL.wait_timeout(events, left).unwrap().0;
        }
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "boot_start",
                "state_changed",
                "state_changed",
                "boot_success"
            ]
        );
        assert_eq!(events[2]["status"], "running");
        assert!(events.iter().all(|e| e["uuid"] == stopped.as_str()));
        drop(events);

        let mut out = Buf::EMPTY;
        // SAFETY: as above.
        let rc = unsafe {
            (table.console_open.unwrap())(instance, Slice::new(stopped.as_bytes()), &mut out)
        };
        assert_eq!(rc, abi::OK);
        let opened: Value = serde_json::from_slice(&take(table, out)).unwrap();
        assert!(opened["session"].is_string());
        assert!(String::from_utf8_lossy(&CONSOLE.lock().unwrap()).contains(" login: "));

        // SAFETY: `instance` came from `init`; nothing uses it afterwards.
        unsafe { (table.destroy.unwrap())(instance) };
    }
}

#[test]
fn churn_restarts_running_machines_continuously() {
    let dir = TempDir::new();
    let (sim, rec) = start_in(
        dir.path(),
        json!({"machines": 6, "boot_seconds": 0, "shutdown_seconds": 0, "churn_per_second": 200}),
    )
    .unwrap();
    // Several full restarts, of more than one machine, arrive without any power call.
    let events = rec.wait("churned restarts", |ev| {
        ev.iter()
            .filter(|e| matches!(e, Event::BootSuccess { .. }))
            .count()
            >= 20
    });
    let restarted: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::ShutdownStart { uuid } => Some(uuid.as_str()),
            _ => None,
        })
        .collect();
    assert!(restarted.len() > 1, "churn should spread over the fleet");
    // The fail-boot machine is never picked.
    let broken = sim
        .list_machines()
        .unwrap()
        .into_iter()
        .find(|m| m.tags.iter().any(|t| t == "fail-boot"))
        .unwrap();
    assert!(!restarted.contains(broken.uuid.as_str()));
    drop(sim);
}
