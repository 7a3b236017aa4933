//! Hosts (upstream `HostVO` + `HostCapacityVO`, `KVMHostVO`, `SimulatorHostVO`): add (KVM
//! through its agent, simulator), update, change state, reconnect, delete, query, and the
//! CPU/memory capacity report.
//!
//! Capacity follows upstream: `totalCpu = cpuNum × host.cpu.overProvisioning.ratio`,
//! `availableCpu/availableMemory = total − used by VMs`. The per-host reserved memory
//! (`kvm.reservedMemory` for KVM hosts, nothing for simulator hosts) is not taken out of the
//! host's own numbers: it is subtracted where capacity is judged, by GetCpuMemoryCapacity and
//! by [`reserve`] (the one-statement allocation the VM code uses).

use crate::api::{boxed, ApiDef, Msg, Reply, HOURS};
use crate::db::{is_unique_violation, Val, WriteTx};
use crate::error::{Error, Result};
use crate::globals;
use crate::hostagent::{
    AgentError, ConnectCmd, HostAgent, HostFacts, KvmAgentClient, NetworkReleaseCmd, SimulatorAgent, VmDestroyCmd,
    VolumeDeleteCmd, PROTOCOL_VERSION,
};
use crate::params::Param;
use crate::query::{self, field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use rzstack_api::agent::DhcpRelease;
use rzstack_api::codes::{self, Code};
use rzstack_api::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

pub const HOST_1002: Code = Code { code: "HOST.1002", description: "Unable to reconnect host" };
pub const HOST_1003: Code = Code { code: "HOST.1003", description: "An error happened when connecting to host" };

fn host_class(row: &Map<String, Value>) -> &'static str {
    match row.get("hypervisorType").and_then(Value::as_str) {
        Some("KVM") => "org.zstack.kvm.KVMHostInventory",
        Some("Simulator") => "org.zstack.header.simulator.SimulatorHostInventory",
        _ => "org.zstack.header.host.HostInventory",
    }
}

