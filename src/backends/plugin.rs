//! The FFI side of the plugin ABI: loading a library, the handshake, raw calls with buffer
//! ownership, and the host callbacks. This is the only module with FFI `unsafe`.
//!
//! Everything here is synchronous and may block (a plugin call can hang); `backends/mod.rs`
//! runs it on the blocking pool behind timeouts.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use orchard_plugin_api::abi::{self, Buf, HostV1, Instance, PluginV1, Slice};
use orchard_plugin_api::{Describe, Event, InitConfig, PROTOCOL_VERSION};
use tokio::sync::mpsc::UnboundedSender;

/// What plugins send to the host through its callbacks.
#[derive(Debug)]
pub enum PluginMsg {
    Event { backend: String, event: Event },
    Console { session: String, data: Vec<u8> },
}

/// The entry function of a v1 plugin.
pub type EntryFn = extern "C" fn() -> *const PluginV1;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load library: {0}")]
    Open(String),
    #[error("the library does not export orchard_plugin_v1")]
    MissingSymbol,
    #[error("orchard_plugin_v1 returned a null table")]
    NullTable,
    #[error("ABI version {found} does not match the host's {expected}")]
    AbiMismatch { found: u32, expected: u32 },
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("init failed: {0}")]
    Init(String),
}

/// A raw call failure: the ABI status code and the plugin's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub code: i32,
    pub message: String,
}

/// A loaded, initialised plugin instance.
pub struct Plugin {
    table: &'static PluginV1,
    instance: Instance,
}

// SAFETY: the ABI requires plugins to accept calls from any thread, concurrently; the table
// is immutable and the instance pointer is only passed back to the plugin.
unsafe impl Send for Plugin {}
// SAFETY: as above.
unsafe impl Sync for Plugin {}

/// The host context behind `HostV1::ctx`: leaked, because plugins are never unloaded and may
/// call back from their own threads at any time.
struct HostCtx {
    backend: String,
    tx: UnboundedSender<PluginMsg>,
}

extern "C" fn host_emit_event(ctx: *mut c_void, event: Slice) {
    // A panic must not unwind into the plugin's frames.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the leaked `HostCtx` given with this table; it lives forever.
        let ctx = unsafe { &*(ctx as *const HostCtx) };
        // SAFETY: the plugin passes bytes valid for the duration of this call.
        let bytes = unsafe { event.as_bytes() };
        match parse_event(bytes) {
            Ok(event) => {
                let _ = ctx.tx.send(PluginMsg::Event {
                    backend: ctx.backend.clone(),
                    event,
                });
            }
            Err(e) => {
                tracing::warn!(backend = %ctx.backend, error = %e, "plugin sent a malformed event; ignored");
            }
        }
    }));
}

extern "C" fn host_console_output(ctx: *mut c_void, session: Slice, data: Slice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the leaked `HostCtx` given with this table; it lives forever.
        let ctx = unsafe { &*(ctx as *const HostCtx) };
        // SAFETY: both slices are valid for the duration of this call.
        let (session, data) = unsafe { (session.as_bytes(), data.as_bytes()) };
        let _ = ctx.tx.send(PluginMsg::Console {
            session: String::from_utf8_lossy(session).into_owned(),
            data: data.to_vec(),
        });
    }));
}

extern "C" fn host_log(ctx: *mut c_void, level: u32, message: Slice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the leaked `HostCtx` given with this table; it lives forever.
        let ctx = unsafe { &*(ctx as *const HostCtx) };
        // SAFETY: valid for the duration of this call.
        let text = String::from_utf8_lossy(unsafe { message.as_bytes() });
        let backend = ctx.backend.as_str();
        match level {
            abi::LOG_ERROR => tracing::error!(target: "orchard::plugin", backend, "{text}"),
            abi::LOG_WARN => tracing::warn!(target: "orchard::plugin", backend, "{text}"),
            abi::LOG_INFO => tracing::info!(target: "orchard::plugin", backend, "{text}"),
            _ => tracing::debug!(target: "orchard::plugin", backend, "{text}"),
        }
    }));
}

