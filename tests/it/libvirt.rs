//! The libvirt backend plugin (`plugins/libvirt`) loaded into the real daemon.
//!
//! Against libvirt's built-in `test:///default` driver (no daemon): listing and properties,
//! every power action and the lifecycle events it produces on `/ws/machines/global`, bulk
//! state, metadata, create and delete, the console path, "not operational" with a bad URI and
//! `orchard plugin check`.
//!
//! Against a real libvirtd + qemu (TCG): a guest built here (Debian's cloud kernel unpacked
//! from its package, a busybox initramfs) boots; its boot output arrives through
//! `/ws/vms/{name}/console`; a stop (ACPI power button) shuts it down. That test needs the
//! libvirtd that `.ci/run` starts, and fails with the reason where it cannot reach one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backend_util::{backend, global, launch_with_settings};
use crate::fixtures::libvirt_plugin;
use crate::harness::{Daemon, eventually, orchard_command, run_to_exit, stderr_of, stdout_of};
use crate::machines::{detail, list_machines, power, power_ok, wait_status};
use crate::vms::{Got, Sock, type_in, ws_url};
use crate::ws::LIFECYCLE;
use crate::wsclient::WsClient;

/// Generous: tests run in parallel on two cores.
const T: Duration = Duration::from_secs(20);

/// The domain every `test:///default` connection starts with.
const TEST_DOMAIN: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";

/// A daemon with the libvirt plugin and these settings (TOML lines of
/// `[plugins.settings.libvirt]`), without the built-in simulator unless `simulator`.
fn daemon_with(settings: &str, simulator: bool) -> Daemon {
    let d = Daemon::builder()
        .plugin(&libvirt_plugin())
        .env(
            "ORCHARD_PLUGINS_BUILTIN_SIMULATOR",
            if simulator { "true" } else { "false" },
        )
        .build();
    launch_with_settings(d, "libvirt", settings)
}

fn test_daemon() -> Daemon {
    daemon_with(
        "uri = \"test:///default\"\nshutdown_timeout_seconds = 5\ndisk_gib = 1",
        false,
    )
}

/// Reads lifecycle events of `uuid` until `{phase}_SUCCESS` or `{phase}_FAIL`; returns their
/// types in order.
async fn lifecycle(c: &mut WsClient, uuid: &str, phase: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let v = c
            .next_matching(T, &format!("{phase} events of {uuid}"), |v| {
                LIFECYCLE.iter().any(|t| v["type"] == *t) && v["body"]["uuid"] == uuid
            })
            .await;
        let ty = v["type"].as_str().unwrap_or_default().to_owned();
        if ty.ends_with("_FAIL") {
            assert!(
                v["body"]["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{ty} without an error: {v}"
            );
        }
        let done = ty == format!("{phase}_SUCCESS") || ty == format!("{phase}_FAIL");
        seen.push(ty);
        if done {
            return seen;
        }
    }
}

fn virsh(uri: &str, args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run virsh: {e}"))
}

// ----- test:///default -----

#[tokio::test]
async fn lists_domains_with_properties_and_state() {
    let d = test_daemon();
    let admin = d.admin_token().await;
    let b = backend(&d, &admin, "libvirt").await;
    assert_eq!(b["status"], "loaded", "{b}");
    for cap in ["create", "delete", "metadata", "disks", "console", "events"] {
        assert!(
            b["capabilities"]
                .as_array()
                .is_some_and(|c| c.iter().any(|x| x == cap)),
            "capability {cap}: {b}"
        );
    }
    let list = list_machines(&d, &admin).await;
    let m = list
        .iter()
        .find(|m| m["uuid"] == TEST_DOMAIN)
        .unwrap_or_else(|| panic!("the test driver's domain is listed: {list:?}"));
    assert_eq!(m["title"], "test", "{m}");
    assert_eq!(m["vcpu"], 2, "{m}");
    assert_eq!(m["ram_max"], 8192, "{m}");
    let disks = m["disks"].as_array().expect("disks");
    assert_eq!(disks.len(), 1, "{m}");
    assert_eq!(disks[0]["name"], "vda");
    assert_eq!(disks[0]["type"], "raw");
    assert_eq!(disks[0]["system"], true);
    let nic = m["connections"]["nic0"].as_str().unwrap_or_default();
    assert!(
        nic.contains("aa:bb:cc:dd:ee:ff") && nic.contains("default"),
        "the NIC from the XML: {m}"
    );

    // Bulk state: the domain runs; figures the test driver lacks come from the XML.
    let state = eventually(T, "the first bulk state", || async {
        let s = detail(&d, &admin, TEST_DOMAIN).await["state"].clone();
        s["status"].is_string().then_some(s)
    })
    .await;
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["vcpu"], 2, "{state}");
    assert_eq!(state["ram_max"], 8192, "{state}");
    assert!(
        state["boot_timestamp"].is_string(),
        "a running domain: {state}"
    );
}

