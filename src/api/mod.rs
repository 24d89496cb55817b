//! The REST API: one route table naming each route's method, path, access check and handler.
//! Only `api/` (with `server.rs`) knows HTTP.

pub mod assets;
mod auth;
mod clusters;
mod machines;
#[cfg(test)]
mod operations;
mod router;
mod servers;
mod users;
mod views;

use std::sync::Arc;

use warp::Filter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use crate::auth::Access;
use crate::error::Result;
use crate::model::Permission as P;
use crate::server::ClientAddr;
use crate::state::AppState;
pub use router::{Request, Route, Router, error_response};

const USER_MANAGERS: &[P] = &[P::ManageClientUsers, P::ManageAdminUsers];

macro_rules! route {
    ($method:ident $path:literal, $access:expr => $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            access: $access,
            handler: |r| Box::pin($handler(r)),
        }
    };
}

/// The route table.
pub fn routes() -> Vec<Route> {
    use Access::{AnyOf, Public, Token};
    vec![
        route!(GET "/healthz", Public => healthz),
        route!(GET "/metrics", Public => metrics),
        route!(GET "/api/openapi.yaml", Public => assets::openapi),
        route!(GET "/api/asyncapi.yaml", Public => assets::asyncapi),
        route!(POST "/api/auth/login", Public => auth::login),
        route!(POST "/api/auth/refresh", Token => auth::refresh),
        route!(POST "/api/auth/logout", Token => auth::logout),
        route!(GET "/api/auth/me", Token => auth::me),
        route!(GET "/api/users", AnyOf(USER_MANAGERS) => users::list),
        route!(POST "/api/users", AnyOf(USER_MANAGERS) => users::create),
        route!(GET "/api/users/{uuid}", AnyOf(USER_MANAGERS) => users::get),
        // Token only: a user may change their own password; `auth::policy` decides the rest.
        route!(PATCH "/api/users/{uuid}", Token => users::patch),
        route!(DELETE "/api/users/{uuid}", AnyOf(USER_MANAGERS) => users::delete),
        route!(GET "/api/activity", AnyOf(&[P::ManageAdminUsers]) => activity),
        route!(GET "/api/alerts", AnyOf(&[P::ViewAllVms]) => alerts),
        // Machines: the route needs a token; per-machine see/control is `api::machines`'s.
        route!(GET "/api/machines", Token => machines::list),
        route!(POST "/api/machines", AnyOf(&[P::ManageAllVms]) => machines::create),
        route!(GET "/api/machines/{uuid}", Token => machines::get),
        route!(PATCH "/api/machines/{uuid}", Token => machines::patch),
        route!(DELETE "/api/machines/{uuid}", Token => machines::delete),
        route!(POST "/api/machines/{uuid}/{action}", Token => machines::power),
        route!(PUT "/api/machines/{uuid}/owner", AnyOf(&[P::ManageAllVms]) => machines::set_owner),
        route!(PUT "/api/machines/{uuid}/clients/{user_uuid}", AnyOf(&[P::ManageAllVms]) => machines::assign),
        route!(DELETE "/api/machines/{uuid}/clients/{user_uuid}", AnyOf(&[P::ManageAllVms]) => machines::unassign),
        route!(GET "/api/subscriptions", Token => machines::subscriptions),
        route!(PUT "/api/subscriptions/{machine_uuid}", Token => machines::subscribe),
        route!(DELETE "/api/subscriptions/{machine_uuid}", Token => machines::unsubscribe),
        route!(GET "/api/backends", AnyOf(&[P::ViewAllVms]) => machines::backends),
        route!(GET "/api/v1/servers", AnyOf(&[P::ViewAllVms]) => servers::list),
        route!(POST "/api/v1/servers", AnyOf(&[P::ManageSystemResources]) => servers::create),
        route!(GET "/api/v1/servers/{server_id}", AnyOf(&[P::ViewAllVms]) => servers::get),
        route!(DELETE "/api/v1/servers/{server_id}", AnyOf(&[P::ManageSystemResources]) => servers::delete),
        route!(GET "/api/clusters", AnyOf(&[P::ViewAllVms]) => clusters::list),
        route!(POST "/api/clusters", AnyOf(&[P::ManageAllVms]) => clusters::create),
        route!(GET "/api/clusters/{name}", AnyOf(&[P::ViewAllVms]) => clusters::get),
        route!(PATCH "/api/clusters/{name}", AnyOf(&[P::ManageAllVms]) => clusters::patch),
        route!(DELETE "/api/clusters/{name}", AnyOf(&[P::ManageAllVms]) => clusters::delete),
    ]
}

