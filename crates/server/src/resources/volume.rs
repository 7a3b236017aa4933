//! Data volumes (upstream `VolumeVO`) and volume snapshots (`VolumeSnapshotVO`).
//!
//! For now these are accounted records: a data volume without a primary storage is
//! `NotInstantiated` (as upstream, until it is attached to a VM); with a primary storage its
//! size is reserved on that storage atomically and it is `Ready`. Deleting a volume marks it
//! `Deleted` (deletion policy Delay); expunging it removes it and gives the capacity back.
//! A volume with a file on a KVM host (made when its VM was created there): a snapshot is an
//! independent qcow2 next to it (`<volume dir>/snapshots/<snapshotUuid>.qcow2`) made by the
//! host agent; deleting the snapshot and expunging the volume delete the files too.

use crate::api::{boxed, ApiDef, Msg, Reply, HOURS};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::hostagent::{
    HostAgent, KvmAgentClient, Provisioning, VolumeCreateCmd, VolumeDeleteCmd, VolumeSnapshotCmd, PROTOCOL_VERSION,
};
use crate::params::Param;
use crate::query::{self, field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;
use sqlx::Row;

use super::offering::DISK_OFFERING;
use super::primary_storage::PRIMARY_STORAGE;
use super::vm::VM;

pub static VOLUME: ResourceDef = ResourceDef {
    inventory: "VolumeInventory",
    vo: "VolumeVO",
    class: "org.zstack.header.volume.VolumeInventory",
    table: "volume",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("primaryStorageUuid", "primary_storage_uuid", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("diskOfferingUuid", "disk_offering_uuid", FType::Str),
        field("rootImageUuid", "root_image_uuid", FType::Str),
        field("installPath", "install_path", FType::Str),
        field("type", "type", FType::Str),
        field("format", "format", FType::Str),
        field("size", "size", FType::Int),
        field("actualSize", "actual_size", FType::Int),
        field("deviceId", "device_id", FType::Int),
        field("state", "state", FType::Str),
        field("status", "status", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("isShareable", "is_shareable", FType::Bool),
        field("volumeQos", "volume_qos", FType::Str),
        field("lastDetachDate", "last_detach_date", FType::Date),
        field("lastVmInstanceUuid", "last_vm_instance_uuid", FType::Str),
        field("lastAttachDate", "last_attach_date", FType::Date),
        field("protocol", "protocol", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("VolumeVO"),
};

pub static VOLUME_SNAPSHOT: ResourceDef = ResourceDef {
    inventory: "VolumeSnapshotInventory",
    vo: "VolumeSnapshotVO",
    class: "org.zstack.header.storage.snapshot.VolumeSnapshotInventory",
    table: "volume_snapshot",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("type", "type", FType::Str),
        field("volumeUuid", "volume_uuid", FType::Str),
        field("treeUuid", "tree_uuid", FType::Str),
        field("parentUuid", "parent_uuid", FType::Str),
        field("primaryStorageUuid", "primary_storage_uuid", FType::Str),
        field("primaryStorageInstallPath", "primary_storage_install_path", FType::Str),
        field("volumeType", "volume_type", FType::Str),
        field("format", "format", FType::Str),
        field("latest", "latest", FType::Bool),
        field("size", "size", FType::Int),
        field("distance", "distance", FType::Int),
        field("state", "state", FType::Str),
        field("status", "status", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("groupUuid", "group_uuid", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("VolumeSnapshotVO"),
};

async fn reply(app: &App, def: &'static ResourceDef, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, def, uuid).await? {
        Some(inv) => Ok(Reply::inventory(def, inv)),
        None => Err(Error::not_found(format!("{}[uuid:{uuid}] is not found", def.vo))),
    }
}

/// The agents of the KVM hosts that may hold a volume's file: its VM's (current, else last)
/// host when that is a KVM host, else the KVM hosts of the clusters its primary storage is
/// attached to. Empty for volumes of simulated hosts.
async fn kvm_agents(app: &App, vm: Option<&str>, ps: Option<&str>) -> Result<Vec<KvmAgentClient>> {
    let client = |r: sqlx::any::AnyRow| -> Result<KvmAgentClient> {
        let ip: String = r.try_get(0)?;
        let token: Option<String> = r.try_get(1)?;
        Ok(KvmAgentClient::new(&ip, token.as_deref().unwrap_or_default()))
    };
    if let Some(vm) = vm {
        if let Some(r) = app
            .db
            .fetch_optional(
                "SELECT h.management_ip, h.password FROM vm_instance v JOIN host h \
                 ON h.uuid = COALESCE(v.host_uuid, v.last_host_uuid) WHERE v.uuid = $1 AND h.hypervisor_type = 'KVM'",
                &[Val::from(vm)],
            )
            .await?
        {
            return Ok(vec![client(r)?]);
        }
    }
    let Some(ps) = ps else { return Ok(vec![]) };
    app.db
        .fetch_all(
            "SELECT h.management_ip, h.password FROM host h JOIN primary_storage_cluster_ref r \
             ON r.cluster_uuid = h.cluster_uuid WHERE r.primary_storage_uuid = $1 AND h.hypervisor_type = 'KVM' \
             ORDER BY h.uuid",
            &[Val::from(ps)],
        )
        .await?
        .into_iter()
        .map(client)
        .collect()
}

/// Best effort: delete a volume or snapshot file on the KVM hosts that may hold it.
async fn delete_files(app: &App, vm: Option<&str>, ps: Option<&str>, paths: &[String]) {
    let paths: Vec<&String> = paths.iter().filter(|p| p.starts_with('/')).collect();
    if paths.is_empty() {
        return;
    }
    let agents = match kvm_agents(app, vm, ps).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("finding the KVM hosts of {paths:?}: {e}");
            return;
        }
    };
    for a in &agents {
        for p in &paths {
            let cmd = VolumeDeleteCmd { version: PROTOCOL_VERSION, install_path: p.to_string() };
            if let Err(e) = a.delete_volume(&cmd).await {
                tracing::warn!("deleting {p} on {}: {e}", a.url());
            }
        }
    }
}

/// Forget which host holds a volume's file and its snapshots' on LocalStorage (their
/// `local_storage_resource_ref` rows), in the transaction that deletes their rows: before the
/// snapshot rows go.
pub(crate) async fn forget_local_files(tx: &mut WriteTx, volume: &str) -> Result<()> {
    // the volume's file gives its size back to its host's disk
    let gone = tx
        .fetch_optional(
            "DELETE FROM local_storage_resource_ref WHERE resource_uuid = $1 AND resource_type = 'VolumeVO' \
             RETURNING primary_storage_uuid, host_uuid, size",
            &[Val::from(volume)],
        )
        .await?;
    if let Some(r) = gone {
        let (ps, host, size): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        super::primary_storage::lock_storage(tx, &ps).await?;
        super::primary_storage::return_host_capacity(tx, &ps, &host, size).await?;
    }
    tx.execute(
        "DELETE FROM local_storage_resource_ref WHERE resource_uuid = $1 \
         OR resource_uuid IN (SELECT uuid FROM volume_snapshot WHERE volume_uuid = $1)",
        &[Val::from(volume)],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateDataVolume {
    name: String,
    description: Option<String>,
    disk_offering_uuid: Option<String>,
    disk_size: Option<i64>,
    primary_storage_uuid: Option<String>,
}

async fn create_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateDataVolume = msg.parse()?;
    if req.disk_offering_uuid.is_none() && req.disk_size.unwrap_or(0) < 0 {
        return Err(Error::argerr("unexpected disk size settings"));
    }
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &VOLUME, &uuid, &msg).await? {
        // As upstream, an offering's size replaces any diskSize given.
        let size = match &req.disk_offering_uuid {
            Some(o) => {
                let row = tx
                    .fetch_optional("SELECT disk_size FROM disk_offering WHERE uuid = $1", &[Val::from(o.as_str())])
                    .await?
                    .ok_or_else(|| {
                        // Deleted since the parameter validator saw it.
                        Error::not_found(format!(
                            "invalid field[diskOfferingUuid], resource[uuid:{o}, type:DiskOfferingVO] not found"
                        ))
                    })?;
                row.try_get::<i64, _>(0)?
            }
            None => req.disk_size.unwrap_or(0),
        };
        let (status, format) = match &req.primary_storage_uuid {
            Some(ps) => {
                let n = tx
                    .execute(
                        "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                         WHERE uuid = $3 AND available_capacity >= $1 AND state = 'Enabled' AND status = 'Connected'",
                        &[Val::I(size), Val::I(now), Val::from(ps.as_str())],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::operr(format!(
                        "cannot find available primary storage[state: Enabled, status: Connected, available capacity {size} bytes]: \
                         the primary storage[uuid:{ps}] is not Enabled and Connected, or has less capacity available"
                    )));
                }
                ("Ready", Some("qcow2"))
            }
            None => ("NotInstantiated", None),
        };
        // on LocalStorage the file goes on the disk of the host the localStorage::hostUuid::
        // tag names (upstream: the tag is required there, the host must be one of the storage's)
        let local_host = match &req.primary_storage_uuid {
            Some(ps) => local_host_for_new_volume(&mut tx, ps, &msg.system_tags()).await?,
            None => None,
        };
        if let (Some(host), Some(ps)) = (&local_host, &req.primary_storage_uuid) {
            super::primary_storage::allocate_on_required_host(&mut tx, ps, host, size).await?;
        }
        let reserved = if req.primary_storage_uuid.is_some() { size } else { 0 };
        tx.execute(
            "INSERT INTO volume (uuid, name, description, primary_storage_uuid, disk_offering_uuid, type, format, size, actual_size, \
             state, status, create_date, last_op_date, is_shareable, reserved_size) \
             VALUES ($1, $2, $3, $4, $5, 'Data', $6, $7, 0, 'Enabled', $8, $9, $9, 0, $10)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.primary_storage_uuid.clone()),
                Val::from(req.disk_offering_uuid),
                Val::from(format),
                Val::I(size),
                Val::from(status),
                Val::I(now),
                Val::I(reserved),
            ],
        )
        .await?;
        if let (Some(host), Some(ps)) = (&local_host, &req.primary_storage_uuid) {
            tx.execute(
                "INSERT INTO local_storage_resource_ref (resource_uuid, primary_storage_uuid, host_uuid, size, \
                 resource_type, create_date, last_op_date) VALUES ($1, $2, $3, $4, 'VolumeVO', $5, $5)",
                &[
                    Val::from(uuid.as_str()),
                    Val::from(ps.as_str()),
                    Val::from(host.as_str()),
                    Val::I(size),
                    Val::I(now),
                ],
            )
            .await?;
        }
        // upstream createTagsFromAPICreateMessage (system tags not registered for VolumeVO skipped)
        super::tag::attach_create_tags(&mut tx, &uuid, VOLUME.vo, &msg.system_tags(), &msg.user_tags()).await?;
        super::own(&mut tx, &uuid, VOLUME.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    reply(&app, &VOLUME, &uuid).await
}

/// The system tag choosing the host whose LocalStorage disk takes a new data volume (upstream
/// `LocalStorageSystemTags.DEST_HOST_FOR_CREATING_DATA_VOLUME`).
pub const LOCAL_STORAGE_HOST_TAG: &str = "localStorage::hostUuid::{hostUuid}";

/// The host that takes a data volume instantiated on primary storage `ps`: None when `ps` is
/// not LocalStorage; on LocalStorage the host of the `localStorage::hostUuid::` tag, which
/// must be given (upstream LocalStorageAllocatorFactory.buildAllocatedInstallUrl) and be a
/// host of a cluster the storage is attached to (upstream: a LocalStorageHostRefVO of that
/// host and storage, LocalStorageFactory.instantiateDataVolumeOnCreation).
async fn local_host_for_new_volume(tx: &mut WriteTx, ps: &str, system_tags: &[String]) -> Result<Option<String>> {
    let local = tx
        .fetch_optional("SELECT 1 FROM primary_storage WHERE uuid = $1 AND type = 'LocalStorage'", &[Val::from(ps)])
        .await?
        .is_some();
    if !local {
        return Ok(None);
    }
    let Some(host) = system_tags.iter().find_map(|t| t.strip_prefix("localStorage::hostUuid::")) else {
        return Err(Error::argerr(format!(
            "To create volume on the local primary storage, you must specify the host that the volume is going to be \
             created using the system tag [{LOCAL_STORAGE_HOST_TAG}]"
        )));
    };
    let belongs = tx
        .fetch_optional(
            "SELECT 1 FROM host h JOIN primary_storage_cluster_ref r ON r.cluster_uuid = h.cluster_uuid \
             WHERE h.uuid = $1 AND r.primary_storage_uuid = $2",
            &[Val::from(host), Val::from(ps)],
        )
        .await?
        .is_some();
    if !belongs {
        return Err(Error::argerr(format!(
            "the host[uuid:{host}] doesn't belong to the local primary storage[uuid:{ps}]"
        )));
    }
    Ok(Some(host.to_string()))
}

async fn delete_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let row = app
        .db
        .fetch_optional("SELECT type, status FROM volume WHERE uuid = $1", &[Val::from(uuid.as_str())])
        .await?
        .ok_or_else(|| Error::not_found(format!("volume[uuid:{uuid}] is not found")))?;
    let ty: String = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    if ty != "Data" {
        return Err(Error::argerr(format!("volume[uuid:{uuid}, type:{ty}] can't be deleted")));
    }
    if status == "Deleted" {
        return Err(Error::operr(format!("volume[uuid:{uuid}] is already in status of deleted")));
    }
    app.db
        .execute(
            "UPDATE volume SET status = 'Deleted', last_op_date = $1 WHERE uuid = $2 AND status != 'Deleted'",
            &[Val::I(now_ms()), Val::from(uuid.as_str())],
        )
        .await?;
    Ok(Reply::empty())
}

async fn expunge_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let row = tx
        .fetch_optional(
            "SELECT name, status, primary_storage_uuid, reserved_size, install_path, \
             COALESCE(vm_instance_uuid, last_vm_instance_uuid) FROM volume WHERE uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?;
    let Some(row) = row else {
        // Already expunged (a replay): nothing to do.
        return Ok(Reply::empty());
    };
    let name: String = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    let ps: Option<String> = row.try_get(2)?;
    let reserved: i64 = row.try_get(3)?;
    let file: Option<String> = row.try_get(4)?;
    let vm: Option<String> = row.try_get(5)?;
    if status != "Deleted" {
        return Err(Error::operr(format!("the volume[uuid:{uuid}, name:{name}] is not deleted yet, can't expunge it")));
    }
    forget_local_files(&mut tx, &uuid).await?;
    tx.execute("DELETE FROM volume_snapshot WHERE volume_uuid = $1", &[Val::from(uuid.as_str())]).await?;
    tx.execute("DELETE FROM volume WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    if let Some(ps) = &ps {
        tx.execute(
            "UPDATE primary_storage SET available_capacity = available_capacity + $1, last_op_date = $2 WHERE uuid = $3",
            &[Val::I(reserved), Val::I(now_ms()), Val::from(ps.as_str())],
        )
        .await?;
    }
    super::tag::delete_for_resource(&mut tx, &uuid).await?;
    super::disown(&mut tx, &uuid).await?;
    tx.commit().await?;
    // the file (and its snapshots next to it) on its KVM host
    if let Some(f) = file {
        delete_files(&app, vm.as_deref(), ps.as_deref(), &[f]).await;
    }
    Ok(Reply::empty())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSnapshot {
    volume_uuid: String,
    name: String,
    description: Option<String>,
}

async fn create_snapshot(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateSnapshot = msg.parse()?;
    let uuid = msg.resource_uuid();
    // A volume with a file on a KVM host: its agent makes the snapshot file first (no write
    // transaction open meanwhile; making it again on a retry answers the same file).
    let file = snapshot_file(&app, &uuid, &req.volume_uuid).await?;
    let (file_path, file_size) = match file {
        Some((p, s)) => (Some(p), s),
        None => (None, 0),
    };
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &VOLUME_SNAPSHOT, &uuid, &msg).await? {
        let v = req.volume_uuid.as_str();
        let vol = tx
            .fetch_optional(
                "SELECT status, type, state, primary_storage_uuid, format FROM volume WHERE uuid = $1",
                &[Val::from(v)],
            )
            .await?
            .ok_or_else(|| {
                Error::not_found(format!("invalid field[volumeUuid], resource[uuid:{v}, type:VolumeVO] not found"))
            })?;
        let status: String = vol.try_get(0)?;
        let ty: String = vol.try_get(1)?;
        let state: String = vol.try_get(2)?;
        let ps: Option<String> = vol.try_get(3)?;
        let format: Option<String> = vol.try_get(4)?;
        if status != "Ready" {
            return Err(Error::operr(format!(
                "volume[uuid:{v}] is not in status Ready, current is {status}, can't create snapshot"
            )));
        }
        if ty != "Root" && ty != "Data" {
            return Err(Error::operr(format!("volume[uuid:{v}, type:{ty}], can't create snapshot")));
        }
        if state != "Enabled" {
            return Err(Error::operr(format!(
                "volume[uuid:{v}] is not in state Enabled, current is {state}, can't create snapshot"
            )));
        }
        let parent = tx
            .fetch_optional(
                "SELECT uuid, tree_uuid, distance FROM volume_snapshot WHERE volume_uuid = $1 AND latest = 1",
                &[Val::from(v)],
            )
            .await?;
        let (parent_uuid, tree, distance) = match parent {
            Some(p) => {
                let pu: String = p.try_get(0)?;
                let t: String = p.try_get(1)?;
                let d: i64 = p.try_get(2)?;
                (Some(pu), t, d + 1)
            }
            None => (None, crate::util::new_uuid(), 0),
        };
        let now = now_ms();
        tx.execute(
            "UPDATE volume_snapshot SET latest = 0, last_op_date = $1 WHERE volume_uuid = $2 AND latest = 1",
            &[Val::I(now), Val::from(v)],
        )
        .await?;
        tx.execute(
            "INSERT INTO volume_snapshot (uuid, name, description, type, volume_uuid, tree_uuid, parent_uuid, primary_storage_uuid, \
             volume_type, format, latest, size, distance, state, status, create_date, last_op_date, \
             primary_storage_install_path) \
             VALUES ($1, $2, $3, 'Hypervisor', $4, $5, $6, $7, $8, $9, 1, $12, $10, 'Enabled', 'Ready', $11, $11, $13)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(v),
                Val::from(tree),
                Val::from(parent_uuid),
                Val::from(ps),
                Val::from(ty),
                Val::from(format),
                Val::I(distance),
                Val::I(now),
                Val::I(file_size),
                Val::from(file_path),
            ],
        )
        .await?;
        // on LocalStorage the snapshot is on the disk of the host holding its volume (that
        // volume's ref; for a volume recorded before refs existed, its VM's host)
        tx.execute(
            "INSERT INTO local_storage_resource_ref (resource_uuid, primary_storage_uuid, host_uuid, size, resource_type, \
             create_date, last_op_date) \
             SELECT $1, v.primary_storage_uuid, COALESCE(r.host_uuid, m.host_uuid, m.last_host_uuid), $2, \
             'VolumeSnapshotVO', $3, $3 FROM volume v JOIN primary_storage p ON p.uuid = v.primary_storage_uuid \
             LEFT JOIN local_storage_resource_ref r ON r.resource_uuid = v.uuid \
             LEFT JOIN vm_instance m ON m.uuid = COALESCE(v.vm_instance_uuid, v.last_vm_instance_uuid) \
             WHERE v.uuid = $4 AND p.type = 'LocalStorage' \
             AND COALESCE(r.host_uuid, m.host_uuid, m.last_host_uuid) IS NOT NULL",
            &[Val::from(uuid.as_str()), Val::I(file_size), Val::I(now), Val::from(v)],
        )
        .await?;
        super::own(&mut tx, &uuid, VOLUME_SNAPSHOT.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    reply(&app, &VOLUME_SNAPSHOT, &uuid).await
}

/// The snapshot file of a Ready, Enabled volume that has a file on a KVM host, made by its
/// agent (QEMU copies a running VM's disk): (path, bytes used). None for other volumes, and
/// when the snapshot exists already (a retry).
async fn snapshot_file(app: &App, uuid: &str, volume: &str) -> Result<Option<(String, i64)>> {
    if app.db.fetch_optional("SELECT 1 FROM volume_snapshot WHERE uuid = $1", &[Val::from(uuid)]).await?.is_some() {
        return Ok(None);
    }
    let Some(r) = app
        .db
        .fetch_optional(
            "SELECT install_path, vm_instance_uuid, primary_storage_uuid, status, state FROM volume WHERE uuid = $1",
            &[Val::from(volume)],
        )
        .await?
    else {
        return Ok(None);
    };
    let path: Option<String> = r.try_get(0)?;
    let vm: Option<String> = r.try_get(1)?;
    let ps: Option<String> = r.try_get(2)?;
    let (status, state): (String, String) = (r.try_get(3)?, r.try_get(4)?);
    let Some(path) = path.filter(|p| p.starts_with('/')) else { return Ok(None) };
    if status != "Ready" || state != "Enabled" {
        return Ok(None); // refused with upstream's message in the transaction
    }
    let agents = kvm_agents(app, vm.as_deref(), ps.as_deref()).await?;
    if agents.is_empty() {
        return Ok(None);
    }
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
    let cmd = VolumeSnapshotCmd {
        version: PROTOCOL_VERSION,
        snapshot_uuid: uuid.to_string(),
        volume_install_path: path.clone(),
        install_path: format!("{dir}/snapshots/{uuid}.qcow2"),
        vm_uuid: vm,
    };
    let mut why = String::new();
    for a in &agents {
        match a.snapshot_volume(&cmd).await {
            Ok(info) => return Ok(Some((info.install_path, info.actual_size))),
            Err(e) => why = e.to_string(),
        }
    }
    Err(Error::operr(format!("failed to create a snapshot of volume[uuid:{volume}] on its KVM host: {why}")))
}

async fn delete_snapshot(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let Some(row) = tx
        .fetch_optional("SELECT parent_uuid, latest FROM volume_snapshot WHERE uuid = $1", &[Val::from(uuid.as_str())])
        .await?
    else {
        return Ok(Reply::empty());
    };
    let parent: Option<String> = row.try_get(0)?;
    let src = tx
        .fetch_optional(
            "SELECT v.vm_instance_uuid, s.primary_storage_uuid FROM volume_snapshot s \
             LEFT JOIN volume v ON v.uuid = s.volume_uuid WHERE s.uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?;
    let (vm, ps): (Option<String>, Option<String>) = match src {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (None, None),
    };
    let mut files = Vec::new();
    // The snapshot goes with its descendants (they depend on it).
    let mut doomed = vec![uuid.clone()];
    let mut i = 0;
    let mut latest_gone = row.try_get::<i64, _>(1)? != 0;
    while i < doomed.len() {
        let kids = tx
            .fetch_all(
                "SELECT uuid, latest FROM volume_snapshot WHERE parent_uuid = $1",
                &[Val::from(doomed[i].as_str())],
            )
            .await?;
        for k in kids {
            doomed.push(k.try_get(0)?);
            latest_gone |= k.try_get::<i64, _>(1)? != 0;
        }
        i += 1;
    }
    for d in &doomed {
        if let Some(f) = tx
            .fetch_optional(
                "SELECT primary_storage_install_path FROM volume_snapshot WHERE uuid = $1",
                &[Val::from(d.as_str())],
            )
            .await?
        {
            files.extend(f.try_get::<Option<String>, _>(0)?);
        }
        tx.execute("DELETE FROM volume_snapshot WHERE uuid = $1", &[Val::from(d.as_str())]).await?;
        tx.execute("DELETE FROM local_storage_resource_ref WHERE resource_uuid = $1", &[Val::from(d.as_str())]).await?;
        super::disown(&mut tx, d).await?;
    }
    if let (true, Some(p)) = (latest_gone, parent) {
        tx.execute(
            "UPDATE volume_snapshot SET latest = 1, last_op_date = $1 WHERE uuid = $2",
            &[Val::I(now_ms()), Val::from(p.as_str())],
        )
        .await?;
    }
    tx.commit().await?;
    delete_files(&app, vm.as_deref(), ps.as_deref(), &files).await;
    Ok(Reply::empty())
}

/// Upstream `VolumeConstant.DEFAULT_MAX_DATA_VOLUME_NUMBER` (KVM's `dataVolume.maxNum` default
/// is the same).
const MAX_DATA_VOLUMES: i64 = 24;

/// The VM states upstream allows AttachDataVolumeToVmMsg/DetachDataVolumeFromVmMsg in, as
/// Java prints that HashSet.
const ATTACH_STATES: &str = "[Stopped, Running, Paused]";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachDataVolume {
    volume_uuid: String,
    vm_instance_uuid: String,
}

/// What attach reads of the VM and the volume.
struct AttachCtx {
    vm_state: String,
    vm_hv: Option<String>,
    vm_host: Option<String>,
    vm_cluster: Option<String>,
    vm_platform: Option<String>,
    vm_root: Option<String>,
    vm_kvm: Option<(String, String)>,
    vol_name: String,
    vol_type: String,
    vol_state: String,
    vol_status: String,
    vol_vm: Option<String>,
    vol_shareable: bool,
    vol_ps: Option<String>,
    vol_size: i64,
    vol_path: Option<String>,
}

async fn attach_ctx(app: &App, volume: &str, vm: &str) -> Result<AttachCtx> {
    let v = app
        .db
        .fetch_optional(
            "SELECT v.state, v.hypervisor_type, v.host_uuid, v.cluster_uuid, v.platform, v.root_volume_uuid, \
             h.management_ip, h.password, h.hypervisor_type FROM vm_instance v \
             LEFT JOIN host h ON h.uuid = COALESCE(v.host_uuid, v.last_host_uuid) WHERE v.uuid = $1",
            &[Val::from(vm)],
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("invalid field[vmInstanceUuid], resource[uuid:{vm}, type:VmInstanceVO] not found"))
        })?;
    let d = app
        .db
        .fetch_optional(
            "SELECT name, type, state, status, vm_instance_uuid, is_shareable, primary_storage_uuid, size, install_path \
             FROM volume WHERE uuid = $1",
            &[Val::from(volume)],
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("invalid field[volumeUuid], resource[uuid:{volume}, type:VolumeVO] not found"))
        })?;
    let host_hv: Option<String> = v.try_get(8)?;
    let vm_kvm = match (host_hv.as_deref(), v.try_get::<Option<String>, _>(6)?) {
        (Some("KVM"), Some(ip)) => Some((ip, v.try_get::<Option<String>, _>(7)?.unwrap_or_default())),
        _ => None,
    };
    Ok(AttachCtx {
        vm_state: v.try_get(0)?,
        vm_hv: v.try_get(1)?,
        vm_host: v.try_get(2)?,
        vm_cluster: v.try_get(3)?,
        vm_platform: v.try_get(4)?,
        vm_root: v.try_get(5)?,
        vm_kvm,
        vol_name: d.try_get(0)?,
        vol_type: d.try_get(1)?,
        vol_state: d.try_get(2)?,
        vol_status: d.try_get(3)?,
        vol_vm: d.try_get(4)?,
        vol_shareable: d.try_get::<Option<i64>, _>(5)?.unwrap_or(0) != 0,
        vol_ps: d.try_get(6)?,
        vol_size: d.try_get::<Option<i64>, _>(7)?.unwrap_or(0),
        vol_path: d.try_get(8)?,
    })
}

