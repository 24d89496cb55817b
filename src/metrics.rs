//! The daemon's metrics, served by `GET /metrics` in the OpenMetrics text format
//! (`prometheus-client`'s encoder; Prometheus scrapes it as it is). One [`Metrics`] is built in
//! `lib.rs` and held by `AppState`; the places that count hold cheap handles to it (an atomic
//! add per event, or per write batch on the WebSocket hot path). Gauges that mirror state kept
//! elsewhere (plugin status, agent hosts online, active alerts, process figures) are read at
//! scrape time.
//!
//! Every label value comes from a fixed set: the API, the close codes the daemon sends, the
//! login result, the poll kind, and the names of the loaded plugins. Never a user name, a
//! token or a machine or server id.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The media type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The WebSocket APIs, as the `api` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// A: `/ws/machines/*`.
    Machines,
    /// B: `/ws` with a token.
    Channels,
    /// C: the agent socket and the per-server metrics/logs streams.
    Agents,
    /// E: `/ws/vms/{name}`.
    Vms,
    /// E: `/ws/vms/{name}/console`.
    Console,
    /// D: `/ws/clusters` and `/ws` without a token.
    Clusters,
    /// `/ws/echo` (conformance runs only).
    Echo,
}

impl Api {
    const ALL: [Api; 7] = [
        Api::Machines,
        Api::Channels,
        Api::Agents,
        Api::Vms,
        Api::Console,
        Api::Clusters,
        Api::Echo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Machines => "machines",
            Api::Channels => "channels",
            Api::Agents => "agents",
            Api::Vms => "vms",
            Api::Console => "console",
            Api::Clusters => "clusters",
            Api::Echo => "echo",
        }
    }
}

