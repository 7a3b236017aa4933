//! The management-node side of the host-agent protocol.
//!
//! A host is driven through a [`HostAgent`]: `connect` returns the host's facts (CPU, memory,
//! hypervisor version, architecture, accelerator), `ping` checks it is still there. Two
//! implementations: [`SimulatorAgent`] (facts from AddSimulatorHost's capacities, always
//! connected) and [`KvmAgentClient`] (JSON over HTTP to `rzstack agent` on the host at
//! `http://<managementIp>:7070`, authenticated with `Authorization: Bearer <token>` where the
//! token is the host's AddKVMHost `password`).
//!
//! The wire types and the protocol version live in [`rzstack_api::agent`]; an agent answering
//! with a different version is refused.
//!
//! Beyond connect/ping the trait drives storage (image cache, volumes, snapshots), VMs (start,
//! stop, reboot, destroy, status) and host networking (bridges, taps, DHCP). The simulator
//! validates every command exactly as the agent does (the commands' `validate()`), then only
//! records the effect in a process-wide [`SimulatedHosts`] ledger (see [`simulated`]).
//! [`agent_for_host`] picks the implementation for a host row.

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use rzstack_api::agent::{
    AgentRsp, ConnectCmd, ConnectRsp, Deleted, DhcpLease, ErrorRsp, HostFacts, ImageCacheCmd, ImageCacheInfo,
    NetworkPrepareCmd, NetworkPrepared, NetworkReleaseCmd, PingCmd, PingRsp, Provisioning, StopMode, StorageCapacity,
    StorageCapacityCmd, VmDestroyCmd, VmStartCmd, VmState, VmStatusCmd, VmStatusList, VmStopCmd, VolumeCreateCmd,
    VolumeDeleteCmd, VolumeInfo, VolumeSnapshotCmd, DEFAULT_PORT as KVM_AGENT_PORT, PATH_CONNECT, PATH_IMAGE_CACHE,
    PATH_NETWORK_PREPARE, PATH_NETWORK_RELEASE, PATH_PING, PATH_STORAGE_CAPACITY, PATH_VM_DESTROY, PATH_VM_REBOOT,
    PATH_VM_START, PATH_VM_STATUS, PATH_VM_STOP, PATH_VOLUME_CREATE, PATH_VOLUME_DELETE, PATH_VOLUME_SNAPSHOT,
    PROTOCOL_VERSION, VM_RUNNING, VM_STOPPED, VM_UNKNOWN,
};

/// How long to wait for a TCP connection to an agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for an agent's whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Copying images and allocating thick volumes can take long.
pub const STORAGE_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// Why an agent call failed; the text is the reason shown to users.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AgentError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    BadReply(String),
}

