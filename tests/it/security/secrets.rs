//! Secrets never leak: a canary password, access token and agent API key are used in every
//! flow that takes one (login, failed logins, user create and password change, WebSocket
//! auth in the query, in a header and in the first message, agent auth, REST), with every
//! crate logging at debug (`RUST_LOG=debug`); then none of them appears in the daemon's
//! log, in any error body or WebSocket message received, in the activity log, in
//! `/proc/<pid>/cmdline`, or in any file of the data directory.

use serde_json::{Value, json};

use super::{T, create_server, daemon_pid, enc, open, open_bearer};
use crate::harness::{Daemon, uuid_of};

const PASSWORD: &str = "canary-pass-Q7xv2LmZ";
const NEW_PASSWORD: &str = "canary-newpass-R4kw8Hn";
const WRONG_PASSWORD: &str = "canary-wrong-T9bz3Pq";

#[tokio::test]
async fn canary_passwords_tokens_and_api_keys_never_appear_in_logs_errors_or_argv() {
    let d = Daemon::builder().env("RUST_LOG", "debug").start();
    let admin = d.admin_token().await;
    let mut received: Vec<String> = Vec::new();

    // Users: create with a password, log in, fail, change it (admin and self), fail again.
    let user = d
        .create_user(&admin, "canary", PASSWORD, "client", &["VIEW_ALL_VMS"])
        .await;
    let uuid = uuid_of(&user);
    let token = d.login("canary", PASSWORD).await;
    for (name, pw) in [("canary", WRONG_PASSWORD), ("nobody-here", PASSWORD)] {
        let r = d.try_login(name, pw).await;
        assert_eq!(r.status, 401);
        received.push(r.text.clone());
    }
    // A password that is refused (too short) is echoed nowhere either.
    let r = d
        .try_create_user(&admin, "canary2", "canary-x", "client", &[])
        .await;
    received.push(r.text.clone());
    let r = d
        .patch(
            &format!("/api/users/{uuid}"),
            Some(&token),
            &json!({"password": NEW_PASSWORD, "old_password": WRONG_PASSWORD}),
        )
        .await;
    assert!(r.status >= 400, "a wrong old password is refused");
    received.push(r.text.clone());
    let token = {
        let r = d
            .patch(
                &format!("/api/users/{uuid}"),
                Some(&token),
                &json!({"password": NEW_PASSWORD, "old_password": PASSWORD}),
            )
            .await;
        assert!((200..300).contains(&r.status), "{}", r.text);
        d.login("canary", NEW_PASSWORD).await
    };

    // The token on REST (good and after revocation), in every WebSocket form; each socket
    // with the close it ends with.
    d.me(&token).await;
    let q = enc(&token);
    let mut sockets = Vec::new();
    for (path, close) in [
        (format!("/ws/machines/account?access_token={q}"), 4401),
        (format!("/ws?token={q}"), 4401),
        ("/ws/clusters?token=canary-garbage-token".to_owned(), 4401),
        (format!("/ws/vms/no-such-vm?token={q}"), 1000),
    ] {
        sockets.push((open(&d, &path).await, close));
    }
    sockets.push((open_bearer(&d, "/ws/machines/global", &token).await, 4401));

    // The agent key: a good agent auth, a wrong one, and the stream's first-message token.
    let (id, key) = create_server(&d, &admin, "canary-host").await;
    let mut agent = open(&d, "/api/v1/agents/ws").await;
    agent
        .send_json(&json!({"type": "auth", "api_key": key}))
        .await;
    let auth_ok = |v: &Value| v["type"] == "auth_success";
    received.extend(
        agent
            .collect_until(T, "auth_success", auth_ok)
            .await
            .iter()
            .map(Value::to_string),
    );
    let wrong_key = format!("{key}canary");
    let mut bad_agent = open(&d, "/api/v1/agents/ws").await;
    bad_agent
        .send_json(&json!({"type": "auth", "api_key": wrong_key}))
        .await;
    received.extend(
        bad_agent
            .expect_close(4401, T)
            .await
            .iter()
            .map(Value::to_string),
    );
    let mut stream = open(&d, &format!("/api/v1/ws/metrics/{id}")).await;
    stream
        .send_json(&json!({"type": "auth", "token": token}))
        .await;
    received.extend(
        stream
            .collect_until(T, "auth_success", auth_ok)
            .await
            .iter()
            .map(Value::to_string),
    );
    // Then the token is revoked while all of that is open, and used again.
    let r = d.post_empty("/api/auth/logout", Some(&token)).await;
    assert!((200..300).contains(&r.status));
    for (ws, close) in &mut sockets {
        received.extend(
            ws.expect_close(*close, T)
                .await
                .iter()
                .map(Value::to_string),
        );
    }
    let r = d.get("/api/auth/me", Some(&token)).await;
    assert_eq!(r.status, 401);
    received.push(r.text.clone());
    let mut again = open(&d, &format!("/ws?access_token={q}")).await;
    received.extend(
        again
            .expect_close(4401, T)
            .await
            .iter()
            .map(Value::to_string),
    );
    let r = d.get("/api/activity", Some(&admin)).await.expect(200);
    received.push(r.to_string());
    let users = d.get("/api/users", Some(&admin)).await.expect(200);
    received.push(users.to_string());

    let pid = daemon_pid(&d);
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .into_owned();
    let logs = d.logs();
    assert!(
        logs.contains("/api/auth/login") && logs.contains("/api/users"),
        "the request log was captured: {logs}"
    );
    let mut data_files = String::new();
    for entry in walk(d.data_dir()) {
        data_files.push_str(&String::from_utf8_lossy(&std::fs::read(&entry).unwrap()));
    }
    let canaries = [
        ("the password", PASSWORD),
        ("the new password", NEW_PASSWORD),
        ("the wrong password", WRONG_PASSWORD),
        ("the access token", token.as_str()),
        (
            "the access token's signature",
            token.rsplit('.').next().unwrap(),
        ),
        ("the API key", key.as_str()),
        ("the wrong API key", wrong_key.as_str()),
        ("the garbage token", "canary-garbage-token"),
    ];
    for (what, canary) in canaries {
        assert!(!logs.contains(canary), "{what} is in the daemon's log");
        assert!(!cmdline.contains(canary), "{what} is in the daemon's argv");
        for r in &received {
            assert!(!r.contains(canary), "{what} is in a reply: {r}");
        }
        assert!(
            !data_files.contains(canary),
            "{what} is stored in the data directory"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
