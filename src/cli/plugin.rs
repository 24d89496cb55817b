//! `orchard plugin check PATH`: loads a plugin exactly as the daemon does, runs the
//! handshake and a conformance pass over every advertised capability, and prints what
//! passed and failed. It only changes machines it created itself.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use orchard_plugin_api::{CreateSpec, Event, MetadataUpdate, PowerAction, capability};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::backends::plugin::PluginMsg;
use crate::backends::{self, Backend};
use crate::config::Config;

struct Report {
    failed: usize,
    lines: Vec<String>,
}

impl Report {
    fn ok(&mut self, step: &str, detail: impl AsRef<str>) {
        self.line(format!("ok    {step}{}", suffix(detail.as_ref())));
    }
    fn fail(&mut self, step: &str, detail: impl AsRef<str>) {
        self.failed += 1;
        self.line(format!("FAIL  {step}{}", suffix(detail.as_ref())));
    }
    fn skip(&mut self, step: &str, detail: impl AsRef<str>) {
        self.line(format!("skip  {step}{}", suffix(detail.as_ref())));
    }
    fn line(&mut self, l: String) {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{l}");
        self.lines.push(l);
    }
}

fn suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// Runs the check; `Err` is the one line to print when the check could not run at all.
pub fn run(path: &Path, settings: Option<&str>, timeout: u64) -> Result<(), String> {
    let settings: serde_json::Value = match settings {
        Some(s) => serde_json::from_str(s).map_err(|e| format!("--settings is not JSON: {e}"))?,
        None => serde_json::json!({}),
    };
    let scratch = std::env::temp_dir().join(format!("orchard-plugin-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let mut config = Config::default();
    config.storage.data_dir = scratch.clone();
    config.plugins.call_timeout = timeout.max(1);
    config.plugins.load_timeout = timeout.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let failed = runtime.block_on(check(&config, path, settings));
    runtime.shutdown_timeout(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&scratch);
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} check(s) failed")),
    }
}

