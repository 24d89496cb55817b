//! WebSockets: the upgrade (our own, through hyper and tokio-tungstenite, so that every
//! socket gets small buffers), the Origin check, token extraction, the registry of live
//! sockets used for revocation, and one module per API over the connection core.

pub mod agents;
pub mod channels;
pub mod clusters;
pub mod conn;
pub mod frame;
pub mod machines;
pub mod vms;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use uuid::Uuid;
use warp::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use warp::reply::Response;

use crate::auth::{self, Actor};
use crate::error::Error;
use crate::model::{Permission, User};
use crate::state::AppState;
use conn::{CloseWith, Control, code};

pub type Socket = frame::WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether this request is a WebSocket upgrade for one of our WebSocket paths.
pub fn claims<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    let ours = path == "/ws"
        || path.starts_with("/ws/")
        || path == agents::AGENT_PATH
        || path.starts_with("/api/v1/ws/");
    ours && is_upgrade(req.headers())
}

fn is_upgrade(h: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// The origins a browser page of ours can have: the configured public URL, the listen
/// address, and on loopback the usual local names. Never derived from `Host`.
pub fn own_origins(state: &AppState) -> Vec<String> {
    let addr = state.local_addr;
    let scheme = if state.config.tls_enabled() {
        "https"
    } else {
        "http"
    };
    let mut v = vec![format!("{scheme}://{addr}")];
    if let Some(url) = &state.config.http.public_url {
        v.push(url.trim_end_matches('/').to_owned());
    }
    if addr.ip().is_loopback() {
        let port = addr.port();
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            v.push(format!("{scheme}://{host}:{port}"));
        }
    }
    v.extend(
        state
            .config
            .http
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_owned()),
    );
    v
}

fn origin_allowed(state: &AppState, h: &HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    own_origins(state)
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
}

/// The token of a WebSocket request: `?access_token=`, `?token=`, or `Authorization: Bearer`.
/// `Some("")` when a token parameter or header is present but empty.
pub fn request_token(query: Option<&str>, h: &HeaderMap) -> Option<String> {
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "access_token" || k == "token" {
                return Some(v.into_owned());
            }
        }
    }
    if h.contains_key(header::AUTHORIZATION) {
        return Some(auth::bearer(h).unwrap_or("").to_owned());
    }
    None
}

fn error_response(e: &Error) -> Response {
    crate::api::error_response(e)
}

