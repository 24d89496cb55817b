//! Live revocation reaches every kind of open socket within the contract's 2 s: a password
//! change, disabling, deleting or logging out closes all of a user's sockets with 4401
//! (E after its AUTH_ERROR), withdrawing permissions closes exactly the sockets that needed
//! them with 4403, and deleting an agent server closes its agent socket (4401) and its
//! streams. Each close is awaited against one deadline taken when the change was answered.

use futures_util::future::join_all;
use serde_json::json;
use tokio::time::Instant;

use super::{KINDS, Kind, REVOKE_WITHIN, Sock, World, is_refusal};
use crate::machines::user_with;

const VICTIM_PERMISSIONS: [&str; 3] = ["VIEW_ALL_VMS", "MANAGE_ALL_VMS", "ACCESS_CONSOLE"];

#[derive(Clone, Copy, Debug)]
enum Revoke {
    Logout,
    PasswordChange,
    OwnPasswordChange,
    Disable,
    Delete,
}

/// Opens every socket kind for one user and returns them with the user's uuid and token.
async fn victim(w: &World, name: &str) -> (String, String, Vec<(Kind, Sock)>) {
    let (uuid, token) = user_with(&w.d, &w.admin, name, &VICTIM_PERMISSIONS).await;
    let mut socks = Vec::new();
    for kind in KINDS {
        socks.push((kind, w.open_ready(kind, &token).await));
    }
    (uuid, token, socks)
}

/// Awaits every socket's close with `code` by `deadline`; returns what each read before.
async fn closes(
    socks: &mut [(Kind, Sock)],
    code: u16,
    deadline: Instant,
) -> Vec<(Kind, Vec<serde_json::Value>)> {
    join_all(socks.iter_mut().map(|(kind, ws)| async move {
        let left = deadline.saturating_duration_since(Instant::now());
        (*kind, ws.expect_close(code, left).await)
    }))
    .await
}

async fn revocation_closes_every_socket(how: Revoke) {
    let w = World::new(&[]).await;
    let d = &w.d;
    let password = "victim-password";
    let (uuid, token, mut socks) = victim(&w, "victim").await;
    // Someone else's sockets stay.
    let mut other = w.open_ready(Kind::Channels, &w.admin).await;
    let mut other_console = w.open_ready(Kind::Console, &w.admin).await;
    let user = format!("/api/users/{uuid}");
    let r = match how {
        Revoke::Logout => d.post_empty("/api/auth/logout", Some(&token)).await,
        Revoke::PasswordChange => {
            d.patch(
                &user,
                Some(&w.admin),
                &json!({"password": "brand-new-password-1"}),
            )
            .await
        }
        Revoke::OwnPasswordChange => {
            d.patch(
                &user,
                Some(&token),
                &json!({"password": "brand-new-password-1", "old_password": password}),
            )
            .await
        }
        Revoke::Disable => {
            d.patch(&user, Some(&w.admin), &json!({"disabled": true}))
                .await
        }
        Revoke::Delete => d.delete(&user, Some(&w.admin)).await,
    };
    assert!(
        (200..300).contains(&r.status),
        "{how:?}: {} {}",
        r.status,
        r.text
    );
    let deadline = Instant::now() + REVOKE_WITHIN;
    for (kind, seen) in closes(&mut socks, 4401, deadline).await {
        // What came after the socket was admitted may be data; on E the last message before
        // the close is the refusal.
        if matches!(kind, Kind::Monitor | Kind::Console) {
            let last = seen.last().cloned().unwrap_or_default();
            assert!(
                is_refusal(kind, &last),
                "{how:?}: {kind:?} ended with {last}"
            );
        }
    }
    other.open_for(std::time::Duration::from_millis(500)).await;
    other_console
        .open_for(std::time::Duration::from_millis(500))
        .await;
    // The old token opens nothing any more.
    for kind in KINDS {
        let mut ws = w.open(kind, &token).await;
        let seen = ws.expect_close(4401, super::T).await;
        assert!(
            seen.iter().all(|v| is_refusal(kind, v)),
            "{how:?}: {kind:?} reopened with data: {seen:?}"
        );
    }
}

#[tokio::test]
async fn logout_closes_every_socket_kind_4401_within_2_s() {
    revocation_closes_every_socket(Revoke::Logout).await;
}

#[tokio::test]
async fn an_admin_password_change_closes_every_socket_kind_4401_within_2_s() {
    revocation_closes_every_socket(Revoke::PasswordChange).await;
}

#[tokio::test]
async fn changing_ones_own_password_closes_every_socket_kind_4401_within_2_s() {
    revocation_closes_every_socket(Revoke::OwnPasswordChange).await;
}

#[tokio::test]
async fn disabling_closes_every_socket_kind_4401_within_2_s() {
    revocation_closes_every_socket(Revoke::Disable).await;
}

#[tokio::test]
async fn deleting_closes_every_socket_kind_4401_within_2_s() {
    revocation_closes_every_socket(Revoke::Delete).await;
}

#[tokio::test]
async fn withdrawing_permissions_closes_exactly_the_sockets_that_needed_them_4403_within_2_s() {
    let w = World::new(&[]).await;
    let (uuid, _token, socks) = victim(&w, "victim").await;
    let r =
        w.d.patch(
            &format!("/api/users/{uuid}"),
            Some(&w.admin),
            &json!({"permissions": []}),
        )
        .await;
    assert!((200..300).contains(&r.status), "{}", r.text);
    let deadline = Instant::now() + REVOKE_WITHIN;
    // Global, the monitor, the console and C's streams need VIEW_ALL_VMS (or control and
    // ACCESS_CONSOLE); the account and subscribed streams, the channels socket and the
    // cluster stream need only the token.
    let (mut closing, mut staying): (Vec<_>, Vec<_>) = socks.into_iter().partition(|(k, _)| {
        matches!(
            k,
            Kind::Global | Kind::Monitor | Kind::Console | Kind::Metrics | Kind::Logs
        )
    });
    closes(&mut closing, 4403, deadline).await;
    for (_, ws) in &mut staying {
        ws.open_for(std::time::Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn deleting_a_server_closes_its_agent_socket_and_streams_within_2_s() {
    let w = World::new(&[]).await;
    let mut agent = super::open(&w.d, "/api/v1/agents/ws").await;
    agent
        .send_json(&json!({"type": "auth", "api_key": w.api_key}))
        .await;
    agent
        .recv_where(super::T, "auth_success", |v| v["type"] == "auth_success")
        .await;
    let mut metrics = w.open_ready(Kind::Metrics, &w.admin).await;
    let mut logs = w.open_ready(Kind::Logs, &w.admin).await;
    let r =
        w.d.delete(&format!("/api/v1/servers/{}", w.server_id), Some(&w.admin))
            .await;
    assert_eq!(r.status, 204);
    let deadline = Instant::now() + REVOKE_WITHIN;
    let left = || deadline.saturating_duration_since(Instant::now());
    agent.expect_close(4401, left()).await;
    metrics.expect_close(1000, left()).await;
    logs.expect_close(1000, left()).await;
}
