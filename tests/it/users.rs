//! User management over REST: CRUD, validation, permission rules and token revocation.

use serde_json::{Value, json};

use crate::harness::{
    ADMIN_PASSWORD, ALL_PERMISSIONS, Daemon, assert_user_view, perms_of, sorted, uuid_of,
};

/// The users of a `GET /api/users` body: a bare array, or an object wrapping one.
pub fn user_list(body: &Value) -> Vec<Value> {
    if let Some(list) = body.as_array() {
        return list.clone();
    }
    if let Some(list) = body["users"].as_array() {
        return list.clone();
    }
    panic!("GET /api/users did not return a list: {body}")
}

async fn list_usernames(d: &Daemon, token: &str) -> Vec<String> {
    let body = d.get("/api/users", Some(token)).await.expect(200);
    let mut names: Vec<String> = user_list(&body)
        .iter()
        .map(|u| u["username"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

fn user_path(uuid: &str) -> String {
    format!("/api/users/{uuid}")
}

async fn admin_uuid(d: &Daemon, admin: &str) -> String {
    uuid_of(&d.me(admin).await)
}

fn all_but(excluded: &str) -> Vec<&'static str> {
    ALL_PERMISSIONS
        .iter()
        .copied()
        .filter(|p| *p != excluded)
        .collect()
}

#[tokio::test]
async fn user_crud_roundtrip() {
    let d = Daemon::start();
    let admin = d.admin_token().await;

    let created = d
        .create_user(
            &admin,
            "dave",
            "dave-password",
            "client",
            &["VIEW_ALL_VMS", "ACCESS_CONSOLE"],
        )
        .await;
    assert_user_view(&created);
    assert_eq!(created["account_type"], "client");
    assert_eq!(created["disabled"], false);
    assert_eq!(
        perms_of(&created),
        sorted(&["ACCESS_CONSOLE", "VIEW_ALL_VMS"])
    );
    let id = uuid_of(&created);

    let got = d.get(&user_path(&id), Some(&admin)).await.expect(200);
    assert_user_view(&got);
    assert_eq!(got["username"], "dave");
    assert_eq!(got["account_type"], "client");
    assert_eq!(perms_of(&got), perms_of(&created));

    let list = d.get("/api/users", Some(&admin)).await.expect(200);
    let list = user_list(&list);
    for u in &list {
        assert_user_view(u);
    }
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().any(|u| u["username"] == "admin"));
    assert!(list.iter().any(|u| u["uuid"] == created["uuid"]));

    let patched = d
        .patch(
            &user_path(&id),
            Some(&admin),
            &json!({"permissions": ["VIEW_ALL_VMS"]}),
        )
        .await
        .expect(200);
    assert_user_view(&patched);
    assert_eq!(perms_of(&patched), sorted(&["VIEW_ALL_VMS"]));
    let got = d.get(&user_path(&id), Some(&admin)).await.expect(200);
    assert_eq!(perms_of(&got), sorted(&["VIEW_ALL_VMS"]));

    let patched = d
        .patch(&user_path(&id), Some(&admin), &json!({"disabled": true}))
        .await
        .expect(200);
    assert_eq!(patched["disabled"], true);
    assert_eq!(perms_of(&patched), sorted(&["VIEW_ALL_VMS"]));
    let patched = d
        .patch(&user_path(&id), Some(&admin), &json!({"disabled": false}))
        .await
        .expect(200);
    assert_eq!(patched["disabled"], false);

    let token = d.login("dave", "dave-password").await;
    d.me(&token).await;

    let r = d.delete(&user_path(&id), Some(&admin)).await;
    assert_eq!(r.status, 204, "delete: {:?}", r.text);
    d.get(&user_path(&id), Some(&admin))
        .await
        .expect_error(404, "not_found");
    assert_eq!(list_usernames(&d, &admin).await, vec!["admin"]);
    d.try_login("dave", "dave-password")
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn duplicate_username_is_409() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    d.create_user(&admin, "erin", "erin-password", "client", &[])
        .await;
    d.try_create_user(&admin, "erin", "other-password", "client", &[])
        .await
        .expect_error(409, "conflict");
    d.try_create_user(&admin, "admin", "other-password", "administrator", &[])
        .await
        .expect_error(409, "conflict");
    assert_eq!(list_usernames(&d, &admin).await, vec!["admin", "erin"]);
    // The original keeps its password.
    d.login("erin", "erin-password").await;
}

#[tokio::test]
async fn create_user_validates_input() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    // 7 characters is too short; 8 is enough.
    d.try_create_user(&admin, "short", "1234567", "client", &[])
        .await
        .expect_any_error(400);
    d.try_create_user(&admin, "unknown-perm", "long-enough", "client", &["FLY"])
        .await
        .expect_any_error(400);
    d.try_create_user(
        &admin,
        "unknown-perm2",
        "long-enough",
        "client",
        &["VIEW_ALL_VMS", "NOT_A_PERMISSION"],
    )
    .await
    .expect_any_error(400);
    d.try_create_user(&admin, "bad-type", "long-enough", "root", &[])
        .await
        .expect_any_error(400);
    assert_eq!(list_usernames(&d, &admin).await, vec!["admin"]);

    let exact = d
        .create_user(&admin, "exact", "12345678", "client", &[])
        .await;
    d.login("exact", "12345678").await;

    // The same rules hold for PATCH.
    let id = uuid_of(&exact);
    d.patch(
        &user_path(&id),
        Some(&admin),
        &json!({"password": "1234567"}),
    )
    .await
    .expect_any_error(400);
    d.patch(
        &user_path(&id),
        Some(&admin),
        &json!({"permissions": ["NOT_A_PERMISSION"]}),
    )
    .await
    .expect_any_error(400);
    d.login("exact", "12345678").await;
}

