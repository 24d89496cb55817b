//! `/api/clusters`: named groups of machines (contract 4.4 and 7).

use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;

use super::router::{Request, json, no_content};
use crate::db::AuditEntry;
use crate::error::Result;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    machines: Vec<String>,
    #[serde(default)]
    addons: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchBody {
    machines: Option<Vec<String>>,
    addons: Option<Vec<String>>,
}

fn audit(req: &Request, action: &str) -> Result<AuditEntry> {
    Ok(AuditEntry::new(req.actor()?.user.username.clone(), action).ip(req.client_ip()))
}

pub async fn list(req: Request) -> Result<Response> {
    Ok(json(StatusCode::OK, &req.state.clusters.list()))
}

pub async fn get(req: Request) -> Result<Response> {
    Ok(json(
        StatusCode::OK,
        &req.state.clusters.get(req.param("name"))?,
    ))
}

pub async fn create(req: Request) -> Result<Response> {
    let body: CreateBody = req.json()?;
    let entry = audit(&req, "cluster.create")?;
    let view = req
        .state
        .clusters
        .create(body.name, body.machines, body.addons, entry)
        .await?;
    Ok(json(StatusCode::CREATED, &view))
}

pub async fn patch(req: Request) -> Result<Response> {
    let body: PatchBody = req.json()?;
    let entry = audit(&req, "cluster.update")?;
    let view = req
        .state
        .clusters
        .update(req.param("name"), body.machines, body.addons, entry)
        .await?;
    Ok(json(StatusCode::OK, &view))
}

pub async fn delete(req: Request) -> Result<Response> {
    let entry = audit(&req, "cluster.delete")?;
    req.state.clusters.delete(req.param("name"), entry).await?;
    Ok(no_content())
}
