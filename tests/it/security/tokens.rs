//! Forged, expired, revoked and broken tokens on every WebSocket route and every REST route
//! that needs one: refused with 4401 (after the API's documented error message, where it
//! has one) or HTTP 401 `unauthorized`, and nothing else is sent first.

use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::{KINDS, Kind, T, World, is_refusal, open};
use crate::harness::{Daemon, b64url_encode, jwt_claims};

/// The daemon's signing key (the data directory's `jwt-secret`).
fn signing_key(d: &Daemon) -> Vec<u8> {
    std::fs::read(d.data_dir().join("jwt-secret")).expect("jwt-secret")
}

fn sign(claims: &Value, alg: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key))
        .expect("encode a JWT")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every kind of bad token, derived from the genuine `good` one: `(what, token)`.
pub fn bad_tokens(d: &Daemon, good: &str) -> Vec<(&'static str, String)> {
    let key = signing_key(d);
    let claims = jwt_claims(good);
    let parts: Vec<&str> = good.split('.').collect();
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let none_header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let t = now();
    vec![
        ("alg=none", format!("{none_header}.{}.", parts[1])),
        (
            "alg=none without a signature part",
            format!("{none_header}.{}", parts[1]),
        ),
        (
            "HS256 signed with another key",
            sign(
                &claims,
                Algorithm::HS256,
                b"not the daemon's key, but 32+ bytes long",
            ),
        ),
        (
            "HS512 signed with the daemon's key",
            sign(&claims, Algorithm::HS512, &key),
        ),
        ("no exp", sign(&no_exp, Algorithm::HS256, &key)),
        (
            "expired two minutes ago",
            sign(&with("exp", json!(t - 120)).clone(), Algorithm::HS256, &key),
        ),
        (
            "token_version + 1",
            sign(
                &with(
                    "token_version",
                    json!(claims["token_version"].as_u64().unwrap() + 1),
                ),
                Algorithm::HS256,
                &key,
            ),
        ),
        (
            "unknown subject",
            sign(
                &with("sub", json!("00000000-0000-4000-8000-000000000000")),
                Algorithm::HS256,
                &key,
            ),
        ),
        ("truncated signature", good[..good.len() - 6].to_owned()),
        (
            "header and payload only",
            format!("{}.{}", parts[0], parts[1]),
        ),
        ("garbage", "garbage".to_owned()),
        ("empty", String::new()),
    ]
}

/// The genuine claims signed again with the daemon's key: must work, which shows that the
/// forged tokens above are refused for what they change, not for how they were made.
fn resigned(d: &Daemon, good: &str) -> String {
    sign(&jwt_claims(good), Algorithm::HS256, &signing_key(d))
}