pub static HOST: ResourceDef = ResourceDef {
    inventory: "HostInventory",
    vo: "HostVO",
    class: "org.zstack.header.host.HostInventory",
    table: "host",
    fields: &[
        field("zoneUuid", "zone_uuid", FType::Str),
        field("name", "name", FType::Str),
        field("uuid", "uuid", FType::Str),
        field("clusterUuid", "cluster_uuid", FType::Str),
        field("description", "description", FType::Str),
        field("managementIp", "management_ip", FType::Str),
        field("hypervisorType", "hypervisor_type", FType::Str),
        field("state", "state", FType::Str),
        field("status", "status", FType::Str),
        field("totalCpuCapacity", "total_cpu", FType::Int),
        field("availableCpuCapacity", "available_cpu", FType::Int),
        field("cpuSockets", "cpu_sockets", FType::Int),
        field("totalMemoryCapacity", "total_memory", FType::Int),
        field("availableMemoryCapacity", "available_memory", FType::Int),
        field("cpuNum", "cpu_num", FType::Int),
        field("architecture", "architecture", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        // KVMHostInventory
        field("username", "username", FType::Str),
        field("sshPort", "ssh_port", FType::Int),
        field("osDistribution", "os_distribution", FType::Str),
        field("osRelease", "os_release", FType::Str),
        field("osVersion", "os_version", FType::Str),
        // rzstack extension (no upstream field): the accelerator the host's QEMU uses, kvm or tcg.
        field("accelerator", "accelerator", FType::Str),
        // SimulatorHostInventory
        field("memoryCapacity", "memory_capacity", FType::Int),
        field("cpuCapacity", "cpu_capacity", FType::Int),
    ],
    children: &[],
    class_of: Some(host_class),
    order: "t.create_date, t.uuid",
    tag_type: Some("HostVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &HOST, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&HOST, inv)),
        None => Err(Error::not_found(format!("host[uuid:{uuid}] is not found, it may have been deleted"))),
    }
}

/// Upstream `NetworkUtils.isIpv4Address || isHostname`.
fn valid_management_ip(s: &str) -> bool {
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    if s.is_empty() || s.len() > 253 || s.split('.').all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

fn duplicate_ip(ip: &str) -> Error {
    Error::argerr(format!("there has been a host having managementIp[{ip}]"))
}

/// The CPU over-provisioning ratio in force.
fn cpu_ratio(app: &App) -> i64 {
    app.globals.get_i64(&globals::HOST_CPU_OVER_PROVISIONING_RATIO).max(1)
}

/// Memory kept back on hosts of `hypervisor_type` (upstream: kvm.reservedMemory for KVM,
/// nothing for simulator hosts).
pub fn reserved_memory(app: &App, hypervisor_type: &str) -> i64 {
    if hypervisor_type != "KVM" {
        return 0;
    }
    super::global_config::parse_size(&app.globals.get(&globals::KVM_RESERVED_MEMORY)).unwrap_or(1 << 30)
}

struct ClusterInfo {
    zone_uuid: String,
    hypervisor_type: String,
    architecture: Option<String>,
}

async fn cluster_info(app: &App, uuid: &str) -> Result<ClusterInfo> {
    let row = app
        .db
        .fetch_optional(
            "SELECT zone_uuid, hypervisor_type, architecture FROM cluster WHERE uuid = $1",
            &[Val::from(uuid)],
        )
        .await?
        .ok_or_else(|| Error::argerr(format!("cluster[uuid:{uuid}] is not existing")))?;
    Ok(ClusterInfo { zone_uuid: row.try_get(0)?, hypervisor_type: row.try_get(1)?, architecture: row.try_get(2)? })
}

fn connect_error(uuid: &str, ip: &str, url: &str, e: &AgentError) -> Error {
    let cause = ErrorCode::new(
        codes::SYS_1006,
        format!("unable to connect to kvm host[uuid:{uuid}, ip:{ip}, url:{url}], because {e}"),
    );
    Error::Api(
        ErrorCode::new(HOST_1003, format!("connection error for KVM host[uuid:{uuid}, ip:{ip}], because {e}"))
            .with_cause(cause),
    )
}

/// Connect through `agent`; HOST.1003 naming the host and the reason on failure.
async fn connect(app: &App, agent: &dyn HostAgent, uuid: &str, ip: &str) -> Result<HostFacts> {
    let cmd = ConnectCmd {
        version: PROTOCOL_VERSION,
        host_uuid: uuid.to_string(),
        management_node_uuid: app.mn_uuid.clone(),
    };
    agent.connect(&cmd).await.map_err(|e| connect_error(uuid, ip, &agent.url(), &e))
}

/// What differs between AddKVMHost and AddSimulatorHost.
enum NewHost {
    Kvm { username: String, password: String, ssh_port: i64 },
    Simulator { cpu_capacity: i64, memory_capacity: i64 },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddHost {
    name: String,
    description: Option<String>,
    management_ip: String,
    cluster_uuid: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddKvm {
    username: String,
    password: String,
    ssh_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddSimulator {
    cpu_capacity: Option<i64>,
    memory_capacity: Option<i64>,
}

/// Upstream's default capacities of a simulator host.
const SIMULATOR_DEFAULT_CAPACITY: i64 = 1_000_000_000;

async fn add_kvm_host(app: App, msg: Msg) -> Result<Reply> {
    let k: AddKvm = msg.parse()?;
    let kind = NewHost::Kvm { username: k.username, password: k.password, ssh_port: k.ssh_port.unwrap_or(22) };
    add_host(app, msg, kind).await
}

async fn add_simulator_host(app: App, msg: Msg) -> Result<Reply> {
    let s: AddSimulator = msg.parse()?;
    let kind = NewHost::Simulator {
        cpu_capacity: s.cpu_capacity.unwrap_or(SIMULATOR_DEFAULT_CAPACITY),
        memory_capacity: s.memory_capacity.unwrap_or(SIMULATOR_DEFAULT_CAPACITY),
    };
    add_host(app, msg, kind).await
}

/// Add a host: checks, connect to its agent (no row exists until it answers, so a failed add
/// leaves nothing), then one transaction inserting the host with its capacity (and giving
/// the cluster its architecture if it had none).
async fn add_host(app: App, msg: Msg, kind: NewHost) -> Result<Reply> {
    let req: AddHost = msg.parse()?;
    let uuid = msg.resource_uuid();
    let ip = req.management_ip.clone();
    if msg.replay
        && app.db.fetch_optional("SELECT 1 FROM host WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?.is_some()
    {
        return reply(&app, &uuid).await;
    }
    if !valid_management_ip(&ip) {
        return Err(Error::argerr(format!("managementIp[{ip}] is neither an IPv4 address nor a valid hostname")));
    }
    let existing: Option<String> = app
        .db
        .fetch_optional("SELECT hypervisor_type FROM host WHERE management_ip = $1", &[Val::from(ip.as_str())])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    if let Some(hv) = existing {
        if hv == "KVM" && matches!(kind, NewHost::Kvm { .. }) {
            return Err(Error::argerr(format!("there has been a kvm host having management ip[{ip}]")));
        }
        return Err(duplicate_ip(&ip));
    }
    let cluster = cluster_info(&app, &req.cluster_uuid).await?;
    let expected = match kind {
        NewHost::Kvm { .. } => "KVM",
        NewHost::Simulator { .. } => "Simulator",
    };
    if cluster.hypervisor_type != expected {
        return Err(Error::argerr(format!(
            "cannot add a {expected} host to cluster[uuid:{}] whose hypervisorType is {}",
            req.cluster_uuid, cluster.hypervisor_type
        )));
    }

    let facts = match &kind {
        // The agent's token is the host's password (README, "Host agent").
        NewHost::Kvm { password, .. } => connect(&app, &KvmAgentClient::new(&ip, password), &uuid, &ip).await?,
        NewHost::Simulator { cpu_capacity, memory_capacity } => {
            let agent = SimulatorAgent {
                cpu_capacity: *cpu_capacity,
                memory_capacity: *memory_capacity,
                architecture: cluster.architecture.clone().unwrap_or_else(|| "x86_64".to_string()),
            };
            connect(&app, &agent, &uuid, &ip).await?
        }
    };
    if let Some(arch) = &cluster.architecture {
        if *arch != facts.architecture {
            return Err(Error::operr(format!(
                "cluster[uuid:{}]'s architecture is {arch}, not match the host[name:{}, ip:{ip}] architecture {}",
                req.cluster_uuid, req.name, facts.architecture
            )));
        }
    }

    let total_cpu = facts.cpu_num * cpu_ratio(&app);
    let now = now_ms();
    let (username, password, ssh_port, cpu_cap, mem_cap) = match kind {
        NewHost::Kvm { username, password, ssh_port } => (Some(username), Some(password), Some(ssh_port), None, None),
        NewHost::Simulator { cpu_capacity, memory_capacity } => {
            (None, None, None, Some(cpu_capacity), Some(memory_capacity))
        }
    };
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &HOST, &uuid, &msg).await? {
        let inserted = tx
            .execute(
                "INSERT INTO host (uuid, zone_uuid, cluster_uuid, name, description, management_ip, hypervisor_type, \
                 state, status, total_cpu, available_cpu, cpu_sockets, total_memory, available_memory, \
                 total_physical_memory, available_physical_memory, cpu_num, architecture, cpu_model_name, \
                 hypervisor_version, accelerator, agent_version, username, password, ssh_port, os_distribution, \
                 os_release, os_version, cpu_capacity, memory_capacity, create_date, last_op_date) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'Enabled', 'Connected', $8, $8, $9, $10, $10, $10, $10, $11, \
                 $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $25)",
                &[
                    Val::from(uuid.as_str()),
                    Val::from(cluster.zone_uuid.as_str()),
                    Val::from(req.cluster_uuid.as_str()),
                    Val::from(req.name.as_str()),
                    Val::from(req.description),
                    Val::from(ip.as_str()),
                    Val::from(expected),
                    Val::I(total_cpu),
                    Val::I(facts.cpu_sockets),
                    Val::I(facts.memory_bytes),
                    Val::I(facts.cpu_num),
                    Val::from(facts.architecture.as_str()),
                    Val::from(facts.cpu_model_name),
                    Val::from(facts.hypervisor_version),
                    Val::from(facts.accelerator),
                    Val::I(PROTOCOL_VERSION as i64),
                    Val::from(username),
                    Val::from(password),
                    Val::from(ssh_port),
                    Val::from(facts.os_distribution),
                    Val::from(facts.os_release),
                    Val::from(facts.os_version),
                    Val::from(cpu_cap),
                    Val::from(mem_cap),
                    Val::I(now),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(duplicate_ip(&ip)),
            Err(e) => return Err(e),
        }
        // The first host decides a cluster's architecture; a concurrent add of another
        // architecture loses here.
        tx.execute(
            "UPDATE cluster SET architecture = $1, last_op_date = $2 WHERE uuid = $3 AND architecture IS NULL",
            &[Val::from(facts.architecture.as_str()), Val::I(now), Val::from(req.cluster_uuid.as_str())],
        )
        .await?;
        let arch: Option<String> = tx
            .fetch_optional("SELECT architecture FROM cluster WHERE uuid = $1", &[Val::from(req.cluster_uuid.as_str())])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten();
        if arch.as_deref() != Some(facts.architecture.as_str()) {
            return Err(Error::operr(format!(
                "cluster[uuid:{}]'s architecture is {}, not match the host[name:{}, ip:{ip}] architecture {}",
                req.cluster_uuid,
                arch.unwrap_or_default(),
                req.name,
                facts.architecture
            )));
        }
        super::own(&mut tx, &uuid, HOST.vo, msg.account_uuid()).await?;
        super::primary_storage::local_storage_host_joined(&mut tx, &uuid).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

/// The row's agent: the simulator from its stored capacities, else the KVM agent client.
struct Agentish {
    hypervisor_type: String,
    ip: String,
    cpu_capacity: Option<i64>,
    memory_capacity: Option<i64>,
    architecture: Option<String>,
    password: Option<String>,
}

async fn load_agentish(app: &App, uuid: &str) -> Result<Agentish> {
    let row = app
        .db
        .fetch_optional(
            "SELECT hypervisor_type, management_ip, cpu_capacity, memory_capacity, architecture, password FROM host \
             WHERE uuid = $1",
            &[Val::from(uuid)],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("host[uuid:{uuid}] is not found, it may have been deleted")))?;
    Ok(Agentish {
        hypervisor_type: row.try_get(0)?,
        ip: row.try_get(1)?,
        cpu_capacity: row.try_get(2)?,
        memory_capacity: row.try_get(3)?,
        architecture: row.try_get(4)?,
        password: row.try_get(5)?,
    })
}

/// Connect again to a host and record its status (Connected, or Disconnected with the error).
/// On success the totals follow the facts, keeping what VMs use.
async fn reconnect(app: &App, uuid: &str) -> Result<()> {
    let a = load_agentish(app, uuid).await?;
    app.db
        .execute(
            "UPDATE host SET status = 'Connecting', last_op_date = $1 WHERE uuid = $2",
            &[Val::I(now_ms()), Val::from(uuid)],
        )
        .await?;
    let facts = if a.hypervisor_type == "Simulator" {
        let agent = SimulatorAgent {
            cpu_capacity: a.cpu_capacity.unwrap_or(SIMULATOR_DEFAULT_CAPACITY),
            memory_capacity: a.memory_capacity.unwrap_or(SIMULATOR_DEFAULT_CAPACITY),
            architecture: a.architecture.clone().unwrap_or_else(|| "x86_64".into()),
        };
        connect(app, &agent, uuid, &a.ip).await
    } else {
        connect(app, &KvmAgentClient::new(&a.ip, a.password.as_deref().unwrap_or_default()), uuid, &a.ip).await
    };
    let now = now_ms();
    match facts {
        Ok(f) => {
            let total_cpu = f.cpu_num * cpu_ratio(app);
            app.db
                .execute(
                    "UPDATE host SET status = 'Connected', \
                     available_cpu = available_cpu + ($1 - total_cpu), total_cpu = $1, cpu_num = $2, cpu_sockets = $3, \
                     available_memory = available_memory + ($4 - total_memory), total_memory = $4, \
                     available_physical_memory = available_physical_memory + ($4 - total_physical_memory), \
                     total_physical_memory = $4, cpu_model_name = $5, hypervisor_version = $6, accelerator = $7, \
                     last_op_date = $8 WHERE uuid = $9",
                    &[
                        Val::I(total_cpu),
                        Val::I(f.cpu_num),
                        Val::I(f.cpu_sockets),
                        Val::I(f.memory_bytes),
                        Val::from(f.cpu_model_name),
                        Val::from(f.hypervisor_version),
                        Val::from(f.accelerator),
                        Val::I(now),
                        Val::from(uuid),
                    ],
                )
                .await?;
            Ok(())
        }
        Err(e) => {
            app.db
                .execute(
                    "UPDATE host SET status = 'Disconnected', last_op_date = $1 WHERE uuid = $2",
                    &[Val::I(now), Val::from(uuid)],
                )
                .await?;
            Err(e)
        }
    }
}

async fn reconnect_host(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    if let Err(e) = reconnect(&app, &uuid).await {
        let inner = e.to_error_code();
        return Err(Error::Api(ErrorCode::new(HOST_1002, inner.details().to_string()).with_cause(inner)));
    }
    reply(&app, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateHost {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
    management_ip: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ssh_port: Option<i64>,
}

async fn update_host(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateHost = msg.parse()?;
    if let Some(ip) = &req.management_ip {
        let taken = app
            .db
            .fetch_optional("SELECT 1 FROM host WHERE management_ip = $1", &[Val::from(ip.as_str())])
            .await?
            .is_some();
        if taken {
            return Err(duplicate_ip(ip));
        }
    }
    let r = app
        .db
        .execute(
            "UPDATE host SET name = COALESCE($1, name), description = COALESCE($2, description), \
             management_ip = COALESCE($3, management_ip), username = COALESCE($4, username), \
             password = COALESCE($5, password), ssh_port = COALESCE($6, ssh_port), last_op_date = $7 WHERE uuid = $8",
            &[
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.management_ip.clone()),
                Val::from(req.username),
                Val::from(req.password),
                Val::from(req.ssh_port),
                Val::I(now_ms()),
                Val::from(req.uuid.as_str()),
            ],
        )
        .await;
    match r {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(duplicate_ip(req.management_ip.as_deref().unwrap_or(""))),
        Err(e) => return Err(e),
    }
    reply(&app, &req.uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeHostState {
    uuid: String,
    state_event: String,
}

/// Upstream's host state machine (`HostState`): the next state for an event, if any.
fn next_state(current: &str, event: &str) -> Option<&'static str> {
    match (current, event) {
        (_, "enable") => Some("Enabled"),
        (_, "disable") => Some("Disabled"),
        ("Enabled" | "Disabled" | "PreMaintenance", "preMaintain") => Some("PreMaintenance"),
        ("PreMaintenance", "maintain") => Some("Maintenance"),
        _ => None,
    }
}

async fn change_host_state(app: App, msg: Msg) -> Result<Reply> {
    let req: ChangeHostState = msg.parse()?;
    let event = req.state_event.to_ascii_lowercase();
    let row = app
        .db
        .fetch_optional("SELECT state, status FROM host WHERE uuid = $1", &[Val::from(req.uuid.as_str())])
        .await?
        .ok_or_else(|| Error::not_found(format!("host[uuid:{}] is not found", req.uuid)))?;
    let (state, status): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    let set = |s: &'static str| {
        let app = app.clone();
        let uuid = req.uuid.clone();
        async move {
            app.db
                .execute(
                    "UPDATE host SET state = $1, last_op_date = $2 WHERE uuid = $3",
                    &[Val::from(s), Val::I(now_ms()), Val::from(uuid.as_str())],
                )
                .await
        }
    };
    if event == "maintain" {
        if status != "Connected" {
            return Err(Error::operr(format!(
                "can not maintain host[uuid:{}, status:{status}]which is not Connected",
                req.uuid
            )));
        }
        // maintain = preMaintain (migrate VMs away) then maintain.
        let Some(pre) = next_state(&state, "preMaintain") else {
            return Err(Error::code(
                codes::SYS_1005,
                format!("cannot find next state for current state[{state}] on transaction event[preMaintain]"),
            ));
        };
        set(pre).await?;
        set("Maintenance").await?;
    } else {
        let next = next_state(&state, &event).unwrap_or("Enabled");
        set(next).await?;
        let leaving_maintenance = matches!(state.as_str(), "Maintenance" | "PreMaintenance") && next != "Maintenance";
        if leaving_maintenance {
            // Out of maintenance: reconnect; a failure only shows in the host's status.
            if let Err(e) = reconnect(&app, &req.uuid).await {
                tracing::warn!(host = %req.uuid, error = %e, "reconnect after maintenance failed");
            }
        }
    }
    reply(&app, &req.uuid).await
}

/// DeleteHost: the rows in one transaction ([`delete_one`]); then, for a KVM host, its agent
/// is asked (best effort) to end what the deletion leaves without a manager: the QEMU of every
/// VM stopped or deleted with the host, their taps and DHCP leases, the volume and snapshot
/// files whose rows went with the host's LocalStorage (upstream: the host's VMs get a
/// StopVmInstanceMsg whose failure does not stop the deletion). An agent that does not answer
/// does not fail the deletion: the rows are already committed, and the work, recorded in the
/// same transaction (`host_cleanup`), is retried later ([`recover_cleanups`]).
async fn delete_host(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let cleanups = HostCleanups::for_hosts(&mut tx, "SELECT uuid FROM host WHERE uuid = $1", &uuid).await?;
    delete_one(&mut tx, &uuid).await?;
    tx.commit().await?;
    cleanups.run(&app).await;
    Ok(Reply::empty())
}

/// The agent work a deletion of KVM hosts leaves to do once its transaction is committed
/// (see [`delete_host`]; [`delete_for_cluster`] itself changes only rows). Each host's work is
/// also written, in the deleting transaction, as a `host_cleanup` row (migration 16), deleted
/// once its agent has done it: a crash of the node between the commit and the agent calls
/// leaves the row, run again at the next start or by the periodic retry of any node sharing
/// the database ([`recover_cleanups`]).
#[derive(Default)]
pub struct HostCleanups(Vec<AgentCleanup>);

impl HostCleanups {
    /// Read in the deleting transaction, before [`delete_for_cluster`] changes any row.
    pub async fn for_cluster(tx: &mut WriteTx, cluster_uuid: &str) -> Result<HostCleanups> {
        Self::for_hosts(tx, "SELECT uuid FROM host WHERE cluster_uuid = $1 ORDER BY uuid", cluster_uuid).await
    }

    /// The same for every host of a zone (the zone deletion cascade).
    pub async fn for_zone(tx: &mut WriteTx, zone_uuid: &str) -> Result<HostCleanups> {
        Self::for_hosts(tx, "SELECT uuid FROM host WHERE zone_uuid = $1 ORDER BY uuid", zone_uuid).await
    }

    /// The hosts `sql` selects with `key` as `$1`; each one's work recorded in `tx`.
    async fn for_hosts(tx: &mut WriteTx, sql: &str, key: &str) -> Result<HostCleanups> {
        let mut all = Vec::new();
        for r in tx.fetch_all(sql, &[Val::from(key)]).await? {
            if let Some(c) = agent_cleanup(tx, &r.try_get::<String, _>(0)?).await? {
                c.record(tx).await?;
                all.push(c);
            }
        }
        Ok(HostCleanups(all))
    }

    /// After the commit: each host's agent at the same time (a dead one costs at most one
    /// call limit); the rows of the work done are deleted, the others stay for a retry.
    pub async fn run(self, app: &App) {
        futures::future::join_all(self.0.into_iter().map(|c| c.run_claimed(app))).await;
    }
}

/// How long one agent call of a host deletion may take (the deletion is already committed).
const CLEANUP_CALL_LIMIT: Duration = Duration::from_secs(10);
/// How often every node retries the pending `host_cleanup` rows.
const CLEANUP_RETRY_EVERY: Duration = Duration::from_secs(30);
/// A claim older than this is taken over by another node (its node died while running the
/// row; a run takes at most one call limit per VM, file and the network release).
const CLEANUP_CLAIM_STALE_MS: i64 = 10 * 60 * 1000;
/// Our choice: a row still pending a day after the deletion is dropped with a warning (the
/// host is taken as gone for good; about 2880 attempts at the retry interval).
const CLEANUP_MAX_AGE_MS: i64 = 24 * 3600 * 1000;

/// What a deleted host's agent must do, as kept in `host_cleanup.work` (JSON).
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CleanupWork {
    /// VMs whose QEMU may still run there.
    vms: Vec<String>,
    /// Taps and DHCP leases of the VMs that ran there (stopped ones keep theirs for the next start).
    network: NetworkReleaseCmd,
    /// Volume and snapshot files on the host's LocalStorage whose rows are deleted.
    files: Vec<String>,
}

/// What a deleted KVM host's agent is asked to do once the rows are gone (one `host_cleanup` row).
struct AgentCleanup {
    /// The `host_cleanup` row.
    id: String,
    host: String,
    ip: String,
    token: String,
    work: CleanupWork,
}

/// Read, in the deletion's transaction and before any row changes, what [`AgentCleanup`] must
/// do for host `uuid`. None for simulator hosts and unknown uuids.
async fn agent_cleanup(tx: &mut WriteTx, uuid: &str) -> Result<Option<AgentCleanup>> {
    let h = Val::from(uuid);
    let Some(row) = tx
        .fetch_optional(
            "SELECT management_ip, password FROM host WHERE uuid = $1 AND hypervisor_type = 'KVM'",
            std::slice::from_ref(&h),
        )
        .await?
    else {
        return Ok(None);
    };
    let ip: String = row.try_get(0)?;
    let token: Option<String> = row.try_get(1)?;
    // the VMs [`delete_one`] stops, and those it deletes with their root volume (any state)
    let local_roots = "SELECT v.vm_instance_uuid FROM volume v JOIN local_storage_resource_ref r \
         ON r.resource_uuid = v.uuid AND r.resource_type = 'VolumeVO' \
         WHERE r.host_uuid = $1 AND v.type = 'Root' AND v.vm_instance_uuid IS NOT NULL";
    let mut vms = Vec::new();
    for r in tx
        .fetch_all(
            &format!(
                "SELECT uuid FROM vm_instance WHERE (host_uuid = $1 AND state IN ('Running', 'Unknown', 'Crashed', \
                 'Paused')) OR (host_uuid = $1 AND uuid IN ({local_roots})) ORDER BY uuid"
            ),
            std::slice::from_ref(&h),
        )
        .await?
    {
        vms.push(r.try_get::<String, _>(0)?);
    }
    // their NICs, and those of the stopped VMs that ran there last (their taps stayed)
    let mut network = NetworkReleaseCmd { version: PROTOCOL_VERSION, ..Default::default() };
    for r in tx
        .fetch_all(
            &format!(
                "SELECT n.vm_instance_uuid, n.device_id, n.mac, n.l3_network_uuid FROM vm_nic n \
                 JOIN vm_instance v ON v.uuid = n.vm_instance_uuid \
                 WHERE (v.host_uuid = $1 AND (v.state IN ('Running', 'Unknown', 'Crashed', 'Paused') \
                 OR v.uuid IN ({local_roots}))) OR (v.host_uuid IS NULL AND v.last_host_uuid = $1) \
                 ORDER BY n.vm_instance_uuid, n.device_id"
            ),
            std::slice::from_ref(&h),
        )
        .await?
    {
        let vm: String = r.try_get(0)?;
        let device: Option<i64> = r.try_get(1)?;
        let mac: Option<String> = r.try_get(2)?;
        let l3: Option<String> = r.try_get(3)?;
        if let Some(device) = device {
            network.taps.push(super::vm::tap_name(&vm, device));
        }
        if let (Some(mac), Some(l3)) = (mac, l3) {
            match network.leases.iter_mut().find(|l| l.l3_uuid == l3) {
                Some(l) => l.macs.push(mac),
                None => network.leases.push(DhcpRelease { l3_uuid: l3, macs: vec![mac] }),
            }
        }
    }
    // the files whose rows [`drop_local_storage_files`] deletes
    let mut files = Vec::new();
    for r in tx
        .fetch_all(
            "SELECT v.install_path FROM volume v JOIN local_storage_resource_ref r ON r.resource_uuid = v.uuid \
             AND r.resource_type = 'VolumeVO' WHERE r.host_uuid = $1 \
             UNION SELECT s.primary_storage_install_path FROM volume_snapshot s JOIN volume v ON v.uuid = s.volume_uuid \
             JOIN local_storage_resource_ref r ON r.resource_uuid = v.uuid AND r.resource_type = 'VolumeVO' \
             WHERE r.host_uuid = $1 \
             UNION SELECT s.primary_storage_install_path FROM volume_snapshot s JOIN local_storage_resource_ref r \
             ON r.resource_uuid = s.uuid AND r.resource_type = 'VolumeSnapshotVO' WHERE r.host_uuid = $1",
            std::slice::from_ref(&h),
        )
        .await?
    {
        if let Some(p) = r.try_get::<Option<String>, _>(0)?.filter(|p| p.starts_with('/')) {
            files.push(p);
        }
    }
    files.sort();
    Ok(Some(AgentCleanup {
        id: crate::util::new_uuid(),
        host: uuid.to_string(),
        ip,
        token: token.unwrap_or_default(),
        work: CleanupWork { vms, network, files },
    }))
}

impl AgentCleanup {
    /// Write the row, in the deletion's transaction.
    async fn record(&self, tx: &mut WriteTx) -> Result<()> {
        let work = serde_json::to_string(&self.work).map_err(|e| Error::Internal(e.to_string()))?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO host_cleanup (uuid, host_uuid, management_ip, token, work, create_date, attempts, \
             last_error, last_op_date, claimed_by, claimed_at) VALUES ($1, $2, $3, $4, $5, $6, 0, NULL, $6, NULL, NULL)",
            &[
                Val::from(self.id.as_str()),
                Val::from(self.host.as_str()),
                Val::from(self.ip.as_str()),
                Val::from(self.token.as_str()),
                Val::from(work),
                Val::I(now),
            ],
        )
        .await?;
        Ok(())
    }

    /// Claim the row (one statement: free, or claimed long ago by a node that died), run it,
    /// then delete it when done or release it with one more attempt and the error. Nothing
    /// when another node holds it.
    async fn run_claimed(self, app: &App) {
        let now = now_ms();
        let me = app.mn_uuid.as_str();
        let claimed = app
            .db
            .execute(
                "UPDATE host_cleanup SET claimed_by = $1, claimed_at = $2 WHERE uuid = $3 \
                 AND (claimed_by IS NULL OR claimed_at < $4)",
                &[Val::from(me), Val::I(now), Val::from(self.id.as_str()), Val::I(now - CLEANUP_CLAIM_STALE_MS)],
            )
            .await;
        match claimed {
            Ok(1) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "deleted host's cleanup: cannot claim its row");
                return;
            }
        }
        let (id, host) = (self.id.clone(), self.host.clone());
        let done = match self.run().await {
            Ok(()) => app.db.execute("DELETE FROM host_cleanup WHERE uuid = $1", &[Val::from(id.as_str())]).await,
            Err(error) => {
                app.db
                    .execute(
                        "UPDATE host_cleanup SET attempts = attempts + 1, last_error = $1, last_op_date = $2, \
                         claimed_by = NULL, claimed_at = NULL WHERE uuid = $3 AND claimed_by = $4",
                        &[Val::from(error), Val::I(now_ms()), Val::from(id.as_str()), Val::from(me)],
                    )
                    .await
            }
        };
        if let Err(e) = done {
            tracing::warn!(host = %host, error = %e, "deleted host's cleanup: cannot update its row");
        }
    }

    /// One call within [`CLEANUP_CALL_LIMIT`]; an error when the agent cannot be reached (the
    /// rest is skipped: the row is retried). An agent's refusal only costs a warning.
    async fn call<T>(
        &self,
        agent: &KvmAgentClient,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, AgentError>>,
    ) -> std::result::Result<(), String> {
        let e = match tokio::time::timeout(CLEANUP_CALL_LIMIT, f).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => AgentError::Unreachable(format!("no answer within {} s", CLEANUP_CALL_LIMIT.as_secs())),
        };
        tracing::warn!(host = %self.host, agent = %agent.url(), error = %e, "deleting the host: {what} failed");
        match e {
            AgentError::Unreachable(_) => Err(format!("{what}: {e}")),
            _ => Ok(()),
        }
    }

    /// In order: end the QEMU processes, release the network, delete the files. Ok when the
    /// agent answered every call.
    async fn run(self) -> std::result::Result<(), String> {
        let agent = KvmAgentClient::new(&self.ip, &self.token);
        for vm in &self.work.vms {
            let cmd = VmDestroyCmd { version: PROTOCOL_VERSION, vm_uuid: vm.clone() };
            self.call(&agent, &format!("destroying vm[uuid:{vm}]"), agent.destroy_vm(&cmd)).await?;
        }
        let network = &self.work.network;
        if !network.taps.is_empty() || !network.leases.is_empty() {
            let what = "releasing the taps and DHCP leases of its VMs";
            self.call(&agent, what, agent.release_network(network)).await?;
        }
        for f in &self.work.files {
            let cmd = VolumeDeleteCmd { version: PROTOCOL_VERSION, install_path: f.clone() };
            self.call(&agent, &format!("deleting {f}"), agent.delete_volume(&cmd)).await?;
        }
        Ok(())
    }
}

/// Run the pending `host_cleanup` rows nobody holds. Rows older than [`CLEANUP_MAX_AGE_MS`]
/// are dropped with a warning. Returns how many rows were found.
async fn run_pending_cleanups(app: &App) -> Result<usize> {
    let now = now_ms();
    let rows = app
        .db
        .fetch_all(
            "SELECT uuid, host_uuid, management_ip, token, work, create_date, attempts, last_error FROM host_cleanup \
             WHERE claimed_by IS NULL OR claimed_at < $1 ORDER BY create_date, uuid",
            &[Val::I(now - CLEANUP_CLAIM_STALE_MS)],
        )
        .await?;
    let n = rows.len();
    let mut due = Vec::new();
    for r in rows {
        let id: String = r.try_get(0)?;
        let host: String = r.try_get(1)?;
        let created: i64 = r.try_get(5)?;
        if created < now - CLEANUP_MAX_AGE_MS {
            let attempts: i64 = r.try_get(6)?;
            let error: Option<String> = r.try_get(7)?;
            tracing::warn!(host = %host, attempts, error = ?error,
                "deleted host's cleanup dropped: its agent did not answer for a day (guests or files may remain there)");
            app.db
                .execute(
                    "DELETE FROM host_cleanup WHERE uuid = $1 AND (claimed_by IS NULL OR claimed_at < $2)",
                    &[Val::from(id.as_str()), Val::I(now - CLEANUP_CLAIM_STALE_MS)],
                )
                .await?;
            continue;
        }
        let work: String = r.try_get(4)?;
        let work = match serde_json::from_str::<CleanupWork>(&work) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "deleted host's cleanup dropped: unreadable work");
                app.db.execute("DELETE FROM host_cleanup WHERE uuid = $1", &[Val::from(id.as_str())]).await?;
                continue;
            }
        };
        let ip: String = r.try_get(2)?;
        let token: Option<String> = r.try_get(3)?;
        due.push(AgentCleanup { id, host, ip, token: token.unwrap_or_default(), work });
    }
    futures::future::join_all(due.into_iter().map(|c| c.run_claimed(app))).await;
    Ok(n)
}

/// At start, before the node serves: the rows this node held when it stopped (a crash
/// between a deletion's commit and the end of its agent calls) are released; then a task runs
/// the pending rows at once in the background (the node answers meanwhile), and again every
/// [`CLEANUP_RETRY_EVERY`] (on every node; each row is claimed by one node at a time).
pub async fn recover_cleanups(app: &App) -> Result<()> {
    let released = app
        .db
        .execute(
            "UPDATE host_cleanup SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = $1",
            &[Val::from(app.mn_uuid.as_str())],
        )
        .await?;
    if released > 0 {
        tracing::info!(rows = released, "deleted hosts' cleanups interrupted by the last stop are pending again");
    }
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            match run_pending_cleanups(&app).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pending = n, "ran the pending cleanups of deleted hosts"),
                Err(e) => tracing::warn!(error = %e, "cleanup round of deleted hosts failed"),
            }
            tokio::time::sleep(CLEANUP_RETRY_EVERY).await;
        }
    });
    Ok(())
}

