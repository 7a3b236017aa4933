//! Small helpers around external programs, processes and per-key locks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::process::Command;

/// Run `prog args...`; its stdout, or an error naming the command with its stderr.
pub async fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Result<String, String> {
    let t0 = std::time::Instant::now();
    let out = Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    tracing::debug!(
        prog,
        arg = args.first().map(|a| a.as_ref().to_string_lossy().into_owned()).unwrap_or_default(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "ran"
    );
    if !out.status.success() {
        let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        return Err(format!(
            "{prog} {} failed ({}): {}",
            shown.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -batch -`: run `ip` commands (one a line, arguments with spaces in double quotes) with
/// one process; it stops at the first that fails, naming it.
pub async fn ip_batch(lines: &[String]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    if lines.is_empty() {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).await.map_err(|e| format!("cannot write to ip -batch: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("cannot run ip: {e}"))?;
    tracing::debug!(prog = "ip", arg = "-batch", commands = lines.len(), ms = t0.elapsed().as_secs_f64() * 1e3, "ran");
    if !out.status.success() {
        return Err(format!(
            "ip -batch ({}) failed ({}): {}",
            lines.join("; "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Whether `pid` is a live process (not a zombie) whose command line contains `marker`
/// (so a recycled pid is not mistaken for ours).
pub fn alive(pid: u32, marker: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, None | Some('Z') | Some('X')) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(marker)
}

/// The pid written in a pid file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Send a signal (`-TERM`, `-KILL`, `-HUP`) to a process.
pub async fn signal(pid: u32, sig: &str) -> Result<(), String> {
    run("kill", &[sig, &pid.to_string()]).await.map(|_| ())
}

/// Wait until `pid` is no longer alive (as [`alive`]), at most `timeout`.
pub async fn wait_gone(pid: u32, marker: &str, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    // Polled from 2 ms up to every 50 ms: a process that goes at once is seen at once.
    let mut wait = std::time::Duration::from_millis(2);
    loop {
        if !alive(pid, marker) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_millis(50));
    }
}

/// Stop a process: TERM, then KILL when it has not gone after `grace`.
pub async fn terminate(pid: u32, marker: &str, grace: std::time::Duration) {
    if !alive(pid, marker) {
        return;
    }
    let _ = signal(pid, "-TERM").await;
    if !wait_gone(pid, marker, grace).await {
        let _ = signal(pid, "-KILL").await;
        wait_gone(pid, marker, std::time::Duration::from_secs(5)).await;
    }
}

/// One async mutex per key (a path, a VM uuid), created on first use.
#[derive(Default)]
pub struct KeyLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}

/// Write a file atomically (temporary file + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub fn mkdirs(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
}
