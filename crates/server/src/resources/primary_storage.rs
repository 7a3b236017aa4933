//! Primary storage (upstream `PrimaryStorageVO`): LocalStorage, NFS and simulator types;
//! add, update, change state, delete, query, attach to / detach from clusters.
//!
//! LocalStorage on this machine is a real directory: it is created when the storage is added
//! and its capacity is read from the file system that holds it. NFS storage cannot be
//! measured without mounting it (a host does that), so it is recorded Connected with zero
//! capacity until the host agent exists.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{field, FType, Refs, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;
use sqlx::Row;

use super::cluster::CLUSTER;
use super::host::HOST;

pub const LOCAL_STORAGE: &str = "LocalStorage";
pub const NFS: &str = "NFS";
pub const SIMULATOR: &str = "SimulatorPrimaryStorage";

static CLUSTER_REFS: Refs =
    Refs { table: "primary_storage_cluster_ref", fk: "primary_storage_uuid", value: "cluster_uuid" };

pub static PRIMARY_STORAGE: ResourceDef = ResourceDef {
    inventory: "PrimaryStorageInventory",
    vo: "PrimaryStorageVO",
    class: "org.zstack.header.storage.primary.PrimaryStorageInventory",
    table: "primary_storage",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("zoneUuid", "zone_uuid", FType::Str),
        field("name", "name", FType::Str),
        field("url", "url", FType::Str),
        field("description", "description", FType::Str),
        field("totalCapacity", "total_capacity", FType::Int),
        field("availableCapacity", "available_capacity", FType::Int),
        field("totalPhysicalCapacity", "total_physical_capacity", FType::Int),
        field("availablePhysicalCapacity", "available_physical_capacity", FType::Int),
        field("systemUsedCapacity", "system_used_capacity", FType::Int),
        field("type", "type", FType::Str),
        field("state", "state", FType::Str),
        field("status", "status", FType::Str),
        field("mountPath", "mount_path", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("attachedClusterUuids", "uuid", FType::Refs(&CLUSTER_REFS)),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("PrimaryStorageVO"),
};

/// Which host's disk holds a volume or snapshot file on a LocalStorage primary storage
/// (upstream `LocalStorageResourceRefVO`, one row per resource, written and deleted with the
/// volume / snapshot row). `resourceType` is the resource's VO name.
pub static LOCAL_STORAGE_RESOURCE_REF: ResourceDef = ResourceDef {
    inventory: "LocalStorageResourceRefInventory",
    vo: "LocalStorageResourceRefVO",
    class: "org.zstack.storage.primary.local.LocalStorageResourceRefInventory",
    table: "local_storage_resource_ref",
    fields: &[
        field("resourceUuid", "resource_uuid", FType::Str),
        field("primaryStorageUuid", "primary_storage_uuid", FType::Str),
        field("hostUuid", "host_uuid", FType::Str),
        field("size", "size", FType::Int),
        field("resourceType", "resource_type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.resource_uuid",
    tag_type: None,
};

/// Total and available bytes of the file system holding `path` (statvfs).
pub fn fs_capacity(path: &str) -> Result<(i64, i64)> {
    let c = std::ffi::CString::new(path).map_err(|_| Error::argerr(format!("invalid path[{path}]")))?;
    // SAFETY: statvfs only writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::code(rzstack_api::codes::SYS_1016, format!("cannot read the capacity of {path}: {e}")));
    }
    let frsize = if st.f_frsize > 0 { st.f_frsize as u64 } else { st.f_bsize as u64 };
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let avail = (st.f_bavail as u64).saturating_mul(frsize);
    Ok((total.min(i64::MAX as u64) as i64, avail.min(i64::MAX as u64) as i64))
}

/// Create a storage directory (and parents) on this machine.
pub fn make_dir(path: &str) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::code(rzstack_api::codes::SYS_1016, format!("cannot create the directory {path}: {e}")))
}

fn forbidden_folder(path: &str) -> bool {
    path.starts_with("/dev") || path.starts_with("/proc") || path.starts_with("/sys")
}

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, &PRIMARY_STORAGE, uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddPrimaryStorage {
    name: String,
    description: Option<String>,
    url: String,
    zone_uuid: String,
    total_capacity: Option<i64>,
    available_capacity: Option<i64>,
    total_physical_capacity: Option<i64>,
    available_physical_capacity: Option<i64>,
}

struct Capacity {
    total: i64,
    available: i64,
    total_physical: i64,
    available_physical: i64,
}

