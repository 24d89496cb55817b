//! The C ABI, version 1: the `#[repr(C)]` mirror of `include/orchard_plugin.h`.
//!
//! A plugin exports one symbol, `orchard_plugin_v1`, a function returning a pointer to a
//! static [`PluginV1`] table. The host reads `abi_version` first and refuses the plugin
//! unless it equals [`ABI_VERSION`]; a future incompatible ABI gets a new symbol
//! (`orchard_plugin_v2`) so that both can be offered by one library.
//!
//! Ownership, for every pointer that crosses the boundary:
//! * [`Slice`] — borrowed. Valid only for the duration of the call it is passed to; the
//!   receiver copies what it wants to keep.
//! * [`Buf`] — an output buffer allocated by the plugin. The host copies it and then gives
//!   it back with the same plugin's `free_buf`, exactly once ("the side that allocates frees
//!   it"). A zeroed `Buf` (null `ptr`) means "no bytes" and need not be freed.
//! * The instance pointer returned by `init` belongs to the plugin; the host passes it back
//!   to every call and finally to `destroy`.
//! * The [`HostV1`] table passed to `init` belongs to the host and stays valid until
//!   `destroy` returns; the plugin may keep the pointer or copy the table.

use std::ffi::c_void;

/// The ABI major version of this crate.
pub const ABI_VERSION: u32 = 1;
/// The symbol every v1 plugin exports.
pub const ENTRY_SYMBOL: &[u8] = b"orchard_plugin_v1";

/// Call status codes.
pub const OK: i32 = 0;
/// The call failed; the output buffer holds a UTF-8 message.
pub const ERR_FAILED: i32 = 1;
/// The plugin does not implement this call.
pub const ERR_UNSUPPORTED: i32 = 2;
/// No such machine or console session.
pub const ERR_NOT_FOUND: i32 = 3;
/// The machine is not in a state that allows this (e.g. starting a running machine).
pub const ERR_INVALID_STATE: i32 = 4;
/// The request was malformed or a value was refused.
pub const ERR_INVALID_ARGUMENT: i32 = 5;
/// The instance panicked earlier and refuses every call (fail closed).
pub const ERR_POISONED: i32 = 6;

/// Power actions for `power`.
pub const POWER_START: u32 = 0;
pub const POWER_STOP: u32 = 1;
pub const POWER_RESTART: u32 = 2;
pub const POWER_SUSPEND: u32 = 3;
pub const POWER_RESUME: u32 = 4;
pub const POWER_FORCE_OFF: u32 = 5;

/// Log levels for `HostV1::log`.
pub const LOG_ERROR: u32 = 0;
pub const LOG_WARN: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_DEBUG: u32 = 3;

/// Borrowed bytes. OWNERSHIP: the caller's; valid only during the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Slice {
    pub ptr: *const u8,
    pub len: usize,
}

