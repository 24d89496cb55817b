//! The REST API: one route table naming each route's method, path, access check and handler.
//! Only `api/` (with `server.rs`) knows HTTP.

mod auth;
mod router;
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
pub use router::{Request, Route, Router};

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
    ]
}

async fn healthz(_req: Request) -> Result<Response> {
    Ok(router::json(
        StatusCode::OK,
        &serde_json::json!({"status": "ok"}),
    ))
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

/// The whole HTTP surface as one warp filter; it always answers (404 JSON for unknown paths).
pub fn filter(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let router = Arc::new(Router::new(routes()));
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
            async move {
                let head = router::Head {
                    method,
                    path,
                    query,
                    headers,
                    client,
                };
                router::dispatch(state, &router, head, body).await
            }
        })
}
