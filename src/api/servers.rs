//! `/api/v1/servers`: the built-in local host (listed first, never deleted) and the agent
//! hosts. `POST {name}` returns the API key once; only its hash is stored. `DELETE` revokes
//! the key and closes the live agent socket.

use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;

use super::router::{Request, json, no_content};
use crate::db::{AuditEntry, ServerRecord};
use crate::error::{Error, Result};
use crate::hosts::Host;
use crate::model::now_iso;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
}

/// `hosts`: the host list, taken once per request (one lookup per server, not one list).
fn view(
    req: &Request,
    hosts: &std::collections::HashMap<String, Host>,
    s: &ServerRecord,
) -> serde_json::Value {
    let host = hosts.get(&s.server_id);
    json!({
        "server_id": s.server_id,
        "name": s.name,
        "created_at": s.created_at,
        "status": host.as_ref().map_or("offline", |h| h.status),
        "last_seen": host.and_then(|h| h.last_seen.as_deref()),
        "connected": req.state.agents.is_connected(&s.server_id),
        "local": false,
    })
}

/// The built-in local host (contract 4.3), fed by the daemon itself.
fn local_view(req: &Request) -> serde_json::Value {
    let (id, hostname) = req.state.hosts.local();
    json!({
        "server_id": id,
        "name": hostname,
        "created_at": null,
        "status": "online",
        "last_seen": now_iso(),
        "connected": true,
        "local": true,
    })
}

fn hosts_by_id(req: &Request) -> std::collections::HashMap<String, Host> {
    req.state
        .hosts
        .list()
        .into_iter()
        .map(|h| (h.host_id.clone(), h))
        .collect()
}

pub async fn list(req: Request) -> Result<Response> {
    let mut servers = req.state.db.run(|db| db.servers()).await?;
    servers.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    let mut views = vec![local_view(&req)];
    let hosts = hosts_by_id(&req);
    views.extend(servers.iter().map(|s| view(&req, &hosts, s)));
    Ok(json(StatusCode::OK, &views))
}

pub async fn get(req: Request) -> Result<Response> {
    let id = req.param("server_id").to_owned();
    if req.state.hosts.is_local(&id) {
        return Ok(json(StatusCode::OK, &local_view(&req)));
    }
    let servers = req.state.db.run(|db| db.servers()).await?;
    let s = servers
        .iter()
        .find(|s| s.server_id == id)
        .ok_or_else(|| Error::not_found(format!("no server {id}")))?;
    Ok(json(StatusCode::OK, &view(&req, &hosts_by_id(&req), s)))
}

pub async fn create(req: Request) -> Result<Response> {
    let body: CreateBody = req.json()?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "name must be 1 to 128 characters, without control characters",
        ));
    }
    let (api_key, key_hash) = crate::auth::apikey::generate().map_err(Error::internal)?;
    let record = ServerRecord {
        server_id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        key_hash,
        created_at: now_iso(),
    };
    let actor = req.actor()?;
    let audit = AuditEntry::new(actor.user.username.clone(), "server.create")
        .actor_id(actor.user.uuid)
        .target(record.server_id.clone())
        .detail(name.clone())
        .ip(req.client_ip());
    let stored = record.clone();
    req.state
        .db
        .run(move |db| db.create_server(&stored, audit))
        .await?;
    req.state.hosts.add_offline(&record.server_id, &record.name);
    Ok(json(
        StatusCode::CREATED,
        &json!({"server_id": record.server_id, "name": record.name, "api_key": api_key,
            "created_at": record.created_at}),
    ))
}

pub async fn delete(req: Request) -> Result<Response> {
    let id = req.param("server_id").to_owned();
    if req.state.hosts.is_local(&id) {
        return Err(Error::Conflict(
            "the local host is built in and cannot be deleted".into(),
        ));
    }
    let actor = req.actor()?;
    let audit = AuditEntry::new(actor.user.username.clone(), "server.delete")
        .actor_id(actor.user.uuid)
        .target(id.clone())
        .ip(req.client_ip());
    let key = id.clone();
    req.state
        .db
        .run(move |db| db.delete_server(&key, audit))
        .await?;
    req.state.agents.revoke(&id);
    Ok(no_content())
}