async fn delete_one(tx: &mut WriteTx, uuid: &str) -> Result<()> {
    drop_local_storage_files(tx, uuid).await?;
    // the VMs still on it are stopped (upstream VmCascadeExtension: StopVmInstanceMsg for the
    // host's VMs, resource release failures ignored): rows only, its last host kept
    let stopped = tx
        .fetch_all(
            "UPDATE vm_instance SET state = 'Stopped', last_host_uuid = host_uuid, host_uuid = NULL, last_op_date = $1 \
             WHERE host_uuid = $2 AND state IN ('Running', 'Unknown', 'Crashed', 'Paused') RETURNING uuid",
            &[Val::I(now_ms()), Val::from(uuid)],
        )
        .await?;
    for r in stopped {
        crate::hostagent::simulate_destroy(&r.try_get::<String, _>(0)?);
    }
    tx.execute("DELETE FROM host WHERE uuid = $1", &[Val::from(uuid)]).await?;
    // its disk's LocalStorage files are gone with it: no ref may name a host that is not there
    tx.execute("DELETE FROM local_storage_resource_ref WHERE host_uuid = $1", &[Val::from(uuid)]).await?;
    super::primary_storage::local_storage_host_left(tx, uuid).await?;
    super::disown(tx, uuid).await
}

/// What deleting a host does to the files on its LocalStorage disk (upstream
/// `LocalStorageFactory.beforeDeleteHost` then `LocalStorageBase.deleteResourceRef`): every VM
/// whose root volume is there goes (upstream destroys it, then deletes its rows), every volume
/// there goes with its snapshots (data volumes: upstream DeleteVolumeMsg with the DBOnly policy;
/// the files are not touched), and so does every snapshot there. Rows only, in `tx`; the
/// capacity the volumes held goes back to the host's row, whose whole share then leaves the
/// storage with the host ([`super::primary_storage::local_storage_host_left`], as upstream);
/// the files themselves are deleted by the host's agent after the commit ([`HostCleanups`]).
async fn drop_local_storage_files(tx: &mut WriteTx, host: &str) -> Result<()> {
    let h = Val::from(host);
    let vms = tx
        .fetch_all(
            "SELECT DISTINCT v.vm_instance_uuid FROM volume v JOIN local_storage_resource_ref r \
             ON r.resource_uuid = v.uuid AND r.resource_type = 'VolumeVO' \
             WHERE r.host_uuid = $1 AND v.type = 'Root' AND v.vm_instance_uuid IS NOT NULL",
            std::slice::from_ref(&h),
        )
        .await?;
    let now = now_ms();
    for r in vms {
        let vm: String = r.try_get(0)?;
        let v = Val::from(vm.as_str());
        tx.execute(
            "DELETE FROM used_ip WHERE vm_nic_uuid IN (SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1)",
            std::slice::from_ref(&v),
        )
        .await?;
        let mut owned: Vec<String> = Vec::new();
        for q in
            ["SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1", "SELECT uuid FROM tpm WHERE vm_instance_uuid = $1"]
        {
            for n in tx.fetch_all(q, std::slice::from_ref(&v)).await? {
                owned.push(n.try_get(0)?);
            }
        }
        for o in &owned {
            super::tag::delete_for_resource(tx, o).await?;
            super::disown(tx, o).await?;
        }
        for q in [
            "DELETE FROM vm_nic WHERE vm_instance_uuid = $1",
            "DELETE FROM vm_cdrom WHERE vm_instance_uuid = $1",
            "DELETE FROM tpm WHERE vm_instance_uuid = $1",
            "DELETE FROM ssh_key_pair_ref WHERE resource_uuid = $1",
        ] {
            tx.execute(q, std::slice::from_ref(&v)).await?;
        }
        // its data volumes elsewhere stay, detached (those on this disk go below)
        tx.execute(
            "UPDATE volume SET vm_instance_uuid = NULL, device_id = NULL, last_vm_instance_uuid = $2, \
             last_detach_date = $1, last_op_date = $1 WHERE vm_instance_uuid = $2 AND type = 'Data'",
            &[Val::I(now), v.clone()],
        )
        .await?;
        tx.execute("DELETE FROM vm_instance WHERE uuid = $1", std::slice::from_ref(&v)).await?;
        super::tag::delete_for_resource(tx, &vm).await?;
        super::disown(tx, &vm).await?;
    }
    let vols = tx
        .fetch_all(
            "SELECT v.uuid, v.primary_storage_uuid, v.reserved_size FROM volume v JOIN local_storage_resource_ref r \
             ON r.resource_uuid = v.uuid AND r.resource_type = 'VolumeVO' WHERE r.host_uuid = $1",
            std::slice::from_ref(&h),
        )
        .await?;
    for r in vols {
        let vol: String = r.try_get(0)?;
        let ps: Option<String> = r.try_get(1)?;
        let reserved: i64 = r.try_get(2)?;
        let snaps =
            tx.fetch_all("SELECT uuid FROM volume_snapshot WHERE volume_uuid = $1", &[Val::from(vol.as_str())]).await?;
        for s in snaps {
            let s: String = s.try_get(0)?;
            super::tag::delete_for_resource(tx, &s).await?;
            super::disown(tx, &s).await?;
        }
        super::volume::forget_local_files(tx, &vol).await?;
        tx.execute("DELETE FROM volume_snapshot WHERE volume_uuid = $1", &[Val::from(vol.as_str())]).await?;
        let n = tx.execute("DELETE FROM volume WHERE uuid = $1", &[Val::from(vol.as_str())]).await?;
        if let (1, Some(ps)) = (n, ps) {
            tx.execute(
                "UPDATE primary_storage SET available_capacity = CASE WHEN available_capacity + $1 > total_capacity \
                 THEN total_capacity ELSE available_capacity + $1 END, last_op_date = $2 WHERE uuid = $3",
                &[Val::I(reserved), Val::I(now), Val::from(ps.as_str())],
            )
            .await?;
        }
        super::tag::delete_for_resource(tx, &vol).await?;
        super::disown(tx, &vol).await?;
    }
    // snapshots on this disk whose volume is elsewhere (or gone)
    let snaps = tx
        .fetch_all(
            "SELECT resource_uuid FROM local_storage_resource_ref WHERE host_uuid = $1 AND resource_type = 'VolumeSnapshotVO'",
            std::slice::from_ref(&h),
        )
        .await?;
    for s in snaps {
        let s: String = s.try_get(0)?;
        if tx.execute("DELETE FROM volume_snapshot WHERE uuid = $1", &[Val::from(s.as_str())]).await? == 1 {
            super::tag::delete_for_resource(tx, &s).await?;
            super::disown(tx, &s).await?;
        }
    }
    Ok(())
}