/// The management node's handle on one host's agent.
pub trait HostAgent: Send + Sync {
    /// Where the agent is, for messages (`http://ip:7070`, `simulator`).
    fn url(&self) -> String;
    /// Connect and read the host's facts.
    fn connect<'a>(&'a self, cmd: &'a ConnectCmd) -> BoxFuture<'a, Result<HostFacts, AgentError>>;
    /// Check the agent still answers for `host_uuid`.
    fn ping<'a>(&'a self, host_uuid: &'a str) -> BoxFuture<'a, Result<(), AgentError>>;
    /// Put an image into the host's image cache (once).
    fn cache_image<'a>(&'a self, cmd: &'a ImageCacheCmd) -> BoxFuture<'a, Result<ImageCacheInfo, AgentError>>;
    /// Create a volume (thin overlay, thick copy, or empty data volume).
    fn create_volume<'a>(&'a self, cmd: &'a VolumeCreateCmd) -> BoxFuture<'a, Result<VolumeInfo, AgentError>>;
    /// Delete a volume file (missing = `deleted: false`).
    fn delete_volume<'a>(&'a self, cmd: &'a VolumeDeleteCmd) -> BoxFuture<'a, Result<Deleted, AgentError>>;
    /// Snapshot a stopped VM's volume into an independent qcow2.
    fn snapshot_volume<'a>(&'a self, cmd: &'a VolumeSnapshotCmd) -> BoxFuture<'a, Result<VolumeInfo, AgentError>>;
    /// Total and free bytes of the filesystem holding a primary storage's url.
    fn storage_capacity<'a>(
        &'a self,
        cmd: &'a StorageCapacityCmd,
    ) -> BoxFuture<'a, Result<StorageCapacity, AgentError>>;
    fn start_vm<'a>(&'a self, cmd: &'a VmStartCmd) -> BoxFuture<'a, Result<VmState, AgentError>>;
    fn stop_vm<'a>(&'a self, cmd: &'a VmStopCmd) -> BoxFuture<'a, Result<VmState, AgentError>>;
    fn reboot_vm<'a>(&'a self, cmd: &'a VmStopCmd) -> BoxFuture<'a, Result<VmState, AgentError>>;
    fn destroy_vm<'a>(&'a self, cmd: &'a VmDestroyCmd) -> BoxFuture<'a, Result<VmState, AgentError>>;
    fn vm_status<'a>(&'a self, cmd: &'a VmStatusCmd) -> BoxFuture<'a, Result<VmStatusList, AgentError>>;
    /// Bridges, taps, DHCP servers (idempotent).
    fn prepare_network<'a>(&'a self, cmd: &'a NetworkPrepareCmd) -> BoxFuture<'a, Result<NetworkPrepared, AgentError>>;
    fn release_network<'a>(&'a self, cmd: &'a NetworkReleaseCmd) -> BoxFuture<'a, Result<Deleted, AgentError>>;
}

/// What simulated hosts hold: the effects of the commands they accepted (process-wide; keys
/// are uuids and paths, unique across hosts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimulatedHosts {
    /// Commands accepted, by path (e.g. `/v1/vm/start` → 3).
    pub calls: BTreeMap<String, u64>,
    /// Image uuid → cache entry.
    pub images: BTreeMap<String, ImageCacheInfo>,
    /// Install path → volume.
    pub volumes: BTreeMap<String, VolumeInfo>,
    /// VM uuid → state (and its last start command).
    pub vms: BTreeMap<String, (VmState, VmStartCmd)>,
    pub bridges: BTreeSet<String>,
    pub taps: BTreeSet<String>,
    /// L3 uuid → MAC → IP.
    pub leases: BTreeMap<String, BTreeMap<String, String>>,
    /// VMs created on simulated hosts by the creation saga: uuid → state (see
    /// [`simulate_instantiate`]).
    pub instances: BTreeMap<String, String>,
}

fn sim() -> std::sync::MutexGuard<'static, SimulatedHosts> {
    static SIM: OnceLock<Mutex<SimulatedHosts>> = OnceLock::new();
    SIM.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// A copy of the simulated hosts' ledger (for tests and diagnostics).
pub fn simulated() -> SimulatedHosts {
    sim().clone()
}

