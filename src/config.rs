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
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| match file {
                    Some(path) => ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    },
                    None => ConfigError::Invalid(e.message().to_owned()),
                })?;
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
        if self.http.request_timeout == 0 || self.http.min_body_rate == 0 {
            return Err(ConfigError::Invalid(
                "http.request_timeout and http.min_body_rate must be at least 1".into(),
            ));
        }
        if self.plugins.call_timeout == 0 || self.plugins.load_timeout == 0 {
            return Err(ConfigError::Invalid(
                "plugins.call_timeout and plugins.load_timeout must be at least 1".into(),
            ));
        }
        if self.machines.dynamic_interval == 0
            || self.machines.connections_interval == 0
            || self.machines.disks_interval == 0
        {
            return Err(ConfigError::Invalid(
                "machines.*_interval must be at least 1".into(),
            ));
        }
        if self.machines.event_buffer == 0 {
            return Err(ConfigError::Invalid(
                "machines.event_buffer must be at least 1".into(),
            ));
        }
        if self.auth.token_ttl == 0 {
            return Err(ConfigError::Invalid(
                "auth.token_ttl must be at least 1".into(),
            ));
        }
        if self.auth.session_max < self.auth.token_ttl {
            return Err(ConfigError::Invalid(
                "auth.session_max must be at least auth.token_ttl".into(),
            ));
        }
        if self.auth.account_max_delay == 0 {
            return Err(ConfigError::Invalid(
                "auth.account_max_delay must be at least 1".into(),
            ));
        }
        if self.auth.account_max_failures > 0
            && self.auth.account_window <= self.auth.account_max_delay
        {
            return Err(ConfigError::Invalid(
                "auth.account_window must be longer than auth.account_max_delay".into(),
            ));
        }
        if self.auth.hash_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "auth.hash_concurrency must be at least 1".into(),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log.format must be \"text\" or \"json\"".into(),
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key must be set together".into(),
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
                matches!(e, Err(ConfigError::Invalid(ref m)) if m.contains("at least 1")),
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