/// The cluster deletion cascade: delete every host of `cluster_uuid`, inside `tx`.
pub async fn delete_for_cluster(tx: &mut WriteTx, cluster_uuid: &str) -> Result<()> {
    let rows = tx.fetch_all("SELECT uuid FROM host WHERE cluster_uuid = $1", &[Val::from(cluster_uuid)]).await?;
    for r in rows {
        let uuid: String = r.try_get(0)?;
        delete_one(tx, &uuid).await?;
    }
    Ok(())
}

/// A new CPU over-provisioning ratio: every host's total CPU becomes `cpuNum × ratio`, its
/// available CPU moves by the same amount (what VMs use stays used).
pub async fn apply_cpu_ratio(tx: &mut WriteTx, ratio: i64) -> Result<()> {
    tx.execute(
        "UPDATE host SET available_cpu = available_cpu + (cpu_num * $1 - total_cpu), total_cpu = cpu_num * $1",
        &[Val::I(ratio)],
    )
    .await?;
    Ok(())
}

/// Take `cpu` and `memory` from a host in one statement, keeping the reserved memory free.
/// `Ok(false)` when the host is not Enabled+Connected or lacks the capacity.
pub async fn reserve(app: &App, tx: &mut WriteTx, host_uuid: &str, cpu: i64, memory: i64) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE host SET available_cpu = available_cpu - $1, available_memory = available_memory - $2 \
             WHERE uuid = $3 AND state = 'Enabled' AND status = 'Connected' AND available_cpu >= $1 \
             AND available_memory - (CASE WHEN hypervisor_type = 'KVM' THEN $4 ELSE 0 END) >= $2",
            &[Val::I(cpu), Val::I(memory), Val::from(host_uuid), Val::I(reserved_memory(app, "KVM"))],
        )
        .await?;
    Ok(n == 1)
}

