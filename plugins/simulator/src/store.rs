//! `<data_dir>/simulator.json`: the fleet, saved after every change, written atomically
//! (temporary file, fsync, rename, fsync of the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use orchard_plugin_api::{MachineInfo, MachineStatus, PluginError, PluginResult};
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::model::Machine;

pub(crate) const FILE_NAME: &str = "simulator.json";
const FORMAT_VERSION: u32 = 1;

/// The per-machine fields saved beside `machine` (rendered as an object, then spliced).
#[derive(Serialize)]
struct RecordTail {
    status: MachineStatus,
    boot_ms: Option<i64>,
    active_secs: f64,
    lifetime_secs: f64,
}

/// What the file holds, as read.
#[derive(Deserialize)]
struct FileIn {
    version: u32,
    #[serde(default)]
    saved_at_ms: i64,
    #[serde(default)]
    next_seq: u64,
    machines: Vec<RecordIn>,
}

#[derive(Deserialize)]
struct RecordIn {
    machine: MachineInfo,
    status: MachineStatus,
    #[serde(default)]
    boot_ms: Option<i64>,
    #[serde(default)]
    active_secs: f64,
    #[serde(default)]
    lifetime_secs: f64,
}

/// A loaded fleet.
pub(crate) struct Loaded {
    pub machines: Vec<Machine>,
    pub next_seq: u64,
}

/// Serializes the fleet as it is at `now`. Runs under the state lock, so it copies each
/// machine's pre-rendered `info_json` instead of serializing its properties again:
/// `{"version":1,"saved_at_ms":…,"next_seq":…,"machines":[{"machine":{…},"status":…,…}]}`.
pub(crate) fn encode(machines: &[Machine], next_seq: u64, now: Instant) -> PluginResult<Vec<u8>> {
    let failed = |e: String| PluginError::Failed(format!("cannot encode the simulator state: {e}"));
    let size: usize = machines.iter().map(|m| m.info_json.len() + 100).sum();
    let mut out = Vec::with_capacity(size + 100);
    out.extend_from_slice(
        format!(
            "{{\"version\":{FORMAT_VERSION},\"saved_at_ms\":{},\"next_seq\":{next_seq},\"machines\":[",
            clock::now_ms()
        )
        .as_bytes(),
    );
    let mut tail = Vec::with_capacity(128);
    for (i, m) in machines.iter().enumerate() {
        if m.info_json.is_empty() {
            return Err(failed(format!("machine {} has no JSON form", m.info.uuid)));
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"machine\":");
        out.extend_from_slice(&m.info_json);
        tail.clear();
        serde_json::to_writer(
            &mut tail,
            &RecordTail {
                status: m.status,
                boot_ms: m.run.boot_ms,
                active_secs: m.run.active(now),
                lifetime_secs: m.run.lifetime_base,
            },
        )
        .map_err(|e| failed(e.to_string()))?;
        // `{"status":…}` becomes `,"status":…}`.
        out.push(b',');
        out.extend_from_slice(tail.get(1..).unwrap_or_default());
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Reads the fleet, settling machines caught mid-transition: booting → running,
/// shutting down → stopped. `Ok(None)` when there is no file yet.
pub(crate) fn load(path: &Path, now: Instant, wall_ms: i64) -> PluginResult<Option<Loaded>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PluginError::Failed(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let corrupt = |why: String| {
        PluginError::Failed(format!(
            "corrupt simulator state file {}: {why} (fix or remove it)",
            path.display()
        ))
    };
    let file: FileIn = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} is not supported (expected {FORMAT_VERSION})",
            file.version
        )));
    }
    // Time that passed while nobody was watching: machines that were up stayed up.
    let away = (wall_ms - file.saved_at_ms).max(0) as f64 / 1000.0;
    let mut seen = std::collections::HashSet::new();
    let mut machines = Vec::with_capacity(file.machines.len());
    for rec in file.machines {
        if rec.machine.uuid.is_empty() || !seen.insert(rec.machine.uuid.clone()) {
            return Err(corrupt(format!(
                "duplicate or empty machine uuid {:?}",
                rec.machine.uuid
            )));
        }
        let mut m = Machine::new(rec.machine, rec.status);
        m.run.lifetime_base = finite(rec.lifetime_secs);
        let active = finite(rec.active_secs);
        match rec.status {
            MachineStatus::Running => {
                m.run.boot(now, rec.boot_ms.unwrap_or(wall_ms));
                m.run.active_base = active + away;
            }
            MachineStatus::Paused | MachineStatus::Suspended => {
                m.run.boot(now, rec.boot_ms.unwrap_or(wall_ms));
                m.run.freeze(now, wall_ms as f64 / 1000.0);
                m.run.active_base = active;
            }
            MachineStatus::Booting => {
                m.status = MachineStatus::Running;
                m.run.boot(now, wall_ms);
            }
            MachineStatus::ShuttingDown => {
                m.status = MachineStatus::Stopped;
                m.run.lifetime_base += active;
            }
            MachineStatus::Stopped | MachineStatus::Error => {}
        }
        machines.push(m);
    }
    let next_seq = file.next_seq.max(machines.len() as u64 + 1);
    Ok(Some(Loaded { machines, next_seq }))
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// Writes snapshots in order: a snapshot older than the last one written is dropped.
pub(crate) struct Store {
    path: PathBuf,
    written: Mutex<u64>,
}

impl Store {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE_NAME),
            written: Mutex::new(0),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes snapshot number `generation` unless a newer one is already on disk.
    pub(crate) fn write(&self, generation: u64, bytes: &[u8]) -> PluginResult<()> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if generation <= *written {
            return Ok(());
        }
        write_atomic(&self.path, bytes).map_err(|e| {
            PluginError::Failed(format!("cannot write {}: {e}", self.path.display()))
        })?;
        *written = generation;
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; not every platform can open a directory.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet;

    #[test]
    fn encode_then_load_round_trips() {
        let now = Instant::now();
        let wall = clock::now_ms();
        let mut machines = fleet::generate(5, now, wall);
        machines[3].status = MachineStatus::Booting;
        machines[4].status = MachineStatus::ShuttingDown;
        let bytes = encode(&machines, 9, now).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["next_seq"], 9);
        assert_eq!(v["machines"][0]["machine"]["title"], "sim-vm-01");
        assert_eq!(v["machines"][0]["status"], "running");

        let dir = std::env::temp_dir().join(format!("orchard-sim-store-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        store.write(2, &bytes).unwrap();
        // An older snapshot never replaces a newer one.
        store.write(1, b"stale").unwrap();
        let loaded = load(store.path(), now, wall).unwrap().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.next_seq, 9);
        let statuses: Vec<_> = loaded.machines.iter().map(|m| m.status).collect();
        use MachineStatus::*;
        assert_eq!(statuses, [Running, Stopped, Running, Running, Stopped]);
        for (a, b) in machines.iter().zip(&loaded.machines) {
            assert_eq!(a.info, b.info);
        }
        assert_eq!(loaded.machines[0].run.boot_ts, machines[0].run.boot_ts);
        assert!(loaded.machines[3].run.boot_ts.is_some());
        assert!(loaded.machines[4].run.boot_ts.is_none());
    }
}
