//! Drives the real `orchard` binary: one daemon per test, each in its own temporary
//! directory, talking plain HTTP on an ephemeral loopback port.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The admin password every daemon gets unless a test asks otherwise.
pub const ADMIN_PASSWORD: &str = "admin-test-password";

/// Every permission the product knows.
pub const ALL_PERMISSIONS: [&str; 10] = [
    "VIEW_ALL_VMS",
    "MANAGE_ALL_VMS",
    "MANAGE_CLIENT_USERS",
    "MANAGE_ADMIN_USERS",
    "CHANGE_CLIENT_PASSWORD",
    "CHANGE_ADMIN_PASSWORD",
    "MANAGE_ISO_FILES",
    "MANAGE_SYSTEM_RESOURCES",
    "ACCESS_CONSOLE",
    "EXECUTE_COMMANDS",
];

/// How long a daemon may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM (its own target is 5 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process that is expected to exit on its own (CLI, refused start) may run.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const READY_MARKER: &str = "listening on ";

/// A `Command` for the orchard binary with a clean, deterministic environment: no inherited
/// `ORCHARD_*` or `RUST_LOG`, and no colour codes in the logs.
pub fn orchard_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchard"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ORCHARD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs `cmd` to completion, feeding it `stdin`, and fails the test if it is still running
/// after `timeout`.
pub fn run_to_exit(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn orchard");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // The process may exit without reading; a broken pipe is not our failure.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = drain(child.stdout.take().expect("stdout pipe"));
    let err = drain(child.stderr.take().expect("stderr pipe"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("process still running after {timeout:?}; stderr:\n{stderr}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The listener a `listening on http(s)://HOST:PORT` line announces: (port, TLS).
fn parse_port(line: &str) -> Option<(u16, bool)> {
    let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
    let (tls, rest) = if let Some(r) = rest.strip_prefix("https://") {
        (true, r)
    } else {
        (false, rest.strip_prefix("http://")?)
    };
    // Up to the end of the word, or of the JSON string with `log.format = "json"`.
    let authority: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    let (_, port) = authority.rsplit_once(':')?;
    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
    Some((digits.parse().ok()?, tls))
}

/// An HTTP response with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    /// The body as JSON; fails the test if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "body of a {} response is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    /// Asserts the status and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {:?}",
            self.text
        );
        if self.text.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts the status and the `{"error":{"code","message"}}` body with this code.
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {:?}",
            self.text
        );
        let body = self.json();
        assert_eq!(
            body["error"]["code"], code,
            "unexpected error code in {body}"
        );
        assert!(
            body["error"]["message"].is_string(),
            "error without a message: {body}"
        );
    }

    /// Asserts the status and that the body is a JSON error (any code).
    pub fn expect_any_error(&self, status: u16) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {:?}",
            self.text
        );
        let body = self.json();
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "not an error body: {body}"
        );
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Simulated boot and shutdown times every daemon gets unless a test sets its own, so that
/// power actions complete quickly.
pub const DEFAULT_SIM_BOOT_MS: u64 = 300;
pub const DEFAULT_SIM_SHUTDOWN_MS: u64 = 200;

/// Collects the configuration for a daemon before it starts.
#[derive(Debug, Default)]
pub struct DaemonBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    no_admin_password: bool,
    plugins: Vec<PathBuf>,
}

