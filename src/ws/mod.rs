//! WebSockets: the upgrade (our own, through hyper, with our own framing in `frame.rs`, so
//! that an idle socket holds no buffers), the Origin check, token extraction, the registry of live
//! sockets used for revocation, and one module per API over the connection core.

pub mod agents;
pub mod channels;
pub mod clusters;
pub mod conn;
mod echo;
pub mod frame;
pub mod machines;
mod metered;
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

pub type Socket = frame::WebSocket<metered::Metered<TokioIo<hyper::upgrade::Upgraded>>>;

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
/// address, on loopback the usual local names, and on a wildcard listener (`0.0.0.0`, `::`)
/// this host's name and the addresses of its interfaces, as they were at start (so that a
/// packaged install, which listens on `0.0.0.0:8443`, serves its UI's WebSockets to a browser
/// that reached it by the host's name or address). Never derived from `Host`.
pub fn own_origins(config: &crate::config::Config, addr: SocketAddr) -> Vec<String> {
    let (names, addrs) = if addr.ip().is_unspecified() {
        (
            crate::tls::hostname().into_iter().collect(),
            interface_addresses(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    origins_for(config, addr, &names, &addrs)
}

/// The addresses of this host's interfaces that a browser could use: not link-local IPv6
/// (those need a zone, which an Origin cannot carry).
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let Ok(networks) = sysinfo::Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut v: Vec<std::net::IpAddr> = networks
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|i| i.addr))
        .filter(|ip| match ip {
            std::net::IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            std::net::IpAddr::V4(_) => true,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn origins_for(
    config: &crate::config::Config,
    addr: SocketAddr,
    names: &[String],
    addrs: &[std::net::IpAddr],
) -> Vec<String> {
    let scheme = if config.tls_enabled() {
        "https"
    } else {
        "http"
    };
    let port = addr.port();
    let default_port = port == if config.tls_enabled() { 443 } else { 80 };
    let mut hosts: Vec<String> = Vec::new();
    if !addr.ip().is_unspecified() {
        hosts.push(host_of(addr.ip()));
    }
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
    }
    hosts.extend(names.iter().cloned());
    hosts.extend(addrs.iter().map(|ip| host_of(*ip)));
    let mut v = Vec::new();
    for host in hosts {
        v.push(format!("{scheme}://{host}:{port}"));
        if default_port {
            v.push(format!("{scheme}://{host}"));
        }
    }
    if let Some(url) = &config.http.public_url {
        v.push(url.trim_end_matches('/').to_owned());
    }
    v.extend(
        config
            .http
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_owned()),
    );
    let mut seen = std::collections::HashSet::new();
    v.retain(|o| seen.insert(o.to_ascii_lowercase()));
    v
}

/// An address as the host part of an origin (IPv6 in brackets).
fn host_of(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn origin_allowed(state: &AppState, h: &HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    state.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
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

/// The stateless part of an upgrade request, for the fuzz target (`crate::fuzz`): `data` is
/// a request target (`/path?query`) on its first line, then `Name: value` header lines. It
/// goes through the claim, the token extraction, the endpoint routing and the query's
/// machine list as `upgrade` does.
pub fn fuzz_upgrade(data: &str) {
    let mut lines = data.split('\n');
    let target = lines.next().unwrap_or("");
    let mut builder = Request::builder().uri(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim());
        }
    }
    let Ok(req) = builder.body(()) else {
        return;
    };
    let _ = claims(&req);
    let token = request_token(req.uri().query(), req.headers());
    let _ = Endpoint::of(req.uri().path(), token.is_some());
    if let Some(q) = req.uri().query() {
        let _ = machines::query_machines(q);
    }
}

fn error_response(e: &Error) -> Response {
    crate::api::error_response(e)
}

/// Handles an upgrade request claimed by [`claims`].
pub async fn upgrade(state: AppState, mut req: Request<Incoming>, peer: SocketAddr) -> Response {
    let path = req.uri().path().to_owned();
    let token = request_token(req.uri().query(), req.headers());
    let Some(endpoint) = Endpoint::of(&path, token.is_some())
        .filter(|e| !matches!(e, Endpoint::Echo) || state.config.ws.test_echo)
    else {
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
    // At most `ws.max_unauthenticated` sockets may be between upgrade and authentication,
    // `ws.max_unauthenticated_per_ip` of them from one address. A request whose token
    // verifies (signature and expiry: no database read) is not held behind them, so a flood
    // of sockets that never authenticate cannot lock a user with a valid token out.
    // A token-less cluster stream never authenticates: it holds a place among the anonymous
    // sockets (`clusters.max_anonymous`, `clusters.max_anonymous_per_ip`) for as long as it
    // is open, apart from the others so that it cannot crowd out sockets on their way to
    // authenticating (agents, say).
    let credential = Credential::of(&state, token.as_deref());
    drop(token);
    let place = if matches!(endpoint, Endpoint::Clusters { .. })
        && matches!(credential, Credential::None)
    {
        state.ws.anonymous(peer).ok_or("anonymous cluster-event")
    } else {
        let presigned = matches!(credential, Credential::Valid(_));
        state
            .ws
            .unauthenticated(peer, presigned)
            .ok_or("unauthenticated")
    };
    let unauth = match place {
        Ok(place) => place,
        Err(kind) => {
            return error_response(&Error::Busy(format!("too many {kind} WebSockets; retry")));
        }
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
        let io = metered::Metered::new(TokioIo::new(upgraded), state.metrics.ws(endpoint.api()));
        let ws = frame::WebSocket::new(io, max);
        match endpoint {
            Endpoint::Machines(kind) => {
                machines::serve(state, ws, kind, credential, query, unauth).await;
            }
            Endpoint::Vms(name, kind) => {
                vms::serve(state, ws, name, kind, credential, unauth).await;
            }
            Endpoint::Clusters { with_token } => {
                let credential = if with_token {
                    credential
                } else {
                    Credential::None
                };
                clusters::serve(state, ws, credential, unauth).await;
            }
            Endpoint::Channels => channels::serve(state, ws, credential, unauth).await,
            Endpoint::Echo => echo::serve(ws, unauth).await,
            Endpoint::Agent => agents::serve_agent(state, ws, unauth).await,
            Endpoint::ServerStream(id, kind) => {
                agents::serve_stream(state, ws, id, kind, credential, unauth).await;
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
    /// `/ws/echo`, only with `ws.test_echo` (protocol conformance runs).
    Echo,
    /// `/api/v1/agents/ws` (C).
    Agent,
    /// `/api/v1/ws/{metrics,logs}/{server_id}` (C).
    ServerStream(String, crate::agents::StreamKind),
}

impl Endpoint {
    /// The `api` label of the endpoint's metrics.
    fn api(&self) -> crate::metrics::Api {
        use crate::metrics::Api;
        match self {
            Self::Machines(_) => Api::Machines,
            Self::Vms(_, vms::Kind::Console) => Api::Console,
            Self::Vms(..) => Api::Vms,
            Self::Clusters { .. } => Api::Clusters,
            Self::Channels => Api::Channels,
            Self::Echo => Api::Echo,
            Self::Agent | Self::ServerStream(..) => Api::Agents,
        }
    }

    fn of(path: &str, has_token: bool) -> Option<Self> {
        match path {
            "/ws" if has_token => Some(Self::Channels),
            "/ws" => Some(Self::Clusters { with_token: false }),
            "/ws/clusters" => Some(Self::Clusters { with_token: true }),
            "/ws/echo" => Some(Self::Echo),
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
        farewell: None,
    }
}

/// What the registry knows of one socket's user: the account as of its latest change,
/// shared with the socket's handler and hub membership so that every per-message check
/// (a command on `/ws/vms/{name}`, say) uses the user's current permissions, never the
/// snapshot taken at connect.
#[derive(Default)]
pub struct Seen {
    user: Mutex<Option<User>>,
    /// Bumped by every change notification.
    changes: std::sync::atomic::AtomicU64,
}

impl Seen {
    /// The user as last seen (read at admission, then every change).
    pub fn user(&self) -> Option<User> {
        self.user.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self, user: &User) {
        *self.user.lock().unwrap_or_else(|p| p.into_inner()) = Some(without_hash(user));
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The admission's read, unless a change notification already brought a newer one.
    fn admitted(&self, user: User) -> User {
        let mut u = self.user.lock().unwrap_or_else(|p| p.into_inner());
        u.get_or_insert(user).clone()
    }
}

fn without_hash(user: &User) -> User {
    User {
        password_hash: String::new(),
        ..user.clone()
    }
}

/// One live authenticated socket, as revocation sees it.
struct Entry {
    user: Uuid,
    token_version: u64,
    /// The permission the socket needed to open.
    needs: Option<Permission>,
    ctl: Weak<Control>,
    seen: Arc<Seen>,
}

/// Every live socket, so that account changes reach them within the 2 s the contract allows
/// (here: at once), and the tracker that shutdown waits on.
pub struct Sockets {
    next: std::sync::atomic::AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
    pub tasks: tokio_util::task::TaskTracker,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Sockets not yet authenticated (contract: at most 256 at once), in all and per address.
    unauthenticated: Arc<crate::server::Caps>,
    /// Token-less cluster streams, which never authenticate, in all and per address.
    anonymous: Arc<crate::server::Caps>,
}

/// A socket's place among the unauthenticated ones (none for a request whose token already
/// verified); dropped once it has authenticated. For a token-less cluster stream, its place
/// among the anonymous ones, held while it is open.
pub struct Unauthenticated {
    _slot: Option<crate::server::Slot>,
}

impl Sockets {
    pub fn new(config: &crate::config::Config) -> Self {
        let (ws, clusters) = (&config.ws, &config.clusters);
        Self {
            unauthenticated: crate::server::Caps::new(
                ws.max_unauthenticated.max(1),
                ws.max_unauthenticated_per_ip,
            ),
            anonymous: crate::server::Caps::new(
                clusters.max_anonymous,
                clusters.max_anonymous_per_ip,
            ),
            next: std::sync::atomic::AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            tasks: tokio_util::task::TaskTracker::new(),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Sockets {
    /// A place for one more unauthenticated socket from `peer`, unless a cap is reached;
    /// `presigned` (its token verified with the request) needs none.
    pub fn unauthenticated(&self, peer: SocketAddr, presigned: bool) -> Option<Unauthenticated> {
        if presigned {
            return Some(Unauthenticated { _slot: None });
        }
        let slot = self.unauthenticated.take(peer.ip())?;
        Some(Unauthenticated { _slot: Some(slot) })
    }

    /// A place for one more token-less cluster stream from `peer`, unless a cap is reached.
    pub fn anonymous(&self, peer: SocketAddr) -> Option<Unauthenticated> {
        let slot = self.anonymous.take(peer.ip())?;
        Some(Unauthenticated { _slot: Some(slot) })
    }
}

/// Unregisters a socket when dropped.
pub struct Registration {
    id: u64,
    sockets: Arc<Sockets>,
    seen: Arc<Seen>,
    /// `seen`'s change count when the actor was taken.
    admitted_at: u64,
}

impl Registration {
    /// The user as the registry sees them now.
    pub fn seen(&self) -> Arc<Seen> {
        self.seen.clone()
    }

    /// Call once the socket has joined its hub: a change notified between admission and the
    /// join (which the hub, not yet holding the socket, missed) is applied again.
    pub fn settle(&self, state: &AppState) {
        if self.seen.changes() != self.admitted_at
            && let Some(user) = self.seen.user()
        {
            state.user_changed(&user);
        }
    }
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

/// Why a WebSocket was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Missing, malformed, expired or revoked token, or an unknown or disabled user: 4401.
    BadToken,
    /// The server could not check it (a database error): 1011.
    ServerError,
}

impl Refusal {
    pub fn close(&self) -> CloseWith {
        match self {
            Self::BadToken => CloseWith::new(code::UNAUTHORIZED, "invalid or missing token"),
            Self::ServerError => CloseWith::new(code::SERVER_ERROR, "server error"),
        }
    }

    /// Refuses the socket: a bad token with `bad_token` first and a 4401 `invalid token`
    /// close, anything else with its own close and no message.
    pub async fn refuse(self, ws: Socket, bad_token: conn::Text) {
        match self {
            Self::BadToken => {
                conn::refuse(
                    ws,
                    Some(bad_token),
                    CloseWith::new(code::UNAUTHORIZED, "invalid token"),
                )
                .await;
            }
            other => conn::refuse(ws, None, other.close()).await,
        }
    }
}

/// Judges the admission's database read of the token's user.
fn judge(
    read: Result<Option<User>, crate::db::DbError>,
    token_version: u64,
) -> Result<User, Refusal> {
    let user = match read {
        Ok(Some(u)) => u,
        Ok(None) => return Err(Refusal::BadToken),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a WebSocket's user");
            return Err(Refusal::ServerError);
        }
    };
    if user.disabled || user.token_version != token_version {
        return Err(Refusal::BadToken);
    }
    Ok(without_hash(&user))
}

/// The token a WebSocket presented, verified once (signature and expiry, no database read):
/// at the upgrade for a token in the request, which is also what lets it past the cap on
/// unauthenticated sockets, or when it arrives in a first message.
pub enum Credential {
    None,
    Invalid,
    Valid(auth::token::Claims),
}

impl Credential {
    pub fn of(state: &AppState, token: Option<&str>) -> Self {
        match token.map(|t| state.tokens.verify(t)) {
            None => Self::None,
            Some(Ok(claims)) => Self::Valid(claims),
            Some(Err(_)) => Self::Invalid,
        }
    }
}

/// Admits a WebSocket: checks its token and registers the socket for revocation. The socket
/// is registered *before* its user is read, so a revocation committed at any moment is
/// either seen by that read or reaches the registered socket (no gap in which it is lost).
pub async fn admit(
    state: &AppState,
    credential: Credential,
    needs: Option<Permission>,
    ctl: &Arc<Control>,
) -> Result<(Actor, Registration), Refusal> {
    let Credential::Valid(claims) = credential else {
        return Err(Refusal::BadToken);
    };
    let uuid = Uuid::parse_str(&claims.sub).map_err(|_| Refusal::BadToken)?;
    let mut registration = state.ws.register(uuid, claims.token_version, needs, ctl);
    let read = state.db.run(move |db| db.user_by_uuid(uuid)).await;
    let user = judge(read, claims.token_version)?;
    registration.admitted_at = registration.seen.changes();
    let user = registration.seen.admitted(user);
    Ok((Actor { user, claims }, registration))
}

impl Sockets {
    fn register(
        self: &Arc<Self>,
        user: Uuid,
        token_version: u64,
        needs: Option<Permission>,
        ctl: &Arc<Control>,
    ) -> Registration {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seen = Arc::new(Seen::default());
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                user,
                token_version,
                needs,
                ctl: Arc::downgrade(ctl),
                seen: seen.clone(),
            },
        );
        Registration {
            id,
            sockets: self.clone(),
            seen,
            admitted_at: 0,
        }
    }

    /// A user changed: sockets whose token it revoked close with 4401; sockets that needed a
    /// permission the user lost close with 4403.
    pub fn user_changed(&self, user: &User) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for e in live.values().filter(|e| e.user == user.uuid) {
            e.seen.changed(user);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountType, PermissionSet};

    fn user(version: u64, disabled: bool) -> User {
        User {
            uuid: Uuid::new_v4(),
            username: "u".into(),
            account_type: AccountType::Client,
            permissions: PermissionSet::default(),
            disabled,
            password_hash: "hash".into(),
            token_version: version,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn own_origins_follow_the_listener() {
        let mut config = crate::config::Config::default();
        let has = |v: &[String], o: &str| v.iter().any(|x| x == o);
        // Loopback: the address and the local names.
        let v = origins_for(&config, "127.0.0.1:8080".parse().unwrap(), &[], &[]);
        assert!(has(&v, "http://127.0.0.1:8080") && has(&v, "http://localhost:8080"));
        assert!(has(&v, "http://[::1]:8080"));
        // A specific address: that address only (and what is configured).
        config.http.public_url = Some("https://orchard.example:8443/".into());
        config.http.allowed_origins = vec!["https://ops.example".into()];
        let v = origins_for(&config, "192.0.2.7:8080".parse().unwrap(), &[], &[]);
        assert!(has(&v, "http://192.0.2.7:8080"));
        assert!(!has(&v, "http://localhost:8080"));
        assert!(has(&v, "https://orchard.example:8443") && has(&v, "https://ops.example"));
        // A wildcard listener with TLS (the packaged one): the host's name and addresses,
        // never the wildcard itself; on 443 also without the port.
        config.tls.self_signed = true;
        config.http.public_url = None;
        config.http.allowed_origins.clear();
        let names = ["hv-01".to_owned()];
        let addrs: Vec<std::net::IpAddr> =
            vec!["10.1.2.3".parse().unwrap(), "2001:db8::5".parse().unwrap()];
        let v = origins_for(&config, "0.0.0.0:8443".parse().unwrap(), &names, &addrs);
        for o in [
            "https://hv-01:8443",
            "https://10.1.2.3:8443",
            "https://[2001:db8::5]:8443",
            "https://localhost:8443",
        ] {
            assert!(has(&v, o), "{o} in {v:?}");
        }
        assert!(!has(&v, "https://0.0.0.0:8443"), "{v:?}");
        assert!(!has(&v, "https://hv-01"), "{v:?}");
        let v = origins_for(&config, "[::]:443".parse().unwrap(), &names, &addrs);
        assert!(
            has(&v, "https://hv-01") && has(&v, "https://hv-01:443"),
            "{v:?}"
        );
    }

    #[test]
    fn a_revocation_between_registration_and_the_read_reaches_the_socket() {
        let sockets = Arc::new(Sockets::new(&crate::config::Config::default()));
        let ctl = Control::new(4);
        let read = user(1, false);
        let reg = sockets.register(read.uuid, 1, None, &ctl);
        // The logout commits and is announced after the socket registered, while its
        // admission's read (which saw version 1) is still in flight.
        let bumped = User {
            token_version: 2,
            ..read.clone()
        };
        sockets.user_changed(&bumped);
        assert_eq!(ctl.close_requested(), Some(code::UNAUTHORIZED));
        // The older read does not overwrite the newer notification.
        let admitted = reg.seen.admitted(without_hash(&read));
        assert_eq!(admitted.token_version, 2);
        assert_eq!(reg.seen.user().map(|u| u.token_version), Some(2));
        assert!(reg.seen.user().is_some_and(|u| u.password_hash.is_empty()));
        drop(reg);
        assert!(
            sockets.live.lock().unwrap().is_empty(),
            "unregistered on drop"
        );
    }

    #[test]
    fn a_database_error_is_a_server_error_not_a_bad_token() {
        let e = judge(Err(crate::db::DbError::Corrupt("x".into())), 1);
        assert_eq!(e.err(), Some(Refusal::ServerError));
        assert_eq!(Refusal::ServerError.close().code, code::SERVER_ERROR);
        assert_eq!(Refusal::BadToken.close().code, code::UNAUTHORIZED);
    }

    #[test]
    fn unknown_disabled_or_revoked_users_are_bad_tokens() {
        assert_eq!(judge(Ok(None), 1).err(), Some(Refusal::BadToken));
        assert_eq!(
            judge(Ok(Some(user(1, true))), 1).err(),
            Some(Refusal::BadToken)
        );
        assert_eq!(
            judge(Ok(Some(user(2, false))), 1).err(),
            Some(Refusal::BadToken)
        );
        let ok = judge(Ok(Some(user(1, false))), 1).ok();
        assert!(ok.is_some_and(|u| u.password_hash.is_empty()));
    }
}
