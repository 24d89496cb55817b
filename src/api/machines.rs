//! `/api/machines`, `/api/subscriptions`, `/api/backends`: the registry over REST, under the
//! see/control rules of contract section 2. A machine the caller does not see is a 404.

use orchard_plugin_api::{CreateSpec, MachineKind, MetadataUpdate, PowerAction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use super::router::{Request, json, no_content};
use crate::db::AuditEntry;
use crate::error::{Error, Result};
use crate::machines::payload::{ConnectionsPayload, DisksPayload, PropertiesPayload, StatePayload};
use crate::machines::{Machine, Machines, controls, sees};
use crate::model::User;

/// One machine with everything the registry knows of it.
#[derive(Serialize)]
struct Detail {
    #[serde(flatten)]
    properties: PropertiesPayload,
    state: StatePayload,
    disks_usage: DisksPayload,
    active_connections: ConnectionsPayload,
}

fn machine_id(req: &Request) -> Result<Uuid> {
    let raw = req.param("uuid");
    Uuid::parse_str(raw).map_err(|_| Error::not_found(format!("no machine {raw}")))
}

/// The machine if `user` sees it; 404 otherwise.
fn visible(machines: &Machines, user: &User, uuid: Uuid) -> Result<Machine> {
    machines
        .get(uuid)
        .filter(|m| sees(user, &m.relations))
        .ok_or_else(|| Error::not_found(format!("no machine {uuid}")))
}

/// The machine if `user` controls it (MANAGE_ALL_VMS controls every machine, seen or not);
/// 403 if seen only, 404 otherwise.
fn controlled(machines: &Machines, user: &User, uuid: Uuid) -> Result<Machine> {
    let m = machines
        .get(uuid)
        .ok_or_else(|| Error::not_found(format!("no machine {uuid}")))?;
    if controls(user, &m.relations) {
        Ok(m)
    } else if sees(user, &m.relations) {
        Err(Error::forbidden(
            "controlling this machine needs ownership, assignment or MANAGE_ALL_VMS",
        ))
    } else {
        Err(Error::not_found(format!("no machine {uuid}")))
    }
}

fn props(machines: &Machines, m: &Machine) -> PropertiesPayload {
    m.properties(&machines.usernames())
}

pub async fn list(req: Request) -> Result<Response> {
    let user = &req.actor()?.user;
    let machines = &req.state.machines;
    let names = machines.usernames().clone();
    let list: Vec<PropertiesPayload> = machines
        .visible_to(user)
        .iter()
        .map(|m| m.properties(&names))
        .collect();
    Ok(json(StatusCode::OK, &list))
}

pub async fn get(req: Request) -> Result<Response> {
    let user = &req.actor()?.user;
    let machines = &req.state.machines;
    let m = visible(machines, user, machine_id(&req)?)?;
    Ok(json(
        StatusCode::OK,
        &Detail {
            properties: props(machines, &m),
            state: m.state_payload(),
            disks_usage: m.disks_payload(),
            active_connections: m.connections_payload(),
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    backend: Option<String>,
    title: String,
    vcpu: u32,
    ram_mib: u64,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    kind: Option<MachineKind>,
}

fn check_title(title: &str) -> Result<()> {
    if Machines::title_ok(title) {
        Ok(())
    } else {
        Err(Error::bad_request(
            "title must be 1-128 characters without surrounding spaces or control characters",
        ))
    }
}

fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 64 || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(Error::bad_request("at most 64 tags of 1-64 characters"));
    }
    Ok(())
}

pub async fn create(req: Request) -> Result<Response> {
    let user = req.actor()?.user.clone();
    let body: CreateBody = req.json()?;
    check_title(&body.title)?;
    check_tags(&body.tags)?;
    if body.description.len() > 4096 {
        return Err(Error::bad_request("description is limited to 4096 bytes"));
    }
    let spec = CreateSpec {
        title: body.title,
        vcpu: body.vcpu,
        ram_mib: body.ram_mib,
        description: body.description,
        tags: body.tags,
        kind: body.kind,
    };
    let audit = AuditEntry::new(user.username.clone(), "machine.create")
        .ip(req.client_ip())
        .detail(spec.title.clone());
    let machines = &req.state.machines;
    let m = machines
        .create(body.backend.as_deref(), spec, &user, audit)
        .await?;
    Ok(json(StatusCode::CREATED, &props(machines, &m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    title: Option<String>,
    description: Option<String>,
    tags: Option<Vec<String>>,
}

pub async fn patch(req: Request) -> Result<Response> {
    let user = req.actor()?.user.clone();
    let body: PatchBody = req.json()?;
    let machines = &req.state.machines;
    let m = controlled(machines, &user, machine_id(&req)?)?;
    if let Some(t) = &body.title {
        check_title(t)?;
    }
    if let Some(tags) = &body.tags {
        check_tags(tags)?;
    }
    if body.description.as_ref().is_some_and(|d| d.len() > 4096) {
        return Err(Error::bad_request("description is limited to 4096 bytes"));
    }
    if body.title.is_none() && body.description.is_none() && body.tags.is_none() {
        return Err(Error::bad_request(
            "nothing to change: give title, description or tags",
        ));
    }
    let update = MetadataUpdate {
        title: body.title,
        description: body.description,
        tags: body.tags,
    };
    let m = machines.update(m.uuid, update).await?;
    audit(&req, &user, "machine.update", m.uuid).await;
    Ok(json(StatusCode::OK, &props(machines, &m)))
}

pub async fn delete(req: Request) -> Result<Response> {
    let user = req.actor()?.user.clone();
    let machines = &req.state.machines;
    let m = controlled(machines, &user, machine_id(&req)?)?;
    machines.delete(m.uuid).await?;
    audit(&req, &user, "machine.delete", m.uuid).await;
    Ok(no_content())
}

/// Records an action after it happened (the registry call itself has no transaction to
/// share); a failure to audit is logged, the action stands.
async fn audit(req: &Request, user: &User, action: &str, machine: Uuid) {
    let entry = AuditEntry::new(user.username.clone(), action)
        .target(machine.to_string())
        .ip(req.client_ip());
    if let Err(e) = req.state.record(entry, false).await {
        tracing::error!(error = %e, "cannot write an audit entry");
    }
}

pub async fn power(req: Request) -> Result<Response> {
    let user = req.actor()?.user.clone();
    let action = match req.param("action") {
        "start" => PowerAction::Start,
        "stop" => PowerAction::Stop,
        "restart" => PowerAction::Restart,
        "suspend" => PowerAction::Suspend,
        "resume" => PowerAction::Resume,
        "force_off" | "force-off" => PowerAction::ForceOff,
        other => return Err(Error::not_found(format!("no machine action {other:?}"))),
    };
    let machines = &req.state.machines;
    let m = controlled(machines, &user, machine_id(&req)?)?;
    machines.power(m.uuid, action).await?;
    audit(&req, &user, &format!("machine.{}", action.as_str()), m.uuid).await;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"uuid": m.uuid.to_string(), "action": action.as_str(), "status": "accepted"}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnerBody {
    /// A user uuid or username; null clears the owner.
    user: Option<String>,
}

/// Resolves a user given by uuid or username.
async fn resolve_user(req: &Request, who: &str) -> Result<User> {
    let who = who.to_owned();
    let found = req
        .state
        .db
        .run(move |db| match Uuid::parse_str(&who) {
            Ok(u) => db.user_by_uuid(u),
            Err(_) => db.user_by_name(&who),
        })
        .await?;
    found.ok_or_else(|| Error::not_found("no such user"))
}

pub async fn set_owner(req: Request) -> Result<Response> {
    let actor = req.actor()?.user.clone();
    let body: OwnerBody = req.json()?;
    let machines = &req.state.machines;
    let m = controlled(machines, &actor, machine_id(&req)?)?;
    let owner = match &body.user {
        Some(who) => Some(resolve_user(&req, who).await?.uuid),
        None => None,
    };
    let entry = AuditEntry::new(actor.username.clone(), "machine.owner")
        .ip(req.client_ip())
        .detail(
            owner
                .map(|u| u.to_string())
                .unwrap_or_else(|| "none".into()),
        );
    let m = machines.set_owner(m.uuid, owner, entry).await?;
    Ok(json(StatusCode::OK, &props(machines, &m)))
}

async fn client(req: Request, assigned: bool) -> Result<Response> {
    let actor = req.actor()?.user.clone();
    let machines = &req.state.machines;
    let m = controlled(machines, &actor, machine_id(&req)?)?;
    let user = resolve_user(&req, req.param("user_uuid")).await?;
    let entry = AuditEntry::new(
        actor.username.clone(),
        if assigned {
            "machine.assign"
        } else {
            "machine.unassign"
        },
    )
    .target(m.uuid.to_string())
    .ip(req.client_ip())
    .detail(user.username.clone());
    let m = machines
        .set_client(m.uuid, user.uuid, assigned, entry)
        .await?;
    Ok(json(StatusCode::OK, &props(machines, &m)))
}

pub async fn assign(req: Request) -> Result<Response> {
    client(req, true).await
}

pub async fn unassign(req: Request) -> Result<Response> {
    client(req, false).await
}

pub async fn subscriptions(req: Request) -> Result<Response> {
    let user = req.actor()?.user.uuid;
    let list: Vec<String> = req
        .state
        .machines
        .subscriptions(user)
        .await?
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    Ok(json(StatusCode::OK, &list))
}

async fn subscription(req: Request, subscribed: bool) -> Result<Response> {
    let user = req.actor()?.user.clone();
    let raw = req.param("machine_uuid");
    let uuid = Uuid::parse_str(raw).map_err(|_| Error::not_found(format!("no machine {raw}")))?;
    let machines = &req.state.machines;
    if subscribed {
        visible(machines, &user, uuid)?;
    }
    machines
        .set_subscription(user.uuid, uuid, subscribed)
        .await?;
    Ok(no_content())
}

pub async fn subscribe(req: Request) -> Result<Response> {
    subscription(req, true).await
}

pub async fn unsubscribe(req: Request) -> Result<Response> {
    subscription(req, false).await
}

pub async fn backends(req: Request) -> Result<Response> {
    Ok(json(StatusCode::OK, &req.state.machines.backends.infos()))
}