/// Handles an upgrade request claimed by [`claims`].
pub async fn upgrade(state: AppState, mut req: Request<Incoming>, peer: SocketAddr) -> Response {
    let path = req.uri().path().to_owned();
    let token = request_token(req.uri().query(), req.headers());
    let Some(endpoint) = Endpoint::of(&path, token.is_some()) else {
        return error_response(&Error::not_found(format!("no WebSocket endpoint {path}")));
    };
    if req.method() != warp::http::Method::GET {
        return error_response(&Error::MethodNotAllowed {
            allow: "GET".into(),
        });
    }
    let h = req.headers();
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return error_response(&Error::bad_request("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return error_response(&Error::bad_request("Sec-WebSocket-Key is missing"));
    };
    if !origin_allowed(&state, h) {
        return error_response(&Error::forbidden(
            "this Origin may not open WebSockets here",
        ));
    }
    // At most `ws.max_unauthenticated` sockets may be between upgrade and authentication.
    let Ok(unauth) = state.ws.unauthenticated.clone().try_acquire_owned() else {
        return error_response(&Error::Busy(
            "too many unauthenticated WebSockets; retry".into(),
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let query = req.uri().query().map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = state.ws.tasks.clone();
    let fut = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "websocket upgrade failed");
                return;
            }
        };
        let max = match endpoint {
            Endpoint::Clusters { .. } => state.config.clusters.max_message,
            Endpoint::Agent => state.config.agents.max_message,
            _ => state.config.ws.max_message,
        };
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let ws = frame::WebSocket::new(TokioIo::new(upgraded), max);
        match endpoint {
            Endpoint::Machines(kind) => {
                machines::serve(state, ws, kind, token, query, unauth).await;
            }
            Endpoint::Vms(name, kind) => vms::serve(state, ws, name, kind, token, unauth).await,
            Endpoint::Clusters { with_token } => {
                let token = if with_token { token } else { None };
                clusters::serve(state, ws, token, unauth).await;
            }
            Endpoint::Channels => channels::serve(state, ws, token, unauth).await,
            Endpoint::Agent => agents::serve_agent(state, ws, unauth).await,
            Endpoint::ServerStream(id, kind) => {
                agents::serve_stream(state, ws, id, kind, token, unauth).await;
            }
        }
    };
    tracker.spawn(fut);
    let mut r = Response::new(Bytes::new().into());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The WebSocket endpoints.
#[derive(Clone, Debug)]
enum Endpoint {
    Machines(machines::Kind),
    Vms(String, vms::Kind),
    /// Cluster events; `with_token` on `/ws/clusters` (a token there must be valid).
    Clusters {
        with_token: bool,
    },
    /// The channels API: `/ws` with a token (contract 4.4: any token parameter or header).
    Channels,
    /// `/api/v1/agents/ws` (C).
    Agent,
    /// `/api/v1/ws/{metrics,logs}/{server_id}` (C).
    ServerStream(String, crate::agents::StreamKind),
}

impl Endpoint {
    fn of(path: &str, has_token: bool) -> Option<Self> {
        match path {
            "/ws" if has_token => Some(Self::Channels),
            "/ws" => Some(Self::Clusters { with_token: false }),
            "/ws/clusters" => Some(Self::Clusters { with_token: true }),
            agents::AGENT_PATH => Some(Self::Agent),
            _ => machines::route(path)
                .map(Self::Machines)
                .or_else(|| vms::route(path).map(|(n, k)| Self::Vms(n, k)))
                .or_else(|| agents::stream_route(path).map(|(id, k)| Self::ServerStream(id, k))),
        }
    }
}

/// B's `AUTH_FAILED` error message.
pub fn auth_failed() -> conn::Text {
    conn::Text::from(
        serde_json::json!({
            "type": "error",
            "channel": "system",
            "data": {
                "code": "AUTH_FAILED",
                "message": "Invalid or expired JWT token",
                "action": "reconnect_with_valid_token",
            },
            "timestamp": crate::model::now_iso(),
        })
        .to_string(),
    )
}

/// The instant of a token's `exp` (Unix seconds), for closing its socket then.
pub fn instant_of(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    tokio::time::Instant::now() + std::time::Duration::from_secs(exp).saturating_sub(now)
}

/// The connection options of an authenticated socket whose token expires at `exp`.
pub fn options(state: &AppState, exp: Option<u64>) -> conn::Options {
    let w = &state.config.ws;
    conn::Options {
        ping_interval: std::time::Duration::from_secs(w.ping_interval.max(1)),
        idle_timeout: std::time::Duration::from_secs(w.idle_timeout.max(1)),
        write_deadline: std::time::Duration::from_secs(w.write_deadline.max(1)),
        expires_at: exp.map(instant_of),
    }
}

/// One live authenticated socket, as revocation sees it.
struct Entry {
    user: Uuid,
    token_version: u64,
    /// The permission the socket needed to open.
    needs: Option<Permission>,
    ctl: Weak<Control>,
}

/// Every live socket, so that account changes reach them within the 2 s the contract allows
/// (here: at once), and the tracker that shutdown waits on.
pub struct Sockets {
    next: std::sync::atomic::AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
    pub tasks: tokio_util::task::TaskTracker,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Permits for sockets not yet authenticated (contract: at most 256 at once).
    pub unauthenticated: Arc<tokio::sync::Semaphore>,
}

impl Sockets {
    pub fn new(max_unauthenticated: usize) -> Self {
        Self {
            unauthenticated: Arc::new(tokio::sync::Semaphore::new(max_unauthenticated.max(1))),
            next: std::sync::atomic::AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            tasks: tokio_util::task::TaskTracker::new(),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }
}

/// Unregisters a socket when dropped.
pub struct Registration {
    id: u64,
    sockets: Arc<Sockets>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Sockets {
    pub fn register(
        self: &Arc<Self>,
        actor: &Actor,
        needs: Option<Permission>,
        ctl: &Arc<Control>,
    ) -> Registration {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                user: actor.user.uuid,
                token_version: actor.claims.token_version,
                needs,
                ctl: Arc::downgrade(ctl),
            },
        );
        Registration {
            id,
            sockets: self.clone(),
        }
    }

    /// A user changed: sockets whose token it revoked close with 4401; sockets that needed a
    /// permission the user lost close with 4403.
    pub fn user_changed(&self, user: &User) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for e in live.values().filter(|e| e.user == user.uuid) {
            let Some(ctl) = e.ctl.upgrade() else { continue };
            if user.disabled || user.token_version != e.token_version {
                ctl.close(CloseWith::new(code::UNAUTHORIZED, "token revoked"));
            } else if e.needs.is_some_and(|p| !user.has(p)) {
                ctl.close(CloseWith::new(code::FORBIDDEN, "permission withdrawn"));
            }
        }
    }

    /// A user was deleted: every socket of theirs closes with 4401.
    pub fn user_deleted(&self, user: Uuid) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for e in live.values().filter(|e| e.user == user) {
            if let Some(ctl) = e.ctl.upgrade() {
                ctl.close(CloseWith::new(code::UNAUTHORIZED, "user deleted"));
            }
        }
    }
}