/// Opens `path` and returns its entry function. The library is leaked on purpose: plugins
/// are never unloaded (their threads and our callbacks may outlive any handle).
pub fn open_library(path: &Path) -> Result<EntryFn, LoadError> {
    // SAFETY: loading a library runs its initialisers; plugins in `plugins.dir` are trusted
    // code installed by the administrator, as with any daemon's modules.
    let lib =
        unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open(e.to_string()))?;
    // SAFETY: the symbol, if present, has the v1 entry signature by the ABI's definition.
    let entry: EntryFn = match unsafe { lib.get::<EntryFn>(abi::ENTRY_SYMBOL) } {
        Ok(sym) => *sym,
        Err(_) => return Err(LoadError::MissingSymbol),
    };
    std::mem::forget(lib);
    Ok(entry)
}

/// Reads the table, compares the ABI version and runs `describe`.
pub fn handshake(entry: EntryFn) -> Result<(&'static PluginV1, Describe), LoadError> {
    let table = entry();
    if table.is_null() {
        return Err(LoadError::NullTable);
    }
    // SAFETY: every ABI version begins with a `u32` version field, so reading it is valid
    // whatever the rest of the table looks like.
    let found = unsafe { *(table as *const u32) };
    if found != abi::ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            found,
            expected: abi::ABI_VERSION,
        });
    }
    // SAFETY: the version matched, so the table has the v1 layout; it is static in the
    // plugin, which is never unloaded.
    let table: &'static PluginV1 = unsafe { &*table };
    let missing: Vec<&str> = [
        ("describe", table.describe.is_none()),
        ("init", table.init.is_none()),
        ("destroy", table.destroy.is_none()),
        ("free_buf", table.free_buf.is_none()),
        ("list_machines", table.list_machines.is_none()),
        ("bulk_state", table.bulk_state.is_none()),
        ("power", table.power.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, null)| null.then_some(name))
    .collect();
    if !missing.is_empty() {
        return Err(LoadError::Handshake(format!(
            "required table entries are null: {}",
            missing.join(", ")
        )));
    }
    let Some(describe) = table.describe else {
        return Err(LoadError::Handshake("describe is null".into()));
    };
    let mut out = Buf::EMPTY;
    let code = describe(&mut out);
    let bytes = take(table, out);
    if code != abi::OK {
        return Err(LoadError::Handshake(format!(
            "describe returned {code}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    let describe = parse_describe(&bytes).map_err(LoadError::Handshake)?;
    Ok((table, describe))
}

/// An event a plugin emits (`emit_event`).
pub fn parse_event(bytes: &[u8]) -> serde_json::Result<Event> {
    serde_json::from_slice(bytes)
}

/// A plugin's `describe` answer, decoded and checked.
pub fn parse_describe(bytes: &[u8]) -> Result<Describe, String> {
    let describe: Describe =
        serde_json::from_slice(bytes).map_err(|e| format!("describe is not valid JSON: {e}"))?;
    validate_describe(&describe)?;
    Ok(describe)
}

pub fn validate_describe(d: &Describe) -> Result<(), String> {
    let name_ok = !d.name.is_empty()
        && d.name.len() <= 32
        && d.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(format!(
            "plugin name {:?} must match [a-z0-9-]{{1,32}}",
            d.name
        ));
    }
    if d.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not the host's {PROTOCOL_VERSION}",
            d.protocol_version
        ));
    }
    Ok(())
}

/// Initialises the plugin: from here on it may call back through `tx`.
pub fn init(
    table: &'static PluginV1,
    describe: Describe,
    config: &InitConfig,
    tx: UnboundedSender<PluginMsg>,
) -> Result<Plugin, LoadError> {
    let ctx = Box::leak(Box::new(HostCtx {
        backend: describe.name.clone(),
        tx,
    }));
    let host: &'static HostV1 = Box::leak(Box::new(HostV1 {
        ctx: ctx as *mut HostCtx as *mut c_void,
        emit_event: host_emit_event,
        console_output: host_console_output,
        log: host_log,
    }));
    let config = serde_json::to_vec(config).map_err(|e| LoadError::Init(e.to_string()))?;
    let mut instance: Instance = std::ptr::null_mut();
    let mut out = Buf::EMPTY;
    let Some(init) = table.init else {
        return Err(LoadError::Init("init is null".into()));
    };
    // SAFETY: `config` outlives the call; `host` is leaked (valid forever, beyond `destroy`);
    // `instance` and `out` point to live locals.
    let code = unsafe { init(Slice::new(&config), host, &mut instance, &mut out) };
    let message = take(table, out);
    if code != abi::OK {
        return Err(LoadError::Init(
            String::from_utf8_lossy(&message).into_owned(),
        ));
    }
    if instance.is_null() {
        return Err(LoadError::Init("init returned no instance".into()));
    }
    Ok(Plugin { table, instance })
}

