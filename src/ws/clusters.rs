//! Cluster events (`api-docs/D-cluster-events.md`): `/ws` for requests without a token and
//! `/ws/clusters` with or without one. Notification-only: every event is encoded once and
//! sent to every socket; incoming messages are ignored (over 512 bytes: 1009).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::Socket;
use super::conn::{self, CloseWith, Control, Reply, Text, code};
use crate::clusters::{ClusterEvent, Clusters};
use crate::state::AppState;

/// Whether tokenless access is on: configured, else on for a loopback listener.
pub fn anonymous_allowed(state: &AppState) -> bool {
    state
        .config
        .clusters
        .anonymous_events
        .unwrap_or_else(|| state.local_addr.ip().is_loopback())
}

#[derive(Default)]
pub struct Hub {
    subs: Mutex<HashMap<u64, Arc<Control>>>,
    next: AtomicU64,
}

struct Membership {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}

fn encode(e: &ClusterEvent) -> Text {
    Text::from(serde_json::json!({"type": e.kind, "data": {"name": e.name}}).to_string())
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Control>>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards cluster events to every socket.
    pub fn start(self: &Arc<Self>, clusters: &Arc<Clusters>) {
        let hub = self.clone();
        let mut rx = clusters.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let msg = encode(&e);
                        for ctl in hub.lock().values() {
                            ctl.send(msg.clone());
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "cluster event stream fell behind");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    fn join(self: &Arc<Self>, ctl: Arc<Control>) -> Membership {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, ctl);
        Membership {
            hub: self.clone(),
            id,
        }
    }
}

/// Serves one cluster-events socket. `token`: absent for anonymous access; present (even
/// empty) on `/ws/clusters` means it must be valid. An anonymous socket keeps its place
/// (`unauthenticated`, among the anonymous sockets) for as long as it is open.
pub async fn serve(
    state: AppState,
    ws: Socket,
    credential: super::Credential,
    unauthenticated: crate::ws::Unauthenticated,
) {
    let ctl = Control::for_config(&state.config.ws);
    let admitted = match credential {
        super::Credential::None if anonymous_allowed(&state) => None,
        super::Credential::None => {
            drop(unauthenticated);
            conn::refuse(
                ws,
                Some(super::auth_failed()),
                CloseWith::new(code::UNAUTHORIZED, "authentication required"),
            )
            .await;
            return;
        }
        c => match super::admit(&state, c, None, &ctl).await {
            Ok(a) => Some(a),
            Err(refusal) => {
                drop(unauthenticated);
                conn::refuse(ws, None, refusal.close()).await;
                return;
            }
        },
    };
    let _anonymous = if admitted.is_some() {
        drop(unauthenticated);
        None
    } else {
        Some(unauthenticated)
    };
    let exp = admitted.as_ref().map(|(actor, _)| actor.claims.exp);
    let _membership = state.clusters_hub.join(ctl.clone());
    let c = &state.config.clusters;
    let opts = conn::Options {
        ping_interval: Duration::from_secs(c.ping_interval.max(1)),
        idle_timeout: Duration::from_secs(c.pong_wait.max(1)),
        write_deadline: Duration::from_secs(c.write_deadline.max(1)),
        expires_at: exp.map(super::instant_of),
        farewell: None,
    };
    let shutdown = state.ws.shutdown.subscribe();
    conn::run(ws, ctl, opts, shutdown, |_| Reply::Continue).await;
}
