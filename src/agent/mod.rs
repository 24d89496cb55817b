//! `orchard agent`: connects to a daemon's `/api/v1/agents/ws`, authenticates with its API
//! key, sends sysinfo metrics every interval, runs commands, docker commands and package
//! operations when allowed (`--allow-commands`), forwards log lines from files and the
//! journal, and reconnects with exponential backoff and jitter after any loss. A bad message
//! from the server is logged and skipped, never fatal. `wss://` verifies the server against
//! the system's roots or `--ca-file`; plain `ws://` is only for loopback.

pub mod docker;
pub mod exec;
pub mod packages;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::hosts::Sampler;
use crate::model::now_iso;

/// What the agent says when it was not started with `--allow-commands`.
pub const REFUSED: &str =
    "this agent does not run commands (start `orchard agent` with --allow-commands to allow them)";

const AUTH_WAIT: Duration = Duration::from_secs(15);
/// Silence from the server after which the connection is taken as lost.
const SERVER_SILENCE: Duration = Duration::from_secs(90);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Log lines buffered while disconnected (older ones are dropped first... by refusing new).
const LOG_BUFFER: usize = 1000;

pub struct Options {
    pub server: String,
    pub api_key_file: PathBuf,
    pub allow_commands: bool,
    pub ca_file: Option<PathBuf>,
    pub interval: Duration,
    pub log_files: Vec<PathBuf>,
    /// Follow the systemd journal too.
    pub journal: bool,
}

/// Where to connect: the address to dial, the TLS server name (for `wss://`), and the
/// request URL.
#[derive(Debug, PartialEq)]
pub struct Endpoint {
    pub addr: String,
    pub url: String,
    /// The name the server's certificate must carry; `None` for plain `ws://`.
    pub tls_name: Option<String>,
}

/// Checks and completes the server URL: `wss://` (or `https://`) anywhere, `ws://` (or
/// `http://`) only to a loopback address; `/api/v1/agents/ws` when no path is given.
pub fn endpoint(server: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = server
        .split_once("://")
        .ok_or_else(|| format!("--server {server:?}: expected ws://HOST:PORT"))?;
    let tls = match scheme {
        "ws" | "http" => false,
        "wss" | "https" => true,
        other => {
            return Err(format!(
                "--server: unsupported scheme {other:?} (use ws:// or wss://)"
            ));
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("--server {server:?}: expected ws://HOST:PORT"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) if authority.starts_with('[') && authority.ends_with(']') => {
                (authority, default_port)
            }
            Err(_) => return Err(format!("--server {server:?}: bad port {p:?}")),
        },
        _ => (authority, default_port),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(format!(
            "refusing plain ws:// to {host}: the API key would cross the network in clear; ws:// is only for loopback, use wss://"
        ));
    }
    if bare.is_empty() {
        return Err(format!("--server {server:?}: expected ws://HOST:PORT"));
    }
    let path = if path.is_empty() || path == "/" {
        "/api/v1/agents/ws"
    } else {
        path
    };
    let addr = if bare.eq_ignore_ascii_case("localhost") && !tls {
        format!("127.0.0.1:{port}")
    } else if let Ok(ip) = bare.parse::<IpAddr>() {
        SocketAddr::new(ip, port).to_string()
    } else {
        format!("{bare}:{port}")
    };
    let scheme = if tls { "wss" } else { "ws" };
    Ok(Endpoint {
        url: format!("{scheme}://{authority}{path}"),
        addr,
        tls_name: tls.then(|| bare.to_owned()),
    })
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(opts: Options) -> Result<(), String> {
    let ep = endpoint(&opts.server)?;
    let tls = match &ep.tls_name {
        Some(_) => Some(tls_config(opts.ca_file.as_deref())?),
        None => {
            if opts.ca_file.is_some() {
                tracing::warn!("--ca-file is ignored for ws://");
            }
            None
        }
    };
    let key = std::fs::read_to_string(&opts.api_key_file)
        .map_err(|e| format!("cannot read {}: {e}", opts.api_key_file.display()))?
        .trim()
        .to_owned();
    if key.is_empty() {
        return Err(format!("{} is empty", opts.api_key_file.display()));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&opts.api_key_file)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %opts.api_key_file.display(),
                "the API key file is readable by others; chmod 600 it"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("orchard-agent")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let stop = crate::server::shutdown_signal()
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        tokio::select! {
            () = agent_loop(ep, tls, key, opts) => {}
            () = stop => tracing::info!("agent stopping"),
        }
        Ok::<(), String>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of a window
/// that doubles per failure, up to [`BACKOFF_MAX`].
struct Backoff {
    window: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            window: BACKOFF_MIN,
        }
    }

    fn reset(&mut self) {
        self.window = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        let w = self.window;
        self.window = (self.window * 2).min(BACKOFF_MAX);
        let mut b = [0u8; 4];
        let r = getrandom::fill(&mut b)
            .map(|()| u32::from_le_bytes(b))
            .unwrap_or(0);
        let frac = 0.5 + 0.5 * f64::from(r) / f64::from(u32::MAX);
        w.mul_f64(frac)
    }
}

