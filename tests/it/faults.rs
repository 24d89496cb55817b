//! Faults (`tests/RELIABILITY.md`): `kill -9` during a write workload, a full disk, and a
//! damaged database file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, assert_clean_failure, assert_success, stdout_of};

/// Crash iterations: a few dozen by default (CI), `ORCHARD_CRASH_ITERATIONS` for long local
/// runs.
fn crash_iterations() -> u32 {
    std::env::var("ORCHARD_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// A small deterministic generator (xorshift64*), seeded from `ORCHARD_CRASH_SEED` or the
/// clock; the seed is printed so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("ORCHARD_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed: ORCHARD_CRASH_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What the clients were told was done, and what was in flight when the daemon died.
#[derive(Default)]
struct Acked {
    users: BTreeSet<String>,
    servers: BTreeSet<String>,
    /// The machine's title: the last acknowledged one, and the one in flight (if any).
    title: Option<String>,
    title_in_flight: Option<String>,
    /// Subscriptions: each machine's last acknowledged state, and the one change in flight.
    subscribed: BTreeMap<String, bool>,
    sub_in_flight: Option<(String, bool)>,
}

/// One request; `None` when the connection failed (the daemon was killed meanwhile).
async fn try_send(
    d: &Daemon,
    url: &str,
    method: Method,
    token: &str,
    body: Option<&Value>,
) -> Option<u16> {
    let mut req = d.client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    // Only a complete answer is an acknowledgement.
    resp.bytes().await.ok()?;
    Some(status)
}

/// Runs one client's writes until the daemon dies; records each acknowledged write.
async fn client(
    d: &Daemon,
    who: usize,
    round: u32,
    token: &str,
    machines: &[String],
    acked: &Mutex<Acked>,
) {
    for n in 0.. {
        let ok = match who {
            0 => {
                let name = format!("crash-{round}-{n}");
                let body = json!({"username": name, "password": "crash-test-password",
                    "account_type": "client", "permissions": []});
                let s = try_send(d, &d.url("/api/users"), Method::POST, token, Some(&body)).await;
                if s == Some(201) {
                    acked.lock().unwrap().users.insert(name);
                }
                s
            }
            1 => {
                let name = format!("host-{round}-{n}");
                let body = json!({"name": name});
                let s = try_send(
                    d,
                    &d.url("/api/v1/servers"),
                    Method::POST,
                    token,
                    Some(&body),
                )
                .await;
                if s == Some(201) {
                    acked.lock().unwrap().servers.insert(name);
                }
                s
            }
            2 => {
                let title = format!("crash-title-{round}-{n}");
                acked.lock().unwrap().title_in_flight = Some(title.clone());
                let url = d.url(&format!("/api/machines/{}", machines[0]));
                let s = try_send(
                    d,
                    &url,
                    Method::PATCH,
                    token,
                    Some(&json!({"title": title})),
                )
                .await;
                let mut a = acked.lock().unwrap();
                if s == Some(200) {
                    a.title = Some(title);
                    a.title_in_flight = None;
                }
                s
            }
            _ => {
                let m = &machines[n % machines.len()];
                let on = (n / machines.len() + round as usize).is_multiple_of(2);
                acked.lock().unwrap().sub_in_flight = Some((m.clone(), on));
                let method = if on { Method::PUT } else { Method::DELETE };
                let url = d.url(&format!("/api/subscriptions/{m}"));
                let s = try_send(d, &url, method, token, None).await;
                let mut a = acked.lock().unwrap();
                if s.is_some_and(|s| (200..300).contains(&s)) {
                    a.subscribed.insert(m.clone(), on);
                    a.sub_in_flight = None;
                }
                s
            }
        };
        match ok {
            None => return,
            Some(s) if (200..300).contains(&s) => {}
            Some(s) => panic!("client {who}: write {n} of round {round} failed with {s}"),
        }
    }
}

/// `field` of every element of the JSON list at `path` (the element itself for `""`).
async fn strings<C: FromIterator<String>>(d: &Daemon, token: &str, path: &str, field: &str) -> C {
    let list = d.get(path, Some(token)).await.expect(200);
    list.as_array()
        .unwrap_or_else(|| panic!("GET {path} is not a list: {list}"))
        .iter()
        .filter_map(|v| if field.is_empty() { v } else { &v[field] }.as_str())
        .map(str::to_owned)
        .collect()
}

/// `kill -9` at a random moment of a concurrent REST write workload, many times over: after
/// each restart the database opens and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let iterations = crash_iterations();
    let mut rng = Rng::new();
    let mut d = Daemon::start();
    let token = d.admin_token().await;
    let machines: Vec<String> = strings(&d, &token, "/api/machines", "uuid").await;
    assert!(
        machines.len() >= 2,
        "the simulator's demo fleet: {machines:?}"
    );
    let acked = Arc::new(Mutex::new(Acked::default()));
    let started = Instant::now();
    let mut writes = 0;
    let mut recoveries = 0;
    for round in 0..iterations {
        let kill_after = Duration::from_millis(20 + rng.below(400));
        {
            let d_ref: &Daemon = &d;
            // The clients borrow the daemon; they end when it dies.
            let work = futures_util::future::join_all(
                (0..4).map(|who| client(d_ref, who, round, &token, &machines, &acked)),
            );
            let work = async {
                work.await;
            };
            let killer = async {
                tokio::time::sleep(kill_after).await;
            };
            tokio::pin!(work);
            tokio::select! {
                () = &mut work => panic!("the clients stopped before the daemon was killed"),
                () = killer => {}
            }
            let pid = libc::pid_t::try_from(d_ref.pid()).unwrap();
            // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (the
            // harness holds its `Child`), so the pid cannot have been reused.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            // The clients' connections are gone now: let them notice and finish.
            tokio::time::timeout(Duration::from_secs(10), &mut work)
                .await
                .expect("clients end");
        }
        d.kill();
        d.launch();
        d.wait_healthy().await;
        // The start recovered the file, and removed the copy it kept meanwhile.
        if d.logs().contains("database was not shut down cleanly") {
            recoveries += 1;
        }
        let left: Vec<_> = std::fs::read_dir(d.data_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("orchard.redb."))
            .collect();
        assert!(
            left.is_empty(),
            "round {round}: left beside the database: {left:?}"
        );
        let users: BTreeSet<String> = strings(&d, &token, "/api/users", "username").await;
        let servers: BTreeSet<String> = strings(&d, &token, "/api/v1/servers", "name").await;
        let subs: BTreeSet<String> = strings(&d, &token, "/api/subscriptions", "").await;
        let machine = d
            .get(&format!("/api/machines/{}", machines[0]), Some(&token))
            .await
            .expect(200);
        let mut a = acked.lock().unwrap();
        let lost: Vec<_> = a.users.difference(&users).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged users lost: {lost:?}"
        );
        let lost: Vec<_> = a.servers.difference(&servers).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged servers lost: {lost:?}"
        );
        if let Some(t) = &a.title {
            let now = machine["title"].as_str().unwrap_or_default();
            assert!(
                now == t || a.title_in_flight.as_deref() == Some(now),
                "round {round}: title {now:?}, acknowledged {t:?}, in flight {:?}",
                a.title_in_flight
            );
            a.title = Some(now.to_owned());
        }
        a.title_in_flight = None;
        let in_flight = a.sub_in_flight.take();
        for (m, on) in a.subscribed.clone() {
            let now = subs.contains(&m);
            let maybe = in_flight
                .as_ref()
                .is_some_and(|(f, o)| *f == m && *o == now);
            assert!(
                now == on || maybe,
                "round {round}: machine {m} subscribed={now}, acknowledged {on}"
            );
            a.subscribed.insert(m, now);
        }
        writes = a.users.len() + a.servers.len();
        drop(a);
    }
    let a = acked.lock().unwrap();
    assert!(
        !a.users.is_empty() && !a.servers.is_empty() && a.title.is_some(),
        "the workload acknowledged writes of every kind ({} users, {} servers)",
        a.users.len(),
        a.servers.len()
    );
    assert_eq!(
        recoveries, iterations,
        "every start after a kill -9 recovers the file"
    );
    eprintln!(
        "{iterations} kill -9 rounds in {:?}: {writes} acknowledged creations, all present",
        started.elapsed()
    );
}