#[tokio::test]
async fn every_action_emits_its_lifecycle_events() {
    let d = test_daemon();
    let admin = d.admin_token().await;
    let mut g = global(&d, &admin, T).await;

    let m = d
        .post(
            "/api/machines",
            Some(&admin),
            &json!({"backend": "libvirt", "title": "lv one", "vcpu": 2, "ram_mib": 512,
                    "description": "made by a test", "tags": ["it"]}),
        )
        .await
        .expect(201);
    let uuid = m["uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(m["vcpu"], 2, "{m}");
    assert_eq!(m["ram_max"], 512, "{m}");
    assert_eq!(
        m["tags"],
        json!(["it"]),
        "tags kept in the domain's metadata: {m}"
    );
    assert_eq!(m["description"], "made by a test");
    let disk = &m["disks"][0];
    assert_eq!(disk["type"], "qcow2", "a new disk from the template: {m}");
    assert_eq!(disk["size_bytes"], 1u64 << 30, "disk_gib = 1: {m}");
    g.next_matching(T, "CREATE of the new machine", |v| {
        v["type"] == "CREATE" && v["body"]["uuid"] == uuid.as_str()
    })
    .await;
    wait_status(&d, &admin, &uuid, "stopped").await;

    power_ok(&d, &admin, &uuid, "start").await;
    assert_eq!(
        lifecycle(&mut g, &uuid, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_SUCCESS"]
    );
    wait_status(&d, &admin, &uuid, "running").await;

    power_ok(&d, &admin, &uuid, "suspend").await;
    wait_status(&d, &admin, &uuid, "paused").await;
    power(&d, &admin, &uuid, "suspend")
        .await
        .expect_any_error(409);
    power_ok(&d, &admin, &uuid, "resume").await;
    wait_status(&d, &admin, &uuid, "running").await;

    power_ok(&d, &admin, &uuid, "restart").await;
    assert_eq!(
        lifecycle(&mut g, &uuid, "BOOTUP").await,
        [
            "SHUTDOWN_START",
            "SHUTDOWN_SUCCESS",
            "BOOTUP_START",
            "BOOTUP_SUCCESS"
        ]
    );
    wait_status(&d, &admin, &uuid, "running").await;

    power_ok(&d, &admin, &uuid, "stop").await;
    assert_eq!(
        lifecycle(&mut g, &uuid, "SHUTDOWN").await,
        ["SHUTDOWN_START", "SHUTDOWN_SUCCESS"]
    );
    wait_status(&d, &admin, &uuid, "stopped").await;
    power(&d, &admin, &uuid, "stop").await.expect_any_error(409);

    power_ok(&d, &admin, &uuid, "start").await;
    lifecycle(&mut g, &uuid, "BOOTUP").await;
    wait_status(&d, &admin, &uuid, "running").await;
    power_ok(&d, &admin, &uuid, "force_off").await;
    wait_status(&d, &admin, &uuid, "stopped").await;

    d.delete(&format!("/api/machines/{uuid}"), Some(&admin))
        .await
        .expect(204);
    g.next_matching(T, "DELETE of the machine", |v| {
        v["type"] == "DELETE" && v["body"]["uuid"] == uuid.as_str()
    })
    .await;
    let list = list_machines(&d, &admin).await;
    assert!(list.iter().all(|m| m["uuid"] != uuid.as_str()), "{list:?}");
}

#[tokio::test]
async fn metadata_changes_are_kept_in_libvirt() {
    let d = test_daemon();
    let admin = d.admin_token().await;
    let body = d
        .patch(
            &format!("/api/machines/{TEST_DOMAIN}"),
            Some(&admin),
            &json!({"title": "renamed", "description": "new words", "tags": ["a", "b"]}),
        )
        .await
        .expect(200);
    assert_eq!(body["title"], "renamed", "{body}");
    assert_eq!(body["description"], "new words", "{body}");
    assert_eq!(body["tags"], json!(["a", "b"]), "{body}");
    // Read back from the plugin (the list refresh re-reads the domain XML).
    let after = d
        .get(&format!("/api/machines/{TEST_DOMAIN}"), Some(&admin))
        .await
        .expect(200);
    assert_eq!(after["title"], "renamed", "{after}");
}

#[tokio::test]
async fn create_refuses_bad_specs_and_delete_a_running_machine() {
    let d = test_daemon();
    let admin = d.admin_token().await;
    let r = d
        .post(
            "/api/machines",
            Some(&admin),
            &json!({"backend": "libvirt", "title": "lv big", "vcpu": 100000, "ram_mib": 512}),
        )
        .await;
    r.expect_any_error(400);
    // The running test domain is deleted too (destroyed, then undefined).
    let mut g = global(&d, &admin, T).await;
    d.delete(&format!("/api/machines/{TEST_DOMAIN}"), Some(&admin))
        .await
        .expect(204);
    g.next_matching(T, "DELETE of the test domain", |v| {
        v["type"] == "DELETE" && v["body"]["uuid"] == TEST_DOMAIN
    })
    .await;
}

#[tokio::test]
async fn console_sessions_end_when_the_machine_stops() {
    let d = test_daemon();
    let admin = d.admin_token().await;
    wait_status(&d, &admin, TEST_DOMAIN, "running").await;
    let mut s = open_console(&d, "test", &admin).await;
    type_in(&mut s, "hello\r").await;
    let mut buf = String::new();
    console_until(&mut s, &mut buf, "the echo", |b| b.contains("hello")).await;
    power_ok(&d, &admin, TEST_DOMAIN, "stop").await;
    s.expect_close(1000, T).await;
}

#[tokio::test]
async fn a_bad_uri_is_reported_and_the_daemon_keeps_running() {
    let d = daemon_with(
        "uri = \"qemu+unix:///system?socket=/nonexistent/orchard-it/libvirt-sock\"",
        true,
    );
    let admin = d.admin_token().await;
    let b = backend(&d, &admin, "libvirt").await;
    assert_eq!(b["status"], "failed", "{b}");
    let why = b["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("not operational") && why.contains("/nonexistent/orchard-it/libvirt-sock"),
        "the reason names the problem: {b}"
    );
    // Everything else works.
    let list = list_machines(&d, &admin).await;
    assert!(!list.is_empty(), "the simulator's machines: {list:?}");
    d.get("/healthz", None).await.expect(200);
}

#[test]
fn plugin_check_passes_against_the_test_driver() {
    let mut cmd = orchard_command();
    cmd.arg("plugin")
        .arg("check")
        .arg(libvirt_plugin())
        .arg("--settings")
        .arg(r#"{"uri":"test:///default","shutdown_timeout_seconds":5}"#);
    let out = run_to_exit(cmd, None, Duration::from_secs(120));
    let stdout = stdout_of(&out);
    assert!(
        out.status.success(),
        "plugin check failed:\n{stdout}\nstderr:\n{}",
        stderr_of(&out)
    );
    for step in [
        "ok    create",
        "ok    event machine_created",
        "ok    power restart",
        "ok    console output",
        "ok    delete",
        "ok    destroy",
    ] {
        assert!(stdout.contains(step), "{step:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

// ----- consoles over /ws/vms/{name}/console -----

fn check_envelope(v: &Value) {
    assert!(v["type"].is_string(), "message without a type: {v}");
    assert!(v["data"].is_object(), "message without data: {v}");
}

async fn open_console(d: &Daemon, name: &str, token: &str) -> Sock {
    let url = ws_url(d, &format!("/ws/vms/{name}/console"), &[("token", token)]);
    let mut s = Sock::open(&url, None, check_envelope).await;
    let first = s.recv(T).await;
    assert_eq!(first["type"], "connection", "{first}");
    assert_eq!(first["data"]["status"], "connected", "{first}");
    s
}

async fn console_until(s: &mut Sock, buf: &mut String, what: &str, done: impl Fn(&str) -> bool) {
    console_until_within(s, buf, what, T, done).await;
}

async fn console_until_within(
    s: &mut Sock,
    buf: &mut String,
    what: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(buf) {
        match s.next_until(deadline).await {
            Some(Got::Msg(v)) if v["type"] == "console" => {
                buf.push_str(v["data"]["content"].as_str().unwrap_or_default());
            }
            Some(Got::Msg(_)) => {}
            other => panic!("waiting for {what} on the console: {other:?}; output so far: {buf:?}"),
        }
    }
}

/// Like `console_until_within`, but answers whether `done` held instead of failing.
async fn console_wait(
    s: &mut Sock,
    buf: &mut String,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while !done(buf) {
        match s.next_until(deadline).await {
            Some(Got::Msg(v)) if v["type"] == "console" => {
                buf.push_str(v["data"]["content"].as_str().unwrap_or_default());
            }
            Some(Got::Msg(_)) => {}
            _ => return false,
        }
    }
    true
}

// ----- a real libvirtd + qemu (TCG) -----

const QEMU_URI: &str = "qemu:///system";

/// Why a TCG guest cannot run here at all, if it cannot.
fn qemu_unavailable() -> Option<String> {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    let out = match Command::new("virsh")
        .args(["-c", QEMU_URI, "version"])
        .output()
    {
        Ok(o) => o,
        Err(e) => return Some(format!("virsh cannot run: {e}")),
    };
    if !out.status.success() {
        return Some(format!(
            "libvirtd is not reachable at {QEMU_URI}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let caps = virsh(QEMU_URI, &["capabilities"]);
    if !String::from_utf8_lossy(&caps.stdout).contains("<domain type='qemu'") {
        return Some("libvirt's qemu driver offers no TCG (type='qemu') domains".into());
    }
    None
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    assert!(
        out.status.success(),
        "guest build step failed: {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's cloud kernel, unpacked from its package (downloaded once into the target dir).
fn cloud_kernel() -> PathBuf {
    let cache = Path::new(env!("CARGO_BIN_EXE_orchard"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("libvirt-guest");
    let unpacked = cache.join("x");
    if !unpacked.join("boot").is_dir() {
        std::fs::create_dir_all(&cache).expect("cache dir");
        sh(
            "pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \
             \\(linux-image-[^ ]*\\)$/\\1/p' | head -n1)\n\
             [ -n \"$pkg\" ] || { echo 'no linux-image-cloud-amd64 in apt (run apt-get update)'; exit 1; }\n\
             rm -f ./*.deb; apt-get download \"$pkg\" 2>&1\n\
             rm -rf x.tmp; dpkg-deb -x ./*.deb x.tmp; rm -rf x; mv x.tmp x",
            &cache,
        );
    }
    unpacked
}

/// Builds the guest in `dir` (readable by libvirt's qemu user): `vmlinuz` and `initrd.gz`
/// whose init says when it listens for the ACPI power button (a press before that would be
/// lost), powers off when it is pressed, and ticks meanwhile.
fn build_guest(dir: &Path) {
    let kernel = cloud_kernel();
    let script = format!(
        r#"k={kernel}
mkdir -p root/bin root/lib root/proc root/sys root/dev
cp /bin/busybox root/bin/busybox
m=$(ls -d "$k"/lib/modules/* | head -n1)/kernel
cp "$m/drivers/input/evdev.ko" "$m/drivers/acpi/button.ko" root/lib/
cat > root/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /lib/evdev.ko
insmod /lib/button.ko
echo "orchard-guest: userspace is up"
for d in /sys/class/input/event*; do
  if grep -q "Power Button" "$d/device/name" 2>/dev/null; then ev=/dev/input/${{d##*/}}; fi
done
( exec 3<"$ev"; echo "orchard-guest: listening for the power button"
  dd bs=24 count=1 <&3 >/dev/null 2>&1; echo "orchard-guest: power button"; poweroff -f ) &
while true; do echo "orchard-guest: tick"; sleep 1; done
EOF
chmod 755 root/init
(cd root && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)
cp "$k"/boot/vmlinuz-* vmlinuz
chmod 644 vmlinuz initrd.gz"#,
        kernel = kernel.display()
    );
    sh(&script, dir);
}

struct Undefine(String);

impl Drop for Undefine {
    fn drop(&mut self) {
        let _ = virsh(QEMU_URI, &["destroy", &self.0]);
        let _ = virsh(QEMU_URI, &["undefine", &self.0]);
    }
}

#[tokio::test]
async fn a_tcg_guest_boots_with_its_console_and_shuts_down() {
    // Never skipped: `.ci/run` installs qemu and starts libvirtd; without them this fails and
    // says what is missing.
    if let Some(why) = qemu_unavailable() {
        panic!("the TCG guest test needs libvirtd with qemu (start them as .ci/run does): {why}");
    }
    // qemu runs as libvirt's own user: the guest files must be readable to it.
    let dir = tempfile::Builder::new()
        .prefix("orchard-it-guest-")
        .tempdir_in("/var/tmp")
        .expect("guest dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    build_guest(dir.path());
    let name = format!(
        "orchard-it-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let p = dir.path().display();
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><title>{name}</title>\
         <memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{p}/vmlinuz</kernel>\
         <initrd>{p}/initrd.gz</initrd><cmdline>console=ttyS0 panic=-1 loglevel=4</cmdline></os>\
         <features><acpi/></features><on_poweroff>destroy</on_poweroff>\
         <on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
         <devices><serial type='pty'><target port='0'/></serial><console type='pty'/>\
         </devices></domain>"
    );
    let xml_path = dir.path().join("domain.xml");
    std::fs::write(&xml_path, xml).expect("domain xml");
    let out = virsh(QEMU_URI, &["define", &xml_path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "virsh define: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _cleanup = Undefine(name.clone());

    let d = daemon_with(
        &format!("uri = \"{QEMU_URI}\"\nshutdown_timeout_seconds = 60\nreconnect_seconds = 1"),
        false,
    );
    let admin = d.admin_token().await;
    let b = backend(&d, &admin, "libvirt").await;
    assert_eq!(b["status"], "loaded", "{b}");
    let uuid = eventually(T, "the guest in the machine list", || async {
        list_machines(&d, &admin)
            .await
            .into_iter()
            .find(|m| m["title"] == name.as_str())
            .and_then(|m| m["uuid"].as_str().map(str::to_owned))
    })
    .await;
    let mut g = global(&d, &admin, T).await;
    power_ok(&d, &admin, &uuid, "start").await;
    assert_eq!(
        lifecycle(&mut g, &uuid, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_SUCCESS"]
    );
    wait_status(&d, &admin, &uuid, "running").await;

    // Boot output through Orchard's console: the kernel's, then our init's.
    let mut s = open_console(&d, &name, &admin).await;
    let mut buf = String::new();
    console_until_within(
        &mut s,
        &mut buf,
        "the guest's userspace, listening for the power button",
        Duration::from_secs(180),
        |b| b.contains("orchard-guest: listening for the power button"),
    )
    .await;

    // Real bulk stats: CPU time and memory from qemu.
    let state = eventually(T, "qemu's figures in the state", || async {
        let st = detail(&d, &admin, &uuid).await["state"].clone();
        (st["ram_used"].as_u64().unwrap_or(0) > 0).then_some(st)
    })
    .await;
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["ram_max"], 256, "{state}");

    // A graceful stop: the ACPI power button, which the guest answers by powering off.
    power_ok(&d, &admin, &uuid, "stop").await;
    let pressed = console_wait(&mut s, &mut buf, Duration::from_secs(60), |b| {
        b.contains("orchard-guest: power button")
    })
    .await;
    assert!(
        pressed,
        "the guest never saw the power button; output: {buf:?}\ndaemon log:\n{}",
        d.logs()
    );
    assert_eq!(
        lifecycle(&mut g, &uuid, "SHUTDOWN").await,
        ["SHUTDOWN_START", "SHUTDOWN_SUCCESS"]
    );
    wait_status(&d, &admin, &uuid, "stopped").await;
    s.expect_close(1000, T).await;

    // libvirtd restarts: calls fail with the reason meanwhile, then the plugin reconnects
    // and the machine can be driven again.
    restart_libvirtd(&d, &admin, &uuid).await;
    assert_eq!(
        lifecycle(&mut g, &uuid, "BOOTUP").await,
        ["BOOTUP_START", "BOOTUP_SUCCESS"]
    );
    power_ok(&d, &admin, &uuid, "force_off").await;
    wait_status(&d, &admin, &uuid, "stopped").await;
}

fn libvirtd_pid() -> Option<u32> {
    ["/run/libvirtd.pid", "/var/run/libvirtd.pid"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Stops libvirtd (the one `.ci/run` started, by its pid file) and starts it again, checking
/// that the plugin reports the outage and then recovers: it returns once a start of `uuid`
/// was accepted again.
async fn restart_libvirtd(d: &Daemon, admin: &str, uuid: &str) {
    let pid = libvirtd_pid().expect("libvirtd writes its pid file");
    let out = Command::new("kill")
        .arg(pid.to_string())
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill libvirtd: {out:?}");
    eventually(T, "libvirtd to exit", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    // The plugin notices (keepalive / EOF) and says why calls fail.
    let why = eventually(T, "calls failing while libvirtd is down", || async {
        let r = power(d, admin, uuid, "start").await;
        (r.status >= 500).then(|| r.json().to_string())
    })
    .await;
    assert!(why.contains("error"), "{why}");
    let b = backend(d, admin, "libvirt").await;
    let last = b["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last.contains("not connected to libvirt"), "{b}");
    let out = Command::new("libvirtd")
        .arg("-d")
        .output()
        .expect("libvirtd -d");
    assert!(out.status.success(), "libvirtd -d: {out:?}");
    // Reconnected once a call goes through again: the start is accepted.
    eventually(
        Duration::from_secs(60),
        "the plugin to reconnect",
        || async { (power(d, admin, uuid, "start").await.status == 202).then_some(()) },
    )
    .await;
}