/// Give back what [`reserve`] took.
pub async fn release(tx: &mut WriteTx, host_uuid: &str, cpu: i64, memory: i64) -> Result<()> {
    tx.execute(
        "UPDATE host SET \
         available_cpu = CASE WHEN available_cpu + $1 > total_cpu THEN total_cpu ELSE available_cpu + $1 END, \
         available_memory = CASE WHEN available_memory + $2 > total_memory THEN total_memory \
         ELSE available_memory + $2 END WHERE uuid = $3",
        &[Val::I(cpu), Val::I(memory), Val::from(host_uuid)],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetCpuMemoryCapacity {
    zone_uuids: Option<Vec<String>>,
    cluster_uuids: Option<Vec<String>>,
    host_uuids: Option<Vec<String>>,
    hypervisor_type: Option<String>,
    #[serde(default)]
    all: bool,
}

/// Upstream GetCpuMemoryCapacity: sums over Enabled+Connected hosts, grouped by the first
/// non-empty of hostUuids / clusterUuids / zoneUuids (all = every zone), each group's
/// reserved memory taken out of its available memory.
async fn get_cpu_memory_capacity(app: App, msg: Msg) -> Result<Reply> {
    let mut req: GetCpuMemoryCapacity = msg.parse()?;
    let nonempty = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    if !nonempty(&req.zone_uuids) && !nonempty(&req.cluster_uuids) && !nonempty(&req.host_uuids) && !req.all {
        return Err(Error::argerr(
            "zoneUuids, clusterUuids, hostUuids must at least have one be none-empty list, or all is set to true",
        ));
    }
    if req.all && !nonempty(&req.zone_uuids) {
        let rows = app.db.fetch_all("SELECT uuid FROM zone", &[]).await?;
        req.zone_uuids = Some(rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?);
        req.hypervisor_type = None;
    }
    let (col, uuids, resource_type) = if nonempty(&req.host_uuids) {
        ("uuid", req.host_uuids.unwrap_or_default(), "HostVO")
    } else if nonempty(&req.cluster_uuids) {
        ("cluster_uuid", req.cluster_uuids.unwrap_or_default(), "ClusterVO")
    } else if nonempty(&req.zone_uuids) {
        ("zone_uuid", req.zone_uuids.unwrap_or_default(), "ZoneVO")
    } else {
        // `all` with no zone at all: upstream answers an empty reply.
        return Ok(Reply::fields([
            ("success", Value::Bool(true)),
            ("totalCpu", json!(0)),
            ("availableCpu", json!(0)),
            ("totalMemory", json!(0)),
            ("availableMemory", json!(0)),
            ("managedCpuNum", json!(0)),
        ]));
    };
    let mut vals: Vec<Val> = uuids.iter().map(|u| Val::from(u.as_str())).collect();
    let phs: Vec<String> = (1..=vals.len()).map(|i| format!("${i}")).collect();
    let mut sql = format!(
        "SELECT {col}, hypervisor_type, CAST(SUM(total_cpu) AS BIGINT), CAST(SUM(available_cpu) AS BIGINT), \
         CAST(SUM(total_memory) AS BIGINT), CAST(SUM(available_memory) AS BIGINT), CAST(SUM(cpu_num) AS BIGINT), \
         CAST(COUNT(*) AS BIGINT) FROM host WHERE {col} IN ({}) AND state = 'Enabled' AND status = 'Connected'",
        phs.join(", ")
    );
    if let Some(hv) = &req.hypervisor_type {
        vals.push(Val::from(hv.as_str()));
        sql.push_str(&format!(" AND hypervisor_type = ${}", vals.len()));
    }
    sql.push_str(&format!(" GROUP BY {col}, hypervisor_type ORDER BY {col}"));
    let rows = app.db.fetch_all(&sql, &vals).await?;
    // element uuid → (total cpu, avail cpu, total mem, avail mem, cpu num)
    let mut elements: Vec<(String, [i64; 5])> = Vec::new();
    for r in rows {
        let key: String = r.try_get(0)?;
        let hv: String = r.try_get(1)?;
        let n: i64 = r.try_get(7)?;
        let get = |i: usize| -> Result<i64> { Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0)) };
        let reserved = reserved_memory(&app, &hv) * n;
        let add = [get(2)?, get(3)?, get(4)?, get(5)? - reserved, get(6)?];
        match elements.iter_mut().find(|(k, _)| *k == key) {
            Some((_, acc)) => acc.iter_mut().zip(add).for_each(|(a, b)| *a += b),
            None => elements.push((key, add)),
        }
    }
    let mut total = [0i64; 5];
    let mut data = Vec::new();
    for (key, mut e) in elements {
        e[3] = e[3].max(0);
        total.iter_mut().zip(e).for_each(|(a, b)| *a += b);
        data.push(json!({
            "resourceUuid": key,
            "totalCpu": e[0],
            "availableCpu": e[1],
            "totalMemory": e[2],
            "availableMemory": e[3],
            "managedCpuNum": e[4],
        }));
    }
    Ok(Reply::fields([
        ("success", Value::Bool(true)),
        ("totalCpu", json!(total[0])),
        ("availableCpu", json!(total[1])),
        ("totalMemory", json!(total[2])),
        ("availableMemory", json!(total[3])),
        ("managedCpuNum", json!(total[4])),
        ("capacityData", Value::Array(data)),
        ("resourceType", Value::from(resource_type)),
    ]))
}