/// A tmpfs mounted over a directory for the life of the guard (the disk-full test's data
/// directory). Needs root, as the tests run here and in CI.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (the disk-full test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the daemon may still have files open when a failing test unwinds.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `path` until a write fails with ENOSPC.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut size = chunk.len();
    loop {
        match f.write(&chunk[..size]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size > 1 => size /= 2,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// The servers the disk-full test created.
async fn test_servers(d: &Daemon, token: &str) -> BTreeSet<String> {
    let all: BTreeSet<String> = strings(d, token, "/api/v1/servers", "name").await;
    all.into_iter()
        .filter(|n| n.starts_with("full-") || n.starts_with("after-"))
        .collect()
}

/// With the data directory's file system full, every write fails with a 5xx (never a 2xx
/// that was not stored), reads keep working, and once space returns writes succeed again,
/// without a restart; after one, exactly the acknowledged writes are there.
#[tokio::test]
async fn disk_full_fails_writes_with_5xx_and_recovers() {
    let mut d = Daemon::builder().build();
    let _tmpfs = Tmpfs::mount(d.data_dir(), "8m");
    d.launch();
    let token = d.admin_token().await;
    let create = |name: String| {
        let d = &d;
        let token = &token;
        async move {
            d.post("/api/v1/servers", Some(token), &json!({ "name": name }))
                .await
                .status
        }
    };
    let filler = d.data_dir().join("filler");
    fill(&filler);
    let mut acked = BTreeSet::new();
    let mut failures = 0;
    for n in 0..20_000 {
        let name = format!("full-{n}");
        match create(name.clone()).await {
            201 => {
                acked.insert(name);
            }
            s if (500..600).contains(&s) => {
                failures += 1;
                if failures == 5 {
                    break;
                }
            }
            s => panic!("write {n} with a full disk answered {s}"),
        }
    }
    assert_eq!(
        failures,
        5,
        "no write failed on a full disk ({} acknowledged)",
        acked.len()
    );
    // Reads keep being served.
    d.get("/healthz", None).await.expect(200);
    d.get("/api/users", Some(&token)).await.expect(200);
    let servers = test_servers(&d, &token).await;
    assert_eq!(
        servers, acked,
        "the servers listed are exactly the acknowledged ones"
    );
    // Space returns: writes succeed again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = create("after-1".into()).await;
        if s == 201 {
            acked.insert("after-1".into());
            break;
        }
        assert!(
            (500..600).contains(&s),
            "a write after space returned answered {s}"
        );
        assert!(
            Instant::now() < deadline,
            "writes still fail 10 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(create("after-2".into()).await, 201);
    acked.insert("after-2".into());
    d.restart();
    let token = d.admin_token().await;
    let servers = test_servers(&d, &token).await;
    assert_eq!(
        servers, acked,
        "after a restart: exactly the acknowledged servers"
    );
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Flips (XOR 0xff) the 64 bytes that start at every copy of `username`'s stored record: the
/// page of the live tree, and any stale copy in a free page. Returns the offsets.
fn flip_record(db: &std::path::Path, username: &str) -> Vec<usize> {
    let mut bytes = std::fs::read(db).unwrap();
    let needle = format!("\"username\":\"{username}\"");
    let offsets: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for &at in &offsets {
        let end = (at + 64).min(bytes.len());
        for b in &mut bytes[at..end] {
            *b ^= 0xff;
        }
    }
    std::fs::write(db, &bytes).unwrap();
    offsets
}

/// The one line a refused start or command prints: it names the file and the repair command.
fn assert_refused_in_one_line(out: &std::process::Output, db: &std::path::Path, what: &str) {
    let stderr = assert_clean_failure(out);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: more than one line:\n{stderr}");
    assert!(
        lines[0].contains(&db.display().to_string()) && lines[0].contains("orchard db repair"),
        "{what}: the line must name the file and `orchard db repair`: {}",
        lines[0]
    );
}

/// A database damaged on disk (64 bytes flipped in a user's record, after a clean stop): `serve`
/// and `user list` refuse it in one line naming the file and `orchard db repair`, and leave it
/// byte for byte as it was (before: every open rewrote it). `orchard db repair` keeps a copy
/// (the damaged bytes), salvages every other row, and the daemon then starts with every user
/// but the damaged one, passwords intact.
#[tokio::test]
async fn a_damaged_database_is_refused_untouched_and_repaired_on_request() {
    let mut d = Daemon::start();
    let token = d.admin_token().await;
    let members: Vec<String> = (0..12).map(|i| format!("member-{i:02}")).collect();
    for m in &members {
        d.create_user(
            &token,
            m,
            &format!("{m}-password"),
            "client",
            &["VIEW_ALL_VMS"],
        )
        .await;
    }
    let status = d.terminate();
    assert!(status.success(), "{status:?}");

    let db = d.data_dir().join("orchard.redb");
    let victim = "member-05";
    let offsets = flip_record(&db, victim);
    assert!(!offsets.is_empty(), "no record of {victim} in the file");
    let len = std::fs::metadata(&db).unwrap().len();
    eprintln!("flipped 64 bytes at {offsets:?} of {len}");
    let damaged = sha256(&db);

    let out = d.serve_to_exit();
    assert_refused_in_one_line(&out, &db, "serve");
    assert_eq!(sha256(&db), damaged, "serve modified the damaged file");
    let dir = d.data_dir_str();
    let out = d.cli(["user", "list", "--data-dir", &dir], None);
    assert_refused_in_one_line(&out, &db, "user list");
    assert_eq!(sha256(&db), damaged, "user list modified the damaged file");

    let out = d.cli(["db", "repair", "--data-dir", &dir], None);
    assert_success(&out);
    let report = stdout_of(&out);
    eprintln!("orchard db repair:\n{report}");
    let field = |prefix: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in the report:\n{report}"))
            .to_owned()
    };
    let copy = std::path::PathBuf::from(field("copy of the damaged file: "));
    let copy_name = copy.file_name().unwrap().to_string_lossy().into_owned();
    let stamp = copy_name
        .strip_prefix("orchard.redb.damaged-")
        .unwrap_or_else(|| panic!("copy named {copy_name}"));
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "copy named {copy_name}"
    );
    assert_eq!(copy.parent(), Some(d.data_dir()));
    assert_eq!(sha256(&copy), damaged, "the copy is not the damaged file");
    let mut expected: Vec<String> = std::iter::once("admin".to_owned())
        .chain(members.iter().filter(|m| *m != victim).cloned())
        .collect();
    expected.sort();
    let kept = field(&format!("users kept ({}): ", expected.len()));
    assert_eq!(kept, expected.join(", "));
    assert_eq!(field("users lost (1): "), victim);

    d.launch();
    let token = d.admin_token().await;
    let mut listed: Vec<String> = d
        .get("/api/users", Some(&token))
        .await
        .expect(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    d.login("member-07", "member-07-password").await;
    d.try_login(victim, &format!("{victim}-password"))
        .await
        .expect_error(401, "unauthorized");
    let status = d.terminate();
    assert!(status.success(), "{status:?}");

    // A healthy file is left alone: no second copy.
    let out = d.cli(["db", "repair", "--data-dir", &dir], None);
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("nothing to repair"),
        "{}",
        stdout_of(&out)
    );
    let copies = std::fs::read_dir(d.data_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("orchard.redb.")
        })
        .count();
    assert_eq!(copies, 1, "only the one copy of the damaged file");
}
