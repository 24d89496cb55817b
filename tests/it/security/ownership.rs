//! Ownership and the console: a client user sees and opens only what they own or are
//! assigned to, through every API (REST list/get/actions, stored subscriptions, A's three
//! streams with and without `?machine_uuid=`, E's monitor and console), and a console
//! needs control *and* ACCESS_CONSOLE.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{T, enc, open};
use crate::harness::{Daemon, uuid_of};
use crate::machines::{create_machine, power_ok, user_with, wait_status};

async fn running(d: &Daemon, admin: &str, title: &str) -> String {
    let m = create_machine(
        d,
        admin,
        &json!({"backend": "simulator", "title": title, "vcpu": 1, "ram_mib": 256}),
    )
    .await;
    let uuid = uuid_of(&m);
    power_ok(d, admin, &uuid, "start").await;
    wait_status(d, admin, &uuid, "running").await;
    uuid
}

async fn give(d: &Daemon, admin: &str, machine: &str, user: &str) {
    let r = d
        .request(
            Method::PUT,
            &format!("/api/machines/{machine}/owner"),
            Some(admin),
            Some(&json!({ "user": user })),
        )
        .await;
    assert!((200..300).contains(&r.status), "owner: {}", r.text);
}

fn mentions(v: &Value, needle: &str) -> bool {
    v.to_string().contains(needle)
}

#[tokio::test]
async fn a_client_never_sees_another_users_machine_through_any_api() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let (alice, _) = user_with(&d, &admin, "alice", &["ACCESS_CONSOLE"]).await;
    let (bob, bob_t) = user_with(&d, &admin, "bob", &["ACCESS_CONSOLE"]).await;
    let theirs = running(&d, &admin, "alices-vm").await;
    let mine = running(&d, &admin, "bobs-vm").await;
    give(&d, &admin, &theirs, &alice).await;
    give(&d, &admin, &mine, &bob).await;

    // REST: the list, the detail, actions, edits and subscriptions.
    let list = d.get("/api/machines", Some(&bob_t)).await.expect(200);
    assert!(mentions(&list, &mine), "bob's list has his own: {list}");
    assert!(!mentions(&list, &theirs), "bob's list: {list}");
    for (method, path, body) in [
        (Method::GET, format!("/api/machines/{theirs}"), None),
        (
            Method::PATCH,
            format!("/api/machines/{theirs}"),
            Some(json!({"title": "stolen"})),
        ),
        (Method::POST, format!("/api/machines/{theirs}/stop"), None),
        (Method::DELETE, format!("/api/machines/{theirs}"), None),
        (Method::PUT, format!("/api/subscriptions/{theirs}"), None),
    ] {
        let r = d
            .request(method.clone(), &path, Some(&bob_t), body.as_ref())
            .await;
        assert!(
            r.status == 404 || r.status == 403,
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
        assert!(!r.text.contains("alices-vm"), "{method} {path}: {}", r.text);
    }
    let subs = d.get("/api/subscriptions", Some(&bob_t)).await.expect(200);
    assert!(!mentions(&subs, &theirs), "stored subscriptions: {subs}");

    // A: account, subscribed (asking for the other's machine by uuid), global.
    let q = enc(&bob_t);
    let mut account = open(&d, &format!("/ws/machines/account?access_token={q}")).await;
    let mut subscribed = open(
        &d,
        &format!("/ws/machines/subscribed?access_token={q}&machine_uuid={theirs}"),
    )
    .await;
    let mut global = open(&d, &format!("/ws/machines/global?access_token={q}")).await;
    let seen = global.expect_close(4403, T).await;
    assert!(seen.is_empty(), "global before 4403: {seen:?}");
    // E: the other's monitor and console are not found; no `connection` is sent.
    for path in [
        format!("/ws/vms/{theirs}"),
        "/ws/vms/alices-vm/console".to_owned(),
    ] {
        let mut ws = open(&d, &format!("{path}?token={q}")).await;
        let seen = ws.expect_close(1000, T).await;
        assert!(
            seen.iter()
                .all(|v| v["type"] == "error" && v["data"]["code"] == "VM_NOT_FOUND"),
            "{path}: {seen:?}"
        );
    }
    // The other's machine changes while bob watches; then his own does (the fence).
    let r = d
        .patch(
            &format!("/api/machines/{theirs}"),
            Some(&admin),
            &json!({"description": "secret plans"}),
        )
        .await;
    assert!((200..300).contains(&r.status));
    power_ok(&d, &admin, &theirs, "restart").await;
    let r = d
        .patch(
            &format!("/api/machines/{mine}"),
            Some(&admin),
            &json!({"description": "fence"}),
        )
        .await;
    assert!((200..300).contains(&r.status));
    let account_seen = account
        .collect_until(T, "the fence", |v| mentions(v, "fence"))
        .await;
    let subscribed_seen = subscribed.open_for(Duration::from_millis(1500)).await;
    for (what, seen) in [("account", &account_seen), ("subscribed", &subscribed_seen)] {
        assert!(!seen.is_empty(), "{what} got its initial data");
        for v in seen {
            assert!(
                !mentions(v, &theirs) && !mentions(v, "alices-vm") && !mentions(v, "secret plans"),
                "{what} leaked alice's machine: {v}"
            );
        }
    }
    let _ = bob;
}

#[tokio::test]
async fn a_console_needs_control_and_access_console_even_for_the_owner() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let (owner, owner_t) = user_with(&d, &admin, "owner", &[]).await;
    let (consoler, consoler_t) = user_with(&d, &admin, "consoler", &["ACCESS_CONSOLE"]).await;
    let vm = running(&d, &admin, "owned-vm").await;
    give(&d, &admin, &vm, &owner).await;
    let console = format!("/ws/vms/{vm}/console");
    // The owner controls it but lacks ACCESS_CONSOLE: AUTH_ERROR, 4403, no `connection`.
    let mut ws = open(&d, &format!("{console}?token={}", enc(&owner_t))).await;
    let seen = ws.expect_close(4403, T).await;
    assert!(
        seen.iter()
            .all(|v| v["type"] == "error" && v["data"]["code"] == "AUTH_ERROR")
            && !seen.is_empty(),
        "{seen:?}"
    );
    // ACCESS_CONSOLE without seeing or controlling it: not found.
    let mut ws = open(&d, &format!("{console}?token={}", enc(&consoler_t))).await;
    let seen = ws.expect_close(1000, T).await;
    assert!(seen.iter().all(|v| v["type"] == "error"), "{seen:?}");
    // Assigned (control) plus ACCESS_CONSOLE: it opens.
    let r = d
        .request(
            Method::PUT,
            &format!("/api/machines/{vm}/clients/{consoler}"),
            Some(&admin),
            None,
        )
        .await;
    assert!((200..300).contains(&r.status), "{}", r.text);
    let mut ws = open(&d, &format!("{console}?token={}", enc(&consoler_t))).await;
    ws.recv_where(T, "connection", |v| v["type"] == "connection")
        .await;
}