/// The host tracker (upstream `HostTracker`): every `host.ping.interval` seconds, ping each
/// KVM host this node tracks, at most `host.ping.parallelismDegree` at once, each ping bounded
/// by `host.ping.timeout`. A Connected host whose pings fail `host.ping.maxFailure` times in a
/// row becomes Disconnected; a Disconnected host whose agent answers a ping again is
/// reconnected (Connected, facts refreshed). Simulator hosts are never pinged: they stay as
/// they are. Hosts being connected by an API (`Connecting`) are left alone for that round.
pub fn start_tracker(app: App) {
    tokio::spawn(async move {
        let mut failures: HashMap<String, i64> = HashMap::new();
        let mut last = std::time::Instant::now();
        loop {
            // Wake every second so a new interval takes effect without waiting out the old one.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let interval = app.globals.get_i64(&globals::HOST_PING_INTERVAL).max(1) as u64;
            if last.elapsed() < Duration::from_secs(interval) {
                continue;
            }
            last = std::time::Instant::now();
            if let Err(e) = track_once(&app, &mut failures).await {
                tracing::warn!(error = %e, "host ping round failed");
            }
        }
    });
}

/// A small stable hash (FNV-1a) spreading hosts over the live management nodes.
fn host_slot(uuid: &str, n: usize) -> usize {
    let h = uuid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % n.max(1) as u64) as usize
}