async fn strings(app: &App, sql: &str, arg: &str) -> Result<Vec<String>> {
    app.db.fetch_all(sql, &[Val::from(arg)]).await?.into_iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
}

/// The checks upstream makes before attaching, in its order: VolumeApiInterceptor (platform,
/// the volume's type/state/status, the clusters), LocalStorageApiInterceptor (hosts), then
/// the VM (its state, VM.1005; the number of its data volumes).
async fn attach_checks(app: &App, c: &AttachCtx, volume: &str, vm: &str) -> Result<()> {
    if c.vm_platform.as_deref() == Some("Other") && c.vm_state != "Stopped" {
        return Err(Error::operr(format!(
            "the vm[uuid:{vm}] doesn't support to online attach volume[{volume}] on the basis of that the image \
             platform type of the vm is other "
        )));
    }
    if c.vol_type == "Root" {
        return Err(Error::operr(format!(
            "the volume[uuid:{volume}, name:{}] is Root Volume, can't attach it",
            c.vol_name
        )));
    }
    if c.vol_state == "Disabled" {
        return Err(Error::operr(format!("data volume[uuid:{volume}] is Disabled, can't attach")));
    }
    if c.vol_status == "Deleted" {
        return Err(Error::operr(format!(
            "the volume[uuid:{volume}] is in status of deleted, cannot do the operation"
        )));
    }
    if c.vol_vm.is_some() && !c.vol_shareable {
        return Err(Error::operr(format!(
            "data volume[uuid:{volume}] has been attached to some vm, can't attach again"
        )));
    }
    if c.vol_status != "Ready" && c.vol_status != "NotInstantiated" {
        return Err(Error::operr(format!(
            "data volume can only be attached when status is [Ready, NotInstantiated], current is {}",
            c.vol_status
        )));
    }
    // the clusters of the VM (its own, else those of its root volume's storage) must share one
    // with the volume's storage
    let mut vm_clusters: Vec<String> = c.vm_cluster.iter().cloned().collect();
    if vm_clusters.is_empty() {
        if let Some(root) = &c.vm_root {
            vm_clusters = strings(
                app,
                "SELECT r.cluster_uuid FROM primary_storage_cluster_ref r JOIN volume v \
                 ON v.primary_storage_uuid = r.primary_storage_uuid WHERE v.uuid = $1",
                root,
            )
            .await?;
        }
    }
    if let (false, Some(ps)) = (vm_clusters.is_empty(), &c.vol_ps) {
        let vol_clusters =
            strings(app, "SELECT cluster_uuid FROM primary_storage_cluster_ref WHERE primary_storage_uuid = $1", ps)
                .await?;
        if !vol_clusters.is_empty() && !vm_clusters.iter().any(|c| vol_clusters.contains(c)) {
            return Err(Error::operr("Can't attach volume to VM, no qualified cluster"));
        }
    }
    // LocalStorage: the volume's file is on one host's disk
    let vol_host = strings(
        app,
        "SELECT host_uuid FROM local_storage_resource_ref WHERE resource_uuid = $1 AND resource_type = 'VolumeVO'",
        volume,
    )
    .await?
    .pop();
    if let Some(vol_host) = &vol_host {
        match &c.vm_host {
            Some(h) if h == vol_host => {}
            Some(h) => {
                return Err(Error::operr(format!(
                    "the host of the vm[hostUuid:{h}] is different from that of the volume[hostUuid:{vol_host}]. \
                     the volume cannot attach to the vm."
                )))
            }
            None => {
                let rows = app
                    .db
                    .fetch_all(
                        "SELECT r.resource_uuid, r.host_uuid FROM local_storage_resource_ref r JOIN volume v \
                         ON v.uuid = r.resource_uuid WHERE r.resource_type = 'VolumeVO' AND v.vm_instance_uuid = $1 \
                         ORDER BY v.device_id",
                        &[Val::from(vm)],
                    )
                    .await?;
                let mut pairs = Vec::new();
                for r in rows {
                    pairs.push((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?));
                }
                let mut hosts: Vec<&String> = pairs.iter().map(|p| &p.1).collect();
                hosts.dedup();
                hosts.sort();
                hosts.dedup();
                if hosts.len() >= 2 {
                    let list: Vec<String> = pairs.iter().map(|(v, h)| format!("volume[{v}] is on host[{h}]")).collect();
                    return Err(Error::operr(format!(
                        "the vm has multiple local volumes on different hosts[[{}]]. please check the abnormal vm \
                         local volumes",
                        list.join(", ")
                    )));
                }
                if let Some(other) = hosts.first().filter(|h| *h != &vol_host) {
                    return Err(Error::operr(format!(
                        "the volume on a host[hostUuid:{vol_host}] cannot be attached to the vm, because the vm has \
                         local volumes on other host[hostUuid:{other}]"
                    )));
                }
            }
        }
    }
    if !matches!(c.vm_state.as_str(), "Running" | "Stopped" | "Paused") {
        return Err(state_refused(
            rzstack_api::codes::VM_1005,
            &c.vm_state,
            "org.zstack.header.vm.AttachDataVolumeToVmMsg",
        ));
    }
    let attached = match app
        .db
        .fetch_optional("SELECT COUNT(*) FROM volume WHERE type = 'Data' AND vm_instance_uuid = $1", &[Val::from(vm)])
        .await?
    {
        Some(r) => r.try_get::<i64, _>(0)?,
        None => 0,
    };
    if attached + 1 > MAX_DATA_VOLUMES {
        return Err(Error::operr(format!(
            "hypervisor[{}] only allows max {MAX_DATA_VOLUMES} data volumes to be attached to a single vm; there have \
             been {attached} data volumes attached to vm[uuid:{vm}]",
            c.vm_hv.as_deref().unwrap_or("null")
        )));
    }
    Ok(())
}