/// The creation saga's instantiate step on a simulated host: records the VM (Running, or
/// Stopped for CreateStopped). Test hooks, as a slow agent (a thick copy of an image):
/// `RZSTACK_TEST_AGENT_DELAY_MS=<ms>` makes it take that long first;
/// `RZSTACK_TEST_AGENT_GATE=<file>` makes it wait until that file exists.
pub async fn simulate_instantiate(vm_uuid: &str, running: bool) {
    let delay = std::env::var("RZSTACK_TEST_AGENT_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay.filter(|ms| *ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(gate) = std::env::var_os("RZSTACK_TEST_AGENT_GATE").filter(|g| !g.is_empty()) {
        while !std::path::Path::new(&gate).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut s = sim();
    s.instances.insert(vm_uuid.to_string(), if running { VM_RUNNING } else { VM_STOPPED }.to_string());
    *s.calls.entry("instantiate".to_string()).or_default() += 1;
}

/// The undo of [`simulate_instantiate`] (nothing to do when it never happened).
pub fn simulate_destroy(vm_uuid: &str) {
    sim().instances.remove(vm_uuid);
}

/// Validate, then apply `f` to the ledger, counting the call.
fn sim_apply<T>(
    path: &str,
    valid: Result<(), String>,
    f: impl FnOnce(&mut SimulatedHosts) -> Result<T, String>,
) -> Result<T, AgentError> {
    valid.map_err(AgentError::Refused)?;
    let mut s = sim();
    let r = f(&mut s).map_err(AgentError::Refused)?;
    *s.calls.entry(path.to_string()).or_default() += 1;
    Ok(r)
}

fn sim_vm_state(uuid: &str, state: &str, stopped_by: Option<&str>) -> VmState {
    VmState {
        vm_uuid: uuid.to_string(),
        state: state.to_string(),
        pid: None,
        qmp_status: (state == VM_RUNNING).then(|| "running".to_string()),
        serial_log: None,
        stopped_by: stopped_by.map(String::from),
    }
}

fn sim_stop(s: &mut SimulatedHosts, cmd: &VmStopCmd) -> Result<VmState, String> {
    let how = if cmd.mode == StopMode::Cold { "forced" } else { "graceful" };
    Ok(match s.vms.get_mut(&cmd.vm_uuid) {
        Some((st, _)) => {
            if st.state == VM_RUNNING {
                *st = sim_vm_state(&cmd.vm_uuid, VM_STOPPED, Some(how));
            }
            st.clone()
        }
        None => sim_vm_state(&cmd.vm_uuid, VM_UNKNOWN, None),
    })
}

/// A simulated host: its facts are what AddSimulatorHost was given; always connected.
#[derive(Debug, Clone)]
pub struct SimulatorAgent {
    pub cpu_capacity: i64,
    pub memory_capacity: i64,
    pub architecture: String,
}

impl HostAgent for SimulatorAgent {
    fn url(&self) -> String {
        "simulator".into()
    }

    fn connect<'a>(&'a self, _cmd: &'a ConnectCmd) -> BoxFuture<'a, Result<HostFacts, AgentError>> {
        Box::pin(async move {
            Ok(HostFacts {
                cpu_num: self.cpu_capacity,
                cpu_sockets: 1,
                cpu_model_name: "Simulator".into(),
                memory_bytes: self.memory_capacity,
                hypervisor_type: "Simulator".into(),
                hypervisor_version: "1".into(),
                architecture: self.architecture.clone(),
                accelerator: "none".into(),
                os_distribution: None,
                os_release: None,
                os_version: None,
            })
        })
    }

    fn ping<'a>(&'a self, _host_uuid: &'a str) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async { Ok(()) })
    }

    fn cache_image<'a>(&'a self, cmd: &'a ImageCacheCmd) -> BoxFuture<'a, Result<ImageCacheInfo, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_IMAGE_CACHE, cmd.validate(), |s| {
                let root = cmd.cache_root.clone().unwrap_or_else(|| "/var/lib/rzstack-agent".into());
                let iso = cmd.format.as_deref() == Some("iso");
                let (kind, ext) = if iso { ("iso", "iso") } else { ("template", "qcow2") };
                let info = ImageCacheInfo {
                    install_path: format!("{root}/imagecache/{kind}/{u}/{u}.{ext}", u = cmd.image_uuid),
                    format: ext.to_string(),
                    size: 0,
                    actual_size: 0,
                };
                Ok(s.images.entry(cmd.image_uuid.clone()).or_insert(info).clone())
            })
        })
    }

    fn create_volume<'a>(&'a self, cmd: &'a VolumeCreateCmd) -> BoxFuture<'a, Result<VolumeInfo, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VOLUME_CREATE, cmd.validate(), |s| {
                let thick = cmd.provisioning == Provisioning::ThickProvisioning;
                let backing = if thick { None } else { cmd.backing_file.clone() };
                if let Some(v) = s.volumes.get(&cmd.install_path) {
                    return if v.backing_file == backing {
                        Ok(v.clone())
                    } else {
                        Err(format!("{} exists and is another volume", cmd.install_path))
                    };
                }
                let base = cmd.backing_file.as_ref().and_then(|b| s.volumes.get(b)).map(|v| v.size).unwrap_or(0);
                let size = cmd.size.max(base);
                let v = VolumeInfo {
                    install_path: cmd.install_path.clone(),
                    format: "qcow2".into(),
                    size,
                    actual_size: if thick { size } else { 0 },
                    backing_file: backing,
                };
                s.volumes.insert(cmd.install_path.clone(), v.clone());
                Ok(v)
            })
        })
    }

    fn delete_volume<'a>(&'a self, cmd: &'a VolumeDeleteCmd) -> BoxFuture<'a, Result<Deleted, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VOLUME_DELETE, cmd.validate(), |s| {
                Ok(Deleted { deleted: s.volumes.remove(&cmd.install_path).is_some() })
            })
        })
    }

    fn snapshot_volume<'a>(&'a self, cmd: &'a VolumeSnapshotCmd) -> BoxFuture<'a, Result<VolumeInfo, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VOLUME_SNAPSHOT, cmd.validate(), |s| {
                let size = s.volumes.get(&cmd.volume_install_path).map(|v| v.size).unwrap_or(0);
                let v = VolumeInfo {
                    install_path: cmd.install_path.clone(),
                    format: "qcow2".into(),
                    size,
                    actual_size: 0,
                    backing_file: None,
                };
                Ok(s.volumes.entry(cmd.install_path.clone()).or_insert(v).clone())
            })
        })
    }

    fn storage_capacity<'a>(
        &'a self,
        cmd: &'a StorageCapacityCmd,
    ) -> BoxFuture<'a, Result<StorageCapacity, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_STORAGE_CAPACITY, cmd.validate(), |s| {
                // A simulated 1 TiB filesystem less what simulated volumes under the path use.
                const TOTAL: i64 = 1 << 40;
                let prefix = format!("{}/", cmd.path.trim_end_matches('/'));
                let used: i64 =
                    s.volumes.values().filter(|v| v.install_path.starts_with(&prefix)).map(|v| v.actual_size).sum();
                Ok(StorageCapacity {
                    path: cmd.path.clone(),
                    total_capacity: TOTAL,
                    available_capacity: (TOTAL - used).max(0),
                })
            })
        })
    }

    fn start_vm<'a>(&'a self, cmd: &'a VmStartCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VM_START, cmd.validate(), |s| {
                let st = sim_vm_state(&cmd.vm_uuid, VM_RUNNING, None);
                s.vms.insert(cmd.vm_uuid.clone(), (st.clone(), cmd.clone()));
                Ok(st)
            })
        })
    }

    fn stop_vm<'a>(&'a self, cmd: &'a VmStopCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(async move { sim_apply(PATH_VM_STOP, cmd.validate(), |s| sim_stop(s, cmd)) })
    }

    fn reboot_vm<'a>(&'a self, cmd: &'a VmStopCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VM_REBOOT, cmd.validate(), |s| match s.vms.get_mut(&cmd.vm_uuid) {
                Some((st, _)) => {
                    *st = sim_vm_state(&cmd.vm_uuid, VM_RUNNING, None);
                    Ok(st.clone())
                }
                None => Err(format!("VM {} was never started on this host", cmd.vm_uuid)),
            })
        })
    }

    fn destroy_vm<'a>(&'a self, cmd: &'a VmDestroyCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VM_DESTROY, cmd.validate(), |s| {
                s.vms.remove(&cmd.vm_uuid);
                Ok(sim_vm_state(&cmd.vm_uuid, VM_UNKNOWN, None))
            })
        })
    }

    fn vm_status<'a>(&'a self, cmd: &'a VmStatusCmd) -> BoxFuture<'a, Result<VmStatusList, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_VM_STATUS, cmd.validate(), |s| {
                let uuids: Vec<String> =
                    if cmd.vm_uuids.is_empty() { s.vms.keys().cloned().collect() } else { cmd.vm_uuids.clone() };
                let vms = uuids
                    .iter()
                    .map(|u| {
                        s.vms.get(u).map(|(st, _)| st.clone()).unwrap_or_else(|| sim_vm_state(u, VM_UNKNOWN, None))
                    })
                    .collect();
                Ok(VmStatusList { vms })
            })
        })
    }

    fn prepare_network<'a>(&'a self, cmd: &'a NetworkPrepareCmd) -> BoxFuture<'a, Result<NetworkPrepared, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_NETWORK_PREPARE, cmd.validate(), |s| {
                let bridges: Vec<String> = cmd.bridges.iter().map(|b| b.name()).collect();
                s.bridges.extend(bridges.iter().cloned());
                for t in &cmd.taps {
                    if !s.bridges.contains(&t.bridge_name) {
                        return Err(format!("the bridge {} does not exist", t.bridge_name));
                    }
                    s.taps.insert(t.tap_name.clone());
                }
                for d in &cmd.dhcp {
                    let l = s.leases.entry(d.l3_uuid.clone()).or_default();
                    for lease in &d.leases {
                        l.retain(|_, ip| *ip != lease.ip);
                        l.insert(lease.mac.to_ascii_lowercase(), lease.ip.clone());
                    }
                }
                Ok(NetworkPrepared { bridges })
            })
        })
    }

    fn release_network<'a>(&'a self, cmd: &'a NetworkReleaseCmd) -> BoxFuture<'a, Result<Deleted, AgentError>> {
        Box::pin(async move {
            sim_apply(PATH_NETWORK_RELEASE, cmd.validate(), |s| {
                let mut deleted = false;
                for t in &cmd.taps {
                    deleted |= s.taps.remove(t);
                }
                for r in &cmd.leases {
                    if let Some(l) = s.leases.get_mut(&r.l3_uuid) {
                        for m in &r.macs {
                            deleted |= l.remove(&m.to_ascii_lowercase()).is_some();
                        }
                    }
                }
                for l3 in &cmd.dhcp {
                    deleted |= s.leases.remove(l3).is_some();
                }
                for b in &cmd.bridges {
                    deleted |= s.bridges.remove(b);
                }
                Ok(Deleted { deleted })
            })
        })
    }
}

