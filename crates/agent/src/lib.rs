//! `rzstack agent`: the host agent that runs on each KVM host and is driven by the management
//! node over the versioned JSON-over-HTTP protocol of [`rzstack_api::agent`].
//!
//! Authentication: every request must carry `Authorization: Bearer <token>`. The token is
//! `--token` / `RZSTACK_AGENT_TOKEN`, else the content of `<data-dir>/token`, created with 256
//! random bits (mode 0600) at first start. The management node sends the host's AddKVMHost
//! `password` as the token.
//!
//! State in the data directory: `token`, and `host-uuid` (the host this agent was last
//! connected as, reported by ping so a management node can tell if another one took it).

pub mod facts;
pub mod qemu;
pub mod qmp;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
pub use facts::Accel;
use rzstack_api::agent::{
    ConnectCmd, ConnectRsp, ErrorRsp, PingCmd, PingRsp, PATH_CONNECT, PATH_PING, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How `rzstack agent` was started.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub accel: Accel,
    /// The shared secret; `None` = the data directory's token file.
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The token file's name inside the data directory.
pub const TOKEN_FILE: &str = "token";
const HOST_UUID_FILE: &str = "host-uuid";

/// The token in `<data_dir>/token`, created (256 random bits, hex, mode 0600) if missing.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, Error> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    }
    let mut bytes = [0u8; 32];
    {
        use std::io::Read;
        let mut f = std::fs::File::open("/dev/urandom").map_err(io("cannot open /dev/urandom"))?;
        f.read_exact(&mut bytes).map_err(io("cannot read /dev/urandom"))?;
    }
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = data_dir.join(".token.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("cannot create {}", tmp.display())))?;
        f.write_all(format!("{token}\n").as_bytes()).map_err(io(format!("cannot write {}", tmp.display())))?;
        f.sync_all().map_err(io(format!("cannot sync {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(format!("cannot create {}", path.display())))?;
    Ok(token)
}

struct AgentState {
    token: String,
    accelerator: &'static str,
    data_dir: PathBuf,
    host_uuid: Mutex<Option<String>>,
}

/// Compare without leaking where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refusal(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(ErrorRsp::new(error))).into_response()
}

#[allow(clippy::result_large_err)] // the refusal is the response itself
fn authorize(state: &AgentState, headers: &HeaderMap) -> Result<(), Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same_secret(t.as_bytes(), state.token.as_bytes()) => Ok(()),
        Some(_) => Err(refusal(StatusCode::UNAUTHORIZED, "the bearer token is not this agent's token")),
        None => Err(refusal(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <token>")),
    }
}

/// Authenticate, then read a command of this protocol version. `Err` is the answer to send:
/// 401 for a bad token, 400 for an unreadable body, `Ok(Err(text))` for another version.
#[allow(clippy::result_large_err)]
fn read_cmd<T: DeserializeOwned>(
    state: &AgentState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Result<T, String>, Response> {
    authorize(state, headers)?;
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| refusal(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(n) if n == PROTOCOL_VERSION as u64 => {}
        other => {
            return Ok(Err(format!(
                "this agent speaks protocol version {PROTOCOL_VERSION}, the command has version {}",
                other.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
            )))
        }
    }
    serde_json::from_value(v).map(Ok).map_err(|e| refusal(StatusCode::BAD_REQUEST, format!("unreadable command: {e}")))
}

async fn connect(State(st): State<Arc<AgentState>>, headers: HeaderMap, body: Bytes) -> Response {
    let cmd: ConnectCmd = match read_cmd(&st, &headers, &body) {
        Err(r) => return r,
        Ok(Err(e)) => {
            return Json(ConnectRsp { version: PROTOCOL_VERSION, success: false, error: Some(e), facts: None })
                .into_response()
        }
        Ok(Ok(c)) => c,
    };
    let facts = match facts::gather(st.accelerator).await {
        Ok(f) => f,
        Err(e) => {
            return Json(ConnectRsp { version: PROTOCOL_VERSION, success: false, error: Some(e), facts: None })
                .into_response()
        }
    };
    let path = st.data_dir.join(HOST_UUID_FILE);
    if let Err(e) = std::fs::write(&path, &cmd.host_uuid) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the host uuid");
    }
    if let Ok(mut h) = st.host_uuid.lock() {
        *h = Some(cmd.host_uuid.clone());
    }
    tracing::info!(host = %cmd.host_uuid, mn = %cmd.management_node_uuid, "connected by the management node");
    Json(ConnectRsp { version: PROTOCOL_VERSION, success: true, error: None, facts: Some(facts) }).into_response()
}

async fn ping(State(st): State<Arc<AgentState>>, headers: HeaderMap, body: Bytes) -> Response {
    let rsp = match read_cmd::<PingCmd>(&st, &headers, &body) {
        Err(r) => return r,
        Ok(Err(e)) => PingRsp { version: PROTOCOL_VERSION, success: false, error: Some(e), host_uuid: None },
        Ok(Ok(_)) => {
            let host_uuid = st.host_uuid.lock().ok().and_then(|h| h.clone());
            PingRsp { version: PROTOCOL_VERSION, success: true, error: None, host_uuid }
        }
    };
    Json(rsp).into_response()
}

/// The agent's HTTP routes.
fn router(state: Arc<AgentState>) -> Router {
    Router::new().route(PATH_CONNECT, post(connect)).route(PATH_PING, post(ping)).with_state(state)
}

/// Run the agent until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("cannot create the data directory {}", config.data_dir.display())))?;
    let token = match config.token.as_deref().map(str::trim) {
        Some("") => return Err(Error::Setup("the agent token must not be empty".into())),
        Some(t) => t.to_string(),
        None => load_or_create_token(&config.data_dir)?,
    };
    let probe = facts::KvmProbe::probe();
    let accelerator = facts::choose_accel(config.accel, probe).map_err(Error::Setup)?;
    if accelerator == rzstack_api::agent::ACCEL_KVM && probe.pvm {
        tracing::warn!("--accel kvm on a PVM host: stock guest kernels are emulated and fail here");
    }
    let host_uuid = std::fs::read_to_string(config.data_dir.join(HOST_UUID_FILE)).ok().filter(|s| !s.is_empty());
    let state = Arc::new(AgentState {
        token,
        accelerator,
        data_dir: config.data_dir.clone(),
        host_uuid: Mutex::new(host_uuid),
    });
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(io(format!("cannot listen on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(io("cannot read the listening address"))?;
    let token_source = if config.token.is_some() {
        "--token / RZSTACK_AGENT_TOKEN".to_string()
    } else {
        config.data_dir.join(TOKEN_FILE).display().to_string()
    };
    tracing::info!(%addr, accelerator, token = %token_source, "host agent listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await.map_err(io("the HTTP server failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_once_and_private() {
        let d = tempfile::tempdir().unwrap();
        let t1 = load_or_create_token(d.path()).unwrap();
        assert_eq!(t1.len(), 64);
        assert_eq!(load_or_create_token(d.path()).unwrap(), t1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_token(other.path()).unwrap(), t1);
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
