//! The application state, built once at start-up and passed explicitly (no globals).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::password::Hasher;
use crate::auth::ratelimit::{Limits, LoginLimiter};
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
    pub channels_hub: Arc<crate::ws::channels::Hub>,
    pub hosts: Arc<crate::hosts::Hosts>,
    pub alerts: Arc<crate::alerts::Alerts>,
    pub agents: Arc<crate::agents::Agents>,
    /// User activity (logins, account changes, consoles), announced after it is audited.
    pub activity: tokio::sync::broadcast::Sender<crate::db::AuditEntry>,
    pub ws: Arc<crate::ws::Sockets>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The address the listener is bound to (the server's own origin derives from it).
    pub local_addr: SocketAddr,
    /// The origins allowed to open WebSockets (`ws::own_origins`), computed once at start.
    pub origins: Vec<String>,
}

/// What start-up has built by the time the state is assembled.
pub struct Parts {
    pub config: Config,
    pub db: Db,
    pub hasher: Hasher,
    pub jwt_secret: Vec<u8>,
    pub machines: Arc<Machines>,
    pub clusters: Arc<crate::clusters::Clusters>,
    pub hosts: Arc<crate::hosts::Hosts>,
    pub alerts: Arc<crate::alerts::Alerts>,
    pub agents: Arc<crate::agents::Agents>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub local_addr: SocketAddr,
}

impl AppState {
    pub fn new(p: Parts) -> Self {
        let config = p.config;
        let tokens = Tokens::new(
            &p.jwt_secret,
            config.auth.token_ttl,
            config.auth.session_max,
        );
        let limiter = LoginLimiter::new(Limits {
            max_failures: config.auth.login_max_failures,
            window: Duration::from_secs(config.auth.login_window),
            account_max_failures: config.auth.account_max_failures,
            account_window: Duration::from_secs(config.auth.account_window),
            account_max_delay: Duration::from_secs(config.auth.account_max_delay),
        });
        let origins = crate::ws::own_origins(&config, p.local_addr);
        let sockets = crate::ws::Sockets::new(&config);
        Self(Arc::new(Inner {
            config,
            db: p.db,
            hasher: p.hasher,
            tokens,
            limiter,
            machines_hub: crate::ws::machines::Hub::new(p.machines.clone()),
            vms_hub: crate::ws::vms::Hub::new(p.machines.clone()),
            clusters: p.clusters,
            clusters_hub: Arc::new(crate::ws::clusters::Hub::default()),
            channels_hub: Arc::new(crate::ws::channels::Hub::default()),
            hosts: p.hosts,
            alerts: p.alerts,
            agents: p.agents,
            activity: tokio::sync::broadcast::channel(1024).0,
            machines: p.machines,
            ws: Arc::new(sockets),
            metrics: p.metrics,
            origins,
            local_addr: p.local_addr,
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// A user's account changed (permissions, password, disabled, logout): the live-socket
    /// registry first (revocation, and the latest user every socket's checks read), then
    /// every hub's view of the user's sockets.
    pub fn user_changed(&self, user: &crate::model::User) {
        let user = crate::model::User {
            password_hash: String::new(),
            ..user.clone()
        };
        self.ws.user_changed(&user);
        self.channels_hub.user_changed(&user);
        self.machines_hub.user_changed(&user);
        self.vms_hub.user_changed(&user);
    }

    /// Announces an audited user action on the `user_activity` channel.
    pub fn announce(&self, entry: crate::db::AuditEntry) {
        let _ = self.activity.send(entry);
    }

    /// Writes an audit entry in its own transaction and, once it is committed, announces it
    /// on `user_activity` when `announce` is set.
    pub async fn record(
        &self,
        entry: crate::db::AuditEntry,
        announce: bool,
    ) -> Result<(), crate::db::DbError> {
        let stored = entry.clone();
        self.db.run(move |db| db.append_audit(&stored)).await?;
        if announce {
            self.announce(entry);
        }
        Ok(())
    }
}