/// The checks of an add that need no database (upstream interceptor rules on the url).
fn check_url(ty: &str, url: &str) -> Result<()> {
    match ty {
        LOCAL_STORAGE => {
            if !url.starts_with('/') {
                return Err(Error::argerr(format!("the url[{url}] is not an absolute path starting with '/'")));
            }
            if forbidden_folder(url) {
                return Err(Error::argerr(" the url contains an invalid folder[/dev or /proc or /sys]"));
            }
        }
        NFS => {
            let parts: Vec<&str> = url.split(':').collect();
            if parts.len() == 2 && forbidden_folder(parts[1]) {
                return Err(Error::argerr(" the url contains an invalid folder[/dev or /proc or /sys]"));
            }
            if parts.len() != 2 || parts[0].is_empty() || !parts[1].starts_with('/') {
                return Err(Error::argerr(format!("the url[{url}] is not a NFS export of the form host:/path")));
            }
        }
        _ => {}
    }
    Ok(())
}

async fn add(app: App, msg: Msg, ty: &'static str) -> Result<Reply> {
    let req: AddPrimaryStorage = msg.parse()?;
    let uuid = msg.resource_uuid();
    let url = req.url.clone();
    check_url(ty, &url)?;
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &PRIMARY_STORAGE, &uuid, &msg).await? {
        let (cap, mount_path) = match ty {
            LOCAL_STORAGE => {
                make_dir(&url)?;
                let (total, avail) = fs_capacity(&url)?;
                (
                    Capacity { total, available: avail, total_physical: total, available_physical: avail },
                    Some(url.clone()),
                )
            }
            NFS => {
                // A url already used in the zone is refused by the UNIQUE index on
                // (zone_uuid, url) of NFS storage, when the row is inserted below.
                // Measured when a host mounts it; until then the capacity is unknown (zero).
                (
                    Capacity { total: 0, available: 0, total_physical: 0, available_physical: 0 },
                    Some(format!("/opt/zstack/nfsprimarystorage/prim-{uuid}")),
                )
            }
            _ => {
                let total = req.total_capacity.unwrap_or(100_000_000);
                let available = req.available_capacity.unwrap_or(10_000_000);
                let total_physical = req.total_physical_capacity.unwrap_or(10_000_000);
                let available_physical = req.available_physical_capacity.unwrap_or(10_000_000);
                if total < 0 || available < 0 || total_physical < 0 || available_physical < 0 {
                    return Err(Error::argerr("the capacity of a simulator primary storage cannot be negative"));
                }
                (Capacity { total, available, total_physical, available_physical }, None)
            }
        };
        let zone = req.zone_uuid.clone();
        tx.execute(
            "INSERT INTO primary_storage (uuid, zone_uuid, name, url, description, total_capacity, available_capacity, \
             total_physical_capacity, available_physical_capacity, system_used_capacity, type, state, status, mount_path, \
             create_date, last_op_date) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'Enabled', 'Connected', $12, $13, $13)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.zone_uuid),
                Val::from(req.name),
                Val::from(url),
                Val::from(req.description),
                Val::I(cap.total),
                Val::I(cap.available),
                Val::I(cap.total_physical),
                Val::I(cap.available_physical),
                Val::I((cap.total_physical - cap.available_physical).max(0)),
                Val::from(ty),
                Val::from(mount_path),
                Val::I(now),
            ],
        )
        .await
        .map_err(|e| nfs_url_taken(e, &req.url, &zone))?;
        super::own(&mut tx, &uuid, PRIMARY_STORAGE.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdatePrimaryStorage {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
    url: Option<String>,
}

/// The upstream error for an NFS url already used in the zone, when the UNIQUE index
/// `primary_storage_nfs_url` (zone_uuid, url WHERE type = 'NFS') refuses a row.
fn nfs_url_taken(e: Error, url: &str, zone: &str) -> Error {
    if crate::db::is_unique_violation(&e) {
        Error::argerr(format!("there has been a nfs primary storage having url as {url} in zone[uuid:{zone}]"))
    } else {
        e
    }
}

async fn update(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdatePrimaryStorage = msg.parse()?;
    let mut zone = String::new();
    if let Some(url) = &req.url {
        let row = app
            .db
            .fetch_optional(
                "SELECT type, url, zone_uuid FROM primary_storage WHERE uuid = $1",
                &[Val::from(req.uuid.as_str())],
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("primary storage[uuid:{}] is not found", req.uuid)))?;
        let ty: String = row.try_get(0)?;
        let old: String = row.try_get(1)?;
        zone = row.try_get(2)?;
        if ty == LOCAL_STORAGE && *url != old {
            return Err(Error::operr(format!(
                "the url of the local primary storage[uuid:{}] cannot be changed while it holds data; \
                 changing it is not supported yet",
                req.uuid
            )));
        }
    }
    // An NFS url taken in the zone is refused by the UNIQUE index (see `nfs_url_taken`).
    let new_url = req.url.clone().unwrap_or_default();
    app.db
        .execute(
            "UPDATE primary_storage SET name = COALESCE($1, name), description = COALESCE($2, description), \
             url = COALESCE($3, url), last_op_date = $4 WHERE uuid = $5",
            &[
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.url),
                Val::I(now_ms()),
                Val::from(req.uuid.as_str()),
            ],
        )
        .await
        .map_err(|e| nfs_url_taken(e, &new_url, &zone))?;
    reply(&app, &req.uuid).await
}