impl Slice {
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Views the bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid for `'a` (or be null with
    /// any `len`, which reads as empty).
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller, per this function's contract.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Plugin-allocated output bytes. OWNERSHIP: the plugin's; the host returns it with
/// `free_buf` after copying. `cap` is for the plugin's allocator (C plugins may ignore it).
#[repr(C)]
#[derive(Debug)]
pub struct Buf {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl Buf {
    pub const EMPTY: Buf = Buf {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };
}

/// Callbacks the host gives the plugin at `init`. All are thread-safe, may be called from
/// any thread at any time until `destroy` returns, never block (the host enqueues), and copy
/// the bytes they are given before returning.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostV1 {
    /// Opaque host context, passed back as the first argument of every callback.
    pub ctx: *mut c_void,
    /// One event, as JSON (see `Event` in `types.rs` / the guide).
    pub emit_event: extern "C" fn(ctx: *mut c_void, event_json: Slice),
    /// Output of an open console session: raw bytes, not JSON.
    pub console_output: extern "C" fn(ctx: *mut c_void, session: Slice, data: Slice),
    /// A log line (UTF-8) at one of the `LOG_*` levels.
    pub log: extern "C" fn(ctx: *mut c_void, level: u32, message: Slice),
}

pub type Instance = *mut c_void;

/// The plugin's function table. Every call writes its result to `*out`: JSON on `OK`, a UTF-8
/// message otherwise (possibly empty). Optional calls may be null, which reads as
/// `ERR_UNSUPPORTED`. Calls may arrive concurrently from several host threads.
///
/// Every entry is an `Option` because a C table may hold nulls; the host refuses a plugin
/// whose required entries (`describe`, `init`, `destroy`, `free_buf`, `list_machines`,
/// `bulk_state`, `power`) are null. `Option<extern "C" fn>` has the layout of a nullable C
/// function pointer.
#[repr(C)]
pub struct PluginV1 {
    /// Must equal [`ABI_VERSION`]; read before anything else.
    pub abi_version: u32,
    /// Zero.
    pub reserved: u32,
    /// `{name, version, protocol_version, capabilities[]}`; needs no instance.
    pub describe: Option<extern "C" fn(out: *mut Buf) -> i32>,
    /// Creates the instance from `config` JSON (`{data_dir, settings}`).
    pub init: Option<
        unsafe extern "C" fn(
            config: Slice,
            host: *const HostV1,
            instance: *mut Instance,
            out: *mut Buf,
        ) -> i32,
    >,
    /// Stops the instance; no call or callback follows.
    pub destroy: Option<unsafe extern "C" fn(instance: Instance)>,
    /// Frees a `Buf` this plugin produced.
    pub free_buf: Option<unsafe extern "C" fn(buf: Buf)>,
    /// `[MachineInfo]`.
    pub list_machines: Option<unsafe extern "C" fn(instance: Instance, out: *mut Buf) -> i32>,
    /// `MachineInfo` of one machine (uuid as UTF-8).
    pub get_properties:
        Option<unsafe extern "C" fn(instance: Instance, uuid: Slice, out: *mut Buf) -> i32>,
    /// `[MachineState]` for a JSON array of uuids; an empty array means every machine.
    pub bulk_state:
        Option<unsafe extern "C" fn(instance: Instance, uuids: Slice, out: *mut Buf) -> i32>,
    /// `[MachineDisks]`, same selection rule.
    pub disks: Option<unsafe extern "C" fn(instance: Instance, uuids: Slice, out: *mut Buf) -> i32>,
    /// `[MachineConnections]`, same selection rule.
    pub connections:
        Option<unsafe extern "C" fn(instance: Instance, uuids: Slice, out: *mut Buf) -> i32>,
    /// Starts a `POWER_*` action. Returns once it is under way; progress follows as events.
    pub power: Option<
        unsafe extern "C" fn(instance: Instance, uuid: Slice, action: u32, out: *mut Buf) -> i32,
    >,
    /// Creates a machine from a `CreateSpec`; returns its `MachineInfo` (stopped).
    pub create: Option<unsafe extern "C" fn(instance: Instance, spec: Slice, out: *mut Buf) -> i32>,
    /// Deletes a machine (it need not be stopped first).
    pub delete_machine:
        Option<unsafe extern "C" fn(instance: Instance, uuid: Slice, out: *mut Buf) -> i32>,
    /// Applies a `MetadataUpdate`; returns the new `MachineInfo`.
    pub update_metadata: Option<
        unsafe extern "C" fn(instance: Instance, uuid: Slice, update: Slice, out: *mut Buf) -> i32,
    >,
    /// Opens a console; returns `{"session": "…"}`. Output arrives via `console_output`.
    pub console_open:
        Option<unsafe extern "C" fn(instance: Instance, uuid: Slice, out: *mut Buf) -> i32>,
    /// Sends raw input bytes to a console session.
    pub console_write: Option<
        unsafe extern "C" fn(instance: Instance, session: Slice, data: Slice, out: *mut Buf) -> i32,
    >,
    /// Resizes a console session's terminal.
    pub console_resize: Option<
        unsafe extern "C" fn(
            instance: Instance,
            session: Slice,
            cols: u16,
            rows: u16,
            out: *mut Buf,
        ) -> i32,
    >,
    /// Closes a console session.
    pub console_close:
        Option<unsafe extern "C" fn(instance: Instance, session: Slice, out: *mut Buf) -> i32>,
}

// SAFETY: the table holds only function pointers and integers; it is immutable and the
// functions it points to are thread-safe by the ABI's contract.
unsafe impl Sync for PluginV1 {}
