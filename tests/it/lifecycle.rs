//! The process: first start, secrets on disk, locking, corrupt data, shutdown, restart,
//! configuration layering.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::{
    ADMIN_PASSWORD, ALL_PERMISSIONS, Daemon, assert_clean_failure, perms_of, pseudo_random_bytes,
    sorted, uuid_of,
};

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn first_start_creates_admin_with_all_permissions() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let me = d.me(&token).await;
    assert_eq!(me["username"], "admin");
    assert_eq!(me["account_type"], "administrator");
    assert_eq!(me["disabled"], false);
    assert_eq!(perms_of(&me), sorted(&ALL_PERMISSIONS));
    // With the password given, none is generated, and it is never logged.
    assert!(
        !d.data_dir().join("initial-admin-password").exists(),
        "initial-admin-password written although ORCHARD_ADMIN_PASSWORD was set"
    );
    assert!(
        !d.logs().contains(ADMIN_PASSWORD),
        "the admin password was logged"
    );
}

#[tokio::test]
async fn generated_admin_password_is_in_a_0600_file_and_never_logged() {
    let mut d = Daemon::builder().without_admin_password().start();
    let path = d.data_dir().join("initial-admin-password");
    assert!(path.exists(), "{} missing", path.display());
    assert_eq!(mode_of(&path), 0o600, "mode of {}", path.display());
    let password = fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(
        password.len() >= 8,
        "generated password too short: {} chars",
        password.len()
    );

    let token = d.login("admin", &password).await;
    let me = d.me(&token).await;
    assert_eq!(me["account_type"], "administrator");
    assert_eq!(perms_of(&me), sorted(&ALL_PERMISSIONS));

    let logs = d.logs();
    assert!(
        logs.contains("initial-admin-password"),
        "the log should name the password file; log:\n{logs}"
    );
    assert!(
        !logs.contains(&password),
        "the generated password was logged"
    );

    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    let logs = d.logs();
    assert!(
        !logs.contains(&password),
        "the generated password was printed"
    );
}

#[tokio::test]
async fn jwt_secret_is_a_0600_file() {
    let d = Daemon::start();
    let path = d.data_dir().join("jwt-secret");
    assert!(path.exists(), "{} missing", path.display());
    assert_eq!(mode_of(&path), 0o600, "mode of {}", path.display());
    assert!(fs::metadata(&path).unwrap().len() > 0, "empty jwt-secret");
}

#[tokio::test]
async fn second_instance_on_the_same_data_dir_is_refused() {
    let d = Daemon::start();
    let out = d.serve_to_exit();
    let stderr = assert_clean_failure(&out);
    assert!(
        stderr.contains("in use by another process"),
        "stderr:\n{stderr}"
    );
    // The first one carries on.
    d.wait_healthy().await;
    d.admin_token().await;
}

#[tokio::test]
async fn corrupt_database_is_refused_and_left_untouched() {
    let d = Daemon::builder().build();
    let db = d.data_dir().join("orchard.redb");
    let garbage = pseudo_random_bytes(64 * 1024, 0x5eed_1234_abcd_ef01);
    fs::write(&db, &garbage).unwrap();

    let out = d.serve_to_exit();
    let stderr = assert_clean_failure(&out);
    assert!(stderr.contains("orchard.redb"), "stderr:\n{stderr}");
    assert!(
        fs::read(&db).unwrap() == garbage,
        "the corrupt database was modified"
    );
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let mut d = Daemon::start();
    // Leave an idle keep-alive connection open: shutdown must not wait on it forever.
    d.admin_token().await;
    let status = d.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status:?}; log:\n{}",
        d.logs()
    );
    assert!(!d.logs().contains("panicked"), "log:\n{}", d.logs());
}

