//! `/api/users`: user management under the granting rules of `auth::policy`.

use serde::Deserialize;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use super::router::{Request, json, no_content};
use super::views::UserView;
use crate::auth::policy::{self, PasswordCheck};
use crate::db::{AuditEntry, NewUser, UserChange};
use crate::error::{Error, Result};
use crate::model::{AccountType, PermissionSet, User, validate_password, validate_username};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    username: String,
    password: String,
    account_type: String,
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    password: Option<String>,
    old_password: Option<String>,
    permissions: Option<Vec<String>>,
    disabled: Option<bool>,
}

async fn target(req: &Request) -> Result<User> {
    let raw = req.param("uuid");
    let uuid = Uuid::parse_str(raw).map_err(|_| Error::not_found(format!("no user {raw}")))?;
    req.state
        .db
        .run(move |db| db.user_by_uuid(uuid))
        .await?
        .ok_or_else(|| Error::not_found(format!("no user {uuid}")))
}

pub async fn list(req: Request) -> Result<Response> {
    let actor = req.actor()?.user.clone();
    let users = req.state.db.run(|db| db.list_users()).await?;
    let views: Vec<UserView> = users
        .iter()
        .filter(|u| policy::can_view(&actor, u))
        .map(UserView::from)
        .collect();
    Ok(json(StatusCode::OK, &views))
}

pub async fn get(req: Request) -> Result<Response> {
    let actor = req.actor()?;
    let target = target(&req).await?;
    policy::check_view(&actor.user, &target)?;
    Ok(json(StatusCode::OK, &UserView::from(&target)))
}

pub async fn create(req: Request) -> Result<Response> {
    let actor = req.actor()?.user.clone();
    let body: CreateBody = req.json()?;
    validate_username(&body.username).map_err(Error::BadRequest)?;
    validate_password(&body.password).map_err(Error::BadRequest)?;
    let kind: AccountType = body.account_type.parse().map_err(Error::BadRequest)?;
    let permissions = PermissionSet::parse(&body.permissions).map_err(Error::BadRequest)?;
    policy::check_create(&actor, kind, permissions)?;
    let password_hash = req.state.hasher.hash(body.password).await?;
    let entry = AuditEntry::new(actor.username.clone(), "user.create")
        .actor_id(actor.uuid)
        .user_agent(req.user_agent.as_deref())
        .target(body.username.clone())
        .ip(req.client_ip())
        .detail(format!("{} {:?}", kind.as_str(), permissions));
    let new = NewUser {
        username: body.username,
        account_type: kind,
        permissions,
        password_hash,
    };
    let announced = entry.clone();
    let user = req
        .state
        .db
        .run(move |db| db.create_user(new, Some(entry)))
        .await?;
    req.state.announce(announced);
    req.state.machines.note_user(user.uuid, &user.username);
    tracing::info!(target: "orchard::audit", actor = %actor.username, user = %user.username, "user created");
    Ok(json(StatusCode::CREATED, &UserView::from(&user)))
}

pub async fn patch(req: Request) -> Result<Response> {
    let actor = req.actor()?.user.clone();
    let body: PatchBody = req.json()?;
    let permissions = body
        .permissions
        .as_deref()
        .map(PermissionSet::parse)
        .transpose()
        .map_err(Error::BadRequest)?;
    if let Some(p) = &body.password {
        validate_password(p).map_err(Error::BadRequest)?;
    }
    let target = target(&req).await?;
    let check = policy::check_patch(
        &actor,
        &target,
        &policy::Patch {
            permissions,
            disabled: body.disabled,
            password: body.password.is_some(),
            old_password: body.old_password.as_deref(),
        },
    )?;
    // A right old password, reported to the limiter once the change is stored.
    let mut proved = None;
    if check == PasswordCheck::OldPassword {
        // A guess at the password like a login: counted by the same limiter, per client
        // address and account (and towards the account's ceiling).
        let limiter = &req.state.limiter;
        let mut attempt = limiter
            .admit(req.client_ip(), &target.username)
            .map_err(|retry_after| Error::TooManyRequests { retry_after })?;
        let old = body.old_password.clone().unwrap_or_default();
        let ok = req
            .state
            .hasher
            .verify_guarded(old, Some(target.password_hash.clone()), || {
                limiter
                    .readmit(&mut attempt)
                    .map_err(|retry_after| Error::TooManyRequests { retry_after })
            })
            .await?;
        if !ok {
            limiter.failed(attempt);
            return Err(Error::forbidden("old_password is incorrect"));
        }
        proved = Some(attempt);
    }
    let password_hash = match body.password {
        Some(p) => Some(req.state.hasher.hash(p).await?),
        None => None,
    };
    let changed_password = password_hash.is_some();
    let mut changed = Vec::new();
    if changed_password {
        changed.push("password".to_owned());
    }
    if let Some(p) = permissions {
        changed.push(format!("permissions={p:?}"));
    }
    if let Some(d) = body.disabled {
        changed.push(format!("disabled={d}"));
    }
    let entry = AuditEntry::new(actor.username.clone(), "user.update")
        .actor_id(actor.uuid)
        .user_agent(req.user_agent.as_deref())
        .target(target.username.clone())
        .ip(req.client_ip())
        .detail(changed.join(" "));
    let change = UserChange {
        password_hash,
        permissions,
        disabled: body.disabled,
        bump_token_version: false,
    };
    let uuid = target.uuid;
    let announced = entry.clone();
    let user = req
        .state
        .db
        .run(move |db| db.update_user(uuid, change, Some(entry)))
        .await?;
    req.state.announce(announced);
    req.state.user_changed(&user);
    if changed_password {
        // Addresses that knew the old password are not trusted with the new one, except the
        // one that just proved it and set the new one.
        req.state.limiter.forget_known(&user.username);
    }
    if let Some(attempt) = proved {
        req.state.limiter.succeeded(attempt);
    }
    tracing::info!(target: "orchard::audit", actor = %actor.username, user = %user.username, "user updated");
    Ok(json(StatusCode::OK, &UserView::from(&user)))
}

pub async fn delete(req: Request) -> Result<Response> {
    let actor = req.actor()?.user.clone();
    let target = target(&req).await?;
    policy::check_delete(&actor, &target)?;
    let entry = AuditEntry::new(actor.username.clone(), "user.delete")
        .actor_id(actor.uuid)
        .user_agent(req.user_agent.as_deref())
        .target(target.username.clone())
        .ip(req.client_ip());
    let uuid = target.uuid;
    let announced = entry.clone();
    req.state
        .db
        .run(move |db| db.delete_user(uuid, Some(entry)))
        .await?;
    req.state.announce(announced);
    req.state.ws.user_deleted(uuid);
    req.state.limiter.forget_known(&target.username);
    req.state.machines.forget_user(uuid);
    tracing::info!(target: "orchard::audit", actor = %actor.username, user = %target.username, "user deleted");
    Ok(no_content())
}