/// Primary storage also has maintenance and deletion states.
fn ps_state_of(event: &str) -> &'static str {
    match event.to_ascii_lowercase().as_str() {
        "enable" => "Enabled",
        "disable" => "Disabled",
        "maintain" => "Maintenance",
        _ => "Deleting",
    }
}

async fn delete(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let clusters = tx
        .fetch_all(
            "SELECT cluster_uuid FROM primary_storage_cluster_ref WHERE primary_storage_uuid = $1 ORDER BY cluster_uuid",
            &[Val::from(uuid.as_str())],
        )
        .await?;
    if !clusters.is_empty() {
        let list: Vec<String> = clusters.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
        return Err(Error::operr(format!(
            "primary storage[uuid:{uuid}] cannot be deleted for still being attached to cluster[uuid:{}].",
            list.join(", ")
        )));
    }
    let volumes = tx
        .fetch_optional(
            "SELECT uuid FROM volume WHERE primary_storage_uuid = $1 AND status != 'Deleted'",
            &[Val::from(uuid.as_str())],
        )
        .await?;
    if let Some(v) = volumes {
        let vol: String = v.try_get(0)?;
        return Err(Error::operr(format!(
            "primary storage[uuid:{uuid}] cannot be deleted because volume[uuid:{vol}] is still on it"
        )));
    }
    // Deleted volumes and snapshots go with their storage (upstream cascades them).
    tx.execute("DELETE FROM local_storage_host_ref WHERE primary_storage_uuid = $1", &[Val::from(uuid.as_str())])
        .await?;
    tx.execute("DELETE FROM local_storage_resource_ref WHERE primary_storage_uuid = $1", &[Val::from(uuid.as_str())])
        .await?;
    tx.execute("DELETE FROM volume_snapshot WHERE primary_storage_uuid = $1", &[Val::from(uuid.as_str())]).await?;
    tx.execute("DELETE FROM volume WHERE primary_storage_uuid = $1", &[Val::from(uuid.as_str())]).await?;
    tx.execute("DELETE FROM primary_storage WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    super::disown(&mut tx, &uuid).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterPs {
    cluster_uuid: String,
    primary_storage_uuid: String,
}

/// Attach a primary storage to a cluster. Both exist (the parameter validator checked them);
/// the upstream interceptor rules follow, then the reference row, guarded by its primary key.
async fn attach(app: App, msg: Msg) -> Result<Reply> {
    let req: ClusterPs = msg.parse()?;
    let (c, p) = (req.cluster_uuid.as_str(), req.primary_storage_uuid.as_str());
    let mut tx = app.db.begin_write().await?;
    let attached = tx
        .fetch_optional(
            "SELECT 1 FROM primary_storage_cluster_ref WHERE primary_storage_uuid = $1 AND cluster_uuid = $2",
            &[Val::from(p), Val::from(c)],
        )
        .await?
        .is_some();
    if attached {
        if msg.replay {
            // This job attached it before a restart.
            drop(tx);
            return reply(&app, p).await;
        }
        return Err(Error::operr(format!("primary storage[uuid:{p}] has been attached to cluster[uuid:{c}]")));
    }
    let same_zone = tx
        .fetch_optional(
            "SELECT ps.url FROM primary_storage ps, cluster c WHERE c.zone_uuid = ps.zone_uuid AND c.uuid = $1 AND ps.uuid = $2",
            &[Val::from(c), Val::from(p)],
        )
        .await?;
    let Some(row) = same_zone else {
        return Err(Error::argerr(format!("primary storage[uuid:{p}] and cluster[uuid:{c}] are not in the same zone")));
    };
    let url: String = row.try_get(0)?;
    let occupied = tx
        .fetch_optional(
            "SELECT 1 FROM primary_storage ps WHERE ps.url = $1 AND ps.uuid IN \
             (SELECT r.primary_storage_uuid FROM primary_storage_cluster_ref r WHERE r.cluster_uuid = $2)",
            &[Val::from(url.as_str()), Val::from(c)],
        )
        .await?;
    if occupied.is_some() {
        return Err(Error::argerr(format!("url[{url}] has been occupied, it cannot be duplicate in same cluster")));
    }
    if !super::link(&mut tx, &CLUSTER_REFS, p, c).await? {
        // Attached by a concurrent request since the check above.
        return Err(Error::operr(format!("primary storage[uuid:{p}] has been attached to cluster[uuid:{c}]")));
    }
    // LocalStorage: a capacity row for each host of the cluster
    let local = tx
        .fetch_optional("SELECT 1 FROM primary_storage WHERE uuid = $1 AND type = 'LocalStorage'", &[Val::from(p)])
        .await?
        .is_some();
    if local {
        let hosts =
            tx.fetch_all("SELECT uuid FROM host WHERE cluster_uuid = $1 ORDER BY uuid", &[Val::from(c)]).await?;
        for h in hosts {
            let h: String = h.try_get(0)?;
            add_host_ref(&mut tx, p, &url, &h).await?;
        }
    }
    tx.commit().await?;
    reply(&app, p).await
}

async fn detach(app: App, msg: Msg) -> Result<Reply> {
    let req: ClusterPs = msg.parse()?;
    let (c, p) = (req.cluster_uuid.as_str(), req.primary_storage_uuid.as_str());
    // A replayed job finds the link gone already (it went before the restart).
    let mut tx = app.db.begin_write().await?;
    let n = tx
        .execute(
            "DELETE FROM primary_storage_cluster_ref WHERE primary_storage_uuid = $1 AND cluster_uuid = $2",
            &[Val::from(p), Val::from(c)],
        )
        .await?;
    if n == 0 && !msg.replay {
        return Err(Error::argerr(format!("primary storage[uuid:{p}] has not been attached to cluster[uuid:{c}] yet")));
    }
    // LocalStorage: the cluster's hosts leave it, with their capacity rows
    let hosts = tx
        .fetch_all(
            "SELECT l.host_uuid FROM local_storage_host_ref l JOIN host h ON h.uuid = l.host_uuid \
             WHERE l.primary_storage_uuid = $1 AND h.cluster_uuid = $2 ORDER BY l.host_uuid",
            &[Val::from(p), Val::from(c)],
        )
        .await?;
    for h in hosts {
        let h: String = h.try_get(0)?;
        remove_host_ref(&mut tx, p, &h).await?;
    }
    tx.commit().await?;
    reply(&app, p).await
}

const ADD_PARAMS_COMMON: [Param; 4] = [
    Param::str("url").required().max(2048),
    Param::str("name").required().max(255),
    Param::str("description").max(2048),
    Param::str("zoneUuid").required().resource(&super::zone::ZONE),
];

const ADD_SIMULATOR_PARAMS: [Param; 9] = [
    ADD_PARAMS_COMMON[0],
    ADD_PARAMS_COMMON[1],
    ADD_PARAMS_COMMON[2],
    Param::str("type"),
    ADD_PARAMS_COMMON[3],
    Param::int("totalCapacity"),
    Param::int("availableCapacity"),
    Param::int("totalPhysicalCapacity"),
    Param::int("availablePhysicalCapacity"),
];

const ADD_PARAMS: [Param; 5] =
    [ADD_PARAMS_COMMON[0], ADD_PARAMS_COMMON[1], ADD_PARAMS_COMMON[2], Param::str("type"), ADD_PARAMS_COMMON[3]];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("AddLocalPrimaryStorage", "/primary-storage/local-storage")
        .params(&ADD_PARAMS)
        .handler(|a, m| boxed(add(a, m, LOCAL_STORAGE))),
    ApiDef::create("AddNfsPrimaryStorage", "/primary-storage/nfs")
        .params(&ADD_PARAMS)
        .handler(|a, m| boxed(add(a, m, NFS))),
    ApiDef::create("AddSimulatorPrimaryStorage", "/primary-storage/simulators")
        .params(&ADD_SIMULATOR_PARAMS)
        .handler(|a, m| boxed(add(a, m, SIMULATOR))),
    ApiDef::query("QueryPrimaryStorage", "/primary-storage", &PRIMARY_STORAGE)
        .optional_paths(&["/primary-storage/{uuid}"]),
    ApiDef::query(
        "QueryLocalStorageResourceRef",
        "/primary-storage/local-storage/resource-refs",
        &LOCAL_STORAGE_RESOURCE_REF,
    ),
    ApiDef::get("GetLocalStorageHostDiskCapacity", "/primary-storage/local-storage/{primaryStorageUuid}/capacities")
        .params(&[
            Param::str("hostUuid").resource(&HOST),
            Param::str("primaryStorageUuid").required().resource(&PRIMARY_STORAGE),
        ])
        .handler(|a, m| boxed(get_host_disk_capacity(a, m))),
    ApiDef::action("UpdatePrimaryStorage", "/primary-storage/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&PRIMARY_STORAGE),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("url").max(2048),
        ])
        .handler(|a, m| boxed(update(a, m))),
    ApiDef::action("ChangePrimaryStorageState", "/primary-storage/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&PRIMARY_STORAGE),
            Param::str("stateEvent").required().values(&["enable", "disable", "maintain", "deleting"]),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &PRIMARY_STORAGE, ps_state_of))),
    ApiDef::delete("DeletePrimaryStorage", "/primary-storage/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&PRIMARY_STORAGE).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete(a, m))),
    ApiDef::post("AttachPrimaryStorageToCluster", "/clusters/{clusterUuid}/primary-storage/{primaryStorageUuid}")
        .params(&[
            Param::str("clusterUuid").required().resource(&CLUSTER),
            Param::str("primaryStorageUuid").required().resource(&PRIMARY_STORAGE),
        ])
        .handler(|a, m| boxed(attach(a, m))),
    ApiDef::delete("DetachPrimaryStorageFromCluster", "/clusters/{clusterUuid}/primary-storage/{primaryStorageUuid}")
        .params(&[
            Param::str("primaryStorageUuid").required().resource(&PRIMARY_STORAGE),
            Param::str("clusterUuid").required().resource(&CLUSTER),
        ])
        .handler(|a, m| boxed(detach(a, m))),
];