#[tokio::test]
async fn restart_keeps_users_admin_password_and_tokens() {
    let mut d = Daemon::start();
    let admin = d.admin_token().await;
    let gina = d
        .create_user(&admin, "gina", "gina-password", "client", &["VIEW_ALL_VMS"])
        .await;
    let gina_token = d.login("gina", "gina-password").await;
    let secret_before = fs::read(d.data_dir().join("jwt-secret")).unwrap();

    // The admin is created once: a different ORCHARD_ADMIN_PASSWORD later changes nothing.
    d.set_env("ORCHARD_ADMIN_PASSWORD", "a-different-password");
    d.restart();

    let admin = d.login("admin", ADMIN_PASSWORD).await;
    d.try_login("admin", "a-different-password")
        .await
        .expect_error(401, "unauthorized");
    let got = d
        .get(&format!("/api/users/{}", uuid_of(&gina)), Some(&admin))
        .await
        .expect(200);
    assert_eq!(got["username"], "gina");
    assert_eq!(perms_of(&got), sorted(&["VIEW_ALL_VMS"]));
    d.login("gina", "gina-password").await;

    // The signing secret persists, so tokens survive a restart.
    assert_eq!(
        fs::read(d.data_dir().join("jwt-secret")).unwrap(),
        secret_before
    );
    let me = d.me(&gina_token).await;
    assert_eq!(me["username"], "gina");
}

#[tokio::test]
async fn restart_with_generated_password_keeps_it() {
    let mut d = Daemon::builder().without_admin_password().start();
    let path = d.data_dir().join("initial-admin-password");
    let password = fs::read_to_string(&path).unwrap().trim().to_owned();
    d.restart();
    d.login("admin", &password).await;
}

#[tokio::test]
async fn config_file_then_env_then_flags() {
    let mut d = Daemon::builder().build();
    let file_dir = d.root().join("data-from-file");
    let env_dir = d.root().join("data-from-env");
    let config = d.root().join("orchard.toml");
    fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:1\"\n\n[storage]\ndata_dir = {:?}\n\n[auth]\ntoken_ttl = 111\n",
            file_dir.to_string_lossy()
        ),
    )
    .unwrap();
    d.push_arg("--config");
    d.push_arg(&config.to_string_lossy());

    // The file's value applies; the flags win over it for listen and data dir.
    d.launch();
    assert_ne!(d.addr().port(), 1, "--listen must override the file");
    let body = d.try_login("admin", ADMIN_PASSWORD).await.expect(200);
    assert_eq!(body["expires_in"], 111, "token_ttl from the file: {body}");

    // The environment wins over the file; the flags still win over both.
    d.set_env("ORCHARD_AUTH_TOKEN_TTL", "222");
    d.set_env("ORCHARD_HTTP_LISTEN", "127.0.0.1:2");
    d.set_env("ORCHARD_STORAGE_DATA_DIR", &env_dir.to_string_lossy());
    d.restart();
    assert!(
        ![1, 2].contains(&d.addr().port()),
        "--listen must override env and file"
    );
    let body = d.try_login("admin", ADMIN_PASSWORD).await.expect(200);
    assert_eq!(body["expires_in"], 222, "token_ttl from the env: {body}");

    assert!(d.data_dir().join("orchard.redb").exists());
    for dir in [&file_dir, &env_dir] {
        let used = dir.exists() && fs::read_dir(dir).unwrap().next().is_some();
        assert!(
            !used,
            "{} used although --data-dir was given",
            dir.display()
        );
    }
}

#[tokio::test]
async fn unreadable_config_is_refused() {
    let d = Daemon::builder().build();
    let config = d.root().join("broken.toml");
    fs::write(&config, "this is [[ not toml =\n").unwrap();
    let mut cmd = d.serve_command();
    cmd.arg("--config").arg(&config);
    let out = crate::harness::run_to_exit(cmd, None, crate::harness::EXIT_TIMEOUT);
    assert_clean_failure(&out);

    let mut cmd = d.serve_command();
    cmd.arg("--config").arg(d.root().join("missing.toml"));
    let out = crate::harness::run_to_exit(cmd, None, crate::harness::EXIT_TIMEOUT);
    assert_clean_failure(&out);

    let mut cmd = d.serve_command();
    cmd.env("ORCHARD_AUTH_TOKEN_TTL", "not-a-number");
    let out = crate::harness::run_to_exit(cmd, None, crate::harness::EXIT_TIMEOUT);
    assert_clean_failure(&out);
}

#[tokio::test]
async fn port_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut d = Daemon::builder().build();
    d.set_listen(&taken.local_addr().unwrap().to_string());
    let out = d.serve_to_exit();
    assert_clean_failure(&out);
    drop(taken);
}
