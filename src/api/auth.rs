//! `/api/auth/*`: login, refresh, logout, me.

use std::borrow::Cow;

use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;

use super::router::{Request, json, no_content};
use super::views::{TokenView, UserView};
use crate::auth::token::{Issued, TokenError};
use crate::db::{AuditEntry, UserChange};
use crate::error::{Error, Result};
use crate::model::MAX_USERNAME_LEN;

/// The username borrows from the request body when it has no escapes: an oversized one is
/// refused without being copied.
#[derive(Deserialize)]
pub(super) struct LoginBody<'a> {
    #[serde(borrow)]
    username: Cow<'a, str>,
    password: String,
}

/// Attempted usernames are attacker-chosen; keep what reaches the audit log short.
fn clip(name: &str) -> String {
    name.chars().take(64).collect()
}

/// A login attempt, counted by its result (a malformed request is not an attempt).
pub async fn login(req: Request) -> Result<Response> {
    use crate::metrics::Login;
    let state = req.state.clone();
    let answer = attempt_login(req).await;
    let result = match &answer {
        Ok(_) => Some(Login::Success),
        Err(Error::BadCredentials) => Some(Login::Failure),
        Err(Error::TooManyRequests { .. }) => Some(Login::RateLimited),
        Err(_) => None,
    };
    if let Some(r) = result {
        state.metrics.login(r);
    }
    answer
}

async fn attempt_login(req: Request) -> Result<Response> {
    let body: LoginBody = req.json()?;
    // No account has a longer name: refused before anything keeps or hashes it.
    if body.username.len() > MAX_USERNAME_LEN {
        return Err(Error::bad_request(format!(
            "username must be at most {MAX_USERNAME_LEN} characters"
        )));
    }
    let state = &req.state;
    let ip = req.client_ip();
    let mut attempt = state
        .limiter
        .admit(ip, &body.username)
        .map_err(|retry_after| Error::TooManyRequests { retry_after })?;
    let name = body.username.clone().into_owned();
    let user = if crate::model::validate_username(&name).is_ok() {
        state.db.run(move |db| db.user_by_name(&name)).await?
    } else {
        None
    };
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Checked again when a hashing slot frees up: guesses queued behind the slots cannot
    // outrun the failures recorded meanwhile.
    let limiter = &state.limiter;
    let verified = state
        .hasher
        .verify_guarded(body.password.clone(), hash, || {
            limiter
                .readmit(&mut attempt)
                .map_err(|retry_after| Error::TooManyRequests { retry_after })
        })
        .await?;
    let user = match user {
        Some(u) if verified && !u.disabled => u,
        _ => {
            state.limiter.failed(attempt);
            let entry = AuditEntry::new(clip(&body.username), "login_failed")
                .ip(ip)
                .user_agent(req.user_agent.as_deref());
            state.record(entry, true).await?;
            tracing::info!(target: "orchard::audit", username = %clip(&body.username), "login failed");
            return Err(Error::BadCredentials);
        }
    };
    state.limiter.succeeded(attempt);
    let issued = state.tokens.issue(&user).map_err(|_| Error::Unauthorized)?;
    let entry = AuditEntry::new(user.username.clone(), "login")
        .actor_id(user.uuid)
        .ip(ip)
        .user_agent(req.user_agent.as_deref());
    state.record(entry, true).await?;
    Ok(token_response(&issued))
}

fn token_response(issued: &Issued) -> Response {
    json(
        StatusCode::OK,
        &TokenView {
            access_token: issued.token.clone(),
            token_type: "Bearer",
            // The lifetime granted at issue: the audit write between issuing and answering
            // must not shave a second off it when it crosses a second boundary.
            expires_in: issued.claims.exp.saturating_sub(issued.claims.iat),
        },
    )
}

pub async fn refresh(req: Request) -> Result<Response> {
    let actor = req.actor()?;
    let issued = req
        .state
        .tokens
        .refresh(&actor.user, actor.claims.auth_time)
        .map_err(|e| match e {
            TokenError::SessionOver | TokenError::Expired | TokenError::Invalid => {
                Error::Unauthorized
            }
        })?;
    Ok(token_response(&issued))
}

/// Revokes every token of the caller (the token version is bumped).
pub async fn logout(req: Request) -> Result<Response> {
    let actor = req.actor()?;
    let uuid = actor.user.uuid;
    let entry = AuditEntry::new(actor.user.username.clone(), "logout")
        .actor_id(uuid)
        .ip(req.client_ip())
        .user_agent(req.user_agent.as_deref());
    let announced = entry.clone();
    let user = req
        .state
        .db
        .run(move |db| {
            db.update_user(
                uuid,
                UserChange {
                    bump_token_version: true,
                    ..Default::default()
                },
                Some(entry),
            )
        })
        .await?;
    req.state.user_changed(&user);
    req.state.announce(announced);
    Ok(no_content())
}

pub async fn me(req: Request) -> Result<Response> {
    Ok(json(StatusCode::OK, &UserView::from(&req.actor()?.user)))
}