#[tokio::test]
async fn unknown_user_uuid_is_404() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let path = user_path(&uuid::Uuid::new_v4().to_string());
    d.get(&path, Some(&admin))
        .await
        .expect_error(404, "not_found");
    d.patch(&path, Some(&admin), &json!({"disabled": true}))
        .await
        .expect_error(404, "not_found");
    d.delete(&path, Some(&admin))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn user_endpoints_require_a_token() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let id = admin_uuid(&d, &admin).await;
    d.get("/api/users", None)
        .await
        .expect_error(401, "unauthorized");
    d.post(
        "/api/users",
        None,
        &json!({"username": "x", "password": "long-enough", "account_type": "client", "permissions": []}),
    )
    .await
    .expect_error(401, "unauthorized");
    d.get(&user_path(&id), Some("garbage"))
        .await
        .expect_error(401, "unauthorized");
    d.delete(&user_path(&id), None)
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn client_without_permissions_is_forbidden() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let admin_id = admin_uuid(&d, &admin).await;
    d.create_user(&admin, "frank", "frank-password", "client", &[])
        .await;
    let frank = d.login("frank", "frank-password").await;

    d.get("/api/users", Some(&frank))
        .await
        .expect_error(403, "forbidden");
    d.try_create_user(&frank, "mallory", "mallory-password", "client", &[])
        .await
        .expect_error(403, "forbidden");
    d.get(&user_path(&admin_id), Some(&frank))
        .await
        .expect_error(403, "forbidden");
    d.patch(
        &user_path(&admin_id),
        Some(&frank),
        &json!({"disabled": true}),
    )
    .await
    .expect_error(403, "forbidden");
    d.delete(&user_path(&admin_id), Some(&frank))
        .await
        .expect_error(403, "forbidden");

    assert_eq!(list_usernames(&d, &admin).await, vec!["admin", "frank"]);
    assert_eq!(d.me(&admin).await["disabled"], false);
}

#[tokio::test]
async fn client_manager_creates_clients_but_not_administrators() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let admin_id = admin_uuid(&d, &admin).await;
    // Only administrators hold user-management permissions.
    d.create_user(
        &admin,
        "manager",
        "manager-password",
        "administrator",
        &["MANAGE_CLIENT_USERS"],
    )
    .await;
    let manager = d.login("manager", "manager-password").await;

    let client = d
        .create_user(&manager, "client1", "client1-password", "client", &[])
        .await;
    assert_eq!(client["account_type"], "client");
    d.login("client1", "client1-password").await;
    let listed = d.get("/api/users", Some(&manager)).await.expect(200);
    assert!(
        user_list(&listed)
            .iter()
            .any(|u| u["username"] == "client1")
    );

    d.try_create_user(&manager, "admin2", "admin2-password", "administrator", &[])
        .await
        .expect_error(403, "forbidden");
    // Administrators are out of reach for a client manager.
    d.patch(
        &user_path(&admin_id),
        Some(&manager),
        &json!({"disabled": true}),
    )
    .await
    .expect_error(403, "forbidden");
    d.delete(&user_path(&admin_id), Some(&manager))
        .await
        .expect_error(403, "forbidden");

    // The manager can delete the client it made.
    let r = d
        .delete(&user_path(&uuid_of(&client)), Some(&manager))
        .await;
    assert_eq!(r.status, 204, "{:?}", r.text);
    assert_eq!(list_usernames(&d, &admin).await, vec!["admin", "manager"]);
}