/// Copies a plugin buffer and gives it back to the plugin.
fn take(table: &PluginV1, buf: Buf) -> Vec<u8> {
    if buf.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the plugin produced `buf` for us with `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
    if let Some(free) = table.free_buf {
        // SAFETY: returned exactly once, to the plugin that allocated it.
        unsafe { free(buf) };
    }
    bytes
}

/// Which call, for the call helpers below.
pub enum Call<'a> {
    ListMachines,
    GetProperties(&'a str),
    BulkState(&'a [u8]),
    Disks(&'a [u8]),
    Connections(&'a [u8]),
    Power(&'a str, u32),
    Create(&'a [u8]),
    Delete(&'a str),
    UpdateMetadata(&'a str, &'a [u8]),
    ConsoleOpen(&'a str),
    ConsoleWrite(&'a str, &'a [u8]),
    ConsoleResize(&'a str, u16, u16),
    ConsoleClose(&'a str),
}

fn unsupported() -> Result<Vec<u8>, CallError> {
    Err(CallError {
        code: abi::ERR_UNSUPPORTED,
        message: "not supported by this backend".into(),
    })
}

impl Plugin {
    /// Makes one call; `Ok` carries the output bytes of an `OK` status.
    pub fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        let t = self.table;
        let i = self.instance;
        let s = |b: &[u8]| Slice::new(b);
        let mut out = Buf::EMPTY;
        // SAFETY: for every arm, `i` is the instance `init` returned and not destroyed
        // (destroy is never called while calls can run); the slices borrow data that outlives
        // the call; `out` is a live local the plugin writes at most once.
        let code = unsafe {
            match call {
                Call::ListMachines => match t.list_machines {
                    Some(f) => f(i, &mut out),
                    None => return unsupported(),
                },
                Call::GetProperties(u) => match t.get_properties {
                    Some(f) => f(i, s(u.as_bytes()), &mut out),
                    None => return unsupported(),
                },
                Call::BulkState(j) => match t.bulk_state {
                    Some(f) => f(i, s(j), &mut out),
                    None => return unsupported(),
                },
                Call::Disks(j) => match t.disks {
                    Some(f) => f(i, s(j), &mut out),
                    None => return unsupported(),
                },
                Call::Connections(j) => match t.connections {
                    Some(f) => f(i, s(j), &mut out),
                    None => return unsupported(),
                },
                Call::Power(u, a) => match t.power {
                    Some(f) => f(i, s(u.as_bytes()), a, &mut out),
                    None => return unsupported(),
                },
                Call::Create(j) => match t.create {
                    Some(f) => f(i, s(j), &mut out),
                    None => return unsupported(),
                },
                Call::Delete(u) => match t.delete_machine {
                    Some(f) => f(i, s(u.as_bytes()), &mut out),
                    None => return unsupported(),
                },
                Call::UpdateMetadata(u, j) => match t.update_metadata {
                    Some(f) => f(i, s(u.as_bytes()), s(j), &mut out),
                    None => return unsupported(),
                },
                Call::ConsoleOpen(u) => match t.console_open {
                    Some(f) => f(i, s(u.as_bytes()), &mut out),
                    None => return unsupported(),
                },
                Call::ConsoleWrite(sess, d) => match t.console_write {
                    Some(f) => f(i, s(sess.as_bytes()), s(d), &mut out),
                    None => return unsupported(),
                },
                Call::ConsoleResize(sess, c, r) => match t.console_resize {
                    Some(f) => f(i, s(sess.as_bytes()), c, r, &mut out),
                    None => return unsupported(),
                },
                Call::ConsoleClose(sess) => match t.console_close {
                    Some(f) => f(i, s(sess.as_bytes()), &mut out),
                    None => return unsupported(),
                },
            }
        };
        let bytes = take(t, out);
        if code == abi::OK {
            Ok(bytes)
        } else {
            Err(CallError {
                code,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    }
}

impl Plugin {
    /// Destroys the instance. Only for callers that know no call is in flight and none will
    /// follow (the daemon itself never unloads plugins; `orchard plugin check` does).
    pub fn destroy(self) {
        if let Some(destroy) = self.table.destroy {
            // SAFETY: `self` is consumed, so no further call can use the instance.
            unsafe { destroy(self.instance) };
        }
    }
}
