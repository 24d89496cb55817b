//! The `orchard` crate: the daemon and its offline commands. `src/main.rs` only calls [`main`];
//! the start-up steps are here: parse the command line, load the configuration, open the data
//! directory and the database, then either run the daemon or an offline command.
//!
//! Everything else is private to the crate. The one other public module, [`fuzz`], hands the
//! decoders of untrusted input to the fuzz targets under `fuzz/`.

mod agent;
mod agents;
mod alerts;
mod alloc;
mod api;
mod auth;
mod backends;
mod bootstrap;
mod cli;
mod clusters;
mod config;
mod db;
mod error;
pub mod fuzz;
mod hosts;
mod machines;
mod metrics;
mod model;
mod notify;
mod secrets;
mod server;
mod state;
mod tls;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Command, Common};
use config::{Config, Overrides};

/// The whole program: what `orchard` does with its command line.
pub fn main() -> ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    // Read the admin password once and drop it from the environment, so that no child
    // process or diagnostic dump ever sees it.
    let admin_password = std::env::var("ORCHARD_ADMIN_PASSWORD").ok();
    // SAFETY: no other thread exists yet (the runtime starts below), so nothing can read
    // the environment concurrently.
    unsafe { std::env::remove_var("ORCHARD_ADMIN_PASSWORD") };
    let result = match cli.command {
        Command::Serve { common, listen } => serve(&common, listen, admin_password),
        Command::Plugin {
            action:
                cli::PluginAction::Check {
                    path,
                    settings,
                    timeout,
                },
        } => cli::plugin::run(&path, settings.as_deref(), timeout),
        Command::Agent {
            server,
            api_key_file,
            allow_commands,
            ca_file,
            metrics_interval,
            log_files,
            journal,
        } => {
            init_agent_logging();
            agent::run(agent::Options {
                server,
                api_key_file,
                allow_commands,
                ca_file,
                interval: Duration::from_secs_f64(metrics_interval.clamp(0.1, 3600.0)),
                log_files,
                journal,
            })
        }
        Command::User { common, action } => load_config(&common, None).and_then(|config| {
            let db = open_db(&config)?;
            cli::user::run(&db, action)
        }),
        Command::Db {
            common,
            action: cli::DbAction::Repair,
        } => load_config(&common, None).and_then(|config| cli::db::repair(&config.db_path())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("orchard: error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(common: &Common, listen: Option<String>) -> Result<Config, String> {
    let overrides = Overrides {
        listen,
        data_dir: common.data_dir.clone(),
    };
    Config::load(common.config.as_deref(), std::env::vars(), &overrides).map_err(|e| e.to_string())
}

fn open_db(config: &Config) -> Result<db::Db, String> {
    secrets::ensure_data_dir(&config.storage.data_dir).map_err(|e| e.to_string())?;
    db::Db::open(&config.db_path(), config.storage.audit_keep).map_err(|e| e.to_string())
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // `json`: one object per line, the event's fields at the top level. `text`: one plain
    // line per event, without a timestamp when stderr is the journal (it stamps each line).
    let _ = if config.log.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else if stderr_is_journal() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// Whether stderr is the systemd journal's stream.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|meta| is_journal_stream(&stream, &meta))
}

/// Whether `meta` is the file `$JOURNAL_STREAM` names (`DEVICE:INODE`, as systemd sets it for
/// a service whose output goes to the journal).
fn is_journal_stream(journal_stream: &std::ffi::OsStr, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    journal_stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

fn init_agent_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn serve(
    common: &Common,
    listen: Option<String>,
    admin_password: Option<String>,
) -> Result<(), String> {
    let config = load_config(common, listen)?;
    init_logging(&config);
    let addr = config.listen_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() && !config.tls_enabled() && !config.http.allow_insecure {
        return Err(format!(
            "refusing to serve plain HTTP on non-loopback address {addr}: set tls.cert and tls.key (or tls.self_signed = true), or http.allow_insecure = true"
        ));
    }
    let db = open_db(&config)?;
    let metrics = metrics::Metrics::new(db.commit_latency());
    let tls = tls::load(&config, addr.ip()).map_err(|e| e.to_string())?;
    if let Some(tls) = &tls {
        if tls.generated {
            tracing::info!(
                "generated a self-signed TLS certificate {} (replace it and its key with your own to stop browser warnings)",
                tls.cert_path.display()
            );
        }
        tracing::info!(
            certificate = %tls.cert_path.display(),
            sha256 = %tls.fingerprint,
            "serving TLS"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let jwt_secret =
        secrets::load_or_create_jwt_secret(&config.storage.data_dir).map_err(|e| e.to_string())?;
    bootstrap::ensure_admin(&db, &config.storage.data_dir, admin_password)?;
    bootstrap::warn_client_managers(&db)?;
    let hasher =
        auth::password::Hasher::new(config.auth.hash_concurrency).map_err(|e| e.to_string())?;

    // Blocking-pool threads (database, plugin calls, password hashing) end after 1 s idle,
    // not tokio's 10 s: idle threads are woken in turn, so with the once-a-second plugin polls
    // none would ever idle 10 s, and the pool would keep every thread a burst ever started.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orchard")
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let signal = server::shutdown_signal()
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let shutdown = async move {
            signal.await;
            notify::stopping();
        };
        let listener = server::bind(addr).await.map_err(|e| e.to_string())?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let grace = Duration::from_secs(config.http.shutdown_grace);
        let machines = start_machines(&config, &db, &metrics).await?;
        let clusters = clusters::Clusters::load(db.clone(), machines.clone())
            .await
            .map_err(|e| format!("cannot load clusters: {e}"))?;
        let debounce = Duration::from_millis(config.clusters.debounce_ms);
        clusters.start(debounce);
        let hosts = hosts::Hosts::new(&config.storage.data_dir)
            .map_err(|e| format!("cannot record this host's id: {e}"))?;
        hosts.start_local_sampler(Duration::from_secs(config.hosts.metrics_interval.max(1)));
        let servers = db
            .run(|db| db.servers())
            .await
            .map_err(|e| format!("cannot load agent hosts: {e}"))?;
        for s in &servers {
            hosts.add_offline(&s.server_id, &s.name);
        }
        let alerts = alerts::Alerts::load(db.clone(), config.alerts.clone(), &machines)
            .await
            .map_err(|e| format!("cannot read the alert history: {e}"))?;
        alerts.start(&hosts, &machines);
        let agents = agents::Agents::new(config.agents.clone(), hosts.clone());
        agents.start(hosts.subscribe(), alerts.subscribe());
        let state = state::AppState::new(state::Parts {
            config,
            db,
            hasher,
            jwt_secret,
            machines,
            clusters,
            hosts,
            alerts,
            agents,
            metrics,
            local_addr: local,
        });
        state.channels_hub.start(&state);
        state.machines_hub.start(&state);
        state.vms_hub.start(&state);
        state.clusters_hub.start(&state.clusters);
        let plugins: Vec<String> = state
            .machines
            .backends
            .infos()
            .iter()
            .map(|b| format!("{}={}", b.name, b.status))
            .collect();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listener = %format!("{scheme}://{local}"),
            data_dir = %state.config.storage.data_dir.display(),
            plugins = %plugins.join(","),
            "listening on {scheme}://{local}"
        );
        // The listener is bound and the plugins are loaded: the service is up.
        notify::ready(&format!("listening on {scheme}://{local}"));
        notify::start_watchdog();
        server::serve(listener, state, tls.map(|t| t.config), shutdown, grace).await;
        tracing::info!("stopped");
        Ok::<(), String>(())
    })?;
    // Give blocking database work a moment to finish, then drop the runtime; every write
    // was committed before it was acknowledged.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Loads the backends, takes their first inventory and starts the pollers.
async fn start_machines(
    config: &Config,
    db: &db::Db,
    metrics: &std::sync::Arc<metrics::Metrics>,
) -> Result<std::sync::Arc<machines::Machines>, String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let backends = backends::load_all(config, tx).await;
    let users = db
        .run(|db| db.list_users())
        .await
        .map_err(|e| e.to_string())?;
    let names = users.into_iter().map(|u| (u.uuid, u.username)).collect();
    let machines = std::sync::Arc::new(machines::Machines::new(
        backends,
        db.clone(),
        names,
        config.machines.event_buffer,
    ));
    machines.initial_sync().await;
    machines::spawn_poller(machines.clone(), rx, config, metrics);
    Ok(machines)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir();
        let here = std::fs::metadata(&dir).unwrap();
        let named = format!("{}:{}", here.dev(), here.ino());
        assert!(super::is_journal_stream(OsStr::new(&named), &here));
        let other = format!("{}:{}", here.dev(), here.ino() + 1);
        assert!(!super::is_journal_stream(OsStr::new(&other), &here));
        assert!(!super::is_journal_stream(OsStr::new(""), &here));
    }
}