/// Checks what one refused socket sent before its 4401: only the API's refusal message(s).
fn assert_refused(kind: Kind, what: &str, seen: &[Value]) {
    assert!(
        seen.iter().all(|v| is_refusal(kind, v)),
        "{kind:?} with {what}: data before the close: {seen:?}"
    );
    let documented_message = !matches!(
        kind,
        Kind::Subscribed | Kind::Account | Kind::Global | Kind::Clusters
    );
    if documented_message {
        assert!(
            !seen.is_empty(),
            "{kind:?} with {what}: no error message before the close"
        );
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_on_every_websocket_route_before_any_data() {
    let w = World::new(&[]).await;
    let bad = bad_tokens(&w.d, &w.admin);
    let good = resigned(&w.d, &w.admin);
    for kind in KINDS {
        // The re-signed genuine token opens it (so the refusals below are the forgeries').
        w.open_ready(kind, &good).await;
        let runs = bad.iter().map(|(what, token)| async {
            let mut ws = w.open(kind, token).await;
            let seen = ws.expect_close(4401, T).await;
            assert_refused(kind, what, &seen);
        });
        join_all(runs).await;
    }
    // C's streams also take the token with the request.
    for kind in [Kind::Metrics, Kind::Logs] {
        for (what, token) in &bad {
            let path = format!("{}?token={}", w.path(kind), super::enc(token));
            let mut ws = open(&w.d, &path).await;
            let seen = ws.expect_close(4401, T).await;
            assert_refused(kind, &format!("{what} in the query"), &seen);
        }
    }
}

#[tokio::test]
async fn bad_api_keys_are_refused_on_the_agent_socket() {
    let w = World::new(&[]).await;
    let d = &w.d;
    let (gone_id, gone_key) = super::create_server(d, &w.admin, "gone").await;
    let r = d
        .delete(&format!("/api/v1/servers/{gone_id}"), Some(&w.admin))
        .await;
    assert_eq!(r.status, 204);
    let k = &w.api_key;
    let cases = [
        ("a deleted server's key", json!(gone_key)),
        ("truncated key", json!(k[..k.len() - 4])),
        ("key with a byte more", json!(format!("{k}A"))),
        ("a user's access token", json!(w.admin)),
        ("garbage", json!("orch_garbage")),
        ("empty", json!("")),
        ("a number", json!(12345)),
        ("null", Value::Null),
    ];
    for (what, key) in cases {
        let mut ws = open(d, "/api/v1/agents/ws").await;
        ws.send_json(&json!({"type": "auth", "api_key": key})).await;
        let seen = ws.expect_close(4401, T).await;
        assert!(
            seen.iter().all(|v| v["type"] == "error") && !seen.is_empty(),
            "{what}: only an error before the close: {seen:?}"
        );
    }
    // The genuine key is accepted.
    let mut ws = open(d, "/api/v1/agents/ws").await;
    ws.send_json(&json!({"type": "auth", "api_key": k})).await;
    ws.recv_where(T, "auth_success", |v| v["type"] == "auth_success")
        .await;
}

/// Every route of the table in `src/api/mod.rs` that needs a token, as `(method, path)`.
/// The test checks this list against the table itself, so a new route cannot be missed.
const TOKEN_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/auth/me"),
    ("GET", "/api/users"),
    ("POST", "/api/users"),
    ("GET", "/api/users/{uuid}"),
    ("PATCH", "/api/users/{uuid}"),
    ("DELETE", "/api/users/{uuid}"),
    ("GET", "/api/activity"),
    ("GET", "/api/alerts"),
    ("GET", "/api/machines"),
    ("POST", "/api/machines"),
    ("GET", "/api/machines/{uuid}"),
    ("PATCH", "/api/machines/{uuid}"),
    ("DELETE", "/api/machines/{uuid}"),
    ("POST", "/api/machines/{uuid}/{action}"),
    ("PUT", "/api/machines/{uuid}/owner"),
    ("PUT", "/api/machines/{uuid}/clients/{user_uuid}"),
    ("DELETE", "/api/machines/{uuid}/clients/{user_uuid}"),
    ("GET", "/api/subscriptions"),
    ("PUT", "/api/subscriptions/{machine_uuid}"),
    ("DELETE", "/api/subscriptions/{machine_uuid}"),
    ("GET", "/api/backends"),
    ("GET", "/api/v1/servers"),
    ("POST", "/api/v1/servers"),
    ("GET", "/api/v1/servers/{server_id}"),
    ("DELETE", "/api/v1/servers/{server_id}"),
    ("GET", "/api/clusters"),
    ("POST", "/api/clusters"),
    ("GET", "/api/clusters/{name}"),
    ("PATCH", "/api/clusters/{name}"),
    ("DELETE", "/api/clusters/{name}"),
];

/// [`TOKEN_ROUTES`] is every operation of the OpenAPI document that needs a token (the
/// router's unit test keeps the document equal to the route table), so no route is missed.
#[test]
fn the_token_route_list_is_the_route_table() {
    let mut documented: Vec<(String, String)> = crate::apidocs::operations()
        .into_iter()
        .filter(|(_, _, public)| !public)
        .map(|(m, p, _)| (m, p))
        .collect();
    assert!(documented.len() > 30, "read the document: {documented:?}");
    let mut listed: Vec<(String, String)> = TOKEN_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    documented.sort();
    listed.sort();
    assert_eq!(
        listed, documented,
        "TOKEN_ROUTES and the routes that need a token differ"
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_on_every_rest_route_and_changes_nothing() {
    let w = World::new(&[]).await;
    let d = &w.d;
    let me = d.me(&w.admin).await;
    let admin_uuid = me["uuid"].as_str().unwrap().to_owned();
    let r = d
        .post(
            "/api/clusters",
            Some(&w.admin),
            &json!({"name": "c1", "machines": [w.vm_uuid]}),
        )
        .await;
    assert!((200..300).contains(&r.status), "cluster: {}", r.text);
    let fill = |p: &str| {
        p.replace("{uuid}/clients", &format!("{}/clients", w.vm_uuid))
            .replace("{user_uuid}", &admin_uuid)
            .replace("/api/users/{uuid}", &format!("/api/users/{admin_uuid}"))
            .replace("{uuid}", &w.vm_uuid)
            .replace("{action}", "stop")
            .replace("{machine_uuid}", &w.vm_uuid)
            .replace("{server_id}", &w.server_id)
            .replace("{name}", "c1")
    };
    let mut bad = bad_tokens(d, &w.admin);
    bad.push(("the token under the Basic scheme", String::new()));
    let body = json!({"title": "hijacked", "name": "x", "password": "hijacked-password-1",
        "username": "mallory", "account_type": "administrator", "permissions": [],
        "vcpu": 1, "ram_mib": 256, "user": admin_uuid, "machines": []});
    let mut first_body: Option<String> = None;
    for (method, path) in TOKEN_ROUTES {
        let url = d.url(&fill(path));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut cases: Vec<(&str, Option<String>)> = vec![("no Authorization", None)];
        cases.extend(bad.iter().map(|(what, t)| (*what, Some(t.clone()))));
        for (what, token) in cases {
            let mut req = d.client.request(method.clone(), &url).json(&body);
            req = match token {
                None => req,
                Some(_) if what.contains("Basic") => {
                    req.header("authorization", format!("Basic {}", w.admin))
                }
                Some(t) => req.header("authorization", format!("Bearer {t}")),
            };
            let r = d.send(req).await;
            assert_eq!(r.status, 401, "{method} {path} with {what}: {}", r.text);
            let v = r.json();
            assert_eq!(
                v["error"]["code"], "unauthorized",
                "{method} {path}, {what}"
            );
            assert_eq!(
                v.as_object().map(|o| o.len()),
                Some(1),
                "{method} {path}, {what}: only the error: {v}"
            );
            // Every refusal is the same: nothing tells one forgery from another.
            match &first_body {
                None => first_body = Some(r.text.clone()),
                Some(b) => assert_eq!(&r.text, b, "{method} {path}, {what}"),
            }
        }
    }
    // Nothing changed: the VM still runs under its title, the admin and the server remain,
    // no user was created, and the genuine token still works.
    let m = d
        .get(&format!("/api/machines/{}", w.vm_uuid), Some(&w.admin))
        .await
        .expect(200);
    assert_eq!(
        m["properties"]["title"].as_str().or(m["title"].as_str()),
        Some(super::VM),
        "{m}"
    );
    crate::machines::wait_status(d, &w.admin, &w.vm_uuid, "running").await;
    d.get(&format!("/api/v1/servers/{}", w.server_id), Some(&w.admin))
        .await
        .expect(200);
    let users = d.get("/api/users", Some(&w.admin)).await.expect(200);
    assert!(
        !users.to_string().contains("mallory"),
        "a user was created: {users}"
    );
    d.get("/api/clusters/c1", Some(&w.admin)).await.expect(200);
    d.me(&w.admin).await;
}