// ---------------------------------------------------------------------------------------
// LocalStorage capacity per host (upstream LocalStorageHostRefVO)
//
// Each host in a cluster a LocalStorage is attached to has a row with its disk's figures (the
// file system holding the storage's url, read as the storage's own figures are read when it is
// added). As upstream, the storage's figures are the sum of its hosts' once it has hosts (the
// first host's row replaces the figures read when the storage was added; later hosts add
// theirs, and a host that leaves takes its share away, except the last one). Every allocation
// on the storage takes from the row of the host holding the file with one conditional UPDATE,
// in the transaction that takes from the storage; giving back returns it to both.

/// The figures of a host's disk on LocalStorage, as upstream's HostDiskCapacity answers them.
pub static LOCAL_STORAGE_HOST_DISK_CAPACITY_CLASS: &str =
    "org.zstack.storage.primary.local.APIGetLocalStorageHostDiskCapacityReply$HostDiskCapacity";

/// Rows for `host` on every LocalStorage attached to its cluster (a host joining a cluster).
pub(crate) async fn local_storage_host_joined(tx: &mut WriteTx, host: &str) -> Result<()> {
    let rows = tx
        .fetch_all(
            "SELECT p.uuid, p.url FROM host h JOIN primary_storage_cluster_ref r ON r.cluster_uuid = h.cluster_uuid \
             JOIN primary_storage p ON p.uuid = r.primary_storage_uuid WHERE h.uuid = $1 AND p.type = 'LocalStorage' \
             ORDER BY p.uuid",
            &[Val::from(host)],
        )
        .await?;
    for r in rows {
        let ps: String = r.try_get(0)?;
        let url: String = r.try_get(1)?;
        add_host_ref(tx, &ps, &url, host).await?;
    }
    Ok(())
}

