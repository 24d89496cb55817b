//! HTTP basics and authentication: health, error bodies, login, tokens, rate limits.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    ADMIN_PASSWORD, ALL_PERMISSIONS, Daemon, assert_user_view, b64url_decode, b64url_encode,
    eventually, jwt_claims, perms_of, sorted, uuid_of,
};

#[tokio::test]
async fn healthz_is_ok() {
    let d = Daemon::start();
    d.wait_healthy().await;
    // Anyone may ask, and a token does not change the answer.
    let token = d.admin_token().await;
    let r = d.get("/healthz", Some(&token)).await;
    assert_eq!(r.status, 200, "body: {:?}", r.text);
}

#[tokio::test]
async fn unknown_path_is_json_404() {
    let d = Daemon::start();
    d.get("/api/does-not-exist", None)
        .await
        .expect_error(404, "not_found");
    d.get("/no/such/page", None)
        .await
        .expect_error(404, "not_found");
    let token = d.admin_token().await;
    d.get("/api/does-not-exist", Some(&token))
        .await
        .expect_error(404, "not_found");
    d.post("/api/auth/does-not-exist", Some(&token), &json!({}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn wrong_method_is_json_405() {
    let d = Daemon::start();
    d.get("/api/auth/login", None)
        .await
        .expect_error(405, "method_not_allowed");
    d.request(Method::DELETE, "/healthz", None, None)
        .await
        .expect_error(405, "method_not_allowed");
    let token = d.admin_token().await;
    d.request(Method::PUT, "/api/users", Some(&token), Some(&json!({})))
        .await
        .expect_error(405, "method_not_allowed");
}

#[tokio::test]
async fn login_returns_bearer_jwt() {
    let d = Daemon::start();
    let r = d.try_login("admin", ADMIN_PASSWORD).await;
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let body = r.expect(200);
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["expires_in"], 3600, "default auth.token_ttl: {body}");
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    let header: Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
    assert_eq!(header["alg"], "HS256", "JWT header {header}");
    let claims = jwt_claims(&token);
    for claim in ["sub", "exp", "iat", "jti"] {
        assert!(!claims[claim].is_null(), "claim {claim} missing: {claims}");
    }
    let (exp, iat) = (
        claims["exp"].as_i64().unwrap(),
        claims["iat"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 3600, "{claims}");

    let me = d.me(&token).await;
    assert_eq!(me["username"], "admin");

    // A second login gives a distinct token (jti), and both work.
    let other = d.login("admin", ADMIN_PASSWORD).await;
    assert_ne!(other, token);
    d.me(&other).await;

    let logs = d.logs();
    assert!(!logs.contains(&token), "a token appears in the log");
    assert!(
        !logs.contains(ADMIN_PASSWORD),
        "a password appears in the log"
    );
}

/// Request logs show query strings with every value replaced by `***`, so a token passed
/// as `?access_token=` (REST) or `?token=` (WebSocket) never reaches the log, even at debug.
#[tokio::test]
async fn tokens_in_query_strings_never_reach_the_log() {
    let d = Daemon::builder().env("ORCHARD_LOG_LEVEL", "debug").start();
    let token = d.admin_token().await;
    let r = d
        .get(&format!("/api/machines?access_token={token}&x=1"), None)
        .await;
    assert_eq!(
        r.status, 401,
        "a query token is not a credential for REST: {}",
        r.text
    );
    let ws = crate::wsclient::Connect::new(&d, "/ws/machines/global")
        .token_param(&token)
        .open()
        .await;
    drop(ws);
    d.get("/healthz", None).await;
    let logs =
        crate::harness::eventually(Duration::from_secs(5), "the request log line", || async {
            let logs = d.logs();
            logs.contains("access_token=***").then_some(logs)
        })
        .await;
    assert!(logs.contains("x=***"), "every value is redacted:\n{logs}");
    assert!(
        !logs.contains(&token),
        "a token appears in the log:\n{logs}"
    );
}

#[tokio::test]
async fn bad_password_and_unknown_user_get_identical_401() {
    let d = Daemon::start();
    let wrong = d.try_login("admin", "not-the-password").await;
    let unknown = d.try_login("no-such-user", "not-the-password").await;
    wrong.expect_error(401, "unauthorized");
    unknown.expect_error(401, "unauthorized");
    assert_eq!(
        wrong.text, unknown.text,
        "bodies must not reveal whether the user exists"
    );
    // An empty password is just a wrong one.
    d.try_login("admin", "")
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn malformed_login_json_is_400() {
    let d = Daemon::start();
    for body in [
        r#"{"username": "admin", "password": "#,
        "this is not json",
        r#"{"username": "admin", "password": "x"#,
    ] {
        let req = d
            .client
            .post(d.url("/api/auth/login"))
            .header("content-type", "application/json")
            .body(body);
        d.send(req).await.expect_error(400, "bad_request");
    }
    // The daemon still serves normally afterwards.
    d.admin_token().await;
}

fn login_body_of_len(len: usize) -> String {
    let prefix = r#"{"username":"admin","password":""#;
    let suffix = r#""}"#;
    let pad = "x".repeat(len - prefix.len() - suffix.len());
    let body = format!("{prefix}{pad}{suffix}");
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn oversized_body_is_413() {
    let d = Daemon::start();
    let body = login_body_of_len((1 << 20) + 64);
    let req = d
        .client
        .post(d.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(body);
    d.send(req).await.expect_error(413, "payload_too_large");
    d.admin_token().await;
}

#[tokio::test]
async fn max_body_bytes_is_configurable() {
    let d = Daemon::builder()
        .env("ORCHARD_HTTP_MAX_BODY_BYTES", "1024")
        .start();
    // Under the limit: an ordinary (failed) login.
    let req = d
        .client
        .post(d.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(login_body_of_len(900));
    d.send(req).await.expect_error(401, "unauthorized");
    // Over it.
    let req = d
        .client
        .post(d.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(login_body_of_len(2048));
    d.send(req).await.expect_error(413, "payload_too_large");
    // Other endpoints too.
    let token = d.admin_token().await;
    let big = json!({
        "username": "big",
        "password": "p".repeat(2048),
        "account_type": "client",
        "permissions": [],
    });
    d.post("/api/users", Some(&token), &big)
        .await
        .expect_error(413, "payload_too_large");
}

fn retry_after_secs(r: &crate::harness::Resp) -> u64 {
    let value = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After; headers {:?}", r.headers));
    value
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After {value:?} is not delta-seconds: {e}"))
}

#[tokio::test]
async fn login_rate_limit_locks_only_that_username() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    d.create_user(&admin, "bob", "bob-password-1", "client", &[])
        .await;
    for attempt in 1..=5 {
        let r = d.try_login("bob", "wrong-password").await;
        assert_eq!(r.status, 401, "failed attempt {attempt}: {}", r.text);
    }
    // Locked now, even with the right password.
    let r = d.try_login("bob", "bob-password-1").await;
    r.expect_error(429, "too_many_requests");
    let secs = retry_after_secs(&r);
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    d.try_login("bob", "bob-password-1")
        .await
        .expect_error(429, "too_many_requests");
    // Another username from the same address is not affected.
    d.login("admin", ADMIN_PASSWORD).await;
    // The lock is on the (address, username) pair, not on the account: bob stays enabled.
    let users = d.get("/api/users", Some(&admin)).await.expect(200);
    let list = crate::users::user_list(&users);
    let bob = list.iter().find(|u| u["username"] == "bob").expect("bob");
    assert_eq!(bob["disabled"], false);
}

#[tokio::test]
async fn login_rate_limit_is_configurable_and_expires() {
    let d = Daemon::builder()
        .env("ORCHARD_AUTH_LOGIN_MAX_FAILURES", "2")
        .env("ORCHARD_AUTH_LOGIN_WINDOW", "2")
        .start();
    let admin = d.admin_token().await;
    d.create_user(&admin, "bob", "bob-password-1", "client", &[])
        .await;
    for _ in 0..2 {
        d.try_login("bob", "wrong-password")
            .await
            .expect_error(401, "unauthorized");
    }
    let locked_at = Instant::now();
    let r = d.try_login("bob", "bob-password-1").await;
    r.expect_error(429, "too_many_requests");
    let secs = retry_after_secs(&r);
    assert!(
        (1..=2).contains(&secs),
        "Retry-After {secs} with a 2 s window"
    );
    // Wait out what the server itself told us, then the lock must lift (poll with a
    // deadline to absorb scheduling jitter).
    tokio::time::sleep_until((locked_at + Duration::from_secs(secs)).into()).await;
    eventually(Duration::from_secs(4), "login after the window", || async {
        let r = d.try_login("bob", "bob-password-1").await;
        (r.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn me_returns_user_view_without_hash() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    let me = d.me(&admin).await;
    assert_user_view(&me);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["account_type"], "administrator");
    assert_eq!(me["disabled"], false);
    assert_eq!(perms_of(&me), sorted(&ALL_PERMISSIONS));

    let carol = d
        .create_user(
            &admin,
            "carol",
            "carol-password",
            "client",
            &["VIEW_ALL_VMS"],
        )
        .await;
    let token = d.login("carol", "carol-password").await;
    let me = d.me(&token).await;
    assert_user_view(&me);
    assert_eq!(me["uuid"], carol["uuid"]);
    assert_eq!(me["username"], "carol");
    assert_eq!(me["account_type"], "client");
    assert_eq!(perms_of(&me), sorted(&["VIEW_ALL_VMS"]));
    assert_eq!(uuid_of(&me), uuid_of(&carol));
}

#[tokio::test]
async fn me_rejects_missing_garbage_and_tampered_tokens() {
    let d = Daemon::start();
    let token = d.admin_token().await;

    d.get("/api/auth/me", None)
        .await
        .expect_error(401, "unauthorized");
    d.get("/api/auth/me", Some("garbage"))
        .await
        .expect_error(401, "unauthorized");
    d.get("/api/auth/me", Some("a.b.c"))
        .await
        .expect_error(401, "unauthorized");
    // The right token under the wrong scheme.
    let req = d
        .client
        .get(d.url("/api/auth/me"))
        .header("authorization", format!("Basic {token}"));
    d.send(req).await.expect_error(401, "unauthorized");

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // Signature changed in the middle (not the last character, whose low bits may be
    // ignored by a lenient decoder).
    let mut sig: Vec<u8> = parts[2].as_bytes().to_vec();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    d.get("/api/auth/me", Some(&forged))
        .await
        .expect_error(401, "unauthorized");

    // Claims changed, signature kept.
    let mut claims = jwt_claims(&token);
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 100_000);
    let payload = b64url_encode(&serde_json::to_vec(&claims).unwrap());
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    d.get("/api/auth/me", Some(&forged))
        .await
        .expect_error(401, "unauthorized");

    // Unsigned ("alg":"none").
    let header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let forged = format!("{header}.{}.", parts[1]);
    d.get("/api/auth/me", Some(&forged))
        .await
        .expect_error(401, "unauthorized");

    // The genuine token still works.
    d.me(&token).await;
}

#[tokio::test]
async fn token_expires_after_ttl() {
    let d = Daemon::builder().env("ORCHARD_AUTH_TOKEN_TTL", "1").start();
    let body = d.try_login("admin", ADMIN_PASSWORD).await.expect(200);
    assert_eq!(body["expires_in"], 1, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&token);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1,
        "{claims}"
    );
    let r = eventually(Duration::from_secs(6), "token to expire", || async {
        let r = d.get("/api/auth/me", Some(&token)).await;
        (r.status != 200).then_some(r)
    })
    .await;
    r.expect_error(401, "unauthorized");
    // An expired token cannot be refreshed either.
    d.post_empty("/api/auth/refresh", Some(&token))
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn refresh_issues_a_working_token() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let body = d
        .post_empty("/api/auth/refresh", Some(&token))
        .await
        .expect(200);
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["expires_in"], 3600, "{body}");
    let fresh = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    assert_ne!(fresh, token);
    assert_eq!(jwt_claims(&fresh)["sub"], jwt_claims(&token)["sub"]);
    let me = d.me(&fresh).await;
    assert_eq!(me["username"], "admin");

    d.post_empty("/api/auth/refresh", None)
        .await
        .expect_error(401, "unauthorized");
    d.post_empty("/api/auth/refresh", Some("garbage"))
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn logout_revokes_every_token_of_that_user() {
    let d = Daemon::start();
    let admin = d.admin_token().await;
    d.create_user(&admin, "dan", "dan-password", "client", &[])
        .await;
    let first = d.login("dan", "dan-password").await;
    let second = d.login("dan", "dan-password").await;
    let refreshed = d
        .post_empty("/api/auth/refresh", Some(&first))
        .await
        .expect(200)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = d.post_empty("/api/auth/logout", Some(&first)).await;
    assert_eq!(r.status, 204, "logout: {:?}", r.text);
    assert!(r.text.is_empty(), "204 with a body: {:?}", r.text);

    for token in [&first, &second, &refreshed] {
        d.get("/api/auth/me", Some(token))
            .await
            .expect_error(401, "unauthorized");
    }
    d.post_empty("/api/auth/refresh", Some(&second))
        .await
        .expect_error(401, "unauthorized");
    d.post_empty("/api/auth/logout", Some(&first))
        .await
        .expect_error(401, "unauthorized");
    // Other users are untouched, and dan can log in again.
    d.me(&admin).await;
    let again = d.login("dan", "dan-password").await;
    d.me(&again).await;
}

#[tokio::test]
async fn logout_without_token_is_401() {
    let d = Daemon::start();
    d.post_empty("/api/auth/logout", None)
        .await
        .expect_error(401, "unauthorized");
}
