//! Cross-site WebSocket hijacking: an upgrade carrying a foreign `Origin` is refused with
//! HTTP 403 before any WebSocket exists, on every WebSocket route (token-less ones included);
//! the daemon's own origin is accepted.

use super::{KINDS, World};
use crate::wsclient::Connect;

#[tokio::test]
async fn a_foreign_origin_is_refused_403_on_every_websocket_route() {
    let w = World::new(&[]).await;
    let port = w.d.addr().port();
    let own = format!("http://127.0.0.1:{port}");
    let foreign = [
        "http://evil.example".to_owned(),
        format!("http://evil.example:{port}"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        "null".to_owned(),
    ];
    // Every route with the admin's token, then the token-less ones: D's anonymous `/ws`,
    // `/ws/clusters`, the agent socket, and C's streams before their first message.
    let mut routes: Vec<(String, bool)> = KINDS.iter().map(|k| (w.path(*k), true)).collect();
    for path in [
        "/ws".to_owned(),
        "/ws/clusters".to_owned(),
        "/api/v1/agents/ws".to_owned(),
        format!("/api/v1/ws/metrics/{}", w.server_id),
    ] {
        routes.push((path, false));
    }
    let connect = |path: &str, with_token: bool, origin: &str| {
        let c = Connect::new(&w.d, path).origin(origin);
        if with_token {
            c.access_token(&w.admin)
        } else {
            c
        }
    };
    for (path, with_token) in &routes {
        for origin in &foreign {
            let status = connect(path, *with_token, origin).refused_status().await;
            assert_eq!(
                status, 403,
                "{path} (token: {with_token}) with Origin {origin}"
            );
        }
        assert!(
            connect(path, *with_token, &own).try_connect().await.is_ok(),
            "{path} (token: {with_token}) with its own Origin {own}"
        );
    }
}

/// A wildcard listener (the packaged `0.0.0.0:8443`): a browser that reached the host by its
/// name or by an interface address is the daemon's own origin; the wildcard address itself
/// and foreign hosts are not.
#[tokio::test]
async fn a_wildcard_listener_accepts_the_hosts_names_and_addresses() {
    let mut d = crate::harness::Daemon::builder()
        .env("ORCHARD_HTTP_ALLOW_INSECURE", "true")
        .build();
    d.set_listen("0.0.0.0:0");
    d.launch();
    let port = d.addr().port();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the kernel's host name")
        .trim()
        .to_owned();
    let mut own = vec![
        format!("http://{hostname}:{port}"),
        format!("http://localhost:{port}"),
    ];
    // An address of a non-loopback interface, if this machine has one.
    let ips = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if let Some(v4) = ips.split_whitespace().find(|ip| !ip.contains(':')) {
        own.push(format!("http://{v4}:{port}"));
    }
    for origin in &own {
        assert!(
            Connect::new(&d, "/ws/clusters")
                .origin(origin)
                .try_connect()
                .await
                .is_ok(),
            "Origin {origin} refused"
        );
    }
    for origin in [
        format!("http://0.0.0.0:{port}"),
        format!("http://evil.example:{port}"),
        format!("https://{hostname}:{port}"),
    ] {
        let status = Connect::new(&d, "/ws/clusters")
            .origin(&origin)
            .refused_status()
            .await;
        assert_eq!(status, 403, "Origin {origin}");
    }
}
