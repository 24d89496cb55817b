//! The parts of libvirt the `virt` crate has no safe wrapper for, wrapped once here: the
//! default event loop's thread, domain lifecycle events, bulk domain statistics and
//! non-blocking console streams. Every `unsafe` block in the plugin lives in this file.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// The libvirt error of the calling thread, as text.
pub fn last_error() -> String {
    virt::error::Error::last_error().message().to_owned()
}

// ---- the event loop ----

/// Registers libvirt's default event implementation once per process (it must happen
/// before the first connection is opened) and silences libvirt's own error printing.
pub fn register_event_impl() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl()
                .map_err(|e| format!("cannot register libvirt's event loop: {e}"))
        })
        .clone()
}

struct Loop {
    users: usize,
    thread: Option<JoinHandle<()>>,
}

static LOOP: Mutex<Loop> = Mutex::new(Loop {
    users: 0,
    thread: None,
});
static LOOP_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Removes the one-shot wake-up timer as soon as it fires.
unsafe extern "C" fn wake_fired(timer: c_int, _opaque: *mut c_void) {
    // SAFETY: `timer` is the id libvirt passes for this very timer; removing a timer from
    // inside its own callback is allowed.
    unsafe {
        sys::virEventRemoveTimeout(timer);
    }
}

/// Makes one pass of the event loop return (it re-checks its stop flag then).
fn wake_loop() {
    // SAFETY: the callback matches `virEventTimeoutCallback`, takes no opaque data (null,
    // nothing to free), and the default implementation is registered before any loop runs.
    unsafe {
        sys::virEventAddTimeout(0, Some(wake_fired), std::ptr::null_mut(), None);
    }
}

/// Takes a share of the process-wide event loop thread, starting it for the first user.
pub fn loop_acquire() -> Result<(), String> {
    register_event_impl()?;
    let mut l = LOOP.lock().unwrap_or_else(PoisonError::into_inner);
    if l.users == 0 {
        // A previous thread may still be winding down.
        if let Some(t) = l.thread.take() {
            let _ = t.join();
        }
        LOOP_STOP.store(false, std::sync::atomic::Ordering::SeqCst);
        let thread = std::thread::Builder::new()
            .name("orchard-libvirt-events".into())
            .spawn(|| {
                while !LOOP_STOP.load(std::sync::atomic::Ordering::SeqCst) {
                    if virt::event::event_run_default_impl().is_err() {
                        // Never spin on a broken loop.
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            })
            .map_err(|e| format!("cannot start libvirt's event thread: {e}"))?;
        l.thread = Some(thread);
    }
    l.users += 1;
    Ok(())
}

/// Gives a share back; the last user stops and joins the thread.
pub fn loop_release() {
    let thread = {
        let mut l = LOOP.lock().unwrap_or_else(PoisonError::into_inner);
        l.users = l.users.saturating_sub(1);
        if l.users > 0 {
            return;
        }
        LOOP_STOP.store(true, std::sync::atomic::Ordering::SeqCst);
        l.thread.take()
    };
    wake_loop();
    if let Some(t) = thread {
        let _ = t.join();
    }
}

// ---- domain lifecycle events ----

/// One lifecycle event, as libvirt reported it.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    pub uuid: String,
    pub event: i32,
    pub detail: i32,
}

/// The uuid of a domain handle libvirt gave us (no round trip: it is cached in the handle).
///
/// # Safety
/// `dom` must be a valid domain pointer for the duration of the call.
unsafe fn uuid_of(dom: sys::virDomainPtr) -> Option<String> {
    let mut buf = [0 as c_char; 64];
    // SAFETY: the caller guarantees `dom`; the buffer exceeds VIR_UUID_STRING_BUFLEN (37).
    let rc = unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) };
    if rc < 0 {
        return None;
    }
    // SAFETY: on success libvirt wrote a NUL-terminated string into `buf`.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// libvirt's `virConnectDomainEventCallback`, the lifecycle signature.
unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the `Box<LifecycleSink>` leaked by `register_lifecycle`; libvirt
    // frees it (through `free_sink`) only after the last callback has returned.
    let sink = unsafe { &*(opaque as *const LifecycleSink) };
    // SAFETY: libvirt passes a domain valid for the duration of the callback.
    if let Some(uuid) = unsafe { uuid_of(dom) } {
        sink(Lifecycle {
            uuid,
            event,
            detail,
        });
    }
}

/// Where lifecycle events go (called on the event loop thread; must not block).
pub type LifecycleSink = Box<dyn Fn(Lifecycle) + Send + Sync>;

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: `opaque` is the box leaked by `register_lifecycle`, freed exactly once here.
    drop(unsafe { Box::from_raw(opaque as *mut LifecycleSink) });
}