/// The close codes the daemon sends (contract: README "Cross-cutting"); anything else is
/// counted as `other`, so the label stays bounded whatever a code path passes.
fn code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        4008 => "4008",
        4401 => "4401",
        4403 => "4403",
        4404 => "4404",
        4409 => "4409",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabel {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    api: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    plugin: String,
    poll: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why the listener closed a connection at admission (`server::conns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// An open connection that was not producing a response, for a newcomer (every place
    /// taken).
    Evicted,
    /// A newcomer over `http.max_connections_per_ip`.
    PerIp,
    /// A newcomer when every place was taken and every holder was producing a response.
    Full,
}

/// How a login attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Success,
    /// Unknown user, wrong password or disabled account.
    Failure,
    /// Refused by the failed-login limiter before the password was checked.
    RateLimited,
}

/// The bulk polls of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    State,
    Connections,
    Disks,
}

impl Poll {
    fn as_str(self) -> &'static str {
        match self {
            Poll::State => "state",
            Poll::Connections => "connections",
            Poll::Disks => "disks",
        }
    }
}

/// One API's WebSocket counters; cloned into every socket of that API (the counters are
/// shared atomics).
#[derive(Clone)]
pub struct WsMeter {
    api: Api,
    open: Gauge,
    messages: Counter,
    bytes: Counter,
    slow: Counter,
    closes: Family<CloseLabels, Counter>,
}

impl WsMeter {
    pub fn api(&self) -> Api {
        self.api
    }

    /// A socket of this API opened (see [`WsMeter::disconnected`]).
    pub fn connected(&self) {
        self.open.inc();
    }

    pub fn disconnected(&self) {
        self.open.dec();
    }

    /// `n` text messages were written to a peer.
    pub fn sent(&self, n: u64) {
        self.messages.inc_by(n);
    }

    /// `n` bytes (WebSocket frames, before TLS) were written to a peer.
    pub fn wrote(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    /// A close frame with `code` is being sent.
    pub fn closing(&self, code: u16) {
        self.closes
            .get_or_create(&CloseLabels {
                api: self.api.as_str(),
                code: code_label(code),
            })
            .inc();
    }

    /// A client that did not keep up was dropped (4008).
    pub fn slow_consumer(&self) {
        self.slow.inc();
    }
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    ws: Vec<WsMeter>,
    logins: Family<ResultLabel, Counter>,
    shed: Family<ReasonLabel, Counter>,
    poll_duration: Family<PollLabels, Histogram, fn() -> Histogram>,
    poll_errors: Family<PollLabels, Counter>,
    backend_up: Family<PluginLabel, Gauge>,
    agent_hosts_online: Gauge,
    alerts_active: Gauge,
    resident_memory: Gauge,
    open_fds: Gauge,
    uptime: FloatGauge,
    started: Instant,
}

/// Buckets for durations from 0.5 ms to ~16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A histogram for redb commit latency, made by `db/` at open and registered by
/// [`Metrics::new`].
pub fn commit_histogram() -> Histogram {
    latency_histogram()
}

impl Metrics {
    /// Registers every metric; `db_commits` is the store's commit-latency histogram.
    pub fn new(db_commits: Histogram) -> Arc<Self> {
        let mut registry = Registry::default();
        let o = registry.sub_registry_with_prefix("orchard");
        let open = Family::<ApiLabel, Gauge>::default();
        let messages = Family::<ApiLabel, Counter>::default();
        let bytes = Family::<ApiLabel, Counter>::default();
        let slow = Family::<ApiLabel, Counter>::default();
        let closes = Family::<CloseLabels, Counter>::default();
        o.register("ws_connections", "Open WebSocket connections", open.clone());
        o.register(
            "ws_messages_sent",
            "WebSocket text messages written to peers",
            messages.clone(),
        );
        o.register_with_unit(
            "ws_sent",
            "WebSocket bytes written to peers (frames, before TLS)",
            Unit::Bytes,
            bytes.clone(),
        );
        o.register(
            "ws_slow_consumers",
            "WebSocket clients dropped because they did not keep up (4008)",
            slow.clone(),
        );
        o.register(
            "ws_closes",
            "WebSocket close frames sent by the daemon, by close code",
            closes.clone(),
        );
        let ws = Api::ALL
            .iter()
            .map(|&api| {
                let l = ApiLabel { api: api.as_str() };
                WsMeter {
                    api,
                    open: open.get_or_create_owned(&l),
                    messages: messages.get_or_create_owned(&l),
                    bytes: bytes.get_or_create_owned(&l),
                    slow: slow.get_or_create_owned(&l),
                    closes: closes.clone(),
                }
            })
            .collect();
        let logins = Family::<ResultLabel, Counter>::default();
        for result in ["success", "failure", "rate_limited"] {
            logins.get_or_create_owned(&ResultLabel { result });
        }
        o.register("logins", "Login attempts, by result", logins.clone());
        let shed = Family::<ReasonLabel, Counter>::default();
        for reason in ["evicted", "per_ip", "full"] {
            shed.get_or_create_owned(&ReasonLabel { reason });
        }
        o.register(
            "http_connections_shed",
            "HTTP connections closed at admission: evicted for a newcomer, or a newcomer refused (per_ip, full)",
            shed.clone(),
        );
        let poll_duration: Family<PollLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        o.register_with_unit(
            "backend_poll_duration",
            "Duration of a backend's bulk polls",
            Unit::Seconds,
            poll_duration.clone(),
        );
        let poll_errors = Family::<PollLabels, Counter>::default();
        o.register(
            "backend_poll_errors",
            "Backend bulk polls that failed",
            poll_errors.clone(),
        );
        let backend_up = Family::<PluginLabel, Gauge>::default();
        o.register(
            "backend_up",
            "1 for a loaded backend plugin, 0 for a failed one",
            backend_up.clone(),
        );
        let agent_hosts_online = Gauge::default();
        o.register(
            "agent_hosts_online",
            "Agent hosts with a live connection",
            agent_hosts_online.clone(),
        );
        let alerts_active = Gauge::default();
        o.register(
            "alerts_active",
            "Alerts currently raised",
            alerts_active.clone(),
        );
        o.register_with_unit(
            "db_commit_duration",
            "Duration of database write-transaction commits",
            Unit::Seconds,
            db_commits,
        );
        let uptime = FloatGauge::default();
        o.register_with_unit(
            "uptime",
            "Time since the daemon started",
            Unit::Seconds,
            uptime.clone(),
        );
        // The process figures under the names every Prometheus client gives them.
        let resident_memory = Gauge::default();
        let open_fds = Gauge::default();
        let start_time = FloatGauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident set size",
            Unit::Bytes,
            resident_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            open_fds.clone(),
        );
        registry.register_with_unit(
            "process_start_time",
            "Start time of the daemon since the Unix epoch",
            Unit::Seconds,
            start_time.clone(),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        start_time.set(now.as_secs_f64());
        Arc::new(Self {
            shed,
            registry,
            ws,
            logins,
            poll_duration,
            poll_errors,
            backend_up,
            agent_hosts_online,
            alerts_active,
            resident_memory,
            open_fds,
            uptime,
            started: Instant::now(),
        })
    }

    /// The counters of one WebSocket API.
    pub fn ws(&self, api: Api) -> WsMeter {
        let i = Api::ALL.iter().position(|&a| a == api).unwrap_or(0);
        self.ws[i].clone()
    }

    /// A connection closed at admission.
    pub fn connection_shed(&self, why: Shed) {
        let reason = match why {
            Shed::Evicted => "evicted",
            Shed::PerIp => "per_ip",
            Shed::Full => "full",
        };
        self.shed.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn login(&self, result: Login) {
        let result = match result {
            Login::Success => "success",
            Login::Failure => "failure",
            Login::RateLimited => "rate_limited",
        };
        self.logins.get_or_create(&ResultLabel { result }).inc();
    }

    /// One bulk poll of `plugin` took `took`; `ok` is whether it succeeded.
    pub fn poll(&self, plugin: &str, poll: Poll, took: Duration, ok: bool) {
        let labels = PollLabels {
            plugin: plugin.to_owned(),
            poll: poll.as_str(),
        };
        self.poll_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let errors = self.poll_errors.get_or_create(&labels);
        if !ok {
            errors.inc();
        }
    }

    /// Sets the scrape-time gauges from what the caller read and encodes everything.
    pub fn encode(&self, now: Snapshot<'_>) -> Result<String, std::fmt::Error> {
        for (plugin, up) in now.backends {
            self.backend_up
                .get_or_create(&PluginLabel {
                    plugin: plugin.clone(),
                })
                .set(i64::from(*up));
        }
        self.agent_hosts_online
            .set(saturating(now.agent_hosts_online));
        self.alerts_active.set(saturating(now.alerts_active));
        if let Some(rss) = resident_bytes() {
            self.resident_memory.set(saturating(rss));
        }
        if let Some(fds) = open_fds() {
            self.open_fds.set(saturating(fds));
        }
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What a scrape reads from the rest of the daemon.
pub struct Snapshot<'a> {
    /// Every backend plugin by name, with whether it is up (loaded and not failed).
    pub backends: &'a [(String, bool)],
    pub agent_hosts_online: usize,
    pub alerts_active: usize,
}

fn saturating(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The resident set size, from `/proc/self/status` (`VmRSS: … kB`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors: the entries of `/proc/self/fd`.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_count_per_api_and_unknown_close_codes_are_other() {
        let m = Metrics::new(commit_histogram());
        let console = m.ws(Api::Console);
        console.connected();
        console.sent(3);
        console.wrote(120);
        console.closing(4401);
        console.closing(4999);
        m.ws(Api::Machines).sent(1);
        m.login(Login::RateLimited);
        m.poll("simulator", Poll::Disks, Duration::from_millis(3), false);
        let text = m
            .encode(Snapshot {
                backends: &[("simulator".into(), true), ("libvirt".into(), false)],
                agent_hosts_online: 2,
                alerts_active: 1,
            })
            .unwrap();
        for line in [
            r#"orchard_ws_connections{api="console"} 1"#,
            r#"orchard_ws_messages_sent_total{api="console"} 3"#,
            r#"orchard_ws_messages_sent_total{api="machines"} 1"#,
            r#"orchard_ws_sent_bytes_total{api="console"} 120"#,
            r#"orchard_ws_closes_total{api="console",code="4401"} 1"#,
            r#"orchard_ws_closes_total{api="console",code="other"} 1"#,
            r#"orchard_logins_total{result="rate_limited"} 1"#,
            r#"orchard_logins_total{result="success"} 0"#,
            r#"orchard_backend_poll_errors_total{plugin="simulator",poll="disks"} 1"#,
            r#"orchard_backend_up{plugin="simulator"} 1"#,
            r#"orchard_backend_up{plugin="libvirt"} 0"#,
            "orchard_agent_hosts_online 2",
            "orchard_alerts_active 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
