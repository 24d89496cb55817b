//! The `extern "C"` shims behind [`crate::export_backend!`]. Every shim catches panics: a
//! panic poisons the instance, the call returns `ERR_POISONED`, and so does every later call
//! (fail closed). Nothing here may unwind across the boundary.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{self, Buf, HostV1, Instance, PluginV1, Slice};
use crate::{Backend, Host, InitConfig, PluginError, PowerAction};

struct Wrapped<B> {
    backend: B,
    poisoned: AtomicBool,
}

/// The function table for `B`.
pub const fn table<B: Backend>() -> PluginV1 {
    PluginV1 {
        abi_version: abi::ABI_VERSION,
        reserved: 0,
        describe: Some(describe::<B>),
        init: Some(init::<B>),
        destroy: Some(destroy::<B>),
        free_buf: Some(free_buf),
        list_machines: Some(list_machines::<B>),
        get_properties: Some(get_properties::<B>),
        bulk_state: Some(bulk_state::<B>),
        disks: Some(disks::<B>),
        connections: Some(connections::<B>),
        power: Some(power::<B>),
        create: Some(create::<B>),
        delete_machine: Some(delete_machine::<B>),
        update_metadata: Some(update_metadata::<B>),
        console_open: Some(console_open::<B>),
        console_write: Some(console_write::<B>),
        console_resize: Some(console_resize::<B>),
        console_close: Some(console_close::<B>),
    }
}

/// Hands `bytes` to the host through `out`.
fn put(out: *mut Buf, bytes: Vec<u8>) {
    if out.is_null() {
        return;
    }
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    let buf = Buf {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    };
    // SAFETY: `out` is non-null and points to a `Buf` the host owns for this call.
    unsafe { out.write(buf) };
}

unsafe extern "C" fn free_buf(buf: Buf) {
    if buf.ptr.is_null() {
        return;
    }
    // SAFETY: `buf` came from `put`, which leaked a `Vec<u8>` with exactly these parts, and
    // the host returns each buffer once.
    drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("plugin panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("plugin panicked: {s}")
    } else {
        "plugin panicked".to_owned()
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, PluginError> {
    serde_json::to_vec(value).map_err(|e| PluginError::Failed(format!("encoding failed: {e}")))
}

fn parse<T: DeserializeOwned>(s: Slice) -> Result<T, PluginError> {
    // SAFETY: the host passes a slice valid for the duration of the call.
    let bytes = unsafe { s.as_bytes() };
    serde_json::from_slice(bytes)
        .map_err(|e| PluginError::InvalidArgument(format!("bad request: {e}")))
}

fn text(s: Slice) -> Result<String, PluginError> {
    // SAFETY: the host passes a slice valid for the duration of the call.
    let bytes = unsafe { s.as_bytes() };
    String::from_utf8(bytes.to_vec()).map_err(|_| PluginError::InvalidArgument("not UTF-8".into()))
}

/// Runs `f` on the instance behind `inst` with the poison and panic guards.
fn guarded<B: Backend>(
    inst: Instance,
    out: *mut Buf,
    f: impl FnOnce(&B) -> Result<Vec<u8>, PluginError>,
) -> i32 {
    if inst.is_null() {
        put(out, b"null instance".to_vec());
        return abi::ERR_INVALID_ARGUMENT;
    }
    // SAFETY: the host passes back the pointer `init` produced from `Box<Wrapped<B>>`, and
    // does not use it after `destroy`.
    let wrapped = unsafe { &*(inst as *const Wrapped<B>) };
    if wrapped.poisoned.load(Ordering::Acquire) {
        put(
            out,
            b"plugin instance is poisoned by an earlier panic".to_vec(),
        );
        return abi::ERR_POISONED;
    }
    match catch_unwind(AssertUnwindSafe(|| f(&wrapped.backend))) {
        Ok(Ok(bytes)) => {
            put(out, bytes);
            abi::OK
        }
        Ok(Err(e)) => {
            put(out, e.message().as_bytes().to_vec());
            e.code()
        }
        Err(payload) => {
            wrapped.poisoned.store(true, Ordering::Release);
            put(out, panic_message(payload.as_ref()).into_bytes());
            abi::ERR_POISONED
        }
    }
}

extern "C" fn describe<B: Backend>(out: *mut Buf) -> i32 {
    match catch_unwind(|| json(&B::describe())) {
        Ok(Ok(bytes)) => {
            put(out, bytes);
            abi::OK
        }
        Ok(Err(e)) => {
            put(out, e.message().as_bytes().to_vec());
            e.code()
        }
        Err(payload) => {
            put(out, panic_message(payload.as_ref()).into_bytes());
            abi::ERR_POISONED
        }
    }
}

unsafe extern "C" fn init<B: Backend>(
    config: Slice,
    host: *const HostV1,
    instance: *mut Instance,
    out: *mut Buf,
) -> i32 {
    if host.is_null() || instance.is_null() {
        put(out, b"null host or instance pointer".to_vec());
        return abi::ERR_INVALID_ARGUMENT;
    }
    // SAFETY: `host` is non-null and the host keeps the table valid until `destroy`.
    let raw = unsafe { *host };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let config: InitConfig = parse(config)?;
        // SAFETY: `raw` is the table given to `init`, used only until `destroy`.
        let host = unsafe { Host::from_raw(raw) };
        B::init(config, host)
    }));
    match result {
        Ok(Ok(backend)) => {
            let wrapped = Box::new(Wrapped {
                backend,
                poisoned: AtomicBool::new(false),
            });
            // SAFETY: `instance` is non-null and points to host-owned storage for the result.
            unsafe { instance.write(Box::into_raw(wrapped) as *mut c_void) };
            abi::OK
        }
        Ok(Err(e)) => {
            put(out, e.message().as_bytes().to_vec());
            e.code()
        }
        Err(payload) => {
            put(out, panic_message(payload.as_ref()).into_bytes());
            abi::ERR_POISONED
        }
    }
}