/// VM.1010 (upstream validateOperationByState) wrapped in `wrapper`.
fn state_refused(wrapper: rzstack_api::Code, state: &str, class: &str) -> Error {
    let cause = rzstack_api::ErrorCode::new(
        rzstack_api::codes::VM_1010,
        format!(
            "current vm instance state[{state}] doesn't allow to proceed message[{class}], allowed states are \
             {ATTACH_STATES}"
        ),
    );
    let details = cause.details.clone().unwrap_or_default();
    Error::Api(rzstack_api::ErrorCode::new(wrapper, details).with_cause(cause))
}

/// The smallest device id (from 1) none of the VM's volumes has (upstream
/// NextVolumeDeviceIdGetter; the root volume is 0).
async fn next_device_id(app: &App, vm: &str) -> Result<i64> {
    let used: Vec<i64> = app
        .db
        .fetch_all(
            "SELECT device_id FROM volume WHERE vm_instance_uuid = $1 AND device_id IS NOT NULL",
            &[Val::from(vm)],
        )
        .await?
        .into_iter()
        .map(|r| Ok(r.try_get::<i64, _>(0)?))
        .collect::<Result<_>>()?;
    Ok((1..).find(|n| !used.contains(n)).unwrap_or(1))
}

/// The agent command naming a data volume of a VM on a KVM host.
fn vm_volume_cmd(vm: &str, volume: &str, path: &str, device_id: i64) -> rzstack_api::agent::VmVolumeCmd {
    rzstack_api::agent::VmVolumeCmd {
        version: PROTOCOL_VERSION,
        vm_uuid: vm.to_string(),
        volume: rzstack_api::agent::VmDisk {
            volume_uuid: volume.to_string(),
            install_path: path.to_string(),
            device_id,
        },
    }
}

