//! The API reference (`assets/api/openapi.yaml`, `assets/api/asyncapi.yaml`) against the
//! server: the documents are served, well formed and self-consistent, and every response and
//! WebSocket message the whole suite receives is validated against them. `harness::Daemon::send`
//! calls [`check_response`]; the WebSocket clients (`wsclient.rs`, `channels.rs`, `vms.rs`)
//! call [`check_message`]. A mismatch fails the test that received it, with the path and the
//! schema's complaint.
//!
//! Validation uses the documents' own JSON Schemas (OpenAPI 3.1 schemas are JSON Schema
//! 2020-12; the AsyncAPI payloads reference them across documents), compiled once per test
//! process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;

use crate::harness::{Daemon, Resp};

pub const OPENAPI: &str = include_str!("../../assets/api/openapi.yaml");
pub const ASYNCAPI: &str = include_str!("../../assets/api/asyncapi.yaml");

/// Where the documents live for `$ref` resolution: the daemon serves them side by side, so
/// AsyncAPI's `openapi.yaml#/…` resolves to the OpenAPI document.
const OPENAPI_URI: &str = "https://orchard.invalid/api/openapi.yaml";
const ASYNCAPI_URI: &str = "https://orchard.invalid/api/asyncapi.yaml";

/// The messages the daemon may send on one path: `(message pointer, the types it allows)`.
type Candidates = Arc<Vec<(String, Vec<String>)>>;

struct Docs {
    openapi: &'static Value,
    asyncapi: &'static Value,
    registry: &'static Registry<'static>,
    /// Compiled validators by schema URI (`document#pointer`).
    validators: Mutex<HashMap<String, Arc<Validator>>>,
    /// What may pass on each WebSocket path, by direction (`send`: from the daemon,
    /// `receive`: to it), keyed `"{action} {path}"`.
    candidates: Mutex<HashMap<String, Candidates>>,
}

fn parse(name: &str, text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

fn docs() -> &'static Docs {
    static DOCS: OnceLock<Docs> = OnceLock::new();
    DOCS.get_or_init(|| {
        // Leaked once per test process: the registry borrows the documents for 'static.
        let openapi: &'static Value = Box::leak(Box::new(parse("openapi.yaml", OPENAPI)));
        let asyncapi: &'static Value = Box::leak(Box::new(parse("asyncapi.yaml", ASYNCAPI)));
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(OPENAPI_URI, openapi)
            .and_then(|b| b.add(ASYNCAPI_URI, asyncapi))
            .and_then(|b| b.prepare())
            .unwrap_or_else(|e| panic!("the API documents do not form a schema registry: {e}"));
        Docs {
            openapi,
            asyncapi,
            registry: Box::leak(Box::new(registry)),
            validators: Mutex::new(HashMap::new()),
            candidates: Mutex::new(HashMap::new()),
        }
    })
}

#[path = "../../src/api/operations.rs"]
mod openapi_operations;

/// `(METHOD, path template, public)` of every operation in the OpenAPI document, which the
/// router's unit test keeps equal to the route table (the same code: `src/api/operations.rs`).
pub fn operations() -> std::collections::BTreeSet<(String, String, bool)> {
    openapi_operations::operations(docs().openapi)
}

/// `~` and `/` escaped for a JSON pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// `document#pointer` as a URI: the pointer percent-encoded where a fragment needs it (path
/// templates carry `{` and `}`).
fn uri(document: &str, pointer: &str) -> String {
    let mut out = format!("{document}#");
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"/~-._!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Follows local `$ref`s (`#/…`) from `pointer` in `doc`; returns the final pointer.
fn follow(doc: &Value, mut pointer: String) -> Result<String, String> {
    for _ in 0..16 {
        let v = doc
            .pointer(&pointer)
            .ok_or_else(|| format!("{pointer} does not resolve"))?;
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| format!("{pointer}: only local $refs here, not {r}"))?
                    .to_owned();
            }
            None => return Ok(pointer),
        }
    }
    Err(format!("{pointer}: $ref chain too long"))
}