/// The TLS client configuration: the certificates of `--ca-file`, else the system's roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(match ca_file {
            Some(p) => format!("--ca-file {} holds no certificate", p.display()),
            None => {
                "no trusted root certificates on this system; give the server's CA with --ca-file"
                    .into()
            }
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn agent_loop(
    ep: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    key: String,
    opts: Options,
) {
    let sampler = match tokio::task::spawn_blocking(Sampler::new).await {
        Ok(Some(s)) => Some(Arc::new(Mutex::new(s))),
        _ => {
            tracing::warn!("cannot read this host's figures; metrics are off");
            None
        }
    };
    let (log_tx, mut log_rx) = mpsc::channel(LOG_BUFFER);
    for f in &opts.log_files {
        tokio::spawn(tail(f.clone(), log_tx.clone()));
    }
    if opts.journal {
        tokio::spawn(journal(log_tx.clone()));
    }
    drop(log_tx);
    let mut backoff = Backoff::new();
    loop {
        match connect_and_run(
            &ep,
            tls.as_ref(),
            &key,
            &opts,
            sampler.as_ref(),
            &mut log_rx,
        )
        .await
        {
            Ok(()) => {
                tracing::warn!("connection to the server lost; reconnecting");
                backoff.reset();
            }
            Err(e) => tracing::warn!("{e}"),
        }
        let wait = backoff.next();
        tracing::info!(seconds = wait.as_secs_f64(), "reconnecting after a pause");
        tokio::time::sleep(wait).await;
    }
}

