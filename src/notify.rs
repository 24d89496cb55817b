//! The service manager's notification protocol (sd_notify): `READY=1` once the listener and
//! the plugins are up, `STOPPING=1` when shutdown begins, and `WATCHDOG=1` pings when the
//! unit sets `WatchdogSec=`. Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager start-up is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its period, from the async runtime (so a wedged runtime stops
/// the pings and the service manager restarts the daemon). Nothing when no watchdog is set.
pub fn start_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled().filter(|p| !p.is_zero()) else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(1));
    tracing::debug!(
        period_ms = period.as_millis(),
        "service manager watchdog enabled"
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                tracing::debug!(error = %e, "cannot ping the service manager's watchdog");
            }
        }
    });
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