impl Docs {
    /// Validates `value` against the schema at `uri` (`document#pointer`). The complaints
    /// are about a copy with its secrets masked.
    fn validate(&self, uri: &str, value: &Value) -> Result<(), String> {
        let validator = self.validator(uri)?;
        if validator.is_valid(value) {
            return Ok(());
        }
        let masked = redacted(value);
        let errors: Vec<String> = validator
            .iter_errors(&masked)
            .map(|e| format!("{} at {}: {e}", e.schema_path(), e.instance_path()))
            .collect();
        Err(errors.join("; "))
    }

    /// The compiled schema at `uri`, compiled on first use.
    fn validator(&self, uri: &str) -> Result<Arc<Validator>, String> {
        Ok({
            let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(uri) {
                Some(v) => v.clone(),
                None => {
                    let v = jsonschema::options()
                        .with_draft(Draft::Draft202012)
                        .with_registry(self.registry)
                        .build(&serde_json::json!({ "$ref": uri }))
                        .map_err(|e| format!("the schema {uri} does not compile: {e}"))?;
                    let v = Arc::new(v);
                    cache.insert(uri.to_owned(), v.clone());
                    v
                }
            }
        })
    }
}

// ----- REST -----

/// Whether the path template `template` (`/api/users/{uuid}`) matches the request path.
fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
}

/// Checks one response against the OpenAPI document: the operation for (method, path
/// template) must document the status, and a JSON body must match its schema. A path no
/// route takes must be a 404 (or a UI file), a known path with another method a 405, both
/// with the `Error` body.
pub fn response_conforms(method: &str, path: &str, resp: &Resp) -> Result<(), String> {
    let d = docs();
    let lower = method.to_ascii_lowercase();
    let paths = d.openapi["paths"]
        .as_object()
        .ok_or("openapi.yaml has no paths")?;
    let mut candidates: Vec<&String> = paths.keys().filter(|t| template_matches(t, path)).collect();
    // The most literal template first (`/owner` before `/{action}`).
    candidates.sort_by_key(|t| t.matches('{').count());
    let with_method = candidates
        .iter()
        .find(|t| paths[t.as_str()].get(&lower).is_some());
    let error_schema = uri(OPENAPI_URI, "/components/schemas/Error");
    let Some(template) = with_method else {
        let in_api = path == "/api" || path.starts_with("/api/");
        let expected = if candidates.is_empty() { 404 } else { 405 };
        let ui_file = !in_api && (method == "GET" || method == "HEAD") && candidates.is_empty();
        if ui_file && resp.status != 404 {
            return Ok(()); // a static file of the web UI: not part of the REST API
        }
        if resp.status != expected {
            return Err(format!(
                "{method} {path}: no documented operation, so 404/405 was expected, got {}",
                resp.status
            ));
        }
        if method == "HEAD" {
            return Ok(());
        }
        let body = json_body(resp).map_err(|e| format!("{method} {path} {}: {e}", resp.status))?;
        return d
            .validate(&error_schema, &body)
            .map_err(|e| format!("{method} {path} {}: {e}", resp.status));
    };
    let op_pointer = format!("/paths/{}/{lower}", escape(template));
    let status = resp.status.to_string();
    let Some(_) = d
        .openapi
        .pointer(&format!("{op_pointer}/responses/{status}"))
    else {
        let body = json_body(resp).map_or_else(|_| clip(&resp.text), |v| redacted(&v).to_string());
        return Err(format!(
            "{method} {path} ({method} {template}): status {status} is not documented; body: {body}"
        ));
    };
    let response = follow(d.openapi, format!("{op_pointer}/responses/{status}"))?;
    let content = d.openapi.pointer(&format!("{response}/content"));
    let Some(content) = content.and_then(Value::as_object) else {
        return if resp.text.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{method} {template} {status}: documented without a body, got {:?}",
                clip(&resp.text)
            ))
        };
    };
    let got_type = resp.header("content-type").unwrap_or_default();
    let Some(media) = content.keys().find(|m| {
        got_type
            .split(';')
            .next()
            .is_some_and(|g| g.trim() == m.as_str())
    }) else {
        return Err(format!(
            "{method} {template} {status}: content type {got_type:?} is not one of {:?}",
            content.keys().collect::<Vec<_>>()
        ));
    };
    if media != "application/json" {
        return Ok(());
    }
    let body = json_body(resp).map_err(|e| format!("{method} {template} {status}: {e}"))?;
    let schema = uri(
        OPENAPI_URI,
        &format!("{response}/content/application~1json/schema"),
    );
    d.validate(&schema, &body).map_err(|e| {
        let body = redacted(&body);
        format!("{method} {path} ({template}) {status}: {e}; body: {body}")
    })
}