/// The HTTP client for the KVM agent on a host.
#[derive(Clone)]
pub struct KvmAgentClient {
    pub base: String,
    /// The shared secret sent as `Authorization: Bearer <token>`.
    token: String,
}

impl std::fmt::Debug for KvmAgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmAgentClient").field("base", &self.base).finish_non_exhaustive()
    }
}

fn client() -> Result<&'static reqwest::Client, AgentError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| AgentError::Unreachable(format!("cannot build an HTTP client: {e}")))?;
    Ok(CLIENT.get_or_init(|| c))
}

/// The agent port: 7070, or `RZSTACK_KVM_AGENT_PORT` (for tests and non-standard setups).
pub fn kvm_agent_port() -> u16 {
    std::env::var("RZSTACK_KVM_AGENT_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(KVM_AGENT_PORT)
}

impl KvmAgentClient {
    /// The agent of the host at `management_ip`, authenticated with `token` (the host's
    /// AddKVMHost password).
    pub fn new(management_ip: &str, token: &str) -> Self {
        Self::with_base(format!("http://{management_ip}:{}", kvm_agent_port()), token)
    }

    pub fn with_base(base: String, token: &str) -> Self {
        KvmAgentClient { base, token: token.to_string() }
    }

    async fn call<Q: Serialize, R: serde::de::DeserializeOwned>(&self, path: &str, body: &Q) -> Result<R, AgentError> {
        self.call_within(path, body, REQUEST_TIMEOUT).await
    }

    /// A command answered with an [`AgentRsp`]: its result, or the agent's refusal.
    async fn command<Q: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<R, AgentError> {
        let rsp: AgentRsp<R> = self.call_within(path, body, timeout).await?;
        check_version(rsp.version)?;
        if !rsp.success {
            return Err(AgentError::Refused(rsp.error.unwrap_or_else(|| format!("the agent refused {path}"))));
        }
        rsp.result.ok_or_else(|| AgentError::BadReply(format!("the agent answered {path} without a result")))
    }

    async fn call_within<Q: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<R, AgentError> {
        let url = format!("{}{path}", self.base);
        let req = client()?.post(&url).bearer_auth(&self.token).timeout(timeout).json(body);
        let rsp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "cannot be reached" };
            AgentError::Unreachable(format!("the host agent at {url} {what}: {}", error_chain(&e)))
        })?;
        let status = rsp.status();
        if !status.is_success() {
            let text = rsp.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<ErrorRsp>(&text).map(|e| e.error).unwrap_or(text);
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(AgentError::Refused(format!(
                    "the host agent at {url} refused the credentials (HTTP {status}): {reason}; the host's \
                     password must be the agent's token"
                )));
            }
            return Err(AgentError::BadReply(format!("the host agent at {url} answered HTTP {status}: {reason}")));
        }
        rsp.json::<R>()
            .await
            .map_err(|e| AgentError::BadReply(format!("the host agent at {url} sent an unreadable answer: {e}")))
    }
}

