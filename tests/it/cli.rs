//! Offline administration: `orchard user add|passwd|del|list`.

use std::process::Output;

use serde_json::Value;

use crate::harness::{
    ALL_PERMISSIONS, Daemon, assert_clean_failure, assert_success, assert_user_view, perms_of,
    sorted, stdout_of,
};

/// A data dir the daemon has initialised (admin created), with the daemon stopped again.
fn initialised() -> Daemon {
    let mut d = Daemon::start();
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    d
}

fn user(d: &Daemon, args: &[&str], stdin: Option<&str>) -> Output {
    let dir = d.data_dir_str();
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--data-dir", &dir]);
    d.cli(&full, stdin)
}

/// `user list --json`, parsed; every entry checked to be a user view.
fn list(d: &Daemon) -> Vec<Value> {
    let out = user(d, &["list", "--json"], None);
    assert_success(&out);
    let stdout = stdout_of(&out);
    let value: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("`user list --json` printed no JSON ({e}):\n{stdout}"));
    let users = value
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {value}"))
        .clone();
    for u in &users {
        assert_user_view(u);
    }
    users
}

fn find<'a>(users: &'a [Value], name: &str) -> Option<&'a Value> {
    users.iter().find(|u| u["username"] == name)
}

fn names(users: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = users
        .iter()
        .map(|u| u["username"].as_str().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn user_list_json_shows_the_admin() {
    let d = initialised();
    let users = list(&d);
    assert_eq!(names(&users), vec!["admin"]);
    let admin = find(&users, "admin").unwrap();
    assert_eq!(admin["account_type"], "administrator");
    assert_eq!(admin["disabled"], false);
    assert_eq!(perms_of(admin), sorted(&ALL_PERMISSIONS));
}

#[tokio::test]
async fn user_added_offline_logs_in_over_rest() {
    let mut d = initialised();
    let out = user(
        &d,
        &[
            "add",
            "henry",
            "--password-stdin",
            "--account-type",
            "client",
            "--permission",
            "VIEW_ALL_VMS",
            "--permission",
            "ACCESS_CONSOLE",
        ],
        Some("henry-password\n"),
    );
    assert_success(&out);
    let out = user(
        &d,
        &[
            "add",
            "iris",
            "--password-stdin",
            "--account-type",
            "administrator",
            "--permission",
            "MANAGE_ADMIN_USERS",
        ],
        Some("iris-password\n"),
    );
    assert_success(&out);

    let users = list(&d);
    assert_eq!(names(&users), vec!["admin", "henry", "iris"]);
    let henry = find(&users, "henry").unwrap().clone();
    assert_eq!(henry["account_type"], "client");
    assert_eq!(henry["disabled"], false);
    assert_eq!(
        perms_of(&henry),
        sorted(&["ACCESS_CONSOLE", "VIEW_ALL_VMS"])
    );
    let iris = find(&users, "iris").unwrap().clone();
    assert_eq!(iris["account_type"], "administrator");
    assert_eq!(perms_of(&iris), sorted(&["MANAGE_ADMIN_USERS"]));

    d.launch();
    // The trailing newline of the stdin line is not part of the password.
    let token = d.login("henry", "henry-password").await;
    let me = d.me(&token).await;
    assert_eq!(me["uuid"], henry["uuid"]);
    assert_eq!(perms_of(&me), perms_of(&henry));
    let token = d.login("iris", "iris-password").await;
    assert_eq!(d.me(&token).await["account_type"], "administrator");
}

#[tokio::test]
async fn user_passwd_changes_the_password() {
    let mut d = initialised();
    assert_success(&user(
        &d,
        &["add", "jill", "--password-stdin"],
        Some("jill-password\n"),
    ));
    assert_success(&user(
        &d,
        &["passwd", "jill", "--password-stdin"],
        Some("jill-new-password\n"),
    ));
    assert_success(&user(
        &d,
        &["passwd", "admin", "--password-stdin"],
        Some("admin-new-password\n"),
    ));
    d.launch();
    d.login("jill", "jill-new-password").await;
    d.try_login("jill", "jill-password")
        .await
        .expect_error(401, "unauthorized");
    d.login("admin", "admin-new-password").await;
    d.try_login("admin", d.admin_password())
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn user_passwd_revokes_tokens_issued_before() {
    let mut d = Daemon::start();
    let token = d.admin_token().await;
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert_success(&user(
        &d,
        &["passwd", "admin", "--password-stdin"],
        Some("admin-new-password\n"),
    ));
    d.launch();
    d.get("/api/auth/me", Some(&token))
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn user_del_removes_the_user() {
    let mut d = initialised();
    assert_success(&user(
        &d,
        &["add", "kim", "--password-stdin"],
        Some("kim-password\n"),
    ));
    assert_eq!(names(&list(&d)), vec!["admin", "kim"]);
    assert_success(&user(&d, &["del", "kim"], None));
    assert_eq!(names(&list(&d)), vec!["admin"]);
    d.launch();
    d.try_login("kim", "kim-password")
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn user_commands_fail_cleanly_on_bad_input() {
    let d = initialised();
    // Unknown user.
    assert_clean_failure(&user(&d, &["del", "nobody"], None));
    assert_clean_failure(&user(
        &d,
        &["passwd", "nobody", "--password-stdin"],
        Some("nobody-password\n"),
    ));
    // Duplicate name.
    assert_clean_failure(&user(
        &d,
        &["add", "admin", "--password-stdin"],
        Some("another-password\n"),
    ));
    // Unknown permission and account type.
    assert_clean_failure(&user(
        &d,
        &["add", "lou", "--password-stdin", "--permission", "FLY"],
        Some("lou-password\n"),
    ));
    assert_clean_failure(&user(
        &d,
        &["add", "lou", "--password-stdin", "--account-type", "root"],
        Some("lou-password\n"),
    ));
    // Password too short.
    assert_clean_failure(&user(
        &d,
        &["add", "lou", "--password-stdin"],
        Some("short\n"),
    ));
    let users = list(&d);
    assert_eq!(names(&users), vec!["admin"]);
}

#[tokio::test]
async fn user_del_refuses_the_last_admin_manager() {
    let d = initialised();
    let out = user(&d, &["del", "admin"], None);
    assert_clean_failure(&out);
    assert_eq!(names(&list(&d)), vec!["admin"]);

    // With a second holder, the first may go.
    assert_success(&user(
        &d,
        &[
            "add",
            "root2",
            "--password-stdin",
            "--account-type",
            "administrator",
            "--permission",
            "MANAGE_ADMIN_USERS",
        ],
        Some("root2-password\n"),
    ));
    assert_success(&user(&d, &["del", "admin"], None));
    assert_eq!(names(&list(&d)), vec!["root2"]);
    assert_clean_failure(&user(&d, &["del", "root2"], None));
}

#[tokio::test]
async fn user_commands_refuse_a_data_dir_in_use() {
    let d = Daemon::start();
    for (args, stdin) in [
        (vec!["list", "--json"], None),
        (
            vec!["add", "mia", "--password-stdin"],
            Some("mia-password\n"),
        ),
        (vec!["del", "admin"], None),
    ] {
        let out = user(&d, &args, stdin);
        let stderr = assert_clean_failure(&out);
        assert!(
            stderr.contains("in use by another process"),
            "user {args:?}: stderr:\n{stderr}"
        );
    }
    // The daemon is unaffected.
    d.admin_token().await;
}

#[tokio::test]
async fn passwords_are_never_taken_from_argv() {
    let d = initialised();
    // Without --password-stdin there is no way to give a password.
    assert_clean_failure(&user(&d, &["add", "ned"], Some("ned-password\n")));
    assert_clean_failure(&user(
        &d,
        &["add", "ned", "--password", "ned-password"],
        None,
    ));
    assert_clean_failure(&user(&d, &["add", "ned", "ned-password"], None));
    assert_clean_failure(&user(&d, &["passwd", "admin"], Some("ned-password\n")));
    assert_eq!(names(&list(&d)), vec!["admin"]);
}
