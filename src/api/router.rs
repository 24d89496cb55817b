//! The dispatcher behind the route table: path matching, 404/405, the body limit, the
//! access guard declared by each route, and the JSON error body. Handlers receive a
//! [`Request`] whose actor has already passed the route's check.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde::Serialize;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use super::assets;
use crate::auth::{self, Access, Actor};
use crate::error::{Error, Result};
use crate::server::ClientAddr;
use crate::state::AppState;

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response>> + Send>>;
pub type Handler = fn(Request) -> HandlerFuture;

/// One row of the route table.
pub struct Route {
    pub method: Method,
    /// `/api/users/{uuid}`: literal segments and `{name}` captures.
    pub path: &'static str,
    pub access: Access,
    pub handler: Handler,
}

/// What a handler gets.
pub struct Request {
    pub state: AppState,
    pub actor: Option<Actor>,
    pub params: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub client: Option<SocketAddr>,
    pub user_agent: Option<String>,
}

impl Request {
    /// The authenticated actor; present on every route whose access is not `Public`.
    pub fn actor(&self) -> Result<&Actor> {
        self.actor.as_ref().ok_or(Error::Unauthorized)
    }

    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The body parsed as JSON; a clear 400 otherwise. Strings may borrow from the body.
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        parse_json(&self.body)
    }

    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.map(|a| a.ip())
    }
}

/// A request body parsed as JSON; a clear 400 otherwise.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(body).map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))
}

enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

struct Compiled {
    route: Route,
    segments: Vec<Segment>,
}

