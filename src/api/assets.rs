//! The web UI's static files (`assets/`): compiled into the binary, or read from a directory
//! when `ui.dir` is set (development). Every response carries an ETag (`If-None-Match` gives
//! 304), `Cache-Control: no-cache` (always revalidate: file names carry no version) and the
//! security headers below.
//!
//! Only `GET` and `HEAD` of paths outside `/api/` reach this module (the router tries the
//! route table first). `/` is `index.html`; the UI routes with `#` fragments, so an unknown
//! path is a plain 404, never `index.html`.

use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use rust_embed::RustEmbed;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use super::router::Request;
use crate::error::{Error, Result};

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Embedded;

/// `default-src 'self'` for everything. `connect-src 'self'` covers `ws:`/`wss:` to this same
/// host and port (CSP level 3), which is all the UI opens.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the files come from.
#[derive(Clone, Debug)]
pub enum Source {
    Embedded,
    Dir(PathBuf),
}

impl Source {
    pub fn new(dir: Option<&Path>) -> Self {
        match dir {
            Some(d) => Self::Dir(d.to_path_buf()),
            None => Self::Embedded,
        }
    }
}

struct File {
    body: Bytes,
    etag: String,
    content_type: String,
}

/// The file for a request path, or `None` (404).
async fn lookup(source: &Source, path: &str) -> Option<File> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    // Only plain relative components: no `..`, no absolute paths, no hidden files.
    let clean = Path::new(rel).components().all(|c| match c {
        Component::Normal(s) => !s.to_string_lossy().starts_with('.'),
        _ => false,
    });
    if !clean {
        return None;
    }
    match source {
        Source::Embedded => {
            let f = Embedded::get(rel)?;
            let etag = format!("\"{}\"", hex(&f.metadata.sha256_hash()[..12]));
            Some(File {
                content_type: content_type(rel, Some(f.metadata.mimetype())),
                // Embedded files are 'static: no copy per request.
                body: match f.data {
                    std::borrow::Cow::Borrowed(b) => Bytes::from_static(b),
                    std::borrow::Cow::Owned(v) => Bytes::from(v),
                },
                etag,
            })
        }
        Source::Dir(dir) => {
            let body = tokio::fs::read(dir.join(rel)).await.ok()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            Some(File {
                content_type: content_type(rel, None),
                etag: format!("\"d{:016x}\"", h.finish()),
                body: Bytes::from(body),
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The types the UI uses, with a charset for text; anything else as guessed.
fn content_type(path: &str, guessed: Option<&str>) -> String {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let t = match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "md" | "txt" => "text/plain; charset=utf-8",
        "" if path.ends_with("LICENSE") => "text/plain; charset=utf-8",
        _ => guessed.unwrap_or("application/octet-stream"),
    };
    t.to_owned()
}

/// Serves `path`, or `None` when there is no such file.
pub async fn serve(
    source: &Source,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let file = lookup(source, path).await?;
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == file.etag || t == "*")
        });
    let len = file.body.len();
    let mut r = if not_modified {
        let mut r = Response::new(Bytes::new().into());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if method == Method::HEAD {
        Response::new(Bytes::new().into())
    } else {
        Response::new(file.body.into())
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.etag) {
        h.insert(header::ETAG, v);
    }
    if !not_modified {
        if let Ok(v) = HeaderValue::from_str(&file.content_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        if method == Method::HEAD {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h);
    Some(r)
}

/// `GET /api/openapi.yaml`: the REST reference (`assets/api/openapi.yaml`).
pub async fn openapi(req: Request) -> Result<Response> {
    document(&req, "/api/openapi.yaml").await
}

/// `GET /api/asyncapi.yaml`: the WebSocket reference (`assets/api/asyncapi.yaml`).
pub async fn asyncapi(req: Request) -> Result<Response> {
    document(&req, "/api/asyncapi.yaml").await
}

/// One of the API documents, from the same source as the UI's files (so that `ui.dir`
/// serves the copy being edited). They live under `assets/api/`, which the UI fallback never
/// serves (it takes no `/api/` path): these routes are their only way out.
async fn document(req: &Request, path: &str) -> Result<Response> {
    let source = Source::new(req.state.config.ui.dir.as_deref());
    serve(&source, &Method::GET, path, &HeaderMap::new())
        .await
        .ok_or_else(|| Error::not_found(format!("{path} is not among the UI files")))
}

/// The headers every UI response carries.
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_files_and_traversal() {
        let s = Source::Embedded;
        let index = lookup(&s, "/").await.unwrap();
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        assert!(lookup(&s, "/../Cargo.toml").await.is_none());
        assert!(lookup(&s, "/js/../index.html").await.is_none());
        assert!(lookup(&s, "/nope.js").await.is_none());
        assert_eq!(
            content_type("vendor/xterm/xterm.mjs", None),
            "text/javascript; charset=utf-8"
        );
        let api = lookup(&s, "/api/openapi.yaml").await.unwrap();
        assert_eq!(api.content_type, "application/yaml");
        assert!(lookup(&s, "/api/asyncapi.yaml").await.is_some());
    }
}
