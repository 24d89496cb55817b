//! One configuration: built-in defaults < TOML file < `ORCHARD_<SECTION>_<KEY>` env < flags.
//!
//! Every interval and limit of the contract is a key here, so tests can shorten them.
//! Durations are whole seconds. Secrets are never configuration values: the admin password
//! comes from `ORCHARD_ADMIN_PASSWORD` (read once, then removed from the environment) and the
//! signing key lives in the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: Http,
    pub storage: Storage,
    pub plugins: Plugins,
    pub tls: Tls,
    pub auth: Auth,
    pub log: Log,
    pub ws: Ws,
    pub machines: Machines,
    pub vms: Vms,
    pub clusters: Clusters,
    pub agents: Agents,
    pub fleet: Fleet,
    pub hosts: HostsConfig,
    pub alerts: AlertRules,
    pub simulator: Simulator,
    pub ui: Ui,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ui {
    /// Serve the web UI from this directory instead of the copy compiled into the binary
    /// (development: edit `assets/` and reload). Unset: the embedded copy.
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    pub listen: String,
    pub allowed_origins: Vec<String>,
    pub public_url: Option<String>,
    pub allow_insecure: bool,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: u64,
    /// Seconds a graceful shutdown waits for requests in flight. The process then allows
    /// blocking work one more second, so the default keeps the whole exit within the
    /// contract's 5 s.
    pub shutdown_grace: u64,
    /// HTTP connections open at once (not counting those upgraded to WebSockets); a new one
    /// over the cap is closed at once. 0: no cap.
    pub max_connections: usize,
    /// The same, from one client address. 0: no cap (behind a reverse proxy on this host,
    /// every client has the proxy's address: raise it or set 0).
    pub max_connections_per_ip: usize,
    /// Seconds a connection may take to send a request head (the first one, and each later
    /// one on a kept-alive connection); then it is closed.
    pub header_timeout: u64,
    /// Seconds a connection may go without a new request once it has made one; then it is
    /// closed. HTTP/1.1 keep-alive is already held to `header_timeout`; this bounds HTTP/2,
    /// which hyper keeps open for as long as the peer likes. WebSockets are not affected.
    pub idle_timeout: u64,
    /// Seconds a request (head and body) may take to arrive, from its start (HTTP/1.1: when
    /// the connection became ready for it; HTTP/2: its head); then it is answered 408 and an
    /// HTTP/1.1 connection is closed. Extended by `min_body_rate`.
    pub request_timeout: u64,
    /// Bytes per second: every this many bytes of body received extend the request's
    /// deadline by one second, so a body that keeps arriving at least this fast is never
    /// cut off.
    pub min_body_rate: u64,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            public_url: None,
            allow_insecure: false,
            max_body_bytes: 1024 * 1024,
            shutdown_grace: 4,
            max_connections: 1024,
            max_connections_per_ip: 256,
            header_timeout: 10,
            idle_timeout: 120,
            request_timeout: 15,
            min_body_rate: 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    pub data_dir: PathBuf,
    /// Audit entries kept; older ones are pruned.
    pub audit_keep: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./orchard-data"),
            audit_keep: 100_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plugins {
    /// Unset: `/usr/lib/orchard/plugins` for an installed binary, else the build output.
    pub dir: Option<PathBuf>,
    /// Seconds a plugin call may take before the plugin is marked failed.
    pub call_timeout: u64,
    /// Seconds loading, the handshake and init may take.
    pub load_timeout: u64,
    /// Link the simulator in as a built-in plugin (a loaded one of that name wins).
    pub builtin_simulator: bool,
    /// Per-plugin settings: `[plugins.settings.<name>]`, handed to the plugin's `init`.
    pub settings: std::collections::BTreeMap<String, toml::Value>,
}

impl Default for Plugins {
    fn default() -> Self {
        Self {
            dir: None,
            call_timeout: 10,
            load_timeout: 10,
            builtin_simulator: true,
            settings: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain (leaf first). Unset with `self_signed`:
    /// `<data_dir>/tls-cert.pem`.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Unset with `self_signed`:
    /// `<data_dir>/tls-key.pem`.
    pub key: Option<PathBuf>,
    /// Serve TLS with a self-signed certificate, generated (0600) on first start when
    /// neither the certificate nor the key file exists. Replacing both files with a real
    /// pair (or pointing `cert`/`key` elsewhere) takes effect on the next start.
    pub self_signed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub token_ttl: u64,
    pub session_max: u64,
    /// Failed logins (and wrong `old_password`s) allowed per (client IP, username) within
    /// `login_window`.
    pub login_max_failures: u32,
    pub login_window: u64,
    /// Failures of one account from every address before addresses that never logged in to
    /// it wait an exponential delay (0: no per-account ceiling).
    pub account_max_failures: u32,
    /// Seconds after an account's latest failure when its count is forgotten.
    pub account_window: u64,
    /// The longest per-account delay, in seconds.
    pub account_max_delay: u64,
    /// Password hashes computed at once (each takes ~19 MiB and ~20 ms).
    pub hash_concurrency: usize,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            token_ttl: 3600,
            session_max: 43_200,
            login_max_failures: 5,
            login_window: 60,
            account_max_failures: 20,
            account_window: 3600,
            account_max_delay: 900,
            hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(2),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A tracing filter directive (`RUST_LOG` wins when set).
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Limits and keepalive shared by the WebSocket APIs (contract section 7).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ws {
    /// Seconds between protocol pings.
    pub ping_interval: u64,
    /// Seconds of silence after which a peer is dropped.
    pub idle_timeout: u64,
    /// Seconds a write may take before the peer is dropped.
    pub write_deadline: u64,
    /// The most messages one socket may have queued; reaching it closes the socket (4008).
    pub send_queue: usize,
    /// The most payload bytes one socket may have queued (a message shared by many sockets
    /// counts for each); reaching it closes the socket (4008).
    pub send_queue_bytes: u64,
    /// Largest incoming message on authenticated A/B/E sockets (1009 above).
    pub max_message: u64,
    /// Sockets allowed at once between upgrade and authentication (503 above).
    pub max_unauthenticated: usize,
    /// The same, from one client address (503 above; 0: no per-address cap).
    pub max_unauthenticated_per_ip: usize,
    /// Milliseconds events are gathered after the first of a burst before each socket is
    /// woken to write them in one go (0: write at once).
    pub coalesce_ms: u64,
    /// Serves `/ws/echo` (no authentication; echoes every message) for protocol conformance
    /// runs against the production framing. Test-only: never enable it on a real host.
    pub test_echo: bool,
}

impl Default for Ws {
    fn default() -> Self {
        Self {
            ping_interval: 30,
            idle_timeout: 60,
            write_deadline: 10,
            send_queue: 4096,
            send_queue_bytes: 8 * 1024 * 1024,
            max_message: 64 * 1024,
            max_unauthenticated: 256,
            max_unauthenticated_per_ip: 64,
            coalesce_ms: 2,
            test_echo: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Machines {
    pub dynamic_interval: u64,
    pub connections_interval: u64,
    pub disks_interval: u64,
    /// Machine events held for their slowest consumer (the API hubs, alerts, clusters): one
    /// that falls further behind skips what it missed and resynchronises from the registry's
    /// current state (every `/ws/machines` socket then gets `DELETE`/`CREATE` for what it
    /// missed and a full `DATA_STATIC`).
    pub event_buffer: usize,
}

impl Default for Machines {
    fn default() -> Self {
        Self {
            dynamic_interval: 1,
            connections_interval: 10,
            disks_interval: 120,
            event_buffer: 8192,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Vms {
    pub metrics_interval: u64,
    pub ping_interval: u64,
    /// Seconds a `command` may take to complete before it is answered as failed.
    pub command_timeout: u64,
}

impl Default for Vms {
    fn default() -> Self {
        Self {
            metrics_interval: 5,
            ping_interval: 30,
            command_timeout: 300,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clusters {
    /// Unset: on when listening on loopback, off otherwise.
    pub anonymous_events: Option<bool>,
    pub ping_interval: u64,
    pub pong_wait: u64,
    pub write_deadline: u64,
    pub max_message: u64,
    /// A burst of member changes gives one `cluster.updated` per cluster per this many ms.
    pub debounce_ms: u64,
    /// Token-less cluster streams open at once (503 above; 0: no cap).
    pub max_anonymous: usize,
    /// The same, from one client address (503 above; 0: no per-address cap).
    pub max_anonymous_per_ip: usize,
}

impl Default for Clusters {
    fn default() -> Self {
        Self {
            anonymous_events: None,
            ping_interval: 54,
            pong_wait: 60,
            write_deadline: 10,
            max_message: 512,
            debounce_ms: 250,
            max_anonymous: 256,
            max_anonymous_per_ip: 64,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Agents {
    /// Seconds an agent (or a per-server stream client) has to send its `auth` message.
    pub auth_timeout: u64,
    /// Longest a command or docker command may run, in seconds.
    pub command_timeout: u64,
    /// Longest a package operation may run, in seconds.
    pub package_timeout: u64,
    pub local_commands: bool,
    /// Largest incoming message on an authenticated agent socket (1009 above).
    pub max_message: u64,
}

impl Default for Agents {
    fn default() -> Self {
        Self {
            auth_timeout: 10,
            command_timeout: 30,
            package_timeout: 600,
            local_commands: false,
            max_message: 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fleet {
    pub interval: u64,
}

impl Default for Fleet {
    fn default() -> Self {
        Self { interval: 10 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostsConfig {
    /// Seconds between samples of the local host.
    pub metrics_interval: u64,
}

impl Default for HostsConfig {
    fn default() -> Self {
        Self {
            metrics_interval: 5,
        }
    }
}

/// Alert thresholds, in percent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertRules {
    pub disk_warning: f64,
    pub disk_critical: f64,
    pub memory_warning: f64,
    pub memory_critical: f64,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            disk_warning: 85.0,
            disk_critical: 95.0,
            memory_warning: 90.0,
            memory_critical: 97.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Simulator {
    pub machines: u32,
    /// How long a simulated boot takes, in milliseconds.
    pub boot_ms: u64,
    /// How long a simulated shutdown takes, in milliseconds.
    pub shutdown_ms: u64,
    /// Restarts per second over the running fleet: a load source for benchmarks (0: off).
    pub churn_per_second: u32,
}

impl Default for Simulator {
    fn default() -> Self {
        Self {
            machines: 8,
            boot_ms: 2000,
            shutdown_ms: 1000,
            churn_per_second: 0,
        }
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// Environment variables that share the `ORCHARD_` prefix but are not configuration keys.
const NON_KEY_VARS: &[&str] = &["ORCHARD_ADMIN_PASSWORD"];

impl Config {
    /// Loads the configuration: defaults, then `file`, then the `ORCHARD_*` variables of
    /// `env`, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match toml::Table::try_from(Config::default()) {
            Ok(t) => t,
            Err(e) => return Err(ConfigError::Invalid(e.to_string())),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?;
            merge(&mut table, from_file);
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("ORCHARD_") && !NON_KEY_VARS.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (var, value) in vars {
            apply_env(&mut table, &var, &value)?;
        }
        check_ranges(&table)?;
        let mut config: Config = match toml::Value::Table(table.clone()).try_into() {
            Ok(config) => config,
            Err(e) => {
                let e: toml::de::Error = e;
                let message = culprit(&table).unwrap_or_else(|| e.message().to_owned());
                return Err(match file {
                    Some(path) => ConfigError::Parse {
                        path: path.to_owned(),
                        message,
                    },
                    None => ConfigError::Invalid(message),
                });
            }
        };
        if let Some(listen) = &overrides.listen {
            config.http.listen.clone_from(listen);
        }
        if let Some(dir) = &overrides.data_dir {
            config.storage.data_dir.clone_from(dir);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.auth.session_max < self.auth.token_ttl {
            return Err(ConfigError::Invalid(format!(
                "auth.session_max = {} is out of range: allowed auth.token_ttl ({}) to {}",
                self.auth.session_max, self.auth.token_ttl, YEAR
            )));
        }
        if self.auth.account_max_failures > 0
            && self.auth.account_window <= self.auth.account_max_delay
        {
            return Err(ConfigError::Invalid(format!(
                "auth.account_window = {} is out of range: allowed more than \
                 auth.account_max_delay ({}) to {}",
                self.auth.account_window, self.auth.account_max_delay, YEAR
            )));
        }
        check_log_level(&self.log.level)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format = {:?} is not allowed: allowed \"text\" or \"json\"",
                self.log.format
            )));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key must be set together".into(),
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "storage.data_dir is empty: allowed a directory path".into(),
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "http.listen {:?} is not an IP:port address",
                self.http.listen
            ))
        })
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.self_signed || (self.tls.cert.is_some() && self.tls.key.is_some())
    }

    /// The certificate and key files TLS uses, when it is enabled.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ if self.tls.self_signed => Some((
                self.storage.data_dir.join("tls-cert.pem"),
                self.storage.data_dir.join("tls-key.pem"),
            )),
            _ => None,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.storage.data_dir.join("orchard.redb")
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;

/// What a numeric key accepts.
#[derive(Clone, Copy, Debug)]
enum Allowed {
    /// A whole number from the first to the second, both included.
    Whole(u64, u64),
    /// An alert threshold in percent: a finite number above 0 (one above 100 is never reached,
    /// which turns that alert off).
    Threshold,
}

impl Allowed {
    fn describe(self) -> String {
        match self {
            Allowed::Whole(min, max) => format!("{min} to {max}"),
            Allowed::Threshold => {
                "a number above 0 (percent; above 100 turns the alert off)".to_owned()
            }
        }
    }
}

/// The allowed values of every numeric key. 0 is allowed only where it means "no cap" or
/// "off" (docs/configuration.md says which). The upper bounds keep every value far from what
/// would overflow a deadline or make an allocation the host cannot hold. A unit test checks
/// that every numeric key is listed here; `auth.session_max` is also checked against
/// `auth.token_ttl`.
const RANGES: &[(&str, Allowed)] = &[
    ("http.max_body_bytes", Allowed::Whole(KIB, 64 * MIB)),
    ("http.shutdown_grace", Allowed::Whole(0, HOUR)),
    ("http.max_connections", Allowed::Whole(0, 1_000_000)),
    ("http.max_connections_per_ip", Allowed::Whole(0, 1_000_000)),
    ("http.header_timeout", Allowed::Whole(1, HOUR)),
    ("http.idle_timeout", Allowed::Whole(1, DAY)),
    ("http.request_timeout", Allowed::Whole(1, HOUR)),
    ("http.min_body_rate", Allowed::Whole(1, 64 * MIB)),
    ("storage.audit_keep", Allowed::Whole(1000, 10_000_000)),
    ("plugins.call_timeout", Allowed::Whole(1, HOUR)),
    ("plugins.load_timeout", Allowed::Whole(1, HOUR)),
    ("auth.token_ttl", Allowed::Whole(1, YEAR)),
    ("auth.session_max", Allowed::Whole(1, YEAR)),
    ("auth.login_max_failures", Allowed::Whole(1, 1_000_000)),
    ("auth.login_window", Allowed::Whole(1, DAY)),
    ("auth.account_max_failures", Allowed::Whole(0, 1_000_000)),
    ("auth.account_window", Allowed::Whole(1, YEAR)),
    ("auth.account_max_delay", Allowed::Whole(1, DAY)),
    ("auth.hash_concurrency", Allowed::Whole(1, 64)),
    ("ws.ping_interval", Allowed::Whole(1, HOUR)),
    ("ws.idle_timeout", Allowed::Whole(1, DAY)),
    ("ws.write_deadline", Allowed::Whole(1, HOUR)),
    ("ws.send_queue", Allowed::Whole(1, 65_536)),
    ("ws.send_queue_bytes", Allowed::Whole(KIB, 1024 * MIB)),
    ("ws.max_message", Allowed::Whole(KIB, 64 * MIB)),
    ("ws.max_unauthenticated", Allowed::Whole(1, 1_000_000)),
    (
        "ws.max_unauthenticated_per_ip",
        Allowed::Whole(0, 1_000_000),
    ),
    ("ws.coalesce_ms", Allowed::Whole(0, 1000)),
    ("machines.dynamic_interval", Allowed::Whole(1, HOUR)),
    ("machines.connections_interval", Allowed::Whole(1, DAY)),
    ("machines.disks_interval", Allowed::Whole(1, DAY)),
    ("machines.event_buffer", Allowed::Whole(1, 1 << 18)),
    ("vms.metrics_interval", Allowed::Whole(1, HOUR)),
    ("vms.ping_interval", Allowed::Whole(1, HOUR)),
    ("vms.command_timeout", Allowed::Whole(1, DAY)),
    ("clusters.ping_interval", Allowed::Whole(1, HOUR)),
    ("clusters.pong_wait", Allowed::Whole(1, DAY)),
    ("clusters.write_deadline", Allowed::Whole(1, HOUR)),
    ("clusters.max_message", Allowed::Whole(1, MIB)),
    ("clusters.debounce_ms", Allowed::Whole(10, 60_000)),
    ("clusters.max_anonymous", Allowed::Whole(0, 1_000_000)),
    (
        "clusters.max_anonymous_per_ip",
        Allowed::Whole(0, 1_000_000),
    ),
    ("agents.auth_timeout", Allowed::Whole(1, HOUR)),
    ("agents.command_timeout", Allowed::Whole(1, DAY)),
    ("agents.package_timeout", Allowed::Whole(1, DAY)),
    ("agents.max_message", Allowed::Whole(KIB, 64 * MIB)),
    ("fleet.interval", Allowed::Whole(1, DAY)),
    ("hosts.metrics_interval", Allowed::Whole(1, HOUR)),
    ("alerts.disk_warning", Allowed::Threshold),
    ("alerts.disk_critical", Allowed::Threshold),
    ("alerts.memory_warning", Allowed::Threshold),
    ("alerts.memory_critical", Allowed::Threshold),
    ("simulator.machines", Allowed::Whole(0, 100_000)),
    ("simulator.boot_ms", Allowed::Whole(0, HOUR * 1000)),
    ("simulator.shutdown_ms", Allowed::Whole(0, HOUR * 1000)),
    ("simulator.churn_per_second", Allowed::Whole(0, 1_000_000)),
];

/// Checks every numeric key of the merged file and environment against [`RANGES`], before
/// the values are typed: a negative or oversized number is reported with its key and range,
/// not as a bare type error.
fn check_ranges(table: &toml::Table) -> Result<(), ConfigError> {
    for (name, allowed) in RANGES {
        let (section, key) = name.split_once('.').unwrap_or((name, ""));
        let Some(value) = table.get(section).and_then(|s| s.get(key)) else {
            continue;
        };
        let ok = match (allowed, value) {
            (Allowed::Whole(min, max), toml::Value::Integer(n)) => {
                u64::try_from(*n).is_ok_and(|n| (*min..=*max).contains(&n))
            }
            (Allowed::Threshold, toml::Value::Integer(n)) => *n > 0,
            (Allowed::Threshold, toml::Value::Float(x)) => x.is_finite() && *x > 0.0,
            _ => false,
        };
        if !ok {
            let what = match (allowed, value) {
                (_, toml::Value::Integer(_)) => "is out of range",
                (Allowed::Threshold, toml::Value::Float(_)) => "is out of range",
                (Allowed::Whole(..), _) => "is not a whole number",
                (Allowed::Threshold, _) => "is not a number",
            };
            return Err(ConfigError::Invalid(format!(
                "{name} = {value} {what}: allowed {}",
                allowed.describe()
            )));
        }
    }
    Ok(())
}

/// After a type error, finds the first key whose value alone (over the defaults) fails, so the
/// message can name it: `http.listen = 5: invalid type: …`.
fn culprit(table: &toml::Table) -> Option<String> {
    let defaults = toml::Table::try_from(Config::default()).ok()?;
    for (section, values) in table {
        let toml::Value::Table(values) = values else {
            continue;
        };
        for (key, value) in values {
            let mut one = defaults.clone();
            if let Some(toml::Value::Table(sec)) = one.get_mut(section) {
                sec.insert(key.clone(), value.clone());
            }
            if let Err(e) = toml::Value::Table(one).try_into::<Config>() {
                return Some(format!("{section}.{key} = {value}: {}", e.message()));
            }
        }
    }
    None
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `log.level` is a tracing filter: comma-separated directives, each a level or
/// `target=level` (`info,orchard::http=warn`). A bare word that is not a level would parse as
/// a target (`bogus` = trace for the target `bogus`, nothing for everything else): refused.
fn check_log_level(level: &str) -> Result<(), ConfigError> {
    let refuse = |why: String| {
        ConfigError::Invalid(format!(
            "log.level = {level:?} {why}: allowed a level ({}) or target=level, comma-separated",
            LEVELS.join(", ")
        ))
    };
    if level.trim().is_empty() {
        return Err(refuse("is empty".into()));
    }
    for part in level.split(',').map(str::trim) {
        if part.is_empty() {
            continue;
        }
        if LEVELS.iter().any(|l| l.eq_ignore_ascii_case(part)) {
            continue;
        }
        if !part.contains('=') {
            return Err(refuse(format!("has {part:?}, which is not a level")));
        }
        part.parse::<tracing_subscriber::filter::Directive>()
            .map_err(|e| refuse(format!("has {part:?}, which is not a directive ({e})")))?;
    }
    Ok(())
}

/// Overlays `from` onto `into`, table by table.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => merge(dst, src),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Applies one `ORCHARD_<SECTION>_<KEY>` variable. The section is the longest known section
/// name that prefixes the rest; the value is typed after the key's default (a key whose
/// default is unset takes a string, or a boolean for `*_events`).
fn apply_env(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let rest = var.trim_start_matches("ORCHARD_").to_ascii_lowercase();
    let section = table
        .keys()
        .filter(|s| rest.starts_with(&format!("{s}_")))
        .max_by_key(|s| s.len())
        .cloned();
    let Some(section) = section else {
        return Err(err("no such configuration section".into()));
    };
    let key = rest[section.len() + 1..].to_owned();
    let Some(toml::Value::Table(sec)) = table.get_mut(&section) else {
        return Err(err("no such configuration section".into()));
    };
    let known = Config::option_keys();
    let value = match sec.get(&key) {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| err(format!("{section}.{key} takes a whole number")))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| err(format!("{section}.{key} takes a number")))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            parse_bool(raw).ok_or_else(|| err(format!("{section}.{key} takes true or false")))?,
        ),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Some(_) => toml::Value::String(raw.to_owned()),
        None => match known.iter().find(|(s, k, _)| *s == section && *k == key) {
            Some((_, _, OptionKind::Bool)) => toml::Value::Boolean(
                parse_bool(raw)
                    .ok_or_else(|| err(format!("{section}.{key} takes true or false")))?,
            ),
            Some((_, _, OptionKind::Str)) => toml::Value::String(raw.to_owned()),
            None => return Err(err(format!("no configuration key {section}.{key}"))),
        },
    };
    sec.insert(key, value);
    Ok(())
}

enum OptionKind {
    Str,
    Bool,
}

impl Config {
    /// Keys whose default is unset (they do not appear in the serialized defaults).
    fn option_keys() -> [(&'static str, &'static str, OptionKind); 6] {
        [
            ("http", "public_url", OptionKind::Str),
            ("plugins", "dir", OptionKind::Str),
            ("tls", "cert", OptionKind::Str),
            ("tls", "key", OptionKind::Str),
            ("clusters", "anonymous_events", OptionKind::Bool),
            ("ui", "dir", OptionKind::Str),
        ]
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user documentation names every key (`section.key` in backticks), so a key added
    /// here without a line in `docs/configuration.md` fails this test.
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../docs/configuration.md");
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        for (section, table) in value.as_object().unwrap() {
            for key in table.as_object().unwrap().keys() {
                let name = format!("`{section}.{key}`");
                if !doc.contains(&name) {
                    missing.push(name);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/configuration.md does not describe {}",
            missing.join(", ")
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_work_without_anything() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.storage.data_dir, PathBuf::from("./orchard-data"));
        assert_eq!(c.auth.token_ttl, 3600);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("orchard-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("o.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"127.0.0.1:1\"\nallowed_origins = [\"https://a\"]\n[auth]\ntoken_ttl = 10\nsession_max = 100\n",
        )
        .ok();
        let c = Config::load(
            Some(&file),
            env(&[
                ("ORCHARD_AUTH_TOKEN_TTL", "20"),
                ("ORCHARD_HTTP_ALLOWED_ORIGINS", "https://b, https://c"),
                ("ORCHARD_CLUSTERS_ANONYMOUS_EVENTS", "false"),
                ("ORCHARD_ADMIN_PASSWORD", "not-a-key"),
                ("ORCHARD_MACHINES_DYNAMIC_INTERVAL", "3"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:2".into()),
                data_dir: None,
            },
        );
        std::fs::remove_dir_all(&dir).ok();
        let Ok(c) = c else {
            unreachable!("config failed: {c:?}")
        };
        assert_eq!(c.http.listen, "127.0.0.1:2");
        assert_eq!(c.auth.token_ttl, 20);
        assert_eq!(c.auth.session_max, 100);
        assert_eq!(c.http.allowed_origins, vec!["https://b", "https://c"]);
        assert_eq!(c.clusters.anonymous_events, Some(false));
        assert_eq!(c.machines.dynamic_interval, 3);
    }

    /// `ORCHARD_HTTP_MAX_BODY_BYTES` for `http.max_body_bytes`.
    fn env_name(key: &str) -> String {
        format!("ORCHARD_{}", key.replace('.', "_").to_ascii_uppercase())
    }

    /// Loads the defaults with `key` set to `value` through its environment variable (plus what
    /// keeps `auth.session_max >= auth.token_ttl` true, so only `key` can be out of range).
    fn load_with(key: &str, value: &str) -> Result<Config, ConfigError> {
        let mut vars = vec![(env_name(key), value.to_owned())];
        match key {
            "auth.token_ttl" => vars.push(("ORCHARD_AUTH_SESSION_MAX".into(), YEAR.to_string())),
            "auth.session_max" => vars.push(("ORCHARD_AUTH_TOKEN_TTL".into(), "1".into())),
            // Checked against each other too: the window outlasts the longest delay.
            "auth.account_window" => {
                vars.push(("ORCHARD_AUTH_ACCOUNT_MAX_FAILURES".into(), "0".into()));
            }
            "auth.account_max_delay" => {
                vars.push(("ORCHARD_AUTH_ACCOUNT_WINDOW".into(), YEAR.to_string()));
            }
            _ => {}
        }
        Config::load(None, vars, &Overrides::default())
    }

    /// Every number in the configuration has a range, and every range names a number.
    #[test]
    fn every_numeric_key_has_a_range() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut numbers = Vec::new();
        for (section, table) in value.as_object().unwrap() {
            for (key, v) in table.as_object().unwrap() {
                if v.is_number() {
                    numbers.push(format!("{section}.{key}"));
                }
            }
        }
        let ranged: Vec<String> = RANGES.iter().map(|(k, _)| (*k).to_owned()).collect();
        let missing: Vec<_> = numbers.iter().filter(|k| !ranged.contains(k)).collect();
        assert!(missing.is_empty(), "keys without a range: {missing:?}");
        let stray: Vec<_> = ranged.iter().filter(|k| !numbers.contains(k)).collect();
        assert!(stray.is_empty(), "ranges of no numeric key: {stray:?}");
        // And the defaults are in range.
        Config::load(None, env(&[]), &Overrides::default()).unwrap();
    }

    /// Each whole-number key takes both ends of its range and refuses one beyond either end
    /// with one line naming the key, the value and the range.
    #[test]
    fn ranges_take_their_ends_and_refuse_one_beyond() {
        for (name, allowed) in RANGES {
            let Allowed::Whole(min, max) = *allowed else {
                continue;
            };
            for ok in [min, max] {
                let got = load_with(name, &ok.to_string());
                assert!(got.is_ok(), "{name} = {ok} refused: {got:?}");
            }
            let mut beyond = vec![max + 1];
            if min > 0 {
                beyond.push(min - 1);
            }
            for bad in beyond {
                let Err(e) = load_with(name, &bad.to_string()) else {
                    panic!("{name} = {bad} was accepted (range {min} to {max})");
                };
                let line = e.to_string();
                assert!(
                    line.contains(&format!("{name} = {bad} "))
                        && line.contains(&format!("{min} to {max}")),
                    "{name} = {bad}: {line}"
                );
                assert_eq!(line.lines().count(), 1, "{line}");
            }
        }
    }

    #[test]
    fn thresholds_are_finite_and_above_zero() {
        for (name, allowed) in RANGES {
            if !matches!(allowed, Allowed::Threshold) {
                continue;
            }
            for bad in ["0", "-5", "nan", "inf"] {
                let Err(e) = load_with(name, bad) else {
                    panic!("{name} = {bad} was accepted");
                };
                assert!(e.to_string().contains(&format!("{name} = ")), "{e}");
            }
            for ok in ["0.01", "85", "100", "1001"] {
                assert!(load_with(name, ok).is_ok(), "{name} = {ok} refused");
            }
        }
    }

    /// The values of the issue: each refused with one line naming the key.
    #[test]
    fn zero_and_extreme_values_are_refused() {
        for (key, value) in [
            ("http.max_body_bytes", "0"),
            ("machines.event_buffer", "1000000000000000"),
            ("auth.hash_concurrency", "1000000000000000"),
            ("ws.send_queue", "0"),
            ("http.header_timeout", "0"),
            ("clusters.debounce_ms", "0"),
            ("http.max_body_bytes", "-1"),
            ("simulator.machines", "5000000000"),
            ("log.level", "bogus"),
            ("log.level", "info,orchard=loud"),
            ("log.level", ""),
            ("log.format", "xml"),
        ] {
            let Err(e) = load_with(key, value) else {
                panic!("{key} = {value:?} was accepted");
            };
            let line = e.to_string();
            assert!(line.contains(key), "{key}: {line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }

    /// A value of the wrong type in the file is reported with its key too.
    #[test]
    fn type_errors_in_the_file_name_the_key() {
        let dir = std::env::temp_dir().join(format!("orchard-cfg-type-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("o.toml");
        let cases = [
            ("[http]\nlisten = 5\n", "http.listen = 5"),
            (
                "[ws]\nsend_queue = 1.5\n",
                "ws.send_queue = 1.5 is not a whole number",
            ),
            (
                "[alerts]\ndisk_warning = nan\n",
                "alerts.disk_warning = nan is out of range",
            ),
            (
                "[http]\nallow_insecure = \"yes\"\n",
                "http.allow_insecure = \"yes\"",
            ),
        ];
        let mut failures = Vec::new();
        for (text, expected) in cases {
            std::fs::write(&file, text).ok();
            match Config::load(Some(&file), env(&[]), &Overrides::default()) {
                Err(e) if e.to_string().contains(expected) => {}
                other => failures.push(format!("{text:?}: {other:?}")),
            }
        }
        std::fs::remove_dir_all(&dir).ok();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn log_levels_and_directives_are_accepted() {
        for level in [
            "info",
            "DEBUG",
            "warn,orchard=debug",
            "info,orchard::http=warn",
            "off",
        ] {
            assert!(load_with("log.level", level).is_ok(), "{level}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::load(
            None,
            env(&[("ORCHARD_AUTH_TOKEN_TTL", "soon")]),
            &Overrides::default(),
        );
        assert!(
            matches!(e, Err(ConfigError::Env { ref var, .. }) if var == "ORCHARD_AUTH_TOKEN_TTL")
        );
        for var in ["ORCHARD_HTTP_REQUEST_TIMEOUT", "ORCHARD_HTTP_MIN_BODY_RATE"] {
            let e = Config::load(None, env(&[(var, "0")]), &Overrides::default());
            assert!(
                matches!(e, Err(ConfigError::Invalid(ref m)) if m.contains("allowed 1 to")),
                "{var}=0: {e:?}"
            );
        }
        let e = Config::load(
            None,
            env(&[("ORCHARD_AUTH_NOPE", "1")]),
            &Overrides::default(),
        );
        assert!(e.is_err());
        let e = Config::load(
            None,
            env(&[]),
            &Overrides {
                listen: Some("localhost".into()),
                data_dir: None,
            },
        );
        assert!(e.is_err());
    }

    #[test]
    fn the_account_window_outlasts_the_longest_delay() {
        let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &Overrides::default());
        let c = load(&[]).unwrap();
        assert_eq!(
            (
                c.auth.account_max_failures,
                c.auth.account_window,
                c.auth.account_max_delay
            ),
            (20, 3600, 900)
        );
        let e = load(&[("ORCHARD_AUTH_ACCOUNT_WINDOW", "900")]).unwrap_err();
        assert!(e.to_string().contains("auth.account_window"), "{e}");
        assert!(load(&[("ORCHARD_AUTH_ACCOUNT_MAX_DELAY", "0")]).is_err());
        // Without the ceiling, the window does not matter.
        assert!(
            load(&[
                ("ORCHARD_AUTH_ACCOUNT_MAX_FAILURES", "0"),
                ("ORCHARD_AUTH_ACCOUNT_WINDOW", "1"),
            ])
            .is_ok()
        );
    }
}