impl KvmAgentClient {
    /// Hot-plug a data volume into a running VM ([`rzstack_api::agent::PATH_VM_VOLUME_ATTACH`]).
    pub async fn attach_volume(&self, cmd: &rzstack_api::agent::VmVolumeCmd) -> Result<VmState, AgentError> {
        self.command(rzstack_api::agent::PATH_VM_VOLUME_ATTACH, cmd, REQUEST_TIMEOUT).await
    }

    /// Hot-unplug a data volume from a running VM (waits for the guest to let it go).
    pub async fn detach_volume(&self, cmd: &rzstack_api::agent::VmVolumeCmd) -> Result<VmState, AgentError> {
        self.command(rzstack_api::agent::PATH_VM_VOLUME_DETACH, cmd, REQUEST_TIMEOUT + Duration::from_secs(60)).await
    }

    /// Hot-plug a NIC (its tap prepared) into a running VM ([`rzstack_api::agent::PATH_VM_NIC_ATTACH`]).
    pub async fn attach_nic(&self, cmd: &rzstack_api::agent::VmNicCmd) -> Result<VmState, AgentError> {
        self.command(rzstack_api::agent::PATH_VM_NIC_ATTACH, cmd, REQUEST_TIMEOUT).await
    }

    /// Hot-unplug a NIC from a running VM (waits for the guest to let it go).
    pub async fn detach_nic(&self, cmd: &rzstack_api::agent::VmNicCmd) -> Result<VmState, AgentError> {
        self.command(rzstack_api::agent::PATH_VM_NIC_DETACH, cmd, REQUEST_TIMEOUT + Duration::from_secs(60)).await
    }