unsafe extern "C" fn destroy<B: Backend>(inst: Instance) {
    if inst.is_null() {
        return;
    }
    // SAFETY: `inst` came from `Box::into_raw` in `init` and the host destroys it once.
    let wrapped = unsafe { Box::from_raw(inst as *mut Wrapped<B>) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        if !wrapped.poisoned.load(Ordering::Acquire) {
            wrapped.backend.shutdown();
        }
        drop(wrapped);
    }));
}

unsafe extern "C" fn list_machines<B: Backend>(inst: Instance, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| json(&b.list_machines()?))
}

unsafe extern "C" fn get_properties<B: Backend>(inst: Instance, uuid: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| json(&b.get_properties(&text(uuid)?)?))
}

unsafe extern "C" fn bulk_state<B: Backend>(inst: Instance, uuids: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| {
        let uuids: Vec<String> = parse(uuids)?;
        json(&b.bulk_state(&uuids)?)
    })
}

unsafe extern "C" fn disks<B: Backend>(inst: Instance, uuids: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| {
        let uuids: Vec<String> = parse(uuids)?;
        json(&b.disks(&uuids)?)
    })
}

unsafe extern "C" fn connections<B: Backend>(inst: Instance, uuids: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| {
        let uuids: Vec<String> = parse(uuids)?;
        json(&b.connections(&uuids)?)
    })
}

unsafe extern "C" fn power<B: Backend>(
    inst: Instance,
    uuid: Slice,
    action: u32,
    out: *mut Buf,
) -> i32 {
    guarded::<B>(inst, out, |b| {
        let action = PowerAction::from_raw(action).ok_or_else(|| {
            PluginError::InvalidArgument(format!("unknown power action {action}"))
        })?;
        b.power(&text(uuid)?, action)?;
        Ok(Vec::new())
    })
}

unsafe extern "C" fn create<B: Backend>(inst: Instance, spec: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| json(&b.create(parse(spec)?)?))
}

unsafe extern "C" fn delete_machine<B: Backend>(inst: Instance, uuid: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| {
        b.delete(&text(uuid)?)?;
        Ok(Vec::new())
    })
}

unsafe extern "C" fn update_metadata<B: Backend>(
    inst: Instance,
    uuid: Slice,
    update: Slice,
    out: *mut Buf,
) -> i32 {
    guarded::<B>(inst, out, |b| {
        json(&b.update_metadata(&text(uuid)?, parse(update)?)?)
    })
}

unsafe extern "C" fn console_open<B: Backend>(inst: Instance, uuid: Slice, out: *mut Buf) -> i32 {
    guarded::<B>(inst, out, |b| json(&b.console_open(&text(uuid)?)?))
}

unsafe extern "C" fn console_write<B: Backend>(
    inst: Instance,
    session: Slice,
    data: Slice,
    out: *mut Buf,
) -> i32 {
    guarded::<B>(inst, out, |b| {
        // SAFETY: the host passes a slice valid for the duration of the call.
        let data = unsafe { data.as_bytes() };
        b.console_write(&text(session)?, data)?;
        Ok(Vec::new())
    })
}

unsafe extern "C" fn console_resize<B: Backend>(
    inst: Instance,
    session: Slice,
    cols: u16,
    rows: u16,
    out: *mut Buf,
) -> i32 {
    guarded::<B>(inst, out, |b| {
        b.console_resize(&text(session)?, cols, rows)?;
        Ok(Vec::new())
    })
}

unsafe extern "C" fn console_close<B: Backend>(
    inst: Instance,
    session: Slice,
    out: *mut Buf,
) -> i32 {
    guarded::<B>(inst, out, |b| {
        b.console_close(&text(session)?)?;
        Ok(Vec::new())
    })
}
