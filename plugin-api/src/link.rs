//! What a backend that talks to an engine (a hypervisor, a container engine) shares between
//! its calls and the thread or task that keeps the engine connected: the [`Connection`] (the
//! live link, or why there is none) and the [`Reporter`] (log lines under the backend's name,
//! events until it stops, `state_changed` only when the status changed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::{Event, Host, LogLevel, MachineStatus, PluginError, PluginResult};

/// The live link to the engine, or why there is none.
pub struct Connection<L> {
    link: RwLock<Option<Arc<L>>>,
    down: Mutex<String>,
}

impl<L> Connection<L> {
    /// No link yet, for this reason.
    pub fn new(why: impl Into<String>) -> Self {
        Self {
            link: RwLock::new(None),
            down: Mutex::new(why.into()),
        }
    }

    /// The live link; without one, a `Failed` error that `explain` words from why it is down.
    pub fn get(&self, explain: impl FnOnce(&str) -> String) -> PluginResult<Arc<L>> {
        match self.current() {
            Some(l) => Ok(l),
            None => Err(PluginError::Failed(explain(&self.why()))),
        }
    }

    pub fn current(&self) -> Option<Arc<L>> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why there is no link (the last failure).
    pub fn why(&self) -> String {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Connected: calls use `link` from now on.
    pub fn up(&self, link: Arc<L>) {
        *self.link.write().unwrap_or_else(PoisonError::into_inner) = Some(link);
    }

    /// An attempt to connect failed: why (what calls report until one succeeds).
    pub fn failed(&self, why: impl Into<String>) {
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = why.into();
    }

    /// The link was lost: records why and takes the link out, if `is_it` says the current one
    /// is the one lost (a newer link stays). Returns the link taken out, for the caller to drop
    /// when it is ready to.
    pub fn lost(&self, why: impl Into<String>, is_it: impl FnOnce(&L) -> bool) -> Option<Arc<L>> {
        self.failed(why);
        let mut w = self.link.write().unwrap_or_else(PoisonError::into_inner);
        if w.as_deref().is_some_and(is_it) {
            w.take()
        } else {
            None
        }
    }

    /// Takes the link out (the backend stops).
    pub fn close(&self) -> Option<Arc<L>> {
        self.link
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// How a backend reports to the host.
pub struct Reporter {
    host: Host,
    name: &'static str,
    stopped: AtomicBool,
}

impl Reporter {
    /// Reports for the backend `name` (the prefix of its log lines).
    pub fn new(host: Host, name: &'static str) -> Self {
        Self {
            host,
            name,
            stopped: AtomicBool::new(false),
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        self.host.log(level, &format!("{}: {message}", self.name));
    }

    /// Sends one event; nothing once the backend stopped.
    pub fn emit(&self, event: &Event) {
        if !self.is_stopped() {
            self.host.emit(event);
        }
    }

    /// Sends `state_changed` unless `status` is `last`, the status last reported for the
    /// machine (kept by the caller, updated here); true when it changed.
    pub fn status(
        &self,
        last: &mut Option<MachineStatus>,
        uuid: &str,
        status: MachineStatus,
    ) -> bool {
        if *last == Some(status) {
            return false;
        }
        *last = Some(status);
        self.emit(&Event::StateChanged {
            uuid: uuid.to_owned(),
            status,
        });
        true
    }

    /// Marks the backend stopped; true the first time only.
    pub fn stop(&self) -> bool {
        !self.stopped.swap(true, Ordering::SeqCst)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_link_is_taken_out_only_if_it_is_the_current_one() {
        let c: Connection<u32> = Connection::new("not connected yet");
        assert_eq!(
            c.get(|why| format!("down: {why}")),
            Err(PluginError::Failed("down: not connected yet".into()))
        );
        c.up(Arc::new(1));
        assert_eq!(c.get(|_| String::new()).map(|l| *l), Ok(1));
        // A newer link (2) replaced 1: losing 1 leaves 2 in place.
        c.up(Arc::new(2));
        assert!(c.lost("1 went away", |l| *l == 1).is_none());
        assert_eq!(c.current().map(|l| *l), Some(2));
        assert_eq!(c.lost("2 went away", |l| *l == 2).map(|l| *l), Some(2));
        assert_eq!(
            c.get(|why| why.to_owned()),
            Err(PluginError::Failed("2 went away".into()))
        );
        c.failed("refused");
        assert_eq!(c.why(), "refused");
        c.up(Arc::new(3));
        assert_eq!(c.close().map(|l| *l), Some(3));
        assert!(c.current().is_none());
    }
}
