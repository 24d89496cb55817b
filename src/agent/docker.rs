//! Docker commands through the Docker Engine API on its unix socket (HTTP/1.1 over a
//! `UnixStream`, no client library).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const SOCKET: &str = "/var/run/docker.sock";

fn socket_path() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_owned(),
        _ => SOCKET.to_owned(),
    }
}

fn valid_container(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Carries out `action` (start, stop, restart, pause, unpause, kill, remove) on a container:
/// `Ok((success, message))`, `Err` when Docker cannot be reached or the request is invalid.
pub async fn run(
    action: &str,
    container_id: &str,
    timeout: Duration,
) -> Result<(bool, String), String> {
    if !valid_container(container_id) {
        return Err(format!("invalid container id {container_id:?}"));
    }
    let (method, path, done) = match action {
        "start" => (
            "POST",
            format!("/containers/{container_id}/start"),
            "Container started",
        ),
        "stop" => (
            "POST",
            format!("/containers/{container_id}/stop"),
            "Container stopped",
        ),
        "restart" => (
            "POST",
            format!("/containers/{container_id}/restart"),
            "Container restarted",
        ),
        "pause" => (
            "POST",
            format!("/containers/{container_id}/pause"),
            "Container paused",
        ),
        "unpause" => (
            "POST",
            format!("/containers/{container_id}/unpause"),
            "Container resumed",
        ),
        "kill" => (
            "POST",
            format!("/containers/{container_id}/kill"),
            "Container killed",
        ),
        "remove" | "rm" => (
            "DELETE",
            format!("/containers/{container_id}?force=true"),
            "Container removed",
        ),
        other => return Err(format!("unknown docker action {other:?}")),
    };
    let socket = socket_path();
    let work = async {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| format!("Docker is not available on this host ({socket}: {e})"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("Docker handshake failed: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("Docker request failed: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned));
        Ok(match status.as_u16() {
            200..=299 => (true, done.to_owned()),
            304 => (true, format!("{done} (no change)")),
            code => (
                false,
                message.unwrap_or_else(|| format!("Docker answered HTTP {code}")),
            ),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("timed out after {} s", timeout.as_secs()))?
}
