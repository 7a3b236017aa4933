//! A small async QMP client (QEMU Machine Protocol: JSON lines over a unix socket).
//!
//! One command in flight at a time (`&mut self`): write `{"execute", "arguments", "id"}`, read
//! lines until the answer carrying that id; events read meanwhile are kept for [`Qmp::take_events`].
//! EOF means QEMU closed the socket (it exited or is exiting).

use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: unreadable message {0:?}")]
    Protocol(String),
    /// QEMU refused a command: its error class and description.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: Vec<Value>,
    /// QEMU's version from the greeting, e.g. `7.2.19`.
    pub version: String,
}

impl Qmp {
    /// Connect, read the greeting and leave capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let (r, w) = UnixStream::connect(path).await?.into_split();
        let mut q =
            Qmp { reader: BufReader::new(r), writer: w, next_id: 1, events: Vec::new(), version: String::new() };
        let greeting = q.read_msg().await?;
        let v = greeting
            .get("QMP")
            .and_then(|g| g.get("version"))
            .and_then(|v| v.get("qemu"))
            .ok_or_else(|| QmpError::Protocol(greeting.to_string()))?;
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        q.version = format!("{}.{}.{}", n("major"), n("minor"), n("micro"));
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(QmpError::Closed);
            }
            if !line.trim().is_empty() {
                return serde_json::from_str(line.trim()).map_err(|_| QmpError::Protocol(line.trim().to_string()));
            }
        }
    }

    /// Run `command` with `arguments`; its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).await?;
        loop {
            let m = self.read_msg().await?;
            if m.get("event").is_some() {
                self.events.push(m);
                continue;
            }
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            let err = m.get("error").ok_or_else(|| QmpError::Protocol(m.to_string()))?;
            let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            return Err(QmpError::Command { command: command.to_string(), class: s("class"), desc: s("desc") });
        }
    }

    /// `query-status`: (status, running), e.g. `("prelaunch", false)`, `("running", true)`.
    pub async fn query_status(&mut self) -> Result<(String, bool), QmpError> {
        let r = self.execute("query-status", None).await?;
        let status = r.get("status").and_then(Value::as_str).ok_or_else(|| QmpError::Protocol(r.to_string()))?;
        Ok((status.to_string(), r.get("running").and_then(Value::as_bool).unwrap_or(false)))
    }

    /// Events received so far (e.g. `POWERDOWN`, `SHUTDOWN`, `STOP`), oldest first.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Wait for the next event or EOF (`Err(Closed)`).
    pub async fn next_event(&mut self) -> Result<Value, QmpError> {
        if !self.events.is_empty() {
            return Ok(self.events.remove(0));
        }
        loop {
            let m = self.read_msg().await?;
            if m.get("event").is_some() {
                return Ok(m);
            }
        }
    }
}