/// The row of `host` on LocalStorage `ps` (none when it exists already), and the storage's
/// figures with it.
async fn add_host_ref(tx: &mut WriteTx, ps: &str, url: &str, host: &str) -> Result<()> {
    lock_storage(tx, ps).await?;
    let (total, avail) = match fs_capacity(url) {
        Ok(c) => c,
        Err(_) => {
            // the directory cannot be read here: another host's disk figures, else the storage's
            let r = tx
                .fetch_optional(
                    "SELECT total_physical_capacity, available_physical_capacity FROM local_storage_host_ref \
                     WHERE primary_storage_uuid = $1 UNION ALL \
                     SELECT total_physical_capacity, available_physical_capacity FROM primary_storage WHERE uuid = $1",
                    &[Val::from(ps)],
                )
                .await?;
            match r {
                Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?),
                None => return Ok(()),
            }
        }
    };
    let now = now_ms();
    // what the volumes already on this disk hold (a storage attached again to a cluster whose
    // hosts kept their files)
    let used = "COALESCE((SELECT SUM(r.size) FROM local_storage_resource_ref r WHERE r.host_uuid = $1 \
                AND r.primary_storage_uuid = $2 AND r.resource_type = 'VolumeVO'), 0)";
    let n = tx
        .execute(
            &format!(
                "INSERT INTO local_storage_host_ref (host_uuid, primary_storage_uuid, total_capacity, available_capacity, \
                 total_physical_capacity, available_physical_capacity, system_used_capacity, create_date, last_op_date) \
                 VALUES ($1, $2, $3, $4 - {used}, $3, $4, $5, $6, $6) \
                 ON CONFLICT (host_uuid, primary_storage_uuid) DO NOTHING"
            ),
            &[Val::from(host), Val::from(ps), Val::I(total), Val::I(avail), Val::I((total - avail).max(0)), Val::I(now)],
        )
        .await?;
    if n == 0 {
        return Ok(());
    }
    let others = tx
        .fetch_optional(
            "SELECT COUNT(*) FROM local_storage_host_ref WHERE primary_storage_uuid = $1 AND host_uuid <> $2",
            &[Val::from(ps), Val::from(host)],
        )
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?
        .unwrap_or(0);
    let sql = if others == 0 {
        // the first host: its disk is the storage's (what is used elsewhere on the storage stays used)
        "UPDATE primary_storage SET total_capacity = $3, \
         available_capacity = $4 - (available_physical_capacity - available_capacity), \
         total_physical_capacity = $3, available_physical_capacity = $4, system_used_capacity = $5, \
         last_op_date = $6 WHERE uuid = $2"
            .to_string()
    } else {
        format!(
            "UPDATE primary_storage SET total_capacity = total_capacity + $3, \
             available_capacity = available_capacity + ($4 - {used}), \
             total_physical_capacity = total_physical_capacity + $3, \
             available_physical_capacity = available_physical_capacity + $4, \
             system_used_capacity = system_used_capacity + $5, last_op_date = $6 WHERE uuid = $2"
        )
    };
    tx.execute(
        &sql,
        &[Val::from(host), Val::from(ps), Val::I(total), Val::I(avail), Val::I((total - avail).max(0)), Val::I(now)],
    )
    .await?;
    Ok(())
}

