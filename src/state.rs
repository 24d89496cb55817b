//! The application state, built once at start-up and passed explicitly (no globals).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::password::Hasher;
use crate::auth::ratelimit::LoginLimiter;
use crate::auth::token::Tokens;
use crate::config::Config;
use crate::db::Db;
use crate::machines::Machines;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub hasher: Hasher,
    pub tokens: Tokens,
    pub limiter: LoginLimiter,
    pub machines: Arc<Machines>,
    pub machines_hub: Arc<crate::ws::machines::Hub>,
    pub vms_hub: Arc<crate::ws::vms::Hub>,
    pub clusters: Arc<crate::clusters::Clusters>,
    pub clusters_hub: Arc<crate::ws::clusters::Hub>,
    pub ws: Arc<crate::ws::Sockets>,
    /// The address the listener is bound to (the server's own origin derives from it).
    pub local_addr: SocketAddr,
}

impl AppState {
    pub fn new(
        config: Config,
        db: Db,
        hasher: Hasher,
        jwt_secret: &[u8],
        machines: Arc<Machines>,
        clusters: Arc<crate::clusters::Clusters>,
        local_addr: SocketAddr,
    ) -> Self {
        let tokens = Tokens::new(jwt_secret, config.auth.token_ttl, config.auth.session_max);
        let config_max_unauth = config.ws.max_unauthenticated;
        let limiter = LoginLimiter::new(
            config.auth.login_max_failures,
            Duration::from_secs(config.auth.login_window),
        );
        Self(Arc::new(Inner {
            config,
            db,
            hasher,
            tokens,
            limiter,
            machines_hub: crate::ws::machines::Hub::new(machines.clone()),
            vms_hub: crate::ws::vms::Hub::new(machines.clone()),
            clusters,
            clusters_hub: Arc::new(crate::ws::clusters::Hub::default()),
            machines,
            ws: Arc::new(crate::ws::Sockets::new(config_max_unauth)),
            local_addr,
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