/// Registers for every domain's lifecycle events on `conn`; they go to `sink`, on the event
/// loop thread. Returns the callback id for [`deregister`].
pub fn register_lifecycle(conn: &Connect, sink: LifecycleSink) -> Result<i32, String> {
    type LifecycleFn =
        unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void);
    type GenericFn = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    let opaque = Box::into_raw(Box::new(sink)) as *mut c_void;
    // SAFETY: this is libvirt's VIR_DOMAIN_EVENT_CALLBACK cast: for
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE libvirt calls the function with the lifecycle signature,
    // which `lifecycle_cb` has; both are `extern "C"` function pointers of the same size.
    let generic = unsafe { std::mem::transmute::<LifecycleFn, GenericFn>(lifecycle_cb) };
    // SAFETY: `conn` is open (its pointer lives as long as `conn`); the callback and the free
    // function match their C types; ownership of `opaque` passes to libvirt on success.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(generic),
            opaque,
            Some(free_sink),
        )
    };
    if id < 0 {
        let e = last_error();
        // SAFETY: registration failed, so libvirt did not take `opaque`: free it here, once.
        drop(unsafe { Box::from_raw(opaque as *mut LifecycleSink) });
        return Err(e);
    }
    Ok(id)
}

/// Removes a callback registered by [`register_lifecycle`].
pub fn deregister(conn: &Connect, id: i32) {
    // SAFETY: `conn` is open and `id` came from `register_lifecycle` on it; an id that is
    // already gone only makes libvirt return an error.
    unsafe {
        sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
    }
}

// ---- bulk statistics ----

/// A typed parameter's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Double(f64),
    Bool(bool),
    Str(String),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(i) => u64::try_from(i).ok(),
            Value::UInt(u) => Some(u),
            Value::Double(d) if d >= 0.0 => Some(d as u64),
            _ => None,
        }
    }
}

/// One domain's statistics: its uuid and its `field → value` parameters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub uuid: String,
    pub params: HashMap<String, Value>,
}

impl Stats {
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.params.get(key).and_then(Value::as_u64)
    }
}

