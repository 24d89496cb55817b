//! Backends: plugins loaded at run time (and the built-in simulator, reached through the very
//! same ABI entry function), each behind a [`Backend`] handle that runs calls on the blocking
//! pool with a timeout and marks the plugin failed when it panics or hangs.

pub mod plugin;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchard_plugin_api::abi;
use orchard_plugin_api::{
    ConsoleOpened, CreateSpec, Describe, InitConfig, MachineConnections, MachineDisks, MachineInfo,
    MachineState, MetadataUpdate, PowerAction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Config;
use plugin::{Call, CallError, EntryFn, LoadError, Plugin, PluginMsg};

/// Why a backend call did not succeed, as the API layer needs to tell it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("not supported by backend {0}")]
    Unsupported(String),
    #[error("backend {name} is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("backend {name} failed: {message}")]
    Failed { name: String, message: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    pub capabilities: Vec<String>,
    pub status: &'static str,
    pub last_error: Option<String>,
    /// Where it came from: a file path, or `built-in`.
    pub source: String,
}

#[derive(Default)]
struct Health {
    failed: Option<String>,
    last_error: Option<String>,
}

/// One initialised backend.
pub struct Backend {
    name: String,
    describe: Describe,
    source: String,
    plugin: Arc<Plugin>,
    health: Mutex<Health>,
    timeout: Duration,
}

impl Backend {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn describe(&self) -> &Describe {
        &self.describe
    }

    /// Destroys the instance when this is the last handle (for `orchard plugin check`).
    pub fn destroy(self) {
        if let Ok(plugin) = Arc::try_unwrap(self.plugin) {
            plugin.destroy();
        }
    }

    pub fn has_capability(&self, cap: &str) -> bool {
        self.describe.capabilities.iter().any(|c| c == cap)
    }

    pub fn is_failed(&self) -> bool {
        self.health().failed.is_some()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_failed(&self, reason: String) {
        tracing::error!(backend = %self.name, %reason, "backend marked failed");
        let mut h = self.health();
        h.last_error = Some(reason.clone());
        h.failed.get_or_insert(reason);
    }

    pub fn info(&self) -> BackendInfo {
        let h = self.health();
        BackendInfo {
            name: self.name.clone(),
            version: self.describe.version.clone(),
            abi_version: abi::ABI_VERSION,
            capabilities: self.describe.capabilities.clone(),
            status: if h.failed.is_some() {
                "failed"
            } else {
                "loaded"
            },
            last_error: h.last_error.clone(),
            source: self.source.clone(),
        }
    }

    /// Runs one raw call off the async workers, with the timeout.
    async fn raw(
        &self,
        name: &'static str,
        f: impl FnOnce(&Plugin) -> Result<Vec<u8>, CallError> + Send + 'static,
    ) -> Result<Vec<u8>, BackendError> {
        if let Some(reason) = self.health().failed.clone() {
            return Err(BackendError::Unavailable {
                name: self.name.clone(),
                reason,
            });
        }
        let plugin = self.plugin.clone();
        let task = tokio::task::spawn_blocking(move || f(&plugin));
        let result = match tokio::time::timeout(self.timeout, task).await {
            Err(_) => {
                // The blocking thread stays stuck in the plugin; nothing can free it. The
                // backend is failed so that no further call joins it.
                let reason = format!("call {name} exceeded {} s", self.timeout.as_secs_f64());
                self.mark_failed(reason.clone());
                return Err(BackendError::Unavailable {
                    name: self.name.clone(),
                    reason,
                });
            }
            Ok(Err(join)) => {
                let reason = format!("call {name} aborted: {join}");
                self.mark_failed(reason.clone());
                return Err(BackendError::Unavailable {
                    name: self.name.clone(),
                    reason,
                });
            }
            Ok(Ok(r)) => r,
        };
        result.map_err(|e| self.classify(name, e))
    }

    fn classify(&self, call: &str, e: CallError) -> BackendError {
        let message = e.message;
        match e.code {
            abi::ERR_NOT_FOUND => BackendError::NotFound(message),
            abi::ERR_INVALID_STATE => BackendError::InvalidState(message),
            abi::ERR_INVALID_ARGUMENT => BackendError::InvalidArgument(message),
            abi::ERR_UNSUPPORTED => BackendError::Unsupported(self.name.clone()),
            abi::ERR_POISONED => {
                let reason = format!("{call}: {message}");
                self.mark_failed(reason.clone());
                BackendError::Unavailable {
                    name: self.name.clone(),
                    reason,
                }
            }
            code => {
                let message = format!("{call} returned {code}: {message}");
                self.health().last_error = Some(message.clone());
                BackendError::Failed {
                    name: self.name.clone(),
                    message,
                }
            }
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        name: &'static str,
        f: impl FnOnce(&Plugin) -> Result<Vec<u8>, CallError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let bytes = self.raw(name, f).await?;
        // A reply that does not decode breaks the ABI's contract, like a panic: the plugin
        // is failed and not called again.
        parse_reply(&bytes).map_err(|e| {
            let reason = format!("{name} returned malformed JSON: {e}");
            self.mark_failed(reason.clone());
            BackendError::Unavailable {
                name: self.name.clone(),
                reason,
            }
        })
    }

    pub async fn list_machines(&self) -> Result<Vec<MachineInfo>, BackendError> {
        self.json("list_machines", |p| p.call(Call::ListMachines))
            .await
    }

    pub async fn get_properties(&self, uuid: String) -> Result<MachineInfo, BackendError> {
        self.json("get_properties", move |p| {
            p.call(Call::GetProperties(&uuid))
        })
        .await
    }

    /// State of `uuids` (all when empty), in one call.
    pub async fn bulk_state(&self, uuids: &[String]) -> Result<Vec<MachineState>, BackendError> {
        let req = to_json(uuids);
        self.json("bulk_state", move |p| p.call(Call::BulkState(&req)))
            .await
    }

    pub async fn disks(&self, uuids: &[String]) -> Result<Vec<MachineDisks>, BackendError> {
        let req = to_json(uuids);
        self.json("disks", move |p| p.call(Call::Disks(&req))).await
    }

    pub async fn connections(
        &self,
        uuids: &[String],
    ) -> Result<Vec<MachineConnections>, BackendError> {
        let req = to_json(uuids);
        self.json("connections", move |p| p.call(Call::Connections(&req)))
            .await
    }

    pub async fn power(&self, uuid: String, action: PowerAction) -> Result<(), BackendError> {
        self.raw("power", move |p| {
            p.call(Call::Power(&uuid, action.to_raw()))
        })
        .await
        .map(drop)
    }

    pub async fn create(&self, spec: &CreateSpec) -> Result<MachineInfo, BackendError> {
        let req = to_json(spec);
        self.json("create", move |p| p.call(Call::Create(&req)))
            .await
    }

    pub async fn delete(&self, uuid: String) -> Result<(), BackendError> {
        self.raw("delete_machine", move |p| p.call(Call::Delete(&uuid)))
            .await
            .map(drop)
    }

    pub async fn update_metadata(
        &self,
        uuid: String,
        update: &MetadataUpdate,
    ) -> Result<MachineInfo, BackendError> {
        let req = to_json(update);
        self.json("update_metadata", move |p| {
            p.call(Call::UpdateMetadata(&uuid, &req))
        })
        .await
    }

    pub async fn console_open(&self, uuid: String) -> Result<ConsoleOpened, BackendError> {
        self.json("console_open", move |p| p.call(Call::ConsoleOpen(&uuid)))
            .await
    }

    pub async fn console_write(&self, session: String, data: Vec<u8>) -> Result<(), BackendError> {
        self.raw("console_write", move |p| {
            p.call(Call::ConsoleWrite(&session, &data))
        })
        .await
        .map(drop)
    }

    pub async fn console_resize(
        &self,
        session: String,
        cols: u16,
        rows: u16,
    ) -> Result<(), BackendError> {
        self.raw("console_resize", move |p| {
            p.call(Call::ConsoleResize(&session, cols, rows))
        })
        .await
        .map(drop)
    }

    pub async fn console_close(&self, session: String) -> Result<(), BackendError> {
        self.raw("console_close", move |p| {
            p.call(Call::ConsoleClose(&session))
        })
        .await
        .map(drop)
    }
}

/// A plugin's JSON answer to a call.
fn parse_reply<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(bytes)
}

/// Every decoder of plugin output, for the fuzz target (`crate::fuzz`): the handshake's
/// `describe`, an emitted event, and each call's answer type.
pub fn fuzz_reply(bytes: &[u8]) {
    let _ = plugin::parse_describe(bytes);
    let _ = plugin::parse_event(bytes);
    let _ = parse_reply::<Vec<MachineInfo>>(bytes);
    let _ = parse_reply::<MachineInfo>(bytes);
    let _ = parse_reply::<Vec<MachineState>>(bytes);
    let _ = parse_reply::<Vec<MachineDisks>>(bytes);
    let _ = parse_reply::<Vec<MachineConnections>>(bytes);
    let _ = parse_reply::<ConsoleOpened>(bytes);
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

/// Every backend the daemon knows: the loaded ones and the ones that failed to load.
pub struct Backends {
    pub loaded: Vec<Arc<Backend>>,
    pub failed: Vec<BackendInfo>,
}

impl Backends {
    pub fn get(&self, name: &str) -> Option<&Arc<Backend>> {
        self.loaded.iter().find(|b| b.name == name)
    }

    pub fn infos(&self) -> Vec<BackendInfo> {
        let mut all: Vec<BackendInfo> = self.loaded.iter().map(|b| b.info()).collect();
        all.extend(self.failed.iter().cloned());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// Where plugins are looked for: `plugins.dir` when set; else `/usr/lib/orchard/plugins` for
/// an installed binary; else the build output next to the executable, where only
/// `liborchard_plugin_*.so` files are taken (other libraries there are not plugins).
pub fn plugin_files(config: &Config) -> Vec<PathBuf> {
    let (dir, only_ours) = match &config.plugins.dir {
        Some(dir) => (dir.clone(), false),
        None => {
            let installed = Path::new("/usr/lib/orchard/plugins");
            let exe_dir = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            match exe_dir {
                Some(d) if !d.starts_with("/usr") => (d, true),
                _ => (installed.to_path_buf(), false),
            }
        }
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        tracing::debug!(dir = %dir.display(), "no plugin directory");
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            p.is_file()
                && name.ends_with(".so")
                && !name.starts_with('.')
                && (!only_ours || name.starts_with("liborchard_plugin_"))
        })
        .collect();
    files.sort();
    files
}

/// The settings a plugin receives: `[plugins.settings.<name>]`, and for the simulator the
/// `[simulator]` section.
pub fn settings_for(config: &Config, name: &str) -> serde_json::Value {
    let mut settings = config
        .plugins
        .settings
        .get(name)
        .or_else(|| config.plugins.settings.get("*"))
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if name == "simulator"
        && let Some(obj) = settings.as_object_mut()
    {
        let s = &config.simulator;
        obj.entry("machines").or_insert(s.machines.into());
        obj.entry("boot_seconds")
            .or_insert((s.boot_ms as f64 / 1000.0).into());
        obj.entry("shutdown_seconds")
            .or_insert((s.shutdown_ms as f64 / 1000.0).into());
        obj.entry("churn_per_second")
            .or_insert(s.churn_per_second.into());
    }
    settings
}

/// Loads one plugin from its entry function, with the load timeout: handshake, then init
/// with its data directory under `<data-dir>/plugins/<name>/`.
async fn load_entry(
    config: &Config,
    entry: EntryFn,
    source: String,
    tx: UnboundedSender<PluginMsg>,
    taken: &[String],
) -> Result<Backend, LoadFailure> {
    let timeout = Duration::from_secs(config.plugins.load_timeout);
    let handshake = tokio::task::spawn_blocking(move || plugin::handshake(entry));
    let (table, describe) = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => return Err(LoadFailure::from((None, "handshake timed out".into()))),
        Ok(Err(e)) => return Err(LoadFailure::from((None, format!("handshake aborted: {e}")))),
        Ok(Ok(Err(e))) => {
            let abi = match e {
                LoadError::AbiMismatch { found, .. } => found,
                _ => abi::ABI_VERSION,
            };
            return Err(LoadFailure {
                describe: None,
                abi,
                reason: e.to_string(),
            });
        }
        Ok(Ok(Ok(pair))) => pair,
    };
    if taken.contains(&describe.name) {
        return Err(LoadFailure::from((
            Some(describe.clone()),
            format!("another plugin named {} is already loaded", describe.name),
        )));
    }
    let data_dir = config.storage.data_dir.join("plugins").join(&describe.name);
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        return Err(LoadFailure::from((
            Some(describe),
            format!("cannot create {}: {e}", data_dir.display()),
        )));
    }
    let init_config = InitConfig {
        data_dir: data_dir.to_string_lossy().into_owned(),
        settings: settings_for(config, &describe.name),
    };
    let d = describe.clone();
    let init = tokio::task::spawn_blocking(move || plugin::init(table, d, &init_config, tx));
    let plugin = match tokio::time::timeout(timeout, init).await {
        Err(_) => return Err(LoadFailure::from((Some(describe), "init timed out".into()))),
        Ok(Err(e)) => {
            return Err(LoadFailure::from((
                Some(describe),
                format!("init aborted: {e}"),
            )));
        }
        Ok(Ok(Err(e))) => return Err(LoadFailure::from((Some(describe), e.to_string()))),
        Ok(Ok(Ok(p))) => p,
    };
    Ok(Backend {
        name: describe.name.clone(),
        describe,
        source,
        plugin: Arc::new(plugin),
        health: Mutex::new(Health::default()),
        timeout: Duration::from_secs(config.plugins.call_timeout),
    })
}

/// Why `load_entry` failed: what the plugin said of itself, if anything, and the ABI version
/// it declared (the host's when the table could not be read).
struct LoadFailure {
    describe: Option<Describe>,
    abi: u32,
    reason: String,
}

impl From<(Option<Describe>, String)> for LoadFailure {
    fn from((describe, reason): (Option<Describe>, String)) -> Self {
        Self {
            describe,
            abi: abi::ABI_VERSION,
            reason,
        }
    }
}

fn failed_info(f: LoadFailure, fallback_name: &str, source: String) -> BackendInfo {
    let LoadFailure {
        describe,
        abi,
        reason,
    } = f;
    tracing::error!(plugin = %source, %reason, "plugin failed to load");
    BackendInfo {
        name: describe
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_else(|| fallback_name.to_owned()),
        version: describe
            .as_ref()
            .map(|d| d.version.clone())
            .unwrap_or_default(),
        abi_version: abi,
        capabilities: describe.map(|d| d.capabilities).unwrap_or_default(),
        status: "failed",
        last_error: Some(reason),
        source,
    }
}

/// Loads one plugin file exactly as the daemon does (`orchard plugin check` uses this).
pub async fn load_file(
    config: &Config,
    path: &Path,
    tx: UnboundedSender<PluginMsg>,
    taken: &[String],
) -> Result<Backend, BackendInfo> {
    let source = path.display().to_string();
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .trim_start_matches("lib")
        .to_owned();
    let p = path.to_owned();
    let opened = match tokio::time::timeout(
        Duration::from_secs(config.plugins.load_timeout),
        tokio::task::spawn_blocking(move || plugin::open_library(&p)),
    )
    .await
    {
        Err(_) => Err("loading the library timed out".to_owned()),
        Ok(Err(e)) => Err(format!("loading the library aborted: {e}")),
        Ok(Ok(r)) => r.map_err(|e: LoadError| e.to_string()),
    };
    let entry =
        opened.map_err(|reason| failed_info((None, reason).into(), &stem, source.clone()))?;
    load_entry(config, entry, source.clone(), tx, taken)
        .await
        .map_err(|f| failed_info(f, &stem, source))
}

/// Loads every plugin file, then the built-in simulator unless a loaded plugin already has
/// its name. Failures are recorded, never fatal.
pub async fn load_all(config: &Config, tx: UnboundedSender<PluginMsg>) -> Backends {
    let mut loaded: Vec<Arc<Backend>> = Vec::new();
    let mut failed = Vec::new();
    for path in plugin_files(config) {
        let taken: Vec<String> = loaded.iter().map(|b| b.name.clone()).collect();
        match load_file(config, &path, tx.clone(), &taken).await {
            Ok(b) => {
                tracing::info!(backend = %b.name, version = %b.describe.version, plugin = %b.source, "plugin loaded");
                loaded.push(Arc::new(b));
            }
            Err(info) => failed.push(info),
        }
    }
    if config.plugins.builtin_simulator && !loaded.iter().any(|b| b.name == "simulator") {
        let taken: Vec<String> = loaded.iter().map(|b| b.name.clone()).collect();
        let entry: EntryFn = orchard_plugin_simulator::orchard_plugin_v1;
        match load_entry(config, entry, "built-in".into(), tx.clone(), &taken).await {
            Ok(b) => {
                tracing::info!(backend = %b.name, "built-in simulator loaded");
                loaded.push(Arc::new(b));
            }
            Err(f) => failed.push(failed_info(f, "simulator", "built-in".into())),
        }
    }
    Backends { loaded, failed }
}