#[tokio::test]
async fn nobody_grants_a_permission_they_do_not_hold() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    d.create_user(
        &admin,
        "manager",
        "manager-password",
        "administrator",
        &["MANAGE_CLIENT_USERS", "ACCESS_CONSOLE"],
    )
    .await;
    let manager = d.login("manager", "manager-password").await;

    d.try_create_user(
        &manager,
        "viewer",
        "viewer-password",
        "client",
        &["VIEW_ALL_VMS"],
    )
    .await
    .expect_error(403, "forbidden");
    assert!(
        !list_usernames(&d, &admin)
            .await
            .contains(&"viewer".to_owned())
    );

    let plain = d
        .create_user(&manager, "plain", "plain-password", "client", &[])
        .await;
    let path = user_path(&uuid_of(&plain));
    d.patch(
        &path,
        Some(&manager),
        &json!({"permissions": ["VIEW_ALL_VMS"]}),
    )
    .await
    .expect_error(403, "forbidden");
    let got = d.get(&path, Some(&admin)).await.expect(200);
    assert!(perms_of(&got).is_empty(), "{got}");

    // What it holds, it may grant.
    let patched = d
        .patch(
            &path,
            Some(&manager),
            &json!({"permissions": ["ACCESS_CONSOLE"]}),
        )
        .await
        .expect(200);
    assert_eq!(perms_of(&patched), sorted(&["ACCESS_CONSOLE"]));
}

#[tokio::test]
async fn nobody_changes_their_own_permissions() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let admin_id = admin_uuid(&d, &admin).await;
    d.patch(
        &user_path(&admin_id),
        Some(&admin),
        &json!({"permissions": all_but("EXECUTE_COMMANDS")}),
    )
    .await
    .expect_error(403, "forbidden");
    assert_eq!(perms_of(&d.me(&admin).await), sorted(&ALL_PERMISSIONS));

    let manager = d
        .create_user(
            &admin,
            "manager",
            "manager-password",
            "administrator",
            &["MANAGE_CLIENT_USERS", "VIEW_ALL_VMS"],
        )
        .await;
    let token = d.login("manager", "manager-password").await;
    d.patch(
        &user_path(&uuid_of(&manager)),
        Some(&token),
        &json!({"permissions": ["MANAGE_CLIENT_USERS"]}),
    )
    .await
    .expect_error(403, "forbidden");
    assert_eq!(
        perms_of(&d.me(&token).await),
        sorted(&["MANAGE_CLIENT_USERS", "VIEW_ALL_VMS"])
    );
}

#[tokio::test]
async fn last_manage_admin_users_holder_is_protected() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let admin_path = user_path(&admin_uuid(&d, &admin).await);

    // Alone: admin cannot delete, disable or strip itself.
    d.delete(&admin_path, Some(&admin))
        .await
        .expect_error(409, "conflict");
    d.patch(&admin_path, Some(&admin), &json!({"disabled": true}))
        .await
        .expect_error(409, "conflict");
    let r = d
        .patch(
            &admin_path,
            Some(&admin),
            &json!({"permissions": all_but("MANAGE_ADMIN_USERS")}),
        )
        .await;
    assert!(
        r.status == 403 || r.status == 409,
        "stripping the last holder: {} {:?}",
        r.status,
        r.text
    );
    let me = d.me(&admin).await;
    assert_eq!(perms_of(&me), sorted(&ALL_PERMISSIONS));
    assert_eq!(me["disabled"], false);

    // A second holder that is disabled does not count.
    let admin2 = d
        .create_user(
            &admin,
            "admin2",
            "admin2-password",
            "administrator",
            &ALL_PERMISSIONS,
        )
        .await;
    let admin2_path = user_path(&uuid_of(&admin2));
    let patched = d
        .patch(&admin2_path, Some(&admin), &json!({"disabled": true}))
        .await
        .expect(200);
    assert_eq!(patched["disabled"], true);
    d.delete(&admin_path, Some(&admin))
        .await
        .expect_error(409, "conflict");
    d.patch(&admin_path, Some(&admin), &json!({"disabled": true}))
        .await
        .expect_error(409, "conflict");

    // With an enabled second holder, the first can be stripped; then the second is the
    // last one and is protected in turn.
    d.patch(&admin2_path, Some(&admin), &json!({"disabled": false}))
        .await
        .expect(200);
    let admin2_token = d.login("admin2", "admin2-password").await;
    let stripped = d
        .patch(
            &admin_path,
            Some(&admin2_token),
            &json!({"permissions": all_but("MANAGE_ADMIN_USERS")}),
        )
        .await
        .expect(200);
    assert_eq!(perms_of(&stripped), sorted(&all_but("MANAGE_ADMIN_USERS")));
    d.delete(&admin2_path, Some(&admin2_token))
        .await
        .expect_error(409, "conflict");
    d.patch(
        &admin2_path,
        Some(&admin2_token),
        &json!({"disabled": true}),
    )
    .await
    .expect_error(409, "conflict");
    assert_eq!(d.me(&admin2_token).await["disabled"], false);

    // The former holder is no longer special.
    let r = d.delete(&admin_path, Some(&admin2_token)).await;
    assert_eq!(r.status, 204, "{:?}", r.text);
}