async fn attach_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let req: AttachDataVolume = msg.parse()?;
    let (volume, vm) = (req.volume_uuid.as_str(), req.vm_instance_uuid.as_str());
    let c = attach_ctx(&app, volume, vm).await?;
    if msg.replay && c.vol_vm.as_deref() == Some(vm) {
        // a replay of a job that did it already
        return reply(&app, &VOLUME, volume).await;
    }
    attach_checks(&app, &c, volume, vm).await?;
    // a NotInstantiated volume is instantiated on the VM's root volume's storage (on LocalStorage,
    // on the disk of the VM's host)
    let target = match (&c.vol_ps, &c.vm_root) {
        (Some(ps), _) => Some(ps.clone()),
        (None, Some(root)) => strings(
            &app,
            "SELECT primary_storage_uuid FROM volume WHERE uuid = $1 AND primary_storage_uuid IS NOT NULL",
            root,
        )
        .await?
        .pop(),
        (None, None) => None,
    };
    let instantiate = c.vol_status == "NotInstantiated" || c.vol_ps.is_none();
    let Some(ps) = target else {
        return Err(Error::operr(format!(
            "cannot instantiate the data volume[uuid:{volume}]: the vm[uuid:{vm}] has no root volume on a primary storage"
        )));
    };
    let local_host = if instantiate {
        let local = app
            .db
            .fetch_optional(
                "SELECT 1 FROM primary_storage WHERE uuid = $1 AND type = 'LocalStorage'",
                &[Val::from(ps.as_str())],
            )
            .await?
            .is_some();
        if local {
            let h = strings(
                &app,
                "SELECT COALESCE(v.host_uuid, v.last_host_uuid, (SELECT r.host_uuid FROM local_storage_resource_ref r \
                 WHERE r.resource_uuid = v.root_volume_uuid)) FROM vm_instance v WHERE v.uuid = $1 \
                 AND COALESCE(v.host_uuid, v.last_host_uuid, (SELECT r.host_uuid FROM local_storage_resource_ref r \
                 WHERE r.resource_uuid = v.root_volume_uuid)) IS NOT NULL",
                vm,
            )
            .await?
            .pop();
            Some(h.ok_or_else(|| {
                Error::operr(format!(
                    "cannot find the host of vm[uuid:{vm}] to instantiate the local volume[uuid:{volume}]"
                ))
            })?)
        } else {
            None
        }
    } else {
        None
    };
    // a VM on a KVM host: the volume needs a file there before the VM uses it
    let mut new_path = None;
    if let (Some((ip, token)), false) = (&c.vm_kvm, c.vol_path.as_deref().is_some_and(|p| p.starts_with('/'))) {
        let url =
            strings(&app, "SELECT url FROM primary_storage WHERE uuid = $1", &ps).await?.pop().unwrap_or_default();
        let path = format!(
            "{}/dataVolumes/acct-{}/vol-{volume}/{volume}.qcow2",
            url.trim_end_matches('/'),
            msg.account_uuid()
        );
        if !path.starts_with('/') {
            return Err(Error::operr(format!(
                "volume[uuid:{volume}] has no file and its primary storage[uuid:{ps}] no path"
            )));
        }
        let agent = KvmAgentClient::new(ip, token);
        agent
            .create_volume(&VolumeCreateCmd {
                version: PROTOCOL_VERSION,
                volume_uuid: volume.to_string(),
                install_path: path.clone(),
                size: c.vol_size,
                backing_file: None,
                provisioning: Provisioning::ThinProvisioning,
            })
            .await
            .map_err(|e| {
                Error::operr(format!("failed to create the file of volume[uuid:{volume}] on its KVM host: {e}"))
            })?;
        new_path = Some(path);
    }
    let device_id = next_device_id(&app, vm).await?;
    // a VM running on a KVM host sees the disk appear: hot-plugged by its agent, outside the
    // transaction (undone if the rows cannot follow)
    let hotplug = match (&c.vm_kvm, c.vm_state.as_str()) {
        (Some((ip, token)), "Running" | "Paused") => {
            let path = new_path.clone().or(c.vol_path.clone()).unwrap_or_default();
            let cmd = vm_volume_cmd(vm, volume, &path, device_id);
            let agent = KvmAgentClient::new(ip, token);
            agent.attach_volume(&cmd).await.map_err(|e| {
                Error::code(
                    rzstack_api::codes::VM_1005,
                    format!(
                        "failed to attach the data volume[uuid:{volume}] to the vm[uuid:{vm}] on its KVM host: {e}"
                    ),
                )
            })?;
            Some((agent, cmd))
        }
        _ => None,
    };
    let done = attach_rows(&app, &c, volume, vm, &ps, instantiate, local_host.as_deref(), new_path, device_id).await;
    if let (Err(_), Some((agent, cmd))) = (&done, &hotplug) {
        if let Err(e) = agent.detach_volume(cmd).await {
            tracing::warn!("undoing the hot-plug of volume {volume} into vm {vm}: {e}");
        }
    }
    done?;
    reply(&app, &VOLUME, volume).await
}