fn json_body(resp: &Resp) -> Result<Value, String> {
    serde_json::from_str(&resp.text)
        .map_err(|e| format!("body is not JSON ({e}): {:?}", clip(&resp.text)))
}

/// `v` with its secrets masked (see [`redact`]).
fn redacted(v: &Value) -> Value {
    let mut v = v.clone();
    redact(&mut v);
    v
}

/// The start of a text, for failure messages.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Replaces the string values of secret-bearing keys (`access_token`, `api_key`,
/// `password`, …) by `***`, so that failure messages never carry a token or a key. Their
/// schemas only ask for strings, so validation is unchanged.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = k == "token"
                    || k.ends_with("_token")
                    || k.ends_with("_key")
                    || k.contains("password")
                    || k.contains("secret");
                if secret && x.is_string() {
                    *x = Value::String("***".into());
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// [`response_conforms`], failing the test on a mismatch.
pub fn check_response(method: &str, path: &str, resp: &Resp) {
    if let Err(e) = response_conforms(method, path, resp) {
        panic!("response does not match assets/api/openapi.yaml: {e}");
    }
}

// ----- WebSocket -----

/// The path of a `ws://HOST/PATH?QUERY` URL.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/").to_owned()
}

/// The `type` values a message payload schema allows (`const` or `enum` of `type`).
fn message_types(doc: &Value, message: &str) -> Result<Vec<String>, String> {
    let payload = follow(doc, format!("{message}/payload"))?;
    let ty = follow(doc, format!("{payload}/properties/type"))?;
    let ty = doc.pointer(&ty).cloned().unwrap_or_default();
    let mut out: Vec<String> = ty["enum"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(c) = ty["const"].as_str() {
        out.push(c.to_owned());
    }
    Ok(out)
}

/// Pointers (`/components/messages/X`) of what the daemon sends (`action` "send") or
/// receives ("receive") on the channels whose address matches `path`: the messages of their
/// operations with that action (all of a channel's messages when an operation lists none).
fn operation_messages(path: &str, action: &str) -> Result<BTreeSet<String>, String> {
    let doc = docs().asyncapi;
    let channels = doc["channels"]
        .as_object()
        .ok_or("asyncapi.yaml has no channels")?;
    let mut out = BTreeSet::new();
    for (id, ch) in channels {
        let address = ch["address"].as_str().unwrap_or_default();
        if !template_matches(address, path) {
            continue;
        }
        let ch_ref = format!("#/channels/{}", escape(id));
        for op in doc["operations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, o)| o)
        {
            if op["action"] != action || op["channel"]["$ref"] != ch_ref.as_str() {
                continue;
            }
            match op["messages"].as_array() {
                Some(list) => {
                    for m in list {
                        let r = m["$ref"]
                            .as_str()
                            .ok_or("an operation message without $ref")?;
                        out.insert(follow(doc, r.trim_start_matches('#').to_owned())?);
                    }
                }
                None => {
                    for m in ch["messages"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k)
                    {
                        let p = format!("/channels/{}/messages/{}", escape(id), escape(m));
                        out.insert(follow(doc, p)?);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Checks one message the daemon sent on the socket at `path` against the AsyncAPI
/// document: among the messages its channel sends, those with this `type` are the
/// candidates, and the message must match one of them.
pub fn message_conforms(path: &str, msg: &Value) -> Result<(), String> {
    conforms(path, "send", msg)
}

/// [`message_conforms`] for a message sent *to* the daemon (by the real `orchard agent`).
pub fn received_message_conforms(path: &str, msg: &Value) -> Result<(), String> {
    conforms(path, "receive", msg)
}

fn conforms(path: &str, action: &str, msg: &Value) -> Result<(), String> {
    let d = docs();
    let ty = msg["type"].as_str().unwrap_or_default();
    let sent = candidates(path, action)?;
    let mut complaints = Vec::new();
    for (m, _) in sent
        .iter()
        .filter(|(_, types)| types.iter().any(|t| t == ty))
    {
        match d.validate(&uri(ASYNCAPI_URI, &format!("{m}/payload")), msg) {
            Ok(()) => return Ok(()),
            Err(e) => complaints.push(format!("{m}: {e}")),
        }
    }
    let msg = redacted(msg);
    if complaints.is_empty() {
        return Err(format!(
            "{path}: type {ty:?} is not a documented message: {msg}"
        ));
    }
    Err(format!(
        "{path}: {msg} matches no message of its type: {}",
        complaints.join(" | ")
    ))
}

/// [`operation_messages`] of `path` with their types, worked out once per path and action.
fn candidates(path: &str, action: &str) -> Result<Candidates, String> {
    let d = docs();
    let key = format!("{action} {path}");
    if let Some(c) = d
        .candidates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return Ok(c.clone());
    }
    let sent = operation_messages(path, action)?;
    if sent.is_empty() {
        return Err(format!(
            "{path}: no channel of asyncapi.yaml has this address with a {action} operation"
        ));
    }
    let list = sent
        .into_iter()
        .map(|m| message_types(d.asyncapi, &m).map(|t| (m, t)))
        .collect::<Result<Vec<_>, String>>()?;
    let list = Arc::new(list);
    d.candidates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, list.clone());
    Ok(list)
}

/// [`message_conforms`], failing the test on a mismatch.
pub fn check_message(path: &str, msg: &Value) {
    if let Err(e) = message_conforms(path, msg) {
        panic!("WebSocket message does not match assets/api/asyncapi.yaml: {e}");
    }
}

// ----- the documents themselves -----

/// Every `$ref` string in `v`, with where it is.
fn refs<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        out.push((at.to_owned(), r));
                    }
                } else {
                    refs(x, &format!("{at}/{}", escape(k)), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The `$ref`s of `doc` that do not resolve: local ones in `doc`, `openapi.yaml#…` in the
/// OpenAPI document.
fn dangling(doc: &Value) -> Vec<String> {
    let d = docs();
    let mut all = Vec::new();
    refs(doc, "", &mut all);
    assert!(!all.is_empty(), "a document without any $ref");
    all.into_iter()
        .filter(|(_, r)| {
            let (file, pointer) = r.split_once('#').unwrap_or((r, ""));
            let target = match file {
                "" => doc,
                "openapi.yaml" => d.openapi,
                _ => return true,
            };
            target.pointer(pointer).is_none()
        })
        .map(|(at, r)| format!("{at}: {r}"))
        .collect()
}

/// Asserts the schema at `uri` compiles (validating anything compiles and caches it).
fn compiles(uri: &str) {
    let d = docs();
    if let Err(e) = d.validate(uri, &Value::Null) {
        assert!(!e.contains("does not compile"), "{e}");
    }
    assert!(
        d.validators.lock().unwrap().contains_key(uri),
        "{uri} was not compiled"
    );
}

async fn fetch_document(d: &Daemon, path: &str, embedded: &str) -> Value {
    let r = d.get(path, None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/yaml"),
        "{path} content type"
    );
    assert!(r.header("etag").is_some(), "{path} has an ETag");
    assert_eq!(r.text, embedded, "{path} serves assets/api/ as built");
    parse(path, &r.text)
}

#[tokio::test]
async fn served_documents_are_openapi_3_1_and_asyncapi_3_0_and_resolve() {
    let d = Daemon::start();
    let openapi = fetch_document(&d, "/api/openapi.yaml", OPENAPI).await;
    let asyncapi = fetch_document(&d, "/api/asyncapi.yaml", ASYNCAPI).await;

    let version = openapi["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi version {version:?}");
    for key in ["info", "paths", "components"] {
        assert!(openapi[key].is_object(), "openapi.yaml lacks {key}");
    }
    assert!(openapi["info"]["title"].is_string() && openapi["info"]["version"].is_string());
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    for key in ["info", "channels", "operations", "components"] {
        assert!(asyncapi[key].is_object(), "asyncapi.yaml lacks {key}");
    }
    assert!(asyncapi["info"]["title"].is_string() && asyncapi["info"]["version"].is_string());

    assert_eq!(
        dangling(&openapi),
        Vec::<String>::new(),
        "openapi.yaml $refs"
    );
    assert_eq!(
        dangling(&asyncapi),
        Vec::<String>::new(),
        "asyncapi.yaml $refs"
    );

    // Every operation has responses, every response schema and every message payload
    // compiles, and every message names its `type`.
    let docs = docs();
    for (template, item) in openapi["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {template} has no responses"));
            for status in responses.keys() {
                let pointer = format!("/paths/{}/{method}/responses/{status}", escape(template));
                let resp = follow(docs.openapi, pointer).unwrap();
                if docs
                    .openapi
                    .pointer(&format!("{resp}/content/application~1json"))
                    .is_some()
                {
                    compiles(&uri(
                        OPENAPI_URI,
                        &format!("{resp}/content/application~1json/schema"),
                    ));
                }
            }
        }
    }
    let mut channels = 0;
    for (id, ch) in asyncapi["channels"].as_object().unwrap() {
        channels += 1;
        let address = ch["address"].as_str().unwrap();
        let sent =
            operation_messages(&address.replace('{', "x-").replace('}', ""), "send").unwrap();
        assert!(!sent.is_empty(), "channel {id} sends nothing");
        for m in ch["messages"].as_object().unwrap().keys() {
            let p = follow(
                docs.asyncapi,
                format!("/channels/{}/messages/{m}", escape(id)),
            )
            .unwrap();
            let types = message_types(docs.asyncapi, &p).unwrap();
            assert!(!types.is_empty(), "{p} names no type");
            compiles(&uri(ASYNCAPI_URI, &format!("{p}/payload")));
        }
    }
    assert_eq!(channels, 11, "the five APIs' WebSocket endpoints");
}

#[tokio::test]
async fn the_ui_links_the_reference() {
    let d = Daemon::start();
    let main = d.get("/js/main.js", None).await;
    assert_eq!(main.status, 200);
    for doc in ["/api/openapi.yaml", "/api/asyncapi.yaml"] {
        assert!(
            main.text.contains(&format!("href: '{doc}'")),
            "the UI shell links {doc}"
        );
    }
}

/// The checks fail on what the documents do not allow, so a green suite means something.
#[tokio::test]
async fn validation_rejects_what_the_documents_do_not_allow() {
    let d = Daemon::start();
    let token = d.admin_token().await;
    let me = d.get("/api/auth/me", Some(&token)).await;
    response_conforms("GET", "/api/auth/me", &me).unwrap();

    let forged = |status: u16, text: String| Resp {
        status,
        headers: me.headers.clone(),
        text,
    };
    let mut leaky = me.json();
    leaky["password_hash"] = "$argon2id$…".into();
    let e = response_conforms("GET", "/api/auth/me", &forged(200, leaky.to_string())).unwrap_err();
    assert!(e.contains("password_hash"), "{e}");
    let e = response_conforms("GET", "/api/auth/me", &forged(418, me.text.clone())).unwrap_err();
    assert!(e.contains("418 is not documented"), "{e}");
    let e = response_conforms("GET", "/api/auth/me", &forged(401, "{}".into())).unwrap_err();
    assert!(e.contains("error"), "an empty error body: {e}");
    let e = response_conforms("GET", "/api/nope", &forged(200, "{}".into())).unwrap_err();
    assert!(e.contains("404/405 was expected"), "{e}");

    let ok = serde_json::json!({"type": "cluster.added", "data": {"name": "web"}});
    message_conforms("/ws", &ok).unwrap();
    message_conforms("/ws/clusters", &ok).unwrap();
    let e = message_conforms(
        "/ws/clusters",
        &serde_json::json!({"type": "cluster.added", "data": {}}),
    )
    .unwrap_err();
    assert!(e.contains("name"), "{e}");
    let e = message_conforms("/ws/vms/x", &serde_json::json!({"type": "nonsense"})).unwrap_err();
    assert!(e.contains("not a documented message"), "{e}");
    let state = serde_json::json!({"uuid": uuid::Uuid::new_v4().to_string(), "type": "DATA_DYNAMIC",
        "body": {"not-a-uuid": {}}, "timestamp": "2026-01-01T00:00:00Z"});
    assert!(message_conforms("/ws/machines/global", &state).is_err());
    assert!(message_conforms("/ws/nowhere", &ok).is_err());
    assert_eq!(
        path_of("ws://127.0.0.1:1/ws/vms/a%20b?token=x"),
        "/ws/vms/a%20b"
    );
}