/// The KVM hosts this node tracks (uuid, status): each host belongs to exactly one of the
/// management nodes with a recent heart beat.
async fn tracked_hosts(app: &App) -> Result<Vec<(String, String)>> {
    let stale = now_ms() - 60_000;
    let nodes: Vec<String> = app
        .db
        .fetch_all("SELECT uuid FROM management_node WHERE heart_beat > $1 ORDER BY uuid", &[Val::I(stale)])
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let me = nodes.iter().position(|u| *u == app.mn_uuid);
    let rows = app
        .db
        .fetch_all(
            "SELECT uuid, status FROM host WHERE hypervisor_type = 'KVM' AND status IN ('Connected', 'Disconnected') \
             ORDER BY uuid",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let uuid: String = r.try_get(0)?;
        let status: String = r.try_get(1)?;
        if me.is_none_or(|i| host_slot(&uuid, nodes.len()) == i) {
            out.push((uuid, status));
        }
    }
    Ok(out)
}

/// One ping of one host, bounded by `timeout`.
async fn ping_host(app: &App, uuid: &str, timeout: Duration) -> std::result::Result<(), String> {
    let agent = crate::hostagent::agent_for_host(&app.db, uuid).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, agent.ping(uuid)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from {} within {} seconds", agent.url(), timeout.as_secs())),
    }
}

