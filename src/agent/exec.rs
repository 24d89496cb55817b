//! Running a shell command with a deadline and bounded output: `orchard agent` for the
//! daemon's commands, and the daemon itself for the local host (`agents.local_commands`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of stdout and of stderr kept per command (the rest is dropped, and said so).
pub const OUTPUT_LIMIT: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct Output {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
}

/// Runs `sh -c command` in its own process group; at the deadline the whole group is
/// killed and the command fails with "timed out".
pub async fn run_shell(command: &str, timeout: Duration) -> Result<Output, String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command);
    run(cmd, timeout).await
}

/// Starts `cmd` in its own process group with stdin closed and stdout and stderr captured;
/// dropping the child kills it.
pub fn spawn_captured(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
}

/// Runs a prepared command (stdin closed, output captured) with a deadline.
pub async fn run(mut cmd: tokio::process::Command, timeout: Duration) -> Result<Output, String> {
    let started = Instant::now();
    let mut child =
        spawn_captured(&mut cmd).map_err(|e| format!("cannot start the command: {e}"))?;
    let pid = child.id();
    let out = child.stdout.take();
    let err = child.stderr.take();
    let work = async {
        let (stdout, stderr, status) = tokio::join!(capture(out), capture(err), child.wait());
        (stdout, stderr, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((stdout, stderr, status)) => {
            let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
            let exit_code = status.code().map(i64::from).unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + i64::from(status.signal().unwrap_or(0))
            });
            Ok(Output {
                exit_code,
                stdout,
                stderr,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
        }
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            Err(format!("timed out after {} s", timeout.as_secs()))
        }
    }
}

/// Kills a process group (the shell and whatever it started) without `unsafe`.
pub fn kill_group(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn capture<R: AsyncRead + Unpin>(r: Option<R>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                let take = n.min(room);
                kept.extend_from_slice(&buf[..take]);
                dropped += n - take;
            }
        }
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        s.push_str(&format!("\n[{dropped} more bytes not kept]"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_exit_code_and_timeout() {
        let o = run_shell("echo out; echo err >&2; exit 3", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            (o.exit_code, o.stdout.as_str(), o.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        let e = run_shell("sleep 30", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
