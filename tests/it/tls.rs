//! TLS (contract sections 1 and 7): a self-signed certificate generated on first start,
//! HTTPS and WSS on the one listener, a certificate and key given as files, and the rule
//! that a non-loopback listener needs TLS unless `http.allow_insecure` is set.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::harness::{Daemon, assert_clean_failure};

const T: Duration = Duration::from_secs(10);

fn self_signed() -> Daemon {
    Daemon::builder()
        .env("ORCHARD_TLS_SELF_SIGNED", "true")
        .without_admin_password()
        .start()
}

/// A TLS client that trusts exactly the daemon's certificate (and checks its names).
fn tls_connector(d: &Daemon) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&d.tls_cert_pem()) {
        roots.add(cert.expect("certificate PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn wss_connect(
    d: &Daemon,
    path_and_query: &str,
    origin: Option<&str>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, tungstenite::Error> {
    let tcp = TcpStream::connect(d.addr()).await.expect("TCP connect");
    let name = ServerName::from(IpAddr::from([127, 0, 0, 1]));
    let tls = tls_connector(d)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the daemon's certificate");
    let mut req = format!("wss://{}{path_and_query}", d.addr())
        .into_client_request()
        .expect("request");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).expect("origin"));
    }
    tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("WSS handshake timed out")
        .map(|(ws, _)| ws)
}

async fn next_json(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("no message within the deadline")
            .expect("socket ended")
            .expect("read failed");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test]
async fn self_signed_https_login_and_wss() {
    let mut d = self_signed();
    assert!(
        d.tls(),
        "the listener must announce https://; log:\n{}",
        d.logs()
    );
    for file in ["tls-cert.pem", "tls-key.pem"] {
        let mode = fs::metadata(d.data_dir().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode of {file}");
    }
    let logs = d.logs();
    assert!(
        logs.contains("tls-cert.pem") && logs.contains("sha256"),
        "the log should name the certificate and its fingerprint; log:\n{logs}"
    );

    // HTTPS, verified against the generated certificate (its names include 127.0.0.1).
    let password = fs::read_to_string(d.data_dir().join("initial-admin-password"))
        .expect("initial-admin-password")
        .trim()
        .to_owned();
    let token = d.login("admin", &password).await;
    assert!(!d.logs().contains(&password), "the password was logged");
    let backends = d.get("/api/backends", Some(&token)).await.expect(200);
    assert!(
        backends
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["name"] == "simulator")),
        "{backends}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(T)
        .build()
        .expect("client");
    let resp = plain
        .get(format!("http://{}/healthz", d.addr()))
        .send()
        .await;
    if let Ok(r) = &resp {
        assert!(
            !r.status().is_success(),
            "plain HTTP was served on the TLS listener: {r:?}"
        );
    }

    // WSS: the upgrade works over TLS, with the https origin of the listener accepted.
    let own = format!("https://127.0.0.1:{}", d.addr().port());
    let mut ws = wss_connect(
        &d,
        &format!("/ws/machines/global?access_token={token}"),
        Some(&own),
    )
    .await
    .expect("WSS upgrade");
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "DATA_STATIC", "{first}");
    // The http origin of the same address is not this server's own.
    let refused = wss_connect(
        &d,
        &format!("/ws/machines/global?access_token={token}"),
        Some(&format!("http://127.0.0.1:{}", d.addr().port())),
    )
    .await;
    match refused {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    drop(ws);

    // A restart keeps the certificate (it is generated only once).
    let cert = d.tls_cert_pem();
    d.restart();
    assert!(d.tls());
    assert_eq!(d.tls_cert_pem(), cert, "the certificate was regenerated");
    assert!(
        !d.logs().contains("generated a self-signed"),
        "{}",
        d.logs()
    );
    let token = d.login("admin", &password).await;
    d.me(&token).await;
}

#[tokio::test]
async fn given_certificate_and_key_files_are_served() {
    // Make a pair with a first daemon, then serve it as plain configured files.
    let mut first = self_signed();
    let cert = first.data_dir().join("tls-cert.pem");
    let key = first.data_dir().join("tls-key.pem");
    let status = first.terminate();
    assert!(status.success(), "{status:?}");
    let own_cert = first.root().join("own-cert.pem");
    let own_key = first.root().join("own-key.pem");
    fs::copy(&cert, &own_cert).expect("copy cert");
    fs::copy(&key, &own_key).expect("copy key");

    let mut d = Daemon::builder()
        .env("ORCHARD_TLS_CERT", &own_cert.to_string_lossy())
        .env("ORCHARD_TLS_KEY", &own_key.to_string_lossy())
        .build();
    // tls_cert_pem() reads the data directory's file: put the same certificate there.
    fs::copy(&own_cert, d.data_dir().join("tls-cert.pem")).expect("copy cert");
    d.launch();
    assert!(d.tls());
    assert!(
        !d.data_dir().join("tls-key.pem").exists() && !d.logs().contains("generated a self-signed"),
        "nothing may be generated when files are configured; log:\n{}",
        d.logs()
    );
    let token = d.admin_token().await;
    d.me(&token).await;

    // A key file that is not a key: one clear line, no panic.
    fs::write(&own_key, "not a key\n").expect("write");
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    let out = d.serve_to_exit();
    let stderr = assert_clean_failure(&out);
    assert!(stderr.contains("own-key.pem"), "{stderr}");
}

#[tokio::test]
async fn non_loopback_listen_needs_tls_unless_allow_insecure() {
    let mut d = Daemon::builder().build();
    d.set_listen("0.0.0.0:0");
    let out = d.serve_to_exit();
    let stderr = assert_clean_failure(&out);
    assert!(
        stderr.contains("refusing to serve plain HTTP") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );

    // With TLS it starts.
    d.set_env("ORCHARD_TLS_SELF_SIGNED", "true");
    d.launch();
    assert!(d.tls());
    d.wait_healthy().await;
    let status = d.terminate();
    assert!(status.success(), "{status:?}");

    // Plain HTTP only when explicitly allowed.
    d.set_env("ORCHARD_TLS_SELF_SIGNED", "false");
    d.set_env("ORCHARD_HTTP_ALLOW_INSECURE", "true");
    d.launch();
    assert!(!d.tls());
    d.wait_healthy().await;
}