/// One round of the host tracker.
async fn track_once(app: &App, failures: &mut HashMap<String, i64>) -> Result<()> {
    use futures::StreamExt;
    let hosts = tracked_hosts(app).await?;
    failures.retain(|u, _| hosts.iter().any(|(h, _)| h == u));
    let timeout = Duration::from_secs(app.globals.get_i64(&globals::HOST_PING_TIMEOUT).max(1) as u64);
    let max_failure = app.globals.get_i64(&globals::HOST_PING_MAX_FAILURE).max(1);
    let parallel = app.globals.get_i64(&globals::HOST_PING_PARALLELISM_DEGREE).clamp(1, 10_000) as usize;
    let results: Vec<(String, String, std::result::Result<(), String>)> = futures::stream::iter(hosts)
        .map(|(uuid, status)| async move {
            let r = ping_host(app, &uuid, timeout).await;
            (uuid, status, r)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    for (uuid, status, r) in results {
        match (status.as_str(), r) {
            ("Connected", Ok(())) => {
                failures.remove(&uuid);
                if let Err(e) = super::vm::sync::sync_host(app, &uuid).await {
                    tracing::warn!(host = %uuid, error = %e, "reading the VM states of a host failed");
                }
            }
            ("Connected", Err(e)) => {
                let n = failures.entry(uuid.clone()).or_default();
                *n += 1;
                tracing::warn!(host = %uuid, failures = *n, error = %e, "host ping failed");
                if *n >= max_failure {
                    failures.remove(&uuid);
                    app.db
                        .execute(
                            "UPDATE host SET status = 'Disconnected', last_op_date = $1 \
                             WHERE uuid = $2 AND status = 'Connected'",
                            &[Val::I(now_ms()), Val::from(uuid.as_str())],
                        )
                        .await?;
                    tracing::warn!(host = %uuid, "host is Disconnected after {max_failure} failed pings");
                }
            }
            (_, Ok(())) => {
                failures.remove(&uuid);
                match reconnect(app, &uuid).await {
                    Ok(()) => tracing::info!(host = %uuid, "host answers again: reconnected"),
                    Err(e) => tracing::warn!(host = %uuid, error = %e, "reconnecting a host that answers failed"),
                }
            }
            (_, Err(_)) => {}
        }
    }
    Ok(())
}

const HOST_COMMON: [Param; 4] = [
    Param::str("name").required().max(255),
    Param::str("description").max(2048),
    Param::str("managementIp").required().no_empty_string(),
    Param::str("clusterUuid").required().resource(&super::cluster::CLUSTER),
];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("AddKVMHost", "/hosts/kvm")
        .timeout(3 * HOURS)
        .params(&[
            HOST_COMMON[0],
            HOST_COMMON[1],
            HOST_COMMON[2],
            HOST_COMMON[3],
            Param::str("username").required().max(255),
            Param::str("password").required().max(255).no_trim(),
            Param::int("sshPort").range(1, 65535),
        ])
        .handler(|a, m| boxed(add_kvm_host(a, m))),
    ApiDef::create("AddSimulatorHost", "/hosts/simulators")
        .params(&[
            HOST_COMMON[0],
            HOST_COMMON[1],
            HOST_COMMON[2],
            HOST_COMMON[3],
            Param::int("memoryCapacity"),
            Param::int("cpuCapacity"),
        ])
        .handler(|a, m| boxed(add_simulator_host(a, m))),
    ApiDef::query("QueryHost", "/hosts", &HOST).optional_paths(&["/hosts/{uuid}"]),
    ApiDef::action("UpdateHost", "/hosts/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&HOST),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("managementIp").max(255).no_empty_string(),
        ])
        .handler(|a, m| boxed(update_host(a, m))),
    ApiDef::action("UpdateKVMHost", "/hosts/kvm/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&HOST),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("managementIp").max(255).no_empty_string(),
            Param::str("username").max(255).no_empty_string(),
            Param::str("password").max(255).no_trim(),
            Param::int("sshPort").range(1, 65535),
        ])
        .handler(|a, m| boxed(update_host(a, m))),
    ApiDef::action("ChangeHostState", "/hosts/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&HOST),
            Param::str("stateEvent").required().values(&["enable", "disable", "maintain"]),
        ])
        .handler(|a, m| boxed(change_host_state(a, m))),
    ApiDef::action("ReconnectHost", "/hosts/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&HOST)])
        .handler(|a, m| boxed(reconnect_host(a, m))),
    ApiDef::delete("DeleteHost", "/hosts/{uuid}")
        // Upstream declares no resourceType here: an unknown uuid, well-formed or not,
        // simply succeeds (HostApiInterceptor).
        .params(&[Param::str("uuid").required(), Param::str("deleteMode").values(&["Permissive", "Enforcing"])])
        .handler(|a, m| boxed(delete_host(a, m))),
    ApiDef::get("GetCpuMemoryCapacity", "/hosts/capacities/cpu-memory")
        .params(&[
            Param::list("zoneUuids").resource(&super::zone::ZONE),
            Param::list("clusterUuids").resource(&super::cluster::CLUSTER),
            Param::list("hostUuids").resource(&HOST),
            Param::str("hypervisorType").values(&["KVM", "ESX"]),
            Param::bool("all"),
        ])
        .handler(|a, m| boxed(get_cpu_memory_capacity(a, m))),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_ips() {
        assert!(valid_management_ip("192.168.0.1"));
        assert!(valid_management_ip("host-1.example.com"));
        assert!(!valid_management_ip("300.1.1.1"));
        assert!(!valid_management_ip("a b"));
        assert!(!valid_management_ip("-bad"));
    }

    #[test]
    fn state_machine() {
        assert_eq!(next_state("Enabled", "preMaintain"), Some("PreMaintenance"));
        assert_eq!(next_state("PreMaintenance", "maintain"), Some("Maintenance"));
        assert_eq!(next_state("Maintenance", "preMaintain"), None);
        assert_eq!(next_state("Maintenance", "enable"), Some("Enabled"));
    }
}
