//! Package operations with apt-get or dnf (whichever the host has), with progress parsed
//! from their output: apt's machine-readable status lines (`APT::Status-Fd`), dnf's
//! transaction counters.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Manager {
    Apt,
    Dnf,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn detect() -> Option<(Manager, PathBuf)> {
    find_in_path("apt-get")
        .map(|p| (Manager::Apt, p))
        .or_else(|| find_in_path("dnf").map(|p| (Manager::Dnf, p)))
}

/// Package names as both managers spell them; nothing that could pass for an option.
pub fn valid_package(name: &str) -> bool {
    name.len() <= 200
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+:~-=".contains(&b))
}

/// Progress (0–100) and message of one output line, if the line says anything.
fn parse_line(m: Manager, line: &str) -> Option<(f64, String)> {
    match m {
        Manager::Apt => {
            // dlstatus:N:PERCENT:MESSAGE (downloads, first half); pmstatus:PKG:PERCENT:MESSAGE
            // (unpacking and configuring, second half).
            let mut parts = line.splitn(4, ':');
            let kind = parts.next()?;
            let _ = parts.next()?;
            let p: f64 = parts.next()?.trim().parse().ok()?;
            let msg = parts.next().unwrap_or("").trim().to_owned();
            match kind {
                "dlstatus" => Some((p / 2.0, msg)),
                "pmstatus" => Some((50.0 + p / 2.0, msg)),
                _ => None,
            }
        }
        Manager::Dnf => {
            let t = line.trim();
            if t.starts_with("Downloading Packages") {
                return Some((20.0, t.to_owned()));
            }
            if t.starts_with("Running transaction") {
                return Some((50.0, t.to_owned()));
            }
            // "  Installing   : nginx-1.20-1.x86_64     3/5"
            let (head, tail) = t.rsplit_once(char::is_whitespace)?;
            let (n, total) = tail.split_once('/')?;
            let (n, total): (f64, f64) = (n.parse().ok()?, total.parse().ok()?);
            (head.contains(':') && total > 0.0)
                .then(|| (50.0 + 50.0 * n / total, head.trim().to_owned()))
        }
    }
}

/// Runs `operation` (install, update, remove) on `package`; `progress` gets
/// `{status:"in_progress", progress, message}` as the manager reports. A manager that fails
/// gives `{status:"failed", …}`; `Err` when nothing could be run.
pub async fn run<F: FnMut(&Value) + ?Sized>(
    operation: &str,
    package: &str,
    timeout: Duration,
    progress: &mut F,
) -> Result<Value, String> {
    if !valid_package(package) {
        return Err(format!("invalid package name {package:?}"));
    }
    let (manager, bin) =
        detect().ok_or("no supported package manager (apt-get or dnf) on this host")?;
    let mut cmd = tokio::process::Command::new(&bin);
    match manager {
        Manager::Apt => {
            cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
                "-y",
                "-o",
                "APT::Status-Fd=1",
                "-o",
                "Dpkg::Use-Pty=0",
            ]);
            match operation {
                "install" => cmd.arg("install"),
                "update" => cmd.args(["install", "--only-upgrade"]),
                "remove" => cmd.arg("remove"),
                other => return Err(format!("unknown package operation {other:?}")),
            };
        }
        Manager::Dnf => {
            cmd.arg("-y");
            match operation {
                "install" => cmd.arg("install"),
                "update" => cmd.arg("upgrade"),
                "remove" => cmd.arg("remove"),
                other => return Err(format!("unknown package operation {other:?}")),
            };
        }
    }
    cmd.arg(package);
    let mut child = super::exec::spawn_captured(&mut cmd)
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    progress(
        &json!({"status": "in_progress", "progress": 0, "message": format!("{operation} {package}: started")}),
    );
    let stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut last = (0.0f64, String::new());
    let work = async {
        let err_task = async {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.take(64 * 1024).read_to_string(&mut s).await;
            }
            s
        };
        let out_task = async {
            if let Some(out) = stdout {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some((p, msg)) = parse_line(manager, &line) {
                        let p = p.clamp(last.0, 99.0);
                        last = (p, msg);
                        progress(
                            &json!({"status": "in_progress", "progress": p.round(), "message": last.1}),
                        );
                    }
                }
            }
        };
        let (err, ()) = tokio::join!(err_task, out_task);
        let status = child.wait().await;
        (err, status)
    };
    let (err, status) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(pid) = pid {
                super::exec::kill_group(pid);
            }
            return Err(format!("timed out after {} s", timeout.as_secs()));
        }
    };
    let status = status.map_err(|e| format!("cannot wait for the package manager: {e}"))?;
    let code = status.code().map_or(-1, i64::from);
    Ok(if status.success() {
        json!({"status": "completed", "progress": 100, "exit_code": code,
            "message": format!("{operation} {package}: done")})
    } else {
        let why = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the package manager failed")
            .trim()
            .to_owned();
        json!({"status": "failed", "progress": last.0.round(), "exit_code": code, "message": why})
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_line(Manager::Apt, "pmstatus:nginx:50:Installing nginx"),
            Some((75.0, "Installing nginx".into()))
        );
        assert_eq!(
            parse_line(Manager::Apt, "dlstatus:1:20:Retrieving file 1 of 3"),
            Some((10.0, "Retrieving file 1 of 3".into()))
        );
        assert_eq!(parse_line(Manager::Apt, "Reading package lists..."), None);
        assert_eq!(
            parse_line(Manager::Dnf, "  Installing   : nginx-1.20-1.x86_64     3/4"),
            Some((87.5, "Installing   : nginx-1.20-1.x86_64".into()))
        );
        assert!(valid_package("libc6-dev:amd64"));
        assert!(!valid_package("-o") && !valid_package("a b") && !valid_package(""));
    }
}
