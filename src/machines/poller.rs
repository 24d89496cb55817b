//! Background work of the registry: the plugin event pump and, per backend, the bulk polls
//! (state every `machines.dynamic_interval`, connections and a list refresh every
//! `connections_interval`, disks every `disks_interval`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

use super::Machines;
use crate::backends::Backend;
use crate::backends::plugin::PluginMsg;
use crate::config::Config;
use crate::metrics::{Metrics, Poll};

/// Starts the pump and the pollers; they run until the runtime stops.
pub fn spawn(
    machines: Arc<Machines>,
    mut rx: UnboundedReceiver<PluginMsg>,
    config: &Config,
    metrics: &Arc<Metrics>,
) {
    let m = machines.clone();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                PluginMsg::Event { backend, event } => {
                    let changed = match &event {
                        orchard_plugin_api::Event::StateChanged { uuid, .. } => {
                            uuid::Uuid::parse_str(uuid).ok()
                        }
                        _ => None,
                    };
                    m.apply(&backend, event).await;
                    if let Some(uuid) = changed {
                        // Off the pump: a slow backend must not hold up other events.
                        let m = m.clone();
                        tokio::spawn(async move { m.refresh_state(uuid).await });
                    }
                }
                PluginMsg::Console { session, data } => m.console_output(session, data),
            }
        }
    });
    let secs = |s: u64| Duration::from_secs(s.max(1));
    let dynamic = secs(config.machines.dynamic_interval);
    let connections = secs(config.machines.connections_interval);
    let disks = secs(config.machines.disks_interval);
    for backend in machines.backends.loaded.clone() {
        let (m, b, t) = (machines.clone(), backend.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = every(dynamic);
            loop {
                tick.tick().await;
                if b.is_failed() {
                    break;
                }
                timed(&t, &b, Poll::State, m.poll_state(&b)).await;
            }
        });
        let (m, b, t) = (machines.clone(), backend.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = every(connections);
            loop {
                tick.tick().await;
                if b.is_failed() {
                    break;
                }
                m.reconcile(&b).await;
                timed(&t, &b, Poll::Connections, m.poll_connections(&b)).await;
            }
        });
        let (m, b, t) = (machines.clone(), backend, metrics.clone());
        tokio::spawn(async move {
            let mut tick = every(disks);
            loop {
                tick.tick().await;
                if b.is_failed() {
                    break;
                }
                timed(&t, &b, Poll::Disks, m.poll_disks(&b)).await;
            }
        });
    }
}

/// Runs one bulk poll and records its duration and outcome.
async fn timed(metrics: &Metrics, b: &Backend, poll: Poll, run: impl Future<Output = bool>) {
    let started = tokio::time::Instant::now();
    let ok = run.await;
    metrics.poll(b.name(), poll, started.elapsed(), ok);
}

/// An interval whose first tick is one period from now (the initial sync just ran).
fn every(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}
