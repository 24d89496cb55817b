//! Document C on the wire: `/api/v1/agents/ws` (agents, API key in the first message) and
//! the per-server streams `/api/v1/ws/metrics/{server_id}` and `/api/v1/ws/logs/{server_id}`
//! (a JWT in the first message). The state behind them is `crate::agents`.

use std::time::Duration;

use serde_json::{Value, json};

use super::Socket;
use super::conn::{self, CloseWith, Control, Reply, Text, code};
use super::frame::{FrameError, Incoming};
use crate::agents::{StreamKind, error_message, metrics_view, stream_message};
use crate::model::{Permission, now_iso};
use crate::state::AppState;

/// Incoming limit before authentication (contract 7).
const UNAUTHENTICATED_MAX: usize = 4 * 1024;

/// The path's per-server stream, if it is one.
pub fn stream_route(path: &str) -> Option<(String, StreamKind)> {
    let rest = path.strip_prefix("/api/v1/ws/")?;
    let (kind, id) = rest.split_once('/')?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let kind = match kind {
        "metrics" => StreamKind::Metrics,
        "logs" => StreamKind::Logs,
        _ => return None,
    };
    Some((id.to_owned(), kind))
}

pub const AGENT_PATH: &str = "/api/v1/agents/ws";

/// Reads the first message within `agents.auth_timeout`: its JSON, or the close to send.
async fn first_message(
    state: &AppState,
    ws: &mut Socket,
) -> Result<serde_json::Map<String, Value>, (Option<Text>, CloseWith)> {
    ws.set_max_message(UNAUTHENTICATED_MAX);
    let wait = Duration::from_secs(state.config.agents.auth_timeout.max(1));
    let unauthorized = |why: &'static str| CloseWith::new(code::UNAUTHORIZED, why);
    // One deadline for the whole wait: pings do not extend it.
    let deadline = tokio::time::Instant::now() + wait;
    let text = loop {
        match tokio::time::timeout_at(deadline, ws.read()).await {
            Err(_) => return Err((None, unauthorized("authentication timed out"))),
            Ok(Ok(Incoming::Text(t))) => break t,
            Ok(Ok(Incoming::Ping | Incoming::Pong)) => {
                if !matches!(
                    tokio::time::timeout_at(deadline, ws.flush()).await,
                    Ok(Ok(()))
                ) {
                    return Err((None, unauthorized("authentication timed out")));
                }
            }
            Ok(Ok(Incoming::Binary(_))) => {
                return Err((
                    None,
                    CloseWith::new(1003, "binary messages are not accepted"),
                ));
            }
            Ok(Ok(Incoming::Close)) => return Err((None, CloseWith::new(1000, "closed"))),
            Ok(Err(FrameError::TooBig)) => {
                return Err((None, CloseWith::new(code::TOO_BIG, "message too big")));
            }
            Ok(Err(FrameError::Protocol(c, why))) => return Err((None, CloseWith::new(c, why))),
            Ok(Err(_)) => return Err((None, CloseWith::new(1000, "connection failed"))),
        }
    };
    parse_auth(&text).ok_or_else(|| {
        (
            Some(error_message(
                "Authentication required: the first message must be {\"type\":\"auth\", …}",
            )),
            unauthorized("authentication required"),
        )
    })
}

/// The first message of an agent or stream socket: a JSON object of `type` `auth`.
pub fn parse_auth(text: &str) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) if m.get("type").and_then(Value::as_str) == Some("auth") => Some(m),
        _ => None,
    }
}

/// `/api/v1/agents/ws`.
pub async fn serve_agent(
    state: AppState,
    mut ws: Socket,
    unauthenticated: crate::ws::Unauthenticated,
) {
    let first = match first_message(&state, &mut ws).await {
        Ok(m) => m,
        Err((msg, close)) => {
            conn::refuse(ws, msg, close).await;
            return;
        }
    };
    let key = first
        .get("api_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let hash = crate::auth::apikey::hash(&key);
    drop(key);
    let found = state.db.run(move |db| db.server_by_key_hash(&hash)).await;
    drop(unauthenticated);
    let server = match found {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::info!("agent refused: invalid or inactive API key");
            refuse_key(ws).await;
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check an agent's API key");
            conn::refuse(ws, None, CloseWith::new(code::SERVER_ERROR, "server error")).await;
            return;
        }
    };
    let max = usize::try_from(state.config.agents.max_message).unwrap_or(usize::MAX);
    ws.set_max_message(max);
    let ctl = Control::for_config(&state.config.ws);
    let agents = state.agents.clone();
    // The welcome goes first: queued before any job can be.
    ctl.send(Text::from(
        json!({"type": "auth_success", "server_id": server.server_id,
            "message": "Connected successfully"})
        .to_string(),
    ));
    let Some(conn_id) = agents.attach(&server.server_id, ctl.clone()) else {
        refuse_key(ws).await;
        return;
    };
    tracing::info!(
        server_id = server.server_id,
        name = server.name,
        "agent connected"
    );
    let opts = super::options(&state, None);
    let shutdown = state.ws.shutdown.subscribe();
    let c = ctl.clone();
    let id = server.server_id.clone();
    let a = agents.clone();
    conn::run(ws, ctl, opts, shutdown, move |text| {
        if let Some(reply) = a.on_agent_text(&id, text) {
            c.send(reply);
        }
        Reply::Continue
    })
    .await;
    agents.detach(&server.server_id, conn_id);
    tracing::info!(
        server_id = server.server_id,
        name = server.name,
        "agent disconnected"
    );
}