impl DaemonBuilder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Start without `ORCHARD_ADMIN_PASSWORD`, so the daemon generates one.
    pub fn without_admin_password(mut self) -> Self {
        self.no_admin_password = true;
        self
    }

    /// Copies this plugin library into the daemon's (otherwise empty) plugin directory.
    pub fn plugin(mut self, so: &Path) -> Self {
        self.plugins.push(so.to_owned());
        self
    }

    /// Prepares the directories without starting anything.
    pub fn build(self) -> Daemon {
        let root = tempfile::Builder::new()
            .prefix("orchard-it-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = root.path().join("data");
        fs::create_dir(&data_dir).expect("create data dir");
        let mut env = self.env;
        // Always a fresh plugin directory, so that nothing next to the binary (the build
        // output) is ever picked up; tests put the plugins they want into it.
        let plugins_dir = root.path().join("plugins");
        fs::create_dir(&plugins_dir).expect("create plugins dir");
        let has = |env: &[(String, String)], key: &str| env.iter().any(|(k, _)| k == key);
        if !has(&env, "ORCHARD_PLUGINS_DIR") {
            env.push((
                "ORCHARD_PLUGINS_DIR".into(),
                plugins_dir.to_string_lossy().into_owned(),
            ));
        }
        for (key, ms) in [
            ("ORCHARD_SIMULATOR_BOOT_MS", DEFAULT_SIM_BOOT_MS),
            ("ORCHARD_SIMULATOR_SHUTDOWN_MS", DEFAULT_SIM_SHUTDOWN_MS),
        ] {
            if !has(&env, key) {
                env.push((key.into(), ms.to_string()));
            }
        }
        for so in &self.plugins {
            install_plugin(&plugins_dir, so);
        }
        let admin_password = if self.no_admin_password {
            None
        } else {
            env.push(("ORCHARD_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()));
            Some(ADMIN_PASSWORD.to_owned())
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Daemon {
            root,
            data_dir,
            plugins_dir,
            env,
            args: self.args,
            listen: "127.0.0.1:0".to_owned(),
            admin_password,
            running: None,
            logs: Arc::new(Mutex::new(String::new())),
            addr: None,
            tls: false,
            client,
        }
    }

    /// Prepares the directories and starts the daemon.
    pub fn start(self) -> Daemon {
        let mut daemon = self.build();
        daemon.launch();
        daemon
    }
}

struct Running {
    child: Child,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<Vec<u8>>>,
}

/// One `orchard serve` process (or a prepared data directory for one).
pub struct Daemon {
    root: TempDir,
    data_dir: PathBuf,
    plugins_dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    listen: String,
    admin_password: Option<String>,
    running: Option<Running>,
    logs: Arc<Mutex<String>>,
    addr: Option<SocketAddr>,
    tls: bool,
    pub client: reqwest::Client,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    pub fn start() -> Daemon {
        DaemonBuilder::default().start()
    }

    /// The temporary directory holding the data dir (and anything else a test puts there).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn data_dir_str(&self) -> String {
        self.data_dir.to_string_lossy().into_owned()
    }

    /// The plugin directory the daemon loads from (`ORCHARD_PLUGINS_DIR`; empty unless a
    /// test put plugins in it).
    pub fn plugins_dir(&self) -> &Path {
        &self.plugins_dir
    }

    /// Sets (or replaces) an environment variable for the next launch.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Adds a `serve` argument for the next launch.
    pub fn push_arg(&mut self, arg: &str) {
        self.args.push(arg.to_owned());
    }

    /// Replaces the `--listen` address (default `127.0.0.1:0`) for the next launch.
    pub fn set_listen(&mut self, addr: &str) {
        addr.clone_into(&mut self.listen);
    }

    /// The `serve` command this daemon runs, with its environment.
    pub fn serve_command(&self) -> Command {
        let mut cmd = orchard_command();
        cmd.current_dir(self.root.path())
            .arg("serve")
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// Runs `serve` on this data dir expecting it to exit by itself (refused start).
    pub fn serve_to_exit(&self) -> Output {
        run_to_exit(self.serve_command(), None, EXIT_TIMEOUT)
    }

    /// Runs an `orchard` CLI command (not `serve`) with this daemon's environment.
    pub fn cli<I, S>(&self, args: I, stdin: Option<&str>) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = orchard_command();
        cmd.current_dir(self.root.path())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run_to_exit(cmd, stdin, EXIT_TIMEOUT)
    }

    /// Starts `serve` and waits for it to report its listener; fails the test (with the
    /// daemon's stderr) if it exits first or takes too long.
    pub fn launch(&mut self) {
        assert!(self.running.is_none(), "daemon already running");
        let mut cmd = self.serve_command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn orchard serve");
        let logs = Arc::new(Mutex::new(String::new()));
        self.logs = Arc::clone(&logs);
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr pipe");
        let stderr_reader = thread::spawn(move || read_stderr(stderr, &logs, &tx));
        let stdout_reader = drain(child.stdout.take().expect("stdout pipe"));
        let mut running = Running {
            child,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok((port, tls)) => {
                self.addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
                self.running = Some(running);
                self.tls = tls;
                if tls {
                    // Trust the daemon's own (self-signed) certificate, nothing else.
                    self.client = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(30))
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(
                            reqwest::Certificate::from_pem(&self.tls_cert_pem())
                                .expect("the daemon's certificate parses"),
                        )
                        .build()
                        .expect("https client");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                panic!(
                    "daemon did not report `{READY_MARKER}http(s)://HOST:PORT` within {START_TIMEOUT:?}; stderr:\n{}",
                    self.logs()
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed before the marker: the process is exiting.
                let status = wait_deadline(&mut running.child, STOP_TIMEOUT);
                if let Some(h) = running.stderr_reader.take() {
                    let _ = h.join();
                }
                panic!(
                    "daemon exited before listening ({status:?}); stderr:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Sends SIGTERM and waits (at most [`STOP_TIMEOUT`]) for the exit status. The data dir
    /// stays; [`Daemon::launch`] starts the daemon again on it.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut running = self.running.take().expect("daemon is not running");
        let pid = libc::pid_t::try_from(running.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (we hold
        // its `Child` and have not waited on it), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let status = wait_deadline(&mut running.child, STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = running.child.kill();
            let _ = running.child.wait();
            panic!(
                "daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.logs()
            )
        });
        if let Some(h) = running.stderr_reader.take() {
            let _ = h.join();
        }
        if let Some(h) = running.stdout_reader.take() {
            let out = h.join().unwrap_or_default();
            self.logs
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&out));
        }
        self.addr = None;
        status
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.running
            .as_ref()
            .expect("daemon is not running")
            .child
            .id()
    }

    /// SIGKILL (`kill -9`): no chance to clean up, as in a crash. The data dir stays;
    /// [`Daemon::launch`] starts the daemon again on it.
    pub fn kill(&mut self) {
        let mut running = self.running.take().expect("daemon is not running");
        let _ = running.child.kill();
        running.child.wait().expect("wait for the killed daemon");
        if let Some(h) = running.stderr_reader.take() {
            let _ = h.join();
        }
        if let Some(h) = running.stdout_reader.take() {
            let _ = h.join();
        }
        self.addr = None;
    }

    /// SIGTERM, require a clean exit, start again on the same data dir.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "daemon exited with {status:?}");
        self.launch();
    }

    /// Everything the current (or last) run wrote to stderr so far (and, once terminated,
    /// to stdout), with colour codes removed.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("daemon is not running")
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr(), path)
    }

    /// Whether the running daemon announced an HTTPS listener.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The certificate the daemon serves (the self-signed one in its data directory).
    pub fn tls_cert_pem(&self) -> Vec<u8> {
        let path = self.data_dir.join("tls-cert.pem");
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn admin_password(&self) -> &str {
        self.admin_password
            .as_deref()
            .expect("this daemon was started without ORCHARD_ADMIN_PASSWORD")
    }

    // ----- HTTP -----

    /// Sends `req`; a response of this daemon is checked against `assets/api/openapi.yaml`
    /// (`apidocs::check_response`), failing the test if it does not match.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let (client, req) = req.build_split();
        let req = req.expect("a well-formed HTTP request");
        let method = req.method().as_str().to_owned();
        let url = req.url().clone();
        let resp = client.execute(req).await.expect("HTTP request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("read response body");
        let resp = Resp {
            status,
            headers,
            text,
        };
        if self
            .addr
            .is_some_and(|a| url.port_or_known_default() == Some(a.port()))
        {
            crate::apidocs::check_response(&method, url.path(), &resp);
        }
        resp
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(req).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::POST, path, token, None).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.request(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::DELETE, path, token, None).await
    }

    pub async fn try_login(&self, username: &str, password: &str) -> Resp {
        self.post(
            "/api/auth/login",
            None,
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Waits (at most 10 s) for `GET /healthz` to answer 200; the contract allows a
    /// non-200 answer until the backends are loaded.
    pub async fn wait_healthy(&self) {
        eventually(
            Duration::from_secs(10),
            "GET /healthz to be 200",
            || async { (self.get("/healthz", None).await.status == 200).then_some(()) },
        )
        .await;
    }

    /// Logs in and returns the access token; fails the test on anything but 200.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let body = self.try_login(username, password).await.expect(200);
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.login("admin", self.admin_password()).await
    }

    /// `GET /api/auth/me` with `token`; fails the test on anything but 200.
    pub async fn me(&self, token: &str) -> Value {
        self.get("/api/auth/me", Some(token)).await.expect(200)
    }

    /// Creates a user over REST; fails the test on anything but 201. Returns the user view.
    pub async fn create_user(
        &self,
        token: &str,
        username: &str,
        password: &str,
        account_type: &str,
        permissions: &[&str],
    ) -> Value {
        let user = self
            .try_create_user(token, username, password, account_type, permissions)
            .await
            .expect(201);
        assert_eq!(user["username"], username, "created user view: {user}");
        user
    }

    pub async fn try_create_user(
        &self,
        token: &str,
        username: &str,
        password: &str,
        account_type: &str,
        permissions: &[&str],
    ) -> Resp {
        self.post(
            "/api/users",
            Some(token),
            &json!({
                "username": username,
                "password": password,
                "account_type": account_type,
                "permissions": permissions,
            }),
        )
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// Copies `so` into `dir` under its own file name; returns the new path.
fn install_plugin(dir: &Path, so: &Path) -> PathBuf {
    let name = so
        .file_name()
        .unwrap_or_else(|| panic!("plugin path without a file name: {}", so.display()));
    let dest = dir.join(name);
    fs::copy(so, &dest).unwrap_or_else(|e| {
        panic!(
            "cannot copy plugin {} to {}: {e}",
            so.display(),
            dest.display()
        )
    });
    dest
}

fn read_stderr(stderr: ChildStderr, logs: &Mutex<String>, ready: &mpsc::Sender<(u16, bool)>) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    let mut announced = false;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = strip_ansi(&String::from_utf8_lossy(&buf));
        logs.lock().unwrap().push_str(&line);
        if !announced && let Some(port) = parse_port(&line) {
            announced = true;
            let _ = ready.send(port);
        }
    }
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A Python virtualenv `name` under cargo's scratch space with `requirements` (a pip
/// requirements file of pinned versions) installed; made on first use, when PyPI must be
/// reachable. Returns its directory.
pub fn python_venv(name: &str, requirements: &Path) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let marker = venv.join("installed-requirements.txt");
    let wanted = fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    if fs::read_to_string(&marker).is_ok_and(|had| had == wanted) {
        return venv;
    }
    run_ok(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        &format!("python3 -m venv (for {name})"),
    );
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements),
        &format!("pip install (for {name}; PyPI must be reachable)"),
    );
    fs::write(&marker, wanted).expect("record the installed requirements");
    venv
}