/// The storage's row held by this transaction (PostgreSQL: a concurrent change of its hosts
/// waits, then sees this one's rows), so that "its first / last host" is read right. Every
/// transaction that changes a host's row holds the storage's row first (PostgreSQL: one lock
/// order, no deadlock between allocations, returns and hosts coming and going).
pub(crate) async fn lock_storage(tx: &mut WriteTx, ps: &str) -> Result<()> {
    tx.execute("UPDATE primary_storage SET last_op_date = $1 WHERE uuid = $2", &[Val::I(now_ms()), Val::from(ps)])
        .await?;
    Ok(())
}

/// The row of `host` on `ps` goes; the storage loses the host's share unless it was its last host.
async fn remove_host_ref(tx: &mut WriteTx, ps: &str, host: &str) -> Result<()> {
    lock_storage(tx, ps).await?;
    let Some(r) = tx
        .fetch_optional(
            "DELETE FROM local_storage_host_ref WHERE host_uuid = $1 AND primary_storage_uuid = $2 \
             RETURNING total_capacity, available_capacity, total_physical_capacity, available_physical_capacity, \
             system_used_capacity",
            &[Val::from(host), Val::from(ps)],
        )
        .await?
    else {
        return Ok(());
    };
    let figures: Vec<i64> = (0..5).map(|i| r.try_get::<i64, _>(i)).collect::<std::result::Result<_, _>>()?;
    let left = tx
        .fetch_optional("SELECT 1 FROM local_storage_host_ref WHERE primary_storage_uuid = $1", &[Val::from(ps)])
        .await?
        .is_some();
    if left {
        tx.execute(
            "UPDATE primary_storage SET total_capacity = total_capacity - $1, available_capacity = available_capacity - $2, \
             total_physical_capacity = total_physical_capacity - $3, \
             available_physical_capacity = available_physical_capacity - $4, \
             system_used_capacity = system_used_capacity - $5, last_op_date = $6 WHERE uuid = $7",
            &[
                Val::I(figures[0]),
                Val::I(figures[1]),
                Val::I(figures[2]),
                Val::I(figures[3]),
                Val::I(figures[4]),
                Val::I(now_ms()),
                Val::from(ps),
            ],
        )
        .await?;
    }
    Ok(())
}

/// A host is deleted: its rows go, each storage losing its share (called by the host deletion,
/// after its files' rows went).
pub(crate) async fn local_storage_host_left(tx: &mut WriteTx, host: &str) -> Result<()> {
    let rows = tx
        .fetch_all(
            "SELECT primary_storage_uuid FROM local_storage_host_ref WHERE host_uuid = $1 ORDER BY primary_storage_uuid",
            &[Val::from(host)],
        )
        .await?;
    for r in rows {
        let ps: String = r.try_get(0)?;
        remove_host_ref(tx, &ps, host).await?;
    }
    Ok(())
}