/// Refuses an agent whose API key is unknown or no longer active.
async fn refuse_key(ws: Socket) {
    conn::refuse(
        ws,
        Some(error_message("Invalid or inactive API key")),
        CloseWith::new(code::UNAUTHORIZED, "invalid API key"),
    )
    .await;
}

/// `/api/v1/ws/metrics/{server_id}` and `/api/v1/ws/logs/{server_id}`. The token comes in
/// the first message (document C), or with the request like every other WebSocket
/// (contract 2); a later `auth` message is answered again.
pub async fn serve_stream(
    state: AppState,
    mut ws: Socket,
    server_id: String,
    kind: StreamKind,
    request_credential: super::Credential,
    unauthenticated: crate::ws::Unauthenticated,
) {
    let credential = match request_credential {
        super::Credential::None => match first_message(&state, &mut ws).await {
            Ok(first) => super::Credential::of(&state, first.get("token").and_then(Value::as_str)),
            Err((msg, close)) => {
                conn::refuse(ws, msg, close).await;
                return;
            }
        },
        presented => presented,
    };
    let max = usize::try_from(state.config.ws.max_message).unwrap_or(usize::MAX);
    let ctl = Control::for_config(&state.config.ws);
    // Registered before the user is read, so that a revocation meanwhile is not missed.
    let admitted = super::admit(&state, credential, Some(Permission::ViewAllVms), &ctl).await;
    drop(unauthenticated);
    let (actor, registration) = match admitted {
        Ok(pair) => pair,
        Err(refusal) => {
            refusal
                .refuse(ws, error_message("Invalid or expired token"))
                .await;
            return;
        }
    };
    if !actor.has(Permission::ViewAllVms) {
        conn::refuse(
            ws,
            Some(error_message(
                "Insufficient permissions: this stream needs VIEW_ALL_VMS",
            )),
            CloseWith::new(code::FORBIDDEN, "permission required"),
        )
        .await;
        return;
    }
    let Some(hostname) = state.hosts.hostname(&server_id) else {
        conn::refuse(
            ws,
            Some(error_message("Unknown server")),
            CloseWith::new(4404, "unknown server"),
        )
        .await;
        return;
    };
    ws.set_max_message(max);
    let welcome = Text::from(
        json!({"type": "auth_success", "server_id": server_id, "hostname": hostname,
            "timestamp": now_iso()})
        .to_string(),
    );
    ctl.send(welcome.clone());
    if kind == StreamKind::Metrics
        && let Some(m) = state
            .hosts
            .list()
            .into_iter()
            .find(|h| h.host_id == server_id)
            .and_then(|h| h.metrics)
    {
        ctl.send(stream_message("metrics", &metrics_view(&server_id, &m)));
    }
    let _membership = state.agents.subscribe_stream(&server_id, kind, ctl.clone());
    registration.settle(&state);
    let opts = super::options(&state, Some(actor.claims.exp));
    let shutdown = state.ws.shutdown.subscribe();
    let c = ctl.clone();
    conn::run(ws, ctl, opts, shutdown, move |text| {
        match serde_json::from_str::<Value>(text) {
            Ok(v) if v["type"] == "ping" || v["type"] == "heartbeat" => {
                c.send(stream_message("pong", &json!({})));
            }
            Ok(v) if v["type"] == "auth" => {
                c.send(welcome.clone());
            }
            Ok(Value::Object(_)) => {}
            _ => {
                c.send(error_message("Invalid message format"));
            }
        }
        Reply::Continue
    })
    .await;
}