/// Dials the server (TLS for `wss://`) and runs one session over the connection.
async fn connect_and_run(
    ep: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
    key: &str,
    opts: &Options,
    sampler: Option<&Arc<Mutex<Sampler>>>,
    logs: &mut mpsc::Receiver<Value>,
) -> Result<(), String> {
    let tcp = tokio::time::timeout(AUTH_WAIT, TcpStream::connect(&ep.addr))
        .await
        .map_err(|_| format!("connecting to {} timed out", ep.addr))?
        .map_err(|e| format!("cannot connect to {}: {e}", ep.addr))?;
    match (tls, &ep.tls_name) {
        (Some(config), Some(name)) => {
            let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("bad TLS server name {name:?}: {e}"))?;
            let stream = tokio::time::timeout(
                AUTH_WAIT,
                tokio_rustls::TlsConnector::from(config.clone()).connect(server_name, tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake with {name} failed: {e}"))?;
            session(stream, ep, key, opts, sampler, logs).await
        }
        _ => session(tcp, ep, key, opts, sampler, logs).await,
    }
}

/// One connection: `Ok` after an authenticated session ended, `Err` when it never got
/// that far.
async fn session<S>(
    stream: S,
    ep: &Endpoint,
    key: &str,
    opts: &Options,
    sampler: Option<&Arc<Mutex<Sampler>>>,
    logs: &mut mpsc::Receiver<Value>,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let tcp = stream;
    let (mut ws, _) = tokio::time::timeout(
        AUTH_WAIT,
        tokio_tungstenite::client_async(ep.url.as_str(), tcp),
    )
    .await
    .map_err(|_| "WebSocket handshake timed out".to_owned())?
    .map_err(|e| format!("WebSocket handshake with {} failed: {e}", ep.url))?;
    let hostname = sysinfo::System::host_name().unwrap_or_default();
    send(
        &mut ws,
        &json!({"type": "auth", "api_key": key, "hostname": hostname}),
    )
    .await
    .map_err(|e| format!("cannot send auth: {e}"))?;
    let server_id = tokio::time::timeout(AUTH_WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("auth_success") => {
                            return Ok(v["server_id"].as_str().unwrap_or_default().to_owned());
                        }
                        Some("error") => {
                            return Err(format!(
                                "the server refused the agent: {}",
                                v["message"].as_str().unwrap_or("(no reason)")
                            ));
                        }
                        _ => tracing::debug!("message before auth_success skipped"),
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(format!(
                        "the server closed the connection during authentication ({})",
                        f.map_or_else(
                            || "no code".into(),
                            |f| format!("{} {}", u16::from(f.code), f.reason)
                        )
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(format!("connection failed during authentication: {e}"));
                }
                None => return Err("connection closed during authentication".into()),
            }
        }
    })
    .await
    .map_err(|_| "no answer to authentication".to_owned())??;
    tracing::info!(server_id, "connected and authenticated");

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let mut tick = tokio::time::interval(opts.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut silence = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(s) = sampler {
                    let s = s.clone();
                    let sample = tokio::task::spawn_blocking(move || {
                        s.lock().unwrap_or_else(|p| p.into_inner()).sample()
                    }).await;
                    if let Ok(m) = sample
                        && send(&mut ws, &metrics_message(&server_id, &m)).await.is_err()
                    {
                        return Ok(());
                    }
                }
            }
            _ = silence.tick() => {
                if heard.elapsed() > SERVER_SILENCE {
                    tracing::warn!("the server has been silent too long");
                    return Ok(());
                }
            }
            Some(v) = out_rx.recv() => {
                if send(&mut ws, &v).await.is_err() {
                    return Ok(());
                }
            }
            Some(v) = logs.recv() => {
                if send(&mut ws, &v).await.is_err() {
                    return Ok(());
                }
            }
            msg = ws.next() => {
                heard = tokio::time::Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => on_server_text(t.as_str(), opts.allow_commands, &out_tx),
                    Some(Ok(Message::Close(f))) => {
                        tracing::warn!(code = f.as_ref().map(|f| u16::from(f.code)), "the server closed the connection");
                        return Ok(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "connection failed");
                        return Ok(());
                    }
                    None => return Ok(()),
                }
            }
        }
    }
}

async fn send<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    v: &Value,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(v.to_string())).await
}

fn metrics_message(server_id: &str, m: &crate::hosts::HostMetrics) -> Value {
    let disks: Vec<Value> = m
        .disks
        .iter()
        .map(|d| {
            json!({"mount": d.mount, "total_bytes": d.total_bytes, "used_bytes": d.used_bytes,
                "percent": m.disk_usage.get(&d.mount).copied().unwrap_or(0.0)})
        })
        .collect();
    json!({
        "type": "metrics",
        "server_id": server_id,
        "cpu_percent": m.cpu_usage,
        "memory_percent": m.memory_usage,
        "disk_usage": disks,
        "network": m.network,
        "load_average": m.load_average,
        "timestamp": now_iso(),
    })
}

/// The most a command's output may take in its answer, once JSON-encoded: well under the
/// server's 1 MiB limit on agent messages (escaping can make output six times larger).
const ANSWER_BUDGET: usize = 768 * 1024;

