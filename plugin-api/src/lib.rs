//! The Orchard backend plugin API.
//!
//! Orchard drives machines only through backend plugins: shared libraries loaded at run time
//! that export one C function, `orchard_plugin_v1`. This crate is both sides of that
//! boundary for Rust:
//!
//! * [`abi`] — the `#[repr(C)]` ABI, mirrored for C by `include/orchard_plugin.h`.
//! * [`types`] — the JSON documents that cross it.
//! * [`rules`], [`power`], [`settings`], [`link`] — what backends share: the power rules and
//!   wording, the power-transition tracker, typed reading of a plugin's settings table, and
//!   the connection to an engine with the reporting to the host.
//! * [`Backend`] and [`export_backend!`] — write a safe Rust backend and get the
//!   `extern "C"` shims generated, with every call guarded by `catch_unwind` (a backend that
//!   panicked is poisoned and refuses further calls).
//!
//! The plugin author's guide is `README.md` next to this crate.

// The export shims catch a backend's panics with `catch_unwind`; under `panic = "abort"` a
// panic would take the whole daemon down instead of poisoning one plugin.
#[cfg(panic = "abort")]
compile_error!("Orchard plugins must be built with panic = \"unwind\" (the default)");

pub mod abi;
#[doc(hidden)]
pub mod export;
pub mod link;
pub mod power;
pub mod rules;
pub mod settings;
pub mod types;

pub use abi::ABI_VERSION;
pub use rules::{MAX_TITLE_CHARS, check_title, check_transition, status_text};
pub use settings::Table as SettingsTable;
pub use types::*;

/// Why a call failed; maps to the ABI's status codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginError {
    Failed(String),
    Unsupported,
    NotFound(String),
    InvalidState(String),
    InvalidArgument(String),
}

impl PluginError {
    pub fn code(&self) -> i32 {
        match self {
            Self::Failed(_) => abi::ERR_FAILED,
            Self::Unsupported => abi::ERR_UNSUPPORTED,
            Self::NotFound(_) => abi::ERR_NOT_FOUND,
            Self::InvalidState(_) => abi::ERR_INVALID_STATE,
            Self::InvalidArgument(_) => abi::ERR_INVALID_ARGUMENT,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Failed(m)
            | Self::NotFound(m)
            | Self::InvalidState(m)
            | Self::InvalidArgument(m) => m,
            Self::Unsupported => "not supported by this backend",
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PluginError {}

pub type PluginResult<T> = Result<T, PluginError>;

/// The host's callbacks, as a plugin sees them. Cheap to clone; usable from any thread.
#[derive(Clone, Copy)]
pub struct Host {
    raw: abi::HostV1,
}

// SAFETY: the ABI requires the host's callbacks and context to be thread-safe and valid until
// `destroy` returns (see `abi::HostV1`).
unsafe impl Send for Host {}
// SAFETY: as above; the callbacks take `&`-like access only.
unsafe impl Sync for Host {}

#[derive(Clone, Copy, Debug)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl Host {
    /// Wraps the host table given to `init`.
    ///
    /// # Safety
    /// `raw` must be the table the host passed to `init`, used only until `destroy` returns.
    pub unsafe fn from_raw(raw: abi::HostV1) -> Self {
        Self { raw }
    }

    /// Sends one event to the host (never blocks).
    pub fn emit(&self, event: &Event) {
        if let Ok(json) = serde_json::to_vec(event) {
            (self.raw.emit_event)(self.raw.ctx, abi::Slice::new(&json));
        }
    }

    /// Sends console output of `session` to the host (never blocks).
    pub fn console_output(&self, session: &str, data: &[u8]) {
        (self.raw.console_output)(
            self.raw.ctx,
            abi::Slice::new(session.as_bytes()),
            abi::Slice::new(data),
        );
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Error => abi::LOG_ERROR,
            LogLevel::Warn => abi::LOG_WARN,
            LogLevel::Info => abi::LOG_INFO,
            LogLevel::Debug => abi::LOG_DEBUG,
        };
        (self.raw.log)(self.raw.ctx, level, abi::Slice::new(message.as_bytes()));
    }
}

/// A backend, written in safe Rust. Export it with [`export_backend!`].
///
/// Calls may arrive concurrently from several host threads, hence `Sync`. Every call should
/// return promptly: the host gives each a timeout and marks a backend that exceeds it failed.
/// Long work (booting a machine) continues in the backend's own threads and reports through
/// [`Host::emit`].
pub trait Backend: Send + Sync + Sized + 'static {
    /// The handshake: name, version, capabilities. Must not depend on `init`.
    fn describe() -> Describe;

    fn init(config: InitConfig, host: Host) -> PluginResult<Self>;

    fn list_machines(&self) -> PluginResult<Vec<MachineInfo>>;

    fn get_properties(&self, uuid: &str) -> PluginResult<MachineInfo> {
        self.list_machines()?
            .into_iter()
            .find(|m| m.uuid == uuid)
            .ok_or_else(|| PluginError::NotFound(format!("no machine {uuid}")))
    }

    /// State of the machines named (all when `uuids` is empty), in one call.
    fn bulk_state(&self, uuids: &[String]) -> PluginResult<Vec<MachineState>>;

    fn disks(&self, _uuids: &[String]) -> PluginResult<Vec<MachineDisks>> {
        Err(PluginError::Unsupported)
    }

    fn connections(&self, _uuids: &[String]) -> PluginResult<Vec<MachineConnections>> {
        Err(PluginError::Unsupported)
    }

    /// Starts the action and returns; progress follows as events.
    fn power(&self, uuid: &str, action: PowerAction) -> PluginResult<()>;

    fn create(&self, _spec: CreateSpec) -> PluginResult<MachineInfo> {
        Err(PluginError::Unsupported)
    }

    fn delete(&self, _uuid: &str) -> PluginResult<()> {
        Err(PluginError::Unsupported)
    }

    fn update_metadata(&self, _uuid: &str, _update: MetadataUpdate) -> PluginResult<MachineInfo> {
        Err(PluginError::Unsupported)
    }

    fn console_open(&self, _uuid: &str) -> PluginResult<ConsoleOpened> {
        Err(PluginError::Unsupported)
    }

    fn console_write(&self, _session: &str, _data: &[u8]) -> PluginResult<()> {
        Err(PluginError::Unsupported)
    }

    fn console_resize(&self, _session: &str, _cols: u16, _rows: u16) -> PluginResult<()> {
        Err(PluginError::Unsupported)
    }

    fn console_close(&self, _session: &str) -> PluginResult<()> {
        Err(PluginError::Unsupported)
    }

    /// Called once before the instance is dropped.
    fn shutdown(&self) {}
}

/// Exports a [`Backend`] as a v1 plugin: generates `orchard_plugin_v1`.
///
/// ```text
/// struct MyBackend;
/// impl orchard_plugin_api::Backend for MyBackend { /* … */ }
/// orchard_plugin_api::export_backend!(MyBackend);
/// ```
///
/// The generated function is also a plain Rust `pub` function, so a host that links the
/// crate as an rlib reaches the very same table (Orchard's built-in simulator does).
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        /// The v1 entry point: the plugin's function table.
        #[unsafe(no_mangle)]
        pub extern "C" fn orchard_plugin_v1() -> *const $crate::abi::PluginV1 {
            static TABLE: $crate::abi::PluginV1 = $crate::export::table::<$backend>();
            &TABLE
        }
    };
}