/// The rows of an attach, in one transaction.
#[allow(clippy::too_many_arguments)]
async fn attach_rows(
    app: &App,
    c: &AttachCtx,
    volume: &str,
    vm: &str,
    ps: &str,
    instantiate: bool,
    local_host: Option<&str>,
    new_path: Option<String>,
    device_id: i64,
) -> Result<()> {
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if instantiate {
        let n = tx
            .execute(
                "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                 WHERE uuid = $3 AND available_capacity >= $1",
                &[Val::I(c.vol_size), Val::I(now), Val::from(ps)],
            )
            .await?;
        if n == 0 {
            return Err(Error::operr(format!(
                "cannot instantiate the data volume[uuid:{volume}]: the primary storage[uuid:{ps}] has less than {} bytes \
                 available",
                c.vol_size
            )));
        }
        if let Some(h) = local_host {
            super::primary_storage::allocate_on_required_host(&mut tx, ps, h, c.vol_size).await?;
            tx.execute(
                "INSERT INTO local_storage_resource_ref (resource_uuid, primary_storage_uuid, host_uuid, size, \
                 resource_type, create_date, last_op_date) VALUES ($1, $2, $3, $4, 'VolumeVO', $5, $5)",
                &[Val::from(volume), Val::from(ps), Val::from(h), Val::I(c.vol_size), Val::I(now)],
            )
            .await?;
        }
    }
    // attached in one statement: the volume still free and the VM still in a state that allows it
    let n = tx
        .execute(
            "UPDATE volume SET vm_instance_uuid = CASE WHEN is_shareable = 1 THEN NULL ELSE $1 END, \
             device_id = $8, \
             last_attach_date = $2, last_op_date = $2, format = COALESCE(format, 'qcow2'), \
             install_path = COALESCE($4, install_path), \
             status = CASE WHEN status = 'NotInstantiated' THEN 'Ready' ELSE status END, \
             primary_storage_uuid = COALESCE(primary_storage_uuid, $5), \
             reserved_size = CASE WHEN $6 = 1 THEN size ELSE reserved_size END \
             WHERE uuid = $3 AND (vm_instance_uuid IS NULL OR is_shareable = 1) AND state = 'Enabled' \
             AND status IN ('Ready', 'NotInstantiated') \
             AND EXISTS (SELECT 1 FROM vm_instance m WHERE m.uuid = $1 AND m.state = $7) \
             AND NOT EXISTS (SELECT 1 FROM volume x WHERE x.vm_instance_uuid = $1 AND x.device_id = $8)",
            &[
                Val::from(vm),
                Val::I(now),
                Val::from(volume),
                Val::from(new_path),
                Val::from(ps),
                Val::I(i64::from(instantiate)),
                Val::from(c.vm_state.as_str()),
                Val::I(device_id),
            ],
        )
        .await?;
    if n == 0 {
        return Err(Error::operr(format!(
            "data volume[uuid:{volume}] or vm[uuid:{vm}] changed while attaching, try again"
        )));
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetachDataVolume {
    uuid: String,
    vm_uuid: Option<String>,
}

async fn detach_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let req: DetachDataVolume = msg.parse()?;
    let volume = req.uuid.as_str();
    let d = app
        .db
        .fetch_optional(
            "SELECT name, type, vm_instance_uuid, is_shareable FROM volume WHERE uuid = $1",
            &[Val::from(volume)],
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("invalid field[uuid], resource[uuid:{volume}, type:VolumeVO] not found"))
        })?;
    let name: String = d.try_get(0)?;
    let ty: String = d.try_get(1)?;
    let attached: Option<String> = d.try_get(2)?;
    let shareable = d.try_get::<Option<i64>, _>(3)?.unwrap_or(0) != 0;
    if !shareable && attached.is_none() {
        if msg.replay {
            // a replay of a job that did it already
            return reply(&app, &VOLUME, volume).await;
        }
        return Err(Error::operr(format!("data volume[uuid:{volume}] is not attached to any vm, can't detach")));
    }
    if shareable && req.vm_uuid.is_none() {
        return Err(Error::operr(format!("to detach shareable data volume[uuid:{volume}], vm uuid is needed.")));
    }
    if ty != "Data" {
        return Err(Error::operr(format!("the volume[uuid:{volume}, name:{name}, type:{ty}] can't detach it")));
    }
    let Some(vm) = attached.or(req.vm_uuid) else {
        return reply(&app, &VOLUME, volume).await;
    };
    let row = app
        .db
        .fetch_optional(
            "SELECT v.state, h.hypervisor_type, h.management_ip, h.password FROM vm_instance v \
             LEFT JOIN host h ON h.uuid = COALESCE(v.host_uuid, v.last_host_uuid) WHERE v.uuid = $1",
            &[Val::from(vm.as_str())],
        )
        .await?;
    let (state, hv, ip, token): (Option<String>, Option<String>, Option<String>, Option<String>) = match row {
        Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
        None => (None, None, None, None),
    };
    // a VM that is gone or Destroyed: nothing to do on it, the volume is freed
    if let Some(state) = state.as_deref().filter(|s| *s != "Destroyed") {
        if !matches!(state, "Running" | "Stopped" | "Paused") {
            return Err(Error::operr(format!(
                "Detaching volume is not allowed when VM[uuid={vm}] is in state[{state}]"
            )));
        }
        // a VM running on a KVM host lets the disk go first (its agent hot-unplugs it)
        if let (Some("KVM"), Some(ip), false) = (hv.as_deref(), &ip, state == "Stopped") {
            let r = app
                .db
                .fetch_optional("SELECT install_path, device_id FROM volume WHERE uuid = $1", &[Val::from(volume)])
                .await?;
            if let Some(r) = r {
                let path: Option<String> = r.try_get(0)?;
                let dev: Option<i64> = r.try_get(1)?;
                if let (Some(path), Some(dev)) = (path.filter(|p| p.starts_with('/')), dev) {
                    let agent = KvmAgentClient::new(ip, token.as_deref().unwrap_or_default());
                    agent.detach_volume(&vm_volume_cmd(&vm, volume, &path, dev)).await.map_err(|e| {
                        Error::code(
                            rzstack_api::codes::VM_1006,
                            format!("failed to detach the data volume[uuid:{volume}] from the vm[uuid:{vm}] on its KVM host: {e}"),
                        )
                    })?;
                }
            }
        }
    }
    let now = now_ms();
    app.db
        .execute(
            "UPDATE volume SET vm_instance_uuid = NULL, device_id = NULL, last_vm_instance_uuid = $1, \
             last_detach_date = $2, last_op_date = $2 WHERE uuid = $3 AND (vm_instance_uuid = $1 OR is_shareable = 1)",
            &[Val::from(vm.as_str()), Val::I(now), Val::from(volume)],
        )
        .await?;
    reply(&app, &VOLUME, volume).await
}

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateDataVolume", "/volumes/data")
        .timeout(3 * HOURS)
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("diskOfferingUuid").resource(&DISK_OFFERING),
            Param::int("diskSize"),
            Param::str("primaryStorageUuid").resource(&PRIMARY_STORAGE),
        ])
        .tags(&[LOCAL_STORAGE_HOST_TAG])
        .handler(|a, m| boxed(create_data_volume(a, m))),
    ApiDef::query("QueryVolume", "/volumes", &VOLUME).optional_paths(&["/volumes/{uuid}"]),
    ApiDef::delete("DeleteDataVolume", "/volumes/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&VOLUME).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete_data_volume(a, m))),
    ApiDef::action("ExpungeDataVolume", "/volumes/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VOLUME).success_if_missing()])
        .handler(|a, m| boxed(expunge_data_volume(a, m))),
    ApiDef::create("CreateVolumeSnapshot", "/volumes/{volumeUuid}/volume-snapshots")
        .timeout(3 * HOURS)
        .params(&[
            Param::str("volumeUuid").required().resource(&VOLUME),
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(create_snapshot(a, m))),
    ApiDef::query("QueryVolumeSnapshot", "/volume-snapshots", &VOLUME_SNAPSHOT)
        .optional_paths(&["/volume-snapshots/{uuid}"]),
    ApiDef::delete("DeleteVolumeSnapshot", "/volume-snapshots/{uuid}")
        .timeout(6 * HOURS)
        .params(&[
            Param::str("uuid").required().resource(&VOLUME_SNAPSHOT).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete_snapshot(a, m))),
    ApiDef::post("AttachDataVolumeToVm", "/volumes/{volumeUuid}/vm-instances/{vmInstanceUuid}")
        .params(&[
            Param::str("vmInstanceUuid").required().resource(&VM),
            Param::str("volumeUuid").required().resource(&VOLUME),
        ])
        .handler(|a, m| boxed(attach_data_volume(a, m))),
    ApiDef::delete("DetachDataVolumeFromVm", "/volumes/{uuid}/vm-instances")
        .params(&[Param::str("uuid").required().resource(&VOLUME), Param::str("vmUuid").resource(&VM)])
        .handler(|a, m| boxed(detach_data_volume(a, m))),
];