/// Shortens the longer of the two outputs until both fit the answer budget.
fn fit(mut stdout: String, mut stderr: String) -> (String, String) {
    let encoded = |s: &str| serde_json::to_string(s).map_or(s.len(), |e| e.len());
    while encoded(&stdout) + encoded(&stderr) > ANSWER_BUDGET {
        let longer = if stdout.len() >= stderr.len() {
            &mut stdout
        } else {
            &mut stderr
        };
        let mut cut = longer.len() / 2;
        while !longer.is_char_boundary(cut) {
            cut -= 1;
        }
        longer.truncate(cut);
        longer.push_str("\n[output shortened to fit the answer]");
    }
    (stdout, stderr)
}

/// Handles one server message; jobs run in their own tasks and answer through `out`.
fn on_server_text(text: &str, allow: bool, out: &mpsc::UnboundedSender<Value>) {
    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
        tracing::warn!("unreadable message from the server skipped");
        return;
    };
    let kind = msg
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let s = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let timeout = Duration::from_secs(
        msg.get("timeout")
            .and_then(Value::as_u64)
            .unwrap_or(30)
            .clamp(1, 24 * 3600),
    );
    let response = match kind.as_str() {
        "command" => "command_response",
        "docker_command" => "docker_response",
        "package_operation" => "package_response",
        "error" => {
            tracing::warn!(message = s("message"), "the server reported an error");
            return;
        }
        "auth_success" | "pong" | "heartbeat" => return,
        other => {
            tracing::debug!(kind = other, "unknown message from the server skipped");
            return;
        }
    };
    // An answer goes back under the job's id; a job without one could be answered to no one.
    let id = match msg.get("command_id").or_else(|| msg.get("request_id")) {
        Some(Value::String(id)) if !id.is_empty() => Value::String(id.clone()),
        _ => {
            tracing::warn!(kind, "a job without a command_id skipped");
            return;
        }
    };
    if !allow {
        tracing::warn!(
            kind,
            "refused a job: commands are not allowed on this agent"
        );
        let _ = out.send(json!({"type": response, "command_id": id, "error": REFUSED}));
        return;
    }
    let out = out.clone();
    match kind.as_str() {
        "command" => {
            let command = s("command");
            tokio::spawn(async move {
                tracing::info!("running a command from the server");
                let v = match exec::run_shell(&command, timeout).await {
                    Ok(o) => {
                        let (stdout, stderr) = fit(o.stdout, o.stderr);
                        json!({"type": response, "command_id": id, "exit_code": o.exit_code,
                            "stdout": stdout, "stderr": stderr, "duration_ms": o.duration_ms})
                    }
                    Err(e) => json!({"type": response, "command_id": id, "error": e}),
                };
                let _ = out.send(v);
            });
        }
        "docker_command" => {
            let (action, container) = (s("action"), s("container_id"));
            tokio::spawn(async move {
                let v = match docker::run(&action, &container, timeout).await {
                    Ok((success, message)) => json!({"type": response, "command_id": id,
                        "success": success, "message": message}),
                    Err(e) => json!({"type": response, "command_id": id, "success": false,
                        "message": e.clone(), "error": e}),
                };
                let _ = out.send(v);
            });
        }
        _ => {
            let (operation, package) = (s("operation"), s("package"));
            tokio::spawn(async move {
                let progress_out = out.clone();
                let progress_id = id.clone();
                let mut progress = move |p: &Value| {
                    let mut m = p.clone();
                    m["type"] = json!("package_progress");
                    m["command_id"] = progress_id.clone();
                    let _ = progress_out.send(m);
                };
                let v = match packages::run(&operation, &package, timeout, &mut progress).await {
                    Ok(mut v) => {
                        v["type"] = json!(response);
                        v["command_id"] = id;
                        v
                    }
                    Err(e) => json!({"type": response, "command_id": id, "error": e}),
                };
                let _ = out.send(v);
            });
        }
    }
}