#[tokio::test]
async fn setting_another_users_password_needs_change_password_permission() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let target = d
        .create_user(&admin, "target", "target-password", "client", &[])
        .await;
    let target_path = user_path(&uuid_of(&target));
    let target_admin = d
        .create_user(&admin, "tadmin", "tadmin-password", "administrator", &[])
        .await;
    let target_admin_path = user_path(&uuid_of(&target_admin));

    // Managing clients is not enough to set their password.
    d.create_user(
        &admin,
        "mgr",
        "mgr-password",
        "administrator",
        &["MANAGE_CLIENT_USERS"],
    )
    .await;
    let mgr = d.login("mgr", "mgr-password").await;
    d.patch(
        &target_path,
        Some(&mgr),
        &json!({"password": "new-target-1"}),
    )
    .await
    .expect_error(403, "forbidden");
    d.login("target", "target-password").await;

    // With CHANGE_CLIENT_PASSWORD it is.
    d.create_user(
        &admin,
        "mgr2",
        "mgr2-password",
        "administrator",
        &["MANAGE_CLIENT_USERS", "CHANGE_CLIENT_PASSWORD"],
    )
    .await;
    let mgr2 = d.login("mgr2", "mgr2-password").await;
    let view = d
        .patch(
            &target_path,
            Some(&mgr2),
            &json!({"password": "new-target-2"}),
        )
        .await
        .expect(200);
    assert_user_view(&view);
    d.login("target", "new-target-2").await;
    d.try_login("target", "target-password")
        .await
        .expect_error(401, "unauthorized");

    // An administrator's password needs CHANGE_ADMIN_PASSWORD, even for an admin manager.
    d.create_user(
        &admin,
        "amgr",
        "amgr-password",
        "administrator",
        &[
            "MANAGE_ADMIN_USERS",
            "MANAGE_CLIENT_USERS",
            "CHANGE_CLIENT_PASSWORD",
        ],
    )
    .await;
    let amgr = d.login("amgr", "amgr-password").await;
    d.patch(
        &target_admin_path,
        Some(&amgr),
        &json!({"password": "new-tadmin-1"}),
    )
    .await
    .expect_error(403, "forbidden");
    d.login("tadmin", "tadmin-password").await;
    d.patch(
        &target_path,
        Some(&amgr),
        &json!({"password": "new-target-3"}),
    )
    .await
    .expect(200);
    d.login("target", "new-target-3").await;

    d.patch(
        &target_admin_path,
        Some(&admin),
        &json!({"password": "new-tadmin-2"}),
    )
    .await
    .expect(200);
    d.login("tadmin", "new-tadmin-2").await;
    d.try_login("tadmin", "tadmin-password")
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn user_changes_own_password_with_old_password() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let erin = d
        .create_user(&admin, "erin", "erin-password", "client", &[])
        .await;
    let path = user_path(&uuid_of(&erin));
    let old_token = d.login("erin", "erin-password").await;

    d.patch(
        &path,
        Some(&old_token),
        &json!({"password": "erin-new-password", "old_password": "wrong-old-password"}),
    )
    .await
    .expect_error(403, "forbidden");
    let r = d
        .patch(
            &path,
            Some(&old_token),
            &json!({"password": "erin-new-password"}),
        )
        .await;
    assert!(
        r.status == 400 || r.status == 403,
        "own password change without old_password: {} {:?}",
        r.status,
        r.text
    );
    d.patch(
        &path,
        Some(&old_token),
        &json!({"password": "short", "old_password": "erin-password"}),
    )
    .await
    .expect_any_error(400);
    d.me(&old_token).await;
    d.login("erin", "erin-password").await;

    let view = d
        .patch(
            &path,
            Some(&old_token),
            &json!({"password": "erin-new-password", "old_password": "erin-password"}),
        )
        .await
        .expect(200);
    assert_user_view(&view);
    assert_eq!(view["username"], "erin");

    d.get("/api/auth/me", Some(&old_token))
        .await
        .expect_error(401, "unauthorized");
    d.try_login("erin", "erin-password")
        .await
        .expect_error(401, "unauthorized");
    let fresh = d.login("erin", "erin-new-password").await;
    d.me(&fresh).await;

    // The administrator changes its own password the same way.
    let admin_path = user_path(&admin_uuid(&d, &admin).await);
    d.patch(
        &admin_path,
        Some(&admin),
        &json!({"password": "admin-new-password", "old_password": ADMIN_PASSWORD}),
    )
    .await
    .expect(200);
    d.login("admin", "admin-new-password").await;
    d.try_login("admin", ADMIN_PASSWORD)
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn password_change_by_admin_revokes_tokens() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let gus = d
        .create_user(&admin, "gus", "gus-password", "client", &[])
        .await;
    let t1 = d.login("gus", "gus-password").await;
    let t2 = d.login("gus", "gus-password").await;
    d.patch(
        &user_path(&uuid_of(&gus)),
        Some(&admin),
        &json!({"password": "gus-new-password"}),
    )
    .await
    .expect(200);
    for t in [&t1, &t2] {
        d.get("/api/auth/me", Some(t))
            .await
            .expect_error(401, "unauthorized");
    }
    d.try_login("gus", "gus-password")
        .await
        .expect_error(401, "unauthorized");
    let t3 = d.login("gus", "gus-new-password").await;
    d.me(&t3).await;
    // The admin's own token is unaffected.
    d.me(&admin).await;
}

