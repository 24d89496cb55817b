//! The web UI: static files (types, ETag/304, caching, security headers), the API's JSON 404
//! beside them, the `ui.dir` development switch, and the browser scenarios of
//! `tests/ui/ui.test.mjs` (playwright-core driving Debian's Chromium).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;

use crate::harness::Daemon;

const CSP_PARTS: &[&str] = &[
    "default-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
];

fn assert_security_headers(r: &crate::harness::Resp) {
    let csp = r.header("content-security-policy").expect("CSP header");
    for part in CSP_PARTS {
        assert!(csp.contains(part), "CSP {csp:?} lacks {part:?}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

#[tokio::test]
async fn static_files_have_types_etags_and_security_headers() {
    let d = Daemon::start();
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/js/main.js", "text/javascript; charset=utf-8"),
        ("/css/app.css", "text/css; charset=utf-8"),
        ("/vendor/xterm/xterm.mjs", "text/javascript; charset=utf-8"),
        (
            "/vendor/uplot/uPlot.esm.js",
            "text/javascript; charset=utf-8",
        ),
        ("/vendor/xterm/LICENSE", "text/plain; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let r = d.get(path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.header("content-type").as_deref(), Some(ty), "{path}");
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("no-cache"),
            "{path}"
        );
        assert_security_headers(&r);
        let etag = r.header("etag").expect("ETag");
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        // Revalidation: the same ETag is 304 without a body; another one is the file.
        let req = d.client.get(d.url(path)).header("if-none-match", &etag);
        let again = d.send(req).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.text.is_empty());
        assert_eq!(again.header("etag").as_deref(), Some(etag.as_str()));
        let req = d
            .client
            .get(d.url(path))
            .header("if-none-match", "\"other\"");
        assert_eq!(d.send(req).await.status, 200);
    }

    // The page loads its code from files only: no inline script or style.
    let index = d.get("/", None).await.text;
    assert!(index.contains(r#"<script type="module" src="/js/main.js"></script>"#));
    assert!(!index.contains("<style"), "inline style in index.html");
    assert!(
        !index.contains("style="),
        "inline style attribute in index.html"
    );

    // HEAD: the headers of GET, no body.
    let head = d.request(Method::HEAD, "/js/main.js", None, None).await;
    assert_eq!(head.status, 200);
    assert!(head.text.is_empty());
    assert!(head.header("etag").is_some());

    // Unknown API paths stay JSON 404s; unknown UI paths are 404 too (the UI routes with
    // `#` fragments, so it never needs a fallback to index.html).
    for path in ["/api/unknown", "/api", "/api/machines/x/y/z/w"] {
        let r = d.get(path, None).await;
        r.expect_error(404, "not_found");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
    }
    for path in [
        "/nope.html",
        "/js/nope.js",
        "/machines",
        "/../Cargo.toml",
        "/.hidden",
    ] {
        assert_eq!(d.get(path, None).await.status, 404, "{path}");
    }
    // Only GET and HEAD reach the files.
    let post = d.post("/index.html", None, &serde_json::json!({})).await;
    assert_eq!(post.status, 404);
}

#[tokio::test]
async fn ui_dir_serves_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><p>dev copy</p>",
    )
    .unwrap();
    let d = Daemon::builder()
        .env("ORCHARD_UI_DIR", &dir.path().to_string_lossy())
        .start();
    let r = d.get("/", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text, "<!doctype html><p>dev copy</p>");
    assert_security_headers(&r);
    // Edits show at once, with a new ETag.
    let etag = r.header("etag").unwrap();
    std::fs::write(dir.path().join("index.html"), "<p>edited</p>").unwrap();
    let r = d.get("/", None).await;
    assert_eq!(r.text, "<p>edited</p>");
    assert_ne!(r.header("etag").unwrap(), etag);
    assert_eq!(d.get("/js/main.js", None).await.status, 404);
}

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

fn require(cond: bool, what: &str) {
    assert!(
        cond,
        "the browser tests cannot run: {what}. `.ci/run` installs everything; locally: \
         `apt-get install chromium nodejs npm` and `npm ci --prefix tests/ui`"
    );
}

/// Log in, live fleet, start/stop, failure message, console input and output, star and the
/// starred view, a new user who sees only their machine, logout, the other pages, phone
/// width in the dark scheme, reconnecting after a daemon restart, a revoked session.
/// Screenshots go to `tests/ui/screenshots/`.
#[test]
fn browser_scenarios() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    require(Path::new(&chromium).exists(), &format!("no {chromium}"));
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    require(node.is_ok_and(|s| s.success()), "`node` is not on PATH");
    require(
        ui_dir().join("node_modules/playwright-core").is_dir(),
        "tests/ui/node_modules/playwright-core is missing",
    );

    let mut d = Daemon::start();
    // A restart must come back on the same port for the page to reconnect.
    let addr = d.addr().to_string();
    d.set_listen(&addr);
    let mut child = Command::new("node")
        .arg("ui.test.mjs")
        .current_dir(ui_dir())
        .env("ORCHARD_URL", d.url("/"))
        .env("ORCHARD_ADMIN_PASSWORD", d.admin_password())
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", ui_dir().join("screenshots"))
        .env("RESTART_PROTOCOL", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let pid = child.id();
    // Chromium or node hanging must not hang the suite: kill the script after 5 minutes.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(300))
        {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        stdout.push_str(&line);
        stdout.push('\n');
        if line == "ui: restart the daemon" {
            d.restart();
            writeln!(stdin, "restarted").unwrap();
        }
    }
    let status = child.wait().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "browser scenarios failed ({status:?})\nstdout:\n{stdout}\nstderr:\n{stderr}\ndaemon log (tail):\n{}",
        tail(&d.logs(), 4000)
    );
    assert!(stdout.contains("all browser scenarios passed"), "{stdout}");
    assert!(stdout.contains("ui: restart the daemon"), "{stdout}");
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}