/// Polls `check` every 100 ms until it returns `Some`, or fails the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----- small helpers for assertions -----

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a process failed cleanly: non-zero exit, something on stderr, no panic.
pub fn assert_clean_failure(out: &Output) -> String {
    let stderr = stderr_of(out);
    assert!(
        !out.status.success(),
        "expected a non-zero exit, got {:?}; stdout: {}; stderr: {stderr}",
        out.status,
        stdout_of(out)
    );
    assert!(
        !stderr.trim().is_empty(),
        "a failure must say why on stderr"
    );
    assert!(
        !stderr.contains("panicked"),
        "the process panicked:\n{stderr}"
    );
    stderr
}

/// Runs `cmd` to its end and asserts it succeeded; `what` names it (and what it needs) in
/// the failure, which shows its stderr. Returns its output.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts a process succeeded; shows its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "expected success, got {:?}; stderr:\n{}",
        out.status,
        stderr_of(out)
    );
}

/// True when any object key anywhere in `v` contains `needle` (case-insensitive).
pub fn has_key_containing(v: &Value, needle: &str) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.to_lowercase().contains(needle) || has_key_containing(v, needle)),
        Value::Array(items) => items.iter().any(|v| has_key_containing(v, needle)),
        _ => false,
    }
}

/// Asserts `v` is a user view `{uuid, username, account_type, permissions[], disabled}`
/// without any password material.
pub fn assert_user_view(v: &Value) {
    let uuid = v["uuid"].as_str().unwrap_or_else(|| panic!("no uuid: {v}"));
    uuid::Uuid::parse_str(uuid).unwrap_or_else(|e| panic!("uuid {uuid:?} does not parse: {e}"));
    assert!(v["username"].is_string(), "no username: {v}");
    let account_type = v["account_type"].as_str().unwrap_or_default();
    assert!(
        account_type == "administrator" || account_type == "client",
        "bad account_type: {v}"
    );
    let perms = v["permissions"]
        .as_array()
        .unwrap_or_else(|| panic!("no permissions array: {v}"));
    for p in perms {
        let p = p.as_str().unwrap_or_default();
        assert!(
            ALL_PERMISSIONS.contains(&p),
            "unknown permission {p:?} in {v}"
        );
    }
    assert!(v["disabled"].is_boolean(), "no disabled flag: {v}");
    assert!(
        !has_key_containing(v, "hash"),
        "user view leaks a password hash: {v}"
    );
}

/// The permissions of a user view, sorted.
pub fn perms_of(v: &Value) -> Vec<String> {
    let mut perms: Vec<String> = v["permissions"]
        .as_array()
        .unwrap_or_else(|| panic!("no permissions array: {v}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect();
    perms.sort();
    perms
}

pub fn sorted(perms: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = perms.iter().map(|p| (*p).to_owned()).collect();
    v.sort();
    v
}

pub fn uuid_of(v: &Value) -> String {
    v["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no uuid: {v}"))
        .to_owned()
}

// ----- base64url, for looking inside and forging JWTs -----

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

pub fn b64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("not base64url: {s:?}"));
        acc = (acc << 6) | u32::try_from(v).unwrap();
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
        }
    }
    out
}

/// The decoded claims of a JWT.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token:?}"));
    serde_json::from_slice(&b64url_decode(payload)).expect("JWT payload is JSON")
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