/// Take `size` bytes on `host`'s disk of LocalStorage `ps`: one conditional UPDATE; false when
/// the host has no row there or less than `size` available.
pub(crate) async fn take_host_capacity(tx: &mut WriteTx, ps: &str, host: &str, size: i64) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE local_storage_host_ref SET available_capacity = available_capacity - $1, last_op_date = $2 \
             WHERE host_uuid = $3 AND primary_storage_uuid = $4 AND available_capacity >= $1",
            &[Val::I(size), Val::I(now_ms()), Val::from(host), Val::from(ps)],
        )
        .await?;
    Ok(n == 1)
}

/// Give `size` bytes back to `host`'s disk of `ps` (never above its total); nothing when the
/// host has no row there (the storage is not LocalStorage, or the host left).
pub(crate) async fn return_host_capacity(tx: &mut WriteTx, ps: &str, host: &str, size: i64) -> Result<()> {
    if size <= 0 {
        return Ok(());
    }
    tx.execute(
        "UPDATE local_storage_host_ref SET available_capacity = CASE WHEN available_capacity + $1 > total_capacity \
         THEN total_capacity ELSE available_capacity + $1 END, last_op_date = $2 \
         WHERE host_uuid = $3 AND primary_storage_uuid = $4",
        &[Val::I(size), Val::I(now_ms()), Val::from(host), Val::from(ps)],
    )
    .await?;
    Ok(())
}