pub struct Router {
    routes: Vec<Compiled>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        let routes = routes
            .into_iter()
            .map(|route| {
                let segments = split(route.path)
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => Segment::Param(name),
                            None => Segment::Literal(s),
                        },
                    )
                    .collect();
                Compiled { route, segments }
            })
            .collect();
        Self { routes }
    }

    /// Finds the route for `method` and `path`: `Err` is 404 or 405 (with `Allow`).
    pub(super) fn find(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<(&Route, Vec<(&'static str, String)>)> {
        let parts: Vec<&str> = split(path).collect();
        let mut allowed: Vec<&str> = Vec::new();
        for c in &self.routes {
            let Some(params) = matches(&c.segments, &parts) else {
                continue;
            };
            if c.route.method == method {
                return Ok((&c.route, params));
            }
            allowed.push(c.route.method.as_str());
        }
        if allowed.is_empty() {
            Err(Error::not_found(format!("no route for {path}")))
        } else {
            allowed.dedup();
            Err(Error::MethodNotAllowed {
                allow: allowed.join(", "),
            })
        }
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn matches(segments: &[Segment], parts: &[&str]) -> Option<Vec<(&'static str, String)>> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut params = Vec::new();
    for (seg, part) in segments.iter().zip(parts) {
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(name) => params.push((*name, percent_decode(part)?)),
        }
    }
    Some(params)
}

/// Decodes `%XX` escapes of a path segment; `None` for malformed escapes or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly (`from_str_radix` alone would also take a sign: `%+1`).
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Replaces every query value by `***`, so that tokens in query strings never reach a log.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) => format!("{k}=***"),
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The parts of a request the dispatcher needs besides its body.
pub struct Head {
    pub method: Method,
    pub path: warp::path::FullPath,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub client: Option<ClientAddr>,
}

/// Dispatches one request. Never fails: every error becomes a JSON response.
pub async fn dispatch<S, B>(
    state: AppState,
    router: &Router,
    assets: &assets::Source,
    head: Head,
    body: S,
) -> Response
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send,
    B: Buf,
{
    let started = Instant::now();
    let Head {
        method,
        path,
        query,
        headers,
        client,
    } = head;
    let client = client.map(|c| c.0);
    let response = match handle(
        &state,
        router,
        assets,
        &method,
        path.as_str(),
        &headers,
        client,
        body,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let status = response.status().as_u16();
    let query = query.as_deref().map(redact_query).unwrap_or_default();
    tracing::info!(
        target: "orchard::http",
        %method,
        path = path.as_str(),
        query,
        status,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

#[allow(clippy::too_many_arguments)]
async fn handle<S, B>(
    state: &AppState,
    router: &Router,
    assets: &assets::Source,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    client: Option<SocketAddr>,
    body: S,
) -> Result<Response>
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send,
    B: Buf,
{
    let (route, params) = match router.find(method, path) {
        Ok(found) => found,
        // Outside the API, a GET or HEAD that no route takes may be a UI file.
        Err(e @ Error::NotFound(_))
            if (method == Method::GET || method == Method::HEAD)
                && path != "/api"
                && !path.starts_with("/api/") =>
        {
            return assets::serve(assets, method, path, headers).await.ok_or(e);
        }
        Err(e) => return Err(e),
    };
    let limit = state.config.http.max_body_bytes;
    let body = read_body(headers, body, limit).await?;
    let actor = auth::guard(state, headers, route.access).await?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let req = Request {
        state: state.clone(),
        actor,
        params,
        body,
        client,
        user_agent,
    };
    (route.handler)(req).await
}

/// Bytes of an oversized body read and thrown away before answering 413, so that a client
/// still sending gets the answer rather than a reset; beyond this the connection just ends.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;

/// Reads the body up to `limit` bytes; a larger one is 413 (after draining what a client is
/// likely to still send, up to [`DRAIN_MAX`]).
async fn read_body<S, B>(headers: &HeaderMap, body: S, limit: u64) -> Result<Bytes>
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send,
    B: Buf,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = std::pin::pin!(body);
    if declared.is_some_and(|n| n > limit) {
        drain(&mut body, 0).await;
        return Err(Error::PayloadTooLarge { limit });
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| Error::bad_request("the request body could not be read"))?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            let seen = buf.len() as u64 + chunk.remaining() as u64;
            drop(buf);
            drain(&mut body, seen).await;
            return Err(Error::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards the rest of a body, up to [`DRAIN_MAX`] bytes in all.
async fn drain<S, B>(body: &mut std::pin::Pin<&mut S>, mut seen: u64)
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send,
    B: Buf,
{
    while seen <= DRAIN_MAX {
        match body.next().await {
            Some(Ok(chunk)) => seen += chunk.remaining() as u64,
            _ => break,
        }
    }
}

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = Response::new(body.into());
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => error_response(&Error::internal(e)),
    }
}

pub fn no_content() -> Response {
    let mut r = Response::new(Bytes::new().into());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

/// The JSON body and headers of an error. Internal causes are logged, not sent.
pub fn error_response(e: &Error) -> Response {
    if let Error::Internal(cause) = e {
        tracing::error!(error = %cause, "request failed");
    }
    let body = ErrorBody {
        error: ErrorDetail {
            code: e.code(),
            message: e.to_string(),
        },
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = Response::new(bytes.into());
    *r.status_mut() = e.status();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match e {
        Error::MethodNotAllowed { allow } => {
            if let Ok(v) = HeaderValue::from_str(allow) {
                h.insert(header::ALLOW, v);
            }
        }
        Error::TooManyRequests { retry_after } => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        Error::Unauthorized | Error::BadCredentials => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop(_: Request) -> HandlerFuture {
        Box::pin(async { Ok(no_content()) })
    }

    fn router() -> Router {
        Router::new(vec![
            Route {
                method: Method::GET,
                path: "/api/users",
                access: Access::Public,
                handler: nop,
            },
            Route {
                method: Method::GET,
                path: "/api/users/{uuid}",
                access: Access::Public,
                handler: nop,
            },
            Route {
                method: Method::DELETE,
                path: "/api/users/{uuid}",
                access: Access::Public,
                handler: nop,
            },
        ])
    }

    #[test]
    fn matching_404_405_and_params() {
        let r = router();
        let (route, params) = r.find(&Method::GET, "/api/users/abc%2Dd").unwrap();
        assert_eq!(route.path, "/api/users/{uuid}");
        assert_eq!(params, vec![("uuid", "abc-d".to_owned())]);
        assert!(r.find(&Method::GET, "/api/users/").is_ok());
        assert!(matches!(
            r.find(&Method::GET, "/api/nope"),
            Err(Error::NotFound(_))
        ));
        match r.find(&Method::PATCH, "/api/users/x") {
            Err(Error::MethodNotAllowed { allow }) => assert_eq!(allow, "GET, DELETE"),
            _ => panic!("expected 405"),
        }
        assert!(r.find(&Method::GET, "/api/users/%zz").is_err());
        assert!(r.find(&Method::GET, "/api/users/%+1").is_err());
        assert!(r.find(&Method::GET, "/api/users/%4").is_err());
    }

    /// `(METHOD, path, public)` of every operation in `assets/api/openapi.yaml`.
    fn documented() -> std::collections::BTreeSet<(String, String, bool)> {
        let doc: serde_json::Value =
            serde_norway::from_str(include_str!("../../assets/api/openapi.yaml")).unwrap();
        crate::api::operations::operations(&doc)
    }

    /// The route table and the OpenAPI document name the same routes (method and path
    /// template), and a route is open to anyone exactly where the document says
    /// `security: []`. The UI's static files are not routes and not in the document.
    #[test]
    fn route_table_matches_the_openapi_document() {
        let table: std::collections::BTreeSet<(String, String, bool)> = crate::api::routes()
            .iter()
            .map(|r| {
                (
                    r.method.as_str().to_owned(),
                    r.path.to_owned(),
                    matches!(r.access, Access::Public),
                )
            })
            .collect();
        let docs = documented();
        let undocumented: Vec<_> = table.difference(&docs).collect();
        let unrouted: Vec<_> = docs.difference(&table).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from (or with another access in) assets/api/openapi.yaml: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "operations of assets/api/openapi.yaml the route table lacks (or whose access differs): {unrouted:?}"
        );
        assert!(docs.len() > 30, "the document lists every route: {docs:?}");
    }

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(
            redact_query("access_token=secret&machine_uuid=1&flag"),
            "access_token=***&machine_uuid=***&flag"
        );
        assert_eq!(redact_query(""), "");
    }
}