async fn check(config: &Config, path: &Path, settings: serde_json::Value) -> usize {
    let mut r = Report {
        failed: 0,
        lines: Vec::new(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The settings are looked up by the plugin's name, which is known only after describe;
    // give them under every name.
    let mut config = config.clone();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&settings) {
        config
            .plugins
            .settings
            .insert("*".into(), toml::Value::Table(t));
    }
    let backend = match backends::load_file(&config, path, tx, &[]).await {
        Ok(b) => b,
        Err(info) => {
            r.fail("load", info.last_error.unwrap_or_default());
            return r.failed;
        }
    };
    let d = backend.describe();
    r.ok(
        "load, ABI and handshake",
        format!(
            "{} {} (protocol {}), capabilities [{}]",
            d.name,
            d.version,
            d.protocol_version,
            d.capabilities.join(", ")
        ),
    );
    let hung = conformance(&backend, &mut rx, &mut r).await;
    if hung {
        r.skip(
            "destroy",
            "a call timed out; the instance cannot be destroyed safely",
        );
    } else {
        backend.destroy();
        r.ok("destroy", "");
    }
    r.failed
}

/// Returns whether a call hung (the plugin is then unusable).
async fn conformance(b: &Backend, rx: &mut UnboundedReceiver<PluginMsg>, r: &mut Report) -> bool {
    let list = match b.list_machines().await {
        Ok(l) => l,
        Err(e) => {
            r.fail("list_machines", e.to_string());
            return b.is_failed();
        }
    };
    let mut seen = HashSet::new();
    let bad: Vec<&str> = list
        .iter()
        .filter(|m| {
            uuid::Uuid::parse_str(&m.uuid).is_err()
                || !seen.insert(m.uuid.clone())
                || m.title.is_empty()
        })
        .map(|m| m.uuid.as_str())
        .collect();
    if bad.is_empty() {
        r.ok("list_machines", format!("{} machine(s)", list.len()));
    } else {
        r.fail(
            "list_machines",
            format!("invalid, duplicate or untitled: {}", bad.join(", ")),
        );
    }
    match b.bulk_state(&[]).await {
        Ok(states) => {
            let stray: Vec<&str> = states
                .iter()
                .filter(|s| !seen.contains(&s.uuid))
                .map(|s| s.uuid.as_str())
                .collect();
            if stray.is_empty() && states.len() == list.len() {
                r.ok("bulk_state (all)", format!("{} state(s)", states.len()));
            } else {
                r.fail(
                    "bulk_state (all)",
                    format!(
                        "{} states for {} machines; unknown: {}",
                        states.len(),
                        list.len(),
                        stray.join(", ")
                    ),
                );
            }
        }
        Err(e) => r.fail("bulk_state (all)", e.to_string()),
    }
    if b.is_failed() {
        return true;
    }
    // One machine asked for alone. On a live host a machine can vanish between the listing
    // and the question (someone deleted it): that is not the plugin's fault, so a machine
    // that is no longer listed is passed over for the next one, up to three.
    let mut vanished = 0;
    for machine in list.iter().take(3) {
        let one = match b.bulk_state(std::slice::from_ref(&machine.uuid)).await {
            Ok(s) if s.len() == 1 && s[0].uuid == machine.uuid => Ok(()),
            Ok(s) => Err(format!("asked for 1, got {}", s.len())),
            Err(e) => Err(e.to_string()),
        };
        let props = match b.get_properties(machine.uuid.clone()).await {
            Ok(p) if &p == machine => Ok(true),
            Ok(_) => Err("differs from list_machines".to_owned()),
            Err(crate::backends::BackendError::Unsupported(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        };
        if (one.is_err() || props.is_err())
            && b.list_machines()
                .await
                .is_ok_and(|now| now.iter().all(|m| m.uuid != machine.uuid))
        {
            vanished += 1;
            continue;
        }
        match one {
            Ok(()) => r.ok("bulk_state (one)", ""),
            Err(e) => r.fail("bulk_state (one)", e),
        }
        match props {
            Ok(true) => r.ok("get_properties", ""),
            Ok(false) => r.skip("get_properties", "not implemented"),
            Err(e) => r.fail("get_properties", e),
        }
        vanished = 0;
        break;
    }
    if vanished > 0 {
        let why = format!("{vanished} machine(s) vanished while being checked");
        r.skip("bulk_state (one)", &why);
        r.skip("get_properties", &why);
    }
    let selection: Vec<String> = list.iter().map(|m| m.uuid.clone()).collect();
    if b.has_capability(capability::DISKS) {
        match b.disks(&selection).await {
            Ok(d) => r.ok("disks", format!("{} machine(s)", d.len())),
            Err(e) => r.fail("disks", e.to_string()),
        }
    } else {
        r.skip("disks", "capability not advertised");
    }
    if b.has_capability(capability::CONNECTIONS) {
        match b.connections(&selection).await {
            Ok(c) => r.ok("connections", format!("{} machine(s)", c.len())),
            Err(e) => r.fail("connections", e.to_string()),
        }
    } else {
        r.skip("connections", "capability not advertised");
    }
    if b.is_failed() {
        return true;
    }
    if !b.has_capability(capability::CREATE) {
        r.skip(
            "create, power, console, metadata, delete",
            "needs the create capability (only machines the check creates are changed)",
        );
        return false;
    }
    let title = format!(
        "orchard-check-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let spec = CreateSpec {
        title: title.clone(),
        vcpu: 1,
        ram_mib: 256,
        description: "created by orchard plugin check".into(),
        tags: vec![],
        kind: None,
    };
    let created = match b.create(&spec).await {
        Ok(m) if m.title == title => {
            r.ok("create", m.uuid.clone());
            m
        }
        Ok(m) => {
            r.fail(
                "create",
                format!("title {:?} came back as {:?}", title, m.title),
            );
            m
        }
        Err(e) => {
            r.fail("create", e.to_string());
            return b.is_failed();
        }
    };
    let uuid = created.uuid.clone();
    let events = b.has_capability(capability::EVENTS);
    if events {
        expect_event(
            rx,
            r,
            "event machine_created",
            |e| matches!(e, Event::MachineCreated { machine } if machine.uuid == uuid),
        )
        .await;
    }
    if b.has_capability(capability::METADATA) {
        let update = MetadataUpdate {
            description: Some("updated by orchard plugin check".into()),
            ..Default::default()
        };
        match b.update_metadata(uuid.clone(), &update).await {
            Ok(m) if m.description == "updated by orchard plugin check" => {
                r.ok("update_metadata", "")
            }
            Ok(_) => r.fail("update_metadata", "the description did not change"),
            Err(e) => r.fail("update_metadata", e.to_string()),
        }
    }
    match b.power(uuid.clone(), PowerAction::Start).await {
        Ok(()) => {
            r.ok("power start", "");
            if events {
                expect_event(
                    rx,
                    r,
                    "event boot_start",
                    |e| matches!(e, Event::BootStart { uuid: u } if *u == uuid),
                )
                .await;
                expect_event(
                    rx,
                    r,
                    "event boot_success",
                    |e| matches!(e, Event::BootSuccess { uuid: u } if *u == uuid),
                )
                .await;
            }
        }
        Err(e) => r.fail("power start", e.to_string()),
    }
    power_cycle(b, rx, r, &uuid, events).await;
    if b.has_capability(capability::CONSOLE) {
        match b.console_open(uuid.clone()).await {
            Ok(opened) => {
                r.ok("console_open", "");
                let session = opened.session.clone();
                match b.console_resize(session.clone(), 100, 30).await {
                    Ok(()) => r.ok("console_resize", "100x30"),
                    Err(crate::backends::BackendError::Unsupported(_)) => {
                        r.skip("console_resize", "not implemented")
                    }
                    Err(e) => r.fail("console_resize", e.to_string()),
                }
                match b.console_write(session.clone(), b"\r".to_vec()).await {
                    Ok(()) => r.ok("console_write", ""),
                    Err(e) => r.fail("console_write", e.to_string()),
                }
                let got = wait(
                    rx,
                    |m| matches!(m, PluginMsg::Console { session: s, .. } if *s == session),
                )
                .await;
                if got {
                    r.ok("console output", "");
                } else {
                    r.fail(
                        "console output",
                        "no output within 5 s of opening and a newline",
                    );
                }
                match b.console_close(session).await {
                    Ok(()) => r.ok("console_close", ""),
                    Err(e) => r.fail("console_close", e.to_string()),
                }
            }
            Err(e) => r.fail("console_open", e.to_string()),
        }
    }
    match b.power(uuid.clone(), PowerAction::Stop).await {
        Ok(()) => {
            r.ok("power stop", "");
            if events {
                expect_event(
                    rx,
                    r,
                    "event shutdown_success",
                    |e| matches!(e, Event::ShutdownSuccess { uuid: u } if *u == uuid),
                )
                .await;
            }
        }
        Err(e) => r.fail("power stop", e.to_string()),
    }
    force_off(b, rx, r, &uuid, events).await;
    if b.has_capability(capability::DELETE) {
        match b.delete(uuid.clone()).await {
            Ok(()) => match b.list_machines().await {
                Ok(l) if l.iter().all(|m| m.uuid != uuid) => r.ok("delete", ""),
                Ok(_) => r.fail("delete", "the machine is still listed"),
                Err(e) => r.fail("delete", e.to_string()),
            },
            Err(e) => r.fail("delete", e.to_string()),
        }
    } else {
        r.skip(
            "delete",
            format!("capability not advertised; machine {uuid} stays"),
        );
    }
    b.is_failed()
}

/// Suspend, resume and restart on the running machine the check created. Each needs the
/// previous transition finished, which only events tell.
async fn power_cycle(
    b: &Backend,
    rx: &mut UnboundedReceiver<PluginMsg>,
    r: &mut Report,
    uuid: &str,
    events: bool,
) {
    if !events {
        r.skip(
            "power suspend, resume, restart",
            "needs the events capability (to know when a transition has finished)",
        );
        return;
    }
    for (name, action) in [
        ("power suspend", PowerAction::Suspend),
        ("power resume", PowerAction::Resume),
    ] {
        match b.power(uuid.to_owned(), action).await {
            Ok(()) => r.ok(name, ""),
            Err(e) => r.fail(name, e.to_string()),
        }
    }
    match b.power(uuid.to_owned(), PowerAction::Restart).await {
        Ok(()) => {
            r.ok("power restart", "");
            expect_event(
                rx,
                r,
                "restart: event shutdown_success",
                |e| matches!(e, Event::ShutdownSuccess { uuid: u } if u == uuid),
            )
            .await;
            expect_event(
                rx,
                r,
                "restart: event boot_success",
                |e| matches!(e, Event::BootSuccess { uuid: u } if u == uuid),
            )
            .await;
        }
        Err(e) => r.fail("power restart", e.to_string()),
    }
}

/// Starts the (stopped) machine again and forces it off.
async fn force_off(
    b: &Backend,
    rx: &mut UnboundedReceiver<PluginMsg>,
    r: &mut Report,
    uuid: &str,
    events: bool,
) {
    if !events {
        r.skip(
            "power force_off",
            "needs the events capability (to know the machine is running first)",
        );
        return;
    }
    if let Err(e) = b.power(uuid.to_owned(), PowerAction::Start).await {
        r.fail("power force_off", format!("starting again: {e}"));
        return;
    }
    expect_event(
        rx,
        r,
        "start again: event boot_success",
        |e| matches!(e, Event::BootSuccess { uuid: u } if u == uuid),
    )
    .await;
    match b.power(uuid.to_owned(), PowerAction::ForceOff).await {
        Ok(()) => r.ok("power force_off", ""),
        Err(e) => r.fail("power force_off", e.to_string()),
    }
}

async fn expect_event(
    rx: &mut UnboundedReceiver<PluginMsg>,
    r: &mut Report,
    step: &str,
    want: impl Fn(&Event) -> bool,
) {
    if wait(
        rx,
        |m| matches!(m, PluginMsg::Event { event, .. } if want(event)),
    )
    .await
    {
        r.ok(step, "");
    } else {
        r.fail(step, "not emitted within 5 s");
    }
}

/// Waits up to 5 s for a message matching `want`, dropping others.
async fn wait(rx: &mut UnboundedReceiver<PluginMsg>, want: impl Fn(&PluginMsg) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) if want(&m) => return true,
            Ok(Some(_)) => continue,
            _ => return false,
        }
    }
}