#[tokio::test]
async fn disabling_a_user_revokes_tokens_and_blocks_login() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let hal = d
        .create_user(&admin, "hal", "hal-password", "client", &["VIEW_ALL_VMS"])
        .await;
    let path = user_path(&uuid_of(&hal));
    let token = d.login("hal", "hal-password").await;

    d.patch(&path, Some(&admin), &json!({"disabled": true}))
        .await
        .expect(200);
    d.get("/api/auth/me", Some(&token))
        .await
        .expect_error(401, "unauthorized");
    d.post_empty("/api/auth/refresh", Some(&token))
        .await
        .expect_error(401, "unauthorized");
    d.try_login("hal", "hal-password")
        .await
        .expect_error(401, "unauthorized");

    // Enabled again: the password works, the old token stays dead.
    d.patch(&path, Some(&admin), &json!({"disabled": false}))
        .await
        .expect(200);
    let fresh = d.login("hal", "hal-password").await;
    d.me(&fresh).await;
    d.get("/api/auth/me", Some(&token))
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn deleting_a_user_revokes_tokens() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let ida = d
        .create_user(&admin, "ida", "ida-password", "client", &[])
        .await;
    let token = d.login("ida", "ida-password").await;
    let r = d.delete(&user_path(&uuid_of(&ida)), Some(&admin)).await;
    assert_eq!(r.status, 204, "{:?}", r.text);
    d.get("/api/auth/me", Some(&token))
        .await
        .expect_error(401, "unauthorized");
    d.post_empty("/api/auth/refresh", Some(&token))
        .await
        .expect_error(401, "unauthorized");
    d.try_login("ida", "ida-password")
        .await
        .expect_error(401, "unauthorized");
    // A new user with the same name is a different user; the old token stays dead.
    d.create_user(&admin, "ida", "ida-password-2", "client", &[])
        .await;
    d.get("/api/auth/me", Some(&token))
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn permission_changes_apply_to_existing_tokens() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let mgr = d
        .create_user(
            &admin,
            "mgr",
            "mgr-password",
            "administrator",
            &["MANAGE_CLIENT_USERS"],
        )
        .await;
    let token = d.login("mgr", "mgr-password").await;
    d.get("/api/users", Some(&token)).await.expect(200);
    d.patch(
        &user_path(&uuid_of(&mgr)),
        Some(&admin),
        &json!({"permissions": []}),
    )
    .await
    .expect(200);
    d.get("/api/users", Some(&token))
        .await
        .expect_error(403, "forbidden");
    assert!(perms_of(&d.me(&token).await).is_empty());
}