    /// Insert an ISO (a file on the host) into, or eject the medium of, a running VM's CD-ROM.
    pub async fn change_cdrom(&self, cmd: &rzstack_api::agent::VmCdromCmd) -> Result<VmState, AgentError> {
        self.command(rzstack_api::agent::PATH_VM_CDROM_CHANGE, cmd, REQUEST_TIMEOUT).await
    }

    /// The VNC port of a running VM.
    pub async fn vm_console(
        &self,
        cmd: &rzstack_api::agent::VmConsoleCmd,
    ) -> Result<rzstack_api::agent::VmConsole, AgentError> {
        self.command(rzstack_api::agent::PATH_VM_CONSOLE, cmd, REQUEST_TIMEOUT).await
    }
}

/// `e` and its sources, joined (reqwest's top-level text alone hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn check_version(v: u32) -> Result<(), AgentError> {
    if v != PROTOCOL_VERSION {
        return Err(AgentError::BadReply(format!(
            "the host agent speaks protocol version {v}, this management node speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

impl HostAgent for KvmAgentClient {
    fn url(&self) -> String {
        self.base.clone()
    }

    fn connect<'a>(&'a self, cmd: &'a ConnectCmd) -> BoxFuture<'a, Result<HostFacts, AgentError>> {
        Box::pin(async move {
            let rsp: ConnectRsp = self.call(PATH_CONNECT, cmd).await?;
            check_version(rsp.version)?;
            if !rsp.success {
                return Err(AgentError::Refused(rsp.error.unwrap_or_else(|| "the agent refused to connect".into())));
            }
            let facts = rsp.facts.ok_or_else(|| AgentError::BadReply("the agent sent no host facts".into()))?;
            if facts.cpu_num <= 0 || facts.memory_bytes <= 0 || facts.architecture.is_empty() {
                return Err(AgentError::BadReply(format!(
                    "the agent reported unusable facts: cpuNum {}, memory {} bytes, architecture {:?}",
                    facts.cpu_num, facts.memory_bytes, facts.architecture
                )));
            }
            Ok(facts)
        })
    }

    fn ping<'a>(&'a self, host_uuid: &'a str) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let cmd = PingCmd { version: PROTOCOL_VERSION, host_uuid: host_uuid.to_string() };
            let rsp: PingRsp = self.call(PATH_PING, &cmd).await?;
            check_version(rsp.version)?;
            if !rsp.success {
                return Err(AgentError::Refused(rsp.error.unwrap_or_else(|| "the agent refused the ping".into())));
            }
            match rsp.host_uuid {
                Some(served) if served != host_uuid => Err(AgentError::Refused(format!(
                    "the host agent at {} serves host[uuid:{served}], not host[uuid:{host_uuid}]",
                    self.base
                ))),
                _ => Ok(()),
            }
        })
    }

    fn cache_image<'a>(&'a self, cmd: &'a ImageCacheCmd) -> BoxFuture<'a, Result<ImageCacheInfo, AgentError>> {
        Box::pin(self.command(PATH_IMAGE_CACHE, cmd, STORAGE_TIMEOUT))
    }

    fn create_volume<'a>(&'a self, cmd: &'a VolumeCreateCmd) -> BoxFuture<'a, Result<VolumeInfo, AgentError>> {
        Box::pin(self.command(PATH_VOLUME_CREATE, cmd, STORAGE_TIMEOUT))
    }

    fn delete_volume<'a>(&'a self, cmd: &'a VolumeDeleteCmd) -> BoxFuture<'a, Result<Deleted, AgentError>> {
        Box::pin(self.command(PATH_VOLUME_DELETE, cmd, REQUEST_TIMEOUT))
    }

    fn snapshot_volume<'a>(&'a self, cmd: &'a VolumeSnapshotCmd) -> BoxFuture<'a, Result<VolumeInfo, AgentError>> {
        Box::pin(self.command(PATH_VOLUME_SNAPSHOT, cmd, STORAGE_TIMEOUT))
    }

    fn storage_capacity<'a>(
        &'a self,
        cmd: &'a StorageCapacityCmd,
    ) -> BoxFuture<'a, Result<StorageCapacity, AgentError>> {
        Box::pin(self.command(PATH_STORAGE_CAPACITY, cmd, REQUEST_TIMEOUT))
    }

    fn start_vm<'a>(&'a self, cmd: &'a VmStartCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(self.command(PATH_VM_START, cmd, REQUEST_TIMEOUT))
    }

    fn stop_vm<'a>(&'a self, cmd: &'a VmStopCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(self.command(PATH_VM_STOP, cmd, stop_timeout(cmd)))
    }

    fn reboot_vm<'a>(&'a self, cmd: &'a VmStopCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(self.command(PATH_VM_REBOOT, cmd, stop_timeout(cmd) + REQUEST_TIMEOUT))
    }

    fn destroy_vm<'a>(&'a self, cmd: &'a VmDestroyCmd) -> BoxFuture<'a, Result<VmState, AgentError>> {
        Box::pin(self.command(PATH_VM_DESTROY, cmd, REQUEST_TIMEOUT))
    }

    fn vm_status<'a>(&'a self, cmd: &'a VmStatusCmd) -> BoxFuture<'a, Result<VmStatusList, AgentError>> {
        Box::pin(self.command(PATH_VM_STATUS, cmd, REQUEST_TIMEOUT))
    }

    fn prepare_network<'a>(&'a self, cmd: &'a NetworkPrepareCmd) -> BoxFuture<'a, Result<NetworkPrepared, AgentError>> {
        Box::pin(self.command(PATH_NETWORK_PREPARE, cmd, REQUEST_TIMEOUT))
    }

    fn release_network<'a>(&'a self, cmd: &'a NetworkReleaseCmd) -> BoxFuture<'a, Result<Deleted, AgentError>> {
        Box::pin(self.command(PATH_NETWORK_RELEASE, cmd, REQUEST_TIMEOUT))
    }
}

