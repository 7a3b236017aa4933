//! One QEMU process per guest, controlled over its QMP socket.
//!
//! The process is a child of the agent (`kill_on_drop`), its QMP socket is
//! `<run_dir>/<name>.qmp` and its stderr goes to `<run_dir>/<name>.log`. Stop is either
//! graceful (ACPI `system_powerdown`, then `quit` when the guest has not powered off within
//! the grace period) or immediate (`quit`).

use crate::qmp::{Qmp, QmpError};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long QEMU may take to open its QMP socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long QEMU may take to exit after `quit`.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU exited at start ({status}); its log {log} says: {tail}")]
    EarlyExit { status: ExitStatus, log: String, tail: String },
    #[error("QEMU did not open its QMP socket {0} in time")]
    NoQmp(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("QEMU did not exit after quit")]
    Stuck,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub name: String,
    /// Holds the QMP socket and the log (keep the path short: unix socket paths are ≤ 107 bytes).
    pub run_dir: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `q35`, `none`, ...
    pub machine: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Start paused (`-S`): nothing runs until `cont`.
    pub paused: bool,
    /// Further arguments (devices, drives, ...).
    pub extra: Vec<String>,
}

impl QemuSpec {
    pub fn qmp_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qmp", self.name))
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.log", self.name))
    }

    /// The command line, without the binary.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-accel".into(),
            self.accel.clone(),
            "-machine".into(),
            self.machine.clone(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_path().display()),
        ];
        if self.machine != "none" {
            a.extend(["-m".into(), self.memory_mib.to_string(), "-smp".into(), self.cpus.to_string()]);
        }
        if self.paused {
            a.push("-S".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The guest powered off after the ACPI request.
    Graceful,
    /// The grace period ran out (or no grace was asked for): QEMU was told to quit.
    Forced,
}

/// A running QEMU and its QMP connection.
pub struct Qemu {
    child: Child,
    pub qmp: Qmp,
    pub spec: QemuSpec,
}

fn log_tail(path: &Path) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl Qemu {
    /// Spawn `qemu-system-<arch>` and connect to its QMP socket.
    pub async fn start(spec: QemuSpec) -> Result<Qemu, QemuError> {
        Self::start_with(&crate::facts::qemu_binary(), spec).await
    }

    pub async fn start_with(binary: &str, spec: QemuSpec) -> Result<Qemu, QemuError> {
        std::fs::create_dir_all(&spec.run_dir)?;
        let qmp_path = spec.qmp_path();
        match std::fs::remove_file(&qmp_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let log = std::fs::File::create(spec.log_path())?;
        let mut child = Command::new(binary)
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| QemuError::Spawn { binary: binary.to_string(), source })?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = spec.log_path();
                return Err(QemuError::EarlyExit { status, tail: log_tail(&log), log: log.display().to_string() });
            }
            if qmp_path.exists() {
                match Qmp::connect(&qmp_path).await {
                    Ok(qmp) => return Ok(Qemu { child, qmp, spec }),
                    Err(QmpError::Io(_)) => {} // not listening yet
                    Err(e) => return Err(e.into()),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill().await;
                return Err(QemuError::NoQmp(qmp_path.display().to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Ask QEMU to quit now; wait for the process (killed if it does not exit in time).
    pub async fn quit(mut self) -> Result<ExitStatus, QemuError> {
        match self.qmp.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => {}
            Err(e) => tracing::warn!(name = %self.spec.name, error = %e, "QMP quit failed; killing"),
        }
        self.reap().await
    }

    async fn reap(&mut self) -> Result<ExitStatus, QemuError> {
        match tokio::time::timeout(QUIT_TIMEOUT, self.child.wait()).await {
            Ok(st) => Ok(st?),
            Err(_) => {
                self.child.kill().await?;
                self.child.wait().await?;
                Err(QemuError::Stuck)
            }
        }
    }

    /// ACPI power-down; if the guest has not powered off after `grace`, quit.
    pub async fn stop(mut self, grace: Duration) -> Result<(Stopped, ExitStatus), QemuError> {
        if !grace.is_zero() {
            self.qmp.execute("system_powerdown", None).await?;
            let waited = tokio::time::timeout(grace, async {
                loop {
                    match self.qmp.next_event().await {
                        Ok(e) if e.get("event").and_then(|v| v.as_str()) == Some("SHUTDOWN") => return,
                        Ok(_) => continue,
                        Err(_) => return, // EOF: QEMU is exiting
                    }
                }
            })
            .await;
            if waited.is_ok() {
                let st = self.reap().await?;
                return Ok((Stopped::Graceful, st));
            }
        }
        Ok((Stopped::Forced, self.quit().await?))
    }
}
