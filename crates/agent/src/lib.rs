//! `rzstack agent`: the host agent that runs on each KVM host and is driven by the management
//! node over the versioned JSON-over-HTTP protocol of [`rzstack_api::agent`].
//!
//! Authentication: every request must carry `Authorization: Bearer <token>`. The token is
//! `--token` / `RZSTACK_AGENT_TOKEN`, else the content of `<data-dir>/token`, created with 256
//! random bits (mode 0600) at first start. The management node sends the host's AddKVMHost
//! `password` as the token.
//!
//! State in the data directory: `token`, and `host-uuid` (the host this agent was last
//! connected as, reported by ping so a management node can tell if another one took it),
//! `imagecache/` (images from backup storages), `vms/<uuid>/` (one QEMU each, see [`vms`]),
//! `dhcp/<l3Uuid>/` (one dnsmasq each, see [`network`]).

pub mod facts;
pub mod network;
pub mod qcow2;
pub mod qemu;
pub mod qmp;
pub mod storage;
pub mod sys;
pub mod vms;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
pub use facts::Accel;
use rzstack_api::agent::{
    AgentRsp, ConnectCmd, ConnectRsp, ErrorRsp, PingCmd, PingRsp, PATH_CONNECT, PATH_IMAGE_CACHE, PATH_NETWORK_PREPARE,
    PATH_NETWORK_RELEASE, PATH_PING, PATH_STORAGE_CAPACITY, PATH_VM_DESTROY, PATH_VM_REBOOT, PATH_VM_START,
    PATH_VM_STATUS, PATH_VM_STOP, PATH_VOLUME_CREATE, PATH_VOLUME_DELETE, PATH_VOLUME_SNAPSHOT, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    storage: storage::Storage,
    vms: vms::Vms,
    network: network::Network,
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

/// Read a command and answer it with `f`'s result in an [`AgentRsp`].
async fn answer<C, R, F>(st: Arc<AgentState>, headers: HeaderMap, body: Bytes, f: F) -> Response
where
    C: DeserializeOwned,
    R: Serialize,
    F: for<'a> FnOnce(&'a AgentState, &'a C) -> futures_lite::BoxFut<'a, R>,
{
    let cmd: C = match read_cmd(&st, &headers, &body) {
        Err(r) => return r,
        Ok(Err(e)) => return Json(AgentRsp::<R>::err(e)).into_response(),
        Ok(Ok(c)) => c,
    };
    match f(&st, &cmd).await {
        Ok(r) => Json(AgentRsp::ok(r)).into_response(),
        Err(e) => Json(AgentRsp::<R>::err(e)).into_response(),
    }
}

mod futures_lite {
    pub type BoxFut<'a, R> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, String>> + Send + 'a>>;
}

macro_rules! handler {
    ($name:ident, $cmd:ty, |$st:ident, $c:ident| $body:expr) => {
        async fn $name(State(st): State<Arc<AgentState>>, headers: HeaderMap, body: Bytes) -> Response {
            let t0 = std::time::Instant::now();
            let r = answer(st, headers, body, |$st: &AgentState, $c: &$cmd| Box::pin(async move { $body.await })).await;
            tracing::info!(cmd = stringify!($name), ms = t0.elapsed().as_secs_f64() * 1e3, "agent command answered");
            r
        }
    };
}

handler!(image_cache, rzstack_api::agent::ImageCacheCmd, |st, c| st.storage.cache_image(c));
handler!(volume_create, rzstack_api::agent::VolumeCreateCmd, |st, c| st.storage.create_volume(c));
handler!(volume_delete, rzstack_api::agent::VolumeDeleteCmd, |st, c| st.storage.delete_volume(c));
handler!(volume_snapshot, rzstack_api::agent::VolumeSnapshotCmd, |st, c| snapshot(st, c));

/// A running VM's volume is copied by its QEMU; anything else with qemu-img.
async fn snapshot(
    st: &AgentState,
    c: &rzstack_api::agent::VolumeSnapshotCmd,
) -> Result<rzstack_api::agent::VolumeInfo, String> {
    c.validate()?;
    if let Some(vm) = &c.vm_uuid {
        if let Some(info) = st.vms.backup_disk(vm, &c.volume_install_path, &c.install_path).await? {
            return Ok(info);
        }
    }
    st.storage.snapshot_volume(c).await
}
handler!(volume_resize, rzstack_api::agent::VolumeResizeCmd, |st, c| resize(st, c));
handler!(volume_revert, rzstack_api::agent::VolumeRevertCmd, |st, c| st.storage.revert_volume(c));

/// A running VM's disk is grown by its QEMU, then read back; anything else with qemu-img.
async fn resize(
    st: &AgentState,
    c: &rzstack_api::agent::VolumeResizeCmd,
) -> Result<rzstack_api::agent::VolumeInfo, String> {
    c.validate()?;
    if let Some(vm) = &c.vm_uuid {
        if st.vms.resize_disk(vm, &c.install_path, c.size).await? {
            return storage::Storage::volume_info(std::path::Path::new(&c.install_path)).await;
        }
    }
    st.storage.resize_volume(c).await
}
handler!(storage_capacity, rzstack_api::agent::StorageCapacityCmd, |st, c| st.storage.capacity(c));
handler!(vm_start, rzstack_api::agent::VmStartCmd, |st, c| st.vms.start(c));
handler!(vm_stop, rzstack_api::agent::VmStopCmd, |st, c| st.vms.stop(c));
handler!(vm_reboot, rzstack_api::agent::VmStopCmd, |st, c| st.vms.reboot(c));
handler!(vm_destroy, rzstack_api::agent::VmDestroyCmd, |st, c| st.vms.destroy(c));
handler!(vm_status, rzstack_api::agent::VmStatusCmd, |st, c| st.vms.status(c));
handler!(vm_volume_attach, rzstack_api::agent::VmVolumeCmd, |st, c| st.vms.attach_volume(c));
handler!(vm_volume_detach, rzstack_api::agent::VmVolumeCmd, |st, c| st.vms.detach_volume(c));
handler!(vm_nic_attach, rzstack_api::agent::VmNicCmd, |st, c| st.vms.attach_nic(c));
handler!(vm_nic_detach, rzstack_api::agent::VmNicCmd, |st, c| st.vms.detach_nic(c));
handler!(vm_cdrom_change, rzstack_api::agent::VmCdromCmd, |st, c| st.vms.change_cdrom(c));
handler!(vm_console, rzstack_api::agent::VmConsoleCmd, |st, c| st.vms.console(c));
handler!(network_prepare, rzstack_api::agent::NetworkPrepareCmd, |st, c| st.network.prepare(c));
handler!(network_release, rzstack_api::agent::NetworkReleaseCmd, |st, c| st.network.release(c));

/// The agent's HTTP routes.
fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route(PATH_CONNECT, post(connect))
        .route(PATH_PING, post(ping))
        .route(PATH_IMAGE_CACHE, post(image_cache))
        .route(PATH_VOLUME_CREATE, post(volume_create))
        .route(PATH_VOLUME_DELETE, post(volume_delete))
        .route(PATH_VOLUME_SNAPSHOT, post(volume_snapshot))
        .route(rzstack_api::agent::PATH_VOLUME_RESIZE, post(volume_resize))
        .route(rzstack_api::agent::PATH_VOLUME_REVERT, post(volume_revert))
        .route(PATH_STORAGE_CAPACITY, post(storage_capacity))
        .route(PATH_VM_START, post(vm_start))
        .route(PATH_VM_STOP, post(vm_stop))
        .route(PATH_VM_REBOOT, post(vm_reboot))
        .route(PATH_VM_DESTROY, post(vm_destroy))
        .route(PATH_VM_STATUS, post(vm_status))
        .route(rzstack_api::agent::PATH_VM_VOLUME_ATTACH, post(vm_volume_attach))
        .route(rzstack_api::agent::PATH_VM_VOLUME_DETACH, post(vm_volume_detach))
        .route(rzstack_api::agent::PATH_VM_NIC_ATTACH, post(vm_nic_attach))
        .route(rzstack_api::agent::PATH_VM_NIC_DETACH, post(vm_nic_detach))
        .route(rzstack_api::agent::PATH_VM_CDROM_CHANGE, post(vm_cdrom_change))
        .route(rzstack_api::agent::PATH_VM_CONSOLE, post(vm_console))
        .route(PATH_NETWORK_PREPARE, post(network_prepare))
        .route(PATH_NETWORK_RELEASE, post(network_release))
        .with_state(state)
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
        storage: storage::Storage::new(config.data_dir.clone()),
        vms: vms::Vms::new(&config.data_dir, accelerator),
        network: network::Network::new(&config.data_dir),
    });
    let running = state.vms.adopt().await;
    if !running.is_empty() {
        tracing::info!(count = running.len(), "re-adopted running VMs");
    }
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