impl KvmAgentClient {
    /// Grow a volume file (QEMU `block_resize` for a running VM's disk, else `qemu-img resize`).
    pub async fn resize_volume(&self, cmd: &rzstack_api::agent::VolumeResizeCmd) -> Result<VolumeInfo, AgentError> {
        self.command(rzstack_api::agent::PATH_VOLUME_RESIZE, cmd, STORAGE_TIMEOUT).await
    }

    /// Replace a volume file with a copy of a snapshot.
    pub async fn revert_volume(&self, cmd: &rzstack_api::agent::VolumeRevertCmd) -> Result<VolumeInfo, AgentError> {
        self.command(rzstack_api::agent::PATH_VOLUME_REVERT, cmd, STORAGE_TIMEOUT).await
    }
}

/// A stop's grace period plus time for the forced stop.
fn stop_timeout(cmd: &VmStopCmd) -> Duration {
    Duration::from_secs(cmd.grace_secs()) + REQUEST_TIMEOUT
}

/// The agent of a host, from its row: the simulator for Simulator hosts, else the KVM agent
/// at the host's management IP with its password as the token.
pub async fn agent_for_host(db: &crate::db::Db, host_uuid: &str) -> crate::error::Result<Box<dyn HostAgent>> {
    use crate::db::Val;
    use sqlx::Row;
    let row = db
        .fetch_optional(
            "SELECT hypervisor_type, management_ip, cpu_capacity, memory_capacity, architecture, password FROM host \
             WHERE uuid = $1",
            &[Val::from(host_uuid)],
        )
        .await?
        .ok_or_else(|| {
            crate::error::Error::not_found(format!("host[uuid:{host_uuid}] is not found, it may have been deleted"))
        })?;
    let hypervisor: String = row.try_get(0)?;
    let ip: String = row.try_get(1)?;
    if hypervisor == "Simulator" {
        let cpu: Option<i64> = row.try_get(2)?;
        let mem: Option<i64> = row.try_get(3)?;
        let arch: Option<String> = row.try_get(4)?;
        return Ok(Box::new(SimulatorAgent {
            cpu_capacity: cpu.unwrap_or(1_000_000_000),
            memory_capacity: mem.unwrap_or(1_000_000_000),
            architecture: arch.unwrap_or_else(|| "x86_64".into()),
        }));
    }
    let password: Option<String> = row.try_get(5)?;
    Ok(Box::new(KvmAgentClient::new(&ip, password.as_deref().unwrap_or_default())))
}

#[cfg(test)]
#[path = "hostagent_test.rs"]
mod tests;