/// The stateless part of serving a request, for the fuzz target (`crate::fuzz`): the route
/// of `method` and `target` (path and query), its path parameters, the query as logged, and
/// the body decoded as that route's handler decodes it.
pub fn fuzz_request(method: &str, target: &str, body: &[u8]) {
    use router::parse_json as parse;
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let _ = router::redact_query(query);
    let router = Router::new(routes());
    let Ok((route, _params)) = router.find(&method, path) else {
        return;
    };
    let _ = match (route.method.as_str(), route.path) {
        ("POST", "/api/auth/login") => parse::<auth::LoginBody>(body).map(drop),
        ("POST", "/api/users") => parse::<users::CreateBody>(body).map(drop),
        ("PATCH", "/api/users/{uuid}") => parse::<users::PatchBody>(body).map(drop),
        ("POST", "/api/machines") => parse::<machines::CreateBody>(body).map(drop),
        ("PATCH", "/api/machines/{uuid}") => parse::<machines::PatchBody>(body).map(drop),
        ("PUT", "/api/machines/{uuid}/owner") => parse::<machines::OwnerBody>(body).map(drop),
        ("POST", "/api/v1/servers") => parse::<servers::CreateBody>(body).map(drop),
        ("POST", "/api/clusters") => parse::<clusters::CreateBody>(body).map(drop),
        ("PATCH", "/api/clusters/{name}") => parse::<clusters::PatchBody>(body).map(drop),
        _ => Ok(()),
    };
}

/// Liveness. The listener opens only after plugins are loaded, so an answer means they are.
async fn healthz(req: Request) -> Result<Response> {
    let b = &req.state.machines.backends;
    let failed = b.failed.len() + b.loaded.iter().filter(|x| x.is_failed()).count();
    Ok(router::json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "backends": {"loaded": b.loaded.len() + b.failed.len() - failed, "failed": failed},
        }),
    ))
}

/// The metrics in the OpenMetrics text format (README "Metrics"); the gauges that mirror
/// other state are read now.
async fn metrics(req: Request) -> Result<Response> {
    let s = &req.state;
    let backends: Vec<(String, bool)> = s
        .machines
        .backends
        .infos()
        .into_iter()
        .map(|b| (b.name, b.status == "loaded"))
        .collect();
    let agent_hosts_online = s
        .hosts
        .list()
        .iter()
        .filter(|h| !h.local && h.status == "online")
        .count();
    let body = s
        .metrics
        .encode(crate::metrics::Snapshot {
            backends: &backends,
            agent_hosts_online,
            alerts_active: s.alerts.active().len(),
        })
        .map_err(crate::error::Error::internal)?;
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    h.insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

/// The newest audit entries, newest first.
async fn activity(req: Request) -> Result<Response> {
    let entries = req
        .state
        .db
        .run(|db| db.recent_audit(ACTIVITY_LIMIT))
        .await?;
    Ok(router::json(StatusCode::OK, &entries))
}

const ACTIVITY_LIMIT: usize = 500;

/// Active alerts and the raise/clear history, newest first.
async fn alerts(req: Request) -> Result<Response> {
    let history = req.state.alerts.history(ACTIVITY_LIMIT).await?;
    Ok(router::json(
        StatusCode::OK,
        &serde_json::json!({"active": req.state.alerts.active(), "history": history}),
    ))
}

/// The whole HTTP surface as one warp filter; it always answers (404 JSON for unknown paths).
pub fn filter(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let router = Arc::new(Router::new(routes()));
    let assets = Arc::new(assets::Source::new(state.config.ui.dir.as_deref()));
    warp::method()
        .and(warp::path::full())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<ClientAddr>())
        .and(warp::body::stream())
        .then(move |method, path, query, headers, client, body| {
            let state = state.clone();
            let router = router.clone();
            let assets = assets.clone();
            async move {
                let head = router::Head {
                    method,
                    path,
                    query,
                    headers,
                    client,
                };
                router::dispatch(state, &router, &assets, head, body).await
            }
        })
}