/// Follows the systemd journal (`journalctl -f -o json`, new entries only) and queues each
/// entry as a `log` message, its level from the entry's priority. A journalctl that exits is
/// started again after a pause; one that cannot be started ends the forwarding.
async fn journal(tx: mpsc::Sender<Value>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    loop {
        let child = tokio::process::Command::new("journalctl")
            .args(["-f", "-n", "0", "-o", "json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the journal; journal forwarding is off");
                return;
            }
        };
        if let Some(out) = child.stdout.take() {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(message) = v["MESSAGE"].as_str() else {
                    continue;
                };
                let level = match v["PRIORITY"].as_str().and_then(|p| p.parse::<u8>().ok()) {
                    Some(0..=2) => "CRITICAL",
                    Some(3) => "ERROR",
                    Some(4) => "WARNING",
                    Some(7) => "DEBUG",
                    _ => "INFO",
                };
                let source = v["SYSLOG_IDENTIFIER"]
                    .as_str()
                    .or_else(|| v["_SYSTEMD_UNIT"].as_str())
                    .unwrap_or("journal");
                let msg: String = message.chars().take(8192).collect();
                let _ = tx.try_send(json!({"type": "log", "level": level, "message": msg,
                    "timestamp": now_iso(), "source": source}));
            }
        }
        let _ = child.wait().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Follows a log file from its end and queues each new line as a `log` message.
async fn tail(path: PathBuf, tx: mpsc::Sender<Value>) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let source = path.display().to_string();
    let mut pos = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut partial = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok(len) = tokio::fs::metadata(&path).await.map(|m| m.len()) else {
            continue;
        };
        if len < pos {
            pos = 0; // truncated or rotated
        }
        if len == pos {
            continue;
        }
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            continue;
        };
        if f.seek(std::io::SeekFrom::Start(pos)).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        let Ok(n) = (&mut f).take(len - pos).read_to_end(&mut buf).await else {
            continue;
        };
        pos += n as u64;
        partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let upper = line.to_ascii_uppercase();
            let level = if upper.contains("CRIT") || upper.contains("FATAL") {
                "CRITICAL"
            } else if upper.contains("ERROR") {
                "ERROR"
            } else if upper.contains("WARN") {
                "WARNING"
            } else {
                "INFO"
            };
            let msg: String = line.chars().take(8192).collect();
            let _ = tx.try_send(json!({"type": "log", "level": level, "message": msg,
                "timestamp": now_iso(), "source": source}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            endpoint("ws://127.0.0.1:8080").unwrap(),
            Endpoint {
                addr: "127.0.0.1:8080".into(),
                url: "ws://127.0.0.1:8080/api/v1/agents/ws".into(),
                tls_name: None,
            }
        );
        assert_eq!(
            endpoint("wss://orchard.example.com").unwrap(),
            Endpoint {
                addr: "orchard.example.com:443".into(),
                url: "wss://orchard.example.com/api/v1/agents/ws".into(),
                tls_name: Some("orchard.example.com".into()),
            }
        );
        assert_eq!(
            endpoint("http://localhost:9/").unwrap().url,
            "ws://localhost:9/api/v1/agents/ws"
        );
        assert_eq!(endpoint("ws://[::1]:7/x").unwrap().addr, "[::1]:7");
        assert!(
            endpoint("ws://10.0.0.1:8080")
                .unwrap_err()
                .contains("loopback")
        );
        assert!(
            endpoint("http://example.com")
                .unwrap_err()
                .contains("wss://")
        );
        assert!(endpoint("ftp://x").is_err());
        assert!(endpoint("127.0.0.1:8080").is_err());
    }

    #[test]
    fn outputs_fit_the_answer() {
        let noisy = "\u{1}".repeat(exec::OUTPUT_LIMIT);
        let (o, e) = fit(noisy.clone(), noisy);
        let size =
            serde_json::to_string(&o).unwrap().len() + serde_json::to_string(&e).unwrap().len();
        assert!(size <= ANSWER_BUDGET, "{size}");
        assert!(o.ends_with("[output shortened to fit the answer]"));
        assert_eq!(fit("a".into(), "b".into()), ("a".into(), "b".into()));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            assert!(b.next() <= BACKOFF_MAX);
        }
        assert!(b.next() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