/// `virConnectGetAllDomainStats(stats, flags)`, every record copied out and the list freed.
pub fn all_domain_stats(conn: &Connect, stats: u32, flags: u32) -> Result<Vec<Stats>, String> {
    let mut list: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is open; libvirt allocates the NULL-terminated array into `list`.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut list, flags) };
    if n < 0 {
        return Err(last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` valid record pointers in `list`.
        let rec = unsafe { *list.add(i) };
        if rec.is_null() {
            continue;
        }
        // SAFETY: `rec` is a valid record until the list is freed below.
        let (dom, params, nparams) = unsafe { ((*rec).dom, (*rec).params, (*rec).nparams) };
        // SAFETY: the record's domain is valid until the list is freed.
        let Some(uuid) = (unsafe { uuid_of(dom) }) else {
            continue;
        };
        let mut map = HashMap::new();
        for j in 0..nparams.max(0) as usize {
            // SAFETY: `params` holds `nparams` typed parameters.
            let p = unsafe { &*params.add(j) };
            // SAFETY: `field` is a NUL-terminated array of VIR_TYPED_PARAM_FIELD_LENGTH.
            let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: the union member read is the one `type_` names.
            let value = unsafe {
                match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => Value::Int(i64::from(p.value.i)),
                    sys::VIR_TYPED_PARAM_UINT => Value::UInt(u64::from(p.value.ui)),
                    sys::VIR_TYPED_PARAM_LLONG => Value::Int(p.value.l),
                    sys::VIR_TYPED_PARAM_ULLONG => Value::UInt(p.value.ul),
                    sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
                    sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
                    sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                        Value::Str(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                    }
                    _ => continue,
                }
            };
            map.insert(field, value);
        }
        out.push(Stats { uuid, params: map });
    }
    if !list.is_null() {
        // SAFETY: `list` came from virConnectGetAllDomainStats and is freed exactly once.
        unsafe { sys::virDomainStatsRecordListFree(list) };
    }
    Ok(out)
}

// ---- console streams ----

/// What a stream callback reports.
pub enum StreamEvent {
    Data(Vec<u8>),
    /// The stream can take the bytes that were waiting.
    Writable,
    /// End of stream or an error: the session is over.
    Closed,
}

type StreamHandler = Box<dyn Fn(StreamEvent) + Send + Sync>;

/// The callback's data: the handler for one stream.
struct StreamCtx {
    handler: StreamHandler,
}

/// A non-blocking stream attached to a domain console. Dropping it removes the callback,
/// aborts and frees the stream.
pub struct ConsoleStream {
    ptr: sys::virStreamPtr,
}

// SAFETY: libvirt streams may be used from any thread (calls on one stream are serialised
// by its own lock); the callback context is only read through shared references.
unsafe impl Send for ConsoleStream {}
// SAFETY: as above; `send` takes `&self` and libvirt locks the stream internally.
unsafe impl Sync for ConsoleStream {}

const EV_READ: c_int = sys::VIR_STREAM_EVENT_READABLE as c_int;
const EV_WRITE: c_int = sys::VIR_STREAM_EVENT_WRITABLE as c_int;
const EV_END: c_int = (sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP) as c_int;

unsafe extern "C" fn free_stream_ctx(opaque: *mut c_void) {
    // SAFETY: `opaque` is the box leaked by `ConsoleStream::open`; libvirt calls this once,
    // when the callback is removed and no longer running.
    drop(unsafe { Box::from_raw(opaque as *mut StreamCtx) });
}

unsafe extern "C" fn stream_cb(st: sys::virStreamPtr, events: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `StreamCtx` given to libvirt with this callback; libvirt frees
    // it (through `free_stream_ctx`) only once the callback is gone.
    let ctx = unsafe { &*(opaque as *const StreamCtx) };
    if events & EV_WRITE != 0 {
        (ctx.handler)(StreamEvent::Writable);
    }
    if events & EV_READ != 0 {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: libvirt passes a stream valid for the duration of the callback; `buf`
            // is a writable buffer of the length given.
            let n = unsafe { sys::virStreamRecv(st, buf.as_mut_ptr() as *mut c_char, buf.len()) };
            match n {
                -2 => break,
                n if n > 0 => {
                    let got = buf.get(..n as usize).unwrap_or_default();
                    (ctx.handler)(StreamEvent::Data(got.to_vec()));
                    if (n as usize) < buf.len() {
                        break;
                    }
                }
                _ => {
                    (ctx.handler)(StreamEvent::Closed);
                    return;
                }
            }
        }
    }
    if events & EV_END != 0 {
        (ctx.handler)(StreamEvent::Closed);
    }
}

/// How a write to a stream went.
pub enum Sent {
    /// This many bytes were taken (maybe fewer than given).
    Bytes(usize),
    /// The stream is full now; try again when it is writable.
    WouldBlock,
}

impl ConsoleStream {
    /// Opens `dom`'s console (`dev`: its alias, or the first console) on a new non-blocking
    /// stream; `handler` runs on libvirt's event thread for output and for the end.
    pub fn open(
        conn: &Connect,
        dom: &Domain,
        dev: Option<&str>,
        handler: StreamHandler,
    ) -> Result<Self, String> {
        // SAFETY: `conn` is open; the flag asks for a non-blocking stream.
        let ptr = unsafe { sys::virStreamNew(conn.as_ptr(), sys::VIR_STREAM_NONBLOCK) };
        if ptr.is_null() {
            return Err(last_error());
        }
        let dev = match dev.map(std::ffi::CString::new).transpose() {
            Ok(d) => d,
            Err(_) => {
                // SAFETY: `ptr` is the stream created above, freed once.
                unsafe { sys::virStreamFree(ptr) };
                return Err("console device name contains NUL".into());
            }
        };
        let dev_ptr = dev.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
        // SAFETY: `dom` and `ptr` are valid; `dev_ptr` is NULL or a NUL-terminated string
        // that outlives the call. FORCE takes the console over from a stale session.
        let rc = unsafe {
            sys::virDomainOpenConsole(dom.as_ptr(), dev_ptr, ptr, sys::VIR_DOMAIN_CONSOLE_FORCE)
        };
        if rc < 0 {
            let e = last_error();
            // SAFETY: the stream was never attached; freed once.
            unsafe { sys::virStreamFree(ptr) };
            return Err(e);
        }
        let ctx = Box::into_raw(Box::new(StreamCtx { handler }));
        // SAFETY: `ptr` is an open stream; on success libvirt owns `ctx` and frees it with
        // `free_stream_ctx` when the callback is removed.
        let rc = unsafe {
            sys::virStreamEventAddCallback(
                ptr,
                EV_READ | EV_END,
                Some(stream_cb),
                ctx.cast(),
                Some(free_stream_ctx),
            )
        };
        if rc < 0 {
            let e = last_error();
            // SAFETY: the callback was not added, so nothing else refers to `ctx` or the
            // stream; each is freed once.
            unsafe {
                drop(Box::from_raw(ctx));
                sys::virStreamAbort(ptr);
                sys::virStreamFree(ptr);
            }
            return Err(e);
        }
        Ok(Self { ptr })
    }

    /// Sends bytes without blocking.
    pub fn send(&self, data: &[u8]) -> Result<Sent, String> {
        // SAFETY: the stream is open while `self` lives; `data` is readable for its length.
        let n = unsafe { sys::virStreamSend(self.ptr, data.as_ptr() as *const c_char, data.len()) };
        match n {
            -2 => Ok(Sent::WouldBlock),
            n if n >= 0 => Ok(Sent::Bytes(n as usize)),
            _ => Err(last_error()),
        }
    }

    /// Asks (or stops asking) for a `Writable` event.
    pub fn want_writable(&self, want: bool) {
        let events = if want {
            EV_READ | EV_END | EV_WRITE
        } else {
            EV_READ | EV_END
        };
        // SAFETY: the stream is open and has our callback while `self` lives.
        unsafe {
            sys::virStreamEventUpdateCallback(self.ptr, events);
        }
    }
}

impl Drop for ConsoleStream {
    fn drop(&mut self) {
        // SAFETY: the callback is removed (libvirt then frees its context), the stream is
        // aborted and our reference dropped; each happens once.
        unsafe {
            sys::virStreamEventRemoveCallback(self.ptr);
            sys::virStreamAbort(self.ptr);
            sys::virStreamFree(self.ptr);
        }
    }
}