/// Take `size` bytes for a new file on `host`'s disk of LocalStorage `ps`, or upstream's
/// refusal (LocalStorageUtils.reserveCapacityOnHost).
pub(crate) async fn reserve_on_host(tx: &mut WriteTx, ps: &str, host: &str, size: i64) -> Result<()> {
    if take_host_capacity(tx, ps, host, size).await? {
        return Ok(());
    }
    let current = tx
        .fetch_optional(
            "SELECT available_capacity FROM local_storage_host_ref WHERE host_uuid = $1 AND primary_storage_uuid = $2",
            &[Val::from(host), Val::from(ps)],
        )
        .await?;
    match current {
        Some(r) => {
            let current: i64 = r.try_get(0)?;
            Err(Error::operr(format!(
                "host[uuid: {host}] of local primary storage[uuid: {ps}] doesn't have enough capacity\
                 [current: {current} bytes, needed: {size}]"
            )))
        }
        None => Err(Error::operr(format!("cannot find host[uuid: {host}] of local primary storage[uuid: {ps}]"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetHostDiskCapacity {
    host_uuid: Option<String>,
    primary_storage_uuid: String,
}

fn host_disk_capacity(host: &str, figures: [i64; 4]) -> serde_json::Value {
    serde_json::json!({
        "hostUuid": host,
        "totalCapacity": figures[0],
        "availableCapacity": figures[1],
        "totalPhysicalCapacity": figures[2],
        "availablePhysicalCapacity": figures[3],
    })
}

/// GetLocalStorageHostDiskCapacity (upstream LocalStorageBase): the figures of one host's disk
/// (zeros for a host that is not Connected and has no row; a Connected one without a row is
/// not the storage's), or of every host of the storage.
async fn get_host_disk_capacity(app: App, msg: Msg) -> Result<Reply> {
    let req: GetHostDiskCapacity = msg.parse()?;
    let ps = req.primary_storage_uuid.as_str();
    let ty = app
        .db
        .fetch_optional("SELECT type FROM primary_storage WHERE uuid = $1", &[Val::from(ps)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?;
    if ty.as_deref() != Some(LOCAL_STORAGE) {
        // only LocalStorage handles the message (upstream PrimaryStorageBase: unknown message)
        return Err(Error::code(
            rzstack_api::codes::SYS_1008,
            "No service deals with message: org.zstack.storage.primary.local.APIGetLocalStorageHostDiskCapacityMsg",
        ));
    }
    let cols = "host_uuid, total_capacity, available_capacity, total_physical_capacity, available_physical_capacity";
    let mut list = Vec::new();
    match &req.host_uuid {
        Some(h) => {
            let row = app
                .db
                .fetch_optional(
                    &format!(
                        "SELECT {cols} FROM local_storage_host_ref WHERE primary_storage_uuid = $1 AND host_uuid = $2"
                    ),
                    &[Val::from(ps), Val::from(h.as_str())],
                )
                .await?;
            let figures = match row {
                Some(r) => [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?],
                None => {
                    let connected = app
                        .db
                        .fetch_optional(
                            "SELECT 1 FROM host WHERE uuid = $1 AND status = 'Connected'",
                            &[Val::from(h.as_str())],
                        )
                        .await?
                        .is_some();
                    if connected {
                        return Err(Error::code(
                            rzstack_api::codes::SYS_1003,
                            format!("local primary storage[uuid:{ps}] doesn't have the host[uuid:{h}]"),
                        ));
                    }
                    [0, 0, 0, 0]
                }
            };
            list.push(host_disk_capacity(h, figures));
        }
        None => {
            let rows = app
                .db
                .fetch_all(
                    &format!(
                        "SELECT {cols} FROM local_storage_host_ref WHERE primary_storage_uuid = $1 \
                         ORDER BY create_date, host_uuid"
                    ),
                    &[Val::from(ps)],
                )
                .await?;
            for r in rows {
                let h: String = r.try_get(0)?;
                list.push(host_disk_capacity(&h, [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?]));
            }
        }
    }
    let mut reply = Reply::fields([("inventories", serde_json::Value::Array(Vec::new()))]);
    for i in 0..list.len() {
        reply.schema.insert(format!("inventories[{i}]"), LOCAL_STORAGE_HOST_DISK_CAPACITY_CLASS.into());
    }
    reply.body.insert("inventories".into(), serde_json::Value::Array(list));
    Ok(reply)
}

/// The host-allocation condition (SQL on `host h`) that a storage passing `ps_filter` (SQL on
/// `primary_storage p`) has room for the VM's disks on that host: one of another type attached
/// to the host's cluster, or a LocalStorage whose row for the host has `$disk` bytes available
/// (rows exist only for the hosts of attached clusters). Both subqueries are uncorrelated.
pub(crate) fn host_has_room_filter(ps_filter: &str, disk: usize) -> String {
    format!(
        " AND (h.cluster_uuid IN (SELECT r.cluster_uuid FROM primary_storage_cluster_ref r JOIN primary_storage p \
         ON p.uuid = r.primary_storage_uuid WHERE p.state = 'Enabled' AND p.status = 'Connected' \
         AND p.type <> 'LocalStorage' AND {ps_filter}) \
         OR h.uuid IN (SELECT l.host_uuid FROM local_storage_host_ref l JOIN primary_storage p \
         ON p.uuid = l.primary_storage_uuid WHERE p.state = 'Enabled' AND p.status = 'Connected' AND {ps_filter} \
         AND l.available_capacity >= ${disk}))"
    )
}

/// The (storage, host) of a volume's file on LocalStorage (its resource ref), if any.
async fn volume_host(tx: &mut WriteTx, volume: &str) -> Result<Option<(String, String)>> {
    let r = tx
        .fetch_optional(
            "SELECT primary_storage_uuid, host_uuid FROM local_storage_resource_ref WHERE resource_uuid = $1 \
             AND resource_type = 'VolumeVO'",
            &[Val::from(volume)],
        )
        .await?;
    Ok(match r {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
        None => None,
    })
}

/// A volume on LocalStorage grows by `size`: taken from the disk of the host holding it (the
/// caller took it from the storage in the same transaction); nothing for other volumes.
pub(crate) async fn reserve_for_volume(tx: &mut WriteTx, volume: &str, size: i64) -> Result<()> {
    match volume_host(tx, volume).await? {
        Some((ps, host)) if size > 0 => reserve_on_host(tx, &ps, &host, size).await,
        _ => Ok(()),
    }
}

/// A volume on LocalStorage shrinks by `size`: back to the disk of the host holding it.
pub(crate) async fn return_for_volume(tx: &mut WriteTx, volume: &str, size: i64) -> Result<()> {
    match volume_host(tx, volume).await? {
        Some((ps, host)) => return_host_capacity(tx, &ps, &host, size).await,
        None => Ok(()),
    }
}

/// Take `size` bytes for a new volume on the disk of the host it must go to (a
/// `localStorage::hostUuid::` tag, the VM's host), or the refusal of upstream's
/// LocalStorageMainAllocatorFlow for a required host.
pub(crate) async fn allocate_on_required_host(tx: &mut WriteTx, ps: &str, host: &str, size: i64) -> Result<()> {
    if take_host_capacity(tx, ps, host, size).await? {
        return Ok(());
    }
    Err(Error::operr(format!(
        "the required host[uuid:{host}] cannot satisfy conditions[state: Enabled, status: Connected, size > {size} \
         bytes], or doesn't belong to a local primary storage satisfying conditions[state: Enabled, status: \
         Connected], or its cluster doesn't attach to any local primary storage"
    )))
}
